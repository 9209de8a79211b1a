//! Example-based tests of `gate_core::config`: layers, env decoding, validation messages,
//! tombstones, editing helpers, and snapshots of `config show` output.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use expect_test::expect;
use gate_core::config::{
    decode_env_name, load_daemon, load_relay, runtime_remove_upstream, runtime_set,
    runtime_set_many, runtime_unset, ConfigError, ConfigSources, Layer, Origin, Provider,
    SourceText, Value, DAEMON_SCHEMA, RELAY_SCHEMA,
};

const RUNTIME: &str = "/var/lib/gate/config.toml";

fn sources(nix: &[(&str, &str)], runtime: &str, env: &[(&str, &str)]) -> ConfigSources {
    ConfigSources {
        nix_files: nix.iter().map(|(p, t)| SourceText::new(*p, *t)).collect(),
        runtime: SourceText::new(RUNTIME, runtime),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn daemon_err(s: &ConfigSources) -> ConfigError {
    match load_daemon(s) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn daemon_defaults() {
    let loaded = load_daemon(&sources(&[], "", &[])).unwrap();
    let c = loaded.config;
    assert_eq!(c.host, "127.0.0.1");
    assert_eq!(c.port, 3000);
    assert_eq!(c.p2p_port, 41147);
    assert_eq!(c.log_level, "info");
    assert!(!c.relay.enable);
    assert!(c.upstreams.is_empty());
    assert!(!c.auth.allow_loopback);
    assert_eq!(c.auth.jwt.issuer, "gate-daemon");
    assert_eq!(c.letsencrypt.auto_renew_days, 30);
    assert_eq!(c.server.max_body_bytes, 32 << 20);
    assert!(c.usage.enabled);
    assert_eq!(c.usage.retention_days, 90);
}

#[test]
fn usage_keys() {
    let loaded = load_daemon(&sources(
        &[("/etc/gate/gate.toml", "[usage]\nretention_days = 0\n")],
        "",
        &[("GATE_USAGE__ENABLED", "false")],
    ))
    .unwrap();
    assert!(!loaded.config.usage.enabled);
    assert_eq!(
        loaded.config.usage.retention_days, 0,
        "0 keeps records forever"
    );
    let err = daemon_err(&sources(&[], "", &[("GATE_USAGE__RETENTION_DAYS", "-1")])).to_string();
    assert!(err.contains("usage.retention_days"), "{err}");
    let err = daemon_err(&sources(&[], "[usage]\nretension_days = 30\n", &[])).to_string();
    assert!(err.contains("retention_days"), "{err}");
}

#[test]
fn relay_defaults() {
    let c = load_relay(&sources(&[], "", &[])).unwrap().config;
    assert_eq!(c.https_port, 443);
    assert_eq!(c.p2p_port, 31145);
    assert_eq!(c.bind_address.to_string(), "0.0.0.0");
    assert_eq!(c.claim_lapse_days, 30);
    assert_eq!(c.domain_suffix, "localhost");
    assert!(!c.dns.enabled);
    assert_eq!(
        c.dns.cloudflare.api_url,
        "https://api.cloudflare.com/client/v4"
    );
    assert_eq!(c.metrics_port, None);
    assert_eq!(c.limits.max_daemon_connections, 10_000);
    assert_eq!(c.tunnel.heartbeat_interval.as_millis(), 15_000);
    assert_eq!(c.tunnel.registration_timeout.as_millis(), 10_000);
    assert_eq!(c.tunnel.certificate_file, None);
    assert_eq!(c.tunnel.key_file, None);
}

#[test]
fn relay_metrics_tunnel_and_daemon_limit_keys() {
    let nix = "metrics_port = 9464\n[limits]\nmax_daemon_connections = 50\n[tunnel]\ncertificate_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n";
    let c = load_relay(&sources(
        &[("/etc/r.toml", nix)],
        "",
        &[("RELAY_TUNNEL__HEARTBEAT_INTERVAL_MS", "3000")],
    ))
    .unwrap()
    .config;
    assert_eq!(c.metrics_port, Some(9464));
    assert_eq!(c.limits.max_daemon_connections, 50);
    assert_eq!(c.tunnel.heartbeat_interval.as_millis(), 3_000);
    assert_eq!(c.tunnel.certificate_file.as_deref(), Some("/c.pem"));
    assert_eq!(c.tunnel.key_file.as_deref(), Some("/k.pem"));

    let e = load_relay(&sources(
        &[("/etc/r.toml", "metrics_port = 70000\n")],
        "",
        &[],
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "`metrics_port` from the config file /etc/r.toml (line 1, column 16) must be an integer from 1 to 65535, but it is the integer 70000"
    );
    let e = load_relay(&sources(
        &[("/etc/r.toml", "[tunnel]\nkey_file = \"/k.pem\"\n")],
        "",
        &[],
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "`tunnel.certificate_file` from the config file /etc/r.toml (line 2, column 12) must be set when tunnel.key_file is set (they go together), but it is missing"
    );
    let e = load_relay(&sources(&[], "", &[("RELAY_TUNNEL__HEARTBEAT_MS", "1")])).unwrap_err();
    assert!(
        e.to_string().contains("tunnel.heartbeat_ms")
            && e.to_string().contains("RELAY_TUNNEL__HEARTBEAT_MS"),
        "{e}"
    );
}

#[test]
fn seed_example_with_secrets_from_environment() {
    let nix = r#"
host = "127.0.0.1"
port = 8080
p2p_port = 41147

[relay]
enable = true
addresses = ["relay.hellas.ai:443"]
custom_domain = "myserver"

[upstreams.openai]
provider = "openai"

[upstreams.anthropic]
provider = "anthropic"
"#;
    let s = sources(
        &[("/etc/gate/gate.toml", nix)],
        "",
        &[
            ("GATE_AUTH__JWT__SECRET", "your-secret-here"),
            ("GATE_UPSTREAMS__OPENAI__API_KEY", "sk-test"),
            ("GATE_LETSENCRYPT__EMAIL", "admin@example.com"),
            ("PATH", "/usr/bin"),
            ("GATE_STATE_DIR", "/tmp/x"),
        ],
    );
    let c = load_daemon(&s).unwrap().config;
    assert_eq!(c.port, 8080);
    assert_eq!(c.relay.addresses[0].host, "relay.hellas.ai");
    assert_eq!(c.relay.addresses[0].port, 443);
    let openai = &c.upstreams["openai"];
    assert_eq!(openai.provider, Provider::OpenAi);
    assert_eq!(openai.base_url, "https://api.openai.com/v1");
    assert_eq!(openai.api_key.as_ref().unwrap().expose(), "sk-test");
    assert!(openai.enabled);
    assert_eq!(
        c.upstreams["anthropic"].base_url,
        "https://api.anthropic.com"
    );
    assert_eq!(c.auth.jwt.secret.unwrap().expose(), "your-secret-here");
    assert_eq!(c.letsencrypt.email.as_deref(), Some("admin@example.com"));
}

#[test]
fn relay_seed_environment() {
    let nix = "https_port = 443\np2p_port = 31145\nlog_level = \"info\"\ndomain_suffix = \"gate.hellas.ai\"\n[dns]\nenabled = true\nprovider = \"cloudflare\"\n";
    let s = sources(
        &[("/etc/gate-relay/default.toml", nix)],
        "",
        &[
            ("RELAY__DNS__CLOUDFLARE__API_TOKEN", "your-token"),
            ("RELAY__DNS__CLOUDFLARE__ZONE_ID", "your-zone-id"),
        ],
    );
    let c = load_relay(&s).unwrap().config;
    assert!(c.dns.enabled);
    assert_eq!(c.dns.cloudflare.api_token.unwrap().expose(), "your-token");
    assert_eq!(c.dns.cloudflare.zone_id.as_deref(), Some("your-zone-id"));
    // Without the token, the error names the key and says how to set it.
    let e = load_relay(&sources(&[("/etc/r.toml", nix)], "", &[])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "`dns.cloudflare.api_token` from the config file /etc/r.toml (line 6, column 11) must be set when dns.enabled is true (for example with RELAY__DNS__CLOUDFLARE__API_TOKEN), but it is missing"
    );
}

#[test]
fn env_name_forms() {
    let path = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        decode_env_name("GATE", "GATE_AUTH__JWT__SECRET"),
        path(&["auth", "jwt", "secret"])
    );
    assert_eq!(
        decode_env_name("GATE", "GATE__AUTH__JWT__SECRET"),
        path(&["auth", "jwt", "secret"])
    );
    assert_eq!(
        decode_env_name("GATE", "GATE_UPSTREAMS__OPENAI__API_KEY"),
        path(&["upstreams", "openai", "api_key"])
    );
    assert_eq!(
        decode_env_name("RELAY", "RELAY__DNS__CLOUDFLARE__API_TOKEN"),
        path(&["dns", "cloudflare", "api_token"])
    );
    assert_eq!(
        decode_env_name("RELAY", "RELAY_HTTPS_PORT"),
        path(&["https_port"])
    );
    assert_eq!(decode_env_name("GATE", "GATEWAY"), None);
    assert_eq!(decode_env_name("GATE", "GATE_"), None);
    assert_eq!(decode_env_name("GATE", "GATE_A___B"), None);
}

#[test]
fn env_types_are_converted() {
    let s = sources(
        &[],
        "",
        &[
            ("GATE_PORT", " 8081 "),
            ("GATE_AUTH__ALLOW_LOOPBACK", "yes"),
            ("GATE_RELAY__ENABLE", "true"),
            ("GATE_RELAY__ADDRESSES", "a.example:443, b.example:443"),
            (
                "GATE_LETSENCRYPT__DOMAINS",
                r#"["x.example.com", "y.example.com"]"#,
            ),
        ],
    );
    let c = load_daemon(&s).unwrap().config;
    assert_eq!(c.port, 8081);
    assert!(c.auth.allow_loopback);
    assert_eq!(c.relay.addresses.len(), 2);
    assert_eq!(c.letsencrypt.domains, ["x.example.com", "y.example.com"]);
}

#[test]
fn unknown_env_var_is_named() {
    let e = daemon_err(&sources(&[], "", &[("GATE_PROT", "1")]));
    assert_eq!(
        e.to_string(),
        "environment variable GATE_PROT names `prot`, which is not a config key (did you mean `port`?)"
    );
    let e = daemon_err(&sources(&[], "", &[("GATE_AUTH", "1")]));
    assert!(e.to_string().contains("names a table"), "{e}");
}

#[test]
fn duplicate_env_forms_are_refused() {
    let e = daemon_err(&sources(
        &[],
        "",
        &[("GATE_PORT", "1"), ("GATE__PORT", "2")],
    ));
    assert_eq!(
        e.to_string(),
        "environment variables GATE_PORT and GATE__PORT both set `port`; keep only one"
    );
}

#[test]
fn bad_env_value_names_key_and_variable() {
    let e = daemon_err(&sources(&[], "", &[("GATE_PORT", "eighty")]));
    assert_eq!(
        e.to_string(),
        "`port` from the environment variable GATE_PORT must be an integer from 1 to 65535, but it is \"eighty\""
    );
    assert_eq!(e.layer(), Some(Layer::Environment));
    assert_eq!(e.key(), Some("port"));
}

#[test]
fn secrets_never_appear_in_errors() {
    let e = daemon_err(&sources(&[], "", &[("GATE_AUTH__JWT__SECRET", "short")]));
    assert!(!e.to_string().contains("short"), "{e}");
    let e = daemon_err(&sources(
        &[("/n.toml", "[auth.jwt]\nsecret = 42\n")],
        "",
        &[],
    ));
    let text = e.to_string();
    assert!(!text.contains("42"), "{e}");
    assert!(
        text.contains("an integer that is not shown here (secret)"),
        "{e}"
    );
    // A provider key of the wrong type, in a file and in a list-typed position.
    let e = daemon_err(&sources(
        &[("/n.toml", "[upstreams.openai]\napi_key = 987654321\n")],
        "",
        &[],
    ));
    assert!(!e.to_string().contains("987654321"), "{e}");
    assert!(e.to_string().contains("the config file /n.toml"), "{e}");
    let e = daemon_err(&sources(
        &[(
            "/n.toml",
            "[upstreams.openai]\napi_key = [\"sk-in-a-list\"]\n",
        )],
        "",
        &[],
    ));
    assert!(!e.to_string().contains("sk-in-a-list"), "{e}");
    // In the environment: the JWT secret below the minimum length is not quoted.
    let e = daemon_err(&sources(&[], "", &[("GATE_AUTH__JWT__SECRET", "1234")]));
    assert!(!e.to_string().contains("1234"), "{e}");
}

#[test]
fn foreign_env_vars_are_warnings_and_typos_in_known_sections_errors() {
    // What Kubernetes injects for a Service named `gate`, plus the port as a number.
    let k8s = [
        ("GATE_SERVICE_HOST", "10.0.0.1"),
        ("GATE_SERVICE_PORT", "3000"),
        ("GATE_SERVICE_PORT_HTTP", "3000"),
        ("GATE_PORT_3000_TCP", "tcp://10.0.0.1:3000"),
        ("GATE_PORT_3000_TCP_PROTO", "tcp"),
        ("GATE_PORT_3000_TCP_PORT", "3000"),
        ("GATE_PORT_3000_TCP_ADDR", "10.0.0.1"),
        ("GATE_PORT", "tcp://10.0.0.1:3000"),
    ];
    let loaded = load_daemon(&sources(&[], "", &k8s)).expect("Kubernetes variables load");
    assert_eq!(loaded.config.port, 3000);
    assert_eq!(
        loaded.merged.warnings.len(),
        k8s.len(),
        "{:?}",
        loaded.merged.warnings
    );
    assert!(loaded
        .merged
        .warnings
        .iter()
        .any(|w| w.contains("GATE_PORT:") && w.contains("service link")));
    // GATE_PORT as a number still works next to the service variables.
    let mut with_port = k8s[..7].to_vec();
    with_port.push(("GATE_PORT", "8080"));
    let loaded = load_daemon(&sources(&[], "", &with_port)).expect("loads");
    assert_eq!(loaded.config.port, 8080);
    // A misspelled key inside a known section is still fatal.
    let e = daemon_err(&sources(&[], "", &[("GATE_AUTH__JWT__SECERT", "x")]));
    assert!(e.to_string().contains("GATE_AUTH__JWT__SECERT"), "{e}");
    let e = daemon_err(&sources(&[], "", &[("GATE_SERVER__MAX_BODY", "1")]));
    assert!(e.to_string().contains("GATE_SERVER__MAX_BODY"), "{e}");
    // The relay follows the same rules.
    let relay = load_relay(&sources(
        &[],
        "",
        &[
            ("RELAY_SERVICE_HOST", "10.0.0.2"),
            ("RELAY_PORT_443_TCP", "tcp://10.0.0.2:443"),
        ],
    ))
    .expect("relay loads");
    assert_eq!(
        relay.merged.warnings.len(),
        2,
        "{:?}",
        relay.merged.warnings
    );
    assert!(load_relay(&sources(&[], "", &[("RELAY_LIMITS__MAX_CONECTIONS", "1")])).is_err());
}

#[test]
fn file_errors_name_file_line_and_column() {
    let e = daemon_err(&sources(
        &[("/etc/gate/a.toml", "host = \"::1\"\nport = 0\n")],
        "",
        &[],
    ));
    assert_eq!(
        e.to_string(),
        "`port` from the config file /etc/gate/a.toml (line 2, column 8) must be an integer from 1 to 65535, but it is the integer 0"
    );
    let e = daemon_err(&sources(
        &[("/etc/gate/a.toml", "[relay]\nenabel = true\n")],
        "",
        &[],
    ));
    assert_eq!(
        e.to_string(),
        "unknown key `relay.enabel` in the config file /etc/gate/a.toml (line 2, column 1) (did you mean `enable`?)"
    );
    let e = daemon_err(&sources(&[], "port = = 3\n", &[]));
    assert!(
        e.to_string()
            .starts_with("the runtime file /var/lib/gate/config.toml is not valid TOML at line 1"),
        "{e}"
    );
}

#[test]
fn upstream_rules() {
    let e = daemon_err(&sources(
        &[("/n.toml", "[upstreams.local]\nprovider = \"custom\"\n")],
        "",
        &[],
    ));
    assert_eq!(e.key(), Some("upstreams.local.base_url"));
    assert!(e.to_string().contains("line 2, column 12"), "{e}");
    let e = daemon_err(&sources(
        &[("/n.toml", "[upstreams.local]\nmodels = [\"m\"]\n")],
        "",
        &[],
    ));
    assert_eq!(e.key(), Some("upstreams.local.provider"));
    let e = daemon_err(&sources(
        &[("/n.toml", "[upstreams.x]\nprovider = \"azure\"\n")],
        "",
        &[],
    ));
    assert!(e.to_string().contains("one of openai, anthropic"), "{e}");
    let e = daemon_err(&sources(
        &[(
            "/n.toml",
            "[upstreams.x]\nprovider = \"custom\"\nbase_url = \"ftp://x\"\n",
        )],
        "",
        &[],
    ));
    assert_eq!(e.key(), Some("upstreams.x.base_url"));
    let e = daemon_err(&sources(
        &[("/n.toml", "[upstreams.Bad]\nprovider = \"openai\"\n")],
        "",
        &[],
    ));
    assert_eq!(e.key(), Some("upstreams.Bad"));
    let ok = "[upstreams.ollama]\nprovider = \"custom\"\nbase_url = \"http://127.0.0.1:11434/v1\"\nmodels = [\"llama3\"]\n[upstreams.ollama.aliases]\n\"gpt-4.1\" = \"llama3\"\n";
    let c = load_daemon(&sources(&[("/n.toml", ok)], "", &[]))
        .unwrap()
        .config;
    assert_eq!(c.upstreams["ollama"].aliases["gpt-4.1"], "llama3");
    // An upstream named after a provider needs no provider key.
    let c = load_daemon(&sources(&[], "", &[("GATE_UPSTREAMS__GROQ__API_KEY", "k")]))
        .unwrap()
        .config;
    assert_eq!(c.upstreams["groq"].provider, Provider::Groq);
    assert_eq!(
        c.upstreams["groq"].base_url,
        "https://api.groq.com/openai/v1"
    );
}

#[test]
fn relay_addresses_and_hosts_are_checked() {
    let id = "a".repeat(52);
    let good = format!(
        "[relay]\nenable = true\naddresses = [\"{id}@relay.example:443\", \"[::1]:31145\"]\n"
    );
    let c = load_daemon(&sources(&[("/n.toml", &good)], "", &[]))
        .unwrap()
        .config;
    assert_eq!(c.relay.addresses[0].node_id.as_deref(), Some(id.as_str()));
    assert_eq!(c.relay.addresses[1].host, "::1");
    for bad in [
        "relay.example",
        "relay.example:0",
        "x@relay.example:443",
        "re lay:1",
    ] {
        let text = format!("[relay]\naddresses = [\"{bad}\"]\n");
        let e = daemon_err(&sources(&[("/n.toml", &text)], "", &[]));
        assert_eq!(e.key(), Some("relay.addresses"), "{bad}: {e}");
    }
    let e = daemon_err(&sources(
        &[("/n.toml", "[relay]\nenable = true\n")],
        "",
        &[],
    ));
    assert_eq!(e.key(), Some("relay.addresses"));
    let e = daemon_err(&sources(&[], "", &[("GATE_HOST", "not a host")]));
    assert_eq!(e.key(), Some("host"));
    let e = load_relay(&sources(&[], "", &[("RELAY_BIND_ADDRESS", "localhost")])).unwrap_err();
    assert_eq!(e.key(), Some("bind_address"));
}

#[test]
fn later_nix_file_wins_and_tables_merge() {
    let a = "port = 1000\n[auth.jwt]\nissuer = \"a\"\nexpiration_hours = 5\n";
    let b = "port = 2000\n[auth.jwt]\nissuer = \"b\"\n";
    let loaded = load_daemon(&sources(&[("/a.toml", a), ("/b.toml", b)], "", &[])).unwrap();
    assert_eq!(loaded.config.port, 2000);
    assert_eq!(loaded.config.auth.jwt.issuer, "b");
    assert_eq!(loaded.config.auth.jwt.expiration_hours, 5);
    let leaf = loaded.merged.get("auth.jwt.expiration_hours").unwrap();
    assert!(matches!(&leaf.origin, Origin::File { path, line: 4, .. } if path == "/a.toml"));
}

#[test]
fn tombstone_removes_nix_upstream_but_env_brings_it_back() {
    let nix = "[upstreams.openai]\nprovider = \"openai\"\n[upstreams.anthropic]\nprovider = \"anthropic\"\n";
    let s = sources(&[("/n.toml", nix)], "", &[]);
    let runtime = runtime_remove_upstream(&DAEMON_SCHEMA, &s, "openai").unwrap();
    assert_eq!(runtime, "_removed = [\"upstreams.openai\"]\n");
    let s = s.with_runtime_text(runtime.clone());
    let c = load_daemon(&s).unwrap().config;
    assert!(!c.upstreams.contains_key("openai"));
    assert!(c.upstreams.contains_key("anthropic"));
    // The environment wins over the tombstone.
    let mut with_env = s.clone();
    with_env
        .env
        .push(("GATE_UPSTREAMS__OPENAI__API_KEY".into(), "sk".into()));
    let c = load_daemon(&with_env).unwrap().config;
    assert_eq!(c.upstreams["openai"].provider, Provider::OpenAi);
    // Removing what only the environment sets is refused with a clear reason.
    let e = runtime_remove_upstream(&DAEMON_SCHEMA, &with_env, "openai").unwrap_err();
    assert!(
        e.to_string().contains("GATE_UPSTREAMS__OPENAI__API_KEY"),
        "{e}"
    );
    // Unset drops the tombstone again.
    let back = runtime_unset(&DAEMON_SCHEMA, &s, "upstreams.openai").unwrap();
    assert_eq!(back, "");
    // Removing an unknown upstream is an error.
    assert!(runtime_remove_upstream(&DAEMON_SCHEMA, &s, "nope").is_err());
}

#[test]
fn tombstones_are_checked() {
    let e = daemon_err(&sources(&[], "_removed = [\"port\"]\n", &[]));
    assert!(e.to_string().contains("cannot be removed"), "{e}");
    let e = daemon_err(&sources(&[], "_removed = [\"upstreamz.x\"]\n", &[]));
    assert!(e.to_string().contains("did you mean `upstreams`"), "{e}");
    // Only the runtime layer may remove things.
    let e = daemon_err(&sources(&[("/n.toml", "_removed = []\n")], "", &[]));
    assert_eq!(e.key(), Some("_removed"));
}

#[test]
fn runtime_set_validates_and_preserves() {
    let s = sources(
        &[],
        "port = 4000\n[upstreams.openai]\napi_key = \"sk\"\n",
        &[],
    );
    let text = runtime_set(&DAEMON_SCHEMA, &s, "log_level", "debug").unwrap();
    expect![[r#"
        log_level = "debug"
        port = 4000

        [upstreams.openai]
        api_key = "sk"
    "#]]
    .assert_eq(&text);
    let text = runtime_set(
        &DAEMON_SCHEMA,
        &s,
        "relay.addresses",
        "r.example:443,s.example:443",
    )
    .unwrap();
    assert!(
        text.contains("addresses = [\"r.example:443\", \"s.example:443\"]"),
        "{text}"
    );
    let e = runtime_set(&DAEMON_SCHEMA, &s, "port", "70000").unwrap_err();
    assert_eq!(
        e.to_string(),
        "`port` must be an integer from 1 to 65535, but the new value is \"70000\""
    );
    assert!(runtime_set(&DAEMON_SCHEMA, &s, "auth", "x").is_err());
    assert!(runtime_set(&DAEMON_SCHEMA, &s, "nope", "x").is_err());
    // Whole-config rules apply: a custom upstream without base_url is refused.
    let e = runtime_set(&DAEMON_SCHEMA, &s, "upstreams.local.provider", "custom").unwrap_err();
    assert_eq!(e.key(), Some("upstreams.local.base_url"));
    let text = runtime_unset(&DAEMON_SCHEMA, &s, "upstreams.openai.api_key").unwrap();
    assert_eq!(text, "port = 4000\n");
    let text = runtime_set(
        &RELAY_SCHEMA,
        &ConfigSources::new("/r"),
        "dns.cloudflare.api_url",
        "http://127.0.0.1:9000/client/v4",
    )
    .unwrap();
    assert_eq!(
        text,
        "[dns.cloudflare]\napi_url = \"http://127.0.0.1:9000/client/v4\"\n"
    );
}

#[test]
fn merged_values_keep_types() {
    let loaded = load_daemon(&sources(&[], "", &[("GATE_LETSENCRYPT__STAGING", "on")])).unwrap();
    assert_eq!(
        loaded.merged.get("letsencrypt.staging").unwrap().value,
        Value::Bool(true)
    );
}

fn show_sources() -> ConfigSources {
    let nix = r#"port = 8080

[relay]
enable = true
addresses = ["relay.hellas.ai:443"]
custom_domain = "myserver"

[upstreams.openai]
provider = "openai"

[upstreams.old]
provider = "groq"
"#;
    let runtime = "_removed = [\"upstreams.old\"]\nlog_level = \"debug\"\n\n[upstreams.ollama]\nprovider = \"custom\"\nbase_url = \"http://127.0.0.1:11434/v1\"\n\n[upstreams.ollama.aliases]\n\"gpt-4.1\" = \"llama3\"\n";
    sources(
        &[("/etc/gate/gate.toml", nix)],
        runtime,
        &[
            ("GATE_AUTH__JWT__SECRET", "a-very-secret-value-123"),
            ("GATE_UPSTREAMS__OPENAI__API_KEY", "sk-live-1234"),
        ],
    )
}

#[test]
fn snapshot_config_show_with_origins() {
    let loaded = load_daemon(&show_sources()).unwrap();
    let text = loaded.merged.render_text(true);
    assert!(!text.contains("sk-live-1234") && !text.contains("a-very-secret"));
    expect![[r##"
        # removed: upstreams.old  # by runtime /var/lib/gate/config.toml:1:13
        host = "127.0.0.1"  # from defaults
        log_level = "debug"  # from runtime /var/lib/gate/config.toml:2:13
        p2p_port = 41147  # from defaults
        port = 8080  # from nix /etc/gate/gate.toml:1:8

        [auth]
        allow_loopback = false  # from defaults

        [auth.jwt]
        budget_period = "month"  # from defaults
        expiration_hours = 24  # from defaults
        issuer = "gate-daemon"  # from defaults
        secret = "(set)"  # from env GATE_AUTH__JWT__SECRET

        [letsencrypt]
        auto_renew_days = 30  # from defaults
        domains = []  # from defaults
        enabled = false  # from defaults
        staging = false  # from defaults

        [relay]
        addresses = ["relay.hellas.ai:443"]  # from nix /etc/gate/gate.toml:5:13
        custom_domain = "myserver"  # from nix /etc/gate/gate.toml:6:17
        enable = true  # from nix /etc/gate/gate.toml:4:10
        tcp_port = 443  # from defaults
        transport = "auto"  # from defaults

        [server]
        connect_timeout_secs = 10  # from defaults
        header_read_timeout_secs = 10  # from defaults
        http2_keepalive_interval_secs = 20  # from defaults
        http2_keepalive_timeout_secs = 10  # from defaults
        idle_timeout_secs = 300  # from defaults
        keep_alive_timeout_secs = 10  # from defaults
        max_body_bytes = 33554432  # from defaults
        max_connections = 4096  # from defaults
        max_response_bytes = 67108864  # from defaults
        shutdown_grace_secs = 30  # from defaults

        [store]
        on_unavailable = "closed"  # from defaults

        [upstreams.ollama]
        base_url = "http://127.0.0.1:11434/v1"  # from runtime /var/lib/gate/config.toml:6:12
        enabled = true  # from defaults
        provider = "custom"  # from runtime /var/lib/gate/config.toml:5:12

        [upstreams.ollama.aliases]
        "gpt-4.1" = "llama3"  # from runtime /var/lib/gate/config.toml:9:13

        [upstreams.openai]
        api_key = "(set)"  # from env GATE_UPSTREAMS__OPENAI__API_KEY
        base_url = "https://api.openai.com/v1"  # from defaults (default for provider openai)
        enabled = true  # from defaults
        provider = "openai"  # from nix /etc/gate/gate.toml:9:12

        [usage]
        enabled = true  # from defaults
        retention_days = 90  # from defaults
    "##]]
    .assert_eq(&text);
}

#[test]
fn snapshot_config_show_plain() {
    let loaded = load_relay(&sources(
        &[],
        "",
        &[("RELAY__DNS__CLOUDFLARE__API_TOKEN", "tok")],
    ))
    .unwrap();
    expect![[r#"
        bind_address = "0.0.0.0"
        claim_lapse_days = 30
        domain_suffix = "localhost"
        https_port = 443
        log_level = "info"
        p2p_port = 31145

        [access]
        allowed_nodes = []
        mode = "open"

        [dns]
        enabled = false
        provider = "cloudflare"

        [dns.cloudflare]
        api_token = "(set)"
        api_url = "https://api.cloudflare.com/client/v4"

        [limits]
        handshake_timeout_ms = 5000
        max_claims = 10000
        max_connections = 16384
        max_connections_per_ip = 256
        max_connections_per_node = 4096
        max_daemon_connections = 10000
        max_registrations_per_ip_per_minute = 60

        [tunnel]
        heartbeat_interval_ms = 15000
        registration_timeout_ms = 10000
    "#]]
    .assert_eq(&loaded.merged.render_text(false));
}

#[test]
fn snapshot_config_show_json() {
    let loaded = load_daemon(&show_sources()).unwrap();
    let json = loaded.merged.render_json();
    let pick: serde_json::Map<String, serde_json::Value> = json
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| {
            k.starts_with("upstreams") || k.as_str() == "port" || k.as_str() == "auth.jwt.secret"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let text = serde_json::to_string_pretty(&pick).unwrap();
    assert!(!text.contains("sk-live"));
    expect![[r#"
        {
          "auth.jwt.secret": {
            "origin": {
              "layer": "environment",
              "variable": "GATE_AUTH__JWT__SECRET"
            },
            "value": "(set)"
          },
          "port": {
            "origin": {
              "column": 8,
              "file": "/etc/gate/gate.toml",
              "layer": "nix",
              "line": 1
            },
            "value": 8080
          },
          "upstreams.old": {
            "origin": {
              "column": 13,
              "file": "/var/lib/gate/config.toml",
              "layer": "runtime",
              "line": 1
            },
            "removed": true,
            "value": null
          },
          "upstreams.ollama.aliases.\"gpt-4.1\"": {
            "origin": {
              "column": 13,
              "file": "/var/lib/gate/config.toml",
              "layer": "runtime",
              "line": 9
            },
            "value": "llama3"
          },
          "upstreams.ollama.base_url": {
            "origin": {
              "column": 12,
              "file": "/var/lib/gate/config.toml",
              "layer": "runtime",
              "line": 6
            },
            "value": "http://127.0.0.1:11434/v1"
          },
          "upstreams.ollama.enabled": {
            "origin": {
              "layer": "defaults"
            },
            "value": true
          },
          "upstreams.ollama.provider": {
            "origin": {
              "column": 12,
              "file": "/var/lib/gate/config.toml",
              "layer": "runtime",
              "line": 5
            },
            "value": "custom"
          },
          "upstreams.openai.api_key": {
            "origin": {
              "layer": "environment",
              "variable": "GATE_UPSTREAMS__OPENAI__API_KEY"
            },
            "value": "(set)"
          },
          "upstreams.openai.base_url": {
            "origin": {
              "layer": "defaults",
              "reason": "default for provider openai"
            },
            "value": "https://api.openai.com/v1"
          },
          "upstreams.openai.enabled": {
            "origin": {
              "layer": "defaults"
            },
            "value": true
          },
          "upstreams.openai.provider": {
            "origin": {
              "column": 12,
              "file": "/etc/gate/gate.toml",
              "layer": "nix",
              "line": 9
            },
            "value": "openai"
          }
        }"#]]
    .assert_eq(&text);
}

#[test]
fn oversized_inputs_are_refused() {
    let big = "#".repeat(gate_core::config::MAX_FILE_BYTES + 1);
    let e = daemon_err(&sources(&[("/big.toml", &big)], "", &[]));
    assert!(matches!(e, ConfigError::TooLarge { .. }));
}

#[test]
fn adding_a_custom_upstream_needs_one_change() {
    let s = ConfigSources::new(RUNTIME);
    // One key at a time cannot work: each half alone is invalid.
    assert!(runtime_set(&DAEMON_SCHEMA, &s, "upstreams.local.provider", "custom").is_err());
    let text = gate_core::config::runtime_set_many(
        &DAEMON_SCHEMA,
        &s,
        &[
            ("upstreams.local.provider", "custom"),
            ("upstreams.local.base_url", "http://127.0.0.1:11434/v1"),
            ("upstreams.local.api_key", "sk-local"),
        ],
    )
    .unwrap();
    let c = load_daemon(&s.with_runtime_text(text)).unwrap().config;
    assert_eq!(c.upstreams["local"].base_url, "http://127.0.0.1:11434/v1");
    assert_eq!(c.upstreams["local"].provider, Provider::Custom);
}

#[test]
fn removed_upstream_can_be_added_anew() {
    let nix = "[upstreams.openai]\nprovider = \"openai\"\nmodels = [\"gpt-4o\"]\n";
    let s = sources(&[("/n.toml", nix)], "", &[]);
    let removed = runtime_remove_upstream(&DAEMON_SCHEMA, &s, "openai").unwrap();
    let s = s.with_runtime_text(removed);
    let text = runtime_set(&DAEMON_SCHEMA, &s, "upstreams.openai.api_key", "sk-new").unwrap();
    let c = load_daemon(&s.with_runtime_text(text)).unwrap().config;
    // The Nix definition stays removed; only the runtime's own keys apply.
    assert!(c.upstreams["openai"].models.is_empty());
    assert_eq!(
        c.upstreams["openai"].api_key.as_ref().unwrap().expose(),
        "sk-new"
    );
}

#[test]
fn config_get_renders_one_key_redacted() {
    let loaded = load_daemon(&show_sources()).unwrap();
    let m = &loaded.merged;
    assert_eq!(m.render_key("port", false).as_deref(), Some("8080"));
    assert_eq!(
        m.render_key("upstreams.openai.api_key", true).as_deref(),
        Some("\"(set)\"  # from env GATE_UPSTREAMS__OPENAI__API_KEY")
    );
    expect![[r#"
        [upstreams.openai]
        api_key = "(set)"
        base_url = "https://api.openai.com/v1"
        enabled = true
        provider = "openai"
    "#]]
    .assert_eq(&m.render_key("upstreams.openai", false).unwrap());
    assert_eq!(m.render_key("upstreams.old", false), None);
}

#[test]
fn relay_access_keys() {
    use gate_core::tunnel::{AccessMode, NodeId};
    let a = "a".repeat(52);
    let b = "b".repeat(52);
    let c = load_relay(&sources(&[], "", &[])).unwrap().config;
    assert_eq!(c.access.mode, AccessMode::Open);
    assert!(c.access.allowed_nodes.is_empty());

    let nix = format!("[access]\nmode = \"allowlist\"\nallowed_nodes = [\"{a}\"]\n");
    let c = load_relay(&sources(&[("/etc/r.toml", &nix)], "", &[]))
        .unwrap()
        .config;
    assert_eq!(c.access.mode, AccessMode::Allowlist);
    assert!(c.access.allowed_nodes.contains(&NodeId::parse(&a).unwrap()));

    // From the environment: a comma-separated list.
    let both = format!("{a}, {b}");
    let c = load_relay(&sources(
        &[],
        "",
        &[
            ("RELAY_ACCESS__MODE", "allowlist"),
            ("RELAY_ACCESS__ALLOWED_NODES", both.as_str()),
        ],
    ))
    .unwrap()
    .config;
    assert_eq!(c.access.allowed_nodes.len(), 2);

    // An allowlist without nodes admits nobody: refused with what to do.
    let e = load_relay(&sources(
        &[("/etc/r.toml", "[access]\nmode = \"allowlist\"\n")],
        "",
        &[],
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("access.allowed_nodes") && e.contains("gate id"),
        "{e}"
    );
    let e = load_relay(&sources(
        &[("/etc/r.toml", "[access]\nmode = \"token\"\n")],
        "",
        &[],
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("access.tokens") && e.contains("RELAY__ACCESS__TOKENS"),
        "{e}"
    );
    let e = load_relay(&sources(
        &[("/etc/r.toml", "[access]\nmode = \"closed\"\n")],
        "",
        &[],
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("open, allowlist or token"), "{e}");
    let e = load_relay(&sources(
        &[("/etc/r.toml", "[access]\nallowed_nodes = [\"nope\"]\n")],
        "",
        &[],
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("node id"), "{e}");
}

#[test]
fn relay_access_tokens_quotas_and_claims() {
    use gate_core::config::Secret;
    use gate_core::tunnel::{AccessMode, Account, NodeId, Quota, PROTOCOL_VERSION};
    let node = NodeId::parse(&"a".repeat(52)).unwrap();
    let nix = "[access]\nmode = \"token\"\n\
               [access.default_quota]\nconnections = 10\nacme_requests_per_hour = 5\n\
               [access.quotas.team-a]\nconnections = 100\nbytes_per_day = 1000000\n\
               [limits]\nmax_claims = 50\n";
    let tokens = "team-a:0123456789abcdef0123, team-b:fedcba9876543210fedc";
    let loaded = load_relay(&sources(
        &[("/etc/r.toml", nix)],
        "",
        &[("RELAY__ACCESS__TOKENS", tokens)],
    ))
    .unwrap();
    let c = &loaded.config;
    assert_eq!(c.access.mode, AccessMode::Token);
    assert_eq!(c.limits.max_claims, 50);
    assert_eq!(
        c.access.token_names().collect::<Vec<_>>(),
        ["team-a", "team-b"]
    );
    assert_eq!(
        c.access.admit(
            &node,
            Some(&Secret::new("fedcba9876543210fedc")),
            PROTOCOL_VERSION
        ),
        Ok(Account::Token("team-b".into()))
    );
    // A token's unset quota fields come from the default.
    assert_eq!(
        c.access
            .quotas
            .for_account(&Account::Token("team-a".into())),
        Quota {
            custom_names: None,
            connections: Some(100),
            bytes_per_day: Some(1_000_000),
            acme_requests_per_hour: Some(5),
        }
    );
    assert_eq!(
        c.access
            .quotas
            .for_account(&Account::Token("team-b".into()))
            .connections,
        Some(10)
    );
    // Never shown: not in `config show`, not in Debug.
    for text in [
        loaded.merged.render_text(true),
        loaded.merged.render_json().to_string(),
        format!("{c:?}"),
    ] {
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert!(!text.contains("fedcba98"), "{text}");
    }
    assert!(loaded
        .merged
        .render_text(false)
        .contains("tokens = \"(set)\""));

    // A bad entry is refused without quoting it.
    let e = load_relay(&sources(
        &[],
        "",
        &[
            ("RELAY__ACCESS__MODE", "token"),
            ("RELAY__ACCESS__TOKENS", "team-a:short-secret"),
        ],
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("access.tokens") && e.contains("name:secret"),
        "{e}"
    );
    assert!(!e.contains("short-secret"), "{e}");
    // Duplicate names, and a quota for a token that does not exist.
    let e = load_relay(&sources(
        &[],
        "",
        &[
            ("RELAY__ACCESS__MODE", "token"),
            (
                "RELAY__ACCESS__TOKENS",
                "x:0123456789abcdef0123,x:fedcba9876543210fedc",
            ),
        ],
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("\"x\" twice"), "{e}");
    let e = load_relay(&sources(
        &[(
            "/etc/r.toml",
            "[access]\nmode = \"token\"\n[access.quotas.nobody]\nconnections = 1\n",
        )],
        "",
        &[("RELAY__ACCESS__TOKENS", "x:0123456789abcdef0123")],
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("access.quotas.nobody"), "{e}");
    // Default claims cap.
    let c = load_relay(&sources(&[], "", &[])).unwrap().config;
    assert_eq!(c.limits.max_claims, 10_000);
}

#[test]
fn daemon_relay_token_is_a_secret() {
    let loaded = load_daemon(&sources(
        &[],
        "",
        &[("GATE_RELAY__TOKEN", "team-a:0123456789abcdef0123")],
    ))
    .unwrap();
    assert_eq!(
        loaded
            .config
            .relay
            .token
            .as_ref()
            .map(|t| t.expose().to_owned()),
        Some("team-a:0123456789abcdef0123".to_owned())
    );
    let text = loaded.merged.render_text(true);
    assert!(!text.contains("0123456789abcdef"), "{text}");
    assert!(text.contains("GATE_RELAY__TOKEN"), "{text}");
    let e = load_daemon(&sources(&[], "", &[("GATE_RELAY__TOKEN", "short")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("relay.token") && !e.contains("short"), "{e}");
}

#[test]
fn relay_transport_and_tcp_port() {
    let c = load_daemon(&sources(&[], "", &[])).unwrap().config;
    assert_eq!(c.relay.transport, "auto");
    assert_eq!(c.relay.tcp_port, 443);
    let s = sources(
        &[],
        "",
        &[
            ("GATE_RELAY__TRANSPORT", "tcp"),
            ("GATE_RELAY__TCP_PORT", "8443"),
        ],
    );
    let c = load_daemon(&s).unwrap().config;
    assert_eq!(c.relay.transport, "tcp");
    assert_eq!(c.relay.tcp_port, 8443);
    let e = daemon_err(&sources(&[], "", &[("GATE_RELAY__TRANSPORT", "udp")]));
    assert!(e.to_string().contains("auto, quic or tcp"), "{e}");
}

#[test]
fn upstream_prices_override_the_builtin_table() {
    let toml = r#"
[upstreams.openai]
provider = "openai"

[upstreams.openai.prices."gpt-4o"]
input = 2
output = 8.5
cached = "0.075"

[upstreams.openai.prices."my-fine-tune"]
input = 0.3
output = 1.2
cache_write = 0.375
"#;
    let loaded = load_daemon(&sources(&[("/n.toml", toml)], "", &[])).unwrap();
    let prices = &loaded.config.upstreams["openai"].prices;
    let gpt4o = prices["gpt-4o"];
    assert_eq!(gpt4o.input.0, 2_000_000_000);
    assert_eq!(gpt4o.output.0, 8_500_000_000);
    assert_eq!(gpt4o.cached.0, 75_000_000);
    assert_eq!(gpt4o.cache_write, gpt4o.input, "defaults to input");
    assert_eq!(prices["my-fine-tune"].cache_write.0, 375_000_000);
    let shown = loaded.merged.render_text(true);
    assert!(
        shown.contains("[upstreams.openai.prices.gpt-4o]")
            || shown.contains("[upstreams.openai.prices.\"gpt-4o\"]"),
        "{shown}"
    );
    assert!(shown.contains("output = \"8.5\""), "{shown}");

    let missing = "[upstreams.openai]\nprovider = \"openai\"\n[upstreams.openai.prices.\"gpt-4o\"]\ninput = 1\n";
    let e = daemon_err(&sources(&[("/n.toml", missing)], "", &[]));
    assert_eq!(e.key(), Some("upstreams.openai.prices.gpt-4o.output"));
    assert!(e.to_string().contains("input = 2.5, output = 10"), "{e}");
    let negative = "[upstreams.openai]\nprovider = \"openai\"\n[upstreams.openai.prices.\"gpt-4o\"]\ninput = -1\noutput = 1\n";
    let e = daemon_err(&sources(&[("/n.toml", negative)], "", &[]));
    assert!(e.to_string().contains("an amount of US dollars"), "{e}");
}

#[test]
fn jwt_audience_and_policy_ceiling() {
    use gate_core::accounting::{Period, Usd};
    let text = "[auth.jwt]\naudience = \"gate\"\nmodels = [\"gpt-*\"]\nrpm = 60\nbudget = 20\n\
                budget_period = \"day\"\n";
    let c = load_daemon(&sources(&[("/etc/gate.toml", text)], "", &[]))
        .unwrap()
        .config;
    assert_eq!(c.auth.jwt.audience.as_deref(), Some("gate"));
    let ceiling = &c.auth.jwt.ceiling;
    assert!(ceiling.models.allows("gpt-4o") && !ceiling.models.allows("claude-x"));
    assert_eq!(ceiling.rpm, Some(60));
    let budget = ceiling.budget.unwrap();
    assert_eq!(
        (budget.limit, budget.period),
        (Usd::parse("20").unwrap(), Period::Day)
    );
    // Dollars as a float, a string, or from the environment.
    for (runtime, env) in [
        ("[auth.jwt]\nbudget = 2.5\n", vec![]),
        ("[auth.jwt]\nbudget = \"$2.50\"\n", vec![]),
        ("", vec![("GATE_AUTH__JWT__BUDGET", "2.5")]),
    ] {
        let c = load_daemon(&sources(&[], runtime, &env)).unwrap().config;
        let budget = c.auth.jwt.ceiling.budget.unwrap();
        assert_eq!(budget.limit, Usd::parse("2.5").unwrap());
        assert_eq!(budget.period, Period::Month, "the default period");
    }
    for bad in [
        "[auth.jwt]\nbudget = -1\n",
        "[auth.jwt]\nbudget = \"lots\"\n",
        "[auth.jwt]\nbudget_period = \"fortnight\"\n",
        "[auth.jwt]\nrpm = 0\n",
    ] {
        let e = daemon_err(&sources(&[], bad, &[])).to_string();
        assert!(e.contains("auth.jwt."), "{bad}: {e}");
    }
}

#[test]
fn a_provider_key_never_follows_a_changed_base_url() {
    let stored =
        "[upstreams.vllm]\nprovider = \"custom\"\nbase_url = \"http://10.0.0.5:8000/v1\"\n\
                  api_key = \"sk-stored-secret-value\"\n";
    let s = sources(&[], stored, &[]);
    let key_of = |text: &str| {
        load_daemon(&sources(&[], text, &[]))
            .unwrap()
            .config
            .upstreams["vllm"]
            .api_key
            .as_ref()
            .map(|k| k.expose().to_owned())
    };
    // Another URL alone: the stored key is dropped.
    let text = runtime_set(
        &DAEMON_SCHEMA,
        &s,
        "upstreams.vllm.base_url",
        "https://evil.example/v1",
    )
    .unwrap();
    assert_eq!(key_of(&text), None, "{text}");
    assert!(!text.contains("sk-stored-secret-value"));
    // Another URL with a key in the same edit: that key is kept.
    let text = runtime_set_many(
        &DAEMON_SCHEMA,
        &s,
        &[
            ("upstreams.vllm.base_url", "https://new.example/v1"),
            ("upstreams.vllm.api_key", "sk-new-key-for-new-host"),
        ],
    )
    .unwrap();
    assert_eq!(key_of(&text).as_deref(), Some("sk-new-key-for-new-host"));
    // The same URL, or another field: the key stays.
    for (key, value) in [
        ("upstreams.vllm.base_url", "http://10.0.0.5:8000/v1"),
        ("upstreams.vllm.enabled", "false"),
    ] {
        let text = runtime_set(&DAEMON_SCHEMA, &s, key, value).unwrap();
        assert_eq!(
            key_of(&text).as_deref(),
            Some("sk-stored-secret-value"),
            "{key}"
        );
    }
    // A provider change moves the derived URL: the key is dropped too.
    let s = sources(
        &[],
        "[upstreams.main]\nprovider = \"openai\"\napi_key = \"sk-openai-key\"\n",
        &[],
    );
    let text = runtime_set(&DAEMON_SCHEMA, &s, "upstreams.main.provider", "groq").unwrap();
    assert!(!text.contains("sk-openai-key"), "{text}");
    // A key from the environment cannot be dropped from here: refused, saying where it is.
    let s = sources(
        &[],
        "[upstreams.vllm]\nprovider = \"custom\"\nbase_url = \"http://10.0.0.5:8000/v1\"\n",
        &[("GATE_UPSTREAMS__VLLM__API_KEY", "sk-env-secret-value")],
    );
    let e = runtime_set(
        &DAEMON_SCHEMA,
        &s,
        "upstreams.vllm.base_url",
        "https://evil.example/v1",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("GATE_UPSTREAMS__VLLM__API_KEY") && e.contains("base_url"),
        "{e}"
    );
    assert!(!e.contains("sk-env-secret-value"), "{e}");
}

#[test]
fn relay_store_url_is_a_secret_from_file_or_environment() {
    let url = "postgres://relay:Pw-0123456789@db.internal:5432/gate";
    let loaded = load_relay(&sources(&[], "", &[("RELAY__STORE__URL", url)])).unwrap();
    assert_eq!(
        loaded
            .config
            .store
            .as_ref()
            .map(|s| s.url.expose().to_owned()),
        Some(url.to_owned())
    );
    let text = loaded.merged.render_text(true);
    assert!(!text.contains("Pw-0123456789"), "{text}");
    assert!(text.contains("RELAY__STORE__URL"), "{text}");
    // Unset: claims stay in the state directory.
    assert_eq!(
        load_relay(&sources(&[], "", &[])).unwrap().config.store,
        None
    );
    // A Unix socket directory as a parameter is a host too.
    let socket = "postgres:///gate?host=/run/postgresql";
    let loaded = load_relay(&sources(
        &[("/r.toml", &format!("[store]\nurl = \"{socket}\"\n"))],
        "",
        &[],
    ))
    .unwrap();
    assert_eq!(loaded.config.store.unwrap().url.expose(), socket);
    // Not a PostgreSQL URL: the key and what is expected, never the value.
    for bad in [
        "mysql://relay:Pw-0123456789@db/gate",
        "postgres://relay:Pw-0123456789@/gate",
    ] {
        let e = load_relay(&sources(&[], "", &[("RELAY__STORE__URL", bad)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("store.url") && e.contains("PostgreSQL URL"),
            "{e}"
        );
        assert!(!e.contains("Pw-0123456789"), "{e}");
    }
}

#[test]
fn upstream_model_rules_and_stream_usage() {
    let ok = r#"[upstreams.mistral]
provider = "mistral"
stream_usage = false

[upstreams.local]
provider = "custom"
base_url = "http://127.0.0.1:8000/v1"
stream_usage = true

[upstreams.local.model_rules."qwen3-32b"]
reasoning = true
max_output_tokens = 8192
drop = ["user", "parallel_tool_calls"]

[upstreams.local.model_rules."gpt-4.1"]
max_output_tokens = 65536
"#;
    let loaded = load_daemon(&sources(&[("/n.toml", ok)], "", &[])).unwrap();
    let c = &loaded.config;
    assert_eq!(c.upstreams["mistral"].stream_usage, Some(false));
    assert_eq!(c.upstreams["local"].stream_usage, Some(true));
    let qwen = &c.upstreams["local"].model_rules["qwen3-32b"];
    assert_eq!(
        (qwen.reasoning, qwen.max_output_tokens, qwen.drop.clone()),
        (
            Some(true),
            Some(8192),
            vec!["user".to_owned(), "parallel_tool_calls".to_owned()]
        )
    );
    assert_eq!(
        c.upstreams["local"].model_rules["gpt-4.1"].max_output_tokens,
        Some(65536)
    );
    // `config show` renders them with their origins.
    let text = loaded.merged.render_text(true);
    assert!(
        text.contains("[upstreams.local.model_rules.qwen3-32b]"),
        "{text}"
    );
    assert!(
        text.contains("drop = [\"user\", \"parallel_tool_calls\"]  # from nix /n.toml:13:8"),
        "{text}"
    );
    assert!(
        text.contains("stream_usage = false  # from nix /n.toml:3:16"),
        "{text}"
    );

    // A parameter no rule may drop, a field rules do not have, a wrong type: named errors.
    let bad = |rule: &str| {
        daemon_err(&sources(
            &[(
                "/n.toml",
                &format!("[upstreams.openai]\n[upstreams.openai.model_rules.\"gpt-5\"]\n{rule}\n"),
            )],
            "",
            &[],
        ))
    };
    let e = bad("drop = [\"messages\"]");
    assert_eq!(
        e.key(),
        Some("upstreams.openai.model_rules.gpt-5.drop"),
        "{e}"
    );
    assert!(
        e.to_string().contains("a Chat Completions parameter"),
        "{e}"
    );
    let e = bad("reasonin = true");
    assert!(e.to_string().contains("did you mean `reasoning`"), "{e}");
    let e = bad("max_output_tokens = 0");
    assert!(e.to_string().contains("an integer from 1"), "{e}");
}

#[test]
fn daemon_redis_url_is_a_secret_and_on_unavailable_defaults_to_closed() {
    use gate_core::config::OnUnavailable;
    let url = "redis://:Rd-0123456789@cache.internal:6379/2";
    let loaded = load_daemon(&sources(&[], "", &[("GATE_STORE__REDIS_URL", url)])).unwrap();
    let store = &loaded.config.store;
    assert_eq!(
        store.redis_url.as_ref().map(|u| u.expose().to_owned()),
        Some(url.to_owned())
    );
    assert_eq!(store.on_unavailable, OnUnavailable::Closed);
    let text = loaded.merged.render_text(true);
    assert!(!text.contains("Rd-0123456789"), "{text}");
    assert!(text.contains("GATE_STORE__REDIS_URL"), "{text}");
    assert_eq!(
        load_daemon(&sources(&[], "", &[]))
            .unwrap()
            .config
            .store
            .redis_url,
        None
    );
    let open = load_daemon(&sources(&[], "[store]\non_unavailable = \"open\"\n", &[])).unwrap();
    assert_eq!(open.config.store.on_unavailable, OnUnavailable::Open);
    let e = daemon_err(&sources(&[], "[store]\non_unavailable = \"maybe\"\n", &[])).to_string();
    assert!(
        e.contains("store.on_unavailable") && e.contains("closed or open"),
        "{e}"
    );
    // A bad URL is named by key, never shown.
    for bad in [
        "redisss://:Rd-0123456789@cache:6380",
        "http://:Rd-0123456789@cache",
        "redis://:Rd-0123456789@",
    ] {
        let e = daemon_err(&sources(&[], "", &[("GATE_STORE__REDIS_URL", bad)])).to_string();
        assert!(
            e.contains("store.redis_url") && e.contains("Redis URL"),
            "{e}"
        );
        assert!(!e.contains("Rd-0123456789"), "{e}");
    }
    // TLS (rediss://) is accepted.
    let tls = load_daemon(&sources(
        &[],
        "",
        &[(
            "GATE_STORE__REDIS_URL",
            "rediss://:Rd-0123456789@cache:6380",
        )],
    ))
    .unwrap();
    assert_eq!(
        tls.config.store.redis_url.as_ref().map(|s| s.expose()),
        Some("rediss://:Rd-0123456789@cache:6380")
    );
}
