//! The daemon's thin adapter over `gate_core::llm::convert`: picks the conversion for a
//! (client, upstream) protocol pair, supplies what the core does not read by itself
//! (the clock for `created`), and frames converted events as SSE bytes.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gate_core::llm::convert::{
    self as core_convert, AnthropicToOpenAiStream, ChatToResponsesStream, OpenAiToAnthropicStream,
    StreamEvent,
};
use gate_core::llm::endpoint::Translation;
use gate_core::llm::sse;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// SSE bytes of converted events.
pub fn encode_events(events: Vec<StreamEvent>) -> Vec<Bytes> {
    events
        .into_iter()
        .map(|e| {
            let mut out = Vec::with_capacity(e.data.len() + 32);
            // Event names and data come from the converter and never contain newlines in
            // names; a refused encoding falls back to a bare data line.
            if sse::encode_data(e.event.as_deref(), &e.data, &mut out).is_err() {
                out.clear();
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(e.data.replace('\n', " ").as_bytes());
                out.extend_from_slice(b"\n\n");
            }
            Bytes::from(out)
        })
        .collect()
}

/// A stream converter from the upstream's protocol to the client's.
pub trait StreamConverter: Send + Sync {
    /// One upstream event in, client bytes out.
    fn event(&mut self, event: Option<&str>, data: &str) -> Vec<Bytes>;
    /// The upstream ended (`clean`) or broke off; terminal client bytes.
    fn finish(&mut self, clean: bool) -> Vec<Bytes>;
}

impl StreamConverter for AnthropicToOpenAiStream {
    fn event(&mut self, event: Option<&str>, data: &str) -> Vec<Bytes> {
        encode_events(self.handle_event(event, data))
    }
    fn finish(&mut self, _clean: bool) -> Vec<Bytes> {
        encode_events(AnthropicToOpenAiStream::finish(self))
    }
}

impl StreamConverter for OpenAiToAnthropicStream {
    fn event(&mut self, event: Option<&str>, data: &str) -> Vec<Bytes> {
        encode_events(self.handle_event(event, data))
    }
    fn finish(&mut self, _clean: bool) -> Vec<Bytes> {
        encode_events(OpenAiToAnthropicStream::finish(self))
    }
}

impl StreamConverter for ChatToResponsesStream {
    fn event(&mut self, event: Option<&str>, data: &str) -> Vec<Bytes> {
        encode_events(self.handle_event(event, data))
    }
    fn finish(&mut self, _clean: bool) -> Vec<Bytes> {
        encode_events(ChatToResponsesStream::finish(self))
    }
}

/// Anthropic events -> Chat Completions chunks -> Responses events.
struct AnthropicToResponses {
    to_chat: AnthropicToOpenAiStream,
    to_responses: ChatToResponsesStream,
}

impl AnthropicToResponses {
    fn relay(&mut self, chunks: Vec<StreamEvent>) -> Vec<Bytes> {
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(self.to_responses.handle_event(None, &chunk.data));
        }
        encode_events(out)
    }
}

impl StreamConverter for AnthropicToResponses {
    fn event(&mut self, event: Option<&str>, data: &str) -> Vec<Bytes> {
        let chunks = self.to_chat.handle_event(event, data);
        self.relay(chunks)
    }
    fn finish(&mut self, _clean: bool) -> Vec<Bytes> {
        let chunks = self.to_chat.finish();
        let mut out = self.relay(chunks);
        out.extend(encode_events(self.to_responses.finish()));
        out
    }
}

/// The stream converter for a request travelling by `translation` (`None` for
/// pass-through).
pub fn stream_converter(
    translation: Translation,
    model: &str,
    include_usage: bool,
) -> Option<Box<dyn StreamConverter>> {
    Some(match translation {
        Translation::PassThrough => return None,
        Translation::ChatToMessages => Box::new(AnthropicToOpenAiStream::new(
            model,
            unix_now(),
            include_usage,
        )),
        Translation::MessagesToChat => Box::new(OpenAiToAnthropicStream::new(model)),
        Translation::ResponsesToChat => Box::new(ChatToResponsesStream::new(model, unix_now())),
        Translation::ResponsesToMessages => Box::new(AnthropicToResponses {
            to_chat: AnthropicToOpenAiStream::new(model, unix_now(), true),
            to_responses: ChatToResponsesStream::new(model, unix_now()),
        }),
    })
}

/// Converts a client request body for an upstream reached by `translation`, for
/// `upstream_model`.
pub fn request(
    translation: Translation,
    body: &[u8],
    upstream_model: &str,
    upstream_cap: Option<u32>,
) -> Result<Vec<u8>, String> {
    match translation {
        Translation::PassThrough => rewrite_model(body, upstream_model),
        Translation::ChatToMessages => {
            let converted =
                core_convert::openai_request_body_to_anthropic(body).map_err(|e| e.to_string())?;
            rewrite_model(&converted, upstream_model)
        }
        // The OpenAI side's per-model rules need the upstream's model id.
        Translation::MessagesToChat => core_convert::anthropic_request_body_to_openai_for_model(
            body,
            upstream_model,
            upstream_cap,
        )
        .map_err(|e| e.to_string()),
        Translation::ResponsesToChat => {
            core_convert::responses_request_body_to_chat(body, upstream_model, upstream_cap)
                .map_err(|e| e.to_string())
        }
        Translation::ResponsesToMessages => {
            core_convert::responses_request_body_to_anthropic(body, upstream_model)
                .map_err(|e| e.to_string())
        }
    }
}

/// Converts an upstream response body for a request that travelled by `translation`.
pub fn response(translation: Translation, body: &[u8]) -> Result<Vec<u8>, String> {
    match translation {
        Translation::PassThrough => Ok(body.to_vec()),
        Translation::MessagesToChat => core_convert::openai_response_body_to_anthropic(body),
        Translation::ChatToMessages => {
            core_convert::anthropic_response_body_to_openai(body, unix_now())
        }
        Translation::ResponsesToChat => {
            core_convert::chat_response_body_to_responses(body, unix_now())
        }
        Translation::ResponsesToMessages => {
            core_convert::anthropic_response_body_to_responses(body, unix_now())
        }
    }
    .map_err(|e| e.to_string())
}

/// Rewrites the `model` field, keeping every other byte.
pub fn rewrite_model(body: &[u8], model: &str) -> Result<Vec<u8>, String> {
    core_convert::rewrite_model(body, model).map_err(|e| e.to_string())
}

/// `count_tokens` answered locally (an estimate) when no Anthropic upstream serves it.
pub fn estimate_count_tokens(body: &[u8]) -> Result<Vec<u8>, String> {
    core_convert::estimate_count_tokens_body(body).map_err(|e| e.to_string())
}
