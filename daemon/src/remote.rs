//! Public HTTPS through relays (DESIGN.md §4), the daemon's side: the node identity, the
//! QUIC endpoint on `p2p_port`, the relay client (`gate_rt::tunnel::client`) and leaving the relays
//! on a stop, TLS termination of forwarded connections with the certificate store (handshake
//! bounded; the local listener's silence limits and a connection cap of their own), and ACME
//! DNS-01 through the relay.
//!
//! Every connection that arrives through a relay is served by the same [`App`] as the local
//! listener, marked `remote`: it is never trusted as loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gate_core::config::DaemonConfig;
use gate_rt::hyper_glue::ServerSettings;
use gate_rt::tunnel::client::{
    RelayClient, RelayClientConfig, RelayConnectionState, StreamHandler,
};
use gate_rt::tunnel::identity::{Identity, RelayAddress};
use gate_rt::tunnel::support::Shutdown;
use gate_rt::Runtime;
use rustls::pki_types::CertificateDer;

use crate::acme::{AcmeManager, AcmeSettings, AcmeStatus, ChallengeSetter};
use crate::certs::{certificate_names, CertInfo, CertStore};
use crate::server::{serve_one, ConnectionCap};
use crate::web::{Handler, Peer};

/// How connections through relays are served: the same silence limits as the local
/// listener (the TLS handshake gets `header_read_timeout` of its own), their own cap on open
/// connections, and the daemon's stop signal.
#[derive(Clone, Debug)]
pub struct RelayedListener {
    /// HTTP silence limits; `header_read_timeout` also bounds the TLS handshake.
    pub settings: ServerSettings,
    /// Open relayed connections, at most `server.max_connections`.
    pub cap: Arc<ConnectionCap>,
    /// Fires when the daemon stops: no new relayed connection, the others close gracefully.
    pub stop: Shutdown,
}

/// What `gate status`, the web UI and `/metrics` show about relays and certificates.
#[derive(Clone, Debug, Default)]
pub struct RemoteStatus {
    /// The daemon's node id.
    pub node_id: String,
    /// Per relay: address, state, names, public URLs, last error.
    pub relays: Vec<crate::admin::types::RelayLink>,
    /// The certificate served on relayed connections.
    pub certificate: Option<CertInfo>,
    /// ACME state, when Let's Encrypt is enabled.
    pub acme: Option<AcmeStatus>,
}

/// The running relay side of the daemon.
pub struct Remote<R: Runtime> {
    node_id: String,
    client: Arc<RelayClient>,
    certs: Arc<CertStore>,
    acme: Mutex<Option<AcmeManager<R, RelayChallenges>>>,
}

/// ACME DNS-01 records published through the relay's control stream.
pub struct RelayChallenges {
    client: Arc<RelayClient>,
}

impl ChallengeSetter for RelayChallenges {
    async fn set(&self, record_name: &str, value: &str) -> Result<(), String> {
        self.client
            .set_acme_txt(record_name, value)
            .await
            .map_err(|e| e.to_string())
    }

    async fn clear(&self, record_name: &str) -> Result<(), String> {
        self.client
            .clear_acme_txt(record_name)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The node id of the identity in `state_dir` (created on first use, mode 0600).
pub fn node_id(state_dir: &Path) -> anyhow::Result<String> {
    let identity = Identity::load_or_create(state_dir)
        .map_err(|e| anyhow::anyhow!("cannot load the node identity: {e}"))?;
    Ok(identity.node_id().to_string())
}

fn load_extra_roots(config: &DaemonConfig) -> Vec<CertificateDer<'static>> {
    // The ACME CA file also signs test relays' certificates in loopback setups; a relay with
    // a public certificate needs none.
    let Some(path) = config.letsencrypt.ca_file.as_deref() else {
        return Vec::new();
    };
    match crate::acme::load_roots(Path::new(path)) {
        Ok(roots) => roots,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read letsencrypt.ca_file");
            Vec::new()
        }
    }
}

