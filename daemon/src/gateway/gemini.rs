//! The Gemini API front door (`/v1beta/models...`): Gemini clients (the `google-genai` SDKs,
//! Gemini CLI) on any routed model.
//!
//! A Gemini request goes through the ordinary request path ([`Gateway::dispatch_body`]) with
//! two bodies: the client's own ([`NativeGemini`]), sent untouched to native Gemini upstreams
//! (the `google` provider; only the model in the path and the key header are Gate's), and its
//! Chat Completions conversion (the hub, `gate_core::llm::gemini`) for every other upstream
//! (OpenAI-style as is, Anthropic through the existing converter). Failover may cross
//! between the two. A native answer comes back as it is (JSON, SSE or Google's JSON-array
//! stream); a converted one is converted back. What only Google can run (server tools such
//! as `googleSearch`, `countTokens`) goes to native upstreams only. Errors in Google's shape.
//! The Gate key comes in `x-goog-api-key` or `?key=` (never logged: the query is not logged
//! anywhere, and only [`gemini::scrub_key_from_query`] may put it in a message).
//!
//! Metrics count these requests under the `chat_completions` endpoint label (the path they
//! take). Must not: hold protocol logic (that is gate-core's) or buffer a stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use gate_core::llm::convert::{openai_request_to_anthropic, StreamEvent};
use gate_core::llm::endpoint::bounded_echo;
use gate_core::llm::gemini::{self, ModelsCall, NativeCall, OpenAiToGeminiStream};
use gate_core::llm::sse::SseParser;
use gate_core::route::WireProtocol;
use gate_rt::Runtime;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};

use super::body::{check_json_content_type, read_body_limited, Refusal};
use super::respond::NativeGeminiAnswer;
use super::upstream::check_conversion_bound;
use super::{Endpoint, Gateway, Snapshot};
use crate::web::{full_body, Body, Peer};

/// The largest upstream event the stream converter reads.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// A Gemini client's request as native Gemini upstreams get it: its own bytes and call.
pub(super) struct NativeGemini {
    /// The client's body, untouched.
    pub(super) body: Bytes,
    pub(super) call: NativeCall,
    /// Why only a native Gemini upstream may serve it (a Google server tool, `countTokens`,
    /// a request the converter refuses): the 400 when none can be tried.
    pub(super) native_only: Option<String>,
}

/// What each step of one Gemini request reads: its head, model and start, its caller, and
/// the configuration it was authenticated under (read once, so that a reload mid-request
/// does not mix two).
struct GeminiRequest<'a> {
    parts: &'a http::request::Parts,
    model: &'a str,
    started: Instant,
    caller: &'a crate::auth::Caller,
    snapshot: &'a Arc<Snapshot>,
}

