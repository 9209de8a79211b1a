//! `gate-relay status`: what a relay operator needs to know about a running relay, read from
//! another process.
//!
//! Owns: the status snapshot ([`StatusSnapshot`]) that `gate-relay serve` writes into its state
//! directory ([`STATUS_FILE_NAME`], atomically, mode 0600, every [`WRITE_INTERVAL`] and soon
//! after a daemon comes or goes; a last one with `stopped_at` on a clean stop), reading it back,
//! deciding whether the relay is running ([`Liveness`]: not stopped, the writer's pid is alive
//! and the snapshot is fresh), and
//! rendering the answer as text or JSON. Must not: hold secrets in the snapshot (no API token,
//! no keys), or talk to the relay's sockets.
//!
//! Why a file and not a loopback endpoint: the state directory already separates instances
//! (several relays on one machine each have their own), it is private to the relay's user, it
//! needs no port or token, and it lets `status` show the persisted claims and the last known
//! state of a relay that is gone (killed with SIGKILL) just as well as of a live one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gate_core::tunnel::{NameTableSnapshot, NodeId};
use serde::{Deserialize, Serialize};

/// File name of the status snapshot in the state directory.
pub const STATUS_FILE_NAME: &str = "status.json";

/// How often a running relay rewrites its snapshot (also soon after a daemon comes or goes).
pub const WRITE_INTERVAL: Duration = Duration::from_secs(2);

/// A snapshot older than this means the relay is not running (or stuck).
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// At most this many daemons are listed one by one (the count is always complete), so the
/// snapshot stays small on a relay with many thousands of daemons.
pub const MAX_LISTED_DAEMONS: usize = 1_000;

/// Version of the snapshot's layout.
pub const FORMAT: u32 = 1;

/// Exit code of `gate-relay status` when the relay is not running (as LSB init scripts and
/// `systemctl status` use it).
pub const EXIT_NOT_RUNNING: u8 = 3;

/// What a running relay writes to [`STATUS_FILE_NAME`]. No secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// [`FORMAT`].
    pub format: u32,
    /// The relay's process id.
    pub pid: u32,
    /// `gate-relay` version.
    pub version: String,
    /// `tokio` or `smol`.
    pub runtime: String,
    /// When the relay started, seconds since the Unix epoch.
    pub started_at: u64,
    /// When this snapshot was written, seconds since the Unix epoch.
    pub written_at: u64,
    /// Set in the last snapshot of a relay that stopped cleanly: when it stopped.
    #[serde(default)]
    pub stopped_at: Option<u64>,
    /// The relay's node id (what daemons pin as `<id>@host:port`).
    pub node_id: String,
    /// Daemons get `<node-id>.<domain_suffix>` and `<label>.<domain_suffix>`.
    pub domain_suffix: String,
    /// Where the relay listens.
    pub listen: Listen,
    /// Days of absence after which a custom name claim lapses.
    pub claim_lapse_days: u64,
    /// Daemon connections (registered or registering) in all.
    pub daemons_total: usize,
    /// Those connections, at most [`MAX_LISTED_DAEMONS`], oldest first.
    pub daemons: Vec<DaemonInfo>,
    /// Custom name claims, by label.
    pub claims: Vec<ClaimInfo>,
    /// Open connections and their limits.
    pub connections: Connections,
    /// Counters since start.
    pub counters: Counters,
    /// The DNS provider for daemons' ACME records.
    pub dns: DnsInfo,
    /// Who may register (`[access]`); absent in snapshots of older relays.
    #[serde(default)]
    pub access: AccessInfo,
    /// The claim store shared with other relays (`[store] url`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreInfo>,
}

/// `[store]` as the relay runs it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoreInfo {
    /// `postgres://user@host:port/database` (never the password).
    pub url: String,
    /// Whether the relay is connected to it now.
    pub connected: bool,
}

