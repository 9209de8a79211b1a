//! The daemon's end of one relay connection, as a sans-IO state machine.
//!
//! Owns: the connection lifecycle towards one relay address (connect, register, heartbeat,
//! drain, reconnect with exponential backoff and full jitter, the goodbye when the daemon
//! stops: [`DaemonSession::leave`]), the heartbeat sequence numbers,
//! and the ids of outstanding ACME requests. Must not: touch sockets or QUIC, read a clock, or
//! draw randomness from anywhere but the seed it was given.
//!
//! # Driving loop
//!
//! ```text
//! let mut session = DaemonSession::new(config, seed, now);
//! loop {
//!     while let Some(event) = session.poll_event() {
//!         match event {
//!             DaemonEvent::Connect(attempt) => start a QUIC connection, open the control stream,
//!                 then call handle_connected(attempt, now) or handle_connect_failed(attempt, ..),
//!             DaemonEvent::Transmit(frame) => encode it onto the control stream,
//!             DaemonEvent::Disconnected { .. } => close the connection if it is still open,
//!             other events => update status, logs, the ACME client,
//!         }
//!     }
//!     wait until session.poll_timeout(), a control frame (handle_frame), bytes that are not a
//!     frame (handle_undecodable), a frame that would not encode (handle_encode_failed), or a
//!     connection loss (handle_connection_lost); then call handle_timeout(now) when the
//!     deadline has passed. When the daemon stops: leave(now), then wait for DaemonEvent::Left.
//! }
//! ```
//!
//! One session serves one relay address; a daemon with several relays runs one per address.
//! Every input that concerns a connection carries the [`ConnectionAttempt`] it was started with,
//! so late reports about an older connection are ignored.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::config::Secret;

use super::frame::{
    AcmeChallengeClear, AcmeChallengeSet, EncodeError, ErrorCode, ErrorFrame, Frame, FrameError,
    Register, Registered, GOODBYE_SINCE_VERSION, PROTOCOL_VERSION, TOKEN_SINCE_VERSION,
};

/// Tunables of a [`DaemonSession`]. `Default` gives the production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// The daemon's software version, sent in [`Register`].
    pub daemon_version: String,
    /// The custom DNS label to ask for, if any.
    pub custom_label: Option<String>,
    /// The registration token to present (`relay.token`), if any.
    pub token: Option<Secret>,
    /// First reconnect delay ceiling; doubles per consecutive failure (default 1 s).
    pub backoff_base: Duration,
    /// Largest reconnect delay ceiling (default 60 s).
    pub backoff_cap: Duration,
    /// How long connecting (QUIC handshake and control stream) may take (default 10 s).
    pub connect_timeout: Duration,
    /// How long the relay may take to answer [`Register`] (default 10 s).
    pub registration_timeout: Duration,
    /// The connection is declared dead after this many heartbeat intervals without an ack
    /// (default 3).
    pub missed_heartbeats_allowed: u32,
    /// Lower bound applied to the relay's heartbeat interval, so a bogus relay cannot make the
    /// daemon spin (default 1 s).
    pub min_heartbeat_interval: Duration,
    /// How long [`DaemonSession::leave`] waits for the relay's [`Frame::LeavingAck`] before it
    /// reports the goodbye unacknowledged (default 2 s).
    pub leave_timeout: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            daemon_version: String::new(),
            custom_label: None,
            token: None,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            registration_timeout: Duration::from_secs(10),
            missed_heartbeats_allowed: 3,
            min_heartbeat_interval: Duration::from_secs(1),
            leave_timeout: Duration::from_secs(2),
        }
    }
}

/// Identifies one connection attempt; reports about other attempts are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionAttempt(pub u64);

/// The names a relay granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredNames {
    /// `<node-id>.<suffix>`, always granted.
    pub node_name: String,
    /// `<custom-label>.<suffix>` when granted.
    pub custom_name: Option<String>,
    /// Why the custom label was refused, when it was.
    pub custom_name_refusal: Option<String>,
    /// The relay's public HTTPS port, when it announced one (protocol version 2 or later);
    /// `None` means 443.
    pub https_port: Option<u16>,
}

