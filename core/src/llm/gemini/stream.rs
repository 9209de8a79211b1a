//! Stream conversion between Gemini's `streamGenerateContent` chunks and Chat Completions
//! chunks. Each converter takes one upstream event's data at a time and returns the client
//! events to write (SSE framing, or the JSON-array framing of Gemini's non-SSE stream, is the
//! caller's). State is bounded: no text is kept, only one entry per tool call (at most
//! [`MAX_STREAM_TOOL_CALLS`]).

use super::response::{
    arguments_to_args, finish_reason_to_gemini, finish_reason_to_openai, usage_to_gemini,
    usage_to_openai,
};
use super::{Candidate, Content, FunctionCall, GenerateContentResponse, Part, UsageMetadata};
use crate::llm::convert::{StreamEvent, MAX_STREAM_TOOL_CALLS};
use crate::llm::openai as oa;
use serde_json::Value;

fn data_event(value: &impl serde::Serialize) -> StreamEvent {
    StreamEvent {
        event: None,
        data: serde_json::to_string(value).unwrap_or_default(),
    }
}

/// Gemini stream chunks in, Chat Completions chunks out (then `[DONE]`).
#[derive(Debug)]
pub struct GeminiToOpenAiStream {
    model: String,
    created: u64,
    include_usage: bool,
    id: Option<String>,
    started: bool,
    calls: usize,
    finish_reason: Option<String>,
    usage: Option<UsageMetadata>,
    done: bool,
}

impl GeminiToOpenAiStream {
    /// A converter for a client that asked for `model`; `created` is the chunks' timestamp;
    /// `include_usage` adds the final usage chunk (`stream_options.include_usage`).
    pub fn new(model: &str, created: u64, include_usage: bool) -> Self {
        Self {
            model: model.to_owned(),
            created,
            include_usage,
            id: None,
            started: false,
            calls: 0,
            finish_reason: None,
            usage: None,
            done: false,
        }
    }

    /// Whether [`Self::finish`] has run.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn chunk(
        &self,
        delta: oa::ChunkDelta,
        finish_reason: Option<String>,
    ) -> oa::ChatCompletionChunk {
        oa::ChatCompletionChunk {
            id: self.id.clone().unwrap_or_else(|| "chatcmpl-gemini".into()),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![oa::ChunkChoice {
                index: 0,
                delta,
                finish_reason,
                logprobs: None,
            }],
            usage: None,
        }
    }

    /// One upstream chunk (the JSON of one SSE `data:` line, or one element of the JSON-array
    /// stream). Data that is not a Gemini chunk is skipped.
    pub fn handle_data(&mut self, data: &str) -> Vec<StreamEvent> {
        if self.done {
            return Vec::new();
        }
        let Ok(chunk) = serde_json::from_str::<GenerateContentResponse>(data) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if self.id.is_none() {
            self.id = chunk
                .response_id
                .as_ref()
                .map(|id| format!("chatcmpl-{id}"));
        }
        if !self.started {
            self.started = true;
            out.push(data_event(&self.chunk(
                oa::ChunkDelta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    ..oa::ChunkDelta::default()
                },
                None,
            )));
        }
        if let Some(usage) = chunk.usage_metadata {
            self.usage = Some(usage);
        }
        let Some(candidate) = chunk.candidates.into_iter().next() else {
            return out;
        };
        for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
            if part.thought == Some(true) {
                continue;
            }
            if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                out.push(data_event(&self.chunk(
                    oa::ChunkDelta {
                        content: Some(text),
                        ..oa::ChunkDelta::default()
                    },
                    None,
                )));
            }
            if let Some(call) = part.function_call {
                if self.calls >= MAX_STREAM_TOOL_CALLS {
                    continue;
                }
                let index = self.calls;
                self.calls += 1;
                let id = call
                    .id
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| format!("call_{}", index + 1));
                let arguments = call
                    .args
                    .unwrap_or(Value::Object(serde_json::Map::new()))
                    .to_string();
                out.push(data_event(&self.chunk(
                    oa::ChunkDelta {
                        tool_calls: Some(vec![oa::ToolCallDelta {
                            index: index as u32,
                            id: Some(id),
                            kind: Some("function".into()),
                            function: Some(oa::FunctionCallDelta {
                                name: Some(call.name),
                                arguments: Some(arguments),
                            }),
                        }]),
                        ..oa::ChunkDelta::default()
                    },
                    None,
                )));
            }
        }
        if let Some(reason) = candidate.finish_reason {
            self.finish_reason = Some(reason);
        }
        out
    }

    /// The end of the upstream stream: the finish chunk, the usage chunk (when asked for) and
    /// `[DONE]`. Idempotent.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut out = Vec::new();
        let reason = finish_reason_to_openai(self.finish_reason.as_deref(), self.calls > 0);
        out.push(data_event(
            &self.chunk(oa::ChunkDelta::default(), Some(reason.to_owned())),
        ));
        if self.include_usage {
            let mut last = self.chunk(oa::ChunkDelta::default(), None);
            last.choices.clear();
            last.usage = Some(self.usage.as_ref().map(usage_to_openai).unwrap_or_default());
            out.push(data_event(&last));
        }
        out.push(StreamEvent {
            event: None,
            data: "[DONE]".into(),
        });
        out
    }
}

