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
/// 100 ms) fails as "no answer", and the commands after it on the same connection still get
/// their own replies (its late reply is read and dropped).
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
