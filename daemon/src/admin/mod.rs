//! The admin surface of the daemon: the JSON admin API under `/admin/api/` and the web UI
//! under `/ui/` (DESIGN.md §7, §8).
//!
//! Owns: who may administer (the admin token as `Authorization: Bearer`, or a web UI
//! session cookie obtained through a one-time login URL), CSRF protection of
//! cookie-authenticated changes, and the mapping of admin requests onto the one reload
//! path ([`Reloader`]). Must not: trust loopback or any address (every admin request needs
//! a credential, whether it came from the local listener or through the relay), show a
//! secret value (provider keys, the JWT secret, the admin token, API keys after creation),
//! or write the runtime file other than through the core's editing helpers.
//!
//! Code map: [`api`] (the JSON routes), [`session`] (admin token, login codes, sessions),
//! [`ui`] (the built-in web UI assets and the login page), [`socket`] (the admin API on
//! `<state_dir>/admin.sock`), [`client`] (how the CLI finds and calls a running daemon
//! through that socket).

pub mod api;
pub mod client;
pub mod session;
pub mod socket;
pub mod types;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use gate_rt::Runtime;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use crate::reload::Reloader;
use crate::web::{json, Body, Peer};

use session::{secrets_equal, Sessions, SESSION_COOKIE_PREFIX};

/// Largest admin request body.
pub const MAX_ADMIN_BODY: usize = 64 * 1024;
/// The header the web UI sends on every change (a cross-site form cannot set it).
pub const CSRF_HEADER: &str = "x-gate-csrf";

/// The admin API and web UI of one daemon.
pub struct Admin<R: Runtime> {
    reloader: Arc<Reloader<R>>,
    admin_token: String,
    sessions: Sessions,
    /// The address the daemon listens on (for login URLs and status).
    listen: SocketAddr,
    /// The session cookie's name.
    cookie_name: String,
    /// The relay side, once started (the status page shows it).
    remote: std::sync::OnceLock<Arc<crate::remote::Remote<R>>>,
}

/// How a request proved it may administer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Credential {
    AdminToken,
    Session,
}

impl<R: Runtime> Admin<R> {
    /// The admin surface over `reloader`, accepting `admin_token`.
    pub fn new(reloader: Arc<Reloader<R>>, admin_token: String, listen: SocketAddr) -> Self {
        Self {
            reloader,
            admin_token,
            sessions: Sessions::default(),
            listen,
            cookie_name: format!("{SESSION_COOKIE_PREFIX}{}", listen.port()),
            remote: std::sync::OnceLock::new(),
        }
    }

    /// Lets the status page show the relay side (once it has started).
    pub fn set_remote(&self, remote: Arc<crate::remote::Remote<R>>) {
        let _ = self.remote.set(remote);
    }

    /// Whether `path` belongs to the admin surface.
    pub fn owns(path: &str) -> bool {
        path == "/ui" || path.starts_with("/ui/") || path.starts_with("/admin/")
    }

    /// A new one-time web UI login URL for this daemon.
    pub fn login_url(&self) -> anyhow::Result<String> {
        let code = self.sessions.new_login_code(Instant::now())?;
        Ok(format!("{}/ui/login?code={code}", base_url(self.listen)))
    }

    /// Handles a request whose path [`Admin::owns`]. `peer.remote` gives no exemption and
    /// no extra trust: every admin request needs a credential, from anywhere.
    pub async fn handle<B>(&self, req: Request<B>, peer: Peer) -> Response<Body>
    where
        B: hyper::body::Body,
        B::Error: Into<crate::web::BoxError>,
    {
        let path = req.uri().path().to_owned();
        if path == "/ui" || path.starts_with("/ui/") {
            return ui::handle(self, &req, &path, peer);
        }
        let Some(route) = path.strip_prefix("/admin/api/") else {
            return api_error(StatusCode::NOT_FOUND, &format!("no admin route {path}"));
        };
        let credential = match self.check_credential(req.headers()) {
            Some(c) => c,
            None => {
                tracing::info!(peer = %peer.addr, remote = peer.remote, path = %path, "admin request refused: no valid admin token or session");
                let mut response = api_error(
                    StatusCode::UNAUTHORIZED,
                    "admin endpoints need the admin token (Authorization: Bearer, from <state_dir>/admin.token) or a web UI session",
                );
                response.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"gate-admin\""),
                );
                return response;
            }
        };
        let method = req.method().clone();
        if credential == Credential::Session && method != Method::GET {
            if let Err(why) = csrf_check(req.headers()) {
                return api_error(StatusCode::FORBIDDEN, why);
            }
        }
        let route = route.to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let body = match read_body(req).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        api::route(self, &method, &route, &query, &body, peer).await
    }

    fn check_credential(&self, headers: &HeaderMap) -> Option<Credential> {
        if let Some(token) = bearer(headers) {
            return secrets_equal(token, &self.admin_token).then_some(Credential::AdminToken);
        }
        let session = cookie(headers, &self.cookie_name)?;
        self.sessions
            .is_valid(session, Instant::now())
            .then_some(Credential::Session)
    }

    fn session_of(&self, headers: &HeaderMap) -> Option<String> {
        let session = cookie(headers, &self.cookie_name)?;
        self.sessions
            .is_valid(session, Instant::now())
            .then(|| session.to_owned())
    }
}

