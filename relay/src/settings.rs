//! The settings `gate-relay serve` runs with, and how they are read.
//!
//! Owns: [`RelaySettings`] (what [`crate::server::start`] needs) and [`load`], which reads the
//! `--config` files and the `RELAY_` environment, merges them with the layered configuration of
//! `gate_core::config` (DESIGN.md §6: Environment > Nix files > Defaults) and converts the
//! result. Must not: touch sockets or the state directory.
//!
//! Every field has a configuration key except the DNS propagation delay, which keeps its
//! default (tests and embedders set it directly).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gate_core::config::{self, ConfigSources, SourceText};

/// Everything `gate-relay serve` needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// TCP port for HTTPS clients; the relay also accepts daemon tunnels on this UDP port.
    pub https_port: u16,
    /// UDP port of the QUIC endpoint for daemons.
    pub p2p_port: u16,
    /// Address all listeners bind to.
    pub bind_address: IpAddr,
    /// `error`, `warn`, `info`, `debug` or `trace` (or a tracing filter directive).
    pub log_level: String,
    /// Daemons get `<node-id>.<domain_suffix>` and `<custom>.<domain_suffix>`.
    pub domain_suffix: String,
    /// Days of absence after which a custom name claim lapses.
    pub claim_lapse_days: u64,
    /// Connection limits.
    pub limits: RelayLimits,
    /// Daemon tunnel timing and certificate.
    pub tunnel: TunnelSettings,
    /// `[dns]`: whether and through which provider daemons' ACME TXT records are written.
    pub dns: config::DnsConfig,
    /// How long the relay waits after the provider accepted a TXT record before telling the
    /// daemon it is in place (no configuration key; default 5 s).
    pub dns_propagation_delay: Duration,
    /// Plain-text Prometheus metrics on `127.0.0.1:<metrics_port>`; off when absent.
    pub metrics_port: Option<u16>,
    /// `[access]`: who may register (default open).
    pub access: gate_core::tunnel::AccessPolicy,
    /// `[store] url`: the PostgreSQL database the relays of a deployment share their name
    /// claims in; `None` keeps them in the state directory only.
    pub store_url: Option<config::Secret>,
    /// How often the last-seen times of the claims of daemons connected here are written to
    /// the shared store (no configuration key; default 60 s, the `names.json` interval).
    pub claim_refresh_interval: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            https_port: 443,
            p2p_port: 31145,
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            log_level: "info".to_owned(),
            domain_suffix: "localhost".to_owned(),
            claim_lapse_days: 30,
            limits: RelayLimits::default(),
            tunnel: TunnelSettings::default(),
            dns: config::DnsConfig {
                enabled: false,
                provider: config::DnsProvider::Cloudflare,
                cloudflare: config::CloudflareConfig {
                    api_token: None,
                    zone_id: None,
                    api_url: crate::dns::DEFAULT_CLOUDFLARE_API_URL.to_owned(),
                },
            },
            dns_propagation_delay: crate::dns::ChallengeSettings::default().propagation_delay,
            metrics_port: None,
            access: gate_core::tunnel::AccessPolicy::default(),
            store_url: None,
            claim_refresh_interval: Duration::from_secs(60),
        }
    }
}

/// Limits that keep one client, one source or one daemon from exhausting the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Milliseconds a client has to send its whole ClientHello.
    pub handshake_timeout_ms: u64,
    /// Open HTTPS connections in total (being read or forwarded).
    pub max_connections: usize,
    /// Open HTTPS connections from one source IP address.
    pub max_connections_per_ip: usize,
    /// Open forwarded connections to one daemon.
    pub max_connections_per_node: usize,
    /// QUIC connections from daemons in total.
    pub max_daemon_connections: usize,
    /// Daemon connections from one address (an IPv6 /64 as one) per minute; past it the
    /// registration is refused with a message, past twice that the connection is dropped.
    pub max_registrations_per_ip_per_minute: u32,
    /// Name claims kept, all nodes together (`limits.max_claims`).
    pub max_claims: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 5_000,
            max_connections: 16_384,
            max_connections_per_ip: 256,
            max_connections_per_node: 4_096,
            max_daemon_connections: 10_000,
            max_registrations_per_ip_per_minute: 60,
            max_claims: gate_core::tunnel::DEFAULT_MAX_CLAIMS,
        }
    }
}

