//! `gate-relay serve`: the HTTPS listener that routes TLS connections by SNI, the QUIC endpoints
//! daemons connect to, and the copy loop between them (DESIGN.md §4).
//!
//! Owns: listeners and their accept loops, connection limits (total, per source IP, per
//! daemon, daemon connections), the handshake deadline, the TLS alerts sent when a name cannot
//! be routed, one task per daemon connection driving a [`RelaySession`] over its control
//! stream, forwarded streams (header frame, replay of the ClientHello bytes, copy both ways
//! with half-close), persistence of the name table, the optional metrics listener, and
//! carrying out the sessions' ACME TXT requests through [`crate::dns::ChallengeRecords`] (each
//! in its own task, so a set waiting for propagation never blocks a session's loop).
//!
//! Must not: terminate TLS, look inside forwarded bytes past the ClientHello, make protocol
//! decisions (those belong to `gate_core::tunnel`), or use runtime-specific APIs (everything is
//! written over [`gate_rt::Runtime`]).
//!
//! Locking: all routing state (name table, sessions, per-daemon counters) lives in one
//! `Mutex<Core>`, held only for short synchronous sections and never across an `.await`.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gate_core::sni::{self, Status};
use gate_core::tunnel::{
    CloseReason, EncodeError, Frame, FrameError, NameTableConfig, NameTableSnapshot, NodeId,
    RelayConfig, RelayEvent, RelayNameTable, RelaySession,
};
use gate_rt::tunnel::driver::{self, ControlEnd, ControlStream, Flow, Output};
use gate_rt::Runtime;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::dns::{ChallengeRecords, ChallengeSettings, Cloudflare, CloudflareSettings};
use crate::identity::{peer_node_id, Identity, IdentityError};
use crate::settings::RelaySettings;
use crate::state::{self, StateError};
use crate::support::{race, unix_now, Either, Shutdown};

/// File name of the persisted name table in the state directory.
pub const NAMES_FILE_NAME: &str = "names.json";

/// How long the relay keeps reading (and discarding) after sending an alert, so the client
/// reads the alert instead of a connection reset.
const LINGER_AFTER_ALERT: Duration = Duration::from_secs(1);

/// The answer to a daemon's ACME TXT request when `dns.enabled` is false.
const DNS_DISABLED: &str = "DNS provider not configured on this relay";

/// ACME requests of one daemon connection being carried out at once; further ones are refused
/// until one finishes (keeps a daemon from flooding the DNS provider).
const MAX_ACME_IN_FLIGHT: usize = 16;

/// How often claims' last-seen times are written to disk.
const PERSIST_INTERVAL: Duration = Duration::from_secs(60);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("could not bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The domain suffix is not a DNS name.
    #[error("domain_suffix: {0}")]
    DomainSuffix(String),
    /// The persisted name table is unreadable.
    #[error("{}: {why}; fix or move the file (it holds the custom name claims)", path.display())]
    Names {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The TLS configuration failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The configured QUIC certificate or key is unusable.
    #[error("tunnel certificate: {0}")]
    Certificate(String),
}

/// Counters exported by the metrics listener and [`RunningRelay::stats`].
#[derive(Debug, Default)]
struct Metrics {
    https_accepted: AtomicU64,
    https_open: AtomicU64,
    forwarded: AtomicU64,
    forwarded_open: AtomicU64,
    unknown_name: AtomicU64,
    no_sni: AtomicU64,
    invalid_hello: AtomicU64,
    handshake_timeouts: AtomicU64,
    over_limit: AtomicU64,
    daemon_unreachable: AtomicU64,
    daemons_registered: AtomicU64,
    bytes_to_daemons: AtomicU64,
    bytes_to_clients: AtomicU64,
}

/// A snapshot of the relay's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    /// HTTPS connections accepted since start.
    pub https_accepted: u64,
    /// HTTPS connections open now (reading the ClientHello or forwarded).
    pub https_open: u64,
    /// Connections forwarded to a daemon since start.
    pub forwarded: u64,
    /// Forwarded connections open now.
    pub forwarded_open: u64,
    /// Connections answered `unrecognized_name` for an unknown or offline name.
    pub unknown_name: u64,
    /// ClientHellos without a server name.
    pub no_sni: u64,
    /// Connections that did not start with a valid ClientHello.
    pub invalid_hello: u64,
    /// Connections cut off at the handshake timeout.
    pub handshake_timeouts: u64,
    /// Connections refused by a connection limit.
    pub over_limit: u64,
    /// Connections whose daemon could not be reached.
    pub daemon_unreachable: u64,
    /// Daemon connections registered now.
    pub daemons_registered: u64,
}

