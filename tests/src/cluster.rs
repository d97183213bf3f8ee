//! [`Cluster`]: ZooKeeper, the data nodes, the gateways and the API server of one test, each a
//! real OS process on its own free loopback port, all under one temporary directory.
//!
//! ```text
//! <tmp>/cartdb-cluster-XXXX/
//!   zookeeper/{zoo.cfg,data/,zookeeper.log}
//!   datanode-<id>/data/      datanode-<id>.log
//!   gateway-<n>.log          api.log
//! ```
//!
//! Data nodes and gateways are numbered from 1 (data node `i` is CRUSH device `device_i`).
//! A restarted process gets the same command line: the same port and the same data directory.
//! Dropping the cluster kills every process (API, gateways, data nodes, then ZooKeeper) and
//! prints the tail of every log; the test harness shows that output only for failing tests.
//! The directory is kept when the test panicked or `CARTDB_KEEP_CLUSTER` is set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::client::ApiClient;
use crate::gate::TcpGate;
use crate::ports::free_port;
use crate::process::Service;
use crate::view::ClusterView;
use crate::wait::Deadline;
use crate::zookeeper::ZooKeeper;

/// What to start. `Default` is the seed's shape: 6 data nodes, 2 gateways, RF=3, W=2, R=2.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Data nodes, devices `device_1..=device_n` of the CRUSH map.
    pub datanodes: usize,
    /// Gateways.
    pub gateways: usize,
    /// Replicas of every item (RF).
    pub replicas: usize,
    /// Acknowledgements a write needs (W).
    pub write_quorum: usize,
    /// Replies a read needs (R).
    pub read_quorum: usize,
    /// The API server's admin bearer token ([`TEST_ADMIN_TOKEN`] by default); `None` starts
    /// it with `--insecure-open-admin`.
    pub admin_token: Option<String>,
    /// ZooKeeper session timeout of every process: how long a silent process stays "up".
    pub zk_session_timeout_ms: u64,
    /// How long [`Cluster::start`] waits for everything to come up.
    pub start_timeout: Duration,
    /// The CRUSH map file (default `<workspace>/config/crush-map.json`).
    pub map_file: Option<PathBuf>,
    /// The catalog file (default `<workspace>/config/catalog.json`).
    pub catalog_file: Option<PathBuf>,
    /// Extra command-line arguments of every data node (e.g. compaction timing).
    pub datanode_args: Vec<String>,
    /// Extra command-line arguments of every gateway.
    pub gateway_args: Vec<String>,
    /// Extra command-line arguments of the API server.
    pub api_args: Vec<String>,
    /// Test-only clock offsets of single gateways, in milliseconds, by gateway number (1-based,
    /// as [`Cluster::gateway`]; `--test-clock-offset-ms`): gateways whose clocks differ.
    pub gateway_clock_offsets_ms: Vec<(usize, i64)>,
    /// Gateways (1-based) that reach ZooKeeper through a [`TcpGate`] of their own, so that
    /// a test can cut them from ZooKeeper alone ([`Cluster::gateway_zk_gate`]).
    pub gateway_zk_gates: Vec<usize>,
    /// Gateways (1-based) that reach every data node through a gate of their own
    /// (`--test-peer-route`), so that a test can partition them from chosen data nodes
    /// ([`Cluster::partition`]).
    pub gateway_data_gates: Vec<usize>,
}

/// The admin token of test clusters unless a test sets another.
pub const TEST_ADMIN_TOKEN: &str = "cartdb-test-admin-token";

/// The cluster secret of every test cluster, written to `<cluster dir>/cluster-secret` and
/// given to every process with `--cluster-secret-file`.
pub const TEST_CLUSTER_SECRET: &str = "cartdb-test-cluster-secret";
/// The name of that file in the cluster's directory.
const SECRET_FILE: &str = "cluster-secret";

