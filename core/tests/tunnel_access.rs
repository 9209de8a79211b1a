//! Who may use a relay: the access policy's decision, the refusal of a daemon it does not
//! admit (nothing claimed, a `Refused` frame that says what to do), and the per-address key
//! of the connection limits (an IPv6 /64 counts as one address), and the throttle on
//! registrations per address.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::disallowed_methods)] // tests take a real `Instant` as their time origin

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use gate_core::config::Secret;
use gate_core::tunnel::{
    address_bucket, split_token_entry, throttle_message, AccessMode, AccessPolicy, Account,
    CloseReason, Frame, NameTableConfig, NodeId, Register, RegistrationThrottle, RegistrationToken,
    RelayConfig, RelayEvent, RelayNameTable, RelaySession, RelayState, Throttle,
    MAX_THROTTLED_ADDRESSES, PROTOCOL_VERSION, REGISTRATION_WINDOW,
};
use proptest::prelude::*;

fn node_from(byte: u8) -> NodeId {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let c = alphabet[usize::from(byte) % alphabet.len()] as char;
    NodeId::parse(&c.to_string().repeat(52)).unwrap()
}

fn register(session: &mut RelaySession, names: &mut RelayNameTable, now: Instant) {
    session.handle_frame(
        now,
        1000,
        Frame::Register(Register {
            protocol_version: PROTOCOL_VERSION,
            daemon_version: "0.1.0".into(),
            custom_label: Some("home".into()),
            token: None,
        }),
        names,
    );
}

#[test]
fn an_unlisted_daemon_is_refused_and_claims_nothing() {
    let now = Instant::now();
    let mut names = RelayNameTable::new(NameTableConfig::new("relay.test").unwrap());
    let config = RelayConfig {
        access: AccessPolicy {
            mode: AccessMode::Allowlist,
            allowed_nodes: BTreeSet::from([node_from(0)]),
            ..AccessPolicy::default()
        },
        ..RelayConfig::default()
    };
    let stranger = node_from(1);
    let mut session = RelaySession::new(stranger.clone(), config.clone(), now);
    register(&mut session, &mut names, now);
    let events: Vec<RelayEvent> = std::iter::from_fn(|| session.poll_event()).collect();
    let refused = events.iter().find_map(|e| match e {
        RelayEvent::Transmit(Frame::Refused { reason }) => Some(reason.clone()),
        _ => None,
    });
    let reason = refused.expect("a Refused frame");
    assert!(reason.contains(stranger.as_str()), "{reason}");
    assert!(reason.contains("access.allowed_nodes"), "{reason}");
    assert!(
        events.iter().any(
            |e| matches!(e, RelayEvent::Closed { reason: CloseReason::Refused(r) } if *r == reason)
        ),
        "{events:?}"
    );
    assert_eq!(*session.state(), RelayState::Closed);
    assert!(names.lookup("home.relay.test").is_none());
    assert!(
        names.snapshot().claims.is_empty(),
        "a refused daemon claimed a name"
    );

    // The listed one registers and gets its names.
    let mut session = RelaySession::new(node_from(0), config, now);
    register(&mut session, &mut names, now);
    assert!(matches!(session.state(), RelayState::Registered { .. }));
    assert_eq!(names.lookup("home.relay.test"), Some(node_from(0)));
}

proptest! {
    #[test]
    fn open_admits_everyone_and_an_allowlist_exactly_its_nodes(
        listed in proptest::collection::btree_set(any::<u8>(), 0..8),
        asking in any::<u8>(),
    ) {
        let node = node_from(asking);
        prop_assert!(AccessPolicy::default().admit(&node, None, PROTOCOL_VERSION).is_ok());
        let allowed: BTreeSet<NodeId> = listed.iter().map(|b| node_from(*b)).collect();
        let policy = AccessPolicy {
            mode: AccessMode::Allowlist,
            allowed_nodes: allowed.clone(),
            ..AccessPolicy::default()
        };
        prop_assert_eq!(policy.admit(&node, None, PROTOCOL_VERSION).is_ok(), allowed.contains(&node));
    }

    #[test]
    fn a_v6_slash_64_is_one_bucket_and_v4_is_itself(
        prefix in any::<u64>(),
        a in any::<u64>(),
        b in any::<u64>(),
        v4 in any::<u32>(),
    ) {
        let addr = |host: u64| IpAddr::V6(Ipv6Addr::from((u128::from(prefix) << 64) | u128::from(host)));
        prop_assert_eq!(address_bucket(addr(a)), address_bucket(addr(b)));
        prop_assert_eq!(address_bucket(address_bucket(addr(a))), address_bucket(addr(a)));
        let other = IpAddr::V6(Ipv6Addr::from((u128::from(prefix ^ 1) << 64) | u128::from(a)));
        prop_assert_ne!(address_bucket(addr(a)), address_bucket(other));
        let v4 = Ipv4Addr::from(v4);
        prop_assert_eq!(address_bucket(IpAddr::V4(v4)), IpAddr::V4(v4));
        prop_assert_eq!(address_bucket(IpAddr::V6(v4.to_ipv6_mapped())), IpAddr::V4(v4));
    }
}

