//! The gateway's pure request-path decisions, as properties: secret scrubbing leaves no
//! secret behind and changes nothing else, the tree-cost estimate bounds what a parse can
//! take, echoes of client-supplied names stay bounded, upstream failures never reach the
//! client as success, and the request summary agrees with a full parse.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use gate_core::llm::convert::{request_summary, tree_cost_estimate, TREE_BYTES_PER_VALUE};
use gate_core::llm::endpoint::{bounded_echo, client_status_for_upstream, parse_retry_after_secs};
use gate_core::llm::scrub::{scrub_secrets, MIN_SECRET_LEN, REDACTED};
use proptest::prelude::*;

fn secret() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{8,24}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// No secret survives scrubbing, wherever and however often it occurs (also glued to
    /// other secrets), and text without secrets comes back unchanged.
    #[test]
    fn scrubbing_leaves_no_secret(
        secrets in proptest::collection::vec(secret(), 1..4),
        pieces in proptest::collection::vec((any::<bool>(), 0usize..4, "[ -~]{0,12}"), 0..12),
    ) {
        let mut text = Vec::new();
        for (insert, which, filler) in &pieces {
            text.extend_from_slice(filler.as_bytes());
            if *insert {
                text.extend_from_slice(secrets[which % secrets.len()].as_bytes());
            }
        }
        let out = scrub_secrets(&text, &secrets);
        for secret in &secrets {
            prop_assert!(memchr::memmem::find(&out, secret.as_bytes()).is_none(),
                "{secret} left in {:?}", String::from_utf8_lossy(&out));
        }
        let clean = pieces.iter().map(|(_, _, f)| f.as_str()).collect::<String>();
        if secrets.iter().all(|s| !clean.contains(s.as_str())) {
            let unchanged = scrub_secrets(clean.as_bytes(), &secrets);
            prop_assert_eq!(&*unchanged, clean.as_bytes());
        }
        prop_assert!(MIN_SECRET_LEN <= 8 && !REDACTED.is_empty());
    }

    /// The estimate is at least the body plus one value, and grows with every value, so a
    /// bound on it bounds the parse.
    #[test]
    fn tree_estimate_counts_every_value(values in proptest::collection::vec(0u32..1000, 0..200)) {
        let body = serde_json::to_vec(&values).unwrap();
        let estimate = tree_cost_estimate(&body);
        prop_assert!(estimate >= body.len() + TREE_BYTES_PER_VALUE * (values.len() + 1));
    }

    /// Echoes are bounded whatever the input, and keep short names whole.
    #[test]
    fn echoes_are_bounded(text in "\\PC{0,400}", max in 1usize..100) {
        let echoed = bounded_echo(&text, max);
        if text.chars().count() <= max {
            prop_assert_eq!(echoed.as_ref(), text.as_str());
        } else {
            prop_assert!(echoed.chars().count() <= max + 40);
            prop_assert!(echoed.starts_with(&text.chars().take(max).collect::<String>()));
        }
    }

    /// An upstream failure never reaches the client as a success, and 5xx stay 5xx.
    #[test]
    fn upstream_statuses_map_to_errors(status in 100u16..600) {
        let mapped = client_status_for_upstream(status);
        if status >= 500 {
            prop_assert!((502..=504).contains(&mapped));
        } else {
            prop_assert_eq!(mapped, status);
        }
    }

    /// `retry-after` seconds are read as given (capped at a day); garbage is not a number.
    #[test]
    fn retry_after_reads_seconds(seconds in 0u64..200_000, junk in "[a-z ]{1,8}") {
        prop_assert_eq!(parse_retry_after_secs(&seconds.to_string()), Some(seconds.min(86_400)));
        prop_assert_eq!(parse_retry_after_secs(&junk), None);
    }

    /// The summary reads what a full parse reads.
    #[test]
    fn summary_agrees_with_a_full_parse(
        model in proptest::option::of("[a-z0-9.-]{1,20}"),
        stream in proptest::option::of(any::<bool>()),
        include_usage in proptest::option::of(any::<bool>()),
        padding in proptest::collection::vec(0u8..255, 0..50),
    ) {
        let mut value = serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "pad": padding});
        if let Some(model) = &model { value["model"] = model.clone().into(); }
        if let Some(stream) = stream { value["stream"] = stream.into(); }
        if let Some(include) = include_usage { value["stream_options"] = serde_json::json!({"include_usage": include}); }
        let summary = request_summary(&serde_json::to_vec(&value).unwrap()).unwrap();
        prop_assert_eq!(summary.model.as_deref(), model.as_deref());
        prop_assert_eq!(summary.stream, stream.unwrap_or(false));
        prop_assert_eq!(summary.include_usage, include_usage.unwrap_or(false));
    }
}
