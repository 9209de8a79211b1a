//! Turning caller-supplied text into [`LayerData`]: TOML files (nix and runtime layers) and
//! environment variables, checked against a [`Schema`].
//!
//! Owns: TOML-with-spans walking, the `_removed` tombstone list, environment name decoding
//! and string-to-type conversion of environment values. Bounds: a file's text is at most
//! [`MAX_FILE_BYTES`], one environment value at most [`MAX_ENV_VALUE_BYTES`]; nesting depth
//! is bounded by the schema (and by the `toml` parser's own recursion limit). Must not read
//! files or the process environment: callers pass text and `(name, value)` pairs in.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::ConfigError;
use super::schema::{is_secret_key, Field, Kind, Schema, StrCheck, TOMBSTONE_KEY};
use super::tree::{
    format_key_path, parse_key_path, Layer, LayerData, Leaf, Origin, Tombstone, Value,
};

/// Largest configuration file accepted, in bytes (1 MiB).
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Largest environment variable value accepted, in bytes (64 KiB).
pub const MAX_ENV_VALUE_BYTES: usize = 64 << 10;

struct FileContext<'a> {
    layer: Layer,
    path: &'a str,
    text: &'a str,
}

impl FileContext<'_> {
    fn origin(&self, offset: usize) -> Origin {
        Origin::in_file(self.layer, self.path, self.text, offset)
    }
}

/// Parse one TOML file of the nix or runtime layer. Only the runtime layer may hold the
/// `_removed` tombstone list.
pub fn parse_file_layer(
    schema: &Schema,
    layer: Layer,
    path: &str,
    text: &str,
) -> Result<LayerData, ConfigError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            what: format!("the {layer} file {path}"),
            size: text.len(),
            limit: MAX_FILE_BYTES,
        });
    }
    let document = DeTable::parse(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map_or((1, 1), |span| super::tree::line_column(text, span.start));
        ConfigError::InvalidToml {
            layer,
            path: path.to_owned(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })?;
    let context = FileContext { layer, path, text };
    let mut out = LayerData::default();
    let mut key_path = Vec::new();
    for (key, value) in document.get_ref() {
        if key.get_ref().as_ref() == TOMBSTONE_KEY && layer == Layer::Runtime {
            parse_tombstones(schema, &context, value, &mut out)?;
            continue;
        }
        convert_field(&context, schema.root, key, value, &mut key_path, &mut out)?;
    }
    Ok(out)
}

fn parse_tombstones(
    schema: &Schema,
    context: &FileContext<'_>,
    value: &Spanned<DeValue<'_>>,
    out: &mut LayerData,
) -> Result<(), ConfigError> {
    let expected = "a list of removable key paths such as [\"upstreams.openai\"]";
    let DeValue::Array(items) = value.get_ref() else {
        return Err(ConfigError::InvalidValue {
            key: TOMBSTONE_KEY.to_owned(),
            origin: context.origin(value.span().start),
            expected: expected.to_owned(),
            found: describe_de(value.get_ref(), false),
        });
    };
    for item in items.iter() {
        let origin = context.origin(item.span().start);
        let DeValue::String(text) = item.get_ref() else {
            return Err(ConfigError::InvalidValue {
                key: TOMBSTONE_KEY.to_owned(),
                origin,
                expected: expected.to_owned(),
                found: describe_de(item.get_ref(), false),
            });
        };
        let path =
            check_tombstone_path(schema, text).map_err(|problem| ConfigError::InvalidValue {
                key: TOMBSTONE_KEY.to_owned(),
                origin: origin.clone(),
                expected: expected.to_owned(),
                found: format!("{text:?}, which {problem}"),
            })?;
        out.tombstones.push(Tombstone { path, origin });
    }
    Ok(())
}

/// Check that `text` is a key path that may be tombstoned: a map entry (an upstream, an
/// alias), a whole map, or a key without a compiled-in default. `Err` says why not.
pub(crate) fn check_tombstone_path(schema: &Schema, text: &str) -> Result<Vec<String>, String> {
    let path = parse_key_path(text).ok_or_else(|| "is not a key path".to_owned())?;
    let resolved = schema
        .resolve(&path)
        .map_err(|e| format!("is not a config key{}", e.hint()))?;
    let removable = resolved.is_map_entry
        || matches!(resolved.kind, Kind::Map { .. })
        || (resolved.kind.is_leaf() && resolved.default.is_none());
    if removable {
        Ok(path)
    } else {
        Err("has a compiled-in default and cannot be removed (unset it instead)".to_owned())
    }
}

