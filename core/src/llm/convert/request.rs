//! Request conversion: OpenAI chat request <-> Anthropic messages request.

use super::{anthropic_safe_tool_id, ConvertError};
use crate::llm::anthropic as an;
use crate::llm::openai as oa;
use serde_json::Value;

/// `max_tokens` sent to Anthropic when the OpenAI client set neither `max_tokens` nor
/// `max_completion_tokens` (Anthropic requires the field). 4096 is accepted by every
/// current Claude model.
pub const DEFAULT_ANTHROPIC_MAX_TOKENS: u32 = 4096;

/// Parses an OpenAI chat request body and converts it; the result is serialized JSON.
pub fn openai_request_body_to_anthropic(body: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let request: oa::ChatCompletionRequest = serde_json::from_slice(body)
        .map_err(|err| ConvertError::InvalidRequest(err.to_string()))?;
    let converted = openai_request_to_anthropic(request)?;
    serde_json::to_vec(&converted).map_err(|err| ConvertError::InvalidRequest(err.to_string()))
}

/// Parses an Anthropic messages request body and converts it; the result is serialized JSON.
pub fn anthropic_request_body_to_openai(body: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let request: an::MessagesRequest = serde_json::from_slice(body)
        .map_err(|err| ConvertError::InvalidRequest(err.to_string()))?;
    let converted = anthropic_request_to_openai(request)?;
    serde_json::to_vec(&converted).map_err(|err| ConvertError::InvalidRequest(err.to_string()))
}

/// Parses an Anthropic messages request body, converts it for `upstream_model` (the model
/// id the OpenAI-format upstream knows) and applies that model's parameter rules
/// ([`crate::llm::model_rules::apply_openai_model_rules_for`], with what the upstream adds:
/// its output cap, its own rule for the model and the parameters that rule drops); the
/// result is serialized JSON.
pub fn anthropic_request_body_to_openai_for_model(
    body: &[u8],
    upstream_model: &str,
    upstream: crate::llm::model_rules::UpstreamRules<'_>,
) -> Result<Vec<u8>, ConvertError> {
    let request: an::MessagesRequest = serde_json::from_slice(body)
        .map_err(|err| ConvertError::InvalidRequest(err.to_string()))?;
    let mut converted = anthropic_request_to_openai(request)?;
    converted.model = upstream_model.to_owned();
    crate::llm::model_rules::apply_openai_model_rules_for(&mut converted, upstream);
    serde_json::to_vec(&converted)
        .and_then(|body| upstream.drop_params(body))
        .map_err(|err| ConvertError::InvalidRequest(err.to_string()))
}

