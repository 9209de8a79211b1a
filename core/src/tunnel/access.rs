//! Who may use a relay: the access policy (`[access]` in the relay's configuration) and its
//! decision for one registering daemon, and the key the relay's per-address limits count
//! under (an IPv6 /64 as one address).
//!
//! Must not: know about sockets or configuration files (the relay hands the policy in).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

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
