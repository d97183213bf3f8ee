//! `cartdb bench`: drives a running API server with a cart-like mix of requests and reports
//! throughput and latency.
//!
//! ```text
//! GET /api/products ──> catalog
//!                         │
//!      ┌──────────────────┴───────────────────┐
//!   worker 1 … worker N  (one shared keep-alive client, each with its own seeded RNG,
//!      │                  its own latency histograms and its own idea of what is in the carts)
//!      ├─ --fill: one item for each of its share of the shoppers, then the timed run
//!      ├─ counters ──> progress line every second (stderr)
//!      └─ Stats ─────> merged at the end ──> summary (text, or JSON with --json)
//! ```
//!
//! The request mix is in [`mix`], what a run measured and how it is printed in [`summary`],
//! and the rate over time (each minute's rate, the trend) in [`timeline`].
//!
//! Deletes only target items the worker itself inserted and has not yet deleted, so the
//! cart really holds them and a 404 "not in cart" means the cluster lost an acknowledged
//! insert. Such 404s are counted on their own line, not as errors. A request that fails
//! ambiguously (time-out, 5xx) may or may not have been applied; the bookkeeping assumes the
//! worst case for later deletes: a failed insert is not counted, a failed delete is.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Client, StatusCode, Url};
use serde::Deserialize;
use tokio::time::Instant;

use crate::footprint::Footprint;

mod mix;
mod summary;
mod timeline;

pub use mix::{Mix, OpKind};
use summary::{FillReport, Stats, Summary};

/// Arguments of `cartdb bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the API server.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_parser = parse_api_url)]
    pub api: Url,
    /// Concurrent clients (each sends its next request when the previous one is answered).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// How long to measure, after the warm-up: `500ms`, `30s`, `2m` (a bare number is seconds).
    /// SIGINT (Ctrl-C) or SIGTERM ends the run early, with the summary of what was measured.
    /// From two minutes on, the summary gives each minute's rate and the trend of the
    /// per-second rates.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Distinct shoppers whose carts the clients fill.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub users: u32,
    /// Relative weights of the operations, `kind=weight,...`; kinds: insert, delete,
    /// list_all, list_category, products. Unlisted kinds get 0.
    #[arg(long, default_value = "insert=50,delete=25,list_all=25")]
    pub mix: Mix,
    /// Before the warm-up, put one item in every shopper's cart (a load phase, as YCSB's):
    /// the run then starts on a store holding `--users` carts instead of an empty one, and
    /// its deletes may take out the loaded items. Progress is printed every second; the
    /// summary gives the load's count and rate.
    #[arg(long)]
    pub fill: bool,
    /// Load before measuring starts, not counted in the results (lets connections and caches
    /// warm up). `0s` for none.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Seed of the random choices, for a repeatable request sequence per client.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Bearer token for `list_category` (needed when the API server has an admin token).
    #[arg(long, env = "CARTDB_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Print the summary as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// The cluster's ZooKeeper (`host:port`): after the run, its znode count is printed with
    /// the RSS of every cartdb and ZooKeeper process on this machine.
    #[arg(long, env = "CARTDB_ZK")]
    pub zk: Option<String>,
}

/// How long one request may take before it counts as a transport failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Above this share of failed requests (5xx or transport), the run exits non-zero.
const MAX_FAILURE_RATE: f64 = 0.01;

/// Runs the benchmark on its own multi-threaded runtime and prints its summary.
///
/// # Errors
/// When the catalog cannot be fetched or is empty, when a worker dies, or when more than 1%
/// of the measured requests failed (5xx or transport).
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(bench(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let client = Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(args.clients as usize)
        .build()
        .context("cannot build the HTTP client")?;
    let catalog = fetch_catalog(&client, &args.api).await?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let plan = Plan::new(&args, catalog, seed)?;
    let stats = drive(&args, client, plan).await?;
    let summary = Summary::new(&args, seed, &stats);
    let footprint = Footprint::measure(args.zk.as_deref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        eprint!("{}", footprint.to_text());
    } else {
        print!("{}", summary.to_text());
        print!("{}", footprint.to_text());
    }
    summary.check_failure_rate()
}

// ---------------------------------------------------------------------------------------
// Arguments

fn parse_api_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http:// or https:// URL with a host".to_owned());
    }
    Ok(url)
}

