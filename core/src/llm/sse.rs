//! Server-Sent Events: an incremental, bounded parser ([`SseParser`]), a framer that keeps each
//! event's original bytes for pass-through proxying ([`SseFramer`]), and an encoder
//! ([`SseEvent::encode`], [`encode_data`], [`encode_comment`]).
//!
//! This module owns the `text/event-stream` wire format as the WHATWG HTML standard defines it
//! ("Server-sent events", section "Parsing an event stream"). It must not do I/O, know about
//! HTTP, or interpret the JSON inside `data`: that is the caller's job.
//!
//! # Parsing rules (WHATWG)
//! - Lines end with CRLF, LF or CR. A CR at the end of one chunk followed by an LF at the start
//!   of the next is one line ending; the line is processed as soon as the CR arrives (no delay).
//! - A UTF-8 byte order mark at the very start of the stream is ignored.
//! - `data` appends its value plus LF to the data buffer; `event` sets the event type; `id` sets
//!   the last event ID unless the value contains NUL; `retry` sets the reconnection time when the
//!   value is only ASCII digits (a value that does not fit in `u64` is ignored); a line starting
//!   with `:` is a comment; other field names are ignored. One space after the colon is removed.
//! - A blank line dispatches the event. An event without any `data` line is not dispatched (its
//!   `id` and `retry` still take effect, see [`SseParser::last_event_id`] and
//!   [`SseParser::reconnection_time`]).
//! - At end of stream an event without its closing blank line is discarded;
//!   [`SseParser::finish`] says whether that happened.
//!
//! # UTF-8
//! Bytes are decoded per complete line, never per chunk, so a multi-byte character split across
//! chunks survives. By default invalid UTF-8 is replaced by U+FFFD, as the standard requires
//! (browsers and SDKs behave the same way). [`SseParser::reject_invalid_utf8`] turns it into
//! [`SseError::InvalidUtf8`] instead.
//!
//! # Bounded memory
//! Two limits, given to [`SseParser::new`]:
//! - `max_line_bytes`: a line (excluding its line ending) longer than this is
//!   [`SseError::LineTooLong`]. It is detected while the line is still incomplete, so a stream
//!   without line endings cannot make the parser buffer more than this.
//! - `max_event_bytes`: the raw bytes of one event block, from its first line through the blank
//!   line that ends it (comments and line endings included), may not exceed this, else
//!   [`SseError::EventTooLarge`]. This bounds the decoded event too (at most 3x the limit when
//!   invalid bytes are replaced by the 3-byte U+FFFD).
//!
//! The parser copies each pushed chunk into its buffer and drains it as the caller pulls events,
//! so it holds at most: the unread rest of the chunks pushed since the last drain, one partial
//! line (<= `max_line_bytes`), the current event's decoded fields, and, for [`SseFramer`], the
//! raw bytes of the current event (<= `max_event_bytes`). Drain with `next_event` /
//! `next_frame` until `None` after every `push`.
//!
//! Errors are final: after one, the parser ignores further input, `next_*` returns `None`, and
//! `finish` returns the error again.
//!
//! # Driving loop
//! ```
//! use gate_core::llm::sse::SseParser;
//! let mut parser = SseParser::new(64 * 1024, 1024 * 1024);
//! let mut events = Vec::new();
//! for chunk in [&b"event: delta\ndata: {\"a\""[..], &b":1}\n\n"[..]] {
//!     parser.push(chunk);
//!     while let Some(event) = parser.next_event() {
//!         events.push(event.expect("well-formed stream"));
//!     }
//! }
//! assert_eq!(events[0].event.as_deref(), Some("delta"));
//! assert_eq!(events[0].data, "{\"a\":1}");
//! assert!(!parser.finish().expect("no error").incomplete_event);
//! ```
//!
//! # Pass-through proxying
//! A proxy that forwards upstream bytes unchanged but still needs to read them (token usage in
//! the last event, errors) uses [`SseFramer`]: it splits the raw stream at every blank line into
//! [`SseFrame`]s that carry the exact original bytes plus the parsed event (if the block
//! dispatched one). Concatenating every frame's bytes and the `leftover` from
//! [`SseFramer::finish`] gives back the input exactly, so forwarding frame by frame is
//! byte-transparent while each event leaves as soon as its blank line has arrived. One detail:
//! when a blank line ends in CR and the LF of that CRLF has not arrived yet, the frame ends at
//! the CR and the LF becomes the first byte of the next frame; any SSE client treats that LF as part of the line ending,
//! so it is harmless even when the proxy inserts its own events between frames.
//!
//! # Watching a forwarded stream cheaply
//! A proxy that forwards the bytes as they are and only needs the few events that contain some
//! marker (the `"usage"` of token counts) uses [`SseWatcher`]: it finds the blank lines that end
//! event blocks with a byte search, keeps only the bytes of an unfinished block, and parses a
//! block (by [`SseParser`]'s rules, reading only its `data` lines) only when its raw bytes
//! contain the marker. The `data` of every event that contains the marker is reported; that of
//! events without it may be too.

