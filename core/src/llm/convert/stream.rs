//! Streaming conversion: one upstream SSE event in, zero or more client SSE events out.
//!
//! Driving loop (the caller owns the SSE parser and the socket):
//! ```text
//! let mut converter = AnthropicToOpenAiStream::new(model, created, include_usage);
//! for each upstream event (name, data):  write converter.handle_event(name, data)
//! when the upstream body ends:           write converter.finish()
//! ```
//! After a terminal event (completion, upstream error, upstream garbage) every further input
//! yields nothing. Memory is bounded: text is never accumulated, only one small entry per tool
//! call is kept, at most [`MAX_STREAM_TOOL_CALLS`] of them (then the stream ends with an error).

use super::{
    anthropic_safe_tool_id, finish_reason_to_stop_reason, stop_reason_to_finish_reason, StreamEvent,
};
use crate::llm::anthropic as an;
use crate::llm::errors::{self, to_json, ApiErrorKind};
use crate::llm::openai as oa;
use serde::Deserialize;
use serde_json::Value;

/// Most tool calls one streamed response may carry before the converter gives up.
pub const MAX_STREAM_TOOL_CALLS: usize = 1024;

/// Maps an Anthropic `error.type` (from an upstream stream) to a status class.
fn kind_from_anthropic_type(kind: &str) -> ApiErrorKind {
    match kind {
        "invalid_request_error" => ApiErrorKind::InvalidRequest,
        "authentication_error" => ApiErrorKind::Authentication,
        "permission_error" => ApiErrorKind::Permission,
        "not_found_error" => ApiErrorKind::NotFound,
        "request_too_large" => ApiErrorKind::RequestTooLarge,
        "rate_limit_error" => ApiErrorKind::RateLimit,
        "overloaded_error" => ApiErrorKind::Unavailable,
        "timeout_error" => ApiErrorKind::Timeout,
        _ => ApiErrorKind::BadGateway,
    }
}

/// Maps an OpenAI in-stream `error` object (its `code`, else its `type`) to a status class;
/// anything unrecognised is the upstream's fault (502).
fn kind_from_openai_error(error: &Value) -> ApiErrorKind {
    let code = error.get("code").and_then(Value::as_str);
    let kind = error.get("type").and_then(Value::as_str);
    match code.or(kind) {
        Some(
            "rate_limit_exceeded"
            | "insufficient_quota"
            | "rate_limit_error"
            | "requests"
            | "tokens",
        ) => ApiErrorKind::RateLimit,
        Some("context_length_exceeded" | "invalid_request_error") => ApiErrorKind::InvalidRequest,
        Some("invalid_api_key" | "authentication_error") => ApiErrorKind::Authentication,
        Some("permission_error" | "permission_denied") => ApiErrorKind::Permission,
        Some("model_not_found") => ApiErrorKind::NotFound,
        Some("timeout") => ApiErrorKind::Timeout,
        Some("service_unavailable" | "overloaded") => ApiErrorKind::Unavailable,
        _ => ApiErrorKind::BadGateway,
    }
}

/// Upstream speaks Anthropic Messages streaming, the client expects OpenAI chunks.
///
/// Output: `data: <chat.completion.chunk>` events (no event name): first a role chunk, then
/// `content` deltas and `tool_calls` deltas (`index` counts tool calls from 0; the first
/// fragment carries `id`, `type` and `function.name`, later ones `function.arguments`), then a
/// chunk with `finish_reason`, then, when `include_usage`, a usage chunk with empty
/// `choices`, then `data: [DONE]`. Thinking deltas become `reasoning_content` deltas (the
/// field OpenAI-compatible reasoning servers use; clients that do not know it ignore it).
#[derive(Debug, Clone)]
pub struct AnthropicToOpenAiStream {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    role_sent: bool,
    /// (Anthropic content block index, OpenAI tool call index).
    tool_blocks: Vec<(u32, u32)>,
    finish_reason: Option<&'static str>,
    input_tokens: u64,
    cache_read_tokens: u64,
    output_tokens: u64,
    done: bool,
}

impl AnthropicToOpenAiStream {
    /// `model` is reported until the upstream's `message_start` names its own; `created` is
    /// the Unix time (seconds) for every chunk; `include_usage` mirrors the client's
    /// `stream_options.include_usage`.
    pub fn new(model: &str, created: u64, include_usage: bool) -> Self {
        AnthropicToOpenAiStream {
            id: "chatcmpl-gate".to_owned(),
            model: model.to_owned(),
            created,
            include_usage,
            role_sent: false,
            tool_blocks: Vec::new(),
            finish_reason: None,
            input_tokens: 0,
            cache_read_tokens: 0,
            output_tokens: 0,
            done: false,
        }
    }