impl Metrics {
    fn snapshot(&self) -> RelayStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayStats {
            https_accepted: get(&self.https_accepted),
            https_open: get(&self.https_open),
            forwarded: get(&self.forwarded),
            forwarded_open: get(&self.forwarded_open),
            unknown_name: get(&self.unknown_name),
            no_sni: get(&self.no_sni),
            invalid_hello: get(&self.invalid_hello),
            handshake_timeouts: get(&self.handshake_timeouts),
            over_limit: get(&self.over_limit),
            daemon_unreachable: get(&self.daemon_unreachable),
            daemons_registered: get(&self.daemons_registered),
        }
    }

    /// Prometheus text exposition format.
    fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let rows: [(&str, &str, &str, u64); 13] = [
            (
                "gate_relay_https_accepted_total",
                "counter",
                "HTTPS connections accepted",
                get(&self.https_accepted),
            ),
            (
                "gate_relay_https_open",
                "gauge",
                "HTTPS connections open",
                get(&self.https_open),
            ),
            (
                "gate_relay_forwarded_total",
                "counter",
                "connections forwarded to daemons",
                get(&self.forwarded),
            ),
            (
                "gate_relay_forwarded_open",
                "gauge",
                "forwarded connections open",
                get(&self.forwarded_open),
            ),
            (
                "gate_relay_unknown_name_total",
                "counter",
                "connections for unknown or offline names",
                get(&self.unknown_name),
            ),
            (
                "gate_relay_no_sni_total",
                "counter",
                "ClientHellos without a server name",
                get(&self.no_sni),
            ),
            (
                "gate_relay_invalid_hello_total",
                "counter",
                "connections without a valid ClientHello",
                get(&self.invalid_hello),
            ),
            (
                "gate_relay_handshake_timeouts_total",
                "counter",
                "connections cut off at the handshake timeout",
                get(&self.handshake_timeouts),
            ),
            (
                "gate_relay_over_limit_total",
                "counter",
                "connections refused by a limit",
                get(&self.over_limit),
            ),
            (
                "gate_relay_daemon_unreachable_total",
                "counter",
                "connections whose daemon could not be reached",
                get(&self.daemon_unreachable),
            ),
            (
                "gate_relay_daemons_registered",
                "gauge",
                "registered daemon connections",
                get(&self.daemons_registered),
            ),
            (
                "gate_relay_bytes_to_daemons_total",
                "counter",
                "bytes copied from clients to daemons",
                get(&self.bytes_to_daemons),
            ),
            (
                "gate_relay_bytes_to_clients_total",
                "counter",
                "bytes copied from daemons to clients",
                get(&self.bytes_to_clients),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }
}

/// One daemon connection known to the relay.
struct DaemonEntry {
    session: RelaySession,
    connection: quinn::Connection,
    /// Its UDP address, and when it connected (Unix seconds), for `gate-relay status`.
    remote: SocketAddr,
    connected_at: u64,
    /// Counted in `daemons_registered`.
    counted: bool,
}

/// Routing state, behind one mutex.
struct Core {
    names: RelayNameTable,
    sessions: HashMap<u64, DaemonEntry>,
    by_node: HashMap<NodeId, BTreeSet<u64>>,
    forwarded_per_node: HashMap<NodeId, usize>,
    next_session_id: u64,
}

