//! The daemon's typed configuration ([`DaemonConfig`]) and its cross-field rules.
//!
//! Owns: provider defaults (`base_url` per provider, provider inferred from an upstream
//! named after one), the rules that involve more than one key (a `custom` upstream needs
//! `base_url`; an enabled relay needs an address), and the conversion of the merged tree to
//! typed values. Must not know about layers or text formats.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::error::ConfigError;
use super::schema::{parse_relay_address, RelayAddress, PROVIDERS};
use super::tree::{Leaf, Node, Origin, Table, Value};
use super::Reader;
use crate::accounting::{Budget, KeyPolicy, ModelPatterns, Usd};

/// An upstream provider: the same type routing uses, so there is one list of providers.
pub use crate::route::ProviderKind as Provider;

/// A secret value: `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(set)")
    }
}

/// `[upstreams.<name>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The map key.
    pub name: String,
    /// The provider.
    pub provider: Provider,
    /// The base URL (provider default when not set).
    pub base_url: String,
    /// The provider key the gateway injects.
    pub api_key: Option<Secret>,
    /// Models this upstream serves explicitly.
    pub models: Vec<String>,
    /// Alias -> model name at this upstream.
    pub aliases: BTreeMap<String, String>,
    /// Whether routing may use it (default true).
    pub enabled: bool,
    /// Relative weight for the `weighted` strategy (`None` counts as 1).
    pub weight: Option<u32>,
    /// Whether it serves the Responses API itself (`None`: the provider's default).
    pub responses: Option<bool>,
    /// Output cap for requests Gate converts for this upstream.
    pub max_output_tokens: Option<u32>,
    /// Model -> price at this upstream, over the built-in table
    /// (`[upstreams.<name>.prices."<model>"]`).
    pub prices: BTreeMap<String, crate::accounting::Price>,
    /// Whether Gate may add `stream_options.include_usage` to pass-through chat streams
    /// (`None`: the provider's default).
    pub stream_usage: Option<bool>,
    /// Per-model rules overriding the built-in table's row (`model_rules."<model>"`).
    pub model_rules: BTreeMap<String, crate::llm::model_rules::ModelRuleOverride>,
}

/// `[relay]` of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonRelayConfig {
    /// Connect to relays.
    pub enable: bool,
    /// Relays to register with (all of them).
    pub addresses: Vec<RelayAddress>,
    /// Label for `<custom_domain>.<domain_suffix>`.
    pub custom_domain: Option<String>,
    /// `auto` (QUIC, falling back to TLS over TCP when UDP is blocked), `quic` or `tcp`.
    pub transport: String,
    /// The relays' HTTPS (TCP) port, where the tunnel over TCP is dialled.
    pub tcp_port: u16,
    /// The registration token presented to relays in token mode (`GATE_RELAY__TOKEN`).
    pub token: Option<Secret>,
}

/// `[auth.jwt]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// HS256 secret; JWT auth is off without it.
    pub secret: Option<Secret>,
    /// Required issuer (default "gate-daemon").
    pub issuer: String,
    /// The longest lifetime accepted (`exp` - `iat`, and `exp` - now), hours (default 24).
    pub expiration_hours: u32,
    /// Required `aud`; unset: tokens carrying an `aud` are refused.
    pub audience: Option<String>,
    /// The most any token may do: its claims are bounded by these (models, rpm, tpm,
    /// budget per period).
    pub ceiling: KeyPolicy,
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Trust clients on loopback without a token (default false; never via the relay).
    pub allow_loopback: bool,
    /// JWT settings.
    pub jwt: JwtConfig,
}

/// `[letsencrypt]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetsEncryptConfig {
    /// Get certificates by ACME DNS-01 through the relay.
    pub enabled: bool,
    /// ACME account contact.
    pub email: Option<String>,
    /// Use the Let's Encrypt staging directory.
    pub staging: bool,
    /// Extra names to include.
    pub domains: Vec<String>,
    /// Renew this many days before expiry (default 30).
    pub auto_renew_days: u32,
    /// Another ACME directory (e.g. Pebble).
    pub directory_url: Option<String>,
    /// PEM file of the root that signs that directory's HTTPS.
    pub ca_file: Option<String>,
}