impl GeminiRequest<'_> {
    /// The client's JSON body, under the configured size cap.
    async fn read_json_body(&self, body: Incoming) -> Result<Bytes, Refusal> {
        check_json_content_type(&self.parts.headers)?;
        read_body_limited(body, self.snapshot.limits.max_body_bytes).await
    }
}

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
        let snapshot = self.snapshot();
        let caller = match self.authenticate_in(&snapshot, &parts.headers, peer) {
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
        let request = GeminiRequest {
            parts: &parts,
            model: &model,
            started,
            caller: &caller,
            snapshot: &snapshot,
        };
        let result = match call {
            ModelsCall::CountTokens(_) => self.gemini_count_tokens(&request, body).await,
            ModelsCall::StreamGenerate(_) => {
                let sse = gemini::wants_sse(query.as_deref());
                self.gemini_generate(&request, body, Some(sse)).await
            }
            _ => self.gemini_generate(&request, body, None).await,
        };
        match result {
            Ok(response) => response,
            Err(Refusal(status, message)) => {
                tracing::info!(endpoint = "gemini", %status, %message, "request refused");
                google_error(status, &message)
            }
        }
    }

    /// Whether some upstream serving `model` speaks Gemini natively, and whether some does not.
    fn gemini_routes(&self, snapshot: &Snapshot, model: &str) -> (bool, bool) {
        let candidates = self.lock_router().all_candidates(model);
        let native = |c: &gate_core::route::Candidate| {
            snapshot
                .upstreams
                .get(c.upstream.index())
                .is_some_and(|u| u.protocol == WireProtocol::Gemini)
        };
        (
            candidates.iter().any(native),
            candidates.iter().any(|c| !native(c)),
        )
    }

    /// `countTokens`: Google's count from a native Gemini upstream serving the model, else an
    /// estimate made locally (the request converted to Anthropic's shape and counted like
    /// `/v1/messages/count_tokens` without an Anthropic upstream).
    async fn gemini_count_tokens(
        &self,
        request: &GeminiRequest<'_>,
        body: Incoming,
    ) -> Result<Response<Body>, Refusal> {
        let model = request.model;
        let body = request.read_json_body(body).await?;
        if self.gemini_routes(request.snapshot, model).0 {
            let native = NativeGemini {
                body,
                call: NativeCall::CountTokens,
                native_only: Some(format!(
                    "countTokens for `{}` is answered by a native Gemini upstream, and none \
                     could be tried",
                    bounded_echo(model, super::dispatch::MAX_ECHO_CHARS)
                )),
            };
            return self
                .gemini_dispatch_native_only(request, &native, false)
                .await;
        }
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
        request: &GeminiRequest<'_>,
        body: Incoming,
        stream: Option<bool>,
    ) -> Result<Response<Body>, Refusal> {
        let model = request.model;
        let body = request.read_json_body(body).await?;
        let call = match stream {
            None => NativeCall::Generate,
            Some(true) => NativeCall::StreamSse,
            Some(false) => NativeCall::StreamArray,
        };
        let (has_native, has_converted) = self.gemini_routes(request.snapshot, model);
        let mut native = NativeGemini {
            body,
            call,
            native_only: None,
        };
        if let Some(tool) = gemini::server_tool(&native.body) {
            let tool = bounded_echo(&tool, super::dispatch::MAX_ECHO_CHARS);
            native.native_only = Some(format!(
                "the Gemini server tool `{tool}` runs on Google's servers: it needs a native \
                 Gemini upstream (provider google), and none serves `{}` now; remove the tool \
                 or pick a model a google upstream serves",
                bounded_echo(model, super::dispatch::MAX_ECHO_CHARS)
            ));
        }
        // The Chat Completions body: what converted upstreams get and routing reads. Not
        // built when only native upstreams serve the model (their bodies are not parsed).
        let chat = if has_converted && native.native_only.is_none() {
            let converted = check_conversion_bound(&native.body)
                .map_err(|m| Refusal(StatusCode::PAYLOAD_TOO_LARGE, m))
                .and_then(|()| {
                    gemini::gemini_request_body_to_openai(&native.body, model, stream.is_some())
                        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, e.to_string()))
                });
            match converted {
                Ok(chat) => Some(chat),
                // A request the converter refuses may still suit a native upstream.
                Err(Refusal(_, why)) if has_native => {
                    native.native_only = Some(why);
                    None
                }
                Err(refusal) => return Err(refusal),
            }
        } else {
            None
        };
        match chat {
            Some(chat) => {
                self.gemini_dispatch(request, &native, Bytes::from(chat))
                    .await
            }
            None => {
                // Routes may change before dispatch (a reload): without a Chat body, only
                // native upstreams may be tried.
                native.native_only.get_or_insert_with(|| {
                    format!(
                        "no native Gemini upstream serves `{}` now",
                        bounded_echo(model, super::dispatch::MAX_ECHO_CHARS)
                    )
                });
                self.gemini_dispatch_native_only(request, &native, stream.is_some())
                    .await
            }
        }
    }

    /// Dispatches a request only native Gemini upstreams get (the Chat body carries only
    /// what routing reads).
    async fn gemini_dispatch_native_only(
        &self,
        request: &GeminiRequest<'_>,
        native: &NativeGemini,
        stream: bool,
    ) -> Result<Response<Body>, Refusal> {
        let routing = serde_json::to_vec(&serde_json::json!({
            "model": request.model, "stream": stream, "messages": []
        }))
        .unwrap_or_default();
        self.gemini_dispatch(request, native, Bytes::from(routing))
            .await
    }

    /// Dispatches with both bodies; a native answer goes back as it is, a Chat Completions
    /// one converted.
    async fn gemini_dispatch(
        &self,
        request: &GeminiRequest<'_>,
        native: &NativeGemini,
        chat: Bytes,
    ) -> Result<Response<Body>, Refusal> {
        let response = self
            .dispatch_body(
                Endpoint::ChatCompletions,
                request.parts,
                chat,
                request.started,
                request.caller,
                Some(native),
                request.snapshot,
            )
            .await?;
        if response.extensions().get::<NativeGeminiAnswer>().is_some() {
            return Ok(response);
        }
        let stream = match native.call {
            NativeCall::StreamSse => Some(true),
            NativeCall::StreamArray => Some(false),
            NativeCall::Generate | NativeCall::CountTokens => None,
        };
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
                    converter: OpenAiToGeminiStream::new(request.model),
                    sse,
                    elements: 0,
                    pending: VecDeque::new(),
                    finished: false,
                };
                let mut out = Response::new(crate::web::stream_body(converting));
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
