//! The part of the configuration the request path reads ([`Snapshot`]), swapped whole on
//! reload, and each upstream as the gateway calls it ([`UpstreamTarget`]).

use std::collections::BTreeMap;

use gate_core::config::{DaemonConfig, Secret, ServerLimits};
use gate_core::llm::endpoint::Translation;
use gate_core::llm::model_rules::{find_override, ModelRuleOverride, UpstreamRules};
use gate_core::route::{ProviderKind, UpstreamSpec, WireProtocol};

use http::{HeaderName, HeaderValue};

use crate::auth::JwtSettings;

/// One upstream as the gateway calls it.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub name: std::sync::Arc<str>,
    pub provider: ProviderKind,
    pub protocol: WireProtocol,
    /// Without a trailing slash.
    pub base_url: String,
    pub api_key: Option<Secret>,
    /// Serves `/responses` itself (`responses` in config, else the provider's default).
    pub responses: bool,
    /// `max_output_tokens`: caps the output of requests Gate converts for this upstream.
    pub max_output_tokens: Option<u32>,
    /// `[upstreams.X.prices]`: model prices over the built-in table (issue 14).
    pub prices: std::collections::BTreeMap<String, gate_core::accounting::Price>,
    /// Gate may add `stream_options.include_usage` to pass-through chat streams
    /// (`stream_usage` in config, else the provider's default).
    pub stream_usage: bool,
    /// `model_rules`: this upstream's own rules for its models.
    pub model_rules: BTreeMap<String, ModelRuleOverride>,
    /// The header carrying `api_key`, built once (issue 16): `Ok(None)` without a key,
    /// `Err(())` when the key is not a valid header value (each request is refused then).
    pub auth_header: Result<Option<(HeaderName, HeaderValue)>, ()>,
    /// `base_url` joined with each fixed upstream path (those of
    /// [`Translation::upstream_path`]), parsed once (issue 16): a request's URI is a clone of
    /// one of these (reference counts), not a `format!` and a parse. Paths whose URL does not
    /// parse are absent; their requests take the formatted path and report the error there.
    pub uris: Vec<(&'static str, http::Uri)>,
    /// The client headers this upstream's protocol forwards
    /// ([`gate_core::llm::endpoint::forwarded_request_headers`]) as header names, parsed once
    /// (issue 16): a `&str` name is parsed again on every lookup and insert (~400
    /// instructions a request).
    pub forwarded_headers: Vec<HeaderName>,
    /// The `Host` header of a plain-`http` upstream, built once (issue 16): its requests
    /// always go over HTTP/1.1, whose pool would otherwise build it per request
    /// ([`gate_rt::pool::host_header`]). `None` for `https` upstreams, which may speak
    /// HTTP/2 (`:authority`, no `Host`): the pool sets it there when HTTP/1.1 is negotiated.
    pub host_header: Option<HeaderValue>,
}

/// Every path [`Translation::upstream_path`] can return but the empty one (a native Gemini
/// upstream's paths carry the model: formatted per request).
const FIXED_UPSTREAM_PATHS: [&str; 6] = [
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
];

/// [`UpstreamTarget::uris`] for `base_url`.
fn fixed_uris(base_url: &str) -> Vec<(&'static str, http::Uri)> {
    FIXED_UPSTREAM_PATHS
        .iter()
        .filter_map(|path| {
            http::Uri::try_from(format!("{base_url}{path}"))
                .ok()
                .map(|uri| (*path, uri))
        })
        .collect()
}

/// The header that carries `key` in `protocol`, marked sensitive so no debug output shows it;
/// `Err(())` when the key cannot be a header value.
fn auth_header(protocol: WireProtocol, key: &Secret) -> Result<(HeaderName, HeaderValue), ()> {
    let (name, value) = match protocol {
        WireProtocol::OpenAi => (
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", key.expose())),
        ),
        WireProtocol::Gemini => (
            HeaderName::from_static("x-goog-api-key"),
            HeaderValue::from_str(key.expose()),
        ),
        WireProtocol::Anthropic => (
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_str(key.expose()),
        ),
    };
    let mut value = value.map_err(|_| ())?;
    value.set_sensitive(true);
    Ok((name, value))
}

