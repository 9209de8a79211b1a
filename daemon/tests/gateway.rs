//! The request path in process: the real `Gateway` and `App` served on loopback by the
//! daemon's own server loop, a real HTTP client, and small scripted upstreams on loopback
//! that answer as the providers do (status, `retry-after`, error shapes). Each scenario runs
//! under tokio and smol.
//!
//! Covered: pass-through bytes, failover, rate-limit state per (upstream, model) with
//! `retry-after` (also across conversion), breakers per (upstream, model), the breaker slot
//! given back when the client goes away, strategies and weights, `max_response_bytes`,
//! secret scrubbing, bounded echo of model names, `BEARER`, and `GET /`; Gemini clients on
//! native Gemini upstreams (pass-through, both stream forms, `countTokens`, failover mixing
//! native and converted candidates, Google server tools), per-upstream `stream_usage` and
//! `model_rules`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gate_core::route::{BreakerConfig, Health};
use gate_daemon::app::App;
use gate_daemon::auth::TokenStore;
use gate_daemon::gateway::Gateway;
use gate_rt::client::{http_client, ClientSettings, HttpClient};
use gate_rt::Runtime;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UPSTREAM_KEY: &str = "sk-upstream-secret-key-0123456789";
const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// A scripted upstream.

/// One request an upstream received.
type Seen = common::HttpRequest;

impl Seen {
    fn json_body(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn model(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["model"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// What the upstream answers.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Never answer (hold the connection until the peer closes it).
    hang: bool,
    /// Promise more body than is sent, then close the connection (a stream that breaks).
    truncate: bool,
    /// Send the head, then wait this long before the body (noting when the body went out);
    /// without it, head and body go out in one write.
    body_after: Option<(Duration, Arc<Mutex<Option<Instant>>>)>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string().into_bytes(),
            hang: false,
            truncate: false,
            body_after: None,
        }
    }
    /// An SSE stream of `events` chat chunks and `[DONE]`.
    fn stream(events: usize) -> Reply {
        let mut body = String::new();
        for i in 0..events {
            body.push_str(&format!(
                "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}}}}]}}\n\n"
            ));
        }
        body.push_str("data: [DONE]\n\n");
        Reply::event_stream(body)
    }
    /// A `text/event-stream` answer of `body`, whole.
    fn event_stream(body: String) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type", "text/event-stream".into())],
            body: body.into_bytes(),
            hang: false,
            truncate: false,
            body_after: None,
        }
    }
    /// An SSE stream that sends one chunk and breaks off.
    fn broken_stream() -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type", "text/event-stream".into())],
            body: b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n".to_vec(),
            hang: false,
            truncate: true,
            body_after: None,
        }
    }
    fn chat(text: &str) -> Reply {
        Reply::json(
            200,
            json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}),
        )
    }
    fn with_header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }
    fn hang() -> Reply {
        Reply {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            hang: true,
            truncate: false,
            body_after: None,
        }
    }
}

type Script = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections whose peer has gone away.
    closed: Arc<AtomicUsize>,
}

impl Upstream {
    fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
        let addr = listener.local_addr().expect("upstream address");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let closed: Arc<AtomicUsize> = Arc::default();
        let script: Script = Arc::new(script);
        let (seen2, closed2) = (seen.clone(), closed.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (script, seen, closed) = (script.clone(), seen2.clone(), closed2.clone());
                std::thread::spawn(move || serve(stream, &script, &seen, &closed));
            }
        });
        Upstream { addr, seen, closed }
    }
    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    fn anthropic_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn hits(&self) -> usize {
        self.seen().len()
    }
}

fn serve(stream: TcpStream, script: &Script, seen: &Mutex<Vec<Seen>>, closed: &AtomicUsize) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    loop {
        let Some(request) = common::read_request(&mut reader) else {
            // The peer went away.
            closed.fetch_add(1, Ordering::SeqCst);
            return;
        };
        let reply = script(&request);
        seen.lock().unwrap().push(request);
        if reply.hang {
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
            closed.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let promised = reply.body.len() + if reply.truncate { 1000 } else { 0 };
        let mut head = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {promised}\r\n",
            reply.status
        );
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let sent = match &reply.body_after {
            Some((pause, sent_at)) => {
                let head_sent = stream.write_all(head.as_bytes()).is_ok();
                std::thread::sleep(*pause);
                *sent_at.lock().unwrap() = Some(Instant::now());
                head_sent && stream.write_all(&reply.body).is_ok()
            }
            None => {
                let mut whole = head.into_bytes();
                whole.extend_from_slice(&reply.body);
                stream.write_all(&whole).is_ok()
            }
        };
        if !sent {
            return;
        }
        if reply.truncate {
            let _ = stream.flush();
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Gate in process.

struct Gate<R: Runtime> {
    addr: SocketAddr,
    gateway: Arc<Gateway<R>>,
    token: String,
    client: HttpClient<R, Full<Bytes>>,
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
            )
        })
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn start_gate<R: Runtime>(
    rt: &R,
    tag: &str,
    config: &str,
    breaker: BreakerConfig,
) -> Gate<R> {
    let dir = common::temp_dir(&format!("gateway-{tag}-{}", R::NAME));
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("create the state directory");
    let file = dir.join("gate.toml");
    std::fs::write(&file, config).expect("write gate.toml");
    let loaded = gate_daemon::settings::load(&[file], &state).expect("configuration");
    let mut tokens = TokenStore::load(&state).expect("token store");
    let (_, token) = tokens.create("test", None).expect("create a token");
    let gateway = Arc::new(
        Gateway::with_breaker_config(rt.clone(), &loaded.config, tokens, breaker).expect("gateway"),
    );
    let listener =
        gate_daemon::server::bind(rt, "127.0.0.1:0".parse().unwrap()).expect("bind gate");
    let addr = gate_daemon::server::local_addr::<R>(&listener).expect("gate address");
    // With the admin API and web UI, as `gate serve` has them.
    let admin_token = "admin-token-for-the-gateway-tests".to_owned();
    gateway.protect_secret(&admin_token);
    let reloader = Arc::new(gate_daemon::reload::Reloader::new(
        rt.clone(),
        gateway.clone(),
        Vec::new(),
        state.clone(),
        loaded,
    ));
    let admin = Arc::new(gate_daemon::admin::Admin::new(reloader, admin_token, addr));
    let app = Arc::new(App::new(gateway.clone()).with_admin(admin));
    rt.spawn(gate_daemon::server::serve(
        rt.clone(),
        listener,
        app,
        gate_rt::hyper_glue::ServerSettings::default(),
        gate_daemon::server::ConnectionCap::new("local", 4096),
        gate_rt::tunnel::support::Shutdown::new(),
    ));
    Gate {
        addr,
        gateway,
        token,
        client: http_client(rt.clone(), &ClientSettings::default()),
    }
}

