//! A fast mock LLM provider, OpenAI- and Anthropic-shaped, for the end-to-end tests
//! (`tests/e2e/`) and as the "direct to mock" baseline of the benchmark.
//!
//! It owns: the HTTP server, request recording, fault injection and upstream-key checks.
//! The response shapes live in `mock_upstream/openai.rs` and `mock_upstream/anthropic.rs`;
//! shared helpers (reply text, token counts, tool arguments, SSE framing) in
//! `mock_upstream/common.rs`. It must not sleep or do anything slow per request unless a
//! behaviour asks for it, and it keeps connections alive, so it can stand as a benchmark baseline.
//!
//! # Running
//!
//! ```text
//! cargo run -p gate-daemon --example mock_upstream -- --port 0 \
//!     [--expect-key sk-upstream-test] [--expect-anthropic-key sk-ant-upstream-test] \
//!     [--models gpt-4o-mini,claude-mock] [--record-limit 10000]
//! ```
//!
//! Once bound it prints exactly one line on stdout, `listening http://127.0.0.1:PORT`, then serves
//! until killed. It only binds loopback unless `--host` says otherwise.
//!
//! # Provider API (shapes as the real APIs, so the official SDKs parse them)
//!
//! OpenAI-style (errors `{"error":{"message","type","param","code"}}`):
//! - `POST /v1/chat/completions`: plain; `stream: true` (chunks, `stream_options.include_usage`
//!   adds the final usage chunk, then `data: [DONE]`). If the request has `tools` (and
//!   `tool_choice` is not `"none"` and the last message is not a tool result) it answers with a
//!   call to the first tool with JSON arguments made from its schema; streamed as argument
//!   fragments.
//! - `POST /v1/completions` (plain and streamed), `POST /v1/embeddings` (deterministic unit
//!   vectors derived from the input text; `encoding_format: "base64"` honoured; `dimensions`
//!   honoured up to 4096, default 16), `GET /v1/models`.
//! - `POST /v1/responses`: plain and streamed with the real event names (`response.created`,
//!   `response.in_progress`, `response.output_item.added`, `response.content_part.added`,
//!   `response.output_text.delta`, ..., `response.completed`), function calls when tools are given.
//!
//! Anthropic-style (errors `{"type":"error","error":{"type","message"}}`):
//! - `POST /v1/messages`: plain; `stream: true` with the real event sequence (`message_start`,
//!   `content_block_start`, `ping`, `content_block_delta`..., `content_block_stop`,
//!   `message_delta`, `message_stop`); `tool_use` when tools are given, streamed as
//!   `input_json_delta`.
//! - `POST /v1/messages/count_tokens`; `GET /v1/models` when the request carries `anthropic-version`.
//!
//! Gemini-style (Google's `v1beta`; errors `{"error":{"code","message","status"}}`; key in
//! `x-goog-api-key` or `?key=`, checked against `--expect-gemini-key`, else `--expect-key`):
//! - `/v1beta/openai/...`: Google's OpenAI-compatible endpoint, answered like `/v1/...` with
//!   the Gemini key as a Bearer token.
//! - `POST /v1beta/models/{m}:generateContent`, `:streamGenerateContent` (`?alt=sse`: SSE;
//!   without it: one JSON array sent in pieces), `:countTokens`; `GET /v1beta/models[/{m}]`.
//!   `functionCall` parts when `functionDeclarations` are given.
//!
//! Every request is checked as strictly as the real provider checks it (`mock_upstream/validate.rs`):
//! unknown top-level fields, unknown roles, `max_tokens` on OpenAI reasoning models (o1, o3, o4,
//! gpt-5) are refused with a 400 in the provider's shape.
//!
//! The reply text is `mock reply: <text of the last user message>` (first 200 characters), so a
//! test can see its prompt went through. Token counts are word counts.
//!
//! # Upstream keys
//!
//! With `--expect-key K`, OpenAI-style requests must carry `Authorization: Bearer K` and
//! Anthropic-style ones `x-api-key: K` or `Authorization: Bearer K` (the current `anthropic` SDK sends
//! the latter; K is the `--expect-anthropic-key` value when given) plus an
//! `anthropic-version` header; otherwise 401 in the provider's error shape (400 when only
//! `anthropic-version` is missing). Without the flags any key is accepted.
//!
//! # Control API (never recorded, never key-checked)
//!
//! - `GET /_mock/requests`: JSON array of every provider request received, oldest first (at most
//!   `--record-limit`, oldest dropped; 0 disables recording):
//!   `{"id", "method", "path", "query", "headers": [[name, value], ...], "body_b64",
//!   "received_at", "events_sent_at": [..], "behaviour"}`. Times are Unix seconds (float, wall
//!   clock): `received_at` when the request head arrived, `events_sent_at` when each body chunk
//!   (one SSE event for streams) was handed to the connection for writing.
//! - `DELETE /_mock/requests`: forget them.
//! - `POST /_mock/behaviour` with a JSON rule (all fields optional):
//!   ```json
//!   {"model": "gpt-x", "path": "/v1/chat/completions", "times": 1,
//!    "status": 500, "retry_after": 1, "delay_ms": 0, "reset": false,
//!    "pause_ms": 0, "break_after": null, "with_tool": null, "tool_arguments": null}
//!   ```
//!   `with_tool: NAME` (matching) applies only to requests that offer a tool of that name and
//!   whose last turn is not a tool result; the answer is then a call to NAME with
//!   `tool_arguments` (default: made from its schema). That is how a test scripts an agent turn.
//!   Matching: `model` (the request body's `model`) and `path`, when given, must equal the
//!   request's. Rules are tried in the order they were added; the first that matches and has
//!   `times` left (absent = forever) applies and uses up one of its `times`. Effects:
//!   `delay_ms` waits before the response head; `reset` then drops the connection with a TCP RST
//!   and no response; `status` answers with that status and an error body in the provider's shape
//!   (plus `retry-after` when `retry_after` is set); otherwise the normal answer is sent with
//!   `pause_ms` between stream events and, with `break_after: N`, the connection is cut once the
//!   first N events are flushed (no clean end of stream; applies to streamed answers only).
//!   Answers `{"id": N}`. A slow upstream for timeout tests is `delay_ms` larger than the
//!   client's timeout.
//! - `GET /health` answers `{"status":"ok"}` (readiness probe; not recorded).
//! - `GET /_mock/behaviour` lists the rules; `DELETE /_mock/behaviour` removes them all.
//! - A single request may also carry its own rule in the header `x-mock-behaviour: <json>`
//!   (matching fields ignored); it takes precedence over the registered rules. Through a gateway
//!   that does not forward unknown headers, use `POST /_mock/behaviour` instead.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

