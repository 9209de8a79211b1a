//! Scripted event sequences for the daemon's relay session.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure
#![allow(clippy::disallowed_methods)] // tests take one real `Instant` to start simulated time from

use std::time::{Duration, Instant};

use gate_core::tunnel::{
    AcmeChallengeResult, AcmeRequestError, ConnectionAttempt, DaemonConfig, DaemonEvent,
    DaemonSession, DaemonState, DisconnectReason, ErrorCode, Frame, Register, Registered,
    RegisteredNames, PROTOCOL_VERSION,
};
use proptest::prelude::*;

const SECOND: Duration = Duration::from_secs(1);

fn config() -> DaemonConfig {
    DaemonConfig {
        daemon_version: "0.1.0".into(),
        custom_label: Some("home".into()),
        ..DaemonConfig::default()
    }
}

fn drain(session: &mut DaemonSession) -> Vec<DaemonEvent> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

fn registered_frame(interval_ms: u32) -> Frame {
    Frame::Registered(Registered {
        protocol_version: PROTOCOL_VERSION,
        node_name: "node.relay.test".into(),
        custom_name: Some("home.relay.test".into()),
        custom_name_refusal: None,
        heartbeat_interval_ms: interval_ms,
        https_port: Some(8443),
    })
}

fn names() -> RegisteredNames {
    RegisteredNames {
        node_name: "node.relay.test".into(),
        custom_name: Some("home.relay.test".into()),
        custom_name_refusal: None,
        https_port: Some(8443),
    }
}

/// Lets a fresh session connect: the first event is `Connect`, the connection succeeds, and
/// what the session then sends is dropped. Returns the attempt.
fn connect(session: &mut DaemonSession, now: Instant) -> ConnectionAttempt {
    session.handle_timeout(now);
    let Some(DaemonEvent::Connect(attempt)) = session.poll_event() else {
        panic!("expected Connect");
    };
    session.handle_connected(attempt, now);
    drain(session);
    attempt
}

/// Brings a fresh session to Registered with a 10 s heartbeat interval; returns the attempt.
fn register(session: &mut DaemonSession, now: Instant) -> ConnectionAttempt {
    session.handle_timeout(now);
    let events = drain(session);
    let [DaemonEvent::Connect(attempt)] = events[..] else {
        panic!("expected Connect, got {events:?}");
    };
    session.handle_connected(attempt, now);
    assert_eq!(
        drain(session),
        [DaemonEvent::Transmit(Frame::Register(Register {
            protocol_version: PROTOCOL_VERSION,
            daemon_version: "0.1.0".into(),
            custom_label: Some("home".into()),
            token: None,
        }))]
    );
    session.handle_frame(attempt, now, registered_frame(10_000));
    assert_eq!(drain(session), [DaemonEvent::Registered(names())]);
    attempt
}

#[test]
fn connects_immediately_registers_and_heartbeats() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 7, t0);
    assert_eq!(session.poll_timeout(), Some(t0));
    let attempt = register(&mut session, t0);
    assert_eq!(session.names(), Some(&names()));
    assert_eq!(session.poll_timeout(), Some(t0 + 10 * SECOND));

    // Nothing happens before the interval.
    session.handle_timeout(t0 + 9 * SECOND);
    assert_eq!(drain(&mut session), []);

    session.handle_timeout(t0 + 10 * SECOND);
    assert_eq!(
        drain(&mut session),
        [DaemonEvent::Transmit(Frame::Heartbeat { seq: 1 })]
    );
    session.handle_frame(attempt, t0 + 11 * SECOND, Frame::HeartbeatAck { seq: 1 });
    session.handle_timeout(t0 + 20 * SECOND);
    assert_eq!(
        drain(&mut session),
        [DaemonEvent::Transmit(Frame::Heartbeat { seq: 2 })]
    );
    assert!(matches!(session.state(), DaemonState::Registered { .. }));
}

