//! `cartdb bench`: drives a running API server with a cart-like mix of requests and reports
//! throughput and latency.
//!
//! ```text
//! GET /api/products ──> catalog
//!                         │
//!      ┌──────────────────┴───────────────────┐
//!   worker 1 … worker N  (one shared keep-alive client, each with its own seeded RNG,
//!      │                  its own latency histograms and its own idea of what is in the carts)
//!      ├─ counters ──> progress line every second (stderr)
//!      └─ Stats ─────> merged at the end ──> summary (text, or JSON with --json)
//! ```
//!
//! Deletes only target items the worker itself inserted and has not yet deleted, so the
//! cart really holds them and a 404 "not in cart" means the cluster lost an acknowledged
//! insert. Such 404s are counted on their own line, not as errors. A request that fails
//! ambiguously (time-out, 5xx) may or may not have been applied; the bookkeeping assumes the
//! worst case for later deletes: a failed insert is not counted, a failed delete is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Client, StatusCode, Url};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::footprint::Footprint;

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

/// An operation the benchmark sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    Insert,
    Delete,
    ListAll,
    ListCategory,
    Products,
}

impl OpKind {
    pub const ALL: [OpKind; 5] = [
        OpKind::Insert,
        OpKind::Delete,
        OpKind::ListAll,
        OpKind::ListCategory,
        OpKind::Products,
    ];

    /// The name used in `--mix` and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Insert => "insert",
            OpKind::Delete => "delete",
            OpKind::ListAll => "list_all",
            OpKind::ListCategory => "list_category",
            OpKind::Products => "products",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Relative weights of the operation kinds (`--mix`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; OpKind::ALL.len()],
}

impl Mix {
    /// The weight of `kind`.
    pub fn weight(&self, kind: OpKind) -> u32 {
        self.weights[kind.index()]
    }

    /// The sum of the weights (at least 1 for a parsed mix).
    pub fn total(&self) -> u64 {
        self.weights.iter().map(|&w| u64::from(w)).sum()
    }

    /// The kind a roll in `0..total()` stands for: each kind owns a run of rolls as long as
    /// its weight, so a uniform roll picks kinds in proportion to their weights.
    pub fn pick(&self, roll: u64) -> OpKind {
        let mut rest = roll;
        for kind in OpKind::ALL {
            let weight = u64::from(self.weight(kind));
            if rest < weight {
                return kind;
            }
            rest -= weight;
        }
        // Only reachable for a roll >= total(); the last kind with weight is as good as any.
        OpKind::ALL
            .into_iter()
            .rev()
            .find(|&k| self.weight(k) > 0)
            .unwrap_or(OpKind::Insert)
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut weights = [None; OpKind::ALL.len()];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not kind=weight"))?;
            let kind = OpKind::from_name(name.trim()).ok_or_else(|| {
                let known: Vec<_> = OpKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown operation {name:?}; known: {}", known.join(", "))
            })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight of {name} must be a whole number, not {weight:?}"))?;
            if weights[kind.index()].replace(weight).is_some() {
                return Err(format!("{name} is listed twice"));
            }
        }
        let mix = Mix {
            weights: weights.map(|w| w.unwrap_or(0)),
        };
        if mix.total() == 0 {
            return Err("the weights must add up to more than 0".to_owned());
        }
        Ok(mix)
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
                let minute = started.duration_since(schedule.measure_from).as_secs() / 60;
                self.stats.record(op.kind, outcome, started.elapsed());
                self.stats.count_in_minute(minute);
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

// ---------------------------------------------------------------------------------------
// Results

/// Latencies are recorded in microseconds, up to a minute, to 3 significant digits.
fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("cannot create a latency histogram")
}

/// Measured results of one worker, or of all of them merged.
struct Stats {
    all: Histogram<u64>,
    latency: BTreeMap<OpKind, Histogram<u64>>,
    /// Non-OK outcomes by label ("503", "transport", "not in cart", ...).
    outcomes: BTreeMap<String, u64>,
    /// Requests by the minute of the measured time in which they were sent: whether the
    /// rate holds as the store fills is the question a long run answers.
    per_minute: Vec<u64>,
    /// The load phase, when `--fill` ran one.
    fill: Option<FillReport>,
    elapsed: Duration,
}