#[test]
fn access_modes_round_trip_their_names() {
    for mode in [AccessMode::Open, AccessMode::Allowlist, AccessMode::Token] {
        assert_eq!(AccessMode::parse(mode.as_str()), Some(mode));
    }
    assert_eq!(AccessMode::parse("closed"), None);
}

#[test]
fn ten_thousand_registrations_from_one_address_are_throttled() {
    let t0 = Instant::now();
    let mut throttle = RegistrationThrottle::new(60);
    let base = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 0);
    let (mut admitted, mut refused, mut dropped) = (0, 0, 0);
    for i in 0..10_000u32 {
        // Each from another address of the same /64, within one second.
        let ip = IpAddr::V6(Ipv6Addr::from(u128::from(base) | u128::from(i)));
        let now = t0 + Duration::from_micros(u64::from(i) * 100);
        match throttle.attempt(ip, now) {
            Throttle::Admit => admitted += 1,
            Throttle::Refuse { retry_after } => {
                assert!(
                    retry_after <= REGISTRATION_WINDOW && retry_after > Duration::from_secs(58)
                );
                refused += 1;
            }
            Throttle::Drop => dropped += 1,
        }
    }
    assert_eq!((admitted, refused, dropped), (60, 60, 9_880));
    // Another address is not affected; the same one may come back after the window.
    assert_eq!(
        throttle.attempt("192.0.2.1".parse().unwrap(), t0),
        Throttle::Admit
    );
    assert_eq!(
        throttle.attempt(
            IpAddr::V6(base),
            t0 + REGISTRATION_WINDOW + Duration::from_secs(1)
        ),
        Throttle::Admit
    );
    let message = throttle_message(60, Duration::from_secs(42));
    assert!(message.contains("at most 60 a minute") && message.contains("try again in 42 s"));
}

#[test]
fn the_throttle_remembers_a_bounded_number_of_addresses() {
    let t0 = Instant::now();
    let mut throttle = RegistrationThrottle::new(1);
    for i in 0..(MAX_THROTTLED_ADDRESSES as u32 + 1_000) {
        let ip = IpAddr::V4(Ipv4Addr::from(i));
        assert_eq!(throttle.attempt(ip, t0), Throttle::Admit);
        assert!(throttle.tracked() <= MAX_THROTTLED_ADDRESSES);
    }
}

#[test]
fn a_registration_the_relay_refuses_claims_nothing() {
    let now = Instant::now();
    let mut names = RelayNameTable::new(NameTableConfig::new("relay.test").unwrap());
    let mut session = RelaySession::new(node_from(3), RelayConfig::default(), now);
    session.refuse_registration("too many registrations from your address".into());
    register(&mut session, &mut names, now);
    let events: Vec<RelayEvent> = std::iter::from_fn(|| session.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(e, RelayEvent::Transmit(Frame::Refused { reason }) if reason.contains("too many"))),
        "{events:?}"
    );
    assert_eq!(*session.state(), RelayState::Closed);
    assert!(names.snapshot().claims.is_empty());
}

fn token_policy(allowed: &[NodeId]) -> AccessPolicy {
    AccessPolicy {
        mode: AccessMode::Token,
        allowed_nodes: allowed.iter().cloned().collect(),
        tokens: vec![
            RegistrationToken::new("team-a", "a-secret-of-twenty-bytes"),
            RegistrationToken::new("team-b", "another-secret-value-b"),
        ],
        ..AccessPolicy::default()
    }
}

fn register_with_token(
    session: &mut RelaySession,
    names: &mut RelayNameTable,
    now: Instant,
    protocol_version: u16,
    token: Option<&str>,
) -> Vec<RelayEvent> {
    session.handle_frame(
        now,
        1000,
        Frame::Register(Register {
            protocol_version,
            daemon_version: "0.1.0".into(),
            custom_label: Some("home".into()),
            token: token.map(Secret::new),
        }),
        names,
    );
    std::iter::from_fn(|| session.poll_event()).collect()
}

fn refusal(events: &[RelayEvent]) -> Option<String> {
    events.iter().find_map(|e| match e {
        RelayEvent::Transmit(Frame::Refused { reason }) => Some(reason.clone()),
        _ => None,
    })
}