/// One tool call being assembled from argument fragments.
#[derive(Debug, Default)]
struct PendingCall {
    id: String,
    name: String,
    arguments: String,
}

/// Chat Completions chunks in, Gemini chunks out. Text goes out as it comes; tool calls
/// (which Gemini sends whole) and the finish reason and usage go out in the last chunk.
#[derive(Debug)]
pub struct OpenAiToGeminiStream {
    model: String,
    response_id: Option<String>,
    calls: Vec<PendingCall>,
    finish_reason: Option<String>,
    usage: Option<oa::Usage>,
    done: bool,
}

impl OpenAiToGeminiStream {
    /// A converter whose chunks name `model` as their `modelVersion`.
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            response_id: None,
            calls: Vec::new(),
            finish_reason: None,
            usage: None,
            done: false,
        }
    }

    /// Whether [`Self::finish`] has run.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn chunk(&self, parts: Vec<Part>, finish_reason: Option<String>) -> GenerateContentResponse {
        GenerateContentResponse {
            candidates: vec![Candidate {
                content: Some(Content {
                    role: Some("model".into()),
                    parts,
                }),
                finish_reason,
                index: Some(0),
            }],
            usage_metadata: None,
            model_version: Some(self.model.clone()),
            response_id: self.response_id.clone(),
        }
    }

    /// One upstream event's data (`[DONE]` finishes the stream).
    pub fn handle_data(&mut self, data: &str) -> Vec<StreamEvent> {
        if self.done {
            return Vec::new();
        }
        if data.trim() == "[DONE]" {
            return self.finish();
        }
        let Ok(chunk) = serde_json::from_str::<oa::ChatCompletionChunk>(data) else {
            return Vec::new();
        };
        if self.response_id.is_none() && !chunk.id.is_empty() {
            self.response_id = Some(chunk.id.clone());
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        let mut out = Vec::new();
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                out.push(data_event(&self.chunk(vec![Part::text(text)], None)));
            }
            for delta in choice.delta.tool_calls.unwrap_or_default() {
                let index = delta.index as usize;
                if index >= MAX_STREAM_TOOL_CALLS {
                    continue;
                }
                while self.calls.len() <= index {
                    self.calls.push(PendingCall::default());
                }
                let call = &mut self.calls[index];
                if let Some(id) = delta.id {
                    call.id = id;
                }
                if let Some(function) = delta.function {
                    if let Some(name) = function.name {
                        call.name.push_str(&name);
                    }
                    if let Some(arguments) = function.arguments {
                        call.arguments.push_str(&arguments);
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
        }
        out
    }

    /// The end of the upstream stream: one last chunk with the tool calls, the finish reason
    /// and the usage. Idempotent.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let parts = std::mem::take(&mut self.calls)
            .into_iter()
            .filter(|c| !c.name.is_empty())
            .map(|c| Part {
                function_call: Some(FunctionCall {
                    id: (!c.id.is_empty()).then_some(c.id),
                    name: c.name,
                    args: Some(arguments_to_args(&c.arguments)),
                }),
                ..Part::default()
            })
            .collect();
        let reason = finish_reason_to_gemini(self.finish_reason.as_deref());
        let mut last = self.chunk(parts, Some(reason.to_owned()));
        last.usage_metadata = Some(self.usage.as_ref().map(usage_to_gemini).unwrap_or_default());
        vec![data_event(&last)]
    }
}
