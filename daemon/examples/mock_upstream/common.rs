//! Helpers shared by both provider shapes: the answer type and its (optionally paced) body,
//! the deterministic reply text, token counts and tool arguments. No HTTP routing here.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use serde_json::Value;

use crate::{Mock, MockBody};

/// Wall-clock time as Unix seconds (comparable with Python's `time.time()`).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Whole Unix seconds, for `created` fields.
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A JSON response with a known length.
pub fn json_response(status: StatusCode, value: &Value) -> Response<MockBody> {
    let bytes = Bytes::from(value.to_string());
    let mut response = Response::new(EventBody::once(bytes).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A provider answer before pacing is applied.
pub enum Answer {
    /// A JSON document.
    Json(Value),
    /// Server-sent events, each already framed (`event: ...\ndata: ...\n\n`).
    Sse(Vec<Bytes>),
    /// A JSON document sent in pieces (Gemini's stream without `alt=sse`).
    JsonStream(Vec<Bytes>),
}

enum Kind {
    Sse,
    Other,
}

/// How a stream is paced and cut, and where its send times are recorded.
pub struct Pacing {
    pub pause: Duration,
    pub break_after: Option<usize>,
    pub recorder: Option<(Arc<Mock>, u64)>,
}

impl Answer {
    pub fn into_response(self, pacing: Pacing) -> Response<MockBody> {
        let self_kind = match &self {
            Answer::Sse(_) => Kind::Sse,
            _ => Kind::Other,
        };
        match self {
            Answer::Json(value) => {
                let mut response = json_response(StatusCode::OK, &value);
                if let Some((mock, id)) = &pacing.recorder {
                    mock.recorder.event_sent(*id, unix_now());
                }
                response
                    .headers_mut()
                    .insert("x-request-id", http::HeaderValue::from_static("req_mock"));
                response
            }
            Answer::Sse(events) | Answer::JsonStream(events) => {
                let content_type = if matches!(self_kind, Kind::Sse) {
                    "text/event-stream; charset=utf-8"
                } else {
                    "application/json; charset=UTF-8"
                };
                let body = EventBody {
                    events: events.into(),
                    pause: pacing.pause,
                    break_after: pacing.break_after,
                    sent: 0,
                    waited_for: 0,
                    sleep: None,
                    recorder: pacing.recorder,
                    single: false,
                };
                let mut response = Response::new(body.boxed());
                let headers = response.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(content_type),
                );
                headers.insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-cache"),
                );
                headers.insert("x-request-id", http::HeaderValue::from_static("req_mock"));
                response
            }
        }
    }
}

/// SSE with an event name (Anthropic, Responses API).
pub fn named_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// SSE with data only (Chat Completions, Completions).
pub fn data_event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// How long a stream that is to be cut waits, after its last event, for that event to be flushed.
const FLUSH_BEFORE_BREAK: Duration = Duration::from_millis(50);

/// The body: each chunk its own frame, with an optional pause between chunks and an optional
/// cut after some of them. Send times go to the recorder.
pub struct EventBody {
    events: VecDeque<Bytes>,
    pause: Duration,
    break_after: Option<usize>,
    sent: usize,
    waited_for: usize,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    recorder: Option<(Arc<Mock>, u64)>,
    single: bool,
}

impl EventBody {
    /// A body of one chunk with an exact length.
    pub fn once(bytes: Bytes) -> Self {
        Self {
            events: VecDeque::from([bytes]),
            pause: Duration::ZERO,
            break_after: None,
            sent: 0,
            waited_for: 0,
            sleep: None,
            recorder: None,
            single: true,
        }
    }
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.events.is_empty() {
            return Poll::Ready(None);
        }
        if this.break_after.is_some_and(|n| this.sent >= n) {
            // Let hyper flush the events already handed over (it writes while the body is
            // pending), then cut: the client gets exactly `break_after` events.
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(FLUSH_BEFORE_BREAK)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
            this.events.clear();
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "mock: stream cut as asked",
            ))));
        }
        if this.sent > 0 && !this.pause.is_zero() && this.waited_for != this.sent {
            let pause = this.pause;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
            this.waited_for = this.sent;
        }
        let Some(chunk) = this.events.pop_front() else {
            return Poll::Ready(None);
        };
        this.sent += 1;
        if let Some((mock, id)) = &this.recorder {
            mock.recorder.event_sent(*id, unix_now());
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.events.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match (self.single, self.events.front()) {
            (true, Some(chunk)) => SizeHint::with_exact(chunk.len() as u64),
            (true, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// All text found in a content value: a string, or an array of blocks/parts with `text`
/// (also looks inside tool results' `content`).
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let texts: Vec<String> = parts
                .iter()
                .filter_map(|p| {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        Some(t.to_owned())
                    } else if let Some(inner) = p.get("content") {
                        Some(content_text(inner))
                    } else {
                        p.get("output").and_then(Value::as_str).map(str::to_owned)
                    }
                })
                .collect();
            texts.join(" ")
        }
        _ => String::new(),
    }
}

