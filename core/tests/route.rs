//! Model routing: tiers, aliases, breakers and failover order, with properties over random
//! upstream sets, model lists, failure histories and times.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure
#![allow(clippy::disallowed_methods)] // tests take one real `Instant` to start simulated time from

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use gate_core::route::{
    AttemptOutcome, BreakerConfig, Candidate, CircuitBreaker, Health, ProviderKind, RouteStrategy,
    Router, Tier, UpstreamSpec, WireProtocol, DEFAULT_RATE_LIMIT_BACKOFF,
};
use proptest::prelude::*;

fn upstream(name: &str, provider: ProviderKind) -> UpstreamSpec {
    UpstreamSpec::new(name, provider)
}

fn names(candidates: &[Candidate]) -> Vec<(&str, &str, Tier)> {
    candidates
        .iter()
        .map(|candidate| {
            (
                &*candidate.upstream_name,
                &*candidate.upstream_model,
                candidate.tier,
            )
        })
        .collect()
}

fn sample_router() -> Router {
    let openrouter = upstream("openrouter", ProviderKind::OpenRouter);
    let mut openai = upstream("openai", ProviderKind::OpenAi);
    openai.models = vec!["ft:gpt-4o:acme".into()];
    let mut groq = upstream("groq", ProviderKind::Groq);
    groq.discovered_models = vec!["gpt-4o".into(), "llama-3.3-70b-versatile".into()];
    let mut local = upstream("ollama", ProviderKind::Custom);
    local.aliases = BTreeMap::from([
        ("fast".into(), "llama3.2:3b".into()),
        ("gpt-4o".into(), "qwen2.5:7b".into()),
    ]);
    local.discovered_models = vec!["llama3.2:3b".into()];
    let anthropic = upstream("anthropic", ProviderKind::Anthropic);
    Router::new(vec![openrouter, openai, groq, local, anthropic]).unwrap()
}

#[test]
fn tiers_then_configuration_order() {
    let router = sample_router();
    let now = Instant::now();
    assert_eq!(
        names(&router.candidates("gpt-4o", now)),
        vec![
            ("ollama", "qwen2.5:7b", Tier::Explicit),
            ("openai", "gpt-4o", Tier::ProviderDefault),
            ("groq", "gpt-4o", Tier::Discovered),
        ]
    );
    assert_eq!(
        names(&router.candidates("fast", now)),
        vec![("ollama", "llama3.2:3b", Tier::Explicit)]
    );
    assert_eq!(
        names(&router.candidates("llama-3.3-70b-versatile", now)),
        vec![("groq", "llama-3.3-70b-versatile", Tier::ProviderDefault)]
    );
    assert_eq!(
        names(&router.candidates("anthropic/claude-sonnet-4", now)),
        vec![(
            "openrouter",
            "anthropic/claude-sonnet-4",
            Tier::ProviderDefault
        )]
    );
    assert_eq!(
        names(&router.candidates("claude-sonnet-4-5", now)),
        vec![("anthropic", "claude-sonnet-4-5", Tier::ProviderDefault)]
    );
    assert!(router.candidates("no-such-model", now).is_empty());
    assert_eq!(router.upstreams()[4].protocol, WireProtocol::Anthropic);
}

#[test]
fn disabled_upstreams_are_skipped_everywhere() {
    let mut specs = sample_router().upstreams().to_vec();
    specs[3].enabled = false;
    let router = Router::new(specs).unwrap();
    assert!(router.candidates("fast", Instant::now()).is_empty());
    assert!(router
        .list_models()
        .iter()
        .all(|entry| entry.upstream_name != "ollama"));
}