use std::borrow::Cow;

/// The byte order mark, as UTF-8.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// Why a stream could not be parsed. Every error ends the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line was longer than `max_line_bytes` (line ending not counted).
    #[error("SSE line longer than {limit} bytes (line starts at byte {line_start} of the stream)")]
    LineTooLong {
        /// The configured `max_line_bytes`.
        limit: usize,
        /// Stream offset of the first byte of the line.
        line_start: u64,
    },
    /// One event block was larger than `max_event_bytes`.
    #[error(
        "SSE event larger than {limit} bytes (event starts at byte {event_start} of the stream)"
    )]
    EventTooLarge {
        /// The configured `max_event_bytes`.
        limit: usize,
        /// Stream offset of the first byte of the event block.
        event_start: u64,
    },
    /// A line was not valid UTF-8 (only with [`SseParser::reject_invalid_utf8`]).
    #[error("SSE line is not valid UTF-8 (line starts at byte {line_start} of the stream)")]
    InvalidUtf8 {
        /// Stream offset of the first byte of the line.
        line_start: u64,
    },
}

/// Why an event could not be encoded without changing its meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseEncodeError {
    /// `event` or `id` contained CR or LF, which would end the field early.
    #[error("SSE field `{field}` must not contain a line break")]
    LineBreakInField {
        /// `"event"` or `"id"`.
        field: &'static str,
    },
    /// `id` contained NUL, which makes receivers ignore the field.
    #[error("SSE field `id` must not contain NUL")]
    NulInId,
    /// A comment contained CR or LF.
    #[error("SSE comment must not contain a line break")]
    LineBreakInComment,
}

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field, `None` when absent or empty (receivers then call it `message`).
    pub event: Option<String>,
    /// All `data` lines joined with LF.
    pub data: String,
    /// The `id` field of this event block, if it had one (an empty id resets the last event ID).
    /// Per the standard the ID is sticky across events: see [`SseParser::last_event_id`].
    pub id: Option<String>,
    /// The last valid `retry` field (milliseconds) of this event block, if any.
    pub retry: Option<u64>,
}

impl SseEvent {
    /// An event with only `data`.
    pub fn data(data: impl Into<String>) -> Self {
        SseEvent {
            data: data.into(),
            ..SseEvent::default()
        }
    }

    /// Appends the wire form of this event (ending with the blank line) to `out`.
    ///
    /// Multi-line data becomes several `data:` lines; CR, LF and CRLF inside data all count as
    /// line breaks, so they come back as LF after parsing. `event: Some("")` is written as no
    /// `event` field (it means the same). `event` or `id` with a line break, or `id` with NUL,
    /// are rejected and nothing is written.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), SseEncodeError> {
        check_single_line(self.event.as_deref(), "event")?;
        check_single_line(self.id.as_deref(), "id")?;
        if self.id.as_deref().is_some_and(|id| id.contains('\0')) {
            return Err(SseEncodeError::NulInId);
        }
        if let Some(id) = &self.id {
            write_field(out, "id", id);
        }
        if let Some(retry) = self.retry {
            write_field(out, "retry", &retry.to_string());
        }
        write_event_and_data(out, self.event.as_deref(), &self.data);
        Ok(())
    }
}

/// Appends an event with an optional `event` field and `data` to `out`, without building an
/// [`SseEvent`]. Same rules as [`SseEvent::encode`].
pub fn encode_data(
    event: Option<&str>,
    data: &str,
    out: &mut Vec<u8>,
) -> Result<(), SseEncodeError> {
    check_single_line(event, "event")?;
    write_event_and_data(out, event, data);
    Ok(())
}

