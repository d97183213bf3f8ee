//! Prometheus metrics: the recorder every cartdb process installs, and the `/metrics`
//! endpoint that renders it.
//!
//! Code records through the `metrics` facade (`counter!`, `gauge!`, `histogram!`) wherever
//! a mechanism lives; this module only installs `metrics-exporter-prometheus` behind it and
//! serves the text format. Conventions, checked by review rather than code:
//! - every name starts with `cartdb_`, counters end in `_total`, times are `_seconds`, sizes
//!   `_bytes`;
//! - labels are low-cardinality: an endpoint, a status, a device id, an outcome, a policy's
//!   sha256; never a user, a product or an item.
//!
//! The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, ...) are read from `/proc` at each scrape by `metrics-process`.
//!
//! ```text
//! GET /metrics ──> process metrics collected ──> histograms drained (upkeep) ──> text format
//! ```

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Buckets of every `_seconds` histogram: 0.5 ms to 10 s, for RPCs, fsyncs, HTTP requests
/// and policy calls alike.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of the group commit's batch sizes (writes per fsync).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The Prometheus text format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The exporter refused its configuration (bucket lists are constants, so this is a bug).
    #[error("cannot build the Prometheus recorder: {0}")]
    Build(#[from] metrics_exporter_prometheus::BuildError),
    /// The `/metrics` listener could not be bound.
    #[error("cannot listen on {addr} (--metrics-listen): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The `/metrics` listener failed.
    #[error("the metrics endpoint on {addr} failed: {source}")]
    Serve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// The installed recorder; rendering it is what `/metrics` answers.
#[derive(Clone, Debug)]
pub struct Telemetry {
    handle: PrometheusHandle,
}

static INSTALLED: OnceLock<Telemetry> = OnceLock::new();

/// How often the recorder's histograms are drained when nobody scrapes `/metrics`.
///
/// The exporter keeps every histogram sample in a buffer until an upkeep folds them into the
/// buckets. Draining only at render, as this module first did, let a process nobody scraped
/// grow by every sample it recorded: measured, a gateway under `cartdb bench` at 1,000,000
/// users gained 8 MiB a minute (about 60 bytes an operation) and the API server 2.8 MiB.
/// The price: a sample recorded at the very moment of a drain can be lost (the exporter's
/// lock-free buffer; measured 0.15 % of samples at worst, recording flat out on two busy
/// cores), which moves a histogram's count, never a counter.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

impl Telemetry {
    /// Installs the process-wide recorder, or returns the one already installed: tests run
    /// several nodes in one process, and a process has one recorder.
    ///
    /// # Errors
    /// [`TelemetryError::Build`] if the exporter refuses its configuration.
    pub fn install() -> Result<Self, TelemetryError> {
        Self::install_with_upkeep(UPKEEP_EVERY)
    }

    /// [`Telemetry::install`], draining the histograms every `upkeep` (on a thread of its
    /// own, named `metrics-upkeep`, so that no runtime thread pays for it).
    ///
    /// # Errors
    /// As [`Telemetry::install`].
    pub fn install_with_upkeep(upkeep: Duration) -> Result<Self, TelemetryError> {
        if let Some(installed) = INSTALLED.get() {
            return Ok(installed.clone());
        }
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)?
            .set_buckets_for_metric(Matcher::Suffix("_batch_size".to_owned()), BATCH_BUCKETS)?
            .build_recorder();
        let telemetry = Self {
            handle: recorder.handle(),
        };
        // Losing the race to another thread's install is fine: use the winner's.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::debug!("a metrics recorder was already installed");
        }
        metrics_process::Collector::default().describe();
        let installed = INSTALLED.get_or_init(|| telemetry).clone();
        let handle = installed.handle.clone();
        // A period, not synchronisation: the thread lives as long as the process.
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(upkeep);
                    handle.run_upkeep();
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the metrics upkeep thread; histograms drain only when scraped");
        }
        Ok(installed)
    }

    /// The current metrics in Prometheus text format, process metrics included.
    pub fn render(&self) -> String {
        metrics_process::Collector::default().collect();
        // Folds the samples recorded since the last upkeep into the buckets, so the answer
        // is current rather than up to UPKEEP_EVERY old.
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// A router answering `GET /metrics`.
    pub fn router(&self) -> Router {
        Router::new().route("/metrics", get(metrics_handler))
    }

    /// Serves `GET /metrics` on `listener` until `shutdown` (processes without an HTTP server
    /// of their own: data nodes and gateways).
    ///
    /// # Errors
    /// [`TelemetryError::Serve`] when the listener fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), TelemetryError> {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a: SocketAddr| a.to_string());
        let app = self.router().fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                "only GET /metrics is served here\n",
            )
                .into_response()
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(|source| TelemetryError::Serve { addr, source })
    }
}

/// `GET /metrics` for any axum server: the process's metrics in the text format (the
/// recorder is installed on first use).
pub async fn metrics_handler() -> axum::response::Response {
    match Telemetry::install() {
        Ok(telemetry) => {
            ([(header::CONTENT_TYPE, TEXT_FORMAT)], telemetry.render()).into_response()
        }
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics unavailable: {e}\n"),
        )
            .into_response(),
    }
}

/// A bound metrics listener, ready to serve, and the address to register for it.
#[derive(Debug)]
pub struct Metrics {
    pub telemetry: Telemetry,
    pub listener: TcpListener,
    /// `host:port` to register in ZooKeeper (see [`advertised_address`]).
    pub address: String,
}

impl Metrics {
    /// Installs the recorder and binds `listen` (`--metrics-listen`) in a process that
    /// advertises `advertise` for its RPC.
    ///
    /// # Errors
    /// [`TelemetryError::Build`]; [`TelemetryError::Bind`] naming `--metrics-listen` and the
    /// address.
    pub async fn bind(listen: SocketAddr, advertise: &str) -> Result<Self, TelemetryError> {
        let telemetry = Telemetry::install()?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| TelemetryError::Bind {
                addr: listen,
                source,
            })?;
        let bound = listener
            .local_addr()
            .map_err(|source| TelemetryError::Bind {
                addr: listen,
                source,
            })?;
        Ok(Self {
            telemetry,
            listener,
            address: advertised_address(advertise, bound),
        })
    }
}

/// The `host:port` to register for a metrics listener bound at `bound`, in a process that
/// advertises `advertise` for its RPC: a listener on an unspecified address (0.0.0.0, in
/// containers) is reached at the advertised host.
pub fn advertised_address(advertise: &str, bound: SocketAddr) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let host = advertise
        .rsplit_once(':')
        .map_or(advertise, |(host, _)| host);
    format!("{host}:{}", bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_shows_recorded_metrics_and_process_metrics() {
        let telemetry = Telemetry::install().unwrap();
        metrics::counter!("cartdb_test_events_total", "kind" => "a").increment(3);
        metrics::histogram!("cartdb_test_wait_seconds").record(0.003);
        let text = telemetry.render();
        assert!(
            text.contains("cartdb_test_events_total{kind=\"a\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("cartdb_test_wait_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        assert_eq!(
            advertised_address("datanode3:7001", "0.0.0.0:9100".parse().unwrap()),
            "datanode3:9100"
        );
        assert_eq!(
            advertised_address("127.0.0.1:7001", "127.0.0.1:9100".parse().unwrap()),
            "127.0.0.1:9100"
        );
        // A second install is the same recorder.
        assert!(
            Telemetry::install()
                .unwrap()
                .render()
                .contains("cartdb_test_events_total")
        );
    }
}
