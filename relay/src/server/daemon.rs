//! The daemon path: accepting daemon QUIC connections within the limit, checking the peer's
//! node certificate, and driving each connection's [`RelaySession`] with the shared
//! control-stream driver ([`gate_rt::tunnel::driver`]); ACME TXT requests are carried out in
//! tasks of their own so a slow DNS provider never blocks a session.
//!
//! Must not: make protocol decisions (the session in `gate_core::tunnel::relay` does).

use super::*;

/// The answer to a daemon's ACME TXT request when `dns.enabled` is false.
pub(super) const DNS_DISABLED: &str = "DNS provider not configured on this relay";

/// ACME requests of one daemon connection being carried out at once; further ones are refused
/// until one finishes (keeps a daemon from flooding the DNS provider).
pub(super) const MAX_ACME_IN_FLIGHT: usize = 16;

pub(super) async fn accept_daemons<R: Runtime>(
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
        let remote = incoming.remote_address();
        let Some(refusal) = registration_throttle(&shared, remote) else {
            incoming.refuse();
            continue;
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
            refusal,
            slot,
            running.clone(),
        ));
    }
    drop(running);
}

/// The registration throttle's decision for a daemon connection from `remote`, over either
/// transport: `None` drops the connection before its handshake (far over the limit),
/// `Some(Some(message))` lets it connect only to be refused with `message`, `Some(None)`
/// admits it.
pub(super) fn registration_throttle(
    shared: &Shared,
    remote: std::net::SocketAddr,
) -> Option<Option<String>> {
    let per_minute = shared.settings.limits.max_registrations_per_ip_per_minute;
    let throttled = lock(&shared.registrations).attempt(remote.ip(), Instant::now());
    match throttled {
        Throttle::Admit => Some(None),
        Throttle::Refuse { retry_after } => {
            tracing::info!(%remote, "too many registrations from this address; refusing the registration");
            Some(Some(throttle_message(per_minute, retry_after)))
        }
        Throttle::Drop => {
            tracing::debug!(%remote, "far too many registrations from this address; dropping the connection");
            None
        }
    }
}

/// The ACME TXT records the relay writes for its daemons.
pub(super) type AcmeRecords<R> = ChallengeRecords<R, Cloudflare<R>>;

/// The answer to a daemon's ACME TXT request: request id and outcome for `complete_acme`.
pub(super) type AcmeAnswer = (u64, Result<(), String>);

/// One of a daemon connection's [`MAX_ACME_IN_FLIGHT`] places for ACME requests being carried
/// out; given back when dropped.
pub(super) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(super) fn take(counter: &Arc<AtomicUsize>) -> Option<Self> {
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

/// How long a closing daemon connection waits for its last control frames to be
/// acknowledged.
const FLUSH_BEFORE_CLOSE: Duration = Duration::from_secs(1);

pub(super) async fn serve_daemon<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    dns: AcmeRecords<R>,
    incoming: quinn::Incoming,
    refusal: Option<String>,
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
    let id = shared.add_session(
        node_id.clone(),
        DaemonLink::Quic(connection.clone()),
        remote,
    );
    if let Some(reason) = refusal {
        shared.with_session(id, |session, _| session.refuse_registration(reason));
    }
    let owner = node_id.to_string();
    let outcome = drive_daemon(&rt, &shared, &dns, &owner, id, Some(&connection), None).await;
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

pub(super) enum DaemonOutcome {
    Shutdown,
    Closed(String),
}

/// Drives one daemon connection's control stream with the shared driver until it ends.
pub(super) async fn drive_daemon<R: Runtime>(
    rt: &R,
    shared: &Arc<Shared>,
    dns: &AcmeRecords<R>,
    owner: &str,
    id: u64,
    connection: Option<&quinn::Connection>,
    control: Option<ControlStream>,
) -> DaemonOutcome {
    // Finished ACME requests come back here; the end keeps a sender, so `recv` never fails.
    // At most MAX_ACME_IN_FLIGHT answers are ever queued.
    let (acme_done, acme_answers) = async_channel::bounded::<AcmeAnswer>(MAX_ACME_IN_FLIGHT);
    // A session asks the claim store at most once (its registration).
    let (claim_done, claim_verdicts) = async_channel::bounded::<SharedClaim>(1);
    let mut end = RelayEnd {
        rt,
        shared,
        dns,
        owner,
        id,
        connection,
        acme_done,
        acme_answers,
        claim_done,
        claim_verdicts,
        acme_in_flight: Arc::new(AtomicUsize::new(0)),
        lost: None,
        outcome: None,
    };
    let mut control = control;
    driver::drive(rt, &mut end, &mut control).await;
    if let Some(stream) = control.as_mut() {
        stream.finish();
        // The last frames (a `Refused` saying why, an `Error`) reach the daemon before the
        // caller closes the connection, which would discard them; bounded.
        let _ = gate_rt::timeout(rt, FLUSH_BEFORE_CLOSE, stream.flushed()).await;
    }
    end.outcome
        .unwrap_or_else(|| DaemonOutcome::Closed("the control stream ended".to_owned()))
}

/// What wakes a daemon connection's task besides its timer and control stream.
pub(super) enum DaemonInput {
    Shutdown,
    AcmeDone(AcmeAnswer),
    ClaimDone(SharedClaim),
    ControlOpened(Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>),
}

/// The relay's end of the control-stream driver for one daemon connection: the
/// [`RelaySession`] (inside the shared routing state), DNS work, and the outcome.
pub(super) struct RelayEnd<'a, R: Runtime> {
    pub(super) rt: &'a R,
    pub(super) shared: &'a Arc<Shared>,
    pub(super) dns: &'a AcmeRecords<R>,
    pub(super) owner: &'a str,
    pub(super) id: u64,
    /// The QUIC connection the control stream is accepted on; `None` for a tunnel over TCP,
    /// whose control stream exists from the start.
    pub(super) connection: Option<&'a quinn::Connection>,
    pub(super) acme_done: async_channel::Sender<AcmeAnswer>,
    pub(super) acme_answers: async_channel::Receiver<AcmeAnswer>,
    pub(super) acme_in_flight: Arc<AtomicUsize>,
    /// The shared claim store's verdict comes back here from its task.
    pub(super) claim_done: async_channel::Sender<SharedClaim>,
    pub(super) claim_verdicts: async_channel::Receiver<SharedClaim>,
    /// How the control stream was lost, for the log (the session only says "connection lost").
    pub(super) lost: Option<String>,
    pub(super) outcome: Option<DaemonOutcome>,
}

