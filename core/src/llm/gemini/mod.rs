//! Google Gemini API (`v1beta`) wire types and Gemini <-> OpenAI Chat Completions conversion.
//!
//! Owns: serde shapes of `generateContent` / `streamGenerateContent` / `countTokens` requests
//! and answers, the model list, Google's error body; pure conversions between them and the
//! Chat Completions types of [`super::openai`] (requests, responses, streams). Gemini <->
//! Anthropic goes through Chat Completions as the hub: the OpenAI <-> Anthropic converters of
//! [`super::convert`] already carry tools, images, stop reasons and usage, and one hub keeps
//! one place per feature (see ARCHITECTURE.md, "Gemini").
//! Must not: perform I/O, parse SSE framing (the caller hands over each event's data), read
//! clocks or panic on any input.
//!
//! Field names: Google's JSON mapping accepts camelCase and snake_case for every field; we
//! read both (serde aliases) and write camelCase, as Google's own SDKs do.

pub mod array;
pub mod request;
pub mod response;
pub mod stream;

pub use array::{ArrayStreamError, ErrorFraming, GeminiArrayDecoder};
pub use request::{
    gemini_request_body_to_openai, gemini_request_to_openai, openai_request_body_to_gemini,
    openai_request_to_gemini,
};
pub use response::{
    gemini_response_body_to_openai, gemini_response_to_openai, openai_response_body_to_gemini,
    openai_response_to_gemini,
};
pub use stream::{GeminiToOpenAiStream, OpenAiToGeminiStream};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1beta/models/{model}:generateContent` (and `:streamGenerateContent`) body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentRequest {
    #[serde(default)]
    pub contents: Vec<Content>,
    #[serde(
        default,
        alias = "system_instruction",
        skip_serializing_if = "Option::is_none"
    )]
    pub system_instruction: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(
        default,
        alias = "tool_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub tool_config: Option<ToolConfig>,
    #[serde(
        default,
        alias = "generation_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub generation_config: Option<GenerationConfig>,
    #[serde(
        default,
        alias = "safety_settings",
        skip_serializing_if = "Option::is_none"
    )]
    pub safety_settings: Option<Value>,
}

/// One turn: a role (`user` or `model`; absent means `user`) and its parts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Content {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default)]
    pub parts: Vec<Part>,
}

/// One part. Google's `Part` is a oneof (text, inline data, file data, function call,
/// function response, ...) plus metadata such as `thought`; every member is optional here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A thought summary (`includeThoughts`), not part of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<bool>,
    #[serde(
        default,
        alias = "thought_signature",
        skip_serializing_if = "Option::is_none"
    )]
    pub thought_signature: Option<String>,
    #[serde(
        default,
        alias = "inline_data",
        skip_serializing_if = "Option::is_none"
    )]
    pub inline_data: Option<Blob>,
    #[serde(default, alias = "file_data", skip_serializing_if = "Option::is_none")]
    pub file_data: Option<FileData>,
    #[serde(
        default,
        alias = "function_call",
        skip_serializing_if = "Option::is_none"
    )]
    pub function_call: Option<FunctionCall>,
    #[serde(
        default,
        alias = "function_response",
        skip_serializing_if = "Option::is_none"
    )]
    pub function_response: Option<FunctionResponse>,
}

impl Part {
    /// A part holding only text.
    pub fn text(text: impl Into<String>) -> Self {
        Part {
            text: Some(text.into()),
            ..Part::default()
        }
    }
}

/// Inline bytes (base64) with their MIME type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    #[serde(default, alias = "mime_type")]
    pub mime_type: String,
    #[serde(default)]
    pub data: String,
}

/// A file by URI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileData {
    #[serde(default, alias = "mime_type", skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, alias = "file_uri")]
    pub file_uri: String,
}

/// A call the model makes; `args` is a JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
}

/// The client's answer to a call; `response` is a JSON object (by convention `{"output": ...}`
/// or `{"error": ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub response: Value,
}

/// A tool: function declarations (other tool kinds, such as `googleSearch` or `codeExecution`,
/// are server tools and are kept only toward a Gemini upstream).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    #[serde(
        default,
        alias = "function_declarations",
        skip_serializing_if = "Option::is_none"
    )]
    pub function_declarations: Option<Vec<FunctionDeclaration>>,
    /// Any other tool kind, kept as sent.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// A function the model may call. `parameters` is Google's OpenAPI-subset schema (type names
/// may be upper-case); `parametersJsonSchema` is plain JSON Schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeclaration {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(
        default,
        alias = "parameters_json_schema",
        skip_serializing_if = "Option::is_none"
    )]
    pub parameters_json_schema: Option<Value>,
}

/// `toolConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolConfig {
    #[serde(
        default,
        alias = "function_calling_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub function_calling_config: Option<FunctionCallingConfig>,
}