#[test]
fn list_models_deduplicates_and_names_the_first_upstream() {
    let router = sample_router();
    let entries = router.list_models();
    let listed: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|entry| {
            (
                entry.id.as_str(),
                entry.upstream_name.as_str(),
                entry.upstream_model.as_str(),
            )
        })
        .collect();
    let expected = vec![
        ("fast", "ollama", "llama3.2:3b"),
        ("ft:gpt-4o:acme", "openai", "ft:gpt-4o:acme"),
        ("gpt-4o", "ollama", "qwen2.5:7b"),
        ("llama-3.3-70b-versatile", "groq", "llama-3.3-70b-versatile"),
        // Groq's provider default (`llama*`, tier 2) beats Ollama's discovered list (tier 3).
        ("llama3.2:3b", "groq", "llama3.2:3b"),
    ];
    assert_eq!(listed, expected);
}

#[test]
fn open_circuits_are_excluded_and_half_open_admits_one_trial() {
    let config = BreakerConfig {
        failure_threshold: 2,
        base_cooldown: Duration::from_secs(30),
        ..BreakerConfig::default()
    };
    let mut router =
        Router::with_breaker_config(sample_router().upstreams().to_vec(), config).unwrap();
    let t0 = Instant::now();
    let ollama = router.find("ollama").unwrap();
    let qwen = "qwen2.5:7b"; // what ollama is asked for when a client says gpt-4o
    router.record_outcome(ollama, qwen, &AttemptOutcome::ConnectError, t0);
    router.record_outcome(ollama, qwen, &AttemptOutcome::HttpStatus(400), t0); // up, answering
    router.record_outcome(ollama, qwen, &AttemptOutcome::HttpStatus(503), t0);
    assert_eq!(router.health(ollama, t0), Some(Health::Closed));
    router.record_outcome(ollama, qwen, &AttemptOutcome::Timeout, t0);
    assert_eq!(
        router.health(ollama, t0),
        Some(Health::Open {
            until: t0 + Duration::from_secs(30)
        })
    );
    assert_eq!(names(&router.candidates("gpt-4o", t0))[0].0, "openai");
    assert_eq!(router.all_candidates("gpt-4o").len(), 3);
    // Only that model's circuit is open: ollama's other models still route to it.
    assert_eq!(names(&router.candidates("fast", t0))[0].0, "ollama");
    assert_eq!(
        router.model_health(ollama, "llama3.2:3b", t0),
        Some(Health::Closed)
    );

    let later = t0 + Duration::from_secs(30);
    assert_eq!(names(&router.candidates("gpt-4o", later))[0].0, "ollama");
    assert!(router.try_acquire(ollama, qwen, later));
    assert!(!router.try_acquire(ollama, qwen, later));
    assert_eq!(names(&router.candidates("gpt-4o", later))[0].0, "openai");
    router.record_success(ollama, qwen, later);
    assert_eq!(router.health(ollama, later), Some(Health::Closed));
}

#[test]
fn breaker_state_survives_a_configuration_change() {
    let config = BreakerConfig {
        failure_threshold: 1,
        ..BreakerConfig::default()
    };
    let mut router =
        Router::with_breaker_config(sample_router().upstreams().to_vec(), config).unwrap();
    let now = Instant::now();
    let groq = router.find("groq").unwrap();
    router.record_failure(groq, "gpt-4o", now);
    let mut specs = router.upstreams().to_vec();
    specs.remove(0);
    specs.push(upstream("mistral", ProviderKind::Mistral));
    router.replace_upstreams(specs).unwrap();
    let groq = router.find("groq").unwrap();
    assert!(matches!(
        router.health(groq, now),
        Some(Health::Open { .. })
    ));
    let mistral = router.find("mistral").unwrap();
    assert_eq!(router.health(mistral, now), Some(Health::Closed));
    let duplicate = vec![
        upstream("a", ProviderKind::Custom),
        upstream("a", ProviderKind::OpenAi),
    ];
    assert!(router.replace_upstreams(duplicate).is_err());
    assert!(router.find("groq").is_some(), "unchanged after an error");
}