#[test]
fn missed_acks_declare_the_connection_dead_and_reconnect() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 7, t0);
    let attempt = register(&mut session, t0);
    // Heartbeats at 10 s and 20 s go unanswered; 3 intervals after registration it is dead.
    session.handle_timeout(t0 + 10 * SECOND);
    session.handle_timeout(t0 + 20 * SECOND);
    assert_eq!(drain(&mut session).len(), 2);
    session.handle_timeout(t0 + 30 * SECOND);
    assert_eq!(
        drain(&mut session),
        [DaemonEvent::Disconnected {
            reason: DisconnectReason::HeartbeatTimeout
        }]
    );
    let DaemonState::Disconnected { next_attempt_at } = *session.state() else {
        panic!("expected Disconnected");
    };
    // First failure: full jitter within [0, base].
    assert!(next_attempt_at <= t0 + 30 * SECOND + SECOND);
    // Stale reports about the dead connection are ignored.
    session.handle_connection_lost(attempt, t0 + 30 * SECOND, "late".into());
    session.handle_frame(attempt, t0 + 30 * SECOND, Frame::HeartbeatAck { seq: 1 });
    assert_eq!(drain(&mut session), []);
    session.handle_timeout(next_attempt_at);
    let events = drain(&mut session);
    assert!(
        matches!(events[..], [DaemonEvent::Connect(next)] if next != attempt),
        "{events:?}"
    );
}

#[test]
fn backoff_grows_to_the_cap_with_full_jitter() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 42, t0);
    let mut now = t0;
    let mut ceilings = Vec::new();
    for _ in 0..10 {
        session.handle_timeout(now);
        let events = drain(&mut session);
        let [DaemonEvent::Connect(attempt)] = events[..] else {
            panic!("expected Connect, got {events:?}");
        };
        ceilings.push(session.backoff_ceiling());
        session.handle_connect_failed(attempt, now, "refused".into());
        let DaemonState::Disconnected { next_attempt_at } = *session.state() else {
            panic!("expected Disconnected");
        };
        let delay = next_attempt_at - now;
        assert!(
            delay <= *ceilings.last().unwrap(),
            "{delay:?} over {ceilings:?}"
        );
        assert_eq!(
            drain(&mut session),
            [DaemonEvent::Disconnected {
                reason: DisconnectReason::ConnectFailed("refused".into())
            }]
        );
        now = next_attempt_at;
    }
    let secs: Vec<u64> = ceilings.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
}

#[test]
fn same_seed_same_schedule_different_seed_different_schedule() {
    fn schedule(seed: u64) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut session = DaemonSession::new(config(), seed, t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..6 {
            session.handle_timeout(now);
            let Some(DaemonEvent::Connect(attempt)) = session.poll_event() else {
                panic!("expected Connect");
            };
            session.handle_connect_failed(attempt, now, "x".into());
            let DaemonState::Disconnected { next_attempt_at } = *session.state() else {
                panic!("expected Disconnected");
            };
            delays.push(next_attempt_at - now);
            now = next_attempt_at;
            drain(&mut session);
        }
        delays
    }
    assert_eq!(schedule(1), schedule(1));
    assert_ne!(schedule(1), schedule(2));
}

#[test]
fn refusal_is_reported_then_retried_with_backoff() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 3, t0);
    let attempt = connect(&mut session, t0);
    session.handle_frame(
        attempt,
        t0,
        Frame::Refused {
            reason: "unsupported protocol version".into(),
        },
    );
    assert_eq!(
        drain(&mut session),
        [
            DaemonEvent::Refused {
                reason: "unsupported protocol version".into()
            },
            DaemonEvent::Disconnected {
                reason: DisconnectReason::Refused("unsupported protocol version".into())
            }
        ]
    );
    assert!(matches!(session.state(), DaemonState::Disconnected { .. }));
}

#[test]
fn connect_and_registration_time_out() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 3, t0);
    session.handle_timeout(t0);
    drain(&mut session);
    assert_eq!(session.poll_timeout(), Some(t0 + 10 * SECOND));
    session.handle_timeout(t0 + 10 * SECOND);
    assert_eq!(
        drain(&mut session),
        [DaemonEvent::Disconnected {
            reason: DisconnectReason::ConnectTimeout
        }]
    );
    let DaemonState::Disconnected { next_attempt_at } = *session.state() else {
        panic!("expected Disconnected");
    };
    session.handle_timeout(next_attempt_at);
    let Some(DaemonEvent::Connect(attempt)) = session.poll_event() else {
        panic!("expected Connect");
    };
    session.handle_connected(attempt, next_attempt_at);
    drain(&mut session);
    session.handle_timeout(next_attempt_at + 10 * SECOND);
    assert_eq!(
        drain(&mut session),
        [DaemonEvent::Disconnected {
            reason: DisconnectReason::RegistrationTimeout
        }]
    );
}

