//! Conversion examples with realistic payloads (as the official SDKs send and expect them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use gate_core::llm::convert::{
    anthropic_request_body_to_openai, anthropic_response_body_to_openai,
    openai_request_body_to_anthropic, openai_response_body_to_anthropic, request_summary,
    rewrite_model, AnthropicToOpenAiStream, ConvertError, OpenAiToAnthropicStream, StreamEvent,
};
use gate_core::llm::errors::ApiErrorKind;
use serde_json::{json, Value};

fn to_value(bytes: Result<Vec<u8>, ConvertError>) -> Value {
    match bytes {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(err) => panic!("conversion failed: {err}"),
    }
}

fn data_values(events: &[StreamEvent]) -> Vec<Value> {
    events
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap_or(Value::String(e.data.clone())))
        .collect()
}

#[test]
fn openai_request_with_tools_to_anthropic() {
    let body = json!({
        "model": "claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris and Rome?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call.2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call.2", "content": [{"type": "text", "text": "24C"}]},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }}],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "temperature": 1.4,
        "stop": "END",
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "u-42",
        "seed": 7,
        "frequency_penalty": 0.1
    });
    let out = to_value(openai_request_body_to_anthropic(
        body.to_string().as_bytes(),
    ));
    assert_eq!(
        out,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "system": "You are terse.\n\nUse tools.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather in Paris and Rome?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "24C"},
                    {"type": "text", "text": "Thanks"}
                ]}
            ],
            "stop_sequences": ["END"],
            "temperature": 1.0,
            "metadata": {"user_id": "u-42"},
            "stream": true,
            "tools": [{"name": "get_weather", "description": "Current weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
        })
    );
}

#[test]
fn openai_request_limits_and_rejections() {
    let with_max = json!({"model": "m", "max_tokens": 10, "max_completion_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        to_value(openai_request_body_to_anthropic(
            with_max.to_string().as_bytes()
        ))["max_tokens"],
        json!(20)
    );
    let n2 = json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "hi"}]});
    let err = openai_request_body_to_anthropic(n2.to_string().as_bytes());
    assert!(matches!(err, Err(ConvertError::Unsupported(_))));
    let bad_args = json!({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}
    ]});
    match openai_request_body_to_anthropic(bad_args.to_string().as_bytes()) {
        Err(err @ ConvertError::InvalidRequest(_)) => {
            assert!(err
                .to_string()
                .contains("messages[1].tool_calls[0].function.arguments"));
            assert_eq!(err.kind(), ApiErrorKind::InvalidRequest);
        }
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    assert!(matches!(
        openai_request_body_to_anthropic(b"{\"model\":\"m\"}"),
        Err(ConvertError::InvalidRequest(_))
    ));
}

