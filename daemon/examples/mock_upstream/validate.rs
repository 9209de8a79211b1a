//! Request validation as strict as the real providers: what OpenAI, Anthropic and Google refuse,
//! the mock refuses too, with their wording, so a conversion a real provider would reject fails
//! the test that drives it. One function per request shape; each returns the 400 message.
//! No HTTP, no answers here.

use http::HeaderMap;
use serde_json::Value;

/// Top-level fields the Chat Completions API accepts.
const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "prompt_cache_retention",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
];

const CHAT_ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Top-level fields the Messages API accepts (betas included).
const MESSAGES_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_k",
    "top_p",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "output_config",
    "output_format",
    "inference_geo",
    "speed",
];

/// Top-level fields the Responses API accepts.
const RESPONSES_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "store",
    "stream",
    "stream_options",
    "include",
    "max_output_tokens",
    "max_tool_calls",
    "metadata",
    "previous_response_id",
    "prompt",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "service_tier",
    "temperature",
    "text",
    "top_logprobs",
    "top_p",
    "truncation",
    "user",
    "background",
    "conversation",
    "context_management",
    "client_metadata",
];

/// Top-level fields of a Gemini `GenerateContentRequest` (camelCase; snake_case is accepted too).
const GEMINI_FIELDS: &[&str] = &[
    "model",
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
    "labels",
];

/// Fields of Gemini's `generationConfig`.
const GEMINI_GENERATION_FIELDS: &[&str] = &[
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "_responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
    "mediaResolution",
];

/// Reasoning models refuse `max_tokens` (and want `max_completion_tokens`): the o-series and
/// gpt-5 (`gpt-5`, `gpt-5-mini`, `gpt-5.1`), not `gpt-5-chat`.
pub fn is_openai_reasoning_model(model: &str) -> bool {
    let id = model.rsplit('/').next().unwrap_or(model);
    ["o1", "o3", "o4", "gpt-5"].iter().any(|family| {
        id.strip_prefix(family)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-') || rest.starts_with('.'))
    }) && !id.starts_with("gpt-5-chat")
}

fn unknown_field<'a>(request: &'a Value, known: &[&str]) -> Option<&'a str> {
    request
        .as_object()?
        .keys()
        .find(|k| !known.contains(&k.as_str()))
        .map(String::as_str)
}

/// `POST /v1/chat/completions`, as OpenAI checks it.
pub fn validate_chat_request(request: &Value) -> Result<(), String> {
    if let Some(field) = unknown_field(request, CHAT_FIELDS) {
        return Err(format!("Unrecognized request argument supplied: {field}"));
    }
    for (i, message) in request
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        if !CHAT_ROLES.contains(&role) {
            return Err(format!(
                "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'. (param: messages[{i}].role)"
            ));
        }
    }
    let model = request.get("model").and_then(Value::as_str).unwrap_or("");
    if is_openai_reasoning_model(model) && request.get("max_tokens").is_some() {
        return Err("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.".into());
    }
    Ok(())
}

/// `POST /v1/messages`, as Anthropic checks it: unknown fields, roles other than user and
/// assistant (a `system` message inside `messages` only with the mid-conversation-system beta).
pub fn validate_messages_request(request: &Value, headers: &HeaderMap) -> Result<(), String> {
    if let Some(field) = unknown_field(request, MESSAGES_FIELDS) {
        return Err(format!("{field}: Extra inputs are not permitted"));
    }
    let system_beta = headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|b| b.trim().starts_with("mid-conversation-system"));
    for (i, message) in request
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match message.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            Some("system") if system_beta => {}
            other => {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant' (got {})",
                    other.unwrap_or("nothing")
                ))
            }
        }
    }
    Ok(())
}

/// `POST /v1/responses`, as OpenAI checks it.
pub fn validate_responses_request(request: &Value) -> Result<(), String> {
    if let Some(field) = unknown_field(request, RESPONSES_FIELDS) {
        return Err(format!("Unknown parameter: '{field}'."));
    }
    for (i, item) in request
        .get("input")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(role) = item.get("role").and_then(Value::as_str) {
            if !["user", "assistant", "system", "developer"].contains(&role) {
                return Err(format!(
                    "Invalid value: '{role}'. Supported values are: 'assistant', 'system', 'developer', and 'user'. (param: input[{i}].role)"
                ));
            }
        }
    }
    Ok(())
}

