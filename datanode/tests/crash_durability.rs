//! Crash durability: a data node killed with SIGKILL in the middle of a write load loses no
//! write it acknowledged, and its store reopens (twice in a row).
//!
//! The test binary re-runs itself as the child: `child_writer` only does anything when
//! `CHILD_DIR_ENV` is set, and then writes until it is killed, printing `ACK user product id`
//! for every acknowledged operation.
//!
//! SIGKILL ends the process, not the machine: it checks that acknowledged writes have left
//! the process and that recovery copes with a torn journal, but it cannot tell an fsync from
//! a write into the page cache. That the acknowledgement waits for `SyncData` is checked by
//! reading `CartStore::commit`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use cartdb_core::cart::{ItemKey, OpId, OpKind};
use cartdb_core::wire::DataResponse;
use cartdb_datanode::store::CartStore;
use common::{op, open};

const CHILD_DIR_ENV: &str = "CARTDB_TEST_CRASH_CHILD_DIR";
const CHILD_ROUND_ENV: &str = "CARTDB_TEST_CRASH_CHILD_ROUND";
const WRITERS: u64 = 32;
/// Acknowledgements to see before the kill.
const ACKS_BEFORE_KILL: usize = 3_000;
/// A stuck child fails the test instead of hanging it.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// One acknowledged operation, as the child printed it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Ack {
    user: String,
    product: String,
    id: u128,
}

/// Every operation a child acknowledged before SIGKILL is in the store afterwards; two
/// rounds, so the second child writes into a store recovered from the first kill.
#[test]
fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = BTreeSet::new();
    for round in 0..2 {
        let acks = run_child_until_killed(dir.path(), round);
        assert!(
            acks.len() >= ACKS_BEFORE_KILL,
            "round {round}: only {} acks",
            acks.len()
        );
        all.extend(acks);
        check_present(dir.path(), &all);
    }
}

/// The child: writes until killed. Does nothing unless started by the test above.
#[test]
#[ignore = "a child process of kill_9_loses_no_acknowledged_write"]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND_ENV).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(write_forever(Path::new(&dir), round));
}

async fn write_forever(dir: &Path, round: u64) {
    let (_store, writer) = open(dir, 512);
    let writer = Arc::new(writer);
    let tasks: Vec<_> = (0..WRITERS)
        .map(|task| tokio::spawn(write_loop(writer.clone(), round, task)))
        .collect();
    futures::future::join_all(tasks).await;
}

/// One writer: adds (and every fifth operation, deletes) on a few items of its own user.
async fn write_loop(
    writer: Arc<cartdb_datanode::group_commit::GroupCommit>,
    round: u64,
    task: u64,
) {
    let user = format!("user{task}");
    for n in 0u64.. {
        let id = (u128::from(round) << 96) | (u128::from(task) << 64) | u128::from(n);
        let product = format!("p{}", n % 3);
        let kind = if n % 5 == 4 {
            OpKind::Delete
        } else {
            OpKind::Add
        };
        let hlc = (round << 40) | n;
        let reply = writer.apply(op(&user, &product, "c", id, kind, hlc)).await;
        if let DataResponse::Applied {
            duplicate: false, ..
        } = reply
        {
            println!("ACK {user} {product} {id}");
        }
    }
}

/// Starts a child writer on `dir`, kills it with SIGKILL once it has acknowledged enough,
/// and returns everything it acknowledged.
fn run_child_until_killed(dir: &Path, round: u64) -> Vec<Ack> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = read_lines_in_background(child.stdout.take().unwrap());
    let mut acks = Vec::new();
    while acks.len() < ACKS_BEFORE_KILL {
        match lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => acks.extend(parse_ack(&line)),
            Err(e) => {
                let _ = child.kill();
                panic!("child stopped writing after {} acks: {e}", acks.len());
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    // Lines the child printed before it died are still in the pipe.
    acks.extend(lines.iter().filter_map(|line| parse_ack(&line)));
    acks
}

fn read_lines_in_background(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let user = parts.next()?.to_owned();
    let product = parts.next()?.to_owned();
    let id = parts.next()?.parse().ok()?;
    Some(Ack { user, product, id })
}

fn check_present(dir: &Path, acks: &BTreeSet<Ack>) {
    let store = CartStore::open(dir).unwrap();
    let mut missing = Vec::new();
    for ack in acks {
        let key = ItemKey {
            user: ack.user.clone(),
            product: ack.product.clone(),
        };
        let item = store.read_item(&key).unwrap();
        if !item.is_some_and(|item| item.contains(OpId(ack.id))) {
            missing.push(ack);
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged ops lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
}