/// What the load phase of `--fill` did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FillReport {
    /// Carts that got their item (inserts acknowledged).
    pub items: u64,
    /// Loading inserts that failed (5xx, transport or refused).
    pub failed: u64,
    pub secs: f64,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        let mut latency = BTreeMap::new();
        for kind in OpKind::ALL {
            latency.insert(kind, latency_histogram()?);
        }
        Ok(Self {
            all: latency_histogram()?,
            latency,
            outcomes: BTreeMap::new(),
            per_minute: Vec::new(),
            fill: None,
            elapsed: Duration::ZERO,
        })
    }

    fn count_in_minute(&mut self, minute: u64) {
        let minute = usize::try_from(minute).unwrap_or(usize::MAX);
        if self.per_minute.len() <= minute {
            self.per_minute.resize(minute.saturating_add(1), 0);
        }
        if let Some(count) = self.per_minute.get_mut(minute) {
            *count += 1;
        }
    }

    /// The rate of each whole minute of the measured time (a trailing part minute is left
    /// out: it would read low or high by its length alone).
    fn minute_rates(&self) -> Vec<f64> {
        let whole = usize::try_from(self.elapsed.as_secs() / 60).unwrap_or(usize::MAX);
        self.per_minute
            .iter()
            .take(whole)
            .map(|&ops| ops as f64 / 60.0)
            .collect()
    }

    fn record(&mut self, kind: OpKind, outcome: Outcome, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.all.saturating_record(micros);
        if let Some(histogram) = self.latency.get_mut(&kind) {
            histogram.saturating_record(micros);
        }
        let label = match outcome {
            Outcome::Ok => return,
            Outcome::NotInCart => NOT_IN_CART.to_owned(),
            Outcome::Status(code) => code.to_string(),
            Outcome::Transport => TRANSPORT.to_owned(),
        };
        *self.outcomes.entry(label).or_default() += 1;
    }

    fn merge(&mut self, other: &Stats) -> anyhow::Result<()> {
        self.all
            .add(&other.all)
            .context("cannot merge latency histograms")?;
        for (kind, histogram) in &other.latency {
            if let Some(mine) = self.latency.get_mut(kind) {
                mine.add(histogram)
                    .context("cannot merge latency histograms")?;
            }
        }
        for (label, n) in &other.outcomes {
            *self.outcomes.entry(label.clone()).or_default() += n;
        }
        if self.per_minute.len() < other.per_minute.len() {
            self.per_minute.resize(other.per_minute.len(), 0);
        }
        for (mine, theirs) in self.per_minute.iter_mut().zip(&other.per_minute) {
            *mine += theirs;
        }
        Ok(())
    }
}

const NOT_IN_CART: &str = "not in cart";
const TRANSPORT: &str = "transport";

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1_000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// "by minute" with each whole minute's rate, the last minute's share of the first and the
/// slowest minute's share of the fastest; `None` under two whole minutes.
fn minute_line(rates: &[f64]) -> Option<String> {
    let (first, last) = (rates.first()?, rates.last()?);
    if rates.len() < 2 {
        return None;
    }
    let fastest = rates.iter().copied().fold(f64::MIN, f64::max);
    let slowest = rates.iter().copied().fold(f64::MAX, f64::min);
    let each: Vec<String> = rates.iter().map(|rate| format!("{rate:.0}")).collect();
    Some(format!(
        "ops/s by minute: {}; last minute {:.0}% of the first, slowest {:.0}% of the fastest\n",
        each.join(" "),
        last / first.max(f64::EPSILON) * 100.0,
        slowest / fastest.max(f64::EPSILON) * 100.0
    ))
}

/// Results of one operation kind.
#[derive(Debug, Serialize)]
pub struct KindSummary {
    pub ops: u64,
    pub ops_per_sec: f64,
    pub latency_ms: Latency,
}