/// The key of [`TEST_CLUSTER_SECRET`], for tests that speak the RPC themselves.
///
/// # Panics
/// Never: the constant is long enough.
pub fn test_cluster_key() -> cartdb_core::rpc::ClusterKey {
    #[allow(clippy::expect_used)]
    cartdb_core::rpc::ClusterKey::new(TEST_CLUSTER_SECRET.as_bytes(), "TEST_CLUSTER_SECRET")
        .expect("the test secret is long enough")
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            datanodes: 6,
            gateways: 2,
            replicas: 3,
            write_quorum: 2,
            read_quorum: 2,
            admin_token: Some(TEST_ADMIN_TOKEN.to_owned()),
            zk_session_timeout_ms: 2_000,
            start_timeout: Duration::from_secs(90),
            map_file: None,
            catalog_file: None,
            datanode_args: Vec::new(),
            gateway_args: Vec::new(),
            api_args: Vec::new(),
            gateway_clock_offsets_ms: Vec::new(),
            gateway_zk_gates: Vec::new(),
            gateway_data_gates: Vec::new(),
        }
    }
}

impl ClusterOptions {
    /// These options with compaction that acts within seconds: a 1 s acceptance window and
    /// a 2 s grace on the data nodes, a 2 s grace and logs of 4 operations on the gateways.
    #[must_use]
    pub fn with_quick_compaction(mut self) -> Self {
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        self.datanode_args.extend(args(&[
            "--accept-window-secs",
            "1",
            "--compaction-grace-secs",
            "2",
        ]));
        self.gateway_args.extend(args(&[
            "--compaction-grace-secs",
            "2",
            "--compact-min-ops",
            "4",
        ]));
        self
    }

    /// These options with gateway `n` (1-based)'s clock running `offset_ms` milliseconds ahead
    /// (behind, if negative) of the host's.
    #[must_use]
    pub fn with_gateway_clock_offset(mut self, n: usize, offset_ms: i64) -> Self {
        self.gateway_clock_offsets_ms.push((n, offset_ms));
        self
    }

    /// These options with gateway `n` (1-based) reaching each data node through a gate of its
    /// own.
    #[must_use]
    pub fn with_gateway_data_gates(mut self, n: usize) -> Self {
        self.gateway_data_gates.push(n);
        self
    }

    /// These options with gateway `n` (1-based) reaching ZooKeeper through a gate of its own.
    #[must_use]
    pub fn with_gateway_zk_gate(mut self, n: usize) -> Self {
        self.gateway_zk_gates.push(n);
        self
    }

    /// These options with the gateways' anti-entropy sweep at `items_per_sec` (0: off),
    /// replacing an earlier pace.
    #[must_use]
    pub fn with_sweep(mut self, items_per_sec: u32) -> Self {
        const FLAG: &str = "--anti-entropy-items-per-sec";
        if let Some(at) = self.gateway_args.iter().position(|arg| arg == FLAG) {
            self.gateway_args
                .drain(at..(at + 2).min(self.gateway_args.len()));
        }
        self.gateway_args
            .extend([FLAG.to_owned(), items_per_sec.to_string()]);
        self
    }
}

/// The files a cluster is made from, checked before anything starts.
#[derive(Debug, Clone)]
struct Artifacts {
    datanode: PathBuf,
    gateway: PathBuf,
    api: PathBuf,
    policy: PathBuf,
    merge_policy: PathBuf,
    map: PathBuf,
    catalog: PathBuf,
}

impl Artifacts {
    fn locate(options: &ClusterOptions) -> anyhow::Result<Self> {
        let bin = bin_dir();
        let root = workspace_root();
        let artifacts = Self {
            datanode: bin.join("cartdb-datanode"),
            gateway: bin.join("cartdb-gateway"),
            api: bin.join("cartdb-api"),
            policy: PathBuf::from(cartdb_policies::CRUSH_POLICY_WASM),
            merge_policy: PathBuf::from(cartdb_policies::MERGE_POLICY_WASM),
            map: options
                .map_file
                .clone()
                .unwrap_or_else(|| root.join("config/crush-map.json")),
            catalog: options
                .catalog_file
                .clone()
                .unwrap_or_else(|| root.join("config/catalog.json")),
        };
        for binary in [&artifacts.datanode, &artifacts.gateway, &artifacts.api] {
            if !binary.is_file() {
                bail!(
                    "{} not found: run `cargo build --workspace` first (or set CARTDB_BIN_DIR to the directory holding the cartdb binaries)",
                    binary.display()
                );
            }
        }
        for file in [&artifacts.policy, &artifacts.map, &artifacts.catalog] {
            if !file.is_file() {
                bail!(
                    "{} not found: run `cargo build --workspace` first",
                    file.display()
                );
            }
        }
        Ok(artifacts)
    }
}

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where the `cartdb-*` binaries are: `CARTDB_BIN_DIR`, else the profile directory of the
/// running test executable (`target/<profile>/deps/..`), else `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARTDB_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        (deps.file_name()? == "deps").then(|| deps.parent().map(Path::to_path_buf))?
    });
    from_exe.unwrap_or_else(|| workspace_root().join("target/debug"))
}