/// State shared by every task of one relay.
struct Shared {
    settings: RelaySettings,
    session_config: RelayConfig,
    names_path: PathBuf,
    core: Mutex<Core>,
    /// Serializes writers; holds the (label, owner) pairs last written, so registrations that
    /// change no claim do not rewrite the file.
    persist_lock: Mutex<Vec<(String, NodeId)>>,
    https_per_ip: Mutex<HashMap<IpAddr, usize>>,
    https_total: AtomicUsize,
    daemon_connections: AtomicUsize,
    metrics: Metrics,
    shutdown: Shutdown,
    /// Signalled when a daemon comes or goes, so the status snapshot is rewritten soon.
    status_changed: async_channel::Sender<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the routing state half-updated in a way
    // that matters more than stopping the relay would; keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Holds one HTTPS connection's place in the limits.
struct HttpsSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for HttpsSlot {
    fn drop(&mut self) {
        self.shared.https_total.fetch_sub(1, Ordering::Relaxed);
        self.shared
            .metrics
            .https_open
            .fetch_sub(1, Ordering::Relaxed);
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
struct NodeSlot {
    shared: Arc<Shared>,
    node_id: NodeId,
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        self.shared
            .metrics
            .forwarded_open
            .fetch_sub(1, Ordering::Relaxed);
        let mut core = lock(&self.shared.core);
        if let Some(count) = core.forwarded_per_node.get_mut(&self.node_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                core.forwarded_per_node.remove(&self.node_id);
            }
        }
    }
}

/// Holds one daemon connection's place in the limit.
struct DaemonSlot(Arc<Shared>);

impl Drop for DaemonSlot {
    fn drop(&mut self) {
        self.0.daemon_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a forwarded connection goes.
struct Route {
    header: Frame,
    connection: quinn::Connection,
    _slot: NodeSlot,
}

enum RouteError {
    /// No online daemon owns the name.
    Unknown,
    /// The daemon is at its connection limit.
    NodeFull,
}

impl Shared {
    fn take_https_slot(self: &Arc<Self>, ip: IpAddr) -> Option<HttpsSlot> {
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
        self.metrics.https_open.fetch_add(1, Ordering::Relaxed);
        Some(HttpsSlot {
            shared: self.clone(),
            ip,
        })
    }

    fn take_daemon_slot(self: &Arc<Self>) -> Option<DaemonSlot> {
        let max = self.settings.limits.max_daemon_connections;
        let previous = self.daemon_connections.fetch_add(1, Ordering::Relaxed);
        let slot = DaemonSlot(self.clone());
        (previous < max).then_some(slot)
    }

    fn route(self: &Arc<Self>, server_name: &str, client: SocketAddr) -> Result<Route, RouteError> {
        let mut core = lock(&self.core);
        let core = &mut *core;
        let node_id = core.names.lookup(server_name).ok_or(RouteError::Unknown)?;
        let candidates = core.by_node.get(&node_id).ok_or(RouteError::Unknown)?;
        // The newest registered connection of that daemon wins.
        let found = candidates.iter().rev().find_map(|id| {
            let entry = core.sessions.get(id)?;
            let header = entry
                .session
                .stream_header(&core.names, client, server_name)
                .ok()?;
            Some((header, entry.connection.clone()))
        });
        let (header, connection) = found.ok_or(RouteError::Unknown)?;
        let open = core.forwarded_per_node.entry(node_id.clone()).or_insert(0);
        if *open >= self.settings.limits.max_connections_per_node {
            return Err(RouteError::NodeFull);
        }
        *open += 1;
        self.metrics.forwarded_open.fetch_add(1, Ordering::Relaxed);
        Ok(Route {
            header,
            connection,
            _slot: NodeSlot {
                shared: self.clone(),
                node_id,
            },
        })
    }

    fn add_session(&self, node_id: NodeId, connection: quinn::Connection) -> u64 {
        let remote = connection.remote_address();
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

    /// Removes session `id`; returns whether it was its node's last connection.
    fn remove_session(&self, id: u64) -> bool {
        let mut core = lock(&self.core);
        let core = &mut *core;
        let Some(mut entry) = core.sessions.remove(&id) else {
            return false;
        };
        let _ = self.status_changed.try_send(());
        if entry.counted {
            self.metrics
                .daemons_registered
                .fetch_sub(1, Ordering::Relaxed);
        }
        entry
            .session
            .handle_connection_lost(unix_now(), &mut core.names);
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
    fn notify_status_changed(&self) {
        let _ = self.status_changed.try_send(());
    }

    fn mark_counted(&self, id: u64) {
        let mut core = lock(&self.core);
        if let Some(entry) = core.sessions.get_mut(&id) {
            if !entry.counted {
                entry.counted = true;
                self.metrics
                    .daemons_registered
                    .fetch_add(1, Ordering::Relaxed);
                let _ = self.status_changed.try_send(());
            }
        }
    }

    /// Runs `f` on session `id` with the name table.
    fn with_session<T>(
        &self,
        id: u64,
        f: impl FnOnce(&mut RelaySession, &mut RelayNameTable) -> T,
    ) -> Option<T> {
        let mut core = lock(&self.core);
        let core = &mut *core;
        let entry = core.sessions.get_mut(&id)?;
        Some(f(&mut entry.session, &mut core.names))
    }

    /// Writes the name table to the state directory (atomically). Failures are logged: the
    /// claims stay in memory and the next write tries again.
    fn persist_names(&self) {
        self.write_names(true);
    }

    /// Writes the name table when a claim was added, moved or removed since the last write.
    fn persist_claim_changes(&self) {
        self.write_names(false);
    }

    fn write_names(&self, always: bool) {
        let mut written = lock(&self.persist_lock);
        let snapshot = {
            let mut core = lock(&self.core);
            core.names.expire(unix_now());
            core.names.snapshot()
        };
        let claims: Vec<(String, NodeId)> = snapshot
            .claims
            .iter()
            .map(|c| (c.label.clone(), c.node_id.clone()))
            .collect();
        if !always && claims == *written {
            return;
        }
        let json = match serde_json::to_vec_pretty(&snapshot) {
            Ok(json) => json,
            Err(e) => {
                tracing::error!("could not serialize the name table: {e}");
                return;
            }
        };
        match state::write_atomically(&self.names_path, &json, 0o600) {
            Ok(()) => *written = claims,
            Err(e) => tracing::error!("could not save the name claims: {e}"),
        }
    }
}

/// What `gate-relay status` reports that does not change while the relay runs, and the DNS
/// records whose state it shows.
struct StatusFixed<R: Runtime> {
    pid: u32,
    runtime: &'static str,
    started_at: u64,
    node_id: String,
    listen: crate::status::Listen,
    dns: AcmeRecords<R>,
}

impl Shared {
    /// The status snapshot now (see [`crate::status`]).
    fn status_snapshot<R: Runtime>(
        &self,
        fixed: &StatusFixed<R>,
        stopped_at: Option<u64>,
    ) -> crate::status::StatusSnapshot {
        let dns = &fixed.dns;
        use crate::status::{ClaimInfo, Connections, DaemonInfo, DnsInfo, StatusSnapshot};
        let settings = &self.settings;
        let limits = &settings.limits;
        let now = unix_now();
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
                        gate_core::tunnel::RelayState::AwaitingRegister { .. } => {
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
                        forwarded_open: core.forwarded_per_node.get(node_id).copied().unwrap_or(0),
                    }
                })
                .collect();
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
        }
    }
}

/// Rewrites the status snapshot every [`crate::status::WRITE_INTERVAL`] and soon after a
/// daemon comes or goes (at most every 250 ms), until shutdown.
async fn write_status_periodically<R: Runtime>(
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

/// The certificate chain and key from `[tunnel] certificate_file` / `key_file`, if set.
fn load_presented_certificate(
    settings: &RelaySettings,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, ServeError> {
    let tunnel = &settings.tunnel;
    let (cert_path, key_path) = match (&tunnel.certificate_file, &tunnel.key_file) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(ServeError::Certificate(
                "tunnel.certificate_file and tunnel.key_file must be set together".to_owned(),
            ))
        }
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServeError::Certificate(format!("{}: {e}", cert_path.display())))?;
    if chain.is_empty() {
        return Err(ServeError::Certificate(format!(
            "{}: no certificate found",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| ServeError::Certificate(format!("{}: {e}", key_path.display())))?;
    Ok(Some((chain, key)))
}

fn load_names(path: &Path, config: NameTableConfig) -> Result<RelayNameTable, ServeError> {
    let bad = |why: String| ServeError::Names {
        path: path.to_owned(),
        why,
    };
    let snapshot = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<NameTableSnapshot>(&bytes)
            .map_err(|e| bad(format!("not a name table: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NameTableSnapshot::default(),
        Err(e) => return Err(bad(format!("could not read it: {e}"))),
    };
    let mut table =
        RelayNameTable::from_snapshot(config, snapshot).map_err(|e| bad(e.to_string()))?;
    table.expire(unix_now());
    Ok(table)
}

/// A running relay: its addresses, its counters, and the way to stop it.
pub struct RunningRelay<R: Runtime> {
    rt: R,
    shared: Arc<Shared>,
    state_dir: PathBuf,
    status: Arc<StatusFixed<R>>,
    node_id: NodeId,
    https_addr: SocketAddr,
    quic_addrs: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    endpoints: Vec<quinn::Endpoint>,
    tasks: async_channel::Receiver<()>,
}

impl<R: Runtime> std::fmt::Debug for RunningRelay<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningRelay")
            .field("node_id", &self.node_id)
            .field("https_addr", &self.https_addr)
            .field("quic_addrs", &self.quic_addrs)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> RunningRelay<R> {
    /// The relay's node id (what daemons pin as `<id>@host:port`).
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The TCP address HTTPS clients connect to.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// The UDP addresses daemons connect to: `p2p_port` first, then `https_port`.
    pub fn quic_addrs(&self) -> &[SocketAddr] {
        &self.quic_addrs
    }

    /// The metrics listener's address, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The counters now.
    pub fn stats(&self) -> RelayStats {
        self.shared.metrics.snapshot()
    }

    /// The owner of a custom label, online or not.
    pub fn claim_owner(&self, label: &str) -> Option<NodeId> {
        lock(&self.shared.core).names.claim_owner(label).cloned()
    }

    /// Completes when the relay has stopped (after [`RunningRelay::shutdown`] was called
    /// elsewhere through [`RunningRelay::shutdown_handle`]).
    pub async fn stopped(&self) {
        let _ = self.tasks.recv().await;
    }

    /// A handle that stops the relay when triggered.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shared.shutdown.clone()
    }

    /// Stops accepting, tells every daemon the relay is draining, closes the QUIC endpoints,
    /// saves the name table and waits (bounded) until the sockets are released.
    pub async fn shutdown(self) {
        self.shared.shutdown.trigger();
        let _ = gate_rt::timeout(&self.rt, Duration::from_secs(5), self.stopped()).await;
        for endpoint in &self.endpoints {
            endpoint.close(0u32.into(), b"relay shutting down");
        }
        for endpoint in &self.endpoints {
            let _ = gate_rt::timeout(&self.rt, Duration::from_secs(2), endpoint.wait_idle()).await;
        }
        self.shared.persist_names();
        // A clean stop: the last snapshot says so, with the final counters.
        let last = self.shared.status_snapshot(&self.status, Some(unix_now()));
        if let Err(e) = crate::status::write(&self.state_dir, &last) {
            tracing::warn!("could not write the final status snapshot: {e}");
        }
    }
}

/// Starts a relay: binds the HTTPS listener on `bind_address:https_port` (TCP), QUIC on
/// `bind_address:p2p_port` and `bind_address:https_port` (UDP), loads the name table from
/// `state_dir`, and spawns the accept loops. Port 0 picks free ports (the UDP `https_port`
/// then uses the TCP port's number).
pub async fn start<R: Runtime>(
    rt: R,
    settings: RelaySettings,
    identity: &Identity,
    state_dir: &Path,
) -> Result<RunningRelay<R>, ServeError> {
    state::ensure_private_dir(state_dir)?;
    let mut name_config = NameTableConfig::new(&settings.domain_suffix)
        .map_err(|e| ServeError::DomainSuffix(e.to_string()))?;
    name_config.claim_lapse = Duration::from_secs(settings.claim_lapse_days.saturating_mul(86_400));
    let names_path = state_dir.join(NAMES_FILE_NAME);
    let names = load_names(&names_path, name_config)?;

    let bind = |port| SocketAddr::new(settings.bind_address, port);
    let https_bind = bind(settings.https_port);
    let listener = rt.bind_tcp(https_bind).map_err(|source| ServeError::Bind {
        what: "the HTTPS listener (TCP)",
        addr: https_bind,
        source,
    })?;
    let https_addr = R::listener_addr(&listener).map_err(|source| ServeError::Bind {
        what: "the HTTPS listener (TCP)",
        addr: https_bind,
        source,
    })?;
    let presented = load_presented_certificate(&settings)?;
    let server_config = identity.relay_server_config_with(presented)?;
    let p2p_bind = bind(settings.p2p_port);
    let p2p = identity
        .quic_endpoint(&rt, p2p_bind, Some(server_config.clone()))
        .map_err(|source| ServeError::Bind {
            what: "the QUIC endpoint on p2p_port (UDP)",
            addr: p2p_bind,
            source,
        })?;
    let udp_https_bind = bind(https_addr.port());
    let udp_https = identity
        .quic_endpoint(&rt, udp_https_bind, Some(server_config))
        .map_err(|source| ServeError::Bind {
            what: "the QUIC endpoint on https_port (UDP)",
            addr: udp_https_bind,
            source,
        })?;
    let quic_p2p_addr = p2p.local_addr().unwrap_or(p2p_bind);
    let quic_https_addr = udp_https.local_addr().unwrap_or(udp_https_bind);
    let quic_addrs = vec![quic_p2p_addr, quic_https_addr];

    let tunnel = &settings.tunnel;
    let session_config = RelayConfig {
        heartbeat_interval: Duration::from_millis(tunnel.heartbeat_interval_ms.max(100)),
        registration_timeout: Duration::from_millis(tunnel.registration_timeout_ms.max(100)),
        // Daemons render their public URLs with it (`https://<name>:<port>/` unless 443).
        https_port: Some(https_addr.port()),
        ..RelayConfig::default()
    };
    let metrics_port = settings.metrics_port;
    let dns = ChallengeRecords::from_config(
        rt.clone(),
        &settings.dns,
        ChallengeSettings {
            propagation_delay: settings.dns_propagation_delay,
            ..ChallengeSettings::default()
        },
    );
    if settings.dns.enabled {
        if let Err(e) = CloudflareSettings::from_config(&settings.dns.cloudflare) {
            tracing::warn!(
                "dns.enabled is set, but the DNS provider cannot be used ({e}): \
                 daemons' ACME record requests will be refused"
            );
        }
    }
    let (status_changed, status_changes) = async_channel::bounded::<()>(1);
    let shared = Arc::new(Shared {
        settings,
        session_config,
        names_path,
        core: Mutex::new(Core {
            names,
            sessions: HashMap::new(),
            by_node: HashMap::new(),
            forwarded_per_node: HashMap::new(),
            next_session_id: 1,
        }),
        persist_lock: Mutex::new(Vec::new()),
        https_per_ip: Mutex::new(HashMap::new()),
        https_total: AtomicUsize::new(0),
        daemon_connections: AtomicUsize::new(0),
        metrics: Metrics::default(),
        shutdown: Shutdown::new(),
        status_changed,
    });

    let metrics_addr = match metrics_port {
        Some(port) => {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let metrics_listener = rt.bind_tcp(addr).map_err(|source| ServeError::Bind {
                what: "the metrics listener (TCP)",
                addr,
                source,
            })?;
            let bound = R::listener_addr(&metrics_listener).unwrap_or(addr);
            rt.spawn(serve_metrics(rt.clone(), shared.clone(), metrics_listener));
            Some(bound)
        }
        None => None,
    };

    let (task_guard, tasks) = async_channel::bounded::<()>(1);
    rt.spawn(accept_https(
        rt.clone(),
        shared.clone(),
        listener,
        task_guard.clone(),
    ));
    for endpoint in [&p2p, &udp_https] {
        rt.spawn(accept_daemons(
            rt.clone(),
            shared.clone(),
            dns.clone(),
            endpoint.clone(),
            task_guard.clone(),
        ));
    }
    let status = Arc::new(StatusFixed {
        pid: std::process::id(),
        runtime: R::NAME,
        started_at: unix_now(),
        node_id: identity.node_id().to_string(),
        listen: crate::status::Listen {
            https: https_addr.to_string(),
            quic: quic_addrs.iter().map(ToString::to_string).collect(),
            metrics: metrics_addr.map(|a| a.to_string()),
            public_https_port: https_addr.port(),
        },
        dns: dns.clone(),
    });
    rt.spawn(write_status_periodically(
        rt.clone(),
        shared.clone(),
        status.clone(),
        state_dir.to_owned(),
        status_changes,
        task_guard.clone(),
    ));
    rt.spawn(persist_periodically(rt.clone(), shared.clone(), task_guard));
    tracing::info!(
        node_id = %identity.node_id(),
        https = %https_addr,
        quic_p2p = %quic_p2p_addr,
        quic_https = %quic_https_addr,
        domain_suffix = %shared.settings.domain_suffix,
        acme_dns = dns.enabled(),
        runtime = R::NAME,
        "relay listening"
    );
    Ok(RunningRelay {
        rt,
        shared,
        state_dir: state_dir.to_owned(),
        status,
        node_id: identity.node_id().clone(),
        https_addr,
        quic_addrs,
        metrics_addr,
        endpoints: vec![p2p, udp_https],
        tasks,
    })
}

async fn persist_periodically<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    _running: async_channel::Sender<()>,
) {
    loop {
        match race(shared.shutdown.wait(), rt.sleep(PERSIST_INTERVAL)).await {
            Either::Left(()) => return,
            Either::Right(()) => shared.persist_names(),
        }
    }
}

async fn accept_https<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    listener: R::TcpListener,
    running: async_channel::Sender<()>,
) {
    loop {
        let (stream, peer) = match race(shared.shutdown.wait(), R::accept(&listener)).await {
            Either::Left(()) => break,
            Either::Right(Ok(accepted)) => accepted,
            Either::Right(Err(e)) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!("accepting an HTTPS connection failed: {e}");
                rt.sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared
            .metrics
            .https_accepted
            .fetch_add(1, Ordering::Relaxed);
        let Some(slot) = shared.take_https_slot(peer.ip()) else {
            shared.metrics.over_limit.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        rt.spawn(serve_https(rt.clone(), shared.clone(), stream, peer, slot));
    }
    drop(running);
}

/// Why no server name could be read.
#[derive(Debug)]
enum HelloError {
    Closed,
    Io(std::io::Error),
    Invalid(sni::SniError),
}

/// Reads until the ClientHello is complete; `buf` keeps every byte read (to replay).
/// `Ok(None)`: a valid ClientHello without a server name.
async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<String>, HelloError> {
    let mut chunk = [0u8; 2048];
    loop {
        let room = sni::MAX_CLIENT_HELLO_BYTES.saturating_sub(buf.len());
        if room == 0 {
            return Err(HelloError::Invalid(sni::SniError::TooLarge));
        }
        let want = room.min(chunk.len());
        let read = stream
            .read(chunk.get_mut(..want).unwrap_or_default())
            .await
            .map_err(HelloError::Io)?;
        if read == 0 {
            return Err(HelloError::Closed);
        }
        buf.extend_from_slice(chunk.get(..read).unwrap_or_default());
        match sni::parse(buf) {
            Ok(Status::NeedMore) => continue,
            Ok(Status::Found(hello)) => {
                return Ok(hello.server_name().map(|name| name.as_str().to_owned()))
            }
            Ok(Status::NoSni(_)) => return Ok(None),
            Err(e) => return Err(HelloError::Invalid(e)),
        }
    }
}

/// Sends a fatal alert, closes the write side, and reads (bounded in time and bytes) until
/// the client closes, so the alert is not lost to a reset.
async fn refuse<R: Runtime, S: AsyncRead + AsyncWrite + Unpin>(
    rt: &R,
    stream: &mut S,
    alert: &[u8],
) {
    if stream.write_all(alert).await.is_err() {
        return;
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let _ = gate_rt::timeout(rt, LINGER_AFTER_ALERT, async {
        let mut sink = [0u8; 1024];
        let mut total = 0usize;
        while total < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

async fn serve_https<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    mut stream: R::TcpStream,
    peer: SocketAddr,
    slot: HttpsSlot,
) {
    let metrics = &shared.metrics;
    let mut hello = Vec::with_capacity(2048);
    let deadline = shared.settings.limits.handshake_timeout();
    let server_name =
        match gate_rt::timeout(&rt, deadline, read_client_hello(&mut stream, &mut hello)).await {
            Ok(Ok(Some(name))) => name,
            Ok(Ok(None)) => {
                metrics.no_sni.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "ClientHello without a server name");
                refuse(&rt, &mut stream, sni::unrecognized_name_alert()).await;
                return;
            }
            Ok(Err(HelloError::Invalid(e))) => {
                metrics.invalid_hello.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "not a TLS ClientHello: {e}");
                return;
            }
            Ok(Err(HelloError::Closed)) => return,
            Ok(Err(HelloError::Io(e))) => {
                tracing::debug!(%peer, "reading the ClientHello failed: {e}");
                return;
            }
            Err(gate_rt::Elapsed) => {
                metrics.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, bytes = hello.len(), "no complete ClientHello in time");
                return;
            }
        };
    let route = match shared.route(&server_name, peer) {
        Ok(route) => route,
        Err(RouteError::Unknown) => {
            metrics.unknown_name.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, name = %server_name, "no online daemon owns this name");
            refuse(&rt, &mut stream, sni::unrecognized_name_alert()).await;
            return;
        }
        Err(RouteError::NodeFull) => {
            metrics.over_limit.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, name = %server_name, "daemon at its connection limit");
            refuse(&rt, &mut stream, sni::internal_error_alert()).await;
            return;
        }
    };
    let (mut send, recv) = match gate_rt::timeout(&rt, deadline, route.connection.open_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            metrics.daemon_unreachable.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, name = %server_name, "opening a stream to the daemon failed: {e}");
            refuse(&rt, &mut stream, sni::internal_error_alert()).await;
            return;
        }
        Err(gate_rt::Elapsed) => {
            metrics.daemon_unreachable.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, name = %server_name, "the daemon takes no more streams");
            refuse(&rt, &mut stream, sni::internal_error_alert()).await;
            return;
        }
    };
    let mut head = Vec::with_capacity(route.header.encoded_len() + hello.len());
    if route.header.encode(&mut head).is_err() {
        // Server names are at most 253 bytes; a header always encodes.
        return;
    }
    head.extend_from_slice(&hello);
    drop(hello);
    if send.write_chunk(bytes::Bytes::from(head)).await.is_err() {
        metrics.daemon_unreachable.fetch_add(1, Ordering::Relaxed);
        refuse(&rt, &mut stream, sni::internal_error_alert()).await;
        return;
    }
    metrics.forwarded.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, name = %server_name, "forwarding");
    // The forwarding is a task of its own and this one ends: an open forwarded connection
    // then holds only the forwarding state, not this task's (ClientHello reading, refusals).
    let Route {
        _slot: node_slot, ..
    } = route;
    let forwarding = Forwarding {
        shared: shared.clone(),
        peer,
        server_name,
        _slots: (slot, node_slot),
    };
    rt.spawn(forwarding.run(stream, send, recv));
}

