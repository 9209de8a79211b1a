//! The shared store's Redis client (gate-rt `store::redis`) against a real `redis-server`
//! (tests/support/store_servers.rs), under tokio and smol: its one multiplexed, pipelined
//! connection gives every caller its own reply, a server killed mid-pipeline fails the
//! waiters at once and the client recovers when the server is back, and a command that
//! timed out does not shift later replies.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

#[path = "../../tests/support/store_servers.rs"]
mod store_servers;

use std::time::{Duration, Instant};

use gate_core::resp::Value;
use gate_rt::store::redis::CONNECTIONS;
use gate_rt::store::{Redis, RedisError, RedisUrl};
use gate_rt::Runtime;

const DEADLINE: Duration = Duration::from_secs(20);

fn client<R: Runtime>(rt: &R, url: &str) -> Redis<R> {
    Redis::new(rt.clone(), RedisUrl::parse(url).unwrap())
}

fn text(value: &Value) -> String {
    value
        .as_text()
        .unwrap_or_else(|| panic!("not text: {value:?}"))
}

/// The `field:` line of `INFO <section>`, as asked through `redis`.
async fn info_field<R: Runtime>(redis: &Redis<R>, section: &str, field: &str) -> u64 {
    let info = redis
        .command(&[b"INFO".as_slice(), section.as_bytes()], DEADLINE)
        .await
        .unwrap();
    let info = text(&info);
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {info}"))
        .trim()
        .parse()
        .unwrap()
}

/// 400 commands from 200 tasks at once, all on the client's connection(s): each task gets the
/// replies to its own commands (an `ECHO` of its own text, then its own counter), and the
/// server saw no more connections than the client keeps.
async fn concurrent_commands_get_their_own_replies<R: Runtime>(rt: R) {
    let server = store_servers::RedisServer::start().expect("redis-server");
    let redis = client(&rt, &server.url());
    redis.ping().await.unwrap();
    let (done, results) = async_channel::unbounded();
    for i in 0..200u32 {
        let redis = redis.clone();
        let done = done.clone();
        rt.spawn(async move {
            let mine = format!("task-{i}-{}", "x".repeat(i as usize % 37));
            let echo = redis
                .command(&[b"ECHO".as_slice(), mine.as_bytes()], DEADLINE)
                .await;
            let key = format!("counter-{i}");
            let incr = redis
                .command(
                    &[
                        b"INCRBY".as_slice(),
                        key.as_bytes(),
                        i.to_string().as_bytes(),
                    ],
                    DEADLINE,
                )
                .await;
            done.send((i, mine, echo, incr)).await.unwrap();
        });
    }
    drop(done);
    let mut seen = 0;
    while let Ok((i, mine, echo, incr)) = results.recv().await {
        assert_eq!(text(&echo.unwrap()), mine, "task {i}'s ECHO");
        assert_eq!(
            incr.unwrap(),
            Value::Integer(i64::from(i)),
            "task {i}'s INCRBY"
        );
        seen += 1;
    }
    assert_eq!(seen, 200);
    let clients = info_field(&redis, "clients", "connected_clients").await;
    assert!(
        clients as usize <= CONNECTIONS,
        "{clients} connections for a client that keeps {CONNECTIONS}"
    );
}

