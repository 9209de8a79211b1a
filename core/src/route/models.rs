//! The model route table: which upstreams can serve a model, in which order, under which name.
//!
//! It owns the ordering rules of DESIGN.md section 5 and the per-upstream circuit breakers. It
//! must not perform requests, discover models itself (the daemon fetches `GET /models` and hands
//! the list to [`Router::set_discovered_models`]) or read a clock.
//!
//! Order of [`Router::candidates`]:
//! 1. [`Tier::Explicit`]: the upstream lists the model in `models`, or has it as an alias key
//!    (the alias target is the model name sent upstream; an alias wins over a `models` entry of
//!    the same name).
//! 2. [`Tier::ProviderDefault`]: the model name matches the provider's naming patterns (see
//!    [`ProviderKind::serves_by_default`]).
//! 3. [`Tier::Discovered`]: the upstream listed the model when asked.
//!
//! Each upstream appears at most once, in its best tier. Within a tier the model's
//! [`RouteStrategy`] orders them: configuration order (`ordered`, the default), a seeded
//! weighted draw by upstream `weight` (`weighted`, [`Router::candidates_weighted`]), or lowest
//! latency first (`least_latency`, [`Router::candidates_by_latency`]); [`Router::plan`] applies
//! it. Disabled upstreams, (upstream, model) pairs whose breaker admits nothing now, and pairs
//! rate limited by a 429 are left out; an unknown model gives an empty list, which the daemon
//! answers with 404.
//!
//! Failure state is kept per (upstream, model name sent upstream): a breaker that opens on
//! connection errors, timeouts, 5xx and broken streams, and a rate limit that a 429 sets for
//! its `retry-after`. One model failing or rate limited leaves the upstream's other models
//! routable.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::breaker::{BreakerConfig, CircuitBreaker, Health};
use super::failover::AttemptOutcome;

/// The kind of provider an upstream is; decides its default model patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderKind {
    /// api.openai.com
    OpenAi,
    /// api.anthropic.com
    Anthropic,
    /// Google Gemini (OpenAI-compatible endpoint)
    Google,
    /// Mistral
    Mistral,
    /// Groq
    Groq,
    /// OpenRouter
    OpenRouter,
    /// Any other OpenAI- or Anthropic-compatible server (Ollama, vLLM, ...): no default models.
    Custom,
}

/// A provider name that [`ProviderKind::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider `{0}` (expected one of: openai, anthropic, google, mistral, groq, openrouter, custom)")]
pub struct UnknownProvider(pub String);

impl ProviderKind {
    /// Every kind, in documentation order.
    pub const ALL: [ProviderKind; 7] = [
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::Google,
        ProviderKind::Mistral,
        ProviderKind::Groq,
        ProviderKind::OpenRouter,
        ProviderKind::Custom,
    ];

    /// Parses a provider name as written in config.
    pub fn from_name(name: &str) -> Option<ProviderKind> {
        name.parse().ok()
    }

