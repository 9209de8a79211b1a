//! The relay's Cloudflare client and challenge-record manager against the fake Cloudflare API
//! (tests/acme/fake_cloudflare.py), on loopback, under both runtimes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

#[path = "../../tests/acme/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use gate_core::config::{CloudflareConfig, DnsConfig, DnsProvider as DnsProviderKind, Secret};
use gate_relay::dns::{
    ChallengeError, ChallengeRecords, ChallengeSettings, Cloudflare, CloudflareSettings, DnsError,
    DnsProvider,
};
use gate_rt::client::ClientSettings;
use gate_rt::Runtime;
use harness::FakeCloudflare;

const TOKEN: &str = "test-token-0123456789";
const ZONE_ID: &str = "zone-abc";
const ZONE: &str = "example.test";

fn settings(fake: &FakeCloudflare, token: &str, zone_id: Option<&str>) -> CloudflareSettings {
    CloudflareSettings {
        api_token: Secret::new(token),
        zone_id: zone_id.map(str::to_owned),
        api_url: fake.api_url.clone(),
        client: ClientSettings::default(),
    }
}

fn quick() -> ChallengeSettings {
    ChallengeSettings {
        lifetime: Duration::from_secs(600),
        propagation_delay: Duration::ZERO,
        max_records: 16,
    }
}

async fn wait_until<R: Runtime>(rt: &R, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        rt.sleep(Duration::from_millis(50)).await;
    }
}