#[test]
fn discovered_models_can_be_updated() {
    let mut router = sample_router();
    let now = Instant::now();
    let ollama = router.find("ollama").unwrap();
    assert!(router.candidates("phi4", now).is_empty());
    router.set_discovered_models(ollama, vec!["phi4".into()]);
    assert_eq!(
        names(&router.candidates("phi4", now)),
        vec![("ollama", "phi4", Tier::Discovered)]
    );
}

#[test]
fn provider_names_and_default_patterns() {
    for kind in ProviderKind::ALL {
        assert_eq!(kind.as_str().parse::<ProviderKind>(), Ok(kind));
    }
    assert!("vllm"
        .parse::<ProviderKind>()
        .unwrap_err()
        .to_string()
        .contains("custom"));
    let cases = [
        (ProviderKind::OpenAi, "gpt-4o-mini", true),
        (ProviderKind::OpenAi, "o1", true),
        (ProviderKind::OpenAi, "o3-mini", true),
        (ProviderKind::OpenAi, "o4-mini-high", true),
        (ProviderKind::OpenAi, "o1x", false),
        (ProviderKind::OpenAi, "text-embedding-3-small", true),
        (ProviderKind::OpenAi, "claude-3", false),
        (ProviderKind::Anthropic, "claude-opus-4-1", true),
        (ProviderKind::Anthropic, "gpt-4", false),
        (ProviderKind::Google, "gemini-2.5-pro", true),
        (ProviderKind::Google, "gemma-3-27b-it", true),
        (ProviderKind::Mistral, "open-mistral-nemo", true),
        (ProviderKind::Mistral, "codestral-latest", true),
        (ProviderKind::Mistral, "gpt-4", false),
        (ProviderKind::Groq, "llama-3.1-8b-instant", true),
        (ProviderKind::Groq, "qwen-qwq-32b", true),
        (ProviderKind::Groq, "openai/gpt-oss-120b", true),
        (ProviderKind::Groq, "claude-3", false),
        (ProviderKind::OpenRouter, "openai/gpt-4o", true),
        (
            ProviderKind::OpenRouter,
            "meta-llama/llama-3.1-8b-instruct:free",
            true,
        ),
        (ProviderKind::OpenRouter, "gpt-4o", false),
        (ProviderKind::OpenRouter, "/x", false),
        (ProviderKind::OpenRouter, "x/", false),
        (ProviderKind::Custom, "gpt-4o", false),
    ];
    for (kind, model, expected) in cases {
        assert_eq!(kind.serves_by_default(model), expected, "{kind} {model}");
    }
}

#[test]
fn weighted_order_is_deterministic_and_follows_weights() {
    let mut heavy = upstream("heavy", ProviderKind::OpenAi);
    heavy.weight = Some(3);
    let light = upstream("light", ProviderKind::OpenAi);
    let mut never = upstream("never-first", ProviderKind::OpenAi);
    never.weight = Some(0);
    let router = Router::new(vec![never, light, heavy]).unwrap();
    let now = Instant::now();
    let mut heavy_first = 0;
    for seed in 0..2000u64 {
        let order = router.candidates_weighted("gpt-4o", now, seed);
        assert_eq!(order, router.candidates_weighted("gpt-4o", now, seed));
        assert_eq!(order.len(), 3);
        assert_eq!(&*order[2].upstream_name, "never-first");
        if &*order[0].upstream_name == "heavy" {
            heavy_first += 1;
        }
    }
    // Expected 1500 of 2000; deterministic seeds, so this cannot flake.
    assert!((1350..1650).contains(&heavy_first), "{heavy_first}");
}