fn convert_field(
    context: &FileContext<'_>,
    fields: &'static [Field],
    key: &Spanned<std::borrow::Cow<'_, str>>,
    value: &Spanned<DeValue<'_>>,
    key_path: &mut Vec<String>,
    out: &mut LayerData,
) -> Result<(), ConfigError> {
    let name = key.get_ref().as_ref();
    key_path.push(name.to_owned());
    let Some(field) = super::schema::find_field(fields, name) else {
        let hint = super::schema::suggest(name, fields)
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        return Err(ConfigError::UnknownKey {
            key: format_key_path(key_path),
            origin: context.origin(key.span().start),
            hint,
        });
    };
    convert_node(context, &field.kind, value, key_path, out)?;
    key_path.pop();
    Ok(())
}

fn convert_node(
    context: &FileContext<'_>,
    kind: &'static Kind,
    value: &Spanned<DeValue<'_>>,
    key_path: &mut Vec<String>,
    out: &mut LayerData,
) -> Result<(), ConfigError> {
    let secret = key_path.last().is_some_and(|k| is_secret_key(k));
    let bad = |expected: String, found: String, offset: usize, key_path: &[String]| {
        ConfigError::InvalidValue {
            key: format_key_path(key_path),
            origin: context.origin(offset),
            expected,
            found,
        }
    };
    let start = value.span().start;
    match (kind, value.get_ref()) {
        (Kind::Table(fields), DeValue::Table(table)) => {
            for (k, v) in table {
                convert_field(context, fields, k, v, key_path, out)?;
            }
            Ok(())
        }
        (Kind::Map { key, entry }, DeValue::Table(table)) => {
            for (k, v) in table {
                let name = k.get_ref().as_ref();
                key_path.push(name.to_owned());
                if !key.accepts(name) {
                    return Err(ConfigError::InvalidValue {
                        key: format_key_path(key_path),
                        origin: context.origin(k.span().start),
                        expected: format!("a key that is {}", key.expected()),
                        found: format!("{name:?}"),
                    });
                }
                convert_node(context, entry, v, key_path, out)?;
                key_path.pop();
            }
            Ok(())
        }
        (Kind::Table(_) | Kind::Map { .. }, other) => Err(bad(
            kind.expected(),
            describe_de(other, secret),
            start,
            key_path,
        )),
        (leaf_kind, de) => {
            let converted = convert_de_leaf(leaf_kind, de, secret)
                .map_err(|(expected, found)| bad(expected, found, start, key_path))?;
            out.insert(
                key_path,
                Leaf {
                    value: converted,
                    origin: context.origin(start),
                },
            );
            Ok(())
        }
    }
}

/// Convert a TOML value to a leaf value; `Err((expected, found))`.
fn convert_de_leaf(kind: &Kind, de: &DeValue<'_>, secret: bool) -> Result<Value, (String, String)> {
    let mismatch = || (kind.expected(), describe_de(de, secret));
    match (kind, de) {
        (Kind::Bool, DeValue::Boolean(b)) => Ok(Value::Bool(*b)),
        (Kind::Integer { min, max }, DeValue::Integer(i)) => {
            match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) if (*min..=*max).contains(&n) => Ok(Value::Integer(n)),
                _ => Err(mismatch()),
            }
        }
        (Kind::String(check), DeValue::String(s)) => {
            if check.accepts(s) {
                Ok(Value::String(s.to_string()))
            } else {
                Err(mismatch())
            }
        }
        // Dollar amounts may be written as TOML numbers (`budget = 20`, `input = 2.5`).
        (Kind::String(check @ StrCheck::Usd), DeValue::Integer(n)) if n.radix() == 10 => {
            accept_number(*check, n.as_str()).ok_or_else(mismatch)
        }
        (Kind::String(check @ StrCheck::Usd), DeValue::Float(f)) => {
            accept_number(*check, f.as_str()).ok_or_else(mismatch)
        }
        (Kind::List(check), DeValue::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::String(s) if check.accepts(s) => out.push(s.to_string()),
                    other => {
                        return Err((
                            kind.expected(),
                            format!("a list containing {}", describe_de(other, secret)),
                        ))
                    }
                }
            }
            Ok(Value::List(out))
        }
        _ => Err(mismatch()),
    }
}

fn accept_number(check: StrCheck, text: &str) -> Option<Value> {
    let text = text.replace('_', "");
    check.accepts(&text).then_some(Value::String(text))
}

