//! The relay's typed configuration ([`RelayConfig`]) and its cross-field rules.
//!
//! Owns: the rule that enabled DNS needs its provider's credentials, and the conversion of
//! the merged tree to typed values. Must not know about layers or text formats.

use std::net::IpAddr;
use std::time::Duration;

use super::daemon::Secret;
use super::error::ConfigError;
use super::tree::{Node, Origin, Table};
use super::Reader;
use crate::tunnel::{
    split_token_entry, AccessMode, AccessPolicy, NodeId, Quota, Quotas, RegistrationToken,
};

/// A DNS provider the relay writes ACME TXT records with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsProvider {
    /// Cloudflare's v4 API.
    Cloudflare,
}

/// `[dns.cloudflare]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudflareConfig {
    /// API token with DNS edit rights on the zone.
    pub api_token: Option<Secret>,
    /// The zone id.
    pub zone_id: Option<String>,
    /// API base URL (default `https://api.cloudflare.com/client/v4`; tests point it at a fake).
    pub api_url: String,
}

/// `[dns]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Write ACME TXT records for daemons.
    pub enabled: bool,
    /// Which provider.
    pub provider: DnsProvider,
    /// Cloudflare settings.
    pub cloudflare: CloudflareConfig,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Time to read a ClientHello (default 5000 ms).
    pub handshake_timeout: Duration,
    /// Open client connections in all (default 16384).
    pub max_connections: u32,
    /// Open client connections per client IP (default 256).
    pub max_connections_per_ip: u32,
    /// Open client connections per daemon (default 4096).
    pub max_connections_per_node: u32,
    /// QUIC connections from daemons in all (default 10000).
    pub max_daemon_connections: u32,
    /// Daemon connections from one address (an IPv6 /64 as one) per minute (default 60).
    pub max_registrations_per_ip_per_minute: u32,
    /// Name claims kept, all nodes together (default 10000; each node holds at most one).
    pub max_claims: usize,
}

/// `[tunnel]`: the daemon connections' timing, and the certificate their QUIC endpoints present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Heartbeat interval announced to daemons (default 15000 ms); a daemon silent for three
    /// intervals is dropped.
    pub heartbeat_interval: Duration,
    /// Time a daemon has to register after connecting (default 10000 ms).
    pub registration_timeout: Duration,
    /// PEM certificate chain presented to daemons instead of the self-signed node certificate,
    /// for daemons that do not pin the relay's id. Set together with `key_file`.
    pub certificate_file: Option<String>,
    /// PEM private key of `certificate_file`.
    pub key_file: Option<String>,
}

/// The relay's whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// HTTPS (TCP) and daemon tunnel (UDP) port (default 443).
    pub https_port: u16,
    /// QUIC port (default 31145).
    pub p2p_port: u16,
    /// Bind address (default 0.0.0.0).
    pub bind_address: IpAddr,
    /// Tracing filter (default "info").
    pub log_level: String,
    /// Names are `<node-id>.<domain_suffix>` (default "localhost", which resolves to
    /// loopback for local use).
    pub domain_suffix: String,
    /// Days of absence after which a name claim lapses (default 30).
    pub claim_lapse_days: u32,
    /// DNS for ACME.
    pub dns: DnsConfig,
    /// Connection limits.
    pub limits: RelayLimits,
    /// Daemon tunnel timing and certificate.
    pub tunnel: TunnelConfig,
    /// Prometheus metrics on `127.0.0.1:<metrics_port>`; off when unset.
    pub metrics_port: Option<u16>,
    /// `[access]`: who may register.
    pub access: AccessPolicy,
    /// `[store]`: where the relays of a deployment share their name claims; `None` keeps
    /// them in the state directory.
    pub store: Option<RelayStoreConfig>,
}

/// `[store]` of the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStoreConfig {
    /// `postgres://user:password@host:port/database` (`RELAY__STORE__URL`): a secret, since
    /// it may carry the password.
    pub url: Secret,
}

