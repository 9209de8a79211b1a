//! Fuzz the configuration layers: the input is split on lines holding only `%%` into a nix
//! TOML file, a runtime TOML file and environment lines `NAME=VALUE`. Every part goes
//! through the full merge and validation for both the daemon and the relay schema, then
//! through the runtime editing helpers and rendering. Nothing may panic.
#![no_main]
use gate_core::config::{
    load_daemon, load_relay, runtime_remove, runtime_set, runtime_unset, ConfigSources,
    SourceText, DAEMON_SCHEMA, RELAY_SCHEMA,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split("\n%%\n");
    let nix = parts.next().unwrap_or("");
    let runtime = parts.next().unwrap_or("");
    let env_text = parts.next().unwrap_or("");
    let env: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let sources = ConfigSources {
        nix_files: vec![SourceText::new("/fuzz/nix.toml", nix)],
        runtime: SourceText::new("/fuzz/config.toml", runtime),
        env: env.clone(),
    };
    if let Ok(loaded) = load_daemon(&sources) {
        let _ = loaded.merged.render_text(true);
        let _ = loaded.merged.render_json();
    }
    if let Ok(loaded) = load_relay(&sources) {
        let _ = loaded.merged.render_text(false);
    }
    // The environment lines double as edits of the runtime file: KEY=VALUE sets,
    // a bare KEY unsets and removes.
    for line in env_text.lines().take(4) {
        for schema in [&DAEMON_SCHEMA, &RELAY_SCHEMA] {
            let result = match line.split_once('=') {
                Some((key, value)) => runtime_set(schema, &sources, key, value),
                None => runtime_unset(schema, &sources, line)
                    .and_then(|_| runtime_remove(schema, &sources, line)),
            };
            if let Ok(new_runtime) = result {
                // An accepted edit must produce a runtime file that loads.
                let next = sources.with_runtime_text(new_runtime);
                let loaded = if std::ptr::eq(schema, &DAEMON_SCHEMA) {
                    load_daemon(&next).map(|_| ())
                } else {
                    load_relay(&next).map(|_| ())
                };
                assert!(loaded.is_ok(), "accepted edit does not load: {loaded:?}");
            }
        }
    }
});
