//! Talking to an upstream: the request Gate sends (allow-listed headers, the upstream's own
//! key, the pass-through or converted body), reading a buffered answer, and mapping its
//! status for the client.

use std::time::Duration;

use bytes::Bytes;
use gate_core::llm::endpoint::{self, Translation};
use gate_core::route::WireProtocol;
use gate_rt::Runtime;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as HttpBody;

use super::body::{Gather, TooLarge};
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

/// The status the client sees for an upstream's status
/// ([`gate_core::llm::endpoint::client_status_for_upstream`]).
pub(super) fn map_upstream_status(status: StatusCode) -> StatusCode {
    StatusCode::from_u16(endpoint::client_status_for_upstream(status.as_u16()))
        .unwrap_or(StatusCode::BAD_GATEWAY)
}

/// The upstream's `retry-after`, in seconds, when it gave one.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    endpoint::parse_retry_after_secs(value).map(Duration::from_secs)
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

/// Why a buffered upstream answer could not be read whole.
#[derive(Debug)]
pub(super) enum ReadError {
    /// Longer than the cap (`server.max_response_bytes`).
    TooLarge(u64),
    /// Silent for longer than the idle timeout.
    Idle(Duration),
    /// The connection failed.
    Broken(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::TooLarge(max) => write!(
                f,
                "the answer is larger than {max} bytes (server.max_response_bytes; raise it, or \
                 ask for a stream)"
            ),
            ReadError::Idle(idle) => write!(f, "no data for {idle:?}"),
            ReadError::Broken(message) => f.write_str(message),
        }
    }
}

/// Reads a buffered upstream body of at most `max` bytes, each chunk within `idle`.
pub(super) async fn collect_with_timeout<R: Runtime, B>(
    rt: &R,
    body: B,
    idle: Duration,
    max: u64,
) -> Result<Bytes, ReadError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut body = body;
    if body.size_hint().lower() > max {
        return Err(ReadError::TooLarge(max));
    }
    let mut gather = Gather::new(max);
    loop {
        match gate_rt::timeout(rt, idle, body.frame()).await {
            Err(_) => return Err(ReadError::Idle(idle)),
            Ok(None) => return Ok(gather.finish()),
            Ok(Some(Err(e))) => return Err(ReadError::Broken(e.to_string())),
            Ok(Some(Ok(frame))) => gather
                .frame(frame)
                .map_err(|TooLarge| ReadError::TooLarge(max))?,
        }
    }
}

/// The request to `upstream` (`(upstream_model, stream)`: a native Gemini upstream takes
/// both in its path).
pub(super) fn build_upstream_request(
    endpoint: Endpoint,
    client_headers: &HeaderMap,
    upstream: &UpstreamTarget,
    body: Bytes,
    (upstream_model, stream): (&str, bool),
) -> Result<Request<Full<Bytes>>, String> {
    let url = match upstream.protocol {
        WireProtocol::Gemini => format!(
            "{}{}",
            upstream.base_url,
            endpoint::gemini_upstream_path(upstream_model, stream)
        ),
        _ => {
            let path = upstream
                .translation(endpoint)
                .upstream_path(endpoint, upstream.protocol);
            // Built with the snapshot (issue 16); a URL that did not parse there is
            // formatted here, and its error reported.
            match upstream.fixed_uri(path) {
                Some(uri) => {
                    return upstream_request_to(
                        UpstreamUrl::Parsed(uri),
                        client_headers,
                        upstream,
                        body,
                    )
                }
                None => format!("{}{path}", upstream.base_url),
            }
        }
    };
    upstream_request_to(UpstreamUrl::Text(url), client_headers, upstream, body)
}

/// A native Gemini upstream's request for a Gemini client's `call`: the client's body as it
/// is, the model in the path.
pub(super) fn build_native_gemini_request(
    client_headers: &HeaderMap,
    upstream: &UpstreamTarget,
    body: Bytes,
    upstream_model: &str,
    call: gate_core::llm::gemini::NativeCall,
) -> Result<Request<Full<Bytes>>, String> {
    let url = format!(
        "{}{}",
        upstream.base_url,
        endpoint::gemini_native_path(upstream_model, call)
    );
    upstream_request_to(UpstreamUrl::Text(url), client_headers, upstream, body)
}

/// Where a request goes: a URI parsed with the snapshot, or a URL formatted for this request.
enum UpstreamUrl {
    Parsed(http::Uri),
    Text(String),
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamUrl::Parsed(uri) => write!(f, "{uri}"),
            UpstreamUrl::Text(url) => f.write_str(url),
        }
    }
}

/// `POST url` with the allow-listed client headers and the upstream's key.
fn upstream_request_to(
    url: UpstreamUrl,
    client_headers: &HeaderMap,
    upstream: &UpstreamTarget,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let builder = Request::builder().method(Method::POST);
    let mut builder = match &url {
        UpstreamUrl::Parsed(uri) => builder.uri(uri.clone()),
        UpstreamUrl::Text(text) => builder.uri(text.as_str()),
    };
    let headers = builder
        .headers_mut()
        .ok_or_else(|| format!("invalid upstream URL {:?}", url.to_string()))?;
    if let Some(host) = &upstream.host_header {
        headers.insert(http::header::HOST, host.clone());
    }
    for name in &upstream.forwarded_headers {
        if let Some(v) = client_headers.get(name) {
            headers.insert(name.clone(), v.clone());
        }
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The key in the header the protocol names, never in the URL (URLs end up in logs and
    // error messages), marked sensitive so no debug output shows it (built with the snapshot).
    match &upstream.auth_header {
        Ok(Some((name, value))) => {
            headers.insert(name.clone(), value.clone());
        }
        Ok(None) => {}
        Err(()) => {
            return Err(format!(
                "the api_key of upstream `{}` is not a valid header value",
                upstream.name
            ))
        }
    }
    if upstream.protocol == WireProtocol::Anthropic {
        let version = client_headers
            .get("anthropic-version")
            .cloned()
            .unwrap_or(HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION));
        headers.insert("anthropic-version", version);
    }
    builder
        .body(Full::new(body))
        .map_err(|e| format!("invalid upstream request to {url}: {e}"))
}

/// Copies the upstream response headers a client may see
/// ([`gate_core::llm::endpoint::forwards_response_header`]).
pub(super) fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if endpoint::forwards_response_header(name.as_str()) {
            to.insert(name.clone(), value.clone());
        }
    }
}

