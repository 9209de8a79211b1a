//! Finds chosen members of a JSON object's top level without parsing the rest: the other
//! members' values are skipped by their brackets and quotes, not decoded or validated.
//!
//! Used where a whole body passes by and only a few small members of it matter (the usage
//! counters of every non-streamed answer: `serde` skipping a 300-byte chat completion cost
//! ~6,400 instructions, most of them decoding `choices` only to drop it; the output bound of
//! every request, `accounting::estimate::requested_max_output`; issue 16).
//!
//! For a valid JSON document this reports what a `serde` struct with those fields would
//! see: the same values, nothing when the document is not an object, when one of the
//! chosen keys appears twice, or when something other than whitespace follows the object.
//! Keys written with escapes are decoded before they are compared. For invalid documents it
//! may be more lenient than a parser (a broken member it skips is not noticed); it never
//! panics, allocates only for a key with escapes, and reads each byte a bounded number of
//! times.

/// The raw values (the bytes of each value, as written) of the top-level members of `data`
/// named in `keys`, in the order of `keys`; `None` when `data` is not a JSON object (after
/// whitespace), is cut short, has a chosen key twice, or has anything but whitespace after
/// the object.
pub fn top_level_members<'a, const N: usize>(
    data: &'a [u8],
    keys: [&str; N],
) -> Option<[Option<&'a [u8]>; N]> {
    let mut found = [None; N];
    let mut at = skip_ws(data, 0);
    if data.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(data, at + 1);
    if data.get(at) == Some(&b'}') {
        return end_of_document(data, at + 1).then_some(found);
    }
    loop {
        if data.get(at) != Some(&b'"') {
            return None;
        }
        let (key_end, escaped) = skip_string(data, at)?;
        let raw_key = &data[at + 1..key_end - 1];
        at = skip_ws(data, key_end);
        if data.get(at) != Some(&b':') {
            return None;
        }
        let start = skip_ws(data, at + 1);
        let end = skip_value(data, start)?;
        if let Some(slot) = chosen(raw_key, escaped, &keys) {
            if found[slot].is_some() {
                return None; // a duplicate field: a struct parser refuses the document
            }
            found[slot] = Some(&data[start..end]);
        }
        at = skip_ws(data, end);
        match data.get(at) {
            Some(b',') => at = skip_ws(data, at + 1),
            Some(b'}') => return end_of_document(data, at + 1).then_some(found),
            _ => return None,
        }
    }
}

/// The value of a member `raw` as [`top_level_members`] found it (absent or `null`: `None`),
/// decoded as `T`; `Err` when it does not decode (a struct parser would refuse the whole
/// document then, so callers read nothing from it).
pub fn decode_member<T: serde::de::DeserializeOwned>(
    raw: Option<&[u8]>,
) -> Result<Option<T>, serde_json::Error> {
    raw.map_or(Ok(None), serde_json::from_slice::<Option<T>>)
}

