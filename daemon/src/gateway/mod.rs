//! The gateway: authenticates a client request, routes its model to upstream candidates
//! (`gate_core::route`), injects the provider key, fails over before the first byte, and
//! streams the answer back event by event, converting between the OpenAI and Anthropic
//! protocols when client and upstream differ (`gate_core::llm::convert`).
//!
//! The pure decisions live in `gate_core`: the endpoint table, status mapping and header
//! allow-lists in `gate_core::llm::endpoint`, usage extraction in `gate_core::llm::usage`,
//! secret scrubbing in `gate_core::llm::scrub`, the attempt plan in `gate_core::route`.
//!
//! The request path, split by stage:
//! - [`attempt`] - the breaker slot of one attempt, given back on drop;
//! - [`snapshot`] - the part of the configuration the request path reads;
//! - [`access`] - client authentication and `GET /v1/models`;
//! - [`discovery`] - asking upstreams which models they serve;
//! - [`dispatch`] - one request: read, route, try the candidates in turn (failover);
//! - [`gemini`] - the Gemini API front door (`/v1beta/models...`), converted through
//!   Chat Completions into [`dispatch`];
//! - [`upstream`] - building the upstream request, reading its answer;
//! - [`respond`] - turning the upstream's answer into the client's;
//! - [`stream`] - the streamed body ([`stream::StreamPipe`]);
//! - [`observe`] - metrics of attempts and health gauges;
//! - [`policy`] - keys' policies: allowed models, rate limits, budgets, usage records.
//!
//! Invariants:
//! - the client's credentials are never forwarded: upstream requests are built from an
//!   allow-list of headers plus the upstream's own key;
//! - a pass-through request (same protocol) forwards the client's body bytes untouched,
//!   except the `model` field when an alias maps it to another upstream model;
//! - failover happens only before any byte of the response reaches the client;
//! - streams are forwarded as they arrive, never buffered whole and never held waiting for
//!   more data (chunks already read from the upstream go out together, the head with the
//!   first of them, see `StreamPipe`);
//! - no total-time cap: only a connect timeout and an idle timeout between bytes.

mod access;
mod attempt;
mod body;
mod discovery;
mod dispatch;
mod gemini;
mod observe;
mod policy;
mod respond;
mod shared;
pub mod snapshot;
mod stream;
mod upstream;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::Bytes;
use gate_core::config::DaemonConfig;
use gate_core::llm::scrub::Scrubber;
use gate_core::route::{BreakerConfig, Router};
use gate_rt::client::ClientSettings;
use gate_rt::pool::{CorePool, PooledBody};
use gate_rt::Runtime;
use http_body_util::Full;

use crate::auth::TokenStore;
use crate::metrics::Metrics;
use attempt::SharedRouter;

pub use gate_core::llm::endpoint::Endpoint;
pub use snapshot::{Snapshot, UpstreamTarget};

/// The `anthropic-version` sent when the client gave none.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// An upstream's response body (its connection goes back to the core's pool at its end).
pub(crate) type UpstreamBody<R> = PooledBody<R, Full<Bytes>>;

/// The gateway: shared by every connection.
pub struct Gateway<R: Runtime> {
    rt: R,
    /// The upstream client of each serving core (index `core + 1`) and of every other
    /// thread (index 0): a request reuses pooled connections of its own thread only.
    clients: Box<[CorePool<R, Full<Bytes>>]>,
    snapshot: RwLock<Arc<Snapshot>>,
    router: SharedRouter,
    /// Secrets the configuration does not hold (the admin token), scrubbed like its own.
    extra_secrets: RwLock<Vec<String>>,
    /// The scrubber of a snapshot's secrets and the extra ones, built once per snapshot (and
    /// again after `protect_secret`), not per request.
    scrubber: RwLock<Option<(Arc<Snapshot>, Arc<Scrubber>)>>,
    /// Per-request seeds of the `weighted` strategy's draw.
    seeds: AtomicU64,
    pub metrics: Arc<Metrics>,
    tokens: RwLock<TokenStore>,
    /// The relay side's gauges, once it has started.
    relay_gauges: std::sync::OnceLock<Arc<dyn crate::metrics::RelayGauges>>,
    /// Fired when a stop's grace is over: live streams end with an error event.
    stream_stop: stream::StreamStop,
    /// Where each finished request's usage record goes (the usage log).
    usage: RwLock<Arc<dyn crate::usage::UsageSink>>,
    /// Spend and rate-limit state of every key (issue 14).
    accounting: Arc<policy::Accounting>,
    /// The shared store (`[store] url`), once the daemon has connected to it.
    shared: std::sync::OnceLock<Arc<crate::shared::SharedStore<R>>>,
}