/// What one forwarded connection keeps while it is open.
struct Forwarding {
    shared: Arc<Shared>,
    peer: SocketAddr,
    server_name: String,
    /// Its places in the limits, released when the connection ends.
    _slots: (HttpsSlot, NodeSlot),
}

impl Forwarding {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        mut stream: S,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let metrics = &self.shared.metrics;
        match crate::forward::forward(&mut stream, &mut send, &mut recv).await {
            Ok(copied) => {
                metrics
                    .bytes_to_daemons
                    .fetch_add(copied.to_daemon, Ordering::Relaxed);
                metrics
                    .bytes_to_clients
                    .fetch_add(copied.to_client, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, name = %self.server_name, "forwarded connection ended: {e}");
                let _ = send.reset(0u32.into());
                let _ = recv.stop(0u32.into());
            }
        }
    }
}

async fn accept_daemons<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    dns: AcmeRecords<R>,
    endpoint: quinn::Endpoint,
    running: async_channel::Sender<()>,
) {
    loop {
        let incoming = match race(shared.shutdown.wait(), endpoint.accept()).await {
            Either::Left(()) | Either::Right(None) => break,
            Either::Right(Some(incoming)) => incoming,
        };
        let Some(slot) = shared.take_daemon_slot() else {
            tracing::warn!(
                "daemon connection limit reached; refusing {}",
                incoming.remote_address()
            );
            incoming.refuse();
            continue;
        };
        rt.spawn(serve_daemon(
            rt.clone(),
            shared.clone(),
            dns.clone(),
            incoming,
            slot,
            running.clone(),
        ));
    }
    drop(running);
}

