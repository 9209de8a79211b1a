//! OpenAI Chat Completions <-> Anthropic Messages conversion, and the cheap helpers that
//! pass-through routing needs.
//!
//! Owns: pure functions from one protocol's request / response to the other's, two stateful
//! stream converters (one upstream SSE event in, zero or more client SSE events out), the
//! `model` / `stream` peek and `model` rewrite of pass-through bodies, and the token estimate
//! for `/v1/messages/count_tokens`.
//! Must not: perform I/O, parse SSE framing (the caller hands us event name and data; see
//! `sse`), read clocks (the `created` timestamp is an argument) or panic on any input.
//!
//! Submodules:
//! - [`passthrough`] — [`request_summary`], [`rewrite_model`].
//! - [`request`] — [`openai_request_to_anthropic`], [`anthropic_request_to_openai`].
//! - [`response`] — [`openai_response_to_anthropic`], [`anthropic_response_to_openai`].
//! - [`stream`] — [`OpenAiToAnthropicStream`], [`AnthropicToOpenAiStream`].
//! - [`responses`] — the Responses API on Chat Completions (and, through it, Anthropic)
//!   upstreams: [`responses_request_to_chat`], [`chat_response_to_responses`],
//!   [`ChatToResponsesStream`].
//! - [`tokens`] — [`estimate_input_tokens`].
//!
//! Memory: whole-body functions allocate in proportion to the body, whose size the caller
//! bounds (413 above its limit); serde_json's nesting limit (128) turns deep documents into
//! errors, and the `model` rewrite scans iteratively. Stream converters keep no text, only
//! one entry per tool call (at most [`MAX_STREAM_TOOL_CALLS`]).
//!
//! What is lost in conversion is listed on each function; the rule is: map what has an
//! equivalent, drop what has none, and reject (HTTP 400) only what would change the meaning
//! of the request if dropped (`n > 1`, server tools, tool-call arguments that are not a JSON
//! object).

pub mod passthrough;
pub mod request;
pub mod response;
pub mod responses;
pub mod stream;
pub mod tokens;

pub use passthrough::{
    is_usage_only_chunk, request_summary, rewrite_model, tree_cost_estimate, with_include_usage,
    RequestSummary, TREE_BYTES_PER_VALUE,
};
pub use request::{
    anthropic_request_body_to_openai, anthropic_request_body_to_openai_for_model,
    anthropic_request_to_openai, effort_for_thinking, openai_request_body_to_anthropic,
    openai_request_to_anthropic, thinking_for_effort, DEFAULT_ANTHROPIC_MAX_TOKENS,
};
pub use response::{
    anthropic_response_body_to_openai, anthropic_response_to_openai,
    openai_response_body_to_anthropic, openai_response_to_anthropic,
};
pub use responses::{
    anthropic_response_body_to_responses, chat_response_body_to_responses,
    chat_response_to_responses, responses_request_body_to_anthropic,
    responses_request_body_to_chat, responses_request_to_chat, ChatToResponsesStream,
    MAX_RESPONSES_STREAM_TEXT,
};
pub use stream::{AnthropicToOpenAiStream, OpenAiToAnthropicStream, MAX_STREAM_TOOL_CALLS};
pub use tokens::{estimate_count_tokens_body, estimate_input_tokens};

use super::errors::ApiErrorKind;

/// One server-sent event to write to the client: optional `event:` name and the `data:`
/// payload (a JSON document, or `[DONE]` for OpenAI's terminator). Framing is the SSE
/// encoder's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Why a body could not be converted or inspected. Request errors are the client's fault
/// (400); response errors are the upstream's (502); see [`ConvertError::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The request body is not valid JSON or does not have the protocol's shape.
    #[error("invalid request body: {0}")]
    InvalidRequest(String),
    /// The request uses a feature the other protocol cannot express.
    #[error("unsupported in cross-protocol routing: {0}")]
    Unsupported(String),
    /// The upstream's response body is not valid JSON or does not have the protocol's shape.
    #[error("invalid upstream response: {0}")]
    InvalidResponse(String),
}

impl ConvertError {
    /// The status class to answer with: 400 for request problems, 502 for upstream ones.
    pub fn kind(&self) -> ApiErrorKind {
        match self {
            ConvertError::InvalidRequest(_) | ConvertError::Unsupported(_) => {
                ApiErrorKind::InvalidRequest
            }
            ConvertError::InvalidResponse(_) => ApiErrorKind::BadGateway,
        }
    }
}

/// Anthropic tool-use ids must match `^[a-zA-Z0-9_-]+$`; OpenAI-compatible servers are
/// less strict. Every other character becomes `_`; an empty id becomes `toolu_<fallback>`.
/// Deterministic, so a tool call and its result keep matching ids.
pub(crate) fn anthropic_safe_tool_id(id: &str, fallback: usize) -> String {
    if id.is_empty() {
        return format!("toolu_{fallback}");
    }
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// OpenAI `finish_reason` -> Anthropic `stop_reason`.
pub(crate) fn finish_reason_to_stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic `stop_reason` -> OpenAI `finish_reason`.
pub(crate) fn stop_reason_to_finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}
