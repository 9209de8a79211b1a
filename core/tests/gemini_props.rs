//! Properties of Gemini <-> Chat Completions conversion (and Gemini <-> Anthropic through it):
//! request round trips keep text, tool calls (name, arguments, ids) and tool results; response
//! round trips keep text, tool calls and usage; the stream converters agree with the
//! whole-body converters however the upstream bytes are split; nothing panics on any input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use gate_core::llm::convert::{anthropic_request_to_openai, openai_request_to_anthropic};
use gate_core::llm::gemini::{
    self, gemini_request_body_to_openai, gemini_request_to_openai, gemini_response_to_openai,
    openai_request_to_gemini, openai_response_body_to_gemini, openai_response_to_gemini,
    GeminiToOpenAiStream, GenerateContentRequest, GenerateContentResponse, OpenAiToGeminiStream,
};
use gate_core::llm::openai as oa;
use gate_core::llm::sse::SseParser;
use proptest::prelude::*;
use serde_json::{json, Value};

fn text() -> impl Strategy<Value = String> {
    "\\PC{1,20}"
}

fn args() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        "[a-z_]{1,6}",
        prop_oneof![
            "\\PC{0,8}".prop_map(Value::String),
            any::<i32>().prop_map(|n| json!(n)),
            any::<bool>().prop_map(Value::Bool),
        ],
        0..4,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z_]{0,10}"
}

/// A conversation turn: user text, assistant text, or assistant calls each answered.
#[derive(Debug, Clone)]
enum Turn {
    User(String),
    Assistant(String),
    Calls(Vec<(String, Value, String)>),
}

fn turns() -> impl Strategy<Value = Vec<Turn>> {
    prop::collection::vec(
        prop_oneof![
            text().prop_map(Turn::User),
            text().prop_map(Turn::Assistant),
            prop::collection::vec((name(), args(), text()), 1..3).prop_map(Turn::Calls),
        ],
        1..6,
    )
}

fn chat_request(system: Option<String>, turns: &[Turn]) -> oa::ChatCompletionRequest {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(oa::ChatMessage::System {
            content: oa::MessageContent::Text(system),
            name: None,
        });
    }
    let mut id = 0;
    for turn in turns {
        match turn {
            Turn::User(t) => messages.push(oa::ChatMessage::User {
                content: oa::MessageContent::Text(t.clone()),
                name: None,
            }),
            Turn::Assistant(t) => messages.push(oa::ChatMessage::Assistant {
                content: Some(oa::MessageContent::Text(t.clone())),
                tool_calls: None,
                refusal: None,
                name: None,
            }),
            Turn::Calls(calls) => {
                let mut tool_calls = Vec::new();
                let mut results = Vec::new();
                for (name, args, result) in calls {
                    id += 1;
                    tool_calls.push(oa::ToolCall {
                        id: format!("call_{id}"),
                        kind: "function".into(),
                        function: oa::FunctionCall {
                            name: name.clone(),
                            arguments: args.to_string(),
                        },
                    });
                    results.push(oa::ChatMessage::Tool {
                        content: oa::MessageContent::Text(result.clone()),
                        tool_call_id: format!("call_{id}"),
                    });
                }
                messages.push(oa::ChatMessage::Assistant {
                    content: None,
                    tool_calls: Some(tool_calls),
                    refusal: None,
                    name: None,
                });
                messages.extend(results);
            }
        }
    }
    oa::ChatCompletionRequest {
        model: "m".into(),
        messages,
        tools: None,
        tool_choice: None,
        parallel_tool_calls: None,
        max_tokens: Some(100),
        max_completion_tokens: None,
        temperature: Some(0.5),
        top_p: None,
        stop: None,
        stream: None,
        stream_options: None,
        n: None,
        user: None,
        reasoning_effort: None,
    }
}

/// What must survive any conversion: texts per role, calls (id, name, args), results (id, text).
#[derive(Debug, PartialEq)]
struct Essence {
    system: String,
    user: Vec<String>,
    assistant: Vec<String>,
    calls: Vec<(String, String, Value)>,
    results: Vec<(String, String)>,
}