/// The ACME TXT records the relay writes for its daemons.
type AcmeRecords<R> = ChallengeRecords<R, Cloudflare<R>>;

/// The answer to a daemon's ACME TXT request: request id and outcome for `complete_acme`.
type AcmeAnswer = (u64, Result<(), String>);

/// One of a daemon connection's [`MAX_ACME_IN_FLIGHT`] places for ACME requests being carried
/// out; given back when dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn take(counter: &Arc<AtomicUsize>) -> Option<Self> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_ACME_IN_FLIGHT).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(counter.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_daemon<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    dns: AcmeRecords<R>,
    incoming: quinn::Incoming,
    _slot: DaemonSlot,
    _running: async_channel::Sender<()>,
) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            tracing::debug!(%remote, "daemon connection failed: {e}");
            return;
        }
    };
    let deadline = shared.settings.limits.handshake_timeout();
    let connection = match gate_rt::timeout(&rt, deadline, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            tracing::debug!(%remote, "daemon handshake failed: {e}");
            return;
        }
        Err(gate_rt::Elapsed) => {
            tracing::debug!(%remote, "daemon handshake timed out");
            return;
        }
    };
    let Some(node_id) = peer_node_id(&connection) else {
        connection.close(1u32.into(), b"no node certificate");
        return;
    };
    tracing::debug!(%remote, node = %node_id, "daemon connected");
    let id = shared.add_session(node_id.clone(), connection.clone());
    let owner = node_id.to_string();
    let outcome = drive_daemon(&rt, &shared, &dns, &owner, id, &connection).await;
    if shared.remove_session(id) && dns.enabled() {
        // The daemon's TXT records go with its last connection.
        rt.spawn(async move { dns.owner_disconnected(&owner).await });
    }
    match outcome {
        DaemonOutcome::Shutdown => connection.close(0u32.into(), b"relay shutting down"),
        DaemonOutcome::Closed(reason) => {
            tracing::info!(%remote, node = %node_id, "daemon connection closed: {reason}");
            connection.close(0u32.into(), reason.as_bytes());
        }
    }
}

