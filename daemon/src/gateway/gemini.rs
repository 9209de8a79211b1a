//! The Gemini API front door (`/v1beta/models...`): Gemini clients (the `google-genai` SDKs,
//! Gemini CLI) on any routed model.
//!
//! A Gemini request is converted to Chat Completions (the hub, `gate_core::llm::gemini`) and
//! goes through the ordinary request path ([`Gateway::dispatch_body`]): routing, failover,
//! the upstream's own protocol (OpenAI-style as is, Anthropic through the existing
//! converter). The answer comes back converted: JSON, SSE (`?alt=sse`) or Google's JSON-array
//! stream; errors in Google's shape. The Gate key comes in `x-goog-api-key` or `?key=`
//! (never logged: the query is not logged anywhere, and only [`gemini::scrub_key_from_query`]
//! may put it in a message).
//!
//! Metrics count these requests under the `chat_completions` endpoint label (the path they
//! take). Must not: hold protocol logic (that is gate-core's) or buffer a stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use gate_core::llm::convert::{openai_request_to_anthropic, StreamEvent};
use gate_core::llm::gemini::{self, ModelsCall, OpenAiToGeminiStream};
use gate_core::llm::sse::SseParser;
use gate_rt::Runtime;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};

use super::body::{check_json_content_type, read_body_limited, Refusal};
use super::{Endpoint, Gateway};
use crate::web::{full_body, Body, Peer};