/// Enabled DNS needs the provider's token and zone; a tunnel certificate needs its key and the
/// other way round.
pub(crate) fn check_tree(tree: &Table) -> Result<(), ConfigError> {
    let r = Reader { tree };
    for (set, missing) in [
        ("tunnel.certificate_file", "tunnel.key_file"),
        ("tunnel.key_file", "tunnel.certificate_file"),
    ] {
        if let (Some(leaf), None) = (r.leaf(set), r.leaf(missing)) {
            return Err(ConfigError::InvalidValue {
                key: missing.to_owned(),
                origin: leaf.origin.clone(),
                expected: format!("set when {set} is set (they go together)"),
                found: "missing".to_owned(),
            });
        }
    }
    let mode = r.string("access.mode").ok();
    let mode_origin = || {
        r.leaf("access.mode")
            .map_or(Origin::Default, |l| l.origin.clone())
    };
    let tokens = r.list("access.tokens").unwrap_or_default();
    let token_names: Vec<&str> = tokens
        .iter()
        .filter_map(|entry| split_token_entry(entry).map(|(name, _)| name))
        .collect();
    // Token mode without a token would admit nobody: surely a mistake.
    if mode.as_deref() == Some("token") && token_names.is_empty() {
        return Err(ConfigError::InvalidValue {
            key: "access.tokens".to_owned(),
            origin: mode_origin(),
            expected: "at least one token name:secret when access.mode is token (set \
                       RELAY__ACCESS__TOKENS, e.g. through the service's environment file)"
                .to_owned(),
            found: "none".to_owned(),
        });
    }
    for (i, name) in token_names.iter().enumerate() {
        if token_names[..i].contains(name) {
            return Err(ConfigError::InvalidValue {
                key: "access.tokens".to_owned(),
                origin: r
                    .leaf("access.tokens")
                    .map_or(Origin::Default, |l| l.origin.clone()),
                expected: "each token name once".to_owned(),
                found: format!("the name {name:?} twice"),
            });
        }
    }
    if let Some(Node::Table(quotas)) =
        super::tree::get_path(tree, &["access".to_owned(), "quotas".to_owned()])
    {
        for name in quotas.keys() {
            if mode.as_deref() == Some("token") && !token_names.contains(&name.as_str()) {
                return Err(ConfigError::InvalidValue {
                    key: format!("access.quotas.{name}"),
                    origin: mode_origin(),
                    expected: "the name of a token in access.tokens".to_owned(),
                    found: format!("{name:?}, which names no token"),
                });
            }
        }
    }
    // An allowlist without a node would admit nobody: surely a mistake.
    if r.string("access.mode").ok().as_deref() == Some("allowlist")
        && r.list("access.allowed_nodes")
            .map_or(true, |l| l.is_empty())
    {
        let origin = r
            .leaf("access.mode")
            .map_or(Origin::Default, |l| l.origin.clone());
        return Err(ConfigError::InvalidValue {
            key: "access.allowed_nodes".to_owned(),
            origin,
            expected:
                "at least one node id when access.mode is allowlist (each daemon's `gate id`)"
                    .to_owned(),
            found: "an empty list".to_owned(),
        });
    }
    if !r.bool("dns.enabled").unwrap_or(false) {
        return Ok(());
    }
    let origin = r
        .leaf("dns.enabled")
        .map_or(Origin::Default, |l| l.origin.clone());
    for (key, var) in [
        (
            "dns.cloudflare.api_token",
            "RELAY__DNS__CLOUDFLARE__API_TOKEN",
        ),
        ("dns.cloudflare.zone_id", "RELAY__DNS__CLOUDFLARE__ZONE_ID"),
    ] {
        if r.leaf(key).is_none() {
            return Err(ConfigError::InvalidValue {
                key: key.to_owned(),
                origin,
                expected: format!("set when dns.enabled is true (for example with {var})"),
                found: "missing".to_owned(),
            });
        }
    }
    Ok(())
}