enum DaemonOutcome {
    Shutdown,
    Closed(String),
}

/// Drives one daemon connection's control stream with the shared driver until it ends.
async fn drive_daemon<R: Runtime>(
    rt: &R,
    shared: &Arc<Shared>,
    dns: &AcmeRecords<R>,
    owner: &str,
    id: u64,
    connection: &quinn::Connection,
) -> DaemonOutcome {
    // Finished ACME requests come back here; the end keeps a sender, so `recv` never fails.
    // At most MAX_ACME_IN_FLIGHT answers are ever queued.
    let (acme_done, acme_answers) = async_channel::bounded::<AcmeAnswer>(MAX_ACME_IN_FLIGHT);
    let mut end = RelayEnd {
        rt,
        shared,
        dns,
        owner,
        id,
        connection,
        acme_done,
        acme_answers,
        acme_in_flight: Arc::new(AtomicUsize::new(0)),
        lost: None,
        outcome: None,
    };
    let mut control = None;
    driver::drive(rt, &mut end, &mut control).await;
    if let Some(stream) = control.as_mut() {
        stream.finish();
    }
    end.outcome
        .unwrap_or_else(|| DaemonOutcome::Closed("the control stream ended".to_owned()))
}

/// What wakes a daemon connection's task besides its timer and control stream.
enum DaemonInput {
    Shutdown,
    AcmeDone(AcmeAnswer),
    ControlOpened(Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>),
}

