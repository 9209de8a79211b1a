//! Response conversion: Gemini `GenerateContentResponse` <-> OpenAI chat completion.

use super::{Candidate, Content, FunctionCall, GenerateContentResponse, Part, UsageMetadata};
use crate::llm::convert::ConvertError;
use crate::llm::openai as oa;
use serde_json::Value;

/// Parses an OpenAI chat completion body and converts it (see [`openai_response_to_gemini`]).
pub fn openai_response_body_to_gemini(body: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let response: oa::ChatCompletion = serde_json::from_slice(body)
        .map_err(|err| ConvertError::InvalidResponse(err.to_string()))?;
    serde_json::to_vec(&openai_response_to_gemini(response))
        .map_err(|err| ConvertError::InvalidResponse(err.to_string()))
}

/// Parses a Gemini answer body and converts it (see [`gemini_response_to_openai`]).
pub fn gemini_response_body_to_openai(
    body: &[u8],
    model: &str,
    created: u64,
) -> Result<Vec<u8>, ConvertError> {
    let response: GenerateContentResponse = serde_json::from_slice(body)
        .map_err(|err| ConvertError::InvalidResponse(err.to_string()))?;
    serde_json::to_vec(&gemini_response_to_openai(response, model, created))
        .map_err(|err| ConvertError::InvalidResponse(err.to_string()))
}

/// OpenAI `finish_reason` -> Gemini `finishReason`.
pub(crate) fn finish_reason_to_gemini(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "MAX_TOKENS",
        Some("content_filter") => "SAFETY",
        _ => "STOP",
    }
}

/// Gemini `finishReason` -> OpenAI `finish_reason` (`tool_calls` when the answer calls tools).
pub(crate) fn finish_reason_to_openai(finish_reason: Option<&str>, calls: bool) -> &'static str {
    if calls {
        return "tool_calls";
    }
    match finish_reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY",
        ) => "content_filter",
        _ => "stop",
    }
}

/// Chat usage -> `usageMetadata`.
pub(crate) fn usage_to_gemini(usage: &oa::Usage) -> UsageMetadata {
    UsageMetadata {
        prompt_token_count: usage.prompt_tokens,
        candidates_token_count: Some(usage.completion_tokens),
        total_token_count: if usage.total_tokens > 0 {
            usage.total_tokens
        } else {
            usage.prompt_tokens + usage.completion_tokens
        },
        cached_content_token_count: usage
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens),
        thoughts_token_count: None,
    }
}

/// `usageMetadata` -> chat usage (thought tokens count as completion tokens, as OpenAI counts
/// reasoning tokens).
pub(crate) fn usage_to_openai(usage: &UsageMetadata) -> oa::Usage {
    let completion =
        usage.candidates_token_count.unwrap_or(0) + usage.thoughts_token_count.unwrap_or(0);
    oa::Usage {
        prompt_tokens: usage.prompt_token_count,
        completion_tokens: completion,
        total_tokens: usage
            .total_token_count
            .max(usage.prompt_token_count + completion),
        prompt_tokens_details: usage.cached_content_token_count.map(|cached| {
            oa::PromptTokensDetails {
                cached_tokens: Some(cached),
            }
        }),
    }
}

/// A tool call's arguments as Gemini `args` (a JSON object; anything else is wrapped).
pub(crate) fn arguments_to_args(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(serde_json::Map::new());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        Ok(other) => serde_json::json!({ "value": other }),
        Err(_) => serde_json::json!({ "arguments": arguments }),
    }
}

/// OpenAI chat completion -> Gemini answer: each choice a candidate (text part, then one
/// `functionCall` part per tool call, with its id), `finish_reason` -> `finishReason`,
/// usage -> `usageMetadata`, `model` -> `modelVersion`, `id` -> `responseId`.
pub fn openai_response_to_gemini(response: oa::ChatCompletion) -> GenerateContentResponse {
    let candidates = response
        .choices
        .into_iter()
        .map(|choice| {
            let mut parts = Vec::new();
            if let Some(text) = choice.message.content.filter(|t| !t.is_empty()) {
                parts.push(Part::text(text));
            }
            for call in choice.message.tool_calls.unwrap_or_default() {
                parts.push(Part {
                    function_call: Some(FunctionCall {
                        id: Some(call.id),
                        name: call.function.name,
                        args: Some(arguments_to_args(&call.function.arguments)),
                    }),
                    ..Part::default()
                });
            }
            Candidate {
                content: Some(Content {
                    role: Some("model".into()),
                    parts,
                }),
                finish_reason: Some(
                    finish_reason_to_gemini(choice.finish_reason.as_deref()).to_owned(),
                ),
                index: Some(choice.index),
            }
        })
        .collect();
    GenerateContentResponse {
        candidates,
        usage_metadata: response.usage.as_ref().map(usage_to_gemini),
        model_version: Some(response.model),
        response_id: Some(response.id),
    }
}

/// Gemini answer -> OpenAI chat completion: each candidate a choice (text parts joined, thought
/// parts dropped, `functionCall` parts -> `tool_calls` with the call's id or `call_<n>`),
/// `finishReason` -> `finish_reason` (`tool_calls` when it calls tools), `usageMetadata` ->
/// usage. `model` and `created` come from the caller.
pub fn gemini_response_to_openai(
    response: GenerateContentResponse,
    model: &str,
    created: u64,
) -> oa::ChatCompletion {
    let mut counter = 0usize;
    let choices = response
        .candidates
        .into_iter()
        .enumerate()
        .map(|(i, candidate)| {
            let parts = candidate.content.map(|c| c.parts).unwrap_or_default();
            let mut text = String::new();
            let mut thoughts = String::new();
            let mut calls = Vec::new();
            for part in parts {
                if part.thought == Some(true) {
                    // Thought summaries come back as reasoning text.
                    if let Some(t) = part.text {
                        thoughts.push_str(&t);
                    }
                    continue;
                }
                if let Some(t) = part.text {
                    text.push_str(&t);
                }
                if let Some(call) = part.function_call {
                    counter += 1;
                    calls.push(oa::ToolCall {
                        id: call
                            .id
                            .filter(|id| !id.is_empty())
                            .unwrap_or_else(|| format!("call_{counter}")),
                        kind: "function".into(),
                        function: oa::FunctionCall {
                            name: call.name,
                            arguments: call
                                .args
                                .unwrap_or(Value::Object(serde_json::Map::new()))
                                .to_string(),
                        },
                    });
                }
            }
            let finish =
                finish_reason_to_openai(candidate.finish_reason.as_deref(), !calls.is_empty());
            oa::Choice {
                index: candidate.index.unwrap_or(i as u32),
                message: oa::ResponseMessage {
                    role: "assistant".into(),
                    content: (!text.is_empty() || calls.is_empty()).then_some(text),
                    tool_calls: (!calls.is_empty()).then_some(calls),
                    refusal: None,
                    reasoning_content: (!thoughts.is_empty()).then_some(thoughts),
                    reasoning: None,
                },
                finish_reason: Some(finish.to_owned()),
                logprobs: None,
            }
        })
        .collect();
    oa::ChatCompletion {
        id: response
            .response_id
            .map(|id| format!("chatcmpl-{id}"))
            .unwrap_or_else(|| "chatcmpl-gemini".into()),
        object: "chat.completion".into(),
        created,
        model: model.to_owned(),
        choices,
        usage: response.usage_metadata.as_ref().map(usage_to_openai),
        system_fingerprint: None,
    }
}
