//! OpenAI-shaped answers: Chat Completions, Completions, Embeddings, Responses and Models,
//! plain and streamed, exactly in the shapes the `openai` SDK parses. No HTTP here.

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};

use crate::common::{self, data_event, named_event, Answer, ForcedCall};
use crate::Mock;

type Outcome = Result<Answer, (StatusCode, String)>;

fn bad_request(message: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, message.into())
}

fn required_model(request: &Value) -> Result<String, (StatusCode, String)> {
    match request.get("model").and_then(Value::as_str) {
        Some(model) if !model.is_empty() => Ok(model.to_owned()),
        _ => Err(bad_request("you must provide a model parameter")),
    }
}

fn wants_stream(request: &Value) -> bool {
    request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// `GET /v1/models`.
pub fn models(mock: &Mock) -> Answer {
    let data: Vec<Value> = mock
        .models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000u64, "owned_by": "mock"}))
        .collect();
    Answer::Json(json!({"object": "list", "data": data}))
}

/// The tool the mock calls: `(name, parameters schema)`, honouring a forced `tool_choice`.
/// Chat tools nest under `function`; Responses tools are flat.
fn chosen_tool(
    request: &Value,
    nested: bool,
    scripted: Option<&ForcedCall>,
) -> Option<(String, Option<Value>)> {
    let tools = request.get("tools")?.as_array()?;
    let choice = request.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none") {
        return None;
    }
    let forced = choice.and_then(|c| {
        c.get("function")
            .and_then(|f| f.get("name"))
            .or_else(|| c.get("name"))
    });
    let functions = tools.iter().filter_map(|t| {
        let f = if nested { t.get("function")? } else { t };
        let name = f.get("name")?.as_str()?.to_owned();
        Some((name, f.get("parameters").cloned()))
    });
    let mut functions = functions.collect::<Vec<_>>().into_iter();
    match scripted
        .map(|f| f.name.as_str())
        .or(forced.and_then(Value::as_str))
    {
        Some(name) => functions.find(|(n, _)| n == name),
        None => functions.next(),
    }
}

/// `POST /v1/chat/completions`.
pub fn chat(mock: &Mock, request: &Value, scripted: Option<&ForcedCall>) -> Outcome {
    let model = required_model(request)?;
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_request("'messages' is a required property"))?;
    let last = messages.last();
    let last_is_tool_result =
        last.and_then(|m| m.get("role")).and_then(Value::as_str) == Some("tool");
    let prompt = if last_is_tool_result {
        last.and_then(|m| m.get("content"))
            .map(common::content_text)
            .unwrap_or_default()
    } else {
        messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|m| m.get("content"))
            .map(common::content_text)
            .unwrap_or_default()
    };
    let tool = if last_is_tool_result {
        None
    } else {
        chosen_tool(request, true, scripted)
    };
    let id = format!("chatcmpl-mock{}", mock.next_id());
    let created = common::unix_secs();
    let prompt_tokens = common::count_words(&Value::Array(messages.clone()));

    match tool {
        Some((name, schema)) => {
            let arguments = common::call_arguments(scripted, schema.as_ref()).to_string();
            let call_id = format!("call_mock{}", mock.next_id());
            let completion_tokens = common::count_text_words(&arguments);
            let usage = usage(prompt_tokens, completion_tokens);
            if !wants_stream(request) {
                return Ok(Answer::Json(json!({
                    "id": id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                        "annotations": [],
                        "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": name, "arguments": arguments}}]},
                        "logprobs": null, "finish_reason": "tool_calls"}],
                    "usage": usage, "service_tier": "default", "system_fingerprint": "fp_mock"
                })));
            }
            let include_usage = include_usage(request);
            let chunk = |delta: Value, finish: Value| {
                chunk(&id, created, &model, delta, finish, include_usage)
            };
            let mut events = vec![chunk(
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [{"index": 0, "id": call_id,
                    "type": "function", "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            )];
            for fragment in common::fragments(&arguments, 4) {
                events.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
                    Value::Null,
                ));
            }
            events.push(chunk(json!({}), json!("tool_calls")));
            Ok(Answer::Sse(finish_chat_stream(
                events,
                &id,
                created,
                &model,
                include_usage,
                usage,
            )))
        }
        None => {
            let text = common::reply_text(&prompt);
            let usage = usage(prompt_tokens, common::count_text_words(&text));
            if !wants_stream(request) {
                return Ok(Answer::Json(json!({
                    "id": id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null,
                        "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
                    "usage": usage, "service_tier": "default", "system_fingerprint": "fp_mock"
                })));
            }
            let include_usage = include_usage(request);
            let chunk = |delta: Value, finish: Value| {
                chunk(&id, created, &model, delta, finish, include_usage)
            };
            let mut events = vec![chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                Value::Null,
            )];
            for delta in common::text_deltas(&text) {
                events.push(chunk(json!({"content": delta}), Value::Null));
            }
            events.push(chunk(json!({}), json!("stop")));
            Ok(Answer::Sse(finish_chat_stream(
                events,
                &id,
                created,
                &model,
                include_usage,
                usage,
            )))
        }
    }
}

