//! Estimates made before a request is forwarded: how many input tokens its body holds and
//! how many output tokens it may produce at most. They size the budget reservation and the
//! tokens-per-minute charge; both are corrected to the upstream's own counts when the answer
//! ends.
//!
//! The input rule (deliberately on the high side, no tokenizer):
//! - every byte of the body counts a third of a token, rounded up (English prose runs about
//!   four bytes per token, code about three; JSON syntax is counted too);
//! - a run of 1 KiB or more of base64 characters (an image or document sent inline) counts
//!   one token per 32 bytes, and at least [`INLINE_MEDIA_MIN_TOKENS`] (the most an image
//!   costs at Anthropic, more than at OpenAI's or Google's), instead of a third per byte.
//!
//! The output bound: the request's own field (`max_tokens`, `max_completion_tokens`,
//! `max_output_tokens`, `generationConfig.maxOutputTokens`), capped by the model's cap when
//! one is known; without a field, the model's cap; without either, [`DEFAULT_MAX_OUTPUT`].

use serde::Deserialize;

/// Tokens counted for a request without an output bound and a model without a known cap.
pub const DEFAULT_MAX_OUTPUT: u64 = 32_768;

/// The fewest tokens an inline image or document counts.
pub const INLINE_MEDIA_MIN_TOKENS: u64 = 1_600;

/// The shortest base64 run treated as inline media.
const MEDIA_RUN: usize = 1024;

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
}

/// Input tokens of a request body, estimated on the high side (see the module's rule).
///
/// Only runs of [`MEDIA_RUN`] base64 bytes or more count differently from text, so the body
/// is probed every [`PROBE_STRIDE`] bytes (any such run holds a probe) and a run is measured
/// only around a probe that lands in one: a few instructions per probe instead of a test per
/// byte (a 100 KB agent request took ~1.6 M instructions byte by byte).
pub fn input_tokens(body: &[u8]) -> u64 {
    let mut media_bytes = 0usize;
    let mut media_tokens: u64 = 0;
    let mut probe = 0usize;
    while let Some(&b) = body.get(probe) {
        if !is_base64(b) {
            probe += PROBE_STRIDE;
            continue;
        }
        // The maximal run around the probe: it cannot reach back past the last byte looked
        // at that was not base64 (a probe or a run's end), so every byte is read at most
        // about twice.
        let start = body[..probe]
            .iter()
            .rposition(|&b| !is_base64(b))
            .map_or(0, |i| i + 1);
        let end = body[probe..]
            .iter()
            .position(|&b| !is_base64(b))
            .map_or(body.len(), |i| probe + i);
        let run = end - start;
        if run >= MEDIA_RUN {
            media_bytes += run;
            media_tokens += (run as u64 / 32).max(INLINE_MEDIA_MIN_TOKENS);
        }
        // `end` is not base64 (or the end): the next run of interest starts after it, and
        // holds one of the probes from there.
        probe = end + 1;
    }
    ((body.len() - media_bytes) as u64).div_ceil(3) + media_tokens
}

/// The distance between probes of [`input_tokens`]: at most half of [`MEDIA_RUN`], so a run
/// that long holds at least one probe wherever it starts.
const PROBE_STRIDE: usize = MEDIA_RUN / 2;

