//! Properties of `gate_core::sni::parse` over real ClientHellos written by rustls (random
//! server names in random case, random ALPN lists, with and without a post-quantum-sized key
//! share), re-split and re-framed at random, truncated and corrupted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

#[path = "sni_hellos.rs"]
mod hellos;

use gate_core::sni::{self, AlpnList, SniError, Status, MAX_CLIENT_HELLO_BYTES};
use hellos::{add_padding_extension, handshake_message, reframe, rustls_client_hello, HelloSpec};
use proptest::prelude::*;

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,12}",
        "[a-z0-9][a-z0-9-]{0,20}[a-z0-9]",
        "[a-z0-9][a-z0-9-]{59,61}[a-z0-9]",
    ]
}

/// Valid DNS names whose last label starts with a letter (so rustls does not read an IP).
fn dns_name() -> impl Strategy<Value = String> {
    (prop::collection::vec(label(), 0..4), "[a-z][a-z0-9]{0,10}")
        .prop_map(|(labels, top)| {
            let mut name = labels.join(".");
            if !name.is_empty() {
                name.push('.');
            }
            name.push_str(&top);
            name
        })
        .prop_filter("at most 253 bytes", |name| name.len() <= 253)
}

fn alpn_list() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 1..=24), 0..=8)
}

/// A real hello, the spec it came from, and the (upper-cased at random) name it carries.
#[derive(Debug, Clone)]
struct Generated {
    bytes: Vec<u8>,
    spec: HelloSpec,
}

fn generated_hello() -> impl Strategy<Value = Generated> {
    (
        dns_name(),
        alpn_list(),
        any::<bool>(),
        any::<u64>(),
        0usize..400,
    )
        .prop_map(|(server_name, alpn, post_quantum, case_mask, padding)| {
            let spec = HelloSpec {
                server_name,
                alpn,
                post_quantum,
            };
            let mut bytes = rustls_client_hello(&spec);
            upper_case_name(&mut bytes, spec.server_name.as_bytes(), case_mask);
            if post_quantum {
                // Browsers add GREASE/ECH on top; make sure the hello is well past 1.5 KB.
                let padding = padding + 1520usize.saturating_sub(bytes.len() + 4);
                bytes = add_padding_extension(&handshake_message(&bytes), padding, &[16384]);
                assert!(bytes.len() > 1500, "PQ hello of {} bytes", bytes.len());
            }
            Generated { bytes, spec }
        })
}

/// Upper-cases letters of the host name inside the server_name extension, by `mask` bits.
fn upper_case_name(hello: &mut [u8], name: &[u8], mask: u64) {
    let len = u16::try_from(name.len()).unwrap();
    let mut needle = vec![0, 0];
    needle.extend((len + 5).to_be_bytes());
    needle.extend((len + 3).to_be_bytes());
    needle.push(0);
    needle.extend(len.to_be_bytes());
    needle.extend(name);
    let at = hellos::find(hello, &needle).expect("server_name extension present") + 9;
    for (i, byte) in hello[at..at + name.len()].iter_mut().enumerate() {
        if mask >> (i % 64) & 1 == 1 {
            byte.make_ascii_uppercase();
        }
    }
}

fn expected(spec: &HelloSpec) -> (String, AlpnList) {
    let alpn = AlpnList::from_protocols(spec.alpn.iter().map(Vec::as_slice));
    (spec.server_name.to_ascii_lowercase(), alpn)
}

fn assert_found(status: &Status, spec: &HelloSpec) {
    let Status::Found(info) = status else {
        panic!("expected Found, got {status:?}");
    };
    let (name, alpn) = expected(spec);
    let parsed = info.server_name().unwrap();
    assert_eq!(parsed.as_str(), name);
    assert!(!parsed.as_bytes().iter().any(u8::is_ascii_uppercase));
    assert_eq!(info.alpn(), &alpn);
}

