//! The web UI (DESIGN.md §8): a small page and script built into the binary (no CDN, no
//! build step), the one-time login, and logout.
//!
//! `/ui/login?code=...` spends a login code and sets the session cookie (HttpOnly,
//! SameSite=Strict, Secure when the connection came through the relay's TLS). The page
//! itself talks to `/admin/api/` with that cookie and the CSRF header. Must not embed any
//! configuration value in the HTML: the script fetches what it shows.

use std::time::Instant;

use bytes::Bytes;
use gate_rt::Runtime;
use http::{HeaderValue, Method, Request, Response, StatusCode};

use super::session::SESSION_TTL;
use super::{cookie, csrf_check, Admin};
use crate::web::{full_body, Body, Peer};

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

const LOGIN_NEEDED_HTML: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Gate: sign in</title><link rel=\"stylesheet\" href=\"/ui/app.css\"></head><body>\
<main class=\"narrow\"><h1>Gate</h1><div class=\"card\"><h2>Sign in</h2>\
<p>MESSAGE</p><p>Open the one-time login link that <code>gate serve</code> printed when it \
started, or get a fresh one with:</p><pre>gate status</pre>\
<p class=\"muted\">Each link works once and for 15 minutes.</p></div></main></body></html>";

/// Handles `/ui` and `/ui/...`.
pub fn handle<R: Runtime, B>(
    admin: &Admin<R>,
    req: &Request<B>,
    path: &str,
    peer: Peer,
) -> Response<Body> {
    let method = req.method();
    match (method, path) {
        (&Method::GET, "/ui/app.js") => asset(APP_JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/ui/app.css") => asset(APP_CSS, "text/css; charset=utf-8"),
        (&Method::GET, "/ui/login") => login(admin, req, peer),
        (&Method::POST, "/ui/logout") => {
            if let Err(why) = csrf_check(req.headers()) {
                return page(StatusCode::FORBIDDEN, why.to_owned());
            }
            if let Some(session) = cookie(req.headers(), &admin.cookie_name) {
                admin.sessions.end(session, Instant::now());
            }
            let mut response = redirect("/ui/");
            set_cookie(&mut response, &admin.cookie_name, "", 0, peer.remote);
            response
        }
        (&Method::GET, "/ui" | "/ui/") => {
            if admin.session_of(req.headers()).is_some() {
                page(StatusCode::OK, INDEX_HTML.to_owned())
            } else {
                login_needed(StatusCode::UNAUTHORIZED, "You are not signed in.")
            }
        }
        _ => page(StatusCode::NOT_FOUND, "<h1>Not found</h1>".to_owned()),
    }
}

fn login<R: Runtime, B>(admin: &Admin<R>, req: &Request<B>, peer: Peer) -> Response<Body> {
    let code = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "code")
        .map(|(_, v)| v)
        .unwrap_or("");
    match admin.sessions.redeem(code, Instant::now()) {
        Ok(Some(session)) => {
            tracing::info!(peer = %peer.addr, remote = peer.remote, "web UI: signed in with a login link");
            let mut response = redirect("/ui/");
            set_cookie(
                &mut response,
                &admin.cookie_name,
                &session,
                SESSION_TTL.as_secs(),
                peer.remote,
            );
            response
        }
        Ok(None) => {
            tracing::info!(peer = %peer.addr, remote = peer.remote, "web UI: a used, expired or unknown login link was refused");
            login_needed(
                StatusCode::UNAUTHORIZED,
                "This login link was already used or has expired.",
            )
        }
        Err(e) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("<h1>Error</h1><p>{}</p>", escape(&format!("{e:#}"))),
        ),
    }
}

fn set_cookie(response: &mut Response<Body>, name: &str, value: &str, max_age: u64, secure: bool) {
    let cookie = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, value);
    }
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .insert(http::header::LOCATION, HeaderValue::from_static(to));
    security_headers(&mut response);
    response
}

fn login_needed(status: StatusCode, message: &str) -> Response<Body> {
    page(
        status,
        LOGIN_NEEDED_HTML.replace("MESSAGE", &escape(message)),
    )
}

fn page(status: StatusCode, html: String) -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::from(html)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    security_headers(&mut response);
    response
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::from_static(text.as_bytes())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    security_headers(&mut response);
    response
}

fn security_headers(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    headers.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
