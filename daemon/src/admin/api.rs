//! The admin JSON API (`/admin/api/...`), called by the web UI and by the CLI when a
//! daemon is running. Every change goes through the core's editing helpers, is written
//! atomically and applied at once ([`Reloader::edit_runtime`]); a refused change returns
//! 400 with the reason and changes nothing.
//!
//! Routes (all need the admin token or a UI session; see the parent module):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `status` | version, listen URL, upstreams with circuit health, relay, certificate, last reload error |
//! | GET | `config` | merged configuration with the origin of each value (secrets as `"(set)"`) |
//! | PUT | `config/KEY` `{"value": ..}` | set a key in the runtime layer |
//! | DELETE | `config/KEY` | unset a key of the runtime layer |
//! | GET | `upstreams` | upstreams; keys only as set / not set with their origin |
//! | POST | `upstreams` `{"name","provider","base_url"?,"api_key"?,"models"?}` | add (or replace keys of) an upstream |
//! | PUT | `upstreams/NAME` `{"provider"?,"base_url"?,"api_key"?,"models"?,"enabled"?}` | edit |
//! | DELETE | `upstreams/NAME` | remove (stays removed even if a `--config` file defines it) |
//! | GET | `tokens` | API keys (ids and names, never the keys) |
//! | POST | `tokens` `{"name","expires"?,"models"?,"rpm"?,"tpm"?,"budget"?,"period"?,"owner"?}` | create; the key is in this answer only |
//! | PATCH | `tokens/ID` `{"models"?,"rpm"?,"tpm"?,"budget"?,"period"?,"owner"?,"expires"?,"name"?}` | change a key's policy (`null` removes a limit) |
//! | DELETE | `tokens/ID` | revoke |
//! | GET | `models` | models clients can ask for, with the upstreams tried in order |
//! | GET | `reload` | the last reload error, if any |
//! | GET | `usage?since=7d&by=key` | the usage log summed per key, model, upstream, day or owner (`gate usage --json` rows, plus the total) |
//! | GET | `usage/series?since=30d` | spend per day per key and tokens per day per model, for the web UI's charts |
//! | POST | `login-url` | a fresh one-time web UI login URL |

use std::time::Instant;

