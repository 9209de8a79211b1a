//! RESP, the Redis serialization protocol (RESP2, and the RESP3 types a server may send),
//! sans-IO: commands are encoded to bytes, replies are decoded from bytes the caller pushes.
//!
//! Owns: [`encode_command`] (a command as an array of bulk strings, the only form a client
//! sends), [`encode`] (any value, for tests and round-trips), and [`Decoder`] (replies from
//! any split of the input; the same values as decoding in one piece). Bounds: a bulk string
//! of at most [`MAX_BULK`] bytes, an aggregate of at most [`MAX_ITEMS`] elements, nesting at
//! most [`MAX_DEPTH`] deep; beyond them the input is refused, never buffered without end.
//!
//! Must not: know any command's meaning, or hold a socket (the connection is
//! `gate_rt::store::redis`).

use thiserror::Error;

/// The largest bulk string accepted (Redis's own default `proto-max-bulk-len` is 512 MB; the
/// replies Gate asks for are a few numbers).
pub const MAX_BULK: usize = 16 * 1024 * 1024;
/// The most elements of one array, set, map or push.
pub const MAX_ITEMS: usize = 1 << 20;
/// The deepest nesting of aggregates.
pub const MAX_DEPTH: usize = 32;

/// One RESP value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `+OK`: a simple string.
    Simple(String),
    /// `-ERR ...` or a RESP3 blob error: the server refused the command.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$n` bytes (or a RESP3 verbatim string's text).
    Bulk(Vec<u8>),
    /// `*n` elements (RESP3 sets and pushes are read as arrays too).
    Array(Vec<Value>),
    /// `$-1`, `*-1` or RESP3 `_`.
    Nil,
    /// RESP3 `#t` / `#f`.
    Bool(bool),
    /// RESP3 `,1.5` (kept as its text: no float round-trip questions).
    Double(String),
    /// RESP3 `(` big number, as its digits.
    BigNumber(String),
    /// RESP3 `%n` key-value pairs.
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// The value as an integer: an integer, or a simple or bulk string of digits.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            Value::Simple(s) => s.parse().ok(),
            Value::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// The value as text: a simple string, a bulk string in UTF-8, or an integer's digits.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Simple(s) | Value::Double(s) | Value::BigNumber(s) => Some(s.clone()),
            Value::Bulk(b) => String::from_utf8(b.clone()).ok(),
            Value::Integer(i) => Some(i.to_string()),
            _ => None,
        }
    }
}