/// `toolConfig.functionCallingConfig`: `mode` is `AUTO`, `ANY`, `NONE` or `VALIDATED`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCallingConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(
        default,
        alias = "allowed_function_names",
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_function_names: Option<Vec<String>>,
}

/// `generationConfig` (the fields that have an equivalent elsewhere; others are dropped in
/// conversion and kept in pass-through).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, alias = "top_p", skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, alias = "top_k", skip_serializing_if = "Option::is_none")]
    pub top_k: Option<f64>,
    #[serde(
        default,
        alias = "max_output_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_output_tokens: Option<u32>,
    #[serde(
        default,
        alias = "stop_sequences",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(
        default,
        alias = "candidate_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub candidate_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(
        default,
        alias = "thinking_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub thinking_config: Option<ThinkingConfig>,
}

/// `generationConfig.thinkingConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThinkingConfig {
    #[serde(
        default,
        alias = "include_thoughts",
        skip_serializing_if = "Option::is_none"
    )]
    pub include_thoughts: Option<bool>,
    /// Tokens; `0` turns thinking off, `-1` lets the model decide.
    #[serde(
        default,
        alias = "thinking_budget",
        skip_serializing_if = "Option::is_none"
    )]
    pub thinking_budget: Option<i64>,
    /// `minimal`, `low`, `medium` or `high` (Gemini 3).
    #[serde(
        default,
        alias = "thinking_level",
        skip_serializing_if = "Option::is_none"
    )]
    pub thinking_level: Option<String>,
}

/// A `generateContent` answer, or one chunk of a stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse {
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    #[serde(
        default,
        alias = "usage_metadata",
        skip_serializing_if = "Option::is_none"
    )]
    pub usage_metadata: Option<UsageMetadata>,
    #[serde(
        default,
        alias = "model_version",
        skip_serializing_if = "Option::is_none"
    )]
    pub model_version: Option<String>,
    #[serde(
        default,
        alias = "response_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_id: Option<String>,
}

/// One candidate answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(
        default,
        alias = "finish_reason",
        skip_serializing_if = "Option::is_none"
    )]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

/// `usageMetadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    #[serde(default, alias = "prompt_token_count")]
    pub prompt_token_count: u64,
    #[serde(
        default,
        alias = "candidates_token_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub candidates_token_count: Option<u64>,
    #[serde(default, alias = "total_token_count")]
    pub total_token_count: u64,
    #[serde(
        default,
        alias = "cached_content_token_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub cached_content_token_count: Option<u64>,
    #[serde(
        default,
        alias = "thoughts_token_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub thoughts_token_count: Option<u64>,
}

/// Google's error body: `{"error": {"code", "message", "status"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: u16,
    pub message: String,
    pub status: String,
}

