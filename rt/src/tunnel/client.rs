//! The daemon's side of the tunnel: keeps a registration with every configured relay and hands
//! each forwarded connection to the daemon.
//!
//! Owns: one task per relay address running a [`DaemonSession`] with the shared control-stream
//! driver ([`super::driver`]) over a QUIC connection from the daemon's endpoint (connect,
//! control stream, register with the optional custom label, heartbeats, reconnect with backoff
//! and jitter, the goodbye of [`RelayClient::leave`]), the per-relay status snapshot, and the
//! acceptance of relay-opened streams: their [`StreamHeader`] is decoded (bounded in bytes and
//! time) and `(header, stream)` goes to the daemon's [`StreamHandler`].
//!
//! Must not: terminate TLS or speak HTTP (the daemon does that on the stream it is given), make
//! protocol decisions (those are `gate_core::tunnel`'s), or use runtime-specific APIs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Runtime;
use gate_core::tunnel::{
    decode_stream_header, ConnectionAttempt, DaemonConfig, DaemonEvent, DaemonSession, DaemonState,
    EncodeError, Frame, FrameError, StreamHeader, DEFAULT_MAX_FRAME_LEN,
};
use rustls::pki_types::CertificateDer;

use super::driver::{self, ControlEnd, ControlStream, Flow, Output};
use super::identity::{Identity, IdentityError, RelayAddress};
use super::support::{race, Either, Shutdown, TunnelStream};

/// How long a relay-opened stream may take to deliver its header.
const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the daemon does with a forwarded connection: terminate TLS on `stream` (the client's
/// ClientHello is its first bytes) and serve HTTP, marked remote. Called on the runtime's
/// executor; return quickly (spawn the work).
pub type StreamHandler = Arc<dyn Fn(StreamHeader, TunnelStream) + Send + Sync>;

/// What [`RelayClient`] needs to know.
#[derive(Debug, Clone)]
pub struct RelayClientConfig {
    /// Every relay to register with (`relay.addresses`).
    pub relays: Vec<RelayAddress>,
    /// The custom DNS label to ask for (`relay.custom_domain`).
    pub custom_label: Option<String>,
    /// The registration token presented to relays in token mode (`relay.token`).
    pub token: Option<gate_core::config::Secret>,
    /// The daemon's version, sent in the registration.
    pub daemon_version: String,
    /// Extra trusted CAs for relays that are not pinned.
    pub extra_ca: Vec<CertificateDer<'static>>,
    /// The public HTTPS port assumed for relays that do not announce theirs (protocol version
    /// 1 relays; 443 by default). A relay that announces its port in the registration answer
    /// is believed instead.
    pub public_https_port: u16,
    /// Session tunables (backoff, timeouts); `custom_label`, `token` and `daemon_version` above
    /// win.
    pub session: DaemonConfig,
    /// Which transports to use (`relay.transport`).
    pub transport: TransportPolicy,
    /// The relays' HTTPS (TCP) port, where the tunnel over TCP is dialled (`relay.tcp_port`).
    pub tcp_port: u16,
}

/// Which transport the daemon reaches a relay with (`relay.transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportPolicy {
    /// QUIC first; when its handshake fails or times out ([`QUIC_FALLBACK_AFTER`]), TLS over
    /// TCP on the relay's HTTPS port. While on TCP, QUIC is tried again in the background
    /// and the tunnel moves back once it works.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

impl std::str::FromStr for TransportPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "quic" => Ok(Self::Quic),
            "tcp" => Ok(Self::Tcp),
            other => Err(format!(
                "relay.transport: unknown transport {other:?}; use auto, quic or tcp"
            )),
        }
    }
}

/// The transport a tunnel runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS over TCP with HTTP/2 streams ([`super::tcp`]).
    Tcp,
}

