//! Schemas: which keys exist, their types, defaults and per-value checks, for both programs.
//!
//! Owns [`Schema`], [`Kind`], [`Field`], [`StrCheck`] and the two schemas [`DAEMON_SCHEMA`]
//! and [`RELAY_SCHEMA`], plus key-path resolution and default filling. Cross-field rules
//! (a `custom` upstream needs `base_url`, ...) live with the typed configs in `daemon.rs` and
//! `relay.rs`. Must not parse TOML text or the environment (that is `layers.rs`).

use std::net::IpAddr;

use super::error::ConfigError;
use super::tree::{Leaf, Node, Origin, Table, Value};

/// What kind of value a key holds.
#[derive(Debug)]
pub enum Kind {
    /// `true` / `false`.
    Bool,
    /// An integer in `min..=max`.
    Integer {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// A string that passes the check.
    String(StrCheck),
    /// A list of strings, each passing the check. Lists are replaced whole, never merged.
    List(StrCheck),
    /// A table with fixed fields.
    Table(&'static [Field]),
    /// A table with free keys (each passing `key`), each entry of kind `entry`; merged entry
    /// by entry.
    Map {
        /// Check for each key.
        key: StrCheck,
        /// The kind of each entry.
        entry: &'static Kind,
    },
}

impl Kind {
    /// Whether values of this kind are leaves (not tables).
    pub fn is_leaf(&self) -> bool {
        !matches!(self, Kind::Table(_) | Kind::Map { .. })
    }

    /// What a value of this kind must be, as a phrase.
    pub fn expected(&self) -> String {
        match self {
            Kind::Bool => "true or false".to_owned(),
            Kind::Integer { min, max } => format!("an integer from {min} to {max}"),
            Kind::String(check) => check.expected().to_owned(),
            Kind::List(check) => format!("a list of strings, each {}", check.expected()),
            Kind::Table(_) => "a table".to_owned(),
            Kind::Map { .. } => "a table of named entries".to_owned(),
        }
    }
}

/// A compiled-in default value.
#[derive(Debug, Clone, Copy)]
pub enum DefaultValue {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Integer(i64),
    /// A string.
    Str(&'static str),
    /// A list of strings.
    List(&'static [&'static str]),
}

impl DefaultValue {
    /// As a tree value.
    pub fn to_value(self) -> Value {
        match self {
            DefaultValue::Bool(b) => Value::Bool(b),
            DefaultValue::Integer(i) => Value::Integer(i),
            DefaultValue::Str(s) => Value::String(s.to_owned()),
            DefaultValue::List(items) => {
                Value::List(items.iter().map(|s| (*s).to_owned()).collect())
            }
        }
    }
}

/// One named key of a table.
#[derive(Debug)]
pub struct Field {
    /// The key, in snake_case.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its compiled-in default, if any. Keys with a default cannot be tombstoned.
    pub default: Option<DefaultValue>,
}

const fn field(name: &'static str, kind: Kind, default: Option<DefaultValue>) -> Field {
    Field {
        name,
        kind,
        default,
    }
}

/// A check on a string value (or a map key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrCheck {
    /// Any string.
    Any,
    /// Any non-empty string.
    NonEmpty,
    /// A secret of at least this many bytes.
    Secret(usize),
    /// An IP address or a DNS host name.
    Host,
    /// An IP address.
    IpAddr,
    /// An `http://` or `https://` URL with a host.
    Url,
    /// A lower-case DNS name (labels of `a-z0-9-`, at most 253 bytes).
    DnsName,
    /// A single lower-case DNS label.
    DnsLabel,
    /// An e-mail address.
    Email,
    /// A tracing filter: `info`, or `warn,gate=debug`.
    LogLevel,
    /// An upstream provider name.
    Provider,
    /// A DNS provider name.
    DnsProvider,
    /// A relay transport policy: `auto`, `quic` or `tcp`.
    RelayTransport,
    /// A relay address: `host:port` or `<node-id>@host:port`.
    RelayAddress,
    /// An upstream name: `a-z0-9_-`, starting and ending with a letter or digit, at most 64.
    UpstreamName,
    /// A model or alias name: 1..=256 bytes, no whitespace or control characters.
    ModelName,
    /// A routing strategy: `ordered`, `weighted` or `least_latency`.
    RouteStrategy,
    /// A node id: 52 characters of lower-case base32 (`gate id` prints it).
    NodeId,
    /// A relay access mode: `open`, `allowlist` or `token`.
    AccessMode,
    /// A named registration token `name:secret` (name of a-z, 0-9, -, _; secret of at least
    /// 16 bytes).
    NamedToken,
    /// A registration token's name.
    TokenName,
    /// An amount of US dollars (`20`, `0.50`, `$5`); TOML numbers are accepted too.
    Usd,
    /// A budget period: `day`, `week`, `month` or `total`.
    Period,
    /// A PostgreSQL URL: `postgres://` or `postgresql://` with a host (a secret: it may hold
    /// a password).
    PostgresUrl,
    /// A Redis URL: `redis://` or `rediss://` (TLS) with a host (a secret: it may hold a
    /// password).
    RedisUrl,
    /// What a daemon does when a shared store is unreachable: `closed` or `open`.
    OnUnavailable,
    /// A Chat Completions parameter an upstream's model rule may drop
    /// ([`crate::llm::model_rules::DROPPABLE_PARAMS`]).
    ChatParam,
}

/// Provider names an upstream may use.
pub const PROVIDERS: &[&str] = &[
    "openai",
    "anthropic",
    "google",
    "mistral",
    "groq",
    "openrouter",
    "custom",
];

/// DNS providers the relay can write ACME TXT records with.
pub const DNS_PROVIDERS: &[&str] = &["cloudflare"];

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

impl StrCheck {
    /// What a value must be, as a phrase.
    pub fn expected(self) -> &'static str {
        match self {
            StrCheck::Any => "a string",
            StrCheck::NonEmpty => "a non-empty string",
            StrCheck::Secret(16) => "a secret of at least 16 bytes",
            StrCheck::Secret(_) => "a longer secret",
            StrCheck::Host => "an IP address or a host name",
            StrCheck::IpAddr => "an IP address such as 0.0.0.0 or ::",
            StrCheck::Url => "an http:// or https:// URL",
            StrCheck::DnsName => "a lower-case DNS name such as gate.example.com",
            StrCheck::DnsLabel => "a single lower-case DNS label (a-z, 0-9, -)",
            StrCheck::Email => "an e-mail address",
            StrCheck::LogLevel => {
                "a log level (trace, debug, info, warn, error, off) or filter like warn,gate=debug"
            }
            StrCheck::Provider => {
                "one of openai, anthropic, google, mistral, groq, openrouter, custom"
            }
            StrCheck::DnsProvider => "cloudflare",
            StrCheck::RelayTransport => "auto, quic or tcp",
            StrCheck::RelayAddress => "a relay address host:port or <node-id>@host:port",
            StrCheck::UpstreamName => {
                "an upstream name of a-z, 0-9, _ and - (starting and ending with a letter or digit)"
            }
            StrCheck::ModelName => "a model name without spaces",
            StrCheck::RouteStrategy => "one of ordered, weighted, least_latency",
            StrCheck::NodeId => "a node id (52 characters of a-z and 2-7, as `gate id` prints it)",
            StrCheck::AccessMode => "open, allowlist or token",
            StrCheck::NamedToken => {
                "a named token name:secret (name of a-z, 0-9, - and _; secret of at least 16 bytes)"
            }
            StrCheck::TokenName => "a token name of a-z, 0-9, - and _ (at most 64)",
            StrCheck::Usd => "an amount of US dollars such as 20 or 0.50",
            StrCheck::Period => "a budget period: day, week, month or total",
            StrCheck::PostgresUrl => {
                "a PostgreSQL URL such as postgres://user:password@host:5432/database"
            }
            StrCheck::RedisUrl => {
                "a Redis URL such as redis://:password@host:6379/0 (rediss:// for TLS)"
            }
            StrCheck::OnUnavailable => "closed or open",
            StrCheck::ChatParam => {
                "a Chat Completions parameter: max_tokens, max_completion_tokens, temperature, \
                 top_p, stop, stream_options, n, user, reasoning_effort, tools, tool_choice or \
                 parallel_tool_calls"
            }
        }
    }

