//! A Jepsen-style workload: concurrent clients insert and delete items of shared shoppers
//! through the API while a test injects faults, recording every operation in a
//! [`History`]; afterwards [`History::check`] reads every cart with a quorum read and
//! checks it against the history (see [`crate::history`] for the rule).
//!
//! Every operation carries an `Idempotency-Key`. With [`Retry::UntilAcknowledged`] each is
//! retried with its key until acknowledged (the API documents 503 as "retry with the same
//! key"), so it is applied exactly once and every quantity is known exactly. With
//! [`Retry::Once`] an operation gets one attempt, and a 503 or a time-out leaves its
//! outcome unknown: the check then allows a range.
//!
//! A delete only targets an item its shopper surely holds, even if every delete in flight
//! or of unknown outcome took effect ([`crate::history::Tally::surely_held`]), so "not in
//! cart" always means a lost insert.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::task::JoinHandle;

use crate::client::ApiClient;
use crate::history::{Event, History, Kind, Outcome, Tally};
use crate::wait::{Deadline, wait_until};

/// How long one operation may be retried before the workload gives up on the run.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// The workload's items (all in the default catalog).
pub const ITEMS: [&str; 4] = ["pork", "soap", "yogurt", "cereals"];

/// What a client does with an operation that was not acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Retry with the same key (on 503 or no answer) until acknowledged; give up on the
    /// whole run after a minute.
    UntilAcknowledged,
    /// One attempt; a 503 or no answer leaves the outcome unknown.
    Once,
}

/// The shape of a workload.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// Shoppers are named `{prefix}-{n}`, keys `{prefix}-{client}-op-{n}`.
    pub prefix: String,
    pub users: usize,
    /// Concurrent clients, all over the same shoppers.
    pub clients: usize,
    pub retry: Retry,
}

impl WorkloadOptions {
    /// One client over `users` shoppers, retrying until acknowledged.
    pub fn new(prefix: &str, users: usize) -> Self {
        Self {
            prefix: prefix.to_owned(),
            users,
            clients: 1,
            retry: Retry::UntilAcknowledged,
        }
    }

    /// `clients` concurrent clients.
    #[must_use]
    pub fn clients(mut self, clients: usize) -> Self {
        self.clients = clients.max(1);
        self
    }

    /// One attempt per operation: outcomes may be unknown.
    #[must_use]
    pub fn once(mut self) -> Self {
        self.retry = Retry::Once;
        self
    }
}

/// What the clients share: the history so far, and the deletes in flight per item.
struct Shared {
    started: Instant,
    history: History,
    tallies: HashMap<(String, String), Tally>,
    pending_deletes: HashMap<(String, String), u64>,
}

impl Shared {
    fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
        shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running workload; [`Workload::stop`] ends it and returns its [`History`].
pub struct Workload {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    shared: Arc<Mutex<Shared>>,
    clients: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Workload {
    /// Starts one client over `users` shoppers named `{prefix}-{n}`, retrying every
    /// operation until acknowledged.
    pub fn start(api: ApiClient, prefix: &str, users: usize) -> Self {
        Self::start_with(api, WorkloadOptions::new(prefix, users))
    }

    /// Starts the workload `options` describes; each client chooses with its own fixed seed.
    pub fn start_with(api: ApiClient, options: WorkloadOptions) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Mutex::new(Shared {
            started: Instant::now(),
            history: History::default(),
            tallies: HashMap::new(),
            pending_deletes: HashMap::new(),
        }));
        let clients = (0..options.clients)
            .map(|client| {
                let run = Client {
                    id: client,
                    api: api.clone(),
                    options: options.clone(),
                    stop: stop.clone(),
                    acknowledged: acknowledged.clone(),
                    shared: shared.clone(),
                };
                tokio::spawn(run.run())
            })
            .collect();
        Self {
            stop,
            acknowledged,
            shared,
            clients,
        }
    }

    /// Waits until `more` operations beyond those acknowledged so far are acknowledged.
    ///
    /// # Errors
    /// When a client stopped (an operation it could not get acknowledged), or `more`
    /// operations take longer than `timeout`.
    pub async fn advance(&self, more: u64, timeout: Duration) -> anyhow::Result<()> {
        let target = self.acknowledged.load(Ordering::Relaxed) + more;
        wait_until(
            &format!("{more} more acknowledged operations"),
            timeout,
            || async {
                ensure!(
                    !self.clients.iter().any(JoinHandle::is_finished),
                    "a workload client stopped early"
                );
                Ok((self.acknowledged.load(Ordering::Relaxed) >= target).then_some(()))
            },
        )
        .await
    }

