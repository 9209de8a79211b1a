//! Token counts read from answers (a body, a chunk or an event of either protocol).

/// Token counts seen in a response.
#[derive(Default, Debug, Clone, Copy)]
pub(super) struct Usage {
    pub(super) input: u64,
    pub(super) output: u64,
}

impl Usage {
    /// Reads `usage` from an OpenAI or Anthropic JSON body, chunk or event.
    pub(super) fn observe_json(&mut self, data: &[u8]) {
        if memchr_usage(data).is_none() {
            return;
        }
        // Only the usage counters are decoded; every other field is skipped without allocating.
        #[derive(serde::Deserialize, Default)]
        struct Counts {
            prompt_tokens: Option<u64>,
            input_tokens: Option<u64>,
            completion_tokens: Option<u64>,
            output_tokens: Option<u64>,
        }
        #[derive(serde::Deserialize)]
        struct Nested {
            usage: Option<Counts>,
        }
        #[derive(serde::Deserialize)]
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
        if let Some(n) = usage.prompt_tokens.or(usage.input_tokens) {
            self.input = self.input.max(n);
        }
        if let Some(n) = usage.completion_tokens.or(usage.output_tokens) {
            self.output = self.output.max(n);
        }
    }
}

/// The key every usage-bearing JSON body or event holds.
pub(super) const USAGE_KEY: &[u8] = b"\"usage\"";

pub(super) fn memchr_usage(data: &[u8]) -> Option<usize> {
    memchr::memmem::find(data, USAGE_KEY)
}