/// `[server]`: limits of the daemon's HTTP serving and upstream calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest client request body (default 32 MiB).
    pub max_body_bytes: u64,
    /// TCP + TLS connect timeout to an upstream (default 10 s).
    pub connect_timeout: Duration,
    /// Longest silence on an upstream response before failing (default 300 s).
    pub idle_timeout: Duration,
    /// Lifecycle and listener limits.
    pub listen: ListenLimits,
    /// Largest buffered upstream answer: non-streamed bodies, error bodies, model lists
    /// (default 64 MiB).
    pub max_response_bytes: u64,
}

/// `[server]` keys of the daemon's lifecycle and listeners: how long a stop waits, and how
/// long a client connection may stay silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenLimits {
    /// On SIGTERM/SIGINT, how long requests and streams in flight may go on (default 30 s).
    pub shutdown_grace: Duration,
    /// Time from accepting a connection (or finishing the TLS handshake) to the first full
    /// request head; also the TLS handshake's own limit (default 10 s).
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight may stay silent (default 10 s).
    pub keep_alive_timeout: Duration,
    /// HTTP/2 PING interval on connections (default 20 s).
    pub http2_keepalive_interval: Duration,
    /// How long an HTTP/2 PING may go unanswered before the connection is closed (default 10 s).
    pub http2_keepalive_timeout: Duration,
    /// Open connections per listener (local, relayed); more are closed at once (default 4096).
    pub max_connections: usize,
}

/// `[routing]`: how the upstreams of one tier are ordered, per model or alias.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutingConfig {
    /// Model or alias (as clients name it) -> strategy; others are `ordered`.
    pub strategy: BTreeMap<String, crate::route::RouteStrategy>,
}

/// `[usage]`: the usage log (`<state_dir>/usage.db`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageConfig {
    /// Whether each request's usage is recorded (default true).
    pub enabled: bool,
    /// Days records are kept; 0 keeps them forever (default 90).
    pub retention_days: u32,
}

/// `store.on_unavailable`: what a budgeted or rate-limited key's request gets while a shared
/// store (PostgreSQL or Redis) cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnavailable {
    /// Refused (503, naming the store), the default: no key goes past its limits because
    /// daemons cannot see each other's spend and counters.
    #[default]
    Closed,
    /// Decided by this daemon alone: against the spend last seen from PostgreSQL, with its
    /// own limiter and ledger for what Redis would decide (daemons may together overspend by
    /// what the others spend during the outage).
    Open,
}

/// `[store]`: state shared by several daemons (issue 15).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DaemonStoreConfig {
    /// `postgres://user:password@host:port/database` (`GATE_STORE__URL`): keys, the usage
    /// log and budget spend. A secret, since it may carry the password. `None`: they stay in
    /// the state directory.
    pub url: Option<Secret>,
    /// `redis://[[user]:password@]host[:port][/db]` (`GATE_STORE__REDIS_URL`): rate-limit
    /// counters and in-flight budget reservations. A secret (it may carry the password).
    /// `None`: they stay in this daemon's memory.
    pub redis_url: Option<Secret>,
    /// What a limited key gets while a store is unreachable (default closed).
    pub on_unavailable: OnUnavailable,
}

/// The daemon's whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Listen host for the HTTP API and web UI (default 127.0.0.1).
    pub host: String,
    /// Listen port (default 3000).
    pub port: u16,
    /// QUIC port (default 41147).
    pub p2p_port: u16,
    /// Tracing filter (default "info").
    pub log_level: String,
    /// Relay client.
    pub relay: DaemonRelayConfig,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Client authentication.
    pub auth: AuthConfig,
    /// ACME.
    pub letsencrypt: LetsEncryptConfig,
    /// Limits.
    pub server: ServerLimits,
    /// Routing strategies.
    pub routing: RoutingConfig,
    /// The usage log.
    pub usage: UsageConfig,
    /// Shared state (`[store]`).
    pub store: DaemonStoreConfig,
}

fn upstream_entries(tree: &Table) -> impl Iterator<Item = (&String, &Table)> {
    let map = match tree.get("upstreams") {
        Some(Node::Table(map)) => Some(map),
        _ => None,
    };
    map.into_iter().flat_map(|m| {
        m.iter().filter_map(|(name, node)| match node {
            Node::Table(t) => Some((name, t)),
            Node::Leaf(_) => None,
        })
    })
}

