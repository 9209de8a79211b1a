//! QUIC endpoints over any [`Runtime`]: quinn does the protocol, the runtime drives the
//! socket and timers. The relay and the daemon build their endpoints here, and start their
//! transport configurations from [`transport_config`], so that both ends of the tunnel use the
//! same packet sizes, windows and socket buffers (each setting and why: ARCHITECTURE.md,
//! "QUIC transport settings").

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::Runtime;

/// The ALPN protocol of the relay <-> daemon tunnel (DESIGN.md §4).
pub const TUNNEL_ALPN: &[u8] = b"gate-relay/1";

/// The largest UDP payload this endpoint accepts (the `max_udp_payload_size` transport
/// parameter) and the upper bound of path MTU discovery. quinn's defaults are 1,472 and 1,452
/// (Ethernet). A path only ever uses what discovery proves it carries: on a 1,500-byte
/// Ethernet path that stays at ~1,452; on loopback (MTU 65,536) or jumbo frames it grows to
/// this bound, which cuts the packets (and the per-packet work of both ends) by ~4.5x.
///
/// Why not 65,507: quinn 0.11 hands the kernel up to 10 packets in one segmentation-offload
/// (GSO) send, and one such send must fit in one UDP datagram (65,507 bytes). Larger packets
/// make those sends fail with `EMSGSIZE`, which quinn-udp drops silently; the losses then
/// trip quinn's black-hole detection, which pins the path at 1,200 bytes. 10 x 6,550 fits.
/// `relay/tests/quic_transport.rs` guards this against quinn upgrades.
pub const MAX_UDP_PAYLOAD: u16 = 6_550;

/// Per-stream receive window (bytes a peer may send on one stream beyond what was read).
/// quinn's default is 1.25 MB (100 Mbit/s at 100 ms). 4 MiB keeps one stream at ~330 Mbit/s
/// on a 100 ms path and is far above any loopback or LAN bandwidth-delay product; memory is
/// only used while the reader falls behind.
pub const STREAM_RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;

/// Send window of one connection (bytes in flight over all its streams). quinn's default is
/// 10 MB; 4 streams' worth of the stream window keeps a few concurrent downloads going.
pub const SEND_WINDOW: u64 = 16 * 1024 * 1024;

/// UDP socket buffer size asked for, each direction. The kernel caps it at
/// `net.core.rmem_max` / `wmem_max` (often 208 KiB; 4 MiB on this project's test machines).
/// With datagrams of up to 64 KiB, the default 208 KiB holds only three of them: a burst
/// beyond that is dropped and read as congestion.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// quinn's endpoint configuration with Gate's datagram size; `config` carries the keys
/// (stateless reset, connection ids) the caller chose.
pub fn endpoint_config(mut config: quinn::EndpointConfig) -> quinn::EndpointConfig {
    // In range (1,200..=65,527): cannot fail.
    let _ = config.max_udp_payload_size(MAX_UDP_PAYLOAD);
    config
}

/// The base transport configuration of both ends of the tunnel. Callers add the stream
/// limits, keep-alive and idle timeout of their side.
pub fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    // Packetization layer path MTU discovery (RFC 8899, run by quinn right after the
    // handshake): binary search between the 1,200-byte initial size and this bound, with
    // lost probes not counted as congestion, black-hole detection falling back to 1,200, and
    // a new search every 10 minutes.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    transport.mtu_discovery_config(Some(mtu));
    transport.stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    transport.send_window(SEND_WINDOW);
    transport
}

/// Binds a UDP socket on `addr` and starts a QUIC endpoint on it. With a server
/// configuration it also accepts connections.
pub fn endpoint<R: Runtime>(
    rt: &R,
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    endpoint_with(rt, addr, quinn::EndpointConfig::default(), server)
}

/// [`endpoint`] with the caller's endpoint configuration (its keys); the datagram size of
/// [`endpoint_config`] is applied to it.
pub fn endpoint_with<R: Runtime>(
    rt: &R,
    addr: SocketAddr,
    config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    let socket = bind_udp(addr)?;
    quinn::Endpoint::new(endpoint_config(config), server, socket, rt.quinn_runtime())
}

/// A UDP socket bound to `addr`, with [`SOCKET_BUFFER_BYTES`] asked for both ways (a smaller
/// buffer granted by the kernel is not an error).
fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
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
