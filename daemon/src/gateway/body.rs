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
    const JSON: &str = "application/json";
    match headers.get(http::header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => Ok(()),
        Some(Ok(v))
            if v.trim_start()
                .get(..JSON.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(JSON)) =>
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn with_type(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_bytes(value).unwrap(),
        );
        headers
    }

    #[test]
    fn json_content_types_pass_in_any_case_and_others_are_refused() {
        assert!(check_json_content_type(&HeaderMap::new()).is_ok());
        for ok in [
            &b"application/json"[..],
            b"Application/JSON; charset=utf-8",
            b"  application/json",
            b"application/json-seq",
        ] {
            assert!(check_json_content_type(&with_type(ok)).is_ok(), "{ok:?}");
        }
        for refused in [
            &b"text/plain"[..],
            b"application/jso",
            b"",
            b"application/\xc3\xa9son",
            b"\xff",
        ] {
            let Err(Refusal(status, message)) = check_json_content_type(&with_type(refused)) else {
                panic!("{refused:?} passed");
            };
            assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
            assert!(message.starts_with("Content-Type must be application/json"));
        }
    }
}
