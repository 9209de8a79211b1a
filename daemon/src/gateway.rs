//! The gateway: authenticates a client request, routes its model to upstream candidates
//! (`gate_core::route`), injects the provider key, fails over before the first byte, and
//! streams the answer back event by event, converting between the OpenAI and Anthropic
//! protocols when client and upstream differ (`gate_core::llm::convert`).
//!
//! Invariants:
//! - the client's credentials are never forwarded: upstream requests are built from an
//!   allow-list of headers plus the upstream's own key;
//! - a pass-through request (same protocol) forwards the client's body bytes untouched,
//!   except the `model` field when an alias maps it to another upstream model;
//! - failover happens only before any byte of the response reaches the client;
//! - streams are forwarded as they arrive, never buffered whole and never held waiting for
//!   more data (chunks already read from the upstream go out together, see `StreamPipe`);
//! - no total-time cap: only a connect timeout and an idle timeout between bytes.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gate_core::config::{DaemonConfig, Secret, ServerLimits};
use gate_core::llm::sse::{SseParser, SseWatcher};
use gate_core::route::{AttemptOutcome, ProviderKind, Router, UpstreamSpec, WireProtocol};
use gate_rt::client::{http_client, ClientSettings, HttpClient};
use gate_rt::Runtime;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming};

use crate::app::{full_body, json, Body, BoxError, Peer};
use crate::auth::{self, AuthError, JwtSettings, TokenStore};
use crate::convert::{self, StreamConverter};
use crate::errors::{error_response, stream_error_event, upstream_message};
use crate::metrics::{AttemptLabels, EndpointLabels, Metrics, RequestLabels, UpstreamLabels};

/// The `anthropic-version` sent when the client gave none.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// Limits of SSE lines and events read from upstreams.
const SSE_MAX_LINE: usize = 4 << 20;
const SSE_MAX_EVENT: usize = 16 << 20;

/// The LLM endpoints Gate serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    CountTokens,
}

impl Endpoint {
    /// The endpoint of a `POST` path.
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/v1/chat/completions" | "/chat/completions" => Endpoint::ChatCompletions,
            "/v1/completions" | "/completions" => Endpoint::Completions,
            "/v1/embeddings" | "/embeddings" => Endpoint::Embeddings,
            "/v1/responses" | "/responses" => Endpoint::Responses,
            "/v1/messages" => Endpoint::Messages,
            "/v1/messages/count_tokens" => Endpoint::CountTokens,
            _ => return None,
        })
    }

    /// The protocol a client of this endpoint speaks.
    pub fn client_protocol(self) -> WireProtocol {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => WireProtocol::Anthropic,
            _ => WireProtocol::OpenAi,
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
        }
    }

    /// Whether an upstream speaking `protocol` can serve this endpoint (natively or by
    /// conversion).
    fn served_by(self, protocol: WireProtocol) -> bool {
        protocol == WireProtocol::OpenAi
            || matches!(
                self,
                Endpoint::Messages | Endpoint::CountTokens | Endpoint::ChatCompletions
            )
    }

    /// The path under the upstream's base URL.
    fn upstream_path(self, protocol: WireProtocol) -> &'static str {
        match (protocol, self) {
            (WireProtocol::OpenAi, Endpoint::Completions) => "/completions",
            (WireProtocol::OpenAi, Endpoint::Embeddings) => "/embeddings",
            (WireProtocol::OpenAi, Endpoint::Responses) => "/responses",
            (WireProtocol::OpenAi, _) => "/chat/completions",
            (WireProtocol::Anthropic, Endpoint::CountTokens) => "/v1/messages/count_tokens",
            (WireProtocol::Anthropic, _) => "/v1/messages",
        }
    }
}

/// One upstream as the gateway calls it.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub name: String,
    pub provider: ProviderKind,
    pub protocol: WireProtocol,
    /// Without a trailing slash.
    pub base_url: String,
    pub api_key: Option<Secret>,
}

/// The part of the configuration the request path reads, swapped whole on reload.
pub struct Snapshot {
    pub upstreams: Vec<UpstreamTarget>,
    pub limits: ServerLimits,
    pub jwt: Option<JwtSettings>,
    pub allow_loopback: bool,
}

impl Snapshot {
    /// The gateway's view of a daemon configuration, and the routing specs in the same
    /// order (so `UpstreamId::index()` indexes `upstreams`).
    pub fn from_config(config: &DaemonConfig) -> (Snapshot, Vec<UpstreamSpec>) {
        let mut upstreams = Vec::new();
        let mut specs = Vec::new();
        for (name, up) in &config.upstreams {
            let provider: ProviderKind = up.provider.name().parse().unwrap_or(ProviderKind::Custom);
            let protocol = provider.default_protocol();
            let mut spec = UpstreamSpec::new(name.clone(), provider);
            spec.protocol = protocol;
            spec.models = up.models.clone();
            spec.aliases = up.aliases.clone();
            spec.enabled = up.enabled;
            specs.push(spec);
            upstreams.push(UpstreamTarget {
                name: name.clone(),
                provider,
                protocol,
                base_url: up.base_url.trim_end_matches('/').to_owned(),
                api_key: up.api_key.clone(),
            });
        }
        let jwt = config
            .auth
            .jwt
            .secret
            .as_ref()
            .map(|secret| JwtSettings::new(secret.expose(), &config.auth.jwt.issuer));
        let snapshot = Snapshot {
            upstreams,
            limits: config.server.clone(),
            jwt,
            allow_loopback: config.auth.allow_loopback,
        };
        (snapshot, specs)
    }
}

