//! The routing registry: every daemon connection's [`RelaySession`] and the name table, behind
//! one mutex, and the routing decision for an HTTPS client (owner online, newest registered
//! connection, per-daemon limit).
//!
//! Must not: hold the lock across an `.await` (every method here is synchronous).

use super::*;

/// One daemon connection known to the relay.
pub(super) struct DaemonEntry {
    pub(super) session: RelaySession,
    pub(super) connection: DaemonLink,
    /// Its address (UDP, or TCP for a tunnel over TCP), and when it connected (Unix seconds),
    /// for `gate-relay status`.
    pub(super) remote: SocketAddr,
    pub(super) connected_at: u64,
    /// Counted in `daemons_registered`.
    pub(super) counted: bool,
}

/// Routing state, behind one mutex.
pub(super) struct Core {
    pub(super) names: RelayNameTable,
    pub(super) sessions: HashMap<u64, DaemonEntry>,
    pub(super) by_node: HashMap<NodeId, BTreeSet<u64>>,
    pub(super) forwarded_per_node: HashMap<NodeId, usize>,
    pub(super) next_session_id: u64,
    /// What each account (token, or node in open and allowlist modes) uses against its quota.
    pub(super) quotas: QuotaLedger,
}

/// A daemon connection, over either transport: streams to the daemon are opened on it.
#[derive(Clone)]
pub(super) enum DaemonLink {
    Quic(quinn::Connection),
    Tcp(TcpOpener),
}

impl DaemonLink {
    /// `quic` or `tcp`, for `gate-relay status`.
    pub(super) fn transport(&self) -> &'static str {
        match self {
            Self::Quic(_) => "quic",
            Self::Tcp(_) => "tcp",
        }
    }

    /// Whether the link is known to be closed (idle timeout, reset, closed by us).
    pub(super) fn is_closed(&self) -> bool {
        match self {
            Self::Quic(connection) => connection.close_reason().is_some(),
            Self::Tcp(opener) => opener.is_closed(),
        }
    }

    /// Closes the link; `why` goes to a QUIC peer as the close reason.
    pub(super) fn close(&self, why: &str) {
        match self {
            Self::Quic(connection) => connection.close(0u32.into(), why.as_bytes()),
            Self::Tcp(opener) => opener.close(),
        }
    }
}

/// Where a forwarded connection goes.
pub(super) struct Route {
    pub(super) header: Frame,
    pub(super) connection: DaemonLink,
    /// The daemon connection's session id (to forget it when it turns out to be gone).
    pub(super) session: u64,
    pub(super) _slot: NodeSlot,
}

pub(super) enum RouteError {
    /// No online daemon owns the name.
    Unknown,
    /// The daemon is at its connection limit.
    NodeFull,
    /// The daemon's account is at a quota (connections, bytes per day): why.
    Quota(String),
}

impl Shared {
    pub(super) fn route(
        self: &Arc<Self>,
        server_name: &str,
        client: SocketAddr,
    ) -> Result<Route, RouteError> {
        let mut core = lock(&self.core);
        let core = &mut *core;
        let node_id = core.names.lookup(server_name).ok_or(RouteError::Unknown)?;
        let candidates = core.by_node.get(&node_id).ok_or(RouteError::Unknown)?;
        // The newest registered connection of that daemon wins.
        // A connection quinn already knows to be closed (idle timeout, reset) is skipped even
        // before its task has removed it.
        let found = candidates.iter().rev().find_map(|id| {
            let entry = core.sessions.get(id)?;
            if entry.connection.is_closed() {
                return None;
            }
            let header = entry
                .session
                .stream_header(&core.names, client, server_name)
                .ok()?;
            let account = entry.session.account().cloned();
            Some((header, entry.connection.clone(), *id, account))
        });
        let (header, connection, session, account) = found.ok_or(RouteError::Unknown)?;
        let open = core.forwarded_per_node.get(&node_id).copied().unwrap_or(0);
        if open >= self.settings.limits.max_connections_per_node {
            return Err(RouteError::NodeFull);
        }
        if let Some(account) = &account {
            let quota = self.session_config.access.quotas.for_account(account);
            core.quotas
                .open_connection(account, &quota, Instant::now())
                .map_err(|refusal| RouteError::Quota(refusal.to_string()))?;
        }
        *core.forwarded_per_node.entry(node_id.clone()).or_insert(0) += 1;
        self.metrics.forwarded_open.inc();
        Ok(Route {
            header,
            connection,
            session,
            _slot: NodeSlot {
                shared: self.clone(),
                node_id,
                account,
                bytes: 0,
            },
        })
    }

