//! Gemini-shaped answers (Google's Generative Language API, `v1beta`): generateContent,
//! streamGenerateContent (`?alt=sse`, or the JSON-array stream without it), countTokens and
//! Models, in the shapes the `google-genai` SDK and Gemini CLI parse. No HTTP here.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};

use crate::common::{self, Answer, ForcedCall};
use crate::Mock;

type Outcome = Result<Answer, (StatusCode, String)>;

fn bad_request(message: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, message.into())
}

/// What a `/v1beta/models...` path asks for.
pub enum Call<'a> {
    List,
    Get(&'a str),
    Generate(&'a str),
    Stream(&'a str),
    CountTokens(&'a str),
}

/// Parses `/v1beta/models`, `/v1beta/models/{m}` and `/v1beta/models/{m}:{method}`.
pub fn parse_path(path: &str) -> Option<Call<'_>> {
    let rest = path.strip_prefix("/v1beta/models")?;
    if rest.is_empty() {
        return Some(Call::List);
    }
    let rest = rest.strip_prefix('/')?;
    match rest.split_once(':') {
        None if !rest.is_empty() => Some(Call::Get(rest)),
        Some((model, "generateContent")) => Some(Call::Generate(model)),
        Some((model, "streamGenerateContent")) => Some(Call::Stream(model)),
        Some((model, "countTokens")) => Some(Call::CountTokens(model)),
        _ => None,
    }
}

fn model_resource(id: &str) -> Value {
    json!({"name": format!("models/{id}"), "version": "001", "displayName": id,
        "description": "mock model", "inputTokenLimit": 1_048_576, "outputTokenLimit": 65_536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
        "temperature": 1.0, "topP": 0.95, "topK": 64, "maxTemperature": 2.0, "thinking": true})
}

/// `GET /v1beta/models`.
pub fn models(mock: &Mock) -> Answer {
    let data: Vec<Value> = mock.models.iter().map(|id| model_resource(id)).collect();
    Answer::Json(json!({"models": data}))
}

/// `GET /v1beta/models/{model}`.
pub fn model(mock: &Mock, id: &str) -> Outcome {
    if mock.models.iter().any(|m| m == id) {
        Ok(Answer::Json(model_resource(id)))
    } else {
        Err((
            StatusCode::NOT_FOUND,
            format!("models/{id} is not found for API version v1beta, or is not supported for generateContent."),
        ))
    }
}

fn field<'a>(value: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    value.get(camel).or_else(|| value.get(snake))
}

fn contents_of(request: &Value) -> Result<&Vec<Value>, (StatusCode, String)> {
    match request.get("contents").and_then(Value::as_array) {
        Some(c) if !c.is_empty() => Ok(c),
        _ => Err(bad_request(
            "* GenerateContentRequest.contents: contents is not specified\n",
        )),
    }
}

/// All text of the parts of one content (text parts and function responses).
fn parts_text(content: &Value) -> String {
    let mut out = Vec::new();
    for part in content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            out.push(t.to_owned());
        } else if let Some(r) = field(part, "functionResponse", "function_response") {
            let response = r.get("response").cloned().unwrap_or(Value::Null);
            out.push(
                match response.get("output").or_else(|| response.get("content")) {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => response.to_string(),
                },
            );
        }
    }
    out.join(" ")
}

/// The function the mock calls: the scripted one, or the first declared (unless the
/// `toolConfig` mode is `NONE`).
fn chosen_function(request: &Value, scripted: Option<&ForcedCall>) -> Option<(String, Value)> {
    let mode = field(request, "toolConfig", "tool_config")
        .and_then(|c| field(c, "functionCallingConfig", "function_calling_config"))
        .and_then(|c| c.get("mode"))
        .and_then(Value::as_str);
    if mode == Some("NONE") {
        return None;
    }
    let mut decls = Vec::new();
    for tool in request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for d in field(tool, "functionDeclarations", "function_declarations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = d.get("name").and_then(Value::as_str) {
                let schema = d
                    .get("parameters")
                    .or_else(|| field(d, "parametersJsonSchema", "parameters_json_schema"))
                    .cloned();
                decls.push((name.to_owned(), schema));
            }
        }
    }
    let (name, schema) = match scripted {
        Some(f) => decls.into_iter().find(|(n, _)| *n == f.name)?,
        None => decls.into_iter().next()?,
    };
    let args = common::call_arguments(scripted, schema.as_ref());
    Some((name, args))
}

