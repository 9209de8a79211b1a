//! Node identity: the Ed25519 key a relay or a daemon keeps in its state directory, the node id
//! derived from it, the self-signed certificate the QUIC tunnel presents, and the rustls
//! verifiers that check the other side's key (DESIGN.md §4).
//!
//! Owns: creating and loading `node.key` (PKCS#8, mode 0600, in a 0700 directory), the node id
//! (lower-case RFC 4648 base32 without padding of the 32-byte public key: 52 characters, a DNS
//! label), the certificate over that key (SAN = node id), the relay's client-certificate
//! verifier (any self-signed Ed25519 certificate; the node id is the identity), the daemon's
//! server-certificate verifier (a pinned relay node id, or WebPKI roots plus an optional extra
//! CA), and the quinn client and server configurations built from them.
//!
//! Must not: trust a certificate for anything but its key, accept any signature scheme other
//! than Ed25519 on a pinned or self-signed peer, or know about relay or daemon logic.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use gate_core::tunnel::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::state::{self, StateError};

/// File name of the key in the state directory.
pub const KEY_FILE_NAME: &str = "node.key";

/// Length of an Ed25519 public key.
const PUBLIC_KEY_LEN: usize = 32;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Errors of identity handling, written for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The key file exists but is not a usable Ed25519 PKCS#8 key.
    #[error("{path} is not an Ed25519 PKCS#8 key ({why}); move it away to create a new identity")]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Generating the key failed (the system random source failed).
    #[error("could not generate an Ed25519 key: {0}")]
    Generate(String),
    /// The key could not be turned into a certificate.
    #[error("could not create the self-signed certificate: {0}")]
    Certificate(String),
    /// rustls or quinn refused the configuration.
    #[error("could not build the TLS configuration: {0}")]
    Tls(String),
}

/// Why a peer certificate is not a node certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerCertError {
    /// Not a parsable X.509 certificate.
    #[error("the peer certificate is not valid X.509: {0}")]
    Malformed(String),
    /// Its key is not Ed25519.
    #[error("the peer certificate's key is not Ed25519")]
    NotEd25519,
    /// It is not signed by its own key.
    #[error("the peer certificate is not self-signed by its Ed25519 key")]
    NotSelfSigned,
    /// Its key is not the pinned one.
    #[error("the peer's node id is {found}, expected the pinned {expected}")]
    WrongNode {
        /// The id found in the certificate.
        found: String,
        /// The pinned id.
        expected: String,
    },
}

/// The node id of an Ed25519 public key: lower-case RFC 4648 base32 without padding.
pub fn node_id_from_public_key(public_key: &[u8; PUBLIC_KEY_LEN]) -> NodeId {
    let text = data_encoding::BASE32_NOPAD
        .encode(public_key)
        .to_ascii_lowercase();
    // 32 bytes always encode to 52 characters of [a-z2-7], which is exactly a node id.
    NodeId::parse(&text).unwrap_or_else(|_| unreachable!("base32 of 32 bytes is a node id"))
}

/// The Ed25519 public key in a SubjectPublicKeyInfo, or `None` for any other key.
fn ed25519_key_from_spki(spki: &[u8]) -> Option<[u8; PUBLIC_KEY_LEN]> {
    let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    key.try_into().ok()
}

/// Checks that `cert` is a self-signed Ed25519 certificate and returns its node id.
pub fn node_id_from_certificate(cert: &CertificateDer<'_>) -> Result<NodeId, PeerCertError> {
    let (rest, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| PeerCertError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PeerCertError::Malformed(
            "trailing bytes after the certificate".into(),
        ));
    }
    let key = ed25519_key_from_spki(parsed.public_key().raw).ok_or(PeerCertError::NotEd25519)?;
    if parsed.signature_algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err(PeerCertError::NotSelfSigned);
    }
    parsed
        .verify_signature(None)
        .map_err(|_| PeerCertError::NotSelfSigned)?;
    Ok(node_id_from_public_key(&key))
}

/// The node id of the peer of an established QUIC connection, from its certificate.
pub fn peer_node_id(connection: &quinn::Connection) -> Option<NodeId> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_from_certificate(certs.first()?).ok()
}