impl<R: Runtime> Gate<R> {
    fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
    }

    async fn send(&self, builder: http::request::Builder, body: Vec<u8>) -> Answer {
        let request = builder.body(Full::new(Bytes::from(body))).expect("request");
        let response = self.client.request(request).await.expect("gate answers");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("gate body").to_bytes().to_vec();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// `POST path` with the Gate token as a bearer token.
    async fn post(&self, path: &str, body: Value) -> Answer {
        let bytes = body.to_string().into_bytes();
        self.send(self.post_request(path), bytes).await
    }

    /// The request of [`post`](Self::post) before its body: a JSON `POST` with the token.
    fn post_request(&self, path: &str) -> http::request::Builder {
        self.request("POST", path)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
    }

    fn health(&self, upstream: &str) -> Health {
        self.gateway
            .upstream_health(Instant::now())
            .into_iter()
            .find(|(name, _)| name == upstream)
            .map(|(_, health)| health)
            .expect("upstream known")
    }
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

fn messages(model: &str) -> Value {
    json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
}

async fn wait_until<R: Runtime>(rt: &R, what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !check() {
        assert!(
            Instant::now() < end,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        rt.sleep(Duration::from_millis(20)).await;
    }
}

fn upstream_block(name: &str, provider: &str, base_url: &str, extra: &str) -> String {
    format!(
        "[upstreams.{name}]\nprovider = \"{provider}\"\nbase_url = \"{base_url}\"\n\
         api_key = \"{UPSTREAM_KEY}\"\n{extra}\n"
    )
}

// ---------------------------------------------------------------------------------------
// Scenarios.

/// A 429 puts that (upstream, model) aside for its `retry-after` without opening a breaker:
/// the request fails over, the next ones skip the limited pair, and the same upstream keeps
/// serving its other models. A pass-through body reaches the upstream byte for byte.
async fn rate_limit_fails_over_and_stays_with_its_model<R: Runtime>(rt: R) {
    let first = Upstream::start(|seen| {
        if seen.model() == "shared" {
            Reply::json(
                429,
                json!({"error": {"message": "slow down", "type": "rate_limit"}}),
            )
            .with_header("retry-after", "30")
        } else {
            Reply::chat("from first")
        }
    });
    let second = Upstream::start(|_| Reply::chat("from second"));
    let config = format!(
        "{}{}",
        upstream_block(
            "a-first",
            "custom",
            &first.base_url(),
            "models = [\"shared\", \"own\"]"
        ),
        upstream_block(
            "b-second",
            "custom",
            &second.base_url(),
            "models = [\"shared\"]"
        ),
    );
    let gate = start_gate(&rt, "ratelimit", &config, BreakerConfig::default()).await;

    let odd = b"{ \"model\" : \"shared\",\n  \"messages\":[{\"role\":\"user\",\"content\":\"x\\u00e9\"}], \"n\": 1.50 }".to_vec();
    let builder = gate
        .request("POST", "/v1/chat/completions")
        .header("authorization", format!("Bearer {}", gate.token))
        .header("content-type", "application/json");
    let answer = gate.send(builder, odd.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(answer.text().contains("from second"), "{}", answer.text());
    assert_eq!(
        second.seen()[0].body,
        odd,
        "pass-through must forward the client's bytes"
    );
    assert_eq!(first.hits(), 1);

    for _ in 0..6 {
        let answer = gate.post("/v1/chat/completions", chat("shared")).await;
        assert!(answer.text().contains("from second"), "{}", answer.text());
    }
    assert_eq!(
        first.hits(),
        1,
        "a rate-limited pair is not asked again before retry-after"
    );
    let answer = gate.post("/v1/chat/completions", chat("own")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(answer.text().contains("from first"), "{}", answer.text());
    assert_eq!(
        gate.health("a-first"),
        Health::Closed,
        "a 429 is not a breaker failure"
    );
}

/// With no other candidate the client gets the upstream's 429 and `retry-after`, in its own
/// protocol's shape across conversion; later requests are answered 429 by Gate itself until
/// the limit is over, and the breaker never opens.
async fn rate_limit_reaches_the_client_across_conversion<R: Runtime>(rt: R) {
    let upstream = Upstream::start(|_| {
        Reply::json(
            429,
            json!({"error": {"message": "rate limited", "type": "rate_limit"}}),
        )
        .with_header("retry-after", "7")
    });
    let config = upstream_block(
        "only",
        "custom",
        &upstream.base_url(),
        "models = [\"conv\"]",
    );
    let gate = start_gate(&rt, "ratelimit-convert", &config, BreakerConfig::default()).await;

    let answer = gate.post("/v1/messages", messages("conv")).await;
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.text()
    );
    assert_eq!(answer.headers["retry-after"], "7");
    let body = answer.json();
    assert_eq!(body["type"], "error", "Anthropic shape: {body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");

    for _ in 0..6 {
        let answer = gate.post("/v1/messages", messages("conv")).await;
        assert_eq!(
            answer.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            answer.text()
        );
        let retry: u64 = answer.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=7).contains(&retry), "{retry}");
        assert_eq!(answer.json()["type"], "error");
    }
    assert_eq!(upstream.hits(), 1, "Gate answers for the limited upstream");
    assert_eq!(
        upstream.seen()[0].path(),
        "/v1/chat/completions",
        "converted to OpenAI"
    );
    assert_eq!(gate.health("only"), Health::Closed);
}

/// 5xx open the breaker of that (upstream, model) only; once half-open, a trial whose
/// client goes away gives its slot back at once (not after the trial timeout), and the next
/// trial closes the circuit.
async fn breaker_per_model_and_slot_released_on_disconnect<R: Runtime>(rt: R) {
    let mode = Arc::new(AtomicUsize::new(0)); // 0: fail, 1: hang, 2: answer
    let mode2 = mode.clone();
    let upstream = Upstream::start(move |seen| {
        if seen.model() == "healthy" {
            return Reply::chat("healthy");
        }
        match mode2.load(Ordering::SeqCst) {
            0 => Reply::json(500, json!({"error": {"message": "boom"}})),
            1 => Reply::hang(),
            _ => Reply::chat("recovered"),
        }
    });
    let config = upstream_block(
        "solo",
        "custom",
        &upstream.base_url(),
        "models = [\"flaky\", \"healthy\"]",
    );
    let breaker = BreakerConfig {
        failure_threshold: 2,
        base_cooldown: Duration::from_millis(300),
        max_cooldown: Duration::from_millis(300),
        trial_timeout: Duration::from_secs(600),
    };
    let gate = start_gate(&rt, "breaker", &config, breaker).await;

    for _ in 0..2 {
        let answer = gate.post("/v1/chat/completions", chat("flaky")).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
    }
    let answer = gate.post("/v1/chat/completions", chat("flaky")).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text()
    );
    assert!(answer.headers.contains_key("retry-after"));
    assert_eq!(upstream.hits(), 2, "an open circuit sends nothing upstream");
    let answer = gate.post("/v1/chat/completions", chat("healthy")).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "other models of the upstream still route"
    );

    // Half-open: the trial hangs upstream and its client goes away.
    mode.store(1, Ordering::SeqCst);
    let half_open_and_free = || {
        matches!(
            gate.health("solo"),
            Health::HalfOpen {
                trial_in_flight: false
            }
        )
    };
    wait_until(&rt, "the circuit to half-open", half_open_and_free).await;
    let hits = upstream.hits();
    let closed_before = upstream.closed.load(Ordering::SeqCst);
    let trial = gate.post("/v1/chat/completions", chat("flaky"));
    let upstream_saw_it = async {
        while upstream.hits() == hits {
            rt.sleep(Duration::from_millis(10)).await;
        }
    };
    let raced = gate_rt::timeout(&rt, DEADLINE, async {
        futures_util::pin_mut!(trial);
        futures_util::future::select(trial, Box::pin(upstream_saw_it)).await;
    })
    .await;
    assert!(raced.is_ok(), "the trial never reached the upstream");
    // The client's request future is gone: Gate must drop the attempt and free the slot.
    wait_until(
        &rt,
        "the abandoned trial's slot to be given back",
        half_open_and_free,
    )
    .await;
    wait_until(&rt, "the upstream connection to close", || {
        upstream.closed.load(Ordering::SeqCst) > closed_before
    })
    .await;

    mode.store(2, Ordering::SeqCst);
    let answer = gate.post("/v1/chat/completions", chat("flaky")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(gate.health("solo"), Health::Closed);
}