    /// True once a terminal event has been emitted.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Converts one upstream event. `event` is the SSE event name (Anthropic sends one equal
    /// to the JSON `type`; it is not needed), `data` its data.
    pub fn handle_event(&mut self, event: Option<&str>, data: &str) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        let parsed: an::MessageStreamEvent = match serde_json::from_str(data) {
            Ok(parsed) => parsed,
            Err(err) => {
                if event == Some("ping") {
                    return out;
                }
                return self.fail(
                    ApiErrorKind::BadGateway,
                    &format!("upstream sent an invalid stream event: {err}"),
                );
            }
        };
        match parsed {
            an::MessageStreamEvent::MessageStart { message } => {
                if !message.id.is_empty() {
                    self.id = message.id;
                }
                if !message.model.is_empty() {
                    self.model = message.model;
                }
                self.input_tokens = message
                    .usage
                    .input_tokens
                    .saturating_add(message.usage.cache_creation_input_tokens.unwrap_or(0));
                self.cache_read_tokens = message.usage.cache_read_input_tokens.unwrap_or(0);
                self.output_tokens = message.usage.output_tokens;
                self.ensure_role(&mut out);
            }
            an::MessageStreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                self.ensure_role(&mut out);
                match content_block {
                    an::ContentBlock::Text { text } => self.push_text(&mut out, text),
                    an::ContentBlock::ToolUse { id, name, input } => {
                        if self.tool_blocks.len() >= MAX_STREAM_TOOL_CALLS {
                            return self.fail(
                                ApiErrorKind::BadGateway,
                                "upstream stream has too many tool calls",
                            );
                        }
                        let tool_index = u32::try_from(self.tool_blocks.len()).unwrap_or(0);
                        self.tool_blocks.push((index, tool_index));
                        out.push(self.chunk(
                            oa::ChunkDelta {
                                tool_calls: Some(vec![oa::ToolCallDelta {
                                    index: tool_index,
                                    id: Some(id),
                                    kind: Some("function".into()),
                                    function: Some(oa::FunctionCallDelta {
                                        name: Some(name),
                                        arguments: Some(String::new()),
                                    }),
                                }]),
                                ..Default::default()
                            },
                            None,
                        ));
                        // Anthropic sends `input: {}` here and the arguments as deltas; a
                        // non-empty input (some proxies) is forwarded as the first fragment.
                        if input.as_object().is_some_and(|map| !map.is_empty()) {
                            let arguments = to_json(&input);
                            out.push(self.arguments_chunk(tool_index, arguments));
                        }
                    }
                    _ => {}
                }
            }
            an::MessageStreamEvent::ContentBlockDelta { index, delta } => {
                self.ensure_role(&mut out);
                match delta {
                    an::BlockDelta::TextDelta { text } => self.push_text(&mut out, text),
                    an::BlockDelta::InputJsonDelta { partial_json } => {
                        let tool_index = self
                            .tool_blocks
                            .iter()
                            .find(|(block, _)| *block == index)
                            .map(|(_, tool)| *tool);
                        if let Some(tool_index) = tool_index {
                            if !partial_json.is_empty() {
                                out.push(self.arguments_chunk(tool_index, partial_json));
                            }
                        }
                    }
                    an::BlockDelta::ThinkingDelta { thinking } => {
                        if !thinking.is_empty() {
                            out.push(self.chunk(
                                oa::ChunkDelta {
                                    reasoning_content: Some(thinking),
                                    ..Default::default()
                                },
                                None,
                            ));
                        }
                    }
                    an::BlockDelta::SignatureDelta { .. } | an::BlockDelta::Unknown => {}
                }
            }
            an::MessageStreamEvent::MessageDelta { delta, usage } => {
                self.finish_reason =
                    Some(stop_reason_to_finish_reason(delta.stop_reason.as_deref()));
                self.output_tokens = usage.output_tokens;
                if let Some(input_tokens) = usage.input_tokens {
                    self.input_tokens = input_tokens;
                }
            }
            an::MessageStreamEvent::MessageStop => {
                self.ensure_role(&mut out);
                self.complete(&mut out);
            }
            an::MessageStreamEvent::Error { error } => {
                return self.fail(kind_from_anthropic_type(&error.kind), &error.message);
            }
            an::MessageStreamEvent::ContentBlockStop { .. }
            | an::MessageStreamEvent::Ping
            | an::MessageStreamEvent::Unknown => {}
        }
        out
    }

    /// The upstream body ended. Without a prior `message_stop` this is an early end: an
    /// error chunk and `[DONE]`.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        if self.done {
            return Vec::new();
        }
        self.fail(
            ApiErrorKind::BadGateway,
            "upstream stream ended before the message was complete",
        )
    }

    fn fail(&mut self, kind: ApiErrorKind, message: &str) -> Vec<StreamEvent> {
        self.done = true;
        vec![errors::openai_stream_error(kind, message), done_event()]
    }

    fn complete(&mut self, out: &mut Vec<StreamEvent>) {
        let finish_reason = self.finish_reason.unwrap_or("stop");
        out.push(self.chunk(oa::ChunkDelta::default(), Some(finish_reason)));
        if self.include_usage {
            let prompt_tokens = self.input_tokens.saturating_add(self.cache_read_tokens);
            let usage_chunk = oa::ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(oa::Usage {
                    prompt_tokens,
                    completion_tokens: self.output_tokens,
                    total_tokens: prompt_tokens.saturating_add(self.output_tokens),
                    prompt_tokens_details: (self.cache_read_tokens > 0).then_some(
                        oa::PromptTokensDetails {
                            cached_tokens: Some(self.cache_read_tokens),
                        },
                    ),
                }),
            };
            out.push(StreamEvent {
                event: None,
                data: to_json(&usage_chunk),
            });
        }
        out.push(done_event());
        self.done = true;
    }

    fn ensure_role(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.role_sent {
            self.role_sent = true;
            out.push(self.chunk(
                oa::ChunkDelta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    ..Default::default()
                },
                None,
            ));
        }
    }

    fn push_text(&self, out: &mut Vec<StreamEvent>, text: String) {
        if !text.is_empty() {
            out.push(self.chunk(
                oa::ChunkDelta {
                    content: Some(text),
                    ..Default::default()
                },
                None,
            ));
        }
    }

    fn arguments_chunk(&self, tool_index: u32, arguments: String) -> StreamEvent {
        self.chunk(
            oa::ChunkDelta {
                tool_calls: Some(vec![oa::ToolCallDelta {
                    index: tool_index,
                    id: None,
                    kind: None,
                    function: Some(oa::FunctionCallDelta {
                        name: None,
                        arguments: Some(arguments),
                    }),
                }]),
                ..Default::default()
            },
            None,
        )
    }

    fn chunk(&self, delta: oa::ChunkDelta, finish_reason: Option<&str>) -> StreamEvent {
        let chunk = oa::ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![oa::ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(str::to_owned),
                logprobs: None,
            }],
            usage: None,
        };
        StreamEvent {
            event: None,
            data: to_json(&chunk),
        }
    }
}

