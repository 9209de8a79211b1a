//! Pass-through helpers: read `model` and `stream` from a request body, and rewrite only
//! the top-level `model` of a JSON body.
//!
//! Must not: re-encode anything but the `model` value. Both functions work on either
//! protocol's request (both put `model` and `stream` at the top level).

use std::borrow::Cow;
use std::sync::Arc;

use super::ConvertError;
use serde::Deserialize;

/// What routing needs from a request body before deciding where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestSummary {
    /// The top-level `model`, if present and a string (shared: the route plan and the usage
    /// record take it without a copy).
    pub model: Option<Arc<str>>,
    /// The top-level `stream`; absent or `null` means `false`.
    pub stream: bool,
    /// `stream_options.include_usage` (OpenAI); absent means `false`.
    pub include_usage: bool,
    /// A non-null top-level `stream_options` is present.
    pub has_stream_options: bool,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(default, borrow)]
    model: Option<Model<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<PeekStreamOptions>,
}

/// A string borrowed from the body unless it has escapes (then decoded into a copy).
#[derive(Deserialize)]
struct Model<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct PeekStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Reads `model` and `stream` without building the rest of the document (other members are
/// skipped by the parser, not allocated). Fails when the body is not a JSON object or when
/// `model` / `stream` have the wrong type.
pub fn request_summary(body: &[u8]) -> Result<RequestSummary, ConvertError> {
    let peek: Peek = serde_json::from_slice(body)
        .map_err(|err| ConvertError::InvalidRequest(err.to_string()))?;
    Ok(RequestSummary {
        model: peek.model.map(|Model(name)| Arc::from(&*name)),
        stream: peek.stream.unwrap_or(false),
        has_stream_options: peek.stream_options.is_some(),
        include_usage: peek
            .stream_options
            .and_then(|options| options.include_usage)
            .unwrap_or(false),
    })
}

/// The body of a streamed OpenAI chat request with `"stream_options":{"include_usage":true}`
/// spliced in as its first member, every other byte kept; `None` when `body` does not start
/// (after whitespace) with `{`. Only for bodies whose summary has no `stream_options`: the
/// caller then strips the usage-only chunk ([`is_usage_only_chunk`]) from what the client
/// receives, so the client sees the stream it asked for and Gate still learns the usage.
pub fn with_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] != b'{' {
        return None;
    }
    let rest = &body[start + 1..];
    let empty = rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}');
    let mut out = Vec::with_capacity(body.len() + 48);
    out.extend_from_slice(&body[..=start]);
    out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// Whether an OpenAI stream event's data is the usage-only chunk `include_usage` adds (an
/// object with an empty `choices` list and a non-null `usage`).
pub fn is_usage_only_chunk(data: &str) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        choices: Option<Vec<serde::de::IgnoredAny>>,
        #[serde(default)]
        usage: Option<serde::de::IgnoredAny>,
    }
    matches!(
        serde_json::from_str::<Probe>(data),
        Ok(Probe { choices: Some(choices), usage: Some(_) }) if choices.is_empty()
    )
}

/// Bytes a `serde_json::Value` tree of a document costs per JSON value, on top of the text
/// (an enum slot, a map or vector entry, allocator overhead), as [`tree_cost_estimate`]
/// counts it. Measured: 31 MB of `[1,1,...]`-style small values took 540 MB as a tree, about
/// 35 bytes per byte of text at two bytes per value.
pub const TREE_BYTES_PER_VALUE: usize = 72;

/// An upper estimate of the memory a `serde_json::Value` tree of `body` takes: its length
/// plus [`TREE_BYTES_PER_VALUE`] for every value (counted from the structural characters
/// outside strings, one pass, no allocation). Conversion, which must parse the whole body,
/// checks this against its bound before parsing.
pub fn tree_cost_estimate(body: &[u8]) -> usize {
    let mut values = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b',' | b'[' | b'{' | b':' => values += 1,
            _ => {}
        }
    }
    body.len()
        .saturating_add(values.saturating_mul(TREE_BYTES_PER_VALUE))
}

