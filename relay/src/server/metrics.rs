//! The relay's counters: kept as prometheus-client metrics (as the daemon's are), snapshotted
//! for [`super::RunningRelay::stats`] and the status file, and served in the Prometheus text
//! format by the optional metrics listener, through hyper ([`gate_rt::hyper_glue`]).
//!
//! Must not: listen anywhere but the address it is given (loopback by default), or expose
//! names, addresses or anything about a daemon beyond counts.

use super::*;

/// Counters exported by the metrics listener and [`RunningRelay::stats`].
#[derive(Debug, Default)]
pub(super) struct Metrics {
    pub(super) https_accepted: AtomicU64,
    pub(super) https_open: AtomicU64,
    pub(super) forwarded: AtomicU64,
    pub(super) forwarded_open: AtomicU64,
    pub(super) unknown_name: AtomicU64,
    pub(super) no_sni: AtomicU64,
    pub(super) invalid_hello: AtomicU64,
    pub(super) handshake_timeouts: AtomicU64,
    pub(super) over_limit: AtomicU64,
    pub(super) daemon_unreachable: AtomicU64,
    pub(super) daemons_registered: AtomicU64,
    pub(super) bytes_to_daemons: AtomicU64,
    pub(super) bytes_to_clients: AtomicU64,
}

/// A snapshot of the relay's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    /// HTTPS connections accepted since start.
    pub https_accepted: u64,
    /// HTTPS connections open now (reading the ClientHello or forwarded).
    pub https_open: u64,
    /// Connections forwarded to a daemon since start.
    pub forwarded: u64,
    /// Forwarded connections open now.
    pub forwarded_open: u64,
    /// Connections answered `unrecognized_name` for an unknown or offline name.
    pub unknown_name: u64,
    /// ClientHellos without a server name.
    pub no_sni: u64,
    /// Connections that did not start with a valid ClientHello.
    pub invalid_hello: u64,
    /// Connections cut off at the handshake timeout.
    pub handshake_timeouts: u64,
    /// Connections refused by a connection limit.
    pub over_limit: u64,
    /// Connections whose daemon could not be reached.
    pub daemon_unreachable: u64,
    /// Daemon connections registered now.
    pub daemons_registered: u64,
}

impl Metrics {
    pub(super) fn snapshot(&self) -> RelayStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayStats {
            https_accepted: get(&self.https_accepted),
            https_open: get(&self.https_open),
            forwarded: get(&self.forwarded),
            forwarded_open: get(&self.forwarded_open),
            unknown_name: get(&self.unknown_name),
            no_sni: get(&self.no_sni),
            invalid_hello: get(&self.invalid_hello),
            handshake_timeouts: get(&self.handshake_timeouts),
            over_limit: get(&self.over_limit),
            daemon_unreachable: get(&self.daemon_unreachable),
            daemons_registered: get(&self.daemons_registered),
        }
    }

    /// Prometheus text exposition format.
    pub(super) fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let rows: [(&str, &str, &str, u64); 13] = [
            (
                "gate_relay_https_accepted_total",
                "counter",
                "HTTPS connections accepted",
                get(&self.https_accepted),
            ),
            (
                "gate_relay_https_open",
                "gauge",
                "HTTPS connections open",
                get(&self.https_open),
            ),
            (
                "gate_relay_forwarded_total",
                "counter",
                "connections forwarded to daemons",
                get(&self.forwarded),
            ),
            (
                "gate_relay_forwarded_open",
                "gauge",
                "forwarded connections open",
                get(&self.forwarded_open),
            ),
            (
                "gate_relay_unknown_name_total",
                "counter",
                "connections for unknown or offline names",
                get(&self.unknown_name),
            ),
            (
                "gate_relay_no_sni_total",
                "counter",
                "ClientHellos without a server name",
                get(&self.no_sni),
            ),
            (
                "gate_relay_invalid_hello_total",
                "counter",
                "connections without a valid ClientHello",
                get(&self.invalid_hello),
            ),
            (
                "gate_relay_handshake_timeouts_total",
                "counter",
                "connections cut off at the handshake timeout",
                get(&self.handshake_timeouts),
            ),
            (
                "gate_relay_over_limit_total",
                "counter",
                "connections refused by a limit",
                get(&self.over_limit),
            ),
            (
                "gate_relay_daemon_unreachable_total",
                "counter",
                "connections whose daemon could not be reached",
                get(&self.daemon_unreachable),
            ),
            (
                "gate_relay_daemons_registered",
                "gauge",
                "registered daemon connections",
                get(&self.daemons_registered),
            ),
            (
                "gate_relay_bytes_to_daemons_total",
                "counter",
                "bytes copied from clients to daemons",
                get(&self.bytes_to_daemons),
            ),
            (
                "gate_relay_bytes_to_clients_total",
                "counter",
                "bytes copied from daemons to clients",
                get(&self.bytes_to_clients),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }
}

pub(super) async fn serve_metrics<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    listener: R::TcpListener,
) {
    loop {
        let (mut stream, _) = match race(shared.shutdown.wait(), R::accept(&listener)).await {
            Either::Left(()) => return,
            Either::Right(Ok(accepted)) => accepted,
            Either::Right(Err(_)) => {
                rt.sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let task_rt = rt.clone();
        rt.spawn(async move {
            // Read the request head (bounded), whatever it asks for.
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            let read = gate_rt::timeout(&task_rt, Duration::from_secs(5), async {
                while head.len() < 8 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    }
                }
                true
            })
            .await;
            if read != Ok(true) {
                return;
            }
            let body = shared.metrics.render();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
