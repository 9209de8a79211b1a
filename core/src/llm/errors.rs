//! Error bodies in each protocol's shape, for plain responses and inside streams.
//!
//! Owns: the mapping from an HTTP status class ([`ApiErrorKind`]) to the `type` (and, for
//! OpenAI, `code`) names each API uses, and the builders of the JSON bodies and stream events.
//! Must not: decide which status a failure deserves (the daemon does) or perform I/O.
//!
//! OpenAI body: `{"error":{"message","type","param","code"}}`; inside a stream it is sent
//! as a `data:` chunk, which the `openai` SDK raises as `APIError`.
//! Anthropic body: `{"type":"error","error":{"type","message"}}`; inside a stream it is sent
//! as `event: error`.

use super::anthropic;
use super::convert::StreamEvent;
use super::openai;

/// The status classes Gate answers with, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiErrorKind {
    /// 400: malformed or unsupported request.
    InvalidRequest,
    /// 401: missing or wrong credentials.
    Authentication,
    /// 402: the key's spend budget does not cover the request.
    PaymentRequired,
    /// 403: credentials valid but not allowed.
    Permission,
    /// 404: unknown model or endpoint.
    NotFound,
    /// 413: body too large.
    RequestTooLarge,
    /// 429: rate limited (by Gate or the upstream).
    RateLimit,
    /// 500: Gate's own fault.
    Internal,
    /// 502: the upstream failed or answered something unusable.
    BadGateway,
    /// 503: no upstream available (all open-circuited or overloaded).
    Unavailable,
    /// 504: the upstream timed out.
    Timeout,
}

impl ApiErrorKind {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            ApiErrorKind::InvalidRequest => 400,
            ApiErrorKind::Authentication => 401,
            ApiErrorKind::PaymentRequired => 402,
            ApiErrorKind::Permission => 403,
            ApiErrorKind::NotFound => 404,
            ApiErrorKind::RequestTooLarge => 413,
            ApiErrorKind::RateLimit => 429,
            ApiErrorKind::Internal => 500,
            ApiErrorKind::BadGateway => 502,
            ApiErrorKind::Unavailable => 503,
            ApiErrorKind::Timeout => 504,
        }
    }

    /// The kind for an HTTP status; unknown 4xx map to `InvalidRequest`, anything else to
    /// `Internal` (500) or `BadGateway` (other 5xx).
    pub fn from_status(status: u16) -> ApiErrorKind {
        match status {
            401 => ApiErrorKind::Authentication,
            402 => ApiErrorKind::PaymentRequired,
            403 => ApiErrorKind::Permission,
            404 => ApiErrorKind::NotFound,
            413 => ApiErrorKind::RequestTooLarge,
            429 => ApiErrorKind::RateLimit,
            500 => ApiErrorKind::Internal,
            503 | 529 => ApiErrorKind::Unavailable,
            504 => ApiErrorKind::Timeout,
            400..=499 => ApiErrorKind::InvalidRequest,
            _ => ApiErrorKind::BadGateway,
        }
    }

    /// Anthropic's `error.type`: `invalid_request_error`, `authentication_error`,
    /// `billing_error` (402), `permission_error`, `not_found_error`, `request_too_large`, `rate_limit_error`,
    /// `api_error` (500, 502), `overloaded_error` (503), `timeout_error` (504).
    pub fn anthropic_type(self) -> &'static str {
        match self {
            ApiErrorKind::InvalidRequest => "invalid_request_error",
            ApiErrorKind::Authentication => "authentication_error",
            ApiErrorKind::PaymentRequired => "billing_error",
            ApiErrorKind::Permission => "permission_error",
            ApiErrorKind::NotFound => "not_found_error",
            ApiErrorKind::RequestTooLarge => "request_too_large",
            ApiErrorKind::RateLimit => "rate_limit_error",
            ApiErrorKind::Internal | ApiErrorKind::BadGateway => "api_error",
            ApiErrorKind::Unavailable => "overloaded_error",
            ApiErrorKind::Timeout => "timeout_error",
        }
    }

    /// OpenAI's `error.type`: client errors are `invalid_request_error` (as OpenAI sends
    /// for 401 and 404 too), except 402 `insufficient_quota`, 403 `permission_error` and
    /// 429 `rate_limit_error`; 5xx are `server_error`.
    pub fn openai_type(self) -> &'static str {
        match self {
            ApiErrorKind::InvalidRequest
            | ApiErrorKind::Authentication
            | ApiErrorKind::NotFound
            | ApiErrorKind::RequestTooLarge => "invalid_request_error",
            ApiErrorKind::PaymentRequired => "insufficient_quota",
            ApiErrorKind::Permission => "permission_error",
            ApiErrorKind::RateLimit => "rate_limit_error",
            ApiErrorKind::Internal
            | ApiErrorKind::BadGateway
            | ApiErrorKind::Unavailable
            | ApiErrorKind::Timeout => "server_error",
        }
    }

    /// OpenAI's `error.code` for this kind (`None` serializes as `null`).
    pub fn openai_code(self) -> Option<&'static str> {
        match self {
            ApiErrorKind::InvalidRequest | ApiErrorKind::Internal => None,
            ApiErrorKind::Authentication => Some("invalid_api_key"),
            ApiErrorKind::PaymentRequired => Some("budget_exceeded"),
            ApiErrorKind::Permission => Some("permission_denied"),
            ApiErrorKind::NotFound => Some("model_not_found"),
            ApiErrorKind::RequestTooLarge => Some("request_too_large"),
            ApiErrorKind::RateLimit => Some("rate_limit_exceeded"),
            ApiErrorKind::BadGateway => Some("bad_gateway"),
            ApiErrorKind::Unavailable => Some("service_unavailable"),
            ApiErrorKind::Timeout => Some("timeout"),
        }
    }
}