    /// The name as written in config (same as [`ProviderKind::as_str`]).
    pub fn name(self) -> &'static str {
        self.as_str()
    }

    /// The base URL as the provider's own SDK writes it (OpenAI-style ones include the
    /// version path, Anthropic's does not); `None` for `custom`.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Google => Some("https://generativelanguage.googleapis.com/v1beta"),
            ProviderKind::Mistral => Some("https://api.mistral.ai/v1"),
            ProviderKind::Groq => Some("https://api.groq.com/openai/v1"),
            ProviderKind::OpenRouter => Some("https://openrouter.ai/api/v1"),
            ProviderKind::Custom => None,
        }
    }

    /// Whether the provider's API serves the Responses API (`/responses`) itself; the others
    /// get it converted to Chat Completions or Anthropic Messages.
    pub fn speaks_responses(self) -> bool {
        self == ProviderKind::OpenAi
    }

    /// Whether the provider's Chat Completions takes `stream_options.include_usage` (Gate asks
    /// for usage on pass-through streams only there).
    pub fn takes_stream_options(self) -> bool {
        matches!(
            self,
            ProviderKind::OpenAi | ProviderKind::Groq | ProviderKind::OpenRouter
        )
    }

    /// Whether the upstream speaks the Anthropic Messages API (else the OpenAI API).
    pub fn speaks_anthropic(self) -> bool {
        self == ProviderKind::Anthropic
    }

    /// The configuration spelling (`provider = "openai"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Google => "google",
            ProviderKind::Mistral => "mistral",
            ProviderKind::Groq => "groq",
            ProviderKind::OpenRouter => "openrouter",
            ProviderKind::Custom => "custom",
        }
    }

    /// The protocol the provider's API speaks by default: Anthropic for Anthropic, the
    /// OpenAI-compatible API for the others.
    pub fn default_protocol(self) -> WireProtocol {
        match self {
            ProviderKind::Anthropic => WireProtocol::Anthropic,
            _ => WireProtocol::OpenAi,
        }
    }

    /// The protocol an upstream of this provider at `base_url` speaks: `google` speaks the
    /// Gemini API natively unless its base URL is Google's OpenAI-compatible one (ends in
    /// `/openai`, as configs written before the native protocol do); the others, their
    /// [`ProviderKind::default_protocol`].
    pub fn protocol_for(self, base_url: &str) -> WireProtocol {
        match self {
            ProviderKind::Google if !base_url.trim_end_matches('/').ends_with("/openai") => {
                WireProtocol::Gemini
            }
            _ => self.default_protocol(),
        }
    }

    /// Whether a model of this name is served by this provider without being listed
    /// (tier 2). Case-sensitive, as model ids are.
    ///
    /// - openai: `gpt-*`, `o1`, `o3`, `o4` (alone or followed by `-`), `chatgpt-*`,
    ///   `text-embedding-*`, `davinci-*`, `babbage-*`, `omni-*`, `dall-e-*`, `tts-*`,
    ///   `whisper-*`, `codex-*`, `computer-use-*`
    /// - anthropic: `claude-*`
    /// - google: `gemini-*`, `gemma-*`, `learnlm-*`
    /// - mistral: `mistral-*`, `codestral-*`, `ministral-*`, `pixtral-*`, `open-mistral-*`,
    ///   `open-mixtral-*`, `open-codestral-*`, `magistral-*`, `devstral-*`, `voxtral-*`
    /// - groq: `llama*`, `meta-llama/*`, `mixtral*`, `gemma*`, `qwen*`, `deepseek*`,
    ///   `whisper-large*`, `distil-whisper*`, `openai/gpt-oss*`, `moonshotai/*`, `groq/*`,
    ///   `compound-*`, `allam-*`, `playai-*`
    /// - openrouter: any `vendor/model` (non-empty on both sides of the first `/`)
    /// - custom: nothing
    pub fn serves_by_default(self, model: &str) -> bool {
        let starts = |prefixes: &[&str]| prefixes.iter().any(|prefix| model.starts_with(prefix));
        let family = |names: &[&str]| {
            names.iter().any(|name| {
                model
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
            })
        };
        match self {
            ProviderKind::OpenAi => {
                family(&["o1", "o3", "o4"])
                    || starts(&[
                        "gpt-",
                        "chatgpt-",
                        "text-embedding-",
                        "davinci-",
                        "babbage-",
                        "omni-",
                        "dall-e-",
                        "tts-",
                        "whisper-",
                        "codex-",
                        "computer-use-",
                    ])
            }
            ProviderKind::Anthropic => starts(&["claude-"]),
            ProviderKind::Google => starts(&["gemini-", "gemma-", "learnlm-"]),
            ProviderKind::Mistral => starts(&[
                "mistral-",
                "codestral-",
                "ministral-",
                "pixtral-",
                "open-mistral-",
                "open-mixtral-",
                "open-codestral-",
                "magistral-",
                "devstral-",
                "voxtral-",
            ]),
            ProviderKind::Groq => starts(&[
                "llama",
                "meta-llama/",
                "mixtral",
                "gemma",
                "qwen",
                "deepseek",
                "whisper-large",
                "distil-whisper",
                "openai/gpt-oss",
                "moonshotai/",
                "groq/",
                "compound-",
                "allam-",
                "playai-",
            ]),
            ProviderKind::OpenRouter => model
                .split_once('/')
                .is_some_and(|(vendor, name)| !vendor.is_empty() && !name.is_empty()),
            ProviderKind::Custom => false,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = UnknownProvider;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ProviderKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| UnknownProvider(name.to_owned()))
    }
}

