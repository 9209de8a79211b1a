//! One request's usage record: what the daemon writes to its usage log (SQLite, or the
//! shared store) when the request's answer has ended, one way or another.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::money::Usd;

/// The usage of one request. Written once, when its answer ended (completed, failed,
/// refused, or abandoned by the client).
///
/// Its names are shared (`Arc<str>`: the key's id and owner, the upstream's name) or fixed
/// labels (`Cow<'static, str>`: the endpoint, the error kind), so building one on the request
/// path copies no string it can share (issue 16); the serialized form is the one of plain
/// strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// When the request arrived, Unix milliseconds.
    pub at_ms: u64,
    /// The key's id (`gate token list`), `jwt:<sub>` for a JWT, `loopback` for trusted
    /// loopback clients.
    #[serde(with = "arc_str")]
    pub key_id: Arc<str>,
    /// The key's owner, if its policy names one.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_arc_str")]
    pub owner: Option<Arc<str>>,
    /// The client's API: `chat`, `messages`, `responses`, `gemini`, `embeddings`, ...
    /// (the endpoint label of the metrics).
    pub endpoint: Cow<'static, str>,
    /// The model name the client asked for.
    #[serde(with = "arc_str")]
    pub model: Arc<str>,
    /// The model the upstream served (after alias mapping), when one was reached.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_arc_str")]
    pub served_model: Option<Arc<str>>,
    /// The upstream that answered, when one was reached.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_arc_str")]
    pub upstream: Option<Arc<str>>,
    /// Input tokens (cached ones included).
    pub input_tokens: u64,
    /// Output tokens (reasoning included).
    pub output_tokens: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_write_tokens: u64,
    /// The cost; `None` when no price is known for the served model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Usd>,
    /// From arrival to the answer's end, milliseconds.
    pub latency_ms: u64,
    /// From arrival to the first byte of the answer's body, milliseconds (streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
    /// The HTTP status the client got.
    pub status: u16,
    /// Why it failed, when it did: `rate_limited`, `budget`, `model_not_allowed`,
    /// `upstream_error`, `upstream_timeout`, `abandoned`, `no_upstream`, `bad_request`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Cow<'static, str>>,
}

/// `Arc<str>` as a plain string (serde's own impl needs its `rc` feature).
mod arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(d).map(Arc::from)
    }
}

/// `Option<Arc<str>>` as an optional plain string.
mod opt_arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)] // serde's `with` passes `&Option<T>`
    pub fn serialize<S: Serializer>(value: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_some(&**v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
        Option::<String>::deserialize(d).map(|o| o.map(Arc::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared and borrowed fields serialize as the plain strings they were, and read
    /// back equal.
    #[test]
    fn serialized_form_is_plain_strings() {
        let record = UsageRecord {
            at_ms: 7,
            key_id: "k1".into(),
            owner: Some("team".into()),
            endpoint: "chat".into(),
            model: "m".into(),
            served_model: Some("m-1".into()),
            upstream: Some("u".into()),
            status: 200,
            error: Some("upstream_error".into()),
            ..UsageRecord::default()
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["key_id"], "k1");
        assert_eq!(json["owner"], "team");
        assert_eq!(json["endpoint"], "chat");
        assert_eq!(json["served_model"], "m-1");
        assert_eq!(json["upstream"], "u");
        assert_eq!(json["error"], "upstream_error");
        let back: UsageRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        let bare = UsageRecord {
            key_id: "k2".into(),
            ..UsageRecord::default()
        };
        let json = serde_json::to_value(&bare).unwrap();
        assert!(
            json.get("owner").is_none() && json.get("upstream").is_none(),
            "{json}"
        );
        assert_eq!(serde_json::from_value::<UsageRecord>(json).unwrap(), bare);
    }
}
