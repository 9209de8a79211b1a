//! The daemon's thin adapter over `gate_core::llm::convert`: picks the conversion for a
//! (client, upstream) protocol pair, supplies what the core does not read by itself
//! (the clock for `created`), and frames converted events as SSE bytes.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gate_core::llm::convert::{
    self as core_convert, AnthropicToOpenAiStream, OpenAiToAnthropicStream, StreamEvent,
};
use gate_core::llm::sse;
use gate_core::route::WireProtocol;

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

/// The converter for an upstream speaking `upstream` (the client speaks the other one).
pub fn stream_converter(
    upstream: WireProtocol,
    model: &str,
    include_usage: bool,
) -> Box<dyn StreamConverter> {
    match upstream {
        WireProtocol::Anthropic => Box::new(AnthropicToOpenAiStream::new(
            model,
            unix_now(),
            include_usage,
        )),
        WireProtocol::OpenAi => Box::new(OpenAiToAnthropicStream::new(model)),
    }
}

/// Converts a client request body to the other protocol, for `upstream_model`.
pub fn request(client: WireProtocol, body: &[u8], upstream_model: &str) -> Result<Vec<u8>, String> {
    match client {
        WireProtocol::OpenAi => {
            let converted =
                core_convert::openai_request_body_to_anthropic(body).map_err(|e| e.to_string())?;
            rewrite_model(&converted, upstream_model)
        }
        // The OpenAI side's per-model rules need the upstream's model id.
        WireProtocol::Anthropic => {
            core_convert::anthropic_request_body_to_openai_for_model(body, upstream_model)
                .map_err(|e| e.to_string())
        }
    }
}

/// Converts an upstream response body (in `upstream`'s protocol) to the other protocol.
pub fn response(upstream: WireProtocol, body: &[u8]) -> Result<Vec<u8>, String> {
    match upstream {
        WireProtocol::OpenAi => core_convert::openai_response_body_to_anthropic(body),
        WireProtocol::Anthropic => {
            core_convert::anthropic_response_body_to_openai(body, unix_now())
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