/// OpenAI chat request -> Anthropic messages request.
///
/// - `system` and `developer` messages, wherever they are, become the top-level `system`
///   (joined with `"\n\n"` in order).
/// - `tool` messages become `tool_result` blocks of a user turn; consecutive turns of the
///   same role are merged (Anthropic requires alternation); empty text is dropped, and a turn
///   left empty is dropped.
/// - Assistant `tool_calls` become `tool_use` blocks; arguments must be a JSON object (or
///   empty, read as `{}`), else 400. Tool-call ids are made Anthropic-safe.
/// - Images: `data:` URLs become base64 sources, other URLs url sources.
/// - `max_completion_tokens`, else `max_tokens`, else [`DEFAULT_ANTHROPIC_MAX_TOKENS`].
/// - `temperature` is clamped to Anthropic's `[0, 1]`; `stop` -> `stop_sequences`;
///   `user` -> `metadata.user_id`; `tool_choice` none/auto/required/named -> none/auto/any/
///   tool; `parallel_tool_calls: false` -> `disable_parallel_tool_use: true`.
/// - Dropped: `stream_options` (Anthropic streams always carry usage), `response_format`,
///   `logprobs`, `seed`, penalties, unknown content parts (audio, files), the legacy
///   `function` role. Rejected: `n > 1`.
pub fn openai_request_to_anthropic(
    request: oa::ChatCompletionRequest,
) -> Result<an::MessagesRequest, ConvertError> {
    if request.n.is_some_and(|n| n > 1) {
        return Err(ConvertError::Unsupported(
            "`n` greater than 1 cannot be sent to an Anthropic upstream".into(),
        ));
    }
    let mut system_parts: Vec<String> = Vec::new();
    let mut messages: Vec<an::Message> = Vec::new();
    let mut tool_id_counter = 0usize;

    for (message_index, message) in request.messages.into_iter().enumerate() {
        let (role, blocks) = match message {
            oa::ChatMessage::System { content, .. }
            | oa::ChatMessage::Developer { content, .. } => {
                let text = content.joined_text();
                if !text.is_empty() {
                    system_parts.push(text);
                }
                continue;
            }
            oa::ChatMessage::User { content, .. } => {
                (an::Role::User, user_blocks(content, message_index)?)
            }
            oa::ChatMessage::Assistant {
                content,
                tool_calls,
                refusal,
                ..
            } => {
                let mut blocks = Vec::new();
                if let Some(content) = content {
                    push_text(&mut blocks, content.joined_text());
                }
                if let Some(refusal) = refusal {
                    push_text(&mut blocks, refusal);
                }
                for (call_index, call) in tool_calls.unwrap_or_default().into_iter().enumerate() {
                    let input = parse_arguments(&call.function.arguments).ok_or_else(|| {
                        ConvertError::InvalidRequest(format!(
                            "messages[{message_index}].tool_calls[{call_index}].function.arguments is not a JSON object"
                        ))
                    })?;
                    tool_id_counter += 1;
                    blocks.push(an::ContentBlock::ToolUse {
                        id: anthropic_safe_tool_id(&call.id, tool_id_counter),
                        name: call.function.name,
                        input,
                    });
                }
                (an::Role::Assistant, blocks)
            }
            oa::ChatMessage::Tool {
                content,
                tool_call_id,
            } => {
                tool_id_counter += 1;
                let text = content.joined_text();
                let block = an::ContentBlock::ToolResult {
                    tool_use_id: anthropic_safe_tool_id(&tool_call_id, tool_id_counter),
                    content: if text.is_empty() {
                        None
                    } else {
                        Some(an::ToolResultContent::Text(text))
                    },
                    is_error: None,
                };
                (an::Role::User, vec![block])
            }
            oa::ChatMessage::Unknown => continue,
        };
        if blocks.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some(an::Message {
                role: last_role,
                content: an::MessageContent::Blocks(last_blocks),
            }) if *last_role == role => last_blocks.extend(blocks),
            _ => messages.push(an::Message {
                role,
                content: an::MessageContent::Blocks(blocks),
            }),
        }
    }

    let tools = request.tools.map(|tools| {
        tools
            .into_iter()
            .map(|tool| an::Tool {
                kind: None,
                name: tool.function.name,
                description: tool.function.description,
                input_schema: Some(
                    tool.function
                        .parameters
                        .unwrap_or_else(|| serde_json::json!({"type":"object","properties":{}})),
                ),
            })
            .collect::<Vec<_>>()
    });
    let disable_parallel = request
        .parallel_tool_calls
        .map(|parallel| !parallel)
        .filter(|d| *d);
    let tool_choice = match request.tool_choice {
        None => disable_parallel.map(|d| an::ToolChoice::Auto {
            disable_parallel_tool_use: Some(d),
        }),
        Some(oa::ToolChoice::Mode(mode)) => match mode.as_str() {
            "none" => Some(an::ToolChoice::None),
            "required" => Some(an::ToolChoice::Any {
                disable_parallel_tool_use: disable_parallel,
            }),
            "auto" => Some(an::ToolChoice::Auto {
                disable_parallel_tool_use: disable_parallel,
            }),
            other => {
                return Err(ConvertError::InvalidRequest(format!(
                    "tool_choice: unknown mode {other:?} (expected none, auto or required)"
                )))
            }
        },
        Some(oa::ToolChoice::Named(named)) => Some(an::ToolChoice::Tool {
            name: named.function.name,
            disable_parallel_tool_use: disable_parallel,
        }),
    };
    // `tool_choice` without tools is an error on Anthropic; with `none` and no tools, drop it.
    let tool_choice = if tools.as_ref().is_none_or(|t| t.is_empty()) {
        None
    } else {
        tool_choice
    };

    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(DEFAULT_ANTHROPIC_MAX_TOKENS);
    let forced_tool = matches!(
        tool_choice,
        Some(an::ToolChoice::Any { .. } | an::ToolChoice::Tool { .. })
    );
    // Mid tool loop (the last turn carries tool results), Anthropic wants the previous
    // assistant turn to start with its signed thinking block, which an OpenAI client does
    // not send back: thinking stays off there.
    let in_tool_loop = messages.last().is_some_and(|m| match &m.content {
        an::MessageContent::Blocks(blocks) => blocks
            .iter()
            .any(|b| matches!(b, an::ContentBlock::ToolResult { .. })),
        an::MessageContent::Text(_) => false,
    });
    let thinking = if forced_tool || in_tool_loop {
        None
    } else {
        request
            .reasoning_effort
            .as_deref()
            .and_then(|effort| thinking_for_effort(effort, max_tokens))
    };
    // Anthropic refuses sampling changes with thinking on.
    let (temperature, top_p) = if thinking.is_some() {
        (None, None)
    } else {
        (
            request.temperature.map(|t| t.clamp(0.0, 1.0)),
            request.top_p,
        )
    };

    Ok(an::MessagesRequest {
        model: request.model,
        messages,
        max_tokens,
        system: if system_parts.is_empty() {
            None
        } else {
            Some(an::SystemPrompt::Text(system_parts.join("\n\n")))
        },
        stop_sequences: request
            .stop
            .map(oa::StopSequences::into_vec)
            .filter(|stops| !stops.is_empty()),
        temperature,
        top_p,
        top_k: None,
        metadata: request.user.map(|user| an::Metadata {
            user_id: Some(user),
        }),
        stream: request.stream,
        tools: tools.filter(|t| !t.is_empty()),
        tool_choice,
        thinking,
        output_config: None,
        mcp_servers: None,
    })
}