/// The gateway: shared by every connection.
pub struct Gateway<R: Runtime> {
    rt: R,
    client: HttpClient<R, Full<Bytes>>,
    snapshot: RwLock<Arc<Snapshot>>,
    router: Mutex<Router>,
    pub metrics: Arc<Metrics>,
    tokens: RwLock<TokenStore>,
    /// The relay side, once started (status pages and metrics read it).
    remote: std::sync::OnceLock<Arc<crate::remote::Remote<R>>>,
    /// Fired when a stop's grace is over: live streams end with an error event.
    stream_stop: StreamStop,
}

/// A failed request before any byte went out: status and message for the client.
struct Refusal(StatusCode, String);

impl<R: Runtime> Gateway<R> {
    /// A gateway for `config`, with the API keys of `tokens`.
    pub fn new(rt: R, config: &DaemonConfig, tokens: TokenStore) -> anyhow::Result<Self> {
        let (snapshot, specs) = Snapshot::from_config(config);
        let router = Router::new(specs).map_err(|e| anyhow::anyhow!("{e}"))?;
        let settings = ClientSettings {
            connect_timeout: config.server.connect_timeout,
            ..ClientSettings::default()
        };
        Ok(Self {
            client: http_client(rt.clone(), &settings),
            rt,
            snapshot: RwLock::new(Arc::new(snapshot)),
            router: Mutex::new(router),
            metrics: Arc::new(Metrics::new()),
            tokens: RwLock::new(tokens),
            remote: std::sync::OnceLock::new(),
            stream_stop: StreamStop::default(),
        })
    }

    /// Ends every live stream with an error event in its client's protocol (a stop whose
    /// grace is over); streams started later end at once too.
    pub fn end_streams(&self) {
        self.stream_stop.fire();
    }

    /// Swaps in a new configuration; requests in flight finish on the old one.
    pub fn reload(&self, config: &DaemonConfig) -> anyhow::Result<()> {
        let (snapshot, specs) = Snapshot::from_config(config);
        self.lock_router()
            .replace_upstreams(specs)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
        Ok(())
    }