use gate_core::config::{self, DaemonConfig, Loaded, DAEMON_SCHEMA};
use gate_core::route::{Health, Tier};
use gate_rt::Runtime;
use http::{Method, Response, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::types::{
    CertificateView, ConfigView, CreatedToken, Done, Flag, HealthView, KeyState, LoginUrl,
    ModelList, ModelView, RelayView, ReloadErrorView, ReloadView, RouteView, SetValue, Status,
    TokenEdit, TokenList, TokenView, UpstreamList, UpstreamRequest, UpstreamView,
};
use super::{api_error, Admin};
use crate::reload::EditError;
use crate::web::{self, Body, Peer};

/// Dispatches one authenticated admin API request (`route` is the path after `/admin/api/`,
/// `query` what followed `?`).
pub async fn route<R: Runtime>(
    admin: &Admin<R>,
    method: &Method,
    route: &str,
    query: &str,
    body: &[u8],
    peer: Peer,
) -> Response<Body> {
    let (head, rest) = match route.split_once('/') {
        Some((head, rest)) => (head, Some(percent_decode(rest))),
        None => (route, None),
    };
    let rest = rest.as_deref();
    let result = match (method, head, rest) {
        (&Method::GET, "status", None) => typed(status(admin)),
        (&Method::GET, "config", None) => typed(config_view(admin)),
        (&Method::PUT, "config", Some(key)) => set_key(admin, key, body),
        (&Method::DELETE, "config", Some(key)) => unset_key(admin, key),
        (&Method::GET, "upstreams", None) => typed(UpstreamList {
            upstreams: upstreams_view(admin, &admin.reloader.current()),
            providers: config::PROVIDERS.iter().map(|p| (*p).to_owned()).collect(),
        }),
        (&Method::POST, "upstreams", None) => add_upstream(admin, body),
        (&Method::PUT, "upstreams", Some(name)) => edit_upstream(admin, name, body),
        (&Method::DELETE, "upstreams", Some(name)) => remove_upstream(admin, name),
        (&Method::GET, "tokens", None) => tokens_view(admin).await,
        (&Method::POST, "tokens", None) => create_token(admin, body).await,
        (&Method::PATCH, "tokens", Some(id)) => update_token(admin, id, body).await,
        (&Method::DELETE, "tokens", Some(id)) => revoke_token(admin, id).await,
        (&Method::GET, "models", None) => typed(models_view(admin)),
        (&Method::GET, "usage", None) => usage_summary(admin, query).await,
        (&Method::GET, "usage", Some("series")) => usage_series(admin, query).await,
        (&Method::GET, "reload", None) => typed(ReloadView {
            last_reload_error: reload_error(admin),
        }),
        (&Method::POST, "login-url", None) => admin
            .login_url()
            .map_err(|e| Failure::Internal(format!("{e:#}")))
            .and_then(|url| typed(LoginUrl { url })),
        _ => Err(Failure::NotFound(format!(
            "no admin route {method} /admin/api/{route}"
        ))),
    };
    match result {
        Ok(value) => web::json(StatusCode::OK, value),
        Err(Failure::Refused(message)) => {
            tracing::info!(peer = %peer.addr, %message, "admin change refused");
            api_error(StatusCode::BAD_REQUEST, &message)
        }
        Err(Failure::NotFound(message)) => api_error(StatusCode::NOT_FOUND, &message),
        Err(Failure::Internal(message)) => {
            tracing::error!(%message, "admin request failed");
            api_error(StatusCode::INTERNAL_SERVER_ERROR, &message)
        }
    }
}

/// Decodes `%XX` escapes of one path segment (what `encodeURIComponent` produces);
/// malformed escapes are kept as they are.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

enum Failure {
    Refused(String),
    NotFound(String),
    Internal(String),
}

impl From<EditError> for Failure {
    fn from(e: EditError) -> Self {
        match e {
            EditError::Refused(e) => Failure::Refused(format!("refused: {e}; nothing was changed")),
            EditError::Io(e) => Failure::Internal(format!("{e:#}")),
        }
    }
}

type ApiResult = Result<Value, Failure>;

/// A typed answer as the JSON body.
fn typed<T: Serialize>(answer: T) -> ApiResult {
    serde_json::to_value(answer)
        .map_err(|e| Failure::Internal(format!("cannot encode the answer: {e}")))
}

fn reload_error<R: Runtime>(admin: &Admin<R>) -> Option<ReloadErrorView> {
    admin.reloader.last_error().map(|e| ReloadErrorView {
        message: e.message,
        at_unix: e.at_unix,
    })
}

/// A request body as its type; a refusal saying what was expected otherwise.
fn parse_typed<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, Failure> {
    serde_json::from_slice(body)
        .map_err(|e| Failure::Refused(format!("the body must be {shape}: {e}")))
}

/// A JSON value as the text the core's converters take (like an environment value).
fn value_text(field: &str, value: &Value) -> Result<String, Failure> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Array(items) => {
            if items.iter().all(Value::is_string) {
                Ok(value.to_string())
            } else {
                Err(Failure::Refused(format!(
                    "`{field}`: a list must hold strings only"
                )))
            }
        }
        _ => Err(Failure::Refused(format!(
            "`{field}`: expected a string, number, boolean or list of strings"
        ))),
    }
}

fn origin_short(loaded: &Loaded<DaemonConfig>, key: &str) -> Option<String> {
    loaded.merged.get(key).map(|leaf| leaf.origin.short())
}

fn origin_layer(loaded: &Loaded<DaemonConfig>, key: &str) -> Option<&'static str> {
    loaded
        .merged
        .get(key)
        .map(|leaf| leaf.origin.layer().name())
}

