//! Usage extraction: token counts read from answers (a body, a chunk or an event of either
//! protocol). Pure; the gateway feeds it what it forwards.
//!
//! Must not: build a JSON tree (only the counters are decoded) or fail on any input.

use serde::Deserialize;

/// Token counts seen in a response.
#[derive(Default, Debug, Clone, Copy)]
pub struct Usage {
    /// Prompt (input) tokens, cached and cache-written ones included (Anthropic's separate
    /// `cache_read_input_tokens` and `cache_creation_input_tokens` are added in).
    pub input: u64,
    /// Completion (output) tokens.
    pub output: u64,
    /// Of `input`, read from the provider's prompt cache (`prompt_tokens_details.cached_tokens`,
    /// `input_tokens_details.cached_tokens`, `cache_read_input_tokens`).
    pub cached_tokens: u64,
    /// Of `input`, written to the provider's prompt cache (`cache_creation_input_tokens`).
    pub cache_write_tokens: u64,
}

impl Usage {
    /// Reads `usage` from an OpenAI or Anthropic JSON body, chunk or event.
    pub fn observe_json(&mut self, data: &[u8]) {
        if memchr_usage(data).is_none() {
            return;
        }
        // Only the usage counters are decoded; every other field is skipped without allocating.
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
        #[derive(Deserialize)]
        struct Nested {
            usage: Option<Counts>,
        }
        #[derive(Deserialize)]
        struct Top {
            usage: Option<Counts>,
            message: Option<Nested>,
            response: Option<Nested>,
        }
        let Ok(top) = serde_json::from_slice::<Top>(data) else {
            return;
        };
        let usage = top
            .usage
            .or_else(|| top.message.and_then(|m| m.usage))
            .or_else(|| top.response.and_then(|m| m.usage));
        let Some(usage) = usage else { return };
        let cache_read = usage.cache_read_input_tokens.unwrap_or(0);
        let cache_write = usage.cache_creation_input_tokens.unwrap_or(0);
        let cached = usage
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .or(usage.input_tokens_details.and_then(|d| d.cached_tokens))
            .unwrap_or(0)
            .max(cache_read);
        self.cached_tokens = self.cached_tokens.max(cached);
        self.cache_write_tokens = self.cache_write_tokens.max(cache_write);
        if let Some(n) = usage.prompt_tokens.or(usage.input_tokens) {
            // Anthropic counts cache reads and writes apart from `input_tokens`.
            self.input = self.input.max(n + cache_read + cache_write);
        }
        if let Some(n) = usage.completion_tokens.or(usage.output_tokens) {
            self.output = self.output.max(n);
        }
    }
}

/// The key every usage-bearing JSON body or event holds.
pub const USAGE_KEY: &[u8] = b"\"usage\"";

fn memchr_usage(data: &[u8]) -> Option<usize> {
    memchr::memmem::find(data, USAGE_KEY)
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
    fn reads_cache_counts() {
        let mut openai = Usage::default();
        openai.observe_json(
            br#"{"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":60}}}"#,
        );
        assert_eq!((openai.input, openai.cached_tokens), (100, 60));
        let mut anthropic = Usage::default();
        anthropic.observe_json(
            br#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_read_input_tokens":50,"cache_creation_input_tokens":40,"output_tokens":1}}}"#,
        );
        assert_eq!(
            (
                anthropic.input,
                anthropic.cached_tokens,
                anthropic.cache_write_tokens
            ),
            (100, 50, 40)
        );
    }
}
