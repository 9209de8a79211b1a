//! The relay's end of one daemon connection, as a sans-IO state machine.
//!
//! Owns: the control-stream conversation with one daemon (registration against the
//! [`RelayNameTable`], heartbeat acks and liveness, ACME record requests limited to the daemon's
//! own names, drain, the daemon's goodbye) and the decision whether a forwarded stream may be opened to it. Must not:
//! touch sockets, QUIC or DNS providers, read clocks, or panic on anything the daemon sends.
//!
//! The daemon's node id comes from its QUIC certificate, verified by the runtime before the
//! session is created. Time comes in twice: `now: Instant` for timers and `now_unix_secs` for
//! the name table's persistent last-seen times.
//!
//! # Driving loop
//!
//! ```text
//! let mut session = RelaySession::new(node_id, config, now);
//! on control frame:   session.handle_frame(now, unix, frame, &mut names)
//! on timer:           session.handle_timeout(now, unix, &mut names)
//! on connection loss: session.handle_connection_lost(unix, &mut names)
//! on bytes that are not a frame: session.handle_undecodable(unix, &mut names, error)
//! on a frame that would not encode: session.handle_encode_failed(unix, &mut names, error)
//! on HTTPS client:    names.lookup(sni) -> node; that node's session.stream_header(..)
//! then drain session.poll_event(): Transmit -> control stream; DnsSet / DnsClear -> DNS
//! provider, answering DnsSet / DnsClear with a request id through complete_acme(..);
//! Left -> the daemon said goodbye (its names are already out of routing);
//! CheckClaim (only with `shared_claims`) -> ask the shared claim store, answer with
//! complete_claim(..);
//! Closed -> close the connection.
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::access::{AccessPolicy, Account};
use super::frame::{
    AcmeChallengeClear, AcmeChallengeResult, AcmeChallengeSet, EncodeError, ErrorCode, ErrorFrame,
    Frame, FrameError, Register, Registered, StreamHeader, GOODBYE_SINCE_VERSION,
    HTTPS_PORT_SINCE_VERSION, PROTOCOL_VERSION,
};
use super::names::{
    ClaimRules, NameGrant, NodeId, RelayNameTable, SharedClaim, DEFAULT_MAX_CLAIMS,
};

/// Prefix of ACME DNS-01 record names.
pub const ACME_CHALLENGE_PREFIX: &str = "_acme-challenge.";

/// Tunables of a [`RelaySession`]. `Default` gives the production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Heartbeat interval announced to daemons (default 15 s).
    pub heartbeat_interval: Duration,
    /// The daemon is declared dead after this many intervals without a heartbeat (default 3).
    pub missed_heartbeats_allowed: u32,
    /// How long a new connection may take to send [`Register`] (default 10 s).
    pub registration_timeout: Duration,
    /// ACME TXT records still set after this long are removed by the relay (default 10 min).
    pub acme_record_lifetime: Duration,
    /// At most this many ACME records per daemon at once (default 8).
    pub max_acme_records: usize,
    /// The relay's public HTTPS port, announced in [`Registered::https_port`] to daemons that
    /// speak protocol version 2 or later (default `None`: not announced; daemons assume 443).
    pub https_port: Option<u16>,
    /// Who may register (default open), with the quotas of each account.
    pub access: AccessPolicy,
    /// Name claims the relay holds at most, all nodes together (`limits.max_claims`).
    pub max_claims: usize,
    /// The relays of a deployment share their claims through a store (`[store] url`): a
    /// custom label is granted only after the store agreed ([`RelayEvent::CheckClaim`]).
    pub shared_claims: bool,
    /// How long a registration waits for the store's verdict before it is judged unavailable
    /// (default 10 s).
    pub claim_check_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(15),
            missed_heartbeats_allowed: 3,
            registration_timeout: Duration::from_secs(10),
            acme_record_lifetime: Duration::from_secs(600),
            max_acme_records: 8,
            https_port: None,
            access: AccessPolicy::default(),
            max_claims: DEFAULT_MAX_CLAIMS,
            shared_claims: false,
            claim_check_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a relay session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// No `Register` in time.
    #[error("the daemon did not register in time")]
    RegistrationTimeout,
    /// Registration refused.
    #[error("registration refused: {0}")]
    Refused(String),
    /// No heartbeat for too long.
    #[error("the daemon stopped sending heartbeats")]
    HeartbeatTimeout,
    /// The daemon broke the protocol.
    #[error("the daemon broke the protocol: {0}")]
    ProtocolViolation(String),
    /// The runtime reported the connection lost.
    #[error("connection lost")]
    ConnectionLost,
    /// A frame this relay had to send could not be encoded; the connection is closed rather
    /// than left with a frame silently missing.
    #[error("could not encode a control frame: {0}")]
    EncodeFailed(String),
}

