//! Usage extraction: token counts read from answers (a body, a chunk or an event of any of
//! the three protocols). Pure; the gateway feeds it what it forwards.
//!
//! The counts are kept as each protocol reports them (the largest value seen of each, since
//! streams repeat running totals):
//! - `input`: OpenAI `prompt_tokens` / `input_tokens` (cached tokens included), Anthropic
//!   `input_tokens` (cache reads and writes *not* included: Anthropic counts them apart),
//!   Gemini `promptTokenCount` (cached content included);
//! - `output`: `completion_tokens` / `output_tokens`; Gemini `candidatesTokenCount` plus
//!   `thoughtsTokenCount` (thinking is billed as output);
//! - `cached`: tokens read from a prompt cache: OpenAI `prompt_tokens_details.cached_tokens`
//!   (Responses: `input_tokens_details.cached_tokens`), Anthropic
//!   `cache_read_input_tokens`, Gemini `cachedContentTokenCount`;
//! - `cache_write`: tokens written to a prompt cache: Anthropic
//!   `cache_creation_input_tokens` (the other two protocols do not report writes).
//!
//! Must not: build a JSON tree (only the counters are decoded) or fail on any input.

use serde::Deserialize;

/// Token counts seen in a response.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens, cached and cache-written ones included (Anthropic's separate
    /// `cache_read_input_tokens` and `cache_creation_input_tokens` are added in).
    pub input: u64,
    /// Completion (output) tokens.
    pub output: u64,
    /// Of `input`, read from the provider's prompt cache (`prompt_tokens_details.cached_tokens`,
    /// `input_tokens_details.cached_tokens`, `cache_read_input_tokens`,
    /// `cachedContentTokenCount`).
    pub cached_tokens: u64,
    /// Of `input`, written to the provider's prompt cache (`cache_creation_input_tokens`).
    pub cache_write_tokens: u64,
}

#[derive(Deserialize, Default, Debug, PartialEq)]
struct Details {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default, Debug, PartialEq)]
struct Counts {
    prompt_tokens: Option<u64>,
    input_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GeminiCounts {
    #[serde(alias = "prompt_token_count")]
    prompt_token_count: Option<u64>,
    #[serde(alias = "candidates_token_count")]
    candidates_token_count: Option<u64>,
    #[serde(alias = "thoughts_token_count")]
    thoughts_token_count: Option<u64>,
    #[serde(alias = "cached_content_token_count")]
    cached_content_token_count: Option<u64>,
}

impl Usage {
    fn keep(slot: &mut u64, value: Option<u64>) {
        if let Some(n) = value {
            *slot = (*slot).max(n);
        }
    }

    /// Reads `usage` from an OpenAI or Anthropic JSON body, chunk or event.
    pub fn observe_json(&mut self, data: &[u8]) {
        if USAGE_FINDER.find(data).is_none() {
            return;
        }
        // Only the three members that can hold usage are decoded; every other member is
        // skipped by its brackets, not parsed (`json_members`). A document a struct parser
        // refuses (not an object, a chosen key twice, a member of the wrong type) yields
        // nothing, as before.
        let Some([usage, message, response]) =
            super::json_members::top_level_members(data, ["usage", "message", "response"])
        else {
            return;
        };
        let (Ok(usage), Ok(message), Ok(response)) = (
            decode_counts(usage),
            decode_nested(message),
            decode_nested(response),
        ) else {
            return;
        };
        let usage = usage.or(message).or(response);
        let Some(usage) = usage else { return };
        // Anthropic counts cache reads and writes apart from `input_tokens`; `input` holds all.
        let cache_read = usage.cache_read_input_tokens.unwrap_or(0);
        let cache_write = usage.cache_creation_input_tokens.unwrap_or(0);
        Self::keep(
            &mut self.input,
            usage
                .prompt_tokens
                .map(|n| n.max(cache_read))
                .or(usage.input_tokens.map(|n| n + cache_read + cache_write)),
        );
        Self::keep(
            &mut self.output,
            usage.completion_tokens.or(usage.output_tokens),
        );
        let cached = usage
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .or(usage.input_tokens_details.and_then(|d| d.cached_tokens))
            .or(usage.cache_read_input_tokens);
        Self::keep(&mut self.cached_tokens, cached);
        Self::keep(
            &mut self.cache_write_tokens,
            usage.cache_creation_input_tokens,
        );
    }