/// "the string \"abc\"", "the integer 5", "a table", ...; a secret's value is never shown,
/// whatever its type (only the type is named).
fn describe_de(de: &DeValue<'_>, secret: bool) -> String {
    match de {
        DeValue::String(_) if secret => "a string that is not shown here (secret)".to_owned(),
        DeValue::Integer(_) if secret => "an integer that is not shown here (secret)".to_owned(),
        DeValue::Float(_) if secret => "a float that is not shown here (secret)".to_owned(),
        DeValue::Boolean(_) if secret => "a boolean that is not shown here (secret)".to_owned(),
        DeValue::Datetime(_) if secret => "a datetime that is not shown here (secret)".to_owned(),
        DeValue::String(s) => format!("the string {}", quote_limited(s)),
        DeValue::Integer(i) => format!("the integer {i}"),
        DeValue::Float(f) => format!("the float {}", f.as_str()),
        DeValue::Boolean(b) => format!("the boolean {b}"),
        DeValue::Datetime(d) => format!("the datetime {d}"),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

/// `"value"`, cut to 80 characters.
pub(crate) fn quote_limited(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    if cut.len() < s.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

// ---------------------------------------------------------------------------------------
// Environment.

/// Decode an environment variable name into a key path for `prefix` ("GATE" or "RELAY").
///
/// `GATE_AUTH__JWT__SECRET` and `GATE__AUTH__JWT__SECRET` both give `["auth", "jwt",
/// "secret"]`: after `PREFIX_` one optional extra `_` is dropped, the rest splits on `__`,
/// and each segment is lower-cased (single underscores stay: `API_KEY` -> `api_key`).
/// `None` when the name is not under the prefix or a segment is empty or starts or ends
/// with `_`.
pub fn decode_env_name(prefix: &str, name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('_')?;
    let rest = rest.strip_prefix('_').unwrap_or(rest);
    let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    let well_formed = segments
        .iter()
        .all(|s| !s.is_empty() && !s.starts_with('_') && !s.ends_with('_'));
    well_formed.then_some(segments)
}

/// Parse the environment layer from `(name, value)` pairs. Variables outside the schema's
/// prefix, and the reserved ones (`GATE_STATE_DIR`, ...; see [`Schema::reserved_env`]),
/// are skipped. A variable whose first segment names a known section or key must name a
/// config key (a misspelling is an error); one whose first segment matches nothing, and a
/// Kubernetes service link (`GATE_PORT=tcp://10.0.0.1:3000`), is ignored with a warning in
/// [`LayerData::warnings`].
pub fn parse_env_layer<I, K, V>(schema: &Schema, vars: I) -> Result<LayerData, ConfigError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut out = LayerData::default();
    let prefix_underscore = format!("{}_", schema.env_prefix);
    let mut seen: std::collections::BTreeMap<Vec<String>, String> = Default::default();
    for (name, value) in vars {
        let (name, value) = (name.as_ref(), value.as_ref());
        if !name.starts_with(&prefix_underscore) {
            continue;
        }
        // The first segment as decoding would see it, to tell a known section from none.
        let rest = name.get(prefix_underscore.len()..).unwrap_or("");
        let first = rest
            .strip_prefix('_')
            .unwrap_or(rest)
            .split("__")
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        // A first segment one or two edits from a known one (`GATE_PROT`) is a typo of it,
        // not a foreign variable: still an error.
        let known_section = super::schema::find_field(schema.root, &first).is_some()
            || super::schema::suggest(&first, schema.root).is_some();
        let Some(path) = decode_env_name(schema.env_prefix, name) else {
            if !known_section {
                out.warnings.push(unrelated_env_warning(schema, name));
                continue;
            }
            return Err(ConfigError::UnknownEnvVar {
                var: name.to_owned(),
                key: rest.to_ascii_lowercase(),
                hint: " (levels are separated by `__`, e.g. GATE_AUTH__JWT__SECRET)".to_owned(),
            });
        };
        if let [single] = path.as_slice() {
            if schema.reserved_env.contains(&single.as_str()) {
                continue;
            }
        }
        let key = format_key_path(&path);
        let resolved = match schema.resolve(&path) {
            Ok(resolved) => resolved,
            Err(_) if !known_section => {
                out.warnings.push(unrelated_env_warning(schema, name));
                continue;
            }
            Err(e) => {
                return Err(ConfigError::UnknownEnvVar {
                    var: name.to_owned(),
                    key: key.clone(),
                    hint: e.hint(),
                })
            }
        };
        if !resolved.kind.is_leaf() {
            return Err(ConfigError::UnknownEnvVar {
                var: name.to_owned(),
                key,
                hint: " (it names a table; set one of its keys instead)".to_owned(),
            });
        }
        if matches!(resolved.kind, Kind::Integer { .. }) && is_service_link(value) {
            out.warnings.push(format!(
                "ignoring the environment variable {name}: its value has the form \
                 proto://host:port, which is a Kubernetes service link (Kubernetes sets it \
                 for a Service named {}), not a `{key}`; set {name} to a number to choose one",
                schema.env_prefix.to_ascii_lowercase()
            ));
            continue;
        }
        if let Some(first) = seen.get(&path) {
            return Err(ConfigError::DuplicateEnvVar {
                key,
                first: first.clone(),
                second: name.to_owned(),
            });
        }
        if value.len() > MAX_ENV_VALUE_BYTES {
            return Err(ConfigError::TooLarge {
                what: format!("the environment variable {name}"),
                size: value.len(),
                limit: MAX_ENV_VALUE_BYTES,
            });
        }
        let secret = path.last().is_some_and(|k| is_secret_key(k));
        let origin = Origin::Env {
            var: name.to_owned(),
        };
        let converted =
            convert_text(resolved.kind, value, secret).map_err(|(expected, found)| {
                ConfigError::InvalidValue {
                    key: key.clone(),
                    origin: origin.clone(),
                    expected,
                    found,
                }
            })?;
        out.insert(
            &path,
            Leaf {
                value: converted,
                origin,
            },
        );
        seen.insert(path, name.to_owned());
    }
    Ok(out)
}

/// The warning for a variable under the prefix whose first segment matches no section or
/// key: Kubernetes' service variables, or another program's. Never quotes the value.
fn unrelated_env_warning(schema: &Schema, name: &str) -> String {
    format!(
        "ignoring the environment variable {name}: it names no {} configuration section \
         (Kubernetes sets such variables for a Service named {}; if you meant a setting, \
         see `config show` for the key names)",
        schema.env_prefix,
        schema.env_prefix.to_ascii_lowercase()
    )
}

/// Whether `value` is a Kubernetes service link such as `tcp://10.0.0.1:3000`.
fn is_service_link(value: &str) -> bool {
    let value = value.trim();
    ["tcp://", "udp://", "sctp://"].iter().any(|scheme| {
        value.len() > scheme.len()
            && value
                .get(..scheme.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
    })
}

/// Convert text (an environment value, or a value typed on the command line) to a value
/// of `kind`:
/// - bool: `true/false`, `1/0`, `yes/no`, `on/off`, any case;
/// - integer: decimal, optional sign, surrounding spaces ignored;
/// - string: as is;
/// - list of strings: a TOML array literal when the text starts with `[`
///   (`["a", "b"]`), otherwise comma-separated with spaces trimmed and empty items dropped
///   (`a, b`); the empty string is the empty list.
///
/// `Err((expected, found))`.
pub fn convert_text(kind: &Kind, text: &str, secret: bool) -> Result<Value, (String, String)> {
    let found = || {
        if secret {
            "a value that is not shown here (secret)".to_owned()
        } else {
            quote_limited(text)
        }
    };
    match kind {
        Kind::Bool => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err((kind.expected(), found())),
        },
        Kind::Integer { min, max } => match text.trim().parse::<i64>() {
            Ok(n) if (*min..=*max).contains(&n) => Ok(Value::Integer(n)),
            _ => Err((kind.expected(), found())),
        },
        Kind::String(check) => {
            if check.accepts(text) {
                Ok(Value::String(text.to_owned()))
            } else {
                Err((kind.expected(), found()))
            }
        }
        Kind::List(check) => {
            let items = parse_list_text(text).ok_or_else(|| (kind.expected(), found()))?;
            match items.iter().find(|item| !check.accepts(item)) {
                Some(_) if secret => Err((
                    kind.expected(),
                    "a list containing a value that is not shown here (secret)".to_owned(),
                )),
                Some(bad) => Err((
                    kind.expected(),
                    format!("a list containing {}", quote_limited(bad)),
                )),
                None => Ok(Value::List(items)),
            }
        }
        Kind::Table(_) | Kind::Map { .. } => Err((kind.expected(), found())),
    }
}

fn parse_list_text(text: &str) -> Option<Vec<String>> {
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        let parsed = DeValue::parse(trimmed).ok()?;
        let DeValue::Array(items) = parsed.get_ref() else {
            return None;
        };
        items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                _ => None,
            })
            .collect()
    } else {
        Some(
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
}
