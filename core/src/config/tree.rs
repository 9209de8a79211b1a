//! The generic configuration tree: values, where each came from, and the merge of layers.
//!
//! Owns [`Layer`], [`Origin`], [`Value`], the [`Node`] tree, key-path syntax and the
//! layer-merge rule (tables merge key by key, the highest layer's leaf wins, tombstones
//! delete what lower layers put at a path). It knows nothing about any program's schema and
//! must not read files or the environment.

use std::collections::BTreeMap;
use std::fmt;

/// A configuration layer, lowest priority first: `Defaults < Nix < Runtime < Environment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    /// Compiled into the program.
    Defaults,
    /// Files given with `--config FILE` (what the NixOS module renders); later files win.
    Nix,
    /// `<state_dir>/config.toml`, written by the daemon and the CLI.
    Runtime,
    /// `GATE_*` / `RELAY_*` environment variables.
    Environment,
}

impl Layer {
    /// The short lower-case name used in `config show` and JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Defaults => "defaults",
            Layer::Nix => "nix",
            Layer::Runtime => "runtime",
            Layer::Environment => "environment",
        }
    }
}

impl fmt::Display for Layer {
    /// The word used in sentences: "the config file /etc/gate.toml", "the runtime file
    /// ...". The `--config` files are called what the user called them, not "nix" (the
    /// layer's short name in `config show` and JSON, kept for compatibility).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Nix => "config",
            other => other.name(),
        })
    }
}

/// Where one value came from: its layer and, where known, the file position or variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A compiled-in default.
    Default,
    /// A default that depends on another value (e.g. an upstream's `base_url` from its provider).
    Derived {
        /// Why this default applies, e.g. "default for provider openai".
        reason: String,
    },
    /// A TOML file of the nix or runtime layer; `line` and `column` are 1-based.
    File {
        /// [`Layer::Nix`] or [`Layer::Runtime`].
        layer: Layer,
        /// The path label the caller gave for the file.
        path: String,
        /// 1-based line of the value (or key) in the file.
        line: usize,
        /// 1-based column (in characters) of the value (or key) in the file.
        column: usize,
    },
    /// An environment variable.
    Env {
        /// The variable's name, exactly as given.
        var: String,
    },
}

impl Origin {
    /// The layer this origin belongs to.
    pub fn layer(&self) -> Layer {
        match self {
            Origin::Default | Origin::Derived { .. } => Layer::Defaults,
            Origin::File { layer, .. } => *layer,
            Origin::Env { .. } => Layer::Environment,
        }
    }

    /// A file origin at byte `offset` of `text`.
    pub(crate) fn in_file(layer: Layer, path: &str, text: &str, offset: usize) -> Origin {
        let (line, column) = line_column(text, offset);
        Origin::File {
            layer,
            path: path.to_owned(),
            line,
            column,
        }
    }

    /// Short form for `# from ...` comments: `nix /etc/gate.toml:3:8`, `env GATE_PORT`.
    pub fn short(&self) -> String {
        match self {
            Origin::Default => "defaults".to_owned(),
            Origin::Derived { reason } => format!("defaults ({reason})"),
            Origin::File {
                layer,
                path,
                line,
                column,
            } => format!("{} {path}:{line}:{column}", layer.name()),
            Origin::Env { var } => format!("env {var}"),
        }
    }
}

impl fmt::Display for Origin {
    /// A phrase that fits in a sentence: "the config file /etc/gate.toml (line 3, column 8)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("the compiled-in defaults"),
            Origin::Derived { reason } => write!(f, "the compiled-in defaults ({reason})"),
            Origin::File {
                layer,
                path,
                line,
                column,
            } => write!(f, "the {layer} file {path} (line {line}, column {column})"),
            Origin::Env { var } => write!(f, "the environment variable {var}"),
        }
    }
}

/// 1-based line and character column of byte `offset` in `text` (clamped to the text).
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    let before = text.get(..end).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).unwrap_or("").chars().count() + 1;
    (line, column)
}

/// A leaf value. Tables are [`Node::Table`]; lists hold strings only (every list in the
/// schemas is a list of strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `true` / `false`.
    Bool(bool),
    /// A signed integer.
    Integer(i64),
    /// A string.
    String(String),
    /// A list of strings.
    List(Vec<String>),
}

impl Value {
    /// The value as a `toml::Value`, for rendering and for the runtime file.
    pub fn to_toml(&self) -> toml::Value {
        match self {
            Value::Bool(b) => toml::Value::Boolean(*b),
            Value::Integer(i) => toml::Value::Integer(*i),
            Value::String(s) => toml::Value::String(s.clone()),
            Value::List(items) => toml::Value::Array(
                items
                    .iter()
                    .map(|s| toml::Value::String(s.clone()))
                    .collect(),
            ),
        }
    }

    /// The value as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::List(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|s| serde_json::Value::String(s.clone()))
                    .collect(),
            ),
        }
    }
}

