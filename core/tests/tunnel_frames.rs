//! Tunnel frame codec: round trips, split-invariance, limits and malformed input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use gate_core::config::Secret;
use gate_core::tunnel::{
    decode_frame, decode_stream_header, AcmeChallengeClear, AcmeChallengeResult, AcmeChallengeSet,
    EncodeError, ErrorCode, ErrorFrame, Frame, FrameDecoder, FrameError, Register, Registered,
    StreamHeader, DEFAULT_MAX_FRAME_LEN, GOODBYE_SINCE_VERSION, HTTPS_PORT_SINCE_VERSION,
    MAX_STRING_LEN, PROTOCOL_VERSION, TOKEN_SINCE_VERSION,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Strategies, one per frame type
// ---------------------------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    // Multi-byte characters included so UTF-8 boundaries are exercised.
    prop_oneof![
        "[a-z0-9.-]{0,40}",
        any::<String>().prop_map(|s| s.chars().take(30).collect()),
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn register() -> impl Strategy<Value = Frame> {
    (
        any::<u16>(),
        text(),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(protocol_version, daemon_version, custom_label, token)| {
            Frame::Register(Register {
                protocol_version,
                daemon_version,
                custom_label,
                // Tokens exist from version 4 on.
                token: token
                    .filter(|_| protocol_version >= TOKEN_SINCE_VERSION)
                    .map(Secret::new),
            })
        })
}

fn registered() -> impl Strategy<Value = Frame> {
    (
        any::<u16>(),
        text(),
        proptest::option::of(text()),
        proptest::option::of(text()),
        any::<u32>(),
        proptest::option::of(1..=u16::MAX),
    )
        .prop_map(
            |(protocol_version, node_name, custom_name, custom_name_refusal, interval, port)| {
                Frame::Registered(Registered {
                    protocol_version,
                    node_name,
                    custom_name,
                    custom_name_refusal,
                    heartbeat_interval_ms: interval,
                    // Version 1 frames cannot carry the port (encoding refuses it, tested below).
                    https_port: port.filter(|_| protocol_version >= HTTPS_PORT_SINCE_VERSION),
                })
            },
        )
}

fn refused() -> impl Strategy<Value = Frame> {
    text().prop_map(|reason| Frame::Refused { reason })
}

fn heartbeat() -> impl Strategy<Value = Frame> {
    any::<u64>().prop_map(|seq| Frame::Heartbeat { seq })
}

fn heartbeat_ack() -> impl Strategy<Value = Frame> {
    any::<u64>().prop_map(|seq| Frame::HeartbeatAck { seq })
}

fn stream_header() -> impl Strategy<Value = Frame> {
    (socket_addr(), text()).prop_map(|(client_addr, server_name)| {
        Frame::StreamHeader(StreamHeader {
            client_addr,
            server_name,
        })
    })
}

fn acme_set() -> impl Strategy<Value = Frame> {
    (any::<u64>(), text(), text()).prop_map(|(request_id, name, txt_value)| {
        Frame::AcmeChallengeSet(AcmeChallengeSet {
            request_id,
            name,
            txt_value,
        })
    })
}

fn acme_clear() -> impl Strategy<Value = Frame> {
    (any::<u64>(), text()).prop_map(|(request_id, name)| {
        Frame::AcmeChallengeClear(AcmeChallengeClear { request_id, name })
    })
}

fn acme_result() -> impl Strategy<Value = Frame> {
    (
        any::<u64>(),
        prop_oneof![Just(Ok(())), text().prop_map(Err)],
    )
        .prop_map(|(request_id, outcome)| {
            Frame::AcmeChallengeResult(AcmeChallengeResult {
                request_id,
                outcome,
            })
        })
}

fn error_frame() -> impl Strategy<Value = Frame> {
    (any::<u16>(), text()).prop_map(|(code, message)| {
        Frame::Error(ErrorFrame {
            code: ErrorCode(code),
            message,
        })
    })
}

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        register(),
        registered(),
        refused(),
        heartbeat(),
        heartbeat_ack(),
        stream_header(),
        acme_set(),
        acme_clear(),
        acme_result(),
        Just(Frame::Drain),
        error_frame(),
        Just(Frame::Leaving),
        Just(Frame::LeavingAck),
    ]
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    let written = frame.encode(&mut out).expect("test frames are encodable");
    assert_eq!(written, out.len());
    assert_eq!(written, frame.encoded_len());
    out
}

