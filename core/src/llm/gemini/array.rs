//! The decoder of Gemini's JSON-array stream (`:streamGenerateContent` without `?alt=sse`):
//! one JSON array whose elements (`GenerateContentResponse` objects) arrive over time,
//! `[{...}` then `,\r\n{...}` ... then `]`.
//!
//! Owns [`GeminiArrayDecoder`]: bytes in any split, complete elements out (their JSON text,
//! as sent), and what a stream that breaks must still write to stay one array
//! ([`GeminiArrayDecoder::error_framing`]). The caller forwards the bytes it pushed as they
//! are; the decoder only lets it read the elements (for usage). Bounded: only the element
//! being read is held, at most `max_element` bytes.
//!
//! Must not: parse elements (their text is scanned for string and nesting boundaries only),
//! allocate beyond one element, or panic on any input.

use std::collections::VecDeque;

/// Why the stream is not a JSON array of objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayStreamError {
    /// Something other than `[` (after whitespace) at the start.
    #[error("the stream does not start with `[` (found byte 0x{0:02x})")]
    NotAnArray(u8),
    /// Between elements, something other than `,`, `]` or an object or array.
    #[error("unexpected byte 0x{0:02x} between array elements")]
    Unexpected(u8),
    /// Bytes after the closing `]`.
    #[error("data after the end of the array")]
    TrailingData,
    /// One element longer than the limit.
    #[error("an array element is longer than {0} bytes")]
    ElementTooLarge(usize),
    /// Nesting deeper than the decoder follows.
    #[error("an array element nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// The deepest nesting followed inside one element.
pub const MAX_DEPTH: u32 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before `[`.
    Start,
    /// Inside the array, before an element (or `]`).
    BeforeElement,
    /// Inside an element.
    InElement,
    /// After an element, before `,` or `]`.
    AfterElement,
    /// After `]`.
    Done,
    /// An error was returned; nothing more is read.
    Failed,
}

/// What a stream that breaks must write so the client's array stays well formed (an error
/// element is written between `prefix` and `suffix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFraming {
    /// Before the error element: `[`, `,` or nothing.
    pub prefix: &'static str,
    /// After it: `]`.
    pub suffix: &'static str,
}

/// An incremental reader of a JSON array of objects.
#[derive(Debug)]
pub struct GeminiArrayDecoder {
    state: State,
    max_element: usize,
    element: Vec<u8>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    elements: usize,
    ready: VecDeque<Vec<u8>>,
    error: Option<ArrayStreamError>,
}

impl GeminiArrayDecoder {
    /// A decoder holding at most `max_element` bytes of one element.
    pub fn new(max_element: usize) -> Self {
        Self {
            state: State::Start,
            max_element,
            element: Vec::new(),
            depth: 0,
            in_string: false,
            escaped: false,
            elements: 0,
            ready: VecDeque::new(),
            error: None,
        }
    }