/// The HTTP API an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireProtocol {
    /// OpenAI-compatible (`/chat/completions`, ...).
    OpenAi,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
    /// Google's Gemini API (`/models/{model}:generateContent`, `v1beta`).
    Gemini,
}

/// One configured upstream, as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// Unique name (the key of `[upstreams.<name>]`).
    pub name: String,
    /// Provider kind (default model patterns).
    pub provider: ProviderKind,
    /// Protocol it speaks.
    pub protocol: WireProtocol,
    /// Models configured explicitly.
    pub models: Vec<String>,
    /// Alias (what clients ask for) -> model name sent upstream.
    pub aliases: BTreeMap<String, String>,
    /// Models the upstream listed when asked (may be empty).
    pub discovered_models: Vec<String>,
    /// Disabled upstreams are never candidates and list no models.
    pub enabled: bool,
    /// Relative weight for the `weighted` strategy; `None` counts as 1, `Some(0)` puts the
    /// upstream last in its tier.
    pub weight: Option<u32>,
}

impl UpstreamSpec {
    /// An enabled upstream with the provider's default protocol and no model lists.
    pub fn new(name: impl Into<String>, provider: ProviderKind) -> Self {
        UpstreamSpec {
            name: name.into(),
            provider,
            protocol: provider.default_protocol(),
            models: Vec::new(),
            aliases: BTreeMap::new(),
            discovered_models: Vec::new(),
            enabled: true,
            weight: None,
        }
    }
}

/// Index of an upstream in the router's list. Valid until [`Router::replace_upstreams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamId(usize);

impl UpstreamId {
    /// Position in [`Router::upstreams`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// Why a model matched an upstream; lower tiers are tried first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Listed in `models` or as an alias.
    Explicit = 1,
    /// Matches the provider's name patterns.
    ProviderDefault = 2,
    /// Listed by the upstream itself.
    Discovered = 3,
}

/// One upstream to try for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Which upstream.
    pub upstream: UpstreamId,
    /// Its name (shared with the router: no copy per request).
    pub upstream_name: Arc<str>,
    /// The model name to send to it (differs from the requested one for aliases; the
    /// requested name itself, shared, otherwise).
    pub upstream_model: Arc<str>,
    /// Why it matched.
    pub tier: Tier,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// The model id clients use.
    pub id: String,
    /// The upstream that routing tries first for it.
    pub upstream: UpstreamId,
    /// Its name (the `owned_by` a gateway can show).
    pub upstream_name: String,
    /// The model name sent to that upstream.
    pub upstream_model: String,
}

/// A route table that could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Two upstreams share a name.
    #[error("two upstreams are named `{0}`; upstream names must be unique")]
    DuplicateUpstream(String),
}

/// Lookup sets of one upstream, built once.
#[derive(Debug, Clone, Default)]
struct ModelSets {
    explicit: BTreeSet<String>,
    discovered: BTreeSet<String>,
}

impl ModelSets {
    fn of(spec: &UpstreamSpec) -> Self {
        ModelSets {
            explicit: spec.models.iter().cloned().collect(),
            discovered: spec.discovered_models.iter().cloned().collect(),
        }
    }
}

/// How the upstreams of one tier are ordered for a model or alias (`[routing.strategy]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteStrategy {
    /// Configuration order (the default).
    #[default]
    Ordered,
    /// A weighted random order by upstream `weight` ([`Router::candidates_weighted`]).
    Weighted,
    /// Lowest measured latency first ([`Router::candidates_by_latency`]).
    LeastLatency,
}

impl RouteStrategy {
    /// Every strategy, in documentation order.
    pub const ALL: [RouteStrategy; 3] = [
        RouteStrategy::Ordered,
        RouteStrategy::Weighted,
        RouteStrategy::LeastLatency,
    ];

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteStrategy::Ordered => "ordered",
            RouteStrategy::Weighted => "weighted",
            RouteStrategy::LeastLatency => "least_latency",
        }
    }

    /// Parses the configuration spelling.
    pub fn from_name(name: &str) -> Option<RouteStrategy> {
        RouteStrategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == name)
    }
}