/// Thinking budgets for OpenAI's `reasoning_effort` levels, in tokens.
pub const THINKING_BUDGET_LOW: u32 = 2048;
pub const THINKING_BUDGET_MEDIUM: u32 = 8192;
pub const THINKING_BUDGET_HIGH: u32 = 24576;
/// Anthropic's smallest thinking budget.
pub const THINKING_BUDGET_MIN: u32 = 1024;

/// OpenAI `reasoning_effort` -> Anthropic `thinking`: `none`/`minimal` -> off; low, medium,
/// high (and `xhigh`) -> enabled with [`THINKING_BUDGET_LOW`] / `_MEDIUM` / `_HIGH`, cut to
/// fit under `max_tokens` (Anthropic counts thinking in `max_tokens`); off when less than
/// [`THINKING_BUDGET_MIN`] would be left.
pub fn thinking_for_effort(effort: &str, max_tokens: u32) -> Option<an::ThinkingConfig> {
    let budget = match effort {
        "low" => THINKING_BUDGET_LOW,
        "medium" => THINKING_BUDGET_MEDIUM,
        "high" | "xhigh" => THINKING_BUDGET_HIGH,
        _ => return None,
    };
    let budget = budget.min(max_tokens.saturating_sub(1024).max(max_tokens / 2));
    (budget >= THINKING_BUDGET_MIN).then_some(an::ThinkingConfig::Enabled {
        budget_tokens: budget,
    })
}

/// Anthropic `output_config.effort`, else `thinking` -> OpenAI `reasoning_effort`:
/// effort low/medium/high/max -> low/medium/high/high; thinking enabled with a budget below
/// 4096 -> low, below 16384 -> medium, else high; `disabled` -> `minimal` (the per-model rules
/// raise it to the model's lowest level); adaptive or absent -> none (the model's default).
pub fn effort_for_thinking(
    thinking: Option<&an::ThinkingConfig>,
    output_config: Option<&an::OutputConfig>,
) -> Option<String> {
    if let Some(effort) = output_config.and_then(|c| c.effort.as_deref()) {
        let mapped = match effort {
            "low" => "low",
            "medium" => "medium",
            "high" | "max" => "high",
            _ => return None,
        };
        return Some(mapped.to_owned());
    }
    let effort = match thinking? {
        an::ThinkingConfig::Enabled { budget_tokens } if *budget_tokens < 4096 => "low",
        an::ThinkingConfig::Enabled { budget_tokens } if *budget_tokens < 16384 => "medium",
        an::ThinkingConfig::Enabled { .. } => "high",
        an::ThinkingConfig::Disabled => "minimal",
        an::ThinkingConfig::Adaptive | an::ThinkingConfig::Unknown => return None,
    };
    Some(effort.to_owned())
}