    /// Reloads the API key store from the state directory.
    pub fn set_tokens(&self, tokens: TokenStore) {
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = tokens;
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock_router(&self) -> std::sync::MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks every upstream without an explicit `models` list which models it serves
    /// (`GET {base}/models`, or `{base}/v1/models` for Anthropic) and feeds the answers to
    /// routing's third tier. The upstreams are asked all at once and each answer is used as
    /// soon as it arrives, so a slow upstream (up to the timeout) delays no one else's list.
    /// Failures are logged and leave that upstream's list as it was.
    pub async fn discover_models(&self) {
        let snapshot = self.snapshot();
        let explicit: std::collections::HashSet<String> = {
            let router = self.lock_router();
            router
                .upstreams()
                .iter()
                .filter(|spec| !spec.models.is_empty() || !spec.enabled)
                .map(|spec| spec.name.clone())
                .collect()
        };
        let queries = snapshot
            .upstreams
            .iter()
            .filter(|upstream| !explicit.contains(&upstream.name))
            .map(|upstream| self.discover_upstream_models(upstream));
        futures_util::future::join_all(queries).await;
    }

    /// Discovery for one upstream: asks it, and on an answer sets its discovered models.
    async fn discover_upstream_models(&self, upstream: &UpstreamTarget) {
        let Some(models) = self.fetch_model_list(upstream).await else {
            return;
        };
        let mut router = self.lock_router();
        if let Some(id) = router.find(&upstream.name) {
            tracing::debug!(upstream = %upstream.name, count = models.len(), "discovered models");
            router.set_discovered_models(id, models);
        }
    }

    /// The model ids `upstream` lists, or `None` when it gives no usable answer within the
    /// timeout.
    async fn fetch_model_list(&self, upstream: &UpstreamTarget) -> Option<Vec<String>> {
        const TIMEOUT: Duration = Duration::from_secs(15);
        let url = match upstream.protocol {
            WireProtocol::OpenAi => format!("{}/models", upstream.base_url),
            WireProtocol::Anthropic => format!("{}/v1/models", upstream.base_url),
        };
        let mut builder = Request::builder().method(Method::GET).uri(&url);
        if let Some(headers) = builder.headers_mut() {
            if let Some(key) = &upstream.api_key {
                let value = match upstream.protocol {
                    WireProtocol::OpenAi => {
                        HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    }
                    WireProtocol::Anthropic => HeaderValue::from_str(key.expose()),
                };
                if let Ok(mut value) = value {
                    value.set_sensitive(true);
                    let name = match upstream.protocol {
                        WireProtocol::OpenAi => http::header::AUTHORIZATION,
                        WireProtocol::Anthropic => http::HeaderName::from_static("x-api-key"),
                    };
                    headers.insert(name, value);
                }
            }
            if upstream.protocol == WireProtocol::Anthropic {
                headers.insert(
                    "anthropic-version",
                    HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION),
                );
            }
        }
        let req = builder.body(Full::new(Bytes::new())).ok()?;
        let body = match gate_rt::timeout(&self.rt, TIMEOUT, self.client.request(req)).await {
            Ok(Ok(response)) if response.status().is_success() => {
                collect_with_timeout(&self.rt, response.into_body(), TIMEOUT)
                    .await
                    .ok()?
            }
            Ok(Ok(response)) => {
                tracing::debug!(upstream = %upstream.name, status = %response.status(), "model list not available");
                return None;
            }
            Ok(Err(e)) => {
                tracing::debug!(upstream = %upstream.name, error = %error_chain(&e), "model list not available");
                return None;
            }
            Err(_) => {
                tracing::debug!(upstream = %upstream.name, "model list not available: no answer within {TIMEOUT:?}");
                return None;
            }
        };
        let value = serde_json::from_slice::<serde_json::Value>(&body).ok()?;
        Some(
            value
                .get("data")
                .and_then(|d| d.as_array())
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|m| m.get("id").and_then(|id| id.as_str()).map(str::to_owned))
                        .take(10_000)
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// Checks the client's credentials.
    pub fn authenticate(&self, headers: &HeaderMap, peer: Peer) -> Result<(), AuthError> {
        let snapshot = self.snapshot();
        let Some(token) = auth::credential(headers) else {
            if snapshot.allow_loopback && !peer.remote && peer.addr.ip().is_loopback() {
                return Ok(());
            }
            return Err(AuthError::Missing);
        };
        if token.starts_with(auth::TOKEN_PREFIX) {
            let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
            return tokens.verify(token).map(|_| ()).ok_or(AuthError::Invalid);
        }
        match &snapshot.jwt {
            Some(jwt) => jwt.verify(token).map(|_| ()),
            None => Err(AuthError::Invalid),
        }
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

    /// Attaches the relay side (once).
    pub fn set_remote(&self, remote: Arc<crate::remote::Remote<R>>) {
        let _ = self.remote.set(remote);
    }

    /// The relay side, when relays are enabled.
    pub fn remote(&self) -> Option<&Arc<crate::remote::Remote<R>>> {
        self.remote.get()
    }

    /// Updates the upstream health gauges and renders `/metrics`.
    pub fn render_metrics(&self) -> String {
        let now = Instant::now();
        if let Some(remote) = self.remote.get() {
            let status = remote.status();
            for relay in &status.relays {
                let address = relay.address.clone();
                let up = relay.registered();
                self.metrics
                    .relay_registered
                    .get_or_create(&crate::metrics::RelayLabels { relay: address })
                    .set(i64::from(up));
            }
            if let Some(cert) = &status.certificate {
                let expiry = i64::try_from(cert.expiry_unix_seconds()).unwrap_or(i64::MAX);
                self.metrics.certificate_expiry.set(expiry);
            }
        }
        {
            let router = self.lock_router();
            for id in router.ids() {
                let (Some(spec), Some(health)) = (router.upstream(id), router.health(id, now))
                else {
                    continue;
                };
                let up = matches!(health, gate_core::route::Health::Closed);
                self.metrics
                    .upstream_up
                    .get_or_create(&UpstreamLabels {
                        upstream: spec.name.clone(),
                    })
                    .set(i64::from(up));
            }
        }
        self.metrics.render()
    }

    /// `GET /v1/models` in the client's protocol (Anthropic when it sent
    /// `anthropic-version`).
    pub fn list_models(&self, headers: &HeaderMap, peer: Peer) -> Response<Body> {
        let anthropic = headers.contains_key("anthropic-version");
        let protocol = if anthropic {
            WireProtocol::Anthropic
        } else {
            WireProtocol::OpenAi
        };
        if let Err(e) = self.authenticate(headers, peer) {
            return error_response(protocol, StatusCode::UNAUTHORIZED, &e.to_string());
        }
        let models = self.lock_router().list_models();
        let body = if anthropic {
            let data: Vec<_> = models
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "type": "model",
                        "id": m.id,
                        "display_name": m.id,
                        "created_at": "1970-01-01T00:00:00Z",
                    })
                })
                .collect();
            serde_json::json!({
                "data": data,
                "has_more": false,
                "first_id": models.first().map(|m| m.id.clone()),
                "last_id": models.last().map(|m| m.id.clone()),
            })
        } else {
            let data: Vec<_> = models
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "id": m.id,
                        "object": "model",
                        "created": 0,
                        "owned_by": m.upstream_name,
                    })
                })
                .collect();
            serde_json::json!({"object": "list", "data": data})
        };
        json(StatusCode::OK, body)
    }

    /// Serves one LLM request end to end.
    pub async fn handle(
        &self,
        endpoint: Endpoint,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Response<Body> {
        let started = Instant::now();
        let protocol = endpoint.client_protocol();
        let (parts, body) = req.into_parts();
        let mut body = Some(body);
        let response = match self
            .handle_inner(endpoint, parts, &mut body, peer, started)
            .await
        {
            Ok(response) => response,
            Err(Refusal(status, message)) => {
                tracing::info!(endpoint = endpoint.label(), %status, %message, "request refused");
                let mut response = error_response(protocol, status, &message);
                // A refusal before the body was read: read (a bounded amount of) it, so
                // the connection can serve the client's next request; otherwise close it.
                let drained = match body.take() {
                    Some(unread) => drain_body(&self.rt, unread).await,
                    None => status != StatusCode::PAYLOAD_TOO_LARGE,
                };
                {
                    if !drained {
                        response
                            .headers_mut()
                            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                    }
                }
                response
            }
        };
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.label().to_owned(),
                status: response.status().as_u16(),
            })
            .inc();
        if !is_event_stream(response.headers()) {
            self.metrics
                .request_duration
                .get_or_create(&EndpointLabels {
                    endpoint: endpoint.label().to_owned(),
                })
                .observe(started.elapsed().as_secs_f64());
        }
        response
    }

    async fn handle_inner(
        &self,
        endpoint: Endpoint,
        parts: http::request::Parts,
        body: &mut Option<Incoming>,
        peer: Peer,
        started: Instant,
    ) -> Result<Response<Body>, Refusal> {
        let client_protocol = endpoint.client_protocol();
        self.authenticate(&parts.headers, peer)
            .map_err(|e| Refusal(StatusCode::UNAUTHORIZED, e.to_string()))?;
        let snapshot = self.snapshot();
        check_json_content_type(&parts.headers)?;
        let Some(body) = body.take() else {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "the request body was already read".to_owned(),
            ));
        };
        let body = read_body_limited(body, snapshot.limits.max_body_bytes).await?;
        let request: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            Refusal(
                StatusCode::BAD_REQUEST,
                format!("the request body is not valid JSON: {e}"),
            )
        })?;
        let Some(model) = request
            .get("model")
            .and_then(|m| m.as_str())
            .map(str::to_owned)
        else {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "the request has no \"model\" string field".to_owned(),
            ));
        };
        let stream = request
            .get("stream")
            .and_then(|s| s.as_bool())
            .unwrap_or(false);
        let include_usage = request
            .pointer("/stream_options/include_usage")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);

        let now = Instant::now();
        let (candidates, known) = {
            let router = self.lock_router();
            let known = router.all_candidates(&model);
            let candidates = router.candidates(&model, now);
            (candidates, known)
        };
        let served = |c: &gate_core::route::Candidate| {
            snapshot
                .upstreams
                .get(c.upstream.index())
                .is_some_and(|u| endpoint.served_by(u.protocol))
        };
        if !known.iter().any(served) {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!(
                    "the model `{model}` does not exist or no upstream serves it for {}; \
                     GET /v1/models lists the models Gate routes",
                    endpoint.label()
                ),
            ));
        }
        let candidates: Vec<_> = candidates.into_iter().filter(|c| served(c)).collect();
        if candidates.is_empty() {
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "every upstream serving `{model}` is failing (circuit open); try again shortly"
                ),
            ));
        }

        // Count tokens locally when no Anthropic upstream can.
        if endpoint == Endpoint::CountTokens
            && !candidates.iter().any(|c| {
                snapshot
                    .upstreams
                    .get(c.upstream.index())
                    .map(|u| u.protocol)
                    == Some(WireProtocol::Anthropic)
            })
        {
            let estimate = convert::estimate_count_tokens(&body)
                .map_err(|message| Refusal(StatusCode::BAD_REQUEST, message))?;
            let mut out = Response::new(full_body(Bytes::from(estimate)));
            out.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(out);
        }

        let mut last_failure = Refusal(StatusCode::BAD_GATEWAY, "no upstream was tried".to_owned());
        let count = candidates.len();
        for (index, candidate) in candidates.into_iter().enumerate() {
            let is_last = index + 1 == count;
            let Some(upstream) = snapshot.upstreams.get(candidate.upstream.index()) else {
                continue;
            };
            if endpoint == Endpoint::CountTokens && upstream.protocol != WireProtocol::Anthropic {
                continue;
            }
            if !self
                .lock_router()
                .try_acquire(candidate.upstream, Instant::now())
            {
                continue;
            }
            let upstream_body = match build_upstream_body(
                endpoint,
                client_protocol,
                upstream.protocol,
                &body,
                &model,
                &candidate.upstream_model,
            ) {
                Ok(b) => b,
                Err(message) => {
                    self.lock_router().release(candidate.upstream);
                    return Err(Refusal(StatusCode::BAD_REQUEST, message));
                }
            };
            let upstream_req =
                build_upstream_request(endpoint, &parts.headers, upstream, upstream_body)
                    .map_err(|e| Refusal(StatusCode::BAD_GATEWAY, e))?;
            let attempt_started = Instant::now();
            let sent = gate_rt::timeout(
                &self.rt,
                snapshot.limits.idle_timeout,
                self.client.request(upstream_req),
            )
            .await;
            let response = match sent {
                Err(gate_rt::Elapsed) => {
                    self.record(
                        candidate.upstream,
                        &AttemptOutcome::Timeout,
                        &upstream.name,
                        "timeout",
                    );
                    last_failure = Refusal(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "upstream `{}` did not answer within {:?}",
                            upstream.name, snapshot.limits.idle_timeout
                        ),
                    );
                    continue;
                }
                Ok(Err(e)) => {
                    self.record(
                        candidate.upstream,
                        &AttemptOutcome::ConnectError,
                        &upstream.name,
                        "connect_error",
                    );
                    tracing::warn!(upstream = %upstream.name, error = %error_chain(&e), "upstream request failed");
                    last_failure = Refusal(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "upstream `{}` could not be reached: {}",
                            upstream.name,
                            error_chain(&e)
                        ),
                    );
                    continue;
                }
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            let outcome = AttemptOutcome::HttpStatus(status.as_u16());
            if outcome.should_failover() && !is_last {
                self.record(
                    candidate.upstream,
                    &outcome,
                    &upstream.name,
                    "failover_status",
                );
                let (_, body) = response.into_parts();
                let bytes = collect_with_timeout(&self.rt, body, snapshot.limits.idle_timeout)
                    .await
                    .unwrap_or_default();
                tracing::warn!(upstream = %upstream.name, %status, message = upstream_message(&bytes).unwrap_or_default(), "upstream failed; trying the next one");
                last_failure = Refusal(
                    map_upstream_status(status),
                    format!("upstream `{}` answered {status}", upstream.name),
                );
                continue;
            }
            let outcome_label = if status.is_success() {
                "ok"
            } else {
                "error_status"
            };
            self.record(candidate.upstream, &outcome, &upstream.name, outcome_label);
            self.lock_router()
                .record_latency(candidate.upstream, attempt_started.elapsed());
            return Ok(self
                .respond(
                    endpoint,
                    client_protocol,
                    upstream,
                    &model,
                    (stream, include_usage),
                    response,
                    started,
                )
                .await);
        }
        Err(last_failure)
    }

    fn record(
        &self,
        id: gate_core::route::UpstreamId,
        outcome: &AttemptOutcome,
        name: &str,
        label: &str,
    ) {
        self.lock_router()
            .record_outcome(id, outcome, Instant::now());
        self.metrics
            .upstream_attempts
            .get_or_create(&AttemptLabels {
                upstream: name.to_owned(),
                outcome: label.to_owned(),
            })
            .inc();
    }

    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &self,
        endpoint: Endpoint,
        client_protocol: WireProtocol,
        upstream: &UpstreamTarget,
        model: &str,
        (stream_requested, include_usage): (bool, bool),
        response: Response<Incoming>,
        started: Instant,
    ) -> Response<Body> {
        let snapshot_idle = self.snapshot().limits.idle_timeout;
        let status = response.status();
        let (parts, body) = response.into_parts();
        let same_protocol = client_protocol == upstream.protocol;

        if !status.is_success() {
            let bytes = collect_with_timeout(&self.rt, body, snapshot_idle)
                .await
                .unwrap_or_default();
            let message = upstream_message(&bytes)
                .unwrap_or_else(|| format!("upstream `{}` answered {status}", upstream.name));
            let client_status = if status.is_server_error() {
                map_upstream_status(status)
            } else {
                status
            };
            if same_protocol && status.is_client_error() {
                let mut out = Response::new(full_body(bytes));
                *out.status_mut() = status;
                copy_response_headers(&parts.headers, out.headers_mut());
                return out;
            }
            return error_response(client_protocol, client_status, &message);
        }

        if is_event_stream(&parts.headers)
            || (stream_requested && endpoint != Endpoint::CountTokens && !is_json(&parts.headers))
        {
            let converter = if same_protocol {
                None
            } else {
                Some(convert::stream_converter(
                    upstream.protocol,
                    model,
                    include_usage,
                ))
            };
            let started_pipe = Instant::now();
            let pipe = StreamPipe {
                inner: body,
                rt: self.rt.clone(),
                idle: snapshot_idle,
                sleep: Box::pin(self.rt.sleep(snapshot_idle)),
                armed_at: started_pipe,
                last_data: started_pipe,
                client_protocol,
                upstream_protocol: upstream.protocol,
                mode: match converter {
                    None => Mode::PassThrough(SseWatcher::new(USAGE_KEY, SSE_MAX_EVENT)),
                    Some(c) => Mode::Convert(SseParser::new(SSE_MAX_LINE, SSE_MAX_EVENT), c),
                },
                pending: VecDeque::new(),
                pending_bytes: 0,
                fresh: false,
                empty_yields: 0,
                done: false,
                first_byte: false,
                started,
                usage: Usage::default(),
                metrics: self.metrics.clone(),
                upstream_name: upstream.name.clone(),
                model: model.to_owned(),
                endpoint,
                stop: self.stream_stop.clone(),
                stop_id: self.stream_stop.next_id(),
                stop_waker: None,
            };
            let mut out = Response::new(pipe.boxed());
            copy_response_headers(&parts.headers, out.headers_mut());
            out.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            out.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache"),
            );
            return out;
        }

        let bytes = match collect_with_timeout(&self.rt, body, snapshot_idle).await {
            Ok(bytes) => bytes,
            Err(message) => {
                return error_response(
                    client_protocol,
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "upstream `{}` broke off its answer: {message}",
                        upstream.name
                    ),
                )
            }
        };
        let mut usage = Usage::default();
        usage.observe_json(&bytes);
        self.metrics
            .add_tokens(&upstream.name, model, usage.input, usage.output);
        if same_protocol || endpoint == Endpoint::CountTokens {
            let mut out = Response::new(full_body(bytes));
            copy_response_headers(&parts.headers, out.headers_mut());
            return out;
        }
        match convert::response(upstream.protocol, &bytes) {
            Ok(converted) => {
                let mut out = Response::new(full_body(Bytes::from(converted)));
                out.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                out
            }
            Err(message) => error_response(
                client_protocol,
                StatusCode::BAD_GATEWAY,
                &format!(
                    "upstream `{}` sent an answer Gate could not convert: {message}",
                    upstream.name
                ),
            ),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The status the client sees for an upstream's 5xx / 429.
fn map_upstream_status(status: StatusCode) -> StatusCode {
    match status.as_u16() {
        429 => StatusCode::TOO_MANY_REQUESTS,
        503 | 529 => StatusCode::SERVICE_UNAVAILABLE,
        504 => StatusCode::GATEWAY_TIMEOUT,
        s if s >= 500 => StatusCode::BAD_GATEWAY,
        _ => status,
    }
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), Refusal> {
    match headers.get(http::header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => Ok(()),
        Some(Ok(v))
            if v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json") =>
        {
            Ok(())
        }
        Some(Ok(v)) => Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json, not {v:?}"),
        )),
        Some(Err(_)) => Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json".to_owned(),
        )),
    }
}

