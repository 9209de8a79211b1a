//! Conversion of the request shapes current coding agents send (issue 12): Claude Code's
//! newer Messages shape toward OpenAI-format upstreams, reasoning both ways, documents,
//! every `tool_choice`, and headers across protocols.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use gate_core::llm::convert::{
    anthropic_request_body_to_openai_for_model, anthropic_response_body_to_openai,
    openai_request_body_to_anthropic, openai_response_body_to_anthropic, ConvertError,
    OpenAiToAnthropicStream,
};
use gate_core::llm::model_rules::UpstreamRules;
use serde_json::{json, Value};

fn to_openai(body: Value, model: &str) -> Result<Value, ConvertError> {
    anthropic_request_body_to_openai_for_model(
        &serde_json::to_vec(&body).unwrap(),
        model,
        UpstreamRules::default(),
    )
    .map(|bytes| serde_json::from_slice(&bytes).unwrap())
}

fn to_anthropic(body: Value) -> Result<Value, ConvertError> {
    openai_request_body_to_anthropic(&serde_json::to_vec(&body).unwrap())
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
}

/// The shape Claude Code sends for a model name it does not know (issue 12's failure:
/// `unknown variant system`).
fn claude_code_request() -> Value {
    json!({
        "model": "gpt-5",
        "max_tokens": 32000,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Read this", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}, "title": "spec.pdf"},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain notes"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Let me look.", "signature": "sig"},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "file body"}
            ]},
            {"role": "system", "content": "Mid-conversation reminder."},
            {"role": "user", "content": "Go on"}
        ],
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "temperature": 1,
        "stop_sequences": ["</end>"],
        "metadata": {"user_id": "user-42"},
        "tools": [
            {"name": "Read", "description": "read a file", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        "stream": true
    })
}

