//! Layered configuration with provenance (DESIGN.md §6), for both `gate` and `gate-relay`.
//!
//! Owns: the layers and their priority, the merged tree where every value remembers its
//! origin, the schemas and typed configs of both programs, validation with errors that
//! name key, origin, expectation and finding, `config show` rendering with secrets
//! redacted, and pure editing helpers for the runtime file. Must not touch the file
//! system or the process environment: callers read files and `std::env::vars()` and pass
//! the text in ([`ConfigSources`]).
//!
//! # Driving it
//!
//! ```
//! use gate_core::config::{load_daemon, ConfigSources, SourceText};
//!
//! // The binary reads these; the core only sees text.
//! let mut sources = ConfigSources::new("/var/lib/gate/config.toml");
//! sources.nix_files.push(SourceText::new("/etc/gate/gate.toml", "port = 8080\n"));
//! sources.runtime.text = "log_level = \"debug\"\n".to_owned();
//! sources.env = vec![("GATE_UPSTREAMS__OPENAI__API_KEY".into(), "sk-...".into())];
//!
//! match load_daemon(&sources) {
//!     Ok(loaded) => {
//!         assert_eq!(loaded.config.port, 8080);
//!         assert_eq!(loaded.config.upstreams["openai"].base_url, "https://api.openai.com/v1");
//!         // `gate config show --origin`:
//!         let shown = loaded.merged.render_text(true);
//!         assert!(shown.contains("api_key = \"(set)\"  # from env GATE_UPSTREAMS__OPENAI__API_KEY"));
//!     }
//!     // One sentence naming key, origin, expectation; exit non-zero before binding.
//!     Err(error) => panic!("{error}"),
//! }
//! ```
//!
//! To change the runtime layer, call an editing helper with the current sources, write
//! the returned text atomically, and reload.
//!
//! # Layers
//!
//! Lowest priority first: **Defaults < Nix < Runtime < Environment**.
//! - Defaults: compiled into the [`Schema`].
//! - Nix: one or more `--config FILE` texts; a later file overrides an earlier one.
//! - Runtime: `<state_dir>/config.toml`, written by the daemon and the CLI
//!   ([`runtime_set`], [`runtime_set_many`], [`runtime_unset`], [`runtime_remove`],
//!   [`runtime_remove_upstream`]).
//! - Environment: `GATE_` (daemon) or `RELAY_` (relay) then the key path, levels split by
//!   `__`; `GATE__X` and `GATE_X` are the same (see [`decode_env_name`]).
//!
//! Tables merge key by key; every other value (lists included) is replaced whole by the
//! highest layer that sets it.
//!
//! # Removal (tombstones)
//!
//! The runtime file may hold a top-level list `_removed = ["upstreams.openai", ...]` of key
//! paths. While merging, the runtime layer first deletes those paths from what Defaults and
//! Nix produced, then lays its own values on top. So a removed upstream stays removed
//! after a restart even though the Nix file still defines it; the runtime file may define
//! the same name again afresh (only its own keys apply); and the **environment wins over a
//! tombstone**: `GATE_UPSTREAMS__OPENAI__API_KEY` brings `upstreams.openai` back (with only
//! the environment's keys, so the provider comes from the name). Only map entries
//! (`upstreams.<name>`, `upstreams.<name>.aliases.<alias>`), whole maps, and keys without a
//! compiled-in default may be removed; to return a defaulted key to its default, unset it.
//! `_removed` is accepted only in the runtime layer (anywhere else it is an unknown key).
//!
//! # Environment
//!
//! Names are decoded by [`decode_env_name`]; segments are lower-cased, single underscores
//! inside a segment stay (`API_KEY` -> `api_key`), so upstream names reachable from the
//! environment are lower-case without `__` (which [`StrCheck::UpstreamName`] enforces for
//! every upstream name). Values are converted to the schema type by [`convert_text`]
//! (bool: true/false/1/0/yes/no/on/off; integers in decimal; lists of strings either as a
//! TOML array literal `["a","b"]` or comma-separated `a,b`). A variable under the prefix
//! whose first segment is a known section or key, or one or two edits from one, but that
//! names no key (a misspelling: `GATE_AUTH__JWT__SECERT`, `GATE_PROT`) is an error naming it; one whose first segment matches nothing
//! (`GATE_SERVICE_HOST`, `GATE_PORT_3000_TCP_ADDR`: Kubernetes injects these for a Service
//! named `gate`) is ignored with a warning ([`MergedConfig::warnings`], logged by the
//! binaries). `GATE_PORT` / `RELAY_*_PORT`-style variables whose value has the form
//! `tcp://host:port` (or `udp://`, `sctp://`) are Kubernetes service links, not a port: ignored
//! with a warning, so `GATE_PORT=8080` keeps working and a Service named `gate` does not stop
//! Gate. The reserved names select things
//! other than config (daemon: `GATE_STATE_DIR`, `GATE_CONFIG`, `GATE_RUNTIME`,
//! `GATE_ADMIN_TOKEN`, `GATE_ADMIN_URL`, `GATE_URL`, `GATE_LOG`; relay: `RELAY_STATE_DIR`,
//! `RELAY_CONFIG`, `RELAY_RUNTIME`, `RELAY_LOG`; both underscore forms) and are skipped,
//! listed in [`Schema::reserved_env`].
//!
//! # Daemon limits (`[server]`)
//!
//! `max_body_bytes` (default 32 MiB, 1 KiB..=1 GiB): largest client request body.
//! `connect_timeout_secs` (10, 1..=300): TCP + TLS connect to an upstream.
//! `idle_timeout_secs` (300, 1..=3600): longest silence on an upstream response, between
//! bytes, before the request fails with 504 (long, because reasoning models think quietly).
//!
//! # Relay limits (`[limits]`)
//!
//! `handshake_timeout_ms` (5000, 100..=60000): time to read a ClientHello.
//! `max_connections` (16384), `max_connections_per_ip` (256), `max_connections_per_node`
//! (4096), each 1..=1000000.
//!
//! # Other choices
//!
//! - An upstream named after a provider (`[upstreams.openai]`) needs no `provider` key; any
//!   other name must set it. `base_url` defaults per provider (see
//!   [`Provider::default_base_url`]); `custom` means OpenAI-compatible and requires it.
//! - Upstream names: `a-z0-9_-`, at most 64, starting and ending with a letter or digit, no
//!   `__`, so every upstream can be named from the environment.
//! - `auth.jwt.secret` must be at least 16 bytes; `auth.jwt.expiration_hours` defaults to
//!   24; `letsencrypt.auto_renew_days` is 1..=89 (certificates live 90 days).
//! - The relay's `domain_suffix` defaults to `localhost` (names `<id>.localhost` resolve to
//!   loopback, so a local relay works without DNS); production sets its own.
//! - `relay.enable = true` needs at least one address; `dns.enabled = true` needs
//!   `dns.cloudflare.api_token` and `zone_id`.
//! - Node ids in `<id>@host:port` are 52 characters of lower-case base32 ([`NODE_ID_LEN`]).
//! - Secrets (see [`is_secret_key`]) are shown as `"(set)"` by every renderer and never
//!   quoted in error messages; the typed configs hold them as [`Secret`].
//!
//! # Bounds
//!
//! A file is at most [`MAX_FILE_BYTES`], an environment value at most
//! [`MAX_ENV_VALUE_BYTES`], a key path at most [`MAX_KEY_PATH_BYTES`]; depth is bounded by
//! the schema.