/// Reads and discards an unread request body of up to 1 MiB within 5 s; false when the
/// body was larger or slower (the connection should then be closed).
async fn drain_body<R: Runtime>(rt: &R, body: Incoming) -> bool {
    const DRAIN_LIMIT: usize = 1 << 20;
    if body.size_hint().lower() > DRAIN_LIMIT as u64 {
        return false;
    }
    let limited = http_body_util::Limited::new(body, DRAIN_LIMIT);
    matches!(
        gate_rt::timeout(rt, Duration::from_secs(5), limited.collect()).await,
        Ok(Ok(_))
    )
}

async fn read_body_limited(body: Incoming, max: u64) -> Result<Bytes, Refusal> {
    let too_large = || {
        Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than the limit of {max} bytes (server.max_body_bytes)"
            ),
        )
    };
    if body.size_hint().lower() > max {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("could not read the request body: {e}"),
        )),
    }
}

async fn collect_with_timeout<R: Runtime>(
    rt: &R,
    body: Incoming,
    idle: Duration,
) -> Result<Bytes, String> {
    // Non-streamed bodies are small; bound the whole read by the idle timeout per chunk.
    let mut body = body;
    let mut out = Vec::new();
    loop {
        match gate_rt::timeout(rt, idle, body.frame()).await {
            Err(_) => return Err(format!("no data for {idle:?}")),
            Ok(None) => return Ok(Bytes::from(out)),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    out.extend_from_slice(data);
                }
            }
        }
    }
}

