//! SSE parser, framer and encoder: WHATWG examples, edge cases and properties.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use gate_core::llm::sse::{
    encode_comment, encode_data, SseEncodeError, SseEnd, SseError, SseEvent, SseFramer, SseParser,
    SseWatcher,
};
use proptest::prelude::*;

const LINE: usize = 1024;
const EVENT: usize = 4096;

/// Parses `chunks` in order; returns the events and the end report (or the first error).
fn parse_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    line: usize,
    event: usize,
) -> (Vec<SseEvent>, Result<SseEnd, SseError>) {
    let mut parser = SseParser::new(line, event);
    let mut events = Vec::new();
    for chunk in chunks {
        parser.push(chunk);
        while let Some(result) = parser.next_event() {
            match result {
                Ok(event) => events.push(event),
                Err(error) => return (events, Err(error)),
            }
        }
    }
    (events, parser.finish())
}

fn parse(bytes: &[u8]) -> Vec<SseEvent> {
    let (events, end) = parse_chunks([bytes], LINE, EVENT);
    end.expect("valid stream");
    events
}

fn event(event: Option<&str>, data: &str, id: Option<&str>, retry: Option<u64>) -> SseEvent {
    SseEvent {
        event: event.map(str::to_owned),
        data: data.to_owned(),
        id: id.map(str::to_owned),
        retry,
    }
}

/// Splits `bytes` at the given cut points (taken modulo the length, sorted).
fn split_at_points(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut previous = 0;
    for point in points {
        chunks.push(bytes[previous..point].to_vec());
        previous = point;
    }
    chunks.push(bytes[previous..].to_vec());
    chunks
}

#[test]
fn whatwg_spec_examples() {
    // "data: YHOO\ndata: +2\ndata: 10" is one event with three lines.
    assert_eq!(
        parse(b"data: YHOO\ndata: +2\ndata: 10\n\n"),
        vec![SseEvent::data("YHOO\n+2\n10")]
    );
    // Comment, then two events; the id is sticky but reported per block.
    let stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n";
    assert_eq!(
        parse(stream),
        vec![
            event(None, "first event", Some("1"), None),
            event(None, "second event", Some(""), None),
            event(None, " third event", None, None),
        ]
    );
    // "data" without colon gives an empty data line; two of them give "\n".
    assert_eq!(
        parse(b"data\n\ndata\ndata\n\ndata:\n"),
        vec![SseEvent::data(""), SseEvent::data("\n")]
    );
    // "data:test" and "data: test" are the same.
    assert_eq!(
        parse(b"data:test\n\ndata: test\n\n"),
        vec![SseEvent::data("test"), SseEvent::data("test")]
    );
}

#[test]
fn fields_and_ignored_lines() {
    let stream = b"event: delta\nretry: 1500\nunknown: x\nid: a\0b\ndata: {}\n\n";
    assert_eq!(
        parse(stream),
        vec![event(Some("delta"), "{}", None, Some(1500))]
    );
    // Invalid retry values are ignored; the last valid one wins.
    assert_eq!(
        parse(b"retry: 10\nretry: 1x\nretry:\nretry: 99999999999999999999999\ndata: a\n\n"),
        vec![event(None, "a", None, Some(10))]
    );
    // A block without data is not dispatched, and resets the event type.
    assert_eq!(parse(b"event: x\n\ndata: y\n\n"), vec![SseEvent::data("y")]);
    // Empty event name means "message": reported as None.
    assert_eq!(parse(b"event:\ndata: y\n\n"), vec![SseEvent::data("y")]);
}

#[test]
fn last_event_id_and_retry_survive_blocks_without_data() {
    let mut parser = SseParser::new(LINE, EVENT);
    parser.push(b"id: 7\nretry: 250\n\n");
    assert!(parser.next_event().is_none());
    assert_eq!(parser.last_event_id(), "7");
    assert_eq!(parser.reconnection_time(), Some(250));
    parser.push(b"data: x\n\n");
    assert_eq!(parser.next_event(), Some(Ok(SseEvent::data("x"))));
    assert_eq!(parser.last_event_id(), "7");
}

