//! The record-layer cursor: walks the payloads of consecutive TLS handshake records as one
//! virtual byte stream, without copying them anywhere.
//!
//! Owns: record header validation (content type, version, length) and the input bound
//! ([`MAX_CLIENT_HELLO_BYTES`]). Must not: interpret handshake contents (that is the job of
//! the parser in `mod.rs`), or read past the end of the caller's slice.

use super::{SniError, MAX_CLIENT_HELLO_BYTES};

/// Length of a TLS record header: content type (1), version (2), length (2).
pub(crate) const RECORD_HEADER_LEN: usize = 5;
/// Content type of handshake records.
pub(crate) const CONTENT_TYPE_HANDSHAKE: u8 = 22;
/// Largest plaintext record payload TLS allows (2^14).
pub(crate) const MAX_RECORD_PAYLOAD: usize = 16 * 1024;

/// Why a step of the parse stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The input ends before the bytes this step needs; more may arrive.
    NeedMore,
    /// The input can never become a valid ClientHello.
    Fail(SniError),
}

impl From<SniError> for Stop {
    fn from(error: SniError) -> Self {
        Stop::Fail(error)
    }
}

pub(crate) type Step<T> = Result<T, Stop>;

/// A read position in the handshake byte stream carried by a run of TLS records.
///
/// Invariants: `pos <= input.len()` except transiently inside a method; every record entered
/// ends at or before [`MAX_CLIENT_HELLO_BYTES`]; `read` counts handshake bytes consumed so far
/// (record headers excluded).
#[derive(Debug, Clone)]
pub(crate) struct HandshakeCursor<'a> {
    input: &'a [u8],
    /// Index in `input` of the next unread byte (a payload byte, or a record header when
    /// `record_left == 0`).
    pos: usize,
    /// Payload bytes of the current record not yet consumed (some may not have arrived yet).
    record_left: usize,
    /// Handshake bytes consumed so far: the logical offset in the virtual stream.
    read: usize,
}

impl<'a> HandshakeCursor<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        HandshakeCursor {
            input,
            pos: 0,
            record_left: 0,
            read: 0,
        }
    }

    /// Handshake bytes consumed so far.
    #[inline]
    pub(crate) fn read(&self) -> usize {
        self.read
    }

    /// Reads and validates the header of the next record. Each check is made as soon as its
    /// byte is present, so garbage is rejected after one byte and the answer for a prefix never
    /// contradicts the answer for a longer input.
    #[inline]
    fn enter_record(&mut self) -> Step<()> {
        let start = self.pos;
        // A record starting here needs its header and at least one payload byte.
        if start + RECORD_HEADER_LEN + 1 > MAX_CLIENT_HELLO_BYTES {
            return Err(SniError::TooLarge.into());
        }
        let byte = |offset: usize| {
            self.input
                .get(start + offset)
                .copied()
                .ok_or(Stop::NeedMore)
        };
        let content_type = byte(0)?;
        if content_type != CONTENT_TYPE_HANDSHAKE {
            return Err(SniError::NotHandshake { content_type }.into());
        }
        let major = byte(1)?;
        if major != 3 {
            return Err(SniError::BadRecordVersion {
                version: u16::from(major) << 8,
            }
            .into());
        }
        let minor = byte(2)?;
        if minor > 4 {
            return Err(SniError::BadRecordVersion {
                version: u16::from_be_bytes([major, minor]),
            }
            .into());
        }
        let length = usize::from(u16::from_be_bytes([byte(3)?, byte(4)?]));
        if length == 0 {
            return Err(SniError::EmptyRecord.into());
        }
        if length > MAX_RECORD_PAYLOAD {
            return Err(SniError::RecordTooLong { length }.into());
        }
        if start + RECORD_HEADER_LEN + length > MAX_CLIENT_HELLO_BYTES {
            return Err(SniError::TooLarge.into());
        }
        self.pos = start + RECORD_HEADER_LEN;
        self.record_left = length;
        Ok(())
    }

    /// Consumes and returns the longest contiguous run of at most `max` bytes (`max >= 1`)
    /// available at the cursor, entering the next record if the current one is used up.
    #[inline]
    fn chunk(&mut self, max: usize) -> Step<&'a [u8]> {
        if self.record_left == 0 {
            self.enter_record()?;
        }
        let available = self.input.len().saturating_sub(self.pos);
        let take = max.min(self.record_left).min(available);
        if take == 0 {
            return Err(Stop::NeedMore);
        }
        let bytes = self
            .input
            .get(self.pos..self.pos + take)
            .ok_or(Stop::NeedMore)?;
        self.pos += take;
        self.record_left -= take;
        self.read += take;
        Ok(bytes)
    }

    /// Fixed-size read; takes the fast path when all `N` bytes sit in the current record.
    #[inline]
    fn array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let mut out = [0u8; N];
        if self.record_left >= N {
            if let Some(bytes) = self.input.get(self.pos..self.pos + N) {
                out.copy_from_slice(bytes);
                self.pos += N;
                self.record_left -= N;
                self.read += N;
                return Ok(out);
            }
        }
        self.copy_into(&mut out)?;
        Ok(out)
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Step<u8> {
        let [byte] = self.array::<1>()?;
        Ok(byte)
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Step<u16> {
        Ok(u16::from_be_bytes(self.array::<2>()?))
    }

    #[inline]
    pub(crate) fn u24(&mut self) -> Step<usize> {
        let [a, b, c] = self.array::<3>()?;
        Ok(usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c))
    }

    /// Consumes `count` bytes without looking at them.
    #[inline]
    pub(crate) fn skip(&mut self, mut count: usize) -> Step<()> {
        while count > 0 {
            count -= self.chunk(count)?.len();
        }
        Ok(())
    }

    /// Consumes `dst.len()` bytes into `dst` (the only copy the parser makes, into inline
    /// storage owned by the caller).
    #[inline]
    pub(crate) fn copy_into(&mut self, dst: &mut [u8]) -> Step<()> {
        let mut filled = 0;
        while filled < dst.len() {
            let bytes = self.chunk(dst.len() - filled)?;
            for (slot, byte) in dst.iter_mut().skip(filled).zip(bytes) {
                *slot = *byte;
            }
            filled += bytes.len();
        }
        Ok(())
    }
}