/// Request headers passed from the client to the upstream. Everything else, above all
/// `authorization` and `x-api-key`, stays behind.
const FORWARDED_REQUEST_HEADERS: &[&str] =
    &["accept", "user-agent", "anthropic-beta", "openai-beta"];

fn build_upstream_request(
    endpoint: Endpoint,
    client_headers: &HeaderMap,
    upstream: &UpstreamTarget,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let url = format!(
        "{}{}",
        upstream.base_url,
        endpoint.upstream_path(upstream.protocol)
    );
    let mut builder = Request::builder().method(Method::POST).uri(&url);
    let headers = builder
        .headers_mut()
        .ok_or_else(|| format!("invalid upstream URL {url:?}"))?;
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(v) = client_headers.get(*name) {
            headers.insert(*name, v.clone());
        }
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    match upstream.protocol {
        WireProtocol::OpenAi => {
            if let Some(key) = &upstream.api_key {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| {
                        format!(
                            "the api_key of upstream `{}` is not a valid header value",
                            upstream.name
                        )
                    })?;
                value.set_sensitive(true);
                headers.insert(http::header::AUTHORIZATION, value);
            }
        }
        WireProtocol::Anthropic => {
            if let Some(key) = &upstream.api_key {
                let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
                    format!(
                        "the api_key of upstream `{}` is not a valid header value",
                        upstream.name
                    )
                })?;
                value.set_sensitive(true);
                headers.insert("x-api-key", value);
            }
            let version = client_headers
                .get("anthropic-version")
                .cloned()
                .unwrap_or(HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION));
            headers.insert("anthropic-version", version);
        }
    }
    builder
        .body(Full::new(body))
        .map_err(|e| format!("invalid upstream request to {url}: {e}"))
}

