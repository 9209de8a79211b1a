//! Request conversion: Gemini `GenerateContentRequest` <-> OpenAI chat request.

use super::{
    Blob, Content, FileData, FunctionCall, FunctionCallingConfig, FunctionDeclaration,
    FunctionResponse, GenerateContentRequest, GenerationConfig, Part, Tool, ToolConfig,
};
use crate::llm::convert::ConvertError;
use crate::llm::openai as oa;
use serde_json::Value;

/// Parses a Gemini request body and converts it (see [`gemini_request_to_openai`]).
pub fn gemini_request_body_to_openai(
    body: &[u8],
    model: &str,
    stream: bool,
) -> Result<Vec<u8>, ConvertError> {
    let request: GenerateContentRequest = serde_json::from_slice(body)
        .map_err(|err| ConvertError::InvalidRequest(err.to_string()))?;
    let converted = gemini_request_to_openai(request, model, stream)?;
    serde_json::to_vec(&converted).map_err(|err| ConvertError::InvalidRequest(err.to_string()))
}

/// Parses an OpenAI chat request body and converts it (see [`openai_request_to_gemini`]).
pub fn openai_request_body_to_gemini(body: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let request: oa::ChatCompletionRequest = serde_json::from_slice(body)
        .map_err(|err| ConvertError::InvalidRequest(err.to_string()))?;
    let converted = openai_request_to_gemini(request)?;
    serde_json::to_vec(&converted).map_err(|err| ConvertError::InvalidRequest(err.to_string()))
}

/// The text a function response carries: its `output` (or `content`) when that is a string,
/// else the whole `response` object as JSON.
fn function_response_text(response: &Value) -> String {
    for key in ["output", "content", "result"] {
        if let Some(Value::String(s)) = response.get(key) {
            return s.clone();
        }
    }
    match response {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Google's OpenAPI-subset schemas write types upper-case (`OBJECT`); JSON Schema wants them
/// lower-case. Every `type` string in the tree is lower-cased.
fn json_schema_from_openapi(schema: Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match (&*k, v) {
                        ("type", Value::String(t)) => Value::String(t.to_ascii_lowercase()),
                        (_, v) => json_schema_from_openapi(v),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(json_schema_from_openapi).collect())
        }
        other => other,
    }
}