/// Google's status name for an HTTP status (`google.rpc.Code`).
pub fn status_name(http_status: u16) -> &'static str {
    match http_status {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        // A spend budget is a quota, as Google reports its own.
        402 => "RESOURCE_EXHAUSTED",
        404 => "NOT_FOUND",
        405 | 501 => "UNIMPLEMENTED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        503 | 529 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// An error body in Google's shape.
pub fn error_body(http_status: u16, message: &str) -> Vec<u8> {
    let body = ErrorBody {
        error: ErrorDetail {
            code: http_status,
            message: message.to_owned(),
            status: status_name(http_status).to_owned(),
        },
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// What a `/v1beta/models...` path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelsCall<'a> {
    /// `GET /v1beta/models`
    List,
    /// `GET /v1beta/models/{model}`
    Get(&'a str),
    /// `POST /v1beta/models/{model}:generateContent`
    Generate(&'a str),
    /// `POST /v1beta/models/{model}:streamGenerateContent`
    StreamGenerate(&'a str),
    /// `POST /v1beta/models/{model}:countTokens`
    CountTokens(&'a str),
}

/// Parses a Gemini API path (`/v1beta/models`, `/v1beta/models/{m}`,
/// `/v1beta/models/{m}:{method}`); `None` for anything else. The model may be written
/// `models/{m}` by some clients; the caller gets `{m}`.
pub fn parse_models_path(path: &str) -> Option<ModelsCall<'_>> {
    let rest = path.strip_prefix("/v1beta/models")?;
    if rest.is_empty() || rest == "/" {
        return Some(ModelsCall::List);
    }
    let rest = rest.strip_prefix('/')?;
    let (model, method) = match rest.split_once(':') {
        Some((model, method)) => (model, Some(method)),
        None => (rest, None),
    };
    if model.is_empty() || model.contains('/') {
        return None;
    }
    Some(match method {
        None => ModelsCall::Get(model),
        Some("generateContent") => ModelsCall::Generate(model),
        Some("streamGenerateContent") => ModelsCall::StreamGenerate(model),
        Some("countTokens") => ModelsCall::CountTokens(model),
        Some(_) => return None,
    })
}

/// A `?key=...` query with the key's value replaced by `REDACTED` (for logs); other pairs kept.
pub fn scrub_key_from_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            if pair.starts_with("key=") {
                "key=REDACTED"
            } else {
                pair
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of `key=` in a query string, if present and non-empty (percent-decoding is not
/// needed: API keys and Gate tokens are URL-safe).
pub fn key_from_query(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .filter(|k| !k.is_empty())
}

/// A Gemini client's call as it goes to a native Gemini upstream, its body untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeCall {
    /// `:generateContent`
    Generate,
    /// `:streamGenerateContent?alt=sse`
    StreamSse,
    /// `:streamGenerateContent` (one JSON array sent in pieces)
    StreamArray,
    /// `:countTokens`
    CountTokens,
}

impl NativeCall {
    /// The method and query after `/models/{model}`.
    pub fn suffix(self) -> &'static str {
        match self {
            NativeCall::Generate => ":generateContent",
            NativeCall::StreamSse => ":streamGenerateContent?alt=sse",
            NativeCall::StreamArray => ":streamGenerateContent",
            NativeCall::CountTokens => ":countTokens",
        }
    }

    /// Whether the answer is a stream.
    pub fn is_stream(self) -> bool {
        matches!(self, NativeCall::StreamSse | NativeCall::StreamArray)
    }
}

/// The Gemini server tool (`googleSearch`, `codeExecution`, `urlContext`, ...: any tool kind
/// but `functionDeclarations`) a request body asks for, if any: only Google runs those, so
/// such a request can go to a native Gemini upstream only. Reads `tools` alone (the rest of
/// the body is skipped); a body that is not a JSON object reads as none.
pub fn server_tool(body: &[u8]) -> Option<String> {
    // Only the tool kinds (keys) are kept; their contents are skipped, not built into a tree.
    #[derive(Deserialize)]
    struct Tools {
        #[serde(default)]
        tools: Option<Vec<std::collections::BTreeMap<String, serde::de::IgnoredAny>>>,
    }
    let tools: Tools = serde_json::from_slice(body).ok()?;
    tools.tools?.into_iter().find_map(|tool| {
        tool.into_keys()
            .find(|kind| kind != "functionDeclarations" && kind != "function_declarations")
    })
}

/// Whether the query asks for SSE (`alt=sse`); without it a stream is one JSON array.
pub fn wants_sse(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|pair| pair == "alt=sse"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse_models_path("/v1beta/models"), Some(ModelsCall::List));
        assert_eq!(
            parse_models_path("/v1beta/models/gemini-2.5-flash"),
            Some(ModelsCall::Get("gemini-2.5-flash"))
        );
        assert_eq!(
            parse_models_path("/v1beta/models/g:streamGenerateContent"),
            Some(ModelsCall::StreamGenerate("g"))
        );
        assert_eq!(
            parse_models_path("/v1beta/models/g:countTokens"),
            Some(ModelsCall::CountTokens("g"))
        );
        assert_eq!(parse_models_path("/v1beta/models/g:embed"), None);
        assert_eq!(parse_models_path("/v1beta/models/a/b"), None);
        assert_eq!(parse_models_path("/v1/models"), None);
    }

    #[test]
    fn keys_in_queries() {
        assert_eq!(key_from_query("alt=sse&key=abc"), Some("abc"));
        assert_eq!(key_from_query("key="), None);
        assert_eq!(
            scrub_key_from_query("alt=sse&key=abc"),
            "alt=sse&key=REDACTED"
        );
        assert!(wants_sse(Some("key=x&alt=sse")));
        assert!(!wants_sse(Some("alt=json")));
    }

    #[test]
    fn native_calls_and_server_tools() {
        assert_eq!(
            NativeCall::StreamSse.suffix(),
            ":streamGenerateContent?alt=sse"
        );
        assert!(!NativeCall::CountTokens.is_stream());
        assert_eq!(
            server_tool(br#"{"tools":[{"functionDeclarations":[]},{"googleSearch":{}}]}"#)
                .as_deref(),
            Some("googleSearch")
        );
        assert_eq!(
            server_tool(br#"{"contents":[],"tools":[{"function_declarations":[]}]}"#),
            None
        );
        assert_eq!(server_tool(b"[1]"), None);
    }

    #[test]
    fn error_shape() {
        let body: Value = serde_json::from_slice(&error_body(404, "no such model")).unwrap();
        assert_eq!(body["error"]["status"], "NOT_FOUND");
        assert_eq!(body["error"]["code"], 404);
    }
}