/// How long a 429 without a usable `retry-after` puts an (upstream, model) aside.
pub const DEFAULT_RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(5);
/// The longest a `retry-after` may put an (upstream, model) aside.
pub const MAX_RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(3600);
/// The most models whose breaker or rate-limit state one upstream keeps. Provider default
/// patterns let clients name models without end; past this many, a new model's failures are
/// not tracked (its requests still flow) until older entries expire or close.
pub const MAX_TRACKED_MODELS: usize = 1024;

/// Breaker, rate-limit and latency state of one upstream. Breakers are per model (the name
/// sent upstream); a model without an entry has a closed breaker at rest.
#[derive(Debug, Clone, Default)]
struct UpstreamState {
    breakers: BTreeMap<String, CircuitBreaker>,
    rate_limited_until: BTreeMap<String, Instant>,
    /// Moving average of the time to first byte, once measured.
    latency: Option<Duration>,
}

/// What routing decided for one request: the candidates to try now, in order, and, when
/// there are none, why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptPlan {
    /// The upstreams to try, best first (tiers, then the model's strategy).
    pub candidates: Vec<Candidate>,
    /// Some upstream serves the model (whatever its state): false means 404.
    pub known: bool,
    /// The earliest end of a rate limit among the upstreams left out for one.
    pub rate_limited_until: Option<Instant>,
    /// The earliest end of an open circuit among the upstreams left out for one.
    pub open_until: Option<Instant>,
}

/// The daemon's model routing: upstreams in configuration order, their model sets, and per
/// (upstream, model) circuit breakers and rate limits.
#[derive(Debug, Clone)]
pub struct Router {
    upstreams: Vec<UpstreamSpec>,
    /// The upstreams' names, in their order, shared by every [`Candidate`] (issue 16: a
    /// request's plan copied them, and its requested model, into new strings).
    names: Vec<Arc<str>>,
    model_sets: Vec<ModelSets>,
    states: Vec<UpstreamState>,
    breaker_config: BreakerConfig,
    /// Strategy per requested model or alias; absent means [`RouteStrategy::Ordered`].
    strategies: BTreeMap<String, RouteStrategy>,
}

impl Router {
    /// A router over `upstreams` (in priority order) with default breakers.
    pub fn new(upstreams: Vec<UpstreamSpec>) -> Result<Self, RouteError> {
        Router::with_breaker_config(upstreams, BreakerConfig::default())
    }

    /// A router whose breakers use `breaker_config`.
    pub fn with_breaker_config(
        upstreams: Vec<UpstreamSpec>,
        breaker_config: BreakerConfig,
    ) -> Result<Self, RouteError> {
        let mut router = Router {
            upstreams: Vec::new(),
            names: Vec::new(),
            model_sets: Vec::new(),
            states: Vec::new(),
            breaker_config,
            strategies: BTreeMap::new(),
        };
        router.replace_upstreams(upstreams)?;
        Ok(router)
    }

    /// Swaps in a new upstream list (after a configuration change). Upstreams that keep their
    /// name keep their breakers, rate limits and latency average; new ones start closed and
    /// unmeasured. Previous [`UpstreamId`]s are invalid afterwards. On error nothing changes.
    pub fn replace_upstreams(&mut self, upstreams: Vec<UpstreamSpec>) -> Result<(), RouteError> {
        let mut seen = BTreeSet::new();
        for spec in &upstreams {
            if !seen.insert(spec.name.as_str()) {
                return Err(RouteError::DuplicateUpstream(spec.name.clone()));
            }
        }
        let old_names = self.upstreams.iter().map(|spec| spec.name.clone());
        let mut old_state: BTreeMap<String, UpstreamState> =
            old_names.zip(std::mem::take(&mut self.states)).collect();
        self.states = upstreams
            .iter()
            .map(|spec| old_state.remove(&spec.name).unwrap_or_default())
            .collect();
        self.model_sets = upstreams.iter().map(ModelSets::of).collect();
        self.names = upstreams
            .iter()
            .map(|spec| Arc::from(spec.name.as_str()))
            .collect();
        self.upstreams = upstreams;
        Ok(())
    }

    /// Sets the strategy of each model or alias (as clients name it); others are ordered.
    pub fn set_strategies(&mut self, strategies: BTreeMap<String, RouteStrategy>) {
        self.strategies = strategies;
    }

    /// The strategy for a requested model or alias.
    pub fn strategy(&self, model: &str) -> RouteStrategy {
        self.strategies.get(model).copied().unwrap_or_default()
    }

