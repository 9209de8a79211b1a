//! The daemon's thin adapter over `gate_core::llm::convert`: picks the conversion for a
//! (client, upstream) protocol pair, supplies what the core does not read by itself
//! (the clock for `created`), and frames converted events as SSE bytes.

use gate_rt::tunnel::support::unix_now;

use bytes::Bytes;
use gate_core::llm::convert::{
    self as core_convert, AnthropicToOpenAiStream, ChatToResponsesStream, OpenAiToAnthropicStream,
    StreamEvent,
};
use gate_core::llm::endpoint::Translation;
use gate_core::llm::gemini::{self, GeminiToOpenAiStream};
use gate_core::llm::model_rules::UpstreamRules;
use gate_core::llm::sse;

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

impl StreamConverter for GeminiToOpenAiStream {
    fn event(&mut self, _event: Option<&str>, data: &str) -> Vec<Bytes> {
        encode_events(self.handle_data(data))
    }
    fn finish(&mut self, _clean: bool) -> Vec<Bytes> {
        encode_events(GeminiToOpenAiStream::finish(self))
    }
}

/// The second leg after Gemini -> Chat Completions: Chat chunks to the client's protocol.
enum ChatLeg {
    Anthropic(OpenAiToAnthropicStream),
    Responses(ChatToResponsesStream),
}

/// Gemini chunks -> Chat Completions chunks -> Anthropic or Responses events.
struct GeminiThroughChat {
    to_chat: GeminiToOpenAiStream,
    leg: ChatLeg,
}

impl GeminiThroughChat {
    fn relay(&mut self, chunks: Vec<StreamEvent>) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(match &mut self.leg {
                ChatLeg::Anthropic(c) => c.handle_event(None, &chunk.data),
                ChatLeg::Responses(c) => c.handle_event(None, &chunk.data),
            });
        }
        out
    }
}

impl StreamConverter for GeminiThroughChat {
    fn event(&mut self, _event: Option<&str>, data: &str) -> Vec<Bytes> {
        let chunks = self.to_chat.handle_data(data);
        encode_events(self.relay(chunks))
    }
    fn finish(&mut self, _clean: bool) -> Vec<Bytes> {
        let chunks = self.to_chat.finish();
        let mut out = self.relay(chunks);
        out.extend(match &mut self.leg {
            ChatLeg::Anthropic(c) => c.finish(),
            ChatLeg::Responses(c) => c.finish(),
        });
        encode_events(out)
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
        Translation::ChatToGemini => {
            Box::new(GeminiToOpenAiStream::new(model, unix_now(), include_usage))
        }
        Translation::MessagesToGemini => Box::new(GeminiThroughChat {
            to_chat: GeminiToOpenAiStream::new(model, unix_now(), true),
            leg: ChatLeg::Anthropic(OpenAiToAnthropicStream::new(model)),
        }),
        Translation::ResponsesToGemini => Box::new(GeminiThroughChat {
            to_chat: GeminiToOpenAiStream::new(model, unix_now(), true),
            leg: ChatLeg::Responses(ChatToResponsesStream::new(model, unix_now())),
        }),
    })
}

/// Converts a client request body for an upstream reached by `translation`, for
/// `upstream_model`.
pub fn request(
    translation: Translation,
    body: &[u8],
    upstream_model: &str,
    rules: UpstreamRules<'_>,
) -> Result<Vec<u8>, String> {
    let upstream_cap = rules.max_output_tokens;
    match translation {
        Translation::PassThrough => rewrite_model(body, upstream_model),
        Translation::ChatToMessages => {
            let converted =
                core_convert::openai_request_body_to_anthropic(body).map_err(|e| e.to_string())?;
            rewrite_model(&converted, upstream_model)
        }
        // The OpenAI side's per-model rules need the upstream's model id.
        Translation::MessagesToChat => {
            core_convert::anthropic_request_body_to_openai_for_model(body, upstream_model, rules)
                .map_err(|e| e.to_string())
        }
        Translation::ResponsesToChat => {
            core_convert::responses_request_body_to_chat(body, upstream_model, rules)
                .map_err(|e| e.to_string())
        }
        Translation::ResponsesToMessages => {
            core_convert::responses_request_body_to_anthropic(body, upstream_model)
                .map_err(|e| e.to_string())
        }
        // The Gemini request has no model (it is in the path): Chat is the hub.
        Translation::ChatToGemini => to_gemini(Ok(body.to_vec()), upstream_cap),
        Translation::MessagesToGemini => to_gemini(
            core_convert::anthropic_request_body_to_openai_for_model(body, upstream_model, rules),
            upstream_cap,
        ),
        Translation::ResponsesToGemini => to_gemini(
            core_convert::responses_request_body_to_chat(body, upstream_model, rules),
            upstream_cap,
        ),
    }
}

/// A Chat Completions request (or the error of making one) as a Gemini request, its
/// `maxOutputTokens` capped at `upstream_cap`.
fn to_gemini(
    chat: Result<Vec<u8>, core_convert::ConvertError>,
    upstream_cap: Option<u32>,
) -> Result<Vec<u8>, String> {
    let chat = chat.map_err(|e| e.to_string())?;
    let request: gate_core::llm::openai::ChatCompletionRequest =
        serde_json::from_slice(&chat).map_err(|e| e.to_string())?;
    let mut request = gemini::openai_request_to_gemini(request).map_err(|e| e.to_string())?;
    if let Some(cap) = upstream_cap {
        let config = request
            .generation_config
            .get_or_insert_with(Default::default);
        config.max_output_tokens = Some(config.max_output_tokens.map_or(cap, |m| m.min(cap)));
    }
    serde_json::to_vec(&request).map_err(|e| e.to_string())
}

/// Converts an upstream response body for a request that travelled by `translation`
/// (`model`: the name the client asked for, which Gemini answers do not carry).
pub fn response(translation: Translation, body: &[u8], model: &str) -> Result<Vec<u8>, String> {
    let from_gemini = || {
        gemini::gemini_response_body_to_openai(body, model, unix_now()).map_err(|e| e.to_string())
    };
    match translation {
        Translation::ChatToGemini => return from_gemini(),
        Translation::MessagesToGemini => {
            return core_convert::openai_response_body_to_anthropic(&from_gemini()?)
                .map_err(|e| e.to_string())
        }
        Translation::ResponsesToGemini => {
            return core_convert::chat_response_body_to_responses(&from_gemini()?, unix_now())
                .map_err(|e| e.to_string())
        }
        _ => {}
    }
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
        Translation::ChatToGemini
        | Translation::MessagesToGemini
        | Translation::ResponsesToGemini => return from_gemini(),
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
