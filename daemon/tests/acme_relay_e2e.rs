//! The whole ACME chain with the real binaries on loopback: `gate serve` registers with
//! `gate-relay serve`, asks it (over the control stream) for `_acme-challenge` TXT records; the
//! relay writes them through its Cloudflare client into the fake Cloudflare API
//! (tests/acme/fake_cloudflare.py), which mirrors them into `pebble-challtestsrv`, the DNS
//! Pebble validates DNS-01 against. The daemon's certificate is then checked by `curl` through
//! the relay against Pebble's issuing root, without `-k`, and no TXT record may be left behind.
//! Both binaries on tokio, then both on smol. Needs the Debian package `pebble`, `curl`,
//! `python3`, and `gate-relay` built next to `gate` (`cargo build -p gate-relay`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

#[path = "../../tests/acme/harness.rs"]
mod harness;

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{gate_bin, node_id, output, start_daemon_with_relay, start_relay, wait_until};
use harness::{ChallTestSrv, FakeCloudflare, Pebble};

/// The relay's domain suffix and the fake Cloudflare zone; Pebble only needs the TXT records,
/// which challtestsrv serves for any name.
const SUFFIX: &str = "gate.test";
const TOKEN: &str = "cf-e2e-token";
const ZONE_ID: &str = "zone-e2e";
/// How long each awaited condition may take (the relay waits 5 s for propagation per record).
const DEADLINE: Duration = Duration::from_secs(90);

/// `curl` to `https://name:port/health` through the relay, verifying the certificate against
/// `root` (no `-k`); returns (success, body and errors).
fn curl_verified(name: &str, port: u16, root: &Path) -> (bool, String) {
    output(
        Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
            .arg(root)
            .arg("--resolve")
            .arg(format!("{name}:{port}:127.0.0.1"))
            .arg(format!("https://{name}:{port}/health")),
    )
}

fn acme_records(fake: &FakeCloudflare) -> Vec<(String, String)> {
    fake.records()
        .into_iter()
        .filter(|(name, _)| name.starts_with("_acme-challenge."))
        .collect()
}

fn scenario(runtime: &str) {
    let dir = common::temp_dir(&format!("acme-relay-e2e-{runtime}"));

    let dns = ChallTestSrv::start();
    let fake = FakeCloudflare::start(TOKEN, ZONE_ID, SUFFIX, Some(&dns.management_url()));
    let pebble = Pebble::start(&dir.join("pebble"), &dns, 7_776_000);
    let root = dir.join("pebble-root.pem");
    std::fs::write(&root, pebble.root_pem()).expect("write Pebble's root");

    let relay = start_relay(
        &dir,
        runtime,
        SUFFIX,
        &format!(
            "\n[dns]\nenabled = true\nprovider = \"cloudflare\"\n\n\
             [dns.cloudflare]\napi_url = \"{}\"\nzone_id = \"{ZONE_ID}\"\n",
            fake.api_url
        ),
        &[("RELAY__DNS__CLOUDFLARE__API_TOKEN", TOKEN)],
    );
    let https_port = relay.https_port;

    let gate_state = dir.join("gate-state");
    let (gate, _) = start_daemon_with_relay(
        &dir,
        runtime,
        &gate_state,
        &relay,
        &format!(
            "[letsencrypt]\nenabled = true\ndirectory_url = \"{}\"\nca_file = \"{}\"\n",
            pebble.directory_url(),
            pebble.https_ca_file.display()
        ),
        &[("GATE_LETSENCRYPT__EMAIL", "ops@example.test")],
    );
    let node_name = format!("{}.{SUFFIX}", node_id(&gate_bin(), &gate_state));
    let custom_name = format!("myserver.{SUFFIX}");

    let logs = || {
        format!(
            "last curl: {:?}\nrelay log:\n{}\ngate log:\n{}\nfake Cloudflare records: {:?}",
            curl_verified(&custom_name, https_port, &root),
            relay.log(),
            gate.log(),
            fake.records()
        )
    };

    // The daemon gets Pebble's certificate for its names, and clients through the relay
    // verify it against Pebble's issuing root.
    wait_until(
        "the daemon's ACME certificate to verify through the relay",
        DEADLINE,
        || {
            curl_verified(&node_name, https_port, &root).0
                && curl_verified(&custom_name, https_port, &root).0
        },
        logs,
    );
    for name in [&node_name, &custom_name] {
        let (ok, body) = curl_verified(name, https_port, &root);
        assert!(ok, "{name}: {body}\n{}", logs());
        assert!(body.contains("\"status\":\"ok\""), "{name}: {body}");
    }

    // The records were written through the relay and are gone once validated.
    wait_until(
        "the ACME TXT records to be deleted",
        DEADLINE,
        || acme_records(&fake).is_empty(),
        logs,
    );
    let relay_log = relay.log();
    assert!(
        !relay_log.contains("ACME TXT record not published"),
        "{relay_log}"
    );

    // Nothing appears after the daemon leaves either.
    drop(gate);
    wait_until(
        "the relay to notice the daemon left",
        DEADLINE,
        || !curl_verified(&custom_name, https_port, &root).0,
        || relay.log(),
    );
    let left = acme_records(&fake);
    assert!(left.is_empty(), "TXT records left behind: {left:?}");
    drop(relay);
    drop(pebble);
    drop(fake);
    drop(dns);
    let _ = std::fs::remove_dir_all(&dir);
}

fn require_tools() -> bool {
    common::require_tools(&["curl", "python3"]);
    harness::require_pebble()
}

#[test]
fn acme_through_the_relay_on_tokio() {
    if require_tools() {
        scenario("tokio");
    }
}

#[test]
fn acme_through_the_relay_on_smol() {
    if require_tools() {
        scenario("smol");
    }
}