/// A node's Ed25519 key, node id and self-signed certificate.
pub struct Identity {
    pkcs8: Vec<u8>,
    node_id: NodeId,
    certificate: CertificateDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads `<state_dir>/node.key`, creating the directory (0700) and the key (0600) on first
    /// start.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, IdentityError> {
        state::ensure_private_dir(state_dir)?;
        let path = state_dir.join(KEY_FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => Self::from_pkcs8(&bytes).map_err(|why| IdentityError::BadKeyFile {
                path: path.clone(),
                why,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Publish without clobbering: two processes starting at once (`gate serve`
                // and `gate id`) must end up with one key. Write a private temporary file,
                // then hard-link it into place, which fails if another process won.
                let identity = Self::generate()?;
                let tmp = state_dir.join(format!(".{KEY_FILE_NAME}.{}.new", std::process::id()));
                state::write_atomically(&tmp, &identity.pkcs8, 0o600)?;
                let linked = std::fs::hard_link(&tmp, &path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => Ok(identity),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let bytes = std::fs::read(&path).map_err(|source| StateError::Io {
                            action: "read",
                            path: path.clone(),
                            source,
                        })?;
                        Self::from_pkcs8(&bytes).map_err(|why| IdentityError::BadKeyFile {
                            path: path.clone(),
                            why,
                        })
                    }
                    Err(source) => Err(StateError::Io {
                        action: "write",
                        path,
                        source,
                    }
                    .into()),
                }
            }
            Err(source) => Err(StateError::Io {
                action: "read",
                path,
                source,
            }
            .into()),
        }
    }

    /// A fresh identity that lives only in memory (tests, tools).
    pub fn generate() -> Result<Self, IdentityError> {
        let rng = ring::rand::SystemRandom::new();
        let document = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        Self::from_pkcs8(document.as_ref()).map_err(IdentityError::Generate)
    }