/// Returns `body` with the value of every top-level `"model"` member replaced by the JSON
/// string `new_model`.
///
/// Preserved exactly, byte for byte: everything outside the old model value (whitespace,
/// key order, number formatting, string escapes, nested objects, other members, a trailing
/// newline). The new value is written with serde_json's string escaping. A key spelled with
/// escapes (`"mod\u0065l"`) is recognised too. When the object has no `model` member, one is
/// inserted as the first member (`{"model":"x",...`). Fails when the body is not valid JSON
/// (including invalid UTF-8 anywhere),
/// is not an object, or its `model` is not a string.
pub fn rewrite_model(body: &[u8], new_model: &str) -> Result<Vec<u8>, ConvertError> {
    // Validate the whole document first; the scanner below can then assume well-formed
    // JSON (it still never indexes out of bounds).
    // JSON text is UTF-8; serde_json does not check the bytes of values it skips.
    let text = std::str::from_utf8(body)
        .map_err(|err| ConvertError::InvalidRequest(format!("body is not UTF-8: {err}")))?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|err| ConvertError::InvalidRequest(err.to_string()))?;
    let new_value = serde_json::to_string(new_model)
        .map_err(|err| ConvertError::InvalidRequest(err.to_string()))?;

    let not_object = || ConvertError::InvalidRequest("request body is not a JSON object".into());
    let open = skip_whitespace(body, 0);
    if body.get(open) != Some(&b'{') {
        return Err(not_object());
    }
    let mut model_spans: Vec<(usize, usize)> = Vec::new();
    let mut pos = skip_whitespace(body, open + 1);
    if body.get(pos) != Some(&b'}') {
        loop {
            let key_start = pos;
            let key_end = skip_string(body, key_start).ok_or_else(not_object)?;
            let key_slice = body.get(key_start..key_end).ok_or_else(not_object)?;
            let is_model = key_slice == b"\"model\""
                || (key_slice.contains(&b'\\')
                    && serde_json::from_slice::<String>(key_slice).ok().as_deref()
                        == Some("model"));
            pos = skip_whitespace(body, key_end);
            if body.get(pos) != Some(&b':') {
                return Err(not_object());
            }
            let value_start = skip_whitespace(body, pos + 1);
            let value_end = skip_value(body, value_start).ok_or_else(not_object)?;
            if is_model {
                if body.get(value_start) != Some(&b'"') {
                    return Err(ConvertError::InvalidRequest(
                        "`model` must be a string".into(),
                    ));
                }
                model_spans.push((value_start, value_end));
            }
            pos = skip_whitespace(body, value_end);
            match body.get(pos) {
                Some(b',') => pos = skip_whitespace(body, pos + 1),
                Some(b'}') => break,
                _ => return Err(not_object()),
            }
        }
    }

    let mut out = Vec::with_capacity(body.len() + new_value.len());
    if model_spans.is_empty() {
        let after_brace = open + 1;
        out.extend_from_slice(body.get(..after_brace).unwrap_or_default());
        out.extend_from_slice(b"\"model\":");
        out.extend_from_slice(new_value.as_bytes());
        let rest = body.get(after_brace..).unwrap_or_default();
        let first_non_ws = skip_whitespace(rest, 0);
        if rest.get(first_non_ws) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        return Ok(out);
    }
    let mut copied_up_to = 0;
    for (start, end) in model_spans {
        out.extend_from_slice(body.get(copied_up_to..start).unwrap_or_default());
        out.extend_from_slice(new_value.as_bytes());
        copied_up_to = end;
    }
    out.extend_from_slice(body.get(copied_up_to..).unwrap_or_default());
    Ok(out)
}

