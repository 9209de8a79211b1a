//! Fuzz the top-level member scanner (`gate_core::llm::json_members`), which finds the usage
//! of every answer without parsing the rest: it must not panic on any bytes, every raw value it
//! reports must lie inside the input, and on a valid JSON document it must see what a parser
//! sees (the same members, nothing for a non-object or a duplicated chosen key).
#![no_main]
use gate_core::llm::json_members::top_level_members;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const KEYS: [&str; 3] = ["usage", "message", "response"];

fuzz_target!(|data: &[u8]| {
    let found = top_level_members(data, KEYS);
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Value::Object(object) = value else {
        assert!(found.is_none(), "a non-object document has no members");
        return;
    };
    // serde_json's map keeps the last of duplicated keys; count them in the raw text instead:
    // a chosen key twice must make the scanner give up, as a struct parser does.
    let duplicated = duplicated_chosen_key(data);
    match found {
        None => assert!(duplicated, "a valid object was refused"),
        Some(members) => {
            assert!(!duplicated, "a chosen key twice was accepted");
            for (key, raw) in KEYS.iter().zip(members) {
                let expected = object.get(*key);
                let got = raw.map(|r| serde_json::from_slice::<Value>(r).expect("raw value parses"));
                assert_eq!(got.as_ref(), expected, "member {key}");
            }
        }
    }
});

/// Whether a chosen key appears twice at the top level, by a struct parser's judgement.
fn duplicated_chosen_key(data: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Top {
        usage: Option<serde::de::IgnoredAny>,
        message: Option<serde::de::IgnoredAny>,
        response: Option<serde::de::IgnoredAny>,
    }
    // The document is a valid object here, so the only way a struct parse fails is a
    // duplicate field.
    serde_json::from_slice::<Top>(data).is_err()
}