    /// Whether `s` passes.
    pub fn accepts(self, s: &str) -> bool {
        match self {
            StrCheck::Any => true,
            StrCheck::NonEmpty => !s.trim().is_empty(),
            StrCheck::Secret(min) => s.len() >= min,
            StrCheck::Host => s.parse::<IpAddr>().is_ok() || is_dns_name(s),
            StrCheck::IpAddr => s.parse::<IpAddr>().is_ok(),
            StrCheck::Url => is_http_url(s),
            StrCheck::DnsName => is_dns_name(s),
            StrCheck::DnsLabel => is_dns_label(s),
            StrCheck::Email => is_email(s),
            StrCheck::LogLevel => is_log_filter(s),
            StrCheck::Provider => PROVIDERS.contains(&s),
            StrCheck::DnsProvider => DNS_PROVIDERS.contains(&s),
            StrCheck::RelayTransport => RELAY_TRANSPORTS.contains(&s),
            StrCheck::RelayAddress => parse_relay_address(s).is_some(),
            StrCheck::UpstreamName => is_upstream_name(s),
            StrCheck::ModelName => {
                !s.is_empty()
                    && s.len() <= 256
                    && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            }
            StrCheck::RouteStrategy => crate::route::RouteStrategy::from_name(s).is_some(),
            StrCheck::Usd => crate::accounting::Usd::parse(s).is_ok(),
            StrCheck::Period => s.parse::<crate::accounting::Period>().is_ok(),
            StrCheck::PostgresUrl => is_postgres_url(s),
            StrCheck::RedisUrl => is_redis_url(s),
            StrCheck::OnUnavailable => matches!(s, "closed" | "open"),
            StrCheck::NodeId => crate::tunnel::NodeId::parse(s).is_ok(),
            StrCheck::AccessMode => crate::tunnel::AccessMode::parse(s).is_some(),
            StrCheck::NamedToken => crate::tunnel::split_token_entry(s).is_some(),
            StrCheck::TokenName => crate::tunnel::is_token_name(s),
            StrCheck::ChatParam => crate::llm::model_rules::DROPPABLE_PARAMS.contains(&s),
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_upstream_name(s: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    s.len() <= 64
        && edge_ok(s.chars().next())
        && edge_ok(s.chars().last())
        && !s.contains("__")
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && is_dns_name(&domain.to_ascii_lowercase())
                && !local.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

fn is_log_filter(s: &str) -> bool {
    !s.is_empty()
        && s.split(',').all(|directive| {
            let level = match directive.split_once('=') {
                Some((target, level)) => {
                    if target.is_empty()
                        || !target
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
                    {
                        return false;
                    }
                    level
                }
                None => directive,
            };
            LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str())
        })
}

/// Whether `s` is an `http://` or `https://` URL with a non-empty host, an optional valid
/// port, and no whitespace.
pub fn is_http_url(s: &str) -> bool {
    let rest = match s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    {
        Some(rest) => rest,
        None => return false,
    };
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    split_host_port(authority).is_some_and(|(host, port)| {
        let host_ok = if let Some(inner) = host.strip_prefix('[') {
            inner
                .strip_suffix(']')
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            host.parse::<IpAddr>().is_ok() || is_dns_name(&host.to_ascii_lowercase())
        };
        host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0))
    })
}

/// Split `host[:port]` (IPv6 hosts in brackets) into host and optional port text.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.is_empty() {
        return None;
    }
    if authority.starts_with('[') {
        let close = authority.find(']')?;
        let host = authority.get(..=close)?;
        let after = authority.get(close + 1..)?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host, Some(port))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