const FORWARDED_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "retry-after",
    "x-request-id",
    "request-id",
    "openai-processing-ms",
];

fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        let n = name.as_str();
        if FORWARDED_RESPONSE_HEADERS.contains(&n)
            || n.starts_with("x-ratelimit-")
            || n.starts_with("anthropic-ratelimit-")
        {
            to.insert(name.clone(), value.clone());
        }
    }
}

/// The body sent upstream: the client's bytes (pass-through, `model` rewritten only for
/// an alias) or the converted request.
fn build_upstream_body(
    endpoint: Endpoint,
    client_protocol: WireProtocol,
    upstream_protocol: WireProtocol,
    body: &Bytes,
    model: &str,
    upstream_model: &str,
) -> Result<Bytes, String> {
    if client_protocol == upstream_protocol {
        if model == upstream_model {
            return Ok(body.clone());
        }
        return convert::rewrite_model(body, upstream_model).map(Bytes::from);
    }
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Messages => {
            convert::request(client_protocol, body, upstream_model).map(Bytes::from)
        }
        _ => Err(format!(
            "{} cannot be served by this upstream",
            endpoint.label()
        )),
    }
}

/// Token counts seen in a response.
#[derive(Default, Debug, Clone, Copy)]
struct Usage {
    input: u64,
    output: u64,
}

