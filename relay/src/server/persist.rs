//! Persistence of the name claims: the name table is loaded from the state directory at start,
//! rewritten (atomically) when a claim changes, and every [`PERSIST_INTERVAL`] for last-seen
//! times.
//!
//! Must not: lose claims on a failed write (they stay in memory; the next write retries).

use super::*;

/// How often claims' last-seen times are written to disk.
pub(super) const PERSIST_INTERVAL: Duration = Duration::from_secs(60);

impl Shared {
    /// Writes the name table to the state directory (atomically). Failures are logged: the
    /// claims stay in memory and the next write tries again.
    pub(super) fn persist_names(&self) {
        self.write_names(true);
    }

    /// Writes the name table when a claim was added, moved or removed since the last write.
    pub(super) fn persist_claim_changes(&self) {
        self.write_names(false);
    }

    pub(super) fn write_names(&self, always: bool) {
        let mut written = lock(&self.persist_lock);
        let snapshot = {
            let mut core = lock(&self.core);
            core.names.expire(unix_now());
            core.names.snapshot()
        };
        let claims: Vec<(String, NodeId)> = snapshot
            .claims
            .iter()
            .map(|c| (c.label.clone(), c.node_id.clone()))
            .collect();
        if !always && claims == *written {
            return;
        }
        let json = match serde_json::to_vec_pretty(&snapshot) {
            Ok(json) => json,
            Err(e) => {
                tracing::error!("could not serialize the name table: {e}");
                return;
            }
        };
        match state::write_atomically(&self.names_path, &json, 0o600) {
            Ok(()) => *written = claims,
            Err(e) => tracing::error!("could not save the name claims: {e}"),
        }
    }
}

pub(super) fn load_names(
    path: &Path,
    config: NameTableConfig,
) -> Result<RelayNameTable, ServeError> {
    let bad = |why: String| ServeError::Names {
        path: path.to_owned(),
        why,
    };
    let snapshot = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<NameTableSnapshot>(&bytes)
            .map_err(|e| bad(format!("not a name table: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NameTableSnapshot::default(),
        Err(e) => return Err(bad(format!("could not read it: {e}"))),
    };
    let mut table =
        RelayNameTable::from_snapshot(config, snapshot).map_err(|e| bad(e.to_string()))?;
    table.expire(unix_now());
    Ok(table)
}

pub(super) async fn persist_periodically<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    _running: async_channel::Sender<()>,
) {
    loop {
        match race(shared.shutdown.wait(), rt.sleep(PERSIST_INTERVAL)).await {
            Either::Left(()) => return,
            Either::Right(()) => shared.persist_names(),
        }
    }
}
