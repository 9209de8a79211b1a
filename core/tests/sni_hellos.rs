//! Real TLS ClientHellos produced by rustls, for the `sni` tests, benchmark and fuzz corpus.
//!
//! Owns: building ClientHellos with chosen server names, ALPN lists and (optionally) a
//! post-quantum-sized key share, and re-framing a handshake message over several records.
//! Included as a module by `sni_properties.rs`, `sni_alloc.rs` and `benches/sni.rs`; as a test
//! target of its own it holds the (ignored) fuzz-corpus writer and a sanity check.
//!
//! rustls's ring provider has no ML-KEM, so the post-quantum case registers a stand-in key
//! exchange group named X25519MLKEM768 (0x11EC) whose public key is 1216 bytes of filler with
//! an X25519 component, exactly the shape Chrome and Firefox send. It can never complete a
//! handshake; it only has to be written into a ClientHello.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure
#![allow(clippy::disallowed_methods)] // tests take one real `Instant` to start simulated time from

use std::sync::Arc;

use rustls::crypto::{ActiveKeyExchange, CryptoProvider, SharedSecret, SupportedKxGroup};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, NamedGroup, ProtocolVersion, RootCertStore};

/// Size of an X25519MLKEM768 client key share: ML-KEM-768 encapsulation key + X25519 key.
pub const PQ_KEY_SHARE_LEN: usize = 1184 + 32;
const X25519_MLKEM768: NamedGroup = NamedGroup::Unknown(0x11EC);

/// What to put in a generated ClientHello.
#[derive(Debug, Clone)]
pub struct HelloSpec {
    pub server_name: String,
    pub alpn: Vec<Vec<u8>>,
    pub post_quantum: bool,
}

#[derive(Debug)]
struct StandInMlKem;

static STAND_IN_ML_KEM: StandInMlKem = StandInMlKem;

impl SupportedKxGroup for StandInMlKem {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let pub_key = (0..PQ_KEY_SHARE_LEN)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        Ok(Box::new(StandInMlKemShare { pub_key }))
    }

    fn name(&self) -> NamedGroup {
        X25519_MLKEM768
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_3
    }
}

struct StandInMlKemShare {
    pub_key: Vec<u8>,
}

impl ActiveKeyExchange for StandInMlKemShare {
    fn complete(self: Box<Self>, _peer_pub_key: &[u8]) -> Result<SharedSecret, rustls::Error> {
        Err(rustls::Error::General(
            "stand-in ML-KEM group cannot complete".into(),
        ))
    }

    fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
        Some((NamedGroup::X25519, self.pub_key.get(1184..)?))
    }

    fn pub_key(&self) -> &[u8] {
        &self.pub_key
    }

    fn group(&self) -> NamedGroup {
        X25519_MLKEM768
    }
}

