//! Prometheus metrics (`GET /metrics`): requests, latency and time-to-first-token
//! histograms, tokens by upstream and model, upstream health, and usage per key and model
//! (from the usage sink, at most [`MAX_KEY_MODEL_SERIES`] label sets).

use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock, RwLock};

use gate_core::accounting::UsageRecord;
use gate_core::llm::endpoint::Endpoint;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

// Labels whose values are fixed names (endpoints, outcomes) borrow them: looking a series
// up on the request path allocates nothing (issue 16).

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: Cow<'static, str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: Cow<'static, str>,
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
    pub outcome: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub upstream: String,
    pub model: String,
    pub kind: Cow<'static, str>,
}

/// Usage per key and model (`key` is the key id, `jwt:<subject>` or `loopback`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyModelLabels {
    pub key: String,
    pub model: String,
}

/// At most this many (key, model) label sets per usage family; later ones are counted under
/// `key="other", model="other"`, so a flood of keys or JWT subjects cannot grow `/metrics`
/// without bound.
pub const MAX_KEY_MODEL_SERIES: usize = 500;

/// The model label of a request that reached no upstream (refused, unknown model): the
/// client's model name is not a label there, as any text could be.
pub const NO_UPSTREAM_MODEL: &str = "none";

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

/// Series already looked up, by two label values (upstream and model, key and model,
/// upstream and outcome): the request path finds their counters with two borrowed-`str`
/// hash lookups under a read lock, and allocates no label strings once a series exists
/// (issue 16). The families stay the source of `/metrics`: a slot is filled with the family's
/// own counter (a shared handle) the first time it counts, so the exposition is the same as
/// when every request looked its labels up in the family.
///
/// FxHash, not SipHash: the labels are configured names (upstreams, models) and key ids, the
/// key and model sets are capped at [`MAX_KEY_MODEL_SERIES`], and two SipHash lookups of
/// short strings cost more than the counter they find.
struct SeriesCache<V> {
    map: RwLock<FxHashMap<String, FxHashMap<String, V>>>,
}

impl<V> Default for SeriesCache<V> {
    fn default() -> Self {
        Self {
            map: RwLock::new(FxHashMap::default()),
        }
    }
}

impl<V: Default> SeriesCache<V> {
    /// Runs `f` on the entry of (`a`, `b`), creating it when `admit` allows (it is given
    /// the number of entries so far); `None` when the entry does not exist and is not
    /// admitted.
    fn with<T>(
        &self,
        a: &str,
        b: &str,
        admit: impl FnOnce(usize) -> bool,
        f: impl FnOnce(&V) -> T,
    ) -> Option<T> {
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = map.get(a).and_then(|m| m.get(b)) {
                return Some(f(entry));
            }
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.get(a).is_some_and(|m| m.contains_key(b)) {
            return map.get(a).and_then(|m| m.get(b)).map(f);
        }
        if !admit(map.values().map(FxHashMap::len).sum()) {
            return None;
        }
        let entry = map
            .entry(a.to_owned())
            .or_default()
            .entry(b.to_owned())
            .or_default();
        Some(f(entry))
    }
}

/// The token counters of one (upstream, model), by kind ([`TOKEN_KINDS`]).
type TokenSlots = [OnceLock<Counter>; 4];

/// The `kind` label values of `gate_tokens_total`, in [`TokenSlots`] order.
const TOKEN_KINDS: [&str; 4] = ["input", "output", "cached", "cache_write"];

