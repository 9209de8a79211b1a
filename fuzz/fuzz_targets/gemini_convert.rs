//! Fuzz target for Gemini <-> Chat Completions conversion (and Gemini -> Anthropic through
//! the hub).
//!
//! The input is used twice: whole, as a JSON body for every request / response conversion;
//! and split on `\n` into a sequence of stream event data for both stream converters. Nothing
//! may panic; a Gemini request that converts must convert back to Gemini and on to Anthropic
//! (or fail cleanly there), and
//! each stream converter's `finish` must be idempotent.
#![no_main]
use gate_core::llm::convert::openai_request_body_to_anthropic;
use gate_core::llm::gemini::{
    gemini_request_body_to_openai, gemini_response_body_to_openai, openai_request_body_to_gemini,
    openai_response_body_to_gemini, parse_models_path, GeminiToOpenAiStream,
    OpenAiToGeminiStream,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(chat) = gemini_request_body_to_openai(data, "m", true) {
        // What the Gemini converter writes, the Chat Completions side reads back.
        assert!(openai_request_body_to_gemini(&chat).is_ok());
        let _ = openai_request_body_to_anthropic(&chat);
    }
    let _ = openai_request_body_to_gemini(data);
    let _ = gemini_response_body_to_openai(data, "m", 0);
    let _ = openai_response_body_to_gemini(data);
    let text = String::from_utf8_lossy(data);
    let _ = parse_models_path(&text);
    let mut to_openai = GeminiToOpenAiStream::new("m", 0, true);
    let mut to_gemini = OpenAiToGeminiStream::new("m");
    for line in text.split('\n') {
        let _ = to_openai.handle_data(line);
        let _ = to_gemini.handle_data(line);
    }
    assert!(!to_openai.finish().is_empty());
    assert!(to_openai.finish().is_empty());
    let _ = to_gemini.finish();
    assert!(to_gemini.finish().is_empty());
});