/// `[routing.strategy]`: model or alias -> strategy. Values were checked by the schema
/// ([`super::schema::StrCheck::RouteStrategy`]); anything else is skipped.
fn routing_strategies(tree: &Table) -> BTreeMap<String, crate::route::RouteStrategy> {
    let Some(Node::Table(routing)) = tree.get("routing") else {
        return BTreeMap::new();
    };
    let Some(Node::Table(strategies)) = routing.get("strategy") else {
        return BTreeMap::new();
    };
    strategies
        .iter()
        .filter_map(|(model, node)| match node {
            Node::Leaf(Leaf {
                value: Value::String(name),
                ..
            }) => Some((model.clone(), crate::route::RouteStrategy::from_name(name)?)),
            _ => None,
        })
        .collect()
}

/// `[upstreams.<name>.prices]`: model -> price. Values were checked by the schema
/// ([`super::schema::StrCheck::Usd`]) and `input`/`output` by [`check_tree`].
fn upstream_prices(entry: &Table) -> BTreeMap<String, crate::accounting::Price> {
    let Some(Node::Table(prices)) = entry.get("prices") else {
        return BTreeMap::new();
    };
    let amount = |price: &Table, field: &str| match price.get(field) {
        Some(Node::Leaf(Leaf {
            value: Value::String(text),
            ..
        })) => crate::accounting::Usd::parse(text).ok(),
        _ => None,
    };
    prices
        .iter()
        .filter_map(|(model, node)| {
            let Node::Table(price) = node else {
                return None;
            };
            let input = amount(price, "input")?;
            Some((
                model.clone(),
                crate::accounting::Price {
                    input,
                    output: amount(price, "output")?,
                    cached: amount(price, "cached").unwrap_or(input),
                    cache_write: amount(price, "cache_write").unwrap_or(input),
                },
            ))
        })
        .collect()
}

/// Fill `provider` from the upstream's name when the name is a provider, and `base_url`
/// from the provider's default.
pub(crate) fn derive_defaults(tree: &mut Table) {
    let Some(Node::Table(map)) = tree.get_mut("upstreams") else {
        return;
    };
    for (name, node) in map.iter_mut() {
        let Node::Table(entry) = node else { continue };
        if !entry.contains_key("provider") && PROVIDERS.contains(&name.as_str()) && name != "custom"
        {
            entry.insert(
                "provider".to_owned(),
                Node::Leaf(Leaf {
                    value: Value::String(name.clone()),
                    origin: Origin::Derived {
                        reason: "the upstream's name".to_owned(),
                    },
                }),
            );
        }
        let provider = match entry.get("provider") {
            Some(Node::Leaf(Leaf {
                value: Value::String(p),
                ..
            })) => Provider::from_name(p),
            _ => None,
        };
        if let Some(url) = provider.and_then(Provider::default_base_url) {
            if !entry.contains_key("base_url") {
                entry.insert(
                    "base_url".to_owned(),
                    Node::Leaf(Leaf {
                        value: Value::String(url.to_owned()),
                        origin: Origin::Derived {
                            reason: format!(
                                "default for provider {}",
                                provider.map_or("", Provider::name)
                            ),
                        },
                    }),
                );
            }
        }
    }
}

/// The first origin found in a table, to point at where an entry was defined.
fn any_origin(table: &Table) -> Origin {
    for node in table.values() {
        match node {
            Node::Leaf(leaf)
                if !matches!(leaf.origin, Origin::Default | Origin::Derived { .. }) =>
            {
                return leaf.origin.clone()
            }
            Node::Table(inner) => {
                let origin = any_origin(inner);
                if origin != Origin::Default {
                    return origin;
                }
            }
            Node::Leaf(_) => {}
        }
    }
    Origin::Default
}