/// A stream that breaks after its first bytes counts against the breaker of its (upstream,
/// model) (`FailedAfterFirstByte`): enough of them open the circuit, though each began 200.
async fn broken_streams_open_the_breaker<R: Runtime>(rt: R) {
    let upstream = Upstream::start(|_| Reply::broken_stream());
    let config = upstream_block(
        "streamer",
        "custom",
        &upstream.base_url(),
        "models = [\"s\"]",
    );
    let breaker = BreakerConfig {
        failure_threshold: 2,
        base_cooldown: Duration::from_secs(60),
        ..BreakerConfig::default()
    };
    let gate = start_gate(&rt, "broken-stream", &config, breaker).await;
    let mut request = chat("s");
    request["stream"] = true.into();
    for _ in 0..2 {
        let answer = gate.post("/v1/chat/completions", request.clone()).await;
        assert_eq!(answer.status, StatusCode::OK);
        let text = answer.text();
        assert!(text.contains("par"), "{text}");
        assert!(
            text.contains("\"error\""),
            "the break ends with an error event: {text}"
        );
    }
    assert!(
        matches!(gate.health("streamer"), Health::Open { .. }),
        "{:?}",
        gate.health("streamer")
    );
    let answer = gate.post("/v1/chat/completions", request).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text()
    );
    assert_eq!(upstream.hits(), 2);
}

/// A stream whose head and events reach Gate together reaches the client in one write: the
/// client's first read holds the head and the first events (Gate gathers the first batch
/// before the head goes out; one segment instead of two, issue 16). A stream whose upstream
/// sends its head and then waits still gets its head through at once: Gate never holds the
/// head for upstream data.
async fn stream_head_leaves_with_the_first_events_but_never_waits_for_them<R: Runtime>(rt: R) {
    let body_sent_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let noted = body_sent_at.clone();
    let upstream = Upstream::start(move |seen| {
        if seen.model() == "late" {
            Reply {
                body_after: Some((Duration::from_millis(1500), noted.clone())),
                ..Reply::stream(3)
            }
        } else {
            Reply::stream(3)
        }
    });
    let config = upstream_block(
        "streamer",
        "custom",
        &upstream.base_url(),
        "models = [\"s\", \"late\"]",
    );
    let gate = start_gate(&rt, "stream-head", &config, BreakerConfig::default()).await;

    // Head and events together: one read on a raw connection holds them. On tokio's serving
    // cores (a connection, its upstream connection and their tasks on one thread) every time;
    // smol's work-stealing executor may run the upstream connection's task on another thread
    // after the head has gone, so there it is asked of one answer in five.
    let mut one_read = 0;
    for _ in 0..5 {
        let first = first_read_of_a_stream(&rt, &gate, "s").await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        if first.contains("word0") {
            one_read += 1;
        } else {
            assert!(
                R::NAME != "tokio",
                "the client's first read holds the head and the first event: {first}"
            );
        }
    }
    assert!(one_read > 0, "no answer left Gate as one write");

    // The upstream sends its head, then its events 1.5 s later: the head is through first.
    let mut request = chat("late");
    request["stream"] = true.into();
    let response = gate
        .client
        .request(
            gate.post_request("/v1/chat/completions")
                .body(Full::new(Bytes::from(request.to_string())))
                .expect("request"),
        )
        .await
        .expect("gate answers");
    let head_at = Instant::now();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response
        .into_body()
        .collect()
        .await
        .expect("the stream")
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("word2") && text.contains("[DONE]"), "{text}");
    let body_sent_at = body_sent_at
        .lock()
        .unwrap()
        .expect("the upstream noted when it sent its events");
    assert!(
        head_at < body_sent_at,
        "the head reached the client only after the upstream sent its first event"
    );
}

/// What a client's first read of a streamed chat answer (`model`) on a fresh raw
/// connection holds.
async fn first_read_of_a_stream<R: Runtime>(rt: &R, gate: &Gate<R>, model: &str) -> String {
    let mut request = chat(model);
    request["stream"] = true.into();
    let body = request.to_string();
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gate\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        gate.token,
        body.len()
    );
    let mut conn = rt.connect_tcp(gate.addr).await.expect("connect to gate");
    conn.write_all(raw.as_bytes())
        .await
        .expect("send the request");
    let mut first = vec![0u8; 64 * 1024];
    let n = gate_rt::timeout(rt, DEADLINE, conn.read(&mut first))
        .await
        .expect("gate answers in time")
        .expect("read the answer");
    String::from_utf8_lossy(&first[..n]).into_owned()
}

/// `[routing.strategy]` orders a model's upstreams: `weighted` with weight 0 puts the first
/// configured upstream last; a model without a strategy keeps configuration order.
async fn strategies_order_the_upstreams<R: Runtime>(rt: R) {
    let first = Upstream::start(|_| Reply::chat("first"));
    let second = Upstream::start(|_| Reply::chat("second"));
    let config = format!(
        "{}{}[routing.strategy]\nspread = \"weighted\"\n",
        upstream_block(
            "a-first",
            "custom",
            &first.base_url(),
            "models = [\"spread\", \"plain\"]\nweight = 0"
        ),
        upstream_block(
            "b-second",
            "custom",
            &second.base_url(),
            "models = [\"spread\", \"plain\"]\nweight = 5"
        ),
    );
    let gate = start_gate(&rt, "strategy", &config, BreakerConfig::default()).await;
    for _ in 0..8 {
        let answer = gate.post("/v1/chat/completions", chat("spread")).await;
        assert!(answer.text().contains("second"), "{}", answer.text());
        let answer = gate.post("/v1/chat/completions", chat("plain")).await;
        assert!(answer.text().contains("first"), "{}", answer.text());
    }
    assert_eq!(first.hits(), 8);
    assert_eq!(second.hits(), 8);
}