/// The OpenAI error body as a value; `param` names the offending request field, if any.
pub fn openai_error(kind: ApiErrorKind, message: &str, param: Option<&str>) -> openai::ErrorBody {
    openai::ErrorBody {
        error: openai::ErrorDetail {
            message: message.to_owned(),
            kind: Some(kind.openai_type().to_owned()),
            param: param.map(str::to_owned),
            code: kind
                .openai_code()
                .map(|code| serde_json::Value::String(code.to_owned())),
        },
    }
}

/// The OpenAI error body, serialized.
pub fn openai_error_json(kind: ApiErrorKind, message: &str, param: Option<&str>) -> String {
    to_json(&openai_error(kind, message, param))
}

/// The OpenAI in-stream error: one `data: {"error":{...}}` event without an event name.
pub fn openai_stream_error(kind: ApiErrorKind, message: &str) -> StreamEvent {
    StreamEvent {
        event: None,
        data: openai_error_json(kind, message, None),
    }
}

/// The Anthropic error body as a value.
pub fn anthropic_error(kind: ApiErrorKind, message: &str) -> anthropic::ErrorBody {
    anthropic::ErrorBody {
        kind: "error".to_owned(),
        error: anthropic::ErrorDetail {
            kind: kind.anthropic_type().to_owned(),
            message: message.to_owned(),
        },
    }
}

/// The Anthropic error body, serialized.
pub fn anthropic_error_json(kind: ApiErrorKind, message: &str) -> String {
    to_json(&anthropic_error(kind, message))
}

/// The Anthropic in-stream error: `event: error` with the error body as data.
pub fn anthropic_stream_error(kind: ApiErrorKind, message: &str) -> StreamEvent {
    StreamEvent {
        event: Some("error".to_owned()),
        data: anthropic_error_json(kind, message),
    }
}

/// Serializes a value that cannot fail to serialize (plain structs with string keys).
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn openai_error_has_all_four_keys() {
        let body: Value = serde_json::from_str(&openai_error_json(
            ApiErrorKind::NotFound,
            "no model x",
            None,
        ))
        .unwrap_or_default();
        assert_eq!(
            body,
            json!({"error":{"message":"no model x","type":"invalid_request_error","param":null,"code":"model_not_found"}})
        );
    }

    #[test]
    fn anthropic_error_shape() {
        let body: Value =
            serde_json::from_str(&anthropic_error_json(ApiErrorKind::RateLimit, "slow down"))
                .unwrap_or_default();
        assert_eq!(
            body,
            json!({"type":"error","error":{"type":"rate_limit_error","message":"slow down"}})
        );
        let event = anthropic_stream_error(ApiErrorKind::Unavailable, "busy");
        assert_eq!(event.event.as_deref(), Some("error"));
        assert!(event.data.contains("overloaded_error"));
    }

    #[test]
    fn status_round_trip() {
        for status in [400, 401, 402, 403, 404, 413, 429, 500, 502, 503, 504] {
            assert_eq!(ApiErrorKind::from_status(status).status(), status);
        }
        assert_eq!(ApiErrorKind::from_status(529), ApiErrorKind::Unavailable);
        assert_eq!(ApiErrorKind::from_status(418), ApiErrorKind::InvalidRequest);
    }
}
