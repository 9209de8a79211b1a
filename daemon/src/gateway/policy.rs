//! Keys' policies on the request path (issue 14): allowed models, requests and tokens per
//! minute, spend budgets, and one usage record per request.
//!
//! The decisions are gate-core's (`accounting::{ledger, ratelimit, prices, estimate}`); this
//! module holds their state for the daemon ([`Accounting`]), answers refusals in the
//! client's protocol with the rate-limit headers, and settles each admitted request through
//! a [`Charge`]: a guard that the answer's end (body read, stream ended or broken) finishes
//! with the upstream's usage, and whose `Drop` settles whatever is left (a client that went
//! away mid-stream, a failed attempt chain, a dropped future), so no reservation leaks.
//!
//! Order of the checks: model (403), price known for a budgeted key (402), budget (402),
//! rate limits (429; a refusal here gives the reservation back). The reservation is the most
//! the request can cost on any candidate upstream: estimated input plus its output bound at
//! the dearest candidate's price.

use gate_rt::tunnel::support::unix_now;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gate_core::accounting::estimate;
use gate_core::accounting::ledger::{KeySpend, UNBUDGETED_PERIOD};
use gate_core::accounting::period::{civil_from_days, date_string};
use gate_core::accounting::prices::lookup_in;
use gate_core::accounting::{
    cost, BudgetRefusal, Ledger, Limited, Limits, Period, Price, PriceTable, RateLimiter,
    RateRefusal, RateStatus, Reservation, TokenCounts, UsageRecord, Usd, Window,
};
use gate_core::llm::usage::Usage;
use gate_core::route::{Candidate, WireProtocol};
use gate_rt::Runtime;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use gate_core::config::{DaemonStoreConfig, OnUnavailable};
use gate_rt::store::{Redis, RedisUrl};

use super::dispatch::MAX_ECHO_CHARS;
use super::shared::{
    RedisLimits, SharedAdmit, SharedDecision, SharedHold, SharedLimits, SharedSettle,
};
use super::{Endpoint, Gateway, Snapshot, UpstreamTarget};
use crate::auth::Caller;
use crate::errors::error_response;
use crate::usage::UsageSink;
use crate::web::Body;
use gate_core::llm::endpoint::bounded_echo;

/// Keys with rate-limit state above which admission forgets those whose allowance is whole.
const PRUNE_ABOVE: usize = 10_000;

/// The request a policy decision is about: who asked, at which endpoint (its policy label),
/// in which protocol (refusals answer in it), for which model, whether as a stream (its
/// output bound is then read at once), and since when (the usage record's latency).
#[derive(Clone, Copy)]
pub(super) struct Asked<'a> {
    pub(super) caller: &'a Caller,
    pub(super) label: &'static str,
    pub(super) protocol: WireProtocol,
    pub(super) model: &'a Arc<str>,
    pub(super) stream: bool,
    pub(super) started: Instant,
}

/// The ledger and rate limiter of every key, shared by the gateway's requests; with
/// `[store] redis_url`, the shared store that decides for budgeted and rate-limited keys
/// instead (the ledger then still records this daemon's own spend).
pub(crate) struct Accounting {
    ledger: Mutex<Ledger>,
    limiter: Mutex<RateLimiter>,
    epoch: Instant,
    shared: Option<Arc<dyn SharedLimits>>,
    on_unavailable: OnUnavailable,
}

impl Default for Accounting {
    fn default() -> Self {
        Self {
            ledger: Mutex::new(Ledger::new()),
            limiter: Mutex::new(RateLimiter::new()),
            epoch: Instant::now(),
            shared: None,
            on_unavailable: OnUnavailable::Closed,
        }
    }
}

