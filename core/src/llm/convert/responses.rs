//! The Responses API served on upstreams that speak only Chat Completions (or Anthropic
//! Messages, through Chat Completions): request, response and stream conversion.
//!
//! Driving loop of the stream converter (the caller owns the SSE parser):
//! ```text
//! let mut converter = ChatToResponsesStream::new(model, created);
//! for each upstream chat chunk (data):  write converter.handle_event(None, data)
//! when the upstream body ends:          write converter.finish()
//! ```
//! For an Anthropic upstream the caller chains [`super::AnthropicToOpenAiStream`] in front.
//!
//! Memory: unlike the chat <-> messages converters this one keeps the text of the open
//! output items, because the Responses API repeats it in `*.done` events and in
//! `response.completed`; bounded by [`MAX_RESPONSES_STREAM_TEXT`] (then the stream fails).

use super::{ConvertError, StreamEvent, MAX_STREAM_TOOL_CALLS};
use crate::llm::errors::{to_json, ApiErrorKind};
use crate::llm::openai as oa;
use crate::llm::responses as rs;
use serde_json::{json, Map, Value};

/// Most text (all items together) one converted Responses stream keeps.
pub const MAX_RESPONSES_STREAM_TEXT: usize = 64 << 20;

/// Parses a Responses request body and converts it to a Chat Completions request for
/// `upstream_model`, with that model's parameter rules and what the upstream adds (its
/// output cap, its own rule for the model) applied; serialized JSON.
pub fn responses_request_body_to_chat(
    body: &[u8],
    upstream_model: &str,
    upstream: crate::llm::model_rules::UpstreamRules<'_>,
) -> Result<Vec<u8>, ConvertError> {
    let mut chat = responses_request_body_to_chat_request(body)?;
    chat.model = upstream_model.to_owned();
    crate::llm::model_rules::apply_openai_model_rules_for(&mut chat, upstream);
    serde_json::to_vec(&chat)
        .and_then(|body| upstream.drop_params(body))
        .map_err(|err| ConvertError::InvalidRequest(err.to_string()))
}

/// Parses a Responses request body and converts it to an Anthropic Messages request for
/// `upstream_model` (through Chat Completions); serialized JSON.
pub fn responses_request_body_to_anthropic(
    body: &[u8],
    upstream_model: &str,
) -> Result<Vec<u8>, ConvertError> {
    let mut chat = responses_request_body_to_chat_request(body)?;
    chat.model = upstream_model.to_owned();
    let anthropic = super::openai_request_to_anthropic(chat)?;
    serde_json::to_vec(&anthropic).map_err(|err| ConvertError::InvalidRequest(err.to_string()))
}

fn responses_request_body_to_chat_request(
    body: &[u8],
) -> Result<oa::ChatCompletionRequest, ConvertError> {
    let request: rs::ResponsesRequest = serde_json::from_slice(body)
        .map_err(|err| ConvertError::InvalidRequest(err.to_string()))?;
    responses_request_to_chat(request)
}

fn invalid(message: String) -> ConvertError {
    ConvertError::InvalidRequest(message)
}