impl<R: Runtime> Remote<R> {
    /// Starts the relay client when `relay.enable`; `None` otherwise.
    pub fn start(
        rt: &R,
        config: &DaemonConfig,
        state_dir: &Path,
        app: Arc<impl Handler>,
        listener: RelayedListener,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        if !config.relay.enable {
            return Ok(None);
        }
        let identity = Identity::load_or_create(state_dir)
            .map_err(|e| anyhow::anyhow!("cannot load the node identity: {e}"))?;
        let node_id = identity.node_id().to_string();
        let bind = SocketAddr::from(([0, 0, 0, 0], config.p2p_port));
        let endpoint = identity.quic_endpoint(rt, bind, None).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the QUIC endpoint on UDP {bind}: {e} (change `p2p_port` or GATE_P2P_PORT)"
            )
        })?;
        let mut relays = Vec::new();
        for address in &config.relay.addresses {
            let relay = RelayAddress::try_from(address)
                .map_err(|e| anyhow::anyhow!("relay.addresses: {e}"))?;
            relays.push(relay);
        }
        let certs = CertStore::open(state_dir, std::slice::from_ref(&node_id))
            .map_err(|e| anyhow::anyhow!("cannot open the certificate store: {e}"))?;
        let tls = certs.server_config(&[b"h2", b"http/1.1"]);
        let handler_rt = rt.clone();
        // The relay client, once started: the handler needs its granted names.
        let started: Arc<OnceLock<Arc<RelayClient>>> = Arc::new(OnceLock::new());
        let handler_client = started.clone();
        let handler_certs = certs.clone();
        let handler: StreamHandler = Arc::new(move |header, stream| {
            let Some(permit) = listener.cap.admit(header.client_addr) else {
                // Full or stopping: dropping the stream resets it at once.
                return;
            };
            if let Some(client) = handler_client.get() {
                cover_before_handshake(client, &handler_certs, &header.server_name);
            }
            let rt = handler_rt.clone();
            let app = app.clone();
            let tls = tls.clone();
            let listener = listener.clone();
            handler_rt.spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                let handshake = listener.settings.header_read_timeout;
                let tls_stream = match gate_rt::timeout(&rt, handshake, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(client = %header.client_addr, error = %e, "TLS handshake through the relay failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(client = %header.client_addr, "TLS handshake through the relay timed out (server.header_read_timeout_secs)");
                        return;
                    }
                };
                let peer = Peer { addr: header.client_addr, remote: true };
                serve_one(rt, tls_stream, peer, app, listener.settings, listener.stop).await;
                drop(permit);
            });
        });
        let client_config = RelayClientConfig {
            relays,
            custom_label: config.relay.custom_domain.clone(),
            token: config.relay.token.clone(),
            extra_ca: load_extra_roots(config),
            transport: config
                .relay
                .transport
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))?,
            tcp_port: config.relay.tcp_port,
            ..RelayClientConfig::default()
        };
        let client = RelayClient::start(rt, endpoint, &identity, client_config, handler)
            .map_err(|e| anyhow::anyhow!("cannot start the relay client: {e}"))?;
        let client = Arc::new(client);
        let _ = started.set(client.clone());
        tracing::info!(node_id = %node_id, relays = config.relay.addresses.len(), "relay client started");
        let remote = Arc::new(Self {
            node_id,
            client,
            certs,
            acme: Mutex::new(None),
        });
        remote.clone().keep_self_signed_names(rt.clone());
        if config.letsencrypt.enabled {
            remote.clone().start_acme_when_registered(
                rt.clone(),
                config.clone(),
                state_dir.to_path_buf(),
            );
        }
        Ok(Some(remote))
    }

    /// Until a real certificate is in place, the self-signed one names whatever the relays
    /// granted (`<node-id>.<suffix>`, the custom name), checked every second.
    fn keep_self_signed_names(self: Arc<Self>, rt: R) {
        let task_rt = rt.clone();
        let this = Arc::downgrade(&self);
        drop(self);
        rt.spawn(async move {
            // Ends when the remote side is dropped.
            while let Some(remote) = this.upgrade() {
                let names = certificate_names(&remote.registered_names(), &[]);
                if let Err(e) = remote.certs.cover_with_self_signed(&names) {
                    tracing::warn!(error = %e, "cannot make a self-signed certificate for the relay names");
                }
                drop(remote);
                let pause = if names.is_empty() { 250 } else { 1000 };
                task_rt.sleep(Duration::from_millis(pause)).await;
            }
        });
    }

    /// The names granted by the relays this daemon is registered with now.
    fn registered_names(&self) -> Vec<String> {
        self.client
            .status()
            .into_iter()
            .filter(|s| s.state == RelayConnectionState::Registered)
            .flat_map(|s| s.names)
            .collect()
    }

    /// Waits for a first registration (names are granted by the relay), then keeps a
    /// certificate for them with ACME DNS-01 through the relay.
    fn start_acme_when_registered(
        self: Arc<Self>,
        rt: R,
        config: DaemonConfig,
        state_dir: std::path::PathBuf,
    ) {
        let task_rt = rt.clone();
        rt.spawn(async move {
            let names = loop {
                let names = self.registered_names();
                if !names.is_empty() {
                    break names;
                }
                task_rt.sleep(Duration::from_millis(500)).await;
            };
            let names = certificate_names(&names, &config.letsencrypt.domains);
            let settings = match AcmeSettings::from_config(&config.letsencrypt, names) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "Let's Encrypt is enabled but its settings are unusable");
                    return;
                }
            };
            let setter = Arc::new(RelayChallenges { client: self.client.clone() });
            let manager = AcmeManager::new(task_rt.clone(), &state_dir, settings, setter, self.certs.clone());
            *self.acme.lock().unwrap_or_else(|e| e.into_inner()) = Some(manager.clone());
            manager.run().await;
        });
    }

    /// The first step of a stop: every relay is told goodbye (tunnel protocol version 3) and
    /// routes no new connection here from then on, while the tunnels stay open for the relayed
    /// requests still in flight. Bounded: each goodbye is acknowledged or given up after 2 s.
    pub async fn leave(&self) {
        self.client.leave().await;
    }

    /// The last step of a stop: closes every tunnel and waits until the relay client's tasks
    /// have ended (idempotent; after [`Remote::leave`] there may be nothing left to close).
    pub async fn shutdown(&self) {
        self.client.shutdown().await;
    }

    /// The node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A snapshot for status pages and metrics.
    pub fn status(&self) -> RemoteStatus {
        let relays = self
            .client
            .status()
            .into_iter()
            .map(|s| crate::admin::types::RelayLink {
                address: s.address,
                state: format!("{:?}", s.state).to_lowercase(),
                names: s.names,
                public_urls: s.public_urls,
                custom_name_refusal: s.custom_name_refusal,
                last_error: s.last_error,
                registrations: s.registrations,
                transport: s.transport.map(|t| t.as_str().to_owned()),
            })
            .collect();
        let acme = self
            .acme
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| m.status());
        RemoteStatus {
            node_id: self.node_id.clone(),
            relays,
            certificate: Some(self.certs.info()),
            acme,
        }
    }

    /// Whether at least one relay has this daemon registered.
    pub fn registered(&self) -> bool {
        self.client
            .status()
            .iter()
            .any(|s| s.state == RelayConnectionState::Registered)
    }
}

