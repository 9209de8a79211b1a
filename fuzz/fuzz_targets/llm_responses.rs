//! Fuzz target for the Responses API conversion (issue 12).
//!
//! The input is used whole as a Responses request body (to Chat Completions and to
//! Anthropic) and as upstream response bodies (chat and Anthropic to a Responses object), and
//! split on `\n` into chat-chunk data for [`ChatToResponsesStream`], alone and behind
//! [`AnthropicToOpenAiStream`] (a line `event:<name>` names the next Anthropic event). Nothing
//! may panic; every emitted event is JSON whose `type` is its SSE name and whose
//! `sequence_number` counts from 0; a stream ends with at most one terminal event.
#![no_main]
use gate_core::llm::model_rules::UpstreamRules;
use gate_core::llm::convert::{
    anthropic_response_body_to_responses, chat_response_body_to_responses,
    responses_request_body_to_anthropic, responses_request_body_to_chat, AnthropicToOpenAiStream,
    ChatToResponsesStream, StreamEvent,
};
use libfuzzer_sys::fuzz_target;

fn check(events: &[StreamEvent]) {
    let mut terminal = 0;
    for (index, event) in events.iter().enumerate() {
        let value: serde_json::Value =
            serde_json::from_str(&event.data).expect("events are JSON");
        assert_eq!(value["type"].as_str(), event.event.as_deref());
        assert_eq!(value["sequence_number"].as_u64(), Some(index as u64));
        if matches!(
            event.event.as_deref(),
            Some("response.completed" | "response.incomplete" | "response.failed")
        ) {
            terminal += 1;
        }
    }
    assert!(terminal <= 1, "more than one terminal event");
}

fuzz_target!(|data: &[u8]| {
    let _ = responses_request_body_to_chat(data, "gpt-5", UpstreamRules::capped(Some(4096)));
    let _ = responses_request_body_to_anthropic(data, "claude");
    let _ = chat_response_body_to_responses(data, 0);
    let _ = anthropic_response_body_to_responses(data, 0);

    let text = String::from_utf8_lossy(data);
    let mut direct = ChatToResponsesStream::new("m", 0);
    let mut to_chat = AnthropicToOpenAiStream::new("m", 0, true);
    let mut chained = ChatToResponsesStream::new("m", 0);
    let (mut direct_out, mut chained_out) = (Vec::new(), Vec::new());
    let mut event_name: Option<&str> = None;
    for line in text.split('\n') {
        if let Some(name) = line.strip_prefix("event:") {
            event_name = Some(name.trim());
            continue;
        }
        direct_out.extend(direct.handle_event(None, line));
        for chunk in to_chat.handle_event(event_name, line) {
            chained_out.extend(chained.handle_event(None, &chunk.data));
        }
        event_name = None;
    }
    direct_out.extend(direct.finish());
    for chunk in to_chat.finish() {
        chained_out.extend(chained.handle_event(None, &chunk.data));
    }
    chained_out.extend(chained.finish());
    check(&direct_out);
    check(&chained_out);
});