async fn client_round_trip<R: Runtime>(rt: R) {
    let fake = FakeCloudflare::start(TOKEN, ZONE_ID, ZONE, None);
    let cf = Cloudflare::new(rt.clone(), settings(&fake, TOKEN, Some(ZONE_ID)));
    let name = "_acme-challenge.node1.example.test";

    // Create with and without quotes: both are stored quoted and listed unquoted.
    let id1 = cf.create_txt(name, "value-one").await.expect("create");
    let id2 = cf
        .create_txt(name, "\"value-two\"")
        .await
        .expect("create quoted");
    let mut listed = cf.list_txt(name).await.expect("list");
    listed.sort_by(|a, b| a.value.cmp(&b.value));
    let values: Vec<&str> = listed.iter().map(|r| r.value.as_str()).collect();
    assert_eq!(values, ["value-one", "value-two"]);
    assert!(listed.iter().all(|r| r.name == name));
    let stored = fake.records();
    assert!(
        stored.iter().all(|(_, content)| content.starts_with('"')),
        "{stored:?}"
    );

    cf.delete_txt(name, &id1).await.expect("delete");
    // Deleting what is gone is success.
    cf.delete_txt(name, &id1).await.expect("delete twice");
    let listed = cf.list_txt(name).await.expect("list");
    assert_eq!(listed.len(), 1);
    cf.delete_txt(name, &id2).await.expect("delete");
    assert!(cf.list_txt(name).await.expect("list").is_empty());

    // The zone is found by name when no zone id is configured.
    let by_name = Cloudflare::new(rt.clone(), settings(&fake, TOKEN, None));
    let id = by_name
        .create_txt(name, "v")
        .await
        .expect("create via zone lookup");
    by_name
        .delete_txt(name, &id)
        .await
        .expect("delete via zone lookup");

    // A wrong token is a clear error that does not contain either token.
    let wrong = Cloudflare::new(
        rt.clone(),
        settings(&fake, "wrong-secret-token", Some(ZONE_ID)),
    );
    let err = wrong.create_txt(name, "v").await.expect_err("wrong token");
    assert!(matches!(err, DnsError::Unauthorized { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("refused the API token"), "{text}");
    assert!(
        !text.contains("wrong-secret-token") && !text.contains(TOKEN),
        "{text}"
    );

    // A server error is a clear error naming the operation and the status.
    fake.set_failure(500);
    let err = cf.create_txt(name, "v").await.expect_err("500");
    let text = err.to_string();
    assert!(matches!(err, DnsError::Api { .. }), "{err:?}");
    assert!(
        text.contains("HTTP 500") && text.contains("create the TXT record"),
        "{text}"
    );
    assert!(!text.contains(TOKEN), "{text}");
    fake.set_failure(0);

    // Nothing listening: a transport error.
    let port = harness::free_port();
    let gone = Cloudflare::new(
        rt.clone(),
        CloudflareSettings {
            api_url: format!("http://127.0.0.1:{port}/client/v4"),
            ..settings(&fake, TOKEN, Some(ZONE_ID))
        },
    );
    let err = gone.list_txt(name).await.expect_err("no server");
    assert!(matches!(err, DnsError::Transport { .. }), "{err:?}");
}

async fn challenge_records<R: Runtime>(rt: R) {
    let fake = FakeCloudflare::start(TOKEN, ZONE_ID, ZONE, None);
    let config = DnsConfig {
        enabled: true,
        provider: DnsProviderKind::Cloudflare,
        cloudflare: CloudflareConfig {
            api_token: Some(Secret::new(TOKEN)),
            zone_id: Some(ZONE_ID.into()),
            api_url: fake.api_url.clone(),
        },
    };
    let records = ChallengeRecords::from_config(rt.clone(), &config, quick());
    assert!(records.enabled());
    let a = "_acme-challenge.node-a.example.test";
    let b = "_acme-challenge.node-b.example.test";

    records.set("node-a", a, "token-a").await.expect("set a");
    records
        .set("node-a", a, "token-a")
        .await
        .expect("set a again is success");
    records.set("node-b", b, "token-b").await.expect("set b");
    assert_eq!(fake.records().len(), 2);
    assert_eq!(records.record_names(), [a, b]);

    // Clear on request.
    records.clear(a).await.expect("clear a");
    assert_eq!(fake.records().len(), 1);
    records.clear(a).await.expect("clearing nothing is success");

    // Disconnect of the owner removes its records only.
    records.set("node-a", a, "token-a2").await.expect("set a");
    records.owner_disconnected("node-b").await;
    let left = fake.records();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, a);
    records.owner_disconnected("node-a").await;
    assert!(fake.records().is_empty());

    // Not a challenge name.
    let err = records
        .set("node-a", "node-a.example.test", "x")
        .await
        .expect_err("bad name");
    assert!(
        matches!(err, ChallengeError::NotAChallengeName(_)),
        "{err:?}"
    );

    // Provider failure: a clear answer for the daemon, nothing remembered.
    fake.set_failure(500);
    let err = records
        .set("node-a", a, "x")
        .await
        .expect_err("provider down");
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    assert!(records.record_names().is_empty());
    fake.set_failure(0);

    // Records outlive nothing: after the lifetime they are deleted.
    let short = ChallengeRecords::from_config(
        rt.clone(),
        &config,
        ChallengeSettings {
            lifetime: Duration::from_millis(200),
            ..quick()
        },
    );
    short.set("node-a", a, "expiring").await.expect("set");
    assert_eq!(fake.records().len(), 1);
    wait_until(&rt, "the expired record is deleted", || {
        fake.records().is_empty()
    })
    .await;
    assert!(short.record_names().is_empty());

    // Disabled DNS refuses with the reason, and writes nothing.
    let disabled = ChallengeRecords::from_config(
        rt.clone(),
        &DnsConfig {
            enabled: false,
            ..config.clone()
        },
        quick(),
    );
    assert!(!disabled.enabled());
    let err = disabled.set("node-a", a, "x").await.expect_err("disabled");
    assert!(err.to_string().contains("dns.enabled is false"), "{err}");
    assert!(fake.records().is_empty());
}

#[test]
fn cloudflare_client_tokio() {
    gate_runtime_tokio::block_on(client_round_trip).expect("runtime");
}

#[test]
fn cloudflare_client_smol() {
    gate_runtime_smol::block_on(client_round_trip).expect("runtime");
}

#[test]
fn challenge_records_tokio() {
    gate_runtime_tokio::block_on(challenge_records).expect("runtime");
}

#[test]
fn challenge_records_smol() {
    gate_runtime_smol::block_on(challenge_records).expect("runtime");
}