fn push_text(blocks: &mut Vec<an::ContentBlock>, text: String) {
    if !text.is_empty() {
        blocks.push(an::ContentBlock::Text { text });
    }
}

fn user_blocks(
    content: oa::MessageContent,
    message_index: usize,
) -> Result<Vec<an::ContentBlock>, ConvertError> {
    Ok(match content {
        oa::MessageContent::Text(text) => {
            let mut blocks = Vec::new();
            push_text(&mut blocks, text);
            blocks
        }
        oa::MessageContent::Parts(parts) => {
            let mut blocks = Vec::new();
            for part in parts {
                match part {
                    oa::ContentPart::Text { text } => push_text(&mut blocks, text),
                    oa::ContentPart::ImageUrl { image_url } => {
                        blocks.push(an::ContentBlock::Image {
                            source: image_source_from_url(image_url.url),
                        })
                    }
                    oa::ContentPart::File { file } => {
                        blocks.push(document_from_file(file, message_index)?)
                    }
                    oa::ContentPart::Unknown => {}
                }
            }
            blocks
        }
    })
}

/// An OpenAI `file` part (inline `file_data`) -> an Anthropic document block. A file id
/// refers to OpenAI's file storage, which an Anthropic upstream cannot read: 400.
fn document_from_file(
    file: oa::FileInput,
    message_index: usize,
) -> Result<an::ContentBlock, ConvertError> {
    let Some(data_url) = file.file_data else {
        return Err(ConvertError::Unsupported(format!(
            "messages[{message_index}]: a `file` part by `file_id` refers to OpenAI's file \
             storage and cannot be sent to an Anthropic upstream; send it inline as `file_data`"
        )));
    };
    let (media_type, data) = match split_data_url(&data_url) {
        Some((media_type, data)) => (media_type.to_owned(), data.to_owned()),
        // Bare base64 (some clients omit the `data:` prefix): a PDF.
        None => ("application/pdf".to_owned(), data_url),
    };
    Ok(an::ContentBlock::Document {
        source: an::DocumentSource::Base64 { media_type, data },
        title: file.filename,
    })
}

/// `data:<media_type>;base64,<data>` -> (media type, data).
fn split_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (header, data) = rest.split_once(',')?;
    let media_type = header.strip_suffix(";base64")?;
    Some((media_type, data))
}

/// `data:<media_type>;base64,<data>` -> base64 source; anything else -> url source.
fn image_source_from_url(url: String) -> an::ImageSource {
    if let Some((media_type, data)) = split_data_url(&url) {
        return an::ImageSource::Base64 {
            media_type: media_type.to_owned(),
            data: data.to_owned(),
        };
    }
    an::ImageSource::Url { url }
}

/// Tool-call arguments as a JSON object; empty or whitespace means `{}`.
fn parse_arguments(arguments: &str) -> Option<Value> {
    if arguments.trim().is_empty() {
        return Some(Value::Object(serde_json::Map::new()));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => Some(value),
        _ => None,
    }
}

