//! Public HTTPS through the relay, with the real binaries on loopback: `gate-relay serve`
//! and `gate serve` under tokio, smol, and relay-on-smol with daemon-on-tokio. A real TLS
//! client (`curl --resolve`, `openssl s_client`) reaches the daemon's `/health` through the
//! relay and sees the daemon's certificate; relayed requests are never loopback-trusted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    free_tcp_and_udp_port, free_udp_port, gate_bin, node_id, output, relay_bin, require_tools,
    start_daemon_until, start_daemon_with_relay, start_relay, start_relay_on, wait_for, wait_until,
};

const SUFFIX: &str = "gate.localhost";
/// How long each awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(90);

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

fn last_curl_error() -> String {
    LAST_CURL_ERROR
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default()
}

fn scenario(relay_runtime: &str, daemon_runtime: &str) {
    let dir = common::temp_dir(&format!("relay-e2e-{relay_runtime}-{daemon_runtime}"));
    let relay = start_relay(&dir, relay_runtime, SUFFIX, "", &[]);
    let https_port = relay.https_port;
    let gate_state = dir.join("gate-state");
    let (gate, daemon_addr) = start_daemon_with_relay(
        &dir,
        daemon_runtime,
        &gate_state,
        &relay,
        "[auth]\nallow_loopback = true\n",
        &[],
    );
    let node_id = node_id(&gate_bin(), &gate_state);
    let node_name = format!("{node_id}.{SUFFIX}");
    let custom_name = format!("myserver.{SUFFIX}");

    wait_until(
        "the daemon to answer through the relay",
        DEADLINE,
        || {
            curl_via_relay(&custom_name, https_port, "/health", &[]).1 == "200"
                && curl_via_relay(&node_name, https_port, "/health", &[]).1 == "200"
        },
        || {
            format!(
                "last curl error: {}\nrelay log:\n{}\ngate log:\n{}",
                last_curl_error(),
                relay.log(),
                gate.log()
            )
        },
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
        x509.contains(&node_id),
        "the certificate is not the daemon's:\n{x509}"
    );
    // Within about a second of registering, the self-signed certificate names what the relay
    // granted, so a client pinning it can check the host name.
    wait_for(
        "the self-signed certificate to name the relay names",
        Duration::from_secs(15),
        || {
            let (_, text) = output(
                Command::new("openssl")
                    .args(["s_client", "-connect"])
                    .arg(format!("127.0.0.1:{https_port}"))
                    .args(["-servername", &custom_name])
                    .stdin(Stdio::null()),
            );
            let start = text.find("-----BEGIN CERTIFICATE-----")?;
            let end = text.find("-----END CERTIFICATE-----")? + 25;
            std::fs::write(&pem_path, &text[start..end]).ok()?;
            let (_, x509) = output(
                Command::new("openssl")
                    .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
                    .arg(&pem_path),
            );
            (x509.contains(&format!("DNS:{custom_name}"))
                && x509.contains(&format!("DNS:{node_name}")))
            .then_some(())
        },
        String::new,
    );

    // Loopback trust applies locally, never through the relay.
    let local = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{daemon_addr}/v1/models"))
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
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("relay ") && l.contains(": registered")),
        "gate status lacks the relay's own line:\n{text}"
    );
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
    wait_until(
        "the relay to notice the daemon left",
        DEADLINE,
        || curl_via_relay(&custom_name, https_port, "/health", &[]).1 == "000",
        || {
            format!(
                "last curl error: {}\nrelay log:\n{}",
                last_curl_error(),
                relay.log()
            )
        },
    );
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A port another process takes between the probe and the relay's bind makes the relay exit
/// with "address in use", and the start-up helper tries again on new ports.
#[test]
fn a_port_taken_before_the_relay_binds_is_retried() {
    let dir = common::temp_dir("relay-port-taken");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("take a UDP port");
    let taken_port = taken.local_addr().expect("local addr").port();
    let mut offered = Vec::new();
    let relay = start_relay_on(&dir, "tokio", SUFFIX, "", &[], || {
        let p2p = if offered.is_empty() {
            taken_port
        } else {
            free_udp_port()
        };
        offered.push(p2p);
        (free_tcp_and_udp_port(), p2p)
    });
    assert_eq!(offered.len(), 2, "attempts: {offered:?}");
    assert_eq!(relay.p2p_port, offered[1]);
    assert!(relay.log().contains("relay listening"), "{}", relay.log());
    drop(relay);
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn relay_and_daemon_on_tokio() {
    require_tools(&["curl", "openssl"]);
    scenario("tokio", "tokio");
}

#[test]
fn relay_and_daemon_on_smol() {
    require_tools(&["curl", "openssl"]);
    scenario("smol", "smol");
}

#[test]
fn relay_on_smol_daemon_on_tokio() {
    require_tools(&["curl", "openssl"]);
    scenario("smol", "tokio");
}

/// A TLS client (Python's `ssl` over a plain socket, so the socket can be half-closed under
/// TLS) that sends `GET /health`, then `shutdown(SHUT_WR)` (a TCP FIN, no close_notify), and
/// prints everything it reads until the connection ends.
const PYTHON_SHUT_WR: &str = r#"
import socket, ssl, sys
host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
sock = socket.create_connection((host, port), timeout=10)
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
def flush():
    data = outgoing.read()
    if data:
        sock.sendall(data)
while True:
    try:
        tls.do_handshake()
        break
    except ssl.SSLWantReadError:
        flush()
        data = sock.recv(65536)
        if not data:
            sys.exit("EOF during the TLS handshake")
        incoming.write(data)
flush()
tls.write(("GET /health HTTP/1.1\r\nHost: %s\r\n\r\n" % name).encode())
flush()
sock.shutdown(socket.SHUT_WR)
answer, eof = b"", False
while True:
    try:
        chunk = tls.read(65536)
        if not chunk:
            break
        answer += chunk
    except ssl.SSLWantReadError:
        if eof:
            break
        data = sock.recv(65536)
        if data:
            incoming.write(data)
        else:
            incoming.write_eof()
            eof = True
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
        break
sys.stdout.write(answer.decode("utf-8", "replace"))
"#;

/// The subjectAltName of the certificate served for `name` through the relay (one
/// `openssl s_client` connection), as `openssl x509` prints it.
fn served_subject_alt_names(dir: &std::path::Path, https_port: u16, name: &str) -> String {
    let (_, text) = output(
        Command::new("timeout")
            .args(["20", "openssl", "s_client", "-connect"])
            .arg(format!("127.0.0.1:{https_port}"))
            .args(["-servername", name])
            .stdin(Stdio::null()),
    );
    let (Some(start), Some(end)) = (
        text.find("-----BEGIN CERTIFICATE-----"),
        text.find("-----END CERTIFICATE-----"),
    ) else {
        return format!("no certificate seen:\n{text}");
    };
    let pem_path = dir.join("first.pem");
    std::fs::write(&pem_path, &text[start..end + 25]).expect("write the certificate");
    let (_, x509) = output(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&pem_path),
    );
    x509
}

