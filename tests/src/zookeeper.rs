//! A standalone Apache ZooKeeper server for one cluster, and the `ruok` four-letter probe.
//!
//! The server is Debian's `zookeeper` package run directly with `java` (see
//! `scripts/install-deps.sh`): configuration, data and log all live in one directory, the
//! client port is a free loopback port, and `tickTime` is 500 ms so that session expiry (the
//! minimum session timeout is two ticks) is quick enough for tests. The Jetty admin server is
//! disabled so it cannot take port 8080. ZooKeeper's own durability is not under test, so it
//! does not fsync its log (`forceSync=no`) and preallocates 4 MiB instead of 64 MiB log files:
//! with two clusters starting on two cores, its first log write otherwise stalled past the
//! clients' 800 ms read timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::Service;
use crate::wait::wait_until;

/// Where Debian's packages put the server and a logging back-end; `CARTDB_ZK_CLASSPATH`
/// overrides it.
pub const DEFAULT_CLASSPATH: &str =
    "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar";

/// The ZooKeeper tick in milliseconds used by the harness.
pub const TICK_MS: u64 = 500;

/// A running standalone ZooKeeper server; dropping it kills the JVM.
#[derive(Debug)]
pub struct ZooKeeper {
    port: u16,
    service: Service,
}

impl ZooKeeper {
    /// Writes `zoo.cfg` into `dir`, starts the server on `127.0.0.1:port` and waits (up to
    /// `timeout`) until it answers `imok`.
    ///
    /// # Errors
    /// When Java or the ZooKeeper jars are missing, the JVM exits, or it does not answer in time.
    pub async fn start(dir: &Path, port: u16, timeout: Duration) -> anyhow::Result<Self> {
        let classpath =
            std::env::var("CARTDB_ZK_CLASSPATH").unwrap_or_else(|_| DEFAULT_CLASSPATH.to_owned());
        for jar in classpath.split(':') {
            if !Path::new(jar).exists() {
                bail!(
                    "ZooKeeper jar {jar} not found: run scripts/install-deps.sh (apt-get install zookeeper)"
                );
            }
        }
        let data = dir.join("data");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let config = dir.join("zoo.cfg");
        std::fs::write(&config, config_text(&data, port))
            .with_context(|| format!("writing {}", config.display()))?;
        let java = std::env::var("JAVA").unwrap_or_else(|_| "java".to_owned());
        let mut service = Service::new("zookeeper", java, dir.join("zookeeper.log"))
            .args(jvm_args(&classpath, &config));
        service
            .start()
            .context("starting ZooKeeper (is Java installed?)")?;
        let mut zk = Self { port, service };
        if let Err(error) = zk.wait_ready(timeout).await {
            let tail = zk.service.log_tail(30);
            return Err(error.context(format!(
                "ZooKeeper did not come up; last lines of its log:\n{tail}"
            )));
        }
        Ok(zk)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let port = self.port;
        let service = &mut self.service;
        wait_until(
            "ZooKeeper to serve (imok, and a Mode in srvr)",
            timeout,
            || {
                let alive = service.ensure_running();
                async move {
                    alive?;
                    Ok(is_ok(port).await.then_some(()))
                }
            },
        )
        .await
    }

    /// The client port on 127.0.0.1, for four-letter words.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, for the `--zk` flag.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server process (to read its log).
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The server process (to inject faults).
    pub fn service_mut(&mut self) -> &mut Service {
        &mut self.service
    }
}

/// Whether a ZooKeeper server on `127.0.0.1:port` serves requests.
///
/// `ruok` is not enough: ZooKeeper answers `imok` as soon as its port is bound, while it may
/// still be loading its database and closing every session attempt ("ZooKeeperServer not
/// running"). So this asks `ruok` and then `srvr`, which reports a `Mode:` only once the
/// server really serves.
pub async fn is_ok(port: u16) -> bool {
    four_letter_word(port, "ruok")
        .await
        .is_some_and(|answer| answer == "imok")
        && four_letter_word(port, "srvr")
            .await
            .is_some_and(|answer| answer.contains("Mode:"))
}

