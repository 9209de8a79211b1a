//! Prometheus metrics (`GET /metrics`): requests, latency and time-to-first-token
//! histograms, tokens by upstream and model, upstream health.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayLabels {
    pub relay: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub upstream: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub upstream: String,
    pub model: String,
    pub kind: String,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        300.0,
    ]
    .into_iter()
}

/// What `/metrics` shows of the relay side (implemented by `remote::Remote`), so the request
/// path can render those gauges without depending on the relay code.
pub trait RelayGauges: Send + Sync {
    /// Each relay's address, and whether this daemon is registered there.
    fn relays(&self) -> Vec<(String, bool)>;
    /// When the certificate served on relayed connections expires (Unix seconds).
    fn certificate_expiry(&self) -> Option<i64>;
}

/// All metrics of the daemon.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<EndpointLabels, Histogram>,
    pub time_to_first_token: Family<UpstreamLabels, Histogram>,
    pub upstream_attempts: Family<AttemptLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub upstream_up: Family<UpstreamLabels, Gauge>,
    pub relay_registered: Family<RelayLabels, Gauge>,
    pub certificate_expiry: Gauge,
    render_lock: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Client requests by endpoint and status",
            requests.clone(),
        );
        let request_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response",
            request_duration.clone(),
        );
        let time_to_first_token = Family::<UpstreamLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "time_to_first_token_seconds",
            "Time from request to the first streamed byte from the upstream",
            time_to_first_token.clone(),
        );
        let upstream_attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "Upstream attempts by outcome",
            upstream_attempts.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens by upstream, model and kind (input, output, cached, cache_write)",
            tokens.clone(),
        );
        let upstream_up = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "upstream_up",
            "Upstream circuit state: 1 closed, 0.5 half-open (as 0), 0 open",
            upstream_up.clone(),
        );
        let relay_registered = Family::<RelayLabels, Gauge>::default();
        registry.register(
            "relay_registered",
            "1 while registered with the relay, else 0",
            relay_registered.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry (Unix time) of the certificate served through relays",
            certificate_expiry.clone(),
        );
        Self {
            registry,
            relay_registered,
            certificate_expiry,
            requests,
            request_duration,
            time_to_first_token,
            upstream_attempts,
            tokens,
            upstream_up,
            render_lock: Mutex::new(()),
        }
    }

    /// Counts tokens of one response.
    pub fn add_tokens(&self, upstream: &str, model: &str, input: u64, output: u64) {
        for (kind, n) in [("input", input), ("output", output)] {
            if n > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        upstream: upstream.to_owned(),
                        model: model.to_owned(),
                        kind: kind.to_owned(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// Adds the token counts of one answer: input and output, and the prompt-cache reads
    /// and writes (`kind="cached"`, `kind="cache_write"`) when the upstream reported them.
    pub fn add_usage(&self, upstream: &str, model: &str, usage: &gate_core::llm::usage::Usage) {
        self.add_tokens(upstream, model, usage.input, usage.output);
        for (kind, n) in [("cached", usage.cached), ("cache_write", usage.cache_write)] {
            if n > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        upstream: upstream.to_owned(),
                        model: model.to_owned(),
                        kind: kind.to_owned(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let _guard = self.render_lock.lock();
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
