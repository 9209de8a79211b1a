//! Deterministic simulation of daemons and a relay over many seeds, with random connection
//! drops, relay restarts (claims restored from a JSON snapshot) and daemon restarts.
//!
//! Asserts: a forwarded stream only ever goes to the node that owns the name (node-id names to
//! that node, a custom label to the node it was first granted to); a claim never changes owner;
//! once faults stop, every daemon is registered again and reachable through the relay.
//! Every frame crosses the wire codec (encode, then incremental decode in random chunks).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure
#![allow(clippy::disallowed_methods)] // tests take one real `Instant` to start simulated time from

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gate_core::tunnel::{
    ConnectionAttempt, DaemonConfig, DaemonEvent, DaemonSession, DaemonState, Frame, FrameDecoder,
    NameTableConfig, NameTableSnapshot, NodeId, RelayConfig, RelayEvent, RelayNameTable,
    RelaySession, DEFAULT_MAX_FRAME_LEN,
};

/// SplitMix64 for the simulation's own choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

const TICK: Duration = Duration::from_millis(100);
const SUFFIX: &str = "relay.sim";

enum Msg {
    Connected,
    ConnectFailed,
    ToRelay(Frame),
    ToDaemon(Frame),
    RelayLost,
    DaemonLost,
}

struct Conn {
    daemon: usize,
    incarnation: u64,
    attempt: ConnectionAttempt,
    relay_epoch: u64,
    last_to_relay: Instant,
    last_to_daemon: Instant,
}

struct Daemon {
    node: NodeId,
    label: Option<&'static str>,
    session: DaemonSession,
    incarnation: u64,
    conn: Option<u64>,
    registered_names: Vec<String>,
}

struct World {
    rng: Rng,
    start: Instant,
    now: Instant,
    unix: u64,
    relay_up: bool,
    relay_epoch: u64,
    relay_back_at: Instant,
    names: RelayNameTable,
    stored_snapshot: String,
    sessions: BTreeMap<u64, RelaySession>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    queue: BTreeMap<(Instant, u64), (u64, Msg)>,
    next_msg: u64,
    daemons: Vec<Daemon>,
    /// Ground truth: custom label -> the node first granted it.
    first_owner: BTreeMap<String, NodeId>,
    streams_forwarded: u64,
    registrations: u64,
    relay_restarts: u64,
}

fn node(c: char) -> NodeId {
    NodeId::parse(&c.to_string().repeat(52)).unwrap()
}

fn daemon_config(label: Option<&str>) -> DaemonConfig {
    DaemonConfig {
        daemon_version: "sim".into(),
        custom_label: label.map(str::to_owned),
        ..DaemonConfig::default()
    }
}

/// Sends a frame through the codec: encode, then decode in chunks of random size.
fn through_wire(rng: &mut Rng, frame: &Frame) -> Frame {
    let bytes = frame.to_bytes().expect("encodable");
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let mut decoded = None;
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let take = (1 + rng.below(rest.len() as u64) as usize).min(rest.len());
        decoder.push(&rest[..take]);
        rest = &rest[take..];
        if let Some(frame) = decoder.decode().expect("valid frame") {
            assert!(decoded.is_none(), "one frame in, one frame out");
            decoded = Some(frame);
        }
    }
    let decoded = decoded.expect("complete frame decodes");
    assert_eq!(&decoded, frame);
    decoded
}

impl World {
    fn new(seed: u64) -> Self {
        let now = Instant::now();
        let names = RelayNameTable::new(NameTableConfig::new(SUFFIX).unwrap());
        let specs = [
            ('a', Some("home")),
            ('b', Some("home")),
            ('c', Some("work")),
            ('d', None),
        ];
        let daemons = specs
            .iter()
            .enumerate()
            .map(|(i, (id, label))| Daemon {
                node: node(*id),
                label: *label,
                session: DaemonSession::new(daemon_config(*label), seed ^ (i as u64 + 1), now),
                incarnation: 0,
                conn: None,
                registered_names: Vec::new(),
            })
            .collect();
        Self {
            rng: Rng(seed),
            start: now,
            now,
            unix: 1_700_000_000,
            relay_up: true,
            relay_epoch: 0,
            relay_back_at: now,
            stored_snapshot: serde_json::to_string(&names.snapshot()).unwrap(),
            names,
            sessions: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            queue: BTreeMap::new(),
            next_msg: 0,
            daemons,
            first_owner: BTreeMap::new(),
            streams_forwarded: 0,
            registrations: 0,
            relay_restarts: 0,
        }
    }