#[test]
fn anthropic_request_with_tools_to_openai() {
    let body = json!({
        "model": "gpt-4o",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "What is 2+2? Use the calculator."},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "easy", "signature": "sig"},
                {"type": "text", "text": "Calling it."},
                {"type": "tool_use", "id": "toolu_01", "name": "calc", "input": {"expr": "2+2"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "4"}]},
                {"type": "text", "text": "And now?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}}
            ]}
        ],
        "tools": [{"name": "calc", "description": "Evaluates", "input_schema": {"type": "object", "properties": {"expr": {"type": "string"}}}}],
        "tool_choice": {"type": "tool", "name": "calc", "disable_parallel_tool_use": true},
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.2,
        "top_k": 5,
        "metadata": {"user_id": "abc"},
        "stream": true
    });
    let out = to_value(anthropic_request_body_to_openai(
        body.to_string().as_bytes(),
    ));
    assert_eq!(
        out,
        json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2+2? Use the calculator."},
                {"role": "assistant", "content": "Calling it.", "tool_calls": [
                    {"id": "toolu_01", "type": "function", "function": {"name": "calc", "arguments": "{\"expr\":\"2+2\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_01", "content": "4"},
                {"role": "user", "content": [
                    {"type": "text", "text": "And now?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
                ]}
            ],
            "tools": [{"type": "function", "function": {"name": "calc", "description": "Evaluates",
                "parameters": {"type": "object", "properties": {"expr": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "calc"}},
            "parallel_tool_calls": false,
            "max_tokens": 1024,
            "temperature": 0.2,
            "stop": ["\n\nHuman:"],
            "stream": true,
            "stream_options": {"include_usage": true},
            "user": "abc"
        })
    );
    let server_tool = json!({"model": "m", "max_tokens": 5, "messages": [],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
    assert!(matches!(
        anthropic_request_body_to_openai(server_tool.to_string().as_bytes()),
        Err(ConvertError::Unsupported(_))
    ));
    assert!(
        anthropic_request_body_to_openai(br#"{"model":"m","messages":[]}"#)
            .is_err_and(|e| e.to_string().contains("max_tokens"))
    );
}

#[test]
fn openai_response_with_tool_calls_to_anthropic() {
    let body = json!({
        "id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me check.", "refusal": null,
            "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]
        }}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 40, "audio_tokens": 0}},
        "system_fingerprint": "fp_1", "service_tier": "default"
    });
    let out = to_value(openai_response_body_to_anthropic(
        body.to_string().as_bytes(),
    ));
    assert_eq!(
        out,
        json!({
            "id": "chatcmpl-abc", "type": "message", "role": "assistant", "model": "gpt-4o-2024-08-06",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "call_9", "name": "lookup", "input": {"q": "x"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 60, "output_tokens": 20, "cache_read_input_tokens": 40}
        })
    );
    let length = json!({"id": "c", "model": "m", "created": 1,
        "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "abc"}}]});
    let out = to_value(openai_response_body_to_anthropic(
        length.to_string().as_bytes(),
    ));
    assert_eq!(out["stop_reason"], json!("max_tokens"));
    assert_eq!(out["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
    let empty = json!({"id": "c", "model": "m", "choices": []});
    let err = openai_response_body_to_anthropic(empty.to_string().as_bytes());
    assert!(err.is_err_and(|e| e.kind() == ApiErrorKind::BadGateway));
}

#[test]
fn anthropic_response_to_openai_completion() {
    let body = json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "Sure, "},
            {"type": "text", "text": "calling."},
            {"type": "tool_use", "id": "toolu_7", "name": "search", "input": {"q": "rust", "n": 3}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 30, "cache_read_input_tokens": 8, "cache_creation_input_tokens": 0}
    });
    let out = to_value(anthropic_response_body_to_openai(
        body.to_string().as_bytes(),
        1_700_000_123,
    ));
    assert_eq!(
        out,
        json!({
            "id": "msg_01", "object": "chat.completion", "created": 1700000123, "model": "claude-sonnet-4-5",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null, "message": {
                "role": "assistant", "content": "Sure, calling.", "refusal": null,
                "tool_calls": [{"id": "toolu_7", "type": "function", "function": {"name": "search", "arguments": "{\"n\":3,\"q\":\"rust\"}"}}]
            }}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50,
                "prompt_tokens_details": {"cached_tokens": 8}}
        })
    );
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ] {
        let body = json!({"id": "m", "type": "message", "role": "assistant", "model": "x",
            "content": [{"type": "text", "text": "t"}], "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": 1, "output_tokens": 1}});
        let out = to_value(anthropic_response_body_to_openai(
            body.to_string().as_bytes(),
            0,
        ));
        assert_eq!(out["choices"][0]["finish_reason"], json!(finish));
    }
}

fn anthropic_upstream_stream() -> Vec<(&'static str, Value)> {
    vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
            "content": [], "model": "claude-haiku-4-5", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {}}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"expr\": "}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"1+1\"}"}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 15}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ]
}

#[test]
fn anthropic_stream_to_openai_chunks() {
    let mut converter = AnthropicToOpenAiStream::new("alias", 1_700_000_000, true);
    let mut events = Vec::new();
    for (name, data) in anthropic_upstream_stream() {
        events.extend(converter.handle_event(Some(name), &data.to_string()));
    }
    events.extend(converter.finish());
    assert!(events.iter().all(|e| e.event.is_none()));
    let values = data_values(&events);
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "msg_1", "object": "chat.completion.chunk", "created": 1700000000, "model": "claude-haiku-4-5",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    assert_eq!(
        values,
        vec![
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Hel"}), Value::Null),
            chunk(json!({"content": "lo"}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "calc", "arguments": ""}}]}),
                Value::Null
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"expr\": "}}]}),
                Value::Null
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"1+1\"}"}}]}),
                Value::Null
            ),
            chunk(json!({}), json!("tool_calls")),
            json!({"id": "msg_1", "object": "chat.completion.chunk", "created": 1700000000, "model": "claude-haiku-4-5",
                "choices": [], "usage": {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}}),
            Value::String("[DONE]".into()),
        ]
    );
    assert!(converter.is_done());
    assert!(converter.handle_event(None, "{}").is_empty());
}

#[test]
fn anthropic_stream_early_end_and_error() {
    let mut converter = AnthropicToOpenAiStream::new("m", 0, false);
    let stream = anthropic_upstream_stream();
    for (name, data) in stream.iter().take(4) {
        converter.handle_event(Some(name), &data.to_string());
    }
    let tail = converter.finish();
    assert_eq!(tail.len(), 2);
    let error = data_values(&tail);
    assert_eq!(error[0]["error"]["type"], json!("server_error"));
    assert_eq!(error[1], json!("[DONE]"));

    let mut converter = AnthropicToOpenAiStream::new("m", 0, false);
    let out = converter.handle_event(
        Some("error"),
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    );
    let values = data_values(&out);
    assert_eq!(
        values[0],
        json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "service_unavailable"}})
    );
    assert!(converter.finish().is_empty());
}

