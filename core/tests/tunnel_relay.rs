//! Scripted event sequences for the relay's per-daemon session.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure
#![allow(clippy::disallowed_methods)] // tests take one real `Instant` to start simulated time from

use std::time::{Duration, Instant};

use gate_core::tunnel::{
    decode_frame, AcmeChallengeClear, AcmeChallengeResult, AcmeChallengeSet, CloseReason,
    ErrorCode, Frame, NameTableConfig, NodeId, Register, RelayConfig, RelayEvent, RelayNameTable,
    RelaySession, RelayState, SharedClaim, StreamHeader, StreamRefusal, DEFAULT_MAX_FRAME_LEN,
    PROTOCOL_VERSION,
};

const SECOND: Duration = Duration::from_secs(1);

fn node(c: char) -> NodeId {
    NodeId::parse(&c.to_string().repeat(52)).unwrap()
}

fn table() -> RelayNameTable {
    RelayNameTable::new(NameTableConfig::new("relay.test").unwrap())
}

fn drain(session: &mut RelaySession) -> Vec<RelayEvent> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

fn register_frame(label: Option<&str>) -> Frame {
    Frame::Register(Register {
        protocol_version: PROTOCOL_VERSION,
        daemon_version: "0.1.0".into(),
        custom_label: label.map(str::to_owned),
        token: None,
    })
}

fn registered_session(
    names: &mut RelayNameTable,
    id: char,
    label: Option<&str>,
    now: Instant,
) -> RelaySession {
    let mut session = RelaySession::new(node(id), RelayConfig::default(), now);
    session.handle_frame(now, 1000, register_frame(label), names);
    drain(&mut session);
    session
}

#[test]
fn registration_grants_names_and_answers_heartbeats() {
    let t0 = Instant::now();
    let mut names = table();
    let mut session = RelaySession::new(node('a'), RelayConfig::default(), t0);
    assert_eq!(session.poll_timeout(), Some(t0 + 10 * SECOND));
    session.handle_frame(t0, 1000, register_frame(Some("home")), &mut names);
    let events = drain(&mut session);
    let [RelayEvent::Transmit(Frame::Registered(registered)), RelayEvent::Registered(grant)] =
        &events[..]
    else {
        panic!("unexpected {events:?}");
    };
    assert_eq!(registered.protocol_version, PROTOCOL_VERSION);
    assert_eq!(registered.node_name, format!("{}.relay.test", node('a')));
    assert_eq!(registered.custom_name.as_deref(), Some("home.relay.test"));
    assert_eq!(registered.heartbeat_interval_ms, 15_000);
    assert_eq!(grant.custom_name.as_deref(), Some("home.relay.test"));
    assert_eq!(names.lookup("home.relay.test"), Some(node('a')));

    session.handle_frame(
        t0 + 15 * SECOND,
        1015,
        Frame::Heartbeat { seq: 1 },
        &mut names,
    );
    assert_eq!(
        drain(&mut session),
        [RelayEvent::Transmit(Frame::HeartbeatAck { seq: 1 })]
    );
    assert_eq!(session.poll_timeout(), Some(t0 + 60 * SECOND));
}

#[test]
fn future_protocol_versions_are_answered_with_ours() {
    let t0 = Instant::now();
    let mut names = table();
    let mut session = RelaySession::new(node('a'), RelayConfig::default(), t0);
    let frame = Frame::Register(Register {
        protocol_version: 7,
        daemon_version: "9".into(),
        custom_label: None,
        token: None,
    });
    session.handle_frame(t0, 0, frame, &mut names);
    let events = drain(&mut session);
    assert!(matches!(
        &events[0],
        RelayEvent::Transmit(Frame::Registered(r)) if r.protocol_version == PROTOCOL_VERSION
    ));
}