    /// Reads `usageMetadata` from a Gemini answer or stream chunk (either spelling).
    pub fn observe_gemini_json(&mut self, data: &[u8]) {
        if GEMINI_USAGE_FINDER.find(data).is_none()
            && GEMINI_SNAKE_USAGE_FINDER.find(data).is_none()
        {
            return;
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Top {
            #[serde(alias = "usage_metadata")]
            usage_metadata: Option<GeminiCounts>,
        }
        let Ok(Top {
            usage_metadata: Some(counts),
        }) = serde_json::from_slice::<Top>(data)
        else {
            return;
        };
        Self::keep(&mut self.input, counts.prompt_token_count);
        let output = match (counts.candidates_token_count, counts.thoughts_token_count) {
            (None, None) => None,
            (c, t) => Some(c.unwrap_or(0).saturating_add(t.unwrap_or(0))),
        };
        Self::keep(&mut self.output, output);
        Self::keep(&mut self.cached_tokens, counts.cached_content_token_count);
    }

    /// Reads usage from an answer of an upstream speaking `protocol`.
    pub fn observe(&mut self, protocol: crate::route::WireProtocol, data: &[u8]) {
        match protocol {
            crate::route::WireProtocol::Gemini => self.observe_gemini_json(data),
            _ => self.observe_json(data),
        }
    }
}

/// A `usage` member's raw value (`json_members`) as a struct parser decodes it, `Err` where
/// it refuses it. The plain case (an object whose counters are unsigned integers, `null` or
/// absent) is read here; anything else (a float, a string, an escape in a key, a duplicated
/// key) goes to serde, which decides as before. Serde on the usage of every answer cost
/// ~1,600 instructions of a ~78,000-instruction request (issue 16).
fn decode_counts(raw: Option<&[u8]>) -> Result<Option<Counts>, serde_json::Error> {
    match raw.map(plain_counts) {
        None => Ok(None),
        Some(Some(counts)) => Ok(counts),
        Some(None) => super::json_members::decode_member::<Counts>(raw),
    }
}

/// The `usage` of an object member (Anthropic's `message`, the Responses API's `response`),
/// as [`decode_counts`] reads it; serde decides what is not plain.
fn decode_nested(raw: Option<&[u8]>) -> Result<Option<Counts>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Nested {
        usage: Option<Counts>,
    }
    let Some(bytes) = raw else { return Ok(None) };
    if bytes == b"null" {
        return Ok(None);
    }
    if let Some([usage]) = super::json_members::top_level_members(bytes, ["usage"]) {
        if let Some(counts) = usage.map_or(Some(None), plain_counts) {
            return Ok(counts);
        }
    }
    Ok(super::json_members::decode_member::<Nested>(raw)?.and_then(|n| n.usage))
}

/// The members of [`Counts`], in its order.
const COUNT_KEYS: [&str; 8] = [
    "prompt_tokens",
    "input_tokens",
    "completion_tokens",
    "output_tokens",
    "prompt_tokens_details",
    "input_tokens_details",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
];

/// `Some(counts)` when `raw` is plain (see [`decode_counts`]); `None` to ask serde.
fn plain_counts(raw: &[u8]) -> Option<Option<Counts>> {
    if raw == b"null" {
        return Some(None);
    }
    let [prompt, input, completion, output, prompt_details, input_details, read, write] =
        super::json_members::top_level_members(raw, COUNT_KEYS)?;
    Some(Some(Counts {
        prompt_tokens: plain_u64(prompt)?,
        input_tokens: plain_u64(input)?,
        completion_tokens: plain_u64(completion)?,
        output_tokens: plain_u64(output)?,
        prompt_tokens_details: plain_details(prompt_details)?,
        input_tokens_details: plain_details(input_details)?,
        cache_read_input_tokens: plain_u64(read)?,
        cache_creation_input_tokens: plain_u64(write)?,
    }))
}

fn plain_details(raw: Option<&[u8]>) -> Option<Option<Details>> {
    match raw {
        None | Some(b"null") => Some(None),
        Some(raw) => {
            let [cached] = super::json_members::top_level_members(raw, ["cached_tokens"])?;
            Some(Some(Details {
                cached_tokens: plain_u64(cached)?,
            }))
        }
    }
}

/// An absent or `null` member (`Some(None)`), or an integer written plainly: digits, no
/// leading zero, at most 19 of them (always within `u64`). `None` for anything else.
fn plain_u64(raw: Option<&[u8]>) -> Option<Option<u64>> {
    match raw {
        None | Some(b"null") => Some(None),
        Some(digits @ [first, rest @ ..])
            if digits.len() <= 19
                && digits.iter().all(u8::is_ascii_digit)
                && (*first != b'0' || rest.is_empty()) =>
        {
            Some(Some(
                digits
                    .iter()
                    .fold(0, |n: u64, d| n * 10 + u64::from(d - b'0')),
            ))
        }
        Some(_) => None,
    }
}

/// The key every usage-bearing OpenAI or Anthropic JSON body or event holds.
pub const USAGE_KEY: &[u8] = b"\"usage\"";

// The searchers of the usage keys, built once (`memmem::find` builds one per call).
static USAGE_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(USAGE_KEY));
static GEMINI_USAGE_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(GEMINI_USAGE_KEY));
static GEMINI_SNAKE_USAGE_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage_metadata\""));