/// What the runtime must do, drained with [`RelaySession::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// Send this frame on the control stream.
    Transmit(Frame),
    /// The daemon registered and was granted these names (already in the name table).
    Registered(NameGrant),
    /// The daemon said goodbye ([`Frame::Leaving`]): its names are already out of routing
    /// (offline in the name table), so new clients for them are refused at once. Forwarded
    /// streams already open keep running; the connection stays until the daemon closes it.
    Left(NameGrant),
    /// Write the TXT record `name = txt_value` through the DNS provider, then call
    /// [`RelaySession::complete_acme`] with `request_id`.
    DnsSet {
        /// The daemon's request id.
        request_id: u64,
        /// Full record name (`_acme-challenge.<owned name>`), lower-case.
        name: String,
        /// TXT value.
        txt_value: String,
    },
    /// Delete the TXT record `name`. With a request id, answer through
    /// [`RelaySession::complete_acme`]; without one it is the relay's own cleanup (timeout or
    /// closed connection) and needs no answer.
    DnsClear {
        /// The daemon's request id, if the daemon asked.
        request_id: Option<u64>,
        /// Full record name.
        name: String,
    },
    /// With [`RelayConfig::shared_claims`]: ask the shared store whether this daemon may hold
    /// the custom `label`, then call [`RelaySession::complete_claim`] with its verdict. The
    /// registration waits for it (at most [`RelayConfig::claim_check_timeout`]).
    CheckClaim {
        /// The validated, lower-cased label.
        label: String,
        /// The registration token the daemon was admitted with, if any.
        token: Option<String>,
    },
    /// The session is over: close the connection. The node is already marked offline.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// Where a relay session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayState {
    /// Waiting for [`Register`].
    AwaitingRegister {
        /// Deadline for it.
        deadline: Instant,
    },
    /// Admitted; waiting for the shared claim store's verdict on the custom label before
    /// answering the registration.
    CheckingClaim {
        /// When the store is judged unavailable.
        deadline: Instant,
        /// The registration being decided.
        pending: Box<PendingRegistration>,
    },
    /// Registered; forwarded streams may be opened.
    Registered {
        /// The names granted.
        grant: NameGrant,
    },
    /// [`Frame::Drain`] sent: no new streams; existing ones finish.
    Draining {
        /// The names granted.
        grant: NameGrant,
    },
    /// The daemon said goodbye: its names are offline, no new streams; existing ones finish
    /// and heartbeats are still answered until the daemon closes the connection.
    Left {
        /// The names that were granted.
        grant: NameGrant,
    },
    /// Over.
    Closed,
}

/// A registration admitted and waiting for the shared claim store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRegistration {
    register: Register,
    account: Account,
    rules: ClaimRules,
    label: String,
}

/// Why a forwarded stream may not be opened to this daemon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamRefusal {
    /// The session is not registered (or is draining or closed).
    #[error("daemon is not accepting new streams")]
    NotAccepting,
    /// The daemon does not own the name.
    #[error("`{0}` does not belong to this daemon")]
    NotOwner(String),
}

