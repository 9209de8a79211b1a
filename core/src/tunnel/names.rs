//! The relay's name table: which daemon (node id) owns which public name, and who is online.
//!
//! Owns: node id and label validation, custom-label claims bound to node ids, their lapse after
//! a configurable absence, the online set, and a serde snapshot for persistence. Must not: read
//! clocks or files. Wall-clock time arrives as `now_unix_secs` (seconds since the Unix epoch),
//! because claims outlive the process and `Instant` does not; the caller persists snapshots.
//!
//! Names: a daemon always owns `<node-id>.<suffix>`; `<label>.<suffix>` is granted when the label
//! is free, lapsed, or already bound to the same node id. Labels shaped like node ids are
//! reserved, so a custom label can never shadow another daemon's node-id name.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Length of a node id: lower-case base32 without padding of a 32-byte Ed25519 public key.
pub const NODE_ID_LEN: usize = 52;

/// Default absence after which a custom-label claim lapses (30 days).
pub const DEFAULT_CLAIM_LAPSE: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// A daemon's node id: 52 characters of lower-case RFC 4648 base32 (`a-z`, `2-7`), a valid DNS
/// label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Validates a node id.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let well_formed = text.len() == NODE_ID_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
        if well_formed {
            Ok(Self(text.to_owned()))
        } else {
            Err(NameError::InvalidNodeId(text.chars().take(80).collect()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for NodeId {
    type Error = NameError;
    fn try_from(text: String) -> Result<Self, NameError> {
        Self::parse(&text)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

/// Invalid names and ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a node id.
    #[error("`{0}` is not a node id (52 characters of lower-case base32)")]
    InvalidNodeId(String),
    /// Not a DNS label.
    #[error("`{label}` is not a valid DNS label: {why}")]
    InvalidLabel {
        /// The label (truncated to 80 characters).
        label: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The label has the shape of a node id.
    #[error("`{0}` is reserved: labels shaped like node ids cannot be claimed")]
    ReservedLabel(String),
    /// Not a valid domain suffix.
    #[error("`{0}` is not a valid domain suffix (dot-separated DNS labels)")]
    InvalidSuffix(String),
    /// A snapshot holds the same label twice.
    #[error("the snapshot claims label `{0}` twice")]
    DuplicateClaim(String),
}

/// Validates a custom label and returns it lower-cased: 1 to 63 characters of `a-z`, `0-9` and
/// `-`, not starting or ending with `-`, and not shaped like a node id.
pub fn validate_custom_label(label: &str) -> Result<String, NameError> {
    let lower = label.to_ascii_lowercase();
    let invalid = |why| NameError::InvalidLabel {
        label: label.chars().take(80).collect(),
        why,
    };
    if lower.is_empty() {
        return Err(invalid("it is empty"));
    }
    if lower.len() > 63 {
        return Err(invalid("it is longer than 63 characters"));
    }
    if !lower
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid("only letters, digits and `-` are allowed"));
    }
    if lower.starts_with('-') || lower.ends_with('-') {
        return Err(invalid("it must not start or end with `-`"));
    }
    if NodeId::parse(&lower).is_ok() {
        return Err(NameError::ReservedLabel(lower));
    }
    Ok(lower)
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// Configuration of a [`RelayNameTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTableConfig {
    /// The relay's domain suffix, e.g. `relay.example.com` or `localhost`; stored lower-case.
    pub domain_suffix: String,
    /// Absence after which a custom-label claim lapses ([`DEFAULT_CLAIM_LAPSE`]).
    pub claim_lapse: Duration,
}

impl NameTableConfig {
    /// Validates the suffix (lower-cased, trailing dot removed) and uses the default lapse.
    pub fn new(domain_suffix: &str) -> Result<Self, NameError> {
        let suffix = domain_suffix.trim_end_matches('.').to_ascii_lowercase();
        if suffix.is_empty() || suffix.len() > 253 || !suffix.split('.').all(is_dns_label) {
            return Err(NameError::InvalidSuffix(
                domain_suffix.chars().take(80).collect(),
            ));
        }
        Ok(Self {
            domain_suffix: suffix,
            claim_lapse: DEFAULT_CLAIM_LAPSE,
        })
    }
}

/// One persisted claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The custom label.
    pub label: String,
    /// Its owner.
    pub node_id: NodeId,
    /// When the owner was last seen, in seconds since the Unix epoch.
    pub last_seen_unix_secs: u64,
    /// The registration token the owner was admitted with when it claimed the label, for the
    /// token's custom-name quota (absent in open and allowlist modes and in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Bounds on the claims a registration may add: what strangers can make the relay keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRules {
    /// Claims the relay holds at most, all nodes together (`limits.max_claims`).
    pub max_claims: usize,
    /// The registration token the daemon was admitted with, if any: its claims are counted
    /// together against `max_custom_names`.
    pub token: Option<String>,
    /// Custom names the daemon's account may hold (`None`: no limit beyond one per node; 0:
    /// none).
    pub max_custom_names: Option<u32>,
}

impl Default for ClaimRules {
    fn default() -> Self {
        Self {
            max_claims: DEFAULT_MAX_CLAIMS,
            token: None,
            max_custom_names: None,
        }
    }
}

/// Default of `limits.max_claims`.
pub const DEFAULT_MAX_CLAIMS: usize = 10_000;

/// The persistent part of a [`RelayNameTable`]: claims, sorted by label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameTableSnapshot {
    /// All claims.
    pub claims: Vec<ClaimRecord>,
}

/// A shared claim store's verdict on a custom label (relays sharing claims, see
/// [`RelayNameTable::register_shared`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedClaim {
    /// The store now binds the label to the asking node (new, renewed, or taken over after
    /// the previous owner's claim lapsed).
    Granted,
    /// Another node holds the label and its claim has not lapsed.
    Taken,
    /// The store could not be asked: why, for the daemon (no secrets).
    Unavailable(String),
}