/// A version 1 relay answers a version 2 daemon with version 1 and no port: the daemon
/// registers all the same and knows the port was not announced (it assumes 443).
#[test]
fn a_version_1_relay_is_accepted_without_a_port() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 3, t0);
    let attempt = connect(&mut session, t0);
    session.handle_frame(
        attempt,
        t0,
        Frame::Registered(Registered {
            protocol_version: 1,
            node_name: "node.relay.test".into(),
            custom_name: Some("home.relay.test".into()),
            custom_name_refusal: None,
            heartbeat_interval_ms: 10_000,
            https_port: None,
        }),
    );
    assert_eq!(
        drain(&mut session),
        [DaemonEvent::Registered(RegisteredNames {
            https_port: None,
            ..names()
        })]
    );
    assert!(matches!(session.state(), DaemonState::Registered { .. }));
}

#[test]
fn custom_name_refusal_keeps_the_node_name() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 3, t0);
    let attempt = connect(&mut session, t0);
    session.handle_frame(
        attempt,
        t0,
        Frame::Registered(Registered {
            protocol_version: PROTOCOL_VERSION,
            node_name: "node.relay.test".into(),
            custom_name: None,
            custom_name_refusal: Some("label `home` belongs to another node".into()),
            heartbeat_interval_ms: 5_000,
            https_port: None,
        }),
    );
    assert_eq!(
        drain(&mut session),
        [DaemonEvent::Registered(RegisteredNames {
            node_name: "node.relay.test".into(),
            custom_name: None,
            custom_name_refusal: Some("label `home` belongs to another node".into()),
            https_port: None,
        })]
    );
}

#[test]
fn drain_then_loss_reconnects_quickly() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 9, t0);
    let attempt = register(&mut session, t0);
    session.handle_frame(attempt, t0 + SECOND, Frame::Drain);
    assert_eq!(drain(&mut session), [DaemonEvent::Draining]);
    assert_eq!(
        session.request_acme_set("_acme-challenge.node.relay.test".into(), "v".into()),
        Err(AcmeRequestError::NotRegistered)
    );
    session.handle_connection_lost(attempt, t0 + 2 * SECOND, "closed by relay".into());
    assert_eq!(
        drain(&mut session),
        [DaemonEvent::Disconnected {
            reason: DisconnectReason::ConnectionLost("closed by relay".into())
        }]
    );
    let DaemonState::Disconnected { next_attempt_at } = *session.state() else {
        panic!("expected Disconnected");
    };
    assert!(next_attempt_at <= t0 + 3 * SECOND);
}

#[test]
fn acme_requests_are_answered_or_abandoned_on_loss() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 9, t0);
    let attempt = register(&mut session, t0);
    let first = session
        .request_acme_set("_acme-challenge.home.relay.test".into(), "token".into())
        .unwrap();
    let second = session
        .request_acme_clear("_acme-challenge.home.relay.test".into())
        .unwrap();
    assert_ne!(first, second);
    assert_eq!(drain(&mut session).len(), 2);
    session.handle_frame(
        attempt,
        t0,
        Frame::AcmeChallengeResult(AcmeChallengeResult {
            request_id: first,
            outcome: Ok(()),
        }),
    );
    assert_eq!(
        drain(&mut session),
        [DaemonEvent::AcmeChallengeResult {
            request_id: first,
            outcome: Ok(())
        }]
    );
    session.handle_connection_lost(attempt, t0, "reset".into());
    let events = drain(&mut session);
    assert!(matches!(
        &events[..],
        [
            DaemonEvent::AcmeChallengeResult { request_id, outcome: Err(_) },
            DaemonEvent::Disconnected { .. }
        ] if *request_id == second
    ));
}

