//! The relay's ACME path without QUIC: a `gate_core` `RelaySession` decides, `ChallengeRecords`
//! writes through the Cloudflare client into the fake Cloudflare API. A foreign name is refused
//! with nothing written; a daemon that disconnects mid-challenge leaves no record behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

#[path = "../../tests/acme/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use gate_core::config::{CloudflareConfig, DnsConfig, DnsProvider as DnsProviderKind, Secret};
use gate_core::tunnel::{
    AcmeChallengeResult, AcmeChallengeSet, Frame, NameTableConfig, NodeId, Register,
    RelayConfig as SessionConfig, RelayEvent, RelayNameTable, RelaySession,
};
use gate_relay::dns::{ChallengeRecords, ChallengeSettings, Cloudflare};
use gate_rt::Runtime;
use harness::FakeCloudflare;

const TOKEN: &str = "session-token";

fn drain(session: &mut RelaySession) -> Vec<RelayEvent> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

async fn run_events<R: Runtime>(
    records: &ChallengeRecords<R, Cloudflare<R>>,
    session: &mut RelaySession,
    owner: &str,
) -> Vec<Frame> {
    let mut sent = Vec::new();
    // Events can produce more events (complete_acme queues the answer).
    for _ in 0..4 {
        let events = drain(session);
        if events.is_empty() {
            break;
        }
        for event in events {
            if let RelayEvent::Transmit(frame) = &event {
                sent.push(frame.clone());
            }
            if let Some((id, outcome)) = records.apply_event(owner, &event).await {
                session.complete_acme(id, outcome);
            }
        }
    }
    sent
}

fn outcome_of(frames: &[Frame], request_id: u64) -> Option<Result<(), String>> {
    frames.iter().find_map(|f| match f {
        Frame::AcmeChallengeResult(AcmeChallengeResult {
            request_id: id,
            outcome,
        }) if *id == request_id => Some(outcome.clone()),
        _ => None,
    })
}

async fn scenario<R: Runtime>(rt: R) {
    let fake = FakeCloudflare::start(TOKEN, "zone-s", "example.test", None);
    let dns = DnsConfig {
        enabled: true,
        provider: DnsProviderKind::Cloudflare,
        cloudflare: CloudflareConfig {
            api_token: Some(Secret::new(TOKEN)),
            zone_id: Some("zone-s".into()),
            api_url: fake.api_url.clone(),
        },
    };
    let records = ChallengeRecords::from_config(
        rt.clone(),
        &dns,
        ChallengeSettings {
            propagation_delay: Duration::ZERO,
            ..ChallengeSettings::default()
        },
    );
    let mut names =
        RelayNameTable::new(NameTableConfig::new("example.test").expect("suffix config"));
    let node = NodeId::parse(&"a".repeat(52)).expect("node id");
    let other = "b".repeat(52);
    let now = Instant::now();
    let mut session = RelaySession::new(node.clone(), SessionConfig::default(), now);
    session.handle_frame(
        now,
        1_000,
        Frame::Register(Register {
            protocol_version: 1,
            daemon_version: "test".into(),
            custom_label: None,
            token: None,
        }),
        &mut names,
    );
    run_events(&records, &mut session, node.as_str()).await;

    // A foreign name: refused, nothing written.
    session.handle_frame(
        now,
        1_001,
        Frame::AcmeChallengeSet(AcmeChallengeSet {
            request_id: 1,
            name: format!("_acme-challenge.{other}.example.test"),
            txt_value: "x".into(),
        }),
        &mut names,
    );
    let sent = run_events(&records, &mut session, node.as_str()).await;
    let outcome = outcome_of(&sent, 1).expect("an answer");
    assert!(outcome.is_err(), "{outcome:?}");
    assert!(fake.records().is_empty());

    // Its own name: written, answered Ok.
    let own = format!("_acme-challenge.{}.example.test", node.as_str());
    session.handle_frame(
        now,
        1_002,
        Frame::AcmeChallengeSet(AcmeChallengeSet {
            request_id: 2,
            name: own.clone(),
            txt_value: "token".into(),
        }),
        &mut names,
    );
    let sent = run_events(&records, &mut session, node.as_str()).await;
    assert_eq!(outcome_of(&sent, 2), Some(Ok(())));
    assert_eq!(fake.records().len(), 1);
    assert_eq!(fake.records()[0].0, own);

    // The daemon disconnects mid-challenge: the session's cleanup and the manager remove it.
    session.handle_connection_lost(1_003, &mut names);
    run_events(&records, &mut session, node.as_str()).await;
    assert!(fake.records().is_empty(), "{:?}", fake.records());
    records.owner_disconnected(node.as_str()).await;
    assert!(records.record_names().is_empty());
}

#[test]
fn relay_session_acme_tokio() {
    gate_runtime_tokio::block_on(scenario).expect("runtime");
}

#[test]
fn relay_session_acme_smol() {
    gate_runtime_smol::block_on(scenario).expect("runtime");
}
