//! Name claims shared by the relays of one deployment (`[store] url`, issue 15): a
//! PostgreSQL table with the label as primary key, so one label has one owner whichever relay
//! a daemon registers through.
//!
//! Owns: the table (migration `relay` 1), the claim statement (one atomic upsert that grants
//! a free, own or lapsed label and gives up the node's other label), the batched last-seen
//! refresh (an upsert too: a missing row of an online owner is put back), and turning store
//! failures into [`SharedClaim::Unavailable`]. The decisions on
//! the verdict are `gate_core`'s ([`RelayNameTable::register_shared`]); this relay still
//! routes only to daemons connected to it, from its own name table.
//!
//! Must not: grant a claim the store did not grant, or put the URL's password in a log line
//! or a message to a daemon (errors come from `gate_rt::store`, which scrubs them).

use std::pin::Pin;

use gate_core::tunnel::ClaimRecord;
use gate_rt::store::{Migration, PgUrl, Postgres, Schema, StoreError};

use super::*;

/// The relay's tables, by version.
pub(super) const RELAY_SCHEMA: Schema = Schema {
    component: "relay",
    migrations: &[Migration {
        version: 1,
        description: "name claims shared by the relays of a deployment",
        sql: "CREATE TABLE gate_relay_claims (
                label text PRIMARY KEY,
                node_id text NOT NULL,
                last_seen bigint NOT NULL,
                token text
            );
            CREATE INDEX gate_relay_claims_node_id ON gate_relay_claims (node_id);",
    }],
};

/// Grants `$1` to node `$2` when free, already its own, or lapsed (last seen at or before
/// `$3 - $5`), in one statement (atomic; the primary key settles races between relays); the
/// node's other label goes. Returns one row when granted, none when another node holds it.
const CLAIM_SQL: &str = "
WITH claimed AS (
    INSERT INTO gate_relay_claims AS c (label, node_id, last_seen, token)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (label) DO UPDATE
        SET node_id = EXCLUDED.node_id,
            last_seen = CASE WHEN c.node_id = EXCLUDED.node_id
                             THEN GREATEST(c.last_seen, EXCLUDED.last_seen)
                             ELSE EXCLUDED.last_seen END,
            token = EXCLUDED.token
        WHERE c.node_id = EXCLUDED.node_id OR c.last_seen <= EXCLUDED.last_seen - $5
    RETURNING label, node_id
), released AS (
    DELETE FROM gate_relay_claims d USING claimed
    WHERE d.node_id = claimed.node_id AND d.label <> claimed.label
)
SELECT label FROM claimed";

/// Reports claims whose owners are online here: moves their last-seen times forward (never
/// back), and puts back a row that is missing (a database restored or cleaned by hand) unless
/// another node holds the label meanwhile.
const REFRESH_SQL: &str = "
INSERT INTO gate_relay_claims AS c (label, node_id, last_seen, token)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
ON CONFLICT (label) DO UPDATE SET last_seen = GREATEST(c.last_seen, EXCLUDED.last_seen)
    WHERE c.node_id = EXCLUDED.node_id";

/// Removes claims lapsed long ago (lookups already treat them as free).
const EXPIRE_SQL: &str = "DELETE FROM gate_relay_claims WHERE last_seen <= $1";