/// Gemini request -> OpenAI chat request, for `model`, streamed or not (Gemini puts both in
/// the URL, not the body).
///
/// - `systemInstruction` -> a leading `system` message (its text parts joined with `"\n"`).
/// - `model` turns -> `assistant` messages: text parts (thought parts dropped) joined into
///   `content`, `functionCall` parts -> `tool_calls` (arguments = the JSON-encoded `args`).
///   A call without an `id` gets `call_<n>_<name>`, and the next `functionResponse` of that
///   name without an `id` answers it, so ids keep matching.
/// - `user` turns -> `functionResponse` parts first, as `tool` messages (content: the
///   response's `output` string, else its JSON), then one `user` message with the other parts:
///   text, `inlineData` images (a `data:` URL), `fileData` (its URI as an image URL).
/// - `functionDeclarations` -> function tools (`parametersJsonSchema`, else `parameters` with
///   its type names lower-cased). Other tool kinds (`googleSearch`, `codeExecution`, ...)
///   run on Google's servers: rejected (400).
/// - `toolConfig` mode AUTO / ANY / NONE -> `auto` / `required` (a named choice when exactly
///   one function is allowed) / `none`.
/// - `generationConfig`: `temperature`, `topP`, `maxOutputTokens` -> `max_tokens`,
///   `stopSequences` -> `stop`, `candidateCount` -> `n`; streaming also asks for usage
///   (`stream_options.include_usage`). Dropped: `topK`, `seed`, `thinkingConfig` (the Chat
///   Completions hub has no reasoning field yet), `safetySettings`, response schemas.
pub fn gemini_request_to_openai(
    request: GenerateContentRequest,
    model: &str,
    stream: bool,
) -> Result<oa::ChatCompletionRequest, ConvertError> {
    let mut messages = Vec::new();
    if let Some(system) = &request.system_instruction {
        let text = joined_text(&system.parts, "\n");
        if !text.is_empty() {
            messages.push(oa::ChatMessage::System {
                content: oa::MessageContent::Text(text),
                name: None,
            });
        }
    }
    // Calls of the last model turn that still wait for their response: (name, id).
    let mut pending: Vec<(String, String)> = Vec::new();
    let mut call_counter = 0usize;
    for content in request.contents {
        if content.role.as_deref() == Some("model") {
            pending.clear();
            let text = joined_text(&content.parts, "");
            let mut calls = Vec::new();
            for part in content.parts {
                if let Some(call) = part.function_call {
                    let id = match call.id {
                        Some(id) if !id.is_empty() => id,
                        _ => {
                            call_counter += 1;
                            format!("call_{call_counter}_{}", call.name)
                        }
                    };
                    let arguments = match call.args {
                        None | Some(Value::Null) => "{}".to_owned(),
                        Some(args @ Value::Object(_)) => args.to_string(),
                        Some(_) => {
                            return Err(ConvertError::InvalidRequest(format!(
                                "functionCall {:?}: args must be a JSON object",
                                call.name
                            )))
                        }
                    };
                    pending.push((call.name.clone(), id.clone()));
                    calls.push(oa::ToolCall {
                        id,
                        kind: "function".into(),
                        function: oa::FunctionCall {
                            name: call.name,
                            arguments,
                        },
                    });
                }
            }
            if text.is_empty() && calls.is_empty() {
                continue;
            }
            messages.push(oa::ChatMessage::Assistant {
                content: (!text.is_empty()).then_some(oa::MessageContent::Text(text)),
                tool_calls: (!calls.is_empty()).then_some(calls),
                refusal: None,
                name: None,
            });
        } else {
            let mut parts = Vec::new();
            for part in content.parts {
                if let Some(response) = part.function_response {
                    let id = match response.id {
                        Some(id) if !id.is_empty() => {
                            pending.retain(|(_, p)| *p != id);
                            id
                        }
                        _ => match pending.iter().position(|(n, _)| *n == response.name) {
                            Some(at) => pending.remove(at).1,
                            None => {
                                call_counter += 1;
                                format!("call_{call_counter}_{}", response.name)
                            }
                        },
                    };
                    messages.push(oa::ChatMessage::Tool {
                        content: oa::MessageContent::Text(function_response_text(
                            &response.response,
                        )),
                        tool_call_id: id,
                    });
                } else if part.thought == Some(true) {
                    continue;
                } else if let Some(text) = part.text {
                    parts.push(oa::ContentPart::Text { text });
                } else if let Some(blob) = part.inline_data {
                    parts.push(oa::ContentPart::ImageUrl {
                        image_url: oa::ImageUrl {
                            url: format!("data:{};base64,{}", blob.mime_type, blob.data),
                            detail: None,
                        },
                    });
                } else if let Some(file) = part.file_data {
                    parts.push(oa::ContentPart::ImageUrl {
                        image_url: oa::ImageUrl {
                            url: file.file_uri,
                            detail: None,
                        },
                    });
                }
            }
            let content = match parts.as_slice() {
                [] => continue,
                [oa::ContentPart::Text { text }] => oa::MessageContent::Text(text.clone()),
                _ => oa::MessageContent::Parts(parts),
            };
            messages.push(oa::ChatMessage::User {
                content,
                name: None,
            });
        }
    }

    let mut tools = Vec::new();
    for tool in request.tools.unwrap_or_default() {
        if let Some(kind) = tool.other.keys().next() {
            return Err(ConvertError::Unsupported(format!(
                "the Gemini server tool `{kind}` runs on Google's servers and needs a Gemini upstream"
            )));
        }
        for decl in tool.function_declarations.unwrap_or_default() {
            let parameters = decl
                .parameters_json_schema
                .or(decl.parameters.map(json_schema_from_openapi));
            tools.push(oa::Tool {
                kind: "function".into(),
                function: oa::FunctionDefinition {
                    name: decl.name,
                    description: decl.description,
                    parameters,
                    strict: None,
                },
            });
        }
    }
    let tool_choice = request
        .tool_config
        .and_then(|c| c.function_calling_config)
        .and_then(|c| {
            let allowed = c.allowed_function_names.unwrap_or_default();
            match c.mode.as_deref() {
                Some("NONE") => Some(oa::ToolChoice::Mode("none".into())),
                Some("ANY") if allowed.len() == 1 => {
                    Some(oa::ToolChoice::Named(oa::NamedToolChoice {
                        kind: "function".into(),
                        function: oa::NamedFunction {
                            name: allowed.into_iter().next().unwrap_or_default(),
                        },
                    }))
                }
                Some("ANY") => Some(oa::ToolChoice::Mode("required".into())),
                Some("AUTO" | "VALIDATED") => Some(oa::ToolChoice::Mode("auto".into())),
                _ => None,
            }
        });
    let config = request.generation_config.unwrap_or_default();
    Ok(oa::ChatCompletionRequest {
        model: model.to_owned(),
        messages,
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice,
        parallel_tool_calls: None,
        max_tokens: config.max_output_tokens,
        max_completion_tokens: None,
        temperature: config.temperature,
        top_p: config.top_p,
        stop: config
            .stop_sequences
            .filter(|s| !s.is_empty())
            .map(oa::StopSequences::Many),
        stream: stream.then_some(true),
        stream_options: stream.then_some(oa::StreamOptions {
            include_usage: Some(true),
        }),
        n: config.candidate_count,
        user: None,
        reasoning_effort: thinking_to_effort(config.thinking_config.as_ref()),
    })
}