/// `[access]` as the relay runs it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AccessInfo {
    /// `open` or `allowlist` (empty in snapshots of older relays, which were open).
    pub mode: String,
    /// The daemons admitted in allowlist mode (and in token mode, when listed).
    pub allowed_nodes: Vec<String>,
    /// The registration tokens of token mode, by name (never their secrets), with the daemons
    /// connected with each.
    #[serde(default)]
    pub tokens: Vec<TokenInfo>,
}

/// One registration token, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The token's name (`access.tokens` entries are `name:secret`).
    pub name: String,
    /// Node ids of the daemons connected with it now.
    pub daemons: Vec<String>,
}

/// Listening addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listen {
    /// HTTPS clients (TCP).
    pub https: String,
    /// Daemon tunnels (UDP): `p2p_port` first, then `https_port`.
    pub quic: Vec<String>,
    /// The Prometheus listener, when enabled.
    pub metrics: Option<String>,
    /// The HTTPS port announced to daemons for their public URLs.
    pub public_https_port: u16,
}

/// One daemon connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// The daemon's node id.
    pub node_id: String,
    /// `registering`, `registered`, `draining`, `left` (said goodbye; open streams finish) or
    /// `closing`.
    pub state: String,
    /// Names it serves (node name first), once registered.
    pub names: Vec<String>,
    /// Why its custom label was refused, if it was.
    pub custom_name_refusal: Option<String>,
    /// When it connected, seconds since the Unix epoch.
    pub connected_at: u64,
    /// Its address as the relay sees it (UDP for QUIC, TCP for a tunnel over TCP).
    pub remote: String,
    /// `quic`, or `tcp` for a tunnel over TLS/TCP (when UDP is blocked on the daemon's side).
    #[serde(default = "default_transport")]
    pub transport: String,
    /// Forwarded connections open to it.
    pub forwarded_open: usize,
    /// The registration token it was admitted with (token mode), by name.
    #[serde(default)]
    pub token: Option<String>,
}

fn default_transport() -> String {
    "quic".to_owned()
}

/// One custom name claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimInfo {
    /// The label.
    pub label: String,
    /// `<label>.<suffix>`.
    pub name: String,
    /// The owner.
    pub node_id: String,
    /// Whether the owner is connected now (an online owner's claim does not lapse).
    pub online: bool,
    /// When the owner was last seen, seconds since the Unix epoch.
    pub last_seen: u64,
    /// When the claim lapses if the owner stays away, seconds since the Unix epoch.
    pub lapses_at: u64,
}

/// Open connections and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    /// HTTPS connections open (reading the ClientHello or forwarded).
    pub https_open: u64,
    /// Forwarded connections open.
    pub forwarded_open: u64,
    /// Daemon QUIC connections open.
    pub daemon_connections: usize,
    /// `limits.max_connections`.
    pub max_connections: usize,
    /// `limits.max_connections_per_ip`.
    pub max_connections_per_ip: usize,
    /// `limits.max_connections_per_node`.
    pub max_connections_per_node: usize,
    /// `limits.max_daemon_connections`.
    pub max_daemon_connections: usize,
    /// `limits.handshake_timeout_ms`.
    pub handshake_timeout_ms: u64,
}

/// Counters since start (the same as the metrics listener's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    /// HTTPS connections accepted.
    pub https_accepted: u64,
    /// Connections forwarded to a daemon.
    pub forwarded: u64,
    /// Answered `unrecognized_name` (unknown or offline name).
    pub unknown_name: u64,
    /// ClientHellos without a server name.
    pub no_sni: u64,
    /// Not a valid ClientHello.
    pub invalid_hello: u64,
    /// Cut off at the handshake timeout.
    pub handshake_timeouts: u64,
    /// Refused by a limit.
    pub over_limit: u64,
    /// The daemon could not be reached.
    pub daemon_unreachable: u64,
}

impl From<crate::server::RelayStats> for Counters {
    fn from(s: crate::server::RelayStats) -> Self {
        Self {
            https_accepted: s.https_accepted,
            forwarded: s.forwarded,
            unknown_name: s.unknown_name,
            no_sni: s.no_sni,
            invalid_hello: s.invalid_hello,
            handshake_timeouts: s.handshake_timeouts,
            over_limit: s.over_limit,
            daemon_unreachable: s.daemon_unreachable,
        }
    }
}

