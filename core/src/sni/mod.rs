//! Incremental TLS ClientHello reader: the relay routes a connection by its server name (SNI)
//! without terminating TLS.
//!
//! Owns: reading the server name and the ALPN list out of the first bytes a TLS client sends,
//! and the two alert records the relay answers with when it cannot route. Must not: buffer,
//! copy the input to the heap, allocate, perform I/O, or judge anything the daemon's TLS stack
//! will judge anyway (cipher suites, key shares, signature schemes).
//!
//! # Driving it
//!
//! The API follows httparse: the caller keeps every byte it has read (it must replay them to
//! the daemon anyway) and calls [`parse`] again over the whole prefix each time more arrives.
//!
//! ```
//! use gate_core::sni::{self, Status};
//! # fn demo(read_more: &mut dyn FnMut(&mut Vec<u8>) -> bool) -> Result<(), sni::SniError> {
//! let mut received = Vec::new();
//! loop {
//!     if !read_more(&mut received) { break; } // EOF: drop the connection
//!     match sni::parse(&received)? {
//!         Status::NeedMore => continue,       // keep reading (under a deadline)
//!         Status::Found(hello) => { let _name = hello.server_name(); break; }
//!         Status::NoSni(_) => break,          // answer with sni::unrecognized_name_alert()
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The answer for a prefix never contradicts the answer for a longer input: once [`parse`]
//! returns an error or a result, every extension of that input gives the same error or result.
//! A valid ClientHello gives [`Status::NeedMore`] for every prefix that stops short of its
//! last byte, and the answer does not depend on how the bytes were split into reads or how the
//! handshake message was split into records.
//!
//! # Limits
//!
//! - At most [`MAX_CLIENT_HELLO_BYTES`] (16 KiB) of input, record headers included, may carry
//!   the ClientHello. Beyond that the answer is [`SniError::TooLarge`], so a caller that reads
//!   at most that many bytes before the answer is never asked for more: [`Status::NeedMore`]
//!   is only returned for inputs shorter than the bound.
//! - The handshake message may span any number of records (each 1..=16384 bytes, content type
//!   22, version 3.0..=3.4) and any TCP split. Records are walked in place by a cursor.
//! - At most [`MAX_EXTENSIONS`] extensions (real clients send fewer than 30); each extension
//!   type may appear once.
//! - Results live inline: a [`ServerName`] (253 bytes) and an [`AlpnList`]
//!   ([`ALPN_INLINE_CAPACITY`] bytes). A parse performs no heap allocation.
//! - Bytes after the ClientHello (in its last record or beyond) are not inspected, so the
//!   answer can come before a last record that carries more than the hello has fully arrived.
//! - The time bound (how long to wait for [`Status::NeedMore`] to resolve) is the caller's.
//!
//! # Decisions
//!
//! - Server names: see [`ServerName`]: one trailing dot is stripped, IP literals and
//!   underscores are rejected, upper case is folded. A `server_name` extension whose entries
//!   are all of unknown name types counts as no SNI; two host names are an error.
//! - ALPN: an empty list or an empty name is an error (RFC 7301); names that do not fit the
//!   inline storage are dropped from the end and reported by [`AlpnList::is_complete`].
//! - Record versions 3.0..=3.4 are accepted on every record; the ClientHello's own
//!   `legacy_version` must have major version 3. Nothing else in the hello is judged.

mod alpn;
mod cursor;
mod server_name;

pub use alpn::{AlpnError, AlpnIter, AlpnList, ALPN_INLINE_CAPACITY};
pub use server_name::{ServerName, ServerNameError, MAX_LABEL_LEN, MAX_SERVER_NAME_LEN};

use cursor::{HandshakeCursor, Step, Stop, RECORD_HEADER_LEN};

/// Most input bytes (record headers included) that may carry a ClientHello.
pub const MAX_CLIENT_HELLO_BYTES: usize = 16 * 1024;

/// Most extensions a ClientHello may carry.
pub const MAX_EXTENSIONS: usize = 64;