impl Transport {
    /// `quic` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// In [`TransportPolicy::Auto`], how long the QUIC handshake may take before the daemon tries
/// TCP instead (within the session's connect timeout).
pub const QUIC_FALLBACK_AFTER: Duration = Duration::from_secs(3);

/// In [`TransportPolicy::Auto`] while on TCP: the first and the longest wait between
/// background QUIC probes.
const QUIC_PROBE_FIRST: Duration = Duration::from_secs(2);
const QUIC_PROBE_CAP: Duration = Duration::from_secs(60);

impl Default for RelayClientConfig {
    fn default() -> Self {
        Self {
            relays: Vec::new(),
            custom_label: None,
            token: None,
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            extra_ca: Vec::new(),
            public_https_port: 443,
            session: DaemonConfig::default(),
            transport: TransportPolicy::Auto,
            tcp_port: 443,
        }
    }
}

/// Where the connection to one relay stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayConnectionState {
    /// Waiting before the next attempt.
    Disconnected,
    /// Opening the QUIC connection.
    Connecting,
    /// Connected, waiting for the relay to answer the registration.
    Registering,
    /// Registered: the names below are served.
    Registered,
    /// The relay is going away; a new connection follows.
    Draining,
    /// The daemon said goodbye ([`RelayClient::leave`]): the relay routes no new connections
    /// here; open ones finish.
    Leaving,
}

impl std::fmt::Display for RelayConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Disconnected => "disconnected",
            Self::Connecting => "connecting",
            Self::Registering => "registering",
            Self::Registered => "registered",
            Self::Draining => "draining",
            Self::Leaving => "leaving",
        })
    }
}

/// The status of one relay, for `gate status` and the web UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    /// The address as configured.
    pub address: String,
    /// Connection state.
    pub state: RelayConnectionState,
    /// Names granted by the relay (node name first), while registered.
    pub names: Vec<String>,
    /// `https://<name>/` for each granted name.
    pub public_urls: Vec<String>,
    /// Why the custom name was refused, if it was.
    pub custom_name_refusal: Option<String>,
    /// The last error (connection failure, refusal, lost connection).
    pub last_error: Option<String>,
    /// How many times a registration succeeded since start.
    pub registrations: u64,
    /// The transport of the current connection, while there is one.
    pub transport: Option<Transport>,
}

/// The public URL of `name` served on HTTPS `port`: the port is left out when it is 443.
pub fn public_url(name: &str, port: u16) -> String {
    if port == 443 {
        format!("https://{name}/")
    } else {
        format!("https://{name}:{port}/")
    }
}

/// Keeps the daemon registered with its relays. Dropping it does not stop it: call
/// [`RelayClient::shutdown`] (or [`RelayClient::leave`] first, to let open connections finish
/// after the relays stopped routing new ones here).
pub struct RelayClient {
    statuses: Arc<Mutex<Vec<RelayStatus>>>,
    shutdown: Shutdown,
    /// Fired by [`RelayClient::leave`].
    leaving: Shutdown,
    /// Closed once every relay task's goodbye is over (each holds a sender until then).
    left: async_channel::Receiver<()>,
    tasks: async_channel::Receiver<()>,
    commands: Vec<async_channel::Sender<AcmeCommand>>,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("status", &self.status())
            .finish()
    }
}

/// Everything one relay's task needs.
struct RelayTask<R: Runtime> {
    rt: R,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    tcp_config: Arc<rustls::ClientConfig>,
    transport: TransportPolicy,
    tcp_port: u16,
    address: RelayAddress,
    index: usize,
    statuses: Arc<Mutex<Vec<RelayStatus>>>,
    handler: StreamHandler,
    shutdown: Shutdown,
    leaving: Shutdown,
    public_https_port: u16,
    commands: async_channel::Receiver<AcmeCommand>,
}

/// The answer to an ACME record request.
type AcmeReply = async_channel::Sender<Result<(), AcmeError>>;

/// A request from the daemon to one relay task.
enum AcmeCommand {
    Set {
        record: String,
        value: String,
        reply: AcmeReply,
    },
    Clear {
        record: String,
        reply: AcmeReply,
    },
}

/// Why an ACME DNS-01 record request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcmeError {
    /// No relay is registered right now.
    #[error("no relay is registered; ACME records are written through a registered relay")]
    NoRelay,
    /// The relay answered with an error (not our name, no DNS provider, provider failure).
    #[error("the relay refused the ACME record: {0}")]
    Relay(String),
    /// The relay connection ended before the answer.
    #[error("the relay connection ended before the answer")]
    Lost,
}

/// The live connection of a relay task (its control stream is the driver's).
struct Live {
    attempt: ConnectionAttempt,
    link: Link,
}

/// A connection to a relay, over either transport.
enum Link {
    Quic(quinn::Connection),
    /// Closes the TCP tunnel when triggered.
    Tcp(Shutdown),
}

impl Link {
    fn transport(&self) -> Transport {
        match self {
            Self::Quic(_) => Transport::Quic,
            Self::Tcp(_) => Transport::Tcp,
        }
    }

