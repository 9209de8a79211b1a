//! `gate token ...`: create, change, list and revoke API keys with their policy.

use std::str::FromStr;

use anyhow::{Context, Result};
use gate_core::accounting::{KeyPolicy, ModelPatterns, Period, Usd};

use super::{shared_store_url, utc_date, with_shared_store};
use crate::admin::client::AdminClient;
use crate::admin::types::{CreatedToken, Done, TokenEdit};
use crate::auth::{TokenRecord, TokenStore};
use crate::cli::{PolicyArgs, TokenCommand};
use crate::state;

/// One row of `gate token list --json`: the times as Unix seconds (as before) and as
/// readable UTC dates, and the key's policy.
#[derive(serde::Serialize)]
struct TokenListRow {
    id: String,
    name: String,
    created_at: u64,
    expires_at: Option<u64>,
    created: String,
    expires: Option<String>,
    policy: KeyPolicy,
    /// Spent in the current budget period (the budget's period; a month without one),
    /// from the usage log.
    spent_usd: f64,
    period: Period,
    /// The last request with this key (`YYYY-MM-DD HH:MM UTC`), from the usage log.
    last_used: Option<String>,
}

/// Spend this period and last use per key id, read from `<state_dir>/usage.db` (read-only;
/// absent: none yet).
struct UsageFacts {
    spent: std::collections::BTreeMap<String, Usd>,
    last_used_ms: std::collections::BTreeMap<String, u64>,
}

fn key_period(t: &TokenRecord) -> Period {
    t.policy.budget.map_or(Period::Month, |b| b.period)
}