#[test]
fn openai_stream_to_anthropic_events() {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}], "usage": null})
        .to_string()
    };
    let upstream = vec![
        chunk(json!({"role": "assistant", "content": "", "refusal": null}), Value::Null),
        chunk(json!({"content": "Let me "}), Value::Null),
        chunk(json!({"content": "look."}), Value::Null),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "find", "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "other", "arguments": "{}"}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}})
        .to_string(),
        "[DONE]".to_owned(),
    ];
    let mut converter = OpenAiToAnthropicStream::new("alias");
    let mut events = Vec::new();
    for data in &upstream {
        events.extend(converter.handle_event(None, data));
    }
    events.extend(converter.finish());
    let names: Vec<&str> = events.iter().filter_map(|e| e.event.as_deref()).collect();
    assert_eq!(
        names,
        vec![
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let values = data_values(&events);
    assert_eq!(
        values[0],
        json!({"type": "message_start", "message": {"id": "chatcmpl-1", "type": "message", "role": "assistant",
            "content": [], "model": "gpt-4o", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}}})
    );
    assert_eq!(
        values[1],
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    assert_eq!(
        values[2],
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}})
    );
    assert_eq!(
        values[5],
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "call_a", "name": "find", "input": {}}})
    );
    assert_eq!(
        values[6],
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"q\":"}})
    );
    assert_eq!(values[9]["content_block"]["id"], json!("call_b"));
    assert_eq!(values[9]["index"], json!(2));
    assert_eq!(
        values[12],
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": 4, "input_tokens": 9}})
    );
    assert_eq!(values[13], json!({"type": "message_stop"}));
}

#[test]
fn openai_stream_early_end_and_error() {
    let mut converter = OpenAiToAnthropicStream::new("m");
    converter.handle_event(
        None,
        r#"{"id":"c","choices":[{"index":0,"delta":{"content":"par"}}]}"#,
    );
    let tail = converter.finish();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].event.as_deref(), Some("error"));
    assert_eq!(
        serde_json::from_str::<Value>(&tail[0].data).unwrap_or_default()["type"],
        json!("error")
    );

    // A finish_reason without [DONE] still completes cleanly.
    let mut converter = OpenAiToAnthropicStream::new("m");
    converter.handle_event(
        None,
        r#"{"id":"c","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"length"}]}"#,
    );
    let tail = converter.finish();
    let names: Vec<_> = tail.iter().filter_map(|e| e.event.clone()).collect();
    assert_eq!(
        names,
        vec!["content_block_stop", "message_delta", "message_stop"]
    );
    assert!(tail[1].data.contains("\"max_tokens\""));

    let mut converter = OpenAiToAnthropicStream::new("m");
    let out = converter.handle_event(
        None,
        r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(
        serde_json::from_str::<Value>(&out[0].data).unwrap_or_default(),
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}})
    );
    assert!(converter.is_done());
    assert!(converter.finish().is_empty());
}

#[test]
fn passthrough_helpers_on_real_bodies() {
    let body = br#"{"model":"fast","max_tokens":64,"messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let summary = request_summary(body).unwrap_or_default();
    assert_eq!(summary.model.as_deref(), Some("fast"));
    assert!(summary.stream);
    let rewritten = rewrite_model(body, "claude-haiku-4-5").unwrap_or_default();
    assert_eq!(
        rewritten,
        br#"{"model":"claude-haiku-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}],"stream":true}"#.to_vec()
    );
}

#[test]
fn unknown_roles_blocks_and_fields_are_tolerated() {
    let openai = json!({"model": "m", "messages": [
        {"role": "function", "name": "f", "content": "legacy"},
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}, {"type": "text", "text": "hi"}], "extra": 1},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}, {"type": "text", "text": "ok"}], "audio": null}
    ], "response_format": {"type": "json_object"}, "logit_bias": {"1": 2}});
    let out = to_value(openai_request_body_to_anthropic(
        openai.to_string().as_bytes(),
    ));
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}
        ])
    );
    let anthropic = json!({"model": "m", "max_tokens": 9, "thinking": {"type": "enabled", "budget_tokens": 1024},
    "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}},
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
        {"type": "text", "text": "summarize", "cache_control": {"type": "ephemeral"}}
    ]}]});
    let out = to_value(anthropic_request_body_to_openai(
        anthropic.to_string().as_bytes(),
    ));
    // Text documents become text parts (issue 12); file-sourced images are dropped.
    assert_eq!(
        out["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "doc"},
            {"type": "text", "text": "summarize"}
        ]}])
    );
    // Unknown stream event types and deltas are skipped, not fatal.
    let mut converter = AnthropicToOpenAiStream::new("m", 0, false);
    assert_eq!(
        converter
            .handle_event(
                Some("content_block_delta"),
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{}}}"#
            )
            .len(),
        1 // the role chunk only
    );
    assert!(converter
        .handle_event(Some("future"), r#"{"type":"future_event","x":1}"#)
        .is_empty());
    assert!(!converter.is_done());
}