const HANDSHAKE_TYPE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_HEADER_LEN: usize = 4;
const EXTENSION_SERVER_NAME: u16 = 0;
const EXTENSION_ALPN: u16 = 16;
const SERVER_NAME_TYPE_HOST_NAME: u8 = 0;
/// Longest host name accepted on the wire: 253 bytes plus one trailing dot.
const MAX_WIRE_HOST_NAME_LEN: usize = MAX_SERVER_NAME_LEN + 1;

/// The answer of [`parse`] for the input so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The ClientHello is not complete yet; call again with more bytes.
    NeedMore,
    /// A complete, well-formed ClientHello with a valid server name.
    /// [`ClientHelloInfo::server_name`] is always `Some`.
    Found(ClientHelloInfo),
    /// A complete, well-formed ClientHello without a server_name extension (or with one that
    /// holds no host name). [`ClientHelloInfo::server_name`] is `None`.
    NoSni(ClientHelloInfo),
}

impl Status {
    /// The server name, when one was found.
    pub fn server_name(&self) -> Option<&ServerName> {
        match self {
            Status::Found(hello) => hello.server_name(),
            Status::NeedMore | Status::NoSni(_) => None,
        }
    }
}

/// What the relay needs from a ClientHello.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// Empty when the client sent no host name (kept inline rather than in an `Option` so the
    /// parser can fill it in place).
    server_name: ServerName,
    alpn: AlpnList,
}

impl ClientHelloInfo {
    /// The validated, lower-cased server name, if the client sent one.
    pub fn server_name(&self) -> Option<&ServerName> {
        (!self.server_name.is_empty()).then_some(&self.server_name)
    }

    /// The ALPN protocol names offered, most preferred first (empty without the extension).
    pub fn alpn(&self) -> &AlpnList {
        &self.alpn
    }
}

impl std::fmt::Debug for ClientHelloInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHelloInfo")
            .field("server_name", &self.server_name())
            .field("alpn", &self.alpn)
            .finish()
    }
}

/// Why the input can never be routed as a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    #[error("not a TLS handshake record (content type {content_type})")]
    NotHandshake { content_type: u8 },
    #[error("unsupported TLS record version {version:#06x}")]
    BadRecordVersion { version: u16 },
    #[error("empty TLS handshake record")]
    EmptyRecord,
    #[error("TLS record of {length} bytes exceeds the 16384-byte maximum")]
    RecordTooLong { length: usize },
    #[error("expected a ClientHello, found handshake message type {handshake_type}")]
    UnexpectedHandshakeType { handshake_type: u8 },
    #[error("unsupported ClientHello version {version:#06x}")]
    BadHelloVersion { version: u16 },
    #[error("ClientHello larger than {MAX_CLIENT_HELLO_BYTES} bytes")]
    TooLarge,
    #[error("inconsistent length: {0}")]
    BadLength(&'static str),
    #[error("ClientHello has more than {MAX_EXTENSIONS} extensions")]
    TooManyExtensions,
    #[error("extension {extension_type:#06x} appears twice")]
    DuplicateExtension { extension_type: u16 },
    #[error("invalid server name: {0}")]
    InvalidServerName(#[from] ServerNameError),
    #[error("invalid ALPN extension: {0}")]
    InvalidAlpn(#[from] AlpnError),
}

/// Reads the ClientHello at the start of `input`, the whole prefix of the connection so far.
///
/// Pure and allocation-free; never panics. See the module docs for the limits.
pub fn parse(input: &[u8]) -> Result<Status, SniError> {
    let mut cursor = HandshakeCursor::new(input);
    let mut hello = ClientHelloInfo {
        server_name: ServerName::EMPTY,
        alpn: AlpnList::new(),
    };
    match parse_client_hello(&mut cursor, &mut hello) {
        Ok(()) if !hello.server_name.is_empty() => Ok(Status::Found(hello)),
        Ok(()) => Ok(Status::NoSni(hello)),
        Err(Stop::NeedMore) => {
            if input.len() >= MAX_CLIENT_HELLO_BYTES {
                // Unreachable by construction (records never extend past the bound); kept so
                // the promise "NeedMore only below the bound" holds even if that changes.
                Err(SniError::TooLarge)
            } else {
                Ok(Status::NeedMore)
            }
        }
        Err(Stop::Fail(error)) => Err(error),
    }
}

/// A fatal `unrecognized_name` alert (level 2, description 112) in a TLS 1.2-framed record:
/// what the relay sends for a name it does not route.
pub fn unrecognized_name_alert() -> &'static [u8] {
    const ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 112];
    &ALERT
}

