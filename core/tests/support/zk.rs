//! A real standalone ZooKeeper server for core's tests, started once per test binary.
//!
//! Tests share the server and isolate themselves with a chroot each, which is exactly what a
//! chroot is for, and saves a JVM start per test. The server runs under a small shell
//! watchdog that reads the test process's end of a pipe: when the test binary exits (even
//! when killed) the pipe closes, and the watchdog stops ZooKeeper and removes its data dir.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
const SLF4J_JAR: &str = "/usr/share/java/slf4j-simple.jar";
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running ZooKeeper server.
pub struct ZkServer {
    address: SocketAddr,
    log: PathBuf,
    // Held only so that the watchdog's pipe stays open for the life of the test binary.
    _watchdog: Mutex<(Child, ChildStdin)>,
}

impl ZkServer {
    /// The server shared by every test of this binary, started on first use.
    pub fn shared() -> &'static ZkServer {
        static SERVER: OnceLock<ZkServer> = OnceLock::new();
        SERVER.get_or_init(ZkServer::start)
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    fn start() -> ZkServer {
        require_installation();
        let dir = tempfile::Builder::new()
            .prefix("cartdb-core-zk-")
            .tempdir()
            .expect("create a ZooKeeper data dir")
            .keep();
        let port = free_port();
        let config = write_config(&dir, port);
        let log = dir.join("zookeeper.log");
        let watchdog = spawn_watchdog(&dir, &config, &log);
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let server = ZkServer {
            address,
            log,
            _watchdog: Mutex::new(watchdog),
        };
        server.wait_until_serving();
        server
    }

    fn wait_until_serving(&self) {
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if ruok(self.address) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("ZooKeeper did not answer `ruok` within {START_DEADLINE:?}; its log:\n{log}");
    }
}

fn require_installation() {
    let java = Command::new("java").arg("-version").output();
    if java.is_err() || !Path::new(ZOOKEEPER_JAR).exists() || !Path::new(SLF4J_JAR).exists() {
        panic!(
            "these tests need a real ZooKeeper: java on PATH, {ZOOKEEPER_JAR} and {SLF4J_JAR} \
             (Debian: `apt-get install -y zookeeper`)"
        );
    }
}

/// A port that was free a moment ago (the tiny race is acceptable in tests).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn write_config(dir: &Path, port: u16) -> PathBuf {
    // tickTime 500 ms allows session timeouts from 1 s, which keeps expiry tests fast; the
    // admin server is off because it would take port 8080.
    let config = format!(
        "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
         clientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
         4lw.commands.whitelist=ruok,srvr,mntr\n",
        dir.join("data").display()
    );
    let path = dir.join("zoo.cfg");
    std::fs::write(&path, config).expect("write zoo.cfg");
    path
}

fn spawn_watchdog(dir: &Path, config: &Path, log: &Path) -> (Child, ChildStdin) {
    let script = r#"java -Xmx256m -cp "$ZK_CP" org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZK_CFG" >"$ZK_LOG" 2>&1 &
pid=$!
read -r _
kill "$pid"
wait "$pid"
rm -rf "$ZK_DIR""#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("ZK_CP", format!("{ZOOKEEPER_JAR}:{SLF4J_JAR}"))
        .env("ZK_CFG", config)
        .env("ZK_LOG", log)
        .env("ZK_DIR", dir)
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the ZooKeeper watchdog shell");
    let stdin = child.stdin.take().expect("watchdog stdin");
    (child, stdin)
}

/// Whether the server answers the `ruok` four-letter word with `imok`.
fn ruok(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    stream.write_all(b"ruok").is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer == "imok"
}