    /// An identity from an Ed25519 PKCS#8 document. The error says what is wrong.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        use ring::signature::KeyPair as _;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| e.to_string())?;
        let public: [u8; PUBLIC_KEY_LEN] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| "unexpected public key length".to_owned())?;
        let node_id = node_id_from_public_key(&public);
        let key_der = PrivatePkcs8KeyDer::from(pkcs8);
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key_der, &rcgen::PKCS_ED25519)
            .map_err(|e| e.to_string())?;
        let mut params =
            rcgen::CertificateParams::new(vec![node_id.to_string()]).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node_id.to_string());
        let certificate = params
            .self_signed(&key_pair)
            .map_err(|e| e.to_string())?
            .der()
            .clone();
        Ok(Self {
            pkcs8: pkcs8.to_vec(),
            node_id,
            certificate,
        })
    }

    /// The node id.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The self-signed certificate (SAN = node id).
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.certificate.clone()
    }

    /// The private key, for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.clone()))
    }

    /// A QUIC endpoint on `addr` (UDP) whose stateless-reset key is derived from this
    /// identity's key, so peers of connections from before a restart are told at once that
    /// those connections are gone. With a server configuration it also accepts connections.
    pub fn quic_endpoint<R: crate::Runtime>(
        &self,
        rt: &R,
        addr: std::net::SocketAddr,
        server: Option<quinn::ServerConfig>,
    ) -> io::Result<quinn::Endpoint> {
        super::support::quic_endpoint(rt, addr, server, &self.pkcs8)
    }

    /// The QUIC server configuration of a relay: this identity's certificate, ALPN
    /// `gate-relay/1`, and a mandatory client certificate (any self-signed Ed25519 one; read the
    /// daemon's node id with [`peer_node_id`]).
    pub fn relay_server_config(&self) -> Result<quinn::ServerConfig, IdentityError> {
        self.relay_server_config_with(None)
    }

    /// [`Identity::relay_server_config`], presenting `presented` (a certificate chain and its
    /// key, e.g. issued by a CA for the relay's host name) instead of the node certificate
    /// when given. Daemons that pin the relay's id need the node certificate; daemons that
    /// do not pin check `presented` against WebPKI roots and their extra CA.
    pub fn relay_server_config_with(
        &self,
        presented: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<quinn::ServerConfig, IdentityError> {
        let tls = self.relay_tls_server(presented, crate::quic::TUNNEL_ALPN)?;
        let mut config = crate::quic::server_config(tls).map_err(tls_error)?;
        let mut transport = crate::quic::transport_config();
        // Daemons open only their control stream; the relay opens the forwarded ones.
        transport.max_concurrent_bidi_streams(4u32.into());
        transport.max_concurrent_uni_streams(0u32.into());
        // The relay probes too: a daemon dead without a word (kill -9, power loss) is noticed
        // within the idle timeout even if its own keep-alives are rarer (older daemons).
        transport.keep_alive_interval(Some(TUNNEL_KEEP_ALIVE));
        transport.max_idle_timeout(Some(idle_timeout()));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }

    /// The QUIC client configuration a daemon uses to reach a relay: this identity as client
    /// certificate, ALPN `gate-relay/1`, and the relay checked as `trust` says.
    pub fn relay_client_config(
        &self,
        trust: &RelayTrust,
    ) -> Result<quinn::ClientConfig, IdentityError> {
        let tls = self.relay_tls_client(trust, crate::quic::TUNNEL_ALPN)?;
        let mut config = crate::quic::client_config(tls).map_err(tls_error)?;
        let mut transport = crate::quic::transport_config();
        // Every forwarded HTTPS connection is one relay-opened stream.
        transport.max_concurrent_bidi_streams(16_384u32.into());
        transport.max_concurrent_uni_streams(0u32.into());
        transport.keep_alive_interval(Some(TUNNEL_KEEP_ALIVE));
        transport.max_idle_timeout(Some(idle_timeout()));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }

    /// The TLS configuration a relay terminates daemon tunnels over TCP with
    /// ([`super::tcp`]): the same certificate and client verification as its QUIC endpoint,
    /// ALPN [`super::tcp::TCP_TUNNEL_ALPN`].
    pub fn relay_tcp_server_config(
        &self,
        presented: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        Ok(Arc::new(self.relay_tls_server(
            presented,
            super::tcp::TCP_TUNNEL_ALPN,
        )?))
    }

    /// The TLS configuration a daemon dials a relay's TCP tunnel with: the same client
    /// certificate and relay check (`trust`) as over QUIC, ALPN
    /// [`super::tcp::TCP_TUNNEL_ALPN`].
    pub fn relay_tcp_client_config(
        &self,
        trust: &RelayTrust,
    ) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        Ok(Arc::new(
            self.relay_tls_client(trust, super::tcp::TCP_TUNNEL_ALPN)?,
        ))
    }

    fn relay_tls_server(
        &self,
        presented: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        alpn: &[u8],
    ) -> Result<rustls::ServerConfig, IdentityError> {
        let provider = provider();
        let (chain, key) =
            presented.unwrap_or_else(|| (vec![self.certificate()], self.private_key()));
        let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(Arc::new(NodeCertVerifier::new(&provider, None)))
            .with_single_cert(chain, key)
            .map_err(tls_error)?;
        tls.alpn_protocols = vec![alpn.to_vec()];
        Ok(tls)
    }

    fn relay_tls_client(
        &self,
        trust: &RelayTrust,
        alpn: &[u8],
    ) -> Result<rustls::ClientConfig, IdentityError> {
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match trust {
            RelayTrust::Pinned(node_id) => {
                Arc::new(NodeCertVerifier::new(&provider, Some(node_id.clone())))
            }
            RelayTrust::WebPki { extra_ca } => {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                for ca in extra_ca {
                    roots.add(ca.clone()).map_err(tls_error)?;
                }
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(tls_error)?
            }
        };
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.certificate()], self.private_key())
            .map_err(tls_error)?;
        tls.alpn_protocols = vec![alpn.to_vec()];
        Ok(tls)
    }
}