/// A parsed relay address from `relay.addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddress {
    /// The pinned relay node id (lower-case base32 of its Ed25519 key, 52 characters).
    pub node_id: Option<String>,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// UDP port of the relay's QUIC endpoint.
    pub port: u16,
}

/// Length of a node id: base32 (no padding) of a 32-byte Ed25519 public key.
pub const NODE_ID_LEN: usize = 52;

/// Parse `host:port` or `<node-id>@host:port` (IPv6 hosts in brackets).
pub fn parse_relay_address(s: &str) -> Option<RelayAddress> {
    let (node_id, hostport) = match s.split_once('@') {
        Some((id, rest)) => {
            let valid = id.len() == NODE_ID_LEN
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
            if !valid {
                return None;
            }
            (Some(id.to_owned()), rest)
        }
        None => (None, s),
    };
    let (host, port) = split_host_port(hostport)?;
    let port: u16 = port?.parse().ok().filter(|p| *p != 0)?;
    let host = if let Some(inner) = host.strip_prefix('[') {
        let ip = inner.strip_suffix(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        ip.to_owned()
    } else if host.parse::<IpAddr>().is_ok() || is_dns_name(host) {
        host.to_owned()
    } else {
        return None;
    };
    Some(RelayAddress {
        node_id,
        host,
        port,
    })
}

/// Whether a key holds a secret that rendering must redact: `api_key`, `secret`,
/// `api_token`, `token`, `tokens`, `password`, the store URLs `url` and `redis_url` (they may
/// carry a password), or a name ending in `_key`, `_token` or `_secret`.
pub fn is_secret_key(name: &str) -> bool {
    matches!(
        name,
        "api_key" | "secret" | "api_token" | "token" | "tokens" | "password" | "url" | "redis_url"
    ) || name.ends_with("_key")
        || name.ends_with("_token")
        || name.ends_with("_secret")
}

/// Whether `s` looks like a Redis URL: `redis://`, then a host (after any
/// `user:password@`). The full parse is the client's (`gate_rt::store::redis`).
pub fn is_redis_url(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("redis://")
        .or_else(|| s.strip_prefix("rediss://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    !host.is_empty() && !host.starts_with(':')
}

/// Whether `s` looks like a PostgreSQL URL: `postgres://` or `postgresql://`, then a host
/// (after any `user:password@`) or a `host=` parameter. The full parse is the client's
/// (`gate_rt::store`).
pub fn is_postgres_url(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("postgres://")
        .or_else(|| s.strip_prefix("postgresql://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    // `postgres:///gate?host=/run/postgresql`: a Unix socket directory as a parameter.
    let host_parameter = rest
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|p| p.starts_with("host=")));
    (!host.is_empty() || host_parameter) && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A program's configuration schema.
#[derive(Debug)]
pub struct Schema {
    /// The program, for messages: "gate" or "gate-relay".
    pub program: &'static str,
    /// The environment prefix without the underscore: "GATE" or "RELAY".
    pub env_prefix: &'static str,
    /// Variables under the prefix that are not config keys (decoded key, lower-case), ignored.
    pub reserved_env: &'static [&'static str],
    /// The top-level table.
    pub root: &'static [Field],
    /// Fill defaults that depend on other values (e.g. `base_url` from `provider`).
    pub(crate) derive: fn(&mut Table),
    /// Cross-field rules over the merged tree.
    pub(crate) check: fn(&Table) -> Result<(), ConfigError>,
}

/// The key, in the runtime file only, that lists removed key paths (tombstones).
pub const TOMBSTONE_KEY: &str = "_removed";

/// Where a key path leads in a schema.
pub(crate) struct Resolved {
    pub kind: &'static Kind,
    pub default: Option<DefaultValue>,
    /// Whether the last segment is an entry of a map (e.g. `upstreams.openai`).
    pub is_map_entry: bool,
}

impl Schema {
    /// Resolve a key path; `Err` describes the first unknown segment and its siblings.
    pub(crate) fn resolve(&self, path: &[String]) -> Result<Resolved, ResolveError> {
        let mut fields = self.root;
        let mut kind: Option<&'static Kind> = None;
        let mut resolved = None;
        for segment in path {
            let current: &'static Kind = match kind {
                None => {
                    let f = find_field(fields, segment).ok_or_else(|| ResolveError {
                        suggestion: suggest(segment, fields),
                        not_a_table: false,
                    })?;
                    resolved = Some(Resolved {
                        kind: &f.kind,
                        default: f.default,
                        is_map_entry: false,
                    });
                    &f.kind
                }
                Some(Kind::Table(table_fields)) => {
                    let f = find_field(table_fields, segment).ok_or_else(|| ResolveError {
                        suggestion: suggest(segment, table_fields),
                        not_a_table: false,
                    })?;
                    resolved = Some(Resolved {
                        kind: &f.kind,
                        default: f.default,
                        is_map_entry: false,
                    });
                    &f.kind
                }
                Some(Kind::Map { key, entry }) => {
                    if !key.accepts(segment) {
                        return Err(ResolveError {
                            suggestion: Some(format!("names must be {}", key.expected())),
                            not_a_table: false,
                        });
                    }
                    resolved = Some(Resolved {
                        kind: entry,
                        default: None,
                        is_map_entry: true,
                    });
                    entry
                }
                Some(_) => {
                    return Err(ResolveError {
                        suggestion: None,
                        not_a_table: true,
                    })
                }
            };
            fields = match current {
                Kind::Table(f) => f,
                _ => &[],
            };
            kind = Some(current);
        }
        resolved.ok_or(ResolveError {
            suggestion: None,
            not_a_table: false,
        })
    }
}

/// Why a key path does not resolve.
pub(crate) struct ResolveError {
    /// A hint ("did you mean ...").
    pub suggestion: Option<String>,
    /// The path goes below a leaf.
    pub not_a_table: bool,
}

impl ResolveError {
    pub(crate) fn hint(&self) -> String {
        if self.not_a_table {
            return " (its parent is a value, not a table)".to_owned();
        }
        match &self.suggestion {
            Some(s) => format!(" ({s})"),
            None => String::new(),
        }
    }
}

pub(crate) fn find_field<'f>(fields: &'f [Field], name: &str) -> Option<&'f Field> {
    fields.iter().find(|f| f.name == name)
}