/// Which of `keys` the key `raw` (its bytes between the quotes; `escaped` when they hold a
/// backslash) names; a key with escapes is decoded first.
fn chosen(raw: &[u8], escaped: bool, keys: &[&str]) -> Option<usize> {
    if !escaped {
        // Length and first byte before the comparison: most keys are none of `keys`.
        return keys.iter().position(|k| {
            let k = k.as_bytes();
            k.len() == raw.len() && k.first() == raw.first() && k == raw
        });
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    let decoded: String = serde_json::from_slice(&quoted).ok()?;
    keys.iter().position(|k| *k == decoded)
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(data: &[u8], mut at: usize) -> usize {
    while data.get(at).is_some_and(|b| is_ws(*b)) {
        at += 1;
    }
    at
}

fn end_of_document(data: &[u8], at: usize) -> bool {
    skip_ws(data, at) == data.len()
}

/// The index after the string that starts (with its opening quote) at `at`, and whether the
/// string holds a backslash.
fn skip_string(data: &[u8], at: usize) -> Option<(usize, bool)> {
    let mut i = at + 1;
    let mut escaped = false;
    loop {
        i += memchr::memchr2(b'"', b'\\', data.get(i..)?)?;
        if data[i] == b'"' {
            return Some((i + 1, escaped));
        }
        escaped = true;
        i += 2; // a backslash and the byte it escapes
    }
}

/// What a byte is to [`skip_value`]: [`QUOTE`], [`OPEN`], [`CLOSE`] (inside a container, the
/// bytes it stops at) or [`SCALAR_END`] (after a scalar: a delimiter or white space), else 0.
const CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    table[b'"' as usize] = QUOTE;
    table[b'{' as usize] = OPEN;
    table[b'[' as usize] = OPEN;
    table[b'}' as usize] = CLOSE | SCALAR_END;
    table[b']' as usize] = CLOSE | SCALAR_END;
    table[b',' as usize] = SCALAR_END;
    table[b' ' as usize] = SCALAR_END;
    table[b'\t' as usize] = SCALAR_END;
    table[b'\n' as usize] = SCALAR_END;
    table[b'\r' as usize] = SCALAR_END;
    table
};
const QUOTE: u8 = 1;
const OPEN: u8 = 2;
const CLOSE: u8 = 4;
const SCALAR_END: u8 = 8;

/// The index after the value that starts at `at`: a string, an object or array (by its
/// brackets, strings inside skipped whole), or a scalar (up to the next delimiter).
fn skip_value(data: &[u8], at: usize) -> Option<usize> {
    match *data.get(at)? {
        b'"' => skip_string(data, at).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                // To the next quote or bracket, one table look-up a byte.
                i += data
                    .get(i..)?
                    .iter()
                    .position(|b| CLASS[usize::from(*b)] & (QUOTE | OPEN | CLOSE) != 0)?;
                let class = CLASS[usize::from(data[i])];
                if class & QUOTE != 0 {
                    i = skip_string(data, i)?.0;
                    continue;
                }
                if class & OPEN != 0 {
                    depth += 1;
                } else {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                i += 1;
            }
        }
        b',' | b'}' | b']' | b':' => None,
        _ => {
            let len = data[at..]
                .iter()
                .position(|b| CLASS[usize::from(*b)] & SCALAR_END != 0)
                .unwrap_or(data.len() - at);
            Some(at + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const KEYS: [&str; 3] = ["usage", "message", "response"];

    /// What a struct parser sees of `KEYS`: the reference the scanner must match on valid
    /// documents.
    fn reference(data: &[u8]) -> Option<[Option<Value>; 3]> {
        #[derive(serde::Deserialize)]
        struct Top {
            usage: Option<Value>,
            message: Option<Value>,
            response: Option<Value>,
        }
        if !serde_json::from_slice::<Value>(data).ok()?.is_object() {
            return None;
        }
        let top: Top = serde_json::from_slice(data).ok()?;
        // `Option<Value>` reads `null` as `None`; the scanner reports the raw `null`.
        Some([top.usage, top.message, top.response])
    }

    fn scanned(data: &[u8]) -> Option<[Option<Value>; 3]> {
        let found = top_level_members(data, KEYS)?;
        Some(found.map(|raw| {
            raw.map(|r| serde_json::from_slice::<Value>(r).expect("a member's raw value parses"))
                .filter(|v| !v.is_null())
        }))
    }

    #[test]
    fn finds_members_and_skips_the_rest() {
        let body = br#" {"id":"x","choices":[{"message":{"content":"a \"usage\": {} } ]"}}],
            "usage" : {"prompt_tokens":3} ,"n":-1.5e3,"t":true} "#;
        let found = top_level_members(body, KEYS).unwrap();
        assert_eq!(found[0], Some(&br#"{"prompt_tokens":3}"#[..]));
        assert_eq!((found[1], found[2]), (None, None));
        assert_eq!(top_level_members(br#"{}"#, KEYS), Some([None; 3]));
        assert_eq!(
            top_level_members(br#"{"us\u0061ge":7}"#, KEYS).unwrap()[0],
            Some(&b"7"[..])
        );
    }

    #[test]
    fn refuses_what_a_struct_parser_refuses() {
        for bad in [
            &br#"[{"usage":1}]"#[..],
            br#"{"usage":1,"usage":2}"#,
            br#"{"usage":1} x"#,
            br#"{"usage":1"#,
            br#"{"usage" 1}"#,
            br#"{"usage":}"#,
            br#"{"a":"unterminated}"#,
            b"",
            b"not json \"usage\"",
        ] {
            assert_eq!(
                top_level_members(bad, KEYS),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-z\"\\\\{}\\[\\]:, \u{e9}\u{1F600}\n]{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("usage".to_owned()),
                        Just("message".to_owned()),
                        "[a-z\"]{0,6}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// On valid documents, the scanner sees what a struct parser sees.
        #[test]
        fn matches_a_struct_parser(
            members in prop::collection::vec(
                (prop_oneof![Just("usage"), Just("message"), Just("response"), Just("choices"), Just("id")],
                 json_value()),
                0..6),
            pretty in any::<bool>(),
        ) {
            let mut object = serde_json::Map::new();
            for (k, v) in members {
                object.insert(k.to_owned(), v);
            }
            let value = Value::Object(object);
            let text = if pretty {
                serde_json::to_vec_pretty(&value).unwrap()
            } else {
                serde_json::to_vec(&value).unwrap()
            };
            prop_assert_eq!(scanned(&text), reference(&text));
        }

        /// Any bytes: no panic, and where they are a valid document, the parser's answer.
        #[test]
        fn any_bytes(data in prop::collection::vec(any::<u8>(), 0..64)) {
            let got = top_level_members(&data, KEYS);
            if serde_json::from_slice::<Value>(&data).is_ok() {
                prop_assert_eq!(got.is_some(), reference(&data).is_some());
                prop_assert_eq!(scanned(&data), reference(&data));
            }
        }
    }
}