/// `thinkingConfig` as an OpenAI `reasoning_effort`: `thinkingLevel` by name, a
/// `thinkingBudget` by size (0: off, which Chat Completions says as `minimal`; -1, dynamic:
/// left to the model). The per-model rules then fit it to what the served model takes.
fn thinking_to_effort(config: Option<&super::ThinkingConfig>) -> Option<String> {
    let config = config?;
    if let Some(level) = config.thinking_level.as_deref() {
        let level = level.to_ascii_lowercase();
        return matches!(level.as_str(), "minimal" | "low" | "medium" | "high").then_some(level);
    }
    match config.thinking_budget? {
        0 => Some("minimal".into()),
        b if b < 0 => None,
        b if b <= 2_048 => Some("low".into()),
        b if b <= 16_384 => Some("medium".into()),
        _ => Some("high".into()),
    }
}

fn joined_text(parts: &[Part], separator: &str) -> String {
    parts
        .iter()
        .filter(|p| p.thought != Some(true))
        .filter_map(|p| p.text.as_deref())
        .collect::<Vec<_>>()
        .join(separator)
}

fn message_parts(content: oa::MessageContent) -> Vec<Part> {
    match content {
        oa::MessageContent::Text(text) if text.is_empty() => Vec::new(),
        oa::MessageContent::Text(text) => vec![Part::text(text)],
        oa::MessageContent::Parts(parts) => parts
            .into_iter()
            .filter_map(|part| match part {
                oa::ContentPart::Text { text } => Some(Part::text(text)),
                oa::ContentPart::ImageUrl { image_url } => Some(image_part(image_url.url)),
                // Inline files (a `data:` URL) become inline data; a file id has no Gemini
                // equivalent and is dropped.
                oa::ContentPart::File { file } => file.file_data.map(image_part),
                oa::ContentPart::Unknown => None,
            })
            .collect(),
    }
}

/// A `data:` URL becomes inline data; any other URL a file reference.
fn image_part(url: String) -> Part {
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((mime, data)) = rest.split_once(";base64,") {
            return Part {
                inline_data: Some(Blob {
                    mime_type: mime.to_owned(),
                    data: data.to_owned(),
                }),
                ..Part::default()
            };
        }
    }
    Part {
        file_data: Some(FileData {
            mime_type: None,
            file_uri: url,
        }),
        ..Part::default()
    }
}

/// Appends parts to the last content when it has the same role (Gemini wants turns to
/// alternate), else starts a new content.
fn push_parts(contents: &mut Vec<Content>, role: &str, parts: Vec<Part>) {
    if parts.is_empty() {
        return;
    }
    match contents.last_mut() {
        Some(last) if last.role.as_deref() == Some(role) => last.parts.extend(parts),
        _ => contents.push(Content {
            role: Some(role.to_owned()),
            parts,
        }),
    }
}