/// The relay's session with one daemon connection. See the module docs.
#[derive(Debug, Clone)]
pub struct RelaySession {
    node_id: NodeId,
    config: RelayConfig,
    state: RelayState,
    /// The protocol version agreed in the registration (0 before it).
    protocol_version: u16,
    last_heard_at: Instant,
    events: VecDeque<RelayEvent>,
    /// ACME records set for this daemon: record name -> when set.
    acme_records: BTreeMap<String, Instant>,
    /// Requests handed to the DNS provider and not yet completed.
    pending_acme: BTreeMap<u64, String>,
    /// Set by the relay before the registration arrives (e.g. too many registrations from
    /// the daemon's address): the `Register` is refused with this reason.
    refusal: Option<String>,
    /// Who the daemon counts as for quotas, once admitted.
    account: Option<Account>,
}

impl RelaySession {
    /// A session for a freshly accepted connection from `node_id`.
    pub fn new(node_id: NodeId, config: RelayConfig, now: Instant) -> Self {
        let deadline = now + config.registration_timeout;
        Self {
            node_id,
            config,
            state: RelayState::AwaitingRegister { deadline },
            protocol_version: 0,
            last_heard_at: now,
            events: VecDeque::new(),
            acme_records: BTreeMap::new(),
            pending_acme: BTreeMap::new(),
            refusal: None,
            account: None,
        }
    }

    /// The registration will be refused with `reason` (sent in the `Refused` frame), before
    /// any name is touched. For decisions made outside the session, such as the relay's
    /// per-address registration throttle.
    pub fn refuse_registration(&mut self, reason: String) {
        self.refusal = Some(reason);
    }

    /// The daemon's node id.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The current state.
    pub fn state(&self) -> &RelayState {
        &self.state
    }

    /// The protocol version agreed with the daemon; 0 before registration.
    pub fn protocol_version(&self) -> u16 {
        self.protocol_version
    }

    /// The next event for the runtime, if any.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// When [`RelaySession::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let records = self
            .acme_records
            .values()
            .map(|set_at| *set_at + self.config.acme_record_lifetime)
            .min();
        let session = match &self.state {
            RelayState::AwaitingRegister { deadline }
            | RelayState::CheckingClaim { deadline, .. } => Some(*deadline),
            RelayState::Registered { .. }
            | RelayState::Draining { .. }
            | RelayState::Left { .. } => Some(self.dead_at()),
            RelayState::Closed => None,
        };
        match (session, records) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn dead_at(&self) -> Instant {
        self.last_heard_at
            + self
                .config
                .heartbeat_interval
                .saturating_mul(self.config.missed_heartbeats_allowed.max(1))
    }

    /// Who the daemon counts as for quotas (its token, or itself); `None` before it is
    /// admitted.
    pub fn account(&self) -> Option<&Account> {
        self.account.as_ref()
    }

    /// Refuses an ACME request this session handed out as [`RelayEvent::DnsSet`] before the
    /// DNS provider was asked (a quota said no): the record is forgotten (nothing to delete)
    /// and the daemon gets `reason`.
    pub fn refuse_acme(&mut self, request_id: u64, reason: String) {
        if let Some(record) = self.pending_acme.remove(&request_id) {
            self.acme_records.remove(&record);
            if self.state != RelayState::Closed {
                self.answer(request_id, Err(reason));
            }
        }
    }

    /// Whether new forwarded streams may be opened to this daemon.
    pub fn accepts_streams(&self) -> bool {
        matches!(self.state, RelayState::Registered { .. })
    }

