//! One request's usage record: what the daemon writes to its usage log (SQLite, or the
//! shared store) when the request's answer has ended, one way or another.

use serde::{Deserialize, Serialize};

use super::money::Usd;

/// The usage of one request. Written once, when its answer ended (completed, failed,
/// refused, or abandoned by the client).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// When the request arrived, Unix milliseconds.
    pub at_ms: u64,
    /// The key's id (`gate token list`), `jwt:<sub>` for a JWT, `loopback` for trusted
    /// loopback clients.
    pub key_id: String,
    /// The key's owner, if its policy names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The client's API: `chat`, `messages`, `responses`, `gemini`, `embeddings`, ...
    /// (the endpoint label of the metrics).
    pub endpoint: String,
    /// The model name the client asked for.
    pub model: String,
    /// The model the upstream served (after alias mapping), when one was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model: Option<String>,
    /// The upstream that answered, when one was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
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
    pub error: Option<String>,
}