    /// Stops after the operations in flight and returns the history.
    ///
    /// # Errors
    /// When an operation could not be acknowledged within [`RETRY_FOR`] (with
    /// [`Retry::UntilAcknowledged`]), or a client task died.
    pub async fn stop(self) -> anyhow::Result<History> {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.context("a workload client died")??;
        }
        let mut history = std::mem::take(&mut Shared::lock(&self.shared).history);
        history.events.sort_by_key(|e| e.completed);
        Ok(history)
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

/// One client of the workload.
struct Client {
    id: usize,
    api: ApiClient,
    options: WorkloadOptions,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    shared: Arc<Mutex<Shared>>,
}

impl Client {
    async fn run(self) -> anyhow::Result<()> {
        let users = self.options.users;
        let mut choices = Choices(users as u64 + ((self.id as u64) << 32));
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            let user = format!("{}-{}", self.options.prefix, choices.next(users));
            let item = ITEMS[choices.next(ITEMS.len())].to_owned();
            let slot = (user, item);
            let (kind, invoked) = {
                let mut shared = Shared::lock(&self.shared);
                let pending = shared.pending_deletes.get(&slot).copied().unwrap_or(0);
                let sure = shared
                    .tallies
                    .get(&slot)
                    .map_or(0, |t| t.surely_held(pending));
                let kind = if sure > 0 && choices.next(3) == 0 {
                    *shared.pending_deletes.entry(slot.clone()).or_default() += 1;
                    Kind::Delete
                } else {
                    Kind::Insert
                };
                (kind, shared.started.elapsed())
            };
            let key = format!("{}-{}-op-{n}", self.options.prefix, self.id);
            let outcome = self.attempt(&slot.0, &slot.1, kind, &key).await;
            let mut shared = Shared::lock(&self.shared);
            if kind == Kind::Delete
                && let Some(pending) = shared.pending_deletes.get_mut(&slot)
            {
                *pending -= 1;
            }
            let outcome = outcome?;
            shared
                .tallies
                .entry(slot.clone())
                .or_default()
                .record(kind, &outcome);
            if outcome == Outcome::Ok {
                self.acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            let completed = shared.started.elapsed();
            let (user, item) = slot;
            shared.history.events.push(Event {
                client: self.id,
                user,
                item,
                kind,
                key,
                invoked,
                completed,
                outcome,
            });
        }
        Ok(())
    }

    /// Sends one operation, as often as the retry rule says; how it ended.
    async fn attempt(
        &self,
        user: &str,
        item: &str,
        kind: Kind,
        key: &str,
    ) -> anyhow::Result<Outcome> {
        let mut deadline = Deadline::after(RETRY_FOR);
        loop {
            let reply = match kind {
                Kind::Delete => self.api.delete_with_key(user, item, key).await,
                Kind::Insert => self.api.insert_with_key(user, item, key).await,
            };
            let (status, unknown) = match reply {
                Ok(reply) if reply.status == 200 => return Ok(Outcome::Ok),
                Ok(reply) if reply.status == 503 => (503, reply.to_string()),
                Ok(reply) => return Ok(Outcome::Failed(reply.to_string())),
                // The API server itself unreachable, or no answer in time.
                Err(e) => (0, format!("{e:#}")),
            };
            if self.options.retry == Retry::Once {
                return Ok(Outcome::Unknown(unknown));
            }
            *Shared::lock(&self.shared)
                .history
                .retried
                .entry(status)
                .or_default() += 1;
            if deadline.has_passed() {
                bail!(
                    "{key} ({kind:?} {user} {item}) not acknowledged within {RETRY_FOR:?}: {unknown}"
                );
            }
            deadline.pause().await;
        }
    }
}

impl History {
    /// Reads every shopper's cart with `list_all` (a quorum read) and checks it against the
    /// history ([`History::check_carts`]).
    ///
    /// # Errors
    /// A cart that cannot be read, the failures, or the first item out of bounds.
    pub async fn check(&self, api: &ApiClient) -> anyhow::Result<()> {
        let mut carts = BTreeMap::new();
        for user in self.users() {
            let reply = api.list_all(&user).await?;
            ensure!(reply.status == 200, "list_all {user}: {reply}");
            carts.insert(user, reply.item_quantities().into_iter().collect());
        }
        self.check_carts(&carts)
    }
}
