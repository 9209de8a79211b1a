//! Scaffolding shared by the daemon's tests: the binaries under test, child processes logging
//! to a file, waits for a condition with a deadline, start-up on ports that may be taken by a
//! test running in parallel, the relay and daemon started that way, and a mock upstream.
//!
//! Each test binary compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gate_daemon::admin::client::{http_request, HttpResponse};
use serde_json::{json, Value};

/// How often a wait polls its condition.
const POLL: Duration = Duration::from_millis(50);
/// How long a server may take to start (and a daemon to register with its relay).
const START_DEADLINE: Duration = Duration::from_secs(90);

/// The runtimes every daemon test runs under, by the names `gate serve --runtime` takes.
pub const RUNTIMES: [&str; 2] = ["tokio", "smol"];

/// `both_runtimes!(a, b)` makes tests `on_tokio::a`, `on_smol::a`, … that run the async
/// scenarios `a(rt)`, `b(rt)` of the calling module under each runtime. Used as
/// `common::both_runtimes!(…)`.
#[allow(unused_macros)] // not every test binary has async scenarios
macro_rules! both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod on_tokio {
            $(#[test]
            fn $name() {
                gate_runtime_tokio::block_on(super::$name).expect("runtime");
            })*
        }
        mod on_smol {
            $(#[test]
            fn $name() {
                gate_runtime_smol::block_on(super::$name).expect("runtime");
            })*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both_runtimes;

/// The `gate` binary under test.
pub fn gate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gate"))
}

