//! Unit tests over hand-built ClientHellos: every rejection reason, framing edge cases, and
//! the prefix-monotonicity promise. Properties over real rustls hellos live in
//! `core/tests/sni_properties.rs`.

use super::*;

fn u16_be(value: usize) -> [u8; 2] {
    u16::try_from(value).unwrap().to_be_bytes()
}

fn extension(extension_type: u16, body: &[u8]) -> Vec<u8> {
    let mut out = extension_type.to_be_bytes().to_vec();
    out.extend(u16_be(body.len()));
    out.extend(body);
    out
}

fn sni_extension(names: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (name_type, name) in names {
        list.push(*name_type);
        list.extend(u16_be(name.len()));
        list.extend(*name);
    }
    let mut body = u16_be(list.len()).to_vec();
    body.extend(list);
    extension(EXTENSION_SERVER_NAME, &body)
}

fn alpn_extension(names: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for name in names {
        list.push(u8::try_from(name.len()).unwrap());
        list.extend(*name);
    }
    let mut body = u16_be(list.len()).to_vec();
    body.extend(list);
    extension(EXTENSION_ALPN, &body)
}

/// A ClientHello handshake message (header included) with the given extension bytes; `None`
/// omits the extensions block entirely.
fn handshake(extensions: Option<&[u8]>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([7u8; 32]); // random
    body.push(32);
    body.extend([9u8; 32]); // session id
    body.extend(u16_be(4));
    body.extend([0x13, 0x01, 0x13, 0x02]);
    body.extend([1, 0]); // compression: null
    if let Some(extensions) = extensions {
        body.extend(u16_be(extensions.len()));
        body.extend(extensions);
    }
    let mut out = vec![HANDSHAKE_TYPE_CLIENT_HELLO];
    out.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    out.extend(body);
    out
}

/// Frames a handshake message into records of at most `fragment` payload bytes.
fn framed(handshake: &[u8], fragment: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in handshake.chunks(fragment) {
        out.extend([22, 3, 1]);
        out.extend(u16_be(chunk.len()));
        out.extend(chunk);
    }
    out
}

fn hello(extensions: &[Vec<u8>]) -> Vec<u8> {
    framed(&handshake(Some(&extensions.concat())), 16384)
}

fn found(input: &[u8]) -> ClientHelloInfo {
    match parse(input) {
        Ok(Status::Found(info)) => info,
        other => panic!("expected Found, got {other:?}"),
    }
}

fn assert_monotone(input: &[u8]) {
    let full = parse(input);
    for end in 0..input.len() {
        match parse(&input[..end]) {
            Ok(Status::NeedMore) => {}
            settled => assert_eq!(settled, full, "prefix of {end} bytes disagrees"),
        }
    }
}

#[test]
fn finds_name_and_alpn() {
    let input = hello(&[
        extension(0x000a, &[0, 2, 0, 0x1d]),
        sni_extension(&[(0, b"Gate.Example.COM")]),
        alpn_extension(&[b"h2", b"http/1.1"]),
    ]);
    let info = found(&input);
    assert_eq!(info.server_name().unwrap().as_str(), "gate.example.com");
    assert_eq!(
        info.alpn().iter().collect::<Vec<_>>(),
        vec![&b"h2"[..], b"http/1.1"]
    );
    assert_monotone(&input);
}

#[test]
fn every_strict_prefix_needs_more() {
    let input = hello(&[sni_extension(&[(0, b"a.example")])]);
    for end in 0..input.len() {
        assert_eq!(parse(&input[..end]), Ok(Status::NeedMore), "prefix {end}");
    }
}

#[test]
fn fragmented_records_give_the_same_answer() {
    let message = handshake(Some(
        &[
            sni_extension(&[(0, b"frag.example")]),
            alpn_extension(&[b"h2"]),
        ]
        .concat(),
    ));
    let whole = parse(&framed(&message, 16384));
    for fragment in [1, 2, 3, 5, 7, 64, 100] {
        let input = framed(&message, fragment);
        assert_eq!(parse(&input), whole, "fragment size {fragment}");
    }
    assert_monotone(&framed(&message, 3));
}

