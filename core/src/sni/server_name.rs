//! [`ServerName`]: a validated, lower-cased DNS host name held inline (no heap).
//!
//! Owns: the rules a name from a ClientHello must follow before the relay routes by it.
//! Must not: resolve, normalise Unicode (IDNA), or accept anything that is not plain ASCII.
//!
//! Rules, in the order they are checked:
//! - one trailing dot is stripped (RFC 6066 says the name has none, but some clients send the
//!   fully-qualified form; rustls strips it the same way on the daemon side);
//! - 1..=253 bytes remain;
//! - labels separated by `.` are 1..=63 bytes of `[A-Za-z0-9-]`, upper case folded to lower;
//! - no label starts or ends with `-`;
//! - the last label is not all digits: that rejects IPv4 literals (`192.0.2.1`), which RFC 6066
//!   forbids in SNI, and no real top-level domain is numeric. IPv6 literals fail the character
//!   rule (`:`).
//!
//! Underscores are rejected: they are not valid in host names and no certificate authority
//! issues certificates for them.

use std::fmt;
use std::hash::{Hash, Hasher};

/// Longest DNS name (without trailing dot), in bytes.
pub const MAX_SERVER_NAME_LEN: usize = 253;
/// Longest DNS label, in bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a server name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ServerNameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is {length} bytes long; at most {MAX_SERVER_NAME_LEN} are allowed")]
    TooLong { length: usize },
    #[error("the name has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("a label is {length} bytes long; at most {MAX_LABEL_LEN} are allowed")]
    LabelTooLong { length: usize },
    #[error("byte {byte:#04x} is not allowed in a host name (only letters, digits, '-' and '.')")]
    InvalidByte { byte: u8 },
    #[error("a label starts or ends with '-'")]
    HyphenAtLabelEdge,
    #[error("the name is an IP address literal or ends in an all-numeric label")]
    IpLiteral,
    #[error("the server_name extension carries more than one host name")]
    MultipleHostNames,
}

/// For each byte: its lower-case form if it may appear in a host name, else 0.
const HOST_NAME_BYTE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0usize;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' => b,
            b'A'..=b'Z' => b.to_ascii_lowercase(),
            _ => 0,
        };
        byte += 1;
    }
    table
};

/// A validated DNS host name: lower-case ASCII, no trailing dot, at most 253 bytes, stored
/// inline.
#[derive(Clone)]
pub struct ServerName {
    bytes: [u8; MAX_SERVER_NAME_LEN],
    len: u8,
}

impl ServerName {
    /// Validates `raw` by the module rules and returns it lower-cased.
    pub fn new(raw: &[u8]) -> Result<ServerName, ServerNameError> {
        let mut name = ServerName::EMPTY;
        let raw = raw.strip_suffix(b".").unwrap_or(raw);
        if raw.len() > MAX_SERVER_NAME_LEN {
            return Err(ServerNameError::TooLong { length: raw.len() });
        }
        let storage = name
            .bytes
            .get_mut(..raw.len())
            .ok_or(ServerNameError::TooLong { length: raw.len() })?;
        storage.copy_from_slice(raw);
        name.validate_in_place(raw.len())?;
        Ok(name)
    }

    /// Placeholder for "no name yet"; never handed out as a valid name.
    pub(crate) const EMPTY: ServerName = ServerName {
        bytes: [0; MAX_SERVER_NAME_LEN],
        len: 0,
    };

    /// Storage for the parser to copy raw name bytes into before [`Self::validate_in_place`].
    pub(crate) fn storage_mut(&mut self) -> &mut [u8; MAX_SERVER_NAME_LEN] {
        &mut self.bytes
    }