impl<R: Runtime> RelayEnd<'_, R> {
    pub(super) fn session<T>(
        &self,
        f: impl FnOnce(&mut RelaySession, &mut RelayNameTable) -> T,
    ) -> Option<T> {
        self.shared.with_session(self.id, f)
    }

    pub(super) fn complete_acme(&self, request_id: u64, outcome: Result<(), String>) {
        self.session(|s, _| s.complete_acme(request_id, outcome));
    }

    pub(super) fn start_dns(&self, event: RelayEvent) {
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
        let claim = async {
            match self.claim_verdicts.recv().await {
                Ok(verdict) => DaemonInput::ClaimDone(verdict),
                Err(_) => std::future::pending().await,
            }
        };
        let opened = async move {
            match self.connection {
                Some(connection) if !has_control => {
                    DaemonInput::ControlOpened(connection.accept_bi().await)
                }
                _ => std::future::pending().await,
            }
        };
        futures_lite::future::or(
            shutdown,
            futures_lite::future::or(acme, futures_lite::future::or(claim, opened)),
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
                // Tell the daemon (the Drain frame is written before the driver stops).
                self.session(|s, _| s.start_drain());
                self.outcome = Some(DaemonOutcome::Shutdown);
                Flow::Stop
            }
            DaemonInput::AcmeDone((request_id, outcome)) => {
                self.complete_acme(request_id, outcome);
                Flow::Continue
            }
            DaemonInput::ClaimDone(verdict) => {
                self.session(|s, names| s.complete_claim(now, unix_now(), verdict, names));
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
        if let RelayEvent::DnsSet {
            request_id, name, ..
        } = &event
        {
            if let Err(why) = shared.count_acme_request(self.id) {
                tracing::info!(node = %self.owner, record = %name, "ACME request refused: {why}");
                let request_id = *request_id;
                self.session(|s, _| s.refuse_acme(request_id, why));
                return Flow::Continue;
            }
        }
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
            RelayEvent::CheckClaim { label, token } => {
                // Asked in a task of its own (bounded by CLAIM_CHECK_LIMIT), like DNS work:
                // the connection's loop goes on; the registration waits in the session.
                let node_id = self.session(|s, _| s.node_id().clone());
                if let Some(node_id) = node_id {
                    let shared = shared.clone();
                    let done = self.claim_done.clone();
                    self.rt.spawn(async move {
                        let verdict = match &shared.claim_store {
                            Some(store) => {
                                store
                                    .claim(&label, &node_id, token.as_deref(), unix_now())
                                    .await
                            }
                            None => {
                                SharedClaim::Unavailable("this relay has no claim store".to_owned())
                            }
                        };
                        // The connection may be gone; then nobody waits for it.
                        let _ = done.send(verdict).await;
                    });
                }
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