/// The DNS provider's state. The API token is never included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsInfo {
    /// `dns.enabled`.
    pub enabled: bool,
    /// `dns.provider`.
    pub provider: String,
    /// Whether daemons' requests are served (enabled and configured well enough).
    pub ready: bool,
    /// Why not, when enabled but not ready.
    pub problem: Option<String>,
    /// `dns.cloudflare.zone_id`.
    pub zone_id: Option<String>,
    /// `dns.cloudflare.api_url`.
    pub api_url: String,
    /// ACME TXT records in place now.
    pub records: Vec<String>,
}

/// The claims of a persisted name table, with their lapse dates.
pub fn claims_from_names(
    names: &NameTableSnapshot,
    domain_suffix: &str,
    claim_lapse_days: u64,
    online: impl Fn(&NodeId) -> bool,
) -> Vec<ClaimInfo> {
    let lapse = claim_lapse_days.saturating_mul(86_400);
    let mut claims: Vec<ClaimInfo> = names
        .claims
        .iter()
        .map(|c| ClaimInfo {
            label: c.label.clone(),
            name: format!("{}.{domain_suffix}", c.label),
            node_id: c.node_id.to_string(),
            online: online(&c.node_id),
            last_seen: c.last_seen_unix_secs,
            lapses_at: c.last_seen_unix_secs.saturating_add(lapse),
        })
        .collect();
    claims.sort_by(|a, b| a.label.cmp(&b.label));
    claims
}

/// Writes `snapshot` to `<state_dir>/status.json` (atomically, mode 0600).
pub fn write(state_dir: &Path, snapshot: &StatusSnapshot) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(snapshot).map_err(|e| e.to_string())?;
    crate::state::replace_file(&state_dir.join(STATUS_FILE_NAME), &json, 0o600)
        .map_err(|e| e.to_string())
}

/// Whether the relay that wrote a snapshot is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Its process is alive and the snapshot is fresh.
    Running,
    /// Its process is alive but has not written for longer than [`STALE_AFTER`].
    NotResponding,
    /// It stopped cleanly, its process is gone (killed, crashed), or no snapshot exists (never
    /// started with this state directory).
    NotRunning,
}

/// Judges a snapshot: `pid_alive` says whether its pid is a live `gate-relay` process.
pub fn liveness(snapshot: Option<&StatusSnapshot>, now: u64, pid_alive: bool) -> Liveness {
    let Some(snapshot) = snapshot else {
        return Liveness::NotRunning;
    };
    if !pid_alive || snapshot.stopped_at.is_some() {
        return Liveness::NotRunning;
    }
    if now.saturating_sub(snapshot.written_at) > STALE_AFTER.as_secs() {
        Liveness::NotResponding
    } else {
        Liveness::Running
    }
}