    fn latency(&mut self) -> Duration {
        Duration::from_millis(1 + self.rng.below(300))
    }

    fn send(&mut self, conn_id: u64, msg: Msg) {
        let latency = self.latency();
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let to_relay = matches!(msg, Msg::ToRelay(_) | Msg::RelayLost);
        let last = if to_relay {
            &mut conn.last_to_relay
        } else {
            &mut conn.last_to_daemon
        };
        // Per-direction FIFO, as on a QUIC stream.
        let at = (self.now + latency).max(*last);
        *last = at;
        self.next_msg += 1;
        self.queue.insert((at, self.next_msg), (conn_id, msg));
    }

    fn persist(&mut self) {
        self.stored_snapshot = serde_json::to_string(&self.names.snapshot()).unwrap();
    }

    // ----- faults -------------------------------------------------------------------------

    fn drop_random_connection(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let id = ids[self.rng.below(ids.len() as u64) as usize];
        self.send(id, Msg::RelayLost);
        self.send(id, Msg::DaemonLost);
    }

    fn restart_relay(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.send(id, Msg::DaemonLost);
        }
        self.sessions.clear();
        self.persist();
        self.relay_up = false;
        self.relay_restarts += 1;
        self.relay_epoch += 1;
        self.relay_back_at = self.now + Duration::from_millis(self.rng.below(30_000));
    }

    fn restart_daemon(&mut self, index: usize, seed: u64) {
        if let Some(conn) = self.daemons[index].conn.take() {
            self.send(conn, Msg::RelayLost);
        }
        let daemon = &mut self.daemons[index];
        daemon.incarnation += 1;
        daemon.registered_names.clear();
        daemon.session = DaemonSession::new(daemon_config(daemon.label), seed, self.now);
    }

    // ----- daemon side ----------------------------------------------------------------------

    fn run_daemon(&mut self, index: usize) {
        let due = self.daemons[index]
            .session
            .poll_timeout()
            .is_some_and(|t| t <= self.now);
        if due {
            let now = self.now;
            self.daemons[index].session.handle_timeout(now);
        }
        while let Some(event) = self.daemons[index].session.poll_event() {
            match event {
                DaemonEvent::Connect(attempt) => {
                    let id = self.next_conn;
                    self.next_conn += 1;
                    self.conns.insert(
                        id,
                        Conn {
                            daemon: index,
                            incarnation: self.daemons[index].incarnation,
                            attempt,
                            relay_epoch: self.relay_epoch,
                            last_to_relay: self.now,
                            last_to_daemon: self.now,
                        },
                    );
                    self.daemons[index].conn = Some(id);
                    if self.relay_up {
                        let session = RelaySession::new(
                            self.daemons[index].node.clone(),
                            RelayConfig::default(),
                            self.now,
                        );
                        self.sessions.insert(id, session);
                        self.send(id, Msg::Connected);
                    } else {
                        self.send(id, Msg::ConnectFailed);
                    }
                }
                DaemonEvent::Transmit(frame) => {
                    let frame = through_wire(&mut self.rng, &frame);
                    if let Some(conn) = self.daemons[index].conn {
                        self.send(conn, Msg::ToRelay(frame));
                    }
                }
                DaemonEvent::Disconnected { .. } => {
                    if let Some(conn) = self.daemons[index].conn.take() {
                        self.send(conn, Msg::RelayLost);
                    }
                    self.daemons[index].registered_names.clear();
                }
                DaemonEvent::Registered(names) => {
                    self.registrations += 1;
                    let daemon = &mut self.daemons[index];
                    assert_eq!(names.node_name, format!("{}.{SUFFIX}", daemon.node));
                    daemon.registered_names = std::iter::once(names.node_name)
                        .chain(names.custom_name)
                        .collect();
                }
                DaemonEvent::Refused { reason } => panic!("unexpected refusal: {reason}"),
                _ => {}
            }
        }
    }

    // ----- relay side -----------------------------------------------------------------------

    fn run_relay_session(&mut self, id: u64) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        if session.poll_timeout().is_some_and(|t| t <= self.now) {
            session.handle_timeout(self.now, self.unix, &mut self.names);
        }
        let mut events = Vec::new();
        while let Some(event) = session.poll_event() {
            events.push(event);
        }
        for event in events {
            match event {
                RelayEvent::Transmit(frame) => {
                    let frame = through_wire(&mut self.rng, &frame);
                    self.send(id, Msg::ToDaemon(frame));
                }
                RelayEvent::Registered(grant) => {
                    if let Some(custom) = grant.custom_name {
                        let label = custom.split('.').next().unwrap().to_owned();
                        let node = self.sessions[&id].node_id().clone();
                        let owner = self
                            .first_owner
                            .entry(label.clone())
                            .or_insert(node.clone());
                        assert_eq!(*owner, node, "label {label} granted to a second node");
                    }
                    self.persist();
                }
                RelayEvent::DnsSet { request_id, .. }
                | RelayEvent::DnsClear {
                    request_id: Some(request_id),
                    ..
                } => {
                    if let Some(session) = self.sessions.get_mut(&id) {
                        session.complete_acme(request_id, Ok(()));
                    }
                }
                RelayEvent::DnsClear {
                    request_id: None, ..
                } => {}
                // The simulated daemons never leave.
                RelayEvent::Left(_) => panic!("unexpected goodbye"),
                // The simulated relay keeps its claims to itself (no `shared_claims`).
                RelayEvent::CheckClaim { .. } => panic!("unexpected claim check"),
                RelayEvent::Closed { .. } => {
                    self.sessions.remove(&id);
                    self.send(id, Msg::DaemonLost);
                }
            }
        }
    }

    fn open_random_stream(&mut self) {
        let names: Vec<String> = self
            .daemons
            .iter()
            .map(|d| format!("{}.{SUFFIX}", d.node))
            .chain(
                ["home", "work", "nobody"]
                    .iter()
                    .map(|l| format!("{l}.{SUFFIX}")),
            )
            .collect();
        let name = names[self.rng.below(names.len() as u64) as usize].clone();
        let Some(owner) = self.names.lookup(&name) else {
            return;
        };
        // Ground truth ownership.
        let label = name.split('.').next().unwrap();
        match self.first_owner.get(label) {
            Some(first) => assert_eq!(first, &owner, "{name} resolved to a non-owner"),
            None => assert_eq!(label, owner.as_str(), "{name} resolved to a non-owner"),
        }
        let Some((&id, session)) = self
            .sessions
            .iter()
            .find(|(_, s)| s.node_id() == &owner && s.accepts_streams())
        else {
            return;
        };
        let client = "203.0.113.9:40000".parse().unwrap();
        let header = session
            .stream_header(&self.names, client, &name)
            .expect("lookup result must be accepted by the owner's session");
        let header = through_wire(&mut self.rng, &header);
        let conn = &self.conns[&id];
        let daemon = &self.daemons[conn.daemon];
        assert_eq!(
            daemon.node, owner,
            "stream sent over another node's connection"
        );
        let Frame::StreamHeader(header) = header else {
            panic!("not a stream header");
        };
        assert_eq!(header.server_name, name);
        self.streams_forwarded += 1;
    }

    // ----- delivery -------------------------------------------------------------------------

    fn deliver_due(&mut self) {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (conn_id, msg) = entry.remove();
            let Some(conn) = self.conns.get(&conn_id) else {
                continue;
            };
            let (index, attempt) = (conn.daemon, conn.attempt);
            let daemon_current = self.daemons[index].incarnation == conn.incarnation
                && self.daemons[index].conn == Some(conn_id);
            let relay_current = conn.relay_epoch == self.relay_epoch;
            let now = self.now;
            match msg {
                Msg::Connected if daemon_current => {
                    self.daemons[index].session.handle_connected(attempt, now);
                }
                Msg::ConnectFailed if daemon_current => {
                    self.daemons[index].session.handle_connect_failed(
                        attempt,
                        now,
                        "relay down".into(),
                    );
                }
                Msg::ToRelay(frame) if relay_current => {
                    if let Some(session) = self.sessions.get_mut(&conn_id) {
                        session.handle_frame(now, self.unix, frame, &mut self.names);
                    }
                }
                Msg::ToDaemon(frame) if daemon_current => {
                    self.daemons[index]
                        .session
                        .handle_frame(attempt, now, frame);
                }
                Msg::RelayLost => {
                    if let Some(mut session) = self.sessions.remove(&conn_id) {
                        session.handle_connection_lost(self.unix, &mut self.names);
                        self.persist();
                    }
                }
                Msg::DaemonLost if daemon_current => {
                    self.daemons[index]
                        .session
                        .handle_connection_lost(attempt, now, "lost".into());
                }
                _ => {}
            }
        }
    }

    fn step(&mut self, faults: bool) {
        self.now += TICK;
        self.unix = 1_700_000_000 + (self.now - self.start).as_secs();
        if !self.relay_up && self.now >= self.relay_back_at {
            self.relay_up = true;
            let snapshot: NameTableSnapshot = serde_json::from_str(&self.stored_snapshot).unwrap();
            self.names =
                RelayNameTable::from_snapshot(NameTableConfig::new(SUFFIX).unwrap(), snapshot)
                    .expect("snapshot restores");
        }
        if faults {
            if self.rng.chance(5_000) {
                self.drop_random_connection();
            }
            if self.relay_up && self.rng.chance(1_000) {
                self.restart_relay();
            }
            if self.rng.chance(1_000) {
                let index = self.rng.below(self.daemons.len() as u64) as usize;
                let seed = self.rng.next();
                self.restart_daemon(index, seed);
            }
        }
        self.deliver_due();
        for index in 0..self.daemons.len() {
            self.run_daemon(index);
        }
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            self.run_relay_session(id);
        }
        // Claims never change owner (30-day lapse is far beyond the simulated time).
        for (label, first) in &self.first_owner {
            assert_eq!(
                self.names.claim_owner(label),
                Some(first),
                "claim {label} changed owner"
            );
        }
        if self.relay_up && self.rng.chance(100_000) {
            self.open_random_stream();
        }
        // Forget connections nobody refers to and nothing is in flight for.
        let live: Vec<u64> = self.queue.values().map(|(id, _)| *id).collect();
        let sessions = &self.sessions;
        let daemons = &self.daemons;
        self.conns.retain(|id, _| {
            sessions.contains_key(id)
                || live.contains(id)
                || daemons.iter().any(|d| d.conn == Some(*id))
        });
    }
}