/// Buffered answers are capped by `server.max_response_bytes` (502 naming the key) and request
/// bodies by `server.max_body_bytes` (413 naming it; a body under it arrives whole, in many
/// reads); upstream text that echoes the provider key is scrubbed, passed through or
/// converted; a huge model name is echoed bounded.
async fn caps_scrubbing_and_bounded_echo<R: Runtime>(rt: R) {
    let upstream = Upstream::start(|seen| {
        match seen.model().as_str() {
        "big" => Reply::json(200, json!({"pad": "x".repeat(100_000)})),
        "stream-echo" => Reply {
            status: 200,
            headers: vec![("content-type", "text/event-stream".into())],
            body: format!(
                "data: {}\n\ndata: [DONE]\n\n",
                json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                    "choices": [{"index": 0, "delta": {"content": seen.header("authorization").unwrap_or("")}}]})
            )
            .into_bytes(),
            hang: false,
            truncate: false,
            body_after: None,
        },
        _ => Reply::json(
            400,
            json!({"error": {"message": format!("bad key: {}", seen.header("authorization").unwrap_or("")),
                "type": "invalid_request_error"}}),
        ),
    }
    });
    let anthropic = Upstream::start(|seen| {
        Reply::json(
            401,
            json!({"type": "error", "error": {"type": "authentication_error",
                "message": format!("invalid x-api-key {}", seen.header("x-api-key").unwrap_or(""))}}),
        )
    });
    let config = format!(
        "{}{}[server]\nmax_response_bytes = 65536\nmax_body_bytes = 2000000\n",
        upstream_block(
            "openai-like",
            "custom",
            &upstream.base_url(),
            "models = [\"big\", \"echo\", \"stream-echo\"]"
        ),
        upstream_block(
            "anthropic",
            "anthropic",
            &anthropic.anthropic_url(),
            "models = [\"claude-echo\"]"
        ),
    );
    let gate = start_gate(&rt, "caps", &config, BreakerConfig::default()).await;

    let answer = gate.post("/v1/chat/completions", chat("big")).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
    assert!(
        answer.text().contains("max_response_bytes"),
        "{}",
        answer.text()
    );

    let answer = gate.post("/v1/chat/completions", chat("echo")).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(!answer.text().contains(UPSTREAM_KEY), "{}", answer.text());
    assert!(answer.text().contains("[redacted]"), "{}", answer.text());

    let answer = gate.post("/v1/chat/completions", chat("claude-echo")).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.text());
    assert!(!answer.text().contains(UPSTREAM_KEY), "{}", answer.text());
    assert!(answer.text().contains("[redacted]"), "{}", answer.text());

    let mut streamed = chat("stream-echo");
    streamed["stream"] = true.into();
    let answer = gate.post("/v1/chat/completions", streamed).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(!answer.text().contains(UPSTREAM_KEY), "{}", answer.text());
    assert!(answer.text().contains("[redacted]"), "{}", answer.text());

    let huge = "gpt-".to_owned() + &"z".repeat(1 << 20);
    let answer = gate.post("/v1/chat/completions", chat(&huge)).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(
        answer.body.len() < 2048,
        "echoed {} bytes",
        answer.body.len()
    );

    let over = "gpt-".to_owned() + &"z".repeat(2_000_000);
    let answer = gate.post("/v1/chat/completions", chat(&over)).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.text()
    );
    assert!(
        answer.text().contains("server.max_body_bytes"),
        "{}",
        answer.text()
    );
}

/// Model discovery reads lists up to `server.max_response_bytes`: a larger list is not used
/// (and not buffered whole), a smaller one is.
async fn discovery_is_capped<R: Runtime>(rt: R) {
    let list = |count: usize| {
        let data: Vec<Value> = (0..count)
            .map(|i| json!({"id": format!("listed-model-{i:05}"), "object": "model"}))
            .collect();
        Reply::json(200, json!({"object": "list", "data": data}))
    };
    let huge = Upstream::start(move |_| list(5000));
    let small = Upstream::start(move |_| list(3));
    let config = format!(
        "{}{}[server]\nmax_response_bytes = 65536\n",
        upstream_block("a-huge", "custom", &huge.base_url(), ""),
        upstream_block("b-small", "custom", &small.base_url(), ""),
    );
    let gate = start_gate(&rt, "discovery-cap", &config, BreakerConfig::default()).await;
    gate.gateway.discover_models().await;
    assert_eq!(huge.hits(), 1);
    assert_eq!(small.hits(), 1);
    let routes = gate.gateway.routes();
    let names: Vec<&str> = routes.iter().map(|(model, _)| model.as_str()).collect();
    assert_eq!(
        names,
        [
            "listed-model-00000",
            "listed-model-00001",
            "listed-model-00002"
        ],
        "only the small list is used"
    );
    assert!(routes
        .iter()
        .all(|(_, candidates)| candidates.iter().all(|c| &*c.upstream_name == "b-small")));
}

/// `Authorization: BEARER` is accepted (the scheme is case-insensitive); `GET /` answers a
/// JSON index, not a 404.
async fn bearer_any_case_and_index<R: Runtime>(rt: R) {
    let upstream = Upstream::start(|_| Reply::chat("ok"));
    let config = upstream_block("u", "custom", &upstream.base_url(), "models = [\"m\"]");
    let gate = start_gate(&rt, "bearer", &config, BreakerConfig::default()).await;
    for scheme in ["BEARER", "bearer", "Bearer"] {
        let builder = gate
            .request("POST", "/v1/chat/completions")
            .header("authorization", format!("{scheme} {}", gate.token));
        let answer = gate.send(builder, chat("m").to_string().into_bytes()).await;
        assert_eq!(answer.status, StatusCode::OK, "{scheme}: {}", answer.text());
    }
    let builder = gate
        .request("POST", "/v1/chat/completions")
        .header("authorization", "BEARER gk_wrong");
    let answer = gate.send(builder, chat("m").to_string().into_bytes()).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    let browser = gate
        .request("GET", "/")
        .header("accept", "text/html,*/*;q=0.8");
    let answer = gate.send(browser, Vec::new()).await;
    assert_eq!(answer.status, StatusCode::FOUND, "{}", answer.text());
    assert_eq!(answer.headers["location"], "/ui/");

    let answer = gate.send(gate.request("GET", "/"), Vec::new()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let index = answer.json();
    assert_eq!(index["name"], "gate");
    assert!(index["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "POST /v1/chat/completions"));
}

// ---------------------------------------------------------------------------------------
// Coding agents' shapes across protocols (issue 12). The scripted upstreams refuse what
// the real APIs refuse (strict checks kept in their own functions).

/// What OpenAI's Chat Completions refuses: unknown top-level fields, unknown roles,
/// `max_tokens` on reasoning models (o-series, gpt-5).
fn strict_openai_chat_check(body: &Value) -> Result<(), String> {
    const FIELDS: &[&str] = &[
        "model",
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "n",
        "user",
        "reasoning_effort",
        "response_format",
        "seed",
        "logprobs",
    ];
    let object = body.as_object().ok_or("body is not an object")?;
    for key in object.keys() {
        if !FIELDS.contains(&key.as_str()) {
            return Err(format!("Unrecognized request argument supplied: {key}"));
        }
    }
    for message in body["messages"].as_array().ok_or("no messages")? {
        let role = message["role"].as_str().unwrap_or("");
        if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
            return Err(format!("Invalid value: '{role}'"));
        }
    }
    let model = body["model"].as_str().unwrap_or("");
    let reasoning = model.starts_with("gpt-5") || model.starts_with('o');
    if reasoning && object.contains_key("max_tokens") {
        return Err(
            "Unsupported parameter: 'max_tokens' is not supported with this model. \
                    Use 'max_completion_tokens' instead."
                .into(),
        );
    }
    Ok(())
}

/// What Anthropic's Messages API refuses: unknown top-level fields, roles other than user
/// and assistant, a missing `max_tokens`.
fn strict_anthropic_check(body: &Value) -> Result<(), String> {
    const FIELDS: &[&str] = &[
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "stream",
        "tools",
        "tool_choice",
        "thinking",
    ];
    let object = body.as_object().ok_or("body is not an object")?;
    for key in object.keys() {
        if !FIELDS.contains(&key.as_str()) {
            return Err(format!("{key}: Extra inputs are not permitted"));
        }
    }
    if !object.contains_key("max_tokens") {
        return Err("max_tokens: Field required".into());
    }
    for message in body["messages"].as_array().ok_or("no messages")? {
        let role = message["role"].as_str().unwrap_or("");
        if !["user", "assistant"].contains(&role) {
            return Err(format!(
                "messages: Input tag '{role}' found using 'role' does not match"
            ));
        }
    }
    Ok(())
}

fn refusal(message: String) -> Reply {
    Reply::json(
        400,
        json!({"error": {"message": message, "type": "invalid_request_error"}}),
    )
}

fn sse(events: &[(&str, Value)]) -> Reply {
    let mut body = String::new();
    for (name, data) in events {
        if !name.is_empty() {
            body.push_str(&format!("event: {name}\n"));
        }
        body.push_str(&format!("data: {data}\n\n"));
    }
    Reply::event_stream(body)
}

/// A chat-completions-only upstream (no `/responses`), strict, answering with a tool call.
fn chat_only_upstream() -> Upstream {
    Upstream::start(|seen| {
        if seen.path() != "/v1/chat/completions" {
            return Reply::json(404, json!({"error": {"message": "not found"}}));
        }
        let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        if let Err(message) = strict_openai_chat_check(&body) {
            return refusal(message);
        }
        if body["stream"] == true {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 0,
                       "model": "gpt-5-mini", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            return sse(&[
                (
                    "",
                    chunk(
                        json!({"role": "assistant", "reasoning_content": "think"}),
                        Value::Null,
                    ),
                ),
                ("", chunk(json!({"content": "Let me look."}), Value::Null)),
                (
                    "",
                    chunk(
                        json!({"tool_calls": [{"index": 0, "id": "call_7", "type": "function",
                    "function": {"name": "shell", "arguments": "{\"cmd\":"}}]}),
                        Value::Null,
                    ),
                ),
                (
                    "",
                    chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"ls\"}"}}]}),
                        Value::Null,
                    ),
                ),
                ("", chunk(json!({}), json!("tool_calls"))),
                (
                    "",
                    json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 0,
                    "model": "gpt-5-mini", "choices": [],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}),
                ),
            ])
            .with_header("x-request-id", "req_chat_1");
        }
        Reply::json(
            200,
            json!({"id": "chatcmpl-8", "object": "chat.completion", "created": 0, "model": "gpt-5-mini",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": null,
                    "tool_calls": [{"id": "call_7", "type": "function",
                        "function": {"name": "shell", "arguments": "{\"cmd\":\"ls\"}"}}]}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}),
        )
        .with_header("x-request-id", "req_chat_1")
    })
}

