//! Fuzz the SSE parser and framer: the input's first bytes choose the limits and the chunk
//! sizes, the rest is the stream. Parsing in those chunks must give the same events, errors and
//! end report as parsing in one piece, the framer must give back the input byte for byte, and
//! the watcher (pass-through streams' usage finder) must report, in order, the data of every
//! event the parser finds whose data holds the marker.
#![no_main]
use gate_core::llm::sse::{SseEvent, SseFramer, SseParser, SseWatcher};
use libfuzzer_sys::fuzz_target;

type Outcome = (Vec<SseEvent>, String);

fn parse<'a>(chunks: impl Iterator<Item = &'a [u8]>, max_line: usize, max_event: usize) -> Outcome {
    let mut parser = SseParser::new(max_line, max_event);
    let mut events = Vec::new();
    for chunk in chunks {
        parser.push(chunk);
        while let Some(result) = parser.next_event() {
            match result {
                Ok(event) => events.push(event),
                Err(error) => return (events, format!("error {error:?}")),
            }
        }
    }
    (events, format!("{:?}", parser.finish()))
}

fuzz_target!(|data: &[u8]| {
    let [line_byte, event_byte, chunk_seed, stream @ ..] = data else {
        return;
    };
    let max_line = usize::from(*line_byte) * 4 + 1;
    let max_event = usize::from(*event_byte) * 16 + 1;
    // Chunk sizes cycle through a pattern derived from the seed (1..=16 bytes).
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

    let one_shot = parse(std::iter::once(stream), max_line, max_event);
    let chunked = parse(chunks.iter().copied(), max_line, max_event);
    assert_eq!(one_shot, chunked);

    // The watcher, on the same chunks, against a parser with its bound.
    const WATCH_LIMIT: usize = 1 << 16;
    let (parsed, _) = parse(std::iter::once(stream), WATCH_LIMIT, WATCH_LIMIT);
    let marked = |datas: Vec<String>| -> Vec<String> {
        datas.into_iter().filter(|d| d.contains('e')).collect()
    };
    let mut watcher = SseWatcher::new(b"e", WATCH_LIMIT);
    let mut seen = Vec::new();
    for chunk in &chunks {
        watcher.push(chunk, |data| seen.push(data.to_owned()));
    }
    assert_eq!(
        marked(seen),
        marked(parsed.into_iter().map(|e: SseEvent| e.data).collect())
    );

    let mut framer = SseFramer::new(max_line, max_event);
    let mut rebuilt = Vec::new();
    let mut failed = false;
    for chunk in &chunks {
        framer.push(chunk);
        while let Some(frame) = framer.next_frame() {
            match frame {
                Ok(frame) => rebuilt.extend_from_slice(&frame.bytes),
                Err(_) => failed = true,
            }
        }
    }
    match framer.finish() {
        Ok(end) => {
            assert!(!failed);
            rebuilt.extend_from_slice(&end.leftover);
            assert_eq!(rebuilt, stream);
        }
        Err(_) => assert!(failed || chunks.is_empty()),
    }
});