/// Appends a comment line (`: text`) to `out`, e.g. a keep-alive. It dispatches nothing.
pub fn encode_comment(text: &str, out: &mut Vec<u8>) -> Result<(), SseEncodeError> {
    if text.contains(['\r', '\n']) {
        return Err(SseEncodeError::LineBreakInComment);
    }
    out.extend_from_slice(b": ");
    out.extend_from_slice(text.as_bytes());
    out.push(b'\n');
    Ok(())
}

fn check_single_line(value: Option<&str>, field: &'static str) -> Result<(), SseEncodeError> {
    match value {
        Some(value) if value.contains(['\r', '\n']) => {
            Err(SseEncodeError::LineBreakInField { field })
        }
        _ => Ok(()),
    }
}

fn write_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    if value.is_empty() {
        out.push(b':');
    } else {
        // Always one space: the parser removes exactly one, so a value that itself starts
        // with a space survives.
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'\n');
}

fn write_event_and_data(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    if let Some(event) = event.filter(|event| !event.is_empty()) {
        write_field(out, "event", event);
    }
    let mut rest = data;
    loop {
        match rest.find(['\r', '\n']) {
            None => {
                write_field(out, "data", rest);
                break;
            }
            Some(at) => {
                write_field(out, "data", &rest[..at]);
                let after = if rest[at..].starts_with("\r\n") {
                    at + 2
                } else {
                    at + 1
                };
                rest = &rest[after..];
            }
        }
    }
    out.push(b'\n');
}

/// What was left when the stream ended (see [`SseParser::finish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEnd {
    /// Bytes after the last blank line and its line ending (or the whole stream if there was
    /// no blank line).
    pub leftover_bytes: u64,
    /// The stream ended inside an event: after the last blank line there was at least one
    /// non-empty line, complete or not. Per the standard that event is discarded.
    pub incomplete_event: bool,
}

/// One piece of the raw stream as split by [`SseFramer`]: everything up to and including a
/// blank line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    /// The original bytes, unchanged.
    pub bytes: Vec<u8>,
    /// Stream offset of `bytes[0]`.
    pub stream_offset: u64,
    /// The event this block dispatched; `None` for comment-only blocks, blocks without `data`,
    /// and extra blank lines.
    pub event: Option<SseEvent>,
}

/// The result of [`SseFramer::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFramerEnd {
    /// The bytes after the last frame, unchanged (a proxy may forward them as they are).
    pub leftover: Vec<u8>,
    /// See [`SseEnd::incomplete_event`].
    pub incomplete_event: bool,
}

/// The fields collected since the last blank line.
#[derive(Debug, Default)]
struct PendingBlock {
    event_type: String,
    data: String,
    has_data: bool,
    id: Option<String>,
    retry: Option<u64>,
    /// Whether any non-empty line was seen in this block.
    has_content: bool,
}

/// Parser state apart from the byte buffer (so both can be borrowed at once).
#[derive(Debug, Default)]
struct FieldState {
    block: PendingBlock,
    last_event_id_buffer: String,
    last_event_id: String,
    reconnection_time: Option<u64>,
}

enum LineKind {
    Blank,
    Other,
}

impl FieldState {
    fn process_line(
        &mut self,
        line: &[u8],
        line_start: u64,
        strict_utf8: bool,
    ) -> Result<LineKind, SseError> {
        if line.is_empty() {
            return Ok(LineKind::Blank);
        }
        if strict_utf8 && std::str::from_utf8(line).is_err() {
            return Err(SseError::InvalidUtf8 { line_start });
        }
        self.block.has_content = true;
        if line.first() == Some(&b':') {
            return Ok(LineKind::Other);
        }
        let (name, value) = split_field(line);
        match name {
            b"data" => {
                self.block.data.push_str(&decode(value));
                self.block.data.push('\n');
                self.block.has_data = true;
            }
            b"event" => self.block.event_type = decode(value).into_owned(),
            // An id containing NUL is ignored.
            b"id" if !value.contains(&0) => {
                let id = decode(value).into_owned();
                self.last_event_id_buffer.clone_from(&id);
                self.block.id = Some(id);
            }
            // Only ASCII digits count; a value that overflows u64 is ignored too.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                let millis = std::str::from_utf8(value)
                    .ok()
                    .and_then(|digits| digits.parse::<u64>().ok());
                if let Some(millis) = millis {
                    self.block.retry = Some(millis);
                    self.reconnection_time = Some(millis);
                }
            }
            _ => {}
        }
        Ok(LineKind::Other)
    }

    /// Ends the current block; returns its event if it had data.
    fn dispatch(&mut self) -> Option<SseEvent> {
        self.last_event_id.clone_from(&self.last_event_id_buffer);
        let block = std::mem::take(&mut self.block);
        if !block.has_data {
            return None;
        }
        let mut data = block.data;
        data.pop(); // the LF appended after the last data line
        Some(SseEvent {
            event: Some(block.event_type).filter(|event| !event.is_empty()),
            data,
            id: block.id,
            retry: block.retry,
        })
    }
}