#[test]
fn trailing_bytes_after_the_hello_are_ignored() {
    let mut input = hello(&[sni_extension(&[(0, b"a.example")])]);
    let expected = parse(&input);
    input.extend([23, 3, 3, 0, 5, 1, 2, 3, 4, 5]);
    assert_eq!(parse(&input), expected);
}

#[test]
fn no_sni_cases() {
    let info = match parse(&framed(&handshake(None), 16384)) {
        Ok(Status::NoSni(info)) => info,
        other => panic!("{other:?}"),
    };
    assert!(info.server_name().is_none() && info.alpn().is_empty());

    let input = hello(&[alpn_extension(&[b"h2"])]);
    match parse(&input) {
        Ok(Status::NoSni(info)) => assert!(info.alpn().contains(b"h2")),
        other => panic!("{other:?}"),
    }
    // A server_name list with only a non-host-name entry.
    let input = hello(&[sni_extension(&[(7, b"whatever")])]);
    assert!(matches!(parse(&input), Ok(Status::NoSni(_))));
}

#[test]
fn record_layer_rejections() {
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\n"),
        Err(SniError::NotHandshake { content_type: b'G' })
    );
    assert_eq!(
        parse(&[22, 2]),
        Err(SniError::BadRecordVersion { version: 0x0200 })
    );
    assert_eq!(
        parse(&[22, 3, 9]),
        Err(SniError::BadRecordVersion { version: 0x0309 })
    );
    assert_eq!(parse(&[22, 3, 1, 0, 0]), Err(SniError::EmptyRecord));
    assert_eq!(
        parse(&[22, 3, 1, 0x40, 1]),
        Err(SniError::RecordTooLong { length: 16385 })
    );
    assert_eq!(
        parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]),
        Err(SniError::UnexpectedHandshakeType { handshake_type: 2 })
    );
    // Interleaving another content type inside the handshake message.
    let message = handshake(Some(&sni_extension(&[(0, b"a.example")])));
    let mut input = framed(&message[..10], 16384);
    input.extend([23, 3, 3, 0, 1, 0]);
    assert_eq!(
        parse(&input),
        Err(SniError::NotHandshake { content_type: 23 })
    );
}

#[test]
fn size_bound() {
    // Declared handshake length that cannot fit.
    assert_eq!(
        parse(&[22, 3, 1, 0, 4, 1, 0, 0x40, 0]),
        Err(SniError::TooLarge)
    );
    // A hello padded just past the bound: error before the bound, not more buffering.
    let padding = vec![0u8; MAX_CLIENT_HELLO_BYTES];
    let message = handshake(Some(&extension(21, &padding[..16300])));
    let input = framed(&message, 16000);
    assert_eq!(parse(&input), Err(SniError::TooLarge));
    assert_monotone(&input);
    // Many small records: the record headers count toward the bound.
    let message = handshake(Some(&extension(21, &padding[..4000])));
    assert_eq!(parse(&framed(&message, 1)), Err(SniError::TooLarge));
    // NeedMore never at or beyond the bound, for any garbage of handshake shape.
    let mut endless = vec![22, 3, 1, 0x40, 0, 1, 0, 0x3f, 0xf0];
    endless.resize(MAX_CLIENT_HELLO_BYTES + 10, 0);
    for end in MAX_CLIENT_HELLO_BYTES - 8..endless.len() {
        assert_ne!(parse(&endless[..end]), Ok(Status::NeedMore), "{end}");
    }
}

#[test]
fn length_inconsistencies() {
    // Extensions block longer than the message.
    let mut message = handshake(Some(&sni_extension(&[(0, b"a.example")])));
    let at = message.len() - sni_extension(&[(0, b"a.example")]).len() - 2;
    message[at + 1] += 1;
    assert!(matches!(
        parse(&framed(&message, 16384)),
        Err(SniError::BadLength(_))
    ));

    // Extension body claiming more than the block holds.
    let mut bad = sni_extension(&[(0, b"a.example")]);
    bad[3] += 5;
    assert!(matches!(parse(&hello(&[bad])), Err(SniError::BadLength(_))));

    // server_name list shorter than its extension.
    let mut bad = sni_extension(&[(0, b"a.example")]);
    bad[5] -= 1;
    assert!(matches!(parse(&hello(&[bad])), Err(SniError::BadLength(_))));

    assert!(matches!(
        parse(&hello(&[extension(0, &[0, 0])])),
        Err(SniError::BadLength(_))
    ));
    assert!(matches!(
        parse(&hello(&[extension(0, &[])])),
        Err(SniError::BadLength(_))
    ));
}

