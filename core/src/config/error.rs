//! [`ConfigError`]: every way a configuration can be wrong, phrased for a person at a terminal.
//!
//! Each variant names the key path, the origin (file, line and column, or environment
//! variable) and, for bad values, what was expected and what was found. This module only
//! describes errors; it must not decide what is valid.

use super::tree::{Layer, Origin};

/// A configuration error. `Display` gives one sentence naming the key, where it was set,
/// what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A file is not valid TOML.
    #[error(
        "the {layer} file {path} is not valid TOML at line {line}, column {column}: {message}"
    )]
    InvalidToml {
        /// The layer the file belongs to.
        layer: Layer,
        /// The file's path label.
        path: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A file or input is larger than the stated bound.
    #[error("{what} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// What was too large (a file path, or an environment variable).
        what: String,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A key that the schema does not know (typo protection).
    #[error("unknown key `{key}` in {origin}{hint}")]
    UnknownKey {
        /// The full key path.
        key: String,
        /// Where it was written.
        origin: Origin,
        /// Either empty or " (did you mean `x`?)" / a short explanation.
        hint: String,
    },
    /// An environment variable under the program's prefix that names no config key.
    #[error("environment variable {var} names `{key}`, which is not a config key{hint}")]
    UnknownEnvVar {
        /// The variable.
        var: String,
        /// The key path it decodes to.
        key: String,
        /// Either empty or a hint.
        hint: String,
    },
    /// Two environment variables set the same key (`GATE_PORT` and `GATE__PORT`).
    #[error("environment variables {first} and {second} both set `{key}`; keep only one")]
    DuplicateEnvVar {
        /// The key path.
        key: String,
        /// One variable.
        first: String,
        /// The other.
        second: String,
    },
    /// A value of the wrong type or out of range, or a rule between values that fails.
    #[error("`{key}` from {origin} must be {expected}, but it is {found}")]
    InvalidValue {
        /// The full key path.
        key: String,
        /// Where the value was set.
        origin: Origin,
        /// What was expected.
        expected: String,
        /// What was found (quoted value, type, or "missing").
        found: String,
    },
    /// A key path given to an editing helper or a tombstone that cannot be used.
    #[error("`{key}` {problem}")]
    BadKeyPath {
        /// The key path as given.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl ConfigError {
    /// The key path the error is about, when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::UnknownEnvVar { key, .. }
            | ConfigError::DuplicateEnvVar { key, .. }
            | ConfigError::InvalidValue { key, .. }
            | ConfigError::BadKeyPath { key, .. } => Some(key),
            ConfigError::InvalidToml { .. } | ConfigError::TooLarge { .. } => None,
        }
    }

    /// The layer the error is in, when known.
    pub fn layer(&self) -> Option<Layer> {
        match self {
            ConfigError::InvalidToml { layer, .. } => Some(*layer),
            ConfigError::UnknownKey { origin, .. } | ConfigError::InvalidValue { origin, .. } => {
                Some(origin.layer())
            }
            ConfigError::UnknownEnvVar { .. } | ConfigError::DuplicateEnvVar { .. } => {
                Some(Layer::Environment)
            }
            ConfigError::TooLarge { .. } | ConfigError::BadKeyPath { .. } => None,
        }
    }

    /// The origin of the offending value or key, when there is one.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            ConfigError::UnknownKey { origin, .. } | ConfigError::InvalidValue { origin, .. } => {
                Some(origin)
            }
            _ => None,
        }
    }
}
