//! The HTTP types every part of the daemon's serving shares: the response [`Body`], the
//! [`Peer`] on the other end, and builders of buffered and JSON responses.
//!
//! It owns nothing else and depends on no other module of the daemon, so the router
//! (`app`), the request path (`gateway`), the admin API and the relay side all depend on it
//! and not on each other for these types.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Boxed error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type: buffered (the bytes in hand: most answers, and no allocation for
/// them; issue 16) or streaming (boxed; [`stream_body`]).
pub enum Body {
    /// The whole body ([`full_body`]).
    Full(Full<Bytes>),
    /// A stream ([`stream_body`]).
    Stream(BoxBody<Bytes, BoxError>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(full) => std::pin::Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Body::Stream(stream) => std::pin::Pin::new(stream).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(full) => full.is_end_stream(),
            Body::Stream(stream) => stream.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Full(full) => full.size_hint(),
            Body::Stream(stream) => stream.size_hint(),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Body::Full(_) => "Body::Full",
            Body::Stream(_) => "Body::Stream",
        })
    }
}

/// Who is on the other end of a request.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The client's address (for relayed connections, as reported by the relay).
    pub addr: SocketAddr,
    /// True when the connection came through a relay.
    pub remote: bool,
}

/// What serves requests: the router (`app::App`). The listeners (`server`), the relayed
/// connections (`remote`) and tests take any `Handler`, so none of them depends on the router
/// and the router's dependencies (gateway, admin) never lead back to them.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from `peer`.
    fn handle(
        &self,
        req: http::Request<hyper::body::Incoming>,
        peer: Peer,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// A buffered body.
pub fn full_body(bytes: Bytes) -> Body {
    Body::Full(Full::new(bytes))
}

/// A streaming response body.
pub fn stream_body<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
{
    Body::Stream(body.boxed())
}

/// A JSON response.
pub fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