/// Both ends of a tunnel send a keep-alive this often, so each hears from the other at least
/// twice a second (its pings and the answers to its own).
pub const TUNNEL_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// A tunnel silent this long is dead (quinn closes it; the relay drops the daemon's names
/// from routing, the daemon reconnects). Short, so a killed daemon's clients get
/// `unrecognized_name` within seconds instead of a hang; two and a half keep-alive rounds, so
/// one or two lost packets do not close a healthy tunnel.
pub const TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_millis(2_500);

fn idle_timeout() -> quinn::IdleTimeout {
    quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        u32::try_from(TUNNEL_IDLE_TIMEOUT.as_millis()).unwrap_or(u32::MAX),
    ))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(e: impl fmt::Display) -> IdentityError {
    IdentityError::Tls(e.to_string())
}

/// How a daemon checks a relay's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayTrust {
    /// The relay must present a self-signed Ed25519 certificate with this node id.
    Pinned(NodeId),
    /// The relay's certificate must chain to the WebPKI roots or to one of these extra CAs and
    /// name the host dialled.
    WebPki {
        /// Additional trusted roots (e.g. a private CA).
        extra_ca: Vec<CertificateDer<'static>>,
    },
}

/// A relay address from daemon config: `host:port`, or `<relay-node-id>@host:port` to pin the
/// relay's key (DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddress {
    /// The pinned relay node id, if any.
    pub pinned: Option<NodeId>,
    /// Host name or IP address (brackets removed for IPv6).
    pub host: String,
    /// UDP port of the relay's QUIC endpoint.
    pub port: u16,
}

/// Why a relay address does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{address}` is not a relay address ([<relay-node-id>@]host:port): {why}")]
pub struct RelayAddressError {
    /// The text given.
    pub address: String,
    /// What is wrong.
    pub why: String,
}

impl FromStr for RelayAddress {
    type Err = RelayAddressError;

    /// The grammar is `gate_core::config`'s (one parser for config validation and use).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parsed =
            gate_core::config::parse_relay_address(text).ok_or_else(|| RelayAddressError {
                address: text.chars().take(200).collect(),
                why: "expected host:port or <52-character relay node id>@host:port, \
                      with a port from 1 to 65535"
                    .to_owned(),
            })?;
        RelayAddress::try_from(&parsed)
    }
}

impl TryFrom<&gate_core::config::RelayAddress> for RelayAddress {
    type Error = RelayAddressError;

    fn try_from(parsed: &gate_core::config::RelayAddress) -> Result<Self, Self::Error> {
        let pinned = match &parsed.node_id {
            Some(id) => Some(NodeId::parse(id).map_err(|e| RelayAddressError {
                address: id.clone(),
                why: e.to_string(),
            })?),
            None => None,
        };
        Ok(Self {
            pinned,
            host: parsed.host.clone(),
            port: parsed.port,
        })
    }
}

