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

/// A body's data frames joined, at most `limit` bytes. A body that arrives in one frame (most
/// requests and answers) is kept as that frame, not copied; frames after it are gathered in
/// a buffer (issue 16: `BodyExt::collect` and a copy cost ~600 instructions a body).
pub(super) struct Gather {
    limit: usize,
    first: Option<Bytes>,
    joined: Vec<u8>,
}

/// More than the limit arrived.
pub(super) struct TooLarge;

impl Gather {
    pub(super) fn new(limit: u64) -> Self {
        Gather {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            first: None,
            joined: Vec::new(),
        }
    }

    /// Adds a frame's data (other frames: nothing).
    pub(super) fn frame(&mut self, frame: hyper::body::Frame<Bytes>) -> Result<(), TooLarge> {
        let Ok(data) = frame.into_data() else {
            return Ok(());
        };
        let held = self.first.as_ref().map_or(self.joined.len(), Bytes::len);
        if held.saturating_add(data.len()) > self.limit {
            return Err(TooLarge);
        }
        if held == 0 {
            self.first = Some(data);
        } else {
            if let Some(piece) = self.first.take() {
                self.joined.extend_from_slice(&piece);
            }
            self.joined.extend_from_slice(&data);
        }
        Ok(())
    }

    /// Everything added.
    pub(super) fn finish(self) -> Bytes {
        self.first.unwrap_or_else(|| Bytes::from(self.joined))
    }
}

/// The client's body, at most `max` bytes (413 beyond; 400 when it breaks off).
pub(super) async fn read_body_limited<B>(body: B, max: u64) -> Result<Bytes, Refusal>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
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
    let mut body = body;
    let mut gather = Gather::new(max);
    loop {
        match body.frame().await {
            None => return Ok(gather.finish()),
            Some(Ok(frame)) => gather.frame(frame).map_err(|TooLarge| too_large())?,
            Some(Err(e)) => {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {e}"),
                ))
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body of the given pieces, one frame each, then (with `fail`) an error.
    pub(in crate::gateway) struct Pieces {
        pieces: VecDeque<Bytes>,
        fail: bool,
    }

    impl Pieces {
        pub(in crate::gateway) fn of(parts: &[&'static str]) -> Pieces {
            Pieces::from(parts.iter().map(|p| Bytes::from_static(p.as_bytes())))
        }

        pub(in crate::gateway) fn from(pieces: impl IntoIterator<Item = Bytes>) -> Pieces {
            Pieces {
                pieces: pieces.into_iter().collect(),
                fail: false,
            }
        }

        pub(in crate::gateway) fn failing(mut self) -> Pieces {
            self.fail = true;
            self
        }
    }

    impl HttpBody for Pieces {
        type Data = Bytes;
        type Error = String;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, String>>> {
            Poll::Ready(match self.pieces.pop_front() {
                Some(piece) => Some(Ok(hyper::body::Frame::data(piece))),
                None if self.fail => Some(Err("connection reset".to_owned())),
                None => None,
            })
        }
    }

    fn block_on<F: std::future::Future>(fut: F) -> F::Output {
        gate_runtime_tokio::block_on(|_| fut).expect("runtime")
    }

    /// Issue 16: a one-frame body is kept as it came; frames are joined in order; the limit
    /// holds for one frame and for frames together; a broken body is a 400.
    #[test]
    fn request_bodies_are_read_whole_within_the_limit() {
        let one = Bytes::from_static(br#"{"model":"m"}"#);
        let got = block_on(read_body_limited(Pieces::from([one.clone()]), 100))
            .ok()
            .unwrap();
        assert_eq!(got.as_ptr(), one.as_ptr(), "a one-frame body is not copied");
        for parts in [
            &["{\"a\":", "1}"][..],
            &["", "{}", ""],
            &["{", "", "}"],
            &[],
        ] {
            let got = block_on(read_body_limited(Pieces::of(parts), 100))
                .ok()
                .unwrap();
            assert_eq!(got, parts.concat().as_bytes(), "{parts:?}");
        }
        for parts in [&["12345"][..], &["12", "34", "5"]] {
            let Err(Refusal(status, message)) = block_on(read_body_limited(Pieces::of(parts), 4))
            else {
                panic!("{parts:?} passed the limit");
            };
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
            assert!(message.contains("server.max_body_bytes"), "{message}");
        }
        let exact = block_on(read_body_limited(Pieces::of(&["12", "34"]), 4));
        assert_eq!(exact.ok().unwrap(), "1234");
        let Err(Refusal(status, message)) =
            block_on(read_body_limited(Pieces::of(&["{"]).failing(), 100))
        else {
            panic!("a broken body was read");
        };
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("connection reset"), "{message}");
    }

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