    /// Reads more bytes; complete elements are then returned by [`Self::next_element`].
    pub fn push(&mut self, data: &[u8]) {
        let mut start_of_element = None;
        for (i, &byte) in data.iter().enumerate() {
            match self.state {
                State::Failed => return,
                State::Done => {
                    if !byte.is_ascii_whitespace() {
                        return self.fail(ArrayStreamError::TrailingData);
                    }
                }
                State::Start => match byte {
                    b'[' => self.state = State::BeforeElement,
                    b if b.is_ascii_whitespace() => {}
                    b => return self.fail(ArrayStreamError::NotAnArray(b)),
                },
                State::BeforeElement | State::AfterElement => match byte {
                    b if b.is_ascii_whitespace() => {}
                    b',' if self.state == State::AfterElement => {
                        self.state = State::BeforeElement;
                    }
                    b']' => self.state = State::Done,
                    b'{' | b'[' if self.state == State::BeforeElement => {
                        self.state = State::InElement;
                        self.depth = 1;
                        self.in_string = false;
                        self.escaped = false;
                        self.element.clear();
                        start_of_element = Some(i);
                    }
                    b => return self.fail(ArrayStreamError::Unexpected(b)),
                },
                State::InElement => {
                    if self.in_string {
                        if self.escaped {
                            self.escaped = false;
                        } else if byte == b'\\' {
                            self.escaped = true;
                        } else if byte == b'"' {
                            self.in_string = false;
                        }
                        continue;
                    }
                    match byte {
                        b'"' => self.in_string = true,
                        b'{' | b'[' => {
                            self.depth += 1;
                            if self.depth > MAX_DEPTH {
                                return self.fail(ArrayStreamError::TooDeep);
                            }
                        }
                        b'}' | b']' => {
                            self.depth -= 1;
                            if self.depth == 0 {
                                let from = start_of_element.take().unwrap_or(0);
                                if !self.take(&data[from..=i]) {
                                    return;
                                }
                                let element = std::mem::take(&mut self.element);
                                self.ready.push_back(element);
                                self.elements += 1;
                                self.state = State::AfterElement;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        if self.state == State::InElement {
            let from = start_of_element.unwrap_or(0);
            self.take(&data[from..]);
        }
    }

    /// Appends to the element being read; false (and failed) when it grows past the limit.
    fn take(&mut self, bytes: &[u8]) -> bool {
        if self.element.len().saturating_add(bytes.len()) > self.max_element {
            self.fail(ArrayStreamError::ElementTooLarge(self.max_element));
            return false;
        }
        self.element.extend_from_slice(bytes);
        true
    }

    fn fail(&mut self, error: ArrayStreamError) {
        self.state = State::Failed;
        self.element = Vec::new();
        self.error = Some(error);
    }

    /// The next complete element's JSON text, or the error that stopped the decoder (once,
    /// after the elements read before it).
    pub fn next_element(&mut self) -> Option<Result<Vec<u8>, ArrayStreamError>> {
        if let Some(element) = self.ready.pop_front() {
            return Some(Ok(element));
        }
        self.error.take().map(Err)
    }

    /// Whether the closing `]` has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// How many elements have been read whole.
    pub fn elements(&self) -> usize {
        self.elements
    }

    /// What to write around an error element when the stream breaks now (`None`: the array
    /// is already closed).
    pub fn error_framing(&self) -> Option<ErrorFraming> {
        let (prefix, suffix) = match self.state {
            State::Done => return None,
            State::Start => ("[", "]"),
            State::BeforeElement if self.elements == 0 => ("", "]"),
            // After a `,` the next element is due; else one is needed.
            State::BeforeElement => ("", "]"),
            State::AfterElement => (",", "]"),
            // Mid-element (or after a malformed byte): the array cannot be saved; the error
            // still follows, so the client's parser stops on it.
            State::InElement | State::Failed => (",", "]"),
        };
        Some(ErrorFraming { prefix, suffix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(decoder: &mut GeminiArrayDecoder) -> Vec<Result<String, ArrayStreamError>> {
        std::iter::from_fn(|| decoder.next_element())
            .map(|r| r.map(|e| String::from_utf8_lossy(&e).into_owned()))
            .collect()
    }

    #[test]
    fn elements_with_tricky_strings() {
        let mut d = GeminiArrayDecoder::new(1024);
        d.push(b" [{\"a\":\"]}\\\"{\"}\n,\r\n{\"b\":[1,{\"c\":2}]} ]  ");
        assert_eq!(
            all(&mut d),
            vec![
                Ok("{\"a\":\"]}\\\"{\"}".to_owned()),
                Ok("{\"b\":[1,{\"c\":2}]}".to_owned())
            ]
        );
        assert!(d.is_done());
        assert_eq!(d.error_framing(), None);
    }

    #[test]
    fn errors_and_framing() {
        let mut d = GeminiArrayDecoder::new(1024);
        assert_eq!(
            d.error_framing(),
            Some(ErrorFraming {
                prefix: "[",
                suffix: "]"
            })
        );
        d.push(b"[{}");
        assert_eq!(d.error_framing().map(|f| f.prefix), Some(","));
        d.push(b"x");
        assert_eq!(
            all(&mut d),
            vec![Ok("{}".to_owned()), Err(ArrayStreamError::Unexpected(b'x'))]
        );
        d.push(b"]");
        assert!(!d.is_done());

        let mut d = GeminiArrayDecoder::new(4);
        d.push(b"[{\"long\":1}]");
        assert_eq!(all(&mut d), vec![Err(ArrayStreamError::ElementTooLarge(4))]);
        let mut d = GeminiArrayDecoder::new(64);
        d.push(b"{}");
        assert_eq!(all(&mut d), vec![Err(ArrayStreamError::NotAnArray(b'{'))]);
        let mut d = GeminiArrayDecoder::new(64);
        d.push(b"[]]");
        assert_eq!(all(&mut d), vec![Err(ArrayStreamError::TrailingData)]);
        let mut d = GeminiArrayDecoder::new(1 << 20);
        d.push(b"[");
        d.push(&vec![b'['; 600]);
        assert_eq!(all(&mut d), vec![Err(ArrayStreamError::TooDeep)]);
    }
}
