//! Public HTTPS through the relay, with the real binaries on loopback: `gate-relay serve`
//! and `gate serve` under tokio, smol, and relay-on-smol with daemon-on-tokio. A real TLS
//! client (`curl --resolve`, `openssl s_client`) reaches the daemon's `/health` through the
//! relay and sees the daemon's certificate; relayed requests are never loopback-trusted.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SUFFIX: &str = "gate.localhost";

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

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free for both TCP and UDP (the relay serves HTTPS on TCP and tunnels on UDP of
/// the same port).
fn free_tcp_and_udp_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::from(file.try_clone().unwrap()))
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

/// The last curl error, for the logs of a failed wait.
static LAST_CURL_ERROR: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn curl_via_relay(name: &str, port: u16, path: &str, headers: &[&str]) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-skS",
        "--max-time",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ])
    .arg("--resolve")
    .arg(format!("{name}:{port}:127.0.0.1"))
    .arg(format!("https://{name}:{port}{path}"));
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.output().expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !stderr.trim().is_empty() {
        if let Ok(mut last) = LAST_CURL_ERROR.lock() {
            *last = format!("{name}{path}: {}", stderr.trim());
        }
    }
    let (body, code) = stdout.rsplit_once('\n').unwrap_or((&stdout, ""));
    (body.to_owned(), code.trim().to_owned())
}

fn wait_for(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> bool,
    logs: impl Fn() -> String,
) {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let curl = LAST_CURL_ERROR
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    panic!(
        "timed out waiting for {what}\nlast curl error: {curl}\n{}",
        logs()
    );
}

