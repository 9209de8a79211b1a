//! Properties of OpenAI <-> Anthropic conversion: request round trips keep text, tool names
//! and arguments; stream converters reassemble any split of text and tool arguments; nothing
//! panics on arbitrary input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use gate_core::llm::anthropic as an;
use gate_core::llm::convert::{
    anthropic_request_body_to_openai, anthropic_request_to_openai,
    anthropic_response_body_to_openai, estimate_count_tokens_body,
    openai_request_body_to_anthropic, openai_request_to_anthropic,
    openai_response_body_to_anthropic, request_summary, rewrite_model, AnthropicToOpenAiStream,
    OpenAiToAnthropicStream, StreamEvent,
};
use gate_core::llm::openai as oa;
use proptest::prelude::*;
use serde_json::{json, Value};

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1_000_000i32..1_000_000).prop_map(|n| json!(f64::from(n) / 8.0)),
        "\\PC{0,12}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-z_\"\\\\]{1,6}", json_value(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// One step of a generated OpenAI conversation.
#[derive(Debug, Clone)]
enum Turn {
    User(Vec<String>),
    AssistantText(String),
    /// Assistant text (maybe empty) plus tool calls (name, arguments), each answered by a
    /// tool message with the given text.
    AssistantTools(String, Vec<(String, Value, String)>),
}

fn non_empty_text() -> impl Strategy<Value = String> {
    "\\PC{1,20}"
}

fn turn() -> impl Strategy<Value = Turn> {
    prop_oneof![
        prop::collection::vec(non_empty_text(), 1..3).prop_map(Turn::User),
        non_empty_text().prop_map(Turn::AssistantText),
        (
            "\\PC{0,10}",
            prop::collection::vec(("[a-zA-Z_]{1,12}", json_object(), non_empty_text()), 1..3)
        )
            .prop_map(|(text, calls)| Turn::AssistantTools(text, calls)),
    ]
}

fn build_openai_request(system: Option<String>, turns: &[Turn]) -> oa::ChatCompletionRequest {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(oa::ChatMessage::System {
            content: oa::MessageContent::Text(system),
            name: None,
        });
    }
    let mut call_counter = 0;
    for turn in turns {
        match turn {
            Turn::User(parts) => messages.push(oa::ChatMessage::User {
                content: if parts.len() == 1 {
                    oa::MessageContent::Text(parts[0].clone())
                } else {
                    oa::MessageContent::Parts(
                        parts
                            .iter()
                            .map(|text| oa::ContentPart::Text { text: text.clone() })
                            .collect(),
                    )
                },
                name: None,
            }),
            Turn::AssistantText(text) => messages.push(oa::ChatMessage::Assistant {
                content: Some(oa::MessageContent::Text(text.clone())),
                tool_calls: None,
                refusal: None,
                name: None,
            }),
            Turn::AssistantTools(text, calls) => {
                let first_id = call_counter;
                let tool_calls = calls
                    .iter()
                    .map(|(name, args, _)| {
                        call_counter += 1;
                        oa::ToolCall {
                            id: format!("call_{call_counter}"),
                            kind: "function".into(),
                            function: oa::FunctionCall {
                                name: name.clone(),
                                arguments: args.to_string(),
                            },
                        }
                    })
                    .collect();
                messages.push(oa::ChatMessage::Assistant {
                    content: (!text.is_empty()).then(|| oa::MessageContent::Text(text.clone())),
                    tool_calls: Some(tool_calls),
                    refusal: None,
                    name: None,
                });
                for (offset, (_, _, result)) in calls.iter().enumerate() {
                    messages.push(oa::ChatMessage::Tool {
                        content: oa::MessageContent::Text(result.clone()),
                        tool_call_id: format!("call_{}", first_id + offset + 1),
                    });
                }
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
        temperature: None,
        top_p: None,
        stop: None,
        stream: None,
        stream_options: None,
        n: None,
        user: None,
        reasoning_effort: None,
    }
}

/// (all text in order, tool calls as (name, arguments value), tool results as (id, text)).
type Digest = (String, Vec<(String, Value)>, Vec<(String, String)>);

fn digest(request: &oa::ChatCompletionRequest) -> Digest {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut results = Vec::new();
    for message in &request.messages {
        match message {
            oa::ChatMessage::System { content, .. }
            | oa::ChatMessage::Developer { content, .. }
            | oa::ChatMessage::User { content, .. } => text.push_str(&content.joined_text()),
            oa::ChatMessage::Assistant {
                content,
                tool_calls,
                ..
            } => {
                if let Some(content) = content {
                    text.push_str(&content.joined_text());
                }
                for call in tool_calls.iter().flatten() {
                    let args = serde_json::from_str(&call.function.arguments)
                        .unwrap_or(Value::String(call.function.arguments.clone()));
                    calls.push((call.function.name.clone(), args));
                }
            }
            oa::ChatMessage::Tool {
                content,
                tool_call_id,
            } => results.push((tool_call_id.clone(), content.joined_text())),
            oa::ChatMessage::Unknown => {}
        }
    }
    (text, calls, results)
}

/// Splits `text` at the given char positions (taken modulo its length), never inside a
/// UTF-8 sequence.
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

/// What an OpenAI SDK accumulates from our chunks: text, and tool arguments per index.
fn accumulate_openai(events: &[StreamEvent]) -> (String, Vec<(String, String)>, bool) {
    let mut text = String::new();
    let mut tools: Vec<(String, String)> = Vec::new();
    let mut saw_done = false;
    for event in events {
        if event.data == "[DONE]" {
            saw_done = true;
            continue;
        }
        let chunk: oa::ChatCompletionChunk = match serde_json::from_str(&event.data) {
            Ok(chunk) => chunk,
            Err(err) => panic!("not a chunk: {err}: {}", event.data),
        };
        for choice in chunk.choices {
            if let Some(content) = choice.delta.content {
                text.push_str(&content);
            }
            for call in choice.delta.tool_calls.unwrap_or_default() {
                let index = call.index as usize;
                if index == tools.len() {
                    tools.push((String::new(), String::new()));
                }
                let function = call.function.unwrap_or_default();
                if let Some(entry) = tools.get_mut(index) {
                    if let Some(name) = function.name {
                        entry.0.push_str(&name);
                    }
                    if let Some(args) = function.arguments {
                        entry.1.push_str(&args);
                    }
                }
            }
        }
    }
    (text, tools, saw_done)
}

/// What an Anthropic SDK accumulates from our events: text, and tool inputs per block.
fn accumulate_anthropic(events: &[StreamEvent]) -> (String, Vec<(String, String)>, bool) {
    let mut text = String::new();
    let mut blocks: Vec<(u32, String, String)> = Vec::new();
    let mut saw_stop = false;
    for event in events {
        let parsed: an::MessageStreamEvent = match serde_json::from_str(&event.data) {
            Ok(parsed) => parsed,
            Err(err) => panic!("not an event: {err}: {}", event.data),
        };
        match parsed {
            an::MessageStreamEvent::ContentBlockStart {
                index,
                content_block: an::ContentBlock::ToolUse { name, .. },
            } => blocks.push((index, name, String::new())),
            an::MessageStreamEvent::ContentBlockDelta { index, delta } => match delta {
                an::BlockDelta::TextDelta { text: piece } => text.push_str(&piece),
                an::BlockDelta::InputJsonDelta { partial_json } => {
                    if let Some(block) = blocks.iter_mut().find(|b| b.0 == index) {
                        block.2.push_str(&partial_json);
                    }
                }
                _ => {}
            },
            an::MessageStreamEvent::MessageStop => saw_stop = true,
            _ => {}
        }
    }
    (
        text,
        blocks.into_iter().map(|(_, n, a)| (n, a)).collect(),
        saw_stop,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn openai_request_round_trip_keeps_text_and_tools(
        system in proptest::option::of(non_empty_text()),
        turns in prop::collection::vec(turn(), 1..6),
    ) {
        let original = build_openai_request(system, &turns);
        let anthropic = openai_request_to_anthropic(original.clone());
        prop_assert!(anthropic.is_ok(), "{:?}", anthropic);
        let anthropic = anthropic.unwrap_or_else(|_| unreachable!());
        // Anthropic requires alternating roles.
        for pair in anthropic.messages.windows(2) {
            prop_assert_ne!(pair[0].role, pair[1].role);
        }
        // And the JSON it would be sent as parses back.
        let wire = serde_json::to_string(&anthropic).unwrap_or_default();
        let reparsed: Result<an::MessagesRequest, _> = serde_json::from_str(&wire);
        prop_assert_eq!(reparsed.as_ref().ok(), Some(&anthropic));
        let back = anthropic_request_to_openai(anthropic);
        prop_assert!(back.is_ok());
        let back = back.unwrap_or_else(|_| unreachable!());
        prop_assert_eq!(digest(&back), digest(&original));
    }

    #[test]
    fn anthropic_to_openai_stream_reassembles_text_and_arguments(
        text in "\\PC{0,60}",
        text_cuts in prop::collection::vec(any::<usize>(), 0..8),
        args in json_object(),
        arg_cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let args_text = args.to_string();
        let mut upstream = vec![
            json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"c","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}}),
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        ];
        for piece in split_text(&text, &text_cuts) {
            upstream.push(json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":piece}}));
        }
        upstream.push(json!({"type":"content_block_stop","index":0}));
        upstream.push(json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_x","name":"tool_a","input":{}}}));
        for piece in split_text(&args_text, &arg_cuts) {
            upstream.push(json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":piece}}));
        }
        upstream.push(json!({"type":"content_block_stop","index":1}));
        upstream.push(json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":9}}));
        upstream.push(json!({"type":"message_stop"}));

        let mut converter = AnthropicToOpenAiStream::new("m", 0, true);
        let mut out = Vec::new();
        for event in &upstream {
            let name = event["type"].as_str();
            out.extend(converter.handle_event(name, &event.to_string()));
        }
        out.extend(converter.finish());
        let (got_text, tools, done) = accumulate_openai(&out);
        prop_assert!(done);
        prop_assert_eq!(got_text, text);
        prop_assert_eq!(tools.len(), 1);
        prop_assert_eq!(&tools[0].0, "tool_a");
        let parsed: Value = serde_json::from_str(&tools[0].1).unwrap_or(Value::Null);
        prop_assert_eq!(parsed, args);
    }

    #[test]
    fn openai_to_anthropic_stream_reassembles_text_and_arguments(
        text in "\\PC{0,60}",
        text_cuts in prop::collection::vec(any::<usize>(), 0..8),
        calls in prop::collection::vec(
            (json_object(), prop::collection::vec(any::<usize>(), 0..6)), 0..3),
    ) {
        let chunk = |delta: Value, finish: Value| {
            json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"g",
                "choices":[{"index":0,"delta":delta,"finish_reason":finish}]}).to_string()
        };
        let mut upstream = vec![chunk(json!({"role":"assistant","content":""}), Value::Null)];
        for piece in split_text(&text, &text_cuts) {
            upstream.push(chunk(json!({"content": piece}), Value::Null));
        }
        for (index, (args, cuts)) in calls.iter().enumerate() {
            upstream.push(chunk(json!({"tool_calls":[{"index":index,"id":format!("call_{index}"),
                "type":"function","function":{"name":format!("fn_{index}"),"arguments":""}}]}), Value::Null));
            for piece in split_text(&args.to_string(), cuts) {
                upstream.push(chunk(json!({"tool_calls":[{"index":index,"function":{"arguments":piece}}]}), Value::Null));
            }
        }
        upstream.push(chunk(json!({}), json!(if calls.is_empty() { "stop" } else { "tool_calls" })));
        upstream.push("[DONE]".to_owned());

        let mut converter = OpenAiToAnthropicStream::new("m");
        let mut out = Vec::new();
        for data in &upstream {
            out.extend(converter.handle_event(None, data));
        }
        out.extend(converter.finish());
        prop_assert!(out.iter().all(|e| e.event.as_deref() != Some("error")));
        let (got_text, tools, stopped) = accumulate_anthropic(&out);
        prop_assert!(stopped);
        prop_assert_eq!(got_text, text);
        prop_assert_eq!(tools.len(), calls.len());
        for (index, ((name, args_text), (args, _))) in tools.iter().zip(&calls).enumerate() {
            prop_assert_eq!(name, &format!("fn_{index}"));
            let parsed: Value = serde_json::from_str(args_text).unwrap_or(Value::Null);
            prop_assert_eq!(&parsed, args);
        }
    }

    #[test]
    fn converters_never_panic_on_arbitrary_strings(
        inputs in prop::collection::vec("\\PC{0,80}", 1..6),
    ) {
        let mut to_openai = AnthropicToOpenAiStream::new("m", 0, true);
        let mut to_anthropic = OpenAiToAnthropicStream::new("m");
        for input in &inputs {
            let bytes = input.as_bytes();
            let _ = openai_request_body_to_anthropic(bytes);
            let _ = anthropic_request_body_to_openai(bytes);
            let _ = openai_response_body_to_anthropic(bytes);
            let _ = anthropic_response_body_to_openai(bytes, 0);
            let _ = estimate_count_tokens_body(bytes);
            let _ = request_summary(bytes);
            let _ = rewrite_model(bytes, "x");
            let _ = to_openai.handle_event(Some("message_start"), input);
            let _ = to_anthropic.handle_event(None, input);
        }
        let _ = to_openai.finish();
        let _ = to_anthropic.finish();
    }

    #[test]
    fn converters_never_panic_on_arbitrary_json(value in json_value(), extra in json_value()) {
        // Arbitrary JSON, and arbitrary JSON grafted onto otherwise valid shapes.
        let mut candidates = vec![value.to_string()];
        for mut base in [
            json!({"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}),
            json!({"id":"c","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"x"}}]}),
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}),
        ] {
            if let Some(map) = base.as_object_mut() {
                map.insert("messages".into(), extra.clone());
            }
            candidates.push(base.to_string());
        }
        let mut to_openai = AnthropicToOpenAiStream::new("m", 0, false);
        let mut to_anthropic = OpenAiToAnthropicStream::new("m");
        for candidate in &candidates {
            let bytes = candidate.as_bytes();
            let _ = openai_request_body_to_anthropic(bytes);
            let _ = anthropic_request_body_to_openai(bytes);
            let _ = openai_response_body_to_anthropic(bytes);
            let _ = anthropic_response_body_to_openai(bytes, 0);
            let _ = estimate_count_tokens_body(bytes);
            let _ = to_openai.handle_event(None, candidate);
            let _ = to_anthropic.handle_event(None, candidate);
            // A rewritten body stays valid JSON with the new model.
            if let Ok(rewritten) = rewrite_model(bytes, "new\"model") {
                let parsed: Value = serde_json::from_slice(&rewritten).unwrap_or(Value::Null);
                prop_assert_eq!(&parsed["model"], &json!("new\"model"));
            }
        }
    }

    #[test]
    fn rewrite_model_only_changes_the_model(
        object in json_object(),
        new_model in "\\PC{0,12}",
    ) {
        let mut with_model = object.clone();
        if let Some(map) = with_model.as_object_mut() {
            map.insert("model".into(), json!("old"));
        }
        let body = serde_json::to_string_pretty(&with_model).unwrap_or_default();
        let rewritten = rewrite_model(body.as_bytes(), &new_model).unwrap_or_default();
        let mut expected = with_model.clone();
        if let Some(map) = expected.as_object_mut() {
            map.insert("model".into(), json!(new_model));
        }
        let parsed: Value = serde_json::from_slice(&rewritten).unwrap_or(Value::Null);
        prop_assert_eq!(parsed, expected);
        // Bytes outside the model value are unchanged: the rewrite is a single splice.
        let old_value = "\"old\"";
        let at = body.find(&format!("\"model\": {old_value}")).map(|i| i + "\"model\": ".len());
        if let Some(at) = at {
            let new_value = serde_json::to_string(&new_model).unwrap_or_default();
            let spliced = format!("{}{}{}", &body[..at], new_value, &body[at + old_value.len()..]);
            prop_assert_eq!(String::from_utf8_lossy(&rewritten), spliced);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Per-upstream model rules (`[upstreams.x.model_rules."<model>"]`).

mod upstream_model_rules {
    use super::*;
    use gate_core::llm::convert::anthropic_request_body_to_openai_for_model;
    use gate_core::llm::model_rules::{
        find_override, ModelRuleOverride, UpstreamRules, DROPPABLE_PARAMS,
    };
    use std::collections::BTreeMap;

    fn rule() -> impl Strategy<Value = ModelRuleOverride> {
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of(1u32..200_000),
            proptest::sample::subsequence(DROPPABLE_PARAMS.to_vec(), 0..4),
        )
            .prop_map(|(reasoning, max_output_tokens, drop)| ModelRuleOverride {
                reasoning,
                max_output_tokens,
                drop: drop.into_iter().map(str::to_owned).collect(),
            })
    }

    proptest! {
        /// Whatever the rule, the request Gate sends obeys it: a reasoning rule gives
        /// `max_completion_tokens` and no sampling parameters, a non-reasoning one
        /// `max_tokens`; the limit is within every cap; dropped parameters are absent; the
        /// messages are kept.
        #[test]
        fn converted_requests_obey_the_upstreams_rule(
            model in prop_oneof![Just("gpt-5-mini"), Just("gpt-4o"), Just("local-model"), Just("o3")],
            rule in rule(),
            upstream_cap in proptest::option::of(1u32..200_000),
            max_tokens in 1u32..300_000,
            text in "\\PC{1,20}",
        ) {
            let body = json!({"model": "client-name", "max_tokens": max_tokens, "temperature": 0.5,
                "stop_sequences": ["x"], "metadata": {"user_id": "u"},
                "messages": [{"role": "user", "content": text.clone()}]});
            let mut rules = BTreeMap::new();
            rules.insert(model.to_owned(), rule.clone());
            let upstream = UpstreamRules { max_output_tokens: upstream_cap, model: find_override(&rules, model) };
            let sent: Value = serde_json::from_slice(
                &anthropic_request_body_to_openai_for_model(body.to_string().as_bytes(), model, upstream).unwrap(),
            ).unwrap();
            let reasoning = rule.reasoning.unwrap_or_else(|| gate_core::llm::model_rules::openai_model_rule(model).reasoning);
            let (limit_key, other_key) = if reasoning { ("max_completion_tokens", "max_tokens") } else { ("max_tokens", "max_completion_tokens") };
            prop_assert!(sent.get(other_key).is_none(), "{}", sent);
            if let Some(limit) = sent.get(limit_key).and_then(Value::as_u64) {
                prop_assert!(limit <= u64::from(max_tokens));
                if let Some(cap) = upstream_cap { prop_assert!(limit <= u64::from(cap)); }
                if let Some(cap) = rule.max_output_tokens { prop_assert!(limit <= u64::from(cap)); }
            } else {
                prop_assert!(rule.drop.iter().any(|d| d == limit_key), "{}", sent);
            }
            if reasoning {
                prop_assert!(sent.get("temperature").is_none() && sent.get("stop").is_none());
            }
            for dropped in &rule.drop {
                prop_assert!(sent.get(dropped).is_none(), "{} still in {}", dropped, sent);
            }
            prop_assert_eq!(sent["messages"][0]["content"].as_str(), Some(text.as_str()));
            prop_assert_eq!(sent["model"].as_str(), Some(model));
        }

        /// The override for a model is its exact key, else the longest key naming its family.
        #[test]
        fn overrides_match_like_the_table(
            keys in proptest::collection::btree_set("[a-c]{1,3}(-[a-c]{1,2})?", 1..6),
            model in "[a-c]{1,3}(-[a-c]{1,2}){0,2}",
        ) {
            let rules: BTreeMap<String, ModelRuleOverride> = keys.iter().enumerate()
                .map(|(i, k)| (k.clone(), ModelRuleOverride { max_output_tokens: Some(i as u32 + 1), ..Default::default() }))
                .collect();
            let expected = if rules.contains_key(&model) {
                Some(model.clone())
            } else {
                keys.iter()
                    .filter(|k| model.strip_prefix(k.as_str()).is_some_and(|rest| rest.starts_with('-')))
                    .max_by_key(|k| k.len())
                    .cloned()
            };
            let found = find_override(&rules, &model).map(|r| r.max_output_tokens);
            prop_assert_eq!(found, expected.map(|k| rules[&k].max_output_tokens));
        }
    }
}