impl fmt::Display for RelayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = &self.pinned {
            write!(f, "{id}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl RelayAddress {
    /// How to check this relay's certificate: pinned when an id was given, WebPKI (plus
    /// `extra_ca`) otherwise.
    pub fn trust(&self, extra_ca: &[CertificateDer<'static>]) -> RelayTrust {
        match &self.pinned {
            Some(id) => RelayTrust::Pinned(id.clone()),
            None => RelayTrust::WebPki {
                extra_ca: extra_ca.to_vec(),
            },
        }
    }
}

/// Verifies a peer that presents a self-signed Ed25519 certificate: the TLS handshake
/// signature must be made with the certificate's key, and when `pinned` is set, that key must
/// have the pinned node id. Used by the relay for client certificates (nothing pinned) and by
/// the daemon for a pinned relay.
#[derive(Debug)]
pub struct NodeCertVerifier {
    pinned: Option<NodeId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl NodeCertVerifier {
    /// A verifier; `pinned` restricts the accepted node id.
    pub fn new(provider: &CryptoProvider, pinned: Option<NodeId>) -> Self {
        Self {
            pinned,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
        let node_id = node_id_from_certificate(cert).map_err(cert_error)?;
        if let Some(expected) = &self.pinned {
            if *expected != node_id {
                return Err(cert_error(PeerCertError::WrongNode {
                    found: node_id.to_string(),
                    expected: expected.to_string(),
                }));
            }
        }
        Ok(node_id)
    }
}

/// The handshake-signature half of [`ServerCertVerifier`] and [`ClientCertVerifier`], which is
/// the same for both sides: TLS 1.3 only (QUIC), and only Ed25519 signatures, made with the
/// key of the certificate `NodeCertVerifier::check` accepted.
macro_rules! node_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            if dss.scheme != SignatureScheme::ED25519 {
                return Err(rustls::Error::PeerMisbehaved(
                    rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
                ));
            }
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

fn cert_error(e: PeerCertError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
}

impl ServerCertVerifier for NodeCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    node_signature_checks!();
}

impl ClientCertVerifier for NodeCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    node_signature_checks!();

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_base32_of_the_key_and_a_dns_label() {
        let id = node_id_from_public_key(&[0u8; 32]);
        assert_eq!(id.as_str(), "a".repeat(52));
        let id = node_id_from_public_key(&[0xff; 32]);
        assert_eq!(id.as_str().len(), 52);
        assert!(id
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
    }

    #[test]
    fn certificate_yields_the_node_id() {
        let identity = Identity::generate().expect("generate");
        let id = node_id_from_certificate(&identity.certificate()).expect("own certificate");
        assert_eq!(&id, identity.node_id());
    }

    #[test]
    fn a_non_ed25519_certificate_is_refused() {
        let other = rcgen::generate_simple_self_signed(vec!["x".to_owned()]).expect("rcgen");
        assert_eq!(
            node_id_from_certificate(other.cert.der()),
            Err(PeerCertError::NotEd25519)
        );
        assert!(matches!(
            node_id_from_certificate(&CertificateDer::from(vec![1u8, 2, 3])),
            Err(PeerCertError::Malformed(_))
        ));
    }

    #[test]
    fn a_certificate_signed_by_another_key_is_refused() {
        let signer = Identity::generate().expect("generate");
        let subject = Identity::generate().expect("generate");
        let issuer_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(signer.pkcs8.clone()),
            &rcgen::PKCS_ED25519,
        )
        .expect("key");
        let subject_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(subject.pkcs8.clone()),
            &rcgen::PKCS_ED25519,
        )
        .expect("key");
        let issuer_params = rcgen::CertificateParams::new(vec!["issuer".to_owned()]).expect("p");
        let issuer = rcgen::Issuer::new(issuer_params, issuer_key);
        let cert = rcgen::CertificateParams::new(vec!["subject".to_owned()])
            .expect("params")
            .signed_by(&subject_key, &issuer)
            .expect("sign");
        assert_eq!(
            node_id_from_certificate(cert.der()),
            Err(PeerCertError::NotSelfSigned)
        );
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let first = Identity::load_or_create(&state).expect("create");
        let second = Identity::load_or_create(&state).expect("load");
        assert_eq!(first.node_id(), second.node_id());
        let key_mode = std::fs::metadata(state.join(KEY_FILE_NAME))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&state).expect("dir").permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn a_corrupt_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(KEY_FILE_NAME), b"not a key").expect("write");
        let error = Identity::load_or_create(dir.path()).expect_err("corrupt");
        assert!(error.to_string().contains("node.key"), "{error}");
    }

    #[test]
    fn relay_addresses_parse() {
        let id = "b".repeat(52);
        let pinned: RelayAddress = format!("{id}@relay.example.com:31145").parse().expect("ok");
        assert_eq!(
            pinned.pinned.as_ref().map(|n| n.as_str()),
            Some(id.as_str())
        );
        assert_eq!(pinned.host, "relay.example.com");
        assert_eq!(pinned.port, 31145);
        assert_eq!(pinned.to_string(), format!("{id}@relay.example.com:31145"));
        let v6: RelayAddress = "[::1]:443".parse().expect("ok");
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:443");
        for bad in [
            "relay",
            "relay:0",
            "relay:x",
            ":443",
            "short@relay:443",
            "a b:1",
        ] {
            assert!(bad.parse::<RelayAddress>().is_err(), "{bad}");
        }
    }
}