#[test]
fn unexpected_frames_are_protocol_violations() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 9, t0);
    let attempt = register(&mut session, t0);
    session.handle_frame(attempt, t0, Frame::HeartbeatAck { seq: 99 });
    let events = drain(&mut session);
    assert!(matches!(
        &events[..],
        [
            DaemonEvent::Transmit(Frame::Error(e)),
            DaemonEvent::Disconnected { reason: DisconnectReason::ProtocolViolation(_) }
        ] if e.code == ErrorCode::PROTOCOL_VIOLATION
    ));
}

#[test]
fn newer_protocol_version_in_registered_is_rejected() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 9, t0);
    let attempt = connect(&mut session, t0);
    let Frame::Registered(mut registered) = registered_frame(1000) else {
        unreachable!()
    };
    registered.protocol_version = PROTOCOL_VERSION + 1;
    session.handle_frame(attempt, t0, Frame::Registered(registered));
    assert!(matches!(
        drain(&mut session).last(),
        Some(DaemonEvent::Disconnected {
            reason: DisconnectReason::ProtocolViolation(_)
        })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every reconnect delay lies within the full-jitter window [0, min(cap, base * 2^n)].
    #[test]
    fn reconnect_delays_stay_within_the_jitter_window(seed in any::<u64>(), failures in 1usize..20) {
        let t0 = Instant::now();
        let mut session = DaemonSession::new(config(), seed, t0);
        let mut now = t0;
        for n in 0..failures {
            session.handle_timeout(now);
            let Some(DaemonEvent::Connect(attempt)) = session.poll_event() else {
                return Err(TestCaseError::fail("expected Connect"));
            };
            let ceiling = Duration::from_secs(1u64 << n.min(20)).min(Duration::from_secs(60));
            session.handle_connect_failed(attempt, now, "x".into());
            let DaemonState::Disconnected { next_attempt_at } = *session.state() else {
                return Err(TestCaseError::fail("expected Disconnected"));
            };
            prop_assert!(next_attempt_at - now <= ceiling);
            prop_assert_eq!(session.poll_timeout(), Some(next_attempt_at));
            now = next_attempt_at;
            drain(&mut session);
        }
    }
}

#[derive(Debug, Clone)]
enum Input {
    Advance(u64),
    Connected(u64),
    ConnectFailed(u64),
    Lost(u64),
    Frame(u64, Frame),
    AcmeSet,
}

fn relay_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (0u32..20_000).prop_map(registered_frame),
        Just(Frame::Refused {
            reason: "no".into()
        }),
        (0u64..6).prop_map(|seq| Frame::HeartbeatAck { seq }),
        Just(Frame::Drain),
        (0u64..4).prop_map(
            |request_id| Frame::AcmeChallengeResult(AcmeChallengeResult {
                request_id,
                outcome: Ok(())
            })
        ),
        Just(Frame::Heartbeat { seq: 1 }),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        3 => (0u64..70_000).prop_map(Input::Advance),
        2 => (0u64..3).prop_map(Input::Connected),
        1 => (0u64..3).prop_map(Input::ConnectFailed),
        1 => (0u64..3).prop_map(Input::Lost),
        3 => ((0u64..3), relay_frame()).prop_map(|(a, f)| Input::Frame(a, f)),
        1 => Just(Input::AcmeSet),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever the runtime and the relay do, the session never panics, always has a next
    /// deadline (it cannot wedge), never schedules a reconnect beyond the backoff cap, and every
    /// frame it transmits is encodable.
    #[test]
    fn random_inputs_never_wedge_the_daemon(seed in any::<u64>(), inputs in proptest::collection::vec(input(), 1..80)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut session = DaemonSession::new(config(), seed, t0);
        let mut last_attempt = 0u64;
        for input in inputs {
            // The attempt offsets pick the latest attempt or an older (stale) one.
            let pick = |back: u64| ConnectionAttempt(last_attempt.saturating_sub(back));
            match input {
                Input::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    if session.poll_timeout().is_some_and(|t| t <= now) {
                        session.handle_timeout(now);
                    }
                }
                Input::Connected(back) => session.handle_connected(pick(back), now),
                Input::ConnectFailed(back) => session.handle_connect_failed(pick(back), now, "x".into()),
                Input::Lost(back) => session.handle_connection_lost(pick(back), now, "x".into()),
                Input::Frame(back, frame) => session.handle_frame(pick(back), now, frame),
                Input::AcmeSet => {
                    let registered = matches!(session.state(), DaemonState::Registered { .. });
                    let result = session.request_acme_set("_acme-challenge.x".into(), "v".into());
                    prop_assert_eq!(result.is_ok(), registered);
                }
            }
            while let Some(event) = session.poll_event() {
                match event {
                    DaemonEvent::Connect(attempt) => {
                        prop_assert!(attempt.0 > last_attempt);
                        last_attempt = attempt.0;
                    }
                    DaemonEvent::Transmit(frame) => {
                        prop_assert!(frame.to_bytes().is_ok());
                    }
                    _ => {}
                }
            }
            let deadline = session.poll_timeout();
            prop_assert!(deadline.is_some(), "no deadline in {:?}", session.state());
            if let DaemonState::Disconnected { next_attempt_at } = session.state() {
                prop_assert!(*next_attempt_at <= now + Duration::from_secs(60));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever happens around it, a goodbye ends: `Left` is reported exactly once, within the
    /// leave timeout, no connection is attempted after `leave`, and `Leaving` goes out only on
    /// a connection that negotiated version 3.
    #[test]
    fn a_goodbye_always_ends_and_never_reconnects(
        seed in any::<u64>(),
        inputs in proptest::collection::vec(input(), 1..60),
        leave_at in 0usize..60,
        also_leaving_ack in any::<bool>(),
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut session = DaemonSession::new(config(), seed, t0);
        let mut last_attempt = 0u64;
        let mut left_at: Option<Instant> = None;
        let mut lefts = 0;
        let mut inputs: Vec<Option<Input>> = inputs.into_iter().map(Some).collect();
        let leave_at = leave_at.min(inputs.len());
        inputs.insert(leave_at, None);
        for input in inputs {
            let pick = |back: u64| ConnectionAttempt(last_attempt.saturating_sub(back));
            match input {
                None => {
                    session.leave(now);
                    left_at = Some(now);
                }
                Some(Input::Advance(ms)) => {
                    now += Duration::from_millis(ms);
                    if session.poll_timeout().is_some_and(|t| t <= now) {
                        session.handle_timeout(now);
                    }
                }
                Some(Input::Connected(back)) => session.handle_connected(pick(back), now),
                Some(Input::ConnectFailed(back)) => session.handle_connect_failed(pick(back), now, "x".into()),
                Some(Input::Lost(back)) => session.handle_connection_lost(pick(back), now, "x".into()),
                Some(Input::Frame(back, frame)) => {
                    let frame = match frame {
                        Frame::Drain if also_leaving_ack => Frame::LeavingAck,
                        other => other,
                    };
                    session.handle_frame(pick(back), now, frame);
                }
                Some(Input::AcmeSet) => {
                    let _ = session.request_acme_set("_acme-challenge.x".into(), "v".into());
                }
            }
            while let Some(event) = session.poll_event() {
                match event {
                    DaemonEvent::Connect(attempt) => {
                        prop_assert!(left_at.is_none(), "connect after leave");
                        last_attempt = attempt.0;
                    }
                    DaemonEvent::Left { .. } => {
                        prop_assert!(left_at.is_some());
                        lefts += 1;
                    }
                    DaemonEvent::Transmit(Frame::Leaving) => {
                        prop_assert!(left_at.is_some());
                    }
                    _ => {}
                }
            }
            if let Some(at) = left_at {
                if now >= at + Duration::from_secs(2) {
                    prop_assert_eq!(lefts, 1, "goodbye not over 2 s after leave, in {:?}", session.state());
                }
                prop_assert!(lefts <= 1);
                let over = matches!(
                    session.state(),
                    DaemonState::Leaving { .. } | DaemonState::Stopped
                );
                prop_assert!(over, "state after leave: {:?}", session.state());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The goodbye (protocol version 3)
// ---------------------------------------------------------------------------------------------

fn registered_frame_v(protocol_version: u16) -> Frame {
    let Frame::Registered(mut registered) = registered_frame(10_000) else {
        unreachable!()
    };
    registered.protocol_version = protocol_version;
    if protocol_version < 2 {
        registered.https_port = None;
    }
    Frame::Registered(registered)
}

#[test]
fn leave_sends_the_goodbye_and_reports_the_ack_without_reconnecting() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 7, t0);
    let attempt = register(&mut session, t0);
    session.leave(t0 + SECOND);
    assert_eq!(drain(&mut session), [DaemonEvent::Transmit(Frame::Leaving)]);
    assert!(matches!(session.state(), DaemonState::Leaving { .. }));
    // No ACME requests while leaving; a second leave changes nothing.
    assert!(session.request_acme_set("a".into(), "b".into()).is_err());
    session.leave(t0 + SECOND);
    assert_eq!(drain(&mut session), []);
    assert_eq!(session.poll_timeout(), Some(t0 + 3 * SECOND));

    session.handle_frame(attempt, t0 + 2 * SECOND, Frame::LeavingAck);
    assert_eq!(
        drain(&mut session),
        [DaemonEvent::Left { acknowledged: true }]
    );
    // Heartbeats go on so open streams can finish.
    assert_eq!(session.poll_timeout(), Some(t0 + 10 * SECOND));
    session.handle_timeout(t0 + 10 * SECOND);
    assert_eq!(
        drain(&mut session),
        [DaemonEvent::Transmit(Frame::Heartbeat { seq: 1 })]
    );
    // A late repeated ack is ignored.
    session.handle_frame(attempt, t0 + 11 * SECOND, Frame::LeavingAck);
    assert_eq!(drain(&mut session), []);

    // Once the connection ends the session stops for good.
    session.handle_connection_lost(attempt, t0 + 12 * SECOND, "closed".into());
    let events = drain(&mut session);
    assert!(matches!(
        &events[..],
        [DaemonEvent::Disconnected {
            reason: DisconnectReason::ConnectionLost(_)
        }]
    ));
    assert_eq!(session.state(), &DaemonState::Stopped);
    assert_eq!(session.poll_timeout(), None);
    session.handle_timeout(t0 + 100 * SECOND);
    assert_eq!(drain(&mut session), []);
}

#[test]
fn an_unanswered_goodbye_ends_after_the_leave_timeout() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 7, t0);
    register(&mut session, t0);
    session.leave(t0);
    drain(&mut session);
    session.handle_timeout(t0 + SECOND);
    assert_eq!(drain(&mut session), []);
    session.handle_timeout(t0 + 2 * SECOND);
    assert_eq!(
        drain(&mut session),
        [DaemonEvent::Left {
            acknowledged: false
        }]
    );
}

/// A relay that agreed on version 2 would reject the unknown frame: no `Leaving` is sent, the
/// goodbye is over at once (closing the connection is that relay's goodbye).
#[test]
fn no_goodbye_frame_goes_to_a_version_2_relay() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 7, t0);
    let attempt = connect(&mut session, t0);
    session.handle_frame(attempt, t0, registered_frame_v(2));
    drain(&mut session);
    session.leave(t0);
    assert_eq!(
        drain(&mut session),
        [DaemonEvent::Left {
            acknowledged: false
        }]
    );
    assert!(matches!(session.state(), DaemonState::Leaving { .. }));
}

