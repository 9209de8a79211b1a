//! The `gate` subcommands other than `serve`: configuration, upstreams and API keys.
//!
//! Changes go through the admin API of a running daemon when there is one (found by
//! [`AdminClient::discover`]), so they are live at once; without a daemon they edit the
//! files of the state directory with the same core editing helpers (a daemon started later
//! reads them; one that the CLI could not reach notices within a second, see `reload`).
//! Output meant for scripts is plain: `gate token create` prints the key alone on stdout.

use std::io::Read;

use anyhow::{Context, Result};
use gate_core::config::{self, DAEMON_SCHEMA};

use crate::admin::client::AdminClient;
use crate::auth::{parse_duration_secs, TokenStore};
use crate::cli::{ConfigArgs, ConfigCommand, TokenCommand, UpstreamCommand};
use crate::{settings, state};

fn state_dir(args: &ConfigArgs) -> Result<std::path::PathBuf> {
    state::resolve_state_dir(args.state_dir.as_deref())
}

/// The running daemon of this state directory, if any (announced on stderr).
fn daemon(source: &ConfigArgs) -> Result<Option<AdminClient>> {
    let dir = state_dir(source)?;
    let client = AdminClient::discover(&dir);
    match &client {
        Some(client) => eprintln!(
            "(via the running daemon on {}; the change is live)",
            client.socket().display()
        ),
        None => eprintln!(
            "(no daemon answers on {}; editing the files in {})",
            crate::admin::socket::socket_path(&dir).display(),
            dir.display()
        ),
    }
    Ok(client)
}

fn no_config(state_dir: &Option<std::path::PathBuf>) -> ConfigArgs {
    ConfigArgs {
        config: Vec::new(),
        state_dir: state_dir.clone(),
    }
}

/// `gate check-config`.
pub fn check_config(args: &ConfigArgs) -> Result<()> {
    let dir = state_dir(args)?;
    let loaded = settings::load(&args.config, &dir)?;
    let c = &loaded.config;
    let names: Vec<_> = c.upstreams.keys().cloned().collect();
    println!(
        "configuration OK: listening on {}:{}, {} upstream(s){}{}",
        c.host,
        c.port,
        names.len(),
        if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        },
        if c.relay.enable {
            format!(", relay via {} address(es)", c.relay.addresses.len())
        } else {
            String::new()
        },
    );
    Ok(())
}

/// `gate config ...`.
pub fn config(command: ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Show {
            origin,
            json,
            source,
        } => {
            let loaded = settings::load(&source.config, &state_dir(&source)?)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&loaded.merged.render_json())?
                );
            } else {
                print!("{}", loaded.merged.render_text(origin));
            }
            Ok(())
        }
        ConfigCommand::Get {
            key,
            origin,
            source,
        } => {
            let loaded = settings::load(&source.config, &state_dir(&source)?)?;
            match loaded.merged.render_key(&key, origin) {
                Some(text) => {
                    println!("{}", text.trim_end());
                    Ok(())
                }
                None => anyhow::bail!("`{key}` is not set (see `gate config show`)"),
            }
        }
        ConfigCommand::Set { key, value, source } => {
            if let Some(client) = daemon(&source)? {
                client
                    .call_ok(
                        "PUT",
                        &format!("config/{key}"),
                        Some(&serde_json::json!({ "value": value })),
                    )
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                eprintln!("set `{key}` in the runtime configuration");
                return Ok(());
            }
            edit_runtime(&source, |sources| {
                config::runtime_set(&DAEMON_SCHEMA, sources, &key, &value)
            })?;
            eprintln!("set `{key}` in the runtime configuration");
            Ok(())
        }
        ConfigCommand::Unset { key, source } => {
            if let Some(client) = daemon(&source)? {
                client.call_ok("DELETE", &format!("config/{key}"), None)?;
                eprintln!("removed `{key}` from the runtime configuration");
                return Ok(());
            }
            edit_runtime(&source, |sources| {
                config::runtime_unset(&DAEMON_SCHEMA, sources, &key)
            })?;
            eprintln!("removed `{key}` from the runtime configuration");
            Ok(())
        }
    }
}