    /// Records the models an upstream listed. Unknown ids are ignored.
    pub fn set_discovered_models(&mut self, upstream: UpstreamId, models: Vec<String>) {
        if let (Some(spec), Some(sets)) = (
            self.upstreams.get_mut(upstream.0),
            self.model_sets.get_mut(upstream.0),
        ) {
            sets.discovered = models.iter().cloned().collect();
            spec.discovered_models = models;
        }
    }

    /// The upstreams in configuration order.
    pub fn upstreams(&self) -> &[UpstreamSpec] {
        &self.upstreams
    }

    /// One upstream.
    pub fn upstream(&self, upstream: UpstreamId) -> Option<&UpstreamSpec> {
        self.upstreams.get(upstream.0)
    }

    /// The id of the upstream with this name.
    pub fn find(&self, name: &str) -> Option<UpstreamId> {
        self.upstreams
            .iter()
            .position(|spec| spec.name == name)
            .map(UpstreamId)
    }

    /// Ids of all upstreams, in order.
    pub fn ids(&self) -> impl Iterator<Item = UpstreamId> {
        (0..self.upstreams.len()).map(UpstreamId)
    }

    /// How (and whether) one upstream serves `model`, ignoring its state.
    fn route_for(&self, index: usize, model: &Arc<str>) -> Option<(Tier, Arc<str>)> {
        let spec = self.upstreams.get(index)?;
        let sets = self.model_sets.get(index)?;
        if !spec.enabled {
            return None;
        }
        if let Some(target) = spec.aliases.get(&**model) {
            return Some((Tier::Explicit, Arc::from(target.as_str())));
        }
        if sets.explicit.contains(&**model) {
            return Some((Tier::Explicit, model.clone()));
        }
        if spec.provider.serves_by_default(model) {
            return Some((Tier::ProviderDefault, model.clone()));
        }
        if sets.discovered.contains(&**model) {
            return Some((Tier::Discovered, model.clone()));
        }
        None
    }

    /// Every upstream that serves `model`, in tier then configuration order.
    fn matching(&self, model: &Arc<str>) -> Vec<Candidate> {
        let mut candidates: Vec<Candidate> = (0..self.upstreams.len())
            .filter_map(|index| {
                let (tier, upstream_model) = self.route_for(index, model)?;
                Some(Candidate {
                    upstream: UpstreamId(index),
                    upstream_name: self.names.get(index)?.clone(),
                    upstream_model,
                    tier,
                })
            })
            .collect();
        // Stable: configuration order within a tier.
        candidates.sort_by_key(|candidate| candidate.tier);
        candidates
    }

    /// Whether a candidate may be tried at `now`: its (upstream, model) breaker admits a
    /// request and it is not rate limited.
    fn admits(&self, candidate: &Candidate, now: Instant) -> bool {
        self.breaker_available(candidate.upstream, &candidate.upstream_model, now)
            && self
                .rate_limited_until(candidate.upstream, &candidate.upstream_model, now)
                .is_none()
    }

    fn breaker_available(&self, upstream: UpstreamId, model: &str, now: Instant) -> bool {
        self.breaker(upstream, model)
            .is_none_or(|breaker| breaker.is_available(now))
    }

    /// The upstreams to try for `model`, best first in configuration order within a tier,
    /// leaving out those whose (upstream, model) breaker admits nothing at `now` (open, or
    /// half-open with its trial in flight) and those rate limited at `now`. Empty for an
    /// unknown model. Call [`try_acquire`](Self::try_acquire) before each attempt.
    pub fn candidates(&self, model: &str, now: Instant) -> Vec<Candidate> {
        let mut candidates = self.matching(&Arc::from(model));
        candidates.retain(|candidate| self.admits(candidate, now));
        candidates
    }

    /// Every upstream that serves `model`, whatever its breaker or rate limit says.
    pub fn all_candidates(&self, model: &str) -> Vec<Candidate> {
        self.matching(&Arc::from(model))
    }

