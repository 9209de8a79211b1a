//! Client access: checks a request's credentials (Gate API key, JWT, trusted loopback) and
//! answers `GET /v1/models` in the client's protocol.

use gate_core::route::WireProtocol;
use gate_rt::Runtime;
use http::{HeaderMap, Response, StatusCode};

use super::{Gateway, Snapshot};
use crate::auth::{self, AuthError, Caller};
use crate::errors::error_response;
use crate::web::{json, Body, Peer};

/// Loopback trust (`auth.allow_loopback`) is for programs on this machine, not for web
/// pages a browser on it shows: any page can send a request to 127.0.0.1. A request is
/// trusted only when nothing says a browser sent it on a page's behalf:
/// - a body must be declared `application/json` (a no-cors `fetch` can send only
///   `text/plain`, form types or no type: a "simple" request that skips CORS preflight; a
///   JSON one is preflighted, and Gate answers no preflight);
/// - an `Origin`, if sent, must itself be loopback (Gate's own web UI);
/// - `Host`, if sent, must name loopback (`127.0.0.1`, `[::1]`, `localhost`,
///   `*.localhost`): a foreign name resolved to 127.0.0.1 is DNS rebinding.
pub fn loopback_request_is_local(headers: &HeaderMap) -> Result<(), AuthError> {
    let has_body = headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || headers.contains_key(http::header::TRANSFER_ENCODING);
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if has_body && !json {
        return Err(AuthError::LoopbackNotJson);
    }
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        let host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, rest)| rest);
        if !host.is_some_and(is_loopback_authority) {
            return Err(AuthError::LoopbackForeignOrigin);
        }
    }
    if let Some(host) = headers.get(http::header::HOST) {
        if !host.to_str().is_ok_and(is_loopback_authority) {
            return Err(AuthError::LoopbackForeignHost);
        }
    }
    Ok(())
}

/// Whether `host[:port]` names loopback.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(h, _)| h),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl<R: Runtime> Gateway<R> {
    /// Checks the client's credentials; returns who is calling and the policy that applies.
    pub fn authenticate(&self, headers: &HeaderMap, peer: Peer) -> Result<Caller, AuthError> {
        self.authenticate_in(&self.snapshot(), headers, peer)
    }

    /// [`Self::authenticate`] under `snapshot` (a request reads the configuration's snapshot
    /// once: each read is two atomic writes to a lock and two to a counter that every core
    /// shares).
    pub(super) fn authenticate_in(
        &self,
        snapshot: &Snapshot,
        headers: &HeaderMap,
        peer: Peer,
    ) -> Result<Caller, AuthError> {
        let Some(token) = auth::credential(headers) else {
            if snapshot.allow_loopback && !peer.remote && peer.addr.ip().is_loopback() {
                loopback_request_is_local(headers)?;
                return Ok(Caller::loopback());
            }
            return Err(AuthError::Missing);
        };
        if token.starts_with(auth::TOKEN_PREFIX) {
            let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
            return tokens.verify_caller(token).ok_or(AuthError::Invalid);
        }
        match &snapshot.jwt {
            Some(jwt) => jwt.verify(token),
            None => Err(AuthError::Invalid),
        }
    }
    /// `GET /v1/models` in the client's protocol (Anthropic when it sent
    /// `anthropic-version`).
    pub fn list_models(&self, headers: &HeaderMap, peer: Peer) -> Response<Body> {
        let anthropic = headers.contains_key("anthropic-version");
        let protocol = if anthropic {
            WireProtocol::Anthropic
        } else {
            WireProtocol::OpenAi
        };
        let caller = match self.authenticate(headers, peer) {
            Ok(caller) => caller,
            Err(e) => return error_response(protocol, StatusCode::UNAUTHORIZED, &e.to_string()),
        };
        let mut models = self.lock_router().list_models();
        // A key limited to some models sees only those.
        models.retain(|m| caller.policy.models.allows(&m.id));
        let body = if anthropic {
            let data: Vec<_> = models
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "type": "model",
                        "id": m.id,
                        "display_name": m.id,
                        "created_at": "1970-01-01T00:00:00Z",
                    })
                })
                .collect();
            serde_json::json!({
                "data": data,
                "has_more": false,
                "first_id": models.first().map(|m| m.id.clone()),
                "last_id": models.last().map(|m| m.id.clone()),
            })
        } else {
            let data: Vec<_> = models
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "id": m.id,
                        "object": "model",
                        "created": 0,
                        "owned_by": m.upstream_name,
                    })
                })
                .collect();
            serde_json::json!({"object": "list", "data": data})
        };
        json(StatusCode::OK, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn loopback_trust_refuses_what_a_web_page_could_send() {
        let ok = [
            vec![("host", "127.0.0.1:3000")],
            vec![("host", "localhost:3000"), ("content-length", "0")],
            vec![
                ("host", "[::1]:3000"),
                ("content-length", "12"),
                ("content-type", "application/json"),
            ],
            vec![
                ("host", "gate.localhost"),
                ("origin", "http://127.0.0.1:3000"),
            ],
            vec![],
        ];
        for h in ok {
            assert_eq!(loopback_request_is_local(&headers(&h)), Ok(()), "{h:?}");
        }
        let refused = [
            (vec![("content-length", "12")], AuthError::LoopbackNotJson),
            (
                vec![("content-length", "12"), ("content-type", "text/plain")],
                AuthError::LoopbackNotJson,
            ),
            (
                vec![("transfer-encoding", "chunked")],
                AuthError::LoopbackNotJson,
            ),
            (
                vec![("origin", "https://evil.example")],
                AuthError::LoopbackForeignOrigin,
            ),
            (vec![("origin", "null")], AuthError::LoopbackForeignOrigin),
            (
                vec![("origin", "http://127.0.0.1.evil.example")],
                AuthError::LoopbackForeignOrigin,
            ),
            (
                vec![("host", "evil.example:3000")],
                AuthError::LoopbackForeignHost,
            ),
            (
                vec![("host", "127.0.0.1.nip.io")],
                AuthError::LoopbackForeignHost,
            ),
        ];
        for (h, want) in refused {
            assert_eq!(loopback_request_is_local(&headers(&h)), Err(want), "{h:?}");
        }
    }
}