mod daemon;
mod edit;
mod error;
mod layers;
mod relay;
mod render;
mod schema;
mod tree;

pub use daemon::{
    AuthConfig, DaemonConfig, DaemonRelayConfig, DaemonStoreConfig, JwtConfig, LetsEncryptConfig,
    ListenLimits, OnUnavailable, Provider, Secret, ServerLimits, UpstreamConfig, UsageConfig,
};
pub use edit::{
    runtime_remove, runtime_remove_upstream, runtime_set, runtime_set_many, runtime_unset,
};
pub use error::ConfigError;
pub use layers::{
    convert_text, decode_env_name, parse_env_layer, parse_file_layer, MAX_ENV_VALUE_BYTES,
    MAX_FILE_BYTES,
};
pub use relay::{
    CloudflareConfig, DnsConfig, DnsProvider, RelayConfig, RelayLimits, RelayStoreConfig,
    TunnelConfig,
};
pub use schema::{
    is_http_url, is_secret_key, parse_relay_address, DefaultValue, Field, Kind, RelayAddress,
    Schema, StrCheck, DAEMON_SCHEMA, DNS_PROVIDERS, NODE_ID_LEN, PROVIDERS, RELAY_SCHEMA,
    TOMBSTONE_KEY,
};
pub use tree::{
    format_key_path, get_path, merge_layers, parse_key_path, Layer, LayerData, Leaf, Node, Origin,
    Table, Tombstone, Value, MAX_KEY_PATH_BYTES,
};