#[test]
fn leave_without_a_registration_stops_the_session() {
    let t0 = Instant::now();
    // Disconnected: stops, never connects.
    let mut idle = DaemonSession::new(config(), 7, t0);
    idle.leave(t0);
    assert_eq!(
        drain(&mut idle),
        [DaemonEvent::Left {
            acknowledged: false
        }]
    );
    idle.handle_timeout(t0 + SECOND);
    assert_eq!(drain(&mut idle), []);
    assert_eq!(idle.state(), &DaemonState::Stopped);

    // Registering: the connection is reported over, then the goodbye.
    let mut registering = DaemonSession::new(config(), 7, t0);
    let attempt = connect(&mut registering, t0);
    registering.leave(t0);
    assert_eq!(
        drain(&mut registering),
        [
            DaemonEvent::Disconnected {
                reason: DisconnectReason::ShuttingDown
            },
            DaemonEvent::Left {
                acknowledged: false
            }
        ]
    );
    registering.handle_frame(attempt, t0, registered_frame(10_000));
    assert_eq!(drain(&mut registering), []);
}

#[test]
fn an_ack_without_a_goodbye_is_a_protocol_violation() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 7, t0);
    let attempt = register(&mut session, t0);
    session.handle_frame(attempt, t0, Frame::LeavingAck);
    assert!(matches!(
        drain(&mut session).last(),
        Some(DaemonEvent::Disconnected {
            reason: DisconnectReason::ProtocolViolation(_)
        })
    ));
}

