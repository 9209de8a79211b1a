//! Talking to an upstream: the request Gate sends (allow-listed headers, the upstream's own
//! key, the pass-through or converted body), reading a buffered answer, and mapping its
//! status for the client.

use std::time::Duration;

use bytes::Bytes;
use gate_core::route::WireProtocol;
use gate_rt::Runtime;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::{Endpoint, UpstreamTarget, DEFAULT_ANTHROPIC_VERSION};
use crate::convert;

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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
pub(super) fn map_upstream_status(status: StatusCode) -> StatusCode {
    match status.as_u16() {
        429 => StatusCode::TOO_MANY_REQUESTS,
        503 | 529 => StatusCode::SERVICE_UNAVAILABLE,
        504 => StatusCode::GATEWAY_TIMEOUT,
        s if s >= 500 => StatusCode::BAD_GATEWAY,
        _ => status,
    }
}

pub(super) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

pub(super) async fn collect_with_timeout<R: Runtime>(
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
pub(super) const FORWARDED_REQUEST_HEADERS: &[&str] =
    &["accept", "user-agent", "anthropic-beta", "openai-beta"];

pub(super) fn build_upstream_request(
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

pub(super) const FORWARDED_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "retry-after",
    "x-request-id",
    "request-id",
    "openai-processing-ms",
];

pub(super) fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
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
pub(super) fn build_upstream_body(
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
