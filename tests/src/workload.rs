//! A Jepsen-style workload and its check: shoppers insert and delete items through the API
//! while a test injects faults, and afterwards every cart must hold exactly what was
//! acknowledged: no acknowledged operation lost, none applied twice, nothing resurrected.
//!
//! Each operation carries an `Idempotency-Key` and is retried with the same key until it is
//! acknowledged (the API documents 503 as "retry with the same key"), so it is applied
//! exactly once and the expected cart is known exactly; any other refusal is recorded as a
//! failure. A delete only targets an item its shopper holds, so "not in cart" would mean a
//! lost insert.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::task::JoinHandle;

use crate::client::ApiClient;
use crate::wait::{Deadline, wait_until};

/// How long one operation may be retried before the workload gives up on the run.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// The workload's items (all in the default catalog).
pub const ITEMS: [&str; 4] = ["pork", "soap", "yogurt", "cereals"];

/// What the workload did, and what each cart must therefore hold.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// user -> item -> acknowledged inserts minus acknowledged deletes.
    pub expected: BTreeMap<String, BTreeMap<String, u64>>,
    /// Operations acknowledged.
    pub acknowledged: u64,
    /// Attempts answered with a retryable status (503), by status.
    pub retried: BTreeMap<u16, u64>,
    /// Answers that are neither an acknowledgement nor retryable, with the reply.
    pub failures: Vec<String>,
}

/// A running workload; [`Workload::stop`] ends it and returns its [`History`].
pub struct Workload {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    task: JoinHandle<anyhow::Result<History>>,
}

impl Workload {
    /// Starts one shopper-after-shopper client over `users` shoppers named `{prefix}-{n}`,
    /// choosing with a fixed seed.
    pub fn start(api: ApiClient, prefix: &str, users: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(
            api,
            prefix.to_owned(),
            users,
            stop.clone(),
            acknowledged.clone(),
        ));
        Self {
            stop,
            acknowledged,
            task,
        }
    }

    /// Waits until `more` operations beyond those acknowledged so far are acknowledged.
    ///
    /// # Errors
    /// When the workload stopped (an operation it could not get acknowledged), or `more`
    /// operations take longer than `timeout`.
    pub async fn advance(&self, more: u64, timeout: Duration) -> anyhow::Result<()> {
        let target = self.acknowledged.load(Ordering::Relaxed) + more;
        wait_until(
            &format!("{more} more acknowledged operations"),
            timeout,
            || async {
                ensure!(!self.task.is_finished(), "the workload stopped early");
                Ok((self.acknowledged.load(Ordering::Relaxed) >= target).then_some(()))
            },
        )
        .await
    }

    /// Stops after the operation in flight and returns the history.
    ///
    /// # Errors
    /// When an operation could not be acknowledged within [`RETRY_FOR`], or the task died.
    pub async fn stop(self) -> anyhow::Result<History> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.context("the workload task died")?
    }
}

/// splitmix64: a fixed, dependency-free sequence of choices.
struct Choices(u64);

impl Choices {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        usize::try_from(z % u64::try_from(below.max(1)).unwrap_or(1)).unwrap_or(0)
    }
}

async fn run(
    api: ApiClient,
    prefix: String,
    users: usize,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
) -> anyhow::Result<History> {
    let mut history = History::default();
    let mut choices = Choices(users as u64);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let user = format!("{prefix}-{}", choices.next(users));
        let item = ITEMS[choices.next(ITEMS.len())];
        let held = history
            .expected
            .get(&user)
            .and_then(|cart| cart.get(item))
            .copied()
            .unwrap_or(0);
        let delete = held > 0 && choices.next(3) == 0;
        let key = format!("{prefix}-op-{n}");
        apply(&api, &user, item, delete, &key, &mut history).await?;
        let qty = history
            .expected
            .entry(user)
            .or_default()
            .entry(item.to_owned())
            .or_default();
        if delete {
            *qty -= 1;
        } else {
            *qty += 1;
        }
        history.acknowledged += 1;
        acknowledged.fetch_add(1, Ordering::Relaxed);
    }
    Ok(history)
}

/// Sends one operation until it is acknowledged.
async fn apply(
    api: &ApiClient,
    user: &str,
    item: &str,
    delete: bool,
    key: &str,
    history: &mut History,
) -> anyhow::Result<()> {
    let mut deadline = Deadline::after(RETRY_FOR);
    loop {
        let reply = if delete {
            api.delete_with_key(user, item, key).await
        } else {
            api.insert_with_key(user, item, key).await
        };
        match reply {
            Ok(reply) if reply.status == 200 => return Ok(()),
            Ok(reply) if reply.status == 503 => {
                *history.retried.entry(503).or_default() += 1;
            }
            Ok(reply) => {
                let verb = if delete { "delete" } else { "insert" };
                history
                    .failures
                    .push(format!("{verb} {user} {item} (key {key}): {reply}"));
                return Ok(());
            }
            // The API server itself unreachable: retried like a 503.
            Err(_) => *history.retried.entry(0).or_default() += 1,
        }
        if deadline.has_passed() {
            bail!("{key} ({user} {item}) not acknowledged within {RETRY_FOR:?}");
        }
        deadline.pause().await;
    }
}

impl History {
    /// Checks every shopper's cart: `list_all` (a quorum read) shows exactly the expected
    /// quantity of every item, and no request failed beyond the retryable ones.
    ///
    /// # Errors
    /// The first cart that differs, or the failures.
    pub async fn check(&self, api: &ApiClient) -> anyhow::Result<()> {
        ensure!(
            self.failures.is_empty(),
            "{} requests failed beyond the retryable: {:?}",
            self.failures.len(),
            self.failures
        );
        ensure!(self.acknowledged > 0, "the workload acknowledged nothing");
        for (user, cart) in &self.expected {
            let reply = api.list_all(user).await?;
            ensure!(reply.status == 200, "list_all {user}: {reply}");
            for (item, &qty) in cart {
                let held = reply.qty_of(item);
                if held != qty {
                    bail!(
                        "{user} holds {held} {item}, the acknowledged operations leave {qty}: {}",
                        if held < qty {
                            "lost"
                        } else {
                            "resurrected or applied twice"
                        }
                    );
                }
            }
            for (item, held) in reply.item_quantities() {
                ensure!(
                    cart.contains_key(&item),
                    "{user} holds {held} {item}, which the workload never inserted"
                );
            }
        }
        Ok(())
    }

    /// The shoppers the workload used.
    pub fn users(&self) -> impl Iterator<Item = &String> {
        self.expected.keys()
    }

    /// The shoppers holding at least one of `item`.
    pub fn holders_of(&self, item: &str) -> Vec<String> {
        self.expected
            .iter()
            .filter(|(_, cart)| cart.get(item).is_some_and(|&q| q > 0))
            .map(|(user, _)| user.clone())
            .collect()
    }
}
