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
//! Each upstream appears at most once, in its best tier. Within a tier the configuration order
//! is kept (or a seeded weighted order, [`Router::candidates_weighted`], or lowest latency
//! first, [`Router::candidates_by_latency`]). Disabled upstreams and
//! upstreams whose breaker admits nothing now are left out; an unknown model gives an empty
//! list, which the daemon answers with 404.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
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
            ProviderKind::Google => Some("https://generativelanguage.googleapis.com/v1beta/openai"),
            ProviderKind::Mistral => Some("https://api.mistral.ai/v1"),
            ProviderKind::Groq => Some("https://api.groq.com/openai/v1"),
            ProviderKind::OpenRouter => Some("https://openrouter.ai/api/v1"),
            ProviderKind::Custom => None,
        }
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
    /// Relative weight for [`Router::candidates_weighted`]; `None` counts as 1, `Some(0)` puts
    /// the upstream last in its tier.
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
    /// Its name.
    pub upstream_name: String,
    /// The model name to send to it (differs from the requested one for aliases).
    pub upstream_model: String,
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

/// The daemon's model routing: upstreams in configuration order, their model sets and their
/// circuit breakers.
#[derive(Debug, Clone)]
pub struct Router {
    upstreams: Vec<UpstreamSpec>,
    model_sets: Vec<ModelSets>,
    breakers: Vec<CircuitBreaker>,
    /// Moving average of each upstream's time to first byte, once measured.
    latencies: Vec<Option<Duration>>,
    breaker_config: BreakerConfig,
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
            model_sets: Vec::new(),
            breakers: Vec::new(),
            latencies: Vec::new(),
            breaker_config,
        };
        router.replace_upstreams(upstreams)?;
        Ok(router)
    }

    /// Swaps in a new upstream list (after a configuration change). Upstreams that keep their
    /// name keep their breaker state and latency average; new ones start closed and unmeasured. Previous [`UpstreamId`]s
    /// are invalid afterwards. On error nothing changes.
    pub fn replace_upstreams(&mut self, upstreams: Vec<UpstreamSpec>) -> Result<(), RouteError> {
        let mut seen = BTreeSet::new();
        for spec in &upstreams {
            if !seen.insert(spec.name.as_str()) {
                return Err(RouteError::DuplicateUpstream(spec.name.clone()));
            }
        }
        let old_names = self.upstreams.iter().map(|spec| spec.name.clone());
        let mut old_state: BTreeMap<String, (CircuitBreaker, Option<Duration>)> = old_names
            .zip(
                std::mem::take(&mut self.breakers)
                    .into_iter()
                    .zip(std::mem::take(&mut self.latencies)),
            )
            .collect();
        (self.breakers, self.latencies) = upstreams
            .iter()
            .map(|spec| {
                old_state
                    .remove(&spec.name)
                    .unwrap_or_else(|| (CircuitBreaker::new(self.breaker_config), None))
            })
            .unzip();
        self.model_sets = upstreams.iter().map(ModelSets::of).collect();
        self.upstreams = upstreams;
        Ok(())
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

    /// How (and whether) one upstream serves `model`, ignoring its breaker.
    fn route_for(&self, index: usize, model: &str) -> Option<(Tier, String)> {
        let spec = self.upstreams.get(index)?;
        let sets = self.model_sets.get(index)?;
        if !spec.enabled {
            return None;
        }
        if let Some(target) = spec.aliases.get(model) {
            return Some((Tier::Explicit, target.clone()));
        }
        if sets.explicit.contains(model) {
            return Some((Tier::Explicit, model.to_owned()));
        }
        if spec.provider.serves_by_default(model) {
            return Some((Tier::ProviderDefault, model.to_owned()));
        }
        if sets.discovered.contains(model) {
            return Some((Tier::Discovered, model.to_owned()));
        }
        None
    }

    fn matching(&self, model: &str, admit: impl Fn(usize) -> bool) -> Vec<Candidate> {
        let mut candidates: Vec<Candidate> = (0..self.upstreams.len())
            .filter(|index| admit(*index))
            .filter_map(|index| {
                let (tier, upstream_model) = self.route_for(index, model)?;
                Some(Candidate {
                    upstream: UpstreamId(index),
                    upstream_name: self.upstreams.get(index)?.name.clone(),
                    upstream_model,
                    tier,
                })
            })
            .collect();
        // Stable: configuration order within a tier.
        candidates.sort_by_key(|candidate| candidate.tier);
        candidates
    }

    /// The upstreams to try for `model`, best first, leaving out those whose breaker admits
    /// nothing at `now` (open, or half-open with its trial in flight). Empty for an unknown
    /// model. Call [`try_acquire`](Self::try_acquire) before each attempt.
    pub fn candidates(&self, model: &str, now: Instant) -> Vec<Candidate> {
        self.matching(model, |index| {
            self.breakers
                .get(index)
                .is_some_and(|breaker| breaker.is_available(now))
        })
    }

    /// Every upstream that serves `model`, whatever its breaker says.
    pub fn all_candidates(&self, model: &str) -> Vec<Candidate> {
        self.matching(model, |_| true)
    }

    /// Like [`candidates`](Self::candidates), but within each tier upstreams are ordered by a
    /// weighted random draw (weighted sampling without replacement, Efraimidis-Spirakis) from
    /// `seed`: an upstream of weight 3 comes first three times as often as one of weight 1.
    /// The same seed gives the same order, and each upstream's draw depends only on the seed and
    /// its name, so removing one upstream keeps the relative order of the others.
    pub fn candidates_weighted(&self, model: &str, now: Instant, seed: u64) -> Vec<Candidate> {
        let mut candidates = self.candidates(model, now);
        let key = |candidate: &Candidate| {
            let weight = self
                .upstream(candidate.upstream)
                .and_then(|spec| spec.weight)
                .unwrap_or(1);
            weighted_key(seed, &candidate.upstream_name, weight)
        };
        // Higher key first; ties keep configuration order (sort_by is stable).
        candidates.sort_by(|a, b| a.tier.cmp(&b.tier).then_with(|| key(b).total_cmp(&key(a))));
        candidates
    }

    /// Like [`candidates`](Self::candidates), but within each tier the upstream with the lowest
    /// average latency ([`record_latency`](Self::record_latency)) comes first. Unmeasured
    /// upstreams come before measured ones (so they get measured); ties keep configuration
    /// order. Each upstream's place depends only on its own measurements, so removing one keeps
    /// the relative order of the others.
    pub fn candidates_by_latency(&self, model: &str, now: Instant) -> Vec<Candidate> {
        let mut candidates = self.candidates(model, now);
        candidates.sort_by_key(|candidate| (candidate.tier, self.latency(candidate.upstream)));
        candidates
    }

    /// Adds one latency sample (e.g. time to first byte) to an upstream's moving average
    /// (each new sample weighs 1/4).
    pub fn record_latency(&mut self, upstream: UpstreamId, sample: Duration) {
        if let Some(average) = self.latencies.get_mut(upstream.0) {
            *average = Some(match *average {
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
        self.latencies.get(upstream.0).copied().flatten()
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
                    upstream_name: first.upstream_name,
                    upstream_model: first.upstream_model,
                })
            })
            .collect()
    }

    /// The breaker state of an upstream at `now` (for metrics).
    pub fn health(&self, upstream: UpstreamId, now: Instant) -> Option<Health> {
        self.breakers
            .get(upstream.0)
            .map(|breaker| breaker.health(now))
    }

    /// The breaker of an upstream.
    pub fn breaker(&self, upstream: UpstreamId) -> Option<&CircuitBreaker> {
        self.breakers.get(upstream.0)
    }

    /// Asks the upstream's breaker to admit one attempt at `now` (see
    /// [`CircuitBreaker::try_acquire`]). False for unknown ids.
    pub fn try_acquire(&mut self, upstream: UpstreamId, now: Instant) -> bool {
        self.breakers
            .get_mut(upstream.0)
            .is_some_and(|breaker| breaker.try_acquire(now))
    }

    /// Reports a success to the upstream's breaker.
    pub fn record_success(&mut self, upstream: UpstreamId, now: Instant) {
        if let Some(breaker) = self.breakers.get_mut(upstream.0) {
            breaker.record_success(now);
        }
    }

    /// Reports a failure to the upstream's breaker.
    pub fn record_failure(&mut self, upstream: UpstreamId, now: Instant) {
        if let Some(breaker) = self.breakers.get_mut(upstream.0) {
            breaker.record_failure(now);
        }
    }

    /// Reports an attempt's outcome: a failure if
    /// [`AttemptOutcome::is_upstream_failure`], else a success.
    pub fn record_outcome(&mut self, upstream: UpstreamId, outcome: &AttemptOutcome, now: Instant) {
        if outcome.is_upstream_failure() {
            self.record_failure(upstream, now);
        } else {
            self.record_success(upstream, now);
        }
    }

    /// An admitted attempt ended without a verdict (see [`CircuitBreaker::release`]).
    pub fn release(&mut self, upstream: UpstreamId) {
        if let Some(breaker) = self.breakers.get_mut(upstream.0) {
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