/// A claim check, bounded: past this, the store counts as unavailable.
pub(super) const CLAIM_CHECK_LIMIT: Duration = Duration::from_secs(8);

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The shared claim store, without the runtime in its type (so [`Shared`] stays plain).
pub(super) trait ClaimStore: Send + Sync {
    /// Asks whether `node_id` may hold `label` now, and binds it when it may.
    fn claim<'a>(
        &'a self,
        label: &'a str,
        node_id: &'a NodeId,
        token: Option<&'a str>,
        now_unix_secs: u64,
    ) -> BoxFuture<'a, SharedClaim>;

    /// Reports `claims` (owners online here) as seen, and removes claims lapsed in the store.
    fn refresh(
        &self,
        claims: Vec<ClaimRecord>,
        now_unix_secs: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Connects (and migrates) now if not connected.
    fn connect(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Whether a connection is up (as last seen).
    fn is_connected(&self) -> bool;

    /// Where, without the password.
    fn describe(&self) -> String;
}

/// [`ClaimStore`] on PostgreSQL.
pub(super) struct PgClaims<R: Runtime> {
    rt: R,
    pg: Postgres<R>,
    /// Seconds of absence after which a claim may be taken over, at least three refresh
    /// intervals (a claim whose owner is online here is refreshed every interval).
    lapse_secs: i64,
}

impl<R: Runtime> PgClaims<R> {
    pub(super) fn new(rt: R, url: PgUrl, claim_lapse: Duration, refresh: Duration) -> Self {
        let lapse = claim_lapse.max(refresh.saturating_mul(3));
        Self {
            pg: Postgres::new(rt.clone(), url, RELAY_SCHEMA),
            rt,
            lapse_secs: i64::try_from(lapse.as_secs()).unwrap_or(i64::MAX),
        }
    }
}

fn unix_i64(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

impl<R: Runtime> ClaimStore for PgClaims<R> {
    fn claim<'a>(
        &'a self,
        label: &'a str,
        node_id: &'a NodeId,
        token: Option<&'a str>,
        now_unix_secs: u64,
    ) -> BoxFuture<'a, SharedClaim> {
        Box::pin(async move {
            let now = unix_i64(now_unix_secs);
            let node = node_id.as_str();
            let params: [&(dyn gate_rt::store::ToSql + Sync); 5] =
                [&label, &node, &now, &token, &self.lapse_secs];
            let ask = self.pg.query(CLAIM_SQL, &params);
            match gate_rt::timeout(&self.rt, CLAIM_CHECK_LIMIT, ask).await {
                Ok(Ok(rows)) if rows.is_empty() => SharedClaim::Taken,
                Ok(Ok(_)) => SharedClaim::Granted,
                Ok(Err(error)) => {
                    tracing::warn!(%label, node = %node_id, "claim not checked: {error}");
                    SharedClaim::Unavailable(unavailable_reason(&error))
                }
                Err(gate_rt::Elapsed) => {
                    tracing::warn!(%label, node = %node_id, "claim not checked: the store did not answer in time");
                    SharedClaim::Unavailable(format!(
                        "the store did not answer within {} s",
                        CLAIM_CHECK_LIMIT.as_secs()
                    ))
                }
            }
        })
    }

    fn refresh(
        &self,
        claims: Vec<ClaimRecord>,
        now_unix_secs: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if !claims.is_empty() {
                let labels: Vec<String> = claims.iter().map(|c| c.label.clone()).collect();
                let nodes: Vec<String> = claims.iter().map(|c| c.node_id.to_string()).collect();
                let seen: Vec<i64> = claims
                    .iter()
                    .map(|c| unix_i64(c.last_seen_unix_secs))
                    .collect();
                let tokens: Vec<Option<String>> = claims.iter().map(|c| c.token.clone()).collect();
                self.pg
                    .execute(REFRESH_SQL, &[&labels, &nodes, &seen, &tokens])
                    .await?;
            }
            // Long lapsed: twice the lapse, so a claim a relay may still be taking over is
            // never deleted under it.
            let before = unix_i64(now_unix_secs).saturating_sub(self.lapse_secs.saturating_mul(2));
            self.pg.execute(EXPIRE_SQL, &[&before]).await?;
            Ok(())
        })
    }

    fn connect(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.pg.connect())
    }

    fn is_connected(&self) -> bool {
        self.pg.is_connected()
    }

    fn describe(&self) -> String {
        self.pg.url().to_string()
    }
}

/// What a daemon is told when the store cannot be asked (no address or password: the
/// operator's log has the details).
fn unavailable_reason(error: &StoreError) -> String {
    match error {
        StoreError::Unavailable { .. } => "the store is unreachable".to_owned(),
        StoreError::Query { .. } | StoreError::Url(_) => "the store refused the query".to_owned(),
    }
}

impl Shared {
    /// Reports the claims of daemons online here to the store (their last-seen times), so
    /// they lapse on no relay while their owner is connected to one.
    pub(super) async fn refresh_shared_claims(&self) {
        let Some(store) = &self.claim_store else {
            return;
        };
        let online = {
            let mut core = lock(&self.core);
            let now = unix_now();
            // Online owners are seen now, whatever their last heartbeat wrote.
            let nodes: Vec<NodeId> = core.by_node.keys().cloned().collect();
            for node in &nodes {
                core.names.touch(node, now);
            }
            core.names.online_claims()
        };
        match store.refresh(online, unix_now()).await {
            Ok(()) => {}
            // An outage is logged once by the client, when it starts and when it ends.
            Err(error @ StoreError::Unavailable { .. }) => {
                tracing::debug!("could not refresh the shared name claims: {error}");
            }
            Err(error) => tracing::warn!("could not refresh the shared name claims: {error}"),
        }
    }
}

/// While the store is down, how often the relay tries to reconnect by itself (so that the
/// first claim after an outage does not wait for a connection).
pub(super) const RECONNECT_CHECK: Duration = Duration::from_secs(1);

/// The store's upkeep: every [`RECONNECT_CHECK`] a lost connection is re-made (with the
/// client's backoff), every `claim_refresh_interval` the claims of daemons online here are
/// reported as seen.
pub(super) async fn refresh_claims_periodically<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    _running: async_channel::Sender<()>,
) {
    let Some(store) = &shared.claim_store else {
        return;
    };
    let interval = shared.settings.claim_refresh_interval;
    let mut next_refresh = Instant::now() + interval;
    loop {
        let tick = RECONNECT_CHECK.min(interval);
        match race(shared.shutdown.wait(), rt.sleep(tick)).await {
            Either::Left(()) => return,
            Either::Right(()) => {}
        }
        if !store.is_connected() {
            // Logged by the client: once when the outage starts, once when it ends.
            let _ = store.connect().await;
        }
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + interval;
            shared.refresh_shared_claims().await;
        }
    }
}