fn essence(request: &oa::ChatCompletionRequest) -> Essence {
    let mut e = Essence {
        system: String::new(),
        user: vec![],
        assistant: vec![],
        calls: vec![],
        results: vec![],
    };
    for m in &request.messages {
        match m {
            oa::ChatMessage::System { content, .. } => e.system.push_str(&content.joined_text()),
            oa::ChatMessage::User { content, .. } => e.user.push(content.joined_text()),
            oa::ChatMessage::Assistant {
                content,
                tool_calls,
                ..
            } => {
                if let Some(c) = content {
                    e.assistant.push(c.joined_text());
                }
                for call in tool_calls.iter().flatten() {
                    e.calls.push((
                        call.id.clone(),
                        call.function.name.clone(),
                        serde_json::from_str(&call.function.arguments).unwrap(),
                    ));
                }
            }
            oa::ChatMessage::Tool {
                content,
                tool_call_id,
            } => e
                .results
                .push((tool_call_id.clone(), content.joined_text())),
            _ => {}
        }
    }
    e
}

/// Gemini merges consecutive turns of one role; compare texts as one concatenation per role.
fn merged(e: Essence) -> Essence {
    Essence {
        system: e.system,
        user: vec![e.user.concat()],
        assistant: vec![e.assistant.concat()],
        calls: e.calls,
        results: e.results,
    }
}

