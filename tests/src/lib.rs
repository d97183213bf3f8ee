//! Cluster test harness for cartdb: real Apache ZooKeeper and the real `cartdb-*` binaries run
//! as separate OS processes on free loopback ports, with fault injection (kill -9, SIGSTOP /
//! SIGCONT, restart) and an HTTP client for the REST API.
//!
//! ```text
//!   test ──HTTP──> cartdb-api ──> cartdb-gateway x2 ──> cartdb-datanode x6
//!                      \               |                     |
//!                       `─────────> ZooKeeper (java, standalone) <─'
//! ```
//!
//! The binaries are taken from `CARTDB_BIN_DIR`, or else from the profile directory of the
//! running test executable (normally `<workspace>/target/debug`): run
//! `cargo build --workspace` before the cluster tests. Every process writes its output to a log
//! file in the cluster's temporary directory; when a test fails, dropping the [`Cluster`] prints
//! the tail of every log and keeps the directory.
//!
//! # Layout
//! - [`cluster`]: [`Cluster::start`] with [`ClusterOptions`], fault injection and the readiness wait.
//! - [`browser`]: [`Browser`], headless Chromium driven through ChromeDriver (WebDriver).
//! - [`cli`]: running the operator CLI `cartdb` against a cluster.
//! - [`client`]: [`ApiClient`], a thin REST client returning `(status, json)` as [`Reply`].
//! - [`gateway`]: [`GatewayClient`], one gateway's RPC, for tests that choose the gateway.
//! - [`gate`]: [`TcpGate`], a loopback proxy a test cuts and heals (one gateway cut from
//!   ZooKeeper alone).
//! - [`replica_check`]: the replicas' own states and whether they converged.
//! - [`view`]: [`ClusterView`], the parsed `/api/cluster` document.
//! - [`process`]: [`Service`], one managed child process with its log file.
//! - [`prometheus`]: scraping `GET /metrics` and reading the text format strictly.
//! - [`zookeeper`]: [`ZooKeeper`], a standalone server in a directory, and the `ruok` probe.
//! - [`ports`]: free loopback ports outside the kernel's ephemeral range.
//! - [`wait`]: [`wait_until`] and [`Deadline`], polling with a deadline (never a bare sleep).
//! - [`workload`]: [`Workload`], concurrent Jepsen-style clients of cart operations.
//! - [`history`]: [`History`], every operation with its invocation, completion and outcome
//!   (ok, failed or unknown), and the check that carts hold what it allows.

pub mod browser;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod gate;
pub mod gateway;
pub mod history;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod replica_check;
pub mod view;
pub mod wait;
pub mod workload;
pub mod zookeeper;

pub use browser::Browser;
pub use client::{ApiClient, Reply};
pub use cluster::{Cluster, ClusterOptions};
pub use gate::TcpGate;
pub use gateway::GatewayClient;
pub use history::History;
pub use process::Service;
pub use view::ClusterView;
pub use wait::{Deadline, wait_until};
pub use workload::{Retry, Workload, WorkloadOptions};
pub use zookeeper::ZooKeeper;
