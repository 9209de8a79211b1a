//! Client access: checks a request's credentials (Gate API key, JWT, trusted loopback) and
//! answers `GET /v1/models` in the client's protocol.

use gate_core::route::WireProtocol;
use gate_rt::Runtime;
use http::{HeaderMap, Response, StatusCode};

use super::Gateway;
use crate::auth::{self, AuthError, Caller};
use crate::errors::error_response;
use crate::web::{json, Body, Peer};

impl<R: Runtime> Gateway<R> {
    /// Checks the client's credentials; returns who is calling and the policy that applies.
    pub fn authenticate(&self, headers: &HeaderMap, peer: Peer) -> Result<Caller, AuthError> {
        let snapshot = self.snapshot();
        let Some(token) = auth::credential(headers) else {
            if snapshot.allow_loopback && !peer.remote && peer.addr.ip().is_loopback() {
                return Ok(Caller::loopback());
            }
            return Err(AuthError::Missing);
        };
        if token.starts_with(auth::TOKEN_PREFIX) {
            let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
            return tokens
                .verify(token)
                .map(Caller::of_key)
                .ok_or(AuthError::Invalid);
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
        if let Err(e) = self.authenticate(headers, peer) {
            return error_response(protocol, StatusCode::UNAUTHORIZED, &e.to_string());
        }
        let models = self.lock_router().list_models();
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
