//! `config show` rendering: TOML-like text with optional `# from <origin>` comments, and
//! the JSON form `{ "key.path": {"value": .., "origin": {..}} }`.
//!
//! Secrets (see [`is_secret_key`]) are always rendered as `"(set)"`, never their value.
//! Must not decide validity or read anything.

use std::fmt::Write as _;

use super::schema::is_secret_key;
use super::tree::{format_key_path, Leaf, Node, Origin, Table, Value};
use super::MergedConfig;

/// What a redacted secret is shown as.
pub const REDACTED: &str = "(set)";

fn shown_value(key: &str, leaf: &Leaf) -> Value {
    if is_secret_key(key) {
        Value::String(REDACTED.to_owned())
    } else {
        leaf.value.clone()
    }
}

fn key_text(key: &str) -> String {
    format_key_path(&[key.to_owned()])
}

pub(crate) fn render_text(merged: &MergedConfig, origins: bool) -> String {
    let mut out = String::new();
    for tombstone in &merged.removed {
        let _ = write!(out, "# removed: {}", format_key_path(&tombstone.path));
        if origins {
            let _ = write!(out, "  # by {}", tombstone.origin.short());
        }
        out.push('\n');
    }
    let mut path = Vec::new();
    render_table(&mut out, &merged.tree, &mut path, origins);
    out
}

fn render_table(out: &mut String, table: &Table, path: &mut Vec<String>, origins: bool) {
    let leaves: Vec<(&String, &Leaf)> = table
        .iter()
        .filter_map(|(k, n)| match n {
            Node::Leaf(l) => Some((k, l)),
            Node::Table(_) => None,
        })
        .collect();
    if !leaves.is_empty() {
        if !path.is_empty() {
            if !out.is_empty() {
                out.push('\n');
            }
            let _ = writeln!(out, "[{}]", format_key_path(path));
        }
        for (key, leaf) in leaves {
            let value = shown_value(key, leaf).to_toml();
            let _ = write!(out, "{} = {}", key_text(key), value);
            if origins {
                let _ = write!(out, "  # from {}", leaf.origin.short());
            }
            out.push('\n');
        }
    }
    for (key, node) in table {
        if let Node::Table(inner) = node {
            path.push(key.clone());
            render_table(out, inner, path, origins);
            path.pop();
        }
    }
}

/// `gate config get KEY`: a leaf's value as TOML (secrets redacted), or a table's keys as
/// TOML text under their headers; `None` when the key is not set.
pub(crate) fn render_key(merged: &MergedConfig, key: &str, origins: bool) -> Option<String> {
    let mut path = super::tree::parse_key_path(key)?;
    match super::tree::get_path(&merged.tree, &path)? {
        Node::Leaf(leaf) => {
            let name = path.last().map_or("", String::as_str);
            let mut out = shown_value(name, leaf).to_toml().to_string();
            if origins {
                let _ = write!(out, "  # from {}", leaf.origin.short());
            }
            Some(out)
        }
        Node::Table(table) => {
            let mut out = String::new();
            render_table(&mut out, table, &mut path, origins);
            Some(out)
        }
    }
}

fn origin_json(origin: &Origin) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert("layer".to_owned(), origin.layer().name().into());
    match origin {
        Origin::Default => {}
        Origin::Derived { reason } => {
            map.insert("reason".to_owned(), reason.clone().into());
        }
        Origin::File {
            path, line, column, ..
        } => {
            map.insert("file".to_owned(), path.clone().into());
            map.insert("line".to_owned(), (*line).into());
            map.insert("column".to_owned(), (*column).into());
        }
        Origin::Env { var } => {
            map.insert("variable".to_owned(), var.clone().into());
        }
    }
    serde_json::Value::Object(map)
}

pub(crate) fn render_json(merged: &MergedConfig) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let mut path = Vec::new();
    flatten(&merged.tree, &mut path, &mut out);
    for tombstone in &merged.removed {
        let key = format_key_path(&tombstone.path);
        if out.contains_key(&key) {
            continue; // re-added by a higher layer; the value is what counts
        }
        let mut entry = serde_json::Map::new();
        entry.insert("value".to_owned(), serde_json::Value::Null);
        entry.insert("removed".to_owned(), true.into());
        entry.insert("origin".to_owned(), origin_json(&tombstone.origin));
        out.insert(key, serde_json::Value::Object(entry));
    }
    serde_json::Value::Object(out)
}

fn flatten(
    table: &Table,
    path: &mut Vec<String>,
    out: &mut serde_json::Map<String, serde_json::Value>,
) {
    for (key, node) in table {
        path.push(key.clone());
        match node {
            Node::Leaf(leaf) => {
                let mut entry = serde_json::Map::new();
                entry.insert("value".to_owned(), shown_value(key, leaf).to_json());
                entry.insert("origin".to_owned(), origin_json(&leaf.origin));
                out.insert(format_key_path(path), serde_json::Value::Object(entry));
            }
            Node::Table(inner) => flatten(inner, path, out),
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tree::is_bare_key;

    #[test]
    fn keys_that_need_quotes_are_quoted() {
        assert!(is_bare_key("gpt-4o"));
        assert!(!is_bare_key("gpt-4.1"));
        assert_eq!(key_text("gpt-4.1"), "\"gpt-4.1\"");
    }
}