/// Anthropic messages request -> OpenAI chat request.
///
/// - `system` becomes a leading `system` message.
/// - A user turn's `tool_result` blocks become `tool` messages (placed first, as OpenAI
///   requires them right after the assistant's tool calls); its other blocks a user message
///   (a plain string when it is one text block). Images inside tool results are dropped;
///   `is_error` is not expressible and is dropped.
/// - An assistant turn's text is concatenated into `content`; `tool_use` blocks become
///   `tool_calls` with `arguments` = the JSON-encoded `input`.
/// - `max_tokens` -> `max_tokens` (not `max_completion_tokens`: most OpenAI-compatible
///   servers only know the former); `stop_sequences` -> `stop`; `metadata.user_id` -> `user`;
///   `stream: true` also sets `stream_options.include_usage` so usage can be reported.
/// - `tool_choice` auto/any/tool/none -> auto/required/named/none;
///   `disable_parallel_tool_use: true` -> `parallel_tool_calls: false`.
/// - Dropped: `top_k`, thinking and document blocks, image blocks with file sources.
///   Rejected: server tools (a `type` other than `custom`).
pub fn anthropic_request_to_openai(
    request: an::MessagesRequest,
) -> Result<oa::ChatCompletionRequest, ConvertError> {
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        let text = system.joined_text();
        if !text.is_empty() {
            messages.push(oa::ChatMessage::System {
                content: oa::MessageContent::Text(text),
                name: None,
            });
        }
    }
    if request.mcp_servers.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ConvertError::Unsupported(
            "`mcp_servers` (MCP connector) is run by the Anthropic API itself and cannot be \
             sent to an OpenAI-format upstream"
                .into(),
        ));
    }
    for (index, message) in request.messages.into_iter().enumerate() {
        match message.role {
            an::Role::User => push_user_turn(&mut messages, message.content.into_blocks(), index)?,
            an::Role::Assistant => {
                push_assistant_turn(&mut messages, message.content.into_blocks())
            }
            an::Role::System => {
                let text = match message.content {
                    an::MessageContent::Text(text) => text,
                    an::MessageContent::Blocks(blocks) => {
                        an::SystemPrompt::Blocks(blocks).joined_text()
                    }
                };
                if !text.is_empty() {
                    messages.push(oa::ChatMessage::System {
                        content: oa::MessageContent::Text(text),
                        name: None,
                    });
                }
            }
        }
    }

    let mut tools = Vec::new();
    for tool in request.tools.unwrap_or_default() {
        if let Some(kind) = tool.kind.as_deref() {
            if kind != "custom" {
                return Err(ConvertError::Unsupported(format!(
                    "server tool {:?} (type {kind:?}) is run by the Anthropic API itself and \
                     cannot be sent to an OpenAI-format upstream; remove it or route the \
                     model to an Anthropic upstream",
                    tool.name
                )));
            }
        }
        tools.push(oa::Tool {
            kind: "function".into(),
            function: oa::FunctionDefinition {
                name: tool.name,
                description: tool.description,
                parameters: tool.input_schema,
                strict: None,
            },
        });
    }
    let (tool_choice, disable_parallel) = match request.tool_choice {
        None => (None, None),
        Some(an::ToolChoice::Auto {
            disable_parallel_tool_use,
        }) => (
            Some(oa::ToolChoice::Mode("auto".into())),
            disable_parallel_tool_use,
        ),
        Some(an::ToolChoice::Any {
            disable_parallel_tool_use,
        }) => (
            Some(oa::ToolChoice::Mode("required".into())),
            disable_parallel_tool_use,
        ),
        Some(an::ToolChoice::Tool {
            name,
            disable_parallel_tool_use,
        }) => (
            Some(oa::ToolChoice::Named(oa::NamedToolChoice {
                kind: "function".into(),
                function: oa::NamedFunction { name },
            })),
            disable_parallel_tool_use,
        ),
        Some(an::ToolChoice::None) => (Some(oa::ToolChoice::Mode("none".into())), None),
    };
    let has_tools = !tools.is_empty();
    let streaming = request.stream == Some(true);
    let reasoning_effort =
        effort_for_thinking(request.thinking.as_ref(), request.output_config.as_ref());

    Ok(oa::ChatCompletionRequest {
        model: request.model,
        messages,
        tools: has_tools.then_some(tools),
        tool_choice: if has_tools { tool_choice } else { None },
        parallel_tool_calls: if has_tools && disable_parallel == Some(true) {
            Some(false)
        } else {
            None
        },
        max_tokens: Some(request.max_tokens),
        max_completion_tokens: None,
        temperature: request.temperature,
        top_p: request.top_p,
        stop: request
            .stop_sequences
            .filter(|stops| !stops.is_empty())
            .map(oa::StopSequences::Many),
        stream: request.stream,
        stream_options: streaming.then_some(oa::StreamOptions {
            include_usage: Some(true),
        }),
        n: None,
        user: request.metadata.and_then(|metadata| metadata.user_id),
        reasoning_effort,
    })
}