fn usage(prompt: u64, candidates: u64) -> Value {
    json!({"promptTokenCount": prompt, "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]})
}

/// `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent`.
pub fn generate(
    mock: &Mock,
    model: &str,
    request: &Value,
    stream: Option<bool>,
    scripted: Option<&ForcedCall>,
) -> Outcome {
    let contents = contents_of(request)?;
    let after_tool = common::last_turn_is_tool_result(request);
    let prompt = contents
        .iter()
        .rev()
        .find(|c| c.get("role").and_then(Value::as_str).unwrap_or("user") == "user")
        .map(parts_text)
        .unwrap_or_default();
    let call = if after_tool {
        None
    } else {
        chosen_function(request, scripted)
    };
    let prompt_tokens = common::count_words(&Value::Array(contents.clone()));
    let response_id = format!("mockresp{}", mock.next_id());
    let candidate = |parts: Value, finish: Option<&str>| {
        let mut c = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = json!(f);
        }
        c
    };
    let chunks: Vec<Value> = match call {
        Some((name, args)) => {
            let tokens = common::count_text_words(&args.to_string());
            vec![
                json!({"candidates": [candidate(json!([{"functionCall": {"name": name, "args": args}}]), Some("STOP"))],
                "usageMetadata": usage(prompt_tokens, tokens), "modelVersion": model, "responseId": response_id}),
            ]
        }
        None => {
            let text = common::reply_text(&prompt);
            let tokens = common::count_text_words(&text);
            if stream.is_none() {
                vec![
                    json!({"candidates": [candidate(json!([{"text": text}]), Some("STOP"))],
                    "usageMetadata": usage(prompt_tokens, tokens), "modelVersion": model, "responseId": response_id}),
                ]
            } else {
                let deltas = common::text_deltas(&text);
                let last = deltas.len().saturating_sub(1);
                deltas
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let done = i == last;
                        let u = if done { usage(prompt_tokens, tokens) } else { json!({"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens}) };
                        json!({"candidates": [candidate(json!([{"text": d}]), done.then_some("STOP"))],
                            "usageMetadata": u, "modelVersion": model, "responseId": response_id})
                    })
                    .collect()
            }
        }
    };
    match stream {
        None => Ok(Answer::Json(
            chunks.into_iter().next().unwrap_or(Value::Null),
        )),
        Some(true) => Ok(Answer::Sse(
            chunks
                .iter()
                .map(|c| Bytes::from(format!("data: {c}\r\n\r\n")))
                .collect(),
        )),
        Some(false) => {
            // The JSON-array stream: `[{...}\n,\r\n{...}]`, one element per chunk.
            let n = chunks.len();
            let pieces = chunks
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let head = if i == 0 { "[" } else { "\n,\r\n" };
                    let tail = if i + 1 == n { "]" } else { "" };
                    Bytes::from(format!("{head}{c}{tail}"))
                })
                .collect();
            Ok(Answer::JsonStream(pieces))
        }
    }
}

/// `POST /v1beta/models/{model}:countTokens` (`contents`, or a whole `generateContentRequest`).
pub fn count_tokens(request: &Value) -> Outcome {
    let inner = field(
        request,
        "generateContentRequest",
        "generate_content_request",
    )
    .unwrap_or(request);
    let contents = contents_of(inner)?;
    let mut total = common::count_words(&Value::Array(contents.clone()));
    if let Some(system) = field(inner, "systemInstruction", "system_instruction") {
        total += common::count_words(system);
    }
    Ok(Answer::Json(json!({"totalTokens": total,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]})))
}