/// A strict Anthropic upstream answering with a tool use.
fn anthropic_upstream() -> Upstream {
    Upstream::start(|seen| {
        if seen.path() != "/v1/messages" {
            return Reply::json(
                404,
                json!({"type": "error", "error": {"type": "not_found_error", "message": "no"}}),
            );
        }
        let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        if let Err(message) = strict_anthropic_check(&body) {
            return Reply::json(
                400,
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}),
            );
        }
        if body["stream"] == true {
            return sse(&[
                ("message_start", json!({"type": "message_start", "message": {"id": "msg_5", "type": "message",
                    "role": "assistant", "content": [], "model": "claude-x", "stop_reason": null,
                    "stop_sequence": null, "usage": {"input_tokens": 13, "output_tokens": 1}}})),
                ("content_block_start", json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}})),
                ("content_block_delta", json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": "Checking."}})),
                ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
                ("content_block_start", json!({"type": "content_block_start", "index": 1,
                    "content_block": {"type": "tool_use", "id": "toolu_3", "name": "shell", "input": {}}})),
                ("content_block_delta", json!({"type": "content_block_delta", "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": "{\"cmd\": \"ls\"}"}})),
                ("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
                ("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "tool_use",
                    "stop_sequence": null}, "usage": {"output_tokens": 9}})),
                ("message_stop", json!({"type": "message_stop"})),
            ])
            .with_header("request-id", "req_ant_1")
            .with_header("anthropic-ratelimit-requests-remaining", "49");
        }
        Reply::json(
            200,
            json!({"id": "msg_4", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_3", "name": "shell", "input": {"cmd": "ls"}}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 13, "output_tokens": 9}}),
        )
        .with_header("request-id", "req_ant_1")
        .with_header("anthropic-ratelimit-requests-remaining", "49")
    })
}

/// A Codex-style Responses request: instructions, a tool, history with a function call and
/// its output, a reasoning item, an unknown hosted tool.
fn codex_request(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "instructions": "You are Codex.",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": null},
            {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": "{\"cmd\":\"pwd\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "/work"}
        ],
        "tools": [
            {"type": "function", "name": "shell", "description": "run", "strict": false,
             "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
            {"type": "web_search"}
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": false,
        "stream": stream,
        "include": ["reasoning.encrypted_content"],
        "max_output_tokens": 4000
    })
}

/// Parses a Responses SSE body: (event name, data) pairs; checks each event's name equals
/// its `type` and `sequence_number` counts from 0.
fn responses_events(text: &str) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut name = String::new();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(rest) = line.strip_prefix("event: ") {
                name = rest.to_owned();
            } else if let Some(rest) = line.strip_prefix("data: ") {
                data.push_str(rest);
            }
        }
        let value: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(value["type"], name.as_str(), "{value}");
        assert_eq!(value["sequence_number"], events.len(), "{value}");
        events.push((name, value));
    }
    events
}

fn check_tool_call_output(response: &Value) {
    let calls: Vec<&Value> = response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "function_call")
        .collect();
    assert_eq!(calls.len(), 1, "{response}");
    assert_eq!(calls[0]["name"], "shell");
    assert_eq!(
        serde_json::from_str::<Value>(calls[0]["arguments"].as_str().unwrap()).unwrap(),
        json!({"cmd": "ls"})
    );
    assert!(calls[0]["call_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
}

/// `/v1/responses` for a model on a chat-completions-only upstream: converted to Chat
/// Completions (strictly valid for a gpt-5 model), answered as a Responses object, plain
/// and streamed with the full event sequence.
async fn responses_on_a_chat_only_upstream<R: Runtime>(rt: R) {
    let upstream = chat_only_upstream();
    let config = upstream_block(
        "groq",
        "custom",
        &upstream.base_url(),
        "models = [\"gpt-5-mini\"]\nmax_output_tokens = 3000",
    );
    let gate = start_gate(&rt, "responses-chat", &config, BreakerConfig::default()).await;

    let answer = gate
        .post("/v1/responses", codex_request("gpt-5-mini", false))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let response = answer.json();
    assert_eq!(response["object"], "response");
    assert_eq!(response["status"], "completed");
    check_tool_call_output(&response);
    assert_eq!(response["usage"]["input_tokens"], 11);
    assert_eq!(response["usage"]["output_tokens"], 7);
    assert_eq!(response["usage"]["total_tokens"], 18);
    assert_eq!(answer.headers["x-request-id"], "req_chat_1");
    let seen = upstream.seen();
    assert_eq!(seen[0].path(), "/v1/chat/completions");
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    // Codex asked for 4000; the upstream's `max_output_tokens` caps it.
    assert_eq!(sent["max_completion_tokens"], 3000);
    assert_eq!(sent["reasoning_effort"], "medium");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "You are Codex."})
    );
    assert_eq!(sent["messages"][2]["tool_calls"][0]["id"], "call_1");
    assert_eq!(
        sent["messages"][3],
        json!({"role": "tool", "content": "/work", "tool_call_id": "call_1"})
    );
    assert_eq!(
        sent["tools"].as_array().unwrap().len(),
        1,
        "hosted tools dropped"
    );

    let answer = gate
        .post("/v1/responses", codex_request("gpt-5-mini", true))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let events = responses_events(&answer.text());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    for required in [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_text.delta",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ] {
        assert!(
            names.contains(&required),
            "{required} missing from {names:?}"
        );
    }
    assert_eq!(names[0], "response.created");
    assert_eq!(*names.last().unwrap(), "response.completed");
    let completed = &events.last().unwrap().1["response"];
    check_tool_call_output(completed);
    assert_eq!(completed["usage"]["input_tokens"], 11);
    assert_eq!(completed["usage"]["output_tokens"], 7);
    let sent: Value = serde_json::from_slice(&upstream.seen()[1].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
}

