//! Secret scrubbing: removes every configured secret (upstream API keys, the JWT secret, the
//! admin token) from upstream text before it reaches a client or a log, e.g. an upstream
//! error body that echoes the `Authorization` header Gate sent.
//!
//! Must not: log, allocate when nothing matches, or leave any byte sequence of a secret in
//! its output (overlapping and adjacent occurrences included).

use std::borrow::Cow;

/// What a secret is replaced with.
pub const REDACTED: &[u8] = b"[redacted]";

/// Secrets shorter than this are not scrubbed (they would match ordinary text); the config
/// schema asks for longer keys anyway.
pub const MIN_SECRET_LEN: usize = 8;

/// `text` with every occurrence of each secret replaced by [`REDACTED`]. Borrows when no
/// secret occurs. Secrets are applied longest first, so one that contains another is
/// removed whole.
pub fn scrub_secrets<'a, S: AsRef<[u8]>>(text: &'a [u8], secrets: &[S]) -> Cow<'a, [u8]> {
    Scrubber::new(secrets).scrub(text)
}

/// [`scrub_secrets`] with its searchers built once: the request path keeps one per set of
/// secrets instead of building a searcher per secret per call (issue 16).
#[derive(Clone, Debug, Default)]
pub struct Scrubber {
    /// One searcher per secret of at least [`MIN_SECRET_LEN`] bytes, longest first.
    finders: Vec<memchr::memmem::Finder<'static>>,
}

impl Scrubber {
    /// A scrubber of `secrets` (those shorter than [`MIN_SECRET_LEN`] are left out).
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Self {
        let mut ordered: Vec<&[u8]> = secrets
            .iter()
            .map(AsRef::as_ref)
            .filter(|secret| secret.len() >= MIN_SECRET_LEN)
            .collect();
        // Longest first; a secret configured twice (several upstreams sharing one key) is
        // searched for once.
        ordered.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        ordered.dedup();
        Self {
            finders: ordered
                .into_iter()
                .map(|secret| memchr::memmem::Finder::new(secret).into_owned())
                .collect(),
        }
    }

    /// `text` with every occurrence of each secret replaced by [`REDACTED`]; borrowed when
    /// no secret occurs.
    pub fn scrub<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out: Cow<'a, [u8]> = Cow::Borrowed(text);
        for finder in &self.finders {
            let secret_len = finder.needle().len();
            // Replacing can join the two sides into a new occurrence only if REDACTED plus
            // text forms the secret; loop until none is left.
            while finder.find(&out).is_some() {
                let mut replaced = Vec::with_capacity(out.len());
                let mut last = 0;
                for at in finder.find_iter(&out) {
                    if at < last {
                        continue;
                    }
                    replaced.extend_from_slice(&out[last..at]);
                    replaced.extend_from_slice(REDACTED);
                    last = at + secret_len;
                }
                replaced.extend_from_slice(&out[last..]);
                out = Cow::Owned(replaced);
            }
        }
        out
    }
}

/// [`scrub_secrets`] over a string (the output stays UTF-8: secrets are replaced whole, and
/// a secret is itself UTF-8 text here).
pub fn scrub_secrets_str<'a, S: AsRef<str>>(text: &'a str, secrets: &[S]) -> Cow<'a, str> {
    let bytes: Vec<&[u8]> = secrets.iter().map(|s| s.as_ref().as_bytes()).collect();
    match scrub_secrets(text.as_bytes(), &bytes) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_occurrence_and_borrows_otherwise() {
        let secrets = ["sk-upstream-secret", "short"];
        let text = b"Bearer sk-upstream-secret and sk-upstream-secretsk-upstream-secret; short";
        let out = scrub_secrets(text, &secrets);
        assert_eq!(
            &*out,
            &b"Bearer [redacted] and [redacted][redacted]; short"[..]
        );
        assert!(matches!(
            scrub_secrets(b"nothing here", &secrets),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            scrub_secrets_str("key=sk-upstream-secret", &secrets),
            "key=[redacted]"
        );
    }

    #[test]
    fn a_secret_configured_twice_is_searched_for_once() {
        let scrubber = Scrubber::new(&[
            "sk-shared-upstream-key",
            "sk-shared-upstream-key",
            "sk-other-key-1",
        ]);
        assert_eq!(scrubber.finders.len(), 2);
        assert_eq!(
            &*scrubber.scrub(b"a sk-shared-upstream-key b sk-other-key-1"),
            &b"a [redacted] b [redacted]"[..]
        );
    }
}