impl RelayLimits {
    /// The handshake timeout as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// Timing of the daemon connections, and the certificate their QUIC endpoints present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSettings {
    /// Heartbeat interval announced to daemons, in milliseconds; a daemon silent for three
    /// intervals is dropped.
    pub heartbeat_interval_ms: u64,
    /// Milliseconds a daemon has to register after connecting.
    pub registration_timeout_ms: u64,
    /// PEM certificate chain the QUIC endpoints present instead of the self-signed node
    /// certificate, for daemons that do not pin the relay's id (they check it against WebPKI
    /// roots or their extra CA). Needs `key_file`.
    pub certificate_file: Option<PathBuf>,
    /// PEM private key of `certificate_file`.
    pub key_file: Option<PathBuf>,
}

impl Default for TunnelSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 15_000,
            registration_timeout_ms: 10_000,
            certificate_file: None,
            key_file: None,
        }
    }
}

impl From<&config::RelayConfig> for RelaySettings {
    fn from(config: &config::RelayConfig) -> Self {
        let limits = &config.limits;
        let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            https_port: config.https_port,
            p2p_port: config.p2p_port,
            bind_address: config.bind_address,
            log_level: config.log_level.clone(),
            domain_suffix: config.domain_suffix.clone(),
            claim_lapse_days: u64::from(config.claim_lapse_days),
            limits: RelayLimits {
                handshake_timeout_ms: millis(limits.handshake_timeout),
                max_connections: count(limits.max_connections),
                max_connections_per_ip: count(limits.max_connections_per_ip),
                max_connections_per_node: count(limits.max_connections_per_node),
                max_daemon_connections: count(limits.max_daemon_connections),
                max_registrations_per_ip_per_minute: limits.max_registrations_per_ip_per_minute,
                max_claims: limits.max_claims,
            },
            tunnel: TunnelSettings {
                heartbeat_interval_ms: millis(config.tunnel.heartbeat_interval),
                registration_timeout_ms: millis(config.tunnel.registration_timeout),
                certificate_file: config.tunnel.certificate_file.as_ref().map(PathBuf::from),
                key_file: config.tunnel.key_file.as_ref().map(PathBuf::from),
            },
            dns: config.dns.clone(),
            dns_propagation_delay: crate::dns::ChallengeSettings::default().propagation_delay,
            metrics_port: config.metrics_port,
            access: config.access.clone(),
            store_url: config.store.as_ref().map(|store| store.url.clone()),
            claim_refresh_interval: RelaySettings::default().claim_refresh_interval,
        }
    }
}

/// Why settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A `--config` file could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The merged configuration is invalid; the message names key, origin and expectation.
    #[error(transparent)]
    Invalid(#[from] config::ConfigError),
}