fn push_user_turn(
    messages: &mut Vec<oa::ChatMessage>,
    blocks: Vec<an::ContentBlock>,
    message_index: usize,
) -> Result<(), ConvertError> {
    let mut parts = Vec::new();
    for block in blocks {
        match block {
            an::ContentBlock::Text { text } => parts.push(oa::ContentPart::Text { text }),
            an::ContentBlock::Image { source } => {
                if let Some(url) = image_url_from_source(source) {
                    parts.push(oa::ContentPart::ImageUrl {
                        image_url: oa::ImageUrl { url, detail: None },
                    });
                }
            }
            an::ContentBlock::ToolResult {
                tool_use_id,
                content,
                ..
            } => messages.push(oa::ChatMessage::Tool {
                content: oa::MessageContent::Text(
                    content.map(|c| c.joined_text()).unwrap_or_default(),
                ),
                tool_call_id: tool_use_id,
            }),
            an::ContentBlock::Document { source, title } => {
                parts.push(document_part(source, title, message_index)?)
            }
            an::ContentBlock::ToolUse { .. }
            | an::ContentBlock::Thinking { .. }
            | an::ContentBlock::RedactedThinking { .. }
            | an::ContentBlock::Unknown => {}
        }
    }
    let content = match parts.as_slice() {
        [] => return Ok(()),
        [oa::ContentPart::Text { text }] => oa::MessageContent::Text(text.clone()),
        _ => oa::MessageContent::Parts(parts),
    };
    messages.push(oa::ChatMessage::User {
        content,
        name: None,
    });
    Ok(())
}

/// An Anthropic document block -> an OpenAI content part: base64 (PDF) -> a `file` part with
/// `file_data`; plain text -> a text part (after its title); a URL -> 400 (Chat Completions
/// takes files inline only).
fn document_part(
    source: an::DocumentSource,
    title: Option<String>,
    message_index: usize,
) -> Result<oa::ContentPart, ConvertError> {
    match source {
        an::DocumentSource::Base64 { media_type, data } => Ok(oa::ContentPart::File {
            file: oa::FileInput {
                filename: Some(title.unwrap_or_else(|| "document.pdf".to_owned())),
                file_data: Some(format!("data:{media_type};base64,{data}")),
                file_id: None,
            },
        }),
        an::DocumentSource::Text { data, .. } => Ok(oa::ContentPart::Text {
            text: match title {
                Some(title) => format!("{title}\n\n{data}"),
                None => data,
            },
        }),
        an::DocumentSource::Url { .. } => Err(ConvertError::Unsupported(format!(
            "messages[{message_index}]: a document with a URL source cannot be sent to an \
             OpenAI-format upstream (Chat Completions takes files inline); send it as base64"
        ))),
        an::DocumentSource::Unknown => Err(ConvertError::Unsupported(format!(
            "messages[{message_index}]: this document source (file or content blocks) cannot \
             be sent to an OpenAI-format upstream; send it as base64 or text"
        ))),
    }
}

fn push_assistant_turn(messages: &mut Vec<oa::ChatMessage>, blocks: Vec<an::ContentBlock>) {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block {
            an::ContentBlock::Text { text: piece } => text.push_str(&piece),
            an::ContentBlock::ToolUse { id, name, input } => tool_calls.push(oa::ToolCall {
                id,
                kind: "function".into(),
                function: oa::FunctionCall {
                    name,
                    arguments: arguments_json(&input),
                },
            }),
            _ => {}
        }
    }
    if text.is_empty() && tool_calls.is_empty() {
        return;
    }
    messages.push(oa::ChatMessage::Assistant {
        content: (!text.is_empty()).then_some(oa::MessageContent::Text(text)),
        tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
        refusal: None,
        name: None,
    });
}

/// A tool-use `input` as OpenAI `arguments` text (`null` input reads as `{}`).
pub(crate) fn arguments_json(input: &Value) -> String {
    if input.is_null() {
        return "{}".to_owned();
    }
    serde_json::to_string(input).unwrap_or_else(|_| "{}".to_owned())
}

fn image_url_from_source(source: an::ImageSource) -> Option<String> {
    match source {
        an::ImageSource::Base64 { media_type, data } => {
            Some(format!("data:{media_type};base64,{data}"))
        }
        an::ImageSource::Url { url } => Some(url),
        an::ImageSource::Unknown => None,
    }
}