#[path = "mock_upstream/anthropic.rs"]
mod anthropic;
#[path = "mock_upstream/common.rs"]
mod common;
#[path = "mock_upstream/control.rs"]
mod control;
#[path = "mock_upstream/gemini.rs"]
mod gemini;
#[path = "mock_upstream/openai.rs"]
mod openai;
#[path = "mock_upstream/validate.rs"]
mod validate;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use control::{Behaviour, Recorder};

/// A mock LLM provider (OpenAI and Anthropic shapes) for tests and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "mock_upstream")]
struct Args {
    /// Address to bind (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to bind; 0 picks a free one (printed on stdout).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Upstream key every request must carry (Bearer for OpenAI-style, x-api-key for Anthropic).
    #[arg(long)]
    expect_key: Option<String>,
    /// A different key for Anthropic-style requests (defaults to --expect-key).
    #[arg(long)]
    expect_anthropic_key: Option<String>,
    /// A different key for Gemini-style requests (`x-goog-api-key` or `?key=`; defaults to --expect-key).
    #[arg(long)]
    expect_gemini_key: Option<String>,
    /// Models listed by GET /v1/models (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gpt-4o-mini,text-embedding-3-small,claude-mock"
    )]
    models: Vec<String>,
    /// How many requests to keep for GET /_mock/requests (0: record nothing).
    #[arg(long, default_value_t = 10_000)]
    record_limit: usize,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// Which provider's API a request speaks: decides the error shape and the key check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    OpenAi,
    Anthropic,
    Gemini,
    /// Google's OpenAI-compatible endpoint: OpenAI shapes, the Gemini key as a Bearer token.
    GoogleOpenAi,
}

/// The response body: a list of chunks, each written as its own frame, optionally paced.
pub type MockBody = BoxBody<Bytes, io::Error>;

/// State shared by every connection.
pub struct Mock {
    pub openai_key: Option<String>,
    pub anthropic_key: Option<String>,
    pub gemini_key: Option<String>,
    pub models: Vec<String>,
    pub recorder: Recorder,
    pub rules: control::Rules,
    pub ids: AtomicU64,
}