#[test]
fn claude_code_shape_converts_for_a_reasoning_model() {
    let out = to_openai(claude_code_request(), "gpt-5").unwrap();
    let roles: Vec<&str> = out["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    // The system message stays where it was.
    assert_eq!(
        roles,
        ["system", "user", "assistant", "tool", "system", "user"]
    );
    assert_eq!(out["messages"][4]["content"], "Mid-conversation reminder.");
    let parts = out["messages"][1]["content"].as_array().unwrap();
    assert_eq!(parts[0], json!({"type": "text", "text": "Read this"}));
    assert_eq!(
        parts[1]["image_url"]["url"],
        "data:image/png;base64,iVBORw0KGgo="
    );
    assert_eq!(parts[2]["image_url"]["url"], "https://example.com/a.png");
    assert_eq!(
        parts[3],
        json!({"type": "file", "file": {"filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}})
    );
    assert_eq!(parts[4], json!({"type": "text", "text": "plain notes"}));
    // Thinking in history is dropped, the tool call kept.
    assert_eq!(
        out["messages"][2]["tool_calls"][0]["function"]["name"],
        "Read"
    );
    assert!(out["messages"][2].get("content").is_none_or(Value::is_null));
    // gpt-5: max_completion_tokens, no sampling or stop, effort mapped.
    assert_eq!(out["max_completion_tokens"], 32000);
    assert!(out.get("max_tokens").is_none());
    assert!(out.get("temperature").is_none());
    assert!(out.get("stop").is_none());
    assert_eq!(out["reasoning_effort"], "high");
    assert_eq!(out["user"], "user-42");
    assert_eq!(out["parallel_tool_calls"], false);
    assert_eq!(out["tool_choice"], "auto");
    assert_eq!(out["stream_options"]["include_usage"], true);
    // cache_control never reaches an OpenAI upstream.
    assert!(!out.to_string().contains("cache_control"));
    assert!(!out.to_string().contains("thinking"));
}

#[test]
fn a_chat_model_keeps_max_tokens_clamped_stop_and_no_effort() {
    let out = to_openai(claude_code_request(), "gpt-4o").unwrap();
    assert_eq!(out["max_tokens"], 16384);
    assert!(out.get("max_completion_tokens").is_none());
    assert!(out.get("reasoning_effort").is_none());
    assert_eq!(out["stop"], json!(["</end>"]));
    assert_eq!(out["temperature"], 1.0);
}

#[test]
fn thinking_forms_map_to_reasoning_effort() {
    let cases = [
        (
            json!({"type": "enabled", "budget_tokens": 2000}),
            Some("low"),
        ),
        (
            json!({"type": "enabled", "budget_tokens": 10000}),
            Some("medium"),
        ),
        (
            json!({"type": "enabled", "budget_tokens": 20000}),
            Some("high"),
        ),
        (json!({"type": "adaptive"}), None),
        (json!({"type": "disabled"}), Some("minimal")),
    ];
    for (thinking, effort) in cases {
        let body = json!({
            "model": "x", "max_tokens": 100, "thinking": thinking,
            "messages": [{"role": "user", "content": "hi"}]
        });
        let out = to_openai(body.clone(), "gpt-5-mini").unwrap();
        assert_eq!(out["reasoning_effort"].as_str(), effort, "{thinking}");
        // o3 has no `minimal`: the nearest level it has.
        let out = to_openai(body, "o3").unwrap();
        let expected = effort.map(|e| if e == "minimal" { "low" } else { e });
        assert_eq!(out["reasoning_effort"].as_str(), expected);
    }
}

#[test]
fn every_tool_choice_form() {
    let base = |choice: Value| {
        json!({
            "model": "x", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": choice
        })
    };
    let cases = [
        (json!({"type": "auto"}), json!("auto"), None),
        (json!({"type": "any"}), json!("required"), None),
        (
            json!({"type": "any", "disable_parallel_tool_use": true}),
            json!("required"),
            Some(false),
        ),
        (
            json!({"type": "tool", "name": "f"}),
            json!({"type": "function", "function": {"name": "f"}}),
            None,
        ),
        (json!({"type": "none"}), json!("none"), None),
    ];
    for (choice, expected, parallel) in cases {
        let out = to_openai(base(choice), "gpt-4o").unwrap();
        assert_eq!(out["tool_choice"], expected);
        assert_eq!(out["parallel_tool_calls"].as_bool(), parallel);
    }
}

#[test]
fn server_tools_mcp_and_url_documents_are_refused_by_name() {
    let body = json!({
        "model": "x", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]
    });
    let err = to_openai(body, "gpt-4o").unwrap_err();
    assert!(err.to_string().contains("web_search"), "{err}");
    assert_eq!(
        err.kind(),
        gate_core::llm::errors::ApiErrorKind::InvalidRequest
    );
    let body = json!({
        "model": "x", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "m"}]
    });
    assert!(to_openai(body, "gpt-4o")
        .unwrap_err()
        .to_string()
        .contains("mcp_servers"));
    let body = json!({
        "model": "x", "max_tokens": 10,
        "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}
        ]}]
    });
    assert!(to_openai(body, "gpt-4o")
        .unwrap_err()
        .to_string()
        .contains("URL"));
}

#[test]
fn openai_reasoning_effort_and_files_to_anthropic() {
    let out = to_anthropic(json!({
        "model": "claude-sonnet-4-5",
        "max_completion_tokens": 20000,
        "reasoning_effort": "medium",
        "temperature": 0.2,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "summarise"},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}
        ]}]
    }))
    .unwrap();
    assert_eq!(
        out["thinking"],
        json!({"type": "enabled", "budget_tokens": 8192})
    );
    assert!(out.get("temperature").is_none());
    assert_eq!(
        out["messages"][0]["content"][1],
        json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}, "title": "a.pdf"})
    );
    // A budget that does not fit under max_tokens is cut; too small a room turns it off.
    let small = to_anthropic(json!({
        "model": "c", "max_tokens": 1500, "reasoning_effort": "high",
        "messages": [{"role": "user", "content": "x"}]
    }))
    .unwrap();
    assert!(small.get("thinking").is_none());
    // Mid tool loop thinking stays off (the client cannot send signed thinking back).
    let looped = to_anthropic(json!({
        "model": "c", "max_tokens": 30000, "reasoning_effort": "high",
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}
        ]
    }))
    .unwrap();
    assert!(looped.get("thinking").is_none());
    // A file by id lives in OpenAI's storage: refused.
    assert!(to_anthropic(json!({
        "model": "c", "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]
    }))
    .is_err());
}