/// `/v1/responses` for a model on an Anthropic upstream: converted to Messages, answered as
/// a Responses object, plain and streamed; headers renamed to OpenAI's.
async fn responses_on_an_anthropic_upstream<R: Runtime>(rt: R) {
    let upstream = anthropic_upstream();
    let config = upstream_block(
        "claude",
        "anthropic",
        &upstream.anthropic_url(),
        "models = [\"claude-x\"]",
    );
    let gate = start_gate(
        &rt,
        "responses-anthropic",
        &config,
        BreakerConfig::default(),
    )
    .await;

    let answer = gate
        .post("/v1/responses", codex_request("claude-x", false))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let response = answer.json();
    check_tool_call_output(&response);
    let message = response["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["type"] == "message")
        .cloned()
        .unwrap();
    assert_eq!(message["content"][0]["text"], "Checking.");
    assert_eq!(response["usage"]["input_tokens"], 13);
    assert_eq!(response["usage"]["output_tokens"], 9);
    assert_eq!(answer.headers["x-request-id"], "req_ant_1");
    assert_eq!(answer.headers["x-ratelimit-remaining-requests"], "49");
    let seen = upstream.seen();
    assert_eq!(seen[0].path(), "/v1/messages");
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(sent["system"], "You are Codex.");
    assert_eq!(sent["max_tokens"], 4000);

    let answer = gate
        .post("/v1/responses", codex_request("claude-x", true))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let events = responses_events(&answer.text());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "response.created");
    assert!(names.contains(&"response.output_text.delta"), "{names:?}");
    assert!(
        names.contains(&"response.function_call_arguments.delta"),
        "{names:?}"
    );
    assert_eq!(*names.last().unwrap(), "response.completed");
    let completed = &events.last().unwrap().1["response"];
    check_tool_call_output(completed);
    assert_eq!(completed["usage"]["input_tokens"], 13);
    assert_eq!(completed["usage"]["output_tokens"], 9);
}

/// Claude Code's newer request shape (a system message mid-conversation, adaptive thinking,
/// effort, an `anthropic-beta` header) on a gpt-5 model of an OpenAI upstream: valid for the
/// strict upstream, no `anthropic-beta` upstream, the request id back as `request-id`.
async fn claude_code_shape_on_an_openai_upstream<R: Runtime>(rt: R) {
    let upstream = chat_only_upstream();
    let config = upstream_block(
        "oai",
        "openai",
        &upstream.base_url(),
        "models = [\"gpt-5-mini\"]",
    );
    let gate = start_gate(&rt, "claude-code-openai", &config, BreakerConfig::default()).await;
    let body = json!({
        "model": "gpt-5-mini", "max_tokens": 32000,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "reminder"},
            {"role": "user", "content": [{"type": "text", "text": "list", "cache_control": {"type": "ephemeral"}}]}
        ],
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "low"},
        "tools": [{"name": "shell", "input_schema": {"type": "object"}}],
        "stream": false
    });
    let builder = gate
        .request("POST", "/v1/messages")
        .header("x-api-key", gate.token.clone())
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "mid-conversation-system-2025-01-01")
        .header("content-type", "application/json");
    let answer = gate.send(builder, body.to_string().into_bytes()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let message = answer.json();
    assert_eq!(message["content"][0]["type"], "tool_use", "{message}");
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(answer.headers["request-id"], "req_chat_1");
    let seen = upstream.seen();
    assert_eq!(seen[0].header("anthropic-beta"), None);
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        sent["messages"][2],
        json!({"role": "system", "content": "reminder"})
    );
    assert_eq!(sent["max_completion_tokens"], 32000);
    assert_eq!(sent["reasoning_effort"], "low");
}

/// A pass-through chat stream whose client did not ask for usage: Gate asks an OpenAI
/// upstream for it (`stream_options.include_usage`), strips the usage-only chunk from what
/// the client receives, and counts the tokens.
async fn usage_on_pass_through_streams<R: Runtime>(rt: R) {
    let upstream = Upstream::start(|seen| {
        let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-u", "object": "chat.completion.chunk", "created": 0,
                   "model": "gpt-4o", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut events = vec![
            (
                "",
                chunk(
                    json!({"role": "assistant", "content": "hello"}),
                    Value::Null,
                ),
            ),
            ("", chunk(json!({}), json!("stop"))),
        ];
        if body["stream_options"]["include_usage"] == true {
            events.push((
                "",
                json!({"id": "chatcmpl-u", "object": "chat.completion.chunk", "created": 0,
                "model": "gpt-4o", "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}),
            ));
        }
        let mut reply = sse(&events);
        reply.body.extend_from_slice(b"data: [DONE]\n\n");
        reply
    });
    let config = upstream_block(
        "oai",
        "openai",
        &upstream.base_url(),
        "models = [\"gpt-4o\"]",
    );
    let gate = start_gate(&rt, "usage-passthrough", &config, BreakerConfig::default()).await;

    let answer = gate
        .post(
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let text = answer.text();
    assert!(text.contains("hello") && text.contains("[DONE]"), "{text}");
    assert!(
        !text.contains("prompt_tokens"),
        "the client did not ask for usage: {text}"
    );
    let sent: Value = serde_json::from_slice(&upstream.seen()[0].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["messages"][0]["content"], "hi");

    // A client that asked gets the chunk, and its body goes through untouched.
    let asked = json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]});
    let answer = gate.post("/v1/chat/completions", asked.clone()).await;
    assert!(
        answer.text().contains("\"prompt_tokens\":5"),
        "{}",
        answer.text()
    );
    assert_eq!(upstream.seen()[1].body, asked.to_string().into_bytes());

    let metrics = gate
        .send(gate.request("GET", "/metrics"), Vec::new())
        .await
        .text();
    let output_tokens = metrics
        .lines()
        .find(|l| {
            l.contains("tokens") && l.contains("upstream=\"oai\"") && l.contains("kind=\"output\"")
        })
        .unwrap_or_else(|| panic!("no output token line in {metrics}"));
    assert!(output_tokens.ends_with(" 14"), "{output_tokens}");
}

// ---------------------------------------------------------------------------------------
// Gemini clients on native Gemini upstreams (pass-through) and on converted ones.

impl<R: Runtime> Gate<R> {
    /// `POST path` as a Gemini client sends it: the Gate key in `x-goog-api-key`, the body as
    /// given (bytes, so a test can compare what the upstream received).
    async fn gemini(&self, path: &str, body: &[u8]) -> Answer {
        let builder = self
            .request("POST", path)
            .header("x-goog-api-key", &self.token)
            .header("content-type", "application/json");
        self.send(builder, body.to_vec()).await
    }
}