    pub(super) fn add_session(
        &self,
        node_id: NodeId,
        connection: DaemonLink,
        remote: SocketAddr,
    ) -> u64 {
        let mut core = lock(&self.core);
        let id = core.next_session_id;
        core.next_session_id += 1;
        let session =
            RelaySession::new(node_id.clone(), self.session_config.clone(), Instant::now());
        core.sessions.insert(
            id,
            DaemonEntry {
                session,
                connection,
                remote,
                connected_at: unix_now(),
                counted: false,
            },
        );
        core.by_node.entry(node_id).or_default().insert(id);
        id
    }

    /// Session `id`'s daemon is gone (a stream could not be opened, or its connection closed
    /// while a client waited): no client is routed to it from now on, and its connection is
    /// closed so its task ends and removes it with the usual clean-up ([`Self::remove_session`]).
    pub(super) fn forget_session(&self, id: u64, why: &'static str) {
        let connection = {
            let mut core = lock(&self.core);
            let core = &mut *core;
            let Some(entry) = core.sessions.get(&id) else {
                return;
            };
            let node_id = entry.session.node_id().clone();
            let connection = entry.connection.clone();
            if let Some(ids) = core.by_node.get_mut(&node_id) {
                ids.remove(&id);
                if ids.is_empty() {
                    core.by_node.remove(&node_id);
                }
            }
            connection
        };
        connection.close(why);
    }

    /// Removes session `id`; returns whether it was its node's last connection.
    pub(super) fn remove_session(&self, id: u64) -> bool {
        let mut core = lock(&self.core);
        let core = &mut *core;
        let Some(mut entry) = core.sessions.remove(&id) else {
            return false;
        };
        let _ = self.status_changed.try_send(());
        if entry.counted {
            self.metrics.daemons_registered.dec();
        }
        entry
            .session
            .handle_connection_lost(unix_now(), &mut core.names);
        core.quotas.prune(Instant::now());
        let node_id = entry.session.node_id().clone();
        let Some(ids) = core.by_node.get_mut(&node_id) else {
            return true;
        };
        ids.remove(&id);
        if ids.is_empty() {
            core.by_node.remove(&node_id);
            return true;
        }
        false
    }

    /// Counts session `id` as a registered daemon (once).
    /// Asks for the status snapshot to be rewritten soon.
    pub(super) fn notify_status_changed(&self) {
        let _ = self.status_changed.try_send(());
    }

    pub(super) fn mark_counted(&self, id: u64) {
        let mut core = lock(&self.core);
        if let Some(entry) = core.sessions.get_mut(&id) {
            if !entry.counted {
                entry.counted = true;
                self.metrics.daemons_registered.inc();
                let _ = self.status_changed.try_send(());
            }
        }
    }

    /// Counts an ACME challenge request of session `id`'s daemon against its account's
    /// quota; `Err` says why it is refused.
    pub(super) fn count_acme_request(&self, id: u64) -> Result<(), String> {
        let mut core = lock(&self.core);
        let core = &mut *core;
        let Some(account) = core
            .sessions
            .get(&id)
            .and_then(|entry| entry.session.account().cloned())
        else {
            return Ok(());
        };
        let quota = self.session_config.access.quotas.for_account(&account);
        core.quotas
            .acme_request(&account, &quota, Instant::now())
            .map_err(|refusal| refusal.to_string())
    }

    /// Runs `f` on session `id` with the name table.
    pub(super) fn with_session<T>(
        &self,
        id: u64,
        f: impl FnOnce(&mut RelaySession, &mut RelayNameTable) -> T,
    ) -> Option<T> {
        let mut core = lock(&self.core);
        let core = &mut *core;
        let entry = core.sessions.get_mut(&id)?;
        Some(f(&mut entry.session, &mut core.names))
    }
}
