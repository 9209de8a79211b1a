//! Fuzz target for `gate_core::sni::parse`: arbitrary bytes must never panic, the answer must
//! settle monotonically over prefixes (a prefix that gets an error or a result agrees with the
//! whole input), `NeedMore` must only be asked for below the bound, and a found hello must
//! give the same answer when its handshake message is re-framed into small records.
#![no_main]
use gate_core::sni::{self, Status, MAX_CLIENT_HELLO_BYTES};
use libfuzzer_sys::fuzz_target;

/// Concatenates the record payloads present in `input` (the last one possibly cut short) and
/// re-frames them into handshake records of `fragment` bytes.
fn reframe(input: &[u8], fragment: usize) -> Vec<u8> {
    let mut message = Vec::new();
    let mut rest = input;
    while let Some(header) = rest.get(..5) {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let payload = &rest[5..];
        let present = payload.len().min(len);
        message.extend_from_slice(&payload[..present]);
        rest = &payload[present..];
    }
    let mut out = Vec::new();
    for chunk in message.chunks(fragment) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let full = sni::parse(data);
    if full == Ok(Status::NeedMore) {
        assert!(data.len() < MAX_CLIENT_HELLO_BYTES, "NeedMore at {} bytes", data.len());
    }

    // A spread of prefixes (about 64, plus the last few) instead of all of them: cheap.
    let step = (data.len() / 64).max(1);
    let tail = data.len().saturating_sub(4);
    for end in (0..data.len()).step_by(step).chain(tail..data.len()) {
        match sni::parse(&data[..end]) {
            Ok(Status::NeedMore) => {}
            settled => assert_eq!(settled, full, "prefix of {end} bytes disagrees"),
        }
    }

    // A complete hello keeps its answer when re-framed into records of 1..=64 bytes (unless
    // the extra record headers push it past the bound). Bytes after the hello ride along and
    // are ignored.
    if let Ok(Status::Found(_) | Status::NoSni(_)) = &full {
        let fragment = usize::from(data.get(5).copied().unwrap_or(0) % 64) + 1;
        let reframed = reframe(data, fragment);
        match sni::parse(&reframed) {
            Err(sni::SniError::TooLarge) => {}
            again => assert_eq!(again, full, "re-framed into {fragment}-byte records"),
        }
    }
});