/// A value together with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The value.
    pub value: Value,
    /// Its origin.
    pub origin: Origin,
}

/// A node of the merged tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A value.
    Leaf(Leaf),
    /// A table of named nodes.
    Table(Table),
}

/// A table: key -> node, in key order.
pub type Table = BTreeMap<String, Node>;

/// A removal recorded by a layer: delete whatever lower layers put at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// The removed key path.
    pub path: Vec<String>,
    /// Where the removal was written.
    pub origin: Origin,
}

/// What one layer contributes: values and removals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerData {
    /// The values this layer sets.
    pub values: Table,
    /// The paths this layer removes from the layers below it.
    pub tombstones: Vec<Tombstone>,
    /// Input this layer ignored, each a sentence for the log (environment variables that
    /// name no known section, Kubernetes service links).
    pub warnings: Vec<String>,
}

impl LayerData {
    /// Set `path` to `leaf`, creating tables on the way (a leaf in the way is replaced).
    pub fn insert(&mut self, path: &[String], leaf: Leaf) {
        insert_leaf(&mut self.values, path, leaf);
    }
}

pub(crate) fn insert_leaf(table: &mut Table, path: &[String], leaf: Leaf) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = table;
    for segment in parents {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| Node::Table(Table::new()));
        if let Node::Leaf(_) = entry {
            *entry = Node::Table(Table::new());
        }
        current = match entry {
            Node::Table(t) => t,
            Node::Leaf(_) => return,
        };
    }
    current.insert(last.clone(), Node::Leaf(leaf));
}

/// Remove the node at `path`; empty parent tables stay (they carry no values).
pub(crate) fn remove_path(table: &mut Table, path: &[String]) -> Option<Node> {
    let (first, rest) = path.split_first()?;
    if rest.is_empty() {
        return table.remove(first);
    }
    match table.get_mut(first) {
        Some(Node::Table(inner)) => remove_path(inner, rest),
        _ => None,
    }
}

/// The node at `path`, if any.
pub fn get_path<'t>(table: &'t Table, path: &[String]) -> Option<&'t Node> {
    let (first, rest) = path.split_first()?;
    let node = table.get(first)?;
    if rest.is_empty() {
        return Some(node);
    }
    match node {
        Node::Table(inner) => get_path(inner, rest),
        Node::Leaf(_) => None,
    }
}

/// Lay `upper` over `lower`: tables merge key by key, anything else in `upper` replaces.
pub(crate) fn overlay(lower: &mut Table, upper: Table) {
    for (key, node) in upper {
        match (lower.get_mut(&key), node) {
            (Some(Node::Table(low)), Node::Table(up)) => overlay(low, up),
            (_, node) => {
                lower.insert(key, node);
            }
        }
    }
}

/// Merge layers given lowest priority first. Each layer first applies its tombstones to
/// what the layers below produced, then lays its own values on top. So a tombstone beats
/// every lower layer, its own layer may re-add values under the removed path, and every
/// higher layer (the environment, for the runtime file) wins over it.
pub fn merge_layers(layers: impl IntoIterator<Item = LayerData>) -> (Table, Vec<Tombstone>) {
    let mut merged = Table::new();
    let mut removed = Vec::new();
    for layer in layers {
        for tombstone in layer.tombstones {
            remove_path(&mut merged, &tombstone.path);
            removed.push(tombstone);
        }
        overlay(&mut merged, layer.values);
    }
    (merged, removed)
}

/// Whether `segment` can be written without quotes in a TOML key path.
pub(crate) fn is_bare_key(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Render a key path: `upstreams.openai.aliases."gpt-4.1"`.
pub fn format_key_path(path: &[String]) -> String {
    let mut out = String::new();
    for (i, segment) in path.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if is_bare_key(segment) {
            out.push_str(segment);
        } else {
            out.push('"');
            for c in segment.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
    }
    out
}

/// Longest key path accepted by [`parse_key_path`], in bytes.
pub const MAX_KEY_PATH_BYTES: usize = 1024;

/// Parse a dotted key path (`a.b."c.d"`): bare segments of `A-Za-z0-9_-`, or double-quoted
/// segments with `\"` and `\\` escapes. `None` when malformed, empty, or longer than
/// [`MAX_KEY_PATH_BYTES`].
pub fn parse_key_path(text: &str) -> Option<Vec<String>> {
    if text.is_empty() || text.len() > MAX_KEY_PATH_BYTES {
        return None;
    }
    let mut segments = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut segment = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        c @ ('"' | '\\') => segment.push(c),
                        _ => return None,
                    },
                    c => segment.push(c),
                }
            }
            if segment.is_empty() {
                return None;
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                    return None;
                }
                segment.push(c);
                chars.next();
            }
            if segment.is_empty() {
                return None;
            }
        }
        segments.push(segment);
        match chars.next() {
            None => return Some(segments),
            Some('.') => continue,
            Some(_) => return None,
        }
    }
}