/// Responses request -> Chat Completions request.
///
/// - `previous_response_id` and `item_reference` items need the server-side storage only
///   OpenAI has: 400 naming the alternative (send the whole conversation, `store: false`).
/// - `instructions` -> a leading `system` message; `input` as a string -> one user message.
/// - `message` items (with or without `type`), roles user/system/developer (sent as
///   `system`)/assistant:
///   `input_text`/`output_text`/`refusal` -> text, `input_image` (URL or data URL) -> image
///   part, `input_file` with `file_data` -> file part (`file_id`/`file_url`: 400).
/// - `function_call` -> an assistant tool call (merged into the preceding assistant
///   message), `function_call_output` -> a `tool` message; `custom_tool_call` (free-form
///   tools) -> a tool call with arguments `{"input": ...}`, its output likewise a `tool`
///   message.
/// - Dropped: `reasoning` items (Chat Completions has no field for them), items of hosted
///   tools (`web_search_call`, `local_shell_call`, ...), and every tool that is not
///   `type: "function"` (hosted tools such as `web_search`, `file_search`, `local_shell`,
///   free-form `custom` tools): only OpenAI runs those. `text.format`, `include`, `store`,
///   `metadata`, `truncation`, `prompt_cache_key` are dropped.
/// - `tool_choice` auto/none/required and `{type: function, name}` map; other forms -> auto.
/// - `reasoning.effort` -> `reasoning_effort`; `max_output_tokens` -> `max_tokens`;
///   `user`/`safety_identifier` -> `user`; `stream` also asks for usage.
pub fn responses_request_to_chat(
    request: rs::ResponsesRequest,
) -> Result<oa::ChatCompletionRequest, ConvertError> {
    if request.previous_response_id.is_some() {
        return Err(ConvertError::Unsupported(
            "`previous_response_id` needs responses stored on the server, which only an \
             OpenAI upstream keeps; send the whole conversation in `input` (with \
             `store: false`) instead"
                .into(),
        ));
    }
    let mut messages: Vec<oa::ChatMessage> = Vec::new();
    if let Some(instructions) = request.instructions.filter(|i| !i.is_empty()) {
        messages.push(oa::ChatMessage::System {
            content: oa::MessageContent::Text(instructions),
            name: None,
        });
    }
    match request.input {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(oa::ChatMessage::User {
            content: oa::MessageContent::Text(text),
            name: None,
        }),
        Some(Value::Array(items)) => {
            for (index, item) in items.into_iter().enumerate() {
                push_input_item(&mut messages, item, index)?;
            }
        }
        Some(_) => {
            return Err(invalid(
                "`input` must be a string or a list of items".into(),
            ))
        }
    }

    let mut tools = Vec::new();
    for tool in request.tools.unwrap_or_default() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            continue;
        }
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            return Err(invalid("a function tool has no `name`".into()));
        };
        tools.push(oa::Tool {
            kind: "function".into(),
            function: oa::FunctionDefinition {
                name: name.to_owned(),
                description: tool
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                parameters: tool.get("parameters").filter(|p| !p.is_null()).cloned(),
                strict: tool.get("strict").and_then(Value::as_bool),
            },
        });
    }
    let tool_choice = match request.tool_choice {
        Some(Value::String(mode)) if ["auto", "none", "required"].contains(&mode.as_str()) => {
            Some(oa::ToolChoice::Mode(mode))
        }
        Some(Value::Object(choice))
            if choice.get("type").and_then(Value::as_str) == Some("function") =>
        {
            choice.get("name").and_then(Value::as_str).map(|name| {
                oa::ToolChoice::Named(oa::NamedToolChoice {
                    kind: "function".into(),
                    function: oa::NamedFunction { name: name.into() },
                })
            })
        }
        Some(Value::Null) | None => None,
        Some(_) => Some(oa::ToolChoice::Mode("auto".into())),
    };
    let has_tools = !tools.is_empty();
    let streaming = request.stream == Some(true);
    Ok(oa::ChatCompletionRequest {
        model: request.model,
        messages,
        tool_choice: if has_tools { tool_choice } else { None },
        parallel_tool_calls: if has_tools {
            request.parallel_tool_calls.filter(|p| !p)
        } else {
            None
        },
        tools: has_tools.then_some(tools),
        max_tokens: request.max_output_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        stream: request.stream,
        stream_options: streaming.then_some(oa::StreamOptions {
            include_usage: Some(true),
        }),
        user: request.safety_identifier.or(request.user),
        reasoning_effort: request.reasoning.and_then(|r| r.effort),
        ..Default::default()
    })
}