/// Why a connection ended or never came up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisconnectReason {
    /// The runtime could not connect.
    #[error("could not connect to the relay: {0}")]
    ConnectFailed(String),
    /// Connecting took longer than [`DaemonConfig::connect_timeout`].
    #[error("connecting to the relay timed out")]
    ConnectTimeout,
    /// The relay did not answer the registration in time.
    #[error("the relay did not answer the registration in time")]
    RegistrationTimeout,
    /// The relay refused the registration.
    #[error("the relay refused the registration: {0}")]
    Refused(String),
    /// The runtime reported the connection lost.
    #[error("connection to the relay lost: {0}")]
    ConnectionLost(String),
    /// No heartbeat ack for too long.
    #[error("the relay stopped answering heartbeats")]
    HeartbeatTimeout,
    /// The relay sent something the protocol does not allow.
    #[error("the relay broke the protocol: {0}")]
    ProtocolViolation(String),
    /// A frame this daemon had to send could not be encoded (a bug or an oversized field); the
    /// connection is closed rather than left with a frame silently missing.
    #[error("could not encode a control frame: {0}")]
    EncodeFailed(String),
    /// The daemon is stopping ([`DaemonSession::leave`]) before the registration completed.
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// What the runtime must do or know, drained with [`DaemonSession::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonEvent {
    /// Open a QUIC connection to the relay and its control stream; report the outcome with
    /// [`DaemonSession::handle_connected`] or [`DaemonSession::handle_connect_failed`].
    Connect(ConnectionAttempt),
    /// Send this frame on the control stream of the current connection.
    Transmit(Frame),
    /// The relay accepted the registration.
    Registered(RegisteredNames),
    /// The relay refused the registration entirely (a [`DaemonEvent::Disconnected`] follows).
    Refused {
        /// The relay's reason.
        reason: String,
    },
    /// The relay is going away: it takes no new work; existing streams may finish.
    Draining,
    /// Outcome of an ACME request made with [`DaemonSession::request_acme_set`] or
    /// [`DaemonSession::request_acme_clear`].
    AcmeChallengeResult {
        /// The id returned by the request.
        request_id: u64,
        /// `Err` carries the relay's message, or says the connection was lost.
        outcome: Result<(), String>,
    },
    /// The relay reported an error on the control stream.
    RelayError(ErrorFrame),
    /// The connection is over (close it if still open); the next attempt is scheduled, unless
    /// the session is [`DaemonState::Stopped`].
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// The goodbye started by [`DaemonSession::leave`] is over, once per call: `acknowledged`
    /// when the relay answered [`Frame::LeavingAck`] (the names are out of its routing), else
    /// because the relay speaks a version without the goodbye, the ack did not come within
    /// [`DaemonConfig::leave_timeout`], or there was no registered connection. The runtime may
    /// now close the connection once its open streams are done.
    Left {
        /// Whether the relay confirmed it.
        acknowledged: bool,
    },
}