#[test]
fn latency_order_prefers_fast_and_unmeasured_upstreams() {
    let specs = ["a", "b", "c", "d"]
        .map(|name| upstream(name, ProviderKind::Anthropic))
        .to_vec();
    let mut router = Router::new(specs).unwrap();
    let now = Instant::now();
    let id = |router: &Router, name: &str| router.find(name).unwrap();
    let (a, b, c) = (id(&router, "a"), id(&router, "b"), id(&router, "c"));
    router.record_latency(a, Duration::from_millis(400));
    router.record_latency(b, Duration::from_millis(100));
    router.record_latency(c, Duration::from_millis(100));
    router.record_latency(c, Duration::from_millis(500)); // average 200 ms
    assert_eq!(router.latency(c), Some(Duration::from_millis(200)));
    let order: Vec<String> = router
        .candidates_by_latency("claude-x", now)
        .into_iter()
        .map(|candidate| candidate.upstream_name.to_string())
        .collect();
    assert_eq!(order, ["d", "b", "c", "a"]);
}

// ---------------------------------------------------------------------------------------------
// Properties

const MODEL_POOL: [&str; 12] = [
    "gpt-4o",
    "o1",
    "o3-mini",
    "claude-3-5-sonnet",
    "gemini-2.0-flash",
    "llama3-8b",
    "mistral-large",
    "meta-llama/llama-3-70b",
    "my-model",
    "fast",
    "other",
    "unknown-to-all",
];

fn model_name() -> impl Strategy<Value = String> {
    // Leave out the last pool entry so one model is never configured anywhere.
    (0..MODEL_POOL.len() - 1).prop_map(|index| MODEL_POOL[index].to_owned())
}

fn provider() -> impl Strategy<Value = ProviderKind> {
    (0..ProviderKind::ALL.len()).prop_map(|index| ProviderKind::ALL[index])
}

fn upstream_specs() -> impl Strategy<Value = Vec<UpstreamSpec>> {
    let spec = (
        provider(),
        proptest::collection::vec(model_name(), 0..3),
        proptest::collection::btree_map(model_name(), model_name(), 0..2),
        proptest::collection::vec(model_name(), 0..3),
        proptest::bool::weighted(0.85),
        proptest::option::of(0u32..4),
    );
    proptest::collection::vec(spec, 1..7).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(
                |(index, (provider, models, aliases, discovered, enabled, weight))| UpstreamSpec {
                    name: format!("up{index}"),
                    provider,
                    protocol: provider.default_protocol(),
                    models,
                    aliases,
                    discovered_models: discovered,
                    enabled,
                    weight,
                },
            )
            .collect()
    })
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Success,
    Failure,
    Acquire,
    Release,
    /// A 429 with this `retry-after` in seconds (`None`: none given).
    RateLimited(Option<u64>),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        2 => Just(Event::Failure),
        1 => Just(Event::Success),
        1 => Just(Event::Acquire),
        1 => Just(Event::Release),
    ]
}

fn event_with_rate_limits() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => event(),
        1 => proptest::option::of(0u64..30).prop_map(Event::RateLimited),
    ]
}

/// (upstream index, model sent upstream, event, seconds since the previous event)
type History = Vec<(usize, String, Event, u64)>;

fn history() -> impl Strategy<Value = History> {
    proptest::collection::vec(
        (0usize..7, model_name(), event_with_rate_limits(), 0u64..20),
        0..60,
    )
}

fn test_breaker_config() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 3,
        base_cooldown: Duration::from_secs(10),
        max_cooldown: Duration::from_secs(40),
        trial_timeout: Duration::from_secs(15),
    }
}

/// Applies a history to the upstreams named in it (and to `reference`, when given); returns
/// the time after it.
fn apply_history(
    router: &mut Router,
    history: &History,
    start: Instant,
    mut reference: Option<&mut ReferenceRouting>,
) -> Instant {
    let mut now = start;
    for (index, model, event, step) in history {
        now += Duration::from_secs(*step);
        let name = format!("up{index}");
        let Some(id) = router.find(&name) else {
            continue;
        };
        if let Some(reference) = reference.as_deref_mut() {
            reference.apply(&name, model, *event, now);
        }
        match event {
            Event::Success => router.record_success(id, model, now),
            Event::Failure => router.record_failure(id, model, now),
            Event::Acquire => {
                router.try_acquire(id, model, now);
            }
            Event::Release => router.release(id, model),
            Event::RateLimited(seconds) => {
                router.record_rate_limited(id, model, seconds.map(Duration::from_secs), now)
            }
        }
    }
    now
}