fn health_view(health: Option<Health>, now: Instant) -> HealthView {
    let (state, retry_in_secs) = match health {
        Some(Health::Closed) => ("healthy", None),
        Some(Health::Open { until }) => (
            "circuit open",
            Some(until.saturating_duration_since(now).as_secs()),
        ),
        Some(Health::HalfOpen { .. }) => ("trial", None),
        None => ("unknown", None),
    };
    HealthView {
        state: state.to_owned(),
        retry_in_secs,
    }
}

fn upstreams_view<R: Runtime>(
    admin: &Admin<R>,
    loaded: &Loaded<DaemonConfig>,
) -> Vec<UpstreamView> {
    let now = Instant::now();
    let health = admin.reloader.gateway().upstream_health(now);
    loaded
        .config
        .upstreams
        .values()
        .map(|u| {
            let prefix = format!("upstreams.{}", u.name);
            let key_name = format!("{prefix}.api_key");
            UpstreamView {
                name: u.name.clone(),
                provider: u.provider.name().to_owned(),
                base_url: u.base_url.clone(),
                api_key: KeyState {
                    set: u.api_key.is_some(),
                    origin: origin_short(loaded, &key_name),
                },
                models: u.models.clone(),
                aliases: u.aliases.clone(),
                enabled: u.enabled,
                origin: origin_short(loaded, &format!("{prefix}.provider")),
                layer: origin_layer(loaded, &format!("{prefix}.provider")).map(str::to_owned),
                health: health_view(
                    health
                        .iter()
                        .find(|(name, _)| *name == u.name)
                        .map(|(_, h)| *h),
                    now,
                ),
                misconfiguration: crate::commands::unversioned_custom_url(
                    u.provider.name(),
                    &u.base_url,
                ),
            }
        })
        .collect()
}

fn status<R: Runtime>(admin: &Admin<R>) -> Status {
    let loaded = admin.reloader.current();
    let c = &loaded.config;
    let remote = admin.remote.get().map(|r| r.status());
    let relay = match (&remote, c.relay.enable) {
        (Some(status), _) => {
            let public_urls: Vec<String> = status
                .relays
                .iter()
                .flat_map(|r| r.public_urls.iter().cloned())
                .collect();
            let connected = status.relays.iter().any(|r| r.registered());
            RelayView {
                state: if connected {
                    "registered"
                } else {
                    "connecting"
                }
                .to_owned(),
                node_id: Some(status.node_id.clone()),
                relays: Some(status.relays.clone()),
                public_url: public_urls.first().cloned(),
                public_urls: Some(public_urls),
                addresses: None,
            }
        }
        (None, true) => RelayView {
            state: "configured; takes effect at the next start".to_owned(),
            node_id: None,
            relays: None,
            public_url: None,
            public_urls: None,
            addresses: Some(
                c.relay
                    .addresses
                    .iter()
                    .map(|a| format!("{}:{}", a.host, a.port))
                    .collect(),
            ),
        },
        (None, false) => RelayView {
            state: "not configured".to_owned(),
            node_id: None,
            relays: None,
            public_url: None,
            public_urls: None,
            addresses: None,
        },
    };
    let certificate = match remote.as_ref().and_then(|r| r.certificate.clone()) {
        Some(info) => {
            let acme = remote.as_ref().and_then(|r| r.acme.clone());
            let (acme_last_error, acme_consecutive_failures) = match acme {
                Some(acme) => (Some(acme.last_error), Some(acme.consecutive_failures)),
                None if c.letsencrypt.enabled => (
                    Some(Some("waiting for a relay registration".to_owned())),
                    None,
                ),
                None => (None, None),
            };
            CertificateView {
                state: if info.self_signed {
                    "self-signed (until Let's Encrypt delivers one)"
                } else {
                    "issued"
                }
                .to_owned(),
                names: Some(info.names.clone()),
                self_signed: Some(info.self_signed),
                serial: Some(info.serial.clone()),
                expires_at_unix: Some(info.expiry_unix_seconds()),
                expires_at: Some(info.expiry_unix_seconds()),
                acme_last_error,
                acme_consecutive_failures,
            }
        }
        None => CertificateView {
            state: "not configured".to_owned(),
            names: None,
            self_signed: None,
            serial: None,
            expires_at_unix: None,
            expires_at: None,
            acme_last_error: None,
            acme_consecutive_failures: None,
        },
    };
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        runtime: R::NAME.to_owned(),
        listen: super::base_url(admin.listen),
        state_dir: admin.reloader.state_dir().display().to_string(),
        config_files: admin
            .reloader
            .config_files()
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        upstreams: upstreams_view(admin, &loaded),
        relay,
        certificate,
        last_reload_error: reload_error(admin),
    }
}