/// Why the input is not RESP (the connection that carried it cannot be trusted any more).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RespError {
    /// A type byte RESP does not have.
    #[error("unknown RESP type byte 0x{0:02x}")]
    UnknownType(u8),
    /// A length or integer line that is not a number.
    #[error("malformed RESP number {0:?}")]
    BadNumber(String),
    /// A line not ended by CRLF, or a bulk string not followed by CRLF.
    #[error("malformed RESP framing: {0}")]
    Framing(&'static str),
    /// Beyond [`MAX_BULK`], [`MAX_ITEMS`] or [`MAX_DEPTH`].
    #[error("RESP value too large: {0}")]
    TooLarge(&'static str),
}

/// A command: `*<n>\r\n` then each argument as `$<len>\r\n<bytes>\r\n`.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Any value, as a RESP3 server would send it: [`Value::Error`] as a simple error, or as a
/// blob error (`!len`) when its text holds CR or LF (a blob error is where such a text comes
/// from; a line would end at its first CRLF). Simple strings must not hold CRLF (a decoded
/// one never does).
pub fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Simple(s) => line(out, b'+', s),
        Value::Error(s) if s.contains(['\r', '\n']) => {
            line(out, b'!', &s.len().to_string());
            out.extend_from_slice(s.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Value::Error(s) => line(out, b'-', s),
        Value::Integer(i) => line(out, b':', &i.to_string()),
        Value::Bulk(b) => {
            line(out, b'$', &b.len().to_string());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::Array(items) => {
            line(out, b'*', &items.len().to_string());
            for item in items {
                encode(item, out);
            }
        }
        Value::Nil => out.extend_from_slice(b"_\r\n"),
        Value::Bool(b) => line(out, b'#', if *b { "t" } else { "f" }),
        Value::Double(s) => line(out, b',', s),
        Value::BigNumber(s) => line(out, b'(', s),
        Value::Map(pairs) => {
            line(out, b'%', &pairs.len().to_string());
            for (k, v) in pairs {
                encode(k, out);
                encode(v, out);
            }
        }
    }
}

fn line(out: &mut Vec<u8>, kind: u8, text: &str) {
    out.push(kind);
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Replies from bytes pushed in any pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed by returned values.
    start: usize,
}

/// What parsing at a position gave: a value and where it ended, or "need more bytes".
type Parsed = Result<Option<(Value, usize)>, RespError>;

impl Decoder {
    /// Nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a returned value.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete value, `Ok(None)` until more bytes arrive, or the error that makes
    /// the rest of the input meaningless.
    pub fn next_value(&mut self) -> Result<Option<Value>, RespError> {
        match parse(&self.buf, self.start, 0)? {
            Some((value, end)) => {
                self.start = end;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                } else if self.start > 64 * 1024 {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(Some(value))
            }
            None => Ok(None),
        }
    }
}

/// The line at `at` (without CRLF) and the position after it.
fn read_line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = &buf[at.min(buf.len())..];
    match memchr::memchr(b'\n', rest) {
        Some(i) => {
            if i == 0 || rest[i - 1] != b'\r' {
                return Err(RespError::Framing("a line ends in LF without CR"));
            }
            Ok(Some((&rest[..i - 1], at + i + 1)))
        }
        None if rest.len() > MAX_BULK => Err(RespError::TooLarge("a line without end")),
        None => Ok(None),
    }
}

fn number(text: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(text)
        .ok()
        .filter(|s| !s.is_empty() && !s.starts_with('+'))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| RespError::BadNumber(String::from_utf8_lossy(text).into_owned()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A count of `-1` (nil) or `0..=max`.
fn count(text: &[u8], max: usize, what: &'static str) -> Result<Option<usize>, RespError> {
    let n = number(text)?;
    if n == -1 {
        return Ok(None);
    }
    let n = usize::try_from(n).map_err(|_| RespError::BadNumber(n.to_string()))?;
    if n > max {
        return Err(RespError::TooLarge(what));
    }
    Ok(Some(n))
}

fn parse(buf: &[u8], at: usize, depth: usize) -> Parsed {
    if depth > MAX_DEPTH {
        return Err(RespError::TooLarge("nesting"));
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((body, next)) = read_line(buf, at + 1)? else {
        return Ok(None);
    };
    let value = match kind {
        b'+' => Value::Simple(text(body)),
        b'-' => Value::Error(text(body)),
        b':' => Value::Integer(number(body)?),
        b'#' => match body {
            b"t" => Value::Bool(true),
            b"f" => Value::Bool(false),
            _ => return Err(RespError::Framing("a boolean other than t or f")),
        },
        b',' => Value::Double(text(body)),
        b'(' => Value::BigNumber(text(body)),
        b'_' => {
            if !body.is_empty() {
                return Err(RespError::Framing("a null with content"));
            }
            Value::Nil
        }
        b'$' | b'!' | b'=' => {
            let Some(len) = count(body, MAX_BULK, "a bulk string")? else {
                return Ok(Some((Value::Nil, next)));
            };
            let end = next + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::Framing("a bulk string not followed by CRLF"));
            }
            let bytes = &buf[next..end];
            let value = match kind {
                b'!' => Value::Error(text(bytes)),
                // Verbatim: `txt:` then the text.
                b'=' => {
                    if bytes.len() < 4 || bytes[3] != b':' {
                        return Err(RespError::Framing("a verbatim string without its format"));
                    }
                    Value::Bulk(bytes[4..].to_vec())
                }
                _ => Value::Bulk(bytes.to_vec()),
            };
            return Ok(Some((value, end + 2)));
        }
        b'*' | b'~' | b'>' | b'%' => {
            let Some(n) = count(body, MAX_ITEMS, "an aggregate")? else {
                return Ok(Some((Value::Nil, next)));
            };
            let elements = if kind == b'%' { n * 2 } else { n };
            let mut items = Vec::with_capacity(elements.min(1024));
            let mut pos = next;
            for _ in 0..elements {
                match parse(buf, pos, depth + 1)? {
                    Some((item, end)) => {
                        items.push(item);
                        pos = end;
                    }
                    None => return Ok(None),
                }
            }
            let value = if kind == b'%' {
                let mut pairs = Vec::with_capacity(n);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Value::Map(pairs)
            } else {
                Value::Array(items)
            };
            return Ok(Some((value, pos)));
        }
        other => return Err(RespError::UnknownType(other)),
    };
    Ok(Some((value, next)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(chunks: &[&[u8]]) -> Result<Vec<Value>, RespError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            d.push(chunk);
            while let Some(v) = d.next_value()? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Found by the fuzz target: a RESP3 blob error whose text holds CRLF was written back as
    /// a simple error, which ends at the first CRLF; it is written as a blob error again.
    #[test]
    fn a_blob_error_with_crlf_encodes_back_to_itself() {
        let wire: &[u8] = b"!11\r\nERR a\r\n*3 b\r\n";
        let value = decode_all(&[wire]).unwrap();
        assert_eq!(value, vec![Value::Error("ERR a\r\n*3 b".to_owned())]);
        let mut out = Vec::new();
        encode(&value[0], &mut out);
        assert_eq!(out, wire);
        let mut plain = Vec::new();
        encode(&Value::Error("ERR plain".to_owned()), &mut plain);
        assert_eq!(plain, b"-ERR plain\r\n");
    }

    #[test]
    fn replies_redis_sends() {
        let input = b"+OK\r\n-NOSCRIPT No matching script\r\n:-7\r\n$5\r\nhello\r\n$-1\r\n*-1\r\n\
                      *2\r\n:1\r\n$0\r\n\r\n%1\r\n+a\r\n#t\r\n=8\r\ntxt:some\r\n,1.5\r\n_\r\n";
        let values = decode_all(&[input]).unwrap();
        assert_eq!(
            values,
            vec![
                Value::Simple("OK".into()),
                Value::Error("NOSCRIPT No matching script".into()),
                Value::Integer(-7),
                Value::Bulk(b"hello".to_vec()),
                Value::Nil,
                Value::Nil,
                Value::Array(vec![Value::Integer(1), Value::Bulk(Vec::new())]),
                Value::Map(vec![(Value::Simple("a".into()), Value::Bool(true))]),
                Value::Bulk(b"some".to_vec()),
                Value::Double("1.5".into()),
                Value::Nil,
            ]
        );
        assert_eq!(
            encode_command(&["GET", "k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
    }

    #[test]
    fn refuses_garbage_and_oversize() {
        assert_eq!(decode_all(&[b"?x\r\n"]), Err(RespError::UnknownType(b'?')));
        assert!(matches!(
            decode_all(&[b":12a\r\n"]),
            Err(RespError::BadNumber(_))
        ));
        assert!(matches!(
            decode_all(&[b"$3\r\nabcd\r\n"]),
            Err(RespError::Framing(_))
        ));
        assert!(matches!(
            decode_all(&[b"*99999999999\r\n"]),
            Err(RespError::TooLarge(_))
        ));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert!(matches!(
            decode_all(&[deep.as_bytes()]),
            Err(RespError::TooLarge(_))
        ));
        // Incomplete input is not an error.
        assert_eq!(decode_all(&[b"$5\r\nhel"]), Ok(Vec::new()));
    }

    fn line_text() -> impl Strategy<Value = String> {
        "[^\r\n]{0,12}"
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            line_text().prop_map(Value::Simple),
            line_text().prop_map(Value::Error),
            any::<i64>().prop_map(Value::Integer),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bulk),
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Bool),
            (-1.0e9f64..1.0e9).prop_map(|f| Value::Double(f.to_string())),
            "[0-9]{1,40}".prop_map(Value::BigNumber),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        /// Encoding then decoding gives the values back, whatever the split of the bytes.
        #[test]
        fn round_trips_across_any_split(
            values in proptest::collection::vec(value(), 1..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut bytes = Vec::new();
            for v in &values {
                encode(v, &mut bytes);
            }
            prop_assert_eq!(&decode_all(&[&bytes]).unwrap(), &values);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&bytes[last..p]);
                last = p;
            }
            chunks.push(&bytes[last..]);
            prop_assert_eq!(decode_all(&chunks).unwrap(), values);
        }

        /// A command is an array of bulk strings that decodes to its arguments.
        #[test]
        fn commands_decode_to_their_arguments(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..30), 1..8),
        ) {
            let bytes = encode_command(&args);
            let decoded = decode_all(&[&bytes]).unwrap();
            prop_assert_eq!(decoded, vec![Value::Array(args.into_iter().map(Value::Bulk).collect())]);
        }

        /// Arbitrary bytes: one-shot and byte-at-a-time decoding agree (values and error).
        #[test]
        fn any_bytes_decode_the_same_in_pieces(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let whole = decode_all(&[&bytes]);
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            prop_assert_eq!(whole, decode_all(&singles));
        }
    }
}
