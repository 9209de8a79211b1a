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
use crate::admin::types::{Done, LoginUrl, Models, SetValue, Status, UpstreamRequest};
use crate::cli::{ConfigArgs, ConfigCommand, UpstreamCommand};
use crate::{settings, state};

mod token;
pub use token::token;

fn state_dir(args: &ConfigArgs) -> Result<std::path::PathBuf> {
    state::resolve_state_dir(args.state_dir.as_deref())
}

/// The running daemon of this state directory, if any (announced on stderr).
pub(crate) fn daemon(source: &ConfigArgs) -> Result<Option<AdminClient>> {
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

/// `[store] url` as the configuration read without a daemon gives it (`GATE_STORE__URL`,
/// the state directory's runtime file), if set: then the keys and the usage log are in
/// PostgreSQL, not in the state directory's files, which the daemons ignore.
pub(crate) fn shared_store_url(dir: &std::path::Path) -> Result<Option<String>> {
    let loaded = settings::load(&[], dir)?;
    Ok(loaded.config.store.url.map(|url| url.expose().to_owned()))
}

/// Runs `work` on the shared store of `url` (connected and migrated as a daemon would),
/// on a runtime of the command's own; the error names the store, never the password.
pub(crate) fn with_shared_store<T, F, Fut>(url: &str, work: F) -> Result<T>
where
    F: FnOnce(std::sync::Arc<crate::shared::SharedStore<gate_runtime_tokio::TokioRuntime>>) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let url = url.to_owned();
    gate_runtime_tokio::block_on(|rt| async move {
        let store = crate::shared::SharedStore::connect(
            rt,
            &url,
            gate_core::config::OnUnavailable::Closed,
            "cli".to_owned(),
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "no daemon answers, and the shared store of [store] url cannot be reached: {e}"
            )
        })?;
        work(store).await
    })
    .context("starting the runtime")?
}

/// `gate check-config`.
pub fn check_config(args: &ConfigArgs) -> Result<()> {
    let dir = state_dir(args)?;
    let loaded = settings::load(&args.config, &dir)?;
    let c = &loaded.config;
    // The store URLs as the daemon will read them (TLS options and CA files included),
    // shown without their passwords.
    let mut stores = String::new();
    if let Some(url) = &c.store.url {
        let url = gate_rt::store::PgUrl::parse(url.expose()).map_err(|e| anyhow::anyhow!("{e}"))?;
        stores.push_str(&format!(
            ", shared store {url} (sslmode={})",
            url.tls_mode().as_str()
        ));
    }
    if let Some(url) = &c.store.redis_url {
        let url =
            gate_rt::store::RedisUrl::parse(url.expose()).map_err(|e| anyhow::anyhow!("{e}"))?;
        stores.push_str(&format!(", shared limits on {url}"));
    }
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
    if !stores.is_empty() {
        println!("stores:{}", stores.trim_start_matches(','));
    }
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
            let value = config_value(&key, value)?;
            if let Some(client) = daemon(&source)? {
                let _: Done = client.call_typed(
                    "PUT",
                    &format!("config/{key}"),
                    Some(&SetValue {
                        value: value.clone().into(),
                    }),
                )?;
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
                let _: Done = client.call_typed("DELETE", &format!("config/{key}"), None::<&()>)?;
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

/// The value of `gate config set KEY VALUE`: `-` reads it from standard input (one trailing
/// newline dropped); a secret key given on the command line is refused, because the command
/// line ends up in shell history and `ps`.
fn config_value(key: &str, value: String) -> Result<String> {
    if value == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the value from standard input")?;
        let text = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text)
            .to_owned();
        return Ok(text);
    }
    let secret = config::parse_key_path(key)
        .and_then(|path| path.last().cloned())
        .is_some_and(|last| config::is_secret_key(&last));
    if secret {
        anyhow::bail!(
            "`{key}` is a secret: it is not taken from the command line (shell history and `ps` \
             would show it); nothing was changed. Give `-` as the value and the secret on \
             standard input, e.g. `printf %s \"$SECRET\" | gate config set {key} -`"
        );
    }
    Ok(value)
}

/// Why a `custom` upstream's base URL looks wrong, if it does: OpenAI-compatible servers
/// serve `<base>/chat/completions` under a version segment (`/v1`, `/v1beta/openai`, ...),
/// and a base URL without one is accepted by the server's root and 404s on every request.
pub fn unversioned_custom_url(provider: &str, base_url: &str) -> Option<String> {
    if provider != "custom" {
        return None;
    }
    let after_scheme = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest);
    let path = after_scheme
        .split_once('/')
        .map_or("", |(_, path)| path)
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let versioned = path.split('/').any(|segment| {
        let mut chars = segment.chars();
        matches!(chars.next(), Some('v' | 'V')) && chars.next().is_some_and(|c| c.is_ascii_digit())
    });
    (!versioned).then(|| {
        format!(
            "the custom upstream's base URL {base_url} has no version segment such as /v1, so \
             every request would go to {}/chat/completions and most servers answer 404; use \
             {}/v1 (as the server's OpenAI-compatible API documents it)",
            base_url.trim_end_matches('/'),
            base_url.trim_end_matches('/')
        )
    })
}

