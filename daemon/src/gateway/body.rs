//! The client's request body: content-type check, bounded read, and draining an unread
//! body after a refusal so the connection can be reused.

use std::time::Duration;

use bytes::Bytes;
use gate_rt::Runtime;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Incoming};

/// A failed request before any byte went out: status and message for the client.
pub(super) struct Refusal(pub(super) StatusCode, pub(super) String);

pub(super) fn check_json_content_type(headers: &HeaderMap) -> Result<(), Refusal> {
    match headers.get(http::header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => Ok(()),
        Some(Ok(v))
            if v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json") =>
        {
            Ok(())
        }
        Some(Ok(v)) => Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json, not {v:?}"),
        )),
        Some(Err(_)) => Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json".to_owned(),
        )),
    }
}

/// Reads and discards an unread request body of up to 1 MiB within 5 s; false when the
/// body was larger or slower (the connection should then be closed).
pub(super) async fn drain_body<R: Runtime>(rt: &R, body: Incoming) -> bool {
    const DRAIN_LIMIT: usize = 1 << 20;
    if body.size_hint().lower() > DRAIN_LIMIT as u64 {
        return false;
    }
    let limited = http_body_util::Limited::new(body, DRAIN_LIMIT);
    matches!(
        gate_rt::timeout(rt, Duration::from_secs(5), limited.collect()).await,
        Ok(Ok(_))
    )
}

pub(super) async fn read_body_limited(body: Incoming, max: u64) -> Result<Bytes, Refusal> {
    let too_large = || {
        Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than the limit of {max} bytes (server.max_body_bytes)"
            ),
        )
    };
    if body.size_hint().lower() > max {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("could not read the request body: {e}"),
        )),
    }
}
