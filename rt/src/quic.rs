//! QUIC endpoints over any [`Runtime`]: quinn does the protocol, the runtime drives the
//! socket and timers. The relay and the daemon build their endpoints here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::Runtime;

/// The ALPN protocol of the relay <-> daemon tunnel (DESIGN.md §4).
pub const TUNNEL_ALPN: &[u8] = b"gate-relay/1";

/// Binds a UDP socket on `addr` and starts a QUIC endpoint on it. With a server
/// configuration it also accepts connections.
pub fn endpoint<R: Runtime>(
    rt: &R,
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        rt.quinn_runtime(),
    )
}

/// A quinn server configuration from a rustls one (which must allow TLS 1.3).
pub fn server_config(
    tls: rustls::ServerConfig,
) -> Result<quinn::ServerConfig, quinn::crypto::rustls::NoInitialCipherSuite> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// A quinn client configuration from a rustls one (which must allow TLS 1.3).
pub fn client_config(
    tls: rustls::ClientConfig,
) -> Result<quinn::ClientConfig, quinn::crypto::rustls::NoInitialCipherSuite> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}
