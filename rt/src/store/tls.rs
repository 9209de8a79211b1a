//! TLS to the shared stores (PostgreSQL and Redis) through rustls, the TLS stack Gate already
//! uses (no OpenSSL, no second stack).
//!
//! Owns: the trust settings of a store connection ([`StoreTls`]: which roots, whether the
//! chain and the host name are checked), the handshake over any [`ByteStream`], errors that
//! say which setting to change, and the `TlsConnect` glue tokio-postgres takes
//! ([`PgTlsConnect`]), with `tls-server-end-point` channel binding so SCRAM-SHA-256-PLUS ties
//! the login to the TLS session. Must not: know URLs or passwords (callers parse their URLs
//! and pass the host and the options).
//!
//! Roots: a PEM file the URL names (`sslrootcert=PATH` for PostgreSQL, `ca=PATH` for Redis),
//! or else the system's roots: Mozilla's (`webpki-roots`, what Gate's upstream HTTPS client
//! trusts) plus the operating system's bundle (`SSL_CERT_FILE`, else
//! `/etc/ssl/certs/ca-certificates.crt` when present), so a CA an operator added to the
//! system store is trusted too.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ByteStream;

/// The operating system's CA bundle on Debian and most Linux distributions.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing (PostgreSQL's `sslmode=require`/`prefer` without a root certificate): the
    /// session is encrypted, the server is not authenticated.
    Nothing,
    /// The chain up to a trusted root, not the host name (`sslmode=verify-ca`).
    Chain,
    /// The chain and the host name (`sslmode=verify-full`, `rediss://`).
    Full,
}

/// Which store a setting belongs to, for the hints in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `[store] url`: options `sslmode`, `sslrootcert`.
    Postgres,
    /// `[store] redis_url`: option `ca`.
    Redis,
}

impl StoreKind {
    fn root_option(self) -> &'static str {
        match self {
            StoreKind::Postgres => "sslrootcert=PATH",
            StoreKind::Redis => "?ca=PATH",
        }
    }
}

/// The TLS settings of one store connection: a client configuration and the name the
/// server's certificate is checked against (also sent as SNI when it is a DNS name).
#[derive(Clone)]
pub struct StoreTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    host: String,
    verify: Verify,
    roots: Option<PathBuf>,
    kind: StoreKind,
}

impl fmt::Debug for StoreTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreTls")
            .field("host", &self.host)
            .field("verify", &self.verify)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// Reads the certificates of a PEM file (one or more `BEGIN CERTIFICATE` blocks).
pub fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let bundle = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SYSTEM_BUNDLE));
    if let Ok(certs) = read_pem_certificates(&bundle) {
        // Entries a parser of the bundle does not take are skipped, like OpenSSL does.
        let _ = roots.add_parsable_certificates(certs);
    }
    roots
}

impl StoreTls {
    /// Settings for a connection to `host` (a DNS name or an IP address) of a `kind` store,
    /// checking `verify` against the certificates of `roots` (PEM), or the system's roots.
    /// The error says what is wrong with the file or the host.
    pub fn new(
        kind: StoreKind,
        host: &str,
        verify: Verify,
        roots: Option<&Path>,
    ) -> Result<Self, String> {
        let server_name = ServerName::try_from(host.to_owned()).map_err(|_| {
            format!("{host:?} is not a host name or IP address a TLS certificate can name")
        })?;
        let store = match roots {
            Some(path) => {
                let mut store = rustls::RootCertStore::empty();
                for cert in read_pem_certificates(path)? {
                    store.add(cert).map_err(|e| {
                        format!("{}: a certificate in it is not usable: {e}", path.display())
                    })?;
                }
                store
            }
            None => system_roots(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
            .build()
            .map_err(|e| format!("the root certificates are not usable: {e}"))?;
        let verifier = Arc::new(StoreVerifier {
            webpki,
            verify,
            provider: provider.clone(),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            server_name,
            host: host.to_owned(),
            verify,
            roots: roots.map(Path::to_path_buf),
            kind,
        })
    }

    /// How much of the server's certificate is checked.
    pub fn verify(&self) -> Verify {
        self.verify
    }

    /// Runs the TLS handshake over `stream`. The error says what failed and which setting
    /// to change (the CA file, the host name, the mode).
    pub async fn handshake(
        &self,
        stream: Box<dyn ByteStream>,
    ) -> Result<tokio_rustls::client::TlsStream<Box<dyn ByteStream>>, String> {
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), stream)
            .await
            .map_err(|e| self.explain(&e))
    }

