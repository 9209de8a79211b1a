//! The admin API's request and response bodies, as types: the server (`api`) builds its
//! answers from them, the CLI (`client`, `commands`) and `/metrics` read them back through
//! them. A renamed field is a compile error on both sides, never silently blank output.
//!
//! The field names are the JSON the web UI (`ui/`) reads: they must not change. Optional
//! fields that some states lack are left out of the JSON (as before), except where the UI
//! relies on an explicit `null` (`public_url`, `expires_at`).

use std::collections::BTreeMap;

use gate_core::accounting::{KeyPolicy, ModelPatterns, Period, Usd};
use serde::{Deserialize, Serialize};

use crate::auth::{parse_duration_secs, KeyEdit};

/// `GET status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub runtime: String,
    /// `http://host:port` of the TCP listener (web UI, model API).
    pub listen: String,
    pub state_dir: String,
    pub config_files: Vec<String>,
    pub upstreams: Vec<UpstreamView>,
    pub relay: RelayView,
    pub certificate: CertificateView,
    pub last_reload_error: Option<ReloadErrorView>,
}

/// Why the last reload was refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadErrorView {
    pub message: String,
    pub at_unix: u64,
}

/// One upstream in `status` and `GET upstreams` (never its key, only whether it is set).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpstreamView {
    pub name: String,
    pub provider: String,
    pub base_url: String,
    pub api_key: KeyState,
    pub models: Vec<String>,
    pub aliases: BTreeMap<String, String>,
    pub enabled: bool,
    /// Where `provider` was set (`config /etc/gate.toml:3:1`, `env ...`).
    pub origin: Option<String>,
    /// That origin's layer name.
    pub layer: Option<String>,
    pub health: HealthView,
    /// A configuration that cannot work as written (a `custom` base URL without `/v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misconfiguration: Option<String>,
}

/// Whether a secret is set, and where.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyState {
    pub set: bool,
    pub origin: Option<String>,
}

/// An upstream's circuit: `healthy`, `circuit open`, `trial` or `unknown`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HealthView {
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_secs: Option<u64>,
}

/// The relay side in `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RelayView {
    /// `registered`, `connecting`, `configured; takes effect at the next start` or
    /// `not configured`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relays: Option<Vec<RelayLink>>,
    /// Always present (`null` when there is none).
    pub public_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_urls: Option<Vec<String>>,
    /// The configured relays, when they are not running yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
}

/// One relay connection of a running daemon (also what `/metrics` reads).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelayLink {
    pub address: String,
    /// `disconnected`, `connecting`, `registering`, [`RelayLink::REGISTERED`], `draining`.
    pub state: String,
    pub names: Vec<String>,
    pub public_urls: Vec<String>,
    pub custom_name_refusal: Option<String>,
    pub last_error: Option<String>,
    pub registrations: u64,
    /// `quic` or `tcp` (TLS over TCP when UDP to the relay is blocked), while connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
}

impl RelayLink {
    /// The state of a relay that has this daemon registered.
    pub const REGISTERED: &'static str = "registered";

    /// Whether the relay has this daemon registered.
    pub fn registered(&self) -> bool {
        self.state == Self::REGISTERED
    }
}

/// The certificate served on relayed connections, in `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertificateView {
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_unix: Option<u64>,
    /// Always present (`null` when there is no certificate).
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme_last_error: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme_consecutive_failures: Option<u32>,
}

/// `GET config`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigView {
    /// `{"key.path": {"value": .., "origin": ..}}` (keys are config paths, so a map).
    pub values: serde_json::Value,
    pub runtime_file: String,
    pub last_reload_error: Option<ReloadErrorView>,
}

/// `GET upstreams`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpstreamList {
    pub upstreams: Vec<UpstreamView>,
    pub providers: Vec<String>,
}

/// `PUT config/KEY`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetValue {
    /// A string, number, boolean or list of strings.
    pub value: serde_json::Value,
}

/// `POST upstreams` / `PUT upstreams/NAME`, from the CLI and the web form. An absent or
/// `null` field, and an empty `base_url` or `api_key` (a form's untouched field), leave the
/// value as it is; an unknown field is refused.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Models>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<Flag>,
}

/// A model list: a JSON list, or comma-separated text as a form field gives it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Models {
    List(Vec<String>),
    Text(String),
}