#[test]
fn all_line_endings_and_cr_split_across_chunks() {
    let expected = vec![SseEvent::data("a\nb"), SseEvent::data("c")];
    for stream in [
        &b"data: a\ndata: b\n\ndata: c\n\n"[..],
        b"data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n",
        b"data: a\rdata: b\r\rdata: c\r\r",
        b"data: a\r\ndata: b\r\rdata: c\n\r\n",
    ] {
        assert_eq!(
            parse(stream),
            expected,
            "{:?}",
            String::from_utf8_lossy(stream)
        );
        // Every two-way split, including CR | LF.
        for cut in 0..=stream.len() {
            let (events, end) = parse_chunks([&stream[..cut], &stream[cut..]], LINE, EVENT);
            assert_eq!(events, expected, "cut at {cut}");
            assert!(!end.unwrap().incomplete_event);
        }
    }
}

#[test]
fn event_is_dispatched_as_soon_as_the_blank_line_ends_in_cr() {
    let mut parser = SseParser::new(LINE, EVENT);
    parser.push(b"data: a\r\n\r");
    assert_eq!(parser.next_event(), Some(Ok(SseEvent::data("a"))));
    parser.push(b"\ndata: b\r\n\r\n");
    assert_eq!(parser.next_event(), Some(Ok(SseEvent::data("b"))));
    assert_eq!(parser.next_event(), None);
}