#[test]
fn reasoning_comes_back_as_thinking_and_the_other_way() {
    let upstream = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "deepseek-r1",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "42", "reasoning_content": "6 times 7"
        }}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    });
    let out: Value = serde_json::from_slice(
        &openai_response_body_to_anthropic(&serde_json::to_vec(&upstream).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        out["content"][0],
        json!({"type": "thinking", "thinking": "6 times 7", "signature": ""})
    );
    assert_eq!(out["content"][1], json!({"type": "text", "text": "42"}));

    let anthropic = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "done"}
        ],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 1, "output_tokens": 2}
    });
    let out: Value = serde_json::from_slice(
        &anthropic_response_body_to_openai(&serde_json::to_vec(&anthropic).unwrap(), 0).unwrap(),
    )
    .unwrap();
    assert_eq!(out["choices"][0]["message"]["reasoning_content"], "hmm");
    assert_eq!(out["choices"][0]["message"]["content"], "done");
}

#[test]
fn streamed_reasoning_becomes_a_thinking_block() {
    let mut stream = OpenAiToAnthropicStream::new("m");
    let mut events = Vec::new();
    for data in [
        r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"role":"assistant","reasoning":"think "}}]}"#,
        r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"reasoning_content":"more"}}]}"#,
        r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"answer"},"finish_reason":"stop"}]}"#,
        "[DONE]",
    ] {
        events.extend(stream.handle_event(None, data));
    }
    let names: Vec<&str> = events.iter().filter_map(|e| e.event.as_deref()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start: Value = serde_json::from_str(&events[1].data).unwrap();
    assert_eq!(start["content_block"]["type"], "thinking");
    let delta: Value = serde_json::from_str(&events[3].data).unwrap();
    assert_eq!(
        delta["delta"],
        json!({"type": "thinking_delta", "thinking": "more"})
    );
}

#[test]
fn responses_developer_messages_become_system_and_storage_features_are_refused() {
    use gate_core::llm::convert::responses_request_body_to_chat;
    let body = json!({
        "model": "x",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "env"}]},
            {"role": "user", "content": "hi"},
            {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "*** Begin"},
            {"type": "custom_tool_call_output", "call_id": "c1", "output": "done"}
        ],
        "tools": [{"type": "custom", "name": "apply_patch"}, {"type": "local_shell"}]
    });
    let out: Value = serde_json::from_slice(
        &responses_request_body_to_chat(
            body.to_string().as_bytes(),
            "llama-3",
            UpstreamRules::capped(Some(100)),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        out["messages"][0],
        json!({"role": "system", "content": "env"})
    );
    assert_eq!(out["messages"][1], json!({"role": "user", "content": "hi"}));
    assert_eq!(
        out["messages"][2]["tool_calls"][0]["function"],
        json!({"name": "apply_patch", "arguments": "{\"input\":\"*** Begin\"}"})
    );
    assert_eq!(out["messages"][3]["role"], "tool");
    assert!(
        out.get("tools").is_none(),
        "only function tools are sent: {out}"
    );
    for refused in [
        json!({"model": "x", "input": "hi", "previous_response_id": "resp_1"}),
        json!({"model": "x", "input": [{"type": "item_reference", "id": "msg_1"}]}),
        json!({"model": "x", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
    ] {
        let err = responses_request_body_to_chat(
            refused.to_string().as_bytes(),
            "m",
            UpstreamRules::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.kind(),
            gate_core::llm::errors::ApiErrorKind::InvalidRequest,
            "{err}"
        );
    }
}