fn simulate(seed: u64) -> (u64, u64, u64) {
    let mut world = World::new(seed);
    // Five simulated minutes of faults, then five quiet minutes.
    for _ in 0..3_000 {
        world.step(true);
    }
    if !world.relay_up {
        world.relay_back_at = world.now;
    }
    for _ in 0..3_000 {
        world.step(false);
    }
    for daemon in &world.daemons {
        assert!(
            matches!(daemon.session.state(), DaemonState::Registered { .. }),
            "seed {seed}: daemon {} ended in {:?}",
            daemon.node,
            daemon.session.state()
        );
        let node_name = format!("{}.{SUFFIX}", daemon.node);
        assert_eq!(world.names.lookup(&node_name), Some(daemon.node.clone()));
        assert!(daemon.registered_names.contains(&node_name));
        if let Some(label) = daemon.label {
            let name = format!("{label}.{SUFFIX}");
            let owns = world.first_owner.get(label) == Some(&daemon.node);
            assert_eq!(daemon.registered_names.contains(&name), owns, "seed {seed}");
        }
    }
    // `home` was asked for by two nodes; exactly one has it.
    assert!(world.first_owner.contains_key("home"));
    (
        world.streams_forwarded,
        world.registrations,
        world.relay_restarts,
    )
}

#[test]
fn simulation_over_many_seeds_keeps_ownership_and_recovers() {
    let (mut streams, mut registrations, mut relay_restarts) = (0, 0, 0);
    for seed in 0..40 {
        let (s, r, rr) = simulate(seed);
        streams += s;
        registrations += r;
        relay_restarts += rr;
    }
    eprintln!("streams {streams}, registrations {registrations}, relay restarts {relay_restarts}");
    // The faults must actually happen and be recovered from, and streams must flow.
    assert!(streams > 100, "too few streams forwarded ({streams})");
    assert!(
        relay_restarts > 40,
        "too few relay restarts ({relay_restarts})"
    );
    assert!(
        registrations > 4 * 40 * 3,
        "too few re-registrations ({registrations})"
    );
}