/// Where the session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonState {
    /// No connection; the next attempt starts at `next_attempt_at`.
    Disconnected {
        /// When [`DaemonEvent::Connect`] will be emitted.
        next_attempt_at: Instant,
    },
    /// Waiting for the runtime to connect.
    Connecting {
        /// The attempt in progress.
        attempt: ConnectionAttempt,
        /// Deadline for [`DaemonSession::handle_connected`].
        deadline: Instant,
    },
    /// [`Register`] sent, waiting for the answer.
    Registering {
        /// The attempt in progress.
        attempt: ConnectionAttempt,
        /// Deadline for the answer.
        deadline: Instant,
    },
    /// Registered and heartbeating.
    Registered {
        /// The connection.
        attempt: ConnectionAttempt,
        /// The names granted.
        names: RegisteredNames,
    },
    /// The relay announced it is going away; heartbeats continue until the connection ends.
    Draining {
        /// The connection.
        attempt: ConnectionAttempt,
        /// The names granted (still served by existing streams).
        names: RegisteredNames,
    },
    /// The daemon said goodbye ([`DaemonSession::leave`]): no new work, heartbeats continue so
    /// the streams already open can finish; no reconnect once the connection ends.
    Leaving {
        /// The connection.
        attempt: ConnectionAttempt,
        /// The names that were granted.
        names: RegisteredNames,
        /// Until when the [`Frame::LeavingAck`] is awaited; `None` once the goodbye is over.
        ack_deadline: Option<Instant>,
    },
    /// Over for good: the daemon left; nothing more is scheduled.
    Stopped,
}

/// Why an ACME request could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcmeRequestError {
    /// Only a registered, non-draining connection takes ACME requests.
    #[error("not registered with this relay")]
    NotRegistered,
}

/// Heartbeat bookkeeping of a registered connection.
#[derive(Debug, Clone)]
struct Heartbeats {
    interval: Duration,
    next_send_at: Instant,
    /// Registration time or the time of the last ack that acknowledged something new.
    last_heard_at: Instant,
    last_sent_seq: u64,
    last_acked_seq: u64,
}

/// SplitMix64: a small deterministic generator for backoff jitter, seeded by the caller.
#[derive(Debug, Clone)]
struct JitterRng(u64);