fn skip_whitespace(body: &[u8], mut pos: usize) -> usize {
    while matches!(body.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

/// `pos` at an opening quote; returns the index after the closing quote.
fn skip_string(body: &[u8], pos: usize) -> Option<usize> {
    if body.get(pos) != Some(&b'"') {
        return None;
    }
    let mut i = pos + 1;
    loop {
        match body.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// `pos` at the first byte of a value; returns the index just after it. Iterative, so
/// nesting depth costs no stack.
fn skip_value(body: &[u8], pos: usize) -> Option<usize> {
    match body.get(pos)? {
        b'"' => skip_string(body, pos),
        b'{' | b'[' => {
            let mut depth: usize = 0;
            let mut i = pos;
            loop {
                match body.get(i)? {
                    b'"' => {
                        i = skip_string(body, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = pos;
            while let Some(byte) = body.get(i) {
                if matches!(byte, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                i += 1;
            }
            Some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_usage_is_spliced_in_and_usage_chunks_recognised() {
        let body = br#" {"model":"m","stream":true}"#;
        let out = with_include_usage(body).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#" {"stream_options":{"include_usage":true},"model":"m","stream":true}"#
        );
        let summary = request_summary(&out).unwrap();
        assert!(summary.include_usage && summary.has_stream_options);
        assert_eq!(
            with_include_usage(b"{}").unwrap(),
            br#"{"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(with_include_usage(b"[1]"), None);
        assert!(is_usage_only_chunk(
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#
        ));
        assert!(!is_usage_only_chunk(
            r#"{"id":"c","choices":[{"index":0}],"usage":null}"#
        ));
        assert!(!is_usage_only_chunk(
            r#"{"id":"c","choices":[],"usage":null}"#
        ));
        assert!(!is_usage_only_chunk("[DONE]"));
    }

    #[test]
    fn summary_reads_model_and_stream() {
        let summary = request_summary(
            br#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o","stream":true}"#,
        );
        assert_eq!(
            summary,
            Ok(RequestSummary {
                model: Some("gpt-4o".into()),
                stream: true,
                include_usage: false,
                has_stream_options: false,
            })
        );
        assert_eq!(
            request_summary(br#"{"model":"m"}"#).map(|s| s.stream),
            Ok(false)
        );
        assert_eq!(
            request_summary(br#"{"model":"m","stream_options":{"include_usage":true,"x":[1]}}"#)
                .map(|s| s.include_usage),
            Ok(true)
        );
        assert!(request_summary(b"[1]").is_err());
        assert!(request_summary(br#"{"model":1}"#).is_err());
    }

    #[test]
    fn tree_estimate_counts_values_outside_strings() {
        let small = tree_cost_estimate(br#"{"a":"x,y:[{"}"#);
        assert_eq!(small, 14 + 3 * TREE_BYTES_PER_VALUE);
        let many = tree_cost_estimate(b"[1,1,1,1]");
        assert_eq!(many, 9 + 5 * TREE_BYTES_PER_VALUE);
        assert_eq!(
            tree_cost_estimate(br#"["\\",1]"#),
            8 + 3 * TREE_BYTES_PER_VALUE
        );
    }

    #[test]
    fn rewrite_preserves_everything_else() {
        let body = b"{ \"temperature\" : 1.50,\n \"model\" :\"alias\", \"messages\":[{\"model\":\"inner\"}], \"x\":\"\\u00e9\" }\n";
        let out = rewrite_model(body, "real-\"model\"").unwrap_or_default();
        assert_eq!(
            out,
            b"{ \"temperature\" : 1.50,\n \"model\" :\"real-\\\"model\\\"\", \"messages\":[{\"model\":\"inner\"}], \"x\":\"\\u00e9\" }\n".to_vec()
        );
    }

    #[test]
    fn rewrite_inserts_when_missing_and_rejects_bad_bodies() {
        assert_eq!(
            rewrite_model(b"{}", "m").unwrap_or_default(),
            br#"{"model":"m"}"#.to_vec()
        );
        assert_eq!(
            rewrite_model(br#"{"a":1}"#, "m").unwrap_or_default(),
            br#"{"model":"m","a":1}"#.to_vec()
        );
        assert_eq!(
            rewrite_model(br#"{"mod\u0065l":"a"}"#, "b").unwrap_or_default(),
            br#"{"mod\u0065l":"b"}"#.to_vec()
        );
        assert!(rewrite_model(b"[]", "m").is_err());
        assert!(rewrite_model(br#"{"model":3}"#, "m").is_err());
        assert!(rewrite_model(br#"{"model":"a""#, "m").is_err());
        assert!(rewrite_model(b"{\"model\":\"a\",\"x\":\"\xff\"}", "m").is_err());
    }
}