fn gemini_chunk(text: &str, finish: bool, usage: Value) -> Value {
    let mut candidate =
        json!({"content": {"role": "model", "parts": [{"text": text}]}, "index": 0});
    if finish {
        candidate["finishReason"] = json!("STOP");
    }
    json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-x"})
}

/// A native Gemini upstream (`/v1beta/models/{m}:{method}`) answering each call as Google
/// does; a model named `broken` breaks its JSON-array stream after the first element.
fn native_gemini_upstream() -> Upstream {
    Upstream::start(|seen| {
        let path = seen.path();
        if seen.header("x-goog-api-key") != Some(UPSTREAM_KEY) {
            return Reply::json(
                403,
                json!({"error": {"code": 403, "message": "API key not valid", "status": "PERMISSION_DENIED"}}),
            );
        }
        let first = gemini_chunk(
            "native ",
            false,
            json!({"promptTokenCount": 11, "totalTokenCount": 11}),
        );
        let last = gemini_chunk(
            "answer",
            true,
            json!({"promptTokenCount": 11, "candidatesTokenCount": 4, "thoughtsTokenCount": 2,
                   "cachedContentTokenCount": 8, "totalTokenCount": 17}),
        );
        if path.ends_with(":countTokens") {
            return Reply::json(200, json!({"totalTokens": 42}));
        }
        if path.ends_with(":streamGenerateContent?alt=sse") {
            let body = format!("data: {first}\r\n\r\ndata: {last}\r\n\r\n");
            return Reply {
                status: 200,
                headers: vec![("content-type", "text/event-stream".into())],
                body: body.into_bytes(),
                hang: false,
                truncate: false,
                body_after: None,
            };
        }
        if path.ends_with(":streamGenerateContent") {
            let broken = path.contains("/models/broken:");
            let body = if broken {
                format!("[{first}")
            } else {
                format!("[{first}\n,\r\n{last}]")
            };
            return Reply {
                status: 200,
                headers: vec![("content-type", "application/json; charset=UTF-8".into())],
                body: body.into_bytes(),
                hang: false,
                truncate: broken,
                body_after: None,
            };
        }
        if path.ends_with(":generateContent") {
            if path.contains("/models/failing:") {
                return Reply::json(
                    503,
                    json!({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}),
                );
            }
            return Reply::json(200, last);
        }
        Reply::json(
            404,
            json!({"error": {"code": 404, "message": "no such method", "status": "NOT_FOUND"}}),
        )
    })
}

fn gemini_upstream_block(name: &str, upstream: &Upstream, extra: &str) -> String {
    upstream_block(
        name,
        "google",
        &format!("http://{}/v1beta", upstream.addr),
        extra,
    )
}

/// The sum of the `tokens` counters of `upstream` and `kind` over every model.
fn metric_line(metrics: &str, upstream: &str, kind: &str) -> Option<u64> {
    metrics
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && l.contains("tokens")
                && l.contains(&format!("upstream=\"{upstream}\""))
                && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .reduce(|a, b| a + b)
}

/// A Gemini client on a native Gemini upstream: its bytes go through untouched (only the
/// model in the path, after an alias, and the key header are Gate's), and the answer comes
/// back untouched in all three forms (JSON, SSE, the JSON-array stream); `countTokens` is
/// Google's; usage is read from `usageMetadata` (cached tokens included); a JSON-array stream
/// that breaks still ends as one array, with an error element.
async fn gemini_pass_through_on_a_native_upstream<R: Runtime>(rt: R) {
    let upstream = native_gemini_upstream();
    let config = gemini_upstream_block(
        "google",
        &upstream,
        "models = [\"gemini-x\", \"broken\"]\n[upstreams.google.aliases]\nfast = \"gemini-x\"",
    );
    let gate = start_gate(&rt, "gemini-native", &config, BreakerConfig::default()).await;
    // Fields the Chat Completions hub cannot carry: they reach Google only by pass-through.
    let body = br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"topK":3,"thinkingConfig":{"thinkingBudget":512}},"safetySettings":[{"category":"HARM_CATEGORY_HARASSMENT","threshold":"BLOCK_NONE"}]}"#;

    let answer = gate
        .gemini("/v1beta/models/fast:generateContent", body)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let seen = upstream.seen();
    let sent = seen.last().unwrap();
    assert_eq!(sent.path(), "/v1beta/models/gemini-x:generateContent");
    assert_eq!(sent.body, body.to_vec(), "the client's bytes, untouched");
    assert_eq!(sent.header("x-goog-api-key"), Some(UPSTREAM_KEY));
    assert!(sent.header("authorization").is_none());
    let expected = gemini_chunk(
        "answer",
        true,
        json!({"promptTokenCount": 11, "candidatesTokenCount": 4, "thoughtsTokenCount": 2,
               "cachedContentTokenCount": 8, "totalTokenCount": 17}),
    );
    assert_eq!(answer.json(), expected, "Google's answer as it is");

    let answer = gate
        .gemini(
            "/v1beta/models/gemini-x:streamGenerateContent?alt=sse",
            body,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let sent = upstream.seen().last().unwrap().clone();
    assert_eq!(
        sent.path(),
        "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"
    );
    assert_eq!(sent.body, body.to_vec());
    let text = answer.text();
    assert!(
        text.starts_with("data: {") && text.contains("\r\n\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\"native \"") && text.contains("\"answer\""),
        "{text}"
    );

    let answer = gate
        .gemini("/v1beta/models/gemini-x:streamGenerateContent", body)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        upstream.seen().last().unwrap().path(),
        "/v1beta/models/gemini-x:streamGenerateContent"
    );
    assert!(
        answer.text().contains("\n,\r\n"),
        "Google's own separators: {}",
        answer.text()
    );
    let elements = answer.json();
    assert_eq!(elements.as_array().map(Vec::len), Some(2), "{elements}");

    let answer = gate
        .gemini(
            "/v1beta/models/fast:countTokens",
            br#"{"contents":[{"parts":[{"text":"one two"}]}]}"#,
        )
        .await;
    assert_eq!(answer.json(), json!({"totalTokens": 42}));
    let sent = upstream.seen().last().unwrap().clone();
    assert_eq!(sent.path(), "/v1beta/models/gemini-x:countTokens");
    assert_eq!(
        sent.body,
        br#"{"contents":[{"parts":[{"text":"one two"}]}]}"#.to_vec()
    );

    let answer = gate
        .gemini("/v1beta/models/broken:streamGenerateContent", body)
        .await;
    let elements: Value = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("not one JSON array ({e}): {}", answer.text()));
    let elements = elements.as_array().cloned().unwrap_or_default();
    assert_eq!(elements.len(), 2, "{}", answer.text());
    assert_eq!(elements[1]["error"]["code"], 502, "{}", answer.text());

    // Usage from `usageMetadata` of the answer and of both stream forms: 3 x (11, 4 + 2, 8),
    // and the broken stream's first element (11 input).
    let metrics = gate
        .send(gate.request("GET", "/metrics"), Vec::new())
        .await
        .text();
    assert_eq!(
        metric_line(&metrics, "google", "input"),
        Some(44),
        "{metrics}"
    );
    assert_eq!(
        metric_line(&metrics, "google", "output"),
        Some(18),
        "{metrics}"
    );
    assert_eq!(
        metric_line(&metrics, "google", "cached"),
        Some(24),
        "{metrics}"
    );
}