/// "did you mean `x`?" for a close sibling name (edit distance at most 2).
pub(crate) fn suggest(name: &str, fields: &[Field]) -> Option<String> {
    fields
        .iter()
        .map(|f| (edit_distance(name, f.name), f.name))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| format!("did you mean `{n}`?"))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(64).collect();
    let b: Vec<char> = b.chars().take(64).collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous.get(j).copied().unwrap_or(0) + usize::from(ca != cb);
            let delete = previous.get(j + 1).copied().unwrap_or(0) + 1;
            let insert = current.get(j).copied().unwrap_or(0) + 1;
            current.push(substitute.min(delete).min(insert));
        }
        previous = current;
    }
    previous.last().copied().unwrap_or(0)
}

/// Fill every missing key that has a compiled-in default, including inside map entries
/// (each upstream gets `enabled = true`, ...). Tables left empty are dropped.
pub(crate) fn fill_defaults(fields: &'static [Field], table: &mut Table) {
    for f in fields {
        match (&f.kind, f.default) {
            (Kind::Table(inner), _) => {
                let node = table
                    .entry(f.name.to_owned())
                    .or_insert_with(|| Node::Table(Table::new()));
                if let Node::Table(sub) = node {
                    fill_defaults(inner, sub);
                    if sub.is_empty() {
                        table.remove(f.name);
                    }
                }
            }
            (Kind::Map { entry, .. }, _) => {
                if let (Some(Node::Table(map)), Kind::Table(entry_fields)) =
                    (table.get_mut(f.name), entry)
                {
                    for node in map.values_mut() {
                        if let Node::Table(sub) = node {
                            fill_defaults(entry_fields, sub);
                        }
                    }
                }
            }
            (_, Some(default)) => {
                table.entry(f.name.to_owned()).or_insert_with(|| {
                    Node::Leaf(Leaf {
                        value: default.to_value(),
                        origin: Origin::Default,
                    })
                });
            }
            (_, None) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// The daemon's schema.

const PORT: Kind = Kind::Integer { min: 1, max: 65535 };

// Issue 14: `[upstreams.<name>.prices."<model>"]`: the price of a model at this upstream,
// over the built-in table (`core/src/accounting/prices.toml`).
static PRICE_FIELDS: [Field; 4] = [
    field("input", Kind::String(StrCheck::Usd), None),
    field("output", Kind::String(StrCheck::Usd), None),
    field("cached", Kind::String(StrCheck::Usd), None),
    field("cache_write", Kind::String(StrCheck::Usd), None),
];
static PRICE: Kind = Kind::Table(&PRICE_FIELDS);

static UPSTREAM_FIELDS: [Field; 12] = [
    field("provider", Kind::String(StrCheck::Provider), None),
    field("base_url", Kind::String(StrCheck::Url), None),
    field("api_key", Kind::String(StrCheck::NonEmpty), None),
    field("models", Kind::List(StrCheck::ModelName), None),
    field(
        "aliases",
        Kind::Map {
            key: StrCheck::ModelName,
            entry: &MODEL_NAME,
        },
        None,
    ),
    field("enabled", Kind::Bool, Some(DefaultValue::Bool(true))),
    // Routing (issue 11): relative weight for the `weighted` strategy (unset counts as 1).
    field("weight", Kind::Integer { min: 0, max: 1000 }, None),
    // Issue 12: whether the upstream serves `/responses` itself (unset: the provider's
    // default, true for `openai` only).
    field("responses", Kind::Bool, None),
    // Issue 12: the largest output this upstream's models take (caps converted requests'
    // max tokens, on top of the built-in per-model table).
    field(
        "max_output_tokens",
        Kind::Integer {
            min: 1,
            max: 100_000_000,
        },
        None,
    ),
    field(
        "prices",
        Kind::Map {
            key: StrCheck::ModelName,
            entry: &PRICE,
        },
        None,
    ),
    // Issue 12: whether Gate may add `stream_options.include_usage` to pass-through chat
    // streams (unset: the provider's default, on for openai, groq and openrouter).
    field("stream_usage", Kind::Bool, None),
    // Issue 12: per-model rules of this upstream, overriding the built-in table's row.
    field(
        "model_rules",
        Kind::Map {
            key: StrCheck::ModelName,
            entry: &MODEL_RULE,
        },
        None,
    ),
];
static MODEL_NAME: Kind = Kind::String(StrCheck::ModelName);
static MODEL_RULE_FIELDS: [Field; 3] = [
    field("reasoning", Kind::Bool, None),
    field(
        "max_output_tokens",
        Kind::Integer {
            min: 1,
            max: 100_000_000,
        },
        None,
    ),
    field("drop", Kind::List(StrCheck::ChatParam), None),
];
static MODEL_RULE: Kind = Kind::Table(&MODEL_RULE_FIELDS);
static UPSTREAM: Kind = Kind::Table(&UPSTREAM_FIELDS);

/// `relay.transport` values: QUIC with a fallback to TLS over TCP, QUIC only, TCP only.
pub const RELAY_TRANSPORTS: &[&str] = &["auto", "quic", "tcp"];

static DAEMON_RELAY_FIELDS: [Field; 6] = [
    field("enable", Kind::Bool, Some(DefaultValue::Bool(false))),
    field(
        "addresses",
        Kind::List(StrCheck::RelayAddress),
        Some(DefaultValue::List(&[])),
    ),
    field("custom_domain", Kind::String(StrCheck::DnsLabel), None),
    field(
        "transport",
        Kind::String(StrCheck::RelayTransport),
        Some(DefaultValue::Str("auto")),
    ),
    field("tcp_port", PORT, Some(DefaultValue::Integer(443))),
    // The registration token for relays in token mode: the secret part of the relay's
    // `name:secret` (a secret: environment file, `GATE_RELAY__TOKEN`).
    field("token", Kind::String(StrCheck::Secret(16)), None),
];

static JWT_FIELDS: [Field; 9] = [
    field("secret", Kind::String(StrCheck::Secret(16)), None),
    field(
        "issuer",
        Kind::String(StrCheck::NonEmpty),
        Some(DefaultValue::Str("gate-daemon")),
    ),
    field(
        "expiration_hours",
        Kind::Integer { min: 1, max: 8760 },
        Some(DefaultValue::Integer(24)),
    ),
    field("audience", Kind::String(StrCheck::NonEmpty), None),
    field("models", Kind::List(StrCheck::ModelName), None),
    field(
        "rpm",
        Kind::Integer {
            min: 1,
            max: 100_000_000,
        },
        None,
    ),
    field(
        "tpm",
        Kind::Integer {
            min: 1,
            max: 1_000_000_000_000,
        },
        None,
    ),
    field("budget", Kind::String(StrCheck::Usd), None),
    field(
        "budget_period",
        Kind::String(StrCheck::Period),
        Some(DefaultValue::Str("month")),
    ),
];

static AUTH_FIELDS: [Field; 2] = [
    field(
        "allow_loopback",
        Kind::Bool,
        Some(DefaultValue::Bool(false)),
    ),
    field("jwt", Kind::Table(&JWT_FIELDS), None),
];

static LETSENCRYPT_FIELDS: [Field; 7] = [
    field("enabled", Kind::Bool, Some(DefaultValue::Bool(false))),
    field("email", Kind::String(StrCheck::Email), None),
    field("staging", Kind::Bool, Some(DefaultValue::Bool(false))),
    field(
        "domains",
        Kind::List(StrCheck::DnsName),
        Some(DefaultValue::List(&[])),
    ),
    field(
        "auto_renew_days",
        Kind::Integer { min: 1, max: 89 },
        Some(DefaultValue::Integer(30)),
    ),
    field("directory_url", Kind::String(StrCheck::Url), None),
    field("ca_file", Kind::String(StrCheck::NonEmpty), None),
];

static SERVER_FIELDS: [Field; 10] = [
    field(
        "max_body_bytes",
        Kind::Integer {
            min: 1024,
            max: 1 << 30,
        },
        Some(DefaultValue::Integer(32 << 20)),
    ),
    field(
        "connect_timeout_secs",
        Kind::Integer { min: 1, max: 300 },
        Some(DefaultValue::Integer(10)),
    ),
    field(
        "idle_timeout_secs",
        Kind::Integer { min: 1, max: 3600 },
        Some(DefaultValue::Integer(300)),
    ),
    // Lifecycle and listener limits (issue 11): how long a stop waits for requests in flight,
    // and how long a connection may stay silent. The defaults close a silent connection
    // within ~10 s; `max_connections` applies to each listener (local, relayed).
    field(
        "shutdown_grace_secs",
        Kind::Integer { min: 0, max: 3600 },
        Some(DefaultValue::Integer(30)),
    ),
    field(
        "header_read_timeout_secs",
        Kind::Integer { min: 1, max: 300 },
        Some(DefaultValue::Integer(10)),
    ),
    field(
        "keep_alive_timeout_secs",
        Kind::Integer { min: 1, max: 3600 },
        Some(DefaultValue::Integer(10)),
    ),
    field(
        "http2_keepalive_interval_secs",
        Kind::Integer { min: 1, max: 3600 },
        Some(DefaultValue::Integer(20)),
    ),
    field(
        "http2_keepalive_timeout_secs",
        Kind::Integer { min: 1, max: 300 },
        Some(DefaultValue::Integer(10)),
    ),
    field(
        "max_connections",
        Kind::Integer {
            min: 1,
            max: 1_000_000,
        },
        Some(DefaultValue::Integer(4096)),
    ),
    // Request path (issue 11): largest buffered upstream answer (non-streamed bodies, error
    // bodies, model lists).
    field(
        "max_response_bytes",
        Kind::Integer {
            min: 64 << 10,
            max: 1 << 30,
        },
        Some(DefaultValue::Integer(64 << 20)),
    ),
];

// Routing (issue 11): `[routing.strategy]` maps a model or alias to its strategy.
static ROUTE_STRATEGY: Kind = Kind::String(StrCheck::RouteStrategy);
static ROUTING_FIELDS: [Field; 1] = [field(
    "strategy",
    Kind::Map {
        key: StrCheck::ModelName,
        entry: &ROUTE_STRATEGY,
    },
    None,
)];

// The usage log (issue 14): one record per request in `<state_dir>/usage.db`, kept for
// `retention_days` (0: forever).
static USAGE_FIELDS: [Field; 2] = [
    field("enabled", Kind::Bool, Some(DefaultValue::Bool(true))),
    field(
        "retention_days",
        Kind::Integer {
            min: 0,
            max: 36_500,
        },
        Some(DefaultValue::Integer(90)),
    ),
];

// Shared state for several daemons (issue 15): keys, the usage log and budget spend on
// PostgreSQL (`url`); rate-limit counters and in-flight budget reservations on Redis
// (`redis_url`); `on_unavailable` says what a limited key gets while a store is unreachable.
// Without them everything stays in the state directory.
static DAEMON_STORE_FIELDS: [Field; 3] = [
    field("url", Kind::String(StrCheck::PostgresUrl), None),
    field("redis_url", Kind::String(StrCheck::RedisUrl), None),
    field(
        "on_unavailable",
        Kind::String(StrCheck::OnUnavailable),
        Some(DefaultValue::Str("closed")),
    ),
];

static DAEMON_FIELDS: [Field; 12] = [
    field(
        "host",
        Kind::String(StrCheck::Host),
        Some(DefaultValue::Str("127.0.0.1")),
    ),
    field("port", PORT, Some(DefaultValue::Integer(3000))),
    field("p2p_port", PORT, Some(DefaultValue::Integer(41147))),
    field(
        "log_level",
        Kind::String(StrCheck::LogLevel),
        Some(DefaultValue::Str("info")),
    ),
    field("relay", Kind::Table(&DAEMON_RELAY_FIELDS), None),
    field(
        "upstreams",
        Kind::Map {
            key: StrCheck::UpstreamName,
            entry: &UPSTREAM,
        },
        None,
    ),
    field("auth", Kind::Table(&AUTH_FIELDS), None),
    field("letsencrypt", Kind::Table(&LETSENCRYPT_FIELDS), None),
    field("server", Kind::Table(&SERVER_FIELDS), None),
    field("routing", Kind::Table(&ROUTING_FIELDS), None),
    field("usage", Kind::Table(&USAGE_FIELDS), None),
    field("store", Kind::Table(&DAEMON_STORE_FIELDS), None),
];

/// The daemon (`gate`) schema. Environment prefix `GATE`.
pub static DAEMON_SCHEMA: Schema = Schema {
    program: "gate",
    env_prefix: "GATE",
    reserved_env: &[
        "state_dir",
        "config",
        "runtime",
        "admin_token",
        "admin_url",
        "url",
        "log",
    ],
    root: &DAEMON_FIELDS,
    derive: super::daemon::derive_defaults,
    check: super::daemon::check_tree,
};

// ---------------------------------------------------------------------------------------
// The relay's schema.

static CLOUDFLARE_FIELDS: [Field; 3] = [
    field("api_token", Kind::String(StrCheck::NonEmpty), None),
    field("zone_id", Kind::String(StrCheck::NonEmpty), None),
    field(
        "api_url",
        Kind::String(StrCheck::Url),
        Some(DefaultValue::Str("https://api.cloudflare.com/client/v4")),
    ),
];

static DNS_FIELDS: [Field; 3] = [
    field("enabled", Kind::Bool, Some(DefaultValue::Bool(false))),
    field(
        "provider",
        Kind::String(StrCheck::DnsProvider),
        Some(DefaultValue::Str("cloudflare")),
    ),
    field("cloudflare", Kind::Table(&CLOUDFLARE_FIELDS), None),
];

static LIMITS_FIELDS: [Field; 7] = [
    field(
        "handshake_timeout_ms",
        Kind::Integer {
            min: 100,
            max: 60_000,
        },
        Some(DefaultValue::Integer(5_000)),
    ),
    field(
        "max_connections",
        Kind::Integer {
            min: 1,
            max: 1_000_000,
        },
        Some(DefaultValue::Integer(16_384)),
    ),
    field(
        "max_connections_per_ip",
        Kind::Integer {
            min: 1,
            max: 1_000_000,
        },
        Some(DefaultValue::Integer(256)),
    ),
    field(
        "max_connections_per_node",
        Kind::Integer {
            min: 1,
            max: 1_000_000,
        },
        Some(DefaultValue::Integer(4_096)),
    ),
    field(
        "max_daemon_connections",
        Kind::Integer {
            min: 1,
            max: 1_000_000,
        },
        Some(DefaultValue::Integer(10_000)),
    ),
    // Daemon connections from one address (an IPv6 /64 counting as one) per minute.
    field(
        "max_registrations_per_ip_per_minute",
        Kind::Integer {
            min: 1,
            max: 1_000_000,
        },
        Some(DefaultValue::Integer(60)),
    ),
    // Name claims the relay keeps, all nodes together (one custom label per node).
    field(
        "max_claims",
        Kind::Integer {
            min: 0,
            max: 10_000_000,
        },
        Some(DefaultValue::Integer(10_000)),
    ),
];

static TUNNEL_FIELDS: [Field; 4] = [
    field(
        "heartbeat_interval_ms",
        Kind::Integer {
            min: 1_000,
            max: 600_000,
        },
        Some(DefaultValue::Integer(15_000)),
    ),
    field(
        "registration_timeout_ms",
        Kind::Integer {
            min: 1_000,
            max: 300_000,
        },
        Some(DefaultValue::Integer(10_000)),
    ),
    field("certificate_file", Kind::String(StrCheck::NonEmpty), None),
    field("key_file", Kind::String(StrCheck::NonEmpty), None),
];

// Who may register (issue 13): open, an allowlist of node ids, or named registration tokens
// (`name:secret`, secrets, so `RELAY__ACCESS__TOKENS` is the place for them), with quotas per
// account.
static QUOTA_FIELDS: [Field; 4] = [
    field(
        "custom_names",
        Kind::Integer {
            min: 0,
            max: 1_000_000,
        },
        None,
    ),
    field(
        "connections",
        Kind::Integer {
            min: 0,
            max: 1_000_000,
        },
        None,
    ),
    field(
        "bytes_per_day",
        Kind::Integer {
            min: 0,
            max: i64::MAX,
        },
        None,
    ),
    field(
        "acme_requests_per_hour",
        Kind::Integer {
            min: 0,
            max: 1_000_000,
        },
        None,
    ),
];
static QUOTA: Kind = Kind::Table(&QUOTA_FIELDS);

static ACCESS_FIELDS: [Field; 5] = [
    field(
        "mode",
        Kind::String(StrCheck::AccessMode),
        Some(DefaultValue::Str("open")),
    ),
    field(
        "allowed_nodes",
        Kind::List(StrCheck::NodeId),
        Some(DefaultValue::List(&[])),
    ),
    field("tokens", Kind::List(StrCheck::NamedToken), None),
    field("default_quota", Kind::Table(&QUOTA_FIELDS), None),
    field(
        "quotas",
        Kind::Map {
            key: StrCheck::TokenName,
            entry: &QUOTA,
        },
        None,
    ),
];

// Shared state (issue 15): the relays of one deployment keep their name claims in one
// PostgreSQL database (`RELAY__STORE__URL`, a secret: it may hold the password).
static RELAY_STORE_FIELDS: [Field; 1] = [field("url", Kind::String(StrCheck::PostgresUrl), None)];

static RELAY_FIELDS: [Field; 12] = [
    field("https_port", PORT, Some(DefaultValue::Integer(443))),
    field("p2p_port", PORT, Some(DefaultValue::Integer(31145))),
    field(
        "bind_address",
        Kind::String(StrCheck::IpAddr),
        Some(DefaultValue::Str("0.0.0.0")),
    ),
    field(
        "log_level",
        Kind::String(StrCheck::LogLevel),
        Some(DefaultValue::Str("info")),
    ),
    field(
        "domain_suffix",
        Kind::String(StrCheck::DnsName),
        Some(DefaultValue::Str("localhost")),
    ),
    field(
        "claim_lapse_days",
        Kind::Integer { min: 1, max: 3650 },
        Some(DefaultValue::Integer(30)),
    ),
    field("metrics_port", PORT, None),
    field("dns", Kind::Table(&DNS_FIELDS), None),
    field("limits", Kind::Table(&LIMITS_FIELDS), None),
    field("tunnel", Kind::Table(&TUNNEL_FIELDS), None),
    field("access", Kind::Table(&ACCESS_FIELDS), None),
    field("store", Kind::Table(&RELAY_STORE_FIELDS), None),
];

/// The relay (`gate-relay`) schema. Environment prefix `RELAY`.
pub static RELAY_SCHEMA: Schema = Schema {
    program: "gate-relay",
    env_prefix: "RELAY",
    reserved_env: &["state_dir", "config", "runtime", "log"],
    root: &RELAY_FIELDS,
    derive: |_| {},
    check: super::relay::check_tree,
};