    /// The header frame for a new forwarded stream to this daemon, after checking that the
    /// session takes streams and that the daemon owns `server_name`.
    pub fn stream_header(
        &self,
        names: &RelayNameTable,
        client_addr: SocketAddr,
        server_name: &str,
    ) -> Result<Frame, StreamRefusal> {
        if !self.accepts_streams() {
            return Err(StreamRefusal::NotAccepting);
        }
        if !names.owns(&self.node_id, server_name) {
            return Err(StreamRefusal::NotOwner(server_name.to_owned()));
        }
        Ok(Frame::StreamHeader(StreamHeader {
            client_addr,
            server_name: server_name.to_ascii_lowercase(),
        }))
    }

    /// A control frame from the daemon.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        now_unix_secs: u64,
        frame: Frame,
        names: &mut RelayNameTable,
    ) {
        match (&self.state, frame) {
            (RelayState::Closed, _) => {}
            (RelayState::AwaitingRegister { .. }, Frame::Register(register)) => {
                self.on_register(now, now_unix_secs, register, names);
            }
            (
                RelayState::Registered { .. }
                | RelayState::Draining { .. }
                | RelayState::Left { .. },
                Frame::Heartbeat { seq },
            ) => {
                self.last_heard_at = now;
                names.touch(&self.node_id, now_unix_secs);
                self.events
                    .push_back(RelayEvent::Transmit(Frame::HeartbeatAck { seq }));
            }
            (RelayState::Registered { .. }, Frame::AcmeChallengeSet(set)) => {
                self.on_acme_set(now, set, names);
            }
            (RelayState::Registered { .. }, Frame::AcmeChallengeClear(clear)) => {
                self.on_acme_clear(clear);
            }
            (
                RelayState::Draining { .. },
                Frame::AcmeChallengeSet(AcmeChallengeSet { request_id, .. }),
            )
            | (
                RelayState::Draining { .. },
                Frame::AcmeChallengeClear(AcmeChallengeClear { request_id, .. }),
            ) => {
                self.answer(
                    request_id,
                    Err("the relay is draining; ask another relay".into()),
                );
            }
            (RelayState::Registered { .. } | RelayState::Draining { .. }, Frame::Leaving)
                if self.protocol_version >= GOODBYE_SINCE_VERSION =>
            {
                self.on_leaving(now_unix_secs, names);
            }
            (RelayState::Registered { .. } | RelayState::Draining { .. }, Frame::Leaving) => {
                let message = format!(
                    "Leaving needs protocol version {GOODBYE_SINCE_VERSION}; this session agreed on version {}",
                    self.protocol_version
                );
                self.violation(now_unix_secs, names, message);
            }
            (RelayState::Left { .. }, Frame::Leaving) => {
                // Said twice: the names are already out; answer again.
                self.events
                    .push_back(RelayEvent::Transmit(Frame::LeavingAck));
            }
            (
                RelayState::Left { .. },
                Frame::AcmeChallengeSet(AcmeChallengeSet { request_id, .. }),
            )
            | (
                RelayState::Left { .. },
                Frame::AcmeChallengeClear(AcmeChallengeClear { request_id, .. }),
            ) => {
                self.answer(
                    request_id,
                    Err("this daemon said it is leaving; it takes no ACME records".into()),
                );
            }
            (_, Frame::Error(_)) => {
                // Informational; the runtime logs frames it wants to.
            }
            (_, other) => self.violation(
                now_unix_secs,
                names,
                format!("unexpected frame type 0x{:02x}", other.frame_type()),
            ),
        }
    }

    fn on_register(
        &mut self,
        now: Instant,
        now_unix_secs: u64,
        register: Register,
        names: &mut RelayNameTable,
    ) {
        if register.protocol_version == 0 {
            let reason =
                format!("unsupported protocol version 0; this relay speaks 1..={PROTOCOL_VERSION}");
            self.events.push_back(RelayEvent::Transmit(Frame::Refused {
                reason: reason.clone(),
            }));
            self.close(now_unix_secs, names, CloseReason::Refused(reason));
            return;
        }
        // Before any name is claimed or touched: a refused daemon leaves nothing behind.
        let verdict = match self.refusal.take() {
            Some(reason) => Err(reason),
            None => self.config.access.admit(
                &self.node_id,
                register.token.as_ref(),
                register.protocol_version,
            ),
        };
        let account = match verdict {
            Ok(account) => account,
            Err(reason) => {
                self.events.push_back(RelayEvent::Transmit(Frame::Refused {
                    reason: reason.clone(),
                }));
                self.close(now_unix_secs, names, CloseReason::Refused(reason));
                return;
            }
        };
        let quota = self.config.access.quotas.for_account(&account);
        let rules = ClaimRules {
            max_claims: self.config.max_claims,
            token: account.token_name().map(str::to_owned),
            max_custom_names: quota.custom_names,
        };
        if self.config.shared_claims {
            // A label that passes this relay's own checks is asked of the shared store; one
            // that does not is refused below exactly as without a store.
            let checked = register.custom_label.as_deref().map(|requested| {
                names.precheck_shared_claim(&self.node_id, requested, now_unix_secs, &rules)
            });
            if let Some(Ok(label)) = checked {
                self.events.push_back(RelayEvent::CheckClaim {
                    label: label.clone(),
                    token: rules.token.clone(),
                });
                self.state = RelayState::CheckingClaim {
                    deadline: now + self.config.claim_check_timeout,
                    pending: Box::new(PendingRegistration {
                        register,
                        account,
                        rules,
                        label,
                    }),
                };
                return;
            }
        }
        let grant = names.register_with(
            &self.node_id,
            register.custom_label.as_deref(),
            now_unix_secs,
            &rules,
        );
        self.finish_registration(now, &register, account, grant);
    }

    /// The shared claim store's verdict on the label of a registration in
    /// [`RelayState::CheckingClaim`] (after [`RelayEvent::CheckClaim`]): the daemon is
    /// registered and answered, with the custom name or with why not
    /// ([`RelayNameTable::register_shared`]). Ignored in any other state (the session closed
    /// meanwhile, or the verdict came too late and the store was judged unavailable).
    pub fn complete_claim(
        &mut self,
        now: Instant,
        now_unix_secs: u64,
        verdict: SharedClaim,
        names: &mut RelayNameTable,
    ) {
        if !matches!(self.state, RelayState::CheckingClaim { .. }) {
            return;
        }
        let RelayState::CheckingClaim { pending, .. } =
            std::mem::replace(&mut self.state, RelayState::Closed)
        else {
            return;
        };
        let PendingRegistration {
            register,
            account,
            rules,
            label,
        } = *pending;
        let grant = names.register_shared(&self.node_id, &label, now_unix_secs, &rules, &verdict);
        self.finish_registration(now, &register, account, grant);
    }

    /// Answers an admitted registration with what `grant` holds (already in the name table).
    fn finish_registration(
        &mut self,
        now: Instant,
        register: &Register,
        account: Account,
        grant: NameGrant,
    ) {
        self.account = Some(account);
        self.last_heard_at = now;
        let interval_ms =
            u32::try_from(self.config.heartbeat_interval.as_millis()).unwrap_or(u32::MAX);
        let protocol_version = register.protocol_version.min(PROTOCOL_VERSION);
        self.protocol_version = protocol_version;
        // An older daemon could not decode the port (see the versioning notes in the module).
        let https_port = self
            .config
            .https_port
            .filter(|_| protocol_version >= HTTPS_PORT_SINCE_VERSION);
        self.events
            .push_back(RelayEvent::Transmit(Frame::Registered(Registered {
                protocol_version,
                node_name: grant.node_name.clone(),
                custom_name: grant.custom_name.clone(),
                custom_name_refusal: grant.custom_name_refusal.clone(),
                heartbeat_interval_ms: interval_ms,
                https_port,
            })));
        self.events.push_back(RelayEvent::Registered(grant.clone()));
        self.state = RelayState::Registered { grant };
    }

    /// The daemon's goodbye: its names leave routing now (before any new client is looked up),
    /// the ack goes out, and the session stays for the streams already open.
    fn on_leaving(&mut self, now_unix_secs: u64, names: &mut RelayNameTable) {
        let grant = match &self.state {
            RelayState::Registered { grant } | RelayState::Draining { grant } => grant.clone(),
            _ => return,
        };
        names.go_offline(&self.node_id, now_unix_secs);
        self.state = RelayState::Left {
            grant: grant.clone(),
        };
        self.events
            .push_back(RelayEvent::Transmit(Frame::LeavingAck));
        self.events.push_back(RelayEvent::Left(grant));
    }

    fn on_acme_set(&mut self, now: Instant, set: AcmeChallengeSet, names: &RelayNameTable) {
        let record = set.name.trim_end_matches('.').to_ascii_lowercase();
        let owned = record
            .strip_prefix(ACME_CHALLENGE_PREFIX)
            .is_some_and(|name| names.owns(&self.node_id, name));
        if !owned {
            self.answer(
                set.request_id,
                Err(format!(
                    "`{}` is not an ACME challenge record for one of this daemon's names",
                    set.name
                )),
            );
            return;
        }
        if self.pending_acme.contains_key(&set.request_id) {
            self.answer(set.request_id, Err("duplicate request id".into()));
            return;
        }
        if !self.acme_records.contains_key(&record)
            && self.acme_records.len() >= self.config.max_acme_records
        {
            self.answer(
                set.request_id,
                Err(format!(
                    "too many ACME records at once (at most {})",
                    self.config.max_acme_records
                )),
            );
            return;
        }
        self.acme_records.insert(record.clone(), now);
        self.pending_acme.insert(set.request_id, record.clone());
        self.events.push_back(RelayEvent::DnsSet {
            request_id: set.request_id,
            name: record,
            txt_value: set.txt_value,
        });
    }

    fn on_acme_clear(&mut self, clear: AcmeChallengeClear) {
        let record = clear.name.trim_end_matches('.').to_ascii_lowercase();
        if self.pending_acme.contains_key(&clear.request_id) {
            self.answer(clear.request_id, Err("duplicate request id".into()));
            return;
        }
        if self.acme_records.remove(&record).is_none() {
            // Nothing we set: nothing to delete, and no reason to touch DNS.
            self.answer(clear.request_id, Ok(()));
            return;
        }
        self.pending_acme.insert(clear.request_id, record.clone());
        self.events.push_back(RelayEvent::DnsClear {
            request_id: Some(clear.request_id),
            name: record,
        });
    }

    /// The DNS provider finished the request `request_id` (from [`RelayEvent::DnsSet`] or
    /// [`RelayEvent::DnsClear`]); tells the daemon. Unknown ids are ignored.
    pub fn complete_acme(&mut self, request_id: u64, outcome: Result<(), String>) {
        if self.pending_acme.remove(&request_id).is_some() && self.state != RelayState::Closed {
            self.answer(request_id, outcome);
        }
    }

    fn answer(&mut self, request_id: u64, outcome: Result<(), String>) {
        self.events
            .push_back(RelayEvent::Transmit(Frame::AcmeChallengeResult(
                AcmeChallengeResult {
                    request_id,
                    outcome,
                },
            )));
    }

    /// The relay is going away: tell the daemon and take no new streams or ACME requests.
    pub fn start_drain(&mut self) {
        if let RelayState::Registered { grant } = &self.state {
            self.state = RelayState::Draining {
                grant: grant.clone(),
            };
            self.events.push_back(RelayEvent::Transmit(Frame::Drain));
        }
    }

    /// Drives timers: registration deadline, heartbeat liveness, ACME record lifetime.
    pub fn handle_timeout(&mut self, now: Instant, now_unix_secs: u64, names: &mut RelayNameTable) {
        let lifetime = self.config.acme_record_lifetime;
        let expired: Vec<String> = self
            .acme_records
            .iter()
            .filter(|(_, set_at)| now >= **set_at + lifetime)
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            self.acme_records.remove(&name);
            self.events.push_back(RelayEvent::DnsClear {
                request_id: None,
                name,
            });
        }
        match &self.state {
            RelayState::AwaitingRegister { deadline } if now >= *deadline => {
                self.close(now_unix_secs, names, CloseReason::RegistrationTimeout);
            }
            RelayState::CheckingClaim { deadline, .. } if now >= *deadline => {
                let waited = self.config.claim_check_timeout;
                self.complete_claim(
                    now,
                    now_unix_secs,
                    SharedClaim::Unavailable(format!(
                        "the claim store did not answer within {} s",
                        waited.as_secs()
                    )),
                    names,
                );
            }
            RelayState::Registered { .. }
            | RelayState::Draining { .. }
            | RelayState::Left { .. }
                if now >= self.dead_at() =>
            {
                self.events
                    .push_back(RelayEvent::Transmit(Frame::Error(ErrorFrame {
                        code: ErrorCode::HEARTBEAT_TIMEOUT,
                        message: "no heartbeat received in time".into(),
                    })));
                self.close(now_unix_secs, names, CloseReason::HeartbeatTimeout);
            }
            _ => {}
        }
    }

    /// The control stream carried bytes that are not a frame: a protocol violation (the daemon
    /// is told, the session closes).
    pub fn handle_undecodable(
        &mut self,
        now_unix_secs: u64,
        names: &mut RelayNameTable,
        error: FrameError,
    ) {
        if self.state != RelayState::Closed {
            self.violation(
                now_unix_secs,
                names,
                format!("undecodable control frame: {error}"),
            );
        }
    }

    /// A frame the session asked to send could not be encoded: the daemon is told (the error
    /// frame itself always encodes) and the session closes with the reason.
    pub fn handle_encode_failed(
        &mut self,
        now_unix_secs: u64,
        names: &mut RelayNameTable,
        error: EncodeError,
    ) {
        if self.state == RelayState::Closed {
            return;
        }
        self.events
            .push_back(RelayEvent::Transmit(Frame::Error(ErrorFrame {
                code: ErrorCode::INTERNAL,
                message: format!("the relay could not encode a frame: {error}"),
            })));
        self.close(
            now_unix_secs,
            names,
            CloseReason::EncodeFailed(error.to_string()),
        );
    }

    /// The runtime lost the connection.
    pub fn handle_connection_lost(&mut self, now_unix_secs: u64, names: &mut RelayNameTable) {
        self.close(now_unix_secs, names, CloseReason::ConnectionLost);
    }

    fn violation(&mut self, now_unix_secs: u64, names: &mut RelayNameTable, message: String) {
        self.events
            .push_back(RelayEvent::Transmit(Frame::Error(ErrorFrame {
                code: ErrorCode::PROTOCOL_VIOLATION,
                message: message.clone(),
            })));
        self.close(
            now_unix_secs,
            names,
            CloseReason::ProtocolViolation(message),
        );
    }

    fn close(&mut self, now_unix_secs: u64, names: &mut RelayNameTable, reason: CloseReason) {
        // A session that said goodbye went offline then; only count it once.
        let was_registered = matches!(
            self.state,
            RelayState::Registered { .. } | RelayState::Draining { .. }
        );
        if self.state == RelayState::Closed {
            return;
        }
        self.state = RelayState::Closed;
        if was_registered {
            names.go_offline(&self.node_id, now_unix_secs);
        }
        self.pending_acme.clear();
        for name in std::mem::take(&mut self.acme_records).into_keys() {
            self.events.push_back(RelayEvent::DnsClear {
                request_id: None,
                name,
            });
        }
        self.events.push_back(RelayEvent::Closed { reason });
    }
}