/// One plan mixing a native Gemini upstream and a converted one: a failing native upstream
/// fails over to the converted one (which gets the Chat Completions conversion and whose
/// answer is converted back), and a failing converted one to the native one (which gets the
/// client's bytes). A Google server tool goes only to the native upstream, and without one
/// is a 400 in Google's shape naming the tool.
async fn gemini_mixed_failover_and_server_tools<R: Runtime>(rt: R) {
    let native = native_gemini_upstream();
    let chat_hits = Arc::new(AtomicUsize::new(0));
    let chat_fails = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (hits, fails) = (chat_hits.clone(), chat_fails.clone());
    let converted = Upstream::start(move |seen| {
        hits.fetch_add(1, Ordering::SeqCst);
        if fails.load(Ordering::SeqCst) {
            return Reply::json(500, json!({"error": {"message": "down"}}));
        }
        if let Err(e) = strict_openai_chat_check(&seen.json_body()) {
            return refusal(e);
        }
        Reply::chat("converted answer")
    });
    // Ordered by name: `a-*` first.
    let config = format!(
        "{}{}{}",
        gemini_upstream_block(
            "a-google",
            &native,
            "models = [\"failing\", \"native-first\"]"
        ),
        upstream_block(
            "b-openai",
            "openai",
            &converted.base_url(),
            "models = [\"failing\", \"native-first\", \"chat-first\", \"chat-only\"]"
        ),
        gemini_upstream_block("c-google", &native, "models = [\"chat-first\"]"),
    );
    let gate = start_gate(&rt, "gemini-mixed", &config, BreakerConfig::default()).await;
    let body = br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;

    // Native first, failing (503): the converted upstream answers, converted back to Gemini.
    let answer = gate
        .gemini("/v1beta/models/failing:generateContent", body)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.json()["candidates"][0]["content"]["parts"][0]["text"],
        "converted answer"
    );
    assert_eq!(chat_hits.load(Ordering::SeqCst), 1);

    // Converted first, failing (500): the native upstream gets the client's own bytes.
    chat_fails.store(true, Ordering::SeqCst);
    let before = native.hits();
    let answer = gate
        .gemini("/v1beta/models/chat-first:generateContent", body)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.json()["candidates"][0]["content"]["parts"][0]["text"],
        "answer"
    );
    assert_eq!(native.hits(), before + 1);
    assert_eq!(native.seen().last().unwrap().body, body.to_vec());
    chat_fails.store(false, Ordering::SeqCst);

    // A server tool: the converted upstream (first in order) is skipped.
    let with_search = br#"{"contents":[{"role":"user","parts":[{"text":"news?"}]}],"tools":[{"googleSearch":{}}]}"#;
    let chat_before = chat_hits.load(Ordering::SeqCst);
    let answer = gate
        .gemini("/v1beta/models/chat-first:generateContent", with_search)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(native.seen().last().unwrap().body, with_search.to_vec());
    assert_eq!(chat_hits.load(Ordering::SeqCst), chat_before);

    // No native upstream for the model: 400 in Google's shape naming the tool; nothing sent.
    let answer = gate
        .gemini(
            "/v1beta/models/chat-only:streamGenerateContent?alt=sse",
            with_search,
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
    let error = answer.json();
    assert_eq!(error["error"]["status"], "INVALID_ARGUMENT", "{error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("googleSearch") && message.contains("native Gemini upstream"),
        "{message}"
    );
    assert_eq!(chat_hits.load(Ordering::SeqCst), chat_before);

    // countTokens without a native upstream: Gate's estimate; with one: Google's.
    let count = br#"{"contents":[{"parts":[{"text":"one two three"}]}]}"#;
    let answer = gate
        .gemini("/v1beta/models/chat-only:countTokens", count)
        .await;
    assert!(
        answer.json()["totalTokens"]
            .as_u64()
            .is_some_and(|n| n > 0 && n != 42),
        "{}",
        answer.text()
    );
    let answer = gate
        .gemini("/v1beta/models/chat-first:countTokens", count)
        .await;
    assert_eq!(answer.json(), json!({"totalTokens": 42}));
}

/// `stream_usage` per upstream (a custom server told it takes `stream_options`; an OpenAI
/// upstream told it does not), and `model_rules` per upstream (a model the built-in table
/// does not know made a reasoning model with a cap, a parameter dropped).
async fn stream_usage_and_model_rules_per_upstream<R: Runtime>(rt: R) {
    let upstream = Upstream::start(|seen| {
        let body = seen.json_body();
        if body["stream"] == true {
            let mut reply = sse(&[(
                "",
                json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                       "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}),
            )]);
            reply.body.extend_from_slice(b"data: [DONE]\n\n");
            return reply;
        }
        Reply::chat("ok")
    });
    let config = format!(
        "{}{}",
        upstream_block(
            "custom-on",
            "custom",
            &upstream.base_url(),
            "models = [\"local-a\", \"my-reasoner-7b\"]\nstream_usage = true\n\
             [upstreams.custom-on.model_rules.my-reasoner]\nreasoning = true\n\
             max_output_tokens = 1000\ndrop = [\"user\"]"
        ),
        upstream_block(
            "openai-off",
            "openai",
            &upstream.base_url(),
            "models = [\"gpt-4o\"]\nstream_usage = false"
        ),
    );
    let gate = start_gate(&rt, "per-upstream-rules", &config, BreakerConfig::default()).await;
    let stream = |model: &str| json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let answer = gate.post("/v1/chat/completions", stream("local-a")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        upstream.seen().last().unwrap().json_body()["stream_options"]["include_usage"],
        true
    );
    let asked = stream("gpt-4o");
    gate.post("/v1/chat/completions", asked.clone()).await;
    assert_eq!(
        upstream.seen().last().unwrap().body,
        asked.to_string().into_bytes()
    );

    // Claude Code's shape on a model only this upstream's rule knows.
    let answer = gate
        .post(
            "/v1/messages",
            json!({"model": "my-reasoner-7b", "max_tokens": 32000, "temperature": 0.5,
                   "metadata": {"user_id": "u1"},
                   "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let sent = upstream.seen().last().unwrap().json_body();
    assert_eq!(sent["max_completion_tokens"], 1000, "{sent}");
    assert!(
        sent.get("max_tokens").is_none() && sent.get("temperature").is_none(),
        "{sent}"
    );
    assert!(sent.get("user").is_none(), "dropped by the rule: {sent}");
}

common::both_runtimes!(
    rate_limit_fails_over_and_stays_with_its_model,
    rate_limit_reaches_the_client_across_conversion,
    breaker_per_model_and_slot_released_on_disconnect,
    broken_streams_open_the_breaker,
    stream_head_leaves_with_the_first_events_but_never_waits_for_them,
    strategies_order_the_upstreams,
    caps_scrubbing_and_bounded_echo,
    bearer_any_case_and_index,
    discovery_is_capped,
    responses_on_a_chat_only_upstream,
    responses_on_an_anthropic_upstream,
    claude_code_shape_on_an_openai_upstream,
    usage_on_pass_through_streams,
    gemini_pass_through_on_a_native_upstream,
    gemini_mixed_failover_and_server_tools,
    stream_usage_and_model_rules_per_upstream,
);
