//! What the real APIs refuse in the request shapes issue 12 touches, checked apart from the
//! answer logic so other strictness rules can join without touching it: unknown top-level
//! fields, unknown message roles, `max_tokens` on OpenAI reasoning models (o-series,
//! gpt-5), roles other than user/assistant in Anthropic `messages`.

use serde_json::Value;

/// Top-level fields OpenAI's Chat Completions accepts.
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

/// Top-level fields Anthropic's Messages API accepts (betas included).
const MESSAGES_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "metadata",
    "stream",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "output_config",
];

/// OpenAI's reasoning families refuse `max_tokens`.
fn is_openai_reasoning_model(model: &str) -> bool {
    let id = model.rsplit('/').next().unwrap_or(model);
    ["o1", "o3", "o4", "gpt-5"].iter().any(|family| {
        id.strip_prefix(family)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-') || rest.starts_with('.'))
    }) && !id.starts_with("gpt-5-chat")
}

/// A Chat Completions request the real API would refuse: the message it answers.
pub fn check_chat_request(request: &Value) -> Result<(), String> {
    let Some(object) = request.as_object() else {
        return Ok(());
    };
    if let Some(key) = object.keys().find(|k| !CHAT_FIELDS.contains(&k.as_str())) {
        return Err(format!("Unrecognized request argument supplied: {key}"));
    }
    for (index, message) in request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        if ![
            "system",
            "developer",
            "user",
            "assistant",
            "tool",
            "function",
        ]
        .contains(&role)
        {
            return Err(format!(
                "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', \
                 'function', 'tool', and 'developer'. (messages[{index}].role)"
            ));
        }
    }
    let model = request["model"].as_str().unwrap_or("");
    if is_openai_reasoning_model(model) && object.contains_key("max_tokens") {
        return Err(
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use \
                    'max_completion_tokens' instead."
                .into(),
        );
    }
    Ok(())
}

/// A Messages request the real API would refuse: the message it answers.
pub fn check_messages_request(request: &Value) -> Result<(), String> {
    let Some(object) = request.as_object() else {
        return Ok(());
    };
    if let Some(key) = object
        .keys()
        .find(|k| !MESSAGES_FIELDS.contains(&k.as_str()))
    {
        return Err(format!("{key}: Extra inputs are not permitted"));
    }
    for (index, message) in request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        // `system` is accepted in `messages` by the API's newer shape (Claude Code sends it).
        if !["user", "assistant", "system"].contains(&role) {
            return Err(format!(
                "messages.{index}: Input tag '{role}' found using 'role' does not match any of \
                 the expected tags: 'user', 'assistant'"
            ));
        }
    }
    Ok(())
}
