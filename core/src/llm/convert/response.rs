//! Non-streaming response conversion: OpenAI chat completion <-> Anthropic message.

use super::request::arguments_json;
use super::{
    anthropic_safe_tool_id, finish_reason_to_stop_reason, stop_reason_to_finish_reason,
    ConvertError,
};
use crate::llm::anthropic as an;
use crate::llm::openai as oa;
use serde_json::Value;

/// Parses an upstream OpenAI response body and converts it; the result is serialized JSON.
pub fn openai_response_body_to_anthropic(body: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let response: oa::ChatCompletion = serde_json::from_slice(body)
        .map_err(|err| ConvertError::InvalidResponse(err.to_string()))?;
    let converted = openai_response_to_anthropic(response)?;
    serde_json::to_vec(&converted).map_err(|err| ConvertError::InvalidResponse(err.to_string()))
}

/// Parses an upstream Anthropic response body and converts it; the result is serialized
/// JSON. `created` is the Unix time (seconds) to report, supplied by the caller.
pub fn anthropic_response_body_to_openai(
    body: &[u8],
    created: u64,
) -> Result<Vec<u8>, ConvertError> {
    let response: an::MessagesResponse = serde_json::from_slice(body)
        .map_err(|err| ConvertError::InvalidResponse(err.to_string()))?;
    let converted = anthropic_response_to_openai(response, created);
    serde_json::to_vec(&converted).map_err(|err| ConvertError::InvalidResponse(err.to_string()))
}

/// OpenAI chat completion -> Anthropic message. Uses the first choice (there is one, as
/// requests are sent with `n` = 1); a response without choices is an upstream error.
///
/// Reasoning text (`reasoning_content` or `reasoning`, see [`oa::reasoning_text`]) becomes a
/// leading thinking block with an empty signature. Text (and a refusal) become text blocks, tool calls `tool_use` blocks whose `input` is
/// the parsed arguments (arguments that are not a JSON object become `{}`: Anthropic
/// requires an object). `finish_reason` -> `stop_reason`: stop -> end_turn, length ->
/// max_tokens, tool_calls -> tool_use, content_filter -> refusal (`stop_sequence` is always
/// null: OpenAI does not say which stop string matched). Usage: `input_tokens` =
/// `prompt_tokens` minus cached tokens, reported as `cache_read_input_tokens`.
pub fn openai_response_to_anthropic(
    response: oa::ChatCompletion,
) -> Result<an::MessagesResponse, ConvertError> {
    let Some(choice) = response.choices.into_iter().next() else {
        return Err(ConvertError::InvalidResponse(
            "chat completion has no choices".into(),
        ));
    };
    let mut content = Vec::new();
    if let Some(reasoning) =
        oa::reasoning_text(&choice.message.reasoning_content, &choice.message.reasoning)
    {
        // OpenAI-compatible servers do not sign their reasoning; the signature stays empty.
        content.push(an::ContentBlock::Thinking {
            thinking: reasoning.to_owned(),
            signature: String::new(),
        });
    }
    if let Some(text) = choice.message.content.filter(|t| !t.is_empty()) {
        content.push(an::ContentBlock::Text { text });
    }
    if let Some(refusal) = choice.message.refusal.filter(|t| !t.is_empty()) {
        content.push(an::ContentBlock::Text { text: refusal });
    }
    for (index, call) in choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        content.push(an::ContentBlock::ToolUse {
            id: anthropic_safe_tool_id(&call.id, index),
            name: call.function.name,
            input: arguments_object(&call.function.arguments),
        });
    }
    let usage = response.usage.unwrap_or_default();
    let cached = usage
        .prompt_tokens_details
        .and_then(|details| details.cached_tokens)
        .unwrap_or(0)
        .min(usage.prompt_tokens);
    Ok(an::MessagesResponse {
        id: response.id,
        kind: "message".into(),
        role: an::Role::Assistant,
        content,
        model: response.model,
        stop_reason: Some(finish_reason_to_stop_reason(choice.finish_reason.as_deref()).into()),
        stop_sequence: None,
        usage: an::Usage {
            input_tokens: usage.prompt_tokens - cached,
            output_tokens: usage.completion_tokens,
            cache_creation_input_tokens: None,
            cache_read_input_tokens: (cached > 0).then_some(cached),
        },
    })
}

/// Tool-call arguments text as an object; anything else becomes `{}`.
pub(crate) fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ => Value::Object(serde_json::Map::new()),
    }
}

/// Anthropic message -> OpenAI chat completion with one choice. `created` is the Unix time
/// (seconds) to report.
///
/// Text blocks are concatenated into `content` (`null` when there is none), `tool_use`
/// blocks become `tool_calls`; thinking blocks become `reasoning_content` (the field
/// OpenAI-compatible reasoning servers use); redacted thinking and other blocks are dropped. `stop_reason` ->
/// `finish_reason`: end_turn / stop_sequence / pause_turn / null -> stop, max_tokens ->
/// length, tool_use -> tool_calls, refusal -> content_filter. Usage: `prompt_tokens` =
/// input + cache read + cache creation tokens (OpenAI counts cached tokens in the prompt),
/// with the cache reads as `prompt_tokens_details.cached_tokens`.
pub fn anthropic_response_to_openai(
    response: an::MessagesResponse,
    created: u64,
) -> oa::ChatCompletion {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in response.content {
        match block {
            an::ContentBlock::Text { text: piece } => text.push_str(&piece),
            an::ContentBlock::Thinking { thinking, .. } => reasoning.push_str(&thinking),
            an::ContentBlock::ToolUse { id, name, input } => tool_calls.push(oa::ToolCall {
                id,
                kind: "function".into(),
                function: oa::FunctionCall {
                    name,
                    arguments: arguments_json(&input),
                },
            }),
            _ => {}
        }
    }
    let usage = &response.usage;
    let cache_read = usage.cache_read_input_tokens.unwrap_or(0);
    let prompt_tokens = usage
        .input_tokens
        .saturating_add(cache_read)
        .saturating_add(usage.cache_creation_input_tokens.unwrap_or(0));
    oa::ChatCompletion {
        id: response.id,
        object: "chat.completion".into(),
        created,
        model: response.model,
        choices: vec![oa::Choice {
            index: 0,
            message: oa::ResponseMessage {
                role: "assistant".into(),
                content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                refusal: None,
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                reasoning: None,
            },
            finish_reason: Some(
                stop_reason_to_finish_reason(response.stop_reason.as_deref()).into(),
            ),
            logprobs: None,
        }],
        usage: Some(oa::Usage {
            prompt_tokens,
            completion_tokens: usage.output_tokens,
            total_tokens: prompt_tokens.saturating_add(usage.output_tokens),
            prompt_tokens_details: (cache_read > 0).then_some(oa::PromptTokensDetails {
                cached_tokens: Some(cache_read),
            }),
        }),
        system_fingerprint: None,
    }
}