#[test]
fn token_mode_admits_the_right_token_and_says_what_is_wrong_otherwise() {
    let now = Instant::now();
    let config = RelayConfig {
        access: token_policy(&[]),
        ..RelayConfig::default()
    };
    let mut names = RelayNameTable::new(NameTableConfig::new("relay.test").unwrap());

    // No token: refused, told to set relay.token; nothing claimed.
    let mut session = RelaySession::new(node_from(1), config.clone(), now);
    let events = register_with_token(&mut session, &mut names, now, PROTOCOL_VERSION, None);
    let reason = refusal(&events).expect("refused");
    assert!(reason.contains("relay.token"), "{reason}");
    assert!(reason.contains("GATE_RELAY__TOKEN"), "{reason}");
    assert!(names.snapshot().claims.is_empty());

    // A daemon older than tokens is told to upgrade.
    let mut session = RelaySession::new(node_from(1), config.clone(), now);
    let events = register_with_token(&mut session, &mut names, now, 3, None);
    let reason = refusal(&events).expect("refused");
    assert!(reason.contains("upgrade"), "{reason}");

    // A wrong token: refused, and the message does not echo it.
    let mut session = RelaySession::new(node_from(1), config.clone(), now);
    let events = register_with_token(
        &mut session,
        &mut names,
        now,
        PROTOCOL_VERSION,
        Some("a-secret-of-twenty-bytez"),
    );
    let reason = refusal(&events).expect("refused");
    assert!(reason.contains("not one this relay accepts"), "{reason}");
    assert!(!reason.contains("twenty-bytez"), "{reason}");
    assert!(names.snapshot().claims.is_empty());

    // The right one, as the secret alone or as the whole `name:secret` entry.
    for presented in [
        "a-secret-of-twenty-bytes",
        "team-a:a-secret-of-twenty-bytes",
    ] {
        let mut session = RelaySession::new(node_from(1), config.clone(), now);
        let events = register_with_token(
            &mut session,
            &mut names,
            now,
            PROTOCOL_VERSION,
            Some(presented),
        );
        assert!(refusal(&events).is_none(), "{events:?}");
        assert_eq!(session.account(), Some(&Account::Token("team-a".into())));
        assert!(matches!(session.state(), RelayState::Registered { .. }));
    }
    // Another token's name with this secret is not a match.
    let mut session = RelaySession::new(node_from(2), config, now);
    let events = register_with_token(
        &mut session,
        &mut names,
        now,
        PROTOCOL_VERSION,
        Some("team-b:a-secret-of-twenty-bytes"),
    );
    assert!(refusal(&events).is_some());
}

#[test]
fn token_and_allowlist_together_need_both() {
    let now = Instant::now();
    let config = RelayConfig {
        access: token_policy(&[node_from(0)]),
        ..RelayConfig::default()
    };
    let mut names = RelayNameTable::new(NameTableConfig::new("relay.test").unwrap());
    let mut session = RelaySession::new(node_from(1), config.clone(), now);
    let events = register_with_token(
        &mut session,
        &mut names,
        now,
        PROTOCOL_VERSION,
        Some("another-secret-value-b"),
    );
    let reason = refusal(&events).expect("unlisted node refused");
    assert!(reason.contains("access.allowed_nodes"), "{reason}");
    let mut session = RelaySession::new(node_from(0), config, now);
    let events = register_with_token(
        &mut session,
        &mut names,
        now,
        PROTOCOL_VERSION,
        Some("another-secret-value-b"),
    );
    assert!(refusal(&events).is_none(), "{events:?}");
    assert_eq!(session.account(), Some(&Account::Token("team-b".into())));
}

#[test]
fn token_entries_and_secrets_in_debug() {
    assert_eq!(
        split_token_entry("team-a:0123456789abcdef:x"),
        Some(("team-a", "0123456789abcdef:x"))
    );
    assert_eq!(split_token_entry("team-a:short"), None);
    assert_eq!(split_token_entry("Team:0123456789abcdef"), None);
    assert_eq!(split_token_entry("0123456789abcdef"), None);
    let policy = token_policy(&[]);
    let shown = format!("{policy:?}");
    assert!(shown.contains("team-a"), "{shown}");
    assert!(!shown.contains("twenty"), "{shown}");
}

proptest! {
    /// In token mode exactly the configured secrets are admitted, each as its own name.
    #[test]
    fn token_mode_admits_exactly_the_configured_secrets(
        secrets in proptest::collection::btree_set("[a-z0-9]{16,24}", 1..5),
        guess in "[a-z0-9]{16,24}",
    ) {
        let secrets: Vec<String> = secrets.into_iter().collect();
        let policy = AccessPolicy {
            mode: AccessMode::Token,
            tokens: secrets
                .iter()
                .enumerate()
                .map(|(i, s)| RegistrationToken::new(&format!("t{i}"), s))
                .collect(),
            ..AccessPolicy::default()
        };
        let node = node_from(0);
        for (i, secret) in secrets.iter().enumerate() {
            let admitted = policy.admit(&node, Some(&Secret::new(secret.clone())), PROTOCOL_VERSION);
            prop_assert_eq!(admitted, Ok(Account::Token(format!("t{i}"))));
        }
        let verdict = policy.admit(&node, Some(&Secret::new(guess.clone())), PROTOCOL_VERSION);
        prop_assert_eq!(verdict.is_ok(), secrets.contains(&guess));
        prop_assert!(policy.admit(&node, None, PROTOCOL_VERSION).is_err());
    }
}