/// The summary of a run, as printed (`--json` prints this structure).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub api: String,
    pub clients: u32,
    pub users: u32,
    pub seed: u64,
    pub warmup_secs: f64,
    pub measured_secs: f64,
    pub total_ops: u64,
    pub ops_per_sec: f64,
    pub latency_ms: Latency,
    pub per_kind: BTreeMap<&'static str, KindSummary>,
    /// Deletes answered 404 "not in cart": a valid answer, not an error.
    pub not_in_cart: u64,
    /// Other non-2xx answers by status code, and `transport` for requests with no answer.
    pub errors: BTreeMap<String, u64>,
    /// Requests that count as failed: 5xx and transport.
    pub failed: u64,
    pub failure_rate: f64,
    /// Ops/s of each whole minute measured (empty for runs under a minute).
    pub per_minute: Vec<f64>,
    /// The load phase before the run (`--fill`).
    pub fill: Option<FillReport>,
}

impl Summary {
    fn new(args: &BenchArgs, seed: u64, stats: &Stats) -> Self {
        let secs = stats.elapsed.as_secs_f64().max(f64::EPSILON);
        let mut per_kind = BTreeMap::new();
        for (kind, histogram) in &stats.latency {
            if !histogram.is_empty() {
                per_kind.insert(
                    kind.name(),
                    KindSummary {
                        ops: histogram.len(),
                        ops_per_sec: histogram.len() as f64 / secs,
                        latency_ms: Latency::of(histogram),
                    },
                );
            }
        }
        let mut errors = stats.outcomes.clone();
        let not_in_cart = errors.remove(NOT_IN_CART).unwrap_or(0);
        let failed = errors
            .iter()
            .filter(|(label, _)| *label == TRANSPORT || label.starts_with('5'))
            .map(|(_, n)| n)
            .sum();
        let total_ops = stats.all.len();
        Self {
            api: args.api.to_string(),
            clients: args.clients,
            users: args.users,
            seed,
            warmup_secs: args.warmup.as_secs_f64(),
            measured_secs: secs,
            total_ops,
            ops_per_sec: total_ops as f64 / secs,
            latency_ms: Latency::of(&stats.all),
            per_kind,
            not_in_cart,
            errors,
            failed,
            failure_rate: failed as f64 / total_ops.max(1) as f64,
            per_minute: stats.minute_rates(),
            fill: stats.fill,
        }
    }