/// The public HTTPS port reaches daemons that can decode it (version 2 on), and only them: a
/// version 1 daemon would reject the extra field as trailing bytes.
#[test]
fn the_https_port_is_announced_from_version_2_on() {
    let config = RelayConfig {
        https_port: Some(8443),
        ..RelayConfig::default()
    };
    for (version, expected) in [(1, None), (2, Some(8443)), (9, Some(8443))] {
        let t0 = Instant::now();
        let mut names = table();
        let mut session = RelaySession::new(node('a'), config.clone(), t0);
        let frame = Frame::Register(Register {
            protocol_version: version,
            daemon_version: "old".into(),
            custom_label: None,
            token: None,
        });
        session.handle_frame(t0, 0, frame, &mut names);
        let events = drain(&mut session);
        let Some(RelayEvent::Transmit(registered @ Frame::Registered(r))) = events.first() else {
            panic!("unexpected {events:?}");
        };
        assert_eq!(r.https_port, expected, "daemon version {version}");
        assert_eq!(r.protocol_version, version.min(PROTOCOL_VERSION));
        // What the relay sends always encodes, and a decoder of that version reads it back.
        let bytes = registered.to_bytes().expect("encodes");
        let decoded = decode_frame(&bytes, DEFAULT_MAX_FRAME_LEN)
            .expect("decodes")
            .map(|(frame, _)| frame);
        assert_eq!(decoded.as_ref(), Some(registered));
    }
}

#[test]
fn version_zero_is_refused() {
    let t0 = Instant::now();
    let mut names = table();
    let mut session = RelaySession::new(node('a'), RelayConfig::default(), t0);
    let frame = Frame::Register(Register {
        protocol_version: 0,
        daemon_version: "9".into(),
        custom_label: None,
        token: None,
    });
    session.handle_frame(t0, 0, frame, &mut names);
    let events = drain(&mut session);
    assert!(matches!(
        &events[0],
        RelayEvent::Transmit(Frame::Refused { .. })
    ));
    assert!(matches!(
        &events[1],
        RelayEvent::Closed {
            reason: CloseReason::Refused(_)
        }
    ));
    assert!(!names.is_online(&node('a')));
}

#[test]
fn missing_register_and_missing_heartbeats_close_the_session() {
    let t0 = Instant::now();
    let mut names = table();
    let mut session = RelaySession::new(node('a'), RelayConfig::default(), t0);
    session.handle_timeout(t0 + 10 * SECOND, 0, &mut names);
    assert_eq!(
        drain(&mut session),
        [RelayEvent::Closed {
            reason: CloseReason::RegistrationTimeout
        }]
    );

    let mut session = registered_session(&mut names, 'b', None, t0);
    assert!(names.is_online(&node('b')));
    session.handle_timeout(t0 + 44 * SECOND, 1044, &mut names);
    assert_eq!(drain(&mut session), []);
    session.handle_timeout(t0 + 45 * SECOND, 1045, &mut names);
    let events = drain(&mut session);
    assert!(matches!(
        &events[..],
        [
            RelayEvent::Transmit(Frame::Error(e)),
            RelayEvent::Closed { reason: CloseReason::HeartbeatTimeout }
        ] if e.code == ErrorCode::HEARTBEAT_TIMEOUT
    ));
    assert!(!names.is_online(&node('b')));
    assert_eq!(session.poll_timeout(), None);
}

#[test]
fn streams_only_for_owned_names_on_registered_sessions() {
    let t0 = Instant::now();
    let mut names = table();
    let mut a = registered_session(&mut names, 'a', Some("home"), t0);
    let _b = registered_session(&mut names, 'b', Some("work"), t0);
    let client = "198.51.100.4:40000".parse().unwrap();
    assert_eq!(
        a.stream_header(&names, client, "HOME.relay.test"),
        Ok(Frame::StreamHeader(StreamHeader {
            client_addr: client,
            server_name: "home.relay.test".into()
        }))
    );
    assert_eq!(
        a.stream_header(&names, client, "work.relay.test"),
        Err(StreamRefusal::NotOwner("work.relay.test".into()))
    );
    let b_name = format!("{}.relay.test", node('b'));
    assert!(a.stream_header(&names, client, &b_name).is_err());
    a.start_drain();
    assert_eq!(drain(&mut a), [RelayEvent::Transmit(Frame::Drain)]);
    assert_eq!(
        a.stream_header(&names, client, "home.relay.test"),
        Err(StreamRefusal::NotAccepting)
    );
    assert!(matches!(a.state(), RelayState::Draining { .. }));
}