/// `1970-01-01 00:00 UTC` for seconds since the Unix epoch.
pub fn utc_date(secs: u64) -> String {
    let rest = secs % 86_400;
    format!(
        "{} {:02}:{:02} UTC",
        gate_core::accounting::period::date_string(secs),
        rest / 3600,
        rest % 3600 / 60
    )
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
            force,
            source,
        } => {
            if let Some(problem) = base_url
                .as_deref()
                .and_then(|url| unversioned_custom_url(&provider, url))
            {
                if !force {
                    anyhow::bail!(
                        "{problem}; nothing was changed (pass --force if this server really \
                         serves its API without a version segment)"
                    );
                }
                eprintln!("gate: warning: {problem} (accepted because of --force)");
            }
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
                vec![(format!("{prefix}.provider"), provider.clone())];
            if let Some(url) = &base_url {
                assignments.push((format!("{prefix}.base_url"), url.clone()));
            }
            if let Some(key) = &key {
                assignments.push((format!("{prefix}.api_key"), key.clone()));
            }
            if !models.is_empty() {
                assignments.push((format!("{prefix}.models"), models.join(",")));
            }
            if let Some(client) = daemon(&source)? {
                let body = UpstreamRequest {
                    name: Some(name.clone()),
                    provider: Some(provider.clone()),
                    base_url: base_url.clone(),
                    api_key: key.clone(),
                    models: (!models.is_empty()).then(|| Models::List(models.clone())),
                    enabled: None,
                };
                let _: Done = client.call_typed("POST", "upstreams", Some(&body))?;
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
            let rows: Vec<UpstreamListRow> = loaded
                .config
                .upstreams
                .values()
                .map(|u| UpstreamListRow {
                    name: u.name.clone(),
                    provider: u.provider.name().to_owned(),
                    base_url: u.base_url.clone(),
                    api_key: if u.api_key.is_some() {
                        "(set)"
                    } else {
                        "(not set)"
                    },
                    models: u.models.clone(),
                    enabled: u.enabled,
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
                let _: Done =
                    client.call_typed("DELETE", &format!("upstreams/{name}"), None::<&()>)?;
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

/// One row of `gate upstream list --json` (the key only as set / not set).
#[derive(serde::Serialize)]
struct UpstreamListRow {
    name: String,
    provider: String,
    base_url: String,
    api_key: &'static str,
    models: Vec<String>,
    enabled: bool,
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
    let status: Status = client.call_typed("GET", "status", None::<&()>)?;
    let login: LoginUrl = client.call_typed("POST", "login-url", None::<&()>)?;
    let url = login.url;
    if json {
        #[derive(serde::Serialize)]
        struct WithLogin<'a> {
            #[serde(flatten)]
            status: &'a Status,
            login_url: &'a str,
        }
        let out = WithLogin {
            status: &status,
            login_url: &url,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "gate {} ({} runtime) listening on {}",
        status.version, status.runtime, status.listen
    );
    println!("state directory: {}", status.state_dir);
    if status.upstreams.is_empty() {
        println!("upstreams: none (add one with `gate upstream add NAME --provider P`)");
    } else {
        println!("upstreams:");
        for u in &status.upstreams {
            println!(
                "  {}\t{}\t{}\t{}\tkey {}",
                u.name,
                u.provider,
                u.base_url,
                u.health.state,
                if u.api_key.set { "set" } else { "not set" }
            );
            if let Some(problem) = &u.misconfiguration {
                println!("    misconfigured: {problem}");
            }
        }
    }
    println!("relay: {}", status.relay.state);
    for url in status.relay.public_urls.iter().flatten() {
        println!("  public URL: {url}");
    }
    for relay in status.relay.relays.iter().flatten() {
        match &relay.transport {
            Some(transport) => {
                println!(
                    "  relay {}: {} over {transport}",
                    relay.address, relay.state
                )
            }
            None => println!("  relay {}: {}", relay.address, relay.state),
        }
        if let Some(refusal) = &relay.custom_name_refusal {
            println!("    custom name refused: {refusal}");
        }
        if let Some(error) = &relay.last_error {
            println!("    last error: {error}");
        }
    }
    println!("certificate: {}", status.certificate.state);
    if let Some(error) = &status.last_reload_error {
        println!(
            "last reload error (the previous configuration is still in effect): {}",
            error.message
        );
    }
    println!("web UI login (one use, 15 minutes): {url}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_date(1_798_761_599), "2026-12-31 23:59 UTC");
        assert_eq!(utc_date(4_107_542_400), "2100-03-01 00:00 UTC");
    }

    #[test]
    fn custom_base_urls_need_a_version_segment() {
        for bad in [
            "http://127.0.0.1:11434",
            "http://127.0.0.1:11434/",
            "https://llm.example/api",
            "https://llm.example/openai?v1",
        ] {
            assert!(unversioned_custom_url("custom", bad).is_some(), "{bad}");
        }
        for good in [
            "http://127.0.0.1:11434/v1",
            "http://127.0.0.1:11434/v1/",
            "https://generativelanguage.googleapis.com/v1beta/openai",
            "https://llm.example/api/v2",
        ] {
            assert!(unversioned_custom_url("custom", good).is_none(), "{good}");
        }
        assert!(unversioned_custom_url("openai", "https://api.openai.com").is_none());
    }
}