/// The text of one configuration file and the path to name it by in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceText {
    /// The path label, shown in errors and `config show --origin`.
    pub path: String,
    /// The file's contents.
    pub text: String,
}

impl SourceText {
    /// A file with `path` label and `text` contents.
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Self {
        SourceText {
            path: path.into(),
            text: text.into(),
        }
    }
}

/// Everything a program's configuration is made of, read by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSources {
    /// The `--config FILE` files, in command-line order (later wins).
    pub nix_files: Vec<SourceText>,
    /// `<state_dir>/config.toml`; an absent file is an empty text.
    pub runtime: SourceText,
    /// The environment, e.g. `std::env::vars().collect()`; unrelated variables are ignored.
    pub env: Vec<(String, String)>,
}

impl ConfigSources {
    /// No files, an empty runtime file at `runtime_path`, and no environment.
    pub fn new(runtime_path: impl Into<String>) -> Self {
        ConfigSources {
            nix_files: Vec::new(),
            runtime: SourceText::new(runtime_path, ""),
            env: Vec::new(),
        }
    }

    /// The same sources with another runtime file text.
    pub fn with_runtime_text(&self, text: impl Into<String>) -> Self {
        let mut next = self.clone();
        next.runtime.text = text.into();
        next
    }
}

/// The merged configuration tree: every value with its origin, plus what was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedConfig {
    /// The merged values, defaults filled in.
    pub tree: Table,
    /// Tombstones that were applied, in order.
    pub removed: Vec<Tombstone>,
    /// Input that was ignored, one sentence each, for the binaries to log (see
    /// "Environment" above).
    pub warnings: Vec<String>,
}

impl MergedConfig {
    /// The leaf at a dotted key path (`"auth.jwt.issuer"`), if set.
    pub fn get(&self, key: &str) -> Option<&Leaf> {
        let path = parse_key_path(key)?;
        match get_path(&self.tree, &path)? {
            Node::Leaf(leaf) => Some(leaf),
            Node::Table(_) => None,
        }
    }

    /// `config show` text: TOML with `# from <origin>` after each value when `origins`;
    /// secrets shown as `"(set)"`.
    pub fn render_text(&self, origins: bool) -> String {
        render::render_text(self, origins)
    }

    /// `config get KEY`: the value at `key` as TOML text (a table as TOML sections),
    /// secrets redacted, `# from <origin>` when `origins`; `None` when not set.
    pub fn render_key(&self, key: &str, origins: bool) -> Option<String> {
        render::render_key(self, key, origins)
    }

    /// `config show --json`: `{ "key.path": {"value": .., "origin": {..}} }`, secrets
    /// redacted; removed paths appear with `"value": null, "removed": true`.
    pub fn render_json(&self) -> serde_json::Value {
        render::render_json(self)
    }
}

/// A loaded and validated configuration: the typed view and the merged tree behind it.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The typed configuration.
    pub config: T,
    /// The merged tree with origins, for `config show`.
    pub merged: MergedConfig,
}

/// Parse every layer, merge by priority, fill defaults and check all rules of `schema`.
pub fn merge(schema: &Schema, sources: &ConfigSources) -> Result<MergedConfig, ConfigError> {
    let mut layers = Vec::with_capacity(sources.nix_files.len() + 2);
    for file in &sources.nix_files {
        layers.push(parse_file_layer(
            schema,
            Layer::Nix,
            &file.path,
            &file.text,
        )?);
    }
    layers.push(parse_file_layer(
        schema,
        Layer::Runtime,
        &sources.runtime.path,
        &sources.runtime.text,
    )?);
    layers.push(parse_env_layer(
        schema,
        sources.env.iter().map(|(k, v)| (k, v)),
    )?);
    let warnings = layers
        .iter_mut()
        .flat_map(|layer| std::mem::take(&mut layer.warnings))
        .collect();
    let (mut tree, removed) = merge_layers(layers);
    (schema.derive)(&mut tree);
    schema::fill_defaults(schema.root, &mut tree);
    (schema.check)(&tree)?;
    Ok(MergedConfig {
        tree,
        removed,
        warnings,
    })
}

