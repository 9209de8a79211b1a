//! The gateway's pure request-path decisions: the table of LLM endpoints Gate serves (path,
//! client protocol, metrics label, which upstream protocol serves it under which path), the
//! status a client sees for an upstream's failure, and the header allow-lists between client
//! and upstream.
//!
//! Must not: do I/O or know about HTTP libraries' types (statuses are `u16`, header names
//! lower-case `&str`), so the daemon and tests share one table.

use crate::route::WireProtocol;

/// The LLM endpoints Gate serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/responses`
    Responses,
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/messages/count_tokens`
    CountTokens,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 6] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Messages,
        Endpoint::CountTokens,
    ];

    /// Its place in [`Endpoint::ALL`] (for tables indexed by endpoint).
    pub fn index(self) -> usize {
        match self {
            Endpoint::ChatCompletions => 0,
            Endpoint::Completions => 1,
            Endpoint::Embeddings => 2,
            Endpoint::Responses => 3,
            Endpoint::Messages => 4,
            Endpoint::CountTokens => 5,
        }
    }

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

    /// The path clients use (`/v1/...`).
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Messages => "/v1/messages",
            Endpoint::CountTokens => "/v1/messages/count_tokens",
        }
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
    pub fn served_by(self, protocol: WireProtocol) -> bool {
        protocol == WireProtocol::OpenAi
            || matches!(
                self,
                Endpoint::Messages
                    | Endpoint::CountTokens
                    | Endpoint::ChatCompletions
                    | Endpoint::Responses
            )
    }

    /// How a request to this endpoint reaches an upstream speaking `protocol`
    /// (`speaks_responses`: the upstream serves `/responses` itself).
    pub fn translation(self, protocol: WireProtocol, speaks_responses: bool) -> Translation {
        match (self, protocol) {
            (Endpoint::Responses, WireProtocol::OpenAi) if !speaks_responses => {
                Translation::ResponsesToChat
            }
            (Endpoint::Responses, WireProtocol::Anthropic) => Translation::ResponsesToMessages,
            (Endpoint::ChatCompletions, WireProtocol::Gemini) => Translation::ChatToGemini,
            (Endpoint::Messages | Endpoint::CountTokens, WireProtocol::Gemini) => {
                Translation::MessagesToGemini
            }
            (Endpoint::Responses, WireProtocol::Gemini) => Translation::ResponsesToGemini,
            (Endpoint::ChatCompletions, WireProtocol::Anthropic) => Translation::ChatToMessages,
            (Endpoint::Messages | Endpoint::CountTokens, WireProtocol::OpenAi) => {
                Translation::MessagesToChat
            }
            _ => Translation::PassThrough,
        }
    }

    /// The path under the upstream's base URL.
    pub fn upstream_path(self, protocol: WireProtocol) -> &'static str {
        match (protocol, self) {
            (WireProtocol::OpenAi, Endpoint::Completions) => "/completions",
            (WireProtocol::OpenAi, Endpoint::Embeddings) => "/embeddings",
            (WireProtocol::OpenAi, Endpoint::Responses) => "/responses",
            (WireProtocol::OpenAi, _) => "/chat/completions",
            (WireProtocol::Anthropic, Endpoint::CountTokens) => "/v1/messages/count_tokens",
            (WireProtocol::Anthropic, _) => "/v1/messages",
            // The model is in the path: see [`gemini_upstream_path`].
            (WireProtocol::Gemini, _) => "",
        }
    }
}

/// The path under a native Gemini upstream's base URL (`.../v1beta`) for `model`:
/// `/models/{model}:generateContent`, or `:streamGenerateContent?alt=sse` for a stream. The
/// model is percent-encoded but for RFC 3986's unreserved characters, so no model name can
/// reach another path or add a query.
pub fn gemini_upstream_path(model: &str, stream: bool) -> String {
    gemini_native_path(
        model,
        if stream {
            crate::llm::gemini::NativeCall::StreamSse
        } else {
            crate::llm::gemini::NativeCall::Generate
        },
    )
}

/// [`gemini_upstream_path`] for any call a Gemini client makes (its body passed through).
pub fn gemini_native_path(model: &str, call: crate::llm::gemini::NativeCall) -> String {
    let mut out = String::with_capacity(model.len() + 48);
    out.push_str("/models/");
    for byte in model.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out.push_str(call.suffix());
    out
}

/// How a request travels to its upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Translation {
    /// Client and upstream speak the same API: the client's bytes go through.
    PassThrough,
    /// Chat Completions client, Anthropic upstream.
    ChatToMessages,
    /// Anthropic Messages client, OpenAI-format upstream.
    MessagesToChat,
    /// Responses client, OpenAI-format upstream without `/responses`.
    ResponsesToChat,
    /// Responses client, Anthropic upstream (through Chat Completions).
    ResponsesToMessages,
    /// Chat Completions client, native Gemini upstream.
    ChatToGemini,
    /// Anthropic Messages client, native Gemini upstream (through Chat Completions).
    MessagesToGemini,
    /// Responses client, native Gemini upstream (through Chat Completions).
    ResponsesToGemini,
}

impl Translation {
    /// The path under the upstream's base URL for `endpoint` travelling this way.
    pub fn upstream_path(self, endpoint: Endpoint, protocol: WireProtocol) -> &'static str {
        match self {
            Translation::ResponsesToChat => "/chat/completions",
            Translation::ResponsesToMessages => "/v1/messages",
            Translation::ChatToGemini
            | Translation::MessagesToGemini
            | Translation::ResponsesToGemini => "",
            _ => endpoint.upstream_path(protocol),
        }
    }
}

/// The status the client sees for an upstream's status: 429 stays 429, 503 and 529
/// (Anthropic's "overloaded") become 503, 504 stays 504, any other 5xx becomes 502; other
/// statuses pass unchanged.
pub fn client_status_for_upstream(status: u16) -> u16 {
    match status {
        429 => 429,
        503 | 529 => 503,
        504 => 504,
        500..=599 => 502,
        other => other,
    }
}

/// Request headers passed from the client to the upstream. Everything else, above all
/// `authorization` and `x-api-key`, stays behind.
pub const FORWARDED_REQUEST_HEADERS: &[&str] =
    &["accept", "user-agent", "anthropic-beta", "openai-beta"];

/// Request headers passed to an upstream speaking `upstream`: the common ones, plus only that
/// protocol's beta header (`anthropic-beta` never goes to an OpenAI-format upstream, nor
/// `openai-beta` to Anthropic).
pub fn forwarded_request_headers(upstream: WireProtocol) -> &'static [&'static str] {
    match upstream {
        WireProtocol::OpenAi => &["accept", "user-agent", "openai-beta"],
        WireProtocol::Anthropic => &["accept", "user-agent", "anthropic-beta"],
        WireProtocol::Gemini => &["user-agent"],
    }
}

/// The name under which an upstream response header reaches a client of `client` when
/// Gate converted between protocols (`None`: not forwarded). Same protocol: the name itself
/// when [`forwards_response_header`] allows it. Across protocols: `retry-after` as is; the
/// request id renamed (`x-request-id` <-> `request-id`); the request and token rate-limit
/// counts renamed between `x-ratelimit-{limit,remaining}-{requests,tokens}` and
/// `anthropic-ratelimit-{requests,tokens}-{limit,remaining}`. Reset times are dropped across
/// protocols (OpenAI sends a duration, `6m0s`; Anthropic an RFC 3339 instant), as are
/// Anthropic's input/output token families, which OpenAI has no name for.
pub fn client_response_header(
    name: &str,
    client: WireProtocol,
    upstream: WireProtocol,
) -> Option<std::borrow::Cow<'static, str>> {
    use std::borrow::Cow;
    if client == upstream {
        return forwards_response_header(name).then(|| Cow::Owned(name.to_owned()));
    }
    match (name, client) {
        ("content-type" | "retry-after", _) => return Some(Cow::Owned(name.to_owned())),
        ("request-id", WireProtocol::OpenAi) => return Some(Cow::Borrowed("x-request-id")),
        ("x-request-id", WireProtocol::Anthropic) => return Some(Cow::Borrowed("request-id")),
        _ => {}
    }
    const PAIRS: [(&str, &str); 4] = [
        (
            "x-ratelimit-limit-requests",
            "anthropic-ratelimit-requests-limit",
        ),
        (
            "x-ratelimit-remaining-requests",
            "anthropic-ratelimit-requests-remaining",
        ),
        (
            "x-ratelimit-limit-tokens",
            "anthropic-ratelimit-tokens-limit",
        ),
        (
            "x-ratelimit-remaining-tokens",
            "anthropic-ratelimit-tokens-remaining",
        ),
    ];
    PAIRS.iter().find_map(|(openai, anthropic)| match client {
        WireProtocol::OpenAi if name == *anthropic => Some(Cow::Borrowed(*openai)),
        WireProtocol::Anthropic if name == *openai => Some(Cow::Borrowed(*anthropic)),
        _ => None,
    })
}

/// Response headers passed from the upstream to the client, besides the rate-limit families
/// of [`forwards_response_header`].
pub const FORWARDED_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "retry-after",
    "x-request-id",
    "request-id",
    "openai-processing-ms",
];

/// Whether an upstream response header (lower-case name) reaches the client.
pub fn forwards_response_header(name: &str) -> bool {
    FORWARDED_RESPONSE_HEADERS.contains(&name)
        || name.starts_with("x-ratelimit-")
        || name.starts_with("anthropic-ratelimit-")
}

/// Reads a `retry-after` value in seconds (the HTTP-date form is not used by LLM providers
/// and reads as `None`). Values are capped at one day.
pub fn parse_retry_after_secs(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.min(86_400));
    }
    let seconds = value.parse::<f64>().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| (seconds.ceil() as u64).min(86_400))
}

/// At most `max` characters of a client-supplied name (a model, a path) for a message or a
/// log line, with a note of the full length when cut.
pub fn bounded_echo(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((cut, _)) => {
            std::borrow::Cow::Owned(format!("{}... ({} bytes in all)", &text[..cut], text.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_the_place_in_all() {
        for (i, endpoint) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(endpoint.index(), i, "{endpoint:?}");
        }
    }

    #[test]
    fn paths_round_trip_and_protocols() {
        for endpoint in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(endpoint.path()), Some(endpoint));
            assert!(endpoint.served_by(WireProtocol::OpenAi));
        }
        assert!(!Endpoint::Embeddings.served_by(WireProtocol::Anthropic));
        assert_eq!(Endpoint::from_path("/"), None);
        assert_eq!(
            Endpoint::Messages.upstream_path(WireProtocol::OpenAi),
            "/chat/completions"
        );
    }

    #[test]
    fn gemini_upstream_paths() {
        assert_eq!(
            gemini_upstream_path("gemini-2.5-flash", false),
            "/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            gemini_upstream_path("a/b?c", true),
            "/models/a%2Fb%3Fc:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            Endpoint::Messages.translation(WireProtocol::Gemini, false),
            Translation::MessagesToGemini
        );
        assert!(!Endpoint::Embeddings.served_by(WireProtocol::Gemini));
        assert!(Endpoint::Responses.served_by(WireProtocol::Gemini));
    }

    proptest::proptest! {
        #[test]
        fn gemini_paths_stay_in_place(model in ".{0,40}", stream: bool) {
            let path = gemini_upstream_path(&model, stream);
            let rest = path.strip_prefix("/models/").unwrap_or_default();
            proptest::prop_assert!(!rest.contains('/'));
            proptest::prop_assert!(!rest.contains('#'));
            proptest::prop_assert_eq!(rest.matches('?').count(), usize::from(stream));
            proptest::prop_assert_eq!(rest.matches(':').count(), 1);
        }
    }

    #[test]
    fn headers_across_protocols() {
        use WireProtocol::{Anthropic, OpenAi};
        assert!(!forwarded_request_headers(OpenAi).contains(&"anthropic-beta"));
        assert!(forwarded_request_headers(Anthropic).contains(&"anthropic-beta"));
        assert!(!forwarded_request_headers(Anthropic).contains(&"authorization"));
        let map = |name, client, upstream| {
            client_response_header(name, client, upstream).map(|n| n.into_owned())
        };
        assert_eq!(
            map("anthropic-ratelimit-requests-remaining", OpenAi, Anthropic).as_deref(),
            Some("x-ratelimit-remaining-requests")
        );
        assert_eq!(
            map("x-ratelimit-limit-tokens", Anthropic, OpenAi).as_deref(),
            Some("anthropic-ratelimit-tokens-limit")
        );
        assert_eq!(
            map("request-id", OpenAi, Anthropic).as_deref(),
            Some("x-request-id")
        );
        assert_eq!(
            map("x-request-id", Anthropic, OpenAi).as_deref(),
            Some("request-id")
        );
        assert_eq!(
            map("retry-after", Anthropic, OpenAi).as_deref(),
            Some("retry-after")
        );
        assert_eq!(map("x-ratelimit-reset-requests", Anthropic, OpenAi), None);
        assert_eq!(map("set-cookie", Anthropic, OpenAi), None);
        assert_eq!(
            map("x-ratelimit-reset-requests", OpenAi, OpenAi).as_deref(),
            Some("x-ratelimit-reset-requests")
        );
    }

    #[test]
    fn statuses_headers_and_echoes() {
        assert_eq!(client_status_for_upstream(529), 503);
        assert_eq!(client_status_for_upstream(500), 502);
        assert_eq!(client_status_for_upstream(429), 429);
        assert_eq!(client_status_for_upstream(404), 404);
        assert!(forwards_response_header("retry-after"));
        assert!(forwards_response_header(
            "anthropic-ratelimit-requests-limit"
        ));
        assert!(!forwards_response_header("set-cookie"));
        assert!(!FORWARDED_REQUEST_HEADERS.contains(&"authorization"));
        assert_eq!(parse_retry_after_secs(" 7 "), Some(7));
        assert_eq!(parse_retry_after_secs("1.2"), Some(2));
        assert_eq!(
            parse_retry_after_secs("Wed, 21 Oct 2015 07:28:00 GMT"),
            None
        );
        assert_eq!(parse_retry_after_secs("-1"), None);
        assert_eq!(bounded_echo("short", 10), "short");
        let long = "é".repeat(50);
        let echoed = bounded_echo(&long, 10);
        assert!(echoed.starts_with(&"é".repeat(10)));
        assert!(echoed.ends_with("(100 bytes in all)"));
    }
}