/// A fatal `internal_error` alert (level 2, description 80) in a TLS 1.2-framed record: what
/// the relay sends when a known name's daemon cannot be reached.
pub fn internal_error_alert() -> &'static [u8] {
    const ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 80];
    &ALERT
}

/// Fails with `BadLength(field)` unless `needed` more bytes fit before the logical offset `end`.
fn within(
    cursor: &HandshakeCursor<'_>,
    end: usize,
    needed: usize,
    field: &'static str,
) -> Step<()> {
    if cursor.read().saturating_add(needed) > end {
        return Err(SniError::BadLength(field).into());
    }
    Ok(())
}

fn parse_client_hello(cursor: &mut HandshakeCursor<'_>, hello: &mut ClientHelloInfo) -> Step<()> {
    let handshake_type = cursor.u8()?;
    if handshake_type != HANDSHAKE_TYPE_CLIENT_HELLO {
        return Err(SniError::UnexpectedHandshakeType { handshake_type }.into());
    }
    let body_len = cursor.u24()?;
    if RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + body_len > MAX_CLIENT_HELLO_BYTES {
        return Err(SniError::TooLarge.into());
    }
    let end = cursor.read() + body_len;

    within(
        cursor,
        end,
        2 + 32 + 1,
        "ClientHello shorter than its fixed fields",
    )?;
    let version = cursor.u16()?;
    if version >> 8 != 3 {
        return Err(SniError::BadHelloVersion { version }.into());
    }
    cursor.skip(32)?; // random

    let session_id_len = usize::from(cursor.u8()?);
    if session_id_len > 32 {
        return Err(SniError::BadLength("session_id longer than 32 bytes").into());
    }
    within(cursor, end, session_id_len + 2, "session_id")?;
    cursor.skip(session_id_len)?;

    let cipher_suites_len = usize::from(cursor.u16()?);
    if cipher_suites_len < 2 || cipher_suites_len % 2 != 0 {
        return Err(SniError::BadLength("cipher_suites must be a non-empty list of pairs").into());
    }
    within(cursor, end, cipher_suites_len + 1, "cipher_suites")?;
    cursor.skip(cipher_suites_len)?;

    let compression_len = usize::from(cursor.u8()?);
    if compression_len == 0 {
        return Err(SniError::BadLength("compression_methods is empty").into());
    }
    within(cursor, end, compression_len, "compression_methods")?;
    cursor.skip(compression_len)?;

    if cursor.read() == end {
        return Ok(()); // a ClientHello without extensions (TLS 1.0 style)
    }
    within(cursor, end, 2, "extensions length")?;
    let extensions_len = usize::from(cursor.u16()?);
    if cursor.read() + extensions_len != end {
        return Err(SniError::BadLength("extensions do not end where the ClientHello ends").into());
    }

    // Extension types below 64 (all the common ones) are tracked in a bit set, others in a
    // short list; `seen_count` counts both against MAX_EXTENSIONS.
    let mut seen_low: u64 = 0;
    let mut seen_other = [0u16; MAX_EXTENSIONS];
    let mut seen_other_count = 0usize;
    let mut seen_count = 0usize;
    while cursor.read() < end {
        within(cursor, end, 4, "extension header")?;
        let extension_type = cursor.u16()?;
        let extension_len = usize::from(cursor.u16()?);
        within(cursor, end, extension_len, "extension body")?;
        if seen_count == MAX_EXTENSIONS {
            return Err(SniError::TooManyExtensions.into());
        }
        seen_count += 1;
        let duplicate = if extension_type < 64 {
            let bit = 1u64 << extension_type;
            let duplicate = seen_low & bit != 0;
            seen_low |= bit;
            duplicate
        } else {
            let known = seen_other.get(..seen_other_count).unwrap_or_default();
            let duplicate = known.contains(&extension_type);
            if let Some(slot) = seen_other.get_mut(seen_other_count) {
                *slot = extension_type;
                seen_other_count += 1;
            }
            duplicate
        };
        if duplicate {
            return Err(SniError::DuplicateExtension { extension_type }.into());
        }

        let extension_end = cursor.read() + extension_len;
        match extension_type {
            EXTENSION_SERVER_NAME => {
                parse_server_name(cursor, extension_end, &mut hello.server_name)?
            }
            EXTENSION_ALPN => parse_alpn(cursor, extension_end, &mut hello.alpn)?,
            _ => cursor.skip(extension_len)?,
        }
    }
    Ok(())
}

