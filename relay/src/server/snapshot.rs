//! The status snapshot the running relay writes for `gate-relay status` (see
//! [`crate::status`]): what is fixed at start, the live part built from the registry and the
//! counters, and the task that rewrites it periodically and soon after a daemon comes or goes.

use super::*;

/// What `gate-relay status` reports that does not change while the relay runs, and the DNS
/// records whose state it shows.
pub(super) struct StatusFixed<R: Runtime> {
    pub(super) pid: u32,
    pub(super) runtime: &'static str,
    pub(super) started_at: u64,
    pub(super) node_id: String,
    pub(super) listen: crate::status::Listen,
    pub(super) dns: AcmeRecords<R>,
}

impl Shared {
    /// The status snapshot now (see [`crate::status`]).
    pub(super) fn status_snapshot<R: Runtime>(
        &self,
        fixed: &StatusFixed<R>,
        stopped_at: Option<u64>,
    ) -> crate::status::StatusSnapshot {
        let dns = &fixed.dns;
        use crate::status::{ClaimInfo, Connections, DaemonInfo, DnsInfo, StatusSnapshot};
        let settings = &self.settings;
        let limits = &settings.limits;
        let now = unix_now();
        let mut token_users: std::collections::BTreeMap<
            String,
            std::collections::BTreeSet<String>,
        > = Default::default();
        let (daemons_total, daemons, claims): (usize, Vec<DaemonInfo>, Vec<ClaimInfo>) = {
            let core = lock(&self.core);
            let mut ids: Vec<&u64> = core.sessions.keys().collect();
            ids.sort();
            let daemons = ids
                .into_iter()
                .take(crate::status::MAX_LISTED_DAEMONS)
                .filter_map(|id| core.sessions.get(id))
                .map(|entry| {
                    let node_id = entry.session.node_id();
                    let (state, grant) = match entry.session.state() {
                        gate_core::tunnel::RelayState::AwaitingRegister { .. }
                        | gate_core::tunnel::RelayState::CheckingClaim { .. } => {
                            ("registering", None)
                        }
                        gate_core::tunnel::RelayState::Registered { grant } => {
                            ("registered", Some(grant))
                        }
                        gate_core::tunnel::RelayState::Draining { grant } => {
                            ("draining", Some(grant))
                        }
                        gate_core::tunnel::RelayState::Left { grant } => ("left", Some(grant)),
                        gate_core::tunnel::RelayState::Closed => ("closing", None),
                    };
                    DaemonInfo {
                        node_id: node_id.to_string(),
                        state: state.to_owned(),
                        names: grant
                            .map(|g| g.names().map(str::to_owned).collect())
                            .unwrap_or_default(),
                        custom_name_refusal: grant.and_then(|g| g.custom_name_refusal.clone()),
                        connected_at: entry.connected_at,
                        remote: entry.remote.to_string(),
                        transport: entry.connection.transport().to_owned(),
                        forwarded_open: core.forwarded_per_node.get(node_id).copied().unwrap_or(0),
                        token: entry
                            .session
                            .account()
                            .and_then(|a| a.token_name())
                            .map(str::to_owned),
                    }
                })
                .collect();
            for entry in core.sessions.values() {
                if let Some(name) = entry.session.account().and_then(|a| a.token_name()) {
                    token_users
                        .entry(name.to_owned())
                        .or_default()
                        .insert(entry.session.node_id().to_string());
                }
            }
            let claims = crate::status::claims_from_names(
                &core.names.snapshot(),
                &settings.domain_suffix,
                settings.claim_lapse_days,
                |node_id| core.names.is_online(node_id),
            );
            (core.sessions.len(), daemons, claims)
        };
        let stats = self.metrics.snapshot();
        let cloudflare = &settings.dns.cloudflare;
        StatusSnapshot {
            format: crate::status::FORMAT,
            pid: fixed.pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            runtime: fixed.runtime.to_owned(),
            started_at: fixed.started_at,
            written_at: now,
            stopped_at,
            node_id: fixed.node_id.clone(),
            domain_suffix: settings.domain_suffix.clone(),
            listen: fixed.listen.clone(),
            claim_lapse_days: settings.claim_lapse_days,
            daemons_total,
            daemons,
            claims,
            connections: Connections {
                https_open: stats.https_open,
                forwarded_open: stats.forwarded_open,
                daemon_connections: self.daemon_connections.load(Ordering::Relaxed),
                max_connections: limits.max_connections,
                max_connections_per_ip: limits.max_connections_per_ip,
                max_connections_per_node: limits.max_connections_per_node,
                max_daemon_connections: limits.max_daemon_connections,
                handshake_timeout_ms: limits.handshake_timeout_ms,
            },
            counters: stats.into(),
            dns: DnsInfo {
                enabled: settings.dns.enabled,
                provider: "cloudflare".to_owned(),
                ready: dns.enabled(),
                problem: dns.problem().filter(|_| settings.dns.enabled),
                zone_id: cloudflare.zone_id.clone(),
                api_url: cloudflare.api_url.clone(),
                records: dns.record_names(),
            },
            access: crate::status::AccessInfo {
                mode: settings.access.mode.as_str().to_owned(),
                allowed_nodes: settings
                    .access
                    .allowed_nodes
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                tokens: settings
                    .access
                    .token_names()
                    .map(|name| crate::status::TokenInfo {
                        name: name.to_owned(),
                        daemons: token_users
                            .get(name)
                            .map(|ids| ids.iter().cloned().collect())
                            .unwrap_or_default(),
                    })
                    .collect(),
            },
            store: self
                .claim_store
                .as_ref()
                .map(|store| crate::status::StoreInfo {
                    url: store.describe(),
                    connected: store.is_connected(),
                }),
        }
    }
}

/// Rewrites the status snapshot every [`crate::status::WRITE_INTERVAL`] and soon after a
/// daemon comes or goes (at most every 250 ms), until shutdown.
pub(super) async fn write_status_periodically<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    fixed: Arc<StatusFixed<R>>,
    state_dir: PathBuf,
    changed: async_channel::Receiver<()>,
    _running: async_channel::Sender<()>,
) {
    let mut failing = false;
    loop {
        let snapshot = shared.status_snapshot(&fixed, None);
        match crate::status::write(&state_dir, &snapshot) {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("could not write the status snapshot: {e}");
            }
            Err(_) => {}
        }
        let wait = async {
            rt.sleep(Duration::from_millis(250)).await;
            let _ = race(changed.recv(), rt.sleep(crate::status::WRITE_INTERVAL)).await;
        };
        if let Either::Left(()) = race(shared.shutdown.wait(), wait).await {
            return;
        }
    }
}
