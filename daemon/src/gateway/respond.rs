//! Turns an upstream's answer into the client's: errors in the client's shape, streams
//! through [`StreamPipe`], buffered answers passed through or converted.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use gate_core::llm::sse::{SseFramer, SseParser, SseWatcher};
use gate_core::route::WireProtocol;
use gate_rt::Runtime;
use http::{HeaderValue, Response, StatusCode};

use super::attempt::AttemptSlot;
use super::policy::Charge;
use super::stream::{Mode, StreamPipe, SSE_MAX_EVENT, SSE_MAX_LINE};
use super::upstream::{
    check_conversion_bound, collect_with_timeout, copy_converted_response_headers,
    copy_response_headers, is_event_stream, is_json, map_upstream_status, ReadError,
};
use super::{Endpoint, Gateway, Snapshot, UpstreamTarget};
use crate::convert;
use crate::errors::{error_response, upstream_message};
use crate::web::{full_body, Body};
use gate_core::llm::endpoint::Translation;
use gate_core::llm::gemini::{GeminiArrayDecoder, NativeCall};
use gate_core::llm::usage::{usage_key_finder, Usage};
use gate_core::route::AttemptOutcome;
use std::sync::Arc;

/// Marks a response that came from a native Gemini upstream for a Gemini client's own
/// request (`gemini.rs` passes it on as it is).
#[derive(Debug, Clone, Copy)]
pub(super) struct NativeGeminiAnswer;

