//! Who may use a relay: the access policy (`[access]` in the relay's configuration) and its
//! decision for one registering daemon (node allowlist, named registration tokens compared in
//! constant time), the throttle on registrations per source address, and the key the relay's
//! per-address limits count under (an IPv6 /64 as one address).
//!
//! Must not: know about sockets or configuration files (the relay hands the policy in).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::names::NodeId;
use super::quota::Quotas;
use crate::config::Secret;

/// `access.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessMode {
    /// Any daemon may register (the relay says so in its log at start).
    #[default]
    Open,
    /// Only the daemons listed in `access.allowed_nodes`.
    Allowlist,
    /// Only daemons that present one of `access.tokens` (and, when `access.allowed_nodes` is
    /// not empty, are also listed there).
    Token,
}

impl AccessMode {
    /// The configuration value: `open` or `allowlist`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::Open => "open",
            AccessMode::Allowlist => "allowlist",
            AccessMode::Token => "token",
        }
    }

    /// Parses a configuration value.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "open" => Some(AccessMode::Open),
            "allowlist" => Some(AccessMode::Allowlist),
            "token" => Some(AccessMode::Token),
            _ => None,
        }
    }
}

impl fmt::Display for AccessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One named registration token as the relay keeps it: its name (shown in logs and status,
/// used by quotas) and the SHA-256 digest of its secret. The secret itself is not kept.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrationToken {
    name: String,
    digest: [u8; 32],
}

impl fmt::Debug for RegistrationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationToken")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A token name: 1..=64 of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
pub fn is_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Shortest token secret accepted.
pub const MIN_TOKEN_SECRET_LEN: usize = 16;

/// Splits an `access.tokens` entry `name:secret` (the secret may contain `:`); `None` when the
/// name is not [`is_token_name`] or the secret is shorter than [`MIN_TOKEN_SECRET_LEN`].
pub fn split_token_entry(entry: &str) -> Option<(&str, &str)> {
    let (name, secret) = entry.split_once(':')?;
    (is_token_name(name) && secret.len() >= MIN_TOKEN_SECRET_LEN).then_some((name, secret))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Equality of two digests that takes the same time wherever they differ.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

impl RegistrationToken {
    /// A token named `name` with `secret` (only its digest is kept).
    pub fn new(name: &str, secret: &str) -> Self {
        Self {
            name: name.to_owned(),
            digest: sha256(secret.as_bytes()),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `presented` is this token's secret. Compares digests in constant time, so the
    /// time taken says nothing about how much of a guess was right.
    pub fn matches_digest(&self, presented: &[u8; 32]) -> bool {
        digests_equal(&self.digest, presented)
    }
}

/// Who a registered daemon counts as for quotas: the token it presented, or (open and
/// allowlist modes) itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Account {
    /// Admitted with the registration token of this name.
    Token(String),
    /// Admitted as itself.
    Node(NodeId),
}

impl Account {
    /// The token name, if admitted with one.
    pub fn token_name(&self) -> Option<&str> {
        match self {
            Account::Token(name) => Some(name),
            Account::Node(_) => None,
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::Token(name) => write!(f, "token {name}"),
            Account::Node(node) => write!(f, "node {node}"),
        }
    }
}

/// Who may register with a relay.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessPolicy {
    /// Open, allowlist or token.
    pub mode: AccessMode,
    /// The daemons admitted in [`AccessMode::Allowlist`]; in [`AccessMode::Token`], when not
    /// empty, a daemon must also be listed here (ignored when open).
    pub allowed_nodes: BTreeSet<NodeId>,
    /// The registration tokens of [`AccessMode::Token`] (ignored otherwise).
    pub tokens: Vec<RegistrationToken>,
    /// Quotas per account.
    pub quotas: Quotas,
}

impl AccessPolicy {
    /// Whether `node` may register; the refusal says why and what to do (it is sent to the
    /// daemon in the `Refused` frame and logged by the relay). `token` is what the daemon
    /// presented, `protocol_version` the version of its `Register` (a daemon older than
    /// tokens is told to upgrade).
    pub fn admit(
        &self,
        node: &NodeId,
        token: Option<&Secret>,
        protocol_version: u16,
    ) -> Result<Account, String> {
        let listed = self.allowed_nodes.contains(node);
        match self.mode {
            AccessMode::Open => Ok(Account::Node(node.clone())),
            AccessMode::Allowlist if listed => Ok(Account::Node(node.clone())),
            AccessMode::Allowlist => Err(format!(
                "this relay admits only the daemons it lists, and node {node} is not one of them; \
                 ask the relay's operator to add it to access.allowed_nodes"
            )),
            AccessMode::Token => {
                let Some(token) = token else {
                    let upgrade = if protocol_version < super::frame::TOKEN_SINCE_VERSION {
                        format!(
                            " (this daemon speaks tunnel protocol {protocol_version}, which has \
                             no tokens: upgrade it)"
                        )
                    } else {
                        String::new()
                    };
                    return Err(format!(
                        "this relay admits only daemons with a registration token, and node \
                         {node} sent none; set relay.token (GATE_RELAY__TOKEN) to the token the \
                         relay's operator gave you{upgrade}"
                    ));
                };
                // The daemon may hold the secret alone or the whole `name:secret` entry.
                let presented = sha256(token.expose().as_bytes());
                let named = token
                    .expose()
                    .split_once(':')
                    .map(|(name, secret)| (name, sha256(secret.as_bytes())));
                // Every token is compared, whichever matches, so the time taken does not say
                // which one (or whether any) did.
                let mut found = None;
                for candidate in &self.tokens {
                    let whole = candidate.matches_digest(&presented);
                    let entry = named.as_ref().is_some_and(|(name, digest)| {
                        candidate.matches_digest(digest) & (*name == candidate.name)
                    });
                    if (whole | entry) && found.is_none() {
                        found = Some(candidate.name.clone());
                    }
                }
                let Some(name) = found else {
                    return Err(format!(
                        "the registration token node {node} sent is not one this relay accepts; \
                         check relay.token (GATE_RELAY__TOKEN) with the relay's operator"
                    ));
                };
                if !self.allowed_nodes.is_empty() && !listed {
                    return Err(format!(
                        "the token is valid, but this relay also lists the daemons it admits, \
                         and node {node} is not one of them; ask the relay's operator to add it \
                         to access.allowed_nodes"
                    ));
                }
                Ok(Account::Token(name))
            }
        }
    }

    /// The names of the tokens, in configuration order.
    pub fn token_names(&self) -> impl Iterator<Item = &str> {
        self.tokens.iter().map(RegistrationToken::name)
    }
}

/// The key per-address limits count under: an IPv4 address itself; an IPv6 address's /64
/// (the usual allocation of one subscriber, who can use every address in it); an
/// IPv4-mapped IPv6 address as its IPv4 address.
pub fn address_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// The throttle's window.
pub const REGISTRATION_WINDOW: Duration = Duration::from_secs(60);

/// Addresses the throttle remembers at most; past that, windows that have ended are dropped,
/// and if all are current the oldest one goes (memory stays bounded whatever the sources).
pub const MAX_THROTTLED_ADDRESSES: usize = 65_536;

/// What the throttle says about one connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// Within the limit.
    Admit,
    /// Over the limit: refuse the registration with [`throttle_message`] (the daemon learns
    /// why).
    Refuse {
        /// When the address may register again.
        retry_after: Duration,
    },
    /// Far over the limit (twice): refuse the connection before its handshake, without a
    /// word (an address that ignores refusals costs the relay no handshakes).
    Drop,
}