/// Commands blocked in the server when it is killed fail at once (long before their own
/// timeout) as "unavailable"; while it is down commands fail fast; once it is back the same
/// client answers again, without being recreated.
async fn killed_server_fails_waiters_fast_and_client_recovers<R: Runtime>(rt: R) {
    let mut server = store_servers::RedisServer::start().expect("redis-server");
    let redis = client(&rt, &server.url());
    let observer = client(&rt, &server.url());
    redis.ping().await.unwrap();
    let (done, results) = async_channel::unbounded();
    for i in 0..20u32 {
        let redis = redis.clone();
        let done = done.clone();
        rt.spawn(async move {
            // Blocks the connection server-side for 60 s unless something is pushed.
            let key = format!("never-{i}");
            let reply = redis
                .command(&[b"BLPOP".as_slice(), key.as_bytes(), b"60"], DEADLINE)
                .await;
            done.send(reply).await.unwrap();
        });
    }
    drop(done);
    let end = Instant::now() + DEADLINE;
    while info_field(&observer, "clients", "blocked_clients").await == 0 {
        assert!(Instant::now() < end, "the BLPOPs never reached the server");
        rt.sleep(Duration::from_millis(10)).await;
    }
    let killed = Instant::now();
    server.stop();
    let mut failed = 0;
    while let Ok(reply) = results.recv().await {
        match reply {
            Err(RedisError::Unavailable { why, .. }) => assert!(!why.is_empty()),
            other => panic!("a waiter of a killed server got {other:?}"),
        }
        failed += 1;
    }
    assert_eq!(failed, 20);
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "the waiters failed {:?} after the kill (their timeout: {DEADLINE:?})",
        killed.elapsed()
    );
    // Down: a command is refused at once, not after its timeout.
    let asked = Instant::now();
    let down = redis.command(&[b"PING".as_slice()], DEADLINE).await;
    assert!(
        matches!(down, Err(RedisError::Unavailable { .. })),
        "{down:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    server.restart().expect("redis-server again");
    let end = Instant::now() + DEADLINE;
    loop {
        match redis
            .command(&[b"ECHO".as_slice(), b"back"], DEADLINE)
            .await
        {
            Ok(value) => {
                assert_eq!(text(&value), "back");
                break;
            }
            Err(RedisError::Unavailable { .. }) => {
                assert!(
                    Instant::now() < end,
                    "no recovery after the server came back"
                );
                rt.sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
}

/// A command that outlives its timeout (a BLPOP holding the connection for 1 s, waited for
/// 100 ms) fails as "no answer", and the commands after it still get their own replies
/// (its connection answered nothing meanwhile, so it is given up; a late reply on a
/// connection that stays would be read and dropped).
async fn timed_out_command_does_not_misalign_replies<R: Runtime>(rt: R) {
    let server = store_servers::RedisServer::start().expect("redis-server");
    let redis = client(&rt, &server.url());
    redis.ping().await.unwrap();
    for round in 0..3 {
        let slow = redis
            .command(
                &[b"BLPOP".as_slice(), b"nothing-here", b"1"],
                Duration::from_millis(100),
            )
            .await;
        match slow {
            Err(RedisError::Unavailable { why, .. }) => {
                assert!(why.contains("no answer within 100 ms"), "{why}")
            }
            other => panic!("round {round}: the slow command gave {other:?}"),
        }
        let (done, results) = async_channel::unbounded();
        for i in 0..10u32 {
            let redis = redis.clone();
            let done = done.clone();
            rt.spawn(async move {
                let mine = format!("after-{round}-{i}");
                let reply = redis
                    .command(&[b"ECHO".as_slice(), mine.as_bytes()], DEADLINE)
                    .await;
                done.send((mine, reply)).await.unwrap();
            });
        }
        drop(done);
        while let Ok((mine, reply)) = results.recv().await {
            assert_eq!(text(&reply.unwrap()), mine, "round {round}");
        }
    }
}

/// A TCP relay to `target` on a loopback port whose existing connections can be frozen: from
/// then on it neither forwards nor closes them (a network path that went silent), while new
/// connections are relayed as before.
struct FreezingProxy {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FreezingProxy {
    fn start(target: u16) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (f, a) = (frozen.clone(), accepted.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                // Connections numbered below `frozen` are frozen.
                let number = a.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let f = f.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if number < f.load(Ordering::SeqCst) {
                                // Silent: keep the sockets open, forward nothing, ever.
                                loop {
                                    std::thread::park();
                                }
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self {
            port,
            frozen,
            accepted,
        }
    }

    /// Freezes every connection accepted so far.
    fn freeze(&self) {
        use std::sync::atomic::Ordering;
        self.frozen
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The path to Redis goes silent (no reset, no close: a dropped route or a dead middlebox):
/// the first command waits out its timeout, the connection is given up at that point, and
/// the next command gets its answer on a new connection at once — not a timeout per command
/// until TCP gives up minutes later.
async fn silent_connection_is_replaced_after_a_timeout<R: Runtime>(rt: R) {
    let server = store_servers::RedisServer::start().expect("redis-server");
    let proxy = FreezingProxy::start(server.port());
    let redis = client(&rt, &format!("redis://127.0.0.1:{}", proxy.port));
    redis.ping().await.unwrap();
    assert_eq!(proxy.accepted(), CONNECTIONS);
    proxy.freeze();
    let stuck = redis
        .command(&[b"ECHO".as_slice(), b"lost"], Duration::from_millis(300))
        .await;
    match stuck {
        Err(RedisError::Unavailable { why, .. }) => {
            assert!(why.contains("no answer within 300 ms"), "{why}")
        }
        other => panic!("a command on a silent connection gave {other:?}"),
    }
    // Every connection the client had is silent; each is given up on its first timeout.
    let end = Instant::now() + DEADLINE;
    loop {
        match redis
            .command(&[b"ECHO".as_slice(), b"fresh"], Duration::from_millis(300))
            .await
        {
            Ok(value) => {
                assert_eq!(text(&value), "fresh");
                break;
            }
            Err(RedisError::Unavailable { why, .. }) => {
                assert!(Instant::now() < end, "never recovered: {why}");
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(
        proxy.accepted() > CONNECTIONS,
        "the answer came without a new connection"
    );
}

#[test]
fn redis_silent_connection_is_replaced_after_a_timeout_tokio() {
    gate_runtime_tokio::block_on(silent_connection_is_replaced_after_a_timeout).unwrap();
}

#[test]
fn redis_silent_connection_is_replaced_after_a_timeout_smol() {
    gate_runtime_smol::block_on(silent_connection_is_replaced_after_a_timeout).unwrap();
}

#[test]
fn redis_concurrent_commands_get_their_own_replies_tokio() {
    gate_runtime_tokio::block_on(concurrent_commands_get_their_own_replies).unwrap();
}

#[test]
fn redis_concurrent_commands_get_their_own_replies_smol() {
    gate_runtime_smol::block_on(concurrent_commands_get_their_own_replies).unwrap();
}

#[test]
fn redis_killed_server_fails_waiters_fast_and_client_recovers_tokio() {
    gate_runtime_tokio::block_on(killed_server_fails_waiters_fast_and_client_recovers).unwrap();
}

#[test]
fn redis_killed_server_fails_waiters_fast_and_client_recovers_smol() {
    gate_runtime_smol::block_on(killed_server_fails_waiters_fast_and_client_recovers).unwrap();
}

#[test]
fn redis_timed_out_command_does_not_misalign_replies_tokio() {
    gate_runtime_tokio::block_on(timed_out_command_does_not_misalign_replies).unwrap();
}

#[test]
fn redis_timed_out_command_does_not_misalign_replies_smol() {
    gate_runtime_smol::block_on(timed_out_command_does_not_misalign_replies).unwrap();
}
