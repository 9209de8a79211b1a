//! The daemon's HTTP router: one [`App`] serves the local listener and the connections a
//! relay forwards (marked `remote`: never loopback-trusted).

use std::sync::Arc;

use bytes::Bytes;
use gate_rt::Runtime;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::gateway::{Endpoint, Gateway};

pub use crate::web::{full_body, json, Body, BoxError, Handler, Peer};

/// The shared request router.
pub struct App<R: Runtime> {
    pub gateway: Arc<Gateway<R>>,
    /// The admin API and web UI (`/admin/...`, `/ui/...`), when enabled.
    pub admin: Option<Arc<crate::admin::Admin<R>>>,
}

impl<R: Runtime> App<R> {
    /// A router over `gateway`.
    pub fn new(gateway: Arc<Gateway<R>>) -> Self {
        Self {
            gateway,
            admin: None,
        }
    }

    /// The same router serving the admin API and web UI too.
    pub fn with_admin(mut self, admin: Arc<crate::admin::Admin<R>>) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Handles one request.
    pub async fn handle(&self, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        let path = req.uri().path();
        if crate::admin::Admin::<R>::owns(path) {
            if let Some(admin) = &self.admin {
                // Boxed: the admin API's future is twice the size of the gateway's, and
                // this future is moved per request by hyper (ARCHITECTURE.md
                // "Request-path cost").
                return Box::pin(admin.handle(req, peer)).await;
            }
        }
        if path.starts_with("/v1beta/") || path == "/v1beta" {
            // Boxed like the admin API: the Gemini front door's future is larger than the
            // other endpoints' and would set the size of every request's future.
            return Box::pin(self.gateway.handle_gemini(req, peer)).await;
        }
        match (req.method(), path) {
            (&Method::GET | &Method::HEAD, "/") => self.index(&req),
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

impl<R: Runtime> App<R> {
    /// `GET /`: browsers (asking for HTML) are sent to the web UI when it is served; any
    /// other client gets a short JSON index of what Gate serves.
    fn index<B>(&self, req: &Request<B>) -> Response<Body> {
        let wants_html = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"));
        if wants_html && self.admin.is_some() {
            let mut response = Response::new(full_body(Bytes::new()));
            *response.status_mut() = StatusCode::FOUND;
            response.headers_mut().insert(
                http::header::LOCATION,
                http::HeaderValue::from_static(UI_PATH),
            );
            return response;
        }
        let endpoints: Vec<String> = Endpoint::ALL
            .iter()
            .map(|e| format!("POST {}", e.path()))
            .chain(["GET /v1/models".to_owned()])
            .collect();
        json(
            StatusCode::OK,
            serde_json::json!({
                "name": "gate",
                "version": env!("CARGO_PKG_VERSION"),
                "endpoints": endpoints,
                "health": "/health",
                "metrics": "/metrics",
                "ui": self.admin.as_ref().map(|_| UI_PATH),
            }),
        )
    }
}

/// Where the web UI lives (`GET /` sends browsers there).
const UI_PATH: &str = "/ui/";

fn not_found<B>(req: &Request<B>) -> Response<Body> {
    crate::errors::error_response(
        gate_core::route::WireProtocol::OpenAi,
        StatusCode::NOT_FOUND,
        &format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

impl<R: Runtime> Handler for App<R> {
    fn handle(
        &self,
        req: Request<Incoming>,
        peer: Peer,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        App::handle(self, req, peer)
    }
}