fn config_view<R: Runtime>(admin: &Admin<R>) -> ConfigView {
    let loaded = admin.reloader.current();
    ConfigView {
        values: loaded.merged.render_json(),
        runtime_file: crate::settings::runtime_file(admin.reloader.state_dir())
            .display()
            .to_string(),
        last_reload_error: reload_error(admin),
    }
}

fn set_key<R: Runtime>(admin: &Admin<R>, key: &str, body: &[u8]) -> ApiResult {
    let request: SetValue = parse_typed(body, "{\"value\": ...}")?;
    let text = value_text(key, &request.value)?;
    admin
        .reloader
        .edit_runtime(|sources| config::runtime_set(&DAEMON_SCHEMA, sources, key, &text))?;
    tracing::info!(%key, "admin: set a key in the runtime configuration");
    typed(Done::key(key))
}

fn unset_key<R: Runtime>(admin: &Admin<R>, key: &str) -> ApiResult {
    admin
        .reloader
        .edit_runtime(|sources| config::runtime_unset(&DAEMON_SCHEMA, sources, key))?;
    tracing::info!(%key, "admin: unset a key of the runtime configuration");
    typed(Done::key(key))
}

/// The assignments for an upstream's fields present in `request`.
fn upstream_assignments(name: &str, request: &UpstreamRequest) -> Vec<(String, String)> {
    let non_empty = |v: &Option<String>| v.clone().filter(|text| !text.is_empty());
    let fields = [
        ("provider", request.provider.clone()),
        ("base_url", non_empty(&request.base_url)),
        ("api_key", non_empty(&request.api_key)),
        (
            "models",
            request
                .models
                .as_ref()
                .map(|m| serde_json::Value::from(m.to_list()).to_string()),
        ),
        ("enabled", request.enabled.as_ref().map(Flag::to_text)),
    ];
    fields
        .into_iter()
        .filter_map(|(field, text)| Some((format!("upstreams.{name}.{field}"), text?)))
        .collect()
}

fn parse_upstream(body: &[u8]) -> Result<UpstreamRequest, Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(UpstreamRequest::default());
    }
    parse_typed(
        body,
        "an object with name, provider, base_url, api_key, models, enabled",
    )
}

fn apply_upstream<R: Runtime>(
    admin: &Admin<R>,
    name: &str,
    request: &UpstreamRequest,
) -> ApiResult {
    let assignments = upstream_assignments(name, request);
    if assignments.is_empty() {
        return Err(Failure::Refused("nothing to change".into()));
    }
    let refs: Vec<(&str, &str)> = assignments
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    admin
        .reloader
        .edit_runtime(|sources| config::runtime_set_many(&DAEMON_SCHEMA, sources, &refs))?;
    let fields: Vec<&str> = assignments
        .iter()
        .filter_map(|(k, _)| k.rsplit('.').next())
        .collect();
    tracing::info!(upstream = %name, fields = ?fields, "admin: upstream saved");
    typed(Done::name(name))
}

