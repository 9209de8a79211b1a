//! Fuzz the decoder of Gemini's JSON-array stream (`GeminiArrayDecoder`): the input's first
//! bytes choose the element limit and the chunk sizes, the rest is the stream. Decoding in
//! those chunks must give the same elements and error as decoding in one piece; every
//! element it returns is a complete JSON value when the stream is valid JSON, and the error
//! framing is always answerable.
#![no_main]
use gate_core::llm::gemini::GeminiArrayDecoder;
use libfuzzer_sys::fuzz_target;

type Outcome = Vec<Result<Vec<u8>, String>>;

fn decode<'a>(chunks: impl Iterator<Item = &'a [u8]>, max_element: usize) -> (Outcome, bool) {
    let mut decoder = GeminiArrayDecoder::new(max_element);
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        let _ = decoder.error_framing();
        while let Some(element) = decoder.next_element() {
            out.push(element.map_err(|e| e.to_string()));
        }
    }
    (out, decoder.is_done())
}

fuzz_target!(|data: &[u8]| {
    let [limit_byte, chunk_seed, stream @ ..] = data else {
        return;
    };
    let max_element = usize::from(*limit_byte) * 8 + 1;
    let mut chunks = Vec::new();
    let mut rest = stream;
    let mut state = *chunk_seed;
    while !rest.is_empty() {
        state = state.wrapping_mul(37).wrapping_add(11);
        let size = usize::from(state % 16 + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
    }
    let one_shot = decode(std::iter::once(stream), max_element);
    let split = decode(chunks.into_iter(), max_element);
    assert_eq!(one_shot, split, "a split changed what the decoder reads");
    // A valid JSON array of objects or arrays: every element is valid JSON on its own.
    if one_shot.1
        && serde_json::from_slice::<serde_json::Value>(stream).is_ok_and(|v| v.is_array())
    {
        for element in one_shot.0.iter().flatten() {
            assert!(
                serde_json::from_slice::<serde_json::Value>(element).is_ok(),
                "an element of a valid array is not JSON: {}",
                String::from_utf8_lossy(element)
            );
        }
    }
});
