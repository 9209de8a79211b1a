//! [`AlpnList`]: the ALPN protocol names a client offered, held inline (no heap).
//!
//! Owns: inline storage of protocol names in the client's order of preference.
//! Must not: grow beyond [`ALPN_INLINE_CAPACITY`] bytes. A list that does not fit keeps its
//! longest fitting prefix (the client's most preferred protocols) and reports
//! [`AlpnList::is_complete`] = false, rather than rejecting a legal ClientHello.

use std::fmt;

/// Bytes of inline storage for ALPN names, in wire form (a length byte before each name).
/// Eight 31-byte names, or one 255-byte name, fit.
pub const ALPN_INLINE_CAPACITY: usize = 256;

/// Why an ALPN extension was rejected (RFC 7301, section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AlpnError {
    #[error("the protocol name list is empty")]
    EmptyList,
    #[error("a protocol name is empty")]
    EmptyProtocol,
}

/// The ALPN protocol names offered by a client, most preferred first.
#[derive(Clone)]
pub struct AlpnList {
    /// Wire form: `len, name bytes, len, name bytes, ...`.
    bytes: [u8; ALPN_INLINE_CAPACITY],
    used: u16,
    count: u8,
    complete: bool,
}

impl AlpnList {
    /// An empty list (the client sent no ALPN extension).
    pub const fn new() -> Self {
        AlpnList {
            bytes: [0; ALPN_INLINE_CAPACITY],
            used: 0,
            count: 0,
            complete: true,
        }
    }

    /// Reserves room for a name of `len` bytes (1..=255) and returns the slot to fill, or
    /// `None` (and marks the list incomplete) when it does not fit; once a name has been
    /// dropped every later one is dropped too, so the list stays a prefix of the client's.
    pub(crate) fn reserve(&mut self, len: u8) -> Option<&mut [u8]> {
        let start = usize::from(self.used);
        let end = start + 1 + usize::from(len);
        if !self.complete || end > ALPN_INLINE_CAPACITY {
            self.complete = false;
            return None;
        }
        let (length_byte, name) = self.bytes.get_mut(start..end)?.split_first_mut()?;
        *length_byte = len;
        self.used = u16::try_from(end).ok()?;
        self.count = self.count.saturating_add(1);
        Some(name)
    }

    /// Builds a list from names (for tests and callers comparing against expectations).
    /// Names that are empty or longer than 255 bytes are skipped.
    pub fn from_protocols<'a>(protocols: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut list = AlpnList::new();
        for protocol in protocols {
            let Ok(len) = u8::try_from(protocol.len()) else {
                continue;
            };
            if len == 0 {
                continue;
            }
            if let Some(slot) = list.reserve(len) {
                slot.copy_from_slice(protocol);
            }
        }
        list
    }

    /// The protocol names, most preferred first.
    pub fn iter(&self) -> AlpnIter<'_> {
        AlpnIter {
            rest: self.bytes.get(..usize::from(self.used)).unwrap_or_default(),
        }
    }

    /// Number of names held.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// True when the client offered no names (or none fitted).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// False when the client offered more names than fit inline and some were dropped.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// True when `protocol` is among the names held.
    pub fn contains(&self, protocol: &[u8]) -> bool {
        self.iter().any(|name| name == protocol)
    }
}

impl Default for AlpnList {
    fn default() -> Self {
        AlpnList::new()
    }
}

impl PartialEq for AlpnList {
    fn eq(&self, other: &Self) -> bool {
        self.complete == other.complete
            && self.bytes.get(..usize::from(self.used))
                == other.bytes.get(..usize::from(other.used))
    }
}

impl Eq for AlpnList {}

impl fmt::Debug for AlpnList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for name in self.iter() {
            match std::str::from_utf8(name) {
                Ok(text) => list.entry(&text),
                Err(_) => list.entry(&name),
            };
        }
        if !self.complete {
            list.entry(&"..");
        }
        list.finish()
    }
}

impl<'a> IntoIterator for &'a AlpnList {
    type Item = &'a [u8];
    type IntoIter = AlpnIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over the names of an [`AlpnList`].
#[derive(Debug, Clone)]
pub struct AlpnIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AlpnIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, tail) = self.rest.split_first()?;
        let len = usize::from(len);
        let name = tail.get(..len)?;
        self.rest = tail.get(len..).unwrap_or_default();
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_prefix_when_full() {
        let list = AlpnList::from_protocols([&b"h2"[..], b"http/1.1"]);
        assert_eq!(
            list.iter().collect::<Vec<_>>(),
            vec![&b"h2"[..], b"http/1.1"]
        );
        assert!(list.is_complete());
        assert!(list.contains(b"h2"));

        let big = [b'x'; 200];
        let list = AlpnList::from_protocols([&b"h2"[..], &big[..], b"h3"]);
        assert_eq!(list.len(), 3);
        assert!(list.is_complete());
        let list = AlpnList::from_protocols([&b"h2"[..], &big[..], &big[..], b"h3"]);
        assert_eq!(list.iter().collect::<Vec<_>>(), vec![&b"h2"[..], &big[..]]);
        assert!(
            !list.is_complete(),
            "h3 must not be kept after a dropped name"
        );
    }
}