/// `bytes` as text, invalid UTF-8 replaced (U+FFFD). Valid text (the usual case) is checked
/// word by word and borrowed; `from_utf8_lossy` alone walks it character by character
/// (~1,300 instructions for a 150-byte usage chunk, issue 16).
fn decode(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The line scanner shared by [`SseParser`] and [`SseFramer`].
#[derive(Debug)]
struct Scanner {
    max_line_bytes: usize,
    max_event_bytes: usize,
    strict_utf8: bool,
    /// Whether bytes of the current block are kept (framer) or dropped once parsed (parser).
    keep_block_bytes: bool,
    /// Bytes not yet released; `buf[0]` is at stream offset `buf_offset`.
    buf: Vec<u8>,
    buf_offset: u64,
    /// Index in `buf` of the next unparsed byte.
    cursor: usize,
    /// Stream offset where the current block starts (its raw bytes, for the framer).
    block_start: u64,
    /// Stream offset from which the current block's size is counted: `block_start`, or one
    /// more when the block starts with the LF of a CRLF that ended the previous block.
    block_size_start: u64,
    /// The previous line ended with CR: an LF next is part of that line ending.
    skip_lf: bool,
    /// No complete line has been processed yet (a leading BOM is still to be removed).
    at_stream_start: bool,
    /// Stream offset up to which the current partial line holds no line ending.
    searched_to: u64,
    fields: FieldState,
    /// Set by the first error; the error is reported once by `poll_block`.
    failure: Option<SseError>,
    failure_reported: bool,
}

/// A non-blank line that is not a comment, as its field name and value (one leading space of
/// the value removed; a line without a colon is a name with an empty value).
fn split_field(line: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b':', line) {
        Some(colon) => {
            let (name, rest) = line.split_at(colon);
            let value = rest.get(1..).unwrap_or_default();
            (name, value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &b""[..]),
    }
}

/// A completed block: stream range `start..end`, and the event if one was dispatched.
struct Block {
    start: u64,
    end: u64,
    event: Option<SseEvent>,
}

impl Scanner {
    fn new(max_line_bytes: usize, max_event_bytes: usize, keep_block_bytes: bool) -> Self {
        Scanner {
            max_line_bytes,
            max_event_bytes,
            strict_utf8: false,
            keep_block_bytes,
            buf: Vec::new(),
            buf_offset: 0,
            cursor: 0,
            block_start: 0,
            block_size_start: 0,
            skip_lf: false,
            at_stream_start: true,
            searched_to: 0,
            fields: FieldState::default(),
            failure: None,
            failure_reported: false,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        if self.failure.is_none() {
            self.buf.extend_from_slice(chunk);
        }
    }

    fn offset_of(&self, index: usize) -> u64 {
        self.buf_offset + index as u64
    }

    fn fail(&mut self, error: SseError) -> Option<Result<Block, SseError>> {
        self.buf = Vec::new();
        self.buf_offset += self.cursor as u64;
        self.cursor = 0;
        self.failure = Some(error.clone());
        self.failure_reported = true;
        Some(Err(error))
    }

    /// Drops the bytes that are no longer needed.
    fn compact(&mut self) {
        let release = if self.keep_block_bytes {
            let block_index = self.block_start.saturating_sub(self.buf_offset);
            usize::try_from(block_index)
                .unwrap_or(usize::MAX)
                .min(self.cursor)
        } else {
            self.cursor
        };
        if release > 0 {
            self.buf.drain(..release);
            self.buf_offset += release as u64;
            self.cursor -= release;
        }
    }

    /// The first place where a limit is broken, for a line starting at `line_start` whose
    /// content ends at `content_end` and whose bytes counted so far end at `counted_end`.
    ///
    /// Errors are reported at the earliest stream offset that breaks a limit, so the same stream
    /// gives the same error whatever the chunking.
    fn first_violation(
        &self,
        line_start: u64,
        content_end: u64,
        counted_end: u64,
    ) -> Option<SseError> {
        let max_line = self.max_line_bytes as u64;
        let max_event = self.max_event_bytes as u64;
        let line_violation =
            (content_end - line_start > max_line).then(|| line_start.saturating_add(max_line));
        let event_violation = (counted_end - self.block_size_start > max_event)
            .then(|| self.block_size_start.saturating_add(max_event));
        let line_error = SseError::LineTooLong {
            limit: self.max_line_bytes,
            line_start,
        };
        let event_error = SseError::EventTooLarge {
            limit: self.max_event_bytes,
            event_start: self.block_size_start,
        };
        match (line_violation, event_violation) {
            (Some(line_at), Some(event_at)) if event_at < line_at => Some(event_error),
            (Some(_), _) => Some(line_error),
            (None, Some(_)) => Some(event_error),
            (None, None) => None,
        }
    }

    /// Parses lines until a blank line completes a block, or the buffered bytes run out.
    fn poll_block(&mut self) -> Option<Result<Block, SseError>> {
        if let Some(error) = &self.failure {
            if self.failure_reported {
                return None;
            }
            self.failure_reported = true;
            return Some(Err(error.clone()));
        }
        loop {
            if self.skip_lf {
                match self.buf.get(self.cursor) {
                    None => {
                        self.compact();
                        return None;
                    }
                    Some(byte) => {
                        if *byte == b'\n' {
                            // The rest of a CRLF whose CR ended the previous block belongs to no
                            // block's size, whatever the chunking.
                            if self.offset_of(self.cursor) == self.block_size_start {
                                self.block_size_start += 1;
                            }
                            self.cursor += 1;
                        }
                        self.skip_lf = false;
                    }
                }
            }
            let line_start_index = self.cursor;
            let line_start = self.offset_of(line_start_index);
            // Bytes of a partial line already searched are not searched again, so a long line
            // arriving in small chunks costs linear time.
            let searched = usize::try_from(self.searched_to.saturating_sub(self.buf_offset))
                .unwrap_or(usize::MAX)
                .max(line_start_index);
            let unsearched = self.buf.get(searched..).unwrap_or_default();
            let Some(line_len) = memchr::memchr2(b'\n', b'\r', unsearched)
                .map(|position| searched - line_start_index + position)
            else {
                self.searched_to = self.offset_of(self.buf.len());
                // Only a partial line is left: check the limits now so it cannot grow forever.
                let stream_end = self.offset_of(self.buf.len());
                if let Some(error) = self.first_violation(line_start, stream_end, stream_end) {
                    return self.fail(error);
                }
                self.compact();
                return None;
            };
            let line_end_index = line_start_index + line_len;
            let line_end = self.offset_of(line_end_index);
            if let Some(error) = self.first_violation(line_start, line_end, line_end + 1) {
                return self.fail(error);
            }
            let line_ending_len = if self.buf.get(line_end_index) == Some(&b'\r') {
                match self.buf.get(line_end_index + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    None => {
                        self.skip_lf = true;
                        1
                    }
                }
            } else {
                1
            };
            let mut line = self
                .buf
                .get(line_start_index..line_end_index)
                .unwrap_or_default();
            if self.at_stream_start {
                self.at_stream_start = false;
                line = line.strip_prefix(BYTE_ORDER_MARK).unwrap_or(line);
            }
            let kind = match self.fields.process_line(line, line_start, self.strict_utf8) {
                Ok(kind) => kind,
                Err(error) => return self.fail(error),
            };
            self.cursor = line_end_index + line_ending_len;
            if let LineKind::Blank = kind {
                let start = self.block_start;
                let end = self.offset_of(self.cursor);
                self.block_start = end;
                self.block_size_start = end;
                let event = self.fields.dispatch();
                return Some(Ok(Block { start, end, event }));
            }
        }
    }

    /// Bytes buffered after the last block, and whether they hold an unfinished event.
    fn end_state(&self) -> (u64, bool) {
        let stream_end = self.offset_of(self.buf.len());
        let partial_line = self.buf.get(self.cursor..).unwrap_or_default();
        let partial_content = partial_line
            .iter()
            .any(|byte| *byte != b'\n' && *byte != b'\r');
        // A lone LF that completes a CRLF is not content (skip_lf still set).
        (
            stream_end - self.block_size_start,
            self.fields.block.has_content || partial_content,
        )
    }
}

/// Incremental SSE parser: [`push`](Self::push) bytes in any split, then drain
/// [`next_event`](Self::next_event) until `None`. See the module docs for the rules and limits.
#[derive(Debug)]
pub struct SseParser {
    scanner: Scanner,
}

impl SseParser {
    /// A parser that accepts lines of at most `max_line_bytes` and event blocks of at most
    /// `max_event_bytes` raw bytes.
    pub fn new(max_line_bytes: usize, max_event_bytes: usize) -> Self {
        SseParser {
            scanner: Scanner::new(max_line_bytes, max_event_bytes, false),
        }
    }

    /// Makes invalid UTF-8 an error instead of replacing it with U+FFFD.
    #[must_use]
    pub fn reject_invalid_utf8(mut self) -> Self {
        self.scanner.strict_utf8 = true;
        self
    }

    /// Appends bytes from the stream. Ignored after an error.
    pub fn push(&mut self, chunk: &[u8]) {
        self.scanner.push(chunk);
    }

    /// The next complete event, `None` when more bytes are needed (or after an error was
    /// returned once).
    pub fn next_event(&mut self) -> Option<Result<SseEvent, SseError>> {
        loop {
            match self.scanner.poll_block()? {
                Ok(Block {
                    event: Some(event), ..
                }) => return Some(Ok(event)),
                Ok(Block { event: None, .. }) => continue,
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// The last event ID string as the standard defines it: set by `id` fields, sticky across
    /// events, updated when a block ends.
    pub fn last_event_id(&self) -> &str {
        &self.scanner.fields.last_event_id
    }

    /// The reconnection time (ms) from the last valid `retry` field, if any.
    pub fn reconnection_time(&self) -> Option<u64> {
        self.scanner.fields.reconnection_time
    }

    /// Ends the stream: reports discarded bytes after the last event, or the error that ended
    /// the stream earlier. Call after draining [`next_event`](Self::next_event).
    pub fn finish(self) -> Result<SseEnd, SseError> {
        if let Some(error) = self.scanner.failure {
            return Err(error);
        }
        let (leftover_bytes, incomplete_event) = self.scanner.end_state();
        Ok(SseEnd {
            leftover_bytes,
            incomplete_event,
        })
    }
}

/// Splits a raw SSE stream into frames that end at blank lines, each carrying its original bytes
/// and its parsed event; for proxies that forward bytes unchanged. Same rules and limits as
/// [`SseParser`]; in addition it keeps the current event's raw bytes (at most `max_event_bytes`).
#[derive(Debug)]
pub struct SseFramer {
    scanner: Scanner,
}

impl SseFramer {
    /// See [`SseParser::new`].
    pub fn new(max_line_bytes: usize, max_event_bytes: usize) -> Self {
        SseFramer {
            scanner: Scanner::new(max_line_bytes, max_event_bytes, true),
        }
    }

    /// See [`SseParser::reject_invalid_utf8`].
    #[must_use]
    pub fn reject_invalid_utf8(mut self) -> Self {
        self.scanner.strict_utf8 = true;
        self
    }

    /// Appends bytes from the stream. Ignored after an error.
    pub fn push(&mut self, chunk: &[u8]) {
        self.scanner.push(chunk);
    }

    /// The next complete frame, `None` when more bytes are needed (or after an error was
    /// returned once).
    pub fn next_frame(&mut self) -> Option<Result<SseFrame, SseError>> {
        let block = match self.scanner.poll_block()? {
            Ok(block) => block,
            Err(error) => return Some(Err(error)),
        };
        let scanner = &self.scanner;
        let index = |offset: u64| {
            usize::try_from(offset.saturating_sub(scanner.buf_offset)).unwrap_or(usize::MAX)
        };
        let bytes = scanner
            .buf
            .get(index(block.start)..index(block.end))
            .unwrap_or_default()
            .to_vec();
        Some(Ok(SseFrame {
            bytes,
            stream_offset: block.start,
            event: block.event,
        }))
    }

    /// See [`SseParser::last_event_id`].
    pub fn last_event_id(&self) -> &str {
        &self.scanner.fields.last_event_id
    }

    /// Ends the stream: returns the bytes after the last frame, or the error that ended the
    /// stream earlier. Call after draining [`next_frame`](Self::next_frame).
    pub fn finish(self) -> Result<SseFramerEnd, SseError> {
        if let Some(error) = self.scanner.failure {
            return Err(error);
        }
        let (_, incomplete_event) = self.scanner.end_state();
        let start = usize::try_from(
            self.scanner
                .block_start
                .saturating_sub(self.scanner.buf_offset),
        )
        .unwrap_or(usize::MAX);
        let leftover = self.scanner.buf.get(start..).unwrap_or_default().to_vec();
        Ok(SseFramerEnd {
            leftover,
            incomplete_event,
        })
    }
}

/// Reports the events of a stream whose raw block contains a marker, without parsing the other
/// blocks (see the module docs, "Watching a forwarded stream cheaply"). It never changes or holds
/// the stream: the caller forwards its bytes itself and pushes a view of them here.
///
/// Guarantee: the `data` of every event that [`SseParser`] would dispatch for the same bytes and
/// whose `data` contains the marker is reported, in order, whatever the chunking; that of other
/// events of the same blocks may be reported too. Memory: at most the bytes of one unfinished
/// block, bounded by `max_event_bytes`; a block larger than that is skipped (not reported), and
/// watching resumes at the next blank line.
#[derive(Debug)]
pub struct SseWatcher {
    marker: Marker,
    max_event_bytes: usize,
    /// Bytes after the last blank line seen (an unfinished block).
    carry: Vec<u8>,
    /// Stream offset of the first byte of `carry` (or of the next chunk when `carry` is empty).
    offset: u64,
    /// The unfinished block outgrew `max_event_bytes`: it is dropped up to its end, and `carry`
    /// only holds the line ending bytes at its end (they may start a blank line).
    skipping: bool,
}

/// The searcher of an [`SseWatcher`]'s marker: its own, or one built once and shared.
#[derive(Debug)]
enum Marker {
    Own(Box<memchr::memmem::Finder<'static>>),
    Shared(&'static memchr::memmem::Finder<'static>),
}

impl Marker {
    fn finder(&self) -> &memchr::memmem::Finder<'static> {
        match self {
            Marker::Own(finder) => finder,
            Marker::Shared(finder) => finder,
        }
    }
}

impl SseWatcher {
    /// A watcher for blocks containing `marker`, which must not contain CR or LF (a marker
    /// with a line break could never be inside one `data` line).
    ///
    /// # Panics
    /// When `marker` is empty or contains CR or LF.
    pub fn new(marker: &'static [u8], max_event_bytes: usize) -> Self {
        Self::watching(
            Marker::Own(Box::new(memchr::memmem::Finder::new(marker))),
            max_event_bytes,
        )
    }

    /// [`new`](Self::new) with the marker's searcher built once elsewhere (a `static`): a
    /// watcher per stream then neither builds one (~470 instructions) nor holds one (its
    /// SIMD state is 32-byte aligned, so a body holding it inline took an aligned allocation,
    /// ~900 instructions, issue 16).
    ///
    /// # Panics
    /// As [`new`](Self::new).
    pub fn with_finder(
        marker: &'static memchr::memmem::Finder<'static>,
        max_event_bytes: usize,
    ) -> Self {
        Self::watching(Marker::Shared(marker), max_event_bytes)
    }

    fn watching(marker: Marker, max_event_bytes: usize) -> Self {
        let needle = marker.finder().needle();
        assert!(
            !needle.is_empty() && !needle.iter().any(|b| *b == b'\r' || *b == b'\n'),
            "the marker must be non-empty and on one line"
        );
        SseWatcher {
            marker,
            max_event_bytes,
            carry: Vec::new(),
            offset: 0,
            skipping: false,
        }
    }

    /// Looks at the next bytes of the stream; calls `on_data` with the `data` of the event of
    /// each completed block that contains the marker.
    pub fn push(&mut self, chunk: &[u8], mut on_data: impl FnMut(&str)) {
        if chunk.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut self.carry);
        let cut = if buf.is_empty() {
            // The usual case: nothing unfinished, the chunk is searched where it is.
            let cut = last_block_end(chunk);
            self.complete(&chunk[..cut], &mut on_data);
            buf.extend_from_slice(&chunk[cut..]);
            cut
        } else {
            buf.extend_from_slice(chunk);
            let cut = last_block_end(&buf);
            self.complete(&buf[..cut], &mut on_data);
            buf.drain(..cut);
            cut
        };
        self.offset += cut as u64;
        self.keep(buf);
    }

    /// `done` ends at a block end (or is empty): reports the marked events in it.
    fn complete(&mut self, done: &[u8], on_data: &mut impl FnMut(&str)) {
        if done.is_empty() {
            return;
        }
        let mut from = 0;
        if self.skipping {
            // The first block of `done` is the rest of the oversized one.
            self.skipping = false;
            from = next_block_end(done, 0);
        }
        while let Some(found) = self.marker.finder().find(&done[from..]) {
            let at = from + found;
            let start = from + last_block_end(&done[from..at]);
            let end = next_block_end(done, at);
            let block = &done[start..end];
            if block.len() <= self.max_event_bytes {
                // At the start of the stream a leading byte order mark is dropped; anywhere
                // else it is content.
                let at_stream_start = self.offset + start as u64 == 0;
                if let Some(data) = block_data(block, at_stream_start) {
                    on_data(&decode(&data));
                }
            }
            from = end;
        }
    }

    /// Keeps the unfinished block `rest` (it holds no blank line), unless it is too large.
    fn keep(&mut self, mut rest: Vec<u8>) {
        if rest.len() > self.max_event_bytes {
            self.skipping = true;
        }
        if self.skipping {
            // Only line ending bytes at the very end can belong to the blank line that ends the
            // skipped block; they are at most 2 (more would have made a blank line).
            let tail = rest.iter().rev().take_while(|b| is_line_break(**b)).count();
            let tail_start = rest.len() - tail;
            self.offset += tail_start as u64;
            rest = rest[tail_start..].to_vec();
        }
        self.carry = rest;
    }
}

/// The `data` of the event that `block` (one block, ending at its blank line) dispatches, by
/// the rules of [`SseParser`]: `None` when it has no `data` line. Borrowed when it has one (the
/// usual case), so a marked block costs one pass over its lines and no copy. Not decoded: the
/// caller decodes the whole, which replaces invalid UTF-8 exactly as the parser's per-line
/// decoding does (a line ending is ASCII, so no sequence spans two lines).
fn block_data(block: &[u8], at_stream_start: bool) -> Option<Cow<'_, [u8]>> {
    let mut rest = block;
    if at_stream_start {
        rest = rest.strip_prefix(BYTE_ORDER_MARK).unwrap_or(rest);
    }
    let mut data: Option<Cow<'_, [u8]>> = None;
    loop {
        let line_end = memchr::memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
        let line = &rest[..line_end];
        if line.is_empty() && (data.is_some() || line_end == rest.len()) {
            return data;
        }
        let ending = match rest.get(line_end..line_end + 2) {
            Some(b"\r\n") => 2,
            _ => 1,
        };
        rest = rest.get(line_end + ending..).unwrap_or_default();
        // A blank line before any data (the rest of the previous block's line endings, cut
        // off by a chunk boundary, or a stream that starts with one) dispatches nothing.
        if line.first().is_none_or(|first| *first == b':') {
            continue;
        }
        if let (b"data", value) = split_field(line) {
            data = Some(match data {
                None => Cow::Borrowed(value),
                Some(joined) => {
                    let mut joined = joined.into_owned();
                    joined.push(b'\n');
                    joined.extend_from_slice(value);
                    Cow::Owned(joined)
                }
            });
        }
    }
}

/// Whether a maximal run of CR / LF bytes holds at least two line endings, i.e. ends a blank
/// line (CRLF is one ending; any other pair, and any run of three or more, is at least two).
fn run_ends_blank_line(run: &[u8]) -> bool {
    run.len() >= 3 || (run.len() == 2 && run != b"\r\n")
}

fn is_line_break(byte: u8) -> bool {
    byte == b'\r' || byte == b'\n'
}

/// The index just after the last blank line in `data` (0 when there is none). A run of line
/// endings is taken whole, so a cut never splits a CRLF.
fn last_block_end(data: &[u8]) -> usize {
    let mut end = data.len();
    while let Some(last) = memchr::memrchr2(b'\n', b'\r', &data[..end]) {
        let mut first = last;
        while first > 0 && is_line_break(data[first - 1]) {
            first -= 1;
        }
        if run_ends_blank_line(&data[first..=last]) {
            return last + 1;
        }
        end = first;
    }
    0
}

/// The index just after the first blank line in `data` at or after `from` (`data.len()` when
/// there is none; callers pass data that ends at a block end).
fn next_block_end(data: &[u8], from: usize) -> usize {
    let mut start = from;
    while let Some(found) = memchr::memchr2(b'\n', b'\r', &data[start..]) {
        let first = start + found;
        let mut last = first + 1;
        while last < data.len() && is_line_break(data[last]) {
            last += 1;
        }
        if run_ends_blank_line(&data[first..last]) {
            return last;
        }
        start = last;
    }
    data.len()
}
