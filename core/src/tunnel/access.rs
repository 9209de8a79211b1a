//! Who may use a relay: the access policy (`[access]` in the relay's configuration) and its
//! decision for one registering daemon, the throttle on registrations per source address, and
//! the key the relay's per-address limits count under (an IPv6 /64 as one address).
//!
//! Must not: know about sockets or configuration files (the relay hands the policy in).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::names::NodeId;

/// `access.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessMode {
    /// Any daemon may register (the relay says so in its log at start).
    #[default]
    Open,
    /// Only the daemons listed in `access.allowed_nodes`.
    Allowlist,
}

impl AccessMode {
    /// The configuration value: `open` or `allowlist`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::Open => "open",
            AccessMode::Allowlist => "allowlist",
        }
    }

    /// Parses a configuration value.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "open" => Some(AccessMode::Open),
            "allowlist" => Some(AccessMode::Allowlist),
            _ => None,
        }
    }
}

impl fmt::Display for AccessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may register with a relay.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessPolicy {
    /// Open, or the allowlist.
    pub mode: AccessMode,
    /// The daemons admitted in [`AccessMode::Allowlist`] (ignored when open).
    pub allowed_nodes: BTreeSet<NodeId>,
}

impl AccessPolicy {
    /// Whether `node` may register; the refusal says why and what to do (it is sent to the
    /// daemon in the `Refused` frame and logged by the relay).
    pub fn admit(&self, node: &NodeId) -> Result<(), String> {
        match self.mode {
            AccessMode::Open => Ok(()),
            AccessMode::Allowlist if self.allowed_nodes.contains(node) => Ok(()),
            AccessMode::Allowlist => Err(format!(
                "this relay admits only the daemons it lists, and node {node} is not one of them; \
                 ask the relay's operator to add it to access.allowed_nodes"
            )),
        }
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