    /// The summary as a human-readable report.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "\ncartdb bench: {} clients, {} users, {:.1}s measured after {:.1}s warm-up, seed {}, {}",
            self.clients, self.users, self.measured_secs, self.warmup_secs, self.seed, self.api
        );
        if let Some(fill) = &self.fill {
            let _ = writeln!(
                out,
                "fill       {:>10} carts loaded first in {:.0}s ({:.0} inserts/s), {} failed",
                fill.items,
                fill.secs,
                fill.items as f64 / fill.secs.max(f64::EPSILON),
                fill.failed
            );
        }
        let _ = writeln!(
            out,
            "total      {:>10} ops  {:>10.1} ops/s",
            self.total_ops, self.ops_per_sec
        );
        let _ = writeln!(
            out,
            "latency ms  p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            l.p50, l.p99, l.p999, l.max
        );
        let _ = writeln!(
            out,
            "\n{:<14}{:>10}{:>12}{:>9}{:>9}{:>9}{:>9}",
            "operation", "ops", "ops/s", "p50", "p99", "p99.9", "max"
        );
        for (name, k) in &self.per_kind {
            let l = &k.latency_ms;
            let _ = writeln!(
                out,
                "{name:<14}{:>10}{:>12.1}{:>9.2}{:>9.2}{:>9.2}{:>9.2}",
                k.ops, k.ops_per_sec, l.p50, l.p99, l.p999, l.max
            );
        }
        out.push('\n');
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            let _ = writeln!(out, "errors by status: {}", list.join(", "));
        }
        let _ = writeln!(
            out,
            "deletes answered \"not in cart\" (not errors): {}",
            self.not_in_cart
        );
        let _ = writeln!(
            out,
            "failed (5xx or transport): {} of {} ({:.3}%)",
            self.failed,
            self.total_ops,
            self.failure_rate * 100.0
        );
        if let Some(line) = minute_line(&self.per_minute) {
            out.push_str(&line);
        }
        out
    }

    /// # Errors
    /// When more than 1% of the requests failed, or none was measured.
    fn check_failure_rate(&self) -> anyhow::Result<()> {
        if self.total_ops == 0 {
            bail!("no request completed during the measured time");
        }
        if self.failure_rate > MAX_FAILURE_RATE {
            bail!(
                "{} of {} requests failed ({:.2}%), more than the {:.0}% allowed",
                self.failed,
                self.total_ops,
                self.failure_rate * 100.0,
                MAX_FAILURE_RATE * 100.0
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mix(text: &str) -> Mix {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn the_mix_parses_weights_and_defaults_missing_kinds_to_zero() {
        let m = mix("insert=50, delete=25,list_all=25");
        assert_eq!(m.weight(OpKind::Insert), 50);
        assert_eq!(m.weight(OpKind::Delete), 25);
        assert_eq!(m.weight(OpKind::ListAll), 25);
        assert_eq!(m.weight(OpKind::Products), 0);
        assert_eq!(m.total(), 100);
        assert_eq!(mix("products=1").total(), 1);
    }

    #[test]
    fn minutes_merge_across_workers_and_a_part_minute_is_left_out() {
        let (mut one, mut two) = (Stats::new().unwrap(), Stats::new().unwrap());
        for _ in 0..120 {
            one.count_in_minute(0);
        }
        for _ in 0..60 {
            two.count_in_minute(1);
            two.count_in_minute(2);
        }
        one.merge(&two).unwrap();
        one.elapsed = Duration::from_secs(150);
        assert_eq!(one.minute_rates(), [2.0, 1.0]);
        let line = minute_line(&one.minute_rates()).unwrap();
        assert!(line.contains("by minute: 2 1; last minute 50% of the first, slowest 50%"));
        assert_eq!(minute_line(&[3.0]), None);
        assert_eq!(minute_line(&[]), None);
    }

    #[test]
    fn bad_mixes_are_refused_with_a_reason() {
        let err = |text: &str| text.parse::<Mix>().unwrap_err();
        assert!(err("insert=0,delete=0").contains("more than 0"));
        assert!(err("").contains("more than 0"));
        assert!(err("buy=5").contains("unknown operation \"buy\""));
        assert!(err("insert").contains("kind=weight"));
        assert!(err("insert=x").contains("whole number"));
        assert!(err("insert=-1").contains("whole number"));
        assert!(err("insert=1,insert=2").contains("twice"));
    }

    #[test]
    fn picks_follow_the_weights() {
        let m = mix("insert=2,delete=1,products=1");
        let picks: Vec<OpKind> = (0..m.total()).map(|roll| m.pick(roll)).collect();
        assert_eq!(
            picks,
            [
                OpKind::Insert,
                OpKind::Insert,
                OpKind::Delete,
                OpKind::Products
            ]
        );
        assert_eq!(m.pick(99), OpKind::Products);
    }

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

    #[test]
    fn the_failure_rate_decides_the_exit() {
        let mut stats = Stats::new().unwrap();
        for _ in 0..99 {
            stats.record(OpKind::Insert, Outcome::Ok, Duration::from_millis(1));
        }
        stats.record(OpKind::Delete, Outcome::NotInCart, Duration::from_millis(1));
        stats.record(
            OpKind::Insert,
            Outcome::Status(503),
            Duration::from_millis(2),
        );
        stats.elapsed = Duration::from_secs(1);
        let args = BenchArgs {
            api: parse_api_url("http://127.0.0.1:8080").unwrap(),
            clients: 1,
            duration: Duration::from_secs(1),
            users: 1,
            mix: mix("insert=1"),
            fill: false,
            warmup: Duration::ZERO,
            seed: Some(1),
            admin_token: None,
            json: false,
            zk: None,
        };
        let summary = Summary::new(&args, 1, &stats);
        assert_eq!(summary.total_ops, 101);
        assert_eq!(summary.not_in_cart, 1);
        assert_eq!(summary.failed, 1);
        assert!(summary.check_failure_rate().is_ok(), "1 of 101 is under 1%");
        stats.record(OpKind::Insert, Outcome::Transport, Duration::from_millis(2));
        let summary = Summary::new(&args, 1, &stats);
        assert!(summary.check_failure_rate().is_err(), "2 of 102 is over 1%");
        assert!(summary.to_text().contains("transport: 1"));
    }
}