fn add_upstream<R: Runtime>(admin: &Admin<R>, body: &[u8]) -> ApiResult {
    let request = parse_upstream(body)?;
    let name = request
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Failure::Refused("the body needs a `name`".into()))?;
    if request.provider.is_none() && !config::PROVIDERS.contains(&name.as_str()) {
        return Err(Failure::Refused(format!(
            "upstream `{name}` needs a `provider` (one of {})",
            config::PROVIDERS.join(", ")
        )));
    }
    apply_upstream(admin, &name, &request)
}

fn edit_upstream<R: Runtime>(admin: &Admin<R>, name: &str, body: &[u8]) -> ApiResult {
    let request = parse_upstream(body)?;
    if !admin.reloader.current().config.upstreams.contains_key(name) {
        return Err(Failure::NotFound(format!("no upstream named `{name}`")));
    }
    apply_upstream(admin, name, &request)
}

fn remove_upstream<R: Runtime>(admin: &Admin<R>, name: &str) -> ApiResult {
    if !admin.reloader.current().config.upstreams.contains_key(name) {
        return Err(Failure::NotFound(format!("no upstream named `{name}`")));
    }
    admin
        .reloader
        .edit_runtime(|sources| config::runtime_remove_upstream(&DAEMON_SCHEMA, sources, name))?;
    tracing::info!(upstream = %name, "admin: upstream removed");
    typed(Done::name(name))
}