/// Daemon registrations (QUIC connections) per source address ([`address_bucket`]) per
/// minute, in fixed one-minute windows. Sans-IO: time comes in as an argument.
#[derive(Debug, Clone)]
pub struct RegistrationThrottle {
    per_minute: u32,
    windows: HashMap<IpAddr, (Instant, u32)>,
}

impl RegistrationThrottle {
    /// At most `per_minute` registrations from one address per minute (at least 1).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            windows: HashMap::new(),
        }
    }

    /// Counts one attempt from `ip` at `now` and says what to do with it.
    pub fn attempt(&mut self, ip: IpAddr, now: Instant) -> Throttle {
        let bucket = address_bucket(ip);
        if !self.windows.contains_key(&bucket) && self.windows.len() >= MAX_THROTTLED_ADDRESSES {
            self.windows.retain(|_, (start, _)| {
                now.saturating_duration_since(*start) < REGISTRATION_WINDOW
            });
            if self.windows.len() >= MAX_THROTTLED_ADDRESSES {
                let oldest = self
                    .windows
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    self.windows.remove(&oldest);
                }
            }
        }
        let window = self.windows.entry(bucket).or_insert((now, 0));
        if now.saturating_duration_since(window.0) >= REGISTRATION_WINDOW {
            *window = (now, 0);
        }
        window.1 = window.1.saturating_add(1);
        let count = window.1;
        let retry_after =
            REGISTRATION_WINDOW.saturating_sub(now.saturating_duration_since(window.0));
        if count <= self.per_minute {
            Throttle::Admit
        } else if count <= self.per_minute.saturating_mul(2) {
            Throttle::Refuse { retry_after }
        } else {
            Throttle::Drop
        }
    }

    /// Addresses remembered now.
    pub fn tracked(&self) -> usize {
        self.windows.len()
    }
}

/// The refusal a throttled daemon gets.
pub fn throttle_message(per_minute: u32, retry_after: Duration) -> String {
    format!(
        "too many registrations from your address (at most {per_minute} a minute, an IPv6 /64 \
         counting as one address); try again in {} s, or ask the relay's operator to raise \
         limits.max_registrations_per_ip_per_minute",
        retry_after.as_secs().max(1)
    )
}