fn push_input_item(
    messages: &mut Vec<oa::ChatMessage>,
    item: Value,
    index: usize,
) -> Result<(), ConvertError> {
    let kind = item.get("type").and_then(Value::as_str);
    let has_role = item.get("role").is_some();
    match kind {
        Some("message") | None if has_role => push_message_item(messages, &item, index),
        Some("function_call") | Some("custom_tool_call") => {
            let call_id = string_field(&item, "call_id")
                .or_else(|| string_field(&item, "id"))
                .unwrap_or_default();
            let name = string_field(&item, "name").unwrap_or_default();
            let arguments = if kind == Some("custom_tool_call") {
                to_json(&json!({ "input": item.get("input").cloned().unwrap_or(Value::Null) }))
            } else {
                string_field(&item, "arguments").unwrap_or_else(|| "{}".into())
            };
            let call = oa::ToolCall {
                id: call_id,
                kind: "function".into(),
                function: oa::FunctionCall { name, arguments },
            };
            if let Some(oa::ChatMessage::Assistant { tool_calls, .. }) = messages.last_mut() {
                tool_calls.get_or_insert_with(Vec::new).push(call);
            } else {
                messages.push(oa::ChatMessage::Assistant {
                    content: None,
                    tool_calls: Some(vec![call]),
                    refusal: None,
                    name: None,
                });
            }
            Ok(())
        }
        Some("function_call_output") | Some("custom_tool_call_output") => {
            let call_id = string_field(&item, "call_id").unwrap_or_default();
            let output = match item.get("output") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                Some(other) if !other.is_null() => to_json(other),
                _ => String::new(),
            };
            messages.push(oa::ChatMessage::Tool {
                content: oa::MessageContent::Text(output),
                tool_call_id: call_id,
            });
            Ok(())
        }
        Some("item_reference") => Err(ConvertError::Unsupported(format!(
            "input[{index}]: `item_reference` needs items stored on the server, which only an \
             OpenAI upstream keeps; send the item itself"
        ))),
        // Reasoning items, hosted-tool items and anything newer: no Chat equivalent.
        _ => Ok(()),
    }
}

fn string_field(item: &Value, key: &str) -> Option<String> {
    item.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn push_message_item(
    messages: &mut Vec<oa::ChatMessage>,
    item: &Value,
    index: usize,
) -> Result<(), ConvertError> {
    let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
    let mut parts = Vec::new();
    match item.get("content") {
        Some(Value::String(text)) => parts.push(oa::ContentPart::Text { text: text.clone() }),
        Some(Value::Array(items)) => {
            for part in items {
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        if let Some(text) = part.get("text").and_then(Value::as_str) {
                            parts.push(oa::ContentPart::Text { text: text.into() });
                        }
                    }
                    Some("refusal") => {
                        if let Some(text) = part.get("refusal").and_then(Value::as_str) {
                            parts.push(oa::ContentPart::Text { text: text.into() });
                        }
                    }
                    Some("input_image") => match part.get("image_url").and_then(Value::as_str) {
                        Some(url) => parts.push(oa::ContentPart::ImageUrl {
                            image_url: oa::ImageUrl {
                                url: url.into(),
                                detail: string_field(part, "detail"),
                            },
                        }),
                        None => {
                            return Err(ConvertError::Unsupported(format!(
                                "input[{index}]: an `input_image` by `file_id` refers to \
                                 OpenAI's file storage; send `image_url` instead"
                            )))
                        }
                    },
                    Some("input_file") => match part.get("file_data").and_then(Value::as_str) {
                        Some(data) => parts.push(oa::ContentPart::File {
                            file: oa::FileInput {
                                filename: string_field(part, "filename"),
                                file_data: Some(data.into()),
                                file_id: None,
                            },
                        }),
                        None => {
                            return Err(ConvertError::Unsupported(format!(
                                "input[{index}]: an `input_file` by `file_id` or `file_url` \
                                 cannot be sent to this upstream; send `file_data` instead"
                            )))
                        }
                    },
                    _ => {}
                }
            }
        }
        _ => {}
    }
    let content = match parts.as_slice() {
        [oa::ContentPart::Text { text }] => oa::MessageContent::Text(text.clone()),
        _ => oa::MessageContent::Parts(parts),
    };
    let message = match role {
        "system" => oa::ChatMessage::System {
            content,
            name: None,
        },
        // Many chat-only servers (and their chat templates) know no `developer` role;
        // OpenAI reads `system` as `developer` for the models that distinguish them.
        "developer" => oa::ChatMessage::System {
            content,
            name: None,
        },
        "assistant" => oa::ChatMessage::Assistant {
            content: Some(oa::MessageContent::Text(content.joined_text())),
            tool_calls: None,
            refusal: None,
            name: None,
        },
        "user" => oa::ChatMessage::User {
            content,
            name: None,
        },
        other => {
            return Err(invalid(format!(
                "input[{index}]: unknown role {other:?} (expected user, assistant, system or \
                 developer)"
            )))
        }
    };
    messages.push(message);
    Ok(())
}