impl Usage {
    /// Reads `usage` from an OpenAI or Anthropic JSON body, chunk or event.
    fn observe_json(&mut self, data: &[u8]) {
        if memchr_usage(data).is_none() {
            return;
        }
        // Only the usage counters are decoded; every other field is skipped without allocating.
        #[derive(serde::Deserialize, Default)]
        struct Counts {
            prompt_tokens: Option<u64>,
            input_tokens: Option<u64>,
            completion_tokens: Option<u64>,
            output_tokens: Option<u64>,
        }
        #[derive(serde::Deserialize)]
        struct Nested {
            usage: Option<Counts>,
        }
        #[derive(serde::Deserialize)]
        struct Top {
            usage: Option<Counts>,
            message: Option<Nested>,
            response: Option<Nested>,
        }
        let Ok(top) = serde_json::from_slice::<Top>(data) else {
            return;
        };
        let usage = top
            .usage
            .or_else(|| top.message.and_then(|m| m.usage))
            .or_else(|| top.response.and_then(|m| m.usage));
        let Some(usage) = usage else { return };
        if let Some(n) = usage.prompt_tokens.or(usage.input_tokens) {
            self.input = self.input.max(n);
        }
        if let Some(n) = usage.completion_tokens.or(usage.output_tokens) {
            self.output = self.output.max(n);
        }
    }
}

/// The key every usage-bearing JSON body or event holds.
const USAGE_KEY: &[u8] = b"\"usage\"";

fn memchr_usage(data: &[u8]) -> Option<usize> {
    memchr::memmem::find(data, USAGE_KEY)
}

enum Mode {
    /// Same protocol: forward upstream bytes as they come; the watcher only reads the events
    /// that carry `"usage"` (the others are not parsed).
    PassThrough(SseWatcher),
    /// Other protocol: parse events and re-encode them in the client's protocol.
    Convert(SseParser, Box<dyn StreamConverter>),
}

/// How many scheduler turns in a row without new upstream data the pipe yields before it
/// writes what it has (see [`StreamPipe`]). One is not enough on the multi-threaded runtime:
/// the idle worker steals the yielding task and polls it again while the upstream connection's
/// task is still decoding the next chunk on the other worker. Measured on 2 cores (streamed
/// chat, 10 events per answer, concurrency 50): 0 or 1 turn, 11-12 writes per answer; 2 to 6
/// turns, about 2 writes and less than half the CPU per answer.
const BATCH_YIELDS: u32 = 2;

/// The most bytes gathered into one body frame before it is handed to the connection.
const BATCH_MAX_BYTES: usize = 64 * 1024;

/// The streamed response body: forwards (or converts) upstream SSE as it arrives, cuts
/// the stream with an error event after `idle` of silence or on an upstream error.
///
/// Batching without buffering: hyper's client hands the upstream body over one chunk (one
/// SSE event, usually) at a time, each after a switch to the upstream connection's task. When
/// the next chunk is not there yet, the pipe yields (wakes itself and returns `Pending`) for up
/// to [`BATCH_YIELDS`] scheduler turns in a row so that task can pass on what it has already
/// read, and then writes everything gathered as one body frame (one write to the client instead
/// of one per event). It never waits for time or for more upstream data: if nothing came in
/// during those turns, what it has goes out, so an event that has arrived is never held for the
/// next one.
struct StreamPipe<R: Runtime> {
    inner: Incoming,
    rt: R,
    idle: Duration,
    sleep: Pin<Box<R::Sleep>>,
    /// When the running `sleep` was armed; data after it pushes the deadline back lazily
    /// (the timer is re-armed only when it fires, not per chunk).
    armed_at: Instant,
    /// When the last upstream data came.
    last_data: Instant,
    client_protocol: WireProtocol,
    upstream_protocol: WireProtocol,
    mode: Mode,
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    /// Data came since the pipe last yielded or returned `Pending`.
    fresh: bool,
    /// Turns yielded since data last came (up to [`BATCH_YIELDS`]).
    empty_yields: u32,
    done: bool,
    first_byte: bool,
    started: Instant,
    usage: Usage,
    metrics: Arc<Metrics>,
    upstream_name: String,
    model: String,
    endpoint: Endpoint,
    /// The daemon's "end the streams" signal, the pipe's key in it and the waker it holds.
    stop: StreamStop,
    stop_id: u64,
    stop_waker: Option<Waker>,
}

/// The stop signal [`StreamPipe`]s poll: once fired, each ends with an error event. Holds
/// one waker per live pipe (its key from [`StreamStop::next_id`]), replaced only when the
/// pipe's waker changes, removed when the pipe is dropped.
#[derive(Clone, Default)]
struct StreamStop(Arc<StreamStopInner>);

#[derive(Default)]
struct StreamStopInner {
    fired: std::sync::atomic::AtomicBool,
    next_id: std::sync::atomic::AtomicU64,
    wakers: Mutex<std::collections::HashMap<u64, Waker>>,
}

