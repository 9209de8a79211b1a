//! Reading the usage log for people: the summary and chart series with key names resolved
//! from `tokens.json` (shared by `gate usage` and the admin API), and the `gate usage`
//! command itself. Blocking (SQLite): the admin API calls these through
//! [`super::blocking`].

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

use super::store::{total, GroupBy, UsageDb};
use crate::admin::types::{UsageSeries, UsageSummary};
use crate::auth::TokenStore;

/// How `gate usage` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Key id -> name, from the state directory's `tokens.json` (empty when it cannot be read:
/// names are a convenience, the ids stay).
fn key_names(state_dir: &Path) -> BTreeMap<String, String> {
    match TokenStore::load(state_dir) {
        Ok(store) => store.list().into_iter().map(|t| (t.id, t.name)).collect(),
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "usage: key names unavailable");
            BTreeMap::new()
        }
    }
}

/// The usage since `since_ms` grouped `by`, from `<state_dir>/usage.db` (read-only; an
/// absent file is no usage).
pub fn summary(state_dir: &Path, since_ms: u64, by: GroupBy) -> anyhow::Result<UsageSummary> {
    let path = UsageDb::path_in(state_dir);
    let rows = match UsageDb::open_read_only(&path)? {
        Some(db) => db.summary(since_ms, by)?,
        None => Vec::new(),
    };
    let names = if by == GroupBy::Key && !rows.is_empty() {
        key_names(state_dir)
    } else {
        BTreeMap::new()
    };
    Ok(named_summary(rows, since_ms, by, &names))
}

/// A summary of `rows` (grouped `by`), each key's row named from `names`.
fn named_summary(
    mut rows: Vec<crate::admin::types::UsageRow>,
    since_ms: u64,
    by: GroupBy,
    names: &BTreeMap<String, String>,
) -> UsageSummary {
    if by == GroupBy::Key {
        for row in &mut rows {
            row.name = row.group.as_ref().and_then(|id| names.get(id).cloned());
        }
    }
    UsageSummary {
        since_ms,
        by: by.as_str().to_owned(),
        total: total(&rows),
        rows,
    }
}

/// The web UI's chart series since `since_ms`, with key names.
pub fn series(state_dir: &Path, since_ms: u64) -> anyhow::Result<UsageSeries> {
    let path = UsageDb::path_in(state_dir);
    let mut series = match UsageDb::open_read_only(&path)? {
        Some(db) => db.series(since_ms)?,
        None => UsageSeries {
            since_ms,
            ..UsageSeries::default()
        },
    };
    if !series.spend.is_empty() {
        let names = key_names(state_dir);
        for point in &mut series.spend {
            point.name = names.get(&point.key_id).cloned();
        }
    }
    Ok(series)
}

/// `since_ms` as a `since=` value the daemon parses back to the same instant: a UTC date
/// when it is midnight, else a duration back from now in seconds (rounded down, so the
/// daemon's window holds at least the asked one).
fn since_ms_text(since_ms: u64) -> String {
    if since_ms == 0 {
        return "all".to_owned();
    }
    if since_ms % 86_400_000 == 0 {
        return gate_core::accounting::period::date_string(since_ms / 1000);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    format!("{}s", now_ms.saturating_sub(since_ms).div_ceil(1000))
}

/// `gate usage`: prints the summary of `state_dir`'s usage log.
pub fn command(state_dir: &Path, since: &str, by: GroupBy, format: Format) -> anyhow::Result<()> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let since_ms =
        super::parse_since(since, now_ms).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    // A running daemon answers for the log it writes: with `[store] url` that is every
    // daemon's, in the shared store.
    let (summary, source) = match crate::admin::client::AdminClient::discover(state_dir) {
        Some(client) => {
            let route = format!("usage?since={}&by={}", since_ms_text(since_ms), by.as_str());
            let summary: UsageSummary = client
                .call_typed("GET", &route, None::<&()>)
                .context("asking the running daemon for the usage log")?;
            (summary, "the running daemon".to_owned())
        }
        // No daemon, and `[store] url`: the shared log every daemon writes, not the local
        // file the daemons do not use then.
        None => match crate::commands::shared_store_url(state_dir)? {
            Some(url) => {
                let shown = gate_rt::store::PgUrl::parse(&url)
                    .map(|u| u.to_string())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let summary = crate::commands::with_shared_store(&url, |store| async move {
                    let rows = store.summary(since_ms, by).await?;
                    let names: BTreeMap<String, String> = if by == GroupBy::Key {
                        store
                            .load_keys()
                            .await?
                            .into_iter()
                            .map(|t| (t.id, t.name))
                            .collect()
                    } else {
                        BTreeMap::new()
                    };
                    Ok(named_summary(rows, since_ms, by, &names))
                })?;
                (summary, format!("the shared store {shown}"))
            }
            None => (
                summary(state_dir, since_ms, by)
                    .with_context(|| format!("reading the usage log in {}", state_dir.display()))?,
                UsageDb::path_in(state_dir).display().to_string(),
            ),
        },
    };
    let text = match format {
        Format::Table => super::render::table(&summary, &source),
        Format::Json => super::render::json(&summary),
        Format::Csv => super::render::csv(&summary),
    };
    print!("{text}");
    Ok(())
}