/// Parses `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 30s or 2m"))?;
    let millis = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("unknown unit {unit:?}: use ms, s, m or h")),
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be greater than 0".to_owned()),
        d => Ok(d),
    }
}

// ---------------------------------------------------------------------------------------
// Set-up

/// A catalog product, as far as the benchmark needs it.
#[derive(Clone, Debug, Deserialize)]
struct Product {
    name: String,
    category: String,
}

#[derive(Deserialize)]
struct Catalog {
    products: Vec<Product>,
}

async fn fetch_catalog(client: &Client, api: &Url) -> anyhow::Result<Vec<Product>> {
    let url = endpoint(api, "api/products");
    let response = client
        .get(url.clone())
        .send()
        .await
        .with_context(|| format!("cannot reach the API server at {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!("GET {url} answered {status}: {body}");
    }
    let catalog: Catalog = response
        .json()
        .await
        .with_context(|| format!("GET {url} did not answer a catalog"))?;
    if catalog.products.is_empty() {
        bail!("the catalog is empty: add products (POST /api/products) before benchmarking");
    }
    Ok(catalog.products)
}

/// `api` with `path` appended to its path (keeps a base path such as `/cartdb/`).
fn endpoint(api: &Url, path: &str) -> Url {
    let mut url = api.clone();
    let base = api.path().trim_end_matches('/');
    url.set_path(&format!("{base}/{path}"));
    url
}

/// What every worker shares: where to send, whom to shop for, what to buy.
struct Plan {
    urls: Urls,
    users: Vec<String>,
    catalog: Vec<Product>,
    mix: Mix,
    admin_token: Option<String>,
    worker_seeds: Vec<u64>,
}

struct Urls {
    insert: Url,
    delete: Url,
    list_all: Url,
    list_category: Url,
    products: Url,
}

impl Plan {
    fn new(args: &BenchArgs, catalog: Vec<Product>, seed: u64) -> anyhow::Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        // A run tag keeps this run's carts apart from earlier runs' (same seed, same tag).
        let tag: u32 = rng.random();
        let users = (0..args.users)
            .map(|i| format!("bench-{tag:08x}-{i}"))
            .collect();
        let api = &args.api;
        Ok(Self {
            urls: Urls {
                insert: endpoint(api, "api/insert"),
                delete: endpoint(api, "api/delete"),
                list_all: endpoint(api, "api/list_all"),
                list_category: endpoint(api, "api/list_category"),
                products: endpoint(api, "api/products"),
            },
            users,
            catalog,
            mix: args.mix.clone(),
            admin_token: args.admin_token.clone(),
            worker_seeds: (0..args.clients).map(|_| rng.random()).collect(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Running

/// What a finished request amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A delete answered 404: the item was not in the cart.
    NotInCart,
    /// Any other non-2xx status.
    Status(u16),
    /// No HTTP answer: refused, reset or timed out.
    Transport,
}

impl Outcome {
    /// Classifies the status of a `kind` request.
    pub fn of(kind: OpKind, status: StatusCode) -> Self {
        if status.is_success() {
            Outcome::Ok
        } else if kind == OpKind::Delete && status == StatusCode::NOT_FOUND {
            Outcome::NotInCart
        } else {
            Outcome::Status(status.as_u16())
        }
    }

    /// Whether this counts towards the failure rate: server errors and transport failures.
    /// A 4xx is the benchmark's or the data's doing, not the server failing.
    pub fn is_failure(self) -> bool {
        match self {
            Outcome::Transport => true,
            Outcome::Status(code) => code >= 500,
            Outcome::Ok | Outcome::NotInCart => false,
        }
    }
}

/// Counters the progress line reads while workers run.
#[derive(Default)]
struct Progress {
    filled: AtomicU64,
    fill_failed: AtomicU64,
    warmup_ops: AtomicU64,
    ops: AtomicU64,
    failed: AtomicU64,
    /// Set on SIGINT or SIGTERM: the workers finish their request in flight and the run
    /// ends early, with its summary over the time actually measured.
    stopped: std::sync::atomic::AtomicBool,
}

/// The phases of a run, as instants.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

async fn drive(args: &BenchArgs, client: Client, plan: Plan) -> anyhow::Result<Stats> {
    let plan = Arc::new(plan);
    let progress = Arc::new(Progress::default());
    let stopper = tokio::spawn(stop_on_signal(progress.clone()));
    let mut workers = Vec::with_capacity(plan.worker_seeds.len());
    for &seed in &plan.worker_seeds {
        workers.push(Worker::new(
            client.clone(),
            plan.clone(),
            progress.clone(),
            seed,
        )?);
    }
    let (workers, fill_report) = if args.fill {
        let (report, filled) = fill(workers, &plan, &progress).await?;
        (filled, Some(report))
    } else {
        (workers, None)
    };
    let start = Instant::now();
    let schedule = Schedule {
        start,
        measure_from: start + args.warmup,
        end: start + args.warmup + args.duration,
    };
    let reporter = tokio::spawn(report_progress(progress.clone(), schedule));
    let mut running = tokio::task::JoinSet::new();
    for worker in workers {
        running.spawn(worker.run(schedule));
    }
    let mut total = Stats::new()?;
    while let Some(joined) = running.join_next().await {
        total.merge(&joined.context("a benchmark worker died")??)?;
    }
    reporter.abort();
    stopper.abort();
    total.elapsed = schedule.measure_from.elapsed();
    total.fill = fill_report;
    Ok(total)
}

/// The load phase of `--fill`: worker `w` of `n` inserts one item for shoppers `w`, `w + n`,
/// ..., so every shopper is loaded once; each worker keeps what it loaded for later deletes.
///
/// # Errors
/// When a worker dies, or when more than 1% of the loading inserts failed (the run would
/// not start on the store it claims).
async fn fill(
    workers: Vec<Worker>,
    plan: &Plan,
    progress: &Arc<Progress>,
) -> anyhow::Result<(FillReport, Vec<Worker>)> {
    let started = Instant::now();
    let reporter = tokio::spawn(report_fill(progress.clone(), plan.users.len() as u64));
    let mut loading = tokio::task::JoinSet::new();
    let stride = workers.len();
    for (first, worker) in workers.into_iter().enumerate() {
        loading.spawn(worker.fill(first, stride));
    }
    let mut filled = Vec::with_capacity(stride);
    while let Some(joined) = loading.join_next().await {
        filled.push(joined.context("a benchmark worker died while loading")?);
    }
    reporter.abort();
    let report = FillReport {
        items: progress.filled.load(Ordering::Relaxed),
        failed: progress.fill_failed.load(Ordering::Relaxed),
        secs: started.elapsed().as_secs_f64(),
    };
    eprintln!(
        "fill: {} items in {:.0}s ({:.0} inserts/s), {} failed",
        report.items,
        report.secs,
        report.items as f64 / report.secs.max(f64::EPSILON),
        report.failed
    );
    if report.failed as f64 > plan.users.len() as f64 * MAX_FAILURE_RATE {
        bail!(
            "{} of {} loading inserts failed, more than the {:.0}% allowed",
            report.failed,
            plan.users.len(),
            MAX_FAILURE_RATE * 100.0
        );
    }
    Ok((report, filled))
}

/// Prints the load phase's progress once a second on stderr.
async fn report_fill(progress: Arc<Progress>, users: u64) {
    let start = Instant::now();
    let mut ticks =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = 0;
    loop {
        let now = ticks.tick().await;
        let done = progress.filled.load(Ordering::Relaxed);
        let failed = progress.fill_failed.load(Ordering::Relaxed);
        let t = now.duration_since(start).as_secs();
        eprintln!(
            "[{t:>4}s] fill {:>8} inserts/s, {done} of {users} carts, {failed} failed",
            done - last
        );
        last = done;
    }
}

/// Ends the run early on SIGINT or SIGTERM (the summary then covers what was measured).
async fn stop_on_signal(progress: Arc<Progress>) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
    eprintln!("stopping: finishing the requests in flight, then the summary");
    progress.stopped.store(true, Ordering::Relaxed);
}

/// Prints one line per second on stderr: the rate of the last second, the average so far,
/// and the failures so far.
async fn report_progress(progress: Arc<Progress>, schedule: Schedule) {
    let mut ticks = tokio::time::interval_at(
        schedule.start + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let (mut last_warmup, mut last_ops) = (0, 0);
    loop {
        let now = ticks.tick().await;
        let warmup_ops = progress.warmup_ops.load(Ordering::Relaxed);
        let ops = progress.ops.load(Ordering::Relaxed);
        let failed = progress.failed.load(Ordering::Relaxed);
        let t = now.duration_since(schedule.start).as_secs();
        if now <= schedule.measure_from {
            eprintln!("[{t:>4}s] warm-up   {:>8} ops/s", warmup_ops - last_warmup);
        } else {
            let measured = now.duration_since(schedule.measure_from).as_secs_f64();
            let average = ops as f64 / measured;
            eprintln!(
                "[{t:>4}s] {:>8} ops/s (average {average:.0}), {failed} failed",
                ops - last_ops
            );
        }
        (last_warmup, last_ops) = (warmup_ops, ops);
    }
}

/// One simulated shopper session: sends a request, waits for the answer, repeats.
struct Worker {
    client: Client,
    plan: Arc<Plan>,
    progress: Arc<Progress>,
    rng: StdRng,
    /// (user, product) index pairs this worker inserted and has not deleted, one entry per
    /// unit of quantity.
    in_carts: Vec<(usize, usize)>,
    stats: Stats,
}

/// One request to send: what, for whom, which product.
#[derive(Clone, Copy, Debug)]
struct Op {
    kind: OpKind,
    user: usize,
    product: usize,
}

impl Worker {
    fn new(
        client: Client,
        plan: Arc<Plan>,
        progress: Arc<Progress>,
        seed: u64,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client,
            plan,
            progress,
            rng: StdRng::seed_from_u64(seed),
            in_carts: Vec::new(),
            stats: Stats::new()?,
        })
    }

    /// Inserts one item (a random product) for shoppers `first`, `first + stride`, ...
    async fn fill(mut self, first: usize, stride: usize) -> Self {
        for user in (first..self.plan.users.len()).step_by(stride.max(1)) {
            if self.progress.stopped.load(Ordering::Relaxed) {
                break;
            }
            let product = self.rng.random_range(0..self.plan.catalog.len());
            let op = Op {
                kind: OpKind::Insert,
                user,
                product,
            };
            if self.send(op).await == Outcome::Ok {
                self.in_carts.push((user, product));
                self.progress.filled.fetch_add(1, Ordering::Relaxed);
            } else {
                self.progress.fill_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self
    }

    async fn run(mut self, schedule: Schedule) -> anyhow::Result<Stats> {
        loop {
            let started = Instant::now();
            if started >= schedule.end || self.progress.stopped.load(Ordering::Relaxed) {
                return Ok(self.stats);
            }
            let op = self.next_op();
            let outcome = self.send(op).await;
            if op.kind == OpKind::Insert && outcome == Outcome::Ok {
                self.in_carts.push((op.user, op.product));
            }
            if started >= schedule.measure_from {
                let second = started.duration_since(schedule.measure_from).as_secs();
                self.stats
                    .record(op.kind, outcome, second, started.elapsed());
                self.count(outcome);
            } else {
                self.progress.warmup_ops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn count(&self, outcome: Outcome) {
        self.progress.ops.fetch_add(1, Ordering::Relaxed);
        if outcome.is_failure() {
            self.progress.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The next operation by the mix. A delete takes an item out of `in_carts` at once, as if
    /// it succeeded: a delete that failed ambiguously may have been applied, and deleting the
    /// item again later could then rightly answer "not in cart". With nothing in the carts, a
    /// delete becomes an insert.
    fn next_op(&mut self) -> Op {
        let roll = self.rng.random_range(0..self.plan.mix.total());
        let kind = self.plan.mix.pick(roll);
        if kind == OpKind::Delete && !self.in_carts.is_empty() {
            let at = self.rng.random_range(0..self.in_carts.len());
            let (user, product) = self.in_carts.swap_remove(at);
            return Op {
                kind,
                user,
                product,
            };
        }
        Op {
            kind: if kind == OpKind::Delete {
                OpKind::Insert
            } else {
                kind
            },
            user: self.rng.random_range(0..self.plan.users.len()),
            product: self.rng.random_range(0..self.plan.catalog.len()),
        }
    }

    async fn send(&self, op: Op) -> Outcome {
        let request = self.request(op);
        match request.send().await {
            // Reading the whole body lets the connection be reused (keep-alive).
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(_) => Outcome::of(op.kind, status),
                    Err(_) => Outcome::Transport,
                }
            }
            Err(_) => Outcome::Transport,
        }
    }

    fn request(&self, op: Op) -> reqwest::RequestBuilder {
        let plan = &*self.plan;
        let user = &plan.users[op.user];
        let product = &plan.catalog[op.product];
        let change = || serde_json::json!({ "userid": user, "item_name": product.name });
        match op.kind {
            OpKind::Insert => self.client.post(plan.urls.insert.clone()).json(&change()),
            OpKind::Delete => self.client.post(plan.urls.delete.clone()).json(&change()),
            OpKind::ListAll => {
                let url = with_query(&plan.urls.list_all, "userid", user);
                self.client.get(url)
            }
            OpKind::ListCategory => {
                let url = with_query(&plan.urls.list_category, "category", &product.category);
                let request = self.client.get(url);
                match &plan.admin_token {
                    Some(token) => request.bearer_auth(token),
                    None => request,
                }
            }
            OpKind::Products => self.client.get(plan.urls.products.clone()),
        }
    }
}

fn with_query(url: &Url, key: &str, value: &str) -> Url {
    let mut url = url.clone();
    url.query_pairs_mut().append_pair(key, value);
    url
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn outcomes_are_classified() {
        assert_eq!(Outcome::of(OpKind::Insert, StatusCode::OK), Outcome::Ok);
        assert_eq!(
            Outcome::of(OpKind::Delete, StatusCode::NOT_FOUND),
            Outcome::NotInCart
        );
        assert_eq!(
            Outcome::of(OpKind::Insert, StatusCode::NOT_FOUND),
            Outcome::Status(404)
        );
        assert!(!Outcome::NotInCart.is_failure());
        assert!(!Outcome::Status(400).is_failure());
        assert!(Outcome::Status(503).is_failure());
        assert!(Outcome::Transport.is_failure());
    }

    #[test]
    fn endpoints_keep_a_base_path() {
        let api = parse_api_url("http://h:1/base/").unwrap();
        assert_eq!(
            endpoint(&api, "api/insert").as_str(),
            "http://h:1/base/api/insert"
        );
        let api = parse_api_url("http://h:1").unwrap();
        assert_eq!(
            endpoint(&api, "api/insert").as_str(),
            "http://h:1/api/insert"
        );
        assert!(parse_api_url("ftp://h").is_err());
        assert!(parse_api_url("nonsense").is_err());
    }
}