/// Parses an upstream Chat Completions body and converts it to a Responses `response`
/// object; `created` is the Unix time to report.
pub fn chat_response_body_to_responses(body: &[u8], created: u64) -> Result<Vec<u8>, ConvertError> {
    let chat: oa::ChatCompletion = serde_json::from_slice(body)
        .map_err(|err| ConvertError::InvalidResponse(err.to_string()))?;
    let response = chat_response_to_responses(chat, created)?;
    Ok(to_json(&response).into_bytes())
}

/// Parses an upstream Anthropic Messages body and converts it to a Responses `response`
/// object (through Chat Completions).
pub fn anthropic_response_body_to_responses(
    body: &[u8],
    created: u64,
) -> Result<Vec<u8>, ConvertError> {
    let message: crate::llm::anthropic::MessagesResponse = serde_json::from_slice(body)
        .map_err(|err| ConvertError::InvalidResponse(err.to_string()))?;
    let chat = super::anthropic_response_to_openai(message, created);
    let response = chat_response_to_responses(chat, created)?;
    Ok(to_json(&response).into_bytes())
}

/// Chat completion -> Responses `response` object: reasoning text -> a `reasoning` item
/// (as its summary), text -> a `message` item with one `output_text` part, tool calls ->
/// `function_call` items; `finish_reason: length` -> `status: incomplete` with
/// `incomplete_details.reason: max_output_tokens`.
pub fn chat_response_to_responses(
    chat: oa::ChatCompletion,
    created: u64,
) -> Result<Value, ConvertError> {
    let Some(choice) = chat.choices.into_iter().next() else {
        return Err(ConvertError::InvalidResponse(
            "chat completion has no choices".into(),
        ));
    };
    let base = item_base(&chat.id);
    let mut output = Vec::new();
    if let Some(reasoning) =
        oa::reasoning_text(&choice.message.reasoning_content, &choice.message.reasoning)
    {
        output.push(reasoning_item(&format!("rs_{base}"), reasoning));
    }
    let mut text = choice.message.content.unwrap_or_default();
    if let Some(refusal) = choice.message.refusal {
        text.push_str(&refusal);
    }
    if !text.is_empty() {
        output.push(message_item(&format!("msg_{base}"), &text, "completed"));
    }
    for (index, call) in choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        output.push(function_call_item(
            &format!("fc_{base}_{index}"),
            &call.id,
            &call.function.name,
            &call.function.arguments,
            "completed",
        ));
    }
    let usage = chat.usage.unwrap_or_default();
    let status = if choice.finish_reason.as_deref() == Some("length") {
        "incomplete"
    } else {
        "completed"
    };
    Ok(response_object(
        &format!("resp_{base}"),
        &chat.model,
        created,
        status,
        output,
        Some(&usage),
        None,
    ))
}