#[test]
fn undecodable_and_unencodable_frames_end_the_connection_with_a_reason() {
    let t0 = Instant::now();
    let mut session = DaemonSession::new(config(), 7, t0);
    let attempt = register(&mut session, t0);
    session.handle_undecodable(attempt, t0, gate_core::tunnel::FrameError::EmptyFrame);
    let events = drain(&mut session);
    assert!(matches!(
        &events[0],
        DaemonEvent::Transmit(Frame::Error(e)) if e.code == ErrorCode::PROTOCOL_VIOLATION
    ));
    assert!(matches!(
        events.last(),
        Some(DaemonEvent::Disconnected { reason: DisconnectReason::ProtocolViolation(m) }) if m.contains("undecodable")
    ));

    let mut session = DaemonSession::new(config(), 7, t0);
    let attempt = register(&mut session, t0);
    let error = gate_core::tunnel::EncodeError::StringTooLong {
        field: "custom_label",
        len: 70_000,
    };
    session.handle_encode_failed(attempt, t0, error);
    let events = drain(&mut session);
    assert!(matches!(
        &events[0],
        DaemonEvent::Transmit(Frame::Error(e)) if e.code == ErrorCode::INTERNAL
    ));
    assert!(matches!(
        events.last(),
        Some(DaemonEvent::Disconnected { reason: DisconnectReason::EncodeFailed(m) }) if m.contains("custom_label")
    ));
    // It reconnects later, as after any failure.
    assert!(matches!(session.state(), DaemonState::Disconnected { .. }));
}

