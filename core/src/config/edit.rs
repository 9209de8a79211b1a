//! Pure editing helpers for the runtime file (`<state_dir>/config.toml`): set, unset and
//! remove (tombstone) a key path. Each takes the current sources, returns the new runtime
//! file text, and accepts the change only if the whole configuration, with the new runtime
//! text, still merges and validates. Must not write files: the caller writes the returned
//! text atomically.
//!
//! The returned text is re-serialised from the parsed document: values and tables are
//! kept, comments and formatting are not (the runtime file is written by the daemon and the
//! CLI only).

use super::error::ConfigError;
use super::layers::{check_tombstone_path, convert_text, parse_env_layer, parse_file_layer};
use super::schema::{is_secret_key, Schema, TOMBSTONE_KEY};
use super::tree::{format_key_path, get_path, merge_layers, parse_key_path, Layer, Node, Value};
use super::{merge, ConfigSources};

fn bad_path(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::BadKeyPath {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

/// Parse the current runtime document (reporting invalid TOML with its position).
fn runtime_document(schema: &Schema, sources: &ConfigSources) -> Result<toml::Table, ConfigError> {
    parse_file_layer(
        schema,
        Layer::Runtime,
        &sources.runtime.path,
        &sources.runtime.text,
    )?;
    toml::from_str::<toml::Table>(&sources.runtime.text).map_err(|e| ConfigError::InvalidToml {
        layer: Layer::Runtime,
        path: sources.runtime.path.clone(),
        line: 1,
        column: 1,
        message: e.message().to_owned(),
    })
}

fn finish(
    schema: &Schema,
    sources: &ConfigSources,
    document: &mut toml::Table,
    assigned: &[&str],
) -> Result<String, ConfigError> {
    let text = toml::to_string(document).map_err(|e| bad_path("(runtime file)", e.to_string()))?;
    let after = merge(schema, &sources.with_runtime_text(text.clone()))?;
    // A provider key never follows a changed destination on its own.
    let Ok(before) = merge(schema, sources) else {
        return Ok(text);
    };
    let moved = moved_keys(&before.tree, &after.tree, assigned)?;
    if moved.is_empty() {
        return Ok(text);
    }
    if let Some(toml::Value::Table(upstreams)) = document.get_mut("upstreams") {
        for name in &moved {
            if let Some(toml::Value::Table(entry)) = upstreams.get_mut(name) {
                entry.remove("api_key");
            }
        }
    }
    let text = toml::to_string(document).map_err(|e| bad_path("(runtime file)", e.to_string()))?;
    merge(schema, &sources.with_runtime_text(text.clone()))?;
    Ok(text)
}

/// The upstreams whose requests would now go to another URL (`base_url` changed, set,
/// unset, or derived from a changed `provider`) while their provider key was not given in
/// the same edit (`assigned`): the key set in the runtime file is dropped so that it is
/// never sent to a host the person who stored it did not choose (a web UI session could
/// otherwise point `base_url` anywhere). A key from the Nix files or the environment cannot
/// be dropped from here: the edit is refused, naming where the key comes from.
fn moved_keys(
    before: &super::tree::Table,
    after: &super::tree::Table,
    assigned: &[&str],
) -> Result<Vec<String>, ConfigError> {
    let (Some(Node::Table(before)), Some(Node::Table(after))) =
        (before.get("upstreams"), after.get("upstreams"))
    else {
        return Ok(Vec::new());
    };
    let leaf = |entry: &super::tree::Table, key: &str| match entry.get(key) {
        Some(Node::Leaf(leaf)) => Some(leaf.clone()),
        _ => None,
    };
    let mut moved = Vec::new();
    for (name, node) in after {
        let (Node::Table(new), Some(Node::Table(old))) = (node, before.get(name)) else {
            continue;
        };
        let url = |entry| leaf(entry, "base_url").map(|l| l.value);
        if url(new) == url(old) {
            continue;
        }
        let key_path = ["upstreams".to_owned(), name.clone(), "api_key".to_owned()];
        if assigned
            .iter()
            .any(|k| parse_key_path(k).as_deref() == Some(&key_path[..]))
        {
            continue;
        }
        let Some(key) = leaf(new, "api_key") else {
            continue;
        };
        match &key.origin {
            super::tree::Origin::File {
                layer: Layer::Runtime,
                ..
            } => moved.push(name.clone()),
            origin => {
                return Err(bad_path(
                    &format_key_path(&[
                        "upstreams".to_owned(),
                        name.clone(),
                        "base_url".to_owned(),
                    ]),
                    format!(
                        "cannot change here: the upstream's key comes from {origin}, and would \
                         then be sent to the new URL; change base_url where the key is set, or \
                         give the key in the same edit"
                    ),
                ));
            }
        }
    }
    Ok(moved)
}

/// Set `key` (a dotted path such as `upstreams.openai.api_key`) to `value`, given as text
/// and converted like an environment value (see [`convert_text`]). Returns the new runtime
/// file text.
pub fn runtime_set(
    schema: &Schema,
    sources: &ConfigSources,
    key: &str,
    value: &str,
) -> Result<String, ConfigError> {
    runtime_set_many(schema, sources, &[(key, value)])
}

/// Set several keys in one change, validated together: what `gate upstream add` needs,
/// since a `custom` upstream is only valid once both `provider` and `base_url` are set.
pub fn runtime_set_many(
    schema: &Schema,
    sources: &ConfigSources,
    assignments: &[(&str, &str)],
) -> Result<String, ConfigError> {
    let mut document = runtime_document(schema, sources)?;
    for (key, value) in assignments {
        set_in_document(schema, &mut document, key, value)?;
    }
    let keys: Vec<&str> = assignments.iter().map(|(k, _)| *k).collect();
    finish(schema, sources, &mut document, &keys)
}

fn set_in_document(
    schema: &Schema,
    document: &mut toml::Table,
    key: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let path = parse_key_path(key).ok_or_else(|| bad_path(key, "is not a key path"))?;
    let resolved = schema
        .resolve(&path)
        .map_err(|e| bad_path(key, format!("is not a config key{}", e.hint())))?;
    if !resolved.kind.is_leaf() {
        return Err(bad_path(key, "is a table; set one of its keys"));
    }
    let secret = path.last().is_some_and(|k| is_secret_key(k));
    let converted = convert_text(resolved.kind, value, secret).map_err(|(expected, found)| {
        bad_path(
            key,
            format!("must be {expected}, but the new value is {found}"),
        )
    })?;
    let Some((last, parents)) = path.split_last() else {
        return Err(bad_path(key, "is empty"));
    };
    let mut table = document;
    for segment in parents {
        let entry = table
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(bad_path(key, "goes through a value that is not a table")),
        };
    }
    table.insert(last.clone(), Value::to_toml(&converted));
    Ok(())
}

/// Remove `path` from a document; prune tables left empty. Returns whether it was there.
fn remove_from_document(table: &mut toml::Table, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return table.remove(first).is_some();
    }
    let removed = match table.get_mut(first) {
        Some(toml::Value::Table(inner)) => remove_from_document(inner, rest),
        _ => false,
    };
    if matches!(table.get(first), Some(toml::Value::Table(t)) if t.is_empty()) {
        table.remove(first);
    }
    removed
}