/// The largest upstream event the stream converter reads.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// An error answer in Google's shape.
pub fn google_error(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::from(gemini::error_body(
        status.as_u16(),
        message,
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}

fn json_response(bytes: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::from(bytes)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}

impl<R: Runtime> Gateway<R> {
    /// Serves one `/v1beta/models...` request.
    pub async fn handle_gemini(&self, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let Some(call) = gemini::parse_models_path(&path) else {
            return google_error(
                StatusCode::NOT_FOUND,
                "no such Gemini API method; Gate serves models.list, models.get, generateContent, streamGenerateContent and countTokens",
            );
        };
        // The Gate key: `x-goog-api-key`, else `?key=`; checked like any client credential.
        let query = parts.uri.query().map(str::to_owned);
        let key = parts
            .headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .or_else(|| {
                query
                    .as_deref()
                    .and_then(gemini::key_from_query)
                    .map(str::to_owned)
            });
        if let Some(key) = key {
            match HeaderValue::from_str(&key) {
                Ok(value) => {
                    parts.headers.insert("x-api-key", value);
                }
                Err(_) => {
                    return google_error(StatusCode::UNAUTHORIZED, "the API key is not valid")
                }
            }
        }
        parts.headers.remove("x-goog-api-key");
        let caller = match self.authenticate(&parts.headers, peer) {
            Ok(caller) => caller,
            Err(e) => return google_error(StatusCode::UNAUTHORIZED, &e.to_string()),
        };
        let (method, model) = match call {
            ModelsCall::List => (Method::GET, None),
            ModelsCall::Get(m) => (Method::GET, Some(m.to_owned())),
            ModelsCall::Generate(m)
            | ModelsCall::StreamGenerate(m)
            | ModelsCall::CountTokens(m) => (Method::POST, Some(m.to_owned())),
        };
        if parts.method != method {
            return google_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{path} accepts {method} only"),
            );
        }
        let mut routed = self.lock_router().list_models();
        // A key limited to some models sees only those.
        routed.retain(|m| caller.policy.models.allows(&m.id));
        match call {
            ModelsCall::List => {
                let models: Vec<_> = routed.iter().map(|m| model_resource(&m.id)).collect();
                return json_response(
                    serde_json::to_vec(&serde_json::json!({ "models": models }))
                        .unwrap_or_default(),
                );
            }
            ModelsCall::Get(m) => {
                return if routed.iter().any(|r| r.id == m) {
                    json_response(serde_json::to_vec(&model_resource(m)).unwrap_or_default())
                } else {
                    google_error(StatusCode::NOT_FOUND, &format!("models/{m} is not found"))
                };
            }
            _ => {}
        }
        let model = model.unwrap_or_default();
        let result = match call {
            ModelsCall::CountTokens(_) => self.gemini_count_tokens(&parts, body, &model).await,
            ModelsCall::StreamGenerate(_) => {
                let sse = gemini::wants_sse(query.as_deref());
                self.gemini_generate(&parts, body, &model, Some(sse), started, &caller)
                    .await
            }
            _ => {
                self.gemini_generate(&parts, body, &model, None, started, &caller)
                    .await
            }
        };
        match result {
            Ok(response) => response,
            Err(Refusal(status, message)) => {
                tracing::info!(endpoint = "gemini", %status, %message, "request refused");
                google_error(status, &message)
            }
        }
    }

    /// `countTokens`: an estimate made locally (the request converted to Anthropic's shape
    /// and counted like `/v1/messages/count_tokens` without an Anthropic upstream).
    async fn gemini_count_tokens(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        model: &str,
    ) -> Result<Response<Body>, Refusal> {
        check_json_content_type(&parts.headers)?;
        let snapshot = self.snapshot();
        let body = read_body_limited(body, snapshot.limits.max_body_bytes).await?;
        let bad = |e: String| Refusal(StatusCode::BAD_REQUEST, e);
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct CountTokens {
            #[serde(default, alias = "generate_content_request")]
            generate_content_request: Option<gemini::GenerateContentRequest>,
            #[serde(default)]
            contents: Vec<gemini::Content>,
        }
        let request: CountTokens = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        let request = request
            .generate_content_request
            .unwrap_or(gemini::GenerateContentRequest {
                contents: request.contents,
                ..Default::default()
            });
        let chat = gemini::gemini_request_to_openai(request, model, false)
            .map_err(|e| bad(e.to_string()))?;
        let anthropic = openai_request_to_anthropic(chat).map_err(|e| bad(e.to_string()))?;
        let anthropic = serde_json::to_vec(&anthropic).map_err(|e| bad(e.to_string()))?;
        let estimate = crate::convert::estimate_count_tokens(&anthropic).map_err(bad)?;
        let tokens = serde_json::from_slice::<serde_json::Value>(&estimate)
            .ok()
            .and_then(|v| v.get("input_tokens").and_then(serde_json::Value::as_u64))
            .unwrap_or(0);
        Ok(json_response(
            serde_json::to_vec(&serde_json::json!({ "totalTokens": tokens })).unwrap_or_default(),
        ))
    }

    /// `generateContent` (`stream: None`) and `streamGenerateContent` (`Some(sse)`).
    async fn gemini_generate(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        model: &str,
        stream: Option<bool>,
        started: Instant,
        caller: &crate::auth::Caller,
    ) -> Result<Response<Body>, Refusal> {
        check_json_content_type(&parts.headers)?;
        let snapshot = self.snapshot();
        let body = read_body_limited(body, snapshot.limits.max_body_bytes).await?;
        let chat = gemini::gemini_request_body_to_openai(&body, model, stream.is_some())
            .map_err(|e| Refusal(StatusCode::BAD_REQUEST, e.to_string()))?;
        let response = self
            .dispatch_body(
                Endpoint::ChatCompletions,
                parts,
                Bytes::from(chat),
                started,
                caller,
            )
            .await?;
        let (mut head, body) = response.into_parts();
        if !head.status.is_success() {
            // The path answered in OpenAI's error shape: keep the status and the message.
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let message = crate::errors::upstream_message(&bytes)
                .unwrap_or_else(|| format!("upstream error {}", head.status));
            let mut out = google_error(head.status, &message);
            if let Some(retry) = head.headers.get(http::header::RETRY_AFTER) {
                out.headers_mut()
                    .insert(http::header::RETRY_AFTER, retry.clone());
            }
            // The key's rate-limit headers on a refusal.
            copy_upstream_headers(&head.headers, out.headers_mut());
            return Ok(out);
        }
        head.headers.remove(http::header::CONTENT_LENGTH);
        match stream {
            None => {
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| Refusal(StatusCode::BAD_GATEWAY, e.to_string()))?
                    .to_bytes();
                let converted = gemini::openai_response_body_to_gemini(&bytes)
                    .map_err(|e| Refusal(StatusCode::BAD_GATEWAY, e.to_string()))?;
                let mut out = json_response(converted);
                copy_upstream_headers(&head.headers, out.headers_mut());
                Ok(out)
            }
            Some(sse) => {
                let converting = GeminiStreamBody {
                    inner: body,
                    parser: SseParser::new(MAX_EVENT_BYTES, MAX_EVENT_BYTES),
                    converter: OpenAiToGeminiStream::new(model),
                    sse,
                    elements: 0,
                    pending: VecDeque::new(),
                    finished: false,
                };
                let mut out = Response::new(converting.boxed());
                let content_type = if sse {
                    "text/event-stream"
                } else {
                    "application/json; charset=UTF-8"
                };
                out.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(content_type),
                );
                out.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-cache"),
                );
                copy_upstream_headers(&head.headers, out.headers_mut());
                Ok(out)
            }
        }
    }
}