fn usage_facts(dir: &std::path::Path, tokens: &[TokenRecord]) -> Result<UsageFacts> {
    let mut facts = UsageFacts {
        spent: Default::default(),
        last_used_ms: Default::default(),
    };
    let Some(db) = crate::usage::UsageDb::open_read_only(&crate::usage::UsageDb::path_in(dir))?
    else {
        return Ok(facts);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    facts.spent =
        db.spent_in_current_periods(tokens.iter().map(|t| (t.id.as_str(), key_period(t))), now)?;
    facts.last_used_ms = db.last_used()?;
    Ok(facts)
}

/// The keys and their facts as the running daemon in `dir` answers them (`GET tokens`): with
/// `[store] url` the keys and spend of every daemon; `None` when no daemon answers.
fn from_daemon(dir: &std::path::Path) -> Result<Option<(Vec<TokenRecord>, UsageFacts)>> {
    let Some(client) = crate::admin::client::AdminClient::discover(dir) else {
        return Ok(None);
    };
    let list: crate::admin::types::TokenList = client.call_typed("GET", "tokens", None::<&()>)?;
    let mut facts = UsageFacts {
        spent: Default::default(),
        last_used_ms: Default::default(),
    };
    let records = list
        .tokens
        .into_iter()
        .map(|view| {
            facts.spent.insert(view.id.clone(), view.spent_usd);
            if let Some(at) = view.last_used_at {
                facts.last_used_ms.insert(view.id.clone(), at * 1000);
            }
            TokenRecord {
                id: view.id,
                name: view.name,
                sha256: String::new(),
                created_at: view.created_at,
                expires_at: view.expires_at,
                policy: view.policy,
            }
        })
        .collect();
    Ok(Some((records, facts)))
}

/// Where a key command acts.
enum Target {
    /// The running daemon's admin API (the change is live).
    Daemon(AdminClient),
    /// No daemon, and `[store] url` is set: PostgreSQL, where every daemon reads its keys.
    Shared(String),
    /// No daemon, no shared store: the state directory's files.
    Files(std::path::PathBuf),
}

/// The running daemon, else the shared store, else the files (announced on stderr).
fn target(state_dir: Option<&std::path::Path>) -> Result<Target> {
    let dir = state::resolve_state_dir(state_dir)?;
    let socket = crate::admin::socket::socket_path(&dir);
    if let Some(client) = AdminClient::discover(&dir) {
        eprintln!(
            "(via the running daemon on {}; the change is live)",
            client.socket().display()
        );
        return Ok(Target::Daemon(client));
    }
    if let Some(url) = shared_store_url(&dir)? {
        let shown = gate_rt::store::PgUrl::parse(&url)
            .map(|u| u.to_string())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!(
            "(no daemon answers on {}; acting on the shared store {shown} of [store] url, \
             which every daemon reads within a second)",
            socket.display()
        );
        return Ok(Target::Shared(url));
    }
    eprintln!(
        "(no daemon answers on {}; editing the files in {})",
        socket.display(),
        dir.display()
    );
    Ok(Target::Files(dir))
}

/// The keys and their facts in the shared store (what a daemon on it would list).
fn from_shared(url: &str) -> Result<(Vec<TokenRecord>, UsageFacts)> {
    with_shared_store(url, |store| async move {
        let records = store.load_keys().await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let spend = store.spend(now).await?;
        let last_used_ms = store.last_used().await?;
        let spent = records
            .iter()
            .map(|t| {
                let sums = spend.get(&t.id).copied().unwrap_or([Usd::ZERO; 4]);
                (t.id.clone(), crate::shared::spend_in(&sums, key_period(t)))
            })
            .collect();
        Ok((
            records,
            UsageFacts {
                spent,
                last_used_ms,
            },
        ))
    })
}

/// `none` (or `off`) as "remove the limit", anything else through `parse`.
fn limit<T>(
    flag: &str,
    text: Option<String>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<Option<T>>> {
    let Some(text) = text else { return Ok(None) };
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") || text.eq_ignore_ascii_case("off") {
        return Ok(Some(None));
    }
    parse(text)
        .map(|v| Some(Some(v)))
        .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

fn count<T: FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a whole number (or `none` to remove the limit)"))
}

/// The admin API's edit from the command line's options.
fn token_edit(
    name: Option<String>,
    expires: Option<String>,
    policy: PolicyArgs,
) -> Result<TokenEdit> {
    Ok(TokenEdit {
        name,
        expires: expires.map(Some),
        models: policy.models.map(|m| Some(ModelPatterns::parse(&m))),
        rpm: limit("--rpm", policy.rpm, count)?,
        tpm: limit("--tpm", policy.tpm, count)?,
        budget: limit("--budget", policy.budget, Usd::parse)?,
        period: policy
            .period
            .as_deref()
            .map(Period::from_str)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--period: {e}"))?,
        owner: limit("--owner", policy.owner, |t| Ok(t.to_owned()))?,
    })
}

/// `models gpt-*,claude-*  rpm 60  budget $20.00/month  owner alice`, or `no limits`.
pub fn describe_policy(policy: &KeyPolicy) -> String {
    let mut parts = Vec::new();
    if !policy.models.is_empty() {
        parts.push(format!("models {}", policy.models.patterns().join(",")));
    }
    if let Some(rpm) = policy.rpm {
        parts.push(format!("rpm {rpm}"));
    }
    if let Some(tpm) = policy.tpm {
        parts.push(format!("tpm {tpm}"));
    }
    if let Some(budget) = policy.budget {
        parts.push(format!("budget {}/{}", budget.limit, budget.period));
    }
    if parts.is_empty() {
        parts.push("no limits".to_owned());
    }
    if let Some(owner) = &policy.owner {
        parts.push(format!("owner {owner}"));
    }
    parts.join("  ")
}

fn announce_created(id: &str, name: &str, expires_at: Option<u64>) {
    eprintln!(
        "created API key id {id} ({name}){}; it is shown only once",
        match expires_at {
            Some(t) => format!(", expires {}", utc_date(t)),
            None => String::new(),
        }
    );
}

fn print_list(tokens: &[TokenRecord], facts: &UsageFacts, json: bool) -> Result<()> {
    let spent = |t: &TokenRecord| facts.spent.get(&t.id).copied().unwrap_or(Usd::ZERO);
    let last_used = |t: &TokenRecord| facts.last_used_ms.get(&t.id).map(|ms| utc_date(ms / 1000));
    if json {
        let rows: Vec<_> = tokens
            .iter()
            .map(|t| TokenListRow {
                id: t.id.clone(),
                name: t.name.clone(),
                created_at: t.created_at,
                expires_at: t.expires_at,
                created: utc_date(t.created_at),
                expires: t.expires_at.map(utc_date),
                policy: t.policy.clone(),
                spent_usd: spent(t).as_f64(),
                period: key_period(t),
                last_used: last_used(t),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if tokens.is_empty() {
        eprintln!("no API keys; create one with `gate token create --name NAME`");
        return Ok(());
    }
    for t in tokens {
        let spend = match t.policy.budget {
            Some(b) => format!("spent {} of {} this {}", spent(t), b.limit, b.period),
            None => format!("spent {} this {}", spent(t), key_period(t)),
        };
        println!(
            "{}\t{}\tcreated {}{}\t{}\t{}\t{}",
            t.id,
            t.name,
            utc_date(t.created_at),
            t.expires_at
                .map(|e| format!("\texpires {}", utc_date(e)))
                .unwrap_or_default(),
            describe_policy(&t.policy),
            spend.replace("this total", "in total"),
            last_used(t).map_or("never used".to_owned(), |d| format!("last used {d}")),
        );
    }
    Ok(())
}

/// `gate token ...`.
pub fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create {
            name,
            expires,
            policy,
            state_dir,
        } => {
            let body = token_edit(Some(name), expires, policy)?;
            // Checked before anything is sent or written.
            let edit = body.to_key_edit().map_err(|e| anyhow::anyhow!("{e}"))?;
            let dir = match target(state_dir.as_deref())? {
                Target::Daemon(client) => {
                    let created: CreatedToken = client.call_typed("POST", "tokens", Some(&body))?;
                    println!("{}", created.token);
                    announce_created(&created.id, &created.name, created.expires_at);
                    return Ok(());
                }
                Target::Shared(url) => {
                    let (record, token) = with_shared_store(&url, |store| async move {
                        Ok(store.create_key(&edit).await?)
                    })?;
                    println!("{token}");
                    announce_created(&record.id, &record.name, record.expires_at);
                    return Ok(());
                }
                Target::Files(dir) => dir,
            };
            state::ensure_dir(&dir)?;
            let mut store = TokenStore::load(&dir)?;
            let (record, token) = store.create_with(&edit)?;
            println!("{token}");
            announce_created(&record.id, &record.name, record.expires_at);
            Ok(())
        }
        TokenCommand::Update {
            id,
            name,
            expires,
            policy,
            state_dir,
        } => {
            let body = token_edit(name, expires, policy)?;
            let edit = body.to_key_edit().map_err(|e| anyhow::anyhow!("{e}"))?;
            if body == TokenEdit::default() {
                anyhow::bail!(
                    "nothing to change: give at least one of --name, --expires, --models, --rpm, \
                     --tpm, --budget, --period, --owner (see `gate token update --help`)"
                );
            }
            let records = match target(state_dir.as_deref())? {
                Target::Daemon(client) => {
                    let _: Done =
                        client.call_typed("PATCH", &format!("tokens/{id}"), Some(&body))?;
                    let dir = state::resolve_state_dir(state_dir.as_deref())?;
                    match from_daemon(&dir)? {
                        Some((records, _)) => records,
                        None => TokenStore::load(&dir)?.list(),
                    }
                }
                Target::Shared(url) => {
                    let key_id = id.clone();
                    let updated = with_shared_store(&url, |store| async move {
                        Ok(store.update_key(&key_id, &edit).await?)
                    })?;
                    match updated {
                        Some(record) => vec![record],
                        None => anyhow::bail!("no API key has id {id} (see `gate token list`)"),
                    }
                }
                Target::Files(dir) => {
                    let mut store = TokenStore::load(&dir)?;
                    if store.update(&id, &edit)?.is_none() {
                        anyhow::bail!("no API key has id {id} (see `gate token list`)");
                    }
                    TokenStore::load(&dir)?.list()
                }
            };
            let record = records
                .into_iter()
                .find(|t| t.id == id)
                .with_context(|| format!("API key {id} changed, but is no longer listed"))?;
            eprintln!(
                "updated API key {id} ({}): {}",
                record.name,
                describe_policy(&record.policy)
            );
            Ok(())
        }
        TokenCommand::List { json, state_dir } => {
            let dir = state::resolve_state_dir(state_dir.as_deref())?;
            if let Some((tokens, facts)) = from_daemon(&dir)? {
                return print_list(&tokens, &facts, json);
            }
            if let Some(url) = shared_store_url(&dir)? {
                let (tokens, facts) = from_shared(&url)?;
                return print_list(&tokens, &facts, json);
            }
            let store = TokenStore::load(&dir)?;
            let tokens = store.list();
            let facts = usage_facts(&dir, &tokens)?;
            print_list(&tokens, &facts, json)
        }
        TokenCommand::Revoke { id, state_dir } => {
            let revoked = match target(state_dir.as_deref())? {
                Target::Daemon(client) => {
                    let _: Done =
                        client.call_typed("DELETE", &format!("tokens/{id}"), None::<&()>)?;
                    true
                }
                Target::Shared(url) => {
                    let id = id.clone();
                    with_shared_store(
                        &url,
                        |store| async move { Ok(store.revoke_key(&id).await?) },
                    )?
                }
                Target::Files(dir) => TokenStore::load(&dir)?.revoke(&id)?,
            };
            if revoked {
                eprintln!("revoked API key {id}");
                Ok(())
            } else {
                anyhow::bail!("no API key has id {id} (see `gate token list`)")
            }
        }
    }
}
