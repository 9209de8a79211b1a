//! Fuzz target for OpenAI <-> Anthropic conversion.
//!
//! The input is used twice: whole, as a JSON body for every request / response conversion,
//! the count-tokens estimate and the pass-through helpers; and split on `\n` into a sequence
//! of SSE event data for both stream converters (a line `event:<name>` sets the event name of
//! the next data line). Nothing may panic, and a body that routing accepts
//! ([`request_summary`]) must still be accepted after a model rewrite, with the new model.
#![no_main]
use gate_core::llm::convert::{
    anthropic_request_body_to_openai, anthropic_response_body_to_openai,
    estimate_count_tokens_body, openai_request_body_to_anthropic,
    openai_response_body_to_anthropic, request_summary, rewrite_model, tree_cost_estimate, AnthropicToOpenAiStream,
    OpenAiToAnthropicStream,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = openai_request_body_to_anthropic(data);
    let _ = anthropic_request_body_to_openai(data);
    let _ = openai_response_body_to_anthropic(data);
    let _ = anthropic_response_body_to_openai(data, 0);
    let _ = estimate_count_tokens_body(data);
    // The conversion bound's estimate never undercounts the text itself.
    assert!(tree_cost_estimate(data) >= data.len());
    // Scrubbing removes a secret wherever the input puts it.
    let secret = b"sk-fuzz-secret-0123";
    let mut with_secret = data.to_vec();
    with_secret.extend_from_slice(secret);
    with_secret.extend_from_slice(data);
    let scrubbed = gate_core::llm::scrub::scrub_secrets(&with_secret, &[&secret[..]]);
    assert!(scrubbed.windows(secret.len()).all(|window| window != secret));
    let original_summary = request_summary(data);
    if let (Ok(_), Ok(rewritten)) = (&original_summary, rewrite_model(data, "gate-model")) {
        let summary = request_summary(&rewritten);
        assert_eq!(
            summary.map(|s| s.model.map(|model| model.to_string())),
            Ok(Some("gate-model".to_owned())),
            "rewritten body must be JSON with the new model"
        );
    }

    let text = String::from_utf8_lossy(data);
    let mut to_openai = AnthropicToOpenAiStream::new("m", 0, true);
    let mut to_anthropic = OpenAiToAnthropicStream::new("m");
    let mut event_name: Option<&str> = None;
    for line in text.split('\n') {
        if let Some(name) = line.strip_prefix("event:") {
            event_name = Some(name.trim());
            continue;
        }
        let _ = to_openai.handle_event(event_name, line);
        let _ = to_anthropic.handle_event(event_name, line);
        event_name = None;
    }
    let _ = to_openai.finish();
    let _ = to_anthropic.finish();
});