/// A running cartdb cluster. See the module docs for its layout.
#[derive(Debug)]
pub struct Cluster {
    options: ClusterOptions,
    client: ApiClient,
    api: Service,
    gateways: Vec<Service>,
    datanodes: Vec<Service>,
    zookeeper: ZooKeeper,
    /// Gates between single gateways and ZooKeeper, by gateway number.
    zk_gates: BTreeMap<usize, TcpGate>,
    /// Gates between single gateways and data nodes, by (gateway number, device id).
    data_gates: BTreeMap<(usize, usize), TcpGate>,
    dir: Option<tempfile::TempDir>,
}

/// `--cluster-secret-file <dir>/cluster-secret`.
fn secret_args(dir: &Path) -> [std::ffi::OsString; 2] {
    [
        "--cluster-secret-file".into(),
        dir.join(SECRET_FILE).into_os_string(),
    ]
}

impl Cluster {
    /// Starts ZooKeeper, then every data node, gateway and the API server, and waits until
    /// `/api/cluster` shows every device up and in and every gateway registered.
    ///
    /// # Errors
    /// When a binary or input file is missing, a process exits during start-up, or the
    /// cluster is not ready within `options.start_timeout`; the error carries the log tails.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Self> {
        let artifacts = Artifacts::locate(&options)?;
        let dir = tempfile::Builder::new()
            .prefix("cartdb-cluster-")
            .tempdir()
            .context("creating the cluster directory")?;
        let secret = dir.path().join(SECRET_FILE);
        std::fs::write(&secret, TEST_CLUSTER_SECRET)
            .with_context(|| format!("writing {}", secret.display()))?;
        let zk_dir = dir.path().join("zookeeper");
        let zookeeper = ZooKeeper::start(&zk_dir, free_port()?, options.start_timeout).await?;
        let api_port = free_port()?;
        let api_url = format!("http://127.0.0.1:{api_port}");
        let api = Self::api_service(&artifacts, dir.path(), api_port, &zookeeper, &options);
        let mut zk_gates = BTreeMap::new();
        for &n in &options.gateway_zk_gates {
            zk_gates.insert(n, TcpGate::start(&zookeeper.connect_string()).await?);
        }
        let mut cluster = Self {
            client: ApiClient::new(api_url, options.admin_token.clone())?,
            zk_gates,
            data_gates: BTreeMap::new(),
            options,
            api,
            gateways: Vec::new(),
            datanodes: Vec::new(),
            zookeeper,
            dir: Some(dir),
        };
        match cluster.launch(&artifacts).await {
            Ok(()) => Ok(cluster),
            Err(error) => {
                let tails = cluster.log_tails(40);
                let kept = cluster.keep_dir();
                Err(error.context(format!(
                    "cluster start-up failed (directory kept: {kept})\n{tails}"
                )))
            }
        }
    }

    async fn launch(&mut self, artifacts: &Artifacts) -> anyhow::Result<()> {
        for id in 1..=self.options.datanodes {
            let mut node = self.datanode_service(artifacts, id)?;
            node.start()?;
            self.datanodes.push(node);
        }
        for &n in &self.options.gateway_data_gates {
            for (i, node) in self.datanodes.iter().enumerate() {
                let address = node
                    .arg_value("--listen")
                    .context("a data node's address")?;
                self.data_gates
                    .insert((n, i + 1), TcpGate::start(&address).await?);
            }
        }
        for n in 1..=self.options.gateways {
            let mut gateway = self.gateway_service(artifacts, n)?;
            gateway.start()?;
            self.gateways.push(gateway);
        }
        self.api.start()?;
        let (devices, gateways) = (self.options.datanodes, self.options.gateways);
        let what = "every device up and in and every gateway registered";
        self.wait_for_view(what, self.options.start_timeout, |view| {
            view.devices.len() == devices
                && view.devices_up_and_in() == devices
                && view.gateways == gateways
        })
        .await?;
        Ok(())
    }

    fn datanode_service(&self, artifacts: &Artifacts, id: usize) -> anyhow::Result<Service> {
        let root = self.path();
        let data = root.join(format!("datanode-{id}/data"));
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let log = root.join(format!("datanode-{id}.log"));
        Ok(
            Service::new(format!("datanode-{id}"), &artifacts.datanode, log)
                .args(["--device-id".to_owned(), id.to_string()])
                .args(["--listen".to_owned(), format!("127.0.0.1:{}", free_port()?)])
                .args(["--data-dir".into(), data.into_os_string()])
                .args(self.zk_args())
                .args(self.secret_args())
                .args(self.options.datanode_args.clone()),
        )
    }

    fn gateway_service(&self, artifacts: &Artifacts, n: usize) -> anyhow::Result<Service> {
        let o = &self.options;
        let log = self.path().join(format!("gateway-{n}.log"));
        Ok(
            Service::new(format!("gateway-{n}"), &artifacts.gateway, log)
                .args(["--listen".to_owned(), format!("127.0.0.1:{}", free_port()?)])
                .args(match self.zk_gates.get(&n) {
                    Some(gate) => self.zk_args_via(gate.address()),
                    None => self.zk_args(),
                })
                .args(self.secret_args())
                .args([
                    "--placement-policy".into(),
                    artifacts.policy.clone().into_os_string(),
                ])
                .args([
                    "--merge-policy".into(),
                    artifacts.merge_policy.clone().into_os_string(),
                ])
                .args(o.gateway_args.clone())
                .args(
                    self.data_gates
                        .iter()
                        .filter(|((g, _), _)| *g == n)
                        .filter_map(|((_, device), gate)| {
                            let node = self.datanodes.get(device - 1)?;
                            let address = node.arg_value("--listen")?;
                            Some(format!("--test-peer-route={address}={}", gate.address()))
                        }),
                )
                .args(
                    o.gateway_clock_offsets_ms
                        .iter()
                        .filter(|(gateway, _)| *gateway == n)
                        .map(|(_, ms)| format!("--test-clock-offset-ms={ms}")),
                )
                .args(["--map-file".into(), artifacts.map.clone().into_os_string()])
                .args([
                    "--catalog-file".into(),
                    artifacts.catalog.clone().into_os_string(),
                ])
                .args(["--replicas".to_owned(), o.replicas.to_string()])
                .args(["--write-quorum".to_owned(), o.write_quorum.to_string()])
                .args(["--read-quorum".to_owned(), o.read_quorum.to_string()]),
        )
    }

    fn api_service(
        artifacts: &Artifacts,
        dir: &Path,
        port: u16,
        zk: &ZooKeeper,
        options: &ClusterOptions,
    ) -> Service {
        let mut api = Service::new("api", &artifacts.api, dir.join("api.log"))
            .args(["--listen".to_owned(), format!("127.0.0.1:{port}")])
            .args(["--zk".to_owned(), zk.connect_string()])
            .args([
                "--zk-session-timeout-ms".to_owned(),
                options.zk_session_timeout_ms.to_string(),
            ])
            .args(secret_args(dir));
        api = match &options.admin_token {
            Some(token) => api.args(["--admin-token", token]),
            None => api.args(["--insecure-open-admin"]),
        };
        api.args(options.api_args.clone())
    }

    fn secret_args(&self) -> [std::ffi::OsString; 2] {
        secret_args(self.path())
    }

    fn zk_args(&self) -> [String; 4] {
        self.zk_args_via(&self.zookeeper.connect_string())
    }

    /// [`Cluster::zk_args`] with ZooKeeper reached at `address` (a gate in front of it).
    fn zk_args_via(&self, address: &str) -> [String; 4] {
        [
            "--zk".to_owned(),
            address.to_owned(),
            "--zk-session-timeout-ms".to_owned(),
            self.options.zk_session_timeout_ms.to_string(),
        ]
    }

    /// The cluster's directory.
    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("."), tempfile::TempDir::path)
    }

    /// The options the cluster was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// The API server's base URL, e.g. `http://127.0.0.1:23456`.
    pub fn api_url(&self) -> &str {
        self.client.base()
    }

    /// A client of the API server (with the admin token, if the cluster has one).
    pub fn client(&self) -> &ApiClient {
        &self.client
    }

    /// `host:port` of the cluster's ZooKeeper.
    pub fn zk_connect_string(&self) -> String {
        self.zookeeper.connect_string()
    }

    /// The cluster's ZooKeeper server.
    pub fn zookeeper(&self) -> &ZooKeeper {
        &self.zookeeper
    }

    /// The cluster's ZooKeeper server, to stop and restart it (its data directory stays).
    pub fn zookeeper_mut(&mut self) -> &mut ZooKeeper {
        &mut self.zookeeper
    }

    /// Clients of every registered gateway, by gateway id, from `/api/cluster`.
    ///
    /// # Errors
    /// When the API does not answer or a gateway cannot be reached.
    pub async fn gateway_clients(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<u64, crate::GatewayClient>> {
        let view = self.view().await?;
        let mut clients = std::collections::BTreeMap::new();
        for gateway in view.raw["gateways"].as_array().into_iter().flatten() {
            let id = gateway["id"].as_u64().context("a gateway without an id")?;
            let address = gateway["address"]
                .as_str()
                .context("a gateway without an address")?;
            clients.insert(id, crate::GatewayClient::connect(address).await?);
        }
        Ok(clients)
    }

    /// Data node `id` (1-based, the CRUSH device id).
    ///
    /// # Errors
    /// When there is no such data node.
    pub fn datanode(&mut self, id: usize) -> anyhow::Result<&mut Service> {
        let count = self.datanodes.len();
        id.checked_sub(1)
            .and_then(|i| self.datanodes.get_mut(i))
            .with_context(|| format!("no data node {id} (the cluster has 1..={count})"))
    }

    /// Gateway `n` (1-based).
    ///
    /// # Errors
    /// When there is no such gateway.
    pub fn gateway(&mut self, n: usize) -> anyhow::Result<&mut Service> {
        let count = self.gateways.len();
        n.checked_sub(1)
            .and_then(|i| self.gateways.get_mut(i))
            .with_context(|| format!("no gateway {n} (the cluster has 1..={count})"))
    }

    /// The API server process.
    pub fn api(&mut self) -> &mut Service {
        &mut self.api
    }

    /// Starts one more data node, with the next device id (7 in a default cluster), for a
    /// device an operator adds to the map (`cartdb device add`). It registers with
    /// ZooKeeper at once; the map decides when it receives placement groups.
    ///
    /// # Errors
    /// When a binary is missing or the node cannot be started.
    pub fn add_datanode(&mut self) -> anyhow::Result<usize> {
        let artifacts = Artifacts::locate(&self.options)?;
        let id = self.datanodes.len() + 1;
        let mut node = self.datanode_service(&artifacts, id)?;
        node.start()?;
        self.datanodes.push(node);
        Ok(id)
    }

    /// SIGKILLs data node `id`.
    ///
    /// # Errors
    /// When there is no such node or it cannot be killed.
    pub fn kill_datanode(&mut self, id: usize) -> anyhow::Result<()> {
        self.datanode(id)?.kill()
    }

    /// Starts data node `id` again: same port, same data directory (killing it first if it runs).
    ///
    /// # Errors
    /// When there is no such node or it cannot be started.
    pub fn restart_datanode(&mut self, id: usize) -> anyhow::Result<()> {
        self.datanode(id)?.restart()
    }

    /// SIGSTOPs data node `id`.
    ///
    /// # Errors
    /// When there is no such node or it is not running.
    pub fn pause_datanode(&mut self, id: usize) -> anyhow::Result<()> {
        self.datanode(id)?.pause()
    }

    /// SIGCONTs data node `id`.
    ///
    /// # Errors
    /// When there is no such node or it is not running.
    pub fn resume_datanode(&mut self, id: usize) -> anyhow::Result<()> {
        self.datanode(id)?.resume()
    }

    /// SIGKILLs gateway `n`.
    ///
    /// # Errors
    /// When there is no such gateway or it cannot be killed.
    pub fn kill_gateway(&mut self, n: usize) -> anyhow::Result<()> {
        self.gateway(n)?.kill()
    }

    /// Starts gateway `n` again with the same command line.
    ///
    /// # Errors
    /// When there is no such gateway or it cannot be started.
    pub fn restart_gateway(&mut self, n: usize) -> anyhow::Result<()> {
        self.gateway(n)?.restart()
    }

    /// The gateway number (1-based, as [`Cluster::gateway`]) listening at `address`.
    pub fn gateway_number(&self, address: &str) -> Option<usize> {
        self.gateways
            .iter()
            .position(|g| g.arg_value("--listen").as_deref() == Some(address))
            .map(|i| i + 1)
    }

    /// Cuts (`cut`) or heals the gates between gateway `n` (1-based) and data nodes
    /// `devices`: a partition between them, every other path left alone.
    ///
    /// # Errors
    /// When the gateway was not started with gates to those data nodes
    /// ([`ClusterOptions::with_gateway_data_gates`]).
    pub fn partition(&self, n: usize, devices: &[usize], cut: bool) -> anyhow::Result<()> {
        for &device in devices {
            let gate = self
                .data_gates
                .get(&(n, device))
                .with_context(|| format!("gateway {n} has no gate to data node {device}"))?;
            if cut {
                gate.cut();
            } else {
                gate.heal();
            }
        }
        Ok(())
    }

    /// The gate between gateway `n` (1-based) and ZooKeeper.
    ///
    /// # Errors
    /// When the gateway was not started behind one ([`ClusterOptions::with_gateway_zk_gate`]).
    pub fn gateway_zk_gate(&self, n: usize) -> anyhow::Result<&TcpGate> {
        self.zk_gates
            .get(&n)
            .with_context(|| format!("gateway {n} has no ZooKeeper gate"))
    }

    /// `GET /api/cluster`, parsed.
    ///
    /// # Errors
    /// When the API cannot be reached, answers an error, or the document cannot be parsed.
    pub async fn view(&self) -> anyhow::Result<ClusterView> {
        let reply = self.client.cluster().await?;
        if reply.status != 200 {
            bail!("/api/cluster answered {reply}");
        }
        ClusterView::parse(&reply.json)
    }

    /// Polls `/api/cluster` until `condition` holds (up to `timeout`); fails early, with the
    /// log tail, if a process that should be running has exited.
    ///
    /// # Errors
    /// When the deadline passes (naming `what` and the last view) or a process died.
    pub async fn wait_for_view(
        &mut self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&ClusterView) -> bool,
    ) -> anyhow::Result<ClusterView> {
        let mut deadline = Deadline::after(timeout);
        let mut last;
        loop {
            self.ensure_running()?;
            match self.view().await {
                Ok(view) if condition(&view) => return Ok(view),
                Ok(view) => last = view.raw.to_string(),
                Err(error) => last = format!("{error:#}"),
            }
            if deadline.has_passed() {
                bail!("timed out after {timeout:?} waiting for {what}; last /api/cluster: {last}");
            }
            deadline.pause().await;
        }
    }

    /// Fails, with its log tail, if a started process (not killed by the test) has exited.
    ///
    /// # Errors
    /// Names the first process found dead.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.zookeeper.service_mut().ensure_running()?;
        for service in self.datanodes.iter_mut().chain(self.gateways.iter_mut()) {
            service.ensure_running()?;
        }
        self.api.ensure_running()
    }

    /// The last `lines` lines of every process's log, labelled.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let services = std::iter::once(self.zookeeper.service())
            .chain(self.datanodes.iter())
            .chain(self.gateways.iter())
            .chain(std::iter::once(&self.api));
        for service in services {
            out.push_str(&format!(
                "----- {} ({}) -----\n{}\n",
                service.name(),
                service.log_path().display(),
                service.log_tail(lines)
            ));
        }
        out
    }

    /// Keeps the cluster directory after the test; returns its path.
    fn keep_dir(&mut self) -> String {
        match self.dir.take() {
            Some(dir) => dir.keep().display().to_string(),
            None => "already kept".to_owned(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let keep = std::thread::panicking() || std::env::var_os("CARTDB_KEEP_CLUSTER").is_some();
        let tails = self.log_tails(25);
        let _ = self.api.kill();
        for service in self.gateways.iter_mut().chain(self.datanodes.iter_mut()) {
            let _ = service.kill();
        }
        let _ = self.zookeeper.service_mut().kill();
        let location = match &self.dir {
            None => "kept (see the start-up error)".to_owned(),
            Some(_) if keep => format!("kept at {}", self.keep_dir()),
            Some(dir) => format!("{} (removed)", dir.path().display()),
        };
        // The test harness shows this only when the test failed.
        eprintln!("harness: cluster directory {location}; log tails:\n{tails}");
    }
}