/// What a registration was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameGrant {
    /// `<node-id>.<suffix>`.
    pub node_name: String,
    /// `<label>.<suffix>` when the custom label was granted.
    pub custom_name: Option<String>,
    /// Why the custom label was refused, written for a person.
    pub custom_name_refusal: Option<String>,
}

impl NameGrant {
    /// Every name granted, node name first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.node_name.as_str()).chain(self.custom_name.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    node_id: NodeId,
    last_seen_unix_secs: u64,
    token: Option<String>,
}

/// Name -> node table of a relay. See the module docs.
#[derive(Debug, Clone)]
pub struct RelayNameTable {
    config: NameTableConfig,
    claims: BTreeMap<String, Claim>,
    /// Online nodes and how many live registrations each has (a daemon may reconnect before its
    /// old connection is declared dead).
    online: BTreeMap<NodeId, u32>,
}

impl RelayNameTable {
    /// An empty table.
    pub fn new(config: NameTableConfig) -> Self {
        Self {
            config,
            claims: BTreeMap::new(),
            online: BTreeMap::new(),
        }
    }

    /// A table restored from a snapshot; every node starts offline.
    pub fn from_snapshot(
        config: NameTableConfig,
        snapshot: NameTableSnapshot,
    ) -> Result<Self, NameError> {
        let mut table = Self::new(config);
        for record in snapshot.claims {
            let label = validate_custom_label(&record.label)?;
            if table.claims.contains_key(&label) {
                return Err(NameError::DuplicateClaim(label));
            }
            table.claims.insert(
                label,
                Claim {
                    node_id: record.node_id,
                    last_seen_unix_secs: record.last_seen_unix_secs,
                    token: record.token,
                },
            );
        }
        Ok(table)
    }

