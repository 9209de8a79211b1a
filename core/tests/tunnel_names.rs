//! The relay's name table: grants, refusals, lapse, lookup and snapshots.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use std::time::Duration;

use gate_core::tunnel::{
    validate_custom_label, ClaimRules, NameError, NameTableConfig, NameTableSnapshot, NodeId,
    RelayNameTable, SharedClaim,
};
use proptest::prelude::*;

const DAY: u64 = 86_400;

fn node(c: char) -> NodeId {
    NodeId::parse(&c.to_string().repeat(52)).unwrap()
}

fn table() -> RelayNameTable {
    RelayNameTable::new(NameTableConfig::new("Relay.Example.").unwrap())
}

#[test]
fn node_name_is_always_granted_and_custom_label_when_free() {
    let mut names = table();
    let a = node('a');
    let grant = names.register(&a, Some("Home"), 1000);
    assert_eq!(grant.node_name, format!("{a}.relay.example"));
    assert_eq!(grant.custom_name.as_deref(), Some("home.relay.example"));
    assert_eq!(grant.custom_name_refusal, None);
    assert_eq!(names.lookup("HOME.relay.example."), Some(a.clone()));
    assert_eq!(names.lookup(&format!("{a}.relay.example")), Some(a.clone()));
    assert!(names.owns(&a, "home.relay.example"));
}

#[test]
fn taken_label_is_refused_with_a_clear_message_and_node_name_kept() {
    let mut names = table();
    let (a, b) = (node('a'), node('b'));
    names.register(&a, Some("home"), 1000);
    let grant = names.register(&b, Some("home"), 1001);
    assert_eq!(grant.node_name, format!("{b}.relay.example"));
    assert_eq!(grant.custom_name, None);
    let refusal = grant.custom_name_refusal.unwrap();
    assert!(refusal.contains("home.relay.example"), "{refusal}");
    assert!(refusal.contains("another node"), "{refusal}");
    // Still refused while the owner is offline but not lapsed.
    names.go_offline(&a, 2000);
    let grant = names.register(&b, Some("home"), 2000 + 29 * DAY);
    assert_eq!(grant.custom_name, None);
    assert_eq!(names.lookup("home.relay.example"), None, "owner offline");
}

#[test]
fn same_node_gets_its_label_back() {
    let mut names = table();
    let a = node('a');
    names.register(&a, Some("home"), 1000);
    names.go_offline(&a, 1000);
    assert_eq!(names.lookup("home.relay.example"), None);
    let grant = names.register(&a, Some("home"), 1000 + 60 * DAY);
    assert_eq!(grant.custom_name.as_deref(), Some("home.relay.example"));
    assert_eq!(names.lookup("home.relay.example"), Some(a));
}

#[test]
fn claim_lapses_after_the_configured_absence() {
    let mut config = NameTableConfig::new("relay.example").unwrap();
    assert_eq!(config.claim_lapse, Duration::from_secs(30 * DAY));
    config.claim_lapse = Duration::from_secs(10 * DAY);
    let mut names = RelayNameTable::new(config);
    let (a, b) = (node('a'), node('b'));
    names.register(&a, Some("home"), 0);
    names.touch(&a, 5 * DAY);
    names.go_offline(&a, 5 * DAY);
    assert_eq!(names.expire(15 * DAY - 1), Vec::<String>::new());
    assert_eq!(
        names.register(&b, Some("home"), 15 * DAY - 1).custom_name,
        None
    );
    assert_eq!(
        names
            .register(&b, Some("home"), 15 * DAY)
            .custom_name
            .as_deref(),
        Some("home.relay.example")
    );
    assert_eq!(names.claim_owner("home"), Some(&b));
}

#[test]
fn online_owner_never_lapses() {
    let mut names = table();
    let (a, b) = (node('a'), node('b'));
    names.register(&a, Some("home"), 0);
    assert!(names.expire(400 * DAY).is_empty());
    assert_eq!(
        names.register(&b, Some("home"), 400 * DAY).custom_name,
        None
    );
}

