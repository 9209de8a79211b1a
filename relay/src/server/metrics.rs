//! The relay's counters: kept as prometheus-client metrics (as the daemon's are), snapshotted
//! for [`super::RunningRelay::stats`] and the status file, and served in the Prometheus text
//! format by the optional metrics listener, through hyper ([`gate_rt::hyper_glue`]).
//!
//! Must not: listen anywhere but the address it is given (loopback by default), or expose
//! names, addresses or anything about a daemon beyond counts.

use std::convert::Infallible;

use bytes::Bytes;
use gate_rt::hyper_glue::{serve_connection, ServerSettings};
use http_body_util::Full;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::*;

/// How long a scraper may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The content type of the text exposition prometheus-client writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The relay's metrics. Counters are exposed with a `_total` suffix
/// (`gate_relay_forwarded_total`), gauges without (`gate_relay_https_open`).
#[derive(Debug)]
pub(super) struct Metrics {
    registry: Registry,
    pub(super) https_accepted: Counter,
    pub(super) https_open: Gauge,
    pub(super) forwarded: Counter,
    pub(super) forwarded_open: Gauge,
    pub(super) unknown_name: Counter,
    pub(super) no_sni: Counter,
    pub(super) invalid_hello: Counter,
    pub(super) handshake_timeouts: Counter,
    pub(super) over_limit: Counter,
    pub(super) daemon_unreachable: Counter,
    pub(super) daemons_registered: Gauge,
    pub(super) bytes_to_daemons: Counter,
    pub(super) bytes_to_clients: Counter,
}

/// A snapshot of the relay's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    /// HTTPS connections accepted since start.
    pub https_accepted: u64,
    /// HTTPS connections open now (reading the ClientHello or forwarded).
    pub https_open: u64,
    /// Connections forwarded to a daemon since start.
    pub forwarded: u64,
    /// Forwarded connections open now.
    pub forwarded_open: u64,
    /// Connections answered `unrecognized_name` for an unknown or offline name.
    pub unknown_name: u64,
    /// ClientHellos without a server name.
    pub no_sni: u64,
    /// Connections that did not start with a valid ClientHello.
    pub invalid_hello: u64,
    /// Connections cut off at the handshake timeout.
    pub handshake_timeouts: u64,
    /// Connections refused by a connection limit.
    pub over_limit: u64,
    /// Connections whose daemon could not be reached.
    pub daemon_unreachable: u64,
    /// Daemon connections registered now.
    pub daemons_registered: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gate_relay");
        let mut counter = |name: &str, help: &str| {
            let metric = Counter::default();
            registry.register(name, help, metric.clone());
            metric
        };
        let https_accepted = counter("https_accepted", "HTTPS connections accepted");
        let forwarded = counter("forwarded", "connections forwarded to daemons");
        let unknown_name = counter("unknown_name", "connections for unknown or offline names");
        let no_sni = counter("no_sni", "ClientHellos without a server name");
        let invalid_hello = counter("invalid_hello", "connections without a valid ClientHello");
        let handshake_timeouts = counter(
            "handshake_timeouts",
            "connections cut off at the handshake timeout",
        );
        let over_limit = counter("over_limit", "connections refused by a limit");
        let daemon_unreachable = counter(
            "daemon_unreachable",
            "connections whose daemon could not be reached",
        );
        let bytes_to_daemons = counter("bytes_to_daemons", "bytes copied from clients to daemons");
        let bytes_to_clients = counter("bytes_to_clients", "bytes copied from daemons to clients");
        let mut gauge = |name: &str, help: &str| {
            let metric = Gauge::default();
            registry.register(name, help, metric.clone());
            metric
        };
        let https_open = gauge("https_open", "HTTPS connections open");
        let forwarded_open = gauge("forwarded_open", "forwarded connections open");
        let daemons_registered = gauge("daemons_registered", "registered daemon connections");
        Self {
            registry,
            https_accepted,
            https_open,
            forwarded,
            forwarded_open,
            unknown_name,
            no_sni,
            invalid_hello,
            handshake_timeouts,
            over_limit,
            daemon_unreachable,
            daemons_registered,
            bytes_to_daemons,
            bytes_to_clients,
        }
    }
}

impl Metrics {
    pub(super) fn snapshot(&self) -> RelayStats {
        let gauge = |g: &Gauge| u64::try_from(g.get()).unwrap_or(0);
        RelayStats {
            https_accepted: self.https_accepted.get(),
            https_open: gauge(&self.https_open),
            forwarded: self.forwarded.get(),
            forwarded_open: gauge(&self.forwarded_open),
            unknown_name: self.unknown_name.get(),
            no_sni: self.no_sni.get(),
            invalid_hello: self.invalid_hello.get(),
            handshake_timeouts: self.handshake_timeouts.get(),
            over_limit: self.over_limit.get(),
            daemon_unreachable: self.daemon_unreachable.get(),
            daemons_registered: gauge(&self.daemons_registered),
        }
    }

    /// The text exposition of every metric.
    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("could not render the metrics: {e}");
            out.clear();
        }
        out
    }
}

/// Serves the metrics (whatever path is asked for) on every connection to `listener`, through
/// hyper, until shutdown. Each response closes its connection.
pub(super) async fn serve_metrics<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    listener: R::TcpListener,
) {
    let settings = ServerSettings {
        header_read_timeout: HEADER_READ_TIMEOUT,
        keep_alive_timeout: HEADER_READ_TIMEOUT,
        ..ServerSettings::default()
    };
    loop {
        let (stream, peer) = match race(shared.shutdown.wait(), R::accept(&listener)).await {
            Either::Left(()) => return,
            Either::Right(Ok(accepted)) => accepted,
            Either::Right(Err(e)) => {
                tracing::debug!("accepting a metrics connection failed: {e}");
                rt.sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service_shared = shared.clone();
        let service = hyper::service::service_fn(move |_request| {
            let body = service_shared.metrics.render();
            let response = http::Response::builder()
                .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
                .header(http::header::CONNECTION, "close")
                .body(Full::new(Bytes::from(body)));
            async move {
                Ok::<_, Infallible>(response.unwrap_or_else(|_| {
                    let mut failed = http::Response::new(Full::new(Bytes::new()));
                    *failed.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    failed
                }))
            }
        });
        let settings = settings.clone();
        let task_rt = rt.clone();
        rt.spawn(async move {
            if let Err(e) = serve_connection(task_rt, stream, &settings, service).await {
                tracing::debug!(%peer, "metrics connection ended: {e}");
            }
        });
    }
}