proptest! {
    #[test]
    fn chat_to_gemini_and_back_keeps_text_calls_and_results(system in prop::option::of(text()), turns in turns()) {
        let original = chat_request(system, &turns);
        let gemini = openai_request_to_gemini(original.clone()).unwrap();
        // Through the wire: serialize and parse as a client would send it.
        let body = serde_json::to_vec(&gemini).unwrap();
        let back: oa::ChatCompletionRequest =
            serde_json::from_slice(&gemini_request_body_to_openai(&body, "m", false).unwrap()).unwrap();
        prop_assert_eq!(merged(essence(&original)), merged(essence(&back)));
        prop_assert_eq!(back.max_tokens, Some(100));
        prop_assert_eq!(back.temperature, Some(0.5));
    }

    #[test]
    fn gemini_to_anthropic_through_the_hub_keeps_calls(turns in turns()) {
        let gemini = openai_request_to_gemini(chat_request(None, &turns)).unwrap();
        let chat = gemini_request_to_openai(gemini, "m", false).unwrap();
        let anthropic = openai_request_to_anthropic(chat.clone()).unwrap();
        let back = anthropic_request_to_openai(anthropic).unwrap();
        let calls = |r: &oa::ChatCompletionRequest| essence(r).calls.into_iter().map(|(_, n, a)| (n, a)).collect::<Vec<_>>();
        prop_assert_eq!(calls(&chat), calls(&back));
    }

    #[test]
    fn calls_without_ids_are_matched_by_name(calls in prop::collection::vec((name(), args(), text()), 1..4)) {
        // Gemini clients often send calls and responses without ids.
        let model_parts: Vec<Value> = calls.iter().map(|(n, a, _)| json!({"functionCall": {"name": n, "args": a}})).collect();
        let user_parts: Vec<Value> = calls.iter().map(|(n, _, r)| json!({"functionResponse": {"name": n, "response": {"output": r}}})).collect();
        let body = json!({"contents": [
            {"role": "user", "parts": [{"text": "go"}]},
            {"role": "model", "parts": model_parts},
            {"role": "user", "parts": user_parts},
        ]});
        let request: GenerateContentRequest = serde_json::from_value(body).unwrap();
        let chat = gemini_request_to_openai(request, "m", true).unwrap();
        let e = essence(&chat);
        prop_assert_eq!(e.calls.len(), calls.len());
        for ((id, _, _), (result_id, result)) in e.calls.iter().zip(&e.results) {
            prop_assert_eq!(id, result_id);
            prop_assert!(calls.iter().any(|(_, _, r)| r == result));
        }
        prop_assert_eq!(chat.stream_options.and_then(|o| o.include_usage), Some(true));
    }

    #[test]
    fn response_round_trip_keeps_text_calls_and_usage(
        content in prop::option::of(text()),
        calls in prop::collection::vec((name(), args()), 0..3),
        prompt in 0u64..1_000_000, completion in 0u64..1_000_000,
    ) {
        let chat = chat_completion(content.clone(), &calls, prompt, completion);
        let body = serde_json::to_vec(&chat).unwrap();
        let gemini: GenerateContentResponse = serde_json::from_slice(&openai_response_body_to_gemini(&body).unwrap()).unwrap();
        let back = gemini_response_to_openai(gemini, "m", 7);
        let message = &back.choices[0].message;
        prop_assert_eq!(message.content.clone().filter(|c| !c.is_empty()), content);
        let got: Vec<(String, String, Value)> = message.tool_calls.iter().flatten()
            .map(|c| (c.id.clone(), c.function.name.clone(), serde_json::from_str(&c.function.arguments).unwrap())).collect();
        let want: Vec<(String, String, Value)> = calls.iter().enumerate().map(|(i, (n, a))| (format!("call_{i}"), n.clone(), a.clone())).collect();
        prop_assert_eq!(got, want);
        let usage = back.usage.unwrap();
        prop_assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (prompt, completion, prompt + completion));
        let finish = if calls.is_empty() { "stop" } else { "tool_calls" };
        prop_assert_eq!(back.choices[0].finish_reason.as_deref(), Some(finish));
    }

    #[test]
    fn gemini_stream_agrees_with_the_whole_answer_on_every_split(
        words in prop::collection::vec("\\PC{1,6}", 1..6),
        calls in prop::collection::vec((name(), args()), 0..3),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        // Upstream: Gemini SSE, one chunk per word, calls and usage in the last chunk.
        let mut bytes = Vec::new();
        for (i, w) in words.iter().enumerate() {
            let last = i + 1 == words.len();
            let mut parts = vec![json!({"text": w})];
            if last {
                parts.extend(calls.iter().map(|(n, a)| json!({"functionCall": {"name": n, "args": a}})));
            }
            let mut chunk = json!({"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}], "responseId": "r1"});
            if last {
                chunk["candidates"][0]["finishReason"] = json!("STOP");
                chunk["usageMetadata"] = json!({"promptTokenCount": 3, "candidatesTokenCount": 4, "totalTokenCount": 7});
            }
            bytes.extend_from_slice(format!("data: {chunk}\r\n\r\n").as_bytes());
        }
        let mut positions: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        positions.sort_unstable();
        let mut parser = SseParser::new(1 << 20, 1 << 20);
        let mut conv = GeminiToOpenAiStream::new("m", 1, true);
        let mut out = Vec::new();
        let mut start = 0;
        for end in positions.into_iter().chain([bytes.len()]) {
            parser.push(&bytes[start..end]);
            start = end;
            while let Some(event) = parser.next_event() {
                out.extend(conv.handle_data(&event.unwrap().data));
            }
        }
        out.extend(conv.finish());
        // Reassemble the chat stream.
        let mut text = String::new();
        let mut got_calls = Vec::new();
        let mut usage = None;
        let mut finish = None;
        prop_assert_eq!(out.last().map(|e| e.data.as_str()), Some("[DONE]"));
        for event in &out[..out.len() - 1] {
            let chunk: oa::ChatCompletionChunk = serde_json::from_str(&event.data).unwrap();
            if let Some(u) = chunk.usage { usage = Some(u); }
            for choice in chunk.choices {
                if let Some(t) = choice.delta.content { text.push_str(&t); }
                for call in choice.delta.tool_calls.unwrap_or_default() {
                    let f = call.function.unwrap();
                    got_calls.push((f.name.unwrap(), serde_json::from_str::<Value>(&f.arguments.unwrap()).unwrap()));
                }
                if let Some(f) = choice.finish_reason { finish = Some(f); }
            }
        }
        prop_assert_eq!(text, words.concat());
        prop_assert_eq!(got_calls, calls.clone());
        let usage = usage.unwrap();
        prop_assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 4));
        prop_assert_eq!(finish.as_deref(), Some(if calls.is_empty() { "stop" } else { "tool_calls" }));
    }

    #[test]
    fn chat_stream_to_gemini_keeps_text_calls_and_usage(
        words in prop::collection::vec("\\PC{1,6}", 0..6),
        calls in prop::collection::vec((name(), args()), 0..3),
        pieces in 1usize..5,
    ) {
        let mut conv = OpenAiToGeminiStream::new("m");
        let mut out = Vec::new();
        let chunk = |delta: Value, finish: Value| json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).to_string();
        out.extend(conv.handle_data(&chunk(json!({"role": "assistant", "content": ""}), Value::Null)));
        for w in &words {
            out.extend(conv.handle_data(&chunk(json!({"content": w}), Value::Null)));
        }
        for (i, (n, a)) in calls.iter().enumerate() {
            let arguments = a.to_string();
            let chars: Vec<char> = arguments.chars().collect();
            let size = chars.len().div_ceil(pieces).max(1);
            out.extend(conv.handle_data(&chunk(json!({"tool_calls": [{"index": i, "id": format!("id{i}"), "type": "function", "function": {"name": n, "arguments": ""}}]}), Value::Null)));
            for piece in chars.chunks(size) {
                let piece: String = piece.iter().collect();
                out.extend(conv.handle_data(&chunk(json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}), Value::Null)));
            }
        }
        out.extend(conv.handle_data(&chunk(json!({}), json!(if calls.is_empty() { "stop" } else { "tool_calls" }))));
        out.extend(conv.handle_data(&json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}).to_string()));
        out.extend(conv.handle_data("[DONE]"));
        out.extend(conv.finish());
        let mut text = String::new();
        let mut got_calls = Vec::new();
        let mut last = None;
        for event in &out {
            let chunk: GenerateContentResponse = serde_json::from_str(&event.data).unwrap();
            for part in chunk.candidates[0].content.clone().unwrap().parts {
                if let Some(t) = part.text { text.push_str(&t); }
                if let Some(c) = part.function_call { got_calls.push((c.id.unwrap(), c.name, c.args.unwrap())); }
            }
            last = Some(chunk);
        }
        prop_assert_eq!(text, words.concat());
        let want: Vec<(String, String, Value)> = calls.iter().enumerate().map(|(i, (n, a))| (format!("id{i}"), n.clone(), a.clone())).collect();
        prop_assert_eq!(got_calls, want);
        let last = last.unwrap();
        prop_assert_eq!(last.candidates[0].finish_reason.as_deref(), Some("STOP"));
        let usage = last.usage_metadata.unwrap();
        prop_assert_eq!((usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count), (5, Some(6), 11));
    }

    #[test]
    fn nothing_panics_on_arbitrary_bodies(bytes in prop::collection::vec(any::<u8>(), 0..200), s in "\\PC{0,200}") {
        let _ = gemini_request_body_to_openai(&bytes, "m", true);
        let _ = gemini_request_body_to_openai(s.as_bytes(), "m", false);
        let _ = gemini::openai_request_body_to_gemini(s.as_bytes());
        let _ = gemini::gemini_response_body_to_openai(s.as_bytes(), "m", 0);
        let _ = openai_response_body_to_gemini(&bytes);
        let mut a = GeminiToOpenAiStream::new("m", 0, true);
        let _ = a.handle_data(&s);
        let _ = a.finish();
        let mut b = OpenAiToGeminiStream::new("m");
        let _ = b.handle_data(&s);
        let _ = b.finish();
    }
}

