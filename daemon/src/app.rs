//! The daemon's HTTP router: one [`App`] serves the local listener and, later, the
//! connections forwarded by a relay (marked `remote`, never loopback-trusted).

use std::net::SocketAddr;

use bytes::Bytes;
use gate_rt::Runtime;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Boxed error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type: buffered or streaming.
pub type Body = BoxBody<Bytes, BoxError>;

/// Who is on the other end of a request.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The client's address (for relayed connections, as reported by the relay).
    pub addr: SocketAddr,
    /// True when the connection came through a relay.
    pub remote: bool,
}

/// The shared request router.
pub struct App<R: Runtime> {
    #[allow(dead_code)]
    rt: R,
}

impl<R: Runtime> App<R> {
    /// A router over the runtime `rt`.
    pub fn new(rt: R) -> Self {
        Self { rt }
    }

    /// Handles one request.
    pub async fn handle<B>(&self, req: Request<B>, _peer: Peer) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/health") => json(
                StatusCode::OK,
                serde_json::json!({
                    "status": "ok",
                    "version": env!("CARGO_PKG_VERSION"),
                    "runtime": R::NAME,
                }),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": {"message": format!("no route for {} {}", req.method(), req.uri().path()), "type": "not_found_error"}}),
            ),
        }
    }
}

/// A JSON response.
pub fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string())).map_err(|never| match never {}).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}