impl Accounting {
    /// In-process accounting, or shared through `[store] redis_url` when it is set.
    pub(crate) fn for_store<R: Runtime>(rt: R, store: &DaemonStoreConfig) -> anyhow::Result<Self> {
        let shared: Option<Arc<dyn SharedLimits>> = match &store.redis_url {
            None => None,
            Some(url) => {
                let url = RedisUrl::parse(url.expose())
                    .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
                tracing::info!(
                    on_unavailable = ?store.on_unavailable,
                    "rate limits and budget reservations are shared through Redis at {url}"
                );
                let redis = Redis::new(rt.clone(), url);
                Some(Arc::new(RedisLimits::new(rt, redis)))
            }
        };
        Ok(Self {
            shared,
            on_unavailable: store.on_unavailable,
            ..Self::default()
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// `key_id`'s policy changed or it was revoked: its shared leases admit nothing more.
    pub(crate) fn forget(&self, key_id: &str) {
        if let Some(shared) = &self.shared {
            shared.forget(key_id);
        }
    }

    /// The daemon stops: the shared leases give back what they hold unused (`None`: no
    /// shared store; `Some(false)`: not all within the bound, the rest is charged at its
    /// deadline).
    pub(crate) async fn give_back_leases(&self) -> Option<bool> {
        match &self.shared {
            Some(shared) => Some(shared.give_back().await),
            None => None,
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The price of `model` at `upstream`: its `[upstreams.X.prices]` first, then the built-in
/// table of its provider.
pub(super) fn price_of(upstream: &UpstreamTarget, model: &str) -> Option<Price> {
    lookup_in(&upstream.prices, model)
        .or_else(|| PriceTable::builtin().lookup(upstream.provider.as_str(), model))
}

fn limits_of(caller: &Caller) -> Limits {
    Limits {
        rpm: caller.policy.rpm,
        tpm: caller.policy.tpm,
    }
}

/// The rate-limit state a key was admitted with, for the answer's headers.
pub(super) struct Admission {
    rate: RateStatus,
    limits: Limits,
}

impl Admission {
    /// Puts the key's rate-limit headers on a success (replacing the upstream's own of the
    /// client's family).
    pub(super) fn decorate(&self, protocol: WireProtocol, response: &mut Response<Body>) {
        if !self.limits.is_none() {
            rate_headers(protocol, &self.rate, response.headers_mut());
        }
    }
}

/// Settles one admitted request: gives its reservation back charging the actual cost,
/// corrects its token-per-minute charge, and hands its usage record to the sink. Finished
/// explicitly when the answer ends; `Drop` finishes it as abandoned otherwise.
pub(super) struct Charge {
    accounting: Arc<Accounting>,
    sink: Arc<dyn UsageSink>,
    reservation: Option<Reservation>,
    /// Admitted by the shared store: where its hold and token charge are settled.
    shared: Option<(Arc<dyn SharedLimits>, SharedHold)>,
    period: Option<Period>,
    tpm: Option<u64>,
    estimated_input: u64,
    max_output: OutputBound,
    record: UsageRecord,
    started: Instant,
    /// The answering upstream's price for the served model (`None`: unknown, or nothing
    /// answered).
    price: Option<Price>,
    answered: bool,
    /// Bytes of answer sent to the client (the output estimate of a stream without usage).
    streamed_bytes: u64,
    done: bool,
}

/// A request's output bound ([`estimate::max_output_tokens`]), read when a budgeted request
/// is admitted (its most cost), else only if its settle needs it (an answer without usage):
/// reading it cost ~1,200 instructions of every request, and most answers carry their usage.
enum OutputBound {
    Known(u64),
    /// The request's body and the model's output cap, to read it from if needed. Only for a
    /// request not asking for a stream: its charge is settled with its answer, so the body
    /// is not kept past the request's own handling.
    Later(bytes::Bytes, Option<u64>),
}

impl OutputBound {
    fn get(&self) -> u64 {
        match self {
            OutputBound::Known(n) => *n,
            OutputBound::Later(body, model_cap) => estimate::max_output_tokens(body, *model_cap),
        }
    }
}

impl Charge {
    /// The attempt that answers (failover: only this one is charged).
    pub(super) fn answered_by(&mut self, upstream: &UpstreamTarget, served_model: &Arc<str>) {
        self.price = price_of(upstream, served_model);
        self.answered = true;
        self.record.upstream = Some(upstream.name.clone());
        self.record.served_model = Some(served_model.clone());
    }

    /// Notes answer bytes sent to the client; the first marks the time to first token.
    pub(super) fn on_bytes(&mut self, n: usize) {
        if self.record.ttft_ms.is_none() {
            self.record.ttft_ms = Some(millis(self.started.elapsed()));
        }
        self.streamed_bytes = self.streamed_bytes.saturating_add(n as u64);
    }

    /// Settles an attempt the upstream refused or failed before answering: nothing is
    /// charged.
    pub(super) fn finish_unanswered(mut self, status: StatusCode, error: &'static str) {
        self.answered = false;
        self.settle(status, Usage::default(), Some(error));
    }

    /// Settles with `usage` as the answer ended: `status` as the client got it, `error` the
    /// failure's kind when it failed.
    pub(super) fn finish(mut self, status: StatusCode, usage: Usage, error: Option<&'static str>) {
        self.settle(status, usage, error);
    }

    fn settle(&mut self, status: StatusCode, usage: Usage, error: Option<&'static str>) {
        if self.done {
            return;
        }
        self.done = true;
        let tokens = if !self.answered {
            TokenCounts::default()
        } else {
            TokenCounts {
                input: if usage.input > 0 {
                    usage.input
                } else {
                    self.estimated_input
                },
                output: if error.is_none() && (usage.input > 0 || usage.output > 0) {
                    usage.output
                } else {
                    // No final count from the upstream (a stream cut short, an answer
                    // without usage): what was sent, a third of a token per byte (SSE
                    // framing included), at most the request's bound.
                    let sent = estimate::output_tokens_of_text(self.streamed_bytes)
                        .min(self.max_output.get().max(usage.output));
                    usage.output.max(sent)
                },
                cached: usage.cached_tokens,
                cache_write: usage.cache_write_tokens,
            }
        };
        let actual = self.price.map(|p| cost(tokens, &p));
        let now = unix_now();
        if let Some(reservation) = self.reservation.take() {
            self.accounting.ledger().settle(
                reservation,
                actual.unwrap_or(Usd::ZERO),
                self.period,
                now,
            );
        }
        if let Some((shared, hold)) = self.shared.take() {
            shared.settle(SharedSettle {
                hold,
                actual: actual.unwrap_or(Usd::ZERO),
                estimated_tokens: self.estimated_input,
                actual_tokens: tokens.input + tokens.output,
            });
        } else if self.tpm.is_some() {
            let now_ns = self.accounting.now_ns();
            self.accounting.limiter().settle_tokens(
                &self.record.key_id,
                self.tpm,
                self.estimated_input,
                tokens.input + tokens.output,
                now_ns,
            );
        }
        let mut record = std::mem::take(&mut self.record);
        record.input_tokens = tokens.input;
        record.output_tokens = tokens.output;
        record.cached_tokens = tokens.cached;
        record.cache_write_tokens = tokens.cache_write;
        record.cost = if self.answered {
            actual
        } else {
            Some(Usd::ZERO)
        };
        record.latency_ms = millis(self.started.elapsed());
        record.status = status.as_u16();
        record.error = error.map(Cow::Borrowed);
        self.sink.record(record);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if !self.done {
            let (status, error) = if self.answered {
                (StatusCode::OK, "abandoned")
            } else {
                (StatusCode::BAD_GATEWAY, "not_forwarded")
            };
            self.settle(status, Usage::default(), Some(error));
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `YYYY-MM-DD HH:MM UTC` of Unix seconds.
fn utc_minute(unix: u64) -> String {
    let secs = unix % 86_400;
    format!(
        "{} {:02}:{:02} UTC",
        date_string(unix),
        secs / 3600,
        secs % 3600 / 60
    )
}

/// RFC 3339 (`2026-12-04T12:00:00Z`) of Unix seconds.
fn rfc3339(unix: u64) -> String {
    let (y, m, d) = civil_from_days((unix / 86_400) as i64);
    let secs = unix % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// OpenAI's duration text: `1s`, `6m0s`, `1h2m3s`, `250ms`.
fn duration_text(ns: u64) -> String {
    let ms = ns.div_ceil(1_000_000);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms.div_ceil(1000);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// Sets the rate-limit headers of the client's family (`x-ratelimit-*` for OpenAI and Gemini
/// clients, `anthropic-ratelimit-*` for Anthropic's), removing the upstream's of that family.
pub(super) fn rate_headers(protocol: WireProtocol, status: &RateStatus, headers: &mut HeaderMap) {
    let anthropic = protocol == WireProtocol::Anthropic;
    let family = if anthropic {
        "anthropic-ratelimit-"
    } else {
        "x-ratelimit-"
    };
    let stale: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(family))
        .cloned()
        .collect();
    for name in stale {
        headers.remove(name);
    }
    let now = unix_now();
    // The names are fixed, so they are static (no formatting or parsing per request).
    let names: [[&'static str; 3]; 2] = if anthropic {
        [
            [
                "anthropic-ratelimit-requests-limit",
                "anthropic-ratelimit-requests-remaining",
                "anthropic-ratelimit-requests-reset",
            ],
            [
                "anthropic-ratelimit-tokens-limit",
                "anthropic-ratelimit-tokens-remaining",
                "anthropic-ratelimit-tokens-reset",
            ],
        ]
    } else {
        [
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        ]
    };
    for (window, [limit_name, remaining_name, reset_name]) in
        [status.requests, status.tokens].into_iter().zip(names)
    {
        let Some(Window {
            limit,
            remaining,
            reset_ns,
        }) = window
        else {
            continue;
        };
        let reset = if anthropic {
            rfc3339(now + reset_ns.div_ceil(1_000_000_000))
        } else {
            duration_text(reset_ns)
        };
        headers.insert(
            HeaderName::from_static(limit_name),
            HeaderValue::from(limit),
        );
        headers.insert(
            HeaderName::from_static(remaining_name),
            HeaderValue::from(remaining),
        );
        // The text's own buffer becomes the value (no copy).
        if let Ok(reset) = HeaderValue::from_maybe_shared(bytes::Bytes::from(reset)) {
            headers.insert(HeaderName::from_static(reset_name), reset);
        }
    }
}

fn budget_message(caller: &Caller, refusal: &BudgetRefusal) -> String {
    let period = match refusal.period {
        Period::Day => "daily",
        Period::Week => "weekly",
        Period::Month => "monthly",
        Period::Total => "total",
    };
    let held = if refusal.reserved > Usd::ZERO {
        format!(" ({} more is held by requests in flight)", refusal.reserved)
    } else {
        String::new()
    };
    let resets = match refusal.resets_at {
        Some(at) => format!("; the budget starts again at {}", utc_minute(at)),
        None => "; it is a total budget: raise it with `gate token update`".to_owned(),
    };
    format!(
        "key `{}` has spent {} of its {period} budget of {}{held}, and this request could cost \
         up to {}{resets}",
        caller.name, refusal.spent, refusal.limit, refusal.asked
    )
}

fn rate_message(caller: &Caller, refusal: &RateRefusal, limits: Limits) -> String {
    let retry = refusal.retry_after_ns.div_ceil(1_000_000_000).max(1);
    match refusal.limited {
        Limited::Requests => format!(
            "key `{}` is limited to {} requests per minute; retry after {retry} s",
            caller.name,
            limits.rpm.unwrap_or(0)
        ),
        Limited::Tokens => format!(
            "key `{}` is limited to {} tokens per minute; retry after {retry} s",
            caller.name,
            limits.tpm.unwrap_or(0)
        ),
    }
}

impl<R: Runtime> Gateway<R> {
    /// A fresh usage record for `caller`'s request.
    fn usage_record(asked: Asked<'_>) -> UsageRecord {
        UsageRecord {
            at_ms: unix_now_ms(),
            key_id: asked.caller.key_id.clone(),
            owner: asked.caller.owner.clone(),
            endpoint: asked.label.into(),
            model: asked.model.clone(),
            ..UsageRecord::default()
        }
    }

    /// 503 in the client's protocol with `retry-after: retry_secs`: a shared store this key's
    /// decision needs cannot be reached and `store.on_unavailable` is "closed".
    fn refuse_store_unavailable(
        &self,
        asked: Asked<'_>,
        message: &str,
        retry_secs: u32,
    ) -> Response<Body> {
        let mut response = self.refuse(
            asked,
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        );
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_secs));
        response
    }

    /// Answers a policy refusal in the client's protocol and logs its usage record.
    fn refuse(
        &self,
        asked: Asked<'_>,
        status: StatusCode,
        kind: &'static str,
        message: &str,
    ) -> Response<Body> {
        tracing::info!(key = %asked.caller.key_id, endpoint = asked.label, %status, %message, "request refused by the key's policy");
        let mut record = Self::usage_record(asked);
        record.status = status.as_u16();
        record.error = Some(Cow::Borrowed(kind));
        record.latency_ms = millis(asked.started.elapsed());
        record.cost = Some(Usd::ZERO);
        self.usage_sink().record(record);
        error_response(asked.protocol, status, message)
    }

    /// 403 unless `caller`'s key may ask for `model`.
    #[allow(clippy::result_large_err)]
    pub(super) fn check_model(&self, asked: Asked<'_>) -> Result<(), Response<Body>> {
        let Asked { caller, model, .. } = asked;
        let allowed = &caller.policy.models;
        if allowed.allows(model) {
            return Ok(());
        }
        let message = format!(
            "key `{}` may not use the model `{}`; it may use: {}",
            caller.name,
            bounded_echo(model, MAX_ECHO_CHARS),
            allowed.patterns().join(", ")
        );
        Err(self.refuse(asked, StatusCode::FORBIDDEN, "model_not_allowed", &message))
    }

    /// Admits `caller`'s request to `endpoint` for `model` with `body`, over `candidates`
    /// (a budgeted key keeps only those whose price is known): reserves its maximum cost and
    /// charges its rate limits, or answers the refusal.
    /// A stream's output bound is read now, a plain request's only when needed (see
    /// [`OutputBound`]).
    #[allow(clippy::result_large_err)]
    pub(super) async fn admit(
        &self,
        asked: Asked<'_>,
        endpoint: Endpoint,
        body: &bytes::Bytes,
        candidates: &mut Vec<Candidate>,
        snapshot: &Snapshot,
    ) -> Result<(Charge, Admission), Response<Body>> {
        let Asked {
            caller,
            model,
            stream,
            started,
            ..
        } = asked;
        let policy = &caller.policy;
        let upstream_of = |c: &Candidate| snapshot.upstreams.get(c.upstream.index());
        let free = endpoint == Endpoint::CountTokens;
        let estimated_input = if free {
            0
        } else {
            estimate::input_tokens(body)
        };
        let model_cap = candidates.first().and_then(upstream_of).and_then(|u| {
            let first = candidates.first().map_or(&**model, |c| &*c.upstream_model);
            let rule = gate_core::llm::model_rules::openai_model_rule(first).max_output_tokens;
            match (rule, u.max_output_tokens) {
                (Some(a), Some(b)) => Some(u64::from(a.min(b))),
                (a, b) => a.or(b).map(u64::from),
            }
        });
        let budget = policy.budget;
        let max_output = if free || endpoint == Endpoint::Embeddings {
            OutputBound::Known(0)
        } else if budget.is_some() || stream {
            OutputBound::Known(estimate::max_output_tokens(body, model_cap))
        } else {
            OutputBound::Later(body.clone(), model_cap)
        };
        let mut max_cost = Usd::ZERO;
        if budget.is_some() && !free {
            let unpriced: Vec<String> = candidates
                .iter()
                .filter_map(|c| {
                    let u = upstream_of(c)?;
                    price_of(u, &c.upstream_model)
                        .is_none()
                        .then(|| format!("[upstreams.{}.prices.\"{}\"]", u.name, c.upstream_model))
                })
                .collect();
            candidates.retain(|c| {
                upstream_of(c).is_some_and(|u| price_of(u, &c.upstream_model).is_some())
            });
            if candidates.is_empty() {
                let message = format!(
                    "key `{}` has a spend budget, and Gate knows no price for the model `{}` \
                     where it is served, so it cannot keep the budget; an operator adds one \
                     in the configuration: {} input = <USD per million input tokens>, \
                     output = <USD per million output tokens>",
                    caller.name,
                    bounded_echo(model, MAX_ECHO_CHARS),
                    unpriced.join(" or ")
                );
                return Err(self.refuse(
                    asked,
                    StatusCode::PAYMENT_REQUIRED,
                    "price_unknown",
                    &message,
                ));
            }
            let tokens = TokenCounts {
                input: estimated_input,
                output: max_output.get(),
                cached: 0,
                cache_write: 0,
            };
            for c in candidates.iter() {
                if let Some(price) = upstream_of(c).and_then(|u| price_of(u, &c.upstream_model)) {
                    // Cache writes may cost more than plain input: the dearer of the two.
                    let dearest = Price {
                        input: price.input.max(price.cache_write),
                        ..price
                    };
                    max_cost = max_cost.max(cost(tokens, &dearest));
                }
            }
        }
        if let (Some(_), Some(store)) = (budget, self.shared()) {
            let health = store.health();
            // "closed" refuses; "open" admits against the spend this daemon saw last.
            if health.unavailable() && health.on_unavailable() == OnUnavailable::Closed {
                let message = format!(
                    "key `{}` has a spend budget, and the shared store that holds the spend \
                     of every Gate daemon ({}) is unreachable, so the budget cannot be kept; \
                     budgeted keys are refused until it is back \
                     (store.on_unavailable = \"closed\"); retry later or ask the operator",
                    caller.name,
                    health.shown()
                );
                return Err(self.refuse_store_unavailable(asked, &message, 5));
            }
        }
        let now = unix_now();
        let limits = limits_of(caller);
        let mut record = Self::usage_record(asked);
        record.status = StatusCode::OK.as_u16();
        let charge = |reservation, shared, record| Charge {
            accounting: self.accounting.clone(),
            sink: self.usage_sink(),
            reservation: Some(reservation),
            shared,
            period: budget.map(|b| b.period),
            tpm: limits.tpm,
            estimated_input,
            max_output,
            record,
            started,
            price: None,
            answered: false,
            streamed_bytes: 0,
            done: false,
        };
        let shared = self
            .accounting
            .shared
            .clone()
            .filter(|_| budget.is_some() || !limits.is_none());
        if let Some(shared) = shared {
            let period = budget.map_or(UNBUDGETED_PERIOD, |b| b.period);
            let local_spent = self
                .accounting
                .ledger()
                .spend(&caller.key_id, period, now)
                .spent;
            let decision = shared
                .admit(SharedAdmit {
                    key_id: caller.key_id.to_string(),
                    limits,
                    tokens: estimated_input,
                    budget,
                    max_cost,
                    now_unix: now,
                    local_spent,
                })
                .await;
            match decision {
                Ok(SharedDecision::Admitted { status, hold, .. }) => {
                    // The local ledger holds nothing: it only records this daemon's spend.
                    let local = self.accounting.ledger().reserve(
                        Arc::clone(&caller.key_id),
                        None,
                        now,
                        Usd::ZERO,
                    );
                    if let Ok(local) = local {
                        return Ok((
                            charge(local, Some((shared, hold)), record),
                            Admission {
                                rate: status,
                                limits,
                            },
                        ));
                    }
                }
                Ok(SharedDecision::Budget(refusal)) => {
                    return Err(self.refuse(
                        asked,
                        StatusCode::PAYMENT_REQUIRED,
                        "budget",
                        &budget_message(caller, &refusal),
                    ))
                }
                Ok(SharedDecision::Rate(refusal)) => {
                    return Err(self.rate_refusal(asked, &refusal, limits))
                }
                Err(why) => match self.accounting.on_unavailable {
                    OnUnavailable::Closed => {
                        let message = format!(
                            "{why}. Key `{}` has a budget or rate limits, which Gate keeps in \
                             that shared store, and store.on_unavailable is \"closed\": its \
                             requests are refused until the store answers again; retry shortly \
                             (the operator can check the store)",
                            caller.name
                        );
                        return Err(self.refuse_store_unavailable(asked, &message, 1));
                    }
                    OnUnavailable::Open => {
                        tracing::debug!(
                            key = %caller.key_id,
                            "{why}; deciding in-process (store.on_unavailable = \"open\")"
                        );
                    }
                },
            }
        }
        // Each lock is held for one statement: never two at once. Without Redis the
        // reservation is this daemon's; spend settled by other daemons reaches its ledger
        // through the PostgreSQL sync (`shared.rs`).
        let reserved =
            self.accounting
                .ledger()
                .reserve(Arc::clone(&caller.key_id), budget, now, max_cost);
        let reservation = match reserved {
            Ok(r) => r,
            Err(refusal) => {
                return Err(self.refuse(
                    asked,
                    StatusCode::PAYMENT_REQUIRED,
                    "budget",
                    &budget_message(caller, &refusal),
                ))
            }
        };
        let now_ns = self.accounting.now_ns();
        let admitted = {
            let mut limiter = self.accounting.limiter();
            if limiter.len() > PRUNE_ABOVE {
                // Keys whose allowances are whole again need no state (JWT subjects come
                // and go).
                limiter.prune(now_ns);
            }
            limiter.admit(&caller.key_id, limits, estimated_input, now_ns)
        };
        let rate = match admitted {
            Ok(status) => status,
            Err(refusal) => {
                self.accounting.ledger().settle(
                    reservation,
                    Usd::ZERO,
                    budget.map(|b| b.period),
                    now,
                );
                return Err(self.rate_refusal(asked, &refusal, limits));
            }
        };
        Ok((
            charge(reservation, None, record),
            Admission { rate, limits },
        ))
    }

    /// A 429 in the client's protocol with the rate-limit headers and Retry-After.
    fn rate_refusal(
        &self,
        asked: Asked<'_>,
        refusal: &RateRefusal,
        limits: Limits,
    ) -> Response<Body> {
        let mut response = self.refuse(
            asked,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &rate_message(asked.caller, refusal, limits),
        );
        rate_headers(asked.protocol, &refusal.status, response.headers_mut());
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(refusal.retry_after_ns.div_ceil(1_000_000_000).max(1)),
        );
        response
    }

    /// Sets what `key_id` spent in its current budget period (from the usage log, at start).
    pub fn restore_spend(&self, key_id: &str, spent: Usd) {
        let period = self.key_period(key_id);
        let start = period.start(unix_now());
        self.accounting.ledger().restore(key_id, spent, start);
    }

    /// Sets each key's spend from the shared store's sums (today, week, month, total),
    /// counting what this daemon settled and had not written when the store was asked.
    pub(crate) fn apply_shared_spend(
        &self,
        sums: &std::collections::HashMap<String, [Usd; 4]>,
        written: &std::collections::HashMap<String, Usd>,
        now_unix: u64,
    ) {
        // One pass over the keys (not one per key): every key's budget period.
        let key_periods: std::collections::HashMap<String, Period> = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .list()
            .into_iter()
            .filter_map(|t| Some((t.id, t.policy.budget?.period)))
            .collect();
        let periods: Vec<(&String, Period)> = sums
            .keys()
            .map(|k| {
                let period = if k.starts_with("jwt:") {
                    self.key_period(k)
                } else {
                    key_periods.get(k).copied().unwrap_or(UNBUDGETED_PERIOD)
                };
                (k, period)
            })
            .collect();
        let mut ledger = self.accounting.ledger();
        for (key, period) in periods {
            let stored = sums
                .get(key)
                .map_or(Usd::ZERO, |s| crate::shared::spend_in(s, period));
            let written = written.get(key).copied().unwrap_or(Usd::ZERO);
            ledger.sync_shared(key, period, now_unix, stored, written);
        }
    }

    /// `key_id`'s spend in its current budget period (its budget's period; a month for keys
    /// without a budget): spent, held by requests in flight, and the period.
    pub fn key_spend(&self, key_id: &str) -> (KeySpend, Period) {
        let period = self.key_period(key_id);
        let now = unix_now();
        let mut spend = self.accounting.ledger().spend(key_id, period, now);
        if let Some((spent, held)) = self
            .accounting
            .shared
            .as_ref()
            .and_then(|shared| shared.last_seen(key_id, period.start(now)))
        {
            // The shared store's view (every daemon's requests) as last seen here.
            spend.spent = spent;
            spend.reserved = held;
        }
        (spend, period)
    }

    fn key_period(&self, key_id: &str) -> Period {
        if key_id.starts_with("jwt:") {
            // A JWT's budget is bounded by the operator's, whose period holds when both
            // set one; without an operator budget the claim's period is known only per
            // request, and listings use a month.
            return self
                .snapshot()
                .jwt
                .as_ref()
                .and_then(|jwt| jwt.budget_period())
                .unwrap_or(UNBUDGETED_PERIOD);
        }
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(key_id)
            .and_then(|t| t.policy.budget)
            .map_or(UNBUDGETED_PERIOD, |b| b.period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_texts() {
        assert_eq!(duration_text(250_000_000), "250ms");
        assert_eq!(duration_text(1_000_000_000), "1s");
        assert_eq!(duration_text(360_000_000_000), "6m0s");
        assert_eq!(duration_text(3_723_000_000_000), "1h2m3s");
        assert_eq!(rfc3339(1_796_310_245), "2026-12-03T15:04:05Z");
        assert_eq!(utc_minute(1_796_310_245), "2026-12-03 15:04 UTC");
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-ratelimit-limit-requests",
            HeaderValue::from_static("9999"),
        );
        let status = RateStatus {
            requests: Some(Window {
                limit: 10,
                remaining: 9,
                reset_ns: 6_000_000_000,
            }),
            tokens: None,
        };
        rate_headers(WireProtocol::OpenAi, &status, &mut headers);
        assert_eq!(headers["x-ratelimit-limit-requests"], "10");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "9");
        assert_eq!(headers["x-ratelimit-reset-requests"], "6s");
        let mut headers = HeaderMap::new();
        rate_headers(WireProtocol::Anthropic, &status, &mut headers);
        assert_eq!(headers["anthropic-ratelimit-requests-limit"], "10");
        assert!(headers.contains_key("anthropic-ratelimit-requests-reset"));
    }
}