fn chat_completion(
    content: Option<String>,
    calls: &[(String, Value)],
    prompt: u64,
    completion: u64,
) -> oa::ChatCompletion {
    let tool_calls: Vec<oa::ToolCall> = calls
        .iter()
        .enumerate()
        .map(|(i, (n, a))| oa::ToolCall {
            id: format!("call_{i}"),
            kind: "function".into(),
            function: oa::FunctionCall {
                name: n.clone(),
                arguments: a.to_string(),
            },
        })
        .collect();
    oa::ChatCompletion {
        id: "chatcmpl-1".into(),
        object: "chat.completion".into(),
        created: 1,
        model: "m".into(),
        choices: vec![oa::Choice {
            index: 0,
            message: oa::ResponseMessage {
                role: "assistant".into(),
                content,
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                refusal: None,
                reasoning_content: None,
                reasoning: None,
            },
            finish_reason: Some(
                if calls.is_empty() {
                    "stop"
                } else {
                    "tool_calls"
                }
                .into(),
            ),
            logprobs: None,
        }],
        usage: Some(oa::Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: None,
        }),
        system_fingerprint: None,
    }
}

#[test]
fn gemini_cli_request_shape_converts() {
    // The shape Gemini CLI 0.61 sends (recorded by tests/agents): parametersJsonSchema,
    // thinkingConfig, a functionCall with a thoughtSignature, a functionResponse without id.
    let body = json!({
        "contents": [
            {"role": "user", "parts": [{"text": "context"}, {"text": "Read notes.txt"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "read_file", "args": {"file_path": "/w/notes.txt"}}, "thoughtSignature": "sig"}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "read_file", "response": {"output": "canary"}}}]}
        ],
        "systemInstruction": {"parts": [{"text": "You are a CLI agent."}]},
        "tools": [{"functionDeclarations": [{"name": "read_file", "description": "Reads", "parametersJsonSchema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}]}],
        "generationConfig": {"temperature": 1, "topP": 0.95, "topK": 64, "thinkingConfig": {"includeThoughts": true, "thinkingBudget": 8192}}
    });
    let chat: Value = serde_json::from_slice(
        &gemini_request_body_to_openai(body.to_string().as_bytes(), "gpt-4o-mini", true).unwrap(),
    )
    .unwrap();
    assert_eq!(chat["model"], "gpt-4o-mini");
    assert_eq!(
        chat["messages"][0],
        json!({"role": "system", "content": "You are a CLI agent."})
    );
    assert_eq!(
        chat["messages"][2]["tool_calls"][0]["function"]["name"],
        "read_file"
    );
    let id = chat["messages"][2]["tool_calls"][0]["id"].clone();
    assert_eq!(
        chat["messages"][3],
        json!({"role": "tool", "content": "canary", "tool_call_id": id})
    );
    assert_eq!(chat["tools"][0]["function"]["parameters"]["type"], "object");
    assert_eq!(chat["stream"], true);
    assert!(chat.get("top_k").is_none());
}

#[test]
fn openapi_schemas_are_lowered_and_server_tools_refused() {
    let body = json!({"contents": [{"parts": [{"text": "x"}]}],
        "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}}}]}]});
    let chat: Value = serde_json::from_slice(
        &gemini_request_body_to_openai(body.to_string().as_bytes(), "m", false).unwrap(),
    )
    .unwrap();
    assert_eq!(
        chat["tools"][0]["function"]["parameters"],
        json!({"type": "object", "properties": {"a": {"type": "string"}}})
    );
    let server = json!({"contents": [{"parts": [{"text": "x"}]}], "tools": [{"googleSearch": {}}]});
    let err = gemini_request_body_to_openai(server.to_string().as_bytes(), "m", false).unwrap_err();
    assert!(err.to_string().contains("googleSearch"), "{err}");
}

#[test]
fn finish_reasons_and_thoughts() {
    let response: GenerateContentResponse = serde_json::from_value(json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": "hmm", "thought": true}, {"text": "answer"}]}, "finishReason": "MAX_TOKENS"}],
        "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 3, "thoughtsTokenCount": 4, "totalTokenCount": 9}
    })).unwrap();
    let chat = gemini_response_to_openai(response, "m", 0);
    assert_eq!(chat.choices[0].message.content.as_deref(), Some("answer"));
    assert_eq!(chat.choices[0].finish_reason.as_deref(), Some("length"));
    assert_eq!(chat.usage.unwrap().completion_tokens, 7);
    let back = openai_response_to_gemini(gemini_response_to_openai(
        GenerateContentResponse::default(),
        "m",
        0,
    ));
    assert!(back.candidates.is_empty());
}

// ---------------------------------------------------------------------------------------
// The JSON-array stream decoder.

fn array_element() -> impl Strategy<Value = Value> {
    (text(), args(), 0u64..1000).prop_map(|(t, a, n)| {
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": t}]}}],
            "args": a, "usageMetadata": {"promptTokenCount": n}})
    })
}

