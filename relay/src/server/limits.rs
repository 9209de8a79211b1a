//! Connection limits: one HTTPS connection's place (total and per source IP), one forwarded
//! connection's place in its daemon's limit, and one daemon connection's place. Each place is a
//! guard that gives itself back when dropped, so no path can leak one.

use super::*;

/// Holds one HTTPS connection's place in the limits.
pub(super) struct HttpsSlot {
    pub(super) shared: Arc<Shared>,
    pub(super) ip: IpAddr,
}

impl Drop for HttpsSlot {
    fn drop(&mut self) {
        self.shared.https_total.fetch_sub(1, Ordering::Relaxed);
        self.shared.metrics.https_open.dec();
        let mut per_ip = lock(&self.shared.https_per_ip);
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Holds one forwarded connection's place in its daemon's limit.
/// Also holds its place in the account's connection quota, and counts the bytes the
/// connection carried against the account's day when it ends.
pub(super) struct NodeSlot {
    pub(super) shared: Arc<Shared>,
    pub(super) node_id: NodeId,
    /// The daemon's account, when it was admitted (quotas apply).
    pub(super) account: Option<gate_core::tunnel::Account>,
    /// Bytes forwarded both ways, set when the forwarding ends.
    pub(super) bytes: u64,
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        let mut core = lock(&self.shared.core);
        // Before the gauge goes down: whoever sees the connection gone also sees its quota
        // released and its bytes counted.
        if let Some(account) = &self.account {
            core.quotas.close_connection(account);
            core.quotas
                .record_bytes(account, self.bytes, Instant::now());
        }
        self.shared.metrics.forwarded_open.dec();
        if let Some(count) = core.forwarded_per_node.get_mut(&self.node_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                core.forwarded_per_node.remove(&self.node_id);
            }
        }
    }
}

/// Holds one daemon connection's place in the limit.
pub(super) struct DaemonSlot(pub(super) Arc<Shared>);

impl Drop for DaemonSlot {
    fn drop(&mut self) {
        self.0.daemon_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// A place for one HTTPS connection from `ip`, counted per [`address_bucket`](gate_core::tunnel::address_bucket) (an IPv6
    /// /64 is one address: its holder can use every address in it).
    pub(super) fn take_https_slot(self: &Arc<Self>, ip: IpAddr) -> Option<HttpsSlot> {
        let ip = gate_core::tunnel::address_bucket(ip);
        let limits = &self.settings.limits;
        let mut per_ip = lock(&self.https_per_ip);
        let from_ip = per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= limits.max_connections_per_ip
            || self.https_total.load(Ordering::Relaxed) >= limits.max_connections
        {
            return None;
        }
        per_ip.insert(ip, from_ip + 1);
        self.https_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.https_open.inc();
        Some(HttpsSlot {
            shared: self.clone(),
            ip,
        })
    }

    pub(super) fn take_daemon_slot(self: &Arc<Self>) -> Option<DaemonSlot> {
        let max = self.settings.limits.max_daemon_connections;
        let previous = self.daemon_connections.fetch_add(1, Ordering::Relaxed);
        let slot = DaemonSlot(self.clone());
        (previous < max).then_some(slot)
    }
}