impl RelayConfig {
    /// Build the typed configuration from a merged, default-filled tree.
    pub(crate) fn from_tree(tree: &Table) -> Result<RelayConfig, ConfigError> {
        check_tree(tree)?;
        let r = Reader { tree };
        let bind_text = r.string("bind_address")?;
        let bind_address = bind_text
            .parse::<IpAddr>()
            .map_err(|_| ConfigError::InvalidValue {
                key: "bind_address".to_owned(),
                origin: r
                    .leaf("bind_address")
                    .map_or(Origin::Default, |l| l.origin.clone()),
                expected: "an IP address".to_owned(),
                found: format!("{bind_text:?}"),
            })?;
        Ok(RelayConfig {
            https_port: r.int("https_port")?,
            p2p_port: r.int("p2p_port")?,
            bind_address,
            log_level: r.string("log_level")?,
            domain_suffix: r.string("domain_suffix")?,
            claim_lapse_days: r.int("claim_lapse_days")?,
            dns: DnsConfig {
                enabled: r.bool("dns.enabled")?,
                provider: DnsProvider::Cloudflare,
                cloudflare: CloudflareConfig {
                    api_token: r.opt_string("dns.cloudflare.api_token")?.map(Secret::new),
                    zone_id: r.opt_string("dns.cloudflare.zone_id")?,
                    api_url: r.string("dns.cloudflare.api_url")?,
                },
            },
            limits: RelayLimits {
                handshake_timeout: Duration::from_millis(r.int("limits.handshake_timeout_ms")?),
                max_connections: r.int("limits.max_connections")?,
                max_connections_per_ip: r.int("limits.max_connections_per_ip")?,
                max_connections_per_node: r.int("limits.max_connections_per_node")?,
                max_daemon_connections: r.int("limits.max_daemon_connections")?,
                max_registrations_per_ip_per_minute: r
                    .int("limits.max_registrations_per_ip_per_minute")?,
                max_claims: r.int("limits.max_claims")?,
            },
            tunnel: TunnelConfig {
                heartbeat_interval: Duration::from_millis(r.int("tunnel.heartbeat_interval_ms")?),
                registration_timeout: Duration::from_millis(
                    r.int("tunnel.registration_timeout_ms")?,
                ),
                certificate_file: r.opt_string("tunnel.certificate_file")?,
                key_file: r.opt_string("tunnel.key_file")?,
            },
            metrics_port: r.opt_int("metrics_port")?,
            access: AccessPolicy {
                mode: AccessMode::parse(&r.string("access.mode")?).unwrap_or_default(),
                allowed_nodes: r
                    .list("access.allowed_nodes")?
                    .iter()
                    .filter_map(|id| NodeId::parse(id).ok())
                    .collect(),
                tokens: r
                    .list("access.tokens")?
                    .iter()
                    .filter_map(|entry| split_token_entry(entry))
                    .map(|(name, secret)| RegistrationToken::new(name, secret))
                    .collect(),
                quotas: read_quotas(&r, tree)?,
            },
            store: r.opt_string("store.url")?.map(|url| RelayStoreConfig {
                url: Secret::new(url),
            }),
        })
    }
}

/// `access.default_quota` and `access.quotas.<token>`: a token's unset fields come from the
/// default.
fn read_quotas(r: &Reader<'_>, tree: &Table) -> Result<Quotas, ConfigError> {
    let read = |prefix: &str, fallback: Quota| -> Result<Quota, ConfigError> {
        let key = |field: &str| format!("{prefix}.{field}");
        Ok(Quota {
            custom_names: r.opt_int(&key("custom_names"))?.or(fallback.custom_names),
            connections: r.opt_int(&key("connections"))?.or(fallback.connections),
            bytes_per_day: r.opt_int(&key("bytes_per_day"))?.or(fallback.bytes_per_day),
            acme_requests_per_hour: r
                .opt_int(&key("acme_requests_per_hour"))?
                .or(fallback.acme_requests_per_hour),
        })
    };
    let default = read("access.default_quota", Quota::default())?;
    let mut per_token = std::collections::BTreeMap::new();
    if let Some(Node::Table(quotas)) =
        super::tree::get_path(tree, &["access".to_owned(), "quotas".to_owned()])
    {
        for name in quotas.keys() {
            per_token.insert(
                name.clone(),
                read(&format!("access.quotas.{name}"), default)?,
            );
        }
    }
    Ok(Quotas { default, per_token })
}