/// Whether `pid` is a live process running `gate-relay` (Linux `/proc`). A pid reused by
/// another program does not count.
pub fn is_relay_process(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    match std::fs::read_to_string(proc_dir.join("stat")) {
        // A zombie (state Z) has exited; its parent just has not collected it yet.
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            if state == Some("Z") || state == Some("X") {
                return false;
            }
        }
        Err(_) => return false,
    }
    let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
    let exe = std::fs::read_link(proc_dir.join("exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    comm.trim().starts_with("gate-relay") || exe.contains("gate-relay")
}

/// Reads the snapshot in `state_dir`: `Ok(None)` when there is none.
pub fn read(state_dir: &Path) -> Result<Option<StatusSnapshot>, String> {
    let path = state_dir.join(STATUS_FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: not a status snapshot: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("could not read {}: {e}", path.display())),
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// `2026-11-26 02:50:00 UTC`.
pub fn format_utc(unix_secs: u64) -> String {
    let days = i64::try_from(unix_secs / 86_400).unwrap_or(i64::MAX);
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(0),
        u32::try_from(day).unwrap_or(0),
    )
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
pub fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

fn render_claims(out: &mut String, claims: &[ClaimInfo], lapse_days: u64, now: u64) {
    if claims.is_empty() {
        out.push_str("name claims: none\n");
        return;
    }
    out.push_str(&format!(
        "name claims: {} (a claim lapses after {lapse_days} days without its owner)\n",
        claims.len()
    ));
    for c in claims {
        let when = if c.online {
            "owner online".to_owned()
        } else if c.lapses_at <= now {
            format!("lapsed at {}", format_utc(c.lapses_at))
        } else {
            format!(
                "owner last seen {}, lapses {} (in {})",
                format_utc(c.last_seen),
                format_utc(c.lapses_at),
                format_duration(c.lapses_at - now)
            )
        };
        out.push_str(&format!("  {}  {}  {when}\n", c.name, c.node_id));
    }
}

/// Who is admitted: open to any daemon, or the allowlist.
fn render_access(out: &mut String, access: &AccessInfo) {
    if access.mode == "allowlist" {
        out.push_str(&format!(
            "access: allowlist, {} daemon(s) admitted\n",
            access.allowed_nodes.len()
        ));
        for node in &access.allowed_nodes {
            out.push_str(&format!("  {node}\n"));
        }
    } else if access.mode == "token" {
        out.push_str(&format!(
            "access: token, {} token(s)\n",
            access.tokens.len()
        ));
        for token in &access.tokens {
            if token.daemons.is_empty() {
                out.push_str(&format!("  token {}: no daemon connected\n", token.name));
            } else {
                out.push_str(&format!(
                    "  token {}: used by {}\n",
                    token.name,
                    token.daemons.join(", ")
                ));
            }
        }
        if !access.allowed_nodes.is_empty() {
            out.push_str(&format!(
                "  and only these {} daemon(s):\n",
                access.allowed_nodes.len()
            ));
            for node in &access.allowed_nodes {
                out.push_str(&format!("    {node}\n"));
            }
        }
    } else {
        out.push_str(
            "access: open (any daemon may register; set access.mode = \"allowlist\" or \"token\")\n",
        );
    }
}

/// The text `gate-relay status` prints for a running relay.
pub fn render_running(snapshot: &StatusSnapshot, state_dir: &Path, now: u64) -> String {
    let s = snapshot;
    let mut out = String::new();
    out.push_str(&format!(
        "gate-relay {} running: pid {}, {} runtime, up {} (since {})\n",
        s.version,
        s.pid,
        s.runtime,
        format_duration(now.saturating_sub(s.started_at)),
        format_utc(s.started_at)
    ));
    out.push_str(&format!("node id: {}\n", s.node_id));
    out.push_str(&format!("state directory: {}\n", state_dir.display()));
    out.push_str(&format!(
        "names: <node-id>.{suffix} and <label>.{suffix}, public HTTPS port {port}\n",
        suffix = s.domain_suffix,
        port = s.listen.public_https_port
    ));
    out.push_str(&format!("HTTPS (TCP): {}\n", s.listen.https));
    out.push_str(&format!(
        "daemon tunnels (QUIC, UDP): {}\n",
        s.listen.quic.join(", ")
    ));
    match &s.listen.metrics {
        Some(addr) => out.push_str(&format!("metrics: http://{addr}/metrics\n")),
        None => out.push_str("metrics: off (set metrics_port)\n"),
    }
    render_access(&mut out, &s.access);
    if let Some(store) = &s.store {
        out.push_str(&format!(
            "claims shared through: {} ({})\n",
            store.url,
            if store.connected {
                "connected"
            } else {
                "unreachable: new custom names are refused"
            }
        ));
    }
    let c = &s.connections;
    out.push_str(&format!(
        "daemons connected: {} (limit {})\n",
        s.daemons_total, c.max_daemon_connections
    ));
    for d in &s.daemons {
        out.push_str(&format!(
            "  {}  {}  over {} from {}  since {} ({} ago)  {} forwarded open\n",
            d.node_id,
            d.state,
            d.transport,
            d.remote,
            format_utc(d.connected_at),
            format_duration(now.saturating_sub(d.connected_at)),
            d.forwarded_open
        ));
        if let Some(token) = &d.token {
            out.push_str(&format!("    admitted with token {token}\n"));
        }
        for name in &d.names {
            out.push_str(&format!("    {name}\n"));
        }
        if let Some(refusal) = &d.custom_name_refusal {
            out.push_str(&format!("    custom name refused: {refusal}\n"));
        }
    }
    if s.daemons.len() < s.daemons_total {
        out.push_str(&format!(
            "  ... and {} more (see --json for the first {MAX_LISTED_DAEMONS})\n",
            s.daemons_total - s.daemons.len()
        ));
    }
    render_claims(&mut out, &s.claims, s.claim_lapse_days, now);
    out.push_str(&format!(
        "connections: {} HTTPS open (limit {}, {} per client IP), {} forwarded open (limit {} per daemon), handshake timeout {} ms\n",
        c.https_open,
        c.max_connections,
        c.max_connections_per_ip,
        c.forwarded_open,
        c.max_connections_per_node,
        c.handshake_timeout_ms
    ));
    let k = &s.counters;
    out.push_str(&format!(
        "since start: {} accepted, {} forwarded, {} unknown name, {} without SNI, {} not TLS, {} handshake timeouts, {} over a limit, {} daemon unreachable\n",
        k.https_accepted,
        k.forwarded,
        k.unknown_name,
        k.no_sni,
        k.invalid_hello,
        k.handshake_timeouts,
        k.over_limit,
        k.daemon_unreachable
    ));
    let dns = &s.dns;
    if !dns.enabled {
        out.push_str("DNS (ACME records for daemons): off (dns.enabled = false)\n");
    } else if dns.ready {
        out.push_str(&format!(
            "DNS (ACME records for daemons): {} ready, zone {}, API {}, {} record(s) in place\n",
            dns.provider,
            dns.zone_id.as_deref().unwrap_or("-"),
            dns.api_url,
            dns.records.len()
        ));
        for record in &dns.records {
            out.push_str(&format!("  {record}\n"));
        }
    } else {
        out.push_str(&format!(
            "DNS (ACME records for daemons): {} NOT usable: {}\n",
            dns.provider,
            dns.problem.as_deref().unwrap_or("unknown problem")
        ));
    }
    out
}

/// The text `gate-relay status` prints when the relay is not running (or not responding).
pub fn render_not_running(
    liveness: Liveness,
    last: Option<&StatusSnapshot>,
    state_dir: &Path,
    claims: &[ClaimInfo],
    claim_lapse_days: u64,
    now: u64,
) -> String {
    let mut out = String::new();
    match (liveness, last) {
        (_, Some(StatusSnapshot {
            stopped_at: Some(stopped),
            started_at,
            ..
        })) => out.push_str(&format!(
            "gate-relay is not running: it stopped cleanly at {} ({} ago) after running for {}\n",
            format_utc(*stopped),
            format_duration(now.saturating_sub(*stopped)),
            format_duration(stopped.saturating_sub(*started_at))
        )),
        (Liveness::NotResponding, Some(last)) => out.push_str(&format!(
            "gate-relay is NOT RESPONDING: pid {} is alive but its last status is from {} ({} ago)\n",
            last.pid,
            format_utc(last.written_at),
            format_duration(now.saturating_sub(last.written_at))
        )),
        (_, Some(last)) => out.push_str(&format!(
            "gate-relay is not running: pid {} is gone; it last reported at {} ({} ago) and did not stop cleanly\n",
            last.pid,
            format_utc(last.written_at),
            format_duration(now.saturating_sub(last.written_at))
        )),
        (_, None) => out.push_str("gate-relay is not running\n"),
    }
    out.push_str(&format!("state directory: {}\n", state_dir.display()));
    render_claims(&mut out, claims, claim_lapse_days, now);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gate_core::tunnel::ClaimRecord;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_795_660_245), "2026-11-26 02:30:45 UTC");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28 23:59:59 UTC");
        assert_eq!(format_utc(4_107_542_400), "2100-03-01 00:00:00 UTC");
    }

    #[test]
    fn durations_show_the_two_largest_units() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(59), "59s");
        assert_eq!(format_duration(61), "1m 1s");
        assert_eq!(format_duration(3 * 3600 + 120), "3h 2m");
        assert_eq!(format_duration(2 * 86_400 + 3600), "2d 1h");
    }

    #[test]
    fn liveness_needs_a_live_pid_and_a_fresh_snapshot() {
        let snapshot = sample(1_000);
        assert_eq!(liveness(None, 1_000, true), Liveness::NotRunning);
        assert_eq!(liveness(Some(&snapshot), 1_005, true), Liveness::Running);
        assert_eq!(
            liveness(Some(&snapshot), 1_005, false),
            Liveness::NotRunning
        );
        assert_eq!(
            liveness(Some(&snapshot), 1_000 + STALE_AFTER.as_secs() + 1, true),
            Liveness::NotResponding
        );
        let stopped = StatusSnapshot {
            stopped_at: Some(1_000),
            ..snapshot
        };
        assert_eq!(liveness(Some(&stopped), 1_001, true), Liveness::NotRunning);
        let text = render_not_running(
            Liveness::NotRunning,
            Some(&stopped),
            Path::new("/r"),
            &[],
            30,
            1_060,
        );
        assert!(
            text.starts_with("gate-relay is not running: it stopped cleanly at 1970-01-01 00:16:40 UTC (1m 0s ago) after running for 1m 5s\n"),
            "{text}"
        );
    }

    #[test]
    fn this_test_process_is_not_a_relay_and_pid_0_is_nobody() {
        assert!(!is_relay_process(std::process::id()));
        assert!(!is_relay_process(0));
    }

    #[test]
    fn claims_get_their_lapse_dates() {
        let a = NodeId::parse(&"a".repeat(52)).expect("id");
        let b = NodeId::parse(&"b".repeat(52)).expect("id");
        let names = NameTableSnapshot {
            claims: vec![
                ClaimRecord {
                    label: "zeta".into(),
                    node_id: a.clone(),
                    last_seen_unix_secs: 100,
                    token: None,
                },
                ClaimRecord {
                    label: "alpha".into(),
                    node_id: b,
                    last_seen_unix_secs: 200,
                    token: None,
                },
            ],
        };
        let claims = claims_from_names(&names, "gate.test", 2, |id| *id == a);
        assert_eq!(claims.len(), 2);
        assert_eq!(claims[0].name, "alpha.gate.test");
        assert!(!claims[0].online);
        assert_eq!(claims[0].lapses_at, 200 + 2 * 86_400);
        assert!(claims[1].online);
        let text = render_not_running(
            Liveness::NotRunning,
            None,
            Path::new("/var/lib/r"),
            &claims,
            2,
            300,
        );
        assert!(text.starts_with("gate-relay is not running\n"), "{text}");
        assert!(
            text.contains("alpha.gate.test  bbbb")
                && text.contains("lapses 1970-01-03 00:03:20 UTC"),
            "{text}"
        );
        assert!(text.contains("zeta.gate.test  aaaa") && text.contains("owner online"));
    }

    fn sample(written_at: u64) -> StatusSnapshot {
        StatusSnapshot {
            format: FORMAT,
            pid: 42,
            version: "0.1.0".into(),
            runtime: "smol".into(),
            started_at: written_at - 65,
            written_at,
            stopped_at: None,
            node_id: "n".repeat(52),
            domain_suffix: "gate.test".into(),
            listen: Listen {
                https: "127.0.0.1:8443".into(),
                quic: vec!["127.0.0.1:31145".into(), "127.0.0.1:8443".into()],
                metrics: Some("127.0.0.1:9100".into()),
                public_https_port: 8443,
            },
            claim_lapse_days: 30,
            daemons_total: 1,
            daemons: vec![DaemonInfo {
                node_id: "d".repeat(52),
                state: "registered".into(),
                names: vec![format!("{}.gate.test", "d".repeat(52))],
                custom_name_refusal: Some("label `x` is held by another node".into()),
                connected_at: written_at - 5,
                remote: "127.0.0.1:41147".into(),
                transport: "quic".into(),
                forwarded_open: 3,
                token: None,
            }],
            claims: Vec::new(),
            connections: Connections {
                https_open: 4,
                forwarded_open: 3,
                daemon_connections: 1,
                max_connections: 16_384,
                max_connections_per_ip: 256,
                max_connections_per_node: 4_096,
                max_daemon_connections: 10_000,
                handshake_timeout_ms: 5_000,
            },
            counters: Counters {
                https_accepted: 9,
                ..Counters::default()
            },
            dns: DnsInfo {
                enabled: true,
                provider: "cloudflare".into(),
                ready: false,
                problem: Some("dns.cloudflare.zone_id is not set".into()),
                zone_id: None,
                api_url: "https://api.cloudflare.com/client/v4".into(),
                records: Vec::new(),
            },
            access: AccessInfo::default(),
            store: None,
        }
    }

    #[test]
    fn a_shared_store_is_shown_with_its_state() {
        let mut s = sample(1_000);
        let text = render_running(&s, Path::new("/var/lib/r"), 1_001);
        assert!(!text.contains("claims shared through"), "{text}");
        s.store = Some(StoreInfo {
            url: "postgres://relay@db:5432/gate".into(),
            connected: false,
        });
        let text = render_running(&s, Path::new("/var/lib/r"), 1_001);
        assert!(
            text.contains(
                "claims shared through: postgres://relay@db:5432/gate (unreachable: new custom names are refused)\n"
            ),
            "{text}"
        );
        let back: StatusSnapshot =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.store, s.store);
    }

    #[test]
    fn token_mode_names_tokens_and_their_daemons() {
        let mut s = sample(1_000);
        s.access = AccessInfo {
            mode: "token".into(),
            allowed_nodes: Vec::new(),
            tokens: vec![
                TokenInfo {
                    name: "team-a".into(),
                    daemons: vec!["d".repeat(52)],
                },
                TokenInfo {
                    name: "ci".into(),
                    daemons: Vec::new(),
                },
            ],
        };
        s.daemons[0].token = Some("team-a".into());
        let text = render_running(&s, Path::new("/var/lib/r"), 1_001);
        for expected in [
            "access: token, 2 token(s)\n",
            &format!("  token team-a: used by {}\n", "d".repeat(52)),
            "  token ci: no daemon connected\n",
            "    admitted with token team-a\n",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        // Older snapshots without tokens still read.
        let json = serde_json::to_string(&s).expect("json");
        let back: StatusSnapshot = serde_json::from_str(&json).expect("read back");
        assert_eq!(back.access.tokens.len(), 2);
    }

    #[test]
    fn running_text_names_everything_an_operator_needs() {
        let s = sample(1_000);
        let text = render_running(&s, Path::new("/var/lib/r"), 1_001);
        for expected in [
            "gate-relay 0.1.0 running: pid 42, smol runtime, up 1m 6s",
            &format!("node id: {}", "n".repeat(52)),
            "public HTTPS port 8443",
            "HTTPS (TCP): 127.0.0.1:8443",
            "127.0.0.1:31145, 127.0.0.1:8443",
            "metrics: http://127.0.0.1:9100/metrics",
            "daemons connected: 1 (limit 10000)",
            "over quic from 127.0.0.1:41147",
            "custom name refused: label `x`",
            "name claims: none",
            "4 HTTPS open (limit 16384, 256 per client IP), 3 forwarded open (limit 4096 per daemon)",
            "9 accepted",
            "cloudflare NOT usable: dns.cloudflare.zone_id is not set",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
        }
        // The snapshot survives a JSON round trip (what `status` reads back).
        let json = serde_json::to_string(&s).expect("json");
        assert_eq!(
            serde_json::from_str::<StatusSnapshot>(&json).expect("back"),
            s
        );
    }
}