async fn tokens_view<R: Runtime>(admin: &Admin<R>) -> ApiResult {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let gateway = admin.reloader.gateway();
    let (records, last_used) = match gateway.shared() {
        Some(shared) => {
            // The keys as this daemon checks them (the store's, at most a sync old), and
            // last use by every daemon.
            let last_used = shared.last_used().await.map_err(|e| {
                Failure::Internal(format!("reading last use from the shared store: {e}"))
            })?;
            (gateway.key_records(), last_used)
        }
        None => {
            let store = crate::auth::TokenStore::load(admin.reloader.state_dir())
                .map_err(|e| Failure::Internal(format!("{e:#}")))?;
            let path = crate::usage::UsageDb::path_in(admin.reloader.state_dir());
            let last_used = crate::usage::UsageDb::open_read_only(&path)
                .ok()
                .flatten()
                .and_then(|db| db.last_used().ok())
                .unwrap_or_default();
            (store.list(), last_used)
        }
    };
    let rows: Vec<TokenView> = records
        .iter()
        .map(|t| (t, gateway.key_spend(&t.id)))
        .map(|(t, (spend, period))| TokenView {
            spent_usd: spend.spent,
            held_usd: spend.reserved,
            period,
            last_used_at: last_used.get(&t.id).map(|ms| ms / 1000),
            id: t.id.clone(),
            name: t.name.clone(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            expired: t.expires_at.is_some_and(|e| e <= now),
            policy: t.policy.clone(),
        })
        .collect();
    typed(TokenList { tokens: rows })
}

const TOKEN_EDIT_SHAPE: &str = "{\"name\": \"ci\", \"models\": \"gpt-*,claude-*\", \"rpm\": 60, \
     \"tpm\": 100000, \"budget\": 20, \"period\": \"month\", \"owner\": \"alice\", \"expires\": \"30d\"}";

/// A key change in the shared store, then the daemon's copy of the keys read again, so the
/// change is in force here when the answer goes out (the other daemons see it at their next
/// sync).
async fn shared_key_change<R: Runtime, T>(
    admin: &Admin<R>,
    change: impl std::future::Future<Output = Result<T, crate::shared::KeyChangeError>>,
) -> Result<T, Failure> {
    let out = change.await.map_err(|e| match e {
        crate::shared::KeyChangeError::Invalid(message) => Failure::Refused(message),
        store @ crate::shared::KeyChangeError::Store(_) => Failure::Internal(store.to_string()),
    })?;
    let gateway = admin.reloader.gateway();
    if let Some(shared) = gateway.shared() {
        match shared.load_keys().await {
            Ok(keys) => gateway.set_tokens(crate::auth::TokenStore::from_records(keys)),
            Err(e) => {
                tracing::warn!(error = %e, "key changed; this daemon's copy follows at its next sync")
            }
        }
    }
    Ok(out)
}

async fn create_token<R: Runtime>(admin: &Admin<R>, body: &[u8]) -> ApiResult {
    let request: TokenEdit = if body.iter().all(u8::is_ascii_whitespace) {
        TokenEdit::default()
    } else {
        parse_typed(body, TOKEN_EDIT_SHAPE)?
    };
    let edit = request.to_key_edit().map_err(Failure::Refused)?;
    let gateway = admin.reloader.gateway();
    let (record, token) = match gateway.shared() {
        Some(shared) => shared_key_change(admin, shared.create_key(&edit)).await?,
        None => admin
            .reloader
            .edit_tokens(|store| store.create_with(&edit))
            .map_err(|e| Failure::Refused(format!("{e:#}")))?,
    };
    tracing::info!(id = %record.id, name = %record.name, "admin: API key created");
    typed(CreatedToken {
        id: record.id,
        name: record.name,
        created_at: record.created_at,
        expires_at: record.expires_at,
        token,
    })
}

async fn update_token<R: Runtime>(admin: &Admin<R>, id: &str, body: &[u8]) -> ApiResult {
    let request: TokenEdit = parse_typed(body, TOKEN_EDIT_SHAPE)?;
    let edit = request.to_key_edit().map_err(Failure::Refused)?;
    let gateway = admin.reloader.gateway();
    let updated = match gateway.shared() {
        Some(shared) => shared_key_change(admin, shared.update_key(id, &edit)).await?,
        None => admin
            .reloader
            .edit_tokens(|store| store.update(id, &edit))
            .map_err(|e| Failure::Refused(format!("{e:#}")))?,
    };
    if updated.is_none() {
        return Err(Failure::NotFound(format!("no API key has id {id}")));
    }
    tracing::info!(%id, "admin: API key changed");
    typed(Done::id(id))
}

async fn revoke_token<R: Runtime>(admin: &Admin<R>, id: &str) -> ApiResult {
    let gateway = admin.reloader.gateway();
    let revoked = match gateway.shared() {
        Some(shared) => shared_key_change(admin, shared.revoke_key(id)).await?,
        None => admin
            .reloader
            .edit_tokens(|store| store.revoke(id))
            .map_err(|e| Failure::Internal(format!("{e:#}")))?,
    };
    if !revoked {
        return Err(Failure::NotFound(format!("no API key has id {id}")));
    }
    tracing::info!(%id, "admin: API key revoked");
    typed(Done::id(id))
}

/// The value of `name` in a query string (`a=1&b=2`), percent-decoded (`+` as a space).
fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_decode(&value.replace('+', " ")))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `since=` of a usage route (`default` when absent).
fn since_param(query: &str, default: &str) -> Result<u64, Failure> {
    let text = query_param(query, "since").unwrap_or_else(|| default.to_owned());
    crate::usage::parse_since(&text, now_ms())
        .map_err(|e| Failure::Refused(format!("`since`: {e}")))
}

/// Key id -> name, as this daemon knows the keys.
fn key_names<R: Runtime>(admin: &Admin<R>) -> std::collections::BTreeMap<String, String> {
    admin
        .reloader
        .gateway()
        .key_records()
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect()
}