/// Keeps the upstream request id and rate-limit headers the path already let through.
fn copy_upstream_headers(from: &http::HeaderMap, to: &mut http::HeaderMap) {
    for (name, value) in from {
        let n = name.as_str();
        if n == "x-request-id" || n == "request-id" || n.contains("ratelimit") {
            to.insert(name.clone(), value.clone());
        }
    }
}

/// The message of an error event the request path wrote into a broken stream
/// (`{"error": {"message": ...}}`), if `data` is one.
fn stream_error(data: &str) -> Option<String> {
    if !data.contains("\"error\"") {
        return None;
    }
    crate::errors::upstream_message(data.as_bytes())
}

fn model_resource(id: &str) -> serde_json::Value {
    serde_json::json!({
        "name": format!("models/{id}"),
        "baseModelId": id,
        "version": "gate",
        "displayName": id,
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
    })
}

/// A Chat Completions SSE body converted, event by event, into Gemini chunks: SSE
/// (`data: {...}\r\n\r\n`) or one JSON array sent in pieces (`[{...}`, `,\r\n{...}`, `]`).
struct GeminiStreamBody {
    inner: Body,
    parser: SseParser,
    converter: OpenAiToGeminiStream,
    sse: bool,
    elements: usize,
    pending: VecDeque<Bytes>,
    finished: bool,
}

impl GeminiStreamBody {
    fn frame(&mut self, events: Vec<StreamEvent>) {
        for event in events {
            let bytes = if self.sse {
                format!("data: {}\r\n\r\n", event.data)
            } else if self.elements == 0 {
                format!("[{}", event.data)
            } else {
                format!(",\r\n{}", event.data)
            };
            self.elements += 1;
            self.pending.push_back(Bytes::from(bytes));
        }
    }

    /// Ends the stream with an error element in Google's shape.
    fn fail(&mut self, message: &str) {
        let error = String::from_utf8_lossy(&gemini::error_body(502, message)).into_owned();
        self.frame(vec![StreamEvent {
            event: None,
            data: error,
        }]);
        if !self.sse {
            self.pending.push_back(Bytes::from_static(b"]"));
        }
        self.finished = true;
    }

    fn end(&mut self) {
        let events = self.converter.finish();
        self.frame(events);
        if !self.sse {
            let close = if self.elements == 0 { "[]" } else { "]" };
            self.pending.push_back(Bytes::from_static(close.as_bytes()));
        }
        self.finished = true;
    }
}

impl hyper::body::Body for GeminiStreamBody {
    type Data = Bytes;
    type Error = crate::web::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(bytes) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.end(),
                Poll::Ready(Some(Err(e))) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.parser.push(&data);
                        while let Some(event) = this.parser.next_event() {
                            match event {
                                Ok(event) => {
                                    if let Some(message) = stream_error(&event.data) {
                                        // A broken stream: end with Google's error, not a STOP.
                                        this.fail(&message);
                                        break;
                                    }
                                    let events = this.converter.handle_data(&event.data);
                                    this.frame(events);
                                }
                                Err(_) => continue,
                            }
                        }
                    }
                }
            }
        }
    }
}