/// The token goes in `Register`; a relay older than tokens answers the unreadable `Register`
/// with a protocol violation, which the daemon reports as a refusal that says why and what to
/// do. Without a token, an `Error` stays an informational relay error.
#[test]
fn a_token_is_sent_and_an_old_relays_protocol_error_is_explained() {
    use gate_core::config::Secret;
    let t0 = Instant::now();
    let mut session = DaemonSession::new(
        DaemonConfig {
            token: Some(Secret::new("team-secret-0123456789")),
            ..config()
        },
        7,
        t0,
    );
    session.handle_timeout(t0);
    let Some(DaemonEvent::Connect(attempt)) = session.poll_event() else {
        panic!("expected Connect");
    };
    session.handle_connected(attempt, t0);
    let sent = drain(&mut session);
    assert!(
        matches!(&sent[..], [DaemonEvent::Transmit(Frame::Register(r))]
            if r.token.as_ref().map(Secret::expose) == Some("team-secret-0123456789")
                && r.protocol_version == PROTOCOL_VERSION),
        "{sent:?}"
    );
    session.handle_frame(
        attempt,
        t0,
        Frame::Error(gate_core::tunnel::ErrorFrame {
            code: ErrorCode::PROTOCOL_VIOLATION,
            message: "undecodable control frame: 24 trailing bytes after frame type 0x01".into(),
        }),
    );
    let events = drain(&mut session);
    let reason = events
        .iter()
        .find_map(|e| match e {
            DaemonEvent::Refused { reason } => Some(reason.clone()),
            _ => None,
        })
        .expect("reported as a refusal");
    assert!(
        reason.contains("relays older than tunnel protocol 4 do not take registration tokens")
            && reason.contains("relay.token")
            && reason.contains("trailing bytes"),
        "{reason}"
    );
    assert!(!reason.contains("team-secret"), "{reason}");
    assert!(
        events.iter().any(|e| matches!(
            e,
            DaemonEvent::Disconnected {
                reason: DisconnectReason::Refused(_),
                ..
            }
        )),
        "{events:?}"
    );
}