#[test]
fn duplicate_and_too_many_extensions() {
    let input = hello(&[
        extension(0x0a, &[0, 2, 0, 0x1d]),
        extension(0x0a, &[0, 2, 0, 0x17]),
    ]);
    assert_eq!(
        parse(&input),
        Err(SniError::DuplicateExtension {
            extension_type: 0x0a
        })
    );
    let input = hello(&[
        sni_extension(&[(0, b"a.example")]),
        sni_extension(&[(0, b"b.example")]),
    ]);
    assert_eq!(
        parse(&input),
        Err(SniError::DuplicateExtension { extension_type: 0 })
    );

    let many: Vec<Vec<u8>> = (0..=MAX_EXTENSIONS as u16)
        .map(|t| extension(1000 + t, &[]))
        .collect();
    assert_eq!(parse(&hello(&many)), Err(SniError::TooManyExtensions));
    assert!(matches!(
        parse(&hello(&many[..MAX_EXTENSIONS])),
        Ok(Status::NoSni(_))
    ));
}

#[test]
fn server_name_rejections() {
    let reject = |names: &[(u8, &[u8])]| parse(&hello(&[sni_extension(names)]));
    assert_eq!(
        reject(&[(0, b"192.0.2.1")]),
        Err(SniError::InvalidServerName(ServerNameError::IpLiteral))
    );
    assert_eq!(
        reject(&[(0, b"a.example"), (0, b"b.example")]),
        Err(SniError::InvalidServerName(
            ServerNameError::MultipleHostNames
        ))
    );
    assert_eq!(
        reject(&[(0, b"")]),
        Err(SniError::InvalidServerName(ServerNameError::Empty))
    );
    assert_eq!(
        reject(&[(0, &[b'a'; 300])]),
        Err(SniError::InvalidServerName(ServerNameError::TooLong {
            length: 300
        }))
    );
    assert_eq!(
        reject(&[(0, b"bad_name.example")]),
        Err(SniError::InvalidServerName(ServerNameError::InvalidByte {
            byte: b'_'
        }))
    );
    assert_eq!(
        found(&hello(&[sni_extension(&[(0, b"fqdn.example.")])]))
            .server_name()
            .unwrap(),
        "fqdn.example"
    );
}

#[test]
fn alpn_rejections_and_overflow() {
    assert_eq!(
        parse(&hello(&[extension(EXTENSION_ALPN, &[0, 0])])),
        Err(SniError::InvalidAlpn(AlpnError::EmptyList))
    );
    assert_eq!(
        parse(&hello(&[alpn_extension(&[b"h2", b""])])),
        Err(SniError::InvalidAlpn(AlpnError::EmptyProtocol))
    );
    let long = [b'p'; 255];
    let info = found(&hello(&[
        sni_extension(&[(0, b"a.example")]),
        alpn_extension(&[b"h2", &long]),
    ]));
    assert_eq!(info.alpn().iter().collect::<Vec<_>>(), vec![&b"h2"[..]]);
    assert!(!info.alpn().is_complete());
}

#[test]
fn hello_version_checked() {
    let mut message = handshake(Some(&sni_extension(&[(0, b"a.example")])));
    message[4] = 2;
    assert_eq!(
        parse(&framed(&message, 16384)),
        Err(SniError::BadHelloVersion { version: 0x0203 })
    );
}

#[test]
fn alerts_are_tls12_fatal_alert_records() {
    assert_eq!(
        unrecognized_name_alert(),
        &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112]
    );
    assert_eq!(
        internal_error_alert(),
        &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80]
    );
}