/// Rules across keys: every upstream has a provider; `custom` has a `base_url`; an enabled
/// relay has at least one address.
pub(crate) fn check_tree(tree: &Table) -> Result<(), ConfigError> {
    for (name, entry) in upstream_entries(tree) {
        if !entry.contains_key("provider") {
            return Err(ConfigError::InvalidValue {
                key: format!("upstreams.{name}.provider"),
                origin: any_origin(entry),
                expected: format!(
                    "set, because `{name}` is not a provider name ({})",
                    super::schema::StrCheck::Provider.expected()
                ),
                found: "missing".to_owned(),
            });
        }
        if !entry.contains_key("base_url") {
            let origin = match entry.get("provider") {
                Some(Node::Leaf(leaf)) => leaf.origin.clone(),
                _ => any_origin(entry),
            };
            return Err(ConfigError::InvalidValue {
                key: format!("upstreams.{name}.base_url"),
                origin,
                expected: "set for provider custom (an OpenAI-compatible URL such as http://127.0.0.1:11434/v1)".to_owned(),
                found: "missing".to_owned(),
            });
        }
    }
    for (name, entry) in upstream_entries(tree) {
        let Some(Node::Table(prices)) = entry.get("prices") else {
            continue;
        };
        for (model, node) in prices {
            let Node::Table(price) = node else { continue };
            for required in ["input", "output"] {
                if !price.contains_key(required) {
                    return Err(ConfigError::InvalidValue {
                        key: format!("upstreams.{name}.prices.{model}.{required}"),
                        origin: any_origin(price),
                        expected: format!(
                            "set: a price needs `input` and `output` (US dollars per million \
                             tokens; `cached` and `cache_write` default to `input`), e.g. \
                             [upstreams.{name}.prices.\"{model}\"] input = 2.5, output = 10"
                        ),
                        found: "missing".to_owned(),
                    });
                }
            }
        }
    }
    let reader = Reader { tree };
    if reader.bool("relay.enable").unwrap_or(false) && reader.list("relay.addresses")?.is_empty() {
        let origin = reader
            .leaf("relay.enable")
            .map_or(Origin::Default, |l| l.origin.clone());
        return Err(ConfigError::InvalidValue {
            key: "relay.addresses".to_owned(),
            origin,
            expected: "at least one relay address (host:port) when relay.enable is true".to_owned(),
            found: "an empty list".to_owned(),
        });
    }
    Ok(())
}

/// `model_rules` of one upstream entry (types were checked against the schema on load).
fn model_rules(entry: &Table) -> BTreeMap<String, crate::llm::model_rules::ModelRuleOverride> {
    let mut out = BTreeMap::new();
    let Some(Node::Table(rules)) = entry.get("model_rules") else {
        return out;
    };
    for (model, node) in rules {
        let Node::Table(fields) = node else { continue };
        let leaf = |name: &str| match fields.get(name) {
            Some(Node::Leaf(Leaf { value, .. })) => Some(value),
            _ => None,
        };
        let rule = crate::llm::model_rules::ModelRuleOverride {
            reasoning: match leaf("reasoning") {
                Some(Value::Bool(b)) => Some(*b),
                _ => None,
            },
            max_output_tokens: match leaf("max_output_tokens") {
                Some(Value::Integer(n)) => u32::try_from(*n).ok(),
                _ => None,
            },
            drop: match leaf("drop") {
                Some(Value::List(items)) => items.clone(),
                _ => Vec::new(),
            },
        };
        out.insert(model.clone(), rule);
    }
    out
}