#[test]
fn node_stays_online_until_every_registration_ends() {
    let mut names = table();
    let a = node('a');
    names.register(&a, None, 0);
    names.register(&a, None, 1);
    names.go_offline(&a, 2);
    assert!(names.is_online(&a));
    names.go_offline(&a, 3);
    assert!(!names.is_online(&a));
    assert_eq!(names.lookup(&format!("{a}.relay.example")), None);
}

#[test]
fn invalid_and_reserved_labels_are_refused() {
    let mut names = table();
    let a = node('a');
    let grant = names.register(&a, Some("bad_label"), 0);
    assert!(grant
        .custom_name_refusal
        .unwrap()
        .contains("not a valid DNS label"));
    let grant = names.register(&a, Some(node('b').as_str()), 0);
    assert!(grant.custom_name_refusal.unwrap().contains("reserved"));
    assert!(validate_custom_label("-x").is_err());
    assert!(validate_custom_label(&"x".repeat(64)).is_err());
    assert_eq!(validate_custom_label("My-Home1").unwrap(), "my-home1");
}

#[test]
fn a_node_holds_one_custom_label() {
    let mut names = table();
    let a = node('a');
    names.register(&a, Some("one"), 0);
    names.register(&a, Some("two"), 1);
    assert_eq!(names.claim_owner("one"), None);
    assert_eq!(names.claim_owner("two"), Some(&a));
}

#[test]
fn lookup_ignores_other_domains_and_deeper_names() {
    let mut names = table();
    let a = node('a');
    names.register(&a, Some("home"), 0);
    assert_eq!(names.lookup("home.other.example"), None);
    assert_eq!(names.lookup("x.home.relay.example"), None);
    assert_eq!(names.lookup("relay.example"), None);
    assert_eq!(names.lookup("homerelay.example"), None);
    assert!(!names.owns(&a, "x.home.relay.example"));
}

#[test]
fn snapshot_round_trips_through_json_and_starts_offline() {
    let mut names = table();
    let a = node('a');
    names.register(&a, Some("home"), 1234);
    let json = serde_json::to_string(&names.snapshot()).unwrap();
    let snapshot: NameTableSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(snapshot, names.snapshot());
    let restored =
        RelayNameTable::from_snapshot(NameTableConfig::new("relay.example").unwrap(), snapshot)
            .unwrap();
    assert_eq!(restored.claim_owner("home"), Some(&a));
    assert!(!restored.is_online(&a));
    assert_eq!(restored.snapshot().claims[0].last_seen_unix_secs, 1234);
}

#[test]
fn bad_snapshots_are_rejected() {
    let json = r#"{"claims":[{"label":"home","node_id":"nope","last_seen_unix_secs":1}]}"#;
    assert!(serde_json::from_str::<NameTableSnapshot>(json).is_err());
    let id = "a".repeat(52);
    let json = format!(
        r#"{{"claims":[{{"label":"home","node_id":"{id}","last_seen_unix_secs":1}},{{"label":"HOME","node_id":"{id}","last_seen_unix_secs":2}}]}}"#
    );
    let snapshot: NameTableSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(
        RelayNameTable::from_snapshot(NameTableConfig::new("relay.example").unwrap(), snapshot)
            .unwrap_err(),
        NameError::DuplicateClaim("home".into())
    );
}

#[test]
fn suffix_is_validated() {
    assert!(NameTableConfig::new("").is_err());
    assert!(NameTableConfig::new("a..b").is_err());
    assert!(NameTableConfig::new("bad_suffix.example").is_err());
    assert_eq!(
        NameTableConfig::new("LOCALHOST").unwrap().domain_suffix,
        "localhost"
    );
}