/// The `gate-relay` binary, built next to `gate`.
pub fn relay_bin() -> PathBuf {
    let path = gate_bin().with_file_name("gate-relay");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p gate-relay`, or run the tests with --workspace)",
        path.display()
    );
    path
}

/// A fresh, empty directory under the system temp dir, unique to this process and call.
///
/// A test keeps its directories while it runs (and after a failure, to be read); the first
/// call in each test process removes those of test processes that have ended, so runs do
/// not pile directories up in the temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(remove_dirs_of_ended_tests);
    let dir = std::env::temp_dir().join(format!(
        "gate-test-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// Removes `gate-test-{tag}-{pid}-{n}` directories whose process no longer runs (Linux:
/// no `/proc/{pid}`). A directory whose pid was reused is kept until a later sweep.
fn remove_dirs_of_ended_tests() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("gate-test-") {
            continue;
        }
        let mut parts = name.rsplitn(3, '-');
        let (Some(n), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(_), Ok(pid)) = (n.parse::<u64>(), pid.parse::<u32>()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A loopback UDP port that was free a moment ago. Another process may take it before the
/// caller binds it: start servers with [`start_on_free_ports`].
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind a UDP port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A loopback port that was free for both TCP and UDP a moment ago (the relay serves HTTPS
/// on TCP and tunnels on UDP of the same port). Same caveat as [`free_udp_port`].
pub fn free_tcp_and_udp_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().expect("local addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Fails the test unless each of `tools` can be run (`--version`, or `version` as openssl
/// has it); their Debian packages have the same names.
pub fn require_tools(tools: &[&str]) {
    for tool in tools {
        let runs = |arg: &str| Command::new(tool).arg(arg).output().is_ok();
        assert!(
            runs("--version") || runs("version"),
            "{tool} is required (apt-get install -y {tool})"
        );
    }
}

/// Runs `cmd` to completion; returns (success, stdout followed by stderr).
pub fn output(cmd: &mut Command) -> (bool, String) {
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

/// Runs `cmd` to completion with stdin closed; returns (success, stdout, stderr).
pub fn output_split(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd` with `stdin` written to its input; returns (success, stdout, stderr).
pub fn run(cmd: &mut Command, stdin: &str) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gate");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("gate ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `gate` binary with the test's own `GATE_*` and `RUST_LOG` variables removed, so that
/// only what the test sets configures it.
pub fn gate() -> Command {
    let mut cmd = Command::new(gate_bin());
    for (name, _) in std::env::vars() {
        if name.starts_with("GATE_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// `gate ARGS --state-dir STATE` (from [`gate`]).
pub fn gate_in(args: &[&str], state: &Path) -> Command {
    let mut cmd = gate();
    cmd.args(args).arg("--state-dir").arg(state);
    cmd
}

/// Runs `gate ARGS --state-dir STATE` with `stdin`; returns (success, stdout, stderr).
pub fn cli(args: &[&str], state: &Path, stdin: &str) -> (bool, String, String) {
    run(&mut gate_in(args, state), stdin)
}

/// The id `gate token create` announced on stderr (`created API key id ID (...)`).
pub fn created_key_id(stderr: &str) -> String {
    stderr
        .split("created API key id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no key id in: {stderr}"))
        .to_owned()
}

/// A small chat request (`gpt-4o`, 3 tokens at most) for [`post_chat`].
pub const CHAT_BODY: &[u8] =
    br#"{"model":"gpt-4o","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#;

/// `POST /v1/chat/completions` with the JSON `body` and `authorization: Bearer KEY` to the
/// daemon at `addr`.
pub fn post_chat(addr: SocketAddr, key: &str, body: &[u8]) -> std::io::Result<HttpResponse> {
    let auth = format!("Bearer {key}");
    http_request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        body,
    )
}

/// `gate serve` under `runtime` on an ephemeral loopback port with its state in `state`
/// (from [`gate`]; the caller adds configs and runs it).
pub fn gate_serve(runtime: &str, state: &Path) -> Command {
    let mut cmd = gate();
    cmd.args([
        "serve",
        "--runtime",
        runtime,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ])
    .arg("--state-dir")
    .arg(state);
    cmd
}

/// Polls `check` until it gives a value; panics with `what` and `context()` at the deadline.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= end {
            panic!(
                "timed out after {deadline:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// [`wait_for`] a condition that holds or not.
pub fn wait_until(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    wait_for(what, deadline, || check().then_some(()), context)
}

/// A child process whose stdout and stderr go to a log file; killed when dropped.
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("create log");
        let child = cmd
            .stdout(Stdio::from(file.try_clone().expect("log fd")))
            .stderr(Stdio::from(file))
            .env_remove("RUST_LOG")
            .spawn()
            .expect("spawn");
        Proc { child, log }
    }

    /// What the process wrote so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends it a signal by name (`TERM`, `INT`) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.child.id());
    }

    /// [`wait_for`] `check` while the process runs; if it exits first, fails the test with
    /// `what`, its exit status and its log.
    pub fn wait_running<T>(
        &mut self,
        what: &str,
        deadline: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "the process exited ({status}) while waiting for {what}:\n{}",
                    self.log()
                );
            }
            if let Some(value) = check() {
                return value;
            }
            if Instant::now() >= end {
                panic!(
                    "timed out after {deadline:?} waiting for {what}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits (bounded) until it has exited; its status.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        wait_for(
            "the process to exit",
            deadline,
            || self.exited(),
            String::new,
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[path = "../../../tests/support/retry_start.rs"]
mod retry_start;
pub use retry_start::start_on_free_ports;

impl retry_start::Started for Proc {
    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.exited()
    }

    fn log_text(&self) -> String {
        self.log()
    }
}

/// Reads the address `gate serve` recorded in its state directory once it listens (useful
/// with `--port 0`).
pub fn daemon_addr(state_dir: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(state_dir.join("daemon.addr"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A `gate-relay serve` on loopback, with the ports it got.
pub struct Relay {
    pub proc: Proc,
    pub node_id: String,
    /// HTTPS (TCP) and QUIC (UDP) for clients.
    pub https_port: u16,
    /// QUIC for daemons.
    pub p2p_port: u16,
}

impl Relay {
    /// What a daemon's `relay.addresses` names it by: `<node id>@127.0.0.1:<p2p port>`.
    pub fn address(&self) -> String {
        format!("{}@127.0.0.1:{}", self.node_id, self.p2p_port)
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// Starts `gate-relay serve` on probed loopback ports with its state in `dir/relay-state`;
/// its config is written to `dir/relay.toml`, ending with `extra_config`, its log to
/// `dir/relay.log`. Returns once it listens.
pub fn start_relay(
    dir: &Path,
    runtime: &str,
    domain_suffix: &str,
    extra_config: &str,
    env: &[(&str, &str)],
) -> Relay {
    let probe = || (free_tcp_and_udp_port(), free_udp_port());
    start_relay_on(dir, runtime, domain_suffix, extra_config, env, probe)
}

/// [`start_relay`] on the (HTTPS, p2p) ports `ports` gives at each attempt.
pub fn start_relay_on(
    dir: &Path,
    runtime: &str,
    domain_suffix: &str,
    extra_config: &str,
    env: &[(&str, &str)],
    mut ports: impl FnMut() -> (u16, u16),
) -> Relay {
    let state_dir = dir.join("relay-state");
    let node_id = node_id(&relay_bin(), &state_dir);
    let (proc, (https_port, p2p_port)) = start_on_free_ports(
        "the relay",
        START_DEADLINE,
        || {
            let (https_port, p2p_port) = ports();
            let config = dir.join("relay.toml");
            std::fs::write(
                &config,
                format!(
                    "https_port = {https_port}\np2p_port = {p2p_port}\nbind_address = \"127.0.0.1\"\n\
                     domain_suffix = \"{domain_suffix}\"\n{extra_config}"
                ),
            )
            .expect("write relay.toml");
            let mut cmd = Command::new(relay_bin());
            cmd.args(["serve", "--runtime", runtime, "--config"])
                .arg(&config)
                .arg("--state-dir")
                .arg(&state_dir)
                .envs(env.iter().copied());
            (
                Proc::spawn(cmd, dir.join("relay.log")),
                (https_port, p2p_port),
            )
        },
        |relay, _| relay.log().contains("relay listening"),
    );
    Relay {
        proc,
        node_id,
        https_port,
        p2p_port,
    }
}

/// Starts `gate serve` with its relay client on: HTTP on an ephemeral loopback port, its
/// QUIC endpoint on a probed one, registering with `relay` and claiming the custom name
/// `myserver`. Its config is written to `dir/gate.toml` (the `[relay]` table, then
/// `extra_config`), its log to `dir/gate.log`. Returns once the daemon has registered, with
/// its HTTP address.
pub fn start_daemon_with_relay(
    dir: &Path,
    runtime: &str,
    state_dir: &Path,
    relay: &Relay,
    extra_config: &str,
    env: &[(&str, &str)],
) -> (Proc, SocketAddr) {
    let proc = start_daemon_until(
        dir,
        runtime,
        state_dir,
        relay,
        extra_config,
        env,
        "registered with the relay",
    );
    let addr = daemon_addr(state_dir).expect("the daemon recorded its address");
    (proc, addr)
}

/// [`start_daemon_with_relay`], returning once the daemon's log shows `until` (a refusal by
/// the relay, say) rather than its registration.
pub fn start_daemon_until(
    dir: &Path,
    runtime: &str,
    state_dir: &Path,
    relay: &Relay,
    extra_config: &str,
    env: &[(&str, &str)],
    until: &str,
) -> Proc {
    let relay = relay.address();
    let (proc, ()) = start_on_free_ports(
        "the daemon",
        START_DEADLINE,
        || {
            let p2p_port = free_udp_port();
            let config = dir.join("gate.toml");
            std::fs::write(
                &config,
                format!(
                    "host = \"127.0.0.1\"\np2p_port = {p2p_port}\n\n\
                     [relay]\nenable = true\naddresses = [\"{relay}\"]\ncustom_domain = \"myserver\"\n\n\
                     {extra_config}"
                ),
            )
            .expect("write gate.toml");
            let mut cmd = Command::new(gate_bin());
            cmd.args(["serve", "--runtime", runtime, "--port", "0", "--config"])
                .arg(&config)
                .arg("--state-dir")
                .arg(state_dir)
                .envs(env.iter().copied());
            (Proc::spawn(cmd, dir.join("gate.log")), ())
        },
        |gate, ()| gate.log().contains(until),
    );
    proc
}

/// The node id `<bin> id` prints for `state_dir` (`gate` or `gate-relay`; it creates the key
/// on first use).
pub fn node_id(bin: &Path, state_dir: &Path) -> String {
    let (ok, id) = output(Command::new(bin).args(["id", "--state-dir"]).arg(state_dir));
    assert!(ok, "{} id: {id}", bin.display());
    id.trim().to_owned()
}

// ---------------------------------------------------------------- HTTP requests upstreams read

/// One HTTP/1.1 request as an upstream in a test read it.
#[derive(Clone, Debug)]
pub struct HttpRequest {
    /// The request line without its line end (`POST /v1/chat/completions HTTP/1.1`).
    pub line: String,
    /// The headers in order, names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body (`content-length` bytes).
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// `GET`, `POST`, …
    pub fn method(&self) -> &str {
        self.line.split_whitespace().next().unwrap_or("")
    }

    /// The request target (`/v1/models`).
    pub fn path(&self) -> &str {
        self.line.split_whitespace().nth(1).unwrap_or("")
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request from `reader`: its line, its headers up to the empty line, and the
/// `content-length` bytes of body. `None` when the connection ends or breaks before a whole
/// request has come (the peer went away).
pub fn read_request(reader: &mut impl BufRead) -> Option<HttpRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
            if k == "content-length" {
                length = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(HttpRequest {
        line: line.trim_end().to_owned(),
        headers,
        body,
    })
}

// ---------------------------------------------------------------- mock upstream

/// An OpenAI-compatible upstream on loopback (std threads): it answers every chat request
/// with its own name, and `GET …/models` with its model list; or, started with
/// [`Mock::hanging`], it reads requests and never answers.
pub struct Mock {
    pub addr: SocketAddr,
    /// `Authorization` headers of the chat requests it received.
    pub seen_auth: Arc<Mutex<Vec<String>>>,
    /// Chat requests received.
    pub hits: Arc<AtomicUsize>,
    /// Model-list requests received.
    pub model_list_requests: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct MockBehaviour {
    name: &'static str,
    models: Vec<String>,
    hang: bool,
}

impl Mock {
    /// A mock that lists no models (routing then uses the configured lists).
    pub fn start(name: &'static str) -> Mock {
        Self::spawn(MockBehaviour {
            name,
            models: Vec::new(),
            hang: false,
        })
    }

    /// A mock that lists `models`.
    pub fn listing(name: &'static str, models: &[&str]) -> Mock {
        Self::spawn(MockBehaviour {
            name,
            models: models.iter().map(|m| m.to_string()).collect(),
            hang: false,
        })
    }

    /// A mock that accepts connections and reads requests, but never answers.
    pub fn hanging(name: &'static str) -> Mock {
        Self::spawn(MockBehaviour {
            name,
            models: Vec::new(),
            hang: true,
        })
    }

    fn spawn(behaviour: MockBehaviour) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the mock");
        let addr = listener.local_addr().expect("mock address");
        let mock = Mock {
            addr,
            seen_auth: Arc::default(),
            hits: Arc::default(),
            model_list_requests: Arc::default(),
        };
        let counters = (
            mock.seen_auth.clone(),
            mock.hits.clone(),
            mock.model_list_requests.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (behaviour, counters) = (behaviour.clone(), counters.clone());
                std::thread::spawn(move || serve_mock(stream, &behaviour, &counters));
            }
        });
        mock
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

type MockCounters = (Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>, Arc<AtomicUsize>);

fn serve_mock(stream: TcpStream, behaviour: &MockBehaviour, counters: &MockCounters) {
    let (seen, hits, model_lists) = counters;
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    while let Some(request) = read_request(&mut reader) {
        let answer = if request.method() == "GET" {
            model_lists.fetch_add(1, Ordering::SeqCst);
            let data: Vec<Value> = behaviour
                .models
                .iter()
                .map(|id| json!({"id": id, "object": "model"}))
                .collect();
            json!({"object": "list", "data": data}).to_string()
        } else {
            let auth = request.header("authorization").unwrap_or_default();
            seen.lock().unwrap().push(auth.to_owned());
            hits.fetch_add(1, Ordering::SeqCst);
            let model = serde_json::from_slice::<Value>(&request.body)
                .ok()
                .and_then(|v| v["model"].as_str().map(str::to_owned))
                .unwrap_or_default();
            json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": format!("hello from {}", behaviour.name)}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
            })
            .to_string()
        };
        if behaviour.hang {
            // Hold the connection, unanswered, until the client gives up on it.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
            return;
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------- a local daemon

/// Starts `gate serve` on an ephemeral loopback port with `config` (TOML) as its only config
/// file, its state in `dir/state`, its log in `dir/gate.log`; returns once it listens.
/// `wrap` runs it through `sh -c` with a prefix (e.g. `trap "" INT;`) when given.
pub fn start_local_daemon(
    dir: &Path,
    runtime: &str,
    config: &str,
    shell_prefix: Option<&str>,
) -> (Proc, SocketAddr) {
    let state_dir = dir.join("state");
    let config_path = dir.join("gate.toml");
    std::fs::write(&config_path, format!("host = \"127.0.0.1\"\n{config}"))
        .expect("write gate.toml");
    let mut cmd = match shell_prefix {
        None => Command::new(gate_bin()),
        Some(prefix) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("{prefix} exec \"$0\" \"$@\""))
                .arg(gate_bin());
            sh
        }
    };
    cmd.args(["serve", "--runtime", runtime, "--port", "0", "--config"])
        .arg(&config_path)
        .arg("--state-dir")
        .arg(&state_dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("GATE_") {
            cmd.env_remove(name);
        }
    }
    let mut proc = Proc::spawn(cmd, dir.join("gate.log"));
    let addr = wait_for(
        "the daemon to listen",
        START_DEADLINE,
        || {
            if proc.log().contains("gate listening") {
                daemon_addr(&state_dir)
            } else {
                None
            }
        },
        || proc.log(),
    );
    assert!(
        proc.exited().is_none(),
        "the daemon exited:\n{}",
        proc.log()
    );
    (proc, addr)
}

// ---------------------------------------------------------------- streaming upstream

/// An OpenAI-compatible upstream (std threads) that answers every POST with a streamed chat
/// completion: `events` chunks `pause` apart, then `[DONE]`.
pub struct StreamingMock {
    pub addr: SocketAddr,
}

impl StreamingMock {
    pub fn start(events: usize, pause: Duration) -> StreamingMock {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the mock");
        let addr = listener.local_addr().expect("mock address");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || stream_answer(stream, events, pause));
            }
        });
        StreamingMock { addr }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

fn stream_answer(stream: TcpStream, events: usize, pause: Duration) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    if read_request(&mut reader).is_none() {
        return;
    }
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    for i in 0..events {
        let delta = if i == 0 {
            json!({"role": "assistant", "content": format!("tok{i} ")})
        } else {
            json!({"content": format!("tok{i} ")})
        };
        let chunk = json!({
            "id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": null}]
        });
        if stream
            .write_all(format!("data: {chunk}\n\n").as_bytes())
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
        // Pacing of the stream (what a model's token rate looks like), not a wait in a test.
        std::thread::sleep(pause);
    }
    let last = json!({
        "id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    });
    let _ = stream.write_all(format!("data: {last}\n\ndata: [DONE]\n\n").as_bytes());
}

/// A raw HTTP/1.1 request on a new connection whose response is read on a thread into a
/// shared buffer (for watching a stream while it arrives); `Connection: close`.
pub struct RawResponse {
    pub bytes: Arc<Mutex<Vec<u8>>>,
    pub done: Arc<std::sync::atomic::AtomicBool>,
}

impl RawResponse {
    pub fn send(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> RawResponse {
        let mut stream = TcpStream::connect(addr).expect("connect to the daemon");
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream
            .write_all(request.as_bytes())
            .expect("send the request");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, d) = (bytes.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => b.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
            d.store(true, Ordering::SeqCst);
        });
        RawResponse { bytes, done }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }
}