/// The relay's end of the control-stream driver for one daemon connection: the
/// [`RelaySession`] (inside the shared routing state), DNS work, and the outcome.
struct RelayEnd<'a, R: Runtime> {
    rt: &'a R,
    shared: &'a Arc<Shared>,
    dns: &'a AcmeRecords<R>,
    owner: &'a str,
    id: u64,
    connection: &'a quinn::Connection,
    acme_done: async_channel::Sender<AcmeAnswer>,
    acme_answers: async_channel::Receiver<AcmeAnswer>,
    acme_in_flight: Arc<AtomicUsize>,
    /// How the control stream was lost, for the log (the session only says "connection lost").
    lost: Option<String>,
    outcome: Option<DaemonOutcome>,
}

impl<R: Runtime> RelayEnd<'_, R> {
    fn session<T>(&self, f: impl FnOnce(&mut RelaySession, &mut RelayNameTable) -> T) -> Option<T> {
        self.shared.with_session(self.id, f)
    }

    fn complete_acme(&self, request_id: u64, outcome: Result<(), String>) {
        self.session(|s, _| s.complete_acme(request_id, outcome));
    }

    fn start_dns(&self, event: RelayEvent) {
        let Some(slot) = InFlight::take(&self.acme_in_flight) else {
            let request_id = match &event {
                RelayEvent::DnsSet { request_id, .. } => Some(*request_id),
                RelayEvent::DnsClear { request_id, .. } => *request_id,
                _ => None,
            };
            tracing::warn!(node = %self.owner, "too many ACME requests at once; refused");
            if let Some(request_id) = request_id {
                self.complete_acme(
                    request_id,
                    Err(format!(
                        "too many ACME requests in progress at once (at most {MAX_ACME_IN_FLIGHT}); try again"
                    )),
                );
            }
            return;
        };
        let dns = self.dns.clone();
        let owner = self.owner.to_owned();
        let done = self.acme_done.clone();
        self.rt.spawn(async move {
            if let Some(answer) = dns.apply_event(&owner, &event).await {
                // Queued answers never outnumber the places, so this does not wait; if the
                // connection is gone, nobody waits for the answer.
                let _ = done.send(answer).await;
            }
            drop(slot);
        });
    }
}