impl JitterRng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, ceiling]`, at nanosecond resolution.
    fn duration_up_to(&mut self, ceiling: Duration) -> Duration {
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        let draw = self.next_u64() % nanos.saturating_add(1).max(1);
        Duration::from_nanos(draw)
    }
}

/// The daemon's session with one relay. See the module docs for the driving loop.
#[derive(Debug, Clone)]
pub struct DaemonSession {
    config: DaemonConfig,
    state: DaemonState,
    /// The protocol version agreed with the relay (0 while not registered).
    protocol_version: u16,
    heartbeats: Option<Heartbeats>,
    events: VecDeque<DaemonEvent>,
    rng: JitterRng,
    next_attempt: u64,
    /// Failures since the last successful registration; drives the backoff exponent.
    consecutive_failures: u32,
    next_request_id: u64,
    pending_acme: BTreeSet<u64>,
}

impl DaemonSession {
    /// A session that will connect at `now` (on the first [`DaemonSession::handle_timeout`]).
    /// `seed` feeds the reconnect jitter; give each session its own.
    pub fn new(config: DaemonConfig, seed: u64, now: Instant) -> Self {
        Self {
            config,
            state: DaemonState::Disconnected {
                next_attempt_at: now,
            },
            protocol_version: 0,
            heartbeats: None,
            events: VecDeque::new(),
            rng: JitterRng(seed),
            next_attempt: 1,
            consecutive_failures: 0,
            next_request_id: 1,
            pending_acme: BTreeSet::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> &DaemonState {
        &self.state
    }

    /// The granted names while registered or draining.
    pub fn names(&self) -> Option<&RegisteredNames> {
        match &self.state {
            DaemonState::Registered { names, .. }
            | DaemonState::Draining { names, .. }
            | DaemonState::Leaving { names, .. } => Some(names),
            _ => None,
        }
    }

    /// The next event for the runtime, if any.
    pub fn poll_event(&mut self) -> Option<DaemonEvent> {
        self.events.pop_front()
    }

    /// When [`DaemonSession::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            DaemonState::Disconnected { next_attempt_at } => Some(*next_attempt_at),
            DaemonState::Connecting { deadline, .. }
            | DaemonState::Registering { deadline, .. } => Some(*deadline),
            DaemonState::Registered { .. } | DaemonState::Draining { .. } => self
                .heartbeats
                .as_ref()
                .map(|hb| hb.next_send_at.min(self.dead_at(hb))),
            DaemonState::Leaving { ack_deadline, .. } => {
                let heartbeat = self
                    .heartbeats
                    .as_ref()
                    .map(|hb| hb.next_send_at.min(self.dead_at(hb)));
                match (heartbeat, *ack_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            DaemonState::Stopped => None,
        }
    }

    fn dead_at(&self, hb: &Heartbeats) -> Instant {
        let allowed = self.config.missed_heartbeats_allowed.max(1);
        hb.last_heard_at + hb.interval.saturating_mul(allowed)
    }

    fn current_attempt(&self) -> Option<ConnectionAttempt> {
        match &self.state {
            DaemonState::Disconnected { .. } | DaemonState::Stopped => None,
            DaemonState::Connecting { attempt, .. }
            | DaemonState::Registering { attempt, .. }
            | DaemonState::Registered { attempt, .. }
            | DaemonState::Draining { attempt, .. }
            | DaemonState::Leaving { attempt, .. } => Some(*attempt),
        }
    }

    /// Drives timers: starts connection attempts, sends heartbeats, and declares timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let DaemonState::Leaving {
            ack_deadline: Some(deadline),
            ..
        } = &self.state
        {
            if now >= *deadline {
                self.end_goodbye(false);
            }
        }
        match &self.state {
            DaemonState::Stopped => {}
            DaemonState::Disconnected { next_attempt_at } => {
                if now >= *next_attempt_at {
                    let attempt = ConnectionAttempt(self.next_attempt);
                    self.next_attempt = self.next_attempt.saturating_add(1);
                    self.state = DaemonState::Connecting {
                        attempt,
                        deadline: now + self.config.connect_timeout,
                    };
                    self.events.push_back(DaemonEvent::Connect(attempt));
                }
            }
            DaemonState::Connecting { deadline, .. } => {
                if now >= *deadline {
                    self.fail(now, DisconnectReason::ConnectTimeout);
                }
            }
            DaemonState::Registering { deadline, .. } => {
                if now >= *deadline {
                    self.fail(now, DisconnectReason::RegistrationTimeout);
                }
            }
            DaemonState::Registered { .. }
            | DaemonState::Draining { .. }
            | DaemonState::Leaving { .. } => {
                let Some(hb) = self.heartbeats.as_ref() else {
                    return;
                };
                if now >= self.dead_at(hb) {
                    self.fail(now, DisconnectReason::HeartbeatTimeout);
                    return;
                }
                if let Some(hb) = self.heartbeats.as_mut() {
                    if now >= hb.next_send_at {
                        hb.last_sent_seq = hb.last_sent_seq.saturating_add(1);
                        // Skip missed slots instead of bursting after a stall.
                        while hb.next_send_at <= now {
                            hb.next_send_at += hb.interval;
                        }
                        let seq = hb.last_sent_seq;
                        self.events
                            .push_back(DaemonEvent::Transmit(Frame::Heartbeat { seq }));
                    }
                }
            }
        }
    }

    /// The runtime connected `attempt` and opened the control stream: register.
    pub fn handle_connected(&mut self, attempt: ConnectionAttempt, now: Instant) {
        if !matches!(self.state, DaemonState::Connecting { attempt: a, .. } if a == attempt) {
            return;
        }
        self.state = DaemonState::Registering {
            attempt,
            deadline: now + self.config.registration_timeout,
        };
        self.events
            .push_back(DaemonEvent::Transmit(Frame::Register(Register {
                protocol_version: PROTOCOL_VERSION,
                daemon_version: self.config.daemon_version.clone(),
                custom_label: self.config.custom_label.clone(),
                token: self.config.token.clone(),
            })));
    }

    /// The runtime could not connect `attempt`.
    pub fn handle_connect_failed(
        &mut self,
        attempt: ConnectionAttempt,
        now: Instant,
        error: String,
    ) {
        if matches!(self.state, DaemonState::Connecting { attempt: a, .. } if a == attempt) {
            self.fail(now, DisconnectReason::ConnectFailed(error));
        }
    }

    /// The runtime lost the connection of `attempt` (closed, reset, stream error, undecodable
    /// frame). A relay that drained is reconnected to without an added failure.
    pub fn handle_connection_lost(
        &mut self,
        attempt: ConnectionAttempt,
        now: Instant,
        error: String,
    ) {
        if self.current_attempt() != Some(attempt) {
            return;
        }
        if matches!(self.state, DaemonState::Draining { .. }) {
            // A planned goodbye: come back soon, as after a success.
            self.consecutive_failures = 0;
        }
        self.fail(now, DisconnectReason::ConnectionLost(error));
    }

    /// The control stream of `attempt` carried bytes that are not a frame: a protocol
    /// violation (the relay is told, the connection ends).
    pub fn handle_undecodable(
        &mut self,
        attempt: ConnectionAttempt,
        now: Instant,
        error: FrameError,
    ) {
        if self.current_attempt() == Some(attempt) {
            self.violation(now, format!("undecodable control frame: {error}"));
        }
    }

    /// A frame the session asked to send on `attempt` could not be encoded: the relay is told
    /// (the error frame itself always encodes) and the connection ends with the reason.
    pub fn handle_encode_failed(
        &mut self,
        attempt: ConnectionAttempt,
        now: Instant,
        error: EncodeError,
    ) {
        if self.current_attempt() != Some(attempt) {
            return;
        }
        self.events
            .push_back(DaemonEvent::Transmit(Frame::Error(ErrorFrame {
                code: ErrorCode::INTERNAL,
                message: format!("the daemon could not encode a frame: {error}"),
            })));
        self.fail(now, DisconnectReason::EncodeFailed(error.to_string()));
    }

    /// A control frame arrived on the connection of `attempt`.
    pub fn handle_frame(&mut self, attempt: ConnectionAttempt, now: Instant, frame: Frame) {
        if self.current_attempt() != Some(attempt) {
            return;
        }
        match (&self.state, frame) {
            (DaemonState::Registering { .. }, Frame::Registered(registered)) => {
                self.on_registered(attempt, now, registered);
            }
            (DaemonState::Registering { .. }, Frame::Refused { reason }) => {
                self.events.push_back(DaemonEvent::Refused {
                    reason: reason.clone(),
                });
                self.fail(now, DisconnectReason::Refused(reason));
            }
            (
                DaemonState::Registered { .. }
                | DaemonState::Draining { .. }
                | DaemonState::Leaving { .. },
                Frame::HeartbeatAck { seq },
            ) => {
                if let Some(hb) = self.heartbeats.as_mut() {
                    if seq > hb.last_sent_seq {
                        self.violation(now, format!("ack for heartbeat {seq} that was never sent"));
                    } else if seq > hb.last_acked_seq {
                        hb.last_acked_seq = seq;
                        hb.last_heard_at = now;
                    }
                }
            }
            (
                DaemonState::Registered { .. }
                | DaemonState::Draining { .. }
                | DaemonState::Leaving { .. },
                Frame::AcmeChallengeResult(result),
            ) => {
                if self.pending_acme.remove(&result.request_id) {
                    self.events.push_back(DaemonEvent::AcmeChallengeResult {
                        request_id: result.request_id,
                        outcome: result.outcome,
                    });
                } else {
                    self.violation(
                        now,
                        format!("result for unknown ACME request {}", result.request_id),
                    );
                }
            }
            (DaemonState::Registered { attempt, names }, Frame::Drain) => {
                self.state = DaemonState::Draining {
                    attempt: *attempt,
                    names: names.clone(),
                };
                self.events.push_back(DaemonEvent::Draining);
            }
            (DaemonState::Draining { .. } | DaemonState::Leaving { .. }, Frame::Drain) => {}
            (
                DaemonState::Leaving {
                    ack_deadline: Some(_),
                    ..
                },
                Frame::LeavingAck,
            ) => self.end_goodbye(true),
            // A late or repeated ack after the goodbye is over changes nothing.
            (DaemonState::Leaving { .. }, Frame::LeavingAck) => {}
            // A relay older than tokens cannot read a Register that carries one: it answers
            // with a protocol violation instead of Registered. Say so plainly.
            (DaemonState::Registering { .. }, Frame::Error(error))
                if self.config.token.is_some() && error.code == ErrorCode::PROTOCOL_VIOLATION =>
            {
                let reason = format!(
                    "the relay could not read this daemon's registration ({}); relays older than \
                     tunnel protocol {TOKEN_SINCE_VERSION} do not take registration tokens: \
                     upgrade the relay, or unset relay.token (GATE_RELAY__TOKEN) if it does not \
                     need one",
                    error.message
                );
                self.events.push_back(DaemonEvent::Refused {
                    reason: reason.clone(),
                });
                self.fail(now, DisconnectReason::Refused(reason));
            }
            (_, Frame::Error(error)) => self.events.push_back(DaemonEvent::RelayError(error)),
            (_, other) => {
                self.violation(
                    now,
                    format!("unexpected frame type 0x{:02x}", other.frame_type()),
                );
            }
        }
    }

    /// The daemon is stopping: say goodbye to the relay so that it routes no new connection
    /// here, while the streams already open finish. With a registered connection whose agreed
    /// version has the goodbye, this sends [`Frame::Leaving`] and later reports
    /// [`DaemonEvent::Left`] (on the ack, or unacknowledged after
    /// [`DaemonConfig::leave_timeout`]); with an older relay it reports `Left` unacknowledged at
    /// once (closing the connection is the only goodbye such a relay understands). Without a
    /// registered connection the session stops (a connection being set up is reported
    /// [`DaemonEvent::Disconnected`]) and reports `Left` unacknowledged. Never reconnects
    /// afterwards. Calling it again changes nothing.
    pub fn leave(&mut self, now: Instant) {
        match &self.state {
            DaemonState::Leaving { .. } | DaemonState::Stopped => {}
            DaemonState::Registered { attempt, names }
            | DaemonState::Draining { attempt, names } => {
                let speaks_goodbye = self.protocol_version >= GOODBYE_SINCE_VERSION;
                self.state = DaemonState::Leaving {
                    attempt: *attempt,
                    names: names.clone(),
                    ack_deadline: speaks_goodbye.then(|| now + self.config.leave_timeout),
                };
                if speaks_goodbye {
                    self.events.push_back(DaemonEvent::Transmit(Frame::Leaving));
                } else {
                    self.events.push_back(DaemonEvent::Left {
                        acknowledged: false,
                    });
                }
            }
            DaemonState::Disconnected { .. } => {
                self.state = DaemonState::Stopped;
                self.events.push_back(DaemonEvent::Left {
                    acknowledged: false,
                });
            }
            DaemonState::Connecting { .. } | DaemonState::Registering { .. } => {
                self.state = DaemonState::Stopped;
                self.fail(now, DisconnectReason::ShuttingDown);
                self.events.push_back(DaemonEvent::Left {
                    acknowledged: false,
                });
            }
        }
    }

    /// Ends a pending goodbye once: reports it and stops waiting for the ack.
    fn end_goodbye(&mut self, acknowledged: bool) {
        if let DaemonState::Leaving { ack_deadline, .. } = &mut self.state {
            if ack_deadline.take().is_some() {
                self.events.push_back(DaemonEvent::Left { acknowledged });
            }
        }
    }

    /// Asks the relay to publish an ACME TXT record; the answer comes as
    /// [`DaemonEvent::AcmeChallengeResult`] with the returned id.
    pub fn request_acme_set(
        &mut self,
        name: String,
        txt_value: String,
    ) -> Result<u64, AcmeRequestError> {
        let request_id = self.reserve_acme_request()?;
        self.events
            .push_back(DaemonEvent::Transmit(Frame::AcmeChallengeSet(
                AcmeChallengeSet {
                    request_id,
                    name,
                    txt_value,
                },
            )));
        Ok(request_id)
    }

    /// Asks the relay to remove an ACME TXT record.
    pub fn request_acme_clear(&mut self, name: String) -> Result<u64, AcmeRequestError> {
        let request_id = self.reserve_acme_request()?;
        self.events
            .push_back(DaemonEvent::Transmit(Frame::AcmeChallengeClear(
                AcmeChallengeClear { request_id, name },
            )));
        Ok(request_id)
    }

    fn reserve_acme_request(&mut self) -> Result<u64, AcmeRequestError> {
        if !matches!(self.state, DaemonState::Registered { .. }) {
            return Err(AcmeRequestError::NotRegistered);
        }
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        self.pending_acme.insert(request_id);
        Ok(request_id)
    }

    fn on_registered(&mut self, attempt: ConnectionAttempt, now: Instant, registered: Registered) {
        if registered.protocol_version == 0 || registered.protocol_version > PROTOCOL_VERSION {
            self.violation(
                now,
                format!(
                    "relay chose protocol version {}, this daemon speaks 1..={PROTOCOL_VERSION}",
                    registered.protocol_version
                ),
            );
            return;
        }
        let interval = registered
            .heartbeat_interval()
            .max(self.config.min_heartbeat_interval);
        let names = RegisteredNames {
            node_name: registered.node_name,
            custom_name: registered.custom_name,
            custom_name_refusal: registered.custom_name_refusal,
            https_port: registered.https_port,
        };
        self.consecutive_failures = 0;
        self.protocol_version = registered.protocol_version;
        self.heartbeats = Some(Heartbeats {
            interval,
            next_send_at: now + interval,
            last_heard_at: now,
            last_sent_seq: 0,
            last_acked_seq: 0,
        });
        self.state = DaemonState::Registered {
            attempt,
            names: names.clone(),
        };
        self.events.push_back(DaemonEvent::Registered(names));
    }

    fn violation(&mut self, now: Instant, message: String) {
        self.events
            .push_back(DaemonEvent::Transmit(Frame::Error(ErrorFrame {
                code: ErrorCode::PROTOCOL_VIOLATION,
                message: message.clone(),
            })));
        self.fail(now, DisconnectReason::ProtocolViolation(message));
    }

    /// Ends the current connection and schedules the next attempt with backoff and full jitter.
    /// After [`DaemonSession::leave`] the session stops instead.
    fn fail(&mut self, now: Instant, reason: DisconnectReason) {
        // A connection lost during the goodbye ends it (the relay takes the names out when it
        // sees the connection go).
        self.end_goodbye(false);
        let stopping = matches!(
            self.state,
            DaemonState::Leaving { .. } | DaemonState::Stopped
        );
        for request_id in std::mem::take(&mut self.pending_acme) {
            self.events.push_back(DaemonEvent::AcmeChallengeResult {
                request_id,
                outcome: Err(format!("request abandoned: {reason}")),
            });
        }
        self.heartbeats = None;
        self.protocol_version = 0;
        if stopping {
            self.state = DaemonState::Stopped;
            self.events.push_back(DaemonEvent::Disconnected { reason });
            return;
        }
        let ceiling = self.backoff_ceiling();
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let delay = self.rng.duration_up_to(ceiling);
        self.state = DaemonState::Disconnected {
            next_attempt_at: now + delay,
        };
        self.events.push_back(DaemonEvent::Disconnected { reason });
    }

    /// The current ceiling of the reconnect delay (before jitter), for status displays.
    pub fn backoff_ceiling(&self) -> Duration {
        let exponent = self.consecutive_failures.min(31);
        self.config
            .backoff_base
            .saturating_mul(1u32 << exponent)
            .min(self.config.backoff_cap)
    }
}
