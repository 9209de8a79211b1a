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

#[derive(Deserialize, Default)]
struct Details {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
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
        #[derive(Deserialize)]
        struct Nested {
            usage: Option<Counts>,
        }
        let Some([usage, message, response]) =
            super::json_members::top_level_members(data, ["usage", "message", "response"])
        else {
            return;
        };
        use super::json_members::decode_member;
        let (Ok(usage), Ok(message), Ok(response)) = (
            decode_member::<Counts>(usage),
            decode_member::<Nested>(message),
            decode_member::<Nested>(response),
        ) else {
            return;
        };
        let usage = usage
            .or_else(|| message.and_then(|m| m.usage))
            .or_else(|| response.and_then(|m| m.usage));
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

/// The key an SSE watcher looks for in events of an upstream speaking `protocol`.
pub fn usage_key(protocol: crate::route::WireProtocol) -> &'static [u8] {
    match protocol {
        crate::route::WireProtocol::Gemini => GEMINI_USAGE_KEY,
        _ => USAGE_KEY,
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