/// Load the daemon's configuration.
pub fn load_daemon(sources: &ConfigSources) -> Result<Loaded<DaemonConfig>, ConfigError> {
    let merged = merge(&DAEMON_SCHEMA, sources)?;
    let config = DaemonConfig::from_tree(&merged.tree)?;
    Ok(Loaded { config, merged })
}

/// Load the relay's configuration.
pub fn load_relay(sources: &ConfigSources) -> Result<Loaded<RelayConfig>, ConfigError> {
    let merged = merge(&RELAY_SCHEMA, sources)?;
    let config = RelayConfig::from_tree(&merged.tree)?;
    Ok(Loaded { config, merged })
}

/// Typed reads from a merged tree, for the typed configs.
pub(crate) struct Reader<'t> {
    pub tree: &'t Table,
}

impl<'t> Reader<'t> {
    fn path(key: &str) -> Vec<String> {
        key.split('.').map(str::to_owned).collect()
    }

    pub fn leaf_at(&self, path: &[String]) -> Option<&'t Leaf> {
        match get_path(self.tree, path)? {
            Node::Leaf(leaf) => Some(leaf),
            Node::Table(_) => None,
        }
    }

    pub fn leaf(&self, key: &str) -> Option<&'t Leaf> {
        self.leaf_at(&Self::path(key))
    }

    fn missing(key: &str, expected: &str) -> ConfigError {
        ConfigError::InvalidValue {
            key: key.to_owned(),
            origin: Origin::Default,
            expected: expected.to_owned(),
            found: "missing".to_owned(),
        }
    }

    fn wrong(key: &str, leaf: &Leaf, expected: &str) -> ConfigError {
        ConfigError::InvalidValue {
            key: key.to_owned(),
            origin: leaf.origin.clone(),
            expected: expected.to_owned(),
            found: "a value of another type".to_owned(),
        }
    }

    pub fn opt_string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.leaf(key) {
            None => Ok(None),
            Some(Leaf {
                value: Value::String(s),
                ..
            }) => Ok(Some(s.clone())),
            Some(leaf) => Err(Self::wrong(key, leaf, "a string")),
        }
    }

    pub fn string(&self, key: &str) -> Result<String, ConfigError> {
        self.opt_string(key)?
            .ok_or_else(|| Self::missing(key, "a string"))
    }

    pub fn bool(&self, key: &str) -> Result<bool, ConfigError> {
        match self.leaf(key) {
            Some(Leaf {
                value: Value::Bool(b),
                ..
            }) => Ok(*b),
            Some(leaf) => Err(Self::wrong(key, leaf, "true or false")),
            None => Err(Self::missing(key, "true or false")),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.leaf(key) {
            None => Ok(None),
            Some(_) => self.bool(key).map(Some),
        }
    }

    pub fn int<T: TryFrom<i64>>(&self, key: &str) -> Result<T, ConfigError> {
        match self.leaf(key) {
            Some(
                leaf @ Leaf {
                    value: Value::Integer(i),
                    ..
                },
            ) => T::try_from(*i).map_err(|_| Self::wrong(key, leaf, "an integer in range")),
            Some(leaf) => Err(Self::wrong(key, leaf, "an integer")),
            None => Err(Self::missing(key, "an integer")),
        }
    }

    pub fn opt_int<T: TryFrom<i64>>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        match self.leaf(key) {
            None => Ok(None),
            Some(_) => self.int(key).map(Some),
        }
    }

    pub fn list(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        match self.leaf(key) {
            None => Ok(Vec::new()),
            Some(Leaf {
                value: Value::List(items),
                ..
            }) => Ok(items.clone()),
            Some(leaf) => Err(Self::wrong(key, leaf, "a list of strings")),
        }
    }
}