/// Reference routing state: one reference breaker per (upstream, model) and the rate limits,
/// as plainly as the rules say.
struct ReferenceRouting {
    config: BreakerConfig,
    breakers: HashMap<(String, String), ReferenceBreaker>,
    rate_limited_until: HashMap<(String, String), Instant>,
}

impl ReferenceRouting {
    fn new(config: BreakerConfig) -> Self {
        ReferenceRouting {
            config,
            breakers: HashMap::new(),
            rate_limited_until: HashMap::new(),
        }
    }

    fn breaker(&mut self, upstream: &str, model: &str) -> &mut ReferenceBreaker {
        let config = self.config;
        self.breakers
            .entry((upstream.to_owned(), model.to_owned()))
            .or_insert(ReferenceBreaker {
                mode: ReferenceMode::Closed(0),
                trips: 0,
                config,
            })
    }

    fn limited(&self, upstream: &str, model: &str, now: Instant) -> bool {
        self.rate_limited_until
            .get(&(upstream.to_owned(), model.to_owned()))
            .is_some_and(|until| *until > now)
    }

    fn apply(&mut self, upstream: &str, model: &str, event: Event, now: Instant) {
        match event {
            Event::Success => self.breaker(upstream, model).success(),
            Event::Failure => self.breaker(upstream, model).failure(now),
            Event::Acquire => {
                if !self.limited(upstream, model, now) {
                    self.breaker(upstream, model).acquire(now);
                }
            }
            Event::Release => self.breaker(upstream, model).release(),
            Event::RateLimited(seconds) => {
                self.breaker(upstream, model).release();
                let until = now + seconds.map_or(DEFAULT_RATE_LIMIT_BACKOFF, Duration::from_secs);
                let slot = self
                    .rate_limited_until
                    .entry((upstream.to_owned(), model.to_owned()))
                    .or_insert(until);
                *slot = (*slot).max(until);
            }
        }
    }

    /// Whether (upstream, model) may be tried at `now`.
    fn admits(&mut self, upstream: &str, model: &str, now: Instant) -> bool {
        !self.limited(upstream, model, now)
            && matches!(
                self.breaker(upstream, model).health(now),
                Health::Closed
                    | Health::HalfOpen {
                        trial_in_flight: false
                    }
            )
    }
}

/// The route an upstream should give, straight from DESIGN.md section 5.
fn expected_route(spec: &UpstreamSpec, model: &str) -> Option<(Tier, String)> {
    if !spec.enabled {
        None
    } else if let Some(target) = spec.aliases.get(model) {
        Some((Tier::Explicit, target.clone()))
    } else if spec.models.iter().any(|listed| listed == model) {
        Some((Tier::Explicit, model.to_owned()))
    } else if spec.provider.serves_by_default(model) {
        Some((Tier::ProviderDefault, model.to_owned()))
    } else if spec.discovered_models.iter().any(|listed| listed == model) {
        Some((Tier::Discovered, model.to_owned()))
    } else {
        None
    }
}

/// Reference breaker: the rules of the breaker module written as plainly as possible.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ReferenceMode {
    Closed(u32),
    Open(Instant),
    Half(Option<Instant>),
}

struct ReferenceBreaker {
    mode: ReferenceMode,
    trips: u32,
    config: BreakerConfig,
}

impl ReferenceBreaker {
    fn trip(&mut self, now: Instant) {
        let mut cooldown = self.config.base_cooldown;
        for _ in 0..self.trips {
            cooldown *= 2;
            if cooldown >= self.config.max_cooldown {
                cooldown = self.config.max_cooldown;
                break;
            }
        }
        self.trips += 1;
        self.mode = ReferenceMode::Open(now + cooldown);
    }