async fn usage_summary<R: Runtime>(admin: &Admin<R>, query: &str) -> ApiResult {
    let since_ms = since_param(query, "7d")?;
    let by = match query_param(query, "by") {
        Some(text) => crate::usage::GroupBy::parse(&text)
            .map_err(|e| Failure::Refused(format!("`by`: {e}")))?,
        None => crate::usage::GroupBy::Key,
    };
    if let Some(shared) = admin.reloader.gateway().shared() {
        let mut rows = shared
            .summary(since_ms, by)
            .await
            .map_err(|e| Failure::Internal(format!("reading the shared usage log: {e}")))?;
        if by == crate::usage::GroupBy::Key {
            let names = key_names(admin);
            for row in &mut rows {
                row.name = row.group.as_ref().and_then(|id| names.get(id).cloned());
            }
        }
        return typed(super::types::UsageSummary {
            since_ms,
            by: by.as_str().to_owned(),
            total: crate::usage::store::total(&rows),
            rows,
        });
    }
    let state_dir = admin.reloader.state_dir().to_path_buf();
    let summary =
        crate::usage::blocking(move || crate::usage::report::summary(&state_dir, since_ms, by))
            .await
            .map_err(Failure::Internal)?
            .map_err(|e| Failure::Internal(format!("{e:#}")))?;
    typed(summary)
}

async fn usage_series<R: Runtime>(admin: &Admin<R>, query: &str) -> ApiResult {
    let since_ms = since_param(query, "30d")?;
    if let Some(shared) = admin.reloader.gateway().shared() {
        let mut series = shared
            .series(since_ms)
            .await
            .map_err(|e| Failure::Internal(format!("reading the shared usage log: {e}")))?;
        let names = key_names(admin);
        for point in &mut series.spend {
            point.name = names.get(&point.key_id).cloned();
        }
        return typed(series);
    }
    let state_dir = admin.reloader.state_dir().to_path_buf();
    let series = crate::usage::blocking(move || crate::usage::report::series(&state_dir, since_ms))
        .await
        .map_err(Failure::Internal)?
        .map_err(|e| Failure::Internal(format!("{e:#}")))?;
    typed(series)
}

fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Explicit => "listed",
        Tier::ProviderDefault => "provider default",
        Tier::Discovered => "discovered",
    }
}

fn models_view<R: Runtime>(admin: &Admin<R>) -> ModelList {
    let routes = admin.reloader.gateway().routes();
    let models = routes
        .into_iter()
        .map(|(model, candidates)| ModelView {
            model,
            routes: candidates
                .iter()
                .map(|c| RouteView {
                    upstream: c.upstream_name.to_string(),
                    upstream_model: c.upstream_model.to_string(),
                    why: tier_name(c.tier).to_owned(),
                })
                .collect(),
        })
        .collect();
    ModelList { models }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_path_segments() {
        assert_eq!(percent_decode("upstreams.a.models"), "upstreams.a.models");
        assert_eq!(percent_decode("gpt%2F4%20o"), "gpt/4 o");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn upstream_fields_become_assignments() {
        let body = serde_json::json!({
            "name": "x", "provider": "custom", "base_url": "", "api_key": "sk-1",
            "models": "a, b,,c", "enabled": false
        });
        let request: UpstreamRequest = serde_json::from_value(body).unwrap();
        let got = upstream_assignments("x", &request);
        assert_eq!(
            got,
            vec![
                ("upstreams.x.provider".to_owned(), "custom".to_owned()),
                ("upstreams.x.api_key".to_owned(), "sk-1".to_owned()),
                (
                    "upstreams.x.models".to_owned(),
                    r#"["a","b","c"]"#.to_owned()
                ),
                ("upstreams.x.enabled".to_owned(), "false".to_owned()),
            ]
        );
        let unknown = serde_json::json!({"name": "x", "colour": "red"});
        assert!(parse_upstream(unknown.to_string().as_bytes()).is_err());
        // A JSON list of models and a boolean work as well as the form's text.
        let list = br#"{"models": [" a", "b"], "enabled": true}"#;
        let request = parse_upstream(list).ok().unwrap();
        assert_eq!(
            upstream_assignments("x", &request),
            vec![
                ("upstreams.x.models".to_owned(), r#"["a","b"]"#.to_owned()),
                ("upstreams.x.enabled".to_owned(), "true".to_owned()),
            ]
        );
    }
}