/// Copies the upstream response headers a client of `client` may see when Gate converted
/// from `upstream`, renamed to the client's protocol
/// ([`gate_core::llm::endpoint::client_response_header`]); `content-type` is left to the
/// caller.
pub(super) fn copy_converted_response_headers(
    from: &HeaderMap,
    to: &mut HeaderMap,
    client: WireProtocol,
    upstream: WireProtocol,
) {
    for (name, value) in from {
        if name == http::header::CONTENT_TYPE {
            continue;
        }
        if let Some(mapped) = endpoint::client_response_header(name.as_str(), client, upstream) {
            if let Ok(mapped) = http::HeaderName::from_bytes(mapped.as_bytes()) {
                to.insert(mapped, value.clone());
            }
        }
    }
}

/// The body sent upstream: the client's bytes (pass-through, `model` rewritten only for
/// an alias) or the converted request.
pub(super) fn build_upstream_body(
    endpoint: Endpoint,
    translation: Translation,
    body: &Bytes,
    model: &str,
    upstream_model: &str,
    upstream: &UpstreamTarget,
) -> Result<Bytes, (StatusCode, String)> {
    let bad_request = |message| (StatusCode::BAD_REQUEST, message);
    if translation == Translation::PassThrough {
        if model == upstream_model {
            return Ok(body.clone());
        }
        return convert::rewrite_model(body, upstream_model)
            .map(Bytes::from)
            .map_err(bad_request);
    }
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses => {
            check_conversion_bound(body).map_err(|m| (StatusCode::PAYLOAD_TOO_LARGE, m))?;
            // The upstream's rules for the model: only a converted request reads them.
            let rules = upstream.rules_for(upstream_model);
            convert::request(translation, body, upstream_model, rules)
                .map(Bytes::from)
                .map_err(bad_request)
        }
        _ => Err(bad_request(format!(
            "{} cannot be served by this upstream",
            endpoint.label()
        ))),
    }
}

/// The most memory a conversion may spend on the parsed tree of one body (estimated by
/// [`gate_core::llm::convert::tree_cost_estimate`] before parsing). Pass-through never
/// parses a body whole; conversion must, so it is bounded here.
pub(super) const MAX_CONVERSION_TREE_BYTES: usize = 128 << 20;

/// Refuses a body whose parse tree would take more than [`MAX_CONVERSION_TREE_BYTES`].
pub(super) fn check_conversion_bound(body: &[u8]) -> Result<(), String> {
    let estimate = gate_core::llm::convert::tree_cost_estimate(body);
    if estimate > MAX_CONVERSION_TREE_BYTES {
        return Err(format!(
            "this body ({} bytes, about {} MiB once parsed) is too large to convert between the \
             OpenAI and Anthropic protocols (limit {} MiB parsed); send it to a model whose \
             upstream speaks the client's protocol, or send less",
            body.len(),
            estimate >> 20,
            MAX_CONVERSION_TREE_BYTES >> 20
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::body::tests::Pieces;

    async fn collect_pieces<R: Runtime>(rt: R) {
        let idle = Duration::from_secs(5);
        // One piece: returned as it is (the same bytes, not a copy).
        let one = Bytes::from_static(b"{\"id\":1}");
        let got = collect_with_timeout(&rt, Pieces::from([one.clone()]), idle, 100)
            .await
            .unwrap();
        assert_eq!(got.as_ptr(), one.as_ptr(), "a one-piece body is not copied");
        // Several pieces (empty ones among them): joined in order.
        for parts in [
            &["{\"a\":", "1,", "\"b\":2}"][..],
            &["", "{}", ""],
            &["{", "", "}"],
            &[],
        ] {
            let got = collect_with_timeout(&rt, Pieces::of(parts), idle, 100)
                .await
                .unwrap();
            assert_eq!(got, parts.concat().as_bytes(), "{parts:?}");
        }
        // The cap holds for one piece and for pieces together; a broken body is reported.
        for parts in [&["12345"][..], &["12", "34", "5"]] {
            let too_long = collect_with_timeout(&rt, Pieces::of(parts), idle, 4).await;
            assert!(
                matches!(too_long, Err(ReadError::TooLarge(4))),
                "{too_long:?}"
            );
        }
        let exact = collect_with_timeout(&rt, Pieces::of(&["12", "34"]), idle, 4).await;
        assert_eq!(exact.unwrap(), "1234");
        let broken = collect_with_timeout(&rt, Pieces::of(&["{"]).failing(), idle, 100).await;
        assert!(
            matches!(&broken, Err(ReadError::Broken(m)) if m == "connection reset"),
            "{broken:?}"
        );
    }

    #[test]
    fn a_buffered_answer_is_collected_whole_and_capped_on_tokio() {
        gate_runtime_tokio::block_on(collect_pieces).expect("runtime");
    }

    #[test]
    fn a_buffered_answer_is_collected_whole_and_capped_on_smol() {
        gate_runtime_smol::block_on(collect_pieces).expect("runtime");
    }
}