    /// A handshake error in words, with what to change.
    pub fn explain(&self, error: &io::Error) -> String {
        let roots = match &self.roots {
            Some(path) => format!("the CA certificates in {}", path.display()),
            None => "the system's root certificates".to_owned(),
        };
        let option = self.kind.root_option();
        let tls = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls {
            Some(rustls::Error::InvalidCertificate(cert)) => match cert {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                    "TLS: the server's certificate is not signed by a CA this client trusts \
                     ({roots}); give the CA certificate (PEM) that signed it with {option}"
                ),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    let other = match self.kind {
                        StoreKind::Postgres => {
                            ", or check only the CA with sslmode=verify-ca".to_owned()
                        }
                        StoreKind::Redis => String::new(),
                    };
                    format!(
                        "TLS: the server's certificate is not valid for the host name {}; \
                         connect with a name the certificate was issued for{other}",
                        self.host
                    )
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "TLS: the server's certificate has expired; renew it on the server".to_owned()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "TLS: the server's certificate is not valid yet; check the clocks".to_owned()
                }
                other => format!("TLS: the server's certificate was refused: {other:?}"),
            },
            Some(other) => {
                format!("TLS handshake failed: {other} (does the server serve TLS on this port?)")
            }
            None => {
                format!("TLS handshake failed: {error} (does the server serve TLS on this port?)")
            }
        }
    }
}

/// Checks what [`Verify`] asks for; the handshake's signatures are always checked (they bind
/// the session to the certificate's key).
#[derive(Debug)]
struct StoreVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    verify: Verify,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for StoreVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.verify {
            Verify::Nothing => Ok(ServerCertVerified::assertion()),
            Verify::Full => self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            Verify::Chain => match self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                // The chain was good; only the name did not match, which verify-ca ignores.
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The `tls-server-end-point` channel binding (RFC 5929): the hash of the server's
/// certificate with its signature's hash (SHA-256 for MD5 and SHA-1). `None` for algorithms
/// whose hash is not fixed by the OID (RSASSA-PSS, Ed25519): the login then goes without
/// channel binding, as libpq does.
pub fn tls_server_end_point(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let algorithm = match parsed.signature_algorithm.algorithm.to_id_string().as_str() {
        // md5, sha1, sha256 with RSA; ecdsa with sha1, sha256.
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2" => &ring::digest::SHA256,
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => &ring::digest::SHA384,
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => &ring::digest::SHA512,
        _ => return None,
    };
    Some(
        ring::digest::digest(algorithm, cert.as_ref())
            .as_ref()
            .to_vec(),
    )
}

/// `%XX` escapes of a URL's query value decoded (invalid escapes are kept as they are).
pub(crate) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// tokio-postgres's `TlsConnect` over our streams: `None` when TLS is off (the caller sets
/// `sslmode=disable` then, so it is never asked to connect).
#[derive(Clone, Debug)]
pub struct PgTlsConnect(pub Option<StoreTls>);

/// Why the TLS handshake with PostgreSQL failed, in words ([`StoreTls::explain`]).
#[derive(Debug)]
pub struct TlsFailure(pub String);

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsFailure {}

/// The stream tokio-postgres is given: a named type, not `Box<dyn ByteStream>` itself
/// (a trait object in `TlsConnect`'s parameter makes callers' futures fail the
/// higher-ranked `Send` check).
pub struct PgStream(pub Box<dyn ByteStream>);

impl AsyncRead for PgStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl tokio_postgres::tls::TlsConnect<PgStream> for PgTlsConnect {
    type Stream = PgTlsStream;
    type Error = TlsFailure;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream, TlsFailure>> + Send>>;

    fn connect(self, stream: PgStream) -> Self::Future {
        Box::pin(async move {
            let Some(tls) = self.0 else {
                return Err(TlsFailure("TLS is turned off (sslmode=disable)".to_owned()));
            };
            let stream = tls.handshake(stream.0).await.map_err(TlsFailure)?;
            let binding = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(tls_server_end_point);
            Ok(PgTlsStream { stream, binding })
        })
    }
}

/// A TLS session with PostgreSQL.
pub struct PgTlsStream {
    stream: tokio_rustls::client::TlsStream<Box<dyn ByteStream>>,
    binding: Option<Vec<u8>>,
}

impl tokio_postgres::tls::TlsStream for PgTlsStream {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        match &self.binding {
            Some(hash) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(hash.clone()),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
