//! DNS for ACME DNS-01: the provider interface, the Cloudflare v4 implementation and the
//! [`ChallengeRecords`] manager that the relay server drives from `RelayEvent::DnsSet` /
//! `DnsClear` (DESIGN.md §4).
//!
//! Owns: talking to the DNS provider's API, remembering which TXT records it wrote for which
//! daemon and removing them (on request, after a lifetime, or when the daemon goes away).
//! Must not: decide which names a daemon may use (that is `gate_core::tunnel::RelaySession`,
//! which only emits `DnsSet` for `_acme-challenge.<a name the daemon owns>`), nor ever put the
//! provider's API token in an error, a log line or a `Debug` output.

mod cloudflare;
mod records;

use std::future::Future;

pub use cloudflare::{Cloudflare, CloudflareSettings, DEFAULT_CLOUDFLARE_API_URL};
pub use records::{ChallengeError, ChallengeRecords, ChallengeSettings};

/// A TXT record as the provider lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtRecord {
    /// The provider's id of the record (used to delete it).
    pub id: String,
    /// Full record name, lower-case, without a trailing dot.
    pub name: String,
    /// The TXT value with any surrounding double quotes removed.
    pub value: String,
}

/// Why a provider call failed. Messages name the operation and the provider's own words, and
/// never contain credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The provider refused the credentials (HTTP 401/403, or its auth error codes).
    #[error("{provider} refused the API token ({detail}); check that it is valid and may edit DNS records of the zone")]
    Unauthorized {
        /// Provider name.
        provider: &'static str,
        /// Status and the provider's message.
        detail: String,
    },
    /// The provider answered with an error.
    #[error("{provider} API error while trying to {operation}: {detail}")]
    Api {
        /// Provider name.
        provider: &'static str,
        /// What was being done.
        operation: String,
        /// Status and the provider's message.
        detail: String,
    },
    /// The provider could not be reached or the answer could not be read.
    #[error("could not reach the {provider} API to {operation}: {detail}")]
    Transport {
        /// Provider name.
        provider: &'static str,
        /// What was being done.
        operation: String,
        /// The transport error.
        detail: String,
    },
    /// No zone matches the record name.
    #[error("no {provider} zone found for {name} (set dns.cloudflare.zone_id)")]
    NoZone {
        /// Provider name.
        provider: &'static str,
        /// The record name.
        name: String,
    },
    /// The configuration cannot be used.
    #[error("DNS provider configuration: {0}")]
    Config(String),
}

/// A DNS provider that can write TXT records, written once over any runtime.
pub trait DnsProvider: Send + Sync + 'static {
    /// Creates `TXT name = value` (an extra record if others exist for `name`) and returns its
    /// provider id.
    fn create_txt(
        &self,
        name: &str,
        value: &str,
    ) -> impl Future<Output = Result<String, DnsError>> + Send;

    /// Deletes the record with this provider id (deleting a record that is already gone is
    /// success).
    fn delete_txt(&self, name: &str, id: &str)
        -> impl Future<Output = Result<(), DnsError>> + Send;

    /// Lists the TXT records named `name`.
    fn list_txt(&self, name: &str)
        -> impl Future<Output = Result<Vec<TxtRecord>, DnsError>> + Send;
}

/// Removes one pair of surrounding double quotes, as providers may store TXT content quoted.
pub fn unquote_txt(content: &str) -> &str {
    let trimmed = content.trim();
    trimmed
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(trimmed)
}