impl<R: Runtime> ControlEnd for RelayEnd<'_, R> {
    type Input = DaemonInput;
    type Event = RelayEvent;

    fn poll_output(&mut self) -> Option<Output<RelayEvent>> {
        match self.session(|s, _| s.poll_event()).flatten()? {
            RelayEvent::Transmit(frame) => Some(Output::Transmit(frame)),
            event => Some(Output::Event(event)),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.session(|s, _| s.poll_timeout()).flatten()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.session(|s, names| s.handle_timeout(now, unix_now(), names));
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame) {
        self.session(|s, names| s.handle_frame(now, unix_now(), frame, names));
    }

    fn handle_undecodable(&mut self, _now: Instant, error: FrameError) {
        self.session(|s, names| s.handle_undecodable(unix_now(), names, error));
    }

    fn handle_encode_failed(&mut self, _now: Instant, error: EncodeError) {
        self.session(|s, names| s.handle_encode_failed(unix_now(), names, error));
    }

    fn handle_stream_lost(&mut self, _now: Instant, reason: String) {
        self.lost = Some(reason);
        self.session(|s, names| s.handle_connection_lost(unix_now(), names));
    }

    fn next_input(&self, has_control: bool) -> impl Future<Output = DaemonInput> + Send + '_ {
        let shutdown = async {
            self.shared.shutdown.wait().await;
            DaemonInput::Shutdown
        };
        let acme = async {
            match self.acme_answers.recv().await {
                Ok(answer) => DaemonInput::AcmeDone(answer),
                Err(_) => std::future::pending().await,
            }
        };
        let opened = async move {
            if has_control {
                std::future::pending::<()>().await;
            }
            DaemonInput::ControlOpened(self.connection.accept_bi().await)
        };
        futures_lite::future::or(shutdown, futures_lite::future::or(acme, opened))
    }

    fn handle_input(
        &mut self,
        now: Instant,
        input: DaemonInput,
        control: &mut Option<ControlStream>,
    ) -> Flow {
        match input {
            DaemonInput::Shutdown => {
                // Tell the daemon (the Drain frame is written before the driver stops).
                self.session(|s, _| s.start_drain());
                self.outcome = Some(DaemonOutcome::Shutdown);
                Flow::Stop
            }
            DaemonInput::AcmeDone((request_id, outcome)) => {
                self.complete_acme(request_id, outcome);
                Flow::Continue
            }
            DaemonInput::ControlOpened(Ok((send, recv))) => {
                *control = Some(ControlStream::new(send, recv));
                Flow::Continue
            }
            DaemonInput::ControlOpened(Err(e)) => {
                self.handle_stream_lost(now, format!("connection lost: {e}"));
                Flow::Continue
            }
        }
    }

    async fn handle_event(
        &mut self,
        event: RelayEvent,
        _control: &mut Option<ControlStream>,
    ) -> Flow {
        let shared = self.shared;
        match event {
            RelayEvent::Transmit(frame) => {
                // The driver writes frames; poll_output never hands one here.
                tracing::debug!(frame_type = frame.frame_type(), "frame routed as an event");
            }
            RelayEvent::Registered(grant) => {
                shared.mark_counted(self.id);
                tracing::info!(
                    node_name = %grant.node_name,
                    custom_name = grant.custom_name.as_deref().unwrap_or("-"),
                    "daemon registered"
                );
                if let Some(refusal) = &grant.custom_name_refusal {
                    tracing::warn!(node_name = %grant.node_name, "{refusal}");
                }
                shared.persist_claim_changes();
            }
            RelayEvent::Left(grant) => {
                tracing::info!(
                    node_name = %grant.node_name,
                    custom_name = grant.custom_name.as_deref().unwrap_or("-"),
                    "daemon said goodbye; its names are no longer routed"
                );
                shared.notify_status_changed();
            }
            RelayEvent::DnsSet {
                request_id, name, ..
            } if !shared.settings.dns.enabled => {
                tracing::warn!(record = %name, "ACME TXT record requested, but dns.enabled is false");
                self.complete_acme(request_id, Err(DNS_DISABLED.to_owned()));
            }
            RelayEvent::DnsClear { request_id, .. } if !shared.settings.dns.enabled => {
                // Nothing was written, so nothing is left to delete.
                if let Some(request_id) = request_id {
                    self.complete_acme(request_id, Ok(()));
                }
            }
            event @ (RelayEvent::DnsSet { .. } | RelayEvent::DnsClear { .. }) => {
                self.start_dns(event);
            }
            RelayEvent::Closed { reason } => {
                let reason = match (&reason, self.lost.take()) {
                    (CloseReason::ConnectionLost, Some(how)) => how,
                    _ => reason.to_string(),
                };
                self.outcome = Some(DaemonOutcome::Closed(reason));
                return Flow::Stop;
            }
        }
        Flow::Continue
    }
}

async fn serve_metrics<R: Runtime>(rt: R, shared: Arc<Shared>, listener: R::TcpListener) {
    loop {
        let (mut stream, _) = match race(shared.shutdown.wait(), R::accept(&listener)).await {
            Either::Left(()) => return,
            Either::Right(Ok(accepted)) => accepted,
            Either::Right(Err(_)) => {
                rt.sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let task_rt = rt.clone();
        rt.spawn(async move {
            // Read the request head (bounded), whatever it asks for.
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            let read = gate_rt::timeout(&task_rt, Duration::from_secs(5), async {
                while head.len() < 8 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    }
                }
                true
            })
            .await;
            if read != Ok(true) {
                return;
            }
            let body = shared.metrics.render();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
