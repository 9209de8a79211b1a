//! Error responses in the shape of the protocol the client spoke (DESIGN.md §5): the
//! OpenAI `{"error": {...}}` body or the Anthropic `{"type": "error", "error": {...}}`
//! body, with the right HTTP status. Messages say what was wrong and never carry secrets.

use bytes::Bytes;
use gate_core::llm::errors::{self, ApiErrorKind};
use gate_core::route::WireProtocol;
use http::{Response, StatusCode};

use crate::web::{full_body, Body};

/// The JSON error body for `protocol` (builders in `gate_core::llm::errors`).
pub fn error_body(protocol: WireProtocol, status: StatusCode, message: &str) -> String {
    let kind = ApiErrorKind::from_status(status.as_u16());
    match protocol {
        WireProtocol::OpenAi => errors::openai_error_json(kind, message, None),
        WireProtocol::Anthropic => errors::anthropic_error_json(kind, message),
        WireProtocol::Gemini => String::from_utf8_lossy(&gate_core::llm::gemini::error_body(
            status.as_u16(),
            message,
        ))
        .into_owned(),
    }
}

/// A complete error response for `protocol`.
pub fn error_response(protocol: WireProtocol, status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::from(error_body(
        protocol, status, message,
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The bytes of a streamed error event that ends a broken stream, so the SDKs raise it:
/// Anthropic `event: error`, OpenAI a `data: {"error": ...}` chunk.
pub fn stream_error_event(protocol: WireProtocol, status: StatusCode, message: &str) -> Bytes {
    let kind = ApiErrorKind::from_status(status.as_u16());
    let event = match protocol {
        WireProtocol::OpenAi => errors::openai_stream_error(kind, message),
        WireProtocol::Anthropic => errors::anthropic_stream_error(kind, message),
        WireProtocol::Gemini => gate_core::llm::convert::StreamEvent {
            event: None,
            data: String::from_utf8_lossy(&gate_core::llm::gemini::error_body(
                status.as_u16(),
                message,
            ))
            .into_owned(),
        },
    };
    crate::convert::encode_events(vec![event])
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Pulls a human message (its first 500 characters) out of an upstream error body of either
/// protocol. Only `error` / `error.message` are decoded; the rest of the body is skipped, not
/// built into a tree.
pub fn upstream_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Option<ErrorValue>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum ErrorValue {
        Text(String),
        Object { message: Option<String> },
    }
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    let message = match envelope.error? {
        ErrorValue::Text(text) => text,
        ErrorValue::Object { message } => message?,
    };
    Some(message.chars().take(500).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let o: serde_json::Value = serde_json::from_str(&error_body(
            WireProtocol::OpenAi,
            StatusCode::NOT_FOUND,
            "no such model",
        ))
        .unwrap();
        assert_eq!(o["error"]["message"], "no such model");
        assert_eq!(o["error"]["type"], "invalid_request_error");
        assert_eq!(o["error"]["code"], "model_not_found");
        let a: serde_json::Value = serde_json::from_str(&error_body(
            WireProtocol::Anthropic,
            StatusCode::UNAUTHORIZED,
            "bad key",
        ))
        .unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "authentication_error");
        let ev = stream_error_event(WireProtocol::Anthropic, StatusCode::BAD_GATEWAY, "broke");
        assert!(ev.starts_with(b"event: error\ndata: {"));
        assert_eq!(
            upstream_message(br#"{"error":{"message":"m"}}"#).as_deref(),
            Some("m")
        );
        assert_eq!(
            upstream_message(br#"{"type":"error","error":{"type":"x","message":"n"}}"#).as_deref(),
            Some("n")
        );
    }
}