fn done_event() -> StreamEvent {
    StreamEvent {
        event: None,
        data: "[DONE]".to_owned(),
    }
}

/// The content block currently open on the Anthropic side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text(u32),
    Tool(u32),
    Thinking(u32),
}

/// Only the `error` member, to tell an in-stream error from a chunk.
#[derive(Deserialize)]
struct ErrorProbe {
    #[serde(default)]
    error: Option<Value>,
}

/// Upstream speaks OpenAI chunks, the client expects Anthropic Messages streaming events.
///
/// Output: `message_start` (on the first chunk), then per run of reasoning text
/// (`reasoning_content` / `reasoning`) a thinking block with `thinking_delta`s, per run of text a text block
/// (`content_block_start` / `text_delta`s / `content_block_stop`) and per tool call a
/// `tool_use` block (`content_block_start` with id and name and `input: {}`, then
/// `input_json_delta`s carrying the argument fragments), then at `data: [DONE]` (or at
/// [`finish`](Self::finish) when a `finish_reason` was seen) `message_delta` with
/// `stop_reason` and usage, and `message_stop`. Only choice 0 is read. Fragments of a tool
/// call that arrive after another block was opened (interleaved parallel calls, rare) are
/// still sent as deltas of that call's block index.
#[derive(Debug, Clone)]
pub struct OpenAiToAnthropicStream {
    id: Option<String>,
    model: String,
    started: bool,
    open_block: Option<OpenBlock>,
    next_block_index: u32,
    /// (OpenAI tool call index, Anthropic content block index).
    tools: Vec<(u32, u32)>,
    finish_reason: Option<String>,
    usage: Option<oa::Usage>,
    done: bool,
}