fn include_usage(request: &Value) -> bool {
    request
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn usage(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
}

fn chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Value,
    finish: Value,
    include_usage: bool,
) -> Bytes {
    let mut value = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "service_tier": "default", "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
    if include_usage {
        value["usage"] = Value::Null;
    }
    data_event(&value)
}

fn finish_chat_stream(
    mut events: Vec<Bytes>,
    id: &str,
    created: u64,
    model: &str,
    include_usage: bool,
    usage: Value,
) -> Vec<Bytes> {
    if include_usage {
        events.push(data_event(
            &json!({"id": id, "object": "chat.completion.chunk", "created": created,
            "model": model, "service_tier": "default", "system_fingerprint": "fp_mock",
            "choices": [], "usage": usage}),
        ));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// `POST /v1/completions` (legacy text completions).
pub fn completions(mock: &Mock, request: &Value) -> Outcome {
    let model = required_model(request)?;
    let prompt = match request.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        Some(_) => String::new(),
        None => return Err(bad_request("'prompt' is a required property")),
    };
    let text = common::reply_text(&prompt);
    let id = format!("cmpl-mock{}", mock.next_id());
    let created = common::unix_secs();
    let prompt_tokens = common::count_text_words(&prompt);
    let completion_tokens = common::count_text_words(&text);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens});
    if !wants_stream(request) {
        return Ok(Answer::Json(
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage}),
        ));
    }
    let include_usage = include_usage(request);
    let piece = |text: &str, finish: Value| {
        let mut v = json!({"id": id, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]});
        if include_usage {
            v["usage"] = Value::Null;
        }
        data_event(&v)
    };
    let mut events: Vec<Bytes> = common::text_deltas(&text)
        .iter()
        .map(|d| piece(d, Value::Null))
        .collect();
    events.push(piece("", json!("stop")));
    if include_usage {
        events.push(data_event(
            &json!({"id": id, "object": "text_completion", "created": created,
            "model": model, "choices": [], "usage": usage}),
        ));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Ok(Answer::Sse(events))
}

/// `POST /v1/embeddings`: a deterministic unit vector per input.
pub fn embeddings(request: &Value) -> Outcome {
    let model = required_model(request)?;
    let inputs: Vec<String> = match request.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        // Token ids: one input of numbers, or many.
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![Value::Array(items.clone()).to_string()]
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_array) => {
            items.iter().map(Value::to_string).collect()
        }
        _ => {
            return Err(bad_request(
                "'input' must be a string, an array of strings, or token arrays",
            ))
        }
    };
    if inputs.is_empty() {
        return Err(bad_request("'input' must not be empty"));
    }
    let dimensions = request
        .get("dimensions")
        .and_then(Value::as_u64)
        .unwrap_or(16);
    if dimensions == 0 || dimensions > 4096 {
        return Err(bad_request("'dimensions' must be between 1 and 4096"));
    }
    let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let mut prompt_tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            prompt_tokens += common::count_text_words(input);
            let vector = embedding_vector(input, dimensions as usize);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Answer::Json(
        json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}),
    ))
}

/// A unit vector seeded by an FNV-1a hash of the text (same text, same vector).
fn embedding_vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let raw: Vec<f32> = (0..dimensions)
        .map(|_| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let x = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        raw.iter().map(|x| x / norm).collect()
    } else {
        raw
    }
}

