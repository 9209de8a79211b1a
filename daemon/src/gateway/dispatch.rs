//! One LLM request from start to answer: authenticate, read the body, route its model,
//! try the candidates in turn (failover before the first byte), and count it.

use std::time::Instant;

use bytes::Bytes;
use gate_core::route::{AttemptOutcome, WireProtocol};
use gate_rt::Runtime;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::{check_json_content_type, drain_body, read_body_limited, Refusal};
use super::upstream::{
    build_upstream_body, build_upstream_request, collect_with_timeout, error_chain,
    is_event_stream, map_upstream_status,
};
use super::{Endpoint, Gateway};
use crate::convert;
use crate::errors::{error_response, upstream_message};
use crate::metrics::{EndpointLabels, RequestLabels};
use crate::web::{full_body, Body, Peer};

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

    pub(super) async fn handle_inner(
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
}