/// A stable id suffix from an upstream id (letters, digits, `_` and `-` only).
fn item_base(id: &str) -> String {
    let cleaned: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "gate".to_owned()
    } else {
        cleaned
    }
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({
        "type": "reasoning",
        "id": id,
        "summary": [{"type": "summary_text", "text": text}],
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": [output_text_part(text)],
    })
}

fn output_text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn function_call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

fn usage_object(usage: &oa::Usage) -> Value {
    let cached = usage
        .prompt_tokens_details
        .as_ref()
        .and_then(|d| d.cached_tokens)
        .unwrap_or(0);
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens.saturating_add(usage.completion_tokens),
    })
}

fn response_object(
    id: &str,
    model: &str,
    created: u64,
    status: &str,
    output: Vec<Value>,
    usage: Option<&oa::Usage>,
    error: Option<Value>,
) -> Value {
    let incomplete = (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "usage": usage.map(usage_object),
        "error": error,
        "incomplete_details": incomplete,
        "instructions": null,
        "metadata": {},
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "temperature": null,
        "top_p": null,
        "text": {"format": {"type": "text"}},
        "store": false,
    })
}

/// One output item of the stream, open or done.
#[derive(Debug, Clone)]
struct StreamItem {
    output_index: u32,
    id: String,
    kind: ItemKind,
    /// Accumulated text, reasoning or arguments.
    text: String,
    open: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ItemKind {
    Message,
    Reasoning,
    /// (upstream tool-call index, call id, name)
    FunctionCall(u32, String, String),
}

/// Upstream speaks Chat Completions chunks, the client expects Responses API events.
///
/// Output, each event named by its `type` and numbered by `sequence_number`:
/// `response.created`, `response.in_progress`; per output item `response.output_item.added`,
/// then for a message `response.content_part.added`, `response.output_text.delta`s,
/// `response.output_text.done`, `response.content_part.done`; for reasoning
/// `response.reasoning_summary_part.added`, `response.reasoning_summary_text.delta`s,
/// `.done`, `response.reasoning_summary_part.done`; for a tool call
/// `response.function_call_arguments.delta`s and `.done`; then `response.output_item.done`.
/// At the end `response.completed` (or `response.incomplete` when the upstream stopped at its
/// token limit) with usage and every item; an upstream error or an early end gives
/// `response.failed`.
#[derive(Debug, Clone)]
pub struct ChatToResponsesStream {
    id: String,
    model: String,
    created: u64,
    sequence: u64,
    started: bool,
    items: Vec<StreamItem>,
    kept_text: usize,
    finish_reason: Option<String>,
    usage: Option<oa::Usage>,
    done: bool,
}

impl ChatToResponsesStream {
    /// `model` is reported until the upstream names its own; `created` is the Unix time.
    pub fn new(model: &str, created: u64) -> Self {
        ChatToResponsesStream {
            id: "resp_gate".to_owned(),
            model: model.to_owned(),
            created,
            sequence: 0,
            started: false,
            items: Vec::new(),
            kept_text: 0,
            finish_reason: None,
            usage: None,
            done: false,
        }
    }

