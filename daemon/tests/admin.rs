//! Runtime configuration end to end, against the real `gate` binary under both runtimes:
//! layer priority, live changes through the CLI and admin API, persistence across
//! restarts, crash safety of the runtime file, bad input at start and on hot reload, and
//! the admin surface's security (no token, no entry; no secret in any output).
//!
//! Upstreams are a tiny HTTP responder in `common` (std threads), so nothing here
//! depends on another process than `gate`. Waits are for conditions with deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{cli, created_key_id, gate, gate_serve, temp_dir, wait_for, Mock, RUNTIMES};
use gate_daemon::admin::client::{http_request, HttpResponse};
use serde_json::{json, Value};

mod common;

const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- the daemon

struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    state_dir: PathBuf,
}

impl Daemon {
    fn start(runtime: &str, state_dir: &Path, configs: &[&Path], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = gate_serve(runtime, state_dir);
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for config in configs {
            cmd.arg("--config").arg(config);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("gate serve starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let addr = wait_for(
            "the daemon to listen",
            DEADLINE,
            || {
                let lines = log.lock().unwrap();
                lines.iter().find_map(|l| {
                    let rest = l.split("gate listening on http://").nth(1)?;
                    rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
                })
            },
            || log.lock().unwrap().join("\n"),
        );
        Daemon {
            child,
            addr,
            log,
            state_dir: state_dir.to_path_buf(),
        }
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn admin(&self, method: &str, route: &str, body: Option<Value>) -> HttpResponse {
        let auth = format!("Bearer {}", self.admin_token());
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        http_request(
            self.addr,
            method,
            &format!("/admin/api/{route}"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .unwrap()
    }

    fn chat(&self, api_key: &str, model: &str) -> HttpResponse {
        let auth = format!("Bearer {api_key}");
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        http_request(
            self.addr,
            "POST",
            "/v1/chat/completions",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .unwrap()
    }

    /// Asserts that a chat request for `model` succeeds and is answered by the mock `name`.
    fn assert_answered_by(&self, api_key: &str, model: &str, name: &str) {
        let response = self.chat(api_key, model);
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(
            response.json()["choices"][0]["message"]["content"],
            format!("hello from {name}")
        );
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd`, which must succeed (else `what` fails the test with its stderr), and parses
/// its stdout as JSON.
fn json_output(cmd: &mut Command, what: &str) -> Value {
    let out = cmd.output().expect("run gate");
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn assert_no_secret(secrets: &[&str], text: &str, where_: &str) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "a secret value appears in {where_}:\n{text}"
        );
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn priority_of_layers_is_reported_with_origins() {
    let dir = temp_dir("priority");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let nix = dir.join("nix.toml");
    std::fs::write(
        &nix,
        "log_level = \"warn\"\nport = 4001\np2p_port = 4101\n[auth.jwt]\nexpiration_hours = 5\n",
    )
    .unwrap();
    std::fs::write(
        state.join("config.toml"),
        "log_level = \"debug\"\nport = 4002\n",
    )
    .unwrap();
    let shown = json_output(
        gate()
            .args(["config", "show", "--origin", "--json", "--config"])
            .arg(&nix)
            .arg("--state-dir")
            .arg(&state)
            .env("GATE_LOG_LEVEL", "trace")
            .env("GATE__AUTH__JWT__EXPIRATION_HOURS", "7"),
        "config show",
    );
    let check = |key: &str, value: Value, layer: &str| {
        let entry = &shown[key];
        assert_eq!(entry["value"], value, "{key}: {entry}");
        assert_eq!(entry["origin"]["layer"], layer, "{key}: {entry}");
    };
    // Set in all four layers (log_level has a default): the environment wins.
    check("log_level", json!("trace"), "environment");
    check("auth.jwt.expiration_hours", json!(7), "environment");
    assert_eq!(
        shown["log_level"]["origin"]["variable"], "GATE_LOG_LEVEL",
        "{shown}"
    );
    // Defaults, nix and runtime: the runtime file wins, with its file and line.
    check("port", json!(4002), "runtime");
    assert_eq!(shown["port"]["origin"]["line"], 2);
    assert!(shown["port"]["origin"]["file"]
        .as_str()
        .unwrap()
        .ends_with("config.toml"));
    // Defaults and nix: nix wins.
    check("p2p_port", json!(4101), "nix");
    // Defaults only.
    check("auth.jwt.issuer", json!("gate-daemon"), "defaults");
    // Without the environment, the runtime value of log_level shows.
    let shown = json_output(
        gate()
            .args(["config", "show", "--json", "--config"])
            .arg(&nix)
            .arg("--state-dir")
            .arg(&state),
        "config show",
    );
    assert_eq!(shown["log_level"]["value"], "debug");
    assert_eq!(shown["log_level"]["origin"]["layer"], "runtime");
}

#[test]
fn live_changes_through_the_cli_persist_across_restarts() {
    for runtime in RUNTIMES {
        live_change(runtime);
    }
}

fn live_change(runtime: &str) {
    let dir = temp_dir(&format!("live-{runtime}"));
    let state = dir.join("state");
    let nix_mock = Mock::start("nix-mock");
    let live_mock = Mock::start("live-mock");
    let nix = dir.join("nix.toml");
    let nix_key = "sk-nix-secret-0123456789";
    std::fs::write(
        &nix,
        format!(
            "[upstreams.nixup]\nprovider = \"custom\"\nbase_url = \"{}\"\napi_key = \"{nix_key}\"\nmodels = [\"nix-model\"]\n",
            nix_mock.base_url()
        ),
    )
    .unwrap();
    let jwt_secret = "jwt-secret-abcdefghijklmnop";
    let env = [("GATE_AUTH__JWT__SECRET", jwt_secret)];
    let daemon = Daemon::start(runtime, &state, &[&nix], &env);
    let mut outputs = String::new();

    // An API key, created through the running daemon.
    let (ok, api_key, err) = cli(&["token", "create", "--name", "test"], &state, "");
    assert!(ok, "{err}");
    assert!(err.contains("via the running daemon"), "{err}");
    let api_key = api_key.trim().to_owned();
    outputs.push_str(&err);
    daemon.assert_answered_by(&api_key, "nix-model", "nix-mock");

    // Add an upstream with a key; the very next request uses it.
    let live_key = "sk-live-secret-9876543210";
    let base = live_mock.base_url();
    let (ok, out, err) = cli(
        &[
            "upstream",
            "add",
            "live",
            "--provider",
            "custom",
            "--base-url",
            &base,
            "--api-key-stdin",
            "--models",
            "live-model",
        ],
        &state,
        live_key,
    );
    assert!(ok, "{err}");
    assert!(err.contains("via the running daemon"), "{err}");
    outputs.push_str(&out);
    outputs.push_str(&err);
    daemon.assert_answered_by(&api_key, "live-model", "live-mock");
    assert_eq!(
        live_mock
            .seen_auth
            .lock()
            .unwrap()
            .last()
            .map(String::as_str),
        Some(format!("Bearer {live_key}").as_str()),
        "the upstream gets its own key, not the client's"
    );

    // The admin API shows the key as set, never its value.
    for route in [
        "status",
        "config",
        "upstreams",
        "models",
        "tokens",
        "reload",
    ] {
        let response = daemon.admin("GET", route, None);
        assert_eq!(response.status, 200, "{route}");
        let text = String::from_utf8_lossy(&response.body).into_owned();
        assert_no_secret(&[live_key, nix_key, jwt_secret, &api_key], &text, route);
        outputs.push_str(&text);
    }
    let upstreams = daemon.admin("GET", "upstreams", None).json();
    let live = upstreams["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "live")
        .unwrap()
        .clone();
    assert_eq!(live["api_key"]["set"], true);
    assert_eq!(live["layer"], "runtime");
    let (ok, out, err) = cli(&["config", "show", "--origin"], &state, "");
    assert!(ok, "{err}");
    assert!(out.contains("api_key = \"(set)\""), "{out}");
    outputs.push_str(&out);
    let (ok, out, err) = cli(&["upstream", "list"], &state, "");
    assert!(ok, "{err}");
    outputs.push_str(&out);
    let (ok, out, err) = cli(&["status"], &state, "");
    assert!(ok, "{err}");
    assert!(
        out.contains("live") && out.contains("/ui/login?code="),
        "{out}"
    );
    assert!(out.contains("relay: not configured"), "{out}");
    outputs.push_str(&out);
    let (ok, out, err) = cli(&["status", "--json"], &state, "");
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert!(status["login_url"]
        .as_str()
        .unwrap()
        .contains("/ui/login?code="));
    assert_eq!(status["upstreams"].as_array().unwrap().len(), 2);
    outputs.push_str(&out);

    // Restart: the upstream is still there.
    let log = daemon.kill();
    outputs.push_str(&log);
    let daemon = Daemon::start(runtime, &state, &[&nix], &env);
    let response = daemon.chat(&api_key, "live-model");
    assert_eq!(response.status, 200, "after restart");

    // Remove the upstream the --config file defines; it is gone at once.
    let (ok, _, err) = cli(&["upstream", "remove", "nixup"], &state, "");
    assert!(ok, "{err}");
    assert!(err.contains("via the running daemon"), "{err}");
    let nix_hits = nix_mock.hits.load(Ordering::SeqCst);
    let response = daemon.chat(&api_key, "nix-model");
    assert_eq!(
        response.status,
        404,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(nix_mock.hits.load(Ordering::SeqCst), nix_hits);
    let log = daemon.kill();
    outputs.push_str(&log);

    // Restart: still gone, while the nix file still defines it.
    let daemon = Daemon::start(runtime, &state, &[&nix], &env);
    let response = daemon.chat(&api_key, "nix-model");
    assert_eq!(
        response.status, 404,
        "removed upstream came back after restart"
    );
    let names: Vec<String> = daemon.admin("GET", "upstreams", None).json()["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["live".to_owned()]);

    // Revoke the API key through the CLI: refused at once.
    let tokens = daemon.admin("GET", "tokens", None).json();
    let id = tokens["tokens"][0]["id"].as_str().unwrap().to_owned();
    let (ok, _, err) = cli(&["token", "revoke", &id], &state, "");
    assert!(ok, "{err}");
    assert_eq!(daemon.chat(&api_key, "live-model").status, 401);
    outputs.push_str(&daemon.kill());

    assert_no_secret(
        &[live_key, nix_key, jwt_secret],
        &outputs,
        "CLI output, logs or API",
    );
    // The API key itself appears only where it was printed once (stdout of create).
    assert!(!outputs.contains(&api_key), "the API key leaked");
}

#[test]
fn without_a_daemon_the_cli_edits_the_file() {
    let dir = temp_dir("offline");
    let state = dir.join("state");
    let (ok, _, err) = cli(&["config", "set", "log_level", "debug"], &state, "");
    assert!(ok, "{err}");
    assert!(!err.contains("via the running daemon"), "{err}");
    let text = std::fs::read_to_string(state.join("config.toml")).unwrap();
    assert!(text.contains("log_level = \"debug\""), "{text}");
    // A bad value is refused with the reason, and nothing changes.
    let (ok, _, err) = cli(&["config", "set", "port", "not-a-number"], &state, "");
    assert!(!ok);
    assert!(
        err.contains("port") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("config.toml")).unwrap(),
        text
    );
}

#[test]
fn bad_values_through_the_api_are_refused_and_change_nothing() {
    for runtime in RUNTIMES {
        let dir = temp_dir(&format!("refuse-{runtime}"));
        let state = dir.join("state");
        let daemon = Daemon::start(runtime, &state, &[], &[]);
        let ok = daemon.admin("PUT", "config/log_level", Some(json!({"value": "debug"})));
        assert_eq!(ok.status, 200);
        let before = std::fs::read(state.join("config.toml")).unwrap();
        for (method, route, body) in [
            ("PUT", "config/port", json!({"value": "eighty"})),
            ("PUT", "config/no_such_key", json!({"value": "1"})),
            (
                "POST",
                "upstreams",
                json!({"name": "x", "provider": "nonsense"}),
            ),
            (
                "POST",
                "upstreams",
                json!({"name": "mine", "provider": "custom"}),
            ),
            (
                "POST",
                "upstreams",
                json!({"name": "Bad Name!", "provider": "openai"}),
            ),
        ] {
            let response = daemon.admin(method, route, Some(body.clone()));
            assert_eq!(response.status, 400, "{route} {body}");
            let error = response.json()["error"].as_str().unwrap().to_owned();
            assert!(
                error.contains("nothing was changed") || error.contains("needs"),
                "{error}"
            );
            assert_eq!(std::fs::read(state.join("config.toml")).unwrap(), before);
        }
        let (ok, _, err) = cli(&["config", "set", "port", "eighty"], &state, "");
        assert!(!ok);
        assert!(
            err.contains("`port`") && err.contains("via the running daemon"),
            "{err}"
        );
        assert_eq!(std::fs::read(state.join("config.toml")).unwrap(), before);
    }
}

#[test]
fn bad_runtime_file_at_start_exits_before_binding() {
    let cases = [
        ("port = \n", vec!["config.toml", "line 1", "TOML"]),
        (
            "log_level = \"info\"\nport = \"eighty\"\n",
            vec!["config.toml", "line 2", "`port`", "must be"],
        ),
        (
            "[upstreams.x]\nprovider = \"nonsense\"\n",
            vec!["config.toml", "upstreams.x.provider", "must be"],
        ),
    ];
    for runtime in RUNTIMES {
        for (text, expected) in &cases {
            let dir = temp_dir("badstart");
            std::fs::write(dir.join("config.toml"), text).unwrap();
            // A port we hold: if the daemon tried to bind it, the message would say so.
            let holder = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = holder.local_addr().unwrap().port().to_string();
            let out = gate()
                .args([
                    "serve",
                    "--runtime",
                    runtime,
                    "--port",
                    &port,
                    "--state-dir",
                ])
                .arg(&dir)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{text:?} was accepted");
            for needle in expected {
                assert!(
                    err.contains(needle),
                    "{text:?}: {needle:?} missing in: {err}"
                );
            }
            assert!(
                !err.contains("cannot listen") && !err.contains("listening"),
                "{err}"
            );
            // The file is left as it was.
            assert_eq!(
                std::fs::read_to_string(dir.join("config.toml")).unwrap(),
                *text
            );
        }
    }
}

#[test]
fn bad_runtime_file_on_hot_reload_keeps_the_last_good_config() {
    for runtime in RUNTIMES {
        let dir = temp_dir(&format!("hot-{runtime}"));
        let state = dir.join("state");
        let mock = Mock::start("mock");
        let daemon = Daemon::start(runtime, &state, &[], &[]);
        let added = daemon.admin(
            "POST",
            "upstreams",
            Some(json!({"name": "m", "provider": "custom", "base_url": mock.base_url(), "models": "m-model"})),
        );
        assert_eq!(added.status, 200, "{:?}", added.json());
        let key = daemon
            .admin("POST", "tokens", Some(json!({"name": "t"})))
            .json()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(daemon.chat(&key, "m-model").status, 200);

        // Someone edits the file by hand and breaks it.
        let path = state.join("config.toml");
        let good = std::fs::read_to_string(&path).unwrap();
        let broken = format!("{good}\nport = [\n");
        std::fs::write(&path, &broken).unwrap();
        let error = wait_for(
            "the reload error",
            DEADLINE,
            || {
                let v = daemon.admin("GET", "status", None).json();
                v["last_reload_error"]["message"]
                    .as_str()
                    .map(str::to_owned)
            },
            || daemon.log_text(),
        );
        assert!(
            error.contains("config.toml") && error.contains("line"),
            "{error}"
        );
        // Still serving with the last good config; the file is untouched.
        assert_eq!(daemon.chat(&key, "m-model").status, 200);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);
        assert!(daemon.log_text().contains("keeping the last good one"));
        let config = daemon.admin("GET", "config", None).json();
        assert!(config["last_reload_error"]["message"].is_string());

        // A bad value (valid TOML) is handled the same way.
        std::fs::write(&path, format!("{good}\nlog_level = 5\n")).unwrap();
        wait_for(
            "the second reload error",
            DEADLINE,
            || {
                let v = daemon.admin("GET", "reload", None).json();
                v["last_reload_error"]["message"]
                    .as_str()
                    .filter(|m| m.contains("log_level"))
                    .map(str::to_owned)
            },
            || daemon.log_text(),
        );
        assert_eq!(daemon.chat(&key, "m-model").status, 200);

        // Fixing the file clears the error.
        std::fs::write(&path, &good).unwrap();
        wait_for(
            "the error to clear",
            DEADLINE,
            || {
                let v = daemon.admin("GET", "reload", None).json();
                v["last_reload_error"].is_null().then_some(())
            },
            || daemon.log_text(),
        );
    }
}

#[test]
fn kill_9_while_writing_leaves_a_complete_runtime_file() {
    for runtime in RUNTIMES {
        let dir = temp_dir(&format!("crash-{runtime}"));
        let state = dir.join("state");
        let mock = Mock::start("big");
        for round in 0..4 {
            let base = mock.base_url();
            let daemon = Daemon::start(runtime, &state, &[], &[]);
            let addr = daemon.addr;
            let token = daemon.admin_token();
            let writes = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let (w, s) = (writes.clone(), stop.clone());
            let writer = std::thread::spawn(move || {
                let auth = format!("Bearer {token}");
                let mut i = 0usize;
                while !s.load(Ordering::SeqCst) {
                    i += 1;
                    // A large, self-consistent value: 300 models all tagged with `i`.
                    let models: Vec<String> = (0..300).map(|n| format!("m{n}-v{i}")).collect();
                    let body = json!({"value": models}).to_string();
                    match http_request(
                        addr,
                        "PUT",
                        "/admin/api/config/upstreams.big.models",
                        &[("Authorization", &auth)],
                        body.as_bytes(),
                    ) {
                        Ok(r) if r.status == 200 => {
                            w.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            if i == 1 {
                                // The upstream does not exist yet: create it once.
                                let _ = http_request(
                                    addr,
                                    "POST",
                                    "/admin/api/upstreams",
                                    &[("Authorization", &auth)],
                                    json!({"name": "big", "provider": "custom", "base_url": base})
                                        .to_string()
                                        .as_bytes(),
                                );
                            }
                        }
                    }
                }
            });
            let target = writes.load(Ordering::SeqCst) + 10 + round * 7;
            wait_for(
                "writes",
                DEADLINE,
                || (writes.load(Ordering::SeqCst) >= target).then_some(()),
                || daemon.log_text(),
            );
            // kill -9 in the middle of the write loop.
            let mut daemon = daemon;
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
            stop.store(true, Ordering::SeqCst);
            let _ = writer.join();
            drop(daemon);

            let shown = json_output(
                gate()
                    .args(["config", "show", "--json", "--state-dir"])
                    .arg(&state),
                &format!("round {round}: config show after kill -9"),
            );
            let models = shown["upstreams.big.models"]["value"]
                .as_array()
                .unwrap_or_else(|| panic!("round {round}: empty or torn runtime file: {shown}"));
            assert_eq!(models.len(), 300, "round {round}: torn list");
            let tag = models[0]
                .as_str()
                .unwrap()
                .split("-v")
                .nth(1)
                .unwrap()
                .to_owned();
            assert!(
                models
                    .iter()
                    .all(|m| m.as_str().unwrap().ends_with(&format!("-v{tag}"))),
                "round {round}: mixed versions in one file"
            );
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(state.join("config.toml"))
                    .unwrap()
                    .permissions(),
            );
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

#[test]
fn admin_endpoints_refuse_without_the_token() {
    for runtime in RUNTIMES {
        let dir = temp_dir(&format!("sec-{runtime}"));
        let state = dir.join("state");
        let daemon = Daemon::start(
            runtime,
            &state,
            &[],
            &[("GATE_AUTH__ALLOW_LOOPBACK", "true")],
        );
        let token_mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(state.join("admin.token"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(token_mode & 0o777, 0o600);
        let routes = [
            ("GET", "/admin/api/status"),
            ("GET", "/admin/api/config"),
            ("PUT", "/admin/api/config/log_level"),
            ("DELETE", "/admin/api/config/log_level"),
            ("GET", "/admin/api/upstreams"),
            ("POST", "/admin/api/upstreams"),
            ("DELETE", "/admin/api/upstreams/x"),
            ("GET", "/admin/api/tokens"),
            ("POST", "/admin/api/tokens"),
            ("GET", "/admin/api/models"),
            ("POST", "/admin/api/login-url"),
        ];
        let body = br#"{"value":"debug","name":"x","provider":"openai"}"#;
        let forged = format!("gate_session_{}=forged", daemon.addr.port());
        // A valid client API key is not an admin credential.
        let client_key = daemon
            .admin("POST", "tokens", Some(json!({"name": "client"})))
            .json()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let client_auth = format!("Bearer {client_key}");
        // Loopback trust is on for the LLM API here; the admin API still refuses.
        for (method, path) in routes {
            for headers in [
                vec![],
                vec![("Authorization", "Bearer wrong")],
                vec![("Authorization", "Bearer gk_not_an_admin_token")],
                vec![("Cookie", "gate_session=forged")],
                vec![("Cookie", forged.as_str())],
                vec![("Authorization", client_auth.as_str())],
            ] {
                let r = http_request(daemon.addr, method, path, &headers, body).unwrap();
                assert_eq!(r.status, 401, "{method} {path} {headers:?}");
            }
        }
        assert!(
            !state.join("config.toml").exists(),
            "a refused request wrote the file"
        );
        // The web UI needs a session; a login code works once.
        let r = http_request(daemon.addr, "GET", "/ui/", &[], b"").unwrap();
        assert_eq!(r.status, 401);
        let url = daemon.admin("POST", "login-url", None).json()["url"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = url
            .split_once(&daemon.addr.to_string())
            .unwrap()
            .1
            .to_owned();
        let r = http_request(daemon.addr, "GET", &path, &[], b"").unwrap();
        assert_eq!(r.status, 303);
        let cookie = r.header("set-cookie").unwrap().to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let session = cookie.split(';').next().unwrap().to_owned();
        let again = http_request(daemon.addr, "GET", &path, &[], b"").unwrap();
        assert_eq!(again.status, 401, "a login code worked twice");
        let page = http_request(daemon.addr, "GET", "/ui/", &[("Cookie", &session)], b"").unwrap();
        assert_eq!(page.status, 200);
        // Cookie-authenticated changes need the CSRF header and a same-origin Origin.
        let set_log_level = |headers: &[(&str, &str)]| {
            http_request(
                daemon.addr,
                "PUT",
                "/admin/api/config/log_level",
                headers,
                br#"{"value":"debug"}"#,
            )
            .unwrap()
        };
        let r = set_log_level(&[("Cookie", &session)]);
        assert_eq!(r.status, 403);
        let r = set_log_level(&[
            ("Cookie", &session),
            ("X-Gate-CSRF", "1"),
            ("Origin", "http://evil.example"),
        ]);
        assert_eq!(r.status, 403);
        let origin = format!("http://{}", daemon.addr);
        let r = set_log_level(&[
            ("Cookie", &session),
            ("X-Gate-CSRF", "1"),
            ("Origin", &origin),
        ]);
        assert_eq!(r.status, 200, "{:?}", r.json());
        let log = daemon.kill();
        assert!(
            !log.contains(&session.replace("gate_session=", "")),
            "session id logged"
        );
    }
}

/// The policy of the key with `id` in `gate token list --json`.
fn listed_policy(state: &Path, id: &str) -> Value {
    let rows = json_output(
        gate()
            .args(["token", "list", "--json", "--state-dir"])
            .arg(state),
        "token list --json",
    );
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("key {id} not listed: {rows}"))["policy"]
        .clone()
}

#[test]
fn key_policy_is_set_changed_and_listed_with_or_without_a_daemon() {
    // Without a daemon: the CLI edits tokens.json.
    let dir = temp_dir("policy-offline");
    let state = dir.join("state");
    let (ok, key, err) = cli(
        &[
            "token",
            "create",
            "--name",
            "ci",
            "--models",
            "gpt-*, claude-*",
            "--rpm",
            "60",
            "--tpm",
            "100000",
            "--budget",
            "$20",
            "--period",
            "week",
            "--owner",
            "alice",
            "--expires",
            "30d",
        ],
        &state,
        "",
    );
    assert!(ok, "{err}");
    assert!(key.trim().starts_with("gk_"), "{key}");
    let id = created_key_id(&err);
    assert_eq!(
        listed_policy(&state, &id),
        json!({"models": ["gpt-*", "claude-*"], "rpm": 60, "tpm": 100000,
               "budget": {"usd": 20.0, "period": "week"}, "owner": "alice"})
    );
    let (ok, out, err) = cli(&["token", "list"], &state, "");
    assert!(ok, "{err}");
    assert!(
        out.contains("models gpt-*,claude-*")
            && out.contains("rpm 60")
            && out.contains("budget $20.00/week")
            && out.contains("owner alice")
            && out.contains("expires 20"),
        "{out}"
    );
    // Options left out stay; `none` removes a limit; a budget keeps its period.
    let (ok, _, err) = cli(
        &[
            "token", "update", &id, "--rpm", "none", "--budget", "5", "--models", "",
        ],
        &state,
        "",
    );
    assert!(ok, "{err}");
    assert!(err.contains("budget $5.00/week"), "{err}");
    assert_eq!(
        listed_policy(&state, &id),
        json!({"tpm": 100000, "budget": {"usd": 5.0, "period": "week"}, "owner": "alice"})
    );
    // Bad input: what was wrong and what to do; nothing written.
    let before = std::fs::read(state.join("tokens.json")).unwrap();
    for (args, expect) in [
        (
            vec!["token", "update", &id, "--rpm", "0"],
            "rpm must be at least 1",
        ),
        (vec!["token", "update", &id, "--budget", "lots"], "--budget"),
        (
            vec!["token", "update", &id, "--period", "fortnight"],
            "--period",
        ),
        (vec!["token", "update", &id], "nothing to change"),
        (
            vec!["token", "update", "nosuchid", "--rpm", "5"],
            "no API key has id nosuchid",
        ),
        (
            vec!["token", "create", "--name", "x", "--period", "day"],
            "no budget",
        ),
    ] {
        let (ok, _, err) = cli(&args, &state, "");
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert_eq!(std::fs::read(state.join("tokens.json")).unwrap(), before);
    }

    // With a daemon, both runtimes: the same through the admin API, live.
    for runtime in RUNTIMES {
        let dir = temp_dir(&format!("policy-{runtime}"));
        let state = dir.join("state");
        let daemon = Daemon::start(runtime, &state, &[], &[]);
        let created = daemon
            .admin(
                "POST",
                "tokens",
                Some(
                    json!({"name": "team", "models": "gpt-4o-mini", "budget": 2.5,
                            "period": "day"}),
                ),
            )
            .json();
        let id = created["id"].as_str().unwrap().to_owned();
        let (ok, _, err) = cli(
            &["token", "update", &id, "--tpm", "5000", "--owner", "ops"],
            &state,
            "",
        );
        assert!(ok, "{err}");
        assert!(err.contains("via the running daemon"), "{err}");
        let listed = daemon.admin("GET", "tokens", None).json();
        assert_eq!(
            listed["tokens"][0]["policy"],
            json!({"models": ["gpt-4o-mini"], "tpm": 5000,
                   "budget": {"usd": 2.5, "period": "day"}, "owner": "ops"})
        );
        // `null` removes a limit through the API; unknown fields and ids are refused.
        let done = daemon.admin(
            "PATCH",
            &format!("tokens/{id}"),
            Some(json!({"budget": null})),
        );
        assert_eq!(done.status, 200);
        assert!(
            daemon.admin("GET", "tokens", None).json()["tokens"][0]["policy"]
                .get("budget")
                .is_none()
        );
        let refused = daemon.admin("PATCH", &format!("tokens/{id}"), Some(json!({"rmp": 5})));
        assert_eq!(refused.status, 400);
        assert!(refused.json()["error"].as_str().unwrap().contains("rmp"));
        let refused = daemon.admin("PATCH", &format!("tokens/{id}"), Some(json!({"rpm": 0})));
        assert_eq!(refused.status, 400);
        let missing = daemon.admin("PATCH", "tokens/nosuchid", Some(json!({"rpm": 5})));
        assert_eq!(missing.status, 404);
    }
}