fn decode_all(decoder: &mut FrameDecoder) -> Result<Vec<Frame>, FrameError> {
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode()? {
        frames.push(frame);
    }
    Ok(frames)
}

fn assert_round_trip(frame: Frame) -> Result<(), TestCaseError> {
    let bytes = encode(&frame);
    let decoded = decode_frame(&bytes, DEFAULT_MAX_FRAME_LEN);
    prop_assert_eq!(decoded, Ok(Some((frame.clone(), bytes.len()))));
    // Every strict prefix is incomplete, never an error.
    for cut in 0..bytes.len() {
        prop_assert_eq!(decode_frame(&bytes[..cut], DEFAULT_MAX_FRAME_LEN), Ok(None));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn register_round_trips(frame in register()) { assert_round_trip(frame)?; }
    #[test]
    fn registered_round_trips(frame in registered()) { assert_round_trip(frame)?; }
    #[test]
    fn refused_round_trips(frame in refused()) { assert_round_trip(frame)?; }
    #[test]
    fn heartbeat_round_trips(frame in heartbeat()) { assert_round_trip(frame)?; }
    #[test]
    fn heartbeat_ack_round_trips(frame in heartbeat_ack()) { assert_round_trip(frame)?; }
    #[test]
    fn stream_header_round_trips(frame in stream_header()) { assert_round_trip(frame)?; }
    #[test]
    fn acme_set_round_trips(frame in acme_set()) { assert_round_trip(frame)?; }
    #[test]
    fn acme_clear_round_trips(frame in acme_clear()) { assert_round_trip(frame)?; }
    #[test]
    fn acme_result_round_trips(frame in acme_result()) { assert_round_trip(frame)?; }
    #[test]
    fn error_round_trips(frame in error_frame()) { assert_round_trip(frame)?; }

    /// Any split of an encoded sequence into chunks decodes to the same frames as one-shot.
    #[test]
    fn any_split_decodes_the_same(
        frames in proptest::collection::vec(any_frame(), 0..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut bytes = Vec::new();
        for frame in &frames {
            frame.encode(&mut bytes).expect("encodable");
        }
        let mut positions: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        positions.push(0);
        positions.push(bytes.len());
        positions.sort_unstable();
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        let mut decoded = Vec::new();
        for pair in positions.windows(2) {
            decoder.push(&bytes[pair[0]..pair[1]]);
            decoded.extend(decode_all(&mut decoder).expect("valid stream"));
        }
        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(decoder.buffered_len(), 0);
    }

    /// Byte-at-a-time decoding agrees too (the extreme split).
    #[test]
    fn byte_at_a_time_decodes_the_same(frames in proptest::collection::vec(any_frame(), 0..4)) {
        let mut bytes = Vec::new();
        for frame in &frames {
            frame.encode(&mut bytes).expect("encodable");
        }
        let mut decoder = FrameDecoder::default();
        let mut decoded = Vec::new();
        for byte in &bytes {
            decoder.push(std::slice::from_ref(byte));
            decoded.extend(decode_all(&mut decoder).expect("valid stream"));
        }
        prop_assert_eq!(decoded, frames);
    }

    /// Random bytes, in random chunks, never panic; whatever decodes re-encodes to bytes that
    /// decode to the same frame.
    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        chunk in 1usize..64,
        max in 0u32..1024,
    ) {
        let mut decoder = FrameDecoder::new(max);
        for piece in bytes.chunks(chunk) {
            decoder.push(piece);
            while let Ok(Some(frame)) = decoder.decode() {
                let again = encode(&frame);
                prop_assert_eq!(
                    decode_frame(&again, u32::MAX),
                    Ok(Some((frame, again.len())))
                );
            }
        }
        let _ = decode_stream_header(&bytes, max);
    }

    /// Frames whose valid encoding is mutated in one byte never panic the decoder.
    #[test]
    fn mutated_frames_never_panic(frame in any_frame(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&frame);
        let index = at.index(bytes.len());
        bytes[index] = byte;
        let _ = decode_frame(&bytes, DEFAULT_MAX_FRAME_LEN);
        let _ = decode_stream_header(&bytes, DEFAULT_MAX_FRAME_LEN);
    }

    /// Any declared length over the maximum is rejected from the prefix alone, and the decoder
    /// does not grow its buffer toward the declared size.
    #[test]
    fn lengths_over_the_max_are_rejected_without_allocation(
        max in 1u32..100_000,
        excess in 1u32..u32::MAX,
    ) {
        let declared = max.saturating_add(excess);
        prop_assume!(declared > max);
        let mut decoder = FrameDecoder::new(max);
        decoder.push(&declared.to_be_bytes());
        prop_assert_eq!(decoder.decode(), Err(FrameError::FrameTooLarge { declared, max }));
        prop_assert!(decoder.buffer_capacity() <= 64);
        prop_assert_eq!(
            decode_frame(&declared.to_be_bytes(), max),
            Err(FrameError::FrameTooLarge { declared, max })
        );
    }

    /// The stream-header helper returns the header and leaves the payload untouched, whatever the
    /// payload is.
    #[test]
    fn stream_header_prefix_splits_header_and_payload(
        header in stream_header(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = encode(&header);
        let header_len = bytes.len();
        bytes.extend_from_slice(&payload);
        let Frame::StreamHeader(expected) = header else { unreachable!() };
        prop_assert_eq!(
            decode_stream_header(&bytes, DEFAULT_MAX_FRAME_LEN),
            Ok(Some((expected, header_len)))
        );
        for cut in 0..header_len {
            prop_assert_eq!(decode_stream_header(&bytes[..cut], DEFAULT_MAX_FRAME_LEN), Ok(None));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Exact bytes and typed errors
// ---------------------------------------------------------------------------------------------

#[test]
fn heartbeat_has_the_documented_layout() {
    let bytes = encode(&Frame::Heartbeat {
        seq: 0x0102_0304_0506_0708,
    });
    assert_eq!(bytes, [0, 0, 0, 9, 0x04, 1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn stream_header_has_the_documented_layout() {
    let frame = Frame::StreamHeader(StreamHeader {
        client_addr: "192.0.2.7:443".parse().unwrap(),
        server_name: "ab".into(),
    });
    assert_eq!(
        encode(&frame),
        [0, 0, 0, 12, 0x06, 4, 192, 0, 2, 7, 0x01, 0xBB, 0, 2, b'a', b'b']
    );
}

#[test]
fn register_has_the_documented_layout() {
    let frame = Frame::Register(Register {
        protocol_version: 1,
        daemon_version: "1".into(),
        custom_label: Some("x".into()),
        token: None,
    });
    assert_eq!(
        encode(&frame),
        [0, 0, 0, 10, 0x01, 0, 1, 0, 1, b'1', 1, 0, 1, b'x']
    );
}

fn registered_v(protocol_version: u16, https_port: Option<u16>) -> Frame {
    Frame::Registered(Registered {
        protocol_version,
        node_name: "n".into(),
        custom_name: None,
        custom_name_refusal: None,
        heartbeat_interval_ms: 1000,
        https_port,
    })
}

/// Version 1 `Registered` ends with the heartbeat interval, as version 1 peers decode it.
#[test]
fn registered_v1_has_the_version_1_layout() {
    assert_eq!(
        encode(&registered_v(1, None)),
        [0, 0, 0, 12, 0x02, 0, 1, 0, 1, b'n', 0, 0, 0, 0, 0x03, 0xE8]
    );
}

/// Version 2 appends the public HTTPS port; 0 on the wire is "not announced".
#[test]
fn registered_v2_carries_the_https_port() {
    const { assert!(HTTPS_PORT_SINCE_VERSION == 2 && PROTOCOL_VERSION >= HTTPS_PORT_SINCE_VERSION) };
    let with_port = registered_v(2, Some(8443));
    let bytes = encode(&with_port);
    assert_eq!(
        bytes,
        [0, 0, 0, 14, 0x02, 0, 2, 0, 1, b'n', 0, 0, 0, 0, 0x03, 0xE8, 0x20, 0xFB]
    );
    assert_eq!(with_port.encoded_len(), bytes.len());
    let without = encode(&registered_v(2, None));
    assert_eq!(without.get(without.len() - 2..), Some(&[0u8, 0][..]));
    assert_eq!(
        decode_frame(&without, DEFAULT_MAX_FRAME_LEN),
        Ok(Some((registered_v(2, None), without.len())))
    );
    // A version 2 frame without its port is truncated, not silently version 1.
    let mut cut = without.clone();
    cut.truncate(cut.len() - 2);
    cut[3] -= 2;
    assert!(matches!(
        decode_frame(&cut, DEFAULT_MAX_FRAME_LEN),
        Err(FrameError::Truncated {
            field: "https_port",
            ..
        })
    ));
    // A version 1 decoder's view: the port would be trailing bytes, so it is never sent at v1.
    let mut v1_with_extra = encode(&registered_v(1, None));
    v1_with_extra.extend_from_slice(&[0x20, 0xFB]);
    v1_with_extra[3] += 2;
    assert!(matches!(
        decode_frame(&v1_with_extra, DEFAULT_MAX_FRAME_LEN),
        Err(FrameError::TrailingBytes { count: 2, .. })
    ));
}

/// Encoding a port into a version 1 frame would lose it; the encoder refuses and writes nothing.
#[test]
fn a_port_in_a_version_1_frame_is_refused_by_the_encoder() {
    let mut out = vec![9u8];
    assert_eq!(
        registered_v(1, Some(8443)).encode(&mut out),
        Err(EncodeError::FieldNeedsVersion {
            field: "https_port",
            since: 2,
            version: 1,
        })
    );
    assert_eq!(out, [9]);
}

#[test]
fn drain_is_a_bare_type_byte() {
    assert_eq!(encode(&Frame::Drain), [0, 0, 0, 1, 0x0A]);
}

#[test]
fn goodbye_frames_are_bare_type_bytes_of_version_3() {
    const { assert!(GOODBYE_SINCE_VERSION == 3 && PROTOCOL_VERSION >= GOODBYE_SINCE_VERSION) };
    assert_eq!(encode(&Frame::Leaving), [0, 0, 0, 1, 0x0C]);
    assert_eq!(encode(&Frame::LeavingAck), [0, 0, 0, 1, 0x0D]);
    for frame in [Frame::Leaving, Frame::LeavingAck] {
        let bytes = encode(&frame);
        assert_eq!(bytes.len(), frame.encoded_len());
        assert_eq!(
            decode_frame(&bytes, DEFAULT_MAX_FRAME_LEN),
            Ok(Some((frame, 5)))
        );
    }
    // A body on a goodbye frame is malformed, not ignored.
    assert!(matches!(
        decode_frame(&[0, 0, 0, 2, 0x0C, 0], DEFAULT_MAX_FRAME_LEN),
        Err(FrameError::TrailingBytes {
            frame_type: 0x0C,
            count: 1
        })
    ));
}

#[test]
fn huge_declared_length_is_rejected_before_allocation() {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    assert_eq!(
        decoder.decode(),
        Err(FrameError::FrameTooLarge {
            declared: u32::MAX,
            max: DEFAULT_MAX_FRAME_LEN
        })
    );
    assert!(decoder.buffer_capacity() < 1024);
    // Terminal: pushing more does not buffer and the same error repeats.
    decoder.push(&[0; 4096]);
    assert_eq!(decoder.buffer_capacity(), 0);
    assert!(matches!(
        decoder.decode(),
        Err(FrameError::FrameTooLarge { .. })
    ));
}

#[test]
fn length_exactly_at_the_max_is_accepted() {
    let frame = Frame::Refused {
        reason: "r".repeat(100),
    };
    let bytes = encode(&frame);
    let max = u32::try_from(bytes.len() - 4).unwrap();
    assert_eq!(decode_frame(&bytes, max), Ok(Some((frame, bytes.len()))));
    assert!(matches!(
        decode_frame(&bytes, max - 1),
        Err(FrameError::FrameTooLarge { .. })
    ));
}

#[test]
fn zero_length_is_an_error() {
    assert_eq!(decode_frame(&[0, 0, 0, 0], 10), Err(FrameError::EmptyFrame));
}

#[test]
fn unknown_frame_type_is_an_error() {
    assert_eq!(
        decode_frame(&[0, 0, 0, 1, 0x7F], 10),
        Err(FrameError::UnknownFrameType(0x7F))
    );
}

#[test]
fn bad_utf8_is_an_error() {
    // Refused with a 2-byte string that is not UTF-8.
    assert_eq!(
        decode_frame(&[0, 0, 0, 5, 0x03, 0, 2, 0xC3, 0x28], 100),
        Err(FrameError::InvalidUtf8 { field: "reason" })
    );
}

#[test]
fn trailing_bytes_inside_a_frame_are_an_error() {
    assert_eq!(
        decode_frame(&[0, 0, 0, 3, 0x0A, 9, 9], 100),
        Err(FrameError::TrailingBytes {
            frame_type: 0x0A,
            count: 2
        })
    );
}

#[test]
fn truncated_field_is_an_error() {
    // Heartbeat whose frame holds only 3 of the 8 seq bytes.
    assert_eq!(
        decode_frame(&[0, 0, 0, 4, 0x04, 1, 2, 3], 100),
        Err(FrameError::Truncated {
            frame_type: 0x04,
            field: "seq"
        })
    );
    // A string whose declared length runs past the frame.
    assert_eq!(
        decode_frame(&[0, 0, 0, 4, 0x03, 0, 9, b'a'], 100),
        Err(FrameError::Truncated {
            frame_type: 0x03,
            field: "reason"
        })
    );
}

#[test]
fn invalid_tags_are_errors() {
    // Stream header with address family 5.
    assert_eq!(
        decode_frame(&[0, 0, 0, 2, 0x06, 5], 100),
        Err(FrameError::InvalidTag {
            field: "client_addr",
            value: 5
        })
    );
    // Acme result with outcome 2.
    let mut bytes = vec![0, 0, 0, 10, 0x09];
    bytes.extend_from_slice(&7u64.to_be_bytes());
    bytes.push(2);
    assert_eq!(
        decode_frame(&bytes, 100),
        Err(FrameError::InvalidTag {
            field: "outcome",
            value: 2
        })
    );
}

#[test]
fn stream_header_helper_rejects_other_frames_early() {
    // Only the prefix and type byte are present: already known not to be a stream header.
    assert_eq!(
        decode_stream_header(&[0, 0, 0, 9, 0x04], DEFAULT_MAX_FRAME_LEN),
        Err(FrameError::NotAStreamHeader(0x04))
    );
}

#[test]
fn oversized_strings_are_refused_by_the_encoder_without_writing() {
    let frame = Frame::Refused {
        reason: "x".repeat(MAX_STRING_LEN + 1),
    };
    let mut out = vec![1, 2, 3];
    assert_eq!(
        frame.encode(&mut out),
        Err(EncodeError::StringTooLong {
            field: "reason",
            len: MAX_STRING_LEN + 1
        })
    );
    assert_eq!(out, [1, 2, 3]);
}

#[test]
fn decoder_reports_bytes_after_the_last_frame() {
    let mut bytes = encode(&Frame::Drain);
    bytes.extend_from_slice(b"tail");
    let mut decoder = FrameDecoder::default();
    decoder.push(&bytes);
    assert_eq!(decoder.decode(), Ok(Some(Frame::Drain)));
    assert_eq!(decoder.buffered_len(), 4);
    assert_eq!(decoder.take_remaining(), b"tail");
    assert_eq!(decoder.buffered_len(), 0);
}

#[test]
fn ipv6_client_address_round_trips() {
    let frame = Frame::StreamHeader(StreamHeader {
        client_addr: "[2001:db8::1]:50000".parse().unwrap(),
        server_name: "abc.example.org".into(),
    });
    let bytes = encode(&frame);
    assert_eq!(
        decode_stream_header(&bytes, DEFAULT_MAX_FRAME_LEN),
        Ok(Some((
            StreamHeader {
                client_addr: "[2001:db8::1]:50000".parse().unwrap(),
                server_name: "abc.example.org".into(),
            },
            bytes.len()
        )))
    );
}

fn register_v(protocol_version: u16, token: Option<&str>) -> Register {
    Register {
        protocol_version,
        daemon_version: "1".into(),
        custom_label: None,
        token: token.map(Secret::new),
    }
}

/// A version 4 Register without a token is byte for byte a version 3 one but for the version:
/// an older relay reads it (and lowers the version). With a token, the token follows as a
/// trailing `str`.
#[test]
fn register_token_is_a_trailing_string_present_only_when_set() {
    let without = Frame::Register(register_v(4, None)).to_bytes().unwrap();
    let v3 = Frame::Register(register_v(3, None)).to_bytes().unwrap();
    assert_eq!(without[..5], v3[..5]);
    assert_eq!(without[7..], v3[7..]);
    let with = Frame::Register(register_v(4, Some("s3cret-s3cret-s3cret")))
        .to_bytes()
        .unwrap();
    assert_eq!(with.len(), without.len() + 2 + 20);
    assert_eq!(
        &with[without.len()..without.len() + 2],
        &20u16.to_be_bytes()
    );
    assert_eq!(&with[without.len() + 2..], b"s3cret-s3cret-s3cret");
    let (decoded, _) = decode_frame(&with, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
    assert_eq!(
        decoded,
        Frame::Register(register_v(4, Some("s3cret-s3cret-s3cret")))
    );
    // The token never shows in Debug output (frames may be logged).
    assert!(!format!("{decoded:?}").contains("s3cret"));
}

/// Before version 4 a token cannot be sent (the encoder refuses), and trailing bytes after a
/// version 3 Register are refused by the decoder, as a version 3 relay does.
#[test]
fn a_token_needs_version_4() {
    assert_eq!(TOKEN_SINCE_VERSION, 4);
    assert!(matches!(
        Frame::Register(register_v(3, Some("s3cret-s3cret-s3cret"))).to_bytes(),
        Err(EncodeError::FieldNeedsVersion { field: "token", .. })
    ));
    let mut bytes = Frame::Register(register_v(4, Some("s3cret-s3cret-s3cret")))
        .to_bytes()
        .unwrap();
    bytes[5..7].copy_from_slice(&3u16.to_be_bytes());
    assert!(matches!(
        decode_frame(&bytes, DEFAULT_MAX_FRAME_LEN),
        Err(FrameError::TrailingBytes { .. })
    ));
}
