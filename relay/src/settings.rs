//! The relay's settings (DESIGN.md §6 relay keys) and their defaults.
//!
//! Owns: [`RelaySettings`], its defaults, and reading it from one or more TOML files (later
//! files override earlier ones key by key). Must not: touch sockets or the state directory.
//!
//! This is a stand-in until the layered configuration (`gate_core::config`) is wired in: the
//! key names are the final ones, so the same files keep working.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything `gate-relay serve` needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// Daemon tunnel timing.
    pub tunnel: TunnelSettings,
    /// DNS provider for ACME DNS-01 records.
    pub dns: DnsSettings,
    /// Plain-text Prometheus metrics on `127.0.0.1:<metrics_port>`; off when absent.
    pub metrics_port: Option<u16>,
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
            dns: DnsSettings::default(),
            metrics_port: None,
        }
    }
}

/// Limits that keep one client, one source or one daemon from exhausting the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 10_000,
            max_connections: 20_000,
            max_connections_per_ip: 256,
            max_connections_per_node: 4_096,
            max_daemon_connections: 10_000,
        }
    }
}

impl RelayLimits {
    /// The handshake timeout as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// `[tunnel]`: timing of the daemon connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TunnelSettings {
    /// Heartbeat interval announced to daemons, in milliseconds; a daemon silent for three
    /// intervals is dropped.
    pub heartbeat_interval_ms: u64,
    /// Milliseconds a daemon has to register after connecting.
    pub registration_timeout_ms: u64,
    /// PEM certificate chain the QUIC endpoints present instead of the self-signed node
    /// certificate, for daemons that do not pin the relay's id (they check it against WebPKI
    /// roots or their extra CA). Needs `key_file`.
    pub certificate_file: Option<std::path::PathBuf>,
    /// PEM private key of `certificate_file`.
    pub key_file: Option<std::path::PathBuf>,
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

/// `[dns]`: where ACME TXT records are written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSettings {
    /// Whether the relay writes ACME records at all.
    pub enabled: bool,
    /// The provider name (`cloudflare`).
    pub provider: Option<String>,
    /// `[dns.cloudflare]`.
    pub cloudflare: Option<CloudflareSettings>,
}

/// `[dns.cloudflare]`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudflareSettings {
    /// API token (a secret).
    pub api_token: Option<String>,
    /// Zone id.
    pub zone_id: Option<String>,
    /// API base URL (for tests against a fake).
    pub api_url: Option<String>,
}

impl std::fmt::Debug for CloudflareSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudflareSettings")
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("zone_id", &self.zone_id)
            .field("api_url", &self.api_url)
            .finish()
    }
}

/// Why settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The merged TOML does not describe valid settings.
    #[error("{path}: {message}")]
    Invalid {
        /// The file (or the merged files).
        path: String,
        /// What is wrong, as the TOML parser says it.
        message: String,
    },
}

impl RelaySettings {
    /// Reads the files in order; each one overrides the keys it sets.
    pub fn from_files(paths: &[impl AsRef<Path>]) -> Result<Self, SettingsError> {
        let mut merged = toml::Table::new();
        let mut names = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let display = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                path: display.clone(),
                source,
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| SettingsError::Invalid {
                path: display.clone(),
                message: e.to_string(),
            })?;
            merge_tables(&mut merged, table);
            names.push(display);
        }
        let settings: RelaySettings =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| SettingsError::Invalid {
                    path: names.join(", "),
                    message: e.to_string(),
                })?;
        Ok(settings)
    }
}

fn merge_tables(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(new)) => {
                merge_tables(existing, new)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_files_override_key_by_key() {
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
        let settings = RelaySettings::from_files(&[&a, &b]).expect("parse");
        assert_eq!(settings.https_port, 9443);
        assert_eq!(settings.domain_suffix, "gate.localhost");
        assert_eq!(settings.limits.max_connections, 5);
        assert_eq!(settings.limits.max_connections_per_ip, 2);
        assert_eq!(settings.p2p_port, 31145);
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.toml");
        std::fs::write(&a, "htps_port = 1\n").expect("write");
        let error = RelaySettings::from_files(&[&a]).expect_err("typo");
        assert!(error.to_string().contains("htps_port"), "{error}");
    }
}