impl Mock {
    /// A fresh id suffix for response objects.
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder.build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> io::Result<()> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.port)).await?;
    let addr = listener.local_addr()?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening http://{addr}")?;
        out.flush()?;
    }
    let anthropic_key = args
        .expect_anthropic_key
        .clone()
        .or_else(|| args.expect_key.clone());
    let mock = Arc::new(Mock {
        openai_key: args.expect_key,
        anthropic_key,
        gemini_key: args.expect_gemini_key,
        models: args.models,
        recorder: Recorder::new(args.record_limit),
        rules: control::Rules::default(),
        ids: AtomicU64::new(1),
    });
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("mock_upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mock = mock.clone();
        tokio::spawn(async move {
            let reset = Arc::new(AtomicBool::new(false));
            let io = TokioIo::new(ResettableStream {
                inner: stream,
                reset: reset.clone(),
            });
            let service = hyper::service::service_fn(move |req| {
                let mock = mock.clone();
                let reset = reset.clone();
                async move {
                    match handle(&mock, req).await {
                        Outcome::Respond(response) => Ok(response),
                        Outcome::Reset => {
                            reset.store(true, Ordering::SeqCst);
                            Err(io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                "mock: reset as asked",
                            ))
                        }
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, service)
                .await;
        });
    }
}

/// What the handler decided.
enum Outcome {
    Respond(Response<MockBody>),
    /// Drop the connection with a TCP RST, without a response.
    Reset,
}

/// The accepted socket; when a behaviour asked for a reset, dropping it sends a RST.
struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The largest request body the mock reads (bigger ones get 413).
const MAX_REQUEST_BODY: usize = 256 * 1024 * 1024;

async fn handle(mock: &Arc<Mock>, req: Request<Incoming>) -> Outcome {
    let received_at = common::unix_now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();

    if path == "/health" {
        return Outcome::Respond(common::json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        ));
    }
    if path.starts_with("/_mock/") {
        let body = match read_body(body).await {
            Ok(body) => body,
            Err(e) => return Outcome::Respond(control::plain_error(StatusCode::BAD_REQUEST, &e)),
        };
        return Outcome::Respond(control::handle(mock, &parts.method, &path, &body));
    }

    // Google's OpenAI-compatible endpoint (`/v1beta/openai/...`): OpenAI shapes, Gemini key.
    let google_compat = path.starts_with("/v1beta/openai/");
    let path = match path.strip_prefix("/v1beta/openai/") {
        Some(rest) => format!("/v1/{rest}"),
        None => path,
    };
    let protocol = protocol_of(&path, &parts.headers);
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(e) => {
            return Outcome::Respond(error_response(
                protocol,
                StatusCode::PAYLOAD_TOO_LARGE,
                &e,
                None,
            ))
        }
    };
    let json: Option<serde_json::Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    let model = match gemini::parse_path(&path) {
        Some(
            gemini::Call::Generate(m)
            | gemini::Call::Stream(m)
            | gemini::Call::CountTokens(m)
            | gemini::Call::Get(m),
        ) => Some(m.to_owned()),
        _ => json
            .as_ref()
            .and_then(|v| v.get("model"))
            .and_then(|m| m.as_str())
            .map(str::to_owned),
    };

    let header_rule = parts
        .headers
        .get("x-mock-behaviour")
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            serde_json::from_str::<Behaviour>(s)
                .map_err(|e| format!("bad x-mock-behaviour header: {e}"))
        });
    let behaviour = match header_rule {
        Some(Ok(b)) => Some(b),
        Some(Err(message)) => {
            return Outcome::Respond(error_response(
                protocol,
                StatusCode::BAD_REQUEST,
                &message,
                None,
            ));
        }
        None => mock
            .rules
            .take_match(model.as_deref(), &path, json.as_ref()),
    };

    let record_id = mock
        .recorder
        .record(&parts, &body, received_at, behaviour.as_ref());

    let behaviour = behaviour.unwrap_or_default();
    if let Some(delay) = behaviour.delay_ms.filter(|d| *d > 0) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if behaviour.reset {
        return Outcome::Reset;
    }
    if let Some(status) = behaviour.status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = format!("mock: injected status {}", status.as_u16());
        return Outcome::Respond(error_response(
            protocol,
            status,
            &message,
            behaviour.retry_after,
        ));
    }
    let key_protocol = if google_compat {
        Protocol::GoogleOpenAi
    } else {
        protocol
    };
    if let Err((status, message)) = check_key(mock, key_protocol, &parts.headers, parts.uri.query())
    {
        return Outcome::Respond(error_response(protocol, status, message, None));
    }
    if let Err(message) = validate(&parts.method, &path, json.as_ref(), &parts.headers) {
        return Outcome::Respond(error_response(
            protocol,
            StatusCode::BAD_REQUEST,
            &message,
            None,
        ));
    }
    let scripted = behaviour.forced_call();

    let pacing = common::Pacing {
        pause: Duration::from_millis(behaviour.pause_ms.unwrap_or(0)),
        break_after: behaviour.break_after,
        recorder: record_id.map(|id| (mock.clone(), id)),
    };
    let query = parts.uri.query().unwrap_or("");
    let answer = route(
        mock,
        &parts.method,
        (&path, query),
        protocol,
        json.as_ref(),
        &body,
        scripted.as_ref(),
    );
    Outcome::Respond(match answer {
        Ok(answer) => answer.into_response(pacing),
        Err((status, message)) => error_response(protocol, status, &message, None),
    })
}