impl DaemonConfig {
    /// Build the typed configuration from a merged, default-filled tree.
    pub(crate) fn from_tree(tree: &Table) -> Result<DaemonConfig, ConfigError> {
        check_tree(tree)?;
        let r = Reader { tree };
        let mut addresses = Vec::new();
        for text in r.list("relay.addresses")? {
            let address = parse_relay_address(&text).ok_or_else(|| ConfigError::InvalidValue {
                key: "relay.addresses".to_owned(),
                origin: r
                    .leaf("relay.addresses")
                    .map_or(Origin::Default, |l| l.origin.clone()),
                expected: "a list of host:port or <node-id>@host:port".to_owned(),
                found: format!("{text:?}"),
            })?;
            addresses.push(address);
        }
        let mut upstreams = BTreeMap::new();
        for (name, entry) in upstream_entries(tree) {
            let key = |field: &str| format!("upstreams.{name}.{field}");
            let provider_name = r.string(&key("provider"))?;
            let provider =
                Provider::from_name(&provider_name).ok_or_else(|| ConfigError::InvalidValue {
                    key: key("provider"),
                    origin: any_origin(entry),
                    expected: super::schema::StrCheck::Provider.expected().to_owned(),
                    found: format!("{provider_name:?}"),
                })?;
            let mut aliases = BTreeMap::new();
            if let Some(Node::Table(alias_table)) = entry.get("aliases") {
                for (alias, node) in alias_table {
                    if let Node::Leaf(Leaf {
                        value: Value::String(model),
                        ..
                    }) = node
                    {
                        aliases.insert(alias.clone(), model.clone());
                    }
                }
            }
            upstreams.insert(
                name.clone(),
                UpstreamConfig {
                    name: name.clone(),
                    provider,
                    base_url: r.string(&key("base_url"))?,
                    api_key: r.opt_string(&key("api_key"))?.map(Secret),
                    models: r.list(&key("models"))?,
                    aliases,
                    enabled: r.bool(&key("enabled"))?,
                    weight: r.opt_int(&key("weight"))?,
                    responses: r.opt_bool(&key("responses"))?,
                    max_output_tokens: r.opt_int(&key("max_output_tokens"))?,
                    prices: upstream_prices(entry),
                    stream_usage: r.opt_bool(&key("stream_usage"))?,
                    model_rules: model_rules(entry),
                },
            );
        }
        Ok(DaemonConfig {
            host: r.string("host")?,
            port: r.int("port")?,
            p2p_port: r.int("p2p_port")?,
            log_level: r.string("log_level")?,
            relay: DaemonRelayConfig {
                enable: r.bool("relay.enable")?,
                addresses,
                custom_domain: r.opt_string("relay.custom_domain")?,
                transport: r.string("relay.transport")?,
                tcp_port: r.int("relay.tcp_port")?,
                token: r.opt_string("relay.token")?.map(Secret::new),
            },
            upstreams,
            auth: AuthConfig {
                allow_loopback: r.bool("auth.allow_loopback")?,
                jwt: JwtConfig {
                    secret: r.opt_string("auth.jwt.secret")?.map(Secret),
                    issuer: r.string("auth.jwt.issuer")?,
                    expiration_hours: r.int("auth.jwt.expiration_hours")?,
                    audience: r.opt_string("auth.jwt.audience")?,
                    ceiling: KeyPolicy {
                        models: ModelPatterns::new(r.list("auth.jwt.models")?),
                        rpm: r.opt_int("auth.jwt.rpm")?,
                        tpm: r.opt_int("auth.jwt.tpm")?,
                        // Both were checked against the schema (StrCheck::Usd, ::Period).
                        budget: match r.opt_string("auth.jwt.budget")? {
                            Some(usd) => Usd::parse(&usd).ok().map(|limit| Budget {
                                limit,
                                period: r
                                    .string("auth.jwt.budget_period")
                                    .ok()
                                    .and_then(|p| p.parse().ok())
                                    .unwrap_or_default(),
                            }),
                            None => None,
                        },
                        owner: None,
                    },
                },
            },
            letsencrypt: LetsEncryptConfig {
                enabled: r.bool("letsencrypt.enabled")?,
                email: r.opt_string("letsencrypt.email")?,
                staging: r.bool("letsencrypt.staging")?,
                domains: r.list("letsencrypt.domains")?,
                auto_renew_days: r.int("letsencrypt.auto_renew_days")?,
                directory_url: r.opt_string("letsencrypt.directory_url")?,
                ca_file: r.opt_string("letsencrypt.ca_file")?,
            },
            server: ServerLimits {
                max_body_bytes: r.int("server.max_body_bytes")?,
                connect_timeout: Duration::from_secs(r.int("server.connect_timeout_secs")?),
                idle_timeout: Duration::from_secs(r.int("server.idle_timeout_secs")?),
                listen: ListenLimits {
                    shutdown_grace: Duration::from_secs(r.int("server.shutdown_grace_secs")?),
                    header_read_timeout: Duration::from_secs(
                        r.int("server.header_read_timeout_secs")?,
                    ),
                    keep_alive_timeout: Duration::from_secs(
                        r.int("server.keep_alive_timeout_secs")?,
                    ),
                    http2_keepalive_interval: Duration::from_secs(
                        r.int("server.http2_keepalive_interval_secs")?,
                    ),
                    http2_keepalive_timeout: Duration::from_secs(
                        r.int("server.http2_keepalive_timeout_secs")?,
                    ),
                    max_connections: r.int("server.max_connections")?,
                },
                max_response_bytes: r.int("server.max_response_bytes")?,
            },
            routing: RoutingConfig {
                strategy: routing_strategies(tree),
            },
            usage: UsageConfig {
                enabled: r.bool("usage.enabled")?,
                retention_days: r.int("usage.retention_days")?,
            },
            store: DaemonStoreConfig {
                url: r.opt_string("store.url")?.map(Secret::new),
                redis_url: r.opt_string("store.redis_url")?.map(Secret::new),
                on_unavailable: match r.opt_string("store.on_unavailable")?.as_deref() {
                    Some("open") => OnUnavailable::Open,
                    _ => OnUnavailable::Closed,
                },
            },
        })
    }
}