impl<R: Runtime> Gateway<R> {
    /// A gateway for `config`, with the API keys of `tokens`.
    pub fn new(rt: R, config: &DaemonConfig, tokens: TokenStore) -> anyhow::Result<Self> {
        Self::with_breaker_config(rt, config, tokens, BreakerConfig::default())
    }

    /// Ends every live stream with an error event in its client's protocol (a stop whose
    /// grace is over); streams started later end at once too.
    pub fn end_streams(&self) {
        self.stream_stop.fire();
    }

    /// The daemon stops and its requests are done: the leases of the shared limits (Redis)
    /// give back what they hold unused and flush what was settled, so the other daemons can
    /// use it at once instead of at the leases' deadline, charged in full (`None`: no Redis;
    /// `Some(false)`: not all of it within the bound).
    pub async fn give_back_leases(&self) -> Option<bool> {
        self.accounting.give_back_leases().await
    }

    /// [`new`](Self::new) with breakers tuned by `breaker` (tests use short cooldowns).
    pub fn with_breaker_config(
        rt: R,
        config: &DaemonConfig,
        tokens: TokenStore,
        breaker: BreakerConfig,
    ) -> anyhow::Result<Self> {
        let (snapshot, specs) = Snapshot::from_config(config);
        let mut router =
            Router::with_breaker_config(specs, breaker).map_err(|e| anyhow::anyhow!("{e}"))?;
        router.set_strategies(config.routing.strategy.clone());
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let settings = ClientSettings {
            connect_timeout: config.server.connect_timeout,
            ..ClientSettings::default()
        };
        let rt_for_store = rt.clone();
        Ok(Self {
            clients: std::iter::once(rt.clone())
                .chain(rt.serving_cores())
                .map(|rt| CorePool::new(rt, &settings))
                .collect(),
            rt,
            snapshot: RwLock::new(Arc::new(snapshot)),
            router: Arc::new(Mutex::new(router)),
            extra_secrets: RwLock::new(Vec::new()),
            scrubber: RwLock::new(None),
            seeds: AtomicU64::new(seed),
            metrics: Arc::new(Metrics::new()),
            tokens: RwLock::new(tokens),
            relay_gauges: std::sync::OnceLock::new(),
            stream_stop: stream::StreamStop::default(),
            usage: RwLock::new(Arc::new(crate::usage::Discard)),
            accounting: Arc::new(policy::Accounting::for_store(rt_for_store, &config.store)?),
            shared: std::sync::OnceLock::new(),
        })
    }

    /// The upstream client of the calling thread: its serving core's, or the shared one.
    fn client(&self) -> &CorePool<R, Full<Bytes>> {
        R::current_core()
            .and_then(|core| self.clients.get(core + 1))
            .unwrap_or(&self.clients[0])
    }

    /// Sends each finished request's usage record to `sink` from now on.
    pub fn set_usage_sink(&self, sink: Arc<dyn crate::usage::UsageSink>) {
        *self.usage.write().unwrap_or_else(|e| e.into_inner()) = sink;
    }