impl<R: Runtime> Gateway<R> {
    /// The client's answer from an upstream's `response` (an error status, a stream, or a
    /// whole body), with the request charged. The caller marks a native Gemini answer
    /// ([`NativeGeminiAnswer`]); no wrapper does it here, since each `async fn` level keeps
    /// its arguments twice in its state (issue 16: the request's future is moved per request).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn respond(
        &self,
        endpoint: Endpoint,
        client_protocol: WireProtocol,
        upstream: &UpstreamTarget,
        model: &str,
        (stream_requested, include_usage, strip_usage): (bool, bool, bool),
        response: Response<super::UpstreamBody<R>>,
        started: Instant,
        slot: Option<AttemptSlot>,
        charge: Charge,
        native: Option<NativeCall>,
        snapshot: &Arc<Snapshot>,
    ) -> Response<Body> {
        let snapshot_idle = snapshot.limits.idle_timeout;
        let max_response = snapshot.limits.max_response_bytes;
        let status = response.status();
        let (parts, body) = response.into_parts();
        // A Gemini client's request on a native Gemini upstream: Google's answer as it is.
        let (translation, client_protocol) = match native {
            Some(_) => (Translation::PassThrough, WireProtocol::Gemini),
            None => (upstream.translation(endpoint), client_protocol),
        };
        let same_protocol = translation == Translation::PassThrough;
        let array_stream = native == Some(NativeCall::StreamArray);

        if !status.is_success() {
            // Error bodies are read under the same cap as answers; one that is too large or
            // broken is replaced by a message that says so.
            let (bytes, read_error) =
                match collect_with_timeout(&self.rt, body, snapshot_idle, max_response).await {
                    Ok(bytes) => (bytes, None),
                    Err(e) => (Bytes::new(), Some(e)),
                };
            // Upstream text may echo what Gate sent it (the provider key): scrubbed.
            let bytes = Bytes::from(self.scrub(snapshot, &bytes).into_owned());
            let message = match (upstream_message(&bytes), read_error) {
                (Some(message), _) => message,
                (None, Some(e)) => format!(
                    "upstream `{}` answered {status}, and its error body could not be read: {e}",
                    upstream.name
                ),
                (None, None) => format!("upstream `{}` answered {status}", upstream.name),
            };
            let client_status = if status.is_server_error() {
                map_upstream_status(status)
            } else {
                status
            };
            charge.finish_unanswered(client_status, "upstream_error");
            if same_protocol && status.is_client_error() && !bytes.is_empty() {
                let mut out = Response::new(full_body(bytes));
                *out.status_mut() = status;
                copy_response_headers(&parts.headers, out.headers_mut());
                return out;
            }
            // In the client's protocol, keeping what tells it when to come back.
            let mut out = error_response(client_protocol, client_status, &message);
            copy_converted_response_headers(
                &parts.headers,
                out.headers_mut(),
                client_protocol,
                upstream.protocol,
            );
            return out;
        }

        if is_event_stream(&parts.headers)
            || array_stream
            || (stream_requested && endpoint != Endpoint::CountTokens && !is_json(&parts.headers))
        {
            let converter = convert::stream_converter(translation, model, include_usage);
            let started_pipe = Instant::now();
            let mut pipe = StreamPipe {
                inner: body,
                rt: self.rt.clone(),
                idle: snapshot_idle,
                sleep: None,
                armed_at: started_pipe,
                last_data: started_pipe,
                client_protocol,
                upstream_protocol: upstream.protocol,
                mode: match converter {
                    None if array_stream => {
                        Mode::PassThroughArray(GeminiArrayDecoder::new(SSE_MAX_EVENT))
                    }
                    None if strip_usage => {
                        Mode::PassThroughStripUsage(SseFramer::new(SSE_MAX_LINE, SSE_MAX_EVENT))
                    }
                    None => Mode::PassThrough(SseWatcher::with_finder(
                        usage_key_finder(upstream.protocol),
                        SSE_MAX_EVENT,
                    )),
                    Some(c) => Mode::Convert(SseParser::new(SSE_MAX_LINE, SSE_MAX_EVENT), c),
                },
                pending: VecDeque::new(),
                pending_bytes: 0,
                primed: None,
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
                slot,
                secrets: self.scrubber(snapshot),
                stop: self.stream_stop.clone(),
                stop_id: self.stream_stop.next_id(),
                stop_waker: None,
                charge: Some(charge),
            };
            pipe.prime().await;
            let mut out = Response::new(crate::web::stream_body(pipe));
            copy_converted_response_headers(
                &parts.headers,
                out.headers_mut(),
                client_protocol,
                upstream.protocol,
            );
            out.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(if array_stream {
                    "application/json; charset=UTF-8"
                } else {
                    "text/event-stream"
                }),
            );
            out.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache"),
            );
            return out;
        }

        let bytes = match collect_with_timeout(&self.rt, body, snapshot_idle, max_response).await {
            Ok(bytes) => {
                if let Some(slot) = slot {
                    slot.settle(&AttemptOutcome::HttpStatus(status.as_u16()), None);
                }
                bytes
            }
            Err(e) => {
                if let Some(slot) = slot {
                    let outcome = match e {
                        // The upstream is up; the answer is only too large for Gate.
                        ReadError::TooLarge(_) => AttemptOutcome::HttpStatus(status.as_u16()),
                        _ => AttemptOutcome::FailedAfterFirstByte,
                    };
                    slot.settle(&outcome, None);
                }
                // The upstream may have billed the request: charged as far as is known.
                charge.finish(
                    StatusCode::BAD_GATEWAY,
                    Usage::default(),
                    Some("upstream_error"),
                );
                let what = match e {
                    ReadError::TooLarge(_) => "sent an answer Gate will not buffer",
                    _ => "broke off its answer",
                };
                tracing::warn!(upstream = %upstream.name, error = %e, "{what}");
                return error_response(
                    client_protocol,
                    StatusCode::BAD_GATEWAY,
                    &format!("upstream `{}` {what}: {e}", upstream.name),
                );
            }
        };
        let bytes = match self.scrub(snapshot, &bytes) {
            std::borrow::Cow::Borrowed(_) => bytes,
            std::borrow::Cow::Owned(scrubbed) => Bytes::from(scrubbed),
        };
        let mut usage = Usage::default();
        usage.observe(upstream.protocol, &bytes);
        self.metrics.add_usage(&upstream.name, model, &usage);
        let mut charge = charge;
        charge.on_bytes(bytes.len());
        charge.finish(status, usage, None);
        if same_protocol || endpoint == Endpoint::CountTokens {
            let mut out = Response::new(full_body(bytes));
            copy_response_headers(&parts.headers, out.headers_mut());
            return out;
        }
        if let Err(message) = check_conversion_bound(&bytes) {
            return error_response(
                client_protocol,
                StatusCode::BAD_GATEWAY,
                &format!(
                    "upstream `{}` sent an answer Gate could not convert: {message}",
                    upstream.name
                ),
            );
        }
        match convert::response(translation, &bytes, model) {
            Ok(converted) => {
                let mut out = Response::new(full_body(Bytes::from(converted)));
                copy_converted_response_headers(
                    &parts.headers,
                    out.headers_mut(),
                    client_protocol,
                    upstream.protocol,
                );
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