fn scenario(relay_runtime: &str, daemon_runtime: &str) {
    let dir = std::env::temp_dir().join(format!(
        "gate-relay-e2e-{relay_runtime}-{daemon_runtime}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let https_port = free_tcp_and_udp_port();
    let relay_p2p = free_udp_port();
    let daemon_p2p = free_udp_port();
    let daemon_port = free_tcp_port();

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
            "https_port = {https_port}\np2p_port = {relay_p2p}\nbind_address = \"127.0.0.1\"\ndomain_suffix = \"{SUFFIX}\"\n"
        ),
    )
    .unwrap();
    let mut relay_cmd = Command::new(relay_bin());
    relay_cmd
        .args(["serve", "--runtime", relay_runtime, "--config"])
        .arg(dir.join("relay.toml"))
        .arg("--state-dir")
        .arg(&relay_state);
    let relay = Proc::spawn(relay_cmd, dir.join("relay.log"));

    let gate_state = dir.join("gate-state");
    std::fs::write(
        dir.join("gate.toml"),
        format!(
            "host = \"127.0.0.1\"\nport = {daemon_port}\np2p_port = {daemon_p2p}\n\n[auth]\nallow_loopback = true\n\n[relay]\nenable = true\naddresses = [\"{relay_id}@127.0.0.1:{relay_p2p}\"]\ncustom_domain = \"myserver\"\n"
        ),
    )
    .unwrap();
    let mut gate_cmd = Command::new(gate_bin());
    gate_cmd
        .args(["serve", "--runtime", daemon_runtime, "--config"])
        .arg(dir.join("gate.toml"))
        .arg("--state-dir")
        .arg(&gate_state);
    let gate = Proc::spawn(gate_cmd, dir.join("gate.log"));
    let (ok, node_id) = output(
        Command::new(gate_bin())
            .args(["id", "--state-dir"])
            .arg(&gate_state),
    );
    assert!(ok, "gate id: {node_id}");
    let node_name = format!("{}.{SUFFIX}", node_id.trim());
    let custom_name = format!("myserver.{SUFFIX}");

    wait_for(
        "the daemon to answer through the relay",
        Duration::from_secs(90),
        || {
            curl_via_relay(&custom_name, https_port, "/health", &[]).1 == "200"
                && curl_via_relay(&node_name, https_port, "/health", &[]).1 == "200"
        },
        || format!("relay log:\n{}\ngate log:\n{}", relay.log(), gate.log()),
    );
    for name in [&node_name, &custom_name] {
        let (body, code) = curl_via_relay(name, https_port, "/health", &[]);
        assert_eq!(
            code,
            "200",
            "{name}: {body}\nrelay log:\n{}\ngate log:\n{}",
            relay.log(),
            gate.log()
        );
        assert!(body.contains("\"status\":\"ok\""), "{body}");
        assert!(
            body.contains(&format!("\"runtime\":\"{daemon_runtime}\"")),
            "{body}"
        );
    }

    // The certificate the client sees is the daemon's (its self-signed one names the node id).
    let mut s_client = Command::new("openssl");
    s_client
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{https_port}"))
        .args(["-servername", &custom_name, "-showcerts"])
        .stdin(Stdio::null());
    let (_, text) = output(&mut s_client);
    let pem_start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("openssl saw a certificate");
    let pem_end = text
        .find("-----END CERTIFICATE-----")
        .expect("end of certificate")
        + 25;
    let pem_path = dir.join("seen.pem");
    std::fs::write(&pem_path, &text[pem_start..pem_end]).unwrap();
    let (ok, x509) = output(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&pem_path),
    );
    assert!(ok, "{x509}");
    assert!(
        x509.contains(node_id.trim()),
        "the certificate is not the daemon's:\n{x509}"
    );

    // Loopback trust applies locally, never through the relay.
    let local = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{daemon_port}/v1/models"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&local.stdout), "200");
    let (body, code) = curl_via_relay(&custom_name, https_port, "/v1/models", &[]);
    assert_eq!(code, "401", "relayed request was trusted: {body}");
    let (body, code) = curl_via_relay(&custom_name, https_port, "/admin/api/status", &[]);
    assert_eq!(
        code, "401",
        "admin API through the relay without a token: {body}"
    );
    let admin_token = std::fs::read_to_string(gate_state.join("admin.token")).unwrap();
    let auth = format!("Authorization: Bearer {}", admin_token.trim());
    let (body, code) = curl_via_relay(&custom_name, https_port, "/admin/api/status", &[&auth]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"registered\""), "{body}");

    // `gate status` shows the public URLs with the relay's HTTPS port (not 443 here), as the
    // relay announced it in the registration answer.
    let mut status_cmd = Command::new(gate_bin());
    status_cmd
        .args(["status", "--config"])
        .arg(dir.join("gate.toml"))
        .arg("--state-dir")
        .arg(&gate_state);
    let (ok, text) = output(&mut status_cmd);
    assert!(ok, "gate status: {text}");
    for name in [&node_name, &custom_name] {
        let url = format!("https://{name}:{https_port}/");
        assert!(
            text.contains(&format!("public URL: {url}")),
            "gate status lacks {url}:\n{text}"
        );
    }
    let json = status_cmd
        .arg("--json")
        .output()
        .expect("gate status --json");
    assert!(json.status.success(), "gate status --json: {json:?}");
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status JSON");
    assert_eq!(
        json["relay"]["public_urls"],
        serde_json::json!([
            format!("https://{node_name}:{https_port}/"),
            format!("https://{custom_name}:{https_port}/")
        ]),
        "{json}"
    );

    // An unknown name gets a TLS alert, and the relay keeps serving.
    let (_, code) = curl_via_relay(&format!("nobody.{SUFFIX}"), https_port, "/health", &[]);
    assert_eq!(code, "000");
    assert_eq!(
        curl_via_relay(&custom_name, https_port, "/health", &[]).1,
        "200"
    );

    // Daemon gone: its names get the alert, not a hang.
    drop(gate);
    wait_for(
        "the relay to notice the daemon left",
        Duration::from_secs(90),
        || curl_via_relay(&custom_name, https_port, "/health", &[]).1 == "000",
        || format!("relay log:\n{}", relay.log()),
    );
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
        || Command::new(tool).arg("version").output().is_ok()
}

fn require_tools() {
    for tool in ["curl", "openssl"] {
        assert!(have(tool), "{tool} is required (apt-get install {tool})");
    }
}

#[test]
fn relay_and_daemon_on_tokio() {
    require_tools();
    scenario("tokio", "tokio");
}

#[test]
fn relay_and_daemon_on_smol() {
    require_tools();
    scenario("smol", "smol");
}

#[test]
fn relay_on_smol_daemon_on_tokio() {
    require_tools();
    scenario("smol", "tokio");
}