#[test]
fn byte_order_mark_only_at_stream_start() {
    assert_eq!(parse(b"\xEF\xBB\xBFdata: a\n\n"), vec![SseEvent::data("a")]);
    // Split inside the BOM.
    let (events, _) = parse_chunks([&b"\xEF"[..], b"\xBB", b"\xBFdata: a\n\n"], LINE, EVENT);
    assert_eq!(events, vec![SseEvent::data("a")]);
    // A second BOM, or one later in the stream, is part of the field name: the line is ignored.
    assert_eq!(
        parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n"),
        vec![SseEvent::data("b")]
    );
    assert_eq!(
        parse(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"),
        vec![SseEvent::data("a")]
    );
}

#[test]
fn utf8_split_across_chunks_survives_and_invalid_is_replaced() {
    let stream = "data: héllo → 世界 🎉\n\n".as_bytes();
    for cut in 0..=stream.len() {
        let (events, _) = parse_chunks([&stream[..cut], &stream[cut..]], LINE, EVENT);
        assert_eq!(events, vec![SseEvent::data("héllo → 世界 🎉")]);
    }
    assert_eq!(
        parse(b"data: a\xFFb\xE2\x82\n\n"),
        vec![SseEvent::data("a\u{FFFD}b\u{FFFD}")]
    );
}

#[test]
fn strict_utf8_mode_rejects_invalid_bytes() {
    let mut parser = SseParser::new(LINE, EVENT).reject_invalid_utf8();
    parser.push(b"data: ok\n\ndata: a\xFF\n\ndata: later\n\n");
    assert_eq!(parser.next_event(), Some(Ok(SseEvent::data("ok"))));
    assert_eq!(
        parser.next_event(),
        Some(Err(SseError::InvalidUtf8 { line_start: 10 }))
    );
    assert_eq!(parser.next_event(), None);
    assert_eq!(
        parser.finish(),
        Err(SseError::InvalidUtf8 { line_start: 10 })
    );
}

#[test]
fn finish_reports_incomplete_events() {
    let (events, end) = parse_chunks([&b"data: a\n\ndata: b\n"[..]], LINE, EVENT);
    assert_eq!(events, vec![SseEvent::data("a")]);
    assert_eq!(
        end,
        Ok(SseEnd {
            leftover_bytes: 8,
            incomplete_event: true
        })
    );
    let (_, end) = parse_chunks([&b"data: a\n\ndata: partial"[..]], LINE, EVENT);
    assert!(end.unwrap().incomplete_event);
    let (_, end) = parse_chunks([&b"data: a\r\n\r"[..], b"\n"], LINE, EVENT);
    assert_eq!(
        end,
        Ok(SseEnd {
            leftover_bytes: 0,
            incomplete_event: false
        })
    );
    let (_, end) = parse_chunks([&b""[..]], LINE, EVENT);
    assert_eq!(
        end,
        Ok(SseEnd {
            leftover_bytes: 0,
            incomplete_event: false
        })
    );
}

#[test]
fn over_long_line_is_an_error_before_it_is_complete() {
    let mut parser = SseParser::new(16, 1 << 20);
    parser.push(b"data: ok\n\n");
    assert_eq!(parser.next_event(), Some(Ok(SseEvent::data("ok"))));
    parser.push(b"data: 0123456789"); // 16 bytes: still allowed
    assert_eq!(parser.next_event(), None);
    parser.push(b"x");
    assert_eq!(
        parser.next_event(),
        Some(Err(SseError::LineTooLong {
            limit: 16,
            line_start: 10
        }))
    );
    // Further input is ignored and does not accumulate.
    for _ in 0..1000 {
        parser.push(&[b'y'; 1000]);
        assert_eq!(parser.next_event(), None);
    }
    assert!(parser.finish().is_err());
    // A complete over-long line in one chunk.
    let (_, end) = parse_chunks([&b"data: 01234567890123456789\n\n"[..]], 16, 1 << 20);
    assert_eq!(
        end,
        Err(SseError::LineTooLong {
            limit: 16,
            line_start: 0
        })
    );
}

#[test]
fn over_large_event_is_an_error() {
    // Many short lines: each within the line limit, together over the event limit.
    let mut stream = Vec::new();
    for _ in 0..100 {
        stream.extend_from_slice(b"data: 0123456789\n");
    }
    let (_, end) = parse_chunks([&stream[..]], 64, 1000);
    assert_eq!(
        end,
        Err(SseError::EventTooLarge {
            limit: 1000,
            event_start: 0
        })
    );
    // Comments without a blank line count too (the framer would keep their bytes).
    let comments = b":\n".repeat(600);
    let (_, end) = parse_chunks([&comments[..]], 64, 1000);
    assert!(matches!(end, Err(SseError::EventTooLarge { .. })));
    // Exactly at the limit is fine: "data: x\n\n" is 9 bytes.
    let (events, end) = parse_chunks([&b"data: x\n\n"[..]], 64, 9);
    assert_eq!((events.len(), end.is_ok()), (1, true));
    let (_, end) = parse_chunks([&b"data: xy\n\n"[..]], 64, 9);
    assert!(end.is_err());
}

#[test]
fn encoder_output() {
    let mut out = Vec::new();
    event(
        Some("message_delta"),
        "line1\nline2\r\nline3\r",
        Some("42"),
        Some(3000),
    )
    .encode(&mut out)
    .unwrap();
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "id: 42\nretry: 3000\nevent: message_delta\ndata: line1\ndata: line2\ndata: line3\ndata:\n\n"
    );
    out.clear();
    encode_data(None, "{\"x\":1}", &mut out).unwrap();
    encode_data(Some("ping"), "", &mut out).unwrap();
    encode_comment("keep-alive", &mut out).unwrap();
    assert_eq!(
        out,
        b"data: {\"x\":1}\n\nevent: ping\ndata:\n\n: keep-alive\n"
    );
    assert_eq!(
        parse(&out),
        vec![
            SseEvent::data("{\"x\":1}"),
            event(Some("ping"), "", None, None)
        ]
    );
}

#[test]
fn encoder_rejects_fields_that_would_change_meaning() {
    let mut out = Vec::new();
    assert_eq!(
        event(Some("a\nb"), "", None, None).encode(&mut out),
        Err(SseEncodeError::LineBreakInField { field: "event" })
    );
    assert_eq!(
        event(None, "", Some("a\rb"), None).encode(&mut out),
        Err(SseEncodeError::LineBreakInField { field: "id" })
    );
    assert_eq!(
        event(None, "", Some("a\0"), None).encode(&mut out),
        Err(SseEncodeError::NulInId)
    );
    assert_eq!(
        encode_data(Some("x\n"), "", &mut out),
        Err(SseEncodeError::LineBreakInField { field: "event" })
    );
    assert_eq!(
        encode_comment("a\nb", &mut out),
        Err(SseEncodeError::LineBreakInComment)
    );
    assert!(out.is_empty(), "nothing is written on error");
}