/// A relay routes a name from the moment it grants it, and the background task re-makes the
/// self-signed certificate only every second: a connection for a granted name the certificate
/// does not cover yet has it made now, before its handshake, so the first client already sees
/// its name. Only names a relay granted (never one the stream header alone asks for); an ACME
/// or stored certificate is left alone.
fn cover_before_handshake(client: &RelayClient, certs: &CertStore, server_name: &str) {
    let server_name = server_name.trim_end_matches('.').to_ascii_lowercase();
    let info = certs.info();
    if !info.self_signed || info.names.contains(&server_name) {
        return;
    }
    let granted: Vec<String> = client
        .status()
        .into_iter()
        .filter(|s| s.state == RelayConnectionState::Registered)
        .flat_map(|s| s.names)
        .collect();
    let names = certificate_names(&granted, &[]);
    if !names.contains(&server_name) {
        return;
    }
    if let Err(e) = certs.cover_with_self_signed(&names) {
        tracing::warn!(error = %e, "cannot make a self-signed certificate for the relay names");
    }
}

/// JSON of a certificate for status pages.
pub fn certificate_json(info: &CertInfo) -> serde_json::Value {
    serde_json::json!({
        "names": info.names,
        "self_signed": info.self_signed,
        "serial": info.serial,
        "expires_at_unix": info.expiry_unix_seconds(),
    })
}

impl<R: Runtime> crate::metrics::RelayGauges for Remote<R> {
    fn relays(&self) -> Vec<(String, bool)> {
        self.status()
            .relays
            .into_iter()
            .map(|relay| {
                let up = relay.registered();
                (relay.address, up)
            })
            .collect()
    }

    fn certificate_expiry(&self) -> Option<i64> {
        let cert = self.status().certificate?;
        Some(i64::try_from(cert.expiry_unix_seconds()).unwrap_or(i64::MAX))
    }
}