/// The bytes a fresh rustls client writes first: its ClientHello, in TLS records.
pub fn rustls_client_hello(spec: &HelloSpec) -> Vec<u8> {
    let mut provider: CryptoProvider = rustls::crypto::ring::default_provider();
    if spec.post_quantum {
        provider.kx_groups.insert(0, &STAND_IN_ML_KEM);
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = spec.alpn.clone();
    let name = ServerName::try_from(spec.server_name.clone()).expect("valid DNS name");
    let mut connection = ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while connection.wants_write() {
        connection.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

/// Total size of [`small_hello`]: browsers built on BoringSSL pad their hellos to about this.
pub const SMALL_HELLO_LEN: usize = 517;
/// Total size of [`pq_hello`]: about what Chrome sends with X25519MLKEM768.
pub const PQ_HELLO_LEN: usize = 1733;

/// A typical small hello (X25519 only, ALPN h2 + http/1.1), padded with a padding extension
/// (RFC 7685) to [`SMALL_HELLO_LEN`] bytes as browsers do; rustls alone writes about 280.
pub fn small_hello() -> Vec<u8> {
    let hello = rustls_client_hello(&HelloSpec {
        server_name: "b7jmwqzx4kd2.relay.example.com".into(),
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        post_quantum: false,
    });
    pad_to(&hello, SMALL_HELLO_LEN)
}

/// A hello with an X25519MLKEM768-sized key share plus its X25519 component, padded to
/// [`PQ_HELLO_LEN`] bytes (rustls alone writes about 1.5 KB; browsers add GREASE and ECH).
pub fn pq_hello() -> Vec<u8> {
    let hello = rustls_client_hello(&HelloSpec {
        server_name: "b7jmwqzx4kd2.relay.example.com".into(),
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        post_quantum: true,
    });
    pad_to(&hello, PQ_HELLO_LEN)
}

/// Re-encodes the one-record hello `records` with a padding extension (type 21) appended so
/// that the record is `total` bytes long (it must grow by at least 4 bytes).
pub fn pad_to(records: &[u8], total: usize) -> Vec<u8> {
    let message = handshake_message(records);
    let grow = total - (5 + message.len());
    add_padding_extension(&message, grow - 4, &[16384])
}

/// Appends a padding extension with `pad_len` zero bytes to a ClientHello handshake message
/// (one that carries an extensions block and no pre_shared_key) and frames the result.
pub fn add_padding_extension(message: &[u8], pad_len: usize, fragments: &[usize]) -> Vec<u8> {
    let session_id_at = 4 + 2 + 32;
    let cipher_suites_at = session_id_at + 1 + usize::from(message[session_id_at]);
    let compression_at = cipher_suites_at
        + 2
        + usize::from(u16::from_be_bytes([
            message[cipher_suites_at],
            message[cipher_suites_at + 1],
        ]));
    let extensions_at = compression_at + 1 + usize::from(message[compression_at]);
    let mut out = message.to_vec();
    out.extend([0, 21]);
    out.extend(u16::try_from(pad_len).unwrap().to_be_bytes());
    out.extend(std::iter::repeat_n(0u8, pad_len));
    let extensions_len = out.len() - extensions_at - 2;
    out[extensions_at..extensions_at + 2]
        .copy_from_slice(&u16::try_from(extensions_len).unwrap().to_be_bytes());
    let body_len = u32::try_from(out.len() - 4).unwrap().to_be_bytes();
    out[1..4].copy_from_slice(&body_len[1..]);
    reframe(&out, fragments)
}

/// Concatenated payloads of the handshake records in `records` (assumed well-formed).
pub fn handshake_message(records: &[u8]) -> Vec<u8> {
    let mut message = Vec::new();
    let mut rest = records;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        message.extend(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    message
}

/// Frames `message` into handshake records whose payload sizes cycle through `fragments`
/// (each at least 1).
pub fn reframe(message: &[u8], fragments: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = message;
    let mut sizes = fragments.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap_or(&16384))
            .clamp(1, 16384)
            .min(rest.len());
        out.extend([22, 3, 1]);
        out.extend(u16::try_from(size).unwrap().to_be_bytes());
        out.extend(&rest[..size]);
        rest = &rest[size..];
    }
    out
}

/// Offset of the host name bytes of `name` inside `hello` (for case mutations).
pub fn find(hello: &[u8], name: &[u8]) -> Option<usize> {
    hello.windows(name.len()).position(|window| window == name)
}

#[test]
fn generated_hellos_have_the_expected_shape() {
    let small = small_hello();
    let pq = pq_hello();
    assert_eq!(small[0], 22);
    assert_eq!(small.len(), SMALL_HELLO_LEN);
    assert_eq!(pq.len(), PQ_HELLO_LEN);
    assert!(find(&pq, &X25519_MLKEM_CODEPOINT).is_some());
}

const X25519_MLKEM_CODEPOINT: [u8; 2] = [0x11, 0xEC];

/// Regenerates the seed corpus: `cargo test -p gate-core --test sni_hellos -- --ignored`.
#[test]
#[ignore = "writes files into fuzz/corpus/sni"]
fn write_fuzz_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/sni");
    std::fs::create_dir_all(&dir).unwrap();
    let small = small_hello();
    let pq = pq_hello();
    let no_sni_alpn_only = {
        // rustls with an IP address sends no SNI.
        let mut provider = rustls::crypto::ring::default_provider();
        provider.kx_groups.truncate(1);
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = ServerName::try_from("192.0.2.7").unwrap();
        let mut connection = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        connection.write_tls(&mut out).unwrap();
        out
    };
    let unpadded = rustls_client_hello(&HelloSpec {
        server_name: "Mixed-Case.Example.com".into(),
        alpn: vec![],
        post_quantum: false,
    });
    let files: [(&str, Vec<u8>); 5] = [
        ("rustls-small-padded.bin", small),
        ("rustls-plain-no-alpn.bin", unpadded),
        ("rustls-pq-x25519mlkem768-padded.bin", pq.clone()),
        (
            "rustls-pq-fragmented-7-records.bin",
            reframe(&handshake_message(&pq), &[256]),
        ),
        ("rustls-no-sni-alpn-h2.bin", no_sni_alpn_only),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