    /// True once a terminal event has been emitted.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Converts one upstream chat chunk (`data`; OpenAI streams have no event names).
    pub fn handle_event(&mut self, _event: Option<&str>, data: &str) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        if data.trim() == "[DONE]" {
            self.complete(&mut out);
            return out;
        }
        let value: Value = match serde_json::from_str(data) {
            Ok(value) => value,
            Err(err) => {
                self.fail(
                    &mut out,
                    ApiErrorKind::BadGateway,
                    &format!("upstream sent an invalid stream chunk: {err}"),
                );
                return out;
            }
        };
        if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| error.as_str())
                .unwrap_or("upstream error")
                .to_owned();
            self.fail(&mut out, ApiErrorKind::BadGateway, &message);
            return out;
        }
        let chunk: oa::ChatCompletionChunk = match serde_json::from_value(value) {
            Ok(chunk) => chunk,
            Err(err) => {
                self.fail(
                    &mut out,
                    ApiErrorKind::BadGateway,
                    &format!("upstream sent an invalid stream chunk: {err}"),
                );
                return out;
            }
        };
        if !self.started {
            if !chunk.id.is_empty() {
                self.id = format!("resp_{}", item_base(&chunk.id));
            }
            if !chunk.model.is_empty() {
                self.model = chunk.model.clone();
            }
        }
        self.ensure_started(&mut out);
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) else {
            return out;
        };
        if let Some(reasoning) =
            oa::reasoning_text(&choice.delta.reasoning_content, &choice.delta.reasoning)
        {
            let reasoning = reasoning.to_owned();
            if !self.push_text(&mut out, ItemKind::Reasoning, reasoning) {
                return out;
            }
        }
        for text in [choice.delta.content, choice.delta.refusal]
            .into_iter()
            .flatten()
            .filter(|t| !t.is_empty())
        {
            if !self.push_text(&mut out, ItemKind::Message, text) {
                return out;
            }
        }
        for call in choice.delta.tool_calls.unwrap_or_default() {
            if !self.push_tool_fragment(&mut out, call) {
                return out;
            }
        }
        if let Some(reason) = choice.finish_reason {
            self.finish_reason = Some(reason);
        }
        out
    }

    /// The upstream body ended: completes after a `finish_reason` (or `[DONE]`), else fails.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        if self.finish_reason.is_some() {
            self.complete(&mut out);
        } else {
            self.fail(
                &mut out,
                ApiErrorKind::BadGateway,
                "upstream stream ended before the response was complete",
            );
        }
        out
    }

    fn event(&mut self, out: &mut Vec<StreamEvent>, kind: &str, mut body: Map<String, Value>) {
        body.insert("type".into(), Value::String(kind.to_owned()));
        body.insert("sequence_number".into(), Value::from(self.sequence));
        self.sequence += 1;
        out.push(StreamEvent {
            event: Some(kind.to_owned()),
            data: to_json(&Value::Object(body)),
        });
    }

    fn response_snapshot(&self, status: &str, error: Option<Value>) -> Value {
        let output = self
            .items
            .iter()
            .map(|item| self.item_value(item, "completed"))
            .collect();
        response_object(
            &self.id,
            &self.model,
            self.created,
            status,
            output,
            self.usage.as_ref().filter(|_| status != "in_progress"),
            error,
        )
    }

    fn ensure_started(&mut self, out: &mut Vec<StreamEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        let snapshot = self.response_snapshot("in_progress", None);
        self.event(
            out,
            "response.created",
            obj([("response", snapshot.clone())]),
        );
        self.event(out, "response.in_progress", obj([("response", snapshot)]));
    }

    fn item_value(&self, item: &StreamItem, status: &str) -> Value {
        match &item.kind {
            ItemKind::Message => {
                if item.open {
                    json!({"type": "message", "id": item.id, "status": "in_progress",
                           "role": "assistant", "content": []})
                } else {
                    message_item(&item.id, &item.text, status)
                }
            }
            ItemKind::Reasoning => {
                if item.open {
                    json!({"type": "reasoning", "id": item.id, "summary": []})
                } else {
                    reasoning_item(&item.id, &item.text)
                }
            }
            ItemKind::FunctionCall(_, call_id, name) => function_call_item(
                &item.id,
                call_id,
                name,
                &item.text,
                if item.open { "in_progress" } else { status },
            ),
        }
    }

    /// Keeps `len` more bytes of text; false (and the stream failed) past the cap.
    fn keep(&mut self, out: &mut Vec<StreamEvent>, len: usize) -> bool {
        self.kept_text = self.kept_text.saturating_add(len);
        if self.kept_text > MAX_RESPONSES_STREAM_TEXT {
            self.fail(
                out,
                ApiErrorKind::BadGateway,
                "upstream stream is larger than Gate converts to the Responses API",
            );
            return false;
        }
        true
    }

    fn open_item(&mut self, out: &mut Vec<StreamEvent>, kind: ItemKind) -> usize {
        let output_index = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
        let prefix = match kind {
            ItemKind::Message => "msg",
            ItemKind::Reasoning => "rs",
            ItemKind::FunctionCall(..) => "fc",
        };
        let base = self.id.trim_start_matches("resp_").to_owned();
        let item = StreamItem {
            output_index,
            id: format!("{prefix}_{base}_{output_index}"),
            kind,
            text: String::new(),
            open: true,
        };
        let added = self.item_value(&item, "in_progress");
        let item_id = item.id.clone();
        let kind = item.kind.clone();
        self.items.push(item);
        self.event(
            out,
            "response.output_item.added",
            obj([("output_index", output_index.into()), ("item", added)]),
        );
        match kind {
            ItemKind::Message => self.event(
                out,
                "response.content_part.added",
                obj([
                    ("item_id", item_id.into()),
                    ("output_index", output_index.into()),
                    ("content_index", 0.into()),
                    ("part", output_text_part("")),
                ]),
            ),
            ItemKind::Reasoning => self.event(
                out,
                "response.reasoning_summary_part.added",
                obj([
                    ("item_id", item_id.into()),
                    ("output_index", output_index.into()),
                    ("summary_index", 0.into()),
                    ("part", json!({"type": "summary_text", "text": ""})),
                ]),
            ),
            ItemKind::FunctionCall(..) => {}
        }
        self.items.len() - 1
    }

    fn close_item(&mut self, out: &mut Vec<StreamEvent>, position: usize) {
        let Some(item) = self.items.get_mut(position) else {
            return;
        };
        if !item.open {
            return;
        }
        item.open = false;
        let item = item.clone();
        let common = |extra: Vec<(&str, Value)>| {
            let mut map = obj([
                ("item_id", Value::from(item.id.clone())),
                ("output_index", item.output_index.into()),
            ]);
            for (key, value) in extra {
                map.insert(key.to_owned(), value);
            }
            map
        };
        match &item.kind {
            ItemKind::Message => {
                let text = Value::from(item.text.clone());
                self.event(
                    out,
                    "response.output_text.done",
                    common(vec![
                        ("content_index", 0.into()),
                        ("text", text),
                        ("logprobs", json!([])),
                    ]),
                );
                self.event(
                    out,
                    "response.content_part.done",
                    common(vec![
                        ("content_index", 0.into()),
                        ("part", output_text_part(&item.text)),
                    ]),
                );
            }
            ItemKind::Reasoning => {
                self.event(
                    out,
                    "response.reasoning_summary_text.done",
                    common(vec![
                        ("summary_index", 0.into()),
                        ("text", item.text.clone().into()),
                    ]),
                );
                self.event(
                    out,
                    "response.reasoning_summary_part.done",
                    common(vec![
                        ("summary_index", 0.into()),
                        ("part", json!({"type": "summary_text", "text": item.text})),
                    ]),
                );
            }
            ItemKind::FunctionCall(..) => {
                self.event(
                    out,
                    "response.function_call_arguments.done",
                    common(vec![("arguments", item.text.clone().into())]),
                );
            }
        }
        let done = self.item_value(&item, "completed");
        self.event(
            out,
            "response.output_item.done",
            obj([("output_index", item.output_index.into()), ("item", done)]),
        );
    }

    fn close_all(&mut self, out: &mut Vec<StreamEvent>) {
        for position in 0..self.items.len() {
            self.close_item(out, position);
        }
    }

    fn push_text(&mut self, out: &mut Vec<StreamEvent>, kind: ItemKind, text: String) -> bool {
        if !self.keep(out, text.len()) {
            return false;
        }
        let open = self
            .items
            .iter()
            .rposition(|item| item.open && item.kind == kind);
        let position = match open {
            // Only the newest item may grow: an older open one of this kind is closed.
            Some(position) if position + 1 == self.items.len() => position,
            _ => {
                self.close_all(out);
                self.open_item(out, kind.clone())
            }
        };
        let (item_id, output_index) = match self.items.get_mut(position) {
            Some(item) => {
                item.text.push_str(&text);
                (item.id.clone(), item.output_index)
            }
            None => return true,
        };
        let (name, index_key) = match kind {
            ItemKind::Reasoning => ("response.reasoning_summary_text.delta", "summary_index"),
            _ => ("response.output_text.delta", "content_index"),
        };
        let mut body = obj([
            ("item_id", item_id.into()),
            ("output_index", output_index.into()),
            (index_key, 0.into()),
            ("delta", text.into()),
        ]);
        if kind == ItemKind::Message {
            body.insert("logprobs".into(), json!([]));
        }
        self.event(out, name, body);
        true
    }

    fn push_tool_fragment(&mut self, out: &mut Vec<StreamEvent>, call: oa::ToolCallDelta) -> bool {
        let function = call.function.unwrap_or_default();
        let known = self.items.iter().position(
            |item| matches!(&item.kind, ItemKind::FunctionCall(index, ..) if *index == call.index),
        );
        let position = match known {
            Some(position) => position,
            None => {
                let calls = self
                    .items
                    .iter()
                    .filter(|i| matches!(i.kind, ItemKind::FunctionCall(..)))
                    .count();
                if calls >= MAX_STREAM_TOOL_CALLS {
                    self.fail(
                        out,
                        ApiErrorKind::BadGateway,
                        "upstream stream has too many tool calls",
                    );
                    return false;
                }
                // Text and reasoning end where a tool call starts; earlier calls stay open
                // (parallel calls may interleave their fragments).
                for position in 0..self.items.len() {
                    if !matches!(self.items[position].kind, ItemKind::FunctionCall(..)) {
                        self.close_item(out, position);
                    }
                }
                let call_id = call
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("call_{}", self.items.len()));
                self.open_item(
                    out,
                    ItemKind::FunctionCall(call.index, call_id, function.name.unwrap_or_default()),
                )
            }
        };
        let Some(arguments) = function.arguments.filter(|a| !a.is_empty()) else {
            return true;
        };
        if !self.keep(out, arguments.len()) {
            return false;
        }
        let (item_id, output_index, open) = match self.items.get_mut(position) {
            Some(item) => {
                if item.open {
                    item.text.push_str(&arguments);
                }
                (item.id.clone(), item.output_index, item.open)
            }
            None => return true,
        };
        if open {
            self.event(
                out,
                "response.function_call_arguments.delta",
                obj([
                    ("item_id", item_id.into()),
                    ("output_index", output_index.into()),
                    ("delta", arguments.into()),
                ]),
            );
        }
        true
    }

    fn complete(&mut self, out: &mut Vec<StreamEvent>) {
        self.ensure_started(out);
        self.close_all(out);
        let (status, name) = if self.finish_reason.as_deref() == Some("length") {
            ("incomplete", "response.incomplete")
        } else {
            ("completed", "response.completed")
        };
        if self.usage.is_none() {
            self.usage = Some(oa::Usage::default());
        }
        let snapshot = self.response_snapshot(status, None);
        self.event(out, name, obj([("response", snapshot)]));
        self.done = true;
    }

    fn fail(&mut self, out: &mut Vec<StreamEvent>, kind: ApiErrorKind, message: &str) {
        self.ensure_started(out);
        let code = kind.openai_code().unwrap_or("server_error");
        let error = json!({"code": code, "message": message});
        let snapshot = self.response_snapshot("failed", Some(error));
        self.event(out, "response.failed", obj([("response", snapshot)]));
        self.done = true;
    }
}

fn obj<const N: usize>(entries: [(&str, Value); N]) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}
