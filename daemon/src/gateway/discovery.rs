//! Model discovery: asks upstreams without an explicit `models` list which models they
//! serve and feeds the answers to routing's third tier.

use std::time::Duration;

use bytes::Bytes;
use gate_core::route::WireProtocol;
use gate_rt::Runtime;
use http::{HeaderValue, Method, Request};
use http_body_util::Full;

use super::upstream::{check_conversion_bound, collect_with_timeout, error_chain};
use super::{Gateway, UpstreamTarget, DEFAULT_ANTHROPIC_VERSION};

impl<R: Runtime> Gateway<R> {
    /// Asks every upstream without an explicit `models` list which models it serves
    /// (`GET {base}/models`, or `{base}/v1/models` for Anthropic) and feeds the answers to
    /// routing's third tier. The upstreams are asked all at once and each answer is used as
    /// soon as it arrives, so a slow upstream (up to the timeout) delays no one else's list.
    /// Failures are logged and leave that upstream's list as it was.
    pub async fn discover_models(&self) {
        let snapshot = self.snapshot();
        let explicit: std::collections::HashSet<String> = {
            let router = self.lock_router();
            router
                .upstreams()
                .iter()
                .filter(|spec| !spec.models.is_empty() || !spec.enabled)
                .map(|spec| spec.name.clone())
                .collect()
        };
        let queries = snapshot
            .upstreams
            .iter()
            .filter(|upstream| !explicit.contains(&*upstream.name))
            .map(|upstream| self.discover_upstream_models(upstream));
        futures_util::future::join_all(queries).await;
    }

    /// Discovery for one upstream: asks it, and on an answer sets its discovered models.
    pub(super) async fn discover_upstream_models(&self, upstream: &UpstreamTarget) {
        let Some(models) = self.fetch_model_list(upstream).await else {
            return;
        };
        let mut router = self.lock_router();
        if let Some(id) = router.find(&upstream.name) {
            tracing::debug!(upstream = %upstream.name, count = models.len(), "discovered models");
            router.set_discovered_models(id, models);
        }
    }

    /// The model ids `upstream` lists, or `None` when it gives no usable answer within the
    /// timeout.
    pub(super) async fn fetch_model_list(&self, upstream: &UpstreamTarget) -> Option<Vec<String>> {
        const TIMEOUT: Duration = Duration::from_secs(15);
        let url = match upstream.protocol {
            WireProtocol::OpenAi | WireProtocol::Gemini => format!("{}/models", upstream.base_url),
            WireProtocol::Anthropic => format!("{}/v1/models", upstream.base_url),
        };
        let mut builder = Request::builder().method(Method::GET).uri(&url);
        if let Some(headers) = builder.headers_mut() {
            if let Some(key) = &upstream.api_key {
                let value = match upstream.protocol {
                    WireProtocol::OpenAi => {
                        HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    }
                    WireProtocol::Anthropic | WireProtocol::Gemini => {
                        HeaderValue::from_str(key.expose())
                    }
                };
                if let Ok(mut value) = value {
                    value.set_sensitive(true);
                    let name = match upstream.protocol {
                        WireProtocol::OpenAi => http::header::AUTHORIZATION,
                        WireProtocol::Anthropic => http::HeaderName::from_static("x-api-key"),
                        WireProtocol::Gemini => http::HeaderName::from_static("x-goog-api-key"),
                    };
                    headers.insert(name, value);
                }
            }
            if upstream.protocol == WireProtocol::Anthropic {
                headers.insert(
                    "anthropic-version",
                    HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION),
                );
            }
        }
        let req = builder.body(Full::new(Bytes::new())).ok()?;
        let max = self.snapshot().limits.max_response_bytes;
        let body = match gate_rt::timeout(&self.rt, TIMEOUT, self.client().request(req)).await {
            Ok(Ok(response)) if response.status().is_success() => {
                match collect_with_timeout(&self.rt, response.into_body(), TIMEOUT, max).await {
                    Ok(body) => body,
                    Err(e) => {
                        tracing::warn!(upstream = %upstream.name, error = %e, "model list not read");
                        return None;
                    }
                }
            }
            Ok(Ok(response)) => {
                tracing::debug!(upstream = %upstream.name, status = %response.status(), "model list not available");
                return None;
            }
            Ok(Err(e)) => {
                tracing::debug!(upstream = %upstream.name, error = %error_chain(&e), "model list not available");
                return None;
            }
            Err(_) => {
                tracing::debug!(upstream = %upstream.name, "model list not available: no answer within {TIMEOUT:?}");
                return None;
            }
        };
        if let Err(e) = check_conversion_bound(&body) {
            tracing::warn!(upstream = %upstream.name, error = %e, "model list not read");
            return None;
        }
        let value = serde_json::from_slice::<serde_json::Value>(&body).ok()?;
        if upstream.protocol == WireProtocol::Gemini {
            // `{"models": [{"name": "models/gemini-2.5-flash", ...}]}`
            return Some(
                value
                    .get("models")
                    .and_then(|d| d.as_array())
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|m| m.get("name").and_then(|n| n.as_str()))
                            .map(|n| n.strip_prefix("models/").unwrap_or(n).to_owned())
                            .take(10_000)
                            .collect()
                    })
                    .unwrap_or_default(),
            );
        }
        Some(
            value
                .get("data")
                .and_then(|d| d.as_array())
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|m| m.get("id").and_then(|id| id.as_str()).map(str::to_owned))
                        .take(10_000)
                        .collect()
                })
                .unwrap_or_default(),
        )
    }
}