/// snake_case to camelCase (Google's JSON mapping accepts both spellings of every field).
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' && !out.is_empty() {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn gemini_unknown(object: &Value, known: &[&str]) -> Option<String> {
    object
        .as_object()?
        .keys()
        .find(|k| !known.contains(&camel(k).as_str()))
        .cloned()
}

/// `generateContent` / `streamGenerateContent` bodies, as Google checks them: unknown fields
/// (top level and `generationConfig`), roles other than `user` and `model`.
pub fn validate_gemini_request(request: &Value) -> Result<(), String> {
    if let Some(field) = gemini_unknown(request, GEMINI_FIELDS) {
        return Err(format!(
            "Invalid JSON payload received. Unknown name \"{field}\": Cannot find field."
        ));
    }
    if let Some(config) = request
        .get("generationConfig")
        .or_else(|| request.get("generation_config"))
    {
        if let Some(field) = gemini_unknown(config, GEMINI_GENERATION_FIELDS) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{field}\" at 'generation_config': Cannot find field."
            ));
        }
    }
    for content in request
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(role) = content.get("role").and_then(Value::as_str) {
            if role != "user" && role != "model" {
                return Err("Please use a valid role: user, model.".into());
            }
        }
    }
    Ok(())
}

/// `countTokens` bodies, as Google checks them: `contents` or a whole
/// `generateContentRequest` (itself a valid request), not both, nothing else.
pub fn validate_gemini_count_tokens(request: &Value) -> Result<(), String> {
    if let Some(field) = gemini_unknown(request, &["contents", "generateContentRequest"]) {
        return Err(format!(
            "Invalid JSON payload received. Unknown name \"{field}\": Cannot find field."
        ));
    }
    let inner = request
        .get("generateContentRequest")
        .or_else(|| request.get("generate_content_request"));
    match (request.get("contents"), inner) {
        (Some(_), Some(_)) => {
            Err("contents and generate_content_request are mutually exclusive".into())
        }
        (_, Some(inner)) => validate_gemini_request(inner),
        (contents, None) => validate_gemini_request(&serde_json::json!({ "contents": contents })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_models_refuse_max_tokens() {
        let bad = serde_json::json!({"model": "gpt-5-mini", "messages": [], "max_tokens": 10});
        assert!(validate_chat_request(&bad).is_err());
        let ok = serde_json::json!({"model": "gpt-4o-mini", "messages": [], "max_tokens": 10});
        assert!(validate_chat_request(&ok).is_ok());
    }

    #[test]
    fn gemini_accepts_both_spellings_and_refuses_unknown() {
        let ok = serde_json::json!({"contents": [], "system_instruction": {}, "generationConfig": {"max_output_tokens": 3}});
        assert!(validate_gemini_request(&ok).is_ok());
        let bad = serde_json::json!({"contents": [], "foo": 1});
        assert!(validate_gemini_request(&bad).is_err());
        let role = serde_json::json!({"contents": [{"role": "assistant", "parts": []}]});
        assert!(validate_gemini_request(&role).is_err());
    }

    #[test]
    fn gemini_count_tokens_takes_one_form() {
        let ok = serde_json::json!({"contents": [{"parts": [{"text": "a"}]}]});
        assert!(validate_gemini_count_tokens(&ok).is_ok());
        let inner =
            serde_json::json!({"generateContentRequest": {"model": "models/g", "contents": []}});
        assert!(validate_gemini_count_tokens(&inner).is_ok());
        let both = serde_json::json!({"contents": [], "generateContentRequest": {"contents": []}});
        assert!(validate_gemini_count_tokens(&both).is_err());
        let unknown = serde_json::json!({"contents": [], "model": "g"});
        assert!(validate_gemini_count_tokens(&unknown).is_err());
    }
}
