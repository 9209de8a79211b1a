//! QUIC endpoints over any [`Runtime`]: quinn does the protocol, the runtime drives the
//! socket and timers. The relay and the daemon build their endpoints here, and start their
//! transport configurations from [`transport_config`], so that both ends of the tunnel use the
//! same packet sizes, windows and socket buffers (each setting and why: ARCHITECTURE.md,
//! "QUIC transport settings").

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::AsyncUdpSocket;

use crate::Runtime;

/// The ALPN protocol of the relay <-> daemon tunnel (DESIGN.md §4).
pub const TUNNEL_ALPN: &[u8] = b"gate-relay/1";

/// The largest UDP payload this endpoint accepts (the `max_udp_payload_size` transport
/// parameter) and the upper bound of path MTU discovery. quinn's defaults are 1,472 and 1,452
/// (Ethernet). A path only ever uses what discovery proves it carries: on a 1,500-byte
/// Ethernet path that stays at ~1,452; on loopback (MTU 65,536) or jumbo frames it grows to
/// this bound, which cuts the packets (and the per-packet work of both ends) by ~11x.
///
/// Measured on loopback (`bench/relay.sh`, one download through the relay): 6,550-byte
/// packets cost the relay ~1.0 CPU s/GiB and the daemon side ~2 s/GiB; 16,376 cost 0.6 and
/// ~1.2. 32,753 and 65,507 cost the sender about the same and the relay more (0.7-0.9; with
/// one packet per datagram, receive offload has nothing to merge). 4 x 16,376 fill one GSO
/// send.
/// quinn batches up to 10 packets in one send, more than one datagram holds at this size:
/// [`SplitSocket`] cuts such batches. `relay/tests/quic_transport.rs` checks a bulk transfer
/// keeps the packets at this size.
pub const MAX_UDP_PAYLOAD: u16 = 16_376;

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
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(SplitSends(rt.quinn_runtime()));
    quinn::Endpoint::new(endpoint_config(config), server, socket, runtime)
}

/// The largest UDP payload of one IPv4 datagram; one segmentation-offload (GSO) send must fit
/// in it.
pub const MAX_DATAGRAM: usize = 65_507;

/// The runtime's quinn glue with [`SplitSocket`] around every UDP socket.
#[derive(Debug)]
struct SplitSends(Arc<dyn quinn::Runtime>);

impl quinn::Runtime for SplitSends {
    fn new_timer(&self, at: std::time::Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        self.0.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.0.spawn(future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(SplitSocket(self.0.wrap_udp_socket(socket)?)))
    }

    fn now(&self) -> std::time::Instant {
        self.0.now()
    }
}

/// A UDP socket that splits a batch of packets too large for one GSO send into several sends.
///
/// quinn 0.11 batches up to 10 packets of the path's current size in one transmit, whatever
/// their total; the kernel refuses a GSO send over [`MAX_DATAGRAM`] (`EMSGSIZE`, which
/// quinn-udp drops silently). Splitting lets the path's packets grow to any size up to
/// [`MAX_UDP_PAYLOAD`] while a 1,500-byte path keeps its 10-packet batches.
///
/// If a later part finds the socket buffer full, the whole transmit is reported as
/// `WouldBlock` and quinn sends it again: the parts already sent arrive twice, and the peer
/// drops the duplicate packets (QUIC packet numbers are never reused).
#[derive(Debug)]
pub struct SplitSocket(Arc<dyn AsyncUdpSocket>);

impl SplitSocket {
    /// Sends `transmit` through `send`, in parts of at most [`MAX_DATAGRAM`] bytes cut at
    /// packet boundaries.
    pub fn send_split(
        transmit: &quinn::udp::Transmit,
        mut send: impl FnMut(&quinn::udp::Transmit) -> io::Result<()>,
    ) -> io::Result<()> {
        let size = match transmit.segment_size {
            Some(size) if size > 0 && transmit.contents.len() > MAX_DATAGRAM => size,
            _ => return send(transmit),
        };
        let per_send = (MAX_DATAGRAM / size).max(1) * size;
        for part in transmit.contents.chunks(per_send) {
            send(&quinn::udp::Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents: part,
                segment_size: (part.len() > size).then_some(size),
                src_ip: transmit.src_ip,
            })?;
        }
        Ok(())
    }
}

impl AsyncUdpSocket for SplitSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        Self::send_split(transmit, |part| self.0.try_send(part))
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn transmit(contents: &[u8], segment_size: Option<usize>) -> quinn::udp::Transmit<'_> {
        quinn::udp::Transmit {
            destination: SocketAddr::from(([127, 0, 0, 1], 9)),
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        }
    }

    /// The parts `send_split` hands on: (length, segment size).
    fn parts(len: usize, segment: Option<usize>) -> Vec<(usize, Option<usize>)> {
        let contents = vec![7u8; len];
        let mut seen = Vec::new();
        SplitSocket::send_split(&transmit(&contents, segment), |t| {
            seen.push((t.contents.len(), t.segment_size));
            Ok(())
        })
        .expect("sent");
        seen
    }

    #[test]
    fn a_batch_that_fits_one_datagram_goes_out_whole() {
        assert_eq!(parts(10 * 1_452, Some(1_452)), vec![(14_520, Some(1_452))]);
        assert_eq!(
            parts(4 * 16_376, Some(16_376)),
            vec![(65_504, Some(16_376))]
        );
        assert_eq!(parts(900, None), vec![(900, None)]);
    }

    #[test]
    fn a_larger_batch_is_cut_at_packet_boundaries() {
        let size = usize::from(MAX_UDP_PAYLOAD);
        // 10 full packets and a short last one: 4 + 4 + 2 full, then the short one alone.
        let len = 10 * size + 100;
        assert_eq!(
            parts(len, Some(size)),
            vec![
                (4 * size, Some(size)),
                (4 * size, Some(size)),
                (2 * size + 100, Some(size)),
            ]
        );
        let one_per_send = parts(3 * 40_000, Some(40_000));
        assert_eq!(one_per_send, vec![(40_000, None); 3]);
        for (len, _) in parts(10 * 9_000 + 1, Some(9_000)) {
            assert!(len <= MAX_DATAGRAM);
        }
    }

    #[test]
    fn a_full_socket_buffer_reports_the_whole_transmit_blocked() {
        let contents = vec![0u8; 10 * 16_376];
        let mut calls = 0;
        let result = SplitSocket::send_split(&transmit(&contents, Some(16_376)), |_| {
            calls += 1;
            if calls == 2 {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        assert_eq!(result.map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
        assert_eq!(calls, 2, "nothing is sent after the blocked part");
    }
}