#[test]
fn framer_keeps_original_bytes_and_parses_events() {
    let stream = b": ping\n\nevent: a\r\ndata: 1\r\n\r\ndata: 2\n\n\ndata: tail";
    let mut framer = SseFramer::new(LINE, EVENT);
    framer.push(stream);
    let mut frames = Vec::new();
    while let Some(frame) = framer.next_frame() {
        frames.push(frame.unwrap());
    }
    let pieces: Vec<&[u8]> = frames.iter().map(|frame| &frame.bytes[..]).collect();
    assert_eq!(
        pieces,
        vec![
            &b": ping\n\n"[..],
            b"event: a\r\ndata: 1\r\n\r\n",
            b"data: 2\n\n",
            b"\n"
        ]
    );
    assert_eq!(frames[0].event, None);
    assert_eq!(frames[1].event, Some(event(Some("a"), "1", None, None)));
    assert_eq!(frames[1].stream_offset, 8);
    assert_eq!(frames[2].event, Some(SseEvent::data("2")));
    let end = framer.finish().unwrap();
    assert_eq!(end.leftover, b"data: tail");
    assert!(end.incomplete_event);
}

/// Arbitrary events that the encoder accepts.
fn encodable_event() -> impl Strategy<Value = SseEvent> {
    let single_line = "[^\r\n\0]{0,12}";
    (
        proptest::option::of(single_line),
        "(.|\r|\n){0,40}",
        proptest::option::of(single_line),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(event, data, id, retry)| SseEvent {
            event,
            data,
            id,
            retry,
        })
}

/// What the parser gives back for an encoded event: line breaks normalised, empty event = None.
fn normalised(event: &SseEvent) -> SseEvent {
    SseEvent {
        event: event.event.clone().filter(|name| !name.is_empty()),
        data: event.data.replace("\r\n", "\n").replace('\r', "\n"),
        id: event.id.clone(),
        retry: event.retry,
    }
}