/// The server_name extension (RFC 6066, section 3): a list of (type, name) entries of which at
/// most one is a host name. Entries of other types are skipped.
/// The host name is copied straight into `name`'s inline storage and validated there.
fn parse_server_name(
    cursor: &mut HandshakeCursor<'_>,
    end: usize,
    name: &mut ServerName,
) -> Step<()> {
    within(cursor, end, 2, "server_name list length")?;
    let list_len = usize::from(cursor.u16()?);
    if cursor.read() + list_len != end {
        return Err(SniError::BadLength("server_name list does not fill its extension").into());
    }
    if list_len == 0 {
        return Err(SniError::BadLength("server_name list is empty").into());
    }
    let mut found = false;
    while cursor.read() < end {
        within(cursor, end, 3, "server_name entry header")?;
        let name_type = cursor.u8()?;
        let name_len = usize::from(cursor.u16()?);
        within(cursor, end, name_len, "server_name entry")?;
        if name_type != SERVER_NAME_TYPE_HOST_NAME {
            cursor.skip(name_len)?;
            continue;
        }
        if found {
            return Err(SniError::from(ServerNameError::MultipleHostNames).into());
        }
        if name_len > MAX_WIRE_HOST_NAME_LEN {
            return Err(SniError::from(ServerNameError::TooLong { length: name_len }).into());
        }
        found = true;
        // Copy up to 253 bytes; a 254th may only be the trailing dot.
        let stored = name_len.min(MAX_SERVER_NAME_LEN);
        let storage = name
            .storage_mut()
            .get_mut(..stored)
            .ok_or(SniError::BadLength("host name"))?;
        cursor.copy_into(storage)?;
        let mut len = stored;
        if name_len > stored {
            if cursor.u8()? != b'.' {
                return Err(SniError::from(ServerNameError::TooLong { length: name_len }).into());
            }
        } else if storage.last() == Some(&b'.') {
            len -= 1;
        }
        name.validate_in_place(len).map_err(SniError::from)?;
    }
    Ok(())
}

/// The ALPN extension (RFC 7301, section 3.1): a non-empty list of non-empty names.
fn parse_alpn(cursor: &mut HandshakeCursor<'_>, end: usize, alpn: &mut AlpnList) -> Step<()> {
    within(cursor, end, 2, "ALPN list length")?;
    let list_len = usize::from(cursor.u16()?);
    if cursor.read() + list_len != end {
        return Err(SniError::BadLength("ALPN list does not fill its extension").into());
    }
    if list_len == 0 {
        return Err(SniError::from(AlpnError::EmptyList).into());
    }
    while cursor.read() < end {
        let name_len = cursor.u8()?;
        if name_len == 0 {
            return Err(SniError::from(AlpnError::EmptyProtocol).into());
        }
        within(cursor, end, usize::from(name_len), "ALPN protocol name")?;
        match alpn.reserve(name_len) {
            Some(slot) => cursor.copy_into(slot)?,
            None => cursor.skip(usize::from(name_len))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