    /// Validates and lower-cases the first `len` bytes of the storage (no trailing dot) and
    /// makes them the name. On error the name is left empty.
    pub(crate) fn validate_in_place(&mut self, len: usize) -> Result<(), ServerNameError> {
        self.len = 0;
        let raw = self
            .bytes
            .get_mut(..len)
            .ok_or(ServerNameError::TooLong { length: len })?;
        if raw.is_empty() {
            return Err(ServerNameError::Empty);
        }
        let mut label_len = 0usize;
        let mut label_all_digits = true;
        let mut previous = b'.';
        for slot in raw.iter_mut() {
            let byte = *slot;
            let lower = HOST_NAME_BYTE.get(usize::from(byte)).copied().unwrap_or(0);
            if lower == b'.' {
                if label_len == 0 {
                    return Err(ServerNameError::EmptyLabel);
                }
                if previous == b'-' {
                    return Err(ServerNameError::HyphenAtLabelEdge);
                }
                label_len = 0;
                label_all_digits = true;
            } else if lower != 0 {
                if lower == b'-' && label_len == 0 {
                    return Err(ServerNameError::HyphenAtLabelEdge);
                }
                label_len += 1;
                if label_len > MAX_LABEL_LEN {
                    return Err(ServerNameError::LabelTooLong { length: label_len });
                }
                label_all_digits &= lower.is_ascii_digit();
            } else {
                return Err(ServerNameError::InvalidByte { byte });
            }
            *slot = lower;
            previous = lower;
        }
        // The trailing dot was stripped by the caller, so a last '.' means ".." or ".".
        if label_len == 0 {
            return Err(ServerNameError::EmptyLabel);
        }
        if previous == b'-' {
            return Err(ServerNameError::HyphenAtLabelEdge);
        }
        if label_all_digits {
            return Err(ServerNameError::IpLiteral);
        }
        self.len = u8::try_from(len).map_err(|_| ServerNameError::TooLong { length: len })?;
        Ok(())
    }

    /// The name as bytes (lower-case ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        // Always ASCII by construction, so this never falls back.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always false for a name handed out by this module (it has at least one label).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::str::FromStr for ServerName {
    type Err = ServerNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServerName::new(s.as_bytes())
    }
}

impl PartialEq for ServerName {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ServerName {}

impl Hash for ServerName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq<str> for ServerName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ServerName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl AsRef<str> for ServerName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ServerName").field(&self.as_str()).finish()
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_lowercases() {
        let name = ServerName::new(b"Api.Example.COM").unwrap();
        assert_eq!(name.as_str(), "api.example.com");
        assert_eq!(ServerName::new(b"localhost").unwrap(), "localhost");
        assert_eq!(
            ServerName::new(b"a-b.x1.localhost").unwrap(),
            "a-b.x1.localhost"
        );
        assert_eq!(ServerName::new(b"1.2.3.example").unwrap(), "1.2.3.example");
    }

    #[test]
    fn strips_one_trailing_dot() {
        assert_eq!(ServerName::new(b"example.com.").unwrap(), "example.com");
        assert_eq!(
            ServerName::new(b"example.com.."),
            Err(ServerNameError::EmptyLabel)
        );
        assert_eq!(ServerName::new(b"."), Err(ServerNameError::Empty));
    }

    #[test]
    fn rejects_bad_names() {
        use ServerNameError::*;
        assert_eq!(ServerName::new(b""), Err(Empty));
        assert_eq!(ServerName::new(b".example"), Err(EmptyLabel));
        assert_eq!(ServerName::new(b"a..b"), Err(EmptyLabel));
        assert_eq!(ServerName::new(b"-a.b"), Err(HyphenAtLabelEdge));
        assert_eq!(ServerName::new(b"a-.b"), Err(HyphenAtLabelEdge));
        assert_eq!(ServerName::new(b"a.b-"), Err(HyphenAtLabelEdge));
        assert_eq!(ServerName::new(b"a_b.c"), Err(InvalidByte { byte: b'_' }));
        assert_eq!(
            ServerName::new(b"caf\xc3\xa9.fr"),
            Err(InvalidByte { byte: 0xc3 })
        );
        assert_eq!(ServerName::new(b"192.0.2.1"), Err(IpLiteral));
        assert_eq!(ServerName::new(b"::1"), Err(InvalidByte { byte: b':' }));
        assert_eq!(ServerName::new(b"1234"), Err(IpLiteral));
        let long_label = [b'a'; 64];
        assert_eq!(
            ServerName::new(&long_label),
            Err(LabelTooLong { length: 64 })
        );
    }

    #[test]
    fn length_limits() {
        // 4 labels of 63 + 3 dots = 255 > 253; 3 x 63 + 61 + 3 dots = 253 fits.
        let mut name = Vec::new();
        for label in [63, 63, 63, 61] {
            if !name.is_empty() {
                name.push(b'.');
            }
            name.extend(std::iter::repeat_n(b'a', label));
        }
        assert_eq!(name.len(), 253);
        assert_eq!(ServerName::new(&name).unwrap().len(), 253);
        name.push(b'.');
        assert_eq!(
            ServerName::new(&name).unwrap().len(),
            253,
            "trailing dot stripped"
        );
        name.pop();
        name.push(b'a');
        assert_eq!(
            ServerName::new(&name),
            Err(ServerNameError::TooLong { length: 254 })
        );
    }
}