/// The output bound the request itself sets, in any protocol's field.
///
/// Only those top-level members are decoded (`json_members`; the request was already read
/// once for its summary, and `serde` skipping the rest cost ~1,900 instructions for a short
/// chat request). `None` when the body is not a JSON object, a field is there twice (either
/// spelling of Gemini's), or one of them is not a number (or an object for Gemini's).
pub fn requested_max_output(body: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Generation {
        #[serde(alias = "max_output_tokens")]
        max_output_tokens: Option<u64>,
    }
    let [completion, tokens, output, camel, snake] = crate::llm::json_members::top_level_members(
        body,
        [
            "max_completion_tokens",
            "max_tokens",
            "max_output_tokens",
            "generationConfig",
            "generation_config",
        ],
    )?;
    if camel.is_some() && snake.is_some() {
        return None; // one field under two names: a struct parser refuses it as a duplicate
    }
    use crate::llm::json_members::decode_member;
    let (Ok(completion), Ok(tokens), Ok(output), Ok(generation)) = (
        decode_member::<u64>(completion),
        decode_member::<u64>(tokens),
        decode_member::<u64>(output),
        decode_member::<Generation>(camel.or(snake)),
    ) else {
        return None;
    };
    completion
        .or(tokens)
        .or(output)
        .or(generation.and_then(|g| g.max_output_tokens))
}

/// The most output tokens the request may produce: its own bound capped by `model_cap`,
/// else `model_cap`, else [`DEFAULT_MAX_OUTPUT`].
pub fn max_output_tokens(body: &[u8], model_cap: Option<u64>) -> u64 {
    match (requested_max_output(body), model_cap) {
        (Some(asked), Some(cap)) => asked.min(cap),
        (Some(asked), None) => asked,
        (None, Some(cap)) => cap,
        (None, None) => DEFAULT_MAX_OUTPUT,
    }
}

