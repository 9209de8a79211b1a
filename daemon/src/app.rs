//! The daemon's HTTP router: one [`App`] serves the local listener and the connections a
//! relay forwards (marked `remote`: never loopback-trusted).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use gate_rt::Runtime;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::gateway::{Endpoint, Gateway};

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
    pub gateway: Arc<Gateway<R>>,
}

impl<R: Runtime> App<R> {
    /// A router over `gateway`.
    pub fn new(gateway: Arc<Gateway<R>>) -> Self {
        Self { gateway }
    }

    /// Handles one request.
    pub async fn handle(&self, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET, "/health") => json(
                StatusCode::OK,
                serde_json::json!({
                    "status": "ok",
                    "version": env!("CARGO_PKG_VERSION"),
                    "runtime": R::NAME,
                }),
            ),
            (&Method::GET, "/metrics") => {
                if peer.remote {
                    if let Err(e) = self.gateway.authenticate(req.headers(), peer) {
                        return crate::errors::error_response(
                            gate_core::route::WireProtocol::OpenAi,
                            StatusCode::UNAUTHORIZED,
                            &e.to_string(),
                        );
                    }
                }
                let mut response =
                    Response::new(full_body(Bytes::from(self.gateway.render_metrics())));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            (&Method::GET, "/v1/models" | "/models") => {
                self.gateway.list_models(req.headers(), peer)
            }
            (&Method::POST, _) => match Endpoint::from_path(path) {
                Some(endpoint) => self.gateway.handle(endpoint, req, peer).await,
                None => not_found(&req),
            },
            (_, _) if Endpoint::from_path(path).is_some() => {
                let protocol = Endpoint::from_path(path)
                    .map(|e| e.client_protocol())
                    .unwrap_or(gate_core::route::WireProtocol::OpenAi);
                crate::errors::error_response(
                    protocol,
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("{path} accepts POST only"),
                )
            }
            _ => not_found(&req),
        }
    }
}

fn not_found<B>(req: &Request<B>) -> Response<Body> {
    crate::errors::error_response(
        gate_core::route::WireProtocol::OpenAi,
        StatusCode::NOT_FOUND,
        &format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

/// A buffered body.
pub fn full_body(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
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