    /// The attempt plan for one request for `model` at `now`: the admitted candidates that
    /// `serves` accepts (e.g. that can serve the endpoint), ordered by the model's
    /// [`RouteStrategy`] (`seed` drives the weighted draw), and why others were left out.
    /// `model` is shared by the candidates that serve it under its own name.
    pub fn plan(
        &self,
        model: &Arc<str>,
        now: Instant,
        seed: u64,
        serves: impl Fn(&UpstreamSpec) -> bool,
    ) -> AttemptPlan {
        let mut plan = AttemptPlan::default();
        // Filtered in place: one allocation for the plan's list.
        let mut candidates = self.matching(model);
        candidates.retain(|candidate| self.upstream(candidate.upstream).is_some_and(&serves));
        plan.known = !candidates.is_empty();
        let earliest = |slot: &mut Option<Instant>, at: Instant| {
            *slot = Some(slot.map_or(at, |current| current.min(at)));
        };
        candidates.retain(|candidate| {
            if let Some(until) =
                self.rate_limited_until(candidate.upstream, &candidate.upstream_model, now)
            {
                earliest(&mut plan.rate_limited_until, until);
                false
            } else if !self.breaker_available(candidate.upstream, &candidate.upstream_model, now) {
                if let Some(Health::Open { until }) = self
                    .breaker(candidate.upstream, &candidate.upstream_model)
                    .map(|breaker| breaker.health(now))
                {
                    earliest(&mut plan.open_until, until);
                }
                false
            } else {
                true
            }
        });
        self.order(&mut candidates, self.strategy(model), seed);
        plan.candidates = candidates;
        plan
    }

    /// Orders candidates within each tier by `strategy`.
    fn order(&self, candidates: &mut [Candidate], strategy: RouteStrategy, seed: u64) {
        match strategy {
            RouteStrategy::Ordered => candidates.sort_by_key(|candidate| candidate.tier),
            RouteStrategy::Weighted => {
                let key = |candidate: &Candidate| {
                    let weight = self
                        .upstream(candidate.upstream)
                        .and_then(|spec| spec.weight)
                        .unwrap_or(1);
                    weighted_key(seed, &candidate.upstream_name, weight)
                };
                // Higher key first; ties keep configuration order (sort_by is stable).
                candidates
                    .sort_by(|a, b| a.tier.cmp(&b.tier).then_with(|| key(b).total_cmp(&key(a))));
            }
            RouteStrategy::LeastLatency => candidates
                .sort_by_key(|candidate| (candidate.tier, self.latency(candidate.upstream))),
        }
    }

    /// Like [`candidates`](Self::candidates), but within each tier upstreams are ordered by a
    /// weighted random draw (weighted sampling without replacement, Efraimidis-Spirakis) from
    /// `seed`: an upstream of weight 3 comes first three times as often as one of weight 1.
    /// The same seed gives the same order, and each upstream's draw depends only on the seed and
    /// its name, so removing one upstream keeps the relative order of the others.
    pub fn candidates_weighted(&self, model: &str, now: Instant, seed: u64) -> Vec<Candidate> {
        let mut candidates = self.candidates(model, now);
        self.order(&mut candidates, RouteStrategy::Weighted, seed);
        candidates
    }

    /// Like [`candidates`](Self::candidates), but within each tier the upstream with the lowest
    /// average latency ([`record_latency`](Self::record_latency)) comes first. Unmeasured
    /// upstreams come before measured ones (so they get measured); ties keep configuration
    /// order. Each upstream's place depends only on its own measurements, so removing one keeps
    /// the relative order of the others.
    pub fn candidates_by_latency(&self, model: &str, now: Instant) -> Vec<Candidate> {
        let mut candidates = self.candidates(model, now);
        self.order(&mut candidates, RouteStrategy::LeastLatency, 0);
        candidates
    }

    /// Adds one latency sample (e.g. time to first byte) to an upstream's moving average
    /// (each new sample weighs 1/4).
    pub fn record_latency(&mut self, upstream: UpstreamId, sample: Duration) {
        if let Some(state) = self.states.get_mut(upstream.0) {
            state.latency = Some(match state.latency {
                None => sample,
                Some(previous) => {
                    let nanos = (previous.as_nanos() * 3 + sample.as_nanos()) / 4;
                    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
                }
            });
        }
    }

    /// An upstream's latency average, `None` until measured.
    pub fn latency(&self, upstream: UpstreamId) -> Option<Duration> {
        self.states.get(upstream.0).and_then(|state| state.latency)
    }

