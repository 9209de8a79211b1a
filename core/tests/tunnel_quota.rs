//! Quotas per account (connections at once, bytes per day, ACME requests per hour) against a
//! reference model, and the bounds on name claims (in total, per token's custom names).
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::disallowed_methods)] // tests take a real `Instant` as their time origin

use std::time::{Duration, Instant};

use gate_core::tunnel::{
    Account, ClaimRules, NameTableConfig, NodeId, Quota, QuotaLedger, QuotaRefusal, Quotas,
    RelayNameTable, ACME_WINDOW, BYTES_WINDOW,
};
use proptest::prelude::*;

fn node_from(byte: u8) -> NodeId {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let c = alphabet[usize::from(byte) % alphabet.len()] as char;
    NodeId::parse(&c.to_string().repeat(52)).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Open(u8),
    Close(u8),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3).prop_map(Op::Open),
        (0u8..3).prop_map(Op::Close),
        (0u64..5).prop_map(Op::Wait),
    ]
}

proptest! {
    /// Open connections per account never exceed the quota; a refusal happens exactly when
    /// the account is at it, and counts nothing; accounts do not share counts.
    #[test]
    fn connections_follow_the_reference_model(max in 0u32..4, ops in proptest::collection::vec(op(), 0..80)) {
        let quota = Quota { connections: Some(max), ..Quota::default() };
        let mut ledger = QuotaLedger::new();
        let mut model = [0u32; 3];
        let mut now = Instant::now();
        let account = |i: u8| Account::Token(format!("t{i}"));
        for op in ops {
            match op {
                Op::Open(i) => {
                    let got = ledger.open_connection(&account(i), &quota, now);
                    let slot = &mut model[usize::from(i)];
                    if *slot < max {
                        prop_assert!(got.is_ok());
                        *slot += 1;
                    } else {
                        let is_connections = matches!(got, Err(QuotaRefusal::Connections { .. }));
                        prop_assert!(is_connections);
                    }
                }
                Op::Close(i) => {
                    let slot = &mut model[usize::from(i)];
                    if *slot > 0 {
                        ledger.close_connection(&account(i));
                        *slot -= 1;
                    }
                }
                Op::Wait(s) => now += Duration::from_secs(s),
            }
            for i in 0..3u8 {
                prop_assert_eq!(ledger.usage(&account(i), now).connections, model[usize::from(i)]);
            }
        }
    }

    /// In any ACME window at most `max` requests are admitted, and the next window admits again.
    #[test]
    fn acme_requests_per_hour(max in 0u32..6, gaps in proptest::collection::vec(0u64..1200, 1..60)) {
        let quota = Quota { acme_requests_per_hour: Some(max), ..Quota::default() };
        let account = Account::Node(node_from(1));
        let mut ledger = QuotaLedger::new();
        let start = Instant::now();
        let mut now = start;
        // Windows are fixed and start at the first request after the last one ended.
        let mut window_start: Option<Instant> = None;
        let mut admitted_in_window = 0u32;
        for gap in gaps {
            now += Duration::from_secs(gap);
            if window_start.is_none_or(|w| now.duration_since(w) >= ACME_WINDOW) {
                window_start = Some(now);
                admitted_in_window = 0;
            }
            match ledger.acme_request(&account, &quota, now) {
                Ok(()) => {
                    admitted_in_window += 1;
                    prop_assert!(admitted_in_window <= max);
                }
                Err(QuotaRefusal::Acme { retry_after, .. }) => {
                    prop_assert_eq!(admitted_in_window, max);
                    prop_assert!(retry_after <= ACME_WINDOW);
                    let text = QuotaRefusal::Acme { account: account.clone(), max, retry_after }.to_string();
                    prop_assert!(text.contains("acme_requests_per_hour"));
                }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }

    /// Once an account's bytes reach the day's quota its connections are refused until the
    /// 24-hour window ends.
    #[test]
    fn bytes_per_day(max in 1u64..10_000, chunks in proptest::collection::vec(0u64..4_000, 1..20)) {
        let quota = Quota { bytes_per_day: Some(max), ..Quota::default() };
        let account = Account::Token("t".into());
        let mut ledger = QuotaLedger::new();
        let now = Instant::now();
        let mut used = 0u64;
        for chunk in chunks {
            let got = ledger.open_connection(&account, &quota, now);
            if used < max {
                prop_assert!(got.is_ok());
                ledger.record_bytes(&account, chunk, now);
                ledger.close_connection(&account);
                used += chunk;
            } else {
                let is_bandwidth = matches!(got, Err(QuotaRefusal::Bandwidth { .. }));
                prop_assert!(is_bandwidth);
            }
        }
        let later = now + BYTES_WINDOW;
        prop_assert!(ledger.open_connection(&account, &quota, later).is_ok());
    }
}

#[test]
fn unlimited_quota_admits_and_prune_forgets_idle_accounts() {
    let mut ledger = QuotaLedger::new();
    let now = Instant::now();
    let account = Account::Node(node_from(3));
    for _ in 0..1000 {
        ledger
            .open_connection(&account, &Quota::default(), now)
            .unwrap();
    }
    for _ in 0..1000 {
        ledger.close_connection(&account);
    }
    ledger.prune(now);
    assert_eq!(ledger.tracked(), 0, "idle account without windows kept");
    ledger
        .acme_request(&account, &Quota::default(), now)
        .unwrap();
    ledger.prune(now);
    assert_eq!(ledger.tracked(), 1, "a running window is kept");
    ledger.prune(now + ACME_WINDOW);
    assert_eq!(ledger.tracked(), 0);
}

#[test]
fn a_token_quota_falls_back_to_the_default() {
    let quotas = Quotas {
        default: Quota {
            connections: Some(5),
            ..Quota::default()
        },
        per_token: [(
            "big".to_owned(),
            Quota {
                connections: Some(50),
                ..Quota::default()
            },
        )]
        .into_iter()
        .collect(),
    };
    assert_eq!(
        quotas
            .for_account(&Account::Token("big".into()))
            .connections,
        Some(50)
    );
    assert_eq!(
        quotas
            .for_account(&Account::Token("other".into()))
            .connections,
        Some(5)
    );
    assert_eq!(
        quotas.for_account(&Account::Node(node_from(0))).connections,
        Some(5)
    );
}

fn table() -> RelayNameTable {
    RelayNameTable::new(NameTableConfig::new("relay.test").unwrap())
}

#[test]
fn claims_in_total_are_capped_with_a_clear_refusal() {
    let mut names = table();
    let rules = ClaimRules {
        max_claims: 3,
        ..ClaimRules::default()
    };
    for i in 0..3u8 {
        let grant = names.register_with(&node_from(i), Some(&format!("l{i}")), 1000, &rules);
        assert!(grant.custom_name.is_some(), "{grant:?}");
    }
    let grant = names.register_with(&node_from(3), Some("l3"), 1000, &rules);
    assert_eq!(grant.custom_name, None);
    let refusal = grant.custom_name_refusal.unwrap();
    assert!(refusal.contains("limits.max_claims"), "{refusal}");
    // The refused node keeps its node-id name; a holder keeps and may change its own label.
    assert_eq!(names.lookup(&grant.node_name), Some(node_from(3)));
    let again = names.register_with(&node_from(0), Some("l0"), 1001, &rules);
    assert!(again.custom_name.is_some());
    let moved = names.register_with(&node_from(1), Some("l1b"), 1001, &rules);
    assert!(moved.custom_name.is_some(), "{moved:?}");
    assert_eq!(names.claim_count(), 3);
}

#[test]
fn a_tokens_custom_names_are_counted_together() {
    let mut names = table();
    let rules = ClaimRules {
        token: Some("team".into()),
        max_custom_names: Some(2),
        ..ClaimRules::default()
    };
    for i in 0..2u8 {
        let grant = names.register_with(&node_from(i), Some(&format!("t{i}")), 1000, &rules);
        assert!(grant.custom_name.is_some());
    }
    assert_eq!(names.claim_token("t0"), Some("team"));
    let grant = names.register_with(&node_from(2), Some("t2"), 1000, &rules);
    let refusal = grant.custom_name_refusal.unwrap();
    assert!(refusal.contains("token team"), "{refusal}");
    assert!(refusal.contains("custom_names"), "{refusal}");
    // Another token is not affected; a quota of 0 allows none.
    let other = ClaimRules {
        token: Some("other".into()),
        max_custom_names: Some(1),
        ..ClaimRules::default()
    };
    assert!(names
        .register_with(&node_from(3), Some("o3"), 1000, &other)
        .custom_name
        .is_some());
    let none = ClaimRules {
        max_custom_names: Some(0),
        ..ClaimRules::default()
    };
    assert!(names
        .register_with(&node_from(4), Some("n4"), 1000, &none)
        .custom_name_refusal
        .is_some());
    // The token survives a snapshot round trip.
    let restored = RelayNameTable::from_snapshot(
        NameTableConfig::new("relay.test").unwrap(),
        names.snapshot(),
    )
    .unwrap();
    assert_eq!(restored.claim_token("t1"), Some("team"));
}

proptest! {
    /// Whatever registrations happen, the table never holds more claims than `max_claims`
    /// beyond those it already held.
    #[test]
    fn claims_never_exceed_the_cap(max in 0usize..6, asks in proptest::collection::vec((0u8..12, 0u8..8), 0..60)) {
        let mut names = table();
        let rules = ClaimRules { max_claims: max, ..ClaimRules::default() };
        for (node, label) in asks {
            names.register_with(&node_from(node), Some(&format!("x{label}")), 1000, &rules);
            prop_assert!(names.claim_count() <= max);
        }
    }
}