impl Models {
    /// The models, trimmed, empty ones dropped.
    pub fn to_list(&self) -> Vec<String> {
        let items: Vec<&str> = match self {
            Models::List(items) => items.iter().map(String::as_str).collect(),
            Models::Text(text) => text.split(',').collect(),
        };
        items
            .into_iter()
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A yes/no: a JSON boolean, or text the configuration accepts (`true`, `off`, ...).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Flag {
    Bool(bool),
    Text(String),
}

impl Flag {
    /// As the text the configuration's converter takes.
    pub fn to_text(&self) -> String {
        match self {
            Flag::Bool(b) => b.to_string(),
            Flag::Text(text) => text.clone(),
        }
    }
}

/// `GET tokens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// One API key (never the key).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub expired: bool,
    /// Models, rpm, tpm, budget `{usd, period}`, owner; fields absent: no limit.
    #[serde(default)]
    pub policy: KeyPolicy,
    /// Spent in the current period (the budget's; a month without one), settled requests.
    #[serde(default)]
    pub spent_usd: Usd,
    /// Held by requests in flight (reserved, not yet settled).
    #[serde(default)]
    pub held_usd: Usd,
    #[serde(default)]
    pub period: Period,
    /// The last request with this key, Unix seconds (from the usage log).
    #[serde(default)]
    pub last_used_at: Option<u64>,
}

/// `POST tokens` (create) and `PATCH tokens/ID` (change). A field left out stays as it is
/// (create: no limit); `null` removes a limit. `models` is a list or a comma-separated
/// string (empty: every model), `budget` a number of dollars or a string such as `"$20"`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenEdit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A lifetime from now such as `30d`; `null` or `"never"`: no expiry.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub expires: Option<Option<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub models: Option<Option<ModelPatterns>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub rpm: Option<Option<u32>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub tpm: Option<Option<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub budget: Option<Option<Usd>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub owner: Option<Option<String>>,
}

/// The old name of [`TokenEdit`] for `POST tokens`.
pub type CreateToken = TokenEdit;

/// A field that is present: `null` is `Some(None)`, absent stays `None` (serde `default`).
fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl TokenEdit {
    /// The checked edit, or what is wrong with it (field named).
    pub fn to_key_edit(&self) -> Result<KeyEdit, String> {
        let expires_in = match &self.expires {
            None => None,
            Some(None) => Some(None),
            Some(Some(text)) if matches!(text.trim(), "never" | "none" | "") => Some(None),
            Some(Some(text)) => Some(Some(
                parse_duration_secs(text).map_err(|e| format!("`expires`: {e}"))?,
            )),
        };
        Ok(KeyEdit {
            name: self.name.clone(),
            expires_in,
            models: self.models.clone().map(Option::unwrap_or_default),
            rpm: self.rpm,
            tpm: self.tpm,
            budget: self.budget,
            period: self.period,
            owner: self.owner.clone(),
        })
    }
}

/// The answer to `POST tokens`: the key is in this answer only.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreatedToken {
    pub id: String,
    pub name: String,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub token: String,
}

/// The answer to a change: `{"ok": true, "key"|"name"|"id": ...}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Done {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Done {
    /// `{"ok": true, "key": key}`.
    pub fn key(key: &str) -> Self {
        Done {
            ok: true,
            key: Some(key.to_owned()),
            name: None,
            id: None,
        }
    }
    /// `{"ok": true, "name": name}`.
    pub fn name(name: &str) -> Self {
        Done {
            ok: true,
            key: None,
            name: Some(name.to_owned()),
            id: None,
        }
    }
    /// `{"ok": true, "id": id}`.
    pub fn id(id: &str) -> Self {
        Done {
            ok: true,
            key: None,
            name: None,
            id: Some(id.to_owned()),
        }
    }
}

/// `POST login-url`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginUrl {
    pub url: String,
}

/// `GET reload`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadView {
    pub last_reload_error: Option<ReloadErrorView>,
}

/// `GET models`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelList {
    pub models: Vec<ModelView>,
}

/// A model clients can ask for, with the upstreams tried in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelView {
    pub model: String,
    pub routes: Vec<RouteView>,
}

/// One upstream a model is routed to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteView {
    pub upstream: String,
    pub upstream_model: String,
    /// `listed`, `provider default` or `discovered`.
    pub why: String,
}

/// Any admin API error: `{"error": message}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// `GET usage?since=7d&by=key`: the usage log summed per group (`gate usage --json` prints
/// the `rows`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UsageSummary {
    /// The start of the summed time, Unix milliseconds.
    pub since_ms: u64,
    /// What the rows are grouped by: `key`, `model`, `upstream`, `day` or `owner`.
    pub by: String,
    pub rows: Vec<UsageRow>,
    /// All rows together (`group` is null).
    pub total: UsageRow,
}

/// One group of the usage log.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct UsageRow {
    /// The key id, model, upstream, day (`YYYY-MM-DD`, UTC) or owner; null when the
    /// records had none (no upstream reached, no owner).
    pub group: Option<String>,
    /// For `by=key`: the key's name in `tokens.json` (absent for JWT subjects and revoked
    /// keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    /// The sum of the known costs, in US dollars.
    pub cost_usd: Usd,
    /// Requests whose cost is unknown (no price for their model): `cost_usd` leaves them
    /// out, so it is a lower bound when this is not 0.
    pub unknown_cost_requests: u64,
    /// Requests that failed (status 400 or more, or an error kind).
    pub errors: u64,
}

/// `GET usage/series?since=30d`: what the web UI charts, per UTC day.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct UsageSeries {
    pub since_ms: u64,
    /// Spend per day per key.
    pub spend: Vec<SpendPoint>,
    /// Tokens per day per model (the model clients asked for).
    pub tokens: Vec<TokenPoint>,
}

/// One key's spend on one day.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SpendPoint {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub requests: u64,
    pub cost_usd: Usd,
    pub unknown_cost_requests: u64,
}

/// One model's tokens on one day.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TokenPoint {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
}