/// Applies an edit to the runtime file: the core validates the whole resulting
/// configuration first, so a bad value changes nothing.
fn edit_runtime(
    source: &ConfigArgs,
    edit: impl FnOnce(&config::ConfigSources) -> Result<String, config::ConfigError>,
) -> Result<()> {
    let dir = state_dir(source)?;
    state::ensure_dir(&dir)?;
    let path = settings::runtime_file(&dir);
    // Read, edit and write under the file's lock: concurrent edits never lose each other.
    let _lock = state::lock(&path)?;
    let sources = settings::read_sources(&source.config, &dir)?;
    let text = edit(&sources).map_err(|e| anyhow::anyhow!("refused: {e}; nothing was changed"))?;
    state::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// `gate upstream ...`.
pub fn upstream(command: UpstreamCommand) -> Result<()> {
    match command {
        UpstreamCommand::Add {
            name,
            provider,
            base_url,
            api_key_stdin,
            models,
            source,
        } => {
            let key = if api_key_stdin {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the API key from stdin")?;
                let text = text.trim().to_owned();
                if text.is_empty() {
                    anyhow::bail!("--api-key-stdin was given but standard input was empty");
                }
                Some(text)
            } else {
                None
            };
            let prefix = format!("upstreams.{name}");
            let mut assignments: Vec<(String, String)> =
                vec![(format!("{prefix}.provider"), provider)];
            if let Some(url) = base_url {
                assignments.push((format!("{prefix}.base_url"), url));
            }
            if let Some(key) = key {
                assignments.push((format!("{prefix}.api_key"), key));
            }
            if !models.is_empty() {
                assignments.push((format!("{prefix}.models"), models.join(",")));
            }
            if let Some(client) = daemon(&source)? {
                let mut body = serde_json::Map::new();
                body.insert("name".into(), name.clone().into());
                for (key, value) in &assignments {
                    let field = key.rsplit('.').next().unwrap_or_default();
                    body.insert(field.to_owned(), value.clone().into());
                }
                client.call_ok("POST", "upstreams", Some(&serde_json::Value::Object(body)))?;
                eprintln!("upstream `{name}` saved in the runtime configuration");
                return Ok(());
            }
            let refs: Vec<(&str, &str)> = assignments
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            edit_runtime(&source, |sources| {
                config::runtime_set_many(&DAEMON_SCHEMA, sources, &refs)
            })?;
            eprintln!("upstream `{name}` saved in the runtime configuration");
            Ok(())
        }
        UpstreamCommand::List { json, source } => {
            let loaded = settings::load(&source.config, &state_dir(&source)?)?;
            let rows: Vec<serde_json::Value> = loaded
                .config
                .upstreams
                .values()
                .map(|u| {
                    serde_json::json!({
                        "name": u.name,
                        "provider": u.provider.name(),
                        "base_url": u.base_url,
                        "api_key": if u.api_key.is_some() { "(set)" } else { "(not set)" },
                        "models": u.models,
                        "enabled": u.enabled,
                    })
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                eprintln!("no upstreams; add one with `gate upstream add NAME --provider P`");
            } else {
                for u in loaded.config.upstreams.values() {
                    println!(
                        "{}\t{}\t{}\tkey {}{}",
                        u.name,
                        u.provider.name(),
                        u.base_url,
                        if u.api_key.is_some() {
                            "set"
                        } else {
                            "not set"
                        },
                        if u.enabled { "" } else { "\tdisabled" },
                    );
                }
            }
            Ok(())
        }
        UpstreamCommand::Remove { name, source } => {
            if let Some(client) = daemon(&source)? {
                client.call_ok("DELETE", &format!("upstreams/{name}"), None)?;
                eprintln!("upstream `{name}` removed (it stays removed across restarts)");
                return Ok(());
            }
            edit_runtime(&source, |sources| {
                config::runtime_remove_upstream(&DAEMON_SCHEMA, sources, &name)
            })?;
            eprintln!("upstream `{name}` removed (it stays removed across restarts)");
            Ok(())
        }
    }
}

/// `gate token ...`.
pub fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create {
            name,
            expires,
            state_dir,
        } => {
            if let Some(client) = daemon(&no_config(&state_dir))? {
                let mut body = serde_json::json!({ "name": name });
                if let Some(expires) = &expires {
                    body["expires"] = expires.clone().into();
                }
                let created = client.call_ok("POST", "tokens", Some(&body))?;
                let token = created
                    .get("token")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| anyhow::anyhow!("the daemon returned no key"))?;
                println!("{token}");
                eprintln!(
                    "created API key id {} ({}){}; it is shown only once",
                    created["id"].as_str().unwrap_or("?"),
                    created["name"].as_str().unwrap_or("?"),
                    match created["expires_at"].as_u64() {
                        Some(t) => format!(", expires at unix time {t}"),
                        None => String::new(),
                    }
                );
                return Ok(());
            }
            let dir = state::resolve_state_dir(state_dir.as_deref())?;
            state::ensure_dir(&dir)?;
            let ttl = expires
                .as_deref()
                .map(parse_duration_secs)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
            let mut store = TokenStore::load(&dir)?;
            let (record, token) = store.create(&name, ttl)?;
            println!("{token}");
            eprintln!(
                "created API key id {} ({}){}; it is shown only once",
                record.id,
                record.name,
                match record.expires_at {
                    Some(t) => format!(", expires at unix time {t}"),
                    None => String::new(),
                }
            );
            Ok(())
        }
        TokenCommand::List { json, state_dir } => {
            let dir = state::resolve_state_dir(state_dir.as_deref())?;
            let store = TokenStore::load(&dir)?;
            let tokens = store.list();
            if json {
                let rows: Vec<_> = tokens
                    .iter()
                    .map(|t| serde_json::json!({"id": t.id, "name": t.name, "created_at": t.created_at, "expires_at": t.expires_at}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if tokens.is_empty() {
                eprintln!("no API keys; create one with `gate token create --name NAME`");
            } else {
                for t in tokens {
                    println!(
                        "{}\t{}\tcreated {}{}",
                        t.id,
                        t.name,
                        t.created_at,
                        t.expires_at
                            .map(|e| format!("\texpires {e}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        TokenCommand::Revoke { id, state_dir } => {
            if let Some(client) = daemon(&no_config(&state_dir))? {
                client.call_ok("DELETE", &format!("tokens/{id}"), None)?;
                eprintln!("revoked API key {id}");
                return Ok(());
            }
            let dir = state::resolve_state_dir(state_dir.as_deref())?;
            let mut store = TokenStore::load(&dir)?;
            if store.revoke(&id)? {
                eprintln!("revoked API key {id}");
                Ok(())
            } else {
                anyhow::bail!("no API key has id {id} (see `gate token list`)")
            }
        }
    }
}

/// `gate status`.
pub fn status(source: &ConfigArgs, json: bool) -> Result<()> {
    let dir = state_dir(source)?;
    let Some(client) = AdminClient::discover(&dir) else {
        anyhow::bail!(
            "no running daemon found for the state directory {}: nothing answers on its admin \
             socket {} (start one with `gate serve`, or pass the daemon's --state-dir; \
             `gate config show` and `gate upstream list` read the files without a daemon)",
            dir.display(),
            crate::admin::socket::socket_path(&dir).display()
        );
    };
    let mut status = client.call_ok("GET", "status", None)?;
    let login = client.call_ok("POST", "login-url", None)?;
    let url = login
        .get("url")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_owned();
    if json {
        status["login_url"] = url.into();
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    println!(
        "gate {} ({} runtime) listening on {}",
        text(&status["version"]),
        text(&status["runtime"]),
        text(&status["listen"])
    );
    println!("state directory: {}", text(&status["state_dir"]));
    let upstreams = status["upstreams"].as_array().cloned().unwrap_or_default();
    if upstreams.is_empty() {
        println!("upstreams: none (add one with `gate upstream add NAME --provider P`)");
    } else {
        println!("upstreams:");
        for u in &upstreams {
            println!(
                "  {}\t{}\t{}\t{}\tkey {}",
                text(&u["name"]),
                text(&u["provider"]),
                text(&u["base_url"]),
                text(&u["health"]["state"]),
                if u["api_key"]["set"].as_bool() == Some(true) {
                    "set"
                } else {
                    "not set"
                }
            );
        }
    }
    println!("relay: {}", text(&status["relay"]["state"]));
    for url in status["relay"]["public_urls"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!("  public URL: {}", text(url));
    }
    let relays = status["relay"]["relays"].as_array().map(Vec::as_slice);
    for relay in relays.unwrap_or_default() {
        println!(
            "  relay {}: {}",
            text(&relay["address"]),
            text(&relay["state"])
        );
        if let Some(refusal) = relay["custom_name_refusal"].as_str() {
            println!("    custom name refused: {refusal}");
        }
        if let Some(error) = relay["last_error"].as_str() {
            println!("    last error: {error}");
        }
    }
    println!("certificate: {}", text(&status["certificate"]["state"]));
    if let Some(error) = status["last_reload_error"].get("message") {
        println!(
            "last reload error (the previous configuration is still in effect): {}",
            error.as_str().unwrap_or("")
        );
    }
    println!("web UI login (one use, 15 minutes): {url}");
    Ok(())
}