#[test]
fn acme_records_only_for_own_names() {
    let t0 = Instant::now();
    let mut names = table();
    let mut a = registered_session(&mut names, 'a', Some("home"), t0);
    let _b = registered_session(&mut names, 'b', Some("work"), t0);

    let set = |request_id, name: &str| {
        Frame::AcmeChallengeSet(AcmeChallengeSet {
            request_id,
            name: name.into(),
            txt_value: "digest".into(),
        })
    };
    a.handle_frame(
        t0,
        1000,
        set(1, "_acme-challenge.work.relay.test"),
        &mut names,
    );
    let events = drain(&mut a);
    assert!(matches!(
        &events[..],
        [RelayEvent::Transmit(Frame::AcmeChallengeResult(
            AcmeChallengeResult {
                request_id: 1,
                outcome: Err(_)
            }
        ))]
    ));
    a.handle_frame(t0, 1000, set(2, "work.relay.test"), &mut names);
    assert!(matches!(
        &drain(&mut a)[..],
        [RelayEvent::Transmit(Frame::AcmeChallengeResult(
            AcmeChallengeResult {
                request_id: 2,
                outcome: Err(_)
            }
        ))]
    ));

    a.handle_frame(
        t0,
        1000,
        set(3, "_acme-challenge.Home.relay.test."),
        &mut names,
    );
    assert_eq!(
        drain(&mut a),
        [RelayEvent::DnsSet {
            request_id: 3,
            name: "_acme-challenge.home.relay.test".into(),
            txt_value: "digest".into()
        }]
    );
    a.complete_acme(3, Ok(()));
    a.complete_acme(3, Ok(())); // Second completion is ignored.
    assert_eq!(
        drain(&mut a),
        [RelayEvent::Transmit(Frame::AcmeChallengeResult(
            AcmeChallengeResult {
                request_id: 3,
                outcome: Ok(())
            }
        ))]
    );
    a.handle_frame(
        t0,
        1000,
        Frame::AcmeChallengeClear(AcmeChallengeClear {
            request_id: 4,
            name: "_acme-challenge.home.relay.test".into(),
        }),
        &mut names,
    );
    assert_eq!(
        drain(&mut a),
        [RelayEvent::DnsClear {
            request_id: Some(4),
            name: "_acme-challenge.home.relay.test".into()
        }]
    );
}

#[test]
fn acme_records_are_removed_after_their_lifetime_and_on_close() {
    let t0 = Instant::now();
    let mut names = table();
    let mut a = registered_session(&mut names, 'a', None, t0);
    let record = format!("_acme-challenge.{}.relay.test", node('a'));
    a.handle_frame(
        t0,
        1000,
        Frame::AcmeChallengeSet(AcmeChallengeSet {
            request_id: 1,
            name: record.clone(),
            txt_value: "v".into(),
        }),
        &mut names,
    );
    drain(&mut a);
    // Keep the session alive with heartbeats, and let the record expire.
    for minute in 0..10u32 {
        let now = t0 + minute * 60 * SECOND;
        a.handle_frame(
            now,
            1000,
            Frame::Heartbeat {
                seq: u64::from(minute) + 1,
            },
            &mut names,
        );
        a.handle_timeout(now, 1000, &mut names);
    }
    a.handle_frame(
        t0 + 600 * SECOND,
        1600,
        Frame::Heartbeat { seq: 99 },
        &mut names,
    );
    a.handle_timeout(t0 + 600 * SECOND, 1600, &mut names);
    let events = drain(&mut a);
    assert!(events.contains(&RelayEvent::DnsClear {
        request_id: None,
        name: record.clone()
    }));

    a.handle_frame(
        t0 + 600 * SECOND,
        1600,
        Frame::AcmeChallengeSet(AcmeChallengeSet {
            request_id: 2,
            name: record.clone(),
            txt_value: "v".into(),
        }),
        &mut names,
    );
    drain(&mut a);
    a.handle_connection_lost(1601, &mut names);
    assert_eq!(
        drain(&mut a),
        [
            RelayEvent::DnsClear {
                request_id: None,
                name: record
            },
            RelayEvent::Closed {
                reason: CloseReason::ConnectionLost
            }
        ]
    );
    assert!(!names.is_online(&node('a')));
}