/// Bytes that look like SSE: fragments of field lines, line endings, UTF-8 and junk.
fn sse_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        Just(b"data:".to_vec()),
        Just(b"data: ".to_vec()),
        Just(b"event: e".to_vec()),
        Just(b"id: 1".to_vec()),
        Just(b"retry: 20".to_vec()),
        Just(b":c".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just("é世🎉".as_bytes().to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..6),
    ];
    proptest::collection::vec(fragment, 0..40).prop_map(|fragments| fragments.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any chunking gives the same events, errors and end report as one piece.
    #[test]
    fn any_chunking_matches_one_piece(
        bytes in sse_like_bytes(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        line_limit in 4usize..64,
        event_limit in 8usize..256,
    ) {
        let whole = parse_chunks([&bytes[..]], line_limit, event_limit);
        let chunks = split_at_points(&bytes, &cuts);
        let split = parse_chunks(chunks.iter().map(Vec::as_slice), line_limit, event_limit);
        prop_assert_eq!(whole, split);
    }

    /// Encoding any events and parsing them back, in any chunking, gives the events
    /// (with line breaks in data normalised to LF).
    #[test]
    fn encode_parse_round_trip(
        events in proptest::collection::vec(encodable_event(), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut wire = Vec::new();
        for event in &events {
            event.encode(&mut wire).unwrap();
        }
        let chunks = split_at_points(&wire, &cuts);
        let (parsed, end) = parse_chunks(chunks.iter().map(Vec::as_slice), 1 << 16, 1 << 16);
        let expected: Vec<SseEvent> = events.iter().map(normalised).collect();
        prop_assert_eq!(parsed, expected);
        prop_assert_eq!(end, Ok(SseEnd { leftover_bytes: 0, incomplete_event: false }));
    }

    /// The framer's frames plus its leftover are exactly the input, and its events are the
    /// parser's events.
    #[test]
    fn framer_is_byte_transparent(
        bytes in sse_like_bytes(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut framer = SseFramer::new(1 << 16, 1 << 16);
        let mut rebuilt = Vec::new();
        let mut events = Vec::new();
        for chunk in split_at_points(&bytes, &cuts) {
            framer.push(&chunk);
            while let Some(frame) = framer.next_frame() {
                let frame = frame.unwrap();
                prop_assert_eq!(frame.stream_offset, rebuilt.len() as u64);
                rebuilt.extend_from_slice(&frame.bytes);
                events.extend(frame.event);
            }
        }
        let end = framer.finish().unwrap();
        rebuilt.extend_from_slice(&end.leftover);
        prop_assert_eq!(&rebuilt, &bytes);
        let (parsed, parsed_end) = parse_chunks([&bytes[..]], 1 << 16, 1 << 16);
        prop_assert_eq!(events, parsed);
        prop_assert_eq!(parsed_end.unwrap().incomplete_event, end.incomplete_event);
    }

    /// The watcher reports the data of every event the parser dispatches that holds the marker, in
    /// order, whatever the chunking (and only events of blocks that hold it).
    #[test]
    fn watcher_finds_every_marked_event(
        bytes in sse_like_bytes(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        marker in prop_oneof![Just(&b"e"[..]), Just(&b"1"[..]), Just(&b"data"[..]), Just("é".as_bytes())],
    ) {
        let (parsed, _) = parse_chunks([&bytes[..]], 1 << 16, 1 << 16);
        let marker_text = std::str::from_utf8(marker).unwrap();
        let expected: Vec<String> =
            parsed.into_iter().map(|e| e.data).filter(|d| d.contains(marker_text)).collect();
        let chunks = split_at_points(&bytes, &cuts);
        let seen = watch(marker, 1 << 16, chunks.iter().map(|c| &c[..]));
        let seen: Vec<String> = seen.into_iter().filter(|d| d.contains(marker_text)).collect();
        prop_assert_eq!(seen, expected);
    }

    /// Random bytes never panic, and with no line ending memory stays within the limit: the
    /// parser reports LineTooLong instead of buffering.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), chunk in 1usize..64) {
        let (_, _) = parse_chunks(bytes.chunks(chunk), 32, 128);
        let mut framer = SseFramer::new(32, 128).reject_invalid_utf8();
        for piece in bytes.chunks(chunk) {
            framer.push(piece);
            while framer.next_frame().is_some() {}
        }
        let _ = framer.finish();
    }

    /// A line without an ending that exceeds the limit is an error as soon as it does.
    #[test]
    fn over_long_line_errors_without_waiting(limit in 1usize..200, chunk in 1usize..50) {
        let mut parser = SseParser::new(limit, 1 << 20);
        let mut fed = 0usize;
        let mut error = None;
        while error.is_none() && fed < limit + chunk + 1 {
            parser.push(&vec![b'a'; chunk]);
            fed += chunk;
            error = parser.next_event();
        }
        prop_assert_eq!(error, Some(Err(SseError::LineTooLong { limit, line_start: 0 })));
        prop_assert!(fed <= limit + chunk, "error only after {} bytes", fed);
    }
}

#[test]
fn byte_at_a_time_long_lines() {
    let long = "x".repeat(10_000);
    let stream = format!(": hi\r\ndata: {long}\r\ndata: é\r\n\r\nevent: e\rdata: {long}\r\r");
    let (events, end) = parse_chunks(stream.as_bytes().chunks(1), 20_000, 40_000);
    assert_eq!(
        events,
        vec![
            SseEvent::data(format!("{long}\né")),
            event(Some("e"), &long, None, None)
        ]
    );
    assert_eq!(
        end,
        Ok(SseEnd {
            leftover_bytes: 0,
            incomplete_event: false
        })
    );
}

/// The events' data an [`SseWatcher`] for `marker` (blocks up to `max` bytes) reports, fed
/// `chunks`.
fn watch<'a>(
    marker: &'static [u8],
    max: usize,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<String> {
    let mut watcher = SseWatcher::new(marker, max);
    let mut seen = Vec::new();
    for chunk in chunks {
        watcher.push(chunk, |data| seen.push(data.to_owned()));
    }
    seen
}

#[test]
fn watcher_parses_only_marked_blocks() {
    let stream = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        ": keep-alive\n\n",
        "event: message_delta\r\ndata: {\"usage\":{\"output_tokens\":7}}\r\n\r\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n",
        "data: [DONE]\n\n",
    );
    for size in 1..stream.len() {
        let seen = watch(b"\"usage\"", 1 << 10, stream.as_bytes().chunks(size));
        assert_eq!(
            seen,
            vec![
                "{\"usage\":{\"output_tokens\":7}}",
                "{\"choices\":[],\"usage\":{\"prompt_tokens\":3}}",
            ],
            "chunks of {size}"
        );
    }
}

#[test]
fn watcher_skips_an_oversized_block_and_resumes() {
    let big = format!("data: {{\"usage\":\"{}\"}}\n\n", "x".repeat(200));
    let small = "data: {\"usage\":1}\r\n\r\n";
    let stream = format!("{big}{small}{big}{small}");
    for size in [1, 7, 64, 100, 1000] {
        let seen = watch(b"usage", 100, stream.as_bytes().chunks(size));
        assert_eq!(
            seen,
            vec!["{\"usage\":1}", "{\"usage\":1}"],
            "chunks of {size}"
        );
    }
}

#[test]
fn watcher_keeps_a_byte_order_mark_inside_the_stream() {
    // At the start of the stream a BOM is dropped; later it is part of the line, so the line
    // is not a `data` field.
    let stream = "\u{feff}data: u1\n\n\u{feff}data: u2\n\ndata: u3\n\n";
    let seen = watch(b"u", 1 << 10, [stream.as_bytes()]);
    assert_eq!(seen, vec!["u1", "u3"]);
}

#[test]
fn watcher_joins_data_lines_and_ignores_other_fields() {
    // Several data lines (any line ending), comments, other fields, a field without a colon,
    // a value without its leading space, and invalid UTF-8: the data the parser would give.
    let stream = b"event: x\r\n: note\rdata:u1\r\nid: 7\ndata\ndata: \xff u2\n\n";
    let (parsed, _) = parse_chunks([&stream[..]], 1 << 10, 1 << 10);
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].data, "u1\n\n\u{fffd} u2");
    for size in 1..stream.len() {
        assert_eq!(
            watch(b"u", 1 << 10, stream.chunks(size)),
            vec![parsed[0].data.clone()],
            "chunks of {size}"
        );
    }
}