/// Output tokens of streamed text when the stream carried no usage (a client that went away
/// early): a third of a token per byte, rounded up, as for input.
pub fn output_tokens_of_text(bytes: u64) -> u64 {
    bytes.div_ceil(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bounds_in_every_protocol() {
        assert_eq!(requested_max_output(br#"{"max_tokens":100}"#), Some(100));
        assert_eq!(
            requested_max_output(br#"{"max_completion_tokens":7,"max_tokens":100}"#),
            Some(7)
        );
        assert_eq!(requested_max_output(br#"{"max_output_tokens":9}"#), Some(9));
        assert_eq!(
            requested_max_output(br#"{"contents":[],"generationConfig":{"maxOutputTokens":11}}"#),
            Some(11)
        );
        assert_eq!(requested_max_output(br#"{"model":"x"}"#), None);
        assert_eq!(
            max_output_tokens(br#"{"max_tokens":100000}"#, Some(16_384)),
            16_384
        );
        assert_eq!(max_output_tokens(br#"{}"#, Some(8)), 8);
        assert_eq!(max_output_tokens(br#"{}"#, None), DEFAULT_MAX_OUTPUT);
    }

    #[test]
    fn input_rule() {
        assert_eq!(input_tokens(b""), 0);
        assert_eq!(input_tokens(b"abc def"), 3);
        let image = format!(
            r#"{{"url":"data:image/png;base64,{}"}}"#,
            "A".repeat(100_000)
        );
        let tokens = input_tokens(image.as_bytes());
        assert!((100_000 / 32..4_000).contains(&tokens), "{tokens}");
        let small = format!(r#"{{"data":"{}"}}"#, "A".repeat(2000));
        assert!(input_tokens(small.as_bytes()) >= INLINE_MEDIA_MIN_TOKENS);
    }

    /// The rule byte by byte, as it was first written: the reference of the probing version.
    fn input_tokens_byte_by_byte(body: &[u8]) -> u64 {
        let (mut text, mut media, mut run) = (0u64, 0u64, 0usize);
        let mut flush = |run: usize, text: &mut u64| {
            if run >= MEDIA_RUN {
                media += (run as u64 / 32).max(INLINE_MEDIA_MIN_TOKENS);
            } else {
                *text += run as u64;
            }
        };
        for &b in body {
            if is_base64(b) {
                run += 1;
            } else {
                flush(run, &mut text);
                run = 0;
                text += 1;
            }
        }
        flush(run, &mut text);
        text.div_ceil(3) + media
    }

    /// The bound as a struct parse of the whole body reads it: the reference of
    /// [`requested_max_output`].
    fn requested_max_output_parsed(body: &[u8]) -> Option<u64> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Generation {
            #[serde(alias = "max_output_tokens")]
            max_output_tokens: Option<u64>,
        }
        #[derive(Deserialize)]
        struct Fields {
            max_tokens: Option<u64>,
            max_completion_tokens: Option<u64>,
            max_output_tokens: Option<u64>,
            #[serde(rename = "generationConfig", alias = "generation_config")]
            generation_config: Option<Generation>,
        }
        if !serde_json::from_slice::<serde_json::Value>(body)
            .ok()?
            .is_object()
        {
            return None;
        }
        let fields: Fields = serde_json::from_slice(body).ok()?;
        fields
            .max_completion_tokens
            .or(fields.max_tokens)
            .or(fields.max_output_tokens)
            .or(fields.generation_config.and_then(|g| g.max_output_tokens))
    }

    proptest! {
        /// On JSON objects, the members read alone give what a parse of the whole body gives.
        #[test]
        fn bound_as_a_whole_parse_reads_it(
            members in prop::collection::vec(
                (
                    prop_oneof![
                        Just("max_tokens"), Just("max_completion_tokens"), Just("max_output_tokens"),
                        Just("generationConfig"), Just("generation_config"), Just("messages"),
                    ],
                    prop_oneof![
                        (0u64..100_000).prop_map(|n| n.to_string()),
                        Just("-1".to_owned()),
                        Just("null".to_owned()),
                        Just("\"8\"".to_owned()),
                        (0u64..9).prop_map(|n| format!("{{\"maxOutputTokens\":{n}}}")),
                        (0u64..9).prop_map(|n| format!("{{\"max_output_tokens\":{n},\"x\":[1]}}")),
                        Just("[{\"role\":\"user\",\"content\":\"max_tokens\"}]".to_owned()),
                    ],
                ),
                0..5),
        ) {
            let body = format!(
                "{{{}}}",
                members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")
            );
            prop_assert_eq!(
                requested_max_output(body.as_bytes()),
                requested_max_output_parsed(body.as_bytes()),
                "{}", body
            );
        }

        /// Probing finds exactly the runs a byte-by-byte pass finds: bodies of text and
        /// base64 runs around the media threshold, in any order.
        #[test]
        fn probing_counts_as_byte_by_byte(
            parts in prop::collection::vec(
                prop_oneof![
                    "[ -~]{0,40}".prop_map(String::into_bytes),
                    (0usize..2100, any::<u8>()).prop_map(|(n, seed)| {
                        let alphabet = b"ABCXYZabcxyz0189+/=";
                        (0..n).map(|i| alphabet[(i + usize::from(seed)) % alphabet.len()]).collect()
                    }),
                    Just(vec![b'"']),
                ],
                0..8),
        ) {
            let body: Vec<u8> = parts.concat();
            prop_assert_eq!(input_tokens(&body), input_tokens_byte_by_byte(&body));
        }

        #[test]
        fn input_estimate_is_at_least_a_quarter_token_per_text_byte(text in "[ -~]{0,3000}") {
            // Printable ASCII without long base64 runs counts at least bytes/4 (the usual
            // English ratio), whatever the mix.
            let body = serde_json::to_vec(&serde_json::json!({"content": text})).unwrap();
            let runs_long = body.split(|b| !is_base64(*b)).any(|r| r.len() >= MEDIA_RUN);
            prop_assume!(!runs_long);
            prop_assert!(input_tokens(&body) * 4 >= body.len() as u64);
        }

        #[test]
        fn estimate_grows_with_the_body(a in "[ -~]{0,500}", b in "[ -~]{0,500}") {
            let ab = format!("{a}{b}");
            prop_assume!(!ab.as_bytes().split(|c| !is_base64(*c)).any(|r| r.len() >= MEDIA_RUN));
            prop_assert!(input_tokens(ab.as_bytes()) >= input_tokens(a.as_bytes()));
        }
    }
}