/// `http://host:port` for a listen address (a wildcard address becomes loopback).
pub fn base_url(listen: SocketAddr) -> String {
    let ip = listen.ip();
    let shown = if ip.is_unspecified() {
        match ip {
            std::net::IpAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::IpAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        }
    } else {
        ip
    };
    format!("http://{}", SocketAddr::new(shown, listen.port()))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The value of cookie `name`.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Cookie-authenticated changes must carry the UI's header and, when the browser sends
/// `Origin`, come from the page's own origin.
fn csrf_check(headers: &HeaderMap) -> Result<(), &'static str> {
    if !headers.contains_key(CSRF_HEADER) {
        return Err("refused: a change from the web UI must carry the X-Gate-CSRF header");
    }
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let origin = origin.to_str().unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
            return Err("refused: cross-origin change");
        }
    }
    Ok(())
}

async fn read_body<B>(req: Request<B>) -> Result<Bytes, Response<Body>>
where
    B: hyper::body::Body,
    B::Error: Into<crate::web::BoxError>,
{
    match Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("admin request bodies are limited to {MAX_ADMIN_BODY} bytes"),
        )),
    }
}

/// A JSON error `{"error": message}`.
pub fn api_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = types::ApiError {
        error: message.to_owned(),
    };
    json(
        status,
        serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::TokenStore;
    use crate::gateway::Gateway;
    use http_body_util::Full;

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
        let mut builder = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder
            .body(Full::new(Bytes::from_static(br#"{"value":"debug"}"#)))
            .unwrap()
    }

    /// Connections through the relay (`remote`) get no admin access without the token,
    /// even from a loopback address and with loopback trust on; with it, they do.
    #[test]
    fn relayed_requests_need_the_admin_token() {
        let dir = std::env::temp_dir().join(format!("gate-admin-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut sources = gate_core::config::ConfigSources::new("config.toml");
        sources.env = vec![("GATE_AUTH__ALLOW_LOOPBACK".into(), "true".into())];
        let loaded = gate_core::config::load_daemon(&sources).unwrap();
        let listen: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        gate_runtime_tokio::block_on(|rt| async move {
            let tokens = TokenStore::load(&dir).unwrap();
            let gateway = Arc::new(Gateway::new(rt.clone(), &loaded.config, tokens).unwrap());
            let reloader = Arc::new(Reloader::new(rt, gateway, Vec::new(), dir.clone(), loaded));
            let admin = Admin::new(reloader, "gadm_secret".into(), listen);
            let relayed = Peer {
                addr: "127.0.0.1:5555".parse().unwrap(),
                remote: true,
            };
            for (method, path) in [
                ("GET", "/admin/api/status"),
                ("PUT", "/admin/api/config/log_level"),
                ("POST", "/admin/api/login-url"),
            ] {
                let r = admin.handle(request(method, path, &[]), relayed).await;
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
                let r = admin
                    .handle(
                        request(method, path, &[("authorization", "Bearer nope")]),
                        relayed,
                    )
                    .await;
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            }
            let r = admin.handle(request("GET", "/ui/", &[]), relayed).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            let r = admin
                .handle(
                    request(
                        "GET",
                        "/admin/api/status",
                        &[("authorization", "Bearer gadm_secret")],
                    ),
                    relayed,
                )
                .await;
            assert_eq!(r.status(), StatusCode::OK);
            // A session made through the relay gets a Secure cookie.
            let url = admin.login_url().unwrap();
            let path = url.trim_start_matches("http://127.0.0.1:3000").to_owned();
            let r = admin.handle(request("GET", &path, &[]), relayed).await;
            assert_eq!(r.status(), StatusCode::SEE_OTHER);
            let cookie = r.headers()[http::header::SET_COOKIE].to_str().unwrap();
            assert!(cookie.starts_with("gate_session_3000="), "{cookie}");
            assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"));
            std::fs::remove_dir_all(&dir).unwrap();
        })
        .unwrap();
    }
}