    fn close(&self, why: &'static [u8]) {
        match self {
            Self::Quic(connection) => connection.close(0u32.into(), why),
            Self::Tcp(close) => close.trigger(),
        }
    }
}

fn random_seed() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

impl RelayClient {
    /// Starts one task per relay in `config.relays`, connecting from `endpoint` (the daemon's
    /// QUIC endpoint on its `p2p_port`) with `identity` as client certificate. Every forwarded
    /// stream goes to `handler`.
    pub fn start<R: Runtime>(
        rt: &R,
        endpoint: quinn::Endpoint,
        identity: &Identity,
        config: RelayClientConfig,
        handler: StreamHandler,
    ) -> Result<Self, IdentityError> {
        let statuses = Arc::new(Mutex::new(
            config
                .relays
                .iter()
                .map(|address| RelayStatus {
                    address: address.to_string(),
                    state: RelayConnectionState::Disconnected,
                    names: Vec::new(),
                    public_urls: Vec::new(),
                    custom_name_refusal: None,
                    last_error: None,
                    registrations: 0,
                    transport: None,
                })
                .collect(),
        ));
        let shutdown = Shutdown::new();
        let leaving = Shutdown::new();
        let (running, tasks) = async_channel::bounded::<()>(1);
        let (left_tx, left) = async_channel::bounded::<()>(1);
        let session_config = DaemonConfig {
            custom_label: config.custom_label.clone(),
            token: config.token.clone(),
            daemon_version: config.daemon_version.clone(),
            ..config.session.clone()
        };
        let mut commands = Vec::new();
        for (index, address) in config.relays.iter().enumerate() {
            let trust = address.trust(&config.extra_ca);
            let client_config = identity.relay_client_config(&trust)?;
            let tcp_config = identity.relay_tcp_client_config(&trust)?;
            let (command_tx, command_rx) = async_channel::bounded(16);
            commands.push(command_tx);
            let task = RelayTask {
                rt: rt.clone(),
                endpoint: endpoint.clone(),
                client_config,
                tcp_config,
                transport: config.transport,
                tcp_port: config.tcp_port,
                address: address.clone(),
                index,
                statuses: statuses.clone(),
                handler: handler.clone(),
                shutdown: shutdown.clone(),
                leaving: leaving.clone(),
                public_https_port: config.public_https_port,
                commands: command_rx,
            };
            let session = DaemonSession::new(session_config.clone(), random_seed(), Instant::now());
            let running = running.clone();
            let left_tx = left_tx.clone();
            rt.spawn(async move {
                task.run(session, left_tx).await;
                drop(running);
            });
        }
        Ok(Self {
            statuses,
            shutdown,
            leaving,
            left,
            tasks,
            commands,
        })
    }

    /// Asks a registered relay to publish the ACME DNS-01 record `record` (e.g.
    /// `_acme-challenge.<name>`) with TXT `value`, and waits for its answer. The relay refuses
    /// names that are not this daemon's own.
    pub async fn set_acme_txt(&self, record: &str, value: &str) -> Result<(), AcmeError> {
        let (reply, answer) = async_channel::bounded(1);
        self.send_to_registered(AcmeCommand::Set {
            record: record.to_owned(),
            value: value.to_owned(),
            reply,
        })
        .await?;
        answer.recv().await.unwrap_or(Err(AcmeError::Lost))
    }

    /// Asks a registered relay to remove the ACME record `record`.
    pub async fn clear_acme_txt(&self, record: &str) -> Result<(), AcmeError> {
        let (reply, answer) = async_channel::bounded(1);
        self.send_to_registered(AcmeCommand::Clear {
            record: record.to_owned(),
            reply,
        })
        .await?;
        answer.recv().await.unwrap_or(Err(AcmeError::Lost))
    }

    async fn send_to_registered(&self, command: AcmeCommand) -> Result<(), AcmeError> {
        let index = self
            .status()
            .iter()
            .position(|s| s.state == RelayConnectionState::Registered)
            .ok_or(AcmeError::NoRelay)?;
        let sender = self.commands.get(index).ok_or(AcmeError::NoRelay)?;
        sender.send(command).await.map_err(|_| AcmeError::Lost)
    }