#[test]
fn shared_store_grant_overrides_a_stale_local_owner() {
    // This relay remembers `home` for A; the store (after A's claim lapsed there and another
    // relay handed it over, or simply because the store says so) grants it to B.
    let mut names = table();
    let (a, b) = (node('a'), node('b'));
    names.register(&a, Some("home"), 1000);
    names.go_offline(&a, 1000);
    let rules = ClaimRules::default();
    let label = names
        .precheck_shared_claim(&b, "Home", 2000, &rules)
        .unwrap();
    assert_eq!(
        label, "home",
        "the store is asked about the lower-cased label"
    );
    let grant = names.register_shared(&b, &label, 2000, &rules, &SharedClaim::Granted);
    assert_eq!(grant.custom_name.as_deref(), Some("home.relay.example"));
    assert_eq!(names.claim_owner("home"), Some(&b));
    assert_eq!(names.lookup("home.relay.example"), Some(b));
}

#[test]
fn shared_store_refusal_reads_like_a_local_one_and_forgets_a_stale_own_claim() {
    let mut names = table();
    let a = node('a');
    names.register(&a, Some("home"), 1000);
    names.go_offline(&a, 1000);
    let rules = ClaimRules::default();
    let grant = names.register_shared(&a, "home", 2000, &rules, &SharedClaim::Taken);
    assert_eq!(grant.custom_name, None);
    assert_eq!(grant.node_name, format!("{a}.relay.example"));
    let refusal = grant.custom_name_refusal.unwrap();
    assert!(
        refusal.contains("home.relay.example") && refusal.contains("claimed by another node"),
        "{refusal}"
    );
    assert_eq!(
        names.claim_owner("home"),
        None,
        "a claim the store gave away stays here"
    );
    assert!(names.is_online(&a), "the node-id name is still granted");
}

#[test]
fn unavailable_store_renews_held_claims_only() {
    let mut names = table();
    let (a, b) = (node('a'), node('b'));
    names.register(&a, Some("home"), 1000);
    names.go_offline(&a, 1000);
    let rules = ClaimRules::default();
    let down = SharedClaim::Unavailable("the store is unreachable".to_owned());
    // A held `home` here and its claim has not lapsed: renewed.
    let grant = names.register_shared(&a, "home", 1000 + DAY, &rules, &down);
    assert_eq!(grant.custom_name.as_deref(), Some("home.relay.example"));
    // B's new claim is never granted on this relay's word alone.
    let grant = names.register_shared(&b, "work", 1000 + DAY, &rules, &down);
    assert_eq!(grant.custom_name, None);
    let refusal = grant.custom_name_refusal.unwrap();
    assert!(
        refusal.contains("cannot reach the claim store")
            && refusal.contains("work.relay.example")
            && refusal.contains("the store is unreachable"),
        "{refusal}"
    );
    assert_eq!(names.claim_owner("work"), None);
    // Nor is a claim that lapsed here.
    names.go_offline(&a, 1000 + DAY);
    let grant = names.register_shared(&a, "home", 1000 + 40 * DAY, &rules, &down);
    assert_eq!(grant.custom_name, None);
}