    fn acquire(&mut self, now: Instant) -> bool {
        match self.mode {
            ReferenceMode::Closed(_) => true,
            ReferenceMode::Open(until) if now < until => false,
            ReferenceMode::Half(Some(started)) if now < started + self.config.trial_timeout => {
                false
            }
            _ => {
                self.mode = ReferenceMode::Half(Some(now));
                true
            }
        }
    }

    fn success(&mut self) {
        match self.mode {
            ReferenceMode::Closed(_) => self.mode = ReferenceMode::Closed(0),
            ReferenceMode::Open(_) => {}
            ReferenceMode::Half(_) => {
                self.mode = ReferenceMode::Closed(0);
                self.trips = 0;
            }
        }
    }

    fn failure(&mut self, now: Instant) {
        match self.mode {
            ReferenceMode::Closed(failures) if failures + 1 >= self.config.failure_threshold => {
                self.trip(now)
            }
            ReferenceMode::Closed(failures) => self.mode = ReferenceMode::Closed(failures + 1),
            ReferenceMode::Open(_) => {}
            ReferenceMode::Half(_) => self.trip(now),
        }
    }

    fn release(&mut self) {
        if let ReferenceMode::Half(_) = self.mode {
            self.mode = ReferenceMode::Half(None);
        }
    }