/// ZooKeeper's own count of znodes (`zk_znode_count` of `mntr`), if it answers.
pub async fn znode_count(port: u16) -> Option<u64> {
    let mntr = four_letter_word(port, "mntr").await?;
    mntr.lines()
        .find_map(|line| line.strip_prefix("zk_znode_count"))
        .and_then(|v| v.trim().parse().ok())
}

/// Every client connection's session id and the id of its last request that was not a
/// heartbeat (`lcxid` of `cons`: ZooKeeper does not let pings overwrite it), if it answers.
/// A session whose `lcxid` did not change made no request but heartbeats in between.
pub async fn last_requests(port: u16) -> Option<std::collections::BTreeMap<String, i64>> {
    let cons = four_letter_word(port, "cons").await?;
    Some(cons.lines().filter_map(session_and_last_request).collect())
}

/// `(sid, lcxid)` of one `cons` line.
fn session_and_last_request(line: &str) -> Option<(String, i64)> {
    let sid = cons_field(line, "sid")?;
    let lcxid = cons_field(line, "lcxid")?;
    let lcxid = i64::from_str_radix(lcxid.trim_start_matches("0x"), 16).ok()?;
    Some((sid.to_owned(), lcxid))
}

/// The value of `name=` in a `cons` line.
fn cons_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    let rest = &line[start..];
    let end = rest.find([',', ')']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Sends a four-letter word and returns the answer (within a second), if any.
pub async fn four_letter_word(port: u16, word: &str) -> Option<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(word.as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        std::io::Result::Ok(answer)
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()?
        .ok()
}

fn config_text(data: &Path, port: u16) -> String {
    format!(
        "tickTime={TICK_MS}\n\
         initLimit=10\n\
         syncLimit=5\n\
         dataDir={}\n\
         clientPort={port}\n\
         clientPortAddress=127.0.0.1\n\
         maxClientCnxns=0\n\
         admin.enableServer=false\n\
         4lw.commands.whitelist=ruok,srvr,mntr,cons\n\
         forceSync=no\n\
         preAllocSize=4096\n",
        data.display()
    )
}

fn jvm_args(classpath: &str, config: &Path) -> Vec<String> {
    let config: PathBuf = config.to_path_buf();
    vec![
        "-Xmx256m".to_owned(),
        // Quick start-up and little CPU on a 2-core machine shared with the rest of the cluster.
        "-XX:+UseSerialGC".to_owned(),
        "-XX:TieredStopAtLevel=1".to_owned(),
        "-cp".to_owned(),
        classpath.to_owned(),
        "org.apache.zookeeper.server.quorum.QuorumPeerMain".to_owned(),
        config.display().to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_disables_the_admin_server_and_allows_ruok() {
        let text = config_text(Path::new("/tmp/x/data"), 2999);
        assert!(text.contains("clientPort=2999\n"));
        assert!(text.contains("admin.enableServer=false\n"));
        assert!(text.contains("4lw.commands.whitelist=ruok"));
        assert!(text.contains("tickTime=500\n"));
    }

    /// A `cons` line parses into its session and last request id; the server's own
    /// listing line (no session) is skipped.
    #[test]
    fn cons_lines_parse() {
        let line = " /127.0.0.1:40000[1](queued=0,recved=12,sent=12,sid=0x100f,lop=PING,est=1,to=2000,lcxid=0x1c,lzxid=0x5,lresp=1,llat=0,minlat=0,avglat=0,maxlat=1)";
        assert_eq!(
            session_and_last_request(line),
            Some(("0x100f".to_owned(), 0x1c))
        );
        assert_eq!(
            session_and_last_request(" /127.0.0.1:40001[0](queued=0,recved=1,sent=0)"),
            None
        );
    }

    #[tokio::test]
    async fn a_port_without_zookeeper_is_not_ok() {
        let port = crate::ports::free_port().unwrap();
        assert!(!is_ok(port).await);
    }
}