/// Whether a client's output is the daemon's `/health` answer.
fn is_health_answer(text: &str) -> bool {
    text.contains("HTTP/1.1 200") && text.contains("\"status\":\"ok\"")
}

/// Through the relay, the first connection after a registration sees a certificate naming the
/// custom name; each direction of a TCP connection ends on its own: clients that stop
/// sending once their request is out are answered; and a daemon killed with SIGKILL (no
/// goodbye) loses its names within seconds: the next client gets `unrecognized_name`, not a
/// hang.
fn half_close_and_kill_scenario(relay_runtime: &str, daemon_runtime: &str) {
    let dir = common::temp_dir(&format!("relay-doors-{relay_runtime}-{daemon_runtime}"));
    let relay = start_relay(&dir, relay_runtime, SUFFIX, "", &[]);
    let https_port = relay.https_port;
    let gate_state = dir.join("gate-state");
    let (gate, _) = start_daemon_with_relay(&dir, daemon_runtime, &gate_state, &relay, "", &[]);
    let custom_name = format!("myserver.{SUFFIX}");
    let logs = || format!("relay log:\n{}\ngate log:\n{}", relay.log(), gate.log());
    // An open relay says so at start.
    assert!(
        relay
            .log()
            .contains("access.mode = \"open\": any daemon may register"),
        "{}",
        relay.log()
    );

    // The very first connection after the registration sees a certificate naming the custom
    // name (the background refresh would make it only within a second).
    let san = served_subject_alt_names(&dir, https_port, &custom_name);
    assert!(
        san.contains(&format!("DNS:{custom_name}")),
        "the first certificate does not name {custom_name}:\n{san}\n{}",
        logs()
    );
    wait_until(
        "the daemon to answer through the relay",
        DEADLINE,
        || curl_via_relay(&custom_name, https_port, "/health", &[]).1 == "200",
        || format!("last curl error: {}\n{}", last_curl_error(), logs()),
    );
    let request = format!("GET /health HTTP/1.1\r\nHost: {custom_name}\r\n\r\n");

    // gnutls-cli with its input closed right after the request: it sends close_notify and
    // shuts down its write side, then reads until the server closes.
    let mut gnutls = Command::new("sh");
    gnutls
        .arg("-c")
        .arg(format!(
            "printf '{}' | timeout 20 gnutls-cli --insecure --sni-hostname {custom_name} -p {https_port} 127.0.0.1",
            request.replace('\r', "\\r").replace('\n', "\\n")
        ));
    let (_, text) = output(&mut gnutls);
    assert!(
        is_health_answer(&text),
        "gnutls-cli got no answer:\n{text}\n{}",
        logs()
    );

    // Python: TCP FIN after the request, no close_notify.
    let mut python = Command::new("timeout");
    python
        .args(["20", "python3", "-c", PYTHON_SHUT_WR, "127.0.0.1"])
        .arg(https_port.to_string())
        .arg(&custom_name);
    let (ok, text) = output(&mut python);
    assert!(
        ok && is_health_answer(&text),
        "python SHUT_WR got no answer:\n{text}\n{}",
        logs()
    );

    // openssl s_client keeps reading after its input ends (-ign_eof) until the server closes.
    let mut openssl = Command::new("sh");
    openssl.arg("-c").arg(format!(
        "printf '{}' | timeout 20 openssl s_client -quiet -ign_eof -connect 127.0.0.1:{https_port} -servername {custom_name}",
        format!("GET /health HTTP/1.1\r\nHost: {custom_name}\r\nConnection: close\r\n\r\n")
            .replace('\r', "\\r")
            .replace('\n', "\\n")
    ));
    let (_, text) = output(&mut openssl);
    assert!(
        is_health_answer(&text),
        "openssl s_client got no answer:\n{text}\n{}",
        logs()
    );

    // kill -9: no goodbye. The next client gets the alert within 3 s.
    gate.signal("KILL");
    let started = std::time::Instant::now();
    let mut s_client = Command::new("timeout");
    s_client
        .args(["20", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{https_port}"))
        .args(["-servername", &custom_name])
        .stdin(Stdio::null());
    let (_, text) = output(&mut s_client);
    let elapsed = started.elapsed();
    assert!(
        text.contains("unrecognized name") || text.contains("alert number 112"),
        "after kill -9 the client did not get unrecognized_name ({elapsed:?}):\n{text}\n{}",
        logs()
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "unrecognized_name took {elapsed:?} after kill -9\n{}",
        logs()
    );
    drop(gate);
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn half_close_and_kill_on_tokio() {
    require_tools(&["curl", "openssl", "gnutls-cli", "python3"]);
    half_close_and_kill_scenario("tokio", "tokio");
}

#[test]
fn half_close_and_kill_on_smol() {
    require_tools(&["curl", "openssl", "gnutls-cli", "python3"]);
    half_close_and_kill_scenario("smol", "smol");
}

#[test]
fn half_close_and_kill_relay_on_smol_daemon_on_tokio() {
    require_tools(&["curl", "openssl", "gnutls-cli", "python3"]);
    half_close_and_kill_scenario("smol", "tokio");
}

/// What `gate-relay status` prints for the relay whose state is in `dir/relay-state`.
fn relay_status(dir: &std::path::Path) -> String {
    output(
        Command::new(relay_bin())
            .args(["status", "--state-dir"])
            .arg(dir.join("relay-state")),
    )
    .1
}

/// A relay closed with `[access] mode = "allowlist"`: a listed daemon registers and is
/// reachable; an unlisted one is refused with a message that says what to do, in its log and
/// `gate status` and in the relay's log; it gets no name; `gate-relay status` lists who is
/// admitted.
fn allowlist_scenario(relay_runtime: &str, daemon_runtime: &str) {
    let dir = common::temp_dir(&format!("relay-allowlist-{relay_runtime}-{daemon_runtime}"));
    let listed_dir = dir.join("listed");
    let stranger_dir = dir.join("stranger");
    for d in [&listed_dir, &stranger_dir] {
        std::fs::create_dir_all(d).expect("create a daemon directory");
    }
    let listed_state = listed_dir.join("state");
    let stranger_state = stranger_dir.join("state");
    let listed_id = node_id(&gate_bin(), &listed_state);
    let stranger_id = node_id(&gate_bin(), &stranger_state);
    let relay = start_relay(
        &dir,
        relay_runtime,
        SUFFIX,
        &format!("[access]\nmode = \"allowlist\"\nallowed_nodes = [\"{listed_id}\"]\n"),
        &[],
    );
    assert!(
        relay
            .log()
            .contains("access.mode = \"allowlist\": only the listed daemons may register"),
        "{}",
        relay.log()
    );

    let stranger = start_daemon_until(
        &stranger_dir,
        daemon_runtime,
        &stranger_state,
        &relay,
        "",
        &[],
        "the relay refused the registration",
    );
    let gate_log = stranger.log();
    assert!(
        gate_log.contains(&format!("node {stranger_id} is not one of them"))
            && gate_log.contains("access.allowed_nodes"),
        "the daemon's refusal does not say why:\n{gate_log}"
    );
    wait_until(
        "the relay to log the refusal",
        DEADLINE,
        || {
            relay
                .log()
                .contains("registration refused: this relay admits only")
        },
        || relay.log(),
    );
    let (ok, text) = output(
        Command::new(gate_bin())
            .args(["status", "--config"])
            .arg(stranger_dir.join("gate.toml"))
            .arg("--state-dir")
            .arg(&stranger_state),
    );
    assert!(ok, "gate status: {text}");
    assert!(
        text.contains("refused the registration: this relay admits only"),
        "gate status does not show the refusal:\n{text}"
    );
    let stranger_name = format!("{stranger_id}.{SUFFIX}");
    assert_eq!(
        curl_via_relay(&stranger_name, relay.https_port, "/health", &[]).1,
        "000",
        "an unlisted daemon is reachable"
    );

    let (listed, _) =
        start_daemon_with_relay(&listed_dir, daemon_runtime, &listed_state, &relay, "", &[]);
    let custom_name = format!("myserver.{SUFFIX}");
    wait_until(
        "the listed daemon to answer through the relay",
        DEADLINE,
        || curl_via_relay(&custom_name, relay.https_port, "/health", &[]).1 == "200",
        || format!("{}\n{}\n{}", last_curl_error(), relay.log(), listed.log()),
    );

    let status = || relay_status(&dir);
    let text = wait_for(
        "gate-relay status to list the admitted daemon",
        DEADLINE,
        || {
            let text = status();
            text.contains("access: allowlist, 1 daemon(s) admitted")
                .then_some(text)
        },
        status,
    );
    assert!(text.contains(&format!("  {listed_id}\n")), "{text}");
    drop(listed);
    drop(stranger);
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn allowlist_on_tokio() {
    require_tools(&["curl"]);
    allowlist_scenario("tokio", "tokio");
}

#[test]
fn allowlist_on_smol() {
    require_tools(&["curl"]);
    allowlist_scenario("smol", "smol");
}

#[test]
fn allowlist_relay_on_smol_daemon_on_tokio() {
    require_tools(&["curl"]);
    allowlist_scenario("smol", "tokio");
}

/// A relay closed with `[access] mode = "token"`, the tokens in `RELAY__ACCESS__TOKENS`: a
/// daemon with the right token (`GATE_RELAY__TOKEN`) registers and is reachable; one without a
/// token and one with a wrong token are refused with a message that says what to do, in their
/// log and `gate status` and in the relay's log; no secret shows in any log or status; `gate-relay
/// status` names the token and the daemon that used it.
fn token_scenario(relay_runtime: &str, daemon_runtime: &str) {
    const SECRET: &str = "right-secret-0123456789";
    const WRONG: &str = "wrong-secret-0123456789";
    let dir = common::temp_dir(&format!("relay-token-{relay_runtime}-{daemon_runtime}"));
    let dirs: Vec<_> = ["good", "none", "wrong"]
        .iter()
        .map(|d| dir.join(d))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).expect("create a daemon directory");
    }
    let states: Vec<_> = dirs.iter().map(|d| d.join("state")).collect();
    let good_id = node_id(&gate_bin(), &states[0]);
    let tokens = format!("team-a:{SECRET}");
    let relay = start_relay(
        &dir,
        relay_runtime,
        SUFFIX,
        "[access]\nmode = \"token\"\n",
        &[("RELAY__ACCESS__TOKENS", tokens.as_str())],
    );
    assert!(
        relay.log().contains(
            "access.mode = \"token\": only daemons with a registration token may register"
        ),
        "{}",
        relay.log()
    );

    let none = start_daemon_until(
        &dirs[1],
        daemon_runtime,
        &states[1],
        &relay,
        "",
        &[],
        "the relay refused the registration",
    );
    assert!(
        none.log()
            .contains("sent none; set relay.token (GATE_RELAY__TOKEN)"),
        "the daemon's refusal does not say why:\n{}",
        none.log()
    );
    let wrong = start_daemon_until(
        &dirs[2],
        daemon_runtime,
        &states[2],
        &relay,
        "",
        &[("GATE_RELAY__TOKEN", WRONG)],
        "the relay refused the registration",
    );
    assert!(
        wrong.log().contains("is not one this relay accepts"),
        "the daemon's refusal does not say why:\n{}",
        wrong.log()
    );
    wait_until(
        "the relay to log both refusals",
        DEADLINE,
        || {
            let log = relay.log();
            log.contains(
                "registration refused: this relay admits only daemons with a registration token",
            ) && log.contains("registration refused: the registration token node")
        },
        || relay.log(),
    );
    let (ok, text) = output(
        Command::new(gate_bin())
            .args(["status", "--config"])
            .arg(dirs[2].join("gate.toml"))
            .arg("--state-dir")
            .arg(&states[2]),
    );
    assert!(ok, "gate status: {text}");
    assert!(
        text.contains("refused the registration: the registration token node"),
        "gate status does not show the refusal:\n{text}"
    );

    let (good, _) = start_daemon_with_relay(
        &dirs[0],
        daemon_runtime,
        &states[0],
        &relay,
        "",
        &[("GATE_RELAY__TOKEN", SECRET)],
    );
    let custom_name = format!("myserver.{SUFFIX}");
    wait_until(
        "the daemon with the token to answer through the relay",
        DEADLINE,
        || curl_via_relay(&custom_name, relay.https_port, "/health", &[]).1 == "200",
        || format!("{}\n{}\n{}", last_curl_error(), relay.log(), good.log()),
    );

    let status = || relay_status(&dir);
    let text = wait_for(
        "gate-relay status to name the token and its daemon",
        DEADLINE,
        || {
            let text = status();
            text.contains(&format!("token team-a: used by {good_id}"))
                .then_some(text)
        },
        status,
    );
    assert!(text.contains("access: token, 1 token(s)"), "{text}");
    assert!(text.contains("admitted with token team-a"), "{text}");
    // No secret anywhere a person or another user can read.
    let status_json =
        std::fs::read_to_string(dir.join("relay-state").join("status.json")).unwrap_or_default();
    for (what, text) in [
        ("relay log", relay.log()),
        ("gate-relay status", text),
        ("status.json", status_json),
        ("daemon log", good.log()),
        ("daemon log", wrong.log()),
    ] {
        assert!(
            !text.contains(SECRET) && !text.contains(WRONG),
            "a token shows in the {what}:\n{text}"
        );
    }
    drop(good);
    drop(none);
    drop(wrong);
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn token_on_tokio() {
    require_tools(&["curl"]);
    token_scenario("tokio", "tokio");
}

#[test]
fn token_on_smol() {
    require_tools(&["curl"]);
    token_scenario("smol", "smol");
}

#[test]
fn token_relay_on_smol_daemon_on_tokio() {
    require_tools(&["curl"]);
    token_scenario("smol", "tokio");
}
