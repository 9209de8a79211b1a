//! Properties of the Responses API conversion (issue 12): a chat stream of any text, reasoning
//! and tool calls, cut into any chunks and any byte splits, comes out as Responses events that
//! reassemble the same text, tool calls and usage, identical whatever the splits; the
//! Anthropic -> Chat -> Responses chain keeps them too; a Responses request converted to Chat
//! keeps its text and tool calls; nothing panics on arbitrary input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use gate_core::llm::convert::{
    responses_request_body_to_anthropic, responses_request_body_to_chat, AnthropicToOpenAiStream,
    ChatToResponsesStream, StreamEvent,
};
use gate_core::llm::model_rules::UpstreamRules;
use gate_core::llm::sse::SseParser;
use proptest::prelude::*;
use serde_json::{json, Value};

fn split_text(text: &str, cuts: &[usize]) -> Vec<String> {
    let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let mut points: Vec<usize> = if boundaries.is_empty() {
        Vec::new()
    } else {
        cuts.iter()
            .map(|c| boundaries[c % boundaries.len()])
            .collect()
    };
    points.push(0);
    points.push(text.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| text[w[0]..w[1]].to_owned())
        .collect()
}

fn chunk(delta: Value, finish: Value) -> String {
    json!({"id": "chatcmpl-p", "object": "chat.completion.chunk", "created": 0, "model": "m",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    .to_string()
}

/// The SSE bytes of a chat stream: reasoning, text, then tool calls, each in pieces.
fn chat_stream(
    reasoning: &str,
    text: &str,
    calls: &[(String, String)],
    cuts: &[usize],
    usage: (u64, u64),
) -> Vec<u8> {
    let mut data = Vec::new();
    for piece in split_text(reasoning, cuts) {
        data.push(chunk(json!({"reasoning_content": piece}), Value::Null));
    }
    for piece in split_text(text, cuts) {
        data.push(chunk(json!({"content": piece}), Value::Null));
    }
    for (index, (name, arguments)) in calls.iter().enumerate() {
        data.push(chunk(
            json!({"tool_calls": [{"index": index, "id": format!("call_{index}"), "type": "function",
                   "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ));
        for piece in split_text(arguments, cuts) {
            data.push(chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    }
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    data.push(chunk(json!({}), json!(finish)));
    data.push(
        json!({"id": "chatcmpl-p", "object": "chat.completion.chunk", "created": 0, "model": "m",
               "choices": [], "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1,
               "total_tokens": usage.0 + usage.1}})
        .to_string(),
    );
    data.push("[DONE]".into());
    let mut bytes = Vec::new();
    for d in data {
        bytes.extend_from_slice(format!("data: {d}\n\n").as_bytes());
    }
    bytes
}

/// Feeds `bytes` cut at `splits` through an SSE parser into a fresh converter.
fn convert_split(bytes: &[u8], splits: &[usize]) -> Vec<StreamEvent> {
    let mut points: Vec<usize> = splits.iter().map(|s| s % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    let mut parser = SseParser::new(1 << 20, 1 << 22);
    let mut converter = ChatToResponsesStream::new("m", 0);
    let mut out = Vec::new();
    for w in points.windows(2) {
        parser.push(&bytes[w[0]..w[1]]);
        while let Some(event) = parser.next_event() {
            let event = event.unwrap();
            out.extend(converter.handle_event(event.event.as_deref(), &event.data));
        }
    }
    out.extend(converter.finish());
    out
}

struct Reassembled {
    text: String,
    reasoning: String,
    calls: Vec<(String, String)>,
    usage: (u64, u64),
    completed: Value,
}

fn reassemble(events: &[StreamEvent]) -> Reassembled {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut arguments: Vec<(String, String)> = Vec::new();
    let mut completed = Value::Null;
    for (index, event) in events.iter().enumerate() {
        let value: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(value["type"].as_str(), event.event.as_deref());
        assert_eq!(value["sequence_number"], index);
        match value["type"].as_str().unwrap() {
            "response.output_text.delta" => text.push_str(value["delta"].as_str().unwrap()),
            "response.reasoning_summary_text.delta" => {
                reasoning.push_str(value["delta"].as_str().unwrap())
            }
            "response.output_item.added" if value["item"]["type"] == "function_call" => arguments
                .push((
                    value["item"]["name"].as_str().unwrap().to_owned(),
                    String::new(),
                )),
            "response.function_call_arguments.delta" => arguments
                .last_mut()
                .unwrap()
                .1
                .push_str(value["delta"].as_str().unwrap()),
            "response.completed" => completed = value["response"].clone(),
            _ => {}
        }
    }
    let usage = (
        completed["usage"]["input_tokens"].as_u64().unwrap_or(0),
        completed["usage"]["output_tokens"].as_u64().unwrap_or(0),
    );
    Reassembled {
        text,
        reasoning,
        calls: arguments,
        usage,
        completed,
    }
}

fn tool_calls() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            "[a-z_]{1,12}",
            prop::collection::btree_map("[a-z]{1,6}", "\\PC{0,12}", 0..4),
        ),
        0..3,
    )
    .prop_map(|calls| {
        calls
            .into_iter()
            .map(|(name, args)| (name, json!(args).to_string()))
            .collect()
    })
}

proptest! {
    #[test]
    fn chat_stream_to_responses_keeps_everything_whatever_the_splits(
        reasoning in "\\PC{0,40}",
        text in "\\PC{0,80}",
        calls in tool_calls(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        splits in prop::collection::vec(any::<usize>(), 0..12),
        usage in (0u64..100_000, 0u64..100_000),
    ) {
        let bytes = chat_stream(&reasoning, &text, &calls, &cuts, usage);
        let one_shot = convert_split(&bytes, &[]);
        let split = convert_split(&bytes, &splits);
        prop_assert_eq!(&one_shot, &split);
        let got = reassemble(&split);
        prop_assert_eq!(&got.text, &text);
        prop_assert_eq!(&got.reasoning, &reasoning);
        prop_assert_eq!(&got.calls, &calls);
        prop_assert_eq!(got.usage, usage);
        // The final response repeats what was streamed.
        let output = got.completed["output"].as_array().unwrap();
        let message_text: String = output.iter()
            .filter(|i| i["type"] == "message")
            .map(|i| i["content"][0]["text"].as_str().unwrap().to_owned())
            .collect();
        prop_assert_eq!(message_text, text);
        let final_calls: Vec<(String, String)> = output.iter()
            .filter(|i| i["type"] == "function_call")
            .map(|i| (i["name"].as_str().unwrap().to_owned(), i["arguments"].as_str().unwrap().to_owned()))
            .collect();
        prop_assert_eq!(final_calls, calls);
    }

    #[test]
    fn anthropic_stream_through_chat_to_responses_keeps_text_and_calls(
        text in "\\PC{1,60}",
        calls in tool_calls(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        usage in (0u64..100_000, 1u64..100_000),
    ) {
        let mut events: Vec<(String, Value)> = vec![(
            "message_start".into(),
            json!({"type": "message_start", "message": {"id": "msg_p", "type": "message",
                "role": "assistant", "content": [], "model": "c", "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": usage.0, "output_tokens": 1}}}),
        )];
        events.push(("content_block_start".into(), json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}})));
        for piece in split_text(&text, &cuts) {
            events.push(("content_block_delta".into(), json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": piece}})));
        }
        events.push(("content_block_stop".into(), json!({"type": "content_block_stop", "index": 0})));
        for (i, (name, arguments)) in calls.iter().enumerate() {
            let index = i + 1;
            events.push(("content_block_start".into(), json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": format!("toolu_{i}"), "name": name, "input": {}}})));
            for piece in split_text(arguments, &cuts) {
                events.push(("content_block_delta".into(), json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece}})));
            }
            events.push(("content_block_stop".into(), json!({"type": "content_block_stop", "index": index})));
        }
        events.push(("message_delta".into(), json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": usage.1}})));
        events.push(("message_stop".into(), json!({"type": "message_stop"})));

        let mut to_chat = AnthropicToOpenAiStream::new("c", 0, true);
        let mut to_responses = ChatToResponsesStream::new("c", 0);
        let mut out = Vec::new();
        for (name, data) in &events {
            for chunk in to_chat.handle_event(Some(name), &data.to_string()) {
                out.extend(to_responses.handle_event(None, &chunk.data));
            }
        }
        out.extend(to_responses.finish());
        let got = reassemble(&out);
        prop_assert_eq!(&got.text, &text);
        prop_assert_eq!(&got.calls, &calls);
        prop_assert_eq!(got.usage, usage);
    }

    #[test]
    fn responses_request_to_chat_and_anthropic_keeps_text_and_calls(
        instructions in "\\PC{1,30}",
        user in "\\PC{1,30}",
        calls in tool_calls(),
        output in "\\PC{0,20}",
    ) {
        let mut input = vec![json!({"role": "user", "content": [{"type": "input_text", "text": user}]})];
        for (index, (name, arguments)) in calls.iter().enumerate() {
            input.push(json!({"type": "function_call", "call_id": format!("call_{index}"),
                "name": name, "arguments": arguments}));
        }
        for index in 0..calls.len() {
            input.push(json!({"type": "function_call_output", "call_id": format!("call_{index}"), "output": output}));
        }
        let body = json!({"model": "x", "instructions": instructions, "input": input}).to_string();
        let chat: Value = serde_json::from_slice(&responses_request_body_to_chat(body.as_bytes(), "m", UpstreamRules::default()).unwrap()).unwrap();
        prop_assert_eq!(&chat["messages"][0]["content"], &json!(instructions));
        prop_assert_eq!(&chat["messages"][1]["content"], &json!(user));
        if !calls.is_empty() {
            let sent: Vec<(String, String)> = chat["messages"][2]["tool_calls"].as_array().unwrap().iter()
                .map(|c| (c["function"]["name"].as_str().unwrap().to_owned(),
                          c["function"]["arguments"].as_str().unwrap().to_owned()))
                .collect();
            prop_assert_eq!(&sent, &calls);
            prop_assert_eq!(chat["messages"].as_array().unwrap().len(), 3 + calls.len());
        }
        let anthropic: Value = serde_json::from_slice(&responses_request_body_to_anthropic(body.as_bytes(), "c").unwrap()).unwrap();
        prop_assert_eq!(&anthropic["system"], &json!(instructions));
        let uses: Vec<(String, Value)> = anthropic["messages"].as_array().unwrap().iter()
            .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
            .filter(|b| b["type"] == "tool_use")
            .map(|b| (b["name"].as_str().unwrap().to_owned(), b["input"].clone()))
            .collect();
        let expected: Vec<(String, Value)> = calls.iter()
            .map(|(n, a)| (n.clone(), serde_json::from_str(a).unwrap()))
            .collect();
        prop_assert_eq!(uses, expected);
    }

    #[test]
    fn responses_converters_never_panic(data in "\\PC{0,200}", model in "\\PC{0,10}") {
        let _ = responses_request_body_to_chat(data.as_bytes(), &model, UpstreamRules::capped(Some(1)));
        let _ = responses_request_body_to_anthropic(data.as_bytes(), &model);
        let _ = gate_core::llm::convert::chat_response_body_to_responses(data.as_bytes(), 0);
        let _ = gate_core::llm::convert::anthropic_response_body_to_responses(data.as_bytes(), 0);
        let mut stream = ChatToResponsesStream::new("m", 0);
        for line in data.split('\n') {
            let _ = stream.handle_event(None, line);
        }
        let _ = stream.finish();
    }
}