    /// A snapshot of every relay's status, in configuration order.
    pub fn status(&self) -> Vec<RelayStatus> {
        self.statuses
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Says goodbye to every relay (protocol version 3: [`gate_core::tunnel::Frame::Leaving`]),
    /// so that each stops routing new connections here at once, and waits until every goodbye
    /// is over: acknowledged, or given up after [`DaemonConfig::leave_timeout`] (2 s by
    /// default), or at once for a relay that is not registered or speaks an older version.
    /// Connections already forwarded keep running, and so do the relay connections and their
    /// heartbeats, until [`RelayClient::shutdown`]. No relay is reconnected to afterwards.
    /// Calling it again returns at once.
    pub async fn leave(&self) {
        self.leaving.trigger();
        // Nothing is sent: recv() returns once every task has dropped its sender.
        let _ = self.left.recv().await;
    }

    /// Says goodbye to every relay ([`RelayClient::leave`], bounded by the leave timeout), then
    /// closes every relay connection and waits until the tasks have ended.
    pub async fn shutdown(&self) {
        self.leave().await;
        self.shutdown.trigger();
        let _ = self.tasks.recv().await;
    }
}

impl<R: Runtime> RelayTask<R> {
    fn update(&self, f: impl FnOnce(&mut RelayStatus)) {
        let mut statuses = self
            .statuses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(status) = statuses.get_mut(self.index) {
            f(status);
        }
    }

    /// `https://<name>/`, with `:<port>` when the relay's public HTTPS port (as it announced
    /// it, else the configured fallback) is not 443.
    fn public_url(&self, name: &str, announced_port: Option<u16>) -> String {
        public_url(name, announced_port.unwrap_or(self.public_https_port))
    }

    async fn run(self, session: DaemonSession, left: async_channel::Sender<()>) {
        let mut end = DaemonEnd {
            task: &self,
            session,
            live: None,
            acme_replies: HashMap::new(),
            leave_requested: false,
            left: Some(left),
            probe_stop: None,
            quic_works: async_channel::bounded(1),
        };
        let mut control = None;
        driver::drive(&self.rt, &mut end, &mut control).await;
    }

    /// Resolves the relay to the address to dial from an endpoint of this family.
    async fn resolve(&self, port: u16) -> Result<std::net::SocketAddr, String> {
        let addrs = self
            .rt
            .resolve(&self.address.host, port)
            .await
            .map_err(|e| format!("could not resolve {}: {e}", self.address.host))?;
        let local_v6 = self
            .endpoint
            .local_addr()
            .map(|a| a.is_ipv6())
            .unwrap_or(false);
        addrs
            .iter()
            .find(|a| a.is_ipv6() == local_v6)
            .or(addrs.first())
            .copied()
            .ok_or_else(|| format!("{} has no address", self.address.host))
    }

    /// Resolves the relay, connects over QUIC, and opens the control stream.
    async fn connect_quic(&self) -> Result<(Link, ControlStream), String> {
        let addr = self.resolve(self.address.port).await?;
        let connection = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, &self.address.host)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        self.rt.spawn(accept_streams(
            self.rt.clone(),
            connection.clone(),
            self.handler.clone(),
        ));
        Ok((Link::Quic(connection), ControlStream::new(send, recv)))
    }

    /// Resolves the relay, dials its HTTPS port over TCP ([`super::tcp`]), and waits for the
    /// control stream.
    async fn connect_tcp(&self) -> Result<(Link, ControlStream), String> {
        let addr = self.resolve(self.tcp_port).await?;
        let tunnel =
            super::tcp::dial(&self.rt, addr, &self.address.host, self.tcp_config.clone()).await?;
        self.rt.spawn(accept_tcp_streams(
            self.rt.clone(),
            tunnel.streams,
            self.handler.clone(),
        ));
        Ok((Link::Tcp(tunnel.close), ControlStream::tcp(tunnel.control)))
    }