/// Dispatches a provider request to the shape builders.
fn route(
    mock: &Mock,
    method: &Method,
    (path, query): (&str, &str),
    protocol: Protocol,
    json: Option<&serde_json::Value>,
    raw: &[u8],
    scripted: Option<&common::ForcedCall>,
) -> Result<common::Answer, (StatusCode, String)> {
    let need_json = || -> Result<&serde_json::Value, (StatusCode, String)> {
        match json {
            Some(v) if v.is_object() => Ok(v),
            _ if raw.is_empty() => Err((
                StatusCode::BAD_REQUEST,
                "the request body is empty; expected JSON".into(),
            )),
            _ => Err((
                StatusCode::BAD_REQUEST,
                "the request body is not a JSON object".into(),
            )),
        }
    };
    if let Some(call) = gemini::parse_path(path) {
        return match (method, call) {
            (&Method::GET, gemini::Call::List) => Ok(gemini::models(mock)),
            (&Method::GET, gemini::Call::Get(m)) => gemini::model(mock, m),
            (&Method::POST, gemini::Call::Generate(m)) => {
                gemini::generate(mock, m, need_json()?, None, scripted)
            }
            (&Method::POST, gemini::Call::Stream(m)) => {
                let sse = query.split('&').any(|kv| kv == "alt=sse");
                gemini::generate(mock, m, need_json()?, Some(sse), scripted)
            }
            (&Method::POST, gemini::Call::CountTokens(_)) => gemini::count_tokens(need_json()?),
            _ => Err((
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed on {path}"),
            )),
        };
    }
    match (method, path) {
        (&Method::GET, "/v1/models") => Ok(match protocol {
            Protocol::Anthropic => anthropic::models(mock),
            _ => openai::models(mock),
        }),
        (&Method::POST, "/v1/chat/completions") => openai::chat(mock, need_json()?, scripted),
        (&Method::POST, "/v1/completions") => openai::completions(mock, need_json()?),
        (&Method::POST, "/v1/embeddings") => openai::embeddings(need_json()?),
        (&Method::POST, "/v1/responses") => openai::responses(mock, need_json()?, scripted),
        (&Method::POST, "/v1/messages") => anthropic::messages(mock, need_json()?, scripted),
        (&Method::POST, "/v1/messages/count_tokens") => anthropic::count_tokens(need_json()?),
        (
            _,
            "/v1/models"
            | "/v1/chat/completions"
            | "/v1/completions"
            | "/v1/embeddings"
            | "/v1/responses",
        )
        | (_, "/v1/messages" | "/v1/messages/count_tokens") => Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed on {path}"),
        )),
        _ => Err((
            StatusCode::NOT_FOUND,
            format!("no route for {method} {path}"),
        )),
    }
}

/// The provider-strict checks of `validate.rs` for the request shapes that have them.
fn validate(
    method: &Method,
    path: &str,
    json: Option<&serde_json::Value>,
    headers: &HeaderMap,
) -> Result<(), String> {
    let (Some(json), &Method::POST) = (json, method) else {
        return Ok(());
    };
    match path {
        "/v1/chat/completions" => validate::validate_chat_request(json),
        "/v1/messages" => validate::validate_messages_request(json, headers),
        "/v1/responses" => validate::validate_responses_request(json),
        _ => match gemini::parse_path(path) {
            Some(gemini::Call::Generate(_) | gemini::Call::Stream(_)) => {
                validate::validate_gemini_request(json)
            }
            Some(gemini::Call::CountTokens(_)) => validate::validate_gemini_count_tokens(json),
            _ => Ok(()),
        },
    }
}