    /// The sink usage records go to.
    pub fn usage_sink(&self) -> Arc<dyn crate::usage::UsageSink> {
        self.usage.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Swaps in a new configuration; requests in flight finish on the old one.
    pub fn reload(&self, config: &DaemonConfig) -> anyhow::Result<()> {
        let (snapshot, specs) = Snapshot::from_config(config);
        {
            let mut router = self.lock_router();
            router
                .replace_upstreams(specs)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            router.set_strategies(config.routing.strategy.clone());
        }
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
        Ok(())
    }

    /// Replaces the API keys (from the state directory, or the shared store's copy).
    pub fn set_tokens(&self, tokens: TokenStore) {
        let new: std::collections::HashMap<String, crate::auth::TokenRecord> = tokens
            .list()
            .into_iter()
            .map(|record| (record.id.clone(), record))
            .collect();
        let old = std::mem::replace(
            &mut *self.tokens.write().unwrap_or_else(|e| e.into_inner()),
            tokens,
        )
        .list();
        // Keys edited or revoked drop their shared leases at once.
        for record in old {
            if new
                .get(&record.id)
                .is_none_or(|n| n.policy != record.policy)
            {
                self.accounting.forget(&record.id);
            }
        }
    }

    /// The API keys as the gateway checks them now, oldest first.
    pub fn key_records(&self) -> Vec<crate::auth::TokenRecord> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner()).list()
    }

    /// Keys, usage and spend live in `store` from now on (set once, at start).
    pub fn set_shared(&self, store: Arc<crate::shared::SharedStore<R>>) {
        let _ = self.shared.set(store);
    }

    /// The shared store, when `[store] url` is set.
    pub fn shared(&self) -> Option<&Arc<crate::shared::SharedStore<R>>> {
        self.shared.get()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock_router(&self) -> std::sync::MutexGuard<'_, Router> {
        attempt::lock(&self.router)
    }

    /// Adds a secret that is not in the configuration (the admin token) to those scrubbed
    /// from upstream text before it reaches a client or a log.
    pub fn protect_secret(&self, secret: &str) {
        let mut extra = self
            .extra_secrets
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if !extra.iter().any(|s| s == secret) {
            extra.push(secret.to_owned());
        }
        drop(extra);
        *self.scrubber.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// `text` without any configured secret.
    fn scrub<'a>(&self, snapshot: &Arc<Snapshot>, text: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        self.scrubber(snapshot).scrub(text)
    }

    /// The scrubber of `snapshot`'s secrets and those added by
    /// [`protect_secret`](Self::protect_secret) (built on first use after either changed).
    fn scrubber(&self, snapshot: &Arc<Snapshot>) -> Arc<Scrubber> {
        if let Some((of, scrubber)) = &*self.scrubber.read().unwrap_or_else(|e| e.into_inner()) {
            if Arc::ptr_eq(of, snapshot) {
                return scrubber.clone();
            }
        }
        let scrubber = {
            let extra = self.extra_secrets.read().unwrap_or_else(|e| e.into_inner());
            let all: Vec<&str> = snapshot
                .secrets
                .iter()
                .chain(extra.iter())
                .map(String::as_str)
                .collect();
            Arc::new(Scrubber::new(&all))
        };
        *self.scrubber.write().unwrap_or_else(|e| e.into_inner()) =
            Some((snapshot.clone(), scrubber.clone()));
        scrubber
    }

    /// [`scrub`](Self::scrub) for a message.
    fn scrub_str(&self, snapshot: &Arc<Snapshot>, text: &str) -> String {
        String::from_utf8_lossy(&self.scrub(snapshot, text.as_bytes())).into_owned()
    }

    /// The circuit state of each configured upstream at `now`, by name (admin status).
    pub fn upstream_health(&self, now: Instant) -> Vec<(String, gate_core::route::Health)> {
        let router = self.lock_router();
        router
            .ids()
            .filter_map(|id| Some((router.upstream(id)?.name.clone(), router.health(id, now)?)))
            .collect()
    }

    /// Every model clients can ask for, with the upstreams routing would try, in order
    /// (admin "models and routes").
    pub fn routes(&self) -> Vec<(String, Vec<gate_core::route::Candidate>)> {
        let router = self.lock_router();
        router
            .list_models()
            .into_iter()
            .map(|m| {
                let candidates = router.all_candidates(&m.id);
                (m.id, candidates)
            })
            .collect()
    }

    /// Lets `/metrics` show the relay side's state (once it has started).
    pub fn set_relay_gauges(&self, gauges: Arc<dyn crate::metrics::RelayGauges>) {
        let _ = self.relay_gauges.set(gauges);
    }
}
