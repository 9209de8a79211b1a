//! One LLM request from start to answer: authenticate, read the body, route its model,
//! try the candidates in turn (failover before the first byte), and count it.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use gate_core::llm::convert::{request_summary, with_include_usage};
use gate_core::llm::endpoint::bounded_echo;
use gate_core::llm::endpoint::Translation;
use gate_core::route::{AttemptOutcome, AttemptPlan, WireProtocol};
use gate_rt::Runtime;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::attempt::AttemptSlot;
use super::body::{check_json_content_type, drain_body, read_body_limited, Refusal};
use super::gemini::NativeGemini;
use super::policy::Asked;
use super::respond::NativeGeminiAnswer;
use super::upstream::{
    build_native_gemini_request, build_upstream_body, build_upstream_request,
    check_conversion_bound, collect_with_timeout, error_chain, is_event_stream,
    map_upstream_status, retry_after,
};
use super::{Endpoint, Gateway, Snapshot};
use crate::auth::Caller;
use crate::convert;
use crate::errors::{error_response, upstream_message};
use crate::web::{full_body, Body, Peer};
use std::sync::Arc;

impl<R: Runtime> Gateway<R> {
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
            .count_request(endpoint, response.status().as_u16());
        if !is_event_stream(response.headers()) {
            self.metrics
                .observe_request_duration(endpoint, started.elapsed().as_secs_f64());
        }
        response
    }

    pub(super) async fn handle_inner(
        &self,
        endpoint: Endpoint,
        parts: http::request::Parts,
        body: &mut Option<Incoming>,
        peer: Peer,
        started: Instant,
    ) -> Result<Response<Body>, Refusal> {
        // Read once for the whole request (see `authenticate_in`).
        let snapshot = self.snapshot();
        let caller = self
            .authenticate_in(&snapshot, &parts.headers, peer)
            .map_err(|e| Refusal(StatusCode::UNAUTHORIZED, e.to_string()))?;
        check_json_content_type(&parts.headers)?;
        let Some(body) = body.take() else {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "the request body was already read".to_owned(),
            ));
        };
        let body = read_body_limited(body, snapshot.limits.max_body_bytes).await?;
        self.dispatch_body(endpoint, &parts, body, started, &caller, None, &snapshot)
            .await
    }

    /// Routes a request whose body is read (and whose client is authenticated) and tries
    /// its candidates. The Gemini front door (`gemini.rs`) enters here with a converted body.
    ///
    /// `native`: a Gemini client's own request (`gemini.rs`), sent untouched to the native
    /// Gemini candidates while the others get `body` (its Chat Completions conversion).
    /// `snapshot`: the configuration the request was authenticated under.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn dispatch_body(
        &self,
        endpoint: Endpoint,
        parts: &http::request::Parts,
        body: Bytes,
        started: Instant,
        caller: &Caller,
        native: Option<&NativeGemini>,
        snapshot: &Arc<Snapshot>,
    ) -> Result<Response<Body>, Refusal> {
        let client_protocol = endpoint.client_protocol();
        // Only what routing needs is read; the rest of the body is skipped, not built into
        // a tree (a pass-through request is forwarded as the client's bytes).
        let summary = request_summary(&body).map_err(|e| {
            Refusal(
                StatusCode::BAD_REQUEST,
                format!(
                    "the request body is not a JSON object with a string \"model\": {}",
                    bounded_echo(&e.to_string(), MAX_ECHO_CHARS)
                ),
            )
        })?;
        let Some(model) = summary.model else {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "the request has no \"model\" string field".to_owned(),
            ));
        };
        let asked = Asked {
            caller,
            label: policy_label(endpoint, parts),
            protocol: client_protocol,
            model: &model,
            stream: summary.stream,
            started,
        };
        if let Err(refused) = self.check_model(asked) {
            return Ok(refused);
        }
        let (stream, include_usage) = (summary.stream, summary.include_usage);
        let has_stream_options = summary.has_stream_options;

        let now = Instant::now();
        let seed = self
            .seeds
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        let plan = self
            .lock_router()
            .plan(&model, now, seed, |spec| endpoint.served_by(spec.protocol));
        if !plan.known {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!(
                    "the model `{}` does not exist or no upstream serves it for {}; \
                     GET /v1/models lists the models Gate routes",
                    bounded_echo(&model, MAX_ECHO_CHARS),
                    endpoint.label()
                ),
            ));
        }
        if plan.candidates.is_empty() {
            let echoed = bounded_echo(&model, MAX_ECHO_CHARS);
            return Ok(self.no_candidate(client_protocol, &echoed, &plan, now));
        }
        let mut candidates = plan.candidates;

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
            check_conversion_bound(&body)
                .map_err(|message| Refusal(StatusCode::PAYLOAD_TOO_LARGE, message))?;
            let estimate = convert::estimate_count_tokens(&body)
                .map_err(|message| Refusal(StatusCode::BAD_REQUEST, message))?;
            let mut out = Response::new(full_body(Bytes::from(estimate)));
            out.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(out);
        }

        // A Gemini client's own request is what the estimates read (the Chat Completions body
        // beside it may be only a routing stub), and its countTokens costs nothing.
        let (admit_endpoint, admit_body) = match native {
            Some(n) if n.call == gate_core::llm::gemini::NativeCall::CountTokens => {
                (Endpoint::CountTokens, &n.body)
            }
            Some(n) => (endpoint, &n.body),
            None => (endpoint, &body),
        };
        let (mut charge, admission) = match self
            .admit(asked, admit_endpoint, admit_body, &mut candidates, snapshot)
            .await
        {
            Ok(admitted) => admitted,
            Err(refused) => return Ok(refused),
        };
        let max_response = snapshot.limits.max_response_bytes;
        let mut last_failure = match native.and_then(|n| n.native_only.as_ref()) {
            // Said when no native Gemini upstream serves the model.
            Some(why) => Refusal(StatusCode::BAD_REQUEST, why.clone()),
            None => Refusal(StatusCode::BAD_GATEWAY, "no upstream was tried".to_owned()),
        };
        let count = candidates.len();
        for (index, candidate) in candidates.into_iter().enumerate() {
            let is_last = index + 1 == count;
            let Some(upstream) = snapshot.upstreams.get(candidate.upstream.index()) else {
                continue;
            };
            if endpoint == Endpoint::CountTokens && upstream.protocol != WireProtocol::Anthropic {
                continue;
            }
            // A Gemini client's request goes to a native Gemini upstream as it is.
            let native_here = native.filter(|_| upstream.protocol == WireProtocol::Gemini);
            if native_here.is_none() && native.is_some_and(|n| n.native_only.is_some()) {
                continue;
            }
            // The slot goes back to the breaker when dropped unsettled: on `?`, on `continue`
            // before a verdict, and when the client goes away and this future is dropped.
            let Some(slot) = AttemptSlot::acquire(
                &self.router,
                candidate.upstream,
                &upstream.name,
                &candidate.upstream_model,
                Instant::now(),
            ) else {
                continue;
            };
            let (upstream_req, strip_usage) = if let Some(native) = native_here {
                let request = build_native_gemini_request(
                    &parts.headers,
                    upstream,
                    native.body.clone(),
                    &candidate.upstream_model,
                    native.call,
                )
                .map_err(|e| Refusal(StatusCode::BAD_GATEWAY, e))?;
                (request, false)
            } else {
                let upstream_body = build_upstream_body(
                    endpoint,
                    upstream.translation(endpoint),
                    &body,
                    &model,
                    &candidate.upstream_model,
                    upstream,
                )
                .map_err(|(status, message)| Refusal(status, message))?;
                // Usage on a pass-through chat stream whose client did not ask for it: asked of
                // upstreams whose `stream_usage` is on, and its extra chunk stripped again.
                let strip_usage = endpoint == Endpoint::ChatCompletions
                    && stream
                    && !include_usage
                    && !has_stream_options
                    && upstream.translation(endpoint) == Translation::PassThrough
                    && upstream.stream_usage;
                let upstream_body = match strip_usage
                    .then(|| with_include_usage(&upstream_body))
                    .flatten()
                {
                    Some(with_usage) => Bytes::from(with_usage),
                    None => upstream_body,
                };
                let strip_usage = strip_usage && upstream_body.len() != body.len();
                let upstream_req = build_upstream_request(
                    endpoint,
                    &parts.headers,
                    upstream,
                    upstream_body,
                    (&candidate.upstream_model, stream),
                )
                .map_err(|e| Refusal(StatusCode::BAD_GATEWAY, e))?;
                (upstream_req, strip_usage)
            };
            let attempt_started = Instant::now();
            let sent = gate_rt::timeout(
                &self.rt,
                snapshot.limits.idle_timeout,
                self.client().request(upstream_req),
            )
            .await;
            let response = match sent {
                Err(gate_rt::Elapsed) => {
                    self.count_attempt(&upstream.name, "timeout");
                    slot.settle(&AttemptOutcome::Timeout, None);
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
                    self.count_attempt(&upstream.name, "connect_error");
                    slot.settle(&AttemptOutcome::ConnectError, None);
                    let error = self.scrub_str(snapshot, &error_chain(&e));
                    tracing::warn!(upstream = %upstream.name, %error, "upstream request failed");
                    last_failure = Refusal(
                        StatusCode::BAD_GATEWAY,
                        format!("upstream `{}` could not be reached: {error}", upstream.name),
                    );
                    continue;
                }
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            let outcome = AttemptOutcome::HttpStatus(status.as_u16());
            let retry_after = retry_after(response.headers());
            if outcome.should_failover() && !is_last {
                self.count_attempt(&upstream.name, "failover_status");
                slot.settle(&outcome, retry_after);
                let (_, body) = response.into_parts();
                let bytes = collect_with_timeout(
                    &self.rt,
                    body,
                    snapshot.limits.idle_timeout,
                    max_response,
                )
                .await
                .unwrap_or_default();
                let message = upstream_message(&bytes)
                    .map(|m| self.scrub_str(snapshot, &m))
                    .unwrap_or_default();
                tracing::warn!(upstream = %upstream.name, %status, %message, "upstream failed; trying the next one");
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
            self.count_attempt(&upstream.name, outcome_label);
            self.lock_router()
                .record_latency(candidate.upstream, attempt_started.elapsed());
            // A success is judged when the answer is through (a stream may still break);
            // an error status is judged now.
            let slot = if status.is_success() {
                Some(slot)
            } else {
                slot.settle(&outcome, retry_after);
                None
            };
            charge.answered_by(upstream, &candidate.upstream_model);
            let mut out = self
                .respond(
                    endpoint,
                    client_protocol,
                    upstream,
                    &model,
                    (stream, include_usage, strip_usage),
                    response,
                    started,
                    slot,
                    charge,
                    native_here.map(|n| n.call),
                    snapshot,
                )
                .await;
            if native_here.is_some() {
                // The Gemini front door passes this answer on as it is.
                out.extensions_mut().insert(NativeGeminiAnswer);
            }
            admission.decorate(client_protocol, &mut out);
            return Ok(out);
        }
        charge.finish_unanswered(last_failure.0, "upstream_error");
        Err(last_failure)
    }

    /// The answer when routing admits no candidate now: 429 with `retry-after` when the
    /// upstreams serving the model are rate limiting it, else 503 (with `retry-after` when a
    /// circuit's reopening time is known).
    fn no_candidate(
        &self,
        protocol: WireProtocol,
        model: &str,
        plan: &AttemptPlan,
        now: Instant,
    ) -> Response<Body> {
        let seconds = |until: Instant| {
            until
                .saturating_duration_since(now)
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64
        };
        let (status, message, retry) = match (plan.rate_limited_until, plan.open_until) {
            (Some(until), _) => (
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "every upstream serving `{model}` is rate limiting it; retry after {} s",
                    seconds(until)
                ),
                Some(seconds(until)),
            ),
            (None, open) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "every upstream serving `{model}` is failing (circuit open); try again shortly"
                ),
                open.map(seconds),
            ),
        };
        tracing::info!(%status, %message, "request refused");
        let mut response = error_response(protocol, status, &message);
        if let Some(retry) = retry {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(retry));
        }
        response
    }
}

/// The endpoint label of usage records: `gemini` for the Gemini front door (which enters
/// through Chat Completions), else the endpoint's own.
fn policy_label(endpoint: Endpoint, parts: &http::request::Parts) -> &'static str {
    if parts.uri.path().starts_with("/v1beta/") {
        "gemini"
    } else {
        endpoint.label()
    }
}

/// How many characters of a client-supplied name (a model) an error message or log line
/// echoes.
pub(super) const MAX_ECHO_CHARS: usize = 200;