/// OpenAI chat request -> Gemini request (the model and streaming go into the URL, so the
/// caller takes them from the chat request).
///
/// - `system` and `developer` messages -> `systemInstruction` (joined with `"\n\n"`).
/// - `user` -> `user` parts (text; images as `inlineData` for `data:` URLs, else
///   `fileData`); `assistant` -> `model` parts (text, then `functionCall` with the call's id
///   and its arguments parsed; arguments that are not a JSON object are a 400); `tool` ->
///   a `user` turn's `functionResponse` (`{"output": text}`, named after the call it answers).
///   Consecutive turns of one role are merged.
/// - tools -> one `functionDeclarations` tool (schemas as `parametersJsonSchema`);
///   `tool_choice` none / auto / required / named -> NONE / AUTO / ANY / ANY with that name.
/// - `max_completion_tokens`, else `max_tokens` -> `maxOutputTokens`; `temperature`,
///   `top_p`, `stop` -> `stopSequences`, `n` -> `candidateCount`.
/// - Dropped: `user`, `parallel_tool_calls`, `stream_options` (Gemini streams always carry
///   usage), the legacy `function` role.
pub fn openai_request_to_gemini(
    request: oa::ChatCompletionRequest,
) -> Result<GenerateContentRequest, ConvertError> {
    let mut system = Vec::new();
    let mut contents: Vec<Content> = Vec::new();
    let mut call_names: Vec<(String, String)> = Vec::new();
    for message in request.messages {
        match message {
            oa::ChatMessage::System { content, .. }
            | oa::ChatMessage::Developer { content, .. } => {
                let text = content.joined_text();
                if !text.is_empty() {
                    system.push(text);
                }
            }
            oa::ChatMessage::User { content, .. } => {
                push_parts(&mut contents, "user", message_parts(content));
            }
            oa::ChatMessage::Assistant {
                content,
                tool_calls,
                ..
            } => {
                let mut parts = content.map(message_parts).unwrap_or_default();
                for call in tool_calls.unwrap_or_default() {
                    let args: Value = if call.function.arguments.trim().is_empty() {
                        Value::Object(serde_json::Map::new())
                    } else {
                        serde_json::from_str(&call.function.arguments).map_err(|err| {
                            ConvertError::InvalidRequest(format!(
                                "tool call {:?}: arguments are not JSON: {err}",
                                call.id
                            ))
                        })?
                    };
                    if !args.is_object() {
                        return Err(ConvertError::InvalidRequest(format!(
                            "tool call {:?}: arguments must be a JSON object",
                            call.id
                        )));
                    }
                    call_names.push((call.id.clone(), call.function.name.clone()));
                    parts.push(Part {
                        function_call: Some(FunctionCall {
                            id: Some(call.id),
                            name: call.function.name,
                            args: Some(args),
                        }),
                        ..Part::default()
                    });
                }
                push_parts(&mut contents, "model", parts);
            }
            oa::ChatMessage::Tool {
                content,
                tool_call_id,
            } => {
                let name = call_names
                    .iter()
                    .find(|(id, _)| *id == tool_call_id)
                    .map(|(_, name)| name.clone())
                    .unwrap_or_else(|| tool_call_id.clone());
                let output = content.joined_text();
                push_parts(
                    &mut contents,
                    "user",
                    vec![Part {
                        function_response: Some(FunctionResponse {
                            id: Some(tool_call_id),
                            name,
                            response: serde_json::json!({ "output": output }),
                        }),
                        ..Part::default()
                    }],
                );
            }
            oa::ChatMessage::Unknown => {}
        }
    }
    let declarations: Vec<FunctionDeclaration> = request
        .tools
        .unwrap_or_default()
        .into_iter()
        .map(|tool| FunctionDeclaration {
            name: tool.function.name,
            description: tool.function.description,
            parameters: None,
            parameters_json_schema: tool.function.parameters,
        })
        .collect();
    let tool_config = request.tool_choice.map(|choice| {
        let (mode, allowed) = match choice {
            oa::ToolChoice::Mode(mode) => (
                match mode.as_str() {
                    "none" => "NONE",
                    "required" => "ANY",
                    _ => "AUTO",
                },
                None,
            ),
            oa::ToolChoice::Named(named) => ("ANY", Some(vec![named.function.name])),
        };
        ToolConfig {
            function_calling_config: Some(FunctionCallingConfig {
                mode: Some(mode.to_owned()),
                allowed_function_names: allowed,
            }),
        }
    });
    let config = GenerationConfig {
        temperature: request.temperature,
        top_p: request.top_p,
        max_output_tokens: request.max_completion_tokens.or(request.max_tokens),
        stop_sequences: request.stop.map(oa::StopSequences::into_vec),
        candidate_count: request.n,
        ..GenerationConfig::default()
    };
    Ok(GenerateContentRequest {
        contents,
        system_instruction: (!system.is_empty()).then(|| Content {
            role: None,
            parts: vec![Part::text(system.join("\n\n"))],
        }),
        tools: (!declarations.is_empty()).then(|| {
            vec![Tool {
                function_declarations: Some(declarations),
                other: serde_json::Map::new(),
            }]
        }),
        tool_config,
        generation_config: (config != GenerationConfig::default()).then_some(config),
        safety_settings: None,
    })
}