#[test]
fn precheck_applies_this_relays_rules_but_not_ownership() {
    let mut names = table();
    let (a, b) = (node('a'), node('b'));
    names.register(&a, Some("home"), 1000);
    let rules = ClaimRules::default();
    // Ownership is the store's to decide, so a label A holds here is still asked about.
    assert_eq!(
        names.precheck_shared_claim(&b, "home", 1000, &rules),
        Ok("home".to_owned())
    );
    assert!(names
        .precheck_shared_claim(&b, "-bad", 1000, &rules)
        .unwrap_err()
        .contains("not a valid DNS label"));
    let full = ClaimRules {
        max_claims: 1,
        ..ClaimRules::default()
    };
    assert!(names
        .precheck_shared_claim(&b, "work", 1000, &full)
        .unwrap_err()
        .contains("limits.max_claims"));
    // The node that holds the label is not counted against the limit.
    assert!(names.precheck_shared_claim(&a, "home", 1000, &full).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever this relay remembers, a shared verdict decides: Granted makes the node the
    /// owner, Taken never leaves it owning the label, Unavailable never grants a label this
    /// table did not already hold for the node unlapsed. The node-id name is granted always.
    #[test]
    fn shared_verdicts_decide_and_never_split_brain(
        ops in proptest::collection::vec((0u8..5, 0usize..3, 0usize..3, 0u64..(20 * DAY)), 1..60)
    ) {
        let nodes = [node('a'), node('b'), node('c')];
        let labels = ["home", "work", "lab"];
        let mut names = table();
        let rules = ClaimRules::default();
        let mut now = 0u64;
        for (op, n, l, step) in ops {
            now += step;
            let (who, label) = (&nodes[n], labels[l]);
            let held_unlapsed = names.snapshot().claims.iter().any(|claim| {
                claim.label == label
                    && claim.node_id == *who
                    && (names.is_online(who) || now - claim.last_seen_unix_secs < 30 * DAY)
            });
            let owner_before = names.claim_owner(label).cloned();
            let verdict = match op {
                0 => SharedClaim::Granted,
                1 => SharedClaim::Taken,
                2 => SharedClaim::Unavailable("down".to_owned()),
                3 => { names.go_offline(who, now); continue; }
                _ => { names.expire(now); continue; }
            };
            let grant = names.register_shared(who, label, now, &rules, &verdict);
            prop_assert_eq!(&grant.node_name, &format!("{who}.relay.example"));
            let owns = names.claim_owner(label) == Some(who);
            match verdict {
                SharedClaim::Granted => {
                    prop_assert!(owns);
                    prop_assert!(grant.custom_name.is_some());
                }
                SharedClaim::Taken => {
                    prop_assert!(!owns);
                    prop_assert!(grant.custom_name.is_none());
                }
                SharedClaim::Unavailable(_) => {
                    prop_assert_eq!(grant.custom_name.is_some(), held_unlapsed);
                    prop_assert_eq!(names.claim_owner(label), owner_before.as_ref());
                }
            }
        }
    }

    /// Whatever sequence of registrations, disconnects and expiries, an unlapsed claim never
    /// changes owner, and lookup only ever answers online nodes that own the name.
    #[test]
    fn claims_are_never_taken_from_their_owner(
        ops in proptest::collection::vec((0u8..4, 0usize..3, 0usize..3, 0u64..(40 * DAY)), 1..60)
    ) {
        let nodes = [node('a'), node('b'), node('c')];
        let labels = ["home", "work", "lab"];
        let mut names = table();
        let mut now = 0u64;
        for (op, n, l, step) in ops {
            now += step;
            let before: Vec<_> = labels
                .iter()
                .map(|label| names.claim_owner(label).cloned())
                .collect();
            let snapshot = names.snapshot();
            let lapsed_before = |label: &str| {
                snapshot.claims.iter().any(|claim| {
                    claim.label == label
                        && !names.is_online(&claim.node_id)
                        && now - claim.last_seen_unix_secs >= 30 * DAY
                })
            };
            let lapsed_before: Vec<bool> = labels.iter().map(|label| lapsed_before(label)).collect();
            match op {
                0 => { names.register(&nodes[n], Some(labels[l]), now); }
                1 => names.go_offline(&nodes[n], now),
                2 => names.touch(&nodes[n], now),
                _ => { names.expire(now); }
            }
            for (i, label) in labels.iter().enumerate() {
                let after = names.claim_owner(label);
                if let Some(owner) = &before[i] {
                    if after != Some(owner) {
                        // Only the owner itself (switching labels) or lapse can release it.
                        let released_by_owner = op == 0 && nodes[n] == *owner;
                        prop_assert!(
                            released_by_owner || lapsed_before[i],
                            "label {} taken from its owner before lapsing", label
                        );
                    }
                }
                if let Some(found) = names.lookup(&format!("{label}.relay.example")) {
                    prop_assert!(names.is_online(&found));
                    prop_assert_eq!(Some(&found), names.claim_owner(label));
                }
            }
        }
    }
}
