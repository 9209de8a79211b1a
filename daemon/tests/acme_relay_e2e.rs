//! The whole ACME chain with the real binaries on loopback: `gate serve` registers with
//! `gate-relay serve`, asks it (over the control stream) for `_acme-challenge` TXT records; the
//! relay writes them through its Cloudflare client into the fake Cloudflare API
//! (tests/acme/fake_cloudflare.py), which mirrors them into `pebble-challtestsrv`, the DNS
//! Pebble validates DNS-01 against. The daemon's certificate is then checked by `curl` through
//! the relay against Pebble's issuing root, without `-k`, and no TXT record may be left behind.
//! Both binaries on tokio, then both on smol. Needs the Debian package `pebble`, `curl`,
//! `python3`, and `gate-relay` built next to `gate` (`cargo build -p gate-relay`).

#[path = "../../tests/acme/harness.rs"]
mod harness;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{ChallTestSrv, FakeCloudflare, Pebble};

/// The relay's domain suffix and the fake Cloudflare zone; Pebble only needs the TXT records,
/// which challtestsrv serves for any name.
const SUFFIX: &str = "gate.test";
const TOKEN: &str = "cf-e2e-token";
const ZONE_ID: &str = "zone-e2e";
/// How long each awaited condition may take (the relay waits 5 s for propagation per record).
const DEADLINE: Duration = Duration::from_secs(90);

fn gate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gate"))
}

fn relay_bin() -> PathBuf {
    let path = gate_bin().with_file_name("gate-relay");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p gate-relay`, or run the tests with --workspace)",
        path.display()
    );
    path
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind a UDP port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A child process whose output goes to a log file; killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("create log");
        let child = cmd
            .stdout(Stdio::from(file.try_clone().expect("log fd")))
            .stderr(Stdio::from(file))
            .env_remove("RUST_LOG")
            .spawn()
            .expect("spawn");
        Proc { child, log }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run command");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

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

/// Polls `check` every 100 ms until it holds; panics with `what` and `context()` at the
/// deadline.
fn wait_for(what: &str, mut check: impl FnMut() -> bool, context: impl Fn() -> String) {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "timed out after {DEADLINE:?} waiting for {what}\n{}",
        context()
    );
}

fn acme_records(fake: &FakeCloudflare) -> Vec<(String, String)> {
    fake.records()
        .into_iter()
        .filter(|(name, _)| name.starts_with("_acme-challenge."))
        .collect()
}

fn scenario(runtime: &str) {
    let dir = std::env::temp_dir().join(format!(
        "gate-acme-relay-e2e-{runtime}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");

    let dns = ChallTestSrv::start();
    let fake = FakeCloudflare::start(TOKEN, ZONE_ID, SUFFIX, Some(&dns.management_url()));
    let pebble = Pebble::start(&dir.join("pebble"), &dns, 7_776_000);
    let root = dir.join("pebble-root.pem");
    std::fs::write(&root, pebble.root_pem()).expect("write Pebble's root");

    let https_port = harness::free_port();
    let relay_p2p = free_udp_port();
    let daemon_p2p = free_udp_port();
    let daemon_port = harness::free_port();

    let relay_state = dir.join("relay-state");
    let (ok, relay_id) = output(
        Command::new(relay_bin())
            .args(["id", "--state-dir"])
            .arg(&relay_state),
    );
    assert!(ok, "gate-relay id: {relay_id}");
    let relay_id = relay_id.trim().to_owned();
    std::fs::write(
        dir.join("relay.toml"),
        format!(
            "https_port = {https_port}\np2p_port = {relay_p2p}\nbind_address = \"127.0.0.1\"\n\
             domain_suffix = \"{SUFFIX}\"\n\n[dns]\nenabled = true\nprovider = \"cloudflare\"\n\n\
             [dns.cloudflare]\napi_url = \"{}\"\nzone_id = \"{ZONE_ID}\"\n",
            fake.api_url
        ),
    )
    .expect("write relay.toml");
    let mut relay_cmd = Command::new(relay_bin());
    relay_cmd
        .args(["serve", "--runtime", runtime, "--config"])
        .arg(dir.join("relay.toml"))
        .arg("--state-dir")
        .arg(&relay_state)
        .env("RELAY__DNS__CLOUDFLARE__API_TOKEN", TOKEN);
    let relay = Proc::spawn(relay_cmd, dir.join("relay.log"));

    let gate_state = dir.join("gate-state");
    std::fs::write(
        dir.join("gate.toml"),
        format!(
            "host = \"127.0.0.1\"\nport = {daemon_port}\np2p_port = {daemon_p2p}\n\n\
             [relay]\nenable = true\naddresses = [\"{relay_id}@127.0.0.1:{relay_p2p}\"]\n\
             custom_domain = \"myserver\"\n\n\
             [letsencrypt]\nenabled = true\ndirectory_url = \"{}\"\nca_file = \"{}\"\n",
            pebble.directory_url(),
            pebble.https_ca_file.display()
        ),
    )
    .expect("write gate.toml");
    let mut gate_cmd = Command::new(gate_bin());
    gate_cmd
        .args(["serve", "--runtime", runtime, "--config"])
        .arg(dir.join("gate.toml"))
        .arg("--state-dir")
        .arg(&gate_state)
        .env("GATE_LETSENCRYPT__EMAIL", "ops@example.test");
    let gate = Proc::spawn(gate_cmd, dir.join("gate.log"));
    let (ok, node_id) = output(
        Command::new(gate_bin())
            .args(["id", "--state-dir"])
            .arg(&gate_state),
    );
    assert!(ok, "gate id: {node_id}");
    let node_name = format!("{}.{SUFFIX}", node_id.trim());
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
    wait_for(
        "the daemon's ACME certificate to verify through the relay",
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
    wait_for(
        "the ACME TXT records to be deleted",
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
    wait_for(
        "the relay to notice the daemon left",
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
    for tool in ["curl", "python3"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is required (apt-get install -y {tool})"
        );
    }
    if harness::pebble_installed() {
        return true;
    }
    assert!(
        std::env::var_os("GATE_SKIP_PEBBLE").is_some(),
        "pebble is not installed: apt-get install -y pebble (test.sh installs it; or set GATE_SKIP_PEBBLE=1)"
    );
    eprintln!("skipping: pebble not installed and GATE_SKIP_PEBBLE is set");
    false
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
