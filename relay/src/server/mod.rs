//! `gate-relay serve`: the HTTPS listener that routes TLS connections by SNI, the QUIC endpoints
//! daemons connect to, and the copy loop between them (DESIGN.md §4).
//!
//! Owns: starting and stopping the relay ([`start`], [`RunningRelay`]): binding the listeners,
//! loading the identity, the presented certificate and the name table, and spawning the tasks
//! of the modules below, which share one [`Shared`] state.
//!
//! Code map:
//! - `https`: the HTTPS path (accept within limits, ClientHello, TLS alerts, forwarding).
//! - `daemon`: the daemon path (accept, node certificate, one [`RelaySession`] per connection
//!   driven by `gate_rt::tunnel::driver`, ACME TXT requests in tasks of their own).
//! - `tcp`: the daemon path over TCP (ALPN `gate-relay-tcp/1` on the HTTPS port: TLS
//!   terminated, HTTP/2 streams, the same session driver) and forwarding over such tunnels.
//! - `registry`: sessions and the name table behind one mutex, and the routing decision.
//! - `limits`: connection-limit places as drop guards.
//! - `persist`: loading and writing the name claims.
//! - `claims`: name claims shared with the other relays of a deployment (`[store] url`).
//! - `snapshot`: the status snapshot for `gate-relay status`.
//! - `metrics`: counters (prometheus-client) and the metrics listener (hyper).
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gate_core::sni::{self, Status};
use gate_core::tunnel::{
    throttle_message, CloseReason, EncodeError, Frame, FrameError, NameTableConfig,
    NameTableSnapshot, NodeId, QuotaLedger, RegistrationThrottle, RelayConfig, RelayEvent,
    RelayNameTable, RelaySession, SharedClaim, Throttle,
};
use gate_rt::tunnel::driver::{self, ControlEnd, ControlStream, Flow, Output};
use gate_rt::tunnel::tcp::TcpOpener;
use gate_rt::Runtime;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::dns::{ChallengeRecords, ChallengeSettings, Cloudflare, CloudflareSettings};
use crate::identity::{peer_node_id, Identity, IdentityError};
use crate::settings::RelaySettings;
use crate::state::{self, StateError};
use crate::support::{race, unix_now, Either, Shutdown};

mod claims;
mod daemon;
mod https;
mod limits;
mod metrics;
mod persist;
mod registry;
mod snapshot;
mod tcp;

use self::claims::*;
use self::daemon::*;
use self::https::*;
use self::limits::*;
use self::metrics::*;
use self::persist::*;
use self::registry::*;
use self::snapshot::*;
use self::tcp::*;

pub use self::metrics::RelayStats;

/// File name of the persisted name table in the state directory.
pub const NAMES_FILE_NAME: &str = "names.json";

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
    /// `[store] url` is unusable (the message never holds its password).
    #[error(transparent)]
    Store(#[from] gate_rt::store::StoreError),
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
    /// Daemon connections per source address per minute.
    registrations: Mutex<RegistrationThrottle>,
    metrics: Metrics,
    shutdown: Shutdown,
    /// Signalled when a daemon comes or goes, so the status snapshot is rewritten soon.
    status_changed: async_channel::Sender<()>,
    /// The TLS configuration daemon tunnels over TCP are terminated with (`tcp`).
    tcp_tls: Arc<rustls::ServerConfig>,
    /// Where the HTTPS path hands daemon tunnels over TCP to `tcp`.
    tcp_daemons: async_channel::Sender<TunnelHandoff>,
    /// The claims shared with the deployment's other relays, with `[store] url`.
    claim_store: Option<Box<dyn ClaimStore>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the routing state half-updated in a way
    // that matters more than stopping the relay would; keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    /// With `[store] url`: whether the relay is connected to the shared claim store now.
    pub fn claim_store_connected(&self) -> Option<bool> {
        self.shared
            .claim_store
            .as_ref()
            .map(|store| store.is_connected())
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
    let claim_store: Option<Box<dyn ClaimStore>> = match &settings.store_url {
        Some(url) => {
            let url = gate_rt::store::PgUrl::parse(url.expose())?;
            Some(Box::new(PgClaims::new(
                rt.clone(),
                url,
                Duration::from_secs(settings.claim_lapse_days.saturating_mul(86_400)),
                settings.claim_refresh_interval,
            )))
        }
        None => None,
    };

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
    let tcp_tls = identity.relay_tcp_server_config(
        presented
            .as_ref()
            .map(|(chain, key)| (chain.clone(), key.clone_key())),
    )?;
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
        access: settings.access.clone(),
        max_claims: settings.limits.max_claims,
        shared_claims: claim_store.is_some(),
        claim_check_timeout: CLAIM_CHECK_LIMIT + Duration::from_secs(2),
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
    let registrations_per_minute = settings.limits.max_registrations_per_ip_per_minute;
    let (tcp_daemons, tcp_handoffs) = async_channel::bounded::<TunnelHandoff>(64);
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
            quotas: QuotaLedger::new(),
        }),
        persist_lock: Mutex::new(Vec::new()),
        https_per_ip: Mutex::new(HashMap::new()),
        https_total: AtomicUsize::new(0),
        daemon_connections: AtomicUsize::new(0),
        registrations: Mutex::new(RegistrationThrottle::new(registrations_per_minute)),
        metrics: Metrics::default(),
        shutdown: Shutdown::new(),
        status_changed,
        tcp_tls,
        tcp_daemons,
        claim_store,
    });
    if let Some(store) = &shared.claim_store {
        // Connect and migrate now, so that a wrong address or password shows at start; the
        // relay runs either way (claims are refused until the store answers).
        match store.connect().await {
            Ok(()) => tracing::info!(
                store = %store.describe(),
                "name claims are shared through PostgreSQL"
            ),
            // The client logged why; this says what it means for daemons.
            Err(_) => tracing::warn!(
                store = %store.describe(),
                "name claims are shared through PostgreSQL, which cannot be used yet: new \
                 custom names are refused until it can (the relay keeps trying)"
            ),
        }
    }

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
    rt.spawn(accept_tcp_daemons(
        rt.clone(),
        shared.clone(),
        dns.clone(),
        tcp_handoffs,
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
    if shared.claim_store.is_some() {
        rt.spawn(refresh_claims_periodically(
            rt.clone(),
            shared.clone(),
            task_guard.clone(),
        ));
    }
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
    let access = &shared.settings.access;
    match access.mode {
        gate_core::tunnel::AccessMode::Open => tracing::warn!(
            "access.mode = \"open\": any daemon may register and get a name under {} \
             (and, with dns.enabled, ACME records through this relay's DNS token); \
             set access.mode = \"allowlist\" and access.allowed_nodes to close it",
            shared.settings.domain_suffix
        ),
        gate_core::tunnel::AccessMode::Allowlist => tracing::info!(
            allowed_nodes = access.allowed_nodes.len(),
            "access.mode = \"allowlist\": only the listed daemons may register"
        ),
        gate_core::tunnel::AccessMode::Token => tracing::info!(
            tokens = %access.token_names().collect::<Vec<_>>().join(","),
            allowed_nodes = access.allowed_nodes.len(),
            "access.mode = \"token\": only daemons with a registration token may register"
        ),
    }
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