impl OpenAiToAnthropicStream {
    /// `model` is reported in `message_start` when the upstream's first chunk names none
    /// (the upstream's own model name is preferred, as in non-streaming conversion).
    pub fn new(model: &str) -> Self {
        OpenAiToAnthropicStream {
            id: None,
            model: model.to_owned(),
            started: false,
            open_block: None,
            next_block_index: 0,
            tools: Vec::new(),
            finish_reason: None,
            usage: None,
            done: false,
        }
    }

    /// True once a terminal event has been emitted.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Converts one upstream event (`event` is ignored: OpenAI streams have no names).
    pub fn handle_event(&mut self, _event: Option<&str>, data: &str) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        if data.trim() == "[DONE]" {
            self.complete(&mut out);
            return out;
        }
        if let Ok(ErrorProbe { error: Some(error) }) = serde_json::from_str::<ErrorProbe>(data) {
            let message = match &error {
                Value::String(text) => text.clone(),
                other => other
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error")
                    .to_owned(),
            };
            let kind = kind_from_openai_error(&error);
            return self.fail(&mut out, kind, &message);
        }
        let chunk: oa::ChatCompletionChunk = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(err) => {
                return self.fail(
                    &mut out,
                    ApiErrorKind::BadGateway,
                    &format!("upstream sent an invalid stream chunk: {err}"),
                );
            }
        };
        if self.id.is_none() && !chunk.id.is_empty() {
            self.id = Some(chunk.id.clone());
        }
        if !self.started && !chunk.model.is_empty() {
            self.model = chunk.model.clone();
        }
        self.ensure_started(&mut out, chunk.usage.as_ref());
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
            self.push_thinking(&mut out, reasoning);
        }
        for text in [choice.delta.content, choice.delta.refusal]
            .into_iter()
            .flatten()
        {
            self.push_text(&mut out, text);
        }
        for call in choice.delta.tool_calls.unwrap_or_default() {
            if let Err(()) = self.push_tool_fragment(&mut out, call) {
                return self.fail(
                    &mut out,
                    ApiErrorKind::BadGateway,
                    "upstream stream has too many tool calls",
                );
            }
        }
        if let Some(reason) = choice.finish_reason {
            self.finish_reason = Some(reason);
        }
        out
    }

    /// The upstream body ended. After `[DONE]` this emits nothing; after a `finish_reason`
    /// without `[DONE]` it completes the message; otherwise the stream ended early and an
    /// `error` event is emitted.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        if self.finish_reason.is_some() {
            self.complete(&mut out);
            return out;
        }
        self.fail(
            &mut out,
            ApiErrorKind::BadGateway,
            "upstream stream ended before the message was complete",
        )
    }

    fn fail(
        &mut self,
        out: &mut Vec<StreamEvent>,
        kind: ApiErrorKind,
        message: &str,
    ) -> Vec<StreamEvent> {
        self.done = true;
        let mut events = std::mem::take(out);
        events.push(errors::anthropic_stream_error(kind, message));
        events
    }

    fn ensure_started(&mut self, out: &mut Vec<StreamEvent>, usage: Option<&oa::Usage>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = an::MessagesResponse {
            id: self.message_id(),
            kind: "message".into(),
            role: an::Role::Assistant,
            content: Vec::new(),
            model: self.model.clone(),
            stop_reason: None,
            stop_sequence: None,
            usage: an::Usage {
                input_tokens: usage.map_or(0, |u| u.prompt_tokens),
                output_tokens: 0,
                cache_creation_input_tokens: None,
                cache_read_input_tokens: None,
            },
        };
        out.push(anthropic_event(&an::MessageStreamEvent::MessageStart {
            message,
        }));
    }

    fn message_id(&self) -> String {
        match &self.id {
            Some(id) => id.clone(),
            None => "msg_gate".to_owned(),
        }
    }

    fn close_open_block(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some(OpenBlock::Text(index) | OpenBlock::Tool(index) | OpenBlock::Thinking(index)) =
            self.open_block.take()
        {
            out.push(anthropic_event(&an::MessageStreamEvent::ContentBlockStop {
                index,
            }));
        }
    }

    fn open_new_block(&mut self, out: &mut Vec<StreamEvent>, block: an::ContentBlock) -> u32 {
        self.close_open_block(out);
        let index = self.next_block_index;
        self.next_block_index = self.next_block_index.saturating_add(1);
        self.open_block = Some(match block {
            an::ContentBlock::ToolUse { .. } => OpenBlock::Tool(index),
            an::ContentBlock::Thinking { .. } => OpenBlock::Thinking(index),
            _ => OpenBlock::Text(index),
        });
        out.push(anthropic_event(
            &an::MessageStreamEvent::ContentBlockStart {
                index,
                content_block: block,
            },
        ));
        index
    }

    fn push_text(&mut self, out: &mut Vec<StreamEvent>, text: String) {
        if text.is_empty() {
            return;
        }
        let index = match self.open_block {
            Some(OpenBlock::Text(index)) => index,
            _ => self.open_new_block(
                out,
                an::ContentBlock::Text {
                    text: String::new(),
                },
            ),
        };
        out.push(anthropic_event(
            &an::MessageStreamEvent::ContentBlockDelta {
                index,
                delta: an::BlockDelta::TextDelta { text },
            },
        ));
    }

    fn push_thinking(&mut self, out: &mut Vec<StreamEvent>, thinking: String) {
        let index = match self.open_block {
            Some(OpenBlock::Thinking(index)) => index,
            _ => self.open_new_block(
                out,
                an::ContentBlock::Thinking {
                    thinking: String::new(),
                    signature: String::new(),
                },
            ),
        };
        out.push(anthropic_event(
            &an::MessageStreamEvent::ContentBlockDelta {
                index,
                delta: an::BlockDelta::ThinkingDelta { thinking },
            },
        ));
    }

    fn push_tool_fragment(
        &mut self,
        out: &mut Vec<StreamEvent>,
        call: oa::ToolCallDelta,
    ) -> Result<(), ()> {
        let function = call.function.unwrap_or_default();
        let known = self
            .tools
            .iter()
            .find(|(tool, _)| *tool == call.index)
            .map(|(_, block)| *block);
        let block_index = match known {
            Some(block_index) => block_index,
            None => {
                if self.tools.len() >= MAX_STREAM_TOOL_CALLS {
                    return Err(());
                }
                let fallback = usize::try_from(self.next_block_index).unwrap_or(0);
                let block = an::ContentBlock::ToolUse {
                    id: anthropic_safe_tool_id(call.id.as_deref().unwrap_or(""), fallback),
                    name: function.name.unwrap_or_default(),
                    input: Value::Object(serde_json::Map::new()),
                };
                let block_index = self.open_new_block(out, block);
                self.tools.push((call.index, block_index));
                block_index
            }
        };
        if let Some(arguments) = function.arguments.filter(|a| !a.is_empty()) {
            out.push(anthropic_event(
                &an::MessageStreamEvent::ContentBlockDelta {
                    index: block_index,
                    delta: an::BlockDelta::InputJsonDelta {
                        partial_json: arguments,
                    },
                },
            ));
        }
        Ok(())
    }

    fn complete(&mut self, out: &mut Vec<StreamEvent>) {
        self.ensure_started(out, None);
        self.close_open_block(out);
        let usage = self.usage.take().unwrap_or_default();
        out.push(anthropic_event(&an::MessageStreamEvent::MessageDelta {
            delta: an::MessageDeltaBody {
                stop_reason: Some(
                    finish_reason_to_stop_reason(self.finish_reason.as_deref()).into(),
                ),
                stop_sequence: None,
            },
            usage: an::MessageDeltaUsage {
                output_tokens: usage.completion_tokens,
                input_tokens: Some(usage.prompt_tokens),
            },
        }));
        out.push(anthropic_event(&an::MessageStreamEvent::MessageStop));
        self.done = true;
    }
}

/// An Anthropic stream event with its SSE event name (equal to its `type`).
fn anthropic_event(event: &an::MessageStreamEvent) -> StreamEvent {
    let name = match event {
        an::MessageStreamEvent::MessageStart { .. } => "message_start",
        an::MessageStreamEvent::ContentBlockStart { .. } => "content_block_start",
        an::MessageStreamEvent::ContentBlockDelta { .. } => "content_block_delta",
        an::MessageStreamEvent::ContentBlockStop { .. } => "content_block_stop",
        an::MessageStreamEvent::MessageDelta { .. } => "message_delta",
        an::MessageStreamEvent::MessageStop => "message_stop",
        an::MessageStreamEvent::Ping => "ping",
        an::MessageStreamEvent::Error { .. } => "error",
        an::MessageStreamEvent::Unknown => "unknown",
    };
    StreamEvent {
        event: Some(name.to_owned()),
        data: to_json(event),
    }
}