#[test]
fn frames_out_of_place_are_protocol_violations() {
    let t0 = Instant::now();
    let mut names = table();
    let mut session = RelaySession::new(node('a'), RelayConfig::default(), t0);
    session.handle_frame(t0, 0, Frame::Heartbeat { seq: 1 }, &mut names);
    let events = drain(&mut session);
    assert!(matches!(
        events.last(),
        Some(RelayEvent::Closed {
            reason: CloseReason::ProtocolViolation(_)
        })
    ));

    let mut session = registered_session(&mut names, 'b', None, t0);
    session.handle_frame(t0, 0, register_frame(None), &mut names);
    assert!(matches!(
        drain(&mut session).last(),
        Some(RelayEvent::Closed {
            reason: CloseReason::ProtocolViolation(_)
        })
    ));
    assert!(!names.is_online(&node('b')));
    // Frames after close are ignored.
    session.handle_frame(t0, 0, Frame::Heartbeat { seq: 1 }, &mut names);
    assert_eq!(drain(&mut session), []);
}

mod random_inputs {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Input {
        Advance(u64),
        Frame(Frame),
        Lost,
        Drain,
        CompleteAcme(u64),
    }

    fn daemon_frame() -> impl Strategy<Value = Frame> {
        let a = node('a');
        prop_oneof![
            proptest::option::of(prop_oneof![Just("home"), Just("bad_label"), Just("work")])
                .prop_map(register_frame),
            (0u64..5).prop_map(|seq| Frame::Heartbeat { seq }),
            (
                0u64..4,
                prop_oneof![
                    Just("_acme-challenge.home.relay.test".to_owned()),
                    Just("_acme-challenge.work.relay.test".to_owned()),
                    Just(format!("_acme-challenge.{a}.relay.test")),
                    Just("home.relay.test".to_owned()),
                ]
            )
                .prop_map(|(request_id, name)| Frame::AcmeChallengeSet(
                    AcmeChallengeSet {
                        request_id,
                        name,
                        txt_value: "v".into()
                    }
                )),
            (0u64..4).prop_map(|request_id| Frame::AcmeChallengeClear(AcmeChallengeClear {
                request_id,
                name: "_acme-challenge.home.relay.test".into()
            })),
            Just(Frame::Drain),
            Just(Frame::Leaving),
        ]
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            2 => (0u64..30_000).prop_map(Input::Advance),
            4 => daemon_frame().prop_map(Input::Frame),
            1 => Just(Input::Lost),
            1 => Just(Input::Drain),
            1 => (0u64..4).prop_map(Input::CompleteAcme),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever a daemon sends, the relay session never panics, only asks DNS for the
        /// daemon's own challenge records, keeps the node online exactly while registered (a
        /// goodbye takes it offline at once and no stream is opened to it afterwards), and
        /// closes once with the node marked offline.
        #[test]
        fn random_daemon_input_keeps_the_relay_consistent(
            inputs in proptest::collection::vec(input(), 1..60)
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut names = table();
            // Another node holds `work`.
            names.register(&node('b'), Some("work"), 0);
            let mut session = RelaySession::new(node('a'), RelayConfig::default(), t0);
            let mut closed = 0;
            for input in inputs {
                match input {
                    Input::Advance(ms) => {
                        now += Duration::from_millis(ms);
                        session.handle_timeout(now, 1000, &mut names);
                    }
                    Input::Frame(frame) => session.handle_frame(now, 1000, frame, &mut names),
                    Input::Lost => session.handle_connection_lost(1000, &mut names),
                    Input::Drain => session.start_drain(),
                    Input::CompleteAcme(id) => session.complete_acme(id, Ok(())),
                }
                while let Some(event) = session.poll_event() {
                    match event {
                        RelayEvent::DnsSet { name, .. } => {
                            let owned = name
                                .strip_prefix("_acme-challenge.")
                                .is_some_and(|n| names.owns(&node('a'), n));
                            prop_assert!(owned, "DNS write for {} not owned by the daemon", name);
                        }
                        RelayEvent::Closed { .. } => closed += 1,
                        RelayEvent::Transmit(frame) => prop_assert!(frame.to_bytes().is_ok()),
                        _ => {}
                    }
                }
                let registered = matches!(
                    session.state(),
                    RelayState::Registered { .. } | RelayState::Draining { .. }
                );
                prop_assert_eq!(names.is_online(&node('a')), registered);
                let client = "127.0.0.1:1".parse().unwrap();
                let node_name = format!("{}.relay.test", node('a'));
                prop_assert_eq!(
                    session.stream_header(&names, client, &node_name).is_ok(),
                    matches!(session.state(), RelayState::Registered { .. })
                );
                prop_assert_eq!(closed > 0, *session.state() == RelayState::Closed);
                prop_assert!(closed <= 1);
                prop_assert_eq!(names.claim_owner("work"), Some(&node('b')));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon's goodbye (protocol version 3)
// ---------------------------------------------------------------------------------------------

/// `Leaving` takes the names out of routing at once, is acknowledged, refuses new streams, and
/// keeps the session (heartbeats answered) for the streams already open.
#[test]
fn leaving_takes_the_names_out_of_routing_at_once() {
    let t0 = Instant::now();
    let mut names = table();
    let mut session = registered_session(&mut names, 'a', Some("home"), t0);
    let client = "127.0.0.1:4000".parse().unwrap();
    assert_eq!(names.lookup("home.relay.test"), Some(node('a')));
    assert!(session
        .stream_header(&names, client, "home.relay.test")
        .is_ok());

    session.handle_frame(t0 + SECOND, 1001, Frame::Leaving, &mut names);
    let events = drain(&mut session);
    let [RelayEvent::Transmit(Frame::LeavingAck), RelayEvent::Left(grant)] = &events[..] else {
        panic!("unexpected {events:?}");
    };
    assert_eq!(grant.custom_name.as_deref(), Some("home.relay.test"));
    assert!(matches!(session.state(), RelayState::Left { .. }));
    assert_eq!(names.lookup("home.relay.test"), None);
    assert_eq!(names.lookup(&format!("{}.relay.test", node('a'))), None);
    assert_eq!(
        session.stream_header(&names, client, "home.relay.test"),
        Err(StreamRefusal::NotAccepting)
    );

    // The connection stays: heartbeats are still answered, a repeated goodbye is acked again.
    session.handle_frame(
        t0 + 2 * SECOND,
        1002,
        Frame::Heartbeat { seq: 1 },
        &mut names,
    );
    assert_eq!(
        drain(&mut session),
        [RelayEvent::Transmit(Frame::HeartbeatAck { seq: 1 })]
    );
    session.handle_frame(t0 + 2 * SECOND, 1002, Frame::Leaving, &mut names);
    assert_eq!(
        drain(&mut session),
        [RelayEvent::Transmit(Frame::LeavingAck)]
    );

    // The claim is kept (the name lapses as for any offline daemon) and the node goes offline
    // exactly once: a second connection of the same node stays online after this one closes.
    let mut second = registered_session(&mut names, 'a', Some("home"), t0 + 3 * SECOND);
    assert_eq!(names.lookup("home.relay.test"), Some(node('a')));
    session.handle_connection_lost(1004, &mut names);
    assert!(matches!(
        drain(&mut session).last(),
        Some(RelayEvent::Closed {
            reason: CloseReason::ConnectionLost
        })
    ));
    assert_eq!(names.lookup("home.relay.test"), Some(node('a')));
    second.handle_connection_lost(1005, &mut names);
    assert_eq!(names.lookup("home.relay.test"), None);
}

/// A daemon that agreed on version 2 cannot say goodbye: the frame is a protocol violation,
/// decided here and not in the runtime.
#[test]
fn leaving_on_a_version_2_session_is_a_protocol_violation() {
    let t0 = Instant::now();
    let mut names = table();
    let mut session = RelaySession::new(node('a'), RelayConfig::default(), t0);
    let register = Frame::Register(Register {
        protocol_version: 2,
        daemon_version: "old".into(),
        custom_label: None,
        token: None,
    });
    session.handle_frame(t0, 1000, register, &mut names);
    drain(&mut session);
    assert_eq!(session.protocol_version(), 2);
    session.handle_frame(t0, 1000, Frame::Leaving, &mut names);
    let events = drain(&mut session);
    assert!(matches!(
        &events[0],
        RelayEvent::Transmit(Frame::Error(e)) if e.code == ErrorCode::PROTOCOL_VIOLATION
    ));
    assert!(matches!(
        events.last(),
        Some(RelayEvent::Closed {
            reason: CloseReason::ProtocolViolation(_)
        })
    ));

    // Before registration it is a violation too.
    let mut fresh = RelaySession::new(node('b'), RelayConfig::default(), t0);
    fresh.handle_frame(t0, 1000, Frame::Leaving, &mut names);
    assert!(matches!(
        drain(&mut fresh).last(),
        Some(RelayEvent::Closed {
            reason: CloseReason::ProtocolViolation(_)
        })
    ));
}

/// After the goodbye ACME requests are refused and a silent daemon still times out.
#[test]
fn a_leaving_daemon_gets_no_acme_records_and_still_needs_heartbeats() {
    let t0 = Instant::now();
    let mut names = table();
    let mut session = registered_session(&mut names, 'a', None, t0);
    session.handle_frame(t0, 1000, Frame::Leaving, &mut names);
    drain(&mut session);
    let record = format!("_acme-challenge.{}.relay.test", node('a'));
    session.handle_frame(
        t0,
        1000,
        Frame::AcmeChallengeSet(AcmeChallengeSet {
            request_id: 5,
            name: record,
            txt_value: "v".into(),
        }),
        &mut names,
    );
    assert!(matches!(
        &drain(&mut session)[..],
        [RelayEvent::Transmit(Frame::AcmeChallengeResult(
            AcmeChallengeResult {
                request_id: 5,
                outcome: Err(_)
            }
        ))]
    ));
    assert_eq!(session.poll_timeout(), Some(t0 + 45 * SECOND));
    session.handle_timeout(t0 + 45 * SECOND, 1045, &mut names);
    assert!(matches!(
        drain(&mut session).last(),
        Some(RelayEvent::Closed {
            reason: CloseReason::HeartbeatTimeout
        })
    ));
}

/// Bytes that are not a frame and a frame that would not encode are decided here: the daemon
/// is told with an Error frame and the session closes with the reason (the driver drops
/// nothing silently).
#[test]
fn undecodable_and_unencodable_frames_close_the_session_with_a_reason() {
    let t0 = Instant::now();
    let mut names = table();
    let mut session = registered_session(&mut names, 'a', None, t0);
    session.handle_undecodable(1000, &mut names, gate_core::tunnel::FrameError::EmptyFrame);
    let events = drain(&mut session);
    assert!(matches!(
        &events[0],
        RelayEvent::Transmit(Frame::Error(e)) if e.code == ErrorCode::PROTOCOL_VIOLATION
            && e.message.starts_with("undecodable control frame")
    ));
    assert!(matches!(
        events.last(),
        Some(RelayEvent::Closed { reason: CloseReason::ProtocolViolation(m) }) if m.contains("undecodable")
    ));
    assert_eq!(names.lookup(&format!("{}.relay.test", node('a'))), None);

    let mut other = registered_session(&mut names, 'b', None, t0);
    let error = gate_core::tunnel::EncodeError::StringTooLong {
        field: "message",
        len: 70_000,
    };
    other.handle_encode_failed(1000, &mut names, error);
    let events = drain(&mut other);
    let RelayEvent::Transmit(Frame::Error(sent)) = &events[0] else {
        panic!("unexpected {events:?}");
    };
    assert_eq!(sent.code, ErrorCode::INTERNAL);
    assert!(Frame::Error(sent.clone()).to_bytes().is_ok());
    assert!(matches!(
        events.last(),
        Some(RelayEvent::Closed { reason: CloseReason::EncodeFailed(m) }) if m.contains("70000")
    ));
}

fn shared_config() -> RelayConfig {
    RelayConfig {
        shared_claims: true,
        ..RelayConfig::default()
    }
}

#[test]
fn shared_claims_wait_for_the_store_before_answering() {
    let t0 = Instant::now();
    let mut names = table();
    let mut session = RelaySession::new(node('a'), shared_config(), t0);
    session.handle_frame(t0, 1000, register_frame(Some("Home")), &mut names);
    let events = drain(&mut session);
    assert_eq!(
        events,
        vec![RelayEvent::CheckClaim {
            label: "home".to_owned(),
            token: None
        }]
    );
    assert!(matches!(session.state(), RelayState::CheckingClaim { .. }));
    assert_eq!(names.lookup("home.relay.test"), None, "nothing granted yet");
    assert!(!names.is_online(&node('a')));
    assert_eq!(session.poll_timeout(), Some(t0 + 10 * SECOND));

    session.complete_claim(t0 + SECOND, 1001, SharedClaim::Granted, &mut names);
    let events = drain(&mut session);
    let [RelayEvent::Transmit(Frame::Registered(registered)), RelayEvent::Registered(_)] =
        &events[..]
    else {
        panic!("unexpected {events:?}");
    };
    assert_eq!(registered.custom_name.as_deref(), Some("home.relay.test"));
    assert_eq!(names.lookup("home.relay.test"), Some(node('a')));
    // A late second verdict changes nothing.
    session.complete_claim(t0 + SECOND, 1001, SharedClaim::Taken, &mut names);
    assert!(drain(&mut session).is_empty());
    assert_eq!(names.lookup("home.relay.test"), Some(node('a')));
}

#[test]
fn shared_claims_without_an_answer_in_time_count_as_unavailable() {
    let t0 = Instant::now();
    let mut names = table();
    let mut session = RelaySession::new(node('b'), shared_config(), t0);
    session.handle_frame(t0, 1000, register_frame(Some("work")), &mut names);
    drain(&mut session);
    session.handle_timeout(t0 + 10 * SECOND, 1010, &mut names);
    let events = drain(&mut session);
    let [RelayEvent::Transmit(Frame::Registered(registered)), RelayEvent::Registered(_)] =
        &events[..]
    else {
        panic!("unexpected {events:?}");
    };
    assert_eq!(registered.custom_name, None);
    let refusal = registered.custom_name_refusal.clone().unwrap();
    assert!(refusal.contains("did not answer within 10 s"), "{refusal}");
    assert!(names.is_online(&node('b')), "the node-id name works");
}

#[test]
fn shared_claims_skip_the_store_for_labels_refused_here_and_for_no_label() {
    let t0 = Instant::now();
    let mut names = table();
    let mut bad = RelaySession::new(node('c'), shared_config(), t0);
    bad.handle_frame(t0, 1000, register_frame(Some("-bad-")), &mut names);
    let events = drain(&mut bad);
    assert!(
        matches!(&events[..], [RelayEvent::Transmit(Frame::Registered(r)), RelayEvent::Registered(_)]
            if r.custom_name_refusal.as_deref().is_some_and(|m| m.contains("not a valid DNS label"))),
        "{events:?}"
    );
    let mut plain = RelaySession::new(node('d'), shared_config(), t0);
    plain.handle_frame(t0, 1000, register_frame(None), &mut names);
    assert!(matches!(plain.state(), RelayState::Registered { .. }));
}

#[test]
fn a_connection_lost_while_the_store_is_asked_leaves_nothing_online() {
    let t0 = Instant::now();
    let mut names = table();
    let mut session = RelaySession::new(node('e'), shared_config(), t0);
    session.handle_frame(t0, 1000, register_frame(Some("lab")), &mut names);
    drain(&mut session);
    session.handle_connection_lost(1001, &mut names);
    session.complete_claim(t0 + SECOND, 1001, SharedClaim::Granted, &mut names);
    assert!(!names.is_online(&node('e')));
    assert_eq!(names.claim_owner("lab"), None);
}