    /// The persistent state, for the caller to write to disk.
    pub fn snapshot(&self) -> NameTableSnapshot {
        NameTableSnapshot {
            claims: self
                .claims
                .iter()
                .map(|(label, claim)| ClaimRecord {
                    label: label.clone(),
                    node_id: claim.node_id.clone(),
                    last_seen_unix_secs: claim.last_seen_unix_secs,
                    token: claim.token.clone(),
                })
                .collect(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NameTableConfig {
        &self.config
    }

    /// `<node-id>.<suffix>`.
    pub fn node_name(&self, node_id: &NodeId) -> String {
        format!("{node_id}.{}", self.config.domain_suffix)
    }

    fn lapsed(&self, claim: &Claim, now_unix_secs: u64) -> bool {
        !self.is_online(&claim.node_id)
            && now_unix_secs.saturating_sub(claim.last_seen_unix_secs)
                >= self.config.claim_lapse.as_secs()
    }

    /// Registers an online daemon and decides its custom label under the default
    /// [`ClaimRules`]. The node stays online until a matching [`RelayNameTable::go_offline`].
    pub fn register(
        &mut self,
        node_id: &NodeId,
        custom_label: Option<&str>,
        now_unix_secs: u64,
    ) -> NameGrant {
        self.register_with(node_id, custom_label, now_unix_secs, &ClaimRules::default())
    }

    /// Registers an online daemon and decides its custom label under `rules`: a label that
    /// would be a new claim beyond `rules.max_claims`, or beyond the account's
    /// `max_custom_names`, is refused (the node keeps its node-id name). A label the node
    /// already holds is always kept.
    pub fn register_with(
        &mut self,
        node_id: &NodeId,
        custom_label: Option<&str>,
        now_unix_secs: u64,
        rules: &ClaimRules,
    ) -> NameGrant {
        let count = self.online.entry(node_id.clone()).or_insert(0);
        *count = count.saturating_add(1);
        self.touch(node_id, now_unix_secs);
        let node_name = self.node_name(node_id);
        let Some(requested) = custom_label else {
            return NameGrant {
                node_name,
                custom_name: None,
                custom_name_refusal: None,
            };
        };
        match self.claim(node_id, requested, now_unix_secs, rules) {
            Ok(custom_name) => NameGrant {
                node_name,
                custom_name: Some(custom_name),
                custom_name_refusal: None,
            },
            Err(refusal) => NameGrant {
                node_name,
                custom_name: None,
                custom_name_refusal: Some(refusal),
            },
        }
    }

    fn claim(
        &mut self,
        node_id: &NodeId,
        requested: &str,
        now_unix_secs: u64,
        rules: &ClaimRules,
    ) -> Result<String, String> {
        let label = validate_custom_label(requested)
            .map_err(|error| format!("custom domain refused: {error}"))?;
        if let Some(existing) = self.claims.get(&label) {
            if existing.node_id != *node_id && !self.lapsed(existing, now_unix_secs) {
                return Err(self.taken_message(&label));
            }
        }
        self.check_rules(node_id, &label, now_unix_secs, rules)?;
        Ok(self.take_claim(node_id, label, now_unix_secs, rules))
    }

    /// The refusal of a label another node holds.
    fn taken_message(&self, label: &str) -> String {
        format!(
            "custom domain refused: `{label}.{}` is claimed by another node; \
             it becomes free after that node has been absent for {} days",
            self.config.domain_suffix,
            self.config.claim_lapse.as_secs() / 86_400
        )
    }

    /// The bounds of `rules` for `node_id` taking `label` (nothing to check when it already
    /// holds it).
    fn check_rules(
        &self,
        node_id: &NodeId,
        label: &str,
        now_unix_secs: u64,
        rules: &ClaimRules,
    ) -> Result<(), String> {
        let already_held = self
            .claims
            .get(label)
            .is_some_and(|claim| claim.node_id == *node_id);
        if already_held {
            return Ok(());
        }
        // Claims other nodes hold (lapsed ones no longer count); this node's own claim is
        // given up when it takes the new label, so it does not count either.
        let live_others =
            |claim: &&Claim| claim.node_id != *node_id && !self.lapsed(claim, now_unix_secs);
        let held = self.claims.values().filter(live_others).count();
        if held >= rules.max_claims {
            return Err(format!(
                "custom domain refused: this relay holds as many name claims as it keeps \
                 ({}, limits.max_claims); ask the relay's operator to raise it, or use the \
                 node-id name",
                rules.max_claims
            ));
        }
        if let Some(max) = rules.max_custom_names {
            let account_held = match &rules.token {
                Some(token) => self
                    .claims
                    .values()
                    .filter(live_others)
                    .filter(|claim| claim.token.as_deref() == Some(token.as_str()))
                    .count(),
                None => 0,
            };
            if u32::try_from(account_held).unwrap_or(u32::MAX) >= max {
                let whose = match &rules.token {
                    Some(token) => format!("the daemons of token {token} hold"),
                    None => "this daemon may hold".to_owned(),
                };
                return Err(format!(
                    "custom domain refused: {whose} {max} custom names, the quota (access \
                     quota `custom_names`); ask the relay's operator to raise it, or use \
                     the node-id name"
                ));
            }
        }
        Ok(())
    }

    /// Binds `label` to `node_id` (a lapsed or stale owner replaced); the node's other label,
    /// if any, is given up: one custom label per node. Returns `<label>.<suffix>`.
    fn take_claim(
        &mut self,
        node_id: &NodeId,
        label: String,
        now_unix_secs: u64,
        rules: &ClaimRules,
    ) -> String {
        let name = format!("{label}.{}", self.config.domain_suffix);
        self.claims
            .retain(|other, claim| claim.node_id != *node_id || *other == label);
        let token = rules.token.clone();
        let claim = self.claims.entry(label).or_insert(Claim {
            node_id: node_id.clone(),
            last_seen_unix_secs: now_unix_secs,
            token: token.clone(),
        });
        if claim.node_id != *node_id {
            // A lapsed (or, with a shared store, stale) claim taken over.
            claim.node_id = node_id.clone();
            claim.last_seen_unix_secs = now_unix_secs;
        }
        claim.last_seen_unix_secs = claim.last_seen_unix_secs.max(now_unix_secs);
        claim.token = token;
        name
    }

    /// For relays that share claims through a store: the checks [`Self::register_with`] makes
    /// on a custom label except who owns it, which the store decides (validity, then the
    /// bounds of `rules` counted on this relay's table). Returns the lower-cased label to ask
    /// the store about, or the refusal [`Self::register_with`] would give.
    pub fn precheck_shared_claim(
        &self,
        node_id: &NodeId,
        requested: &str,
        now_unix_secs: u64,
        rules: &ClaimRules,
    ) -> Result<String, String> {
        let label = validate_custom_label(requested)
            .map_err(|error| format!("custom domain refused: {error}"))?;
        self.check_rules(node_id, &label, now_unix_secs, rules)?;
        Ok(label)
    }

    /// For relays that share claims through a store: registers an online daemon whose custom
    /// `label` (from [`Self::precheck_shared_claim`]) the store judged `verdict`.
    ///
    /// - [`SharedClaim::Granted`]: the store binds the label to this node, so the table does
    ///   too, whoever it remembered (a claim another relay saw lapse and handed over).
    /// - [`SharedClaim::Taken`]: another node holds it in the store; refused with the same
    ///   message as a claim refused on this relay, and a stale claim of this node forgotten.
    /// - [`SharedClaim::Unavailable`]: the store could not be asked. Only a renewal is
    ///   granted (this table says the node holds the label and the claim has not lapsed:
    ///   its owner was online here or seen within the lapse, and this relay reports the
    ///   claims of online owners to the store, so no other relay can have handed it over);
    ///   a new claim is refused, never granted on one relay's word, with `why` in the
    ///   message.
    pub fn register_shared(
        &mut self,
        node_id: &NodeId,
        label: &str,
        now_unix_secs: u64,
        rules: &ClaimRules,
        verdict: &SharedClaim,
    ) -> NameGrant {
        match verdict {
            SharedClaim::Granted => {
                self.take_claim(node_id, label.to_owned(), now_unix_secs, rules);
                self.register_with(node_id, Some(label), now_unix_secs, rules)
            }
            SharedClaim::Taken => {
                if self.claim_owner(label) == Some(node_id) {
                    self.claims.remove(label);
                }
                let mut grant = self.register_with(node_id, None, now_unix_secs, rules);
                grant.custom_name_refusal = Some(self.taken_message(label));
                grant
            }
            SharedClaim::Unavailable(why) => {
                let renewal = self.claims.get(label).is_some_and(|claim| {
                    claim.node_id == *node_id && !self.lapsed(claim, now_unix_secs)
                });
                if renewal {
                    return self.register_with(node_id, Some(label), now_unix_secs, rules);
                }
                let mut grant = self.register_with(node_id, None, now_unix_secs, rules);
                grant.custom_name_refusal = Some(format!(
                    "custom domain refused: the relay cannot reach the claim store its \
                     deployment shares, so it cannot check that `{label}.{}` is free ({why}); \
                     the node-id name works meanwhile, and the daemon gets the name when it \
                     registers again once the store is back",
                    self.config.domain_suffix
                ));
                grant
            }
        }
    }

    /// Claims whose owner is online on this relay, with their last-seen times: what a relay
    /// sharing claims reports to the store so that they do not lapse elsewhere.
    pub fn online_claims(&self) -> Vec<ClaimRecord> {
        self.claims
            .iter()
            .filter(|(_, claim)| self.is_online(&claim.node_id))
            .map(|(label, claim)| ClaimRecord {
                label: label.clone(),
                node_id: claim.node_id.clone(),
                last_seen_unix_secs: claim.last_seen_unix_secs,
                token: claim.token.clone(),
            })
            .collect()
    }

    /// Records that `node_id` was seen (e.g. on a heartbeat): refreshes its claims.
    pub fn touch(&mut self, node_id: &NodeId, now_unix_secs: u64) {
        for claim in self.claims.values_mut() {
            if claim.node_id == *node_id {
                claim.last_seen_unix_secs = claim.last_seen_unix_secs.max(now_unix_secs);
            }
        }
    }

    /// One registration of `node_id` ended. The node is offline once all have ended.
    pub fn go_offline(&mut self, node_id: &NodeId, now_unix_secs: u64) {
        self.touch(node_id, now_unix_secs);
        if let Some(count) = self.online.get_mut(node_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.online.remove(node_id);
            }
        }
    }

    /// Whether `node_id` has a live registration.
    pub fn is_online(&self, node_id: &NodeId) -> bool {
        self.online.contains_key(node_id)
    }

    /// Removes lapsed claims; returns the labels removed. Call it now and then (e.g. before
    /// taking a snapshot); lookups and claims already treat lapsed claims as absent.
    pub fn expire(&mut self, now_unix_secs: u64) -> Vec<String> {
        let lapsed: Vec<String> = self
            .claims
            .iter()
            .filter(|(_, claim)| self.lapsed(claim, now_unix_secs))
            .map(|(label, _)| label.clone())
            .collect();
        for label in &lapsed {
            self.claims.remove(label);
        }
        lapsed
    }

    /// Claims held now (lapsed ones included until expired).
    pub fn claim_count(&self) -> usize {
        self.claims.len()
    }

    /// The token a node's claim was made with, if any.
    pub fn claim_token(&self, label: &str) -> Option<&str> {
        self.claims
            .get(label)
            .and_then(|claim| claim.token.as_deref())
    }

    /// The owner of a custom label, online or not (lapsed claims included until expired).
    pub fn claim_owner(&self, label: &str) -> Option<&NodeId> {
        self.claims.get(label).map(|claim| &claim.node_id)
    }

    /// The online node that serves `server_name` (case-insensitive, trailing dot allowed), or
    /// `None` for names outside the suffix, unknown labels and offline owners.
    pub fn lookup(&self, server_name: &str) -> Option<NodeId> {
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        let label = name
            .strip_suffix(self.config.domain_suffix.as_str())?
            .strip_suffix('.')?;
        if label.contains('.') {
            return None;
        }
        let node_id = match NodeId::parse(label) {
            Ok(node_id) => node_id,
            Err(_) => self.claims.get(label)?.node_id.clone(),
        };
        self.is_online(&node_id).then_some(node_id)
    }

    /// Whether `name` (a record name without the `_acme-challenge.` prefix, or a server name)
    /// is one of the names `node_id` currently owns.
    pub fn owns(&self, node_id: &NodeId, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let Some(label) = name
            .strip_suffix(self.config.domain_suffix.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
        else {
            return false;
        };
        label == node_id.as_str()
            || self
                .claims
                .get(label)
                .is_some_and(|claim| claim.node_id == *node_id)
    }
}