fn decode_all(pieces: &[&[u8]]) -> Vec<Result<Vec<u8>, gemini::ArrayStreamError>> {
    let mut decoder = gemini::GeminiArrayDecoder::new(1 << 20);
    let mut out = Vec::new();
    for piece in pieces {
        decoder.push(piece);
        out.extend(std::iter::from_fn(|| decoder.next_element()));
    }
    out
}

proptest! {
    /// Every split of a JSON-array stream gives the elements one-shot decoding gives, each
    /// the element's own text, whatever whitespace and separators Google puts between them.
    #[test]
    fn array_stream_every_split_agrees(
        elements in prop::collection::vec(array_element(), 0..5),
        separator in prop_oneof![Just(","), Just("\n,\r\n"), Just(" , ")],
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let texts: Vec<String> = elements.iter().map(Value::to_string).collect();
        let stream = format!("[{}]", texts.join(separator));
        let bytes = stream.as_bytes();
        let one_shot = decode_all(&[bytes]);
        let expected: Vec<_> = texts.iter().map(|t| Ok(t.as_bytes().to_vec())).collect();
        prop_assert_eq!(&one_shot, &expected);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for p in points {
            pieces.push(&bytes[last..p]);
            last = p;
        }
        pieces.push(&bytes[last..]);
        prop_assert_eq!(decode_all(&pieces), one_shot);
    }

    /// Arbitrary bytes in any split: no panic, and the same elements and error as one shot.
    #[test]
    fn array_stream_any_bytes(data in prop::collection::vec(any::<u8>(), 0..256), cut in any::<prop::sample::Index>()) {
        let at = cut.index(data.len() + 1);
        prop_assert_eq!(decode_all(&[&data[..at], &data[at..]]), decode_all(&[&data]));
    }
}
