//! The one outbound HTTP client path of Gate, for both runtimes: hyper's pooled client
//! over a connector that resolves and connects through the [`Runtime`], with a connect
//! timeout, and TLS through rustls (Mozilla's roots from `webpki-roots`, plus any extra
//! roots the caller trusts).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;

use crate::hyper_glue::{HyperExecutor, HyperTimer};
use crate::{ByteStream, Runtime};

/// Settings of the outbound client.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Time allowed for resolving, connecting and the TLS handshake, per attempt.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// Extra trusted root certificates (DER), on top of the Mozilla roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 1024,
            extra_roots: Vec::new(),
        }
    }
}

/// A pooled HTTP/1.1 + HTTP/2 client with request bodies of type `B`.
pub type HttpClient<R, B> = Client<Connector<R>, B>;

/// Builds the pooled client.
pub fn http_client<R, B>(rt: R, settings: &ClientSettings) -> HttpClient<R, B>
where
    R: Runtime,
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connector = Connector::new(rt.clone(), settings);
    Client::builder(HyperExecutor(rt.clone()))
        .timer(HyperTimer(rt.clone()))
        .pool_timer(HyperTimer(rt))
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .build(connector)
}

/// The rustls client configuration Gate uses for outbound TLS.
pub fn tls_client_config(
    extra_roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        if let Err(e) = roots.add(cert.clone()) {
            tracing::warn!(error = %e, "ignoring an extra root certificate that does not parse");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        // The ring provider always supports the default versions; keep a sane fallback.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Why an outbound connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("URL {0} has no host")]
    NoHost(String),
    #[error("unsupported URL scheme {0:?} (use http or https)")]
    Scheme(String),
    #[error("could not resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolved to no addresses")]
    NoAddresses { host: String },
    #[error("connecting to {host} timed out after {timeout:?}")]
    Timeout { host: String, timeout: Duration },
    #[error("could not connect to {host}: {source}")]
    Connect { host: String, source: io::Error },
    #[error("TLS handshake with {host} failed: {source}")]
    Tls { host: String, source: io::Error },
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// Connects through the runtime, with TLS for `https` URLs.
#[derive(Clone)]
pub struct Connector<R> {
    rt: R,
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

impl<R: Runtime> Connector<R> {
    /// A connector with the given settings.
    pub fn new(rt: R, settings: &ClientSettings) -> Self {
        let config = tls_client_config(&settings.extra_roots, &[b"h2", b"http/1.1"]);
        Self {
            rt,
            tls: tokio_rustls::TlsConnector::from(config),
            connect_timeout: settings.connect_timeout,
        }
    }

    pub(crate) async fn connect(self, uri: Uri) -> Result<ClientIo<R::TcpStream>, ConnectError> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(ConnectError::Scheme(other.unwrap_or("").to_owned())),
        };
        let host = uri
            .host()
            .ok_or_else(|| ConnectError::NoHost(uri.to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let timeout = self.connect_timeout;
        let attempt = async {
            let addrs =
                match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => vec![std::net::SocketAddr::new(ip, port)],
                    Err(_) => self.rt.resolve(&host, port).await.map_err(|source| {
                        ConnectError::Resolve {
                            host: host.clone(),
                            source,
                        }
                    })?,
                };
            let mut last_err = None;
            let mut tcp = None;
            for addr in addrs {
                match self.rt.connect_tcp(addr).await {
                    Ok(s) => {
                        tcp = Some(s);
                        break;
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            let tcp = match (tcp, last_err) {
                (Some(s), _) => s,
                (None, Some(source)) => {
                    return Err(ConnectError::Connect {
                        host: host.clone(),
                        source,
                    })
                }
                (None, None) => return Err(ConnectError::NoAddresses { host: host.clone() }),
            };
            if !https {
                return Ok(ClientIo {
                    inner: TokioIo::new(MaybeTls::Plain(tcp)),
                    h2: false,
                });
            }
            let name = ServerName::try_from(host.clone())
                .map_err(|_| ConnectError::ServerName(host.clone()))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|source| ConnectError::Tls {
                    host: host.clone(),
                    source,
                })?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok(ClientIo {
                inner: TokioIo::new(MaybeTls::Tls(Box::new(tls))),
                h2,
            })
        };
        match crate::timeout(&self.rt, timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout { host, timeout }),
        }
    }
}

impl<R: Runtime> tower_service::Service<Uri> for Connector<R> {
    type Response = ClientIo<R::TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// A plain or TLS stream.
pub enum MaybeTls<T> {
    Plain(T),
    Tls(Box<TlsStream<T>>),
}

impl<T: ByteStream> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: ByteStream> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connection type the pooled client uses.
pub struct ClientIo<T> {
    inner: TokioIo<MaybeTls<T>>,
    h2: bool,
}

impl<T> ClientIo<T> {
    /// TLS negotiated HTTP/2 (ALPN).
    pub(crate) fn is_h2(&self) -> bool {
        self.h2
    }
}

impl<T: ByteStream> Connection for ClientIo<T> {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl<T: ByteStream> hyper::rt::Read for ClientIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: ByteStream> hyper::rt::Write for ClientIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