    /// Connects as the transport policy says, within `limit`: in `auto`, QUIC for at most
    /// [`QUIC_FALLBACK_AFTER`], then TCP.
    async fn connect(&self, limit: Duration) -> Result<(Link, ControlStream), String> {
        let timed = |what: &'static str, result: Result<Result<_, String>, crate::Elapsed>| {
            result.unwrap_or_else(|crate::Elapsed| Err(format!("{what} timed out")))
        };
        match self.transport {
            TransportPolicy::Quic => timed(
                "QUIC",
                crate::timeout(&self.rt, limit, self.connect_quic()).await,
            ),
            TransportPolicy::Tcp => timed(
                "TCP",
                crate::timeout(&self.rt, limit, self.connect_tcp()).await,
            ),
            TransportPolicy::Auto => {
                let started = Instant::now();
                let quic_limit = limit.min(QUIC_FALLBACK_AFTER);
                let quic = timed(
                    "the QUIC handshake",
                    crate::timeout(&self.rt, quic_limit, self.connect_quic()).await,
                );
                let quic_error = match quic {
                    Ok(connected) => return Ok(connected),
                    Err(e) => e,
                };
                tracing::info!(relay = %self.address, "QUIC failed ({quic_error}); trying TLS over TCP on port {}", self.tcp_port);
                let rest = limit
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_secs(1));
                timed(
                    "TCP",
                    crate::timeout(&self.rt, rest, self.connect_tcp()).await,
                )
                .map_err(|tcp_error| format!("QUIC: {quic_error}; TCP: {tcp_error}"))
            }
        }
    }
}

/// While the tunnel runs over TCP in [`TransportPolicy::Auto`]: tries a QUIC handshake with
/// the relay now and then (waits from [`QUIC_PROBE_FIRST`] doubling to [`QUIC_PROBE_CAP`]);
/// the probe connections are closed at once. Sends on `works` when one completes; ends then,
/// or when `stop` fires.
async fn probe_quic<R: Runtime>(
    rt: R,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    addr: std::net::SocketAddr,
    host: String,
    stop: Shutdown,
    works: async_channel::Sender<()>,
) {
    let probes = async {
        let mut wait = QUIC_PROBE_FIRST;
        loop {
            rt.sleep(wait).await;
            let attempt = async {
                let connection = endpoint
                    .connect_with(client_config.clone(), addr, &host)
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())?;
                connection.close(0u32.into(), b"probe");
                Ok::<(), String>(())
            };
            match crate::timeout(&rt, QUIC_FALLBACK_AFTER, attempt).await {
                Ok(Ok(())) => {
                    let _ = works.try_send(());
                    return;
                }
                Ok(Err(e)) => tracing::debug!(%addr, "QUIC probe failed: {e}"),
                Err(crate::Elapsed) => tracing::debug!(%addr, "QUIC probe timed out"),
            }
            wait = (wait * 2).min(QUIC_PROBE_CAP);
        }
    };
    let _ = race(stop.wait(), probes).await;
}

fn session_connect_timeout(session: &DaemonSession) -> Duration {
    match session.state() {
        DaemonState::Connecting { deadline, .. } => {
            deadline.saturating_duration_since(Instant::now())
        }
        _ => Duration::from_secs(10),
    }
}

/// Accepts the relay-opened streams of one connection until it ends.
async fn accept_streams<R: Runtime>(rt: R, connection: quinn::Connection, handler: StreamHandler) {
    while let Ok((send, recv)) = connection.accept_bi().await {
        let handler = handler.clone();
        let task_rt = rt.clone();
        rt.spawn(async move {
            match crate::timeout(&task_rt, STREAM_HEADER_TIMEOUT, read_header(recv)).await {
                Ok(Ok((header, recv, rest))) => {
                    handler(header, TunnelStream::new(send, recv, rest))
                }
                Ok(Err(e)) => tracing::debug!("dropping a forwarded stream: {e}"),
                Err(crate::Elapsed) => tracing::debug!("forwarded stream sent no header in time"),
            }
        });
    }
}

/// Accepts the relay-opened streams of one TCP tunnel until it ends.
async fn accept_tcp_streams<R: Runtime>(
    rt: R,
    streams: async_channel::Receiver<super::tcp::H2Stream>,
    handler: StreamHandler,
) {
    while let Ok(stream) = streams.recv().await {
        let handler = handler.clone();
        let task_rt = rt.clone();
        rt.spawn(async move {
            match crate::timeout(&task_rt, STREAM_HEADER_TIMEOUT, read_tcp_header(stream)).await {
                Ok(Ok((header, stream, rest))) => handler(header, TunnelStream::tcp(stream, rest)),
                Ok(Err(e)) => tracing::debug!("dropping a forwarded stream: {e}"),
                Err(crate::Elapsed) => tracing::debug!("forwarded stream sent no header in time"),
            }
        });
    }
}

