//! The `gate` subcommands other than `serve`: configuration, upstreams and API keys.
//!
//! They work on the files of the state directory; a running daemon notices changes to
//! the runtime file and to the key store within a second (see `reload`). Output meant for
//! scripts is plain: `gate token create` prints the key alone on stdout.

use std::io::Read;

use anyhow::{Context, Result};
use gate_core::config::{self, DAEMON_SCHEMA};

use crate::auth::{parse_duration_secs, TokenStore};
use crate::cli::{ConfigArgs, ConfigCommand, TokenCommand, UpstreamCommand};
use crate::{settings, state};

fn state_dir(args: &ConfigArgs) -> Result<std::path::PathBuf> {
    state::resolve_state_dir(args.state_dir.as_deref())
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
            edit_runtime(&source, |sources| {
                config::runtime_set(&DAEMON_SCHEMA, sources, &key, &value)
            })?;
            eprintln!("set `{key}` in the runtime configuration");
            Ok(())
        }
        ConfigCommand::Unset { key, source } => {
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
    let sources = settings::read_sources(&source.config, &dir)?;
    let text = edit(&sources).map_err(|e| anyhow::anyhow!("refused: {e}; nothing was changed"))?;
    state::ensure_dir(&dir)?;
    let path = settings::runtime_file(&dir);
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