/// The deterministic reply to a prompt.
pub fn reply_text(last_user_text: &str) -> String {
    let prompt: String = last_user_text.chars().take(200).collect();
    let prompt = prompt.trim();
    if prompt.is_empty() {
        "mock reply: (empty prompt)".to_owned()
    } else {
        format!("mock reply: {prompt}")
    }
}

/// The reply split into stream deltas: one per word (with its trailing space).
pub fn text_deltas(text: &str) -> Vec<String> {
    let mut deltas = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if c == ' ' {
            deltas.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        deltas.push(current);
    }
    deltas
}

/// Word count of every string inside `value` (the mock's idea of tokens), at least 1.
pub fn count_words(value: &Value) -> u64 {
    fn walk(value: &Value, total: &mut u64) {
        match value {
            Value::String(s) => *total += s.split_whitespace().count() as u64,
            Value::Array(items) => items.iter().for_each(|v| walk(v, total)),
            Value::Object(map) => map.values().for_each(|v| walk(v, total)),
            _ => {}
        }
    }
    let mut total = 0;
    walk(value, &mut total);
    total.max(1)
}

/// Word count of a plain string, at least 1.
pub fn count_text_words(text: &str) -> u64 {
    (text.split_whitespace().count() as u64).max(1)
}

/// Arguments for a tool call, made from its JSON schema: each property gets a value of its
/// type (`"mock"`, the first enum value, 1, 1.5, true, [], {}).
pub fn tool_arguments(schema: Option<&Value>) -> Value {
    let mut args = serde_json::Map::new();
    if let Some(Value::Object(props)) = schema.and_then(|s| s.get("properties")) {
        for (name, prop) in props {
            let value = if let Some(first) = prop
                .get("enum")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
            {
                first.clone()
            } else {
                match prop.get("type").and_then(Value::as_str) {
                    Some("string") => Value::String("mock".into()),
                    Some("integer") => serde_json::json!(1),
                    Some("number") => serde_json::json!(1.5),
                    Some("boolean") => Value::Bool(true),
                    Some("array") => serde_json::json!([]),
                    Some("object") => serde_json::json!({}),
                    _ => Value::Null,
                }
            };
            args.insert(name.clone(), value);
        }
    }
    Value::Object(args)
}

/// Splits a string into about `pieces` fragments on character boundaries (as the providers
/// stream tool arguments).
pub fn fragments(text: &str, pieces: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    let size = chars.len().div_ceil(pieces.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// A tool call scripted by a behaviour rule (`with_tool`, `tool_arguments`).
#[derive(Clone, Debug)]
pub struct ForcedCall {
    pub name: String,
    /// `None`: arguments made from the tool's schema.
    pub arguments: Option<Value>,
}

/// The names of the tools a request offers, in any of the three shapes: Chat Completions
/// (`tools[].function.name`), Anthropic and Responses (`tools[].name`), Gemini
/// (`tools[].functionDeclarations[].name`, also `function_declarations`).
pub fn offered_tools(request: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for tool in request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = tool
            .get("name")
            .or_else(|| tool.get("function").and_then(|f| f.get("name")))
            .and_then(Value::as_str)
        {
            names.push(name.to_owned());
        }
        for decls in ["functionDeclarations", "function_declarations"] {
            for decl in tool
                .get(decls)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(name) = decl.get("name").and_then(Value::as_str) {
                    names.push(name.to_owned());
                }
            }
        }
    }
    names
}

/// Is the request's last turn a tool result, in any of the four request shapes (Chat `tool`
/// message, Anthropic `tool_result` block, Responses `function_call_output` item, Gemini
/// `functionResponse` part)?
pub fn last_turn_is_tool_result(request: &Value) -> bool {
    if let Some(last) = request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
    {
        if last.get("role").and_then(Value::as_str) == Some("tool") {
            return true;
        }
        return last
            .get("content")
            .and_then(Value::as_array)
            .is_some_and(|blocks| {
                blocks
                    .iter()
                    .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            });
    }
    if let Some(last) = request
        .get("input")
        .and_then(Value::as_array)
        .and_then(|i| i.last())
    {
        return matches!(
            last.get("type").and_then(Value::as_str),
            Some("function_call_output" | "custom_tool_call_output")
        );
    }
    if let Some(last) = request
        .get("contents")
        .and_then(Value::as_array)
        .and_then(|c| c.last())
    {
        return last
            .get("parts")
            .and_then(Value::as_array)
            .is_some_and(|parts| {
                parts.iter().any(|p| {
                    p.get("functionResponse").is_some() || p.get("function_response").is_some()
                })
            });
    }
    false
}

/// The arguments of a call to `name`: the scripted ones, or made from `schema`.
pub fn call_arguments(forced: Option<&ForcedCall>, schema: Option<&Value>) -> Value {
    forced
        .and_then(|f| f.arguments.clone())
        .unwrap_or_else(|| tool_arguments(schema))
}