/// [`read_header`] on a stream of a TCP tunnel.
async fn read_tcp_header(
    mut stream: super::tcp::H2Stream,
) -> Result<(StreamHeader, super::tcp::H2Stream, Vec<u8>), String> {
    use tokio::io::AsyncReadExt;
    let mut prefix = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    loop {
        match decode_stream_header(&prefix, DEFAULT_MAX_FRAME_LEN) {
            Ok(Some((header, consumed))) => {
                let rest = prefix.get(consumed..).unwrap_or_default().to_vec();
                return Ok((header, stream, rest));
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match stream.read(&mut chunk).await {
            Ok(0) => return Err("stream ended before its header".to_owned()),
            Ok(count) => prefix.extend_from_slice(chunk.get(..count).unwrap_or_default()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Reads the stream header; returns it, the stream, and the payload bytes read past it.
async fn read_header(
    mut recv: quinn::RecvStream,
) -> Result<(StreamHeader, quinn::RecvStream, Vec<u8>), String> {
    let mut prefix = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    loop {
        match decode_stream_header(&prefix, DEFAULT_MAX_FRAME_LEN) {
            Ok(Some((header, consumed))) => {
                let rest = prefix.get(consumed..).unwrap_or_default().to_vec();
                return Ok((header, recv, rest));
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match recv.read(&mut chunk).await {
            Ok(Some(count)) => prefix.extend_from_slice(chunk.get(..count).unwrap_or_default()),
            Ok(None) => return Err("stream ended before its header".to_owned()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// What wakes a relay task besides its timer and control stream.
enum DaemonInput {
    /// [`RelayClient::shutdown`]: close the connection now.
    Shutdown,
    /// [`RelayClient::leave`]: say goodbye to the relay.
    Leave,
    /// An ACME record request.
    Command(AcmeCommand),
    /// The background probe completed a QUIC handshake while the tunnel runs over TCP.
    QuicWorks,
}

/// One relay task's end of the control-stream driver: its [`DaemonSession`], the live
/// connection, and the answers owed to ACME callers.
struct DaemonEnd<'a, R: Runtime> {
    task: &'a RelayTask<R>,
    session: DaemonSession,
    live: Option<Live>,
    /// Stops the background QUIC probe of the current TCP tunnel.
    probe_stop: Option<Shutdown>,
    /// The probe's "QUIC works" (the end keeps a sender, so `recv` never fails).
    quic_works: (async_channel::Sender<()>, async_channel::Receiver<()>),
    acme_replies: HashMap<u64, AcmeReply>,
    leave_requested: bool,
    /// Dropped when this relay's goodbye is over; [`RelayClient::leave`] waits for every one.
    left: Option<async_channel::Sender<()>>,
}

impl<R: Runtime> DaemonEnd<'_, R> {
    fn attempt(&self) -> Option<ConnectionAttempt> {
        self.live.as_ref().map(|live| live.attempt)
    }

    fn close_live(&mut self, control: &mut Option<ControlStream>, why: &'static [u8]) {
        if let Some(mut stream) = control.take() {
            stream.finish();
        }
        if let Some(old) = self.live.take() {
            old.link.close(why);
        }
        self.stop_probe();
    }

    fn stop_probe(&mut self) {
        if let Some(stop) = self.probe_stop.take() {
            stop.trigger();
        }
        // A "QUIC works" from a probe of an earlier tunnel is stale.
        let _ = self.quic_works.1.try_recv();
    }

    /// Starts the background QUIC probe for a TCP tunnel the auto policy fell back to.
    fn start_probe(&mut self, addr: std::net::SocketAddr) {
        self.stop_probe();
        let stop = Shutdown::new();
        let task = self.task;
        task.rt.spawn(probe_quic(
            task.rt.clone(),
            task.endpoint.clone(),
            task.client_config.clone(),
            addr,
            task.address.host.clone(),
            stop.clone(),
            self.quic_works.0.clone(),
        ));
        self.probe_stop = Some(stop);
    }

    /// QUIC works again: the TCP tunnel's control stream is finished (the relay drops the
    /// session and closes the connection once the forwarded streams still on it have ended;
    /// they keep running), and the session reconnects, QUIC first.
    fn move_to_quic(&mut self, now: Instant, control: &mut Option<ControlStream>) {
        let on_tcp = matches!(
            self.live.as_ref().map(|live| &live.link),
            Some(Link::Tcp(_))
        );
        if !on_tcp {
            return;
        }
        tracing::info!(relay = %self.task.address, "QUIC works again; moving the tunnel back from TCP");
        if let Some(mut stream) = control.take() {
            stream.finish();
        }
        self.stop_probe();
        // Not closed: its open streams finish on their own.
        if let Some(live) = self.live.take() {
            self.session.handle_connection_lost(
                live.attempt,
                now,
                "moving back to QUIC".to_owned(),
            );
        }
    }

    fn publish_state(&self) {
        let state = match self.session.state() {
            DaemonState::Disconnected { .. } | DaemonState::Stopped => {
                RelayConnectionState::Disconnected
            }
            DaemonState::Connecting { .. } => RelayConnectionState::Connecting,
            DaemonState::Registering { .. } => RelayConnectionState::Registering,
            DaemonState::Registered { .. } => RelayConnectionState::Registered,
            DaemonState::Draining { .. } => RelayConnectionState::Draining,
            DaemonState::Leaving { .. } => RelayConnectionState::Leaving,
        };
        self.task.update(|status| status.state = state);
    }

    async fn connect(&mut self, attempt: ConnectionAttempt, control: &mut Option<ControlStream>) {
        self.close_live(control, b"reconnecting");
        let task = self.task;
        task.update(|status| status.state = RelayConnectionState::Connecting);
        let connect_timeout = session_connect_timeout(&self.session);
        // A shutdown or a goodbye abandons the attempt; the input is handled next.
        let interrupted = async {
            if self.leave_requested {
                task.shutdown.wait().await
            } else {
                futures_lite::future::or(task.shutdown.wait(), task.leaving.wait()).await
            }
        };
        let outcome = race(interrupted, task.connect(connect_timeout)).await;
        let now = Instant::now();
        match outcome {
            Either::Left(()) => {}
            Either::Right(Ok((link, stream))) => {
                let transport = link.transport();
                tracing::debug!(relay = %task.address, %transport, "connected");
                task.update(|status| status.transport = Some(transport));
                if transport == Transport::Tcp && task.transport == TransportPolicy::Auto {
                    match task.resolve(task.address.port).await {
                        Ok(addr) => self.start_probe(addr),
                        Err(e) => tracing::debug!("no QUIC probe: {e}"),
                    }
                }
                self.live = Some(Live { attempt, link });
                *control = Some(stream);
                self.session.handle_connected(attempt, now);
            }
            Either::Right(Err(error)) => {
                self.session.handle_connect_failed(attempt, now, error);
            }
        }
    }
}

impl<R: Runtime> ControlEnd for DaemonEnd<'_, R> {
    type Input = DaemonInput;
    type Event = DaemonEvent;

    fn poll_output(&mut self) -> Option<Output<DaemonEvent>> {
        match self.session.poll_event() {
            Some(DaemonEvent::Transmit(frame)) => Some(Output::Transmit(frame)),
            Some(event) => Some(Output::Event(event)),
            None => {
                self.publish_state();
                None
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.session.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now);
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame) {
        if let Some(attempt) = self.attempt() {
            self.session.handle_frame(attempt, now, frame);
        }
    }

    fn handle_undecodable(&mut self, now: Instant, error: FrameError) {
        if let Some(attempt) = self.attempt() {
            self.session.handle_undecodable(attempt, now, error);
        }
    }

    fn handle_encode_failed(&mut self, now: Instant, error: EncodeError) {
        if let Some(attempt) = self.attempt() {
            self.session.handle_encode_failed(attempt, now, error);
        }
    }

    fn handle_stream_lost(&mut self, now: Instant, reason: String) {
        if let Some(attempt) = self.attempt() {
            self.session.handle_connection_lost(attempt, now, reason);
        }
    }

    fn next_input(
        &self,
        _has_control: bool,
    ) -> impl std::future::Future<Output = DaemonInput> + Send + '_ {
        let task = self.task;
        let leave_requested = self.leave_requested;
        let shutdown = async {
            task.shutdown.wait().await;
            DaemonInput::Shutdown
        };
        let leave = async move {
            if leave_requested {
                std::future::pending::<()>().await;
            }
            task.leaving.wait().await;
            DaemonInput::Leave
        };
        let command = async {
            match task.commands.recv().await {
                Ok(command) => DaemonInput::Command(command),
                // The client handle is gone; only shutdown ends the task.
                Err(_) => std::future::pending().await,
            }
        };
        let quic_works = async {
            let _ = self.quic_works.1.recv().await;
            DaemonInput::QuicWorks
        };
        futures_lite::future::or(
            shutdown,
            futures_lite::future::or(leave, futures_lite::future::or(command, quic_works)),
        )
    }

    fn handle_input(
        &mut self,
        now: Instant,
        input: DaemonInput,
        control: &mut Option<ControlStream>,
    ) -> Flow {
        match input {
            DaemonInput::Shutdown => {
                self.close_live(control, b"daemon shutting down");
                self.left = None;
                self.task.update(|status| {
                    status.state = RelayConnectionState::Disconnected;
                    status.names.clear();
                    status.public_urls.clear();
                });
                Flow::Stop
            }
            DaemonInput::QuicWorks => {
                if !self.leave_requested {
                    self.move_to_quic(now, control);
                }
                Flow::Continue
            }
            DaemonInput::Leave => {
                self.leave_requested = true;
                self.session.leave(now);
                Flow::Continue
            }
            DaemonInput::Command(command) => {
                let (requested, reply) = match command {
                    AcmeCommand::Set {
                        record,
                        value,
                        reply,
                    } => (self.session.request_acme_set(record, value), reply),
                    AcmeCommand::Clear { record, reply } => {
                        (self.session.request_acme_clear(record), reply)
                    }
                };
                match requested {
                    Ok(request_id) => {
                        self.acme_replies.insert(request_id, reply);
                    }
                    Err(_) => {
                        let _ = reply.try_send(Err(AcmeError::NoRelay));
                    }
                }
                Flow::Continue
            }
        }
    }

    async fn handle_event(
        &mut self,
        event: DaemonEvent,
        control: &mut Option<ControlStream>,
    ) -> Flow {
        let task = self.task;
        match event {
            DaemonEvent::Connect(attempt) => self.connect(attempt, control).await,
            DaemonEvent::Transmit(frame) => {
                // The driver writes frames; poll_output never hands one here.
                tracing::debug!(frame_type = frame.frame_type(), "frame routed as an event");
            }
            DaemonEvent::Registered(names) => {
                let granted: Vec<String> = std::iter::once(names.node_name.clone())
                    .chain(names.custom_name.clone())
                    .collect();
                let urls: Vec<String> = granted
                    .iter()
                    .map(|n| task.public_url(n, names.https_port))
                    .collect();
                // The status first: what the log says is already visible to the daemon.
                task.update(|status| {
                    status.state = RelayConnectionState::Registered;
                    status.names = granted;
                    status.public_urls = urls.clone();
                    status.custom_name_refusal = names.custom_name_refusal.clone();
                    status.last_error = None;
                    status.registrations += 1;
                });
                tracing::info!(relay = %task.address, urls = ?urls, "registered with the relay");
                if let Some(refusal) = &names.custom_name_refusal {
                    tracing::warn!(relay = %task.address, "{refusal}");
                }
            }
            DaemonEvent::Refused { reason } => {
                tracing::error!(relay = %task.address, "the relay refused the registration: {reason}");
                task.update(|status| status.last_error = Some(format!("refused: {reason}")));
            }
            DaemonEvent::Draining => {
                tracing::info!(relay = %task.address, "the relay is draining");
                task.update(|status| status.state = RelayConnectionState::Draining);
            }
            DaemonEvent::AcmeChallengeResult {
                request_id,
                outcome,
            } => {
                tracing::debug!(relay = %task.address, request_id, ?outcome, "ACME record result");
                if let Some(reply) = self.acme_replies.remove(&request_id) {
                    let _ = reply.try_send(outcome.map_err(AcmeError::Relay));
                }
            }
            DaemonEvent::RelayError(error) => {
                tracing::warn!(relay = %task.address, code = error.code.0, "relay error: {}", error.message);
                task.update(|status| status.last_error = Some(error.message.clone()));
            }
            DaemonEvent::Disconnected { reason } => {
                self.close_live(control, b"disconnected");
                tracing::info!(relay = %task.address, "relay connection ended: {reason}");
                task.update(|status| {
                    status.state = RelayConnectionState::Disconnected;
                    status.names.clear();
                    status.public_urls.clear();
                    status.last_error = Some(reason.to_string());
                    status.transport = None;
                });
            }
            DaemonEvent::Left { acknowledged } => {
                if acknowledged {
                    tracing::info!(relay = %task.address, "said goodbye; the relay routes no new connections here");
                } else {
                    tracing::info!(relay = %task.address, "goodbye not acknowledged (older relay, no answer in time, or not registered)");
                }
                self.left = None;
            }
        }
        Flow::Continue
    }
}