/// Chunk sizes for simulating TCP reads.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..700, 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// One piece: Found with the lower-cased name and the ALPN list rustls sent.
    /// Any split: NeedMore after every chunk until the last, then the identical answer.
    #[test]
    fn every_split_agrees_with_one_piece(hello in generated_hello(), chunks in chunk_sizes()) {
        let whole = sni::parse(&hello.bytes).unwrap();
        assert_found(&whole, &hello.spec);

        let mut received = 0;
        let mut sizes = chunks.iter().cycle();
        while received < hello.bytes.len() {
            received = (received + sizes.next().unwrap()).min(hello.bytes.len());
            let status = sni::parse(&hello.bytes[..received]).unwrap();
            if received < hello.bytes.len() {
                prop_assert_eq!(status, Status::NeedMore);
            } else {
                prop_assert_eq!(&status, &whole);
            }
        }
    }

    /// Every strict prefix (a truncated hello) is NeedMore, never Found or an error.
    #[test]
    fn truncated_input_is_never_found(hello in generated_hello()) {
        for end in 0..hello.bytes.len() {
            prop_assert_eq!(sni::parse(&hello.bytes[..end]), Ok(Status::NeedMore), "prefix {}", end);
        }
    }

    /// The same handshake message over several records of random sizes gives the same answer,
    /// including when the records themselves arrive split.
    #[test]
    fn reframing_over_records_agrees(
        hello in generated_hello(),
        fragments in prop::collection::vec(1usize..600, 1..6),
        chunks in chunk_sizes(),
    ) {
        let whole = sni::parse(&hello.bytes).unwrap();
        let message = handshake_message(&hello.bytes);
        let reframed = reframe(&message, &fragments);
        let headers = reframed.len() - message.len();
        if reframed.len() > MAX_CLIENT_HELLO_BYTES {
            prop_assert_eq!(sni::parse(&reframed), Err(SniError::TooLarge));
            return Ok(());
        }
        prop_assert!(headers >= 5);
        prop_assert_eq!(&sni::parse(&reframed).unwrap(), &whole);
        let mut received = 0;
        let mut sizes = chunks.iter().cycle();
        while received < reframed.len() {
            received = (received + sizes.next().unwrap()).min(reframed.len());
            let status = sni::parse(&reframed[..received]).unwrap();
            if received < reframed.len() {
                prop_assert_eq!(status, Status::NeedMore);
            }
        }
    }

    /// Corrupting bytes of a real hello never panics, and the answer settles monotonically:
    /// once a prefix gets an error or a result, every longer prefix gets the same one.
    #[test]
    fn corrupted_hellos_settle_monotonically(
        hello in generated_hello(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = hello.bytes.clone();
        for (index, value) in flips {
            let at = index.index(bytes.len());
            bytes[at] = value;
        }
        assert_monotone(&bytes)?;
    }

    /// Garbage (random bytes, or random bytes behind a plausible handshake header) never
    /// panics, settles monotonically, and never asks for more at or beyond the bound.
    #[test]
    fn garbage_errors_or_needs_more_within_the_bound(
        header in prop_oneof![Just(vec![]), Just(vec![22u8, 3, 1]), Just(vec![22u8, 3, 3, 0x40, 0, 1, 0, 0x3f])],
        tail in prop::collection::vec(any::<u8>(), 0..3000),
    ) {
        let mut bytes = header;
        bytes.extend(tail);
        assert_monotone(&bytes)?;
    }

    /// Inputs at least as long as the bound always get a final answer.
    #[test]
    fn input_at_the_bound_is_never_need_more(
        header in prop_oneof![Just(vec![22u8, 3, 1, 0x40, 0]), Just(vec![22u8, 3, 3, 0x3f, 0xff, 1, 0, 0x3f, 0xfb])],
        fill in any::<u8>(),
        extra in 0usize..64,
    ) {
        let mut bytes = header;
        bytes.resize(MAX_CLIENT_HELLO_BYTES + extra, fill);
        prop_assert_ne!(sni::parse(&bytes), Ok(Status::NeedMore));
    }
}

/// Checks prefixes at a spread of lengths (all of them for short inputs).
fn assert_monotone(bytes: &[u8]) -> Result<(), TestCaseError> {
    let full = sni::parse(bytes);
    if full == Ok(Status::NeedMore) {
        prop_assert!(bytes.len() < MAX_CLIENT_HELLO_BYTES);
    }
    let step = (bytes.len() / 400).max(1);
    for end in (0..bytes.len()).step_by(step) {
        match sni::parse(&bytes[..end]) {
            Ok(Status::NeedMore) => {}
            settled => prop_assert_eq!(&settled, &full, "prefix {} of {}", end, bytes.len()),
        }
    }
    Ok(())
}