    /// The models to show in `GET /v1/models`: explicit models, aliases and discovered models
    /// of enabled upstreams, each once, sorted by id, with the upstream routing tries first.
    pub fn list_models(&self) -> Vec<ModelEntry> {
        let mut ids: BTreeSet<&str> = BTreeSet::new();
        for (spec, sets) in self.upstreams.iter().zip(&self.model_sets) {
            if spec.enabled {
                ids.extend(spec.aliases.keys().map(String::as_str));
                ids.extend(sets.explicit.iter().map(String::as_str));
                ids.extend(sets.discovered.iter().map(String::as_str));
            }
        }
        ids.into_iter()
            .filter_map(|id| {
                let first = self.all_candidates(id).into_iter().next()?;
                Some(ModelEntry {
                    id: id.to_owned(),
                    upstream: first.upstream,
                    upstream_name: first.upstream_name.to_string(),
                    upstream_model: first.upstream_model.to_string(),
                })
            })
            .collect()
    }

    /// An upstream's health at `now` over all its models (for metrics and status): open when
    /// some model's circuit is open (until the latest of them), else half-open when some is,
    /// else closed.
    pub fn health(&self, upstream: UpstreamId, now: Instant) -> Option<Health> {
        let state = self.states.get(upstream.0)?;
        let mut health = Health::Closed;
        for breaker in state.breakers.values() {
            health = match (health, breaker.health(now)) {
                (Health::Open { until: a }, Health::Open { until: b }) => {
                    Health::Open { until: a.max(b) }
                }
                (Health::Open { until }, _) | (_, Health::Open { until }) => Health::Open { until },
                (
                    Health::HalfOpen { trial_in_flight: a },
                    Health::HalfOpen { trial_in_flight: b },
                ) => Health::HalfOpen {
                    trial_in_flight: a || b,
                },
                (half @ Health::HalfOpen { .. }, Health::Closed)
                | (Health::Closed, half @ Health::HalfOpen { .. }) => half,
                (Health::Closed, Health::Closed) => Health::Closed,
            };
        }
        Some(health)
    }

    /// The breaker state of one (upstream, model) at `now`.
    pub fn model_health(&self, upstream: UpstreamId, model: &str, now: Instant) -> Option<Health> {
        self.states.get(upstream.0)?;
        Some(
            self.breaker(upstream, model)
                .map_or(Health::Closed, |breaker| breaker.health(now)),
        )
    }

    /// The breaker of one (upstream, model), `None` while it is closed and at rest.
    pub fn breaker(&self, upstream: UpstreamId, model: &str) -> Option<&CircuitBreaker> {
        self.states.get(upstream.0)?.breakers.get(model)
    }

    /// The breaker of one (upstream, model), made when missing (unless the upstream already
    /// tracks [`MAX_TRACKED_MODELS`]).
    fn breaker_mut(&mut self, upstream: UpstreamId, model: &str) -> Option<&mut CircuitBreaker> {
        let config = self.breaker_config;
        let state = self.states.get_mut(upstream.0)?;
        if !state.breakers.contains_key(model) {
            if state.breakers.len() >= MAX_TRACKED_MODELS {
                state.breakers.retain(|_, breaker| !breaker.is_at_rest());
                if state.breakers.len() >= MAX_TRACKED_MODELS {
                    return None;
                }
            }
            state
                .breakers
                .insert(model.to_owned(), CircuitBreaker::new(config));
        }
        state.breakers.get_mut(model)
    }

    /// Drops the breaker of (upstream, model) when it is back at rest.
    fn forget_if_at_rest(&mut self, upstream: UpstreamId, model: &str) {
        if let Some(state) = self.states.get_mut(upstream.0) {
            if state
                .breakers
                .get(model)
                .is_some_and(CircuitBreaker::is_at_rest)
            {
                state.breakers.remove(model);
            }
        }
    }

    /// Asks the (upstream, model) breaker to admit one attempt at `now` (see
    /// [`CircuitBreaker::try_acquire`]). False for unknown ids and rate-limited models.
    pub fn try_acquire(&mut self, upstream: UpstreamId, model: &str, now: Instant) -> bool {
        if self.states.get(upstream.0).is_none()
            || self.rate_limited_until(upstream, model, now).is_some()
        {
            return false;
        }
        match self
            .states
            .get_mut(upstream.0)
            .and_then(|s| s.breakers.get_mut(model))
        {
            Some(breaker) => breaker.try_acquire(now),
            // Closed and at rest: admitted, nothing to remember.
            None => true,
        }
    }