impl StreamStop {
    fn fire(&self) {
        self.0
            .fired
            .store(true, std::sync::atomic::Ordering::Release);
        let wakers = std::mem::take(&mut *self.0.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    fn next_id(&self) -> u64 {
        self.0
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn fired(&self) -> bool {
        self.0.fired.load(std::sync::atomic::Ordering::Acquire)
    }

    fn forget(&self, id: u64) {
        self.0
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

impl<R: Runtime> Drop for StreamPipe<R> {
    fn drop(&mut self) {
        if self.stop_waker.is_some() {
            self.stop.forget(self.stop_id);
        }
    }
}

impl<R: Runtime> StreamPipe<R> {
    /// True once the daemon's stop has fired; otherwise registers the task's waker with it.
    fn stop_fired(&mut self, cx: &Context<'_>) -> bool {
        if self.stop.fired() {
            return true;
        }
        if !self
            .stop_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.stop_waker = Some(cx.waker().clone());
            self.stop
                .0
                .wakers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(self.stop_id, cx.waker().clone());
        }
        // Fired between the first check and the registration: its wake may have missed us.
        self.stop.fired()
    }

    fn push(&mut self, bytes: Bytes) {
        self.pending_bytes += bytes.len();
        self.pending.push_back(bytes);
    }

    /// Everything gathered, as one frame (`None` when nothing is).
    fn take_batch(&mut self) -> Option<Bytes> {
        let batch = if self.pending.len() <= 1 {
            self.pending.pop_front()
        } else {
            let mut out = bytes::BytesMut::with_capacity(self.pending_bytes);
            for piece in self.pending.drain(..) {
                out.extend_from_slice(&piece);
            }
            Some(out.freeze())
        };
        self.pending_bytes = 0;
        batch
    }

    fn fail(&mut self, message: &str) {
        self.fail_with(StatusCode::BAD_GATEWAY, message);
    }

    fn fail_with(&mut self, status: StatusCode, message: &str) {
        tracing::warn!(upstream = %self.upstream_name, %message, "stream broke off");
        if let Mode::Convert(_, converter) = &mut self.mode {
            let _ = converter.finish(false);
        }
        self.push(stream_error_event(self.client_protocol, status, message));
        self.finish_metrics();
        self.done = true;
    }

    fn finish_metrics(&mut self) {
        self.metrics.add_tokens(
            &self.upstream_name,
            &self.model,
            self.usage.input,
            self.usage.output,
        );
        self.metrics
            .request_duration
            .get_or_create(&EndpointLabels {
                endpoint: self.endpoint.label().to_owned(),
            })
            .observe(self.started.elapsed().as_secs_f64());
    }

    fn on_data(&mut self, data: Bytes) {
        if !self.first_byte {
            self.first_byte = true;
            self.metrics
                .time_to_first_token
                .get_or_create(&UpstreamLabels {
                    upstream: self.upstream_name.clone(),
                })
                .observe(self.started.elapsed().as_secs_f64());
        }
        match &mut self.mode {
            Mode::PassThrough(watcher) => {
                let usage = &mut self.usage;
                watcher.push(&data, |event| usage.observe_json(event.data.as_bytes()));
                self.push(data);
            }
            Mode::Convert(parser, converter) => {
                parser.push(&data);
                let mut failed = None;
                while let Some(event) = parser.next_event() {
                    match event {
                        Ok(event) => {
                            self.usage.observe_json(event.data.as_bytes());
                            for out in converter.event(event.event.as_deref(), &event.data) {
                                self.pending_bytes += out.len();
                                self.pending.push_back(out);
                            }
                        }
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                }
                if let Some(message) = failed {
                    self.fail(&format!("the upstream stream is malformed: {message}"));
                }
            }
        }
    }

    fn on_end(&mut self) {
        if let Mode::Convert(_, converter) = &mut self.mode {
            for out in converter.finish(true) {
                self.push(out);
            }
        }
        self.finish_metrics();
        self.done = true;
    }

    /// Polls the idle timer; true when the upstream has been silent for `idle`.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            // The timer ran from `armed_at`; data since then moves the deadline.
            if self.last_data <= self.armed_at {
                return true;
            }
            let deadline = self.last_data + self.idle;
            let now = Instant::now();
            if deadline <= now {
                return true;
            }
            self.armed_at = now;
            self.sleep = Box::pin(self.rt.sleep(deadline - now));
        }
    }
}

impl<R: Runtime> HttpBody for StreamPipe<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(this.take_batch().map(|bytes| Ok(Frame::data(bytes))));
            }
            if this.stop.fired() {
                this.fail_with(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "gate is shutting down and its grace period for streams is over; retry the request",
                );
                continue;
            }
            if this.pending_bytes >= BATCH_MAX_BYTES {
                if let Some(bytes) = this.take_batch() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            this.fresh = true;
                            this.last_data = Instant::now();
                            this.on_data(data);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let message = format!("the upstream connection failed mid-stream: {e}");
                    this.fail(&message);
                }
                Poll::Ready(None) => this.on_end(),
                Poll::Pending => {
                    if !this.pending.is_empty() {
                        if this.fresh {
                            this.empty_yields = 0;
                        }
                        this.fresh = false;
                        if this.empty_yields < BATCH_YIELDS {
                            // A scheduler turn for the upstream connection to hand over what
                            // it already read (see the type's docs).
                            this.empty_yields += 1;
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        if let Some(bytes) = this.take_batch() {
                            return Poll::Ready(Some(Ok(Frame::data(bytes))));
                        }
                    }
                    this.fresh = false;
                    if this.stop_fired(cx) {
                        // Ended at the top of the loop.
                        continue;
                    }
                    if this.idle_expired(cx) {
                        let message = format!("the upstream sent nothing for {:?}", this.idle);
                        this.fail(&message);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

// No field is structurally pinned: the upstream body is Unpin and the timer is boxed.
impl<R: Runtime> Unpin for StreamPipe<R> {}

// `upstream_protocol` is kept for logs and future per-protocol handling.
impl<R: Runtime> std::fmt::Debug for StreamPipe<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPipe")
            .field("upstream", &self.upstream_name)
            .field("upstream_protocol", &self.upstream_protocol)
            .finish_non_exhaustive()
    }
}