/// Reads the `--config` files (later ones win) and the `RELAY_` environment `env`, merges them
/// over the defaults and converts the result.
pub fn load(
    config_files: &[impl AsRef<Path>],
    env: Vec<(String, String)>,
) -> Result<(RelaySettings, config::Loaded<config::RelayConfig>), SettingsError> {
    let mut sources = ConfigSources::new("(the relay has no runtime configuration file)");
    for path in config_files {
        let path = path.as_ref();
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: display.clone(),
            source,
        })?;
        sources.nix_files.push(SourceText::new(display, text));
    }
    sources.env = env;
    let loaded = config::load_relay(&sources)?;
    // Logging may not be set up yet when the configuration is read: stderr, always.
    for warning in &loaded.merged.warnings {
        eprintln!("gate-relay: warning: {warning}");
    }
    Ok((RelaySettings::from(&loaded.config), loaded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_layer_and_the_environment_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        std::fs::write(
            &a,
            "https_port = 8443\ndomain_suffix = \"gate.localhost\"\n[limits]\nmax_connections = 5\n",
        )
        .expect("write");
        std::fs::write(
            &b,
            "https_port = 9443\n[limits]\nmax_connections_per_ip = 2\n",
        )
        .expect("write");
        let env = vec![("RELAY__P2P_PORT".to_owned(), "4000".to_owned())];
        let (settings, _) = load(&[&a, &b], env).expect("load");
        assert_eq!(settings.https_port, 9443);
        assert_eq!(settings.p2p_port, 4000);
        assert_eq!(settings.domain_suffix, "gate.localhost");
        assert_eq!(settings.limits.max_connections, 5);
        assert_eq!(settings.limits.max_connections_per_ip, 2);
        assert_eq!(settings.limits.handshake_timeout_ms, 5_000);
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let none: [&Path; 0] = [];
        let (settings, _) = load(&none, Vec::new()).expect("load");
        assert_eq!(settings, RelaySettings::default());
    }

    #[test]
    fn the_dns_section_reaches_the_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.toml");
        std::fs::write(
            &a,
            "[dns]\nenabled = true\nprovider = \"cloudflare\"\n[dns.cloudflare]\nzone_id = \"z1\"\napi_url = \"http://127.0.0.1:9/client/v4\"\n",
        )
        .expect("write");
        let env = vec![(
            "RELAY__DNS__CLOUDFLARE__API_TOKEN".to_owned(),
            "secret-token".to_owned(),
        )];
        let (settings, _) = load(&[&a], env).expect("load");
        assert!(settings.dns.enabled);
        assert_eq!(settings.dns.cloudflare.zone_id.as_deref(), Some("z1"));
        assert_eq!(
            settings.dns.cloudflare.api_url,
            "http://127.0.0.1:9/client/v4"
        );
        assert_eq!(
            settings
                .dns
                .cloudflare
                .api_token
                .as_ref()
                .map(|t| t.expose()),
            Some("secret-token")
        );
        assert!(!format!("{settings:?}").contains("secret-token"));
    }

    #[test]
    fn metrics_tunnel_and_daemon_limit_keys_reach_the_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.toml");
        std::fs::write(
            &a,
            "metrics_port = 9100\n[limits]\nmax_daemon_connections = 7\n\
             [tunnel]\nheartbeat_interval_ms = 5000\ncertificate_file = \"/etc/relay/chain.pem\"\n\
             key_file = \"/etc/relay/key.pem\"\n",
        )
        .expect("write");
        let (settings, _) = load(&[&a], Vec::new()).expect("load");
        assert_eq!(settings.metrics_port, Some(9100));
        assert_eq!(settings.limits.max_daemon_connections, 7);
        assert_eq!(settings.tunnel.heartbeat_interval_ms, 5_000);
        assert_eq!(settings.tunnel.registration_timeout_ms, 10_000);
        assert_eq!(
            settings.tunnel.certificate_file.as_deref(),
            Some(Path::new("/etc/relay/chain.pem"))
        );
        assert_eq!(
            settings.tunnel.key_file.as_deref(),
            Some(Path::new("/etc/relay/key.pem"))
        );

        // The environment wins, in both the one- and two-underscore forms.
        let env = vec![
            ("RELAY_METRICS_PORT".to_owned(), "9200".to_owned()),
            (
                "RELAY__LIMITS__MAX_DAEMON_CONNECTIONS".to_owned(),
                "3".to_owned(),
            ),
            (
                "RELAY_TUNNEL__REGISTRATION_TIMEOUT_MS".to_owned(),
                "2000".to_owned(),
            ),
        ];
        let (settings, _) = load(&[&a], env).expect("load");
        assert_eq!(settings.metrics_port, Some(9200));
        assert_eq!(settings.limits.max_daemon_connections, 3);
        assert_eq!(settings.tunnel.registration_timeout_ms, 2_000);
    }

    #[test]
    fn bad_values_of_the_new_keys_name_key_origin_and_expectation() {
        let none: [&Path; 0] = [];
        for (var, value, key, expected) in [
            (
                "RELAY_METRICS_PORT",
                "0",
                "metrics_port",
                "an integer from 1 to 65535",
            ),
            (
                "RELAY_TUNNEL__HEARTBEAT_INTERVAL_MS",
                "10",
                "tunnel.heartbeat_interval_ms",
                "an integer from 1000 to 600000",
            ),
            (
                "RELAY_LIMITS__MAX_DAEMON_CONNECTIONS",
                "many",
                "limits.max_daemon_connections",
                "an integer from 1 to 1000000",
            ),
        ] {
            let error = load(&none, vec![(var.to_owned(), value.to_owned())])
                .expect_err(var)
                .to_string();
            for part in [key, var, expected] {
                assert!(error.contains(part), "{var}: {error:?} lacks {part:?}");
            }
        }
        // A certificate without its key is refused up front, naming the missing key.
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.toml");
        std::fs::write(&a, "[tunnel]\ncertificate_file = \"/c.pem\"\n").expect("write");
        let error = load(&[&a], Vec::new()).expect_err("no key").to_string();
        assert!(error.contains("tunnel.key_file"), "{error}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.toml");
        std::fs::write(&a, "htps_port = 1\n").expect("write");
        let error = load(&[&a], Vec::new()).expect_err("typo");
        assert!(error.to_string().contains("htps_port"), "{error}");
    }
}