    /// Reports a success to the (upstream, model) breaker.
    pub fn record_success(&mut self, upstream: UpstreamId, model: &str, now: Instant) {
        if let Some(breaker) = self
            .states
            .get_mut(upstream.0)
            .and_then(|state| state.breakers.get_mut(model))
        {
            breaker.record_success(now);
        }
        self.forget_if_at_rest(upstream, model);
    }

    /// Reports a failure to the (upstream, model) breaker.
    pub fn record_failure(&mut self, upstream: UpstreamId, model: &str, now: Instant) {
        if let Some(breaker) = self.breaker_mut(upstream, model) {
            breaker.record_failure(now);
        }
    }

    /// Reports an attempt's outcome: a rate limit if [`AttemptOutcome::is_rate_limited`]
    /// (with the default backoff: use [`record_rate_limited`](Self::record_rate_limited) to pass
    /// the upstream's `retry-after`), a failure if [`AttemptOutcome::is_upstream_failure`],
    /// else a success.
    pub fn record_outcome(
        &mut self,
        upstream: UpstreamId,
        model: &str,
        outcome: &AttemptOutcome,
        now: Instant,
    ) {
        if outcome.is_rate_limited() {
            self.record_rate_limited(upstream, model, None, now);
        } else if outcome.is_upstream_failure() {
            self.record_failure(upstream, model, now);
        } else {
            self.record_success(upstream, model, now);
        }
    }

    /// The upstream answered 429 for `model`: it is put aside until `now + retry_after`
    /// ([`DEFAULT_RATE_LIMIT_BACKOFF`] when `None`, at most [`MAX_RATE_LIMIT_BACKOFF`]). The
    /// breaker does not count it; a half-open trial that got it is released.
    pub fn record_rate_limited(
        &mut self,
        upstream: UpstreamId,
        model: &str,
        retry_after: Option<Duration>,
        now: Instant,
    ) {
        self.release(upstream, model);
        let backoff = retry_after
            .unwrap_or(DEFAULT_RATE_LIMIT_BACKOFF)
            .min(MAX_RATE_LIMIT_BACKOFF);
        let Some(until) = now.checked_add(backoff) else {
            return;
        };
        let Some(state) = self.states.get_mut(upstream.0) else {
            return;
        };
        if !state.rate_limited_until.contains_key(model)
            && state.rate_limited_until.len() >= MAX_TRACKED_MODELS
        {
            state.rate_limited_until.retain(|_, until| *until > now);
            if state.rate_limited_until.len() >= MAX_TRACKED_MODELS {
                return;
            }
        }
        let slot = state
            .rate_limited_until
            .entry(model.to_owned())
            .or_insert(until);
        *slot = (*slot).max(until);
    }

    /// Until when (upstream, model) is rate limited, if it is at `now`.
    pub fn rate_limited_until(
        &self,
        upstream: UpstreamId,
        model: &str,
        now: Instant,
    ) -> Option<Instant> {
        self.states
            .get(upstream.0)?
            .rate_limited_until
            .get(model)
            .copied()
            .filter(|until| *until > now)
    }

    /// An admitted attempt ended without a verdict (see [`CircuitBreaker::release`]).
    pub fn release(&mut self, upstream: UpstreamId, model: &str) {
        if let Some(breaker) = self
            .states
            .get_mut(upstream.0)
            .and_then(|state| state.breakers.get_mut(model))
        {
            breaker.release();
        }
    }
}

/// Efraimidis-Spirakis key `ln(u) / weight` for a uniform `u` in (0, 1] drawn from the seed and
/// the upstream's name; larger keys go first. Weight 0 gives negative infinity (last).
fn weighted_key(seed: u64, name: &str, weight: u32) -> f64 {
    if weight == 0 {
        return f64::NEG_INFINITY;
    }
    // FNV-1a of the name, mixed with the seed through splitmix64.
    let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut z = seed ^ name_hash;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // 53 random bits -> (0, 1].
    let unit = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    unit.ln() / f64::from(weight)
}