/// The key of usage in Gemini answers (camelCase, as Google writes it).
pub const GEMINI_USAGE_KEY: &[u8] = b"\"usageMetadata\"";

/// The searcher of the usage key of an upstream speaking `protocol` ([`USAGE_KEY`], or
/// [`GEMINI_USAGE_KEY`] for Gemini), built once (for
/// [`SseWatcher::with_finder`](crate::llm::sse::SseWatcher::with_finder)).
pub fn usage_key_finder(
    protocol: crate::route::WireProtocol,
) -> &'static memchr::memmem::Finder<'static> {
    match protocol {
        crate::route::WireProtocol::Gemini => &GEMINI_USAGE_FINDER,
        _ => &USAGE_FINDER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_protocols_and_keeps_the_largest() {
        let mut usage = Usage::default();
        usage.observe_json(br#"{"usage":{"prompt_tokens":3,"completion_tokens":5}}"#);
        usage.observe_json(
            br#"{"type":"message_start","message":{"usage":{"input_tokens":4,"output_tokens":1}}}"#,
        );
        usage.observe_json(br#"{"response":{"usage":{"input_tokens":2,"output_tokens":9}}}"#);
        usage.observe_json(b"not json \"usage\"");
        assert_eq!((usage.input, usage.output), (4, 9));
    }

    #[test]
    fn cached_and_cache_write_tokens() {
        let mut openai = Usage::default();
        openai.observe_json(
            br#"{"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":64}}}"#,
        );
        assert_eq!(
            (
                openai.input,
                openai.cached_tokens,
                openai.cache_write_tokens
            ),
            (100, 64, 0)
        );
        let mut responses = Usage::default();
        responses.observe_json(
            br#"{"type":"response.completed","response":{"usage":{"input_tokens":10,"output_tokens":2,"input_tokens_details":{"cached_tokens":8}}}}"#,
        );
        assert_eq!(responses.cached_tokens, 8);
        let mut anthropic = Usage::default();
        anthropic.observe_json(
            br#"{"type":"message_start","message":{"usage":{"input_tokens":3,"cache_read_input_tokens":200,"cache_creation_input_tokens":50,"output_tokens":1}}}"#,
        );
        assert_eq!(
            anthropic,
            Usage {
                input: 253,
                output: 1,
                cached_tokens: 200,
                cache_write_tokens: 50
            }
        );
    }

    /// Issue 16: the plain reader of `usage` decodes what serde decodes, and refuses what it
    /// refuses, on every document (valid JSON here: the member scanner's own tests hold it to
    /// a parser on the rest).
    mod plain_counts_match_serde {
        use super::super::{decode_counts, decode_nested, Counts, COUNT_KEYS};
        use proptest::prelude::*;

        /// Every member of `Counts`, and two it does not have (`cached_tokens` belongs to
        /// the details objects).
        fn key(index: usize) -> &'static str {
            COUNT_KEYS
                .get(index)
                .copied()
                .unwrap_or(if index == COUNT_KEYS.len() {
                    "total_tokens"
                } else {
                    "cached_tokens"
                })
        }
        const KEY_COUNT: usize = COUNT_KEYS.len() + 2;

        fn value() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                (0u64..1000).prop_map(|n| n.to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                Just("null".to_owned()),
                Just("-0".to_owned()),
                Just("1.0".to_owned()),
                Just("1e3".to_owned()),
                Just("18446744073709551616".to_owned()),
                Just("\"5\"".to_owned()),
                Just("true".to_owned()),
                Just("[1]".to_owned()),
            ];
            leaf.prop_recursive(2, 12, 4, |inner| {
                prop::collection::vec((0..KEY_COUNT, inner), 0..4)
                    .prop_map(|members| object(&members))
            })
        }

        fn object(members: &[(usize, String)]) -> String {
            let body: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("\"{}\" : {v}", key(*k)))
                .collect();
            format!("{{ {} }}", body.join(","))
        }

        fn serde_counts(raw: &[u8]) -> Option<Option<Counts>> {
            serde_json::from_slice::<Option<Counts>>(raw).ok()
        }

        proptest! {
            #[test]
            fn on_usage_objects(members in prop::collection::vec((0..KEY_COUNT, value()), 0..9)) {
                let raw = object(&members);
                // Valid documents only (a leading zero is in `edge_cases`): on broken ones the
                // scanner is the more lenient (a broken member it skips is not noticed).
                prop_assert!(serde_json::from_str::<serde_json::Value>(&raw).is_ok());
                let got = decode_counts(Some(raw.as_bytes())).ok();
                prop_assert_eq!(got, serde_counts(raw.as_bytes()), "{}", raw);
                // The same object as a message's `usage`.
                let nested = format!("{{\"id\":\"m\",\"usage\":{raw},\"content\":[]}}");
                #[derive(serde::Deserialize)]
                struct Nested {
                    usage: Option<Counts>,
                }
                let want = serde_json::from_slice::<Option<Nested>>(nested.as_bytes())
                    .ok()
                    .map(|n| n.and_then(|n| n.usage));
                prop_assert_eq!(decode_nested(Some(nested.as_bytes())).ok(), want);
            }
        }

        #[test]
        fn edge_cases() {
            for raw in [
                "null",
                "{}",
                "{\"prompt_tokens\":0}",
                "{\"prompt_tokens\":007}",
                "{\"prompt_tokens\":-0}",
                "{\"prompt_tokens\":12.0}",
                "{\"prompt_tokens\":18446744073709551615}",
                "{\"prompt_tokens\":1,\"prompt_tokens\":2}",
                "{\"prompt_tok\\u0065ns\":3}",
                "{\"prompt_tokens_details\":{\"cached_tokens\":4,\"cached_tokens\":5}}",
                "{\"prompt_tokens_details\":{}}",
                "{\"prompt_tokens_details\":7}",
                "5",
                "[]",
            ] {
                assert_eq!(
                    decode_counts(Some(raw.as_bytes())).ok(),
                    serde_counts(raw.as_bytes()),
                    "{raw}"
                );
            }
            assert_eq!(decode_counts(None).ok(), Some(None));
            assert_eq!(decode_nested(None).ok(), Some(None));
            assert_eq!(decode_nested(Some(b"null")).ok(), Some(None));
            assert!(decode_nested(Some(b"3")).is_err());
        }
    }

    #[test]
    fn gemini_usage_metadata() {
        let mut usage = Usage::default();
        usage.observe_gemini_json(
            br#"{"candidates":[],"usageMetadata":{"promptTokenCount":12,"totalTokenCount":12}}"#,
        );
        assert_eq!((usage.input, usage.output), (12, 0));
        usage.observe(
            crate::route::WireProtocol::Gemini,
            br#"{"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":7,"thoughtsTokenCount":3,"cachedContentTokenCount":4}}"#,
        );
        assert_eq!(
            usage,
            Usage {
                input: 12,
                output: 10,
                cached_tokens: 4,
                cache_write_tokens: 0
            }
        );
        let mut snake = Usage::default();
        snake.observe_gemini_json(
            br#"{"usage_metadata":{"prompt_token_count":2,"candidates_token_count":1}}"#,
        );
        assert_eq!((snake.input, snake.output), (2, 1));
        // OpenAI's key is not Gemini's.
        let mut none = Usage::default();
        none.observe_gemini_json(br#"{"usage":{"prompt_tokens":3}}"#);
        assert_eq!(none, Usage::default());
    }
}