/// A watcher on a searcher built once (`with_finder`, what each stream of the daemon uses)
/// reports what one with its own searcher reports, whatever the chunking, invalid UTF-8
/// included (replaced, as the parser does).
#[test]
fn watcher_with_a_shared_searcher_reports_as_one_with_its_own() {
    static USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
    let stream = concat!(
        "data: {\"choices\":[]}\n\n",
        "data: {\"usage\":{\"prompt_tokens\":3}}\n\n",
        "event: x\ndata: {\"usage\":null,\"t\":\"\u{e9}\"}\n\n",
        "data: [DONE]\n\n"
    )
    .as_bytes()
    .iter()
    .copied()
    .chain(*b"data: {\"usage\":\"a\xFFb\"}\n\n")
    .collect::<Vec<u8>>();
    let own = watch(b"\"usage\"", 1 << 16, [&stream[..]]);
    assert_eq!(own.len(), 3, "{own:?}");
    assert_eq!(own[2], "{\"usage\":\"a\u{FFFD}b\"}");
    for cut in 0..=stream.len() {
        let mut watcher = SseWatcher::with_finder(&USAGE, 1 << 16);
        let mut shared = Vec::new();
        for chunk in [&stream[..cut], &stream[cut..]] {
            watcher.push(chunk, |data| shared.push(data.to_owned()));
        }
        assert_eq!(shared, own, "cut at {cut}");
    }
}