/// Tombstone texts in the document, as written.
fn tombstones(document: &toml::Table) -> Vec<String> {
    match document.get(TOMBSTONE_KEY) {
        Some(toml::Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn set_tombstones(document: &mut toml::Table, list: Vec<String>) {
    if list.is_empty() {
        document.remove(TOMBSTONE_KEY);
    } else {
        document.insert(
            TOMBSTONE_KEY.to_owned(),
            toml::Value::Array(list.into_iter().map(toml::Value::String).collect()),
        );
    }
}

fn is_prefix(prefix: &[String], path: &[String]) -> bool {
    path.len() >= prefix.len() && path.iter().zip(prefix).all(|(a, b)| a == b)
}

/// Make the runtime layer have no opinion on `key`: drop its value (or table) from the
/// runtime file and any tombstone at or under it, so lower layers show through again.
/// Unsetting a key the runtime file does not mention is not an error.
pub fn runtime_unset(
    schema: &Schema,
    sources: &ConfigSources,
    key: &str,
) -> Result<String, ConfigError> {
    let path = parse_key_path(key).ok_or_else(|| bad_path(key, "is not a key path"))?;
    schema
        .resolve(&path)
        .map_err(|e| bad_path(key, format!("is not a config key{}", e.hint())))?;
    let mut document = runtime_document(schema, sources)?;
    remove_from_document(&mut document, &path);
    let kept = tombstones(&document)
        .into_iter()
        .filter(|t| parse_key_path(t).is_none_or(|p| !is_prefix(&path, &p)))
        .collect();
    set_tombstones(&mut document, kept);
    finish(schema, sources, &mut document, &[])
}

/// Remove `key` for good: drop it from the runtime file and, when the defaults or a Nix
/// file define it, add a tombstone so it stays removed after a restart. Fails when only
/// the environment sets it (the environment wins over the runtime layer) or nothing does.
pub fn runtime_remove(
    schema: &Schema,
    sources: &ConfigSources,
    key: &str,
) -> Result<String, ConfigError> {
    let path = check_tombstone_path(schema, key).map_err(|problem| bad_path(key, problem))?;
    let mut document = runtime_document(schema, sources)?;
    let in_runtime = remove_from_document(&mut document, &path);

    let mut lower = Vec::new();
    for file in &sources.nix_files {
        lower.push(parse_file_layer(
            schema,
            Layer::Nix,
            &file.path,
            &file.text,
        )?);
    }
    let (lower_tree, _) = merge_layers(lower);
    let in_lower = get_path(&lower_tree, &path).is_some();

    let env = parse_env_layer(schema, sources.env.iter().map(|(k, v)| (k, v)))?;
    if let Some(node) = get_path(&env.values, &path) {
        let var = first_env_var(node).unwrap_or_default();
        return Err(bad_path(
            key,
            format!(
                "is set by the environment variable {var}, which overrides the runtime layer; remove it from the environment instead"
            ),
        ));
    }
    if !in_lower && !in_runtime {
        return Err(bad_path(
            key,
            "is not set in any layer, so there is nothing to remove",
        ));
    }
    if in_lower {
        let text = format_key_path(&path);
        let mut list = tombstones(&document);
        if !list.contains(&text) {
            list.push(text);
        }
        set_tombstones(&mut document, list);
    }
    finish(schema, sources, &mut document, &[])
}

fn first_env_var(node: &Node) -> Option<String> {
    match node {
        Node::Leaf(leaf) => match &leaf.origin {
            super::tree::Origin::Env { var } => Some(var.clone()),
            _ => None,
        },
        Node::Table(t) => t.values().find_map(first_env_var),
    }
}

/// Remove the upstream `name` (see [`runtime_remove`]): `gate upstream remove NAME`.
pub fn runtime_remove_upstream(
    schema: &Schema,
    sources: &ConfigSources,
    name: &str,
) -> Result<String, ConfigError> {
    runtime_remove(
        schema,
        sources,
        &format_key_path(&["upstreams".to_owned(), name.to_owned()]),
    )
}
