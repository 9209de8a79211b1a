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
    document: &toml::Table,
) -> Result<String, ConfigError> {
    let text = toml::to_string(document).map_err(|e| bad_path("(runtime file)", e.to_string()))?;
    merge(schema, &sources.with_runtime_text(text.clone()))?;
    Ok(text)
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
    finish(schema, sources, &document)
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
    finish(schema, sources, &document)
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
    finish(schema, sources, &document)
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
