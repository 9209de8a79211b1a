//! Fuzz the RESP (Redis protocol) decoder: the first byte chooses the chunk sizes, the rest is
//! the input. Decoding in those chunks must give the same values and error as decoding in one
//! piece, and every value decoded must encode to bytes that decode to the same value.
#![no_main]
use gate_core::resp::{encode, Decoder, RespError, Value};
use libfuzzer_sys::fuzz_target;

fn decode<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<Value>, Option<RespError>) {
    let mut decoder = Decoder::new();
    let mut values = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        loop {
            match decoder.next_value() {
                Ok(Some(value)) => values.push(value),
                Ok(None) => break,
                Err(error) => return (values, Some(error)),
            }
        }
    }
    (values, None)
}

fuzz_target!(|data: &[u8]| {
    let [seed, input @ ..] = data else {
        return;
    };
    let mut chunks = Vec::new();
    let mut rest = input;
    let mut state = *seed;
    while !rest.is_empty() {
        state = state.wrapping_mul(37).wrapping_add(11);
        let size = usize::from(state % 16 + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
    }
    let whole = decode(std::iter::once(input));
    let pieces = decode(chunks.iter().copied());
    assert_eq!(whole, pieces);
    for value in &whole.0 {
        // Simple strings and errors that held CR or LF cannot be written back as lines.
        let mut bytes = Vec::new();
        encode(value, &mut bytes);
        let (again, error) = decode(std::iter::once(bytes.as_slice()));
        if error.is_none() && again.len() == 1 {
            assert_eq!(&again[0], value);
        }
    }
});
