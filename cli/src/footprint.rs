//! What a cluster on this machine costs at rest: the resident memory (RSS) of every cartdb
//! process and ZooKeeper server, read from `/proc`, and ZooKeeper's znode count, from its
//! `mntr` four-letter word. `cartdb bench` prints it after a run, so that a benchmark shows
//! whether memory or ZooKeeper grows with the data.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// One process and its resident memory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProcessMemory {
    pub pid: u32,
    /// `cartdb-datanode`, `cartdb-gateway`, `cartdb-api` or `zookeeper`.
    pub name: String,
    pub rss_kib: u64,
}

/// The footprint of the cluster processes on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Footprint {
    pub processes: Vec<ProcessMemory>,
    /// `None` when no ZooKeeper address was given or it did not answer `mntr`.
    pub znodes: Option<u64>,
}

impl Footprint {
    /// Measures now: every cartdb and ZooKeeper process in `/proc`, and the znode count of
    /// the ZooKeeper at `zk` (`host:port`), if given.
    pub fn measure(zk: Option<&str>) -> Self {
        Self {
            processes: cluster_processes(Path::new("/proc")),
            znodes: zk.and_then(znode_count),
        }
    }

    /// One line per process, sorted by name then pid, and the znode count.
    pub fn to_text(&self) -> String {
        let mut out = String::from("footprint:\n");
        let mut processes = self.processes.clone();
        processes.sort_by(|a, b| (&a.name, a.pid).cmp(&(&b.name, b.pid)));
        for p in &processes {
            let _ = writeln!(
                out,
                "  {:<16} pid {:<8} RSS {:>7.1} MiB",
                p.name,
                p.pid,
                p.rss_kib as f64 / 1024.0
            );
        }
        let total: u64 = processes.iter().map(|p| p.rss_kib).sum();
        let _ = writeln!(out, "  total RSS {:.1} MiB", total as f64 / 1024.0);
        match self.znodes {
            Some(n) => {
                let _ = writeln!(out, "  ZooKeeper znodes: {n}");
            }
            None => out.push_str("  ZooKeeper znodes: unknown (give --zk HOST:PORT)\n"),
        }
        out
    }
}

/// The cartdb and ZooKeeper processes under `proc`.
fn cluster_processes(proc: &Path) -> Vec<ProcessMemory> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let dir = entry.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            let name = process_name(comm.trim(), &cmdline)?;
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            Some(ProcessMemory {
                pid,
                name,
                rss_kib: rss_kib(&status)?,
            })
        })
        .collect()
}

/// The cartdb server binaries.
const SERVERS: [&str; 3] = ["cartdb-datanode", "cartdb-gateway", "cartdb-api"];

/// The name a process is reported under, or `None` when it is not a cluster process.
fn process_name(comm: &str, cmdline: &[u8]) -> Option<String> {
    if SERVERS.contains(&comm) {
        return Some(comm.to_owned());
    }
    let cmdline = String::from_utf8_lossy(cmdline);
    (comm == "java" && cmdline.contains("org.apache.zookeeper.server"))
        .then(|| "zookeeper".to_owned())
}

/// `VmRSS` of a `/proc/PID/status`, in KiB.
fn rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// `zk_znode_count` from ZooKeeper's `mntr`.
fn znode_count(zk: &str) -> Option<u64> {
    let mut stream = TcpStream::connect(zk).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"mntr").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer
        .lines()
        .find_map(|line| line.strip_prefix("zk_znode_count"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn cluster_processes_are_recognised() {
        assert_eq!(
            process_name("cartdb-gateway", b""),
            Some("cartdb-gateway".into())
        );
        let zk = b"java\0-cp\0zookeeper.jar\0org.apache.zookeeper.server.quorum.QuorumPeerMain\0";
        assert_eq!(process_name("java", zk), Some("zookeeper".into()));
        assert_eq!(process_name("java", b"java\0-jar\0other.jar"), None);
        assert_eq!(process_name("bash", b"bash"), None);
        // A test binary of the workspace is not a server.
        assert_eq!(process_name("cartdb-3f9a2c1b", b""), None);
    }

    #[test]
    fn rss_is_read_from_status() {
        let status = "Name:\tcartdb-api\nVmPeak:\t  100 kB\nVmRSS:\t   23456 kB\nThreads:\t2\n";
        assert_eq!(rss_kib(status), Some(23_456));
        assert_eq!(rss_kib("Name:\tx\n"), None);
    }

    /// The running test process is not a cluster process; the scan still works on the real
    /// `/proc` and finds no impostor.
    #[test]
    fn this_process_is_not_counted() {
        let me = std::process::id();
        assert!(
            cluster_processes(Path::new("/proc"))
                .iter()
                .all(|p| p.pid != me)
        );
    }

    #[test]
    fn the_text_names_every_process_and_the_znodes() {
        let footprint = Footprint {
            processes: vec![
                ProcessMemory {
                    pid: 2,
                    name: "zookeeper".into(),
                    rss_kib: 2048,
                },
                ProcessMemory {
                    pid: 1,
                    name: "cartdb-api".into(),
                    rss_kib: 1024,
                },
            ],
            znodes: Some(42),
        };
        let text = footprint.to_text();
        assert!(
            text.contains("cartdb-api       pid 1        RSS     1.0 MiB"),
            "{text}"
        );
        assert!(text.contains("total RSS 3.0 MiB"), "{text}");
        assert!(text.contains("ZooKeeper znodes: 42"), "{text}");
    }
}
