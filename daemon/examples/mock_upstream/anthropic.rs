//! Anthropic-shaped answers: Messages (plain, streamed with the real event sequence, tool use
//! streamed as `input_json_delta`), count_tokens and Models, in the shapes the `anthropic`
//! SDK parses. No HTTP here.

use http::StatusCode;
use serde_json::{json, Value};

use crate::common::{self, named_event, Answer, ForcedCall};
use crate::Mock;

type Outcome = Result<Answer, (StatusCode, String)>;

fn bad_request(message: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, message.into())
}

/// `GET /v1/models` with `anthropic-version`.
pub fn models(mock: &Mock) -> Answer {
    let data: Vec<Value> = mock
        .models
        .iter()
        .map(|id| json!({"type": "model", "id": id, "display_name": id, "created_at": "2025-01-01T00:00:00Z"}))
        .collect();
    let first = data
        .first()
        .and_then(|m| m.get("id"))
        .cloned()
        .unwrap_or(Value::Null);
    let last = data
        .last()
        .and_then(|m| m.get("id"))
        .cloned()
        .unwrap_or(Value::Null);
    Answer::Json(json!({"data": data, "has_more": false, "first_id": first, "last_id": last}))
}

fn messages_of(request: &Value) -> Result<&Vec<Value>, (StatusCode, String)> {
    request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_request("messages: Field required"))
}

/// Is the last message a user turn carrying `tool_result` blocks?
fn last_is_tool_result(messages: &[Value]) -> bool {
    messages
        .last()
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .is_some_and(|blocks| {
            blocks
                .iter()
                .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        })
}

fn chosen_tool(request: &Value, scripted: Option<&ForcedCall>) -> Option<(String, Option<Value>)> {
    let tools = request.get("tools")?.as_array()?;
    let choice = request.get("tool_choice");
    let choice_type = choice.and_then(|c| c.get("type")).and_then(Value::as_str);
    if choice_type == Some("none") {
        return None;
    }
    let forced = if choice_type == Some("tool") {
        choice.and_then(|c| c.get("name")).and_then(Value::as_str)
    } else {
        None
    };
    let mut functions = tools.iter().filter_map(|t| {
        let name = t.get("name")?.as_str()?.to_owned();
        Some((name, t.get("input_schema").cloned()))
    });
    match scripted.map(|f| f.name.as_str()).or(forced) {
        Some(name) => functions.find(|(n, _)| n == name),
        None => functions.next(),
    }
}

fn input_tokens(request: &Value) -> u64 {
    let mut total = 0;
    for key in ["system", "messages", "tools"] {
        if let Some(v) = request.get(key) {
            total += common::count_words(v);
        }
    }
    total.max(1)
}

/// `POST /v1/messages`.
pub fn messages(mock: &Mock, request: &Value, scripted: Option<&ForcedCall>) -> Outcome {
    let model = match request.get("model").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => m.to_owned(),
        _ => return Err(bad_request("model: Field required")),
    };
    if request.get("max_tokens").and_then(Value::as_u64).is_none() {
        return Err(bad_request("max_tokens: Field required"));
    }
    let messages = messages_of(request)?;
    let after_tool = last_is_tool_result(messages);
    let prompt = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(common::content_text)
        .unwrap_or_default();
    let tool = if after_tool {
        None
    } else {
        chosen_tool(request, scripted)
    };
    let id = format!("msg_mock{}", mock.next_id());
    let input_tokens = input_tokens(request);
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let (block, stop_reason, output_tokens) = match &tool {
        Some((name, schema)) => {
            let input = common::call_arguments(scripted, schema.as_ref());
            let tokens = common::count_text_words(&input.to_string());
            (
                json!({"type": "tool_use", "id": format!("toolu_mock{}", mock.next_id()), "name": name, "input": input}),
                "tool_use",
                tokens,
            )
        }
        None => {
            let text = common::reply_text(&prompt);
            let tokens = common::count_text_words(&text);
            (json!({"type": "text", "text": text}), "end_turn", tokens)
        }
    };
    let usage = |output: u64| {
        json!({"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "output_tokens": output, "service_tier": "standard"})
    };
    if !stream {
        return Ok(Answer::Json(
            json!({"id": id, "type": "message", "role": "assistant", "model": model,
            "content": [block], "stop_reason": stop_reason, "stop_sequence": null, "usage": usage(output_tokens)}),
        ));
    }

    let mut events = vec![named_event(
        "message_start",
        &json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage(1)}}),
    )];
    match &tool {
        Some(_) => {
            let mut start = block.clone();
            start["input"] = json!({});
            events.push(named_event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0, "content_block": start}),
            ));
            events.push(named_event("ping", &json!({"type": "ping"})));
            let arguments = block["input"].to_string();
            let mut pieces = vec![String::new()];
            pieces.extend(common::fragments(&arguments, 4));
            for piece in pieces {
                events.push(named_event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ));
            }
        }
        None => {
            events.push(named_event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            events.push(named_event("ping", &json!({"type": "ping"})));
            for delta in common::text_deltas(block["text"].as_str().unwrap_or_default()) {
                events.push(named_event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": delta}}),
                ));
            }
        }
    }
    events.push(named_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(named_event(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}}),
    ));
    events.push(named_event(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    Ok(Answer::Sse(events))
}

/// `POST /v1/messages/count_tokens`.
pub fn count_tokens(request: &Value) -> Outcome {
    if request
        .get("model")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(bad_request("model: Field required"));
    }
    messages_of(request)?;
    Ok(Answer::Json(json!({"input_tokens": input_tokens(request)})))
}