    fn health(&self, now: Instant) -> Health {
        match self.mode {
            ReferenceMode::Closed(_) => Health::Closed,
            ReferenceMode::Open(until) if now < until => Health::Open { until },
            ReferenceMode::Open(_) => Health::HalfOpen {
                trial_in_flight: false,
            },
            ReferenceMode::Half(trial) => Health::HalfOpen {
                trial_in_flight: trial
                    .is_some_and(|started| now < started + self.config.trial_timeout),
            },
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Never an open-circuited upstream, never one that lacks the model, never a disabled one;
    /// and every upstream that is available and has the model is there, in tier then
    /// configuration order, with the right upstream model name.
    #[test]
    fn candidates_are_exactly_the_available_upstreams_with_the_model(
        specs in upstream_specs(),
        history in history(),
        extra_seconds in 0u64..60,
    ) {
        let mut router = Router::with_breaker_config(specs.clone(), test_breaker_config()).unwrap();
        let mut reference = ReferenceRouting::new(test_breaker_config());
        let start = Instant::now();
        let now = apply_history(&mut router, &history, start, Some(&mut reference))
            + Duration::from_secs(extra_seconds);
        for model in MODEL_POOL {
            let candidates = router.candidates(model, now);
            for candidate in &candidates {
                let health = router.model_health(candidate.upstream, &candidate.upstream_model, now).unwrap();
                prop_assert!(!matches!(health, Health::Open { .. }), "{} is open", candidate.upstream_name);
                prop_assert!(router.rate_limited_until(candidate.upstream, &candidate.upstream_model, now).is_none());
            }
            let mut expected = Vec::new();
            for tier in [Tier::Explicit, Tier::ProviderDefault, Tier::Discovered] {
                for (index, spec) in specs.iter().enumerate() {
                    let id = router.find(&spec.name).unwrap();
                    prop_assert_eq!(id.index(), index);
                    if let Some((found_tier, upstream_model)) = expected_route(spec, model) {
                        if found_tier == tier && reference.admits(&spec.name, &upstream_model, now) {
                            expected.push((spec.name.clone(), upstream_model, tier));
                        }
                    }
                }
            }
            let got: Vec<(String, String, Tier)> = candidates
                .iter()
                .map(|candidate| (candidate.upstream_name.to_string(), candidate.upstream_model.to_string(), candidate.tier))
                .collect();
            prop_assert_eq!(got, expected);
        }
        prop_assert!(router.candidates("unknown-to-all", now).is_empty());
    }

    /// Same inputs give the same order, and removing an upstream (with its history) keeps the
    /// relative order of the others, for the plain and the weighted order.
    #[test]
    fn failover_order_is_stable_under_removal(
        specs in upstream_specs(),
        history in history(),
        removed in 0usize..7,
        seed in any::<u64>(),
        latencies in proptest::collection::vec((0usize..7, 0u64..500), 0..12),
    ) {
        let start = Instant::now();
        let mut full = Router::with_breaker_config(specs.clone(), test_breaker_config()).unwrap();
        let now = apply_history(&mut full, &history, start, None);
        let removed_name = format!("up{}", removed % specs.len());
        let rest: Vec<UpstreamSpec> = specs.iter().filter(|spec| spec.name != removed_name).cloned().collect();
        let mut reduced = Router::with_breaker_config(rest, test_breaker_config()).unwrap();
        prop_assert_eq!(apply_history(&mut reduced, &history, start, None), now);
        for (index, millis) in &latencies {
            for router in [&mut full, &mut reduced] {
                if let Some(id) = router.find(&format!("up{index}")) {
                    router.record_latency(id, Duration::from_millis(*millis));
                }
            }
        }
        for model in MODEL_POOL {
            prop_assert_eq!(full.candidates(model, now), full.candidates(model, now));
            let without = |candidates: Vec<Candidate>| -> Vec<(String, String, Tier)> {
                candidates
                    .into_iter()
                    .filter(|candidate| *candidate.upstream_name != *removed_name)
                    .map(|candidate| (candidate.upstream_name.to_string(), candidate.upstream_model.to_string(), candidate.tier))
                    .collect()
            };
            prop_assert_eq!(without(full.candidates(model, now)), without(reduced.candidates(model, now)));
            prop_assert_eq!(
                without(full.candidates_weighted(model, now, seed)),
                without(reduced.candidates_weighted(model, now, seed))
            );
            prop_assert_eq!(
                without(full.candidates_by_latency(model, now)),
                without(reduced.candidates_by_latency(model, now))
            );
            // The weighted order is a permutation of the plain one within each tier.
            let mut plain = without(full.candidates(model, now));
            let mut weighted = without(full.candidates_weighted(model, now, seed));
            let mut by_latency = without(full.candidates_by_latency(model, now));
            plain.sort();
            weighted.sort();
            by_latency.sort();
            prop_assert_eq!(&plain, &weighted);
            prop_assert_eq!(&plain, &by_latency);
        }
    }

    /// The breaker agrees with the reference model over random event sequences and times.
    #[test]
    fn breaker_matches_reference_model(
        events in proptest::collection::vec((event(), 0u64..25), 0..120),
        threshold in 1u32..5,
    ) {
        let config = BreakerConfig { failure_threshold: threshold, ..test_breaker_config() };
        let mut breaker = CircuitBreaker::new(config);
        let mut reference = ReferenceBreaker { mode: ReferenceMode::Closed(0), trips: 0, config };
        let mut now = Instant::now();
        for (event, step) in events {
            now += Duration::from_secs(step);
            match event {
                Event::Success => {
                    breaker.record_success(now);
                    reference.success();
                }
                Event::Failure => {
                    breaker.record_failure(now);
                    reference.failure(now);
                }
                Event::Acquire => prop_assert_eq!(breaker.try_acquire(now), reference.acquire(now)),
                Event::Release => {
                    breaker.release();
                    reference.release();
                }
                Event::RateLimited(_) => {}
            }
            prop_assert_eq!(breaker.health(now), reference.health(now));
            // Two attempts at the same instant are never both trials.
            let mut copy = breaker.clone();
            if !matches!(copy.health(now), Health::Closed) && copy.try_acquire(now) {
                prop_assert!(!copy.try_acquire(now));
            }
        }
    }

    /// The attempt plan holds exactly the admitted candidates, in the order of the model's
    /// strategy; `known` says whether any upstream serves the model; when some serving
    /// upstream is rate limited, the plan says until when (the earliest).
    #[test]
    fn plan_follows_the_strategy_and_explains_what_it_left_out(
        specs in upstream_specs(),
        history in history(),
        seed in any::<u64>(),
        strategy in 0usize..3,
        served_protocol in proptest::option::of(prop_oneof![Just(WireProtocol::OpenAi), Just(WireProtocol::Anthropic)]),
    ) {
        let mut router = Router::with_breaker_config(specs, test_breaker_config()).unwrap();
        let start = Instant::now();
        let now = apply_history(&mut router, &history, start, None);
        let strategy = RouteStrategy::ALL[strategy];
        router.set_strategies(MODEL_POOL.iter().map(|m| (m.to_string(), strategy)).collect());
        let serves = |spec: &UpstreamSpec| served_protocol.is_none_or(|p| spec.protocol == p);
        for model in MODEL_POOL {
            let plan = router.plan(&(*model).into(), now, seed, serves);
            let ordered = match strategy {
                RouteStrategy::Ordered => router.candidates(model, now),
                RouteStrategy::Weighted => router.candidates_weighted(model, now, seed),
                RouteStrategy::LeastLatency => router.candidates_by_latency(model, now),
            };
            let expected: Vec<Candidate> = ordered
                .into_iter()
                .filter(|c| serves(router.upstream(c.upstream).unwrap()))
                .collect();
            prop_assert_eq!(&plan.candidates, &expected);
            let serving: Vec<Candidate> = router
                .all_candidates(model)
                .into_iter()
                .filter(|c| serves(router.upstream(c.upstream).unwrap()))
                .collect();
            prop_assert_eq!(plan.known, !serving.is_empty());
            let limited = serving
                .iter()
                .filter_map(|c| router.rate_limited_until(c.upstream, &c.upstream_model, now))
                .min();
            prop_assert_eq!(plan.rate_limited_until, limited);
        }
    }

    /// A 429 never moves a breaker, and failures of one model never take another model of the
    /// same upstream out of routing.
    #[test]
    fn rate_limits_and_failures_stay_with_their_model(
        failures in 1u32..12,
        retry_after in proptest::option::of(1u64..100),
    ) {
        let mut spec = upstream("one", ProviderKind::OpenAi);
        spec.models = vec!["a-model".into(), "b-model".into()];
        let mut router = Router::with_breaker_config(vec![spec], test_breaker_config()).unwrap();
        let id = router.find("one").unwrap();
        let now = Instant::now();
        for _ in 0..failures {
            router.record_outcome(id, "a-model", &AttemptOutcome::HttpStatus(429), now);
        }
        prop_assert_eq!(router.model_health(id, "a-model", now), Some(Health::Closed));
        prop_assert!(router.candidates("a-model", now).is_empty());
        router.record_rate_limited(id, "b-model", retry_after.map(Duration::from_secs), now);
        let back = now + retry_after.map_or(DEFAULT_RATE_LIMIT_BACKOFF, Duration::from_secs);
        prop_assert!(router.candidates("b-model", back - Duration::from_millis(1)).is_empty());
        prop_assert_eq!(router.candidates("b-model", back).len(), 1);
        // Once a-model's own rate limit is over, its 5xx open its breaker alone.
        let later = back.max(now + DEFAULT_RATE_LIMIT_BACKOFF);
        for _ in 0..failures {
            router.record_outcome(id, "a-model", &AttemptOutcome::HttpStatus(502), later);
        }
        prop_assert_eq!(router.candidates("b-model", later).len(), 1);
        let open = failures >= test_breaker_config().failure_threshold;
        prop_assert_eq!(router.candidates("a-model", later).is_empty(), open);
    }
}