impl UpstreamTarget {
    /// How a request to `endpoint` reaches this upstream.
    pub fn translation(&self, endpoint: gate_core::llm::endpoint::Endpoint) -> Translation {
        endpoint.translation(self.protocol, self.responses)
    }

    /// The URI of `path` under `base_url`, when it is one of the fixed paths and parses.
    pub fn fixed_uri(&self, path: &str) -> Option<http::Uri> {
        self.uris
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, uri)| uri.clone())
    }

    /// What this upstream adds to the per-model table for `upstream_model`.
    pub fn rules_for(&self, upstream_model: &str) -> UpstreamRules<'_> {
        UpstreamRules {
            max_output_tokens: self.max_output_tokens,
            model: find_override(&self.model_rules, upstream_model),
        }
    }
}

/// The part of the configuration the request path reads, swapped whole on reload.
pub struct Snapshot {
    pub upstreams: Vec<UpstreamTarget>,
    pub limits: ServerLimits,
    pub jwt: Option<JwtSettings>,
    pub allow_loopback: bool,
    /// Every configured secret (upstream API keys, the JWT secret), scrubbed from upstream
    /// text before it reaches a client or a log; the admin token joins through
    /// [`super::Gateway::protect_secret`].
    pub secrets: Vec<String>,
}

impl Snapshot {
    /// The gateway's view of a daemon configuration, and the routing specs in the same
    /// order (so `UpstreamId::index()` indexes `upstreams`).
    pub fn from_config(config: &DaemonConfig) -> (Snapshot, Vec<UpstreamSpec>) {
        let mut upstreams = Vec::new();
        let mut specs = Vec::new();
        for (name, up) in &config.upstreams {
            let provider: ProviderKind = up.provider.name().parse().unwrap_or(ProviderKind::Custom);
            let protocol = provider.protocol_for(&up.base_url);
            let mut spec = UpstreamSpec::new(name.clone(), provider);
            spec.protocol = protocol;
            spec.models = up.models.clone();
            spec.aliases = up.aliases.clone();
            spec.enabled = up.enabled;
            spec.weight = up.weight;
            specs.push(spec);
            let base_url = up.base_url.trim_end_matches('/').to_owned();
            upstreams.push(UpstreamTarget {
                name: name.as_str().into(),
                uris: fixed_uris(&base_url),
                host_header: http::Uri::try_from(base_url.as_str())
                    .ok()
                    .filter(|uri| uri.scheme() == Some(&http::uri::Scheme::HTTP))
                    .and_then(|uri| gate_rt::pool::host_header(&uri)),
                forwarded_headers: gate_core::llm::endpoint::forwarded_request_headers(protocol)
                    .iter()
                    .map(|name| HeaderName::from_static(name))
                    .collect(),
                provider,
                protocol,
                base_url,
                api_key: up.api_key.clone(),
                responses: up.responses.unwrap_or(provider.speaks_responses()),
                max_output_tokens: up.max_output_tokens,
                prices: up.prices.clone(),
                stream_usage: up.stream_usage.unwrap_or(provider.takes_stream_options()),
                model_rules: up.model_rules.clone(),
                auth_header: up
                    .api_key
                    .as_ref()
                    .map(|key| auth_header(protocol, key))
                    .transpose(),
            });
        }
        let jwt = config.auth.jwt.secret.as_ref().map(|secret| {
            let jwt = &config.auth.jwt;
            JwtSettings::with_rules(
                secret.expose(),
                &jwt.issuer,
                jwt.expiration_hours,
                jwt.audience.as_deref(),
                jwt.ceiling.clone(),
            )
        });
        let secrets = upstreams
            .iter()
            .filter_map(|u: &UpstreamTarget| u.api_key.as_ref())
            .chain(config.auth.jwt.secret.as_ref())
            .map(|secret| secret.expose().to_owned())
            .collect();
        let snapshot = Snapshot {
            secrets,
            upstreams,
            limits: config.server.clone(),
            jwt,
            allow_loopback: config.auth.allow_loopback,
        };
        (snapshot, specs)
    }
}
