//! Routing: which upstream serves a request for a model, in which order to try them, and when
//! to stop trying one that keeps failing.
//!
//! This module owns the daemon's model routing (DESIGN.md section 5, "Routing"):
//! - [`models`]: the route table. An ordered list of [`UpstreamSpec`]s becomes a [`Router`]
//!   that answers [`Router::candidates`] (model -> ordered upstream candidates in three tiers:
//!   explicit models and aliases, provider defaults, discovered models) and
//!   [`Router::list_models`] (for `GET /v1/models`).
//! - [`breaker`]: a circuit breaker per (upstream, model), driven by outcomes and `now`
//!   passed in. Rate limits (429) are tracked apart, per (upstream, model), by the router.
//! - [`failover`]: which attempt outcomes move on to the next candidate, which count against
//!   a breaker and which are rate limiting.
//!
//! It must not do I/O or read a clock: time comes in as `now: Instant`, and the daemon owns the
//! router (behind its own lock) and performs the requests.
//!
//! Driving loop, for one request:
//! ```
//! use std::time::Instant;
//! use gate_core::route::{AttemptOutcome, ProviderKind, Router, UpstreamSpec};
//! let mut router = Router::new(vec![UpstreamSpec::new("openai", ProviderKind::OpenAi)]).unwrap();
//! let now = Instant::now(); // the daemon's clock, not the core's
//! let seed = 7; // the daemon's per-request random draw, for the `weighted` strategy
//! for candidate in router.plan(&"gpt-4o".into(), now, seed, |_| true).candidates {
//!     let model = &candidate.upstream_model;
//!     if !router.try_acquire(candidate.upstream, model, now) {
//!         continue; // a half-open (upstream, model) already has its one trial request
//!     }
//!     // ... send the request with model `candidate.upstream_model` ...
//!     let outcome = AttemptOutcome::HttpStatus(503);
//!     router.record_outcome(candidate.upstream, model, &outcome, now);
//!     if !outcome.should_failover() {
//!         break;
//!     }
//! }
//! ```

pub mod breaker;
pub mod failover;
pub mod models;

pub use breaker::{BreakerConfig, CircuitBreaker, Health};
pub use failover::{should_failover, AttemptOutcome};
pub use models::{
    AttemptPlan, Candidate, ModelEntry, ProviderKind, RouteError, RouteStrategy, Router, Tier,
    UnknownProvider, UpstreamId, UpstreamSpec, WireProtocol, DEFAULT_RATE_LIMIT_BACKOFF,
    MAX_RATE_LIMIT_BACKOFF, MAX_TRACKED_MODELS,
};
