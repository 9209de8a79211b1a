//! Fuzzes the tunnel frame decoders: `FrameDecoder` fed in chunks the input itself dictates,
//! the one-shot `decode_frame`, and `decode_stream_header`. Checks: no panic, and every decoded
//! frame re-encodes to bytes that decode back to an equal frame.
//!
//! Input layout: byte 0 selects the decoder's maximum frame length; then repeated
//! `[chunk length byte][chunk bytes...]` records (a chunk of `n % 64 + 1` bytes, shorter at the end).
#![no_main]
use gate_core::tunnel::{decode_frame, decode_stream_header, Frame, FrameDecoder};
use libfuzzer_sys::fuzz_target;

fn check_reencodes(frame: &Frame) {
    let mut again = Vec::new();
    let written = frame
        .encode(&mut again)
        .expect("a decoded frame is always encodable");
    assert_eq!(written, again.len());
    assert_eq!(written, frame.encoded_len());
    match decode_frame(&again, u32::MAX) {
        Ok(Some((decoded, consumed))) => {
            assert_eq!(&decoded, frame);
            assert_eq!(consumed, again.len());
        }
        other => panic!("re-encoded frame did not decode: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let max_frame_len = match selector % 4 {
        0 => 16,
        1 => 256,
        2 => gate_core::tunnel::DEFAULT_MAX_FRAME_LEN,
        _ => u32::MAX,
    };

    // Concatenation of the chunk payloads, to compare against one-shot decoding.
    let mut stream = Vec::new();
    let mut decoder = FrameDecoder::new(max_frame_len);
    let mut incremental = Vec::new();
    let mut incremental_error = None;
    while let Some((&len_byte, after)) = rest.split_first() {
        let len = (usize::from(len_byte) % 64 + 1).min(after.len());
        let (chunk, next) = after.split_at(len);
        rest = next;
        stream.extend_from_slice(chunk);
        decoder.push(chunk);
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => {
                    check_reencodes(&frame);
                    incremental.push(frame);
                }
                Ok(None) => break,
                Err(error) => {
                    incremental_error = Some(error);
                    break;
                }
            }
        }
        if incremental_error.is_some() {
            break;
        }
    }

    // One-shot decoding of the same bytes agrees with the incremental decoder up to the point
    // the incremental decoder stopped.
    let mut offset = 0;
    let mut one_shot = Vec::new();
    let mut one_shot_error = None;
    while let Some(pending) = stream.get(offset..) {
        match decode_frame(pending, max_frame_len) {
            Ok(Some((frame, consumed))) => {
                one_shot.push(frame);
                offset += consumed;
            }
            Ok(None) => break,
            Err(error) => {
                one_shot_error = Some(error);
                break;
            }
        }
    }
    assert_eq!(incremental, one_shot);
    assert_eq!(incremental_error, one_shot_error);

    if let Ok(Some((header, consumed))) = decode_stream_header(&stream, max_frame_len) {
        assert!(consumed <= stream.len());
        check_reencodes(&Frame::StreamHeader(header));
    }
});