/// `POST /v1/responses`.
pub fn responses(mock: &Mock, request: &Value, scripted: Option<&ForcedCall>) -> Outcome {
    let model = required_model(request)?;
    let input = request
        .get("input")
        .ok_or_else(|| bad_request("'input' is a required property"))?;
    let (prompt, last_is_tool_output) = match input {
        Value::String(s) => (s.clone(), false),
        Value::Array(items) => {
            let last = items.last();
            if last.and_then(|i| i.get("type")).and_then(Value::as_str)
                == Some("function_call_output")
            {
                let output = last
                    .and_then(|i| i.get("output"))
                    .map(common::content_text)
                    .unwrap_or_default();
                (output, true)
            } else {
                let text = items
                    .iter()
                    .rev()
                    .find(|i| i.get("role").and_then(Value::as_str) == Some("user"))
                    .and_then(|i| i.get("content"))
                    .map(common::content_text)
                    .unwrap_or_default();
                (text, false)
            }
        }
        _ => {
            return Err(bad_request(
                "'input' must be a string or an array of input items",
            ))
        }
    };
    let tool = if last_is_tool_output {
        None
    } else {
        chosen_tool(request, false, scripted)
    };
    let id = format!("resp_mock{}", mock.next_id());
    let item_id = format!("msg_mock{}", mock.next_id());
    let created = common::unix_secs();
    let input_tokens = common::count_words(input);

    let (done_item, output_tokens) = match &tool {
        Some((name, schema)) => {
            let arguments = common::call_arguments(scripted, schema.as_ref()).to_string();
            let tokens = common::count_text_words(&arguments);
            (
                json!({"type": "function_call", "id": item_id, "call_id": format!("call_mock{}", mock.next_id()),
                    "name": name, "arguments": arguments, "status": "completed"}),
                tokens,
            )
        }
        None => {
            let text = common::reply_text(&prompt);
            let tokens = common::count_text_words(&text);
            (
                json!({"type": "message", "id": item_id, "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}),
                tokens,
            )
        }
    };
    let usage = json!({"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens});
    let response = |status: &str, output: Vec<Value>, usage: Value| {
        json!({"id": id, "object": "response", "created_at": created, "status": status,
            "background": false, "error": null, "incomplete_details": null,
            "instructions": request.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": request.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "max_tool_calls": null, "model": model, "output": output, "parallel_tool_calls": true,
            "previous_response_id": null, "reasoning": {"effort": null, "summary": null},
            "service_tier": "default", "store": true, "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto",
            "tools": request.get("tools").cloned().unwrap_or(json!([])), "top_logprobs": 0, "top_p": 1.0,
            "truncation": "disabled", "usage": usage, "user": null, "metadata": {}})
    };
    if !wants_stream(request) {
        return Ok(Answer::Json(response("completed", vec![done_item], usage)));
    }

    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut push = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        events.push(named_event(name, &data));
    };
    push(
        "response.created",
        json!({"response": response("in_progress", vec![], Value::Null)}),
    );
    push(
        "response.in_progress",
        json!({"response": response("in_progress", vec![], Value::Null)}),
    );
    match &tool {
        Some((name, _)) => {
            let arguments = done_item["arguments"].as_str().unwrap_or("{}").to_owned();
            let mut added = done_item.clone();
            added["arguments"] = json!("");
            added["status"] = json!("in_progress");
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": added}),
            );
            for fragment in common::fragments(&arguments, 4) {
                push(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": 0, "delta": fragment}),
                );
            }
            push(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": 0, "name": name, "arguments": arguments}),
            );
        }
        None => {
            let text = done_item["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": {"type": "message", "id": item_id, "status": "in_progress",
                    "role": "assistant", "content": []}}),
            );
            push(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
            );
            for delta in common::text_deltas(&text) {
                push(
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": delta, "logprobs": []}),
                );
            }
            push(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            );
            push(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}),
            );
        }
    }
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": done_item}),
    );
    push(
        "response.completed",
        json!({"response": response("completed", vec![done_item.clone()], usage)}),
    );
    Ok(Answer::Sse(events))
}