/// Gemini paths (`/v1beta/...`) speak Gemini; Anthropic paths, or any request that carries
/// `anthropic-version`, speak Anthropic.
fn protocol_of(path: &str, headers: &HeaderMap) -> Protocol {
    if path.starts_with("/v1beta/") {
        Protocol::Gemini
    } else if path.starts_with("/v1/messages") || headers.contains_key("anthropic-version") {
        Protocol::Anthropic
    } else {
        Protocol::OpenAi
    }
}

/// Checks the upstream key; on failure, the status and message to answer with.
fn check_key(
    mock: &Mock,
    protocol: Protocol,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(), (StatusCode, &'static str)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match protocol {
        Protocol::Gemini => {
            // Google's key: the Gemini key if given, else the OpenAI-style one.
            let Some(expected) = mock.gemini_key.as_ref().or(mock.openai_key.as_ref()) else {
                return Ok(());
            };
            let from_query = query.and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("key="))
                    .map(str::to_owned)
            });
            let presented = header("x-goog-api-key").map(str::to_owned).or(from_query);
            match presented {
                Some(key) if key == *expected => Ok(()),
                None => Err((
                    StatusCode::FORBIDDEN,
                    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                )),
                Some(_) => Err((
                    StatusCode::BAD_REQUEST,
                    "API key not valid. Please pass a valid API key.",
                )),
            }
        }
        Protocol::OpenAi | Protocol::GoogleOpenAi => {
            let expected = if protocol == Protocol::GoogleOpenAi {
                mock.gemini_key.as_ref().or(mock.openai_key.as_ref())
            } else {
                mock.openai_key.as_ref()
            };
            let Some(expected) = expected else {
                return Ok(());
            };
            let presented = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
            match presented {
                Some(key) if key == expected.as_str() => Ok(()),
                None => Err((
                    StatusCode::UNAUTHORIZED,
                    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                )),
                Some(_) => Err((StatusCode::UNAUTHORIZED, "Incorrect API key provided.")),
            }
        }
        Protocol::Anthropic => {
            let Some(expected) = &mock.anthropic_key else {
                return Ok(());
            };
            // The real API takes the key as `x-api-key` or, as current SDKs send it, as a Bearer token.
            let presented = header("x-api-key")
                .or_else(|| header("authorization").and_then(|v| v.strip_prefix("Bearer ")));
            if presented != Some(expected.as_str()) {
                return Err((StatusCode::UNAUTHORIZED, "invalid x-api-key"));
            }
            if header("anthropic-version").is_none() {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "anthropic-version: header is required",
                ));
            }
            Ok(())
        }
    }
}

/// An error in the provider's own shape.
pub fn error_response(
    protocol: Protocol,
    status: StatusCode,
    message: &str,
    retry_after: Option<u64>,
) -> Response<MockBody> {
    let value = match protocol {
        Protocol::OpenAi | Protocol::GoogleOpenAi => {
            let (kind, code) = match status.as_u16() {
                401 => (
                    "invalid_request_error",
                    serde_json::json!("invalid_api_key"),
                ),
                404 => (
                    "invalid_request_error",
                    serde_json::json!("model_not_found"),
                ),
                429 => ("requests", serde_json::json!("rate_limit_exceeded")),
                400..=499 => ("invalid_request_error", serde_json::Value::Null),
                _ => ("server_error", serde_json::Value::Null),
            };
            serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        Protocol::Anthropic => {
            let kind = match status.as_u16() {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                503 | 529 => "overloaded_error",
                _ => "api_error",
            };
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        Protocol::Gemini => {
            let status_name = match status.as_u16() {
                400 | 413 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                405 => "UNIMPLEMENTED",
                429 => "RESOURCE_EXHAUSTED",
                503 | 529 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                _ => "INTERNAL",
            };
            serde_json::json!({"error": {"code": status.as_u16(), "message": message, "status": status_name}})
        }
    };
    let mut response = common::json_response(status, &value);
    if let Some(seconds) = retry_after {
        if let Ok(v) = http::HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
    }
    response
}

async fn read_body(body: Incoming) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(body, MAX_REQUEST_BODY);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(format!("cannot read the request body: {e}")),
    }
}