/// The per-key counters of one admitted (key, model) label set.
#[derive(Default)]
struct KeySlots {
    requests: OnceLock<Counter>,
    input: OnceLock<Counter>,
    output: OnceLock<Counter>,
    cost: OnceLock<Counter<f64, AtomicU64>>,
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
    pub key_requests: Family<KeyModelLabels, Counter>,
    pub key_input_tokens: Family<KeyModelLabels, Counter>,
    pub key_output_tokens: Family<KeyModelLabels, Counter>,
    pub key_cost: Family<KeyModelLabels, Counter<f64, AtomicU64>>,
    /// Usage records not written to the usage log (its channel full, or closed).
    pub usage_dropped: Counter,
    /// The (key, model) label sets admitted so far (at most [`MAX_KEY_MODEL_SERIES`]).
    key_model_series: SeriesCache<KeySlots>,
    /// The `key="other", model="other"` set, for (key, model) sets past the limit.
    key_model_other: KeySlots,
    token_series: SeriesCache<TokenSlots>,
    attempt_series: SeriesCache<OnceLock<Counter>>,
    /// Per upstream (its second level is one empty name): its `time_to_first_token` series.
    ttft_series: SeriesCache<OnceLock<Histogram>>,
    /// Per endpoint ([`Endpoint::ALL`] order): its `requests` series of status 200 and its
    /// `request_duration` series, found in their families once (each lookup hashed the
    /// labels with SipHash under the family's lock: ~660 instructions a request).
    endpoint_series: [(OnceLock<Counter>, OnceLock<Histogram>); Endpoint::ALL.len()],
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
        let key_requests = Family::<KeyModelLabels, Counter>::default();
        registry.register(
            "key_requests",
            "Requests per API key and model (model \"none\": no upstream reached)",
            key_requests.clone(),
        );
        let key_input_tokens = Family::<KeyModelLabels, Counter>::default();
        registry.register(
            "key_input_tokens",
            "Input tokens per API key and model",
            key_input_tokens.clone(),
        );
        let key_output_tokens = Family::<KeyModelLabels, Counter>::default();
        registry.register(
            "key_output_tokens",
            "Output tokens per API key and model",
            key_output_tokens.clone(),
        );
        let key_cost = Family::<KeyModelLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "key_cost_usd",
            "Known cost in US dollars per API key and model (requests without a price add 0)",
            key_cost.clone(),
        );
        let usage_dropped = Counter::default();
        registry.register(
            "usage_records_dropped",
            "Usage records the usage log could not take (writer behind, or closed)",
            usage_dropped.clone(),
        );
        Self {
            registry,
            key_requests,
            key_input_tokens,
            key_output_tokens,
            key_cost,
            usage_dropped,
            key_model_series: SeriesCache::default(),
            key_model_other: KeySlots::default(),
            token_series: SeriesCache::default(),
            attempt_series: SeriesCache::default(),
            ttft_series: SeriesCache::default(),
            endpoint_series: Default::default(),
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

    /// Counts one client request to `endpoint` answered with `status`.
    pub fn count_request(&self, endpoint: Endpoint, status: u16) {
        let family = || {
            self.requests.get_or_create_owned(&RequestLabels {
                endpoint: endpoint.label().into(),
                status,
            })
        };
        match (status, self.endpoint_series.get(endpoint.index())) {
            (200, Some((ok, _))) => ok.get_or_init(family).inc(),
            _ => family().inc(),
        };
    }

    /// Records how long a (non-streamed) request to `endpoint` took.
    pub fn observe_request_duration(&self, endpoint: Endpoint, seconds: f64) {
        let family = || {
            self.request_duration.get_or_create_owned(&EndpointLabels {
                endpoint: endpoint.label().into(),
            })
        };
        match self.endpoint_series.get(endpoint.index()) {
            Some((_, duration)) => duration.get_or_init(family).observe(seconds),
            None => family().observe(seconds),
        }
    }

    /// Records when a stream from `upstream` sent its first bytes, `seconds` after its
    /// request came (the series found once per upstream, not by a label lookup per stream).
    pub fn observe_time_to_first_token(&self, upstream: &str, seconds: f64) {
        self.ttft_series.with(
            upstream,
            "",
            |_| true,
            |slot| {
                slot.get_or_init(|| {
                    self.time_to_first_token
                        .get_or_create(&UpstreamLabels {
                            upstream: upstream.to_owned(),
                        })
                        .clone()
                })
                .observe(seconds);
            },
        );
    }

    /// Counts tokens of one response.
    pub fn add_tokens(&self, upstream: &str, model: &str, input: u64, output: u64) {
        self.count_tokens(upstream, model, [input, output, 0, 0]);
    }

    /// Adds `counts` (in [`TOKEN_KINDS`] order) to the token counters of (upstream, model);
    /// a kind's series is created when it first counts more than zero.
    fn count_tokens(&self, upstream: &str, model: &str, counts: [u64; 4]) {
        if counts.iter().all(|&n| n == 0) {
            return;
        }
        self.token_series.with(
            upstream,
            model,
            |_| true,
            |slots| {
                for ((slot, kind), n) in slots.iter().zip(TOKEN_KINDS).zip(counts) {
                    if n > 0 {
                        slot.get_or_init(|| {
                            self.tokens
                                .get_or_create(&TokenLabels {
                                    upstream: upstream.to_owned(),
                                    model: model.to_owned(),
                                    kind: kind.into(),
                                })
                                .clone()
                        })
                        .inc_by(n);
                    }
                }
            },
        );
    }

    /// Counts one attempt at `upstream` with `outcome`.
    pub fn count_attempt(&self, upstream: &str, outcome: &'static str) {
        self.attempt_series.with(
            upstream,
            outcome,
            |_| true,
            |slot| {
                slot.get_or_init(|| {
                    self.upstream_attempts
                        .get_or_create(&AttemptLabels {
                            upstream: upstream.to_owned(),
                            outcome: outcome.into(),
                        })
                        .clone()
                })
                .inc();
            },
        );
    }

    /// Counts one finished request in the per-key families.
    pub fn record_usage(&self, record: &UsageRecord) {
        let model = match &record.upstream {
            Some(_) => &*record.model,
            None => NO_UPSTREAM_MODEL,
        };
        let key = &*record.key_id;
        let count = |slots: &KeySlots, labels: &dyn Fn() -> KeyModelLabels| {
            slots
                .requests
                .get_or_init(|| self.key_requests.get_or_create(&labels()).clone())
                .inc();
            if record.input_tokens > 0 {
                slots
                    .input
                    .get_or_init(|| self.key_input_tokens.get_or_create(&labels()).clone())
                    .inc_by(record.input_tokens);
            }
            if record.output_tokens > 0 {
                slots
                    .output
                    .get_or_init(|| self.key_output_tokens.get_or_create(&labels()).clone())
                    .inc_by(record.output_tokens);
            }
            if let Some(cost) = record.cost {
                slots
                    .cost
                    .get_or_init(|| self.key_cost.get_or_create(&labels()).clone())
                    .inc_by(cost.as_f64());
            }
        };
        let own = || KeyModelLabels {
            key: key.to_owned(),
            model: model.to_owned(),
        };
        let counted = self.key_model_series.with(
            key,
            model,
            |admitted| admitted < MAX_KEY_MODEL_SERIES,
            |slots| count(slots, &own),
        );
        if counted.is_none() {
            let other = || KeyModelLabels {
                key: "other".to_owned(),
                model: "other".to_owned(),
            };
            count(&self.key_model_other, &other);
        }
    }

    /// Adds the token counts of one answer: input and output, and the prompt-cache reads
    /// and writes (`kind="cached"`, `kind="cache_write"`) when the upstream reported them.
    pub fn add_usage(&self, upstream: &str, model: &str, usage: &gate_core::llm::usage::Usage) {
        self.count_tokens(
            upstream,
            model,
            [
                usage.input,
                usage.output,
                usage.cached_tokens,
                usage.cache_write_tokens,
            ],
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use gate_core::accounting::Usd;

    fn record(key: &str, model: &str, upstream: Option<&str>) -> UsageRecord {
        UsageRecord {
            key_id: key.into(),
            model: model.into(),
            upstream: upstream.map(Into::into),
            input_tokens: 10,
            output_tokens: 5,
            cost: Some(Usd(1_500_000_000)),
            status: 200,
            ..UsageRecord::default()
        }
    }

    /// Counters found through the series cache render as the families' own series: a kind
    /// that never counted more than zero has no series, and repeated counts add up.
    #[test]
    fn cached_series_render_as_family_series() {
        let metrics = Metrics::new();
        let usage = gate_core::llm::usage::Usage {
            input: 7,
            output: 3,
            cached_tokens: 2,
            ..Default::default()
        };
        metrics.add_usage("up", "m", &usage);
        metrics.add_usage("up", "m", &usage);
        metrics.add_tokens("up", "m2", 0, 4);
        metrics.count_attempt("up", "ok");
        metrics.count_attempt("up", "ok");
        metrics.count_attempt("up", "timeout");
        // Requests: status 200 through the per-endpoint cache, others through the family;
        // both render in the one family.
        metrics.count_request(Endpoint::ChatCompletions, 200);
        metrics.count_request(Endpoint::ChatCompletions, 200);
        metrics.count_request(Endpoint::ChatCompletions, 429);
        metrics.count_request(Endpoint::Messages, 200);
        metrics.observe_request_duration(Endpoint::ChatCompletions, 0.002);
        metrics.observe_request_duration(Endpoint::ChatCompletions, 0.004);
        let text = metrics.render();
        for line in [
            r#"gate_tokens_total{upstream="up",model="m",kind="input"} 14"#,
            r#"gate_tokens_total{upstream="up",model="m",kind="output"} 6"#,
            r#"gate_tokens_total{upstream="up",model="m",kind="cached"} 4"#,
            r#"gate_tokens_total{upstream="up",model="m2",kind="output"} 4"#,
            r#"gate_upstream_attempts_total{upstream="up",outcome="ok"} 2"#,
            r#"gate_upstream_attempts_total{upstream="up",outcome="timeout"} 1"#,
            r#"gate_requests_total{endpoint="chat_completions",status="200"} 2"#,
            r#"gate_requests_total{endpoint="chat_completions",status="429"} 1"#,
            r#"gate_requests_total{endpoint="messages",status="200"} 1"#,
            r#"gate_request_duration_seconds_count{endpoint="chat_completions"} 2"#,
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        assert!(!text.contains(r#"kind="cache_write""#), "{text}");
        assert!(!text.contains(r#"model="m2",kind="input""#), "{text}");
        assert!(!text.contains(r#"endpoint="embeddings""#), "{text}");
    }

    #[test]
    fn per_key_counters_are_bounded() {
        let metrics = Metrics::new();
        metrics.record_usage(&record("k1", "gpt-4o", Some("openai")));
        metrics.record_usage(&record("k1", "gpt-4o", Some("openai")));
        metrics.record_usage(&record("k1", "made-up-name", None));
        let text = metrics.render();
        assert!(
            text.contains(r#"gate_key_requests_total{key="k1",model="gpt-4o"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"gate_key_input_tokens_total{key="k1",model="gpt-4o"} 20"#));
        assert!(text.contains(r#"gate_key_output_tokens_total{key="k1",model="gpt-4o"} 10"#));
        assert!(text.contains(r#"gate_key_cost_usd_total{key="k1",model="gpt-4o"} 3.0"#));
        // A request that reached no upstream does not put the client's model name in a label.
        assert!(text.contains(r#"gate_key_requests_total{key="k1",model="none"} 1"#));
        assert!(!text.contains("made-up-name"));
        for i in 0..MAX_KEY_MODEL_SERIES + 50 {
            metrics.record_usage(&record(&format!("jwt:user{i}"), "m", Some("u")));
        }
        let text = metrics.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("gate_key_requests_total{"))
            .count();
        // The admitted sets, plus the one `other` set.
        assert_eq!(series, MAX_KEY_MODEL_SERIES + 1, "{text}");
        // Two sets existed before the flood: 52 of the 550 new keys overflowed.
        assert!(
            text.contains(r#"gate_key_requests_total{key="other",model="other"} 52"#),
            "{text}"
        );
        // Known label sets keep counting under their own labels.
        metrics.record_usage(&record("k1", "gpt-4o", Some("openai")));
        assert!(metrics
            .render()
            .contains(r#"gate_key_requests_total{key="k1",model="gpt-4o"} 3"#));
    }
}
