//! Keys' policies on the request path (issue 14), in process under tokio and smol: the real
//! `Gateway` served by the daemon's own server loop, keys with policies in the token store, a
//! usage sink that keeps the records, and an OpenAI-style upstream on loopback that sends usage
//! only when asked (`stream_options.include_usage`), as OpenAI does, and can hold its streams
//! open until the test releases them.
//!
//! Covered: model refusals in the three protocols and `/v1/models` filtered; RPM and TPM
//! refusals with `retry-after` and rate-limit headers (and the headers on successes, replacing
//! the upstream's); budget and unknown-price refusals; settlement on pass-through and
//! converted routes, streamed and not, and the Gemini front door; concurrent streams against
//! one budget never spend past it; an abandoned stream is settled; a Gemini client on a native
//! upstream is admitted on its own request, and its countTokens is free.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

mod common;
#[path = "../../tests/support/store_servers.rs"]
mod store_servers;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gate_core::accounting::{estimate, KeyPolicy, UsageRecord, Usd};
use gate_daemon::app::App;
use gate_daemon::auth::TokenStore;
use gate_daemon::gateway::Gateway;
use gate_rt::client::{http_client, ClientSettings, HttpClient};
use gate_rt::Runtime;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(15);
/// Output tokens the upstream reports for every answer.
const COMPLETION: u64 = 40;
/// $1000 per million output tokens: a tenth of a cent per token (input is free).
const PRICES: &str = "[upstreams.oai.prices.\"gpt-4o\"]\ninput = 0\noutput = 1000\n";
const MILLI: u64 = 1_000_000; // $0.001 in nano-dollars

// ---------------------------------------------------------------------------------------
// The upstream.

struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// Streams send their first chunk, then wait for this before the rest.
    release: Arc<AtomicBool>,
}

impl Upstream {
    fn start(completion: u64, released: bool) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
        let addr = listener.local_addr().expect("upstream address");
        let hits: Arc<AtomicUsize> = Arc::default();
        let release = Arc::new(AtomicBool::new(released));
        let (h, r) = (hits.clone(), release.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (h, r) = (h.clone(), r.clone());
                std::thread::spawn(move || serve(stream, completion, &h, &r));
            }
        });
        Upstream {
            addr,
            hits,
            release,
        }
    }
    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    fn release(&self) {
        self.release.store(true, Ordering::SeqCst);
    }
}

fn serve(stream: TcpStream, completion: u64, hits: &AtomicUsize, release: &AtomicBool) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    loop {
        let Some(common::HttpRequest { line, body, .. }) = common::read_request(&mut reader) else {
            return;
        };
        if line.starts_with("GET") {
            let answer = json!({"object": "list", "data": []}).to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            continue;
        }
        hits.fetch_add(1, Ordering::SeqCst);
        // A native Gemini upstream's two calls (the `google` provider).
        let path = line.split(' ').nth(1).unwrap_or_default();
        if path.contains("/v1beta/models/") {
            let answer = if path.ends_with(":countTokens") {
                json!({"totalTokens": 42})
            } else {
                json!({"candidates": [{"index": 0, "finishReason": "STOP",
                        "content": {"role": "model", "parts": [{"text": "hello there"}]}}],
                    "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": completion,
                        "totalTokenCount": 10 + completion},
                    "modelVersion": "gemini-x"})
            }
            .to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            continue;
        }
        let request: Value = serde_json::from_slice(&body).unwrap_or_default();
        let model = request["model"].as_str().unwrap_or_default().to_owned();
        let usage = json!({"prompt_tokens": 10, "completion_tokens": completion,
            "total_tokens": 10 + completion});
        if request["stream"] != true {
            let mut answer = json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "hello there"}}],
                "usage": usage,
            });
            if model.starts_with("no-usage") {
                // An upstream that does not count: the answer has no usage.
                answer.as_object_mut().map(|a| a.remove("usage"));
            }
            let answer = answer.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                 x-ratelimit-limit-requests: 10000\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            continue;
        }
        let chunk = |delta: Value, finish: Value| {
            let c = json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            format!("data: {c}\n\n")
        };
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    x-ratelimit-limit-requests: 10000\r\nconnection: close\r\n\r\n";
        let first = chunk(
            json!({"role": "assistant", "content": "hello "}),
            Value::Null,
        );
        if stream
            .write_all(format!("{head}{first}").as_bytes())
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
        // Held until the test lets the stream finish (a model still generating).
        while !release.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut rest = chunk(json!({"content": "world"}), json!("stop"));
        if request["stream_options"]["include_usage"] == true {
            let c = json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0,
                "model": model, "choices": [], "usage": usage});
            rest.push_str(&format!("data: {c}\n\n"));
        }
        rest.push_str("data: [DONE]\n\n");
        let _ = stream.write_all(rest.as_bytes());
        return;
    }
}

// ---------------------------------------------------------------------------------------
// Gate in process, with keys that have policies.

#[derive(Default)]
struct Records(Mutex<Vec<UsageRecord>>);

impl gate_daemon::usage::UsageSink for Records {
    fn record(&self, record: UsageRecord) {
        self.0.lock().unwrap().push(record);
    }
}

struct Key {
    id: String,
    token: String,
}

struct Gate<R: Runtime> {
    state: std::path::PathBuf,
    addr: SocketAddr,
    gateway: Arc<Gateway<R>>,
    keys: Vec<Key>,
    records: Arc<Records>,
    client: HttpClient<R, Full<Bytes>>,
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.headers))
    }
}

/// Gate with `config` and one key per policy (JSON, as stored in the token file).
async fn start_gate<R: Runtime>(rt: &R, tag: &str, config: &str, policies: &[Value]) -> Gate<R> {
    let dir = common::temp_dir(&format!("policy-{tag}-{}", R::NAME));
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("create the state directory");
    let file = dir.join("gate.toml");
    std::fs::write(&file, config).expect("write gate.toml");
    let loaded = gate_daemon::settings::load(&[file], &state).expect("configuration");
    let mut store = TokenStore::load(&state).expect("token store");
    let mut keys = Vec::new();
    for (i, _) in policies.iter().enumerate() {
        let (record, token) = store
            .create(&format!("key{i}"), None)
            .expect("create a key");
        keys.push(Key {
            id: record.id,
            token,
        });
    }
    // The policies, written into the token file as `gate token update` stores them.
    let path = TokenStore::path_in(&state);
    let mut stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for record in stored["tokens"].as_array_mut().unwrap() {
        let i: usize = record["name"].as_str().unwrap()[3..].parse().unwrap();
        let policy: KeyPolicy = serde_json::from_value(policies[i].clone()).expect("a policy");
        record["policy"] = serde_json::to_value(policy).unwrap();
    }
    std::fs::write(&path, serde_json::to_vec(&stored).unwrap()).unwrap();
    let mut gate = serve_gate(rt, &state, &loaded.config).await;
    gate.keys = keys;
    gate
}

/// Another gateway (another daemon) on the same keys as `first`, with `config`.
async fn twin_gate<R: Runtime>(rt: &R, first: &Gate<R>, tag: &str, config: &str) -> Gate<R> {
    let dir = common::temp_dir(&format!("policy-{tag}-{}", R::NAME));
    let file = dir.join("gate.toml");
    std::fs::write(&file, config).expect("write gate.toml");
    let loaded = gate_daemon::settings::load(&[file], &dir).expect("configuration");
    let mut gate = serve_gate(rt, &first.state, &loaded.config).await;
    gate.keys = first
        .keys
        .iter()
        .map(|k| Key {
            id: k.id.clone(),
            token: k.token.clone(),
        })
        .collect();
    gate
}

async fn serve_gate<R: Runtime>(
    rt: &R,
    state: &std::path::Path,
    config: &gate_core::config::DaemonConfig,
) -> Gate<R> {
    let store = TokenStore::load(state).expect("token store");
    let gateway = Arc::new(Gateway::new(rt.clone(), config, store).expect("gateway"));
    let records = Arc::new(Records::default());
    gateway.set_usage_sink(records.clone());
    let listener =
        gate_daemon::server::bind(rt, "127.0.0.1:0".parse().unwrap()).expect("bind gate");
    let addr = gate_daemon::server::local_addr::<R>(&listener).expect("gate address");
    let app = Arc::new(App::new(gateway.clone()));
    rt.spawn(gate_daemon::server::serve(
        rt.clone(),
        listener,
        app,
        gate_rt::hyper_glue::ServerSettings::default(),
        gate_daemon::server::ConnectionCap::new("local", 4096),
        gate_rt::tunnel::support::Shutdown::new(),
    ));
    Gate {
        state: state.to_owned(),
        addr,
        gateway,
        keys: Vec::new(),
        records,
        client: http_client(rt.clone(), &ClientSettings::default()),
    }
}

impl<R: Runtime> Gate<R> {
    async fn send(&self, method: &str, path: &str, key: usize, body: Option<Value>) -> Answer {
        let token = &self.keys[key].token;
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("authorization", format!("Bearer {token}"))
            .header("x-goog-api-key", token.as_str());
        if path.starts_with("/v1/messages") {
            builder = builder.header("anthropic-version", "2023-06-01");
        }
        let bytes = match body {
            Some(body) => {
                builder = builder.header("content-type", "application/json");
                body.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        let request = builder.body(Full::new(Bytes::from(bytes))).unwrap();
        let response = self.client.request(request).await.expect("gate answers");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("gate body").to_bytes().to_vec();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn post(&self, path: &str, key: usize, body: Value) -> Answer {
        self.send("POST", path, key, Some(body)).await
    }

    /// (spent, reserved) of key `key`, in nano-dollars.
    fn spend(&self, key: usize) -> (u64, u64) {
        let (spend, _) = self.gateway.key_spend(&self.keys[key].id);
        (spend.spent.0, spend.reserved.0)
    }

    fn records(&self) -> Vec<UsageRecord> {
        self.records.0.lock().unwrap().clone()
    }
}

fn chat(model: &str, max_tokens: u64, stream: bool) -> Value {
    json!({"model": model, "max_tokens": max_tokens, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]})
}

fn messages(model: &str, max_tokens: u64, stream: bool) -> Value {
    json!({"model": model, "max_tokens": max_tokens, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]})
}

async fn wait_until<R: Runtime>(rt: &R, what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !check() {
        assert!(
            Instant::now() < end,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        rt.sleep(Duration::from_millis(10)).await;
    }
}

fn upstream_config(upstream: &Upstream, models: &str, extra: &str) -> String {
    format!(
        "[upstreams.oai]\nprovider = \"openai\"\nbase_url = \"{}\"\napi_key = \"sk-upstream-key-0123456789\"\n\
         models = [{models}]\n{extra}",
        upstream.base_url()
    )
}

/// A raw streaming request on its own connection (a thread reads it): the bytes so far, and
/// a switch that makes the reader drop the connection (a client that goes away).
struct RawStream {
    bytes: Arc<Mutex<Vec<u8>>>,
    done: Arc<AtomicBool>,
    hang_up: Arc<AtomicBool>,
}

impl RawStream {
    fn open(addr: SocketAddr, path: &str, token: &str, body: &Value) -> RawStream {
        let body = body.to_string();
        let mut stream = TcpStream::connect(addr).expect("connect to gate");
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             authorization: Bearer {token}\r\nanthropic-version: 2023-06-01\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send");
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let bytes: Arc<Mutex<Vec<u8>>> = Arc::default();
        let done: Arc<AtomicBool> = Arc::default();
        let hang_up: Arc<AtomicBool> = Arc::default();
        let (b, d, h) = (bytes.clone(), done.clone(), hang_up.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !h.load(Ordering::SeqCst) {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => b.lock().unwrap().extend_from_slice(&buf[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            d.store(true, Ordering::SeqCst);
            // Dropping the stream closes the connection.
        });
        RawStream {
            bytes,
            done,
            hang_up,
        }
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }
    fn status(&self) -> Option<u16> {
        let text = self.text();
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios.

/// A key limited to `gpt-4o*` is refused other models with 403 in each client's protocol,
/// naming the model and what it may use; `/v1/models` lists only what it may use; nothing
/// reaches the upstream; each refusal is a usage record.
async fn model_refusals_in_every_protocol<R: Runtime>(rt: R) {
    let upstream = Upstream::start(COMPLETION, true);
    let config = upstream_config(&upstream, "\"gpt-4o\", \"claude-3-haiku\"", "");
    let gate = start_gate(&rt, "models", &config, &[json!({"models": ["gpt-4o*"]})]).await;

    let a = gate
        .post("/v1/chat/completions", 0, chat("claude-3-haiku", 10, false))
        .await;
    assert_status(&a, StatusCode::FORBIDDEN);
    let error = &a.json()["error"];
    assert_eq!(error["type"], "permission_error");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("`claude-3-haiku`") && message.contains("gpt-4o*"),
        "{message}"
    );

    let a = gate
        .post("/v1/messages", 0, messages("claude-3-haiku", 10, false))
        .await;
    assert_status(&a, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["type"], "error");
    assert_eq!(a.json()["error"]["type"], "permission_error");

    let a = gate
        .post(
            "/v1beta/models/claude-3-haiku:generateContent",
            0,
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
        )
        .await;
    assert_status(&a, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["error"]["status"], "PERMISSION_DENIED");

    let listed = gate.send("GET", "/v1/models", 0, None).await.json();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o"]);
    let listed = gate.send("GET", "/v1beta/models", 0, None).await.json();
    assert_eq!(listed["models"].as_array().unwrap().len(), 1, "{listed}");

    assert_eq!(
        upstream.hits.load(Ordering::SeqCst),
        0,
        "refused before the upstream"
    );
    let a = gate
        .post("/v1/chat/completions", 0, chat("gpt-4o", 10, false))
        .await;
    assert_status(&a, StatusCode::OK);

    let records = gate.records();
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.error.as_deref() == Some("model_not_allowed"))
        .collect();
    assert_eq!(refused.len(), 3, "{records:?}");
    assert!(refused
        .iter()
        .all(|r| r.status == 403 && *r.key_id == *gate.keys[0].id));
    assert_eq!(
        refused.iter().map(|r| &*r.endpoint).collect::<Vec<_>>(),
        ["chat_completions", "messages", "gemini"]
    );
    let ok = records.iter().find(|r| r.status == 200).expect("a success");
    assert_eq!(ok.served_model.as_deref(), Some("gpt-4o"));
    assert_eq!(ok.upstream.as_deref(), Some("oai"));
    assert_eq!((ok.input_tokens, ok.output_tokens), (10, COMPLETION));
}

/// Requests per minute: successes carry the key's `x-ratelimit-*` (not the upstream's); the
/// refusal is 429 with `retry-after` and the headers, in OpenAI's and Anthropic's shapes.
/// Tokens per minute: the input estimate is charged at admission.
async fn rate_limits_with_headers<R: Runtime>(rt: R) {
    let upstream = Upstream::start(COMPLETION, true);
    let config = upstream_config(&upstream, "\"gpt-4o\"", "");
    let gate = start_gate(
        &rt,
        "rate",
        &config,
        &[json!({"rpm": 2}), json!({"tpm": 50}), json!({"rpm": 1})],
    )
    .await;

    let a = gate
        .post("/v1/chat/completions", 0, chat("gpt-4o", 10, false))
        .await;
    assert_status(&a, StatusCode::OK);
    assert_eq!(a.header("x-ratelimit-limit-requests"), "2");
    assert_eq!(a.header("x-ratelimit-remaining-requests"), "1");
    let a = gate
        .post("/v1/chat/completions", 0, chat("gpt-4o", 10, true))
        .await;
    assert_status(&a, StatusCode::OK);
    assert_eq!(a.header("x-ratelimit-remaining-requests"), "0");
    let a = gate
        .post("/v1/chat/completions", 0, chat("gpt-4o", 10, false))
        .await;
    assert_status(&a, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.json()["error"]["type"], "rate_limit_error");
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2 requests per minute"));
    let retry: u64 = a.header("retry-after").parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(a.header("x-ratelimit-limit-requests"), "2");
    assert_eq!(a.header("x-ratelimit-remaining-requests"), "0");
    assert!(a.header("x-ratelimit-reset-requests").ends_with('s'));

    // Tokens: ~400 bytes of prompt is well over 50 tokens: admitted with the allowance whole,
    // then refused.
    let long = json!({"model": "gpt-4o", "max_tokens": 5,
        "messages": [{"role": "user", "content": "word ".repeat(80)}]});
    let a = gate.post("/v1/chat/completions", 1, long.clone()).await;
    assert_status(&a, StatusCode::OK);
    assert_eq!(a.header("x-ratelimit-limit-tokens"), "50");
    let a = gate.post("/v1/chat/completions", 1, long).await;
    assert_status(&a, StatusCode::TOO_MANY_REQUESTS);
    assert!(a.text().contains("tokens per minute"), "{}", a.text());
    assert_eq!(a.header("x-ratelimit-remaining-tokens"), "0");
    assert!(a.headers.contains_key("retry-after"));

    // Anthropic's family for Anthropic clients, on success and refusal.
    let a = gate
        .post("/v1/messages", 2, messages("gpt-4o", 10, false))
        .await;
    assert_status(&a, StatusCode::OK);
    assert_eq!(a.header("anthropic-ratelimit-requests-limit"), "1");
    assert_eq!(a.header("anthropic-ratelimit-requests-remaining"), "0");
    let a = gate
        .post("/v1/messages", 2, messages("gpt-4o", 10, false))
        .await;
    assert_status(&a, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.json()["error"]["type"], "rate_limit_error");
    assert!(a
        .header("anthropic-ratelimit-requests-reset")
        .ends_with('Z'));
    assert!(a.headers.contains_key("retry-after"));

    let limited = gate
        .records()
        .iter()
        .filter(|r| r.error.as_deref() == Some("rate_limited"))
        .count();
    assert_eq!(limited, 3);
}

/// Budgets: a request whose maximum cost does not fit is 402 with spent, limit and reset;
/// a budgeted key asking for a model without a price is 402 saying how to add one; an
/// unbudgeted key records the tokens with the cost unknown. Every route settles to the
/// upstream's usage: pass-through and converted, streamed and not, and the Gemini front door.
async fn budgets_and_settlement_on_every_route<R: Runtime>(rt: R) {
    let upstream = Upstream::start(COMPLETION, true);
    let config = upstream_config(&upstream, "\"gpt-4o\", \"house-model\"", PRICES);
    let gate = start_gate(
        &rt,
        "budget",
        &config,
        &[json!({"budget": {"usd": 1, "period": "month"}}), json!({})],
    )
    .await;

    let a = gate
        .post("/v1/chat/completions", 0, chat("gpt-4o", 2000, false))
        .await;
    assert_status(&a, StatusCode::PAYMENT_REQUIRED);
    let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("has spent $0.00 of its monthly budget of $1.00")
            && message.contains("could cost up to $2.00")
            && message.contains("starts again at"),
        "{message}"
    );
    let a = gate
        .post("/v1/messages", 0, messages("gpt-4o", 2000, false))
        .await;
    assert_status(&a, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(a.json()["error"]["type"], "billing_error");

    let a = gate
        .post("/v1/chat/completions", 0, chat("house-model", 10, false))
        .await;
    assert_status(&a, StatusCode::PAYMENT_REQUIRED);
    assert!(
        a.text()
            .contains("[upstreams.oai.prices.\\\"house-model\\\"]"),
        "{}",
        a.text()
    );
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 0);

    // Each route costs COMPLETION output tokens at $0.001.
    let per_request = COMPLETION * MILLI;
    let routes: Vec<(&str, Value)> = vec![
        ("/v1/chat/completions", chat("gpt-4o", 100, false)),
        ("/v1/chat/completions", chat("gpt-4o", 100, true)),
        ("/v1/messages", messages("gpt-4o", 100, false)),
        ("/v1/messages", messages("gpt-4o", 100, true)),
        (
            "/v1beta/models/gpt-4o:generateContent",
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "generationConfig": {"maxOutputTokens": 100}}),
        ),
        (
            "/v1beta/models/gpt-4o:streamGenerateContent?alt=sse",
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "generationConfig": {"maxOutputTokens": 100}}),
        ),
    ];
    for (i, (path, body)) in routes.into_iter().enumerate() {
        let a = gate.post(path, 0, body).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text());
        let expected = (i as u64 + 1) * per_request;
        wait_until(&rt, &format!("{path} to settle"), || {
            gate.spend(0) == (expected, 0)
        })
        .await;
    }
    let records = gate.records();
    let charged: Vec<_> = records.iter().filter(|r| r.status == 200).collect();
    assert_eq!(charged.len(), 6, "{records:?}");
    for r in &charged {
        assert_eq!(r.cost, Some(Usd(per_request)), "{r:?}");
        assert_eq!(r.output_tokens, COMPLETION, "{r:?}");
        assert!(r.error.is_none(), "{r:?}");
    }

    // No budget: served, tokens recorded, cost unknown.
    let a = gate
        .post("/v1/chat/completions", 1, chat("house-model", 10, false))
        .await;
    assert_status(&a, StatusCode::OK);
    let last = gate.records().pop().unwrap();
    assert_eq!(&*last.key_id, gate.keys[1].id);
    assert_eq!((last.output_tokens, last.cost), (COMPLETION, None));
}

/// An answer without usage is charged by its size (a third of a token a byte), at most the
/// request's own output bound, for a budgeted key (whose bound is read when admitting) and a
/// key without a budget (whose bound is read only when its answer turns out to need it).
async fn answers_without_usage_are_charged_within_the_request_bound<R: Runtime>(rt: R) {
    let upstream = Upstream::start(COMPLETION, true);
    let prices = format!("{PRICES}[upstreams.oai.prices.\"no-usage\"]\ninput = 0\noutput = 1000\n");
    let config = upstream_config(&upstream, "\"gpt-4o\", \"no-usage\"", &prices);
    let gate = start_gate(
        &rt,
        "no-usage",
        &config,
        &[
            json!({"budget": {"usd": 100, "period": "month"}}),
            json!({}),
        ],
    )
    .await;
    let mut budgeted_tokens = 0;
    for key in [0, 1] {
        let a = gate
            .post("/v1/chat/completions", key, chat("no-usage", 300, false))
            .await;
        assert_status(&a, StatusCode::OK);
        let sized = estimate::output_tokens_of_text(a.text().len() as u64);
        assert!(sized > 3 && sized < 300, "{sized}");
        let record = gate.records().pop().unwrap();
        assert_eq!(&*record.key_id, gate.keys[key].id);
        assert_eq!(record.output_tokens, sized, "key {key}: {record:?}");
        let a = gate
            .post("/v1/chat/completions", key, chat("no-usage", 3, false))
            .await;
        assert_status(&a, StatusCode::OK);
        let record = gate.records().pop().unwrap();
        assert_eq!(
            record.output_tokens, 3,
            "key {key}: the request's bound: {record:?}"
        );
        assert!(record.input_tokens > 0, "estimated: {record:?}");
        if key == 0 {
            budgeted_tokens = sized + 3;
        }
    }
    // The budgeted key paid for the output it was charged ($0.001 a token).
    assert_eq!(gate.spend(0), (budgeted_tokens * MILLI, 0));
}

/// Eight concurrent streams on a $1 budget, each able to cost $0.30: three are admitted and
/// hold $0.90; the others are refused while they run. Spent plus held never passes $1; once
/// they end, spent is what they cost and what is left does not admit another.
async fn concurrent_streams_never_overspend<R: Runtime>(rt: R) {
    let upstream = Upstream::start(250, false);
    let config = upstream_config(&upstream, "\"gpt-4o\"", PRICES);
    let gate = start_gate(
        &rt,
        "concurrent",
        &config,
        &[json!({"budget": {"usd": 1, "period": "day"}})],
    )
    .await;
    let body = streamed_chat_300();
    let limit = 1000 * MILLI;
    let streams: Vec<RawStream> = (0..8)
        .map(|_| {
            RawStream::open(
                gate.addr,
                "/v1/chat/completions",
                &gate.keys[0].token,
                &body,
            )
        })
        .collect();
    wait_until(&rt, "every request to be answered or refused", || {
        let (spent, reserved) = gate.spend(0);
        assert!(spent + reserved <= limit, "{spent} + {reserved} > {limit}");
        streams.iter().all(|s| s.status().is_some())
    })
    .await;
    let admitted = streams.iter().filter(|s| s.status() == Some(200)).count();
    let refused = streams.iter().filter(|s| s.status() == Some(402)).count();
    assert_eq!((admitted, refused), (3, 5));
    assert_eq!(gate.spend(0), (0, 900 * MILLI));
    upstream.release();
    wait_until(&rt, "the streams to end and settle", || {
        let (spent, reserved) = gate.spend(0);
        assert!(spent + reserved <= limit, "{spent} + {reserved} > {limit}");
        streams.iter().all(|s| s.done.load(Ordering::SeqCst)) && reserved == 0
    })
    .await;
    assert_eq!(gate.spend(0), (750 * MILLI, 0));
    for s in streams.iter().filter(|s| s.status() == Some(200)) {
        assert!(s.text().contains("[DONE]"), "{}", s.text());
    }
    let again = RawStream::open(
        gate.addr,
        "/v1/chat/completions",
        &gate.keys[0].token,
        &body,
    );
    wait_until(&rt, "the next request to be refused", || {
        again.status().is_some()
    })
    .await;
    assert_eq!(again.status(), Some(402), "{}", again.text());
}

/// A client that goes away mid-stream: its stream is settled (the reservation given back,
/// the tokens streamed so far charged), on the pass-through and the converted route.
async fn abandoned_streams_are_settled<R: Runtime>(rt: R) {
    let upstream = Upstream::start(COMPLETION, false);
    let config = upstream_config(&upstream, "\"gpt-4o\"", PRICES);
    let gate = start_gate(
        &rt,
        "abandoned",
        &config,
        &[json!({"budget": {"usd": 1, "period": "week"}})],
    )
    .await;
    let routes = [
        ("/v1/chat/completions", chat("gpt-4o", 300, true), "hello"),
        ("/v1/messages", messages("gpt-4o", 300, true), "hello"),
    ];
    let mut spent_before = 0;
    for (path, body, first_words) in routes {
        let stream = RawStream::open(gate.addr, path, &gate.keys[0].token, &body);
        wait_until(&rt, "the first chunk", || {
            stream.text().contains(first_words)
        })
        .await;
        assert_eq!(
            gate.spend(0),
            (spent_before, 300 * MILLI),
            "held while streaming"
        );
        stream.hang_up.store(true, Ordering::SeqCst);
        wait_until(
            &rt,
            &format!("the abandoned {path} stream to settle"),
            || gate.spend(0).1 == 0,
        )
        .await;
        let (spent, _) = gate.spend(0);
        assert!(
            spent > spent_before && spent - spent_before <= 300 * MILLI,
            "charged what was streamed, at most the reservation: {spent}"
        );
        spent_before = spent;
        let record = gate.records().pop().unwrap();
        assert_eq!(record.error.as_deref(), Some("abandoned"), "{record:?}");
        assert!(record.output_tokens > 0 && record.output_tokens <= 300);
    }
    upstream.release();
}

/// A Gemini client on a native `google` upstream: admission reads the client's own request
/// (its `generationConfig.maxOutputTokens` sizes the reservation, its contents the TPM
/// estimate), `countTokens` reserves and charges nothing even when a generation would not fit
/// the budget, and a generation settles to Google's `usageMetadata`.
async fn native_gemini_admission<R: Runtime>(rt: R) {
    let upstream = Upstream::start(COMPLETION, true);
    let config = format!(
        "[upstreams.goo]\nprovider = \"google\"\nbase_url = \"http://{}/v1beta\"\n\
         api_key = \"goog-upstream-key-0123456789\"\nmodels = [\"gemini-x\"]\n\
         [upstreams.goo.prices.\"gemini-x\"]\ninput = 0\noutput = 1000\n",
        upstream.addr
    );
    let gate = start_gate(
        &rt,
        "gemini-native",
        &config,
        &[
            json!({"budget": {"usd": 1, "period": "month"}}),
            json!({"budget": {"usd": 0.01, "period": "day"}}),
            json!({"tpm": 500}),
        ],
    )
    .await;
    let ask = |max: u64, text: &str| {
        json!({"contents": [{"role": "user", "parts": [{"text": text}]}],
            "generationConfig": {"maxOutputTokens": max}})
    };

    // The reservation is the client's own output bound: 2000 tokens at $0.001 is over $1.
    let a = gate
        .post(
            "/v1beta/models/gemini-x:generateContent",
            0,
            ask(2000, "hi"),
        )
        .await;
    assert_status(&a, StatusCode::PAYMENT_REQUIRED);
    assert!(a.text().contains("could cost up to $2.00"), "{}", a.text());
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 0);

    // Within it: served, then settled to Google's count (40 output tokens = $0.04).
    let a = gate
        .post("/v1beta/models/gemini-x:generateContent", 0, ask(100, "hi"))
        .await;
    assert_status(&a, StatusCode::OK);
    assert_eq!(
        a.json()["candidates"][0]["content"]["parts"][0]["text"],
        "hello there"
    );
    wait_until(&rt, "the generation to settle", || {
        gate.spend(0) == (COMPLETION * MILLI, 0)
    })
    .await;

    // countTokens is free: Google's count comes back and the spend does not move, even for a
    // key whose budget ($0.01) admits no generation of 100 tokens.
    let a = gate
        .post("/v1beta/models/gemini-x:generateContent", 1, ask(100, "hi"))
        .await;
    assert_status(&a, StatusCode::PAYMENT_REQUIRED);
    for key in [0, 1] {
        let before = gate.spend(key);
        let a = gate
            .post("/v1beta/models/gemini-x:countTokens", key, ask(100, "hi"))
            .await;
        assert_status(&a, StatusCode::OK);
        assert_eq!(a.json()["totalTokens"], 42);
        assert_eq!(gate.spend(key), before, "countTokens charged key {key}");
    }

    // TPM counts the client's contents: after a small request, ~3 KB of text (over 500
    // tokens before any output) does not fit the minute. (A request larger than the whole
    // allowance is let through only while the allowance is untouched.)
    let a = gate
        .post("/v1beta/models/gemini-x:generateContent", 2, ask(10, "hi"))
        .await;
    assert_status(&a, StatusCode::OK);
    let long = "lorem ipsum ".repeat(250);
    let a = gate
        .post("/v1beta/models/gemini-x:generateContent", 2, ask(10, &long))
        .await;
    assert_status(&a, StatusCode::TOO_MANY_REQUESTS);
    assert!(a.headers.contains_key("retry-after"), "{:?}", a.headers);
    assert!(a.text().contains("500 tokens per minute"), "{}", a.text());
}

// ---------------------------------------------------------------------------------------
// Two daemons sharing rate limits and budget reservations through a real Redis (issue 15).

fn store_section(redis_url: &str, on_unavailable: &str) -> String {
    format!("[store]\nredis_url = \"{redis_url}\"\non_unavailable = \"{on_unavailable}\"\n")
}

/// A test's own Redis client (the daemon's), for reading what the scripts stored.
/// Two daemons on one Redis (`on_unavailable = "closed"`) in front of `upstream`, sharing
/// keys with `policies` (with the models' prices when `priced`): the setup of the
/// shared-limit tests. The Redis server lives as long as the returned handle.
async fn twins_on_redis<R: Runtime>(
    rt: &R,
    tag: &str,
    upstream: &Upstream,
    priced: bool,
    policies: &[Value],
) -> (
    store_servers::RedisServer,
    gate_rt::store::Redis<R>,
    Gate<R>,
    Gate<R>,
) {
    let redis = store_servers::RedisServer::start().expect("redis-server");
    let client = redis_client(rt, &redis.url());
    let config = upstream_config(
        upstream,
        "\"gpt-4o\"",
        &format!(
            "{}{}",
            if priced { PRICES } else { "" },
            store_section(&redis.url(), "closed")
        ),
    );
    let a = start_gate(rt, &format!("{tag}-a"), &config, policies).await;
    let b = twin_gate(rt, &a, &format!("{tag}-b"), &config).await;
    (redis, client, a, b)
}

/// A streamed chat request for `gpt-4o` of at most 300 output tokens, usage included.
fn streamed_chat_300() -> Value {
    json!({"model": "gpt-4o", "max_tokens": 300, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]})
}

/// Asserts an answer's status, showing its body when it differs.
#[track_caller]
fn assert_status(answer: &Answer, status: StatusCode) {
    assert_eq!(answer.status, status, "{}", answer.text());
}

fn redis_client<R: Runtime>(rt: &R, url: &str) -> gate_rt::store::Redis<R> {
    gate_rt::store::Redis::new(rt.clone(), gate_rt::store::RedisUrl::parse(url).unwrap())
}

/// The Redis key of `key_id`'s budget for today.
fn budget_key(key_id: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let start = gate_core::accounting::Period::Day.start(now);
    format!("gate:{{{key_id}}}:budget:day:{start}")
}

/// (spent, held) of `key_id`'s daily budget in Redis, in nano-dollars, read at one instant
/// (one `HMGET`: with two reads, a lease call between them could pair a spent from before a
/// flush with the held from after it).
async fn redis_budget<R: Runtime>(redis: &gate_rt::store::Redis<R>, key_id: &str) -> (u64, u64) {
    let key = budget_key(key_id);
    let value = redis
        .command(
            &[b"HMGET".as_slice(), key.as_bytes(), b"spent", b"held"],
            Duration::from_secs(2),
        )
        .await
        .expect("HMGET");
    let gate_core::resp::Value::Array(fields) = &value else {
        panic!("HMGET answered {value:?}");
    };
    let field = |i: usize| fields.get(i).and_then(|v| v.as_i64()).unwrap_or(0) as u64;
    (field(0), field(1))
}

/// Redis's `MONITOR` on a connection of its own, from `start` until dropped: the commands
/// Redis runs, those its scripts run included, in the order it ran them. It shows what a
/// lease call wrote even when a later call has changed it since.
struct Monitor {
    stream: TcpStream,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    fn start(port: u16) -> Monitor {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to Redis");
        stream.write_all(b"MONITOR\r\n").expect("send MONITOR");
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).expect("MONITOR's answer");
        assert_eq!(answer, "+OK\r\n", "MONITOR");
        stream.set_read_timeout(None).unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                kept.lock().unwrap().push(line);
            }
        });
        Monitor { stream, lines }
    }

    /// The (spent, held) pairs written to the budget hash `key` so far, in order.
    fn budget_writes(&self, key: &str) -> Vec<(u64, u64)> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|line| monitor_args(line))
            .filter(|args| {
                args.len() == 6
                    && args[0].eq_ignore_ascii_case("hset")
                    && args[1] == key
                    && (args[2].as_str(), args[4].as_str()) == ("spent", "held")
            })
            .map(|args| (args[3].parse().unwrap(), args[5].parse().unwrap()))
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The arguments of one `MONITOR` line (`+<time> [<db> <client>] "ARG" "ARG" ...`), each
/// quoted, with `\"` and `\\` escaped.
fn monitor_args(line: &str) -> Vec<String> {
    let Some((_, quoted)) = line.split_once("] ") else {
        return Vec::new();
    };
    let mut args = Vec::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut arg = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => arg.extend(chars.next()),
                c => arg.push(c),
            }
        }
        args.push(arg);
    }
    args
}

/// rpm 5 on one key, requests alternating between two daemons on one Redis: five pass in
/// all (the remaining count falls across both), the sixth is 429 on either, with the same
/// headers and retry-after as one daemon gives; a key of its own is not touched.
async fn shared_rate_limits_hold_across_daemons<R: Runtime>(rt: R) {
    let upstream = Upstream::start(COMPLETION, true);
    let policies = [json!({"rpm": 5}), json!({"rpm": 5})];
    let (_redis, _client, a, b) =
        twins_on_redis(&rt, "shared-rpm", &upstream, false, &policies).await;
    for i in 0..5u64 {
        let gate = if i % 2 == 0 { &a } else { &b };
        let answer = gate
            .post("/v1/chat/completions", 0, chat("gpt-4o", 10, false))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i}: {}",
            answer.text()
        );
        assert_eq!(answer.header("x-ratelimit-limit-requests"), "5");
        assert_eq!(
            answer.header("x-ratelimit-remaining-requests"),
            (4 - i).to_string(),
            "request {i}"
        );
    }
    for gate in [&a, &b] {
        let refused = gate
            .post("/v1/chat/completions", 0, chat("gpt-4o", 10, false))
            .await;
        assert_status(&refused, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            refused.text().contains("5 requests per minute"),
            "{}",
            refused.text()
        );
        let retry: u64 = refused.header("retry-after").parse().unwrap();
        assert!((1..=12).contains(&retry), "retry-after {retry}");
        assert_eq!(refused.header("x-ratelimit-remaining-requests"), "0");
    }
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 5);
    let other = b
        .post("/v1/chat/completions", 1, chat("gpt-4o", 10, false))
        .await;
    assert_status(&other, StatusCode::OK);
}

/// One $1 budget, eight concurrent streams each able to cost $0.30, four through each of two
/// daemons: three are admitted in all and hold at least $0.90 in Redis (with the leases'
/// unused part, given back at their next flush); spent plus held never passes
/// $1; once they end Redis has spent what they cost, and neither daemon admits another.
async fn shared_budget_never_overspends_under_streams<R: Runtime>(rt: R) {
    let upstream = Upstream::start(250, false);
    let budget = [json!({"budget": {"usd": 1, "period": "day"}})];
    let (_redis, client, a, b) =
        twins_on_redis(&rt, "shared-budget", &upstream, true, &budget).await;
    let key_id = a.keys[0].id.clone();
    let body = streamed_chat_300();
    let limit = 1000 * MILLI;
    let streams: Vec<RawStream> = (0..8)
        .map(|i| {
            let gate = if i % 2 == 0 { &a } else { &b };
            RawStream::open(
                gate.addr,
                "/v1/chat/completions",
                &gate.keys[0].token,
                &body,
            )
        })
        .collect();
    let end = Instant::now() + DEADLINE;
    while !streams.iter().all(|s| s.status().is_some()) {
        let (spent, held) = redis_budget(&client, &key_id).await;
        assert!(spent + held <= limit, "{spent} + {held} > {limit}");
        assert!(Instant::now() < end, "requests unanswered");
        rt.sleep(Duration::from_millis(10)).await;
    }
    let admitted = streams.iter().filter(|s| s.status() == Some(200)).count();
    let refused = streams.iter().filter(|s| s.status() == Some(402)).count();
    assert_eq!((admitted, refused), (3, 5));
    // The three streams' $0.90, plus whatever a lease holds beyond them until its next
    // flush gives it back (a lease may grow by up to half of the budget nobody holds).
    let (spent, held) = redis_budget(&client, &key_id).await;
    assert!(
        spent == 0 && (900 * MILLI..=limit).contains(&held),
        "{spent} + {held}"
    );
    upstream.release();
    let end = Instant::now() + DEADLINE;
    loop {
        let (spent, held) = redis_budget(&client, &key_id).await;
        assert!(spent + held <= limit, "{spent} + {held} > {limit}");
        if held == 0 && streams.iter().all(|s| s.done.load(Ordering::SeqCst)) {
            break;
        }
        assert!(
            Instant::now() < end,
            "streams did not settle: {spent} + {held}"
        );
        rt.sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(redis_budget(&client, &key_id).await, (750 * MILLI, 0));
    // Each daemon's listing shows the shared spend as it last saw it.
    wait_until(&rt, "both daemons to see the settled spend", || {
        a.spend(0) == (750 * MILLI, 0) || b.spend(0) == (750 * MILLI, 0)
    })
    .await;
    for gate in [&a, &b] {
        let again = gate
            .post("/v1/chat/completions", 0, chat("gpt-4o", 300, false))
            .await;
        assert_status(&again, StatusCode::PAYMENT_REQUIRED);
        assert!(again.text().contains("has spent $0.75"), "{}", again.text());
    }
}

/// Redis stopped mid-load and started again. `closed`: a rate-limited key is refused with
/// 503 naming the store while it is down, a key without limits goes on, and requests pass
/// again once it is back, without a restart. `open`: the same key goes on through the
/// daemon's own limiter while Redis is down.
async fn redis_outage_and_recovery<R: Runtime>(rt: R) {
    let mut redis = store_servers::RedisServer::start().expect("redis-server");
    let upstream = Upstream::start(COMPLETION, true);
    let policies = [json!({"rpm": 1000}), json!({})];
    let closed = start_gate(
        &rt,
        "outage-closed",
        &upstream_config(
            &upstream,
            "\"gpt-4o\"",
            &store_section(&redis.url(), "closed"),
        ),
        &policies,
    )
    .await;
    let open = twin_gate(
        &rt,
        &closed,
        "outage-open",
        &upstream_config(
            &upstream,
            "\"gpt-4o\"",
            &store_section(&redis.url(), "open"),
        ),
    )
    .await;
    for gate in [&closed, &open] {
        let ok = gate
            .post("/v1/chat/completions", 0, chat("gpt-4o", 10, false))
            .await;
        assert_status(&ok, StatusCode::OK);
    }
    redis.stop();
    let down = closed
        .post("/v1/chat/completions", 0, chat("gpt-4o", 10, false))
        .await;
    assert_status(&down, StatusCode::SERVICE_UNAVAILABLE);
    let message = down.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains(&format!(
            "Redis at redis://127.0.0.1:{}/0 is unavailable",
            redis.port()
        )) && message.contains("store.on_unavailable"),
        "{message}"
    );
    assert_eq!(down.header("retry-after"), "1");
    let anthropic = closed
        .post("/v1/messages", 0, messages("gpt-4o", 10, false))
        .await;
    assert_eq!(anthropic.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(anthropic.json()["type"], "error", "{}", anthropic.text());
    let unlimited = closed
        .post("/v1/chat/completions", 1, chat("gpt-4o", 10, false))
        .await;
    assert_status(&unlimited, StatusCode::OK);
    for _ in 0..3 {
        let fallback = open
            .post("/v1/chat/completions", 0, chat("gpt-4o", 10, false))
            .await;
        assert_status(&fallback, StatusCode::OK);
        assert_eq!(fallback.header("x-ratelimit-limit-requests"), "1000");
    }
    let record = closed
        .records()
        .into_iter()
        .find(|r| r.status == 503)
        .expect("the refusal's usage record");
    assert_eq!(record.error.as_deref(), Some("store_unavailable"));
    redis.restart().expect("redis-server again");
    let end = Instant::now() + DEADLINE;
    loop {
        let answer = closed
            .post("/v1/chat/completions", 0, chat("gpt-4o", 10, false))
            .await;
        if answer.status == StatusCode::OK {
            break;
        }
        assert_status(&answer, StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < end, "no recovery after Redis came back");
        rt.sleep(Duration::from_millis(50)).await;
    }
    // Back in Redis: the restarted server holds this minute's state again.
    let client = redis_client(&rt, &redis.url());
    let rate = client
        .command(
            &[
                b"HGET".as_slice(),
                format!("gate:{{{}}}:rate", closed.keys[0].id).as_bytes(),
                b"r",
            ],
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert!(rate.as_i64().unwrap_or(0) > 0, "{rate:?}");
}

/// The client logs in with the URL's password and never shows it; a wrong one is a clear
/// error without it.
async fn redis_password_is_used_and_never_shown<R: Runtime>(rt: R) {
    let redis = store_servers::RedisServer::start().expect("redis-server");
    let password = "redis-Secr3t-pass-71";
    assert_eq!(
        redis
            .command(&format!("CONFIG SET requirepass {password}"))
            .unwrap(),
        "+OK"
    );
    let good = redis_client(
        &rt,
        &format!("redis://:{password}@127.0.0.1:{}/1", redis.port()),
    );
    good.ping().await.expect("PING with the password");
    let wrong = redis_client(
        &rt,
        &format!("redis://:wrong-{password}@127.0.0.1:{}", redis.port()),
    );
    let error = wrong.ping().await.unwrap_err().to_string();
    assert!(error.contains("login was refused"), "{error}");
    assert!(!error.contains(password), "{error}");
    let none = redis_client(&rt, &format!("redis://127.0.0.1:{}", redis.port()));
    let error = none.ping().await.unwrap_err().to_string();
    assert!(error.contains("NOAUTH"), "{error}");
}

// Leases: each daemon takes budget and rate slots from Redis per chunk of requests.

/// One blocking request on its own connection: the status and the response head.
fn post_blocking(addr: SocketAddr, token: &str, body: &Value) -> (u16, String) {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).expect("connect to gate");
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         authorization: Bearer {token}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    (status, head)
}

/// Waits until Redis shows `key_id`'s daily budget as `check` wants it, asserting on every
/// sample that spent + held never passes `limit`; the last sample.
async fn wait_budget<R: Runtime>(
    rt: &R,
    client: &gate_rt::store::Redis<R>,
    key_id: &str,
    limit: u64,
    what: &str,
    deadline: Duration,
    mut check: impl FnMut(u64, u64) -> bool,
) -> (u64, u64) {
    let end = Instant::now() + deadline;
    loop {
        let (spent, held) = redis_budget(client, key_id).await;
        assert!(spent + held <= limit, "{what}: {spent} + {held} > {limit}");
        if check(spent, held) {
            return (spent, held);
        }
        assert!(Instant::now() < end, "{what}: still {spent} + {held}");
        rt.sleep(Duration::from_millis(5)).await;
    }
}

/// Two daemons, one $20 budget. An idle key's first request is decided by Redis with a lease
/// of exactly its own maximum; then twelve clients (six per daemon) send requests (at most
/// $0.10, actually $0.04 each) until refused: spent + held never passes $20 in Redis at any
/// sample, and once every lease is flushed and given back, Redis has spent exactly what the
/// admitted requests cost (nothing settled is lost, nothing counted twice), within the
/// budget, most of which was used; Redis was asked far fewer times than requests passed.
async fn shared_budget_leases_under_load<R: Runtime>(rt: R) {
    let upstream = Upstream::start(COMPLETION, false);
    let budget = [json!({"budget": {"usd": 20, "period": "day"}})];
    let (redis, client, a, b) = twins_on_redis(&rt, "lease-load", &upstream, true, &budget).await;
    let key_id = a.keys[0].id.clone();
    let limit = 20_000 * MILLI;
    let body = streamed_chat_300();
    // What the first lease call left in Redis is read from Redis's monitor, not from the
    // budget afterwards: the flush tick after that call (within 150 ms) grows the lease toward
    // what the key just reserved, so a test slower than that tick would read $0.60.
    let monitor = Monitor::start(redis.port());
    let first = RawStream::open(a.addr, "/v1/chat/completions", &a.keys[0].token, &body);
    wait_until(&rt, "the first stream's answer", || {
        first.status().is_some()
    })
    .await;
    assert_eq!(first.status(), Some(200), "{}", first.text());
    let budget_key = budget_key(&key_id);
    // The script writes (spent, held) when it creates the budget (held 0), then once more.
    let mut writes = Vec::new();
    wait_until(&rt, "the first lease call in Redis's monitor", || {
        writes = monitor.budget_writes(&budget_key);
        writes.iter().any(|&(_, held)| held > 0)
    })
    .await;
    drop(monitor);
    assert_eq!(
        writes.into_iter().find(|&(_, held)| held > 0),
        Some((0, 300 * MILLI)),
        "an idle key leases exactly its request's maximum"
    );
    let admitted = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    for gate in [&a, &b] {
        for _ in 0..6 {
            let (addr, token) = (gate.addr, gate.keys[0].token.clone());
            let (admitted, finished, failures) =
                (admitted.clone(), finished.clone(), failures.clone());
            std::thread::spawn(move || {
                let body = chat("gpt-4o", 100, false);
                loop {
                    match post_blocking(addr, &token, &body) {
                        (200, _) => {
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                        (402, _) => break,
                        (status, head) => {
                            failures.lock().unwrap().push(format!("{status}: {head}"));
                            break;
                        }
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
    }
    wait_budget(
        &rt,
        &client,
        &key_id,
        limit,
        "under load",
        Duration::from_secs(60),
        |_, _| finished.load(Ordering::SeqCst) == 12,
    )
    .await;
    assert!(
        failures.lock().unwrap().is_empty(),
        "{:?}",
        failures.lock().unwrap()
    );
    upstream.release();
    wait_until(&rt, "the first stream to end", || {
        first.done.load(Ordering::SeqCst)
    })
    .await;
    let n = admitted.load(Ordering::SeqCst) as u64;
    let (spent, _) = wait_budget(
        &rt,
        &client,
        &key_id,
        limit,
        "the leases to be flushed and given back",
        DEADLINE,
        |_, held| held == 0,
    )
    .await;
    assert_eq!(spent, (n + 1) * 40 * MILLI, "{n} requests and the stream");
    assert!(spent >= limit / 2, "most of the budget was used: {spent}");
    // Redis was asked per chunk of requests, not per request.
    let stats = client
        .command(
            &[b"INFO".as_slice(), b"commandstats"],
            Duration::from_secs(2),
        )
        .await
        .unwrap()
        .as_text()
        .unwrap();
    let calls: u64 = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    // Each lease is also flushed every 150 ms whatever the traffic, so the count grows with
    // the time taken (about 2 s and 55-80 calls for ~490 requests, with or without six busy
    // loops beside the test).
    let took = started.elapsed();
    eprintln!("{n} requests admitted, {calls} script calls, in {took:?}");
    assert!(
        calls * 2 < n,
        "{calls} script calls for {n} requests in {took:?}"
    );
}

/// rpm 1200 on one key (a lease takes up to 2 slots, 100 ms of the rate), twelve clients on
/// two daemons sending 1,500 requests as fast as they can: no more are admitted in all than
/// GCRA allows in the time they took (the minute's burst plus its rate), the rest are 429
/// with retry-after and the rate-limit headers.
async fn shared_rate_leases_hold_across_daemons<R: Runtime>(rt: R) {
    let upstream = Upstream::start(COMPLETION, true);
    let (_redis, _client, a, b) =
        twins_on_redis(&rt, "lease-rpm", &upstream, false, &[json!({"rpm": 1200})]).await;
    let sent = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    for gate in [&a, &b] {
        for _ in 0..6 {
            let (addr, token) = (gate.addr, gate.keys[0].token.clone());
            let (sent, admitted, refused, finished, failures) = (
                sent.clone(),
                admitted.clone(),
                refused.clone(),
                finished.clone(),
                failures.clone(),
            );
            std::thread::spawn(move || {
                let body = chat("gpt-4o", 10, false);
                while sent.fetch_add(1, Ordering::SeqCst) < 1500 {
                    match post_blocking(addr, &token, &body) {
                        (200, _) => {
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                        (429, head)
                            if head.contains("retry-after:")
                                && head.contains("x-ratelimit-limit-requests: 1200") =>
                        {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        (status, head) => {
                            failures.lock().unwrap().push(format!("{status}: {head}"));
                            break;
                        }
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
    }
    let end = Instant::now() + Duration::from_secs(120);
    while finished.load(Ordering::SeqCst) < 12 {
        assert!(Instant::now() < end, "the clients did not finish");
        rt.sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    assert!(
        failures.lock().unwrap().is_empty(),
        "{:?}",
        failures.lock().unwrap()
    );
    let admitted = admitted.load(Ordering::SeqCst) as u64;
    // A burst of 1200, then one every 50 ms.
    let allowed = 1200 + took.as_millis() as u64 / 50 + 1;
    assert!(
        admitted <= allowed,
        "{admitted} admitted in {took:?} (at most {allowed})"
    );
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "the limit was never reached"
    );
    assert!(admitted >= 1000, "only {admitted} admitted in {took:?}");
}

/// A TCP proxy to Redis that the test can cut: every connection through it is shut and new
/// ones are closed at once (a daemon that died, as Redis sees it).
struct CutProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl CutProxy {
    fn start(target: u16) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let cut: Arc<AtomicBool> = Arc::default();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, k) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut kept = k.lock().unwrap();
                kept.push(client.try_clone().unwrap());
                kept.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CutProxy { port, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().iter() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Daemon A leases $0.30 of a $1 budget for a stream and then loses Redis for good (as if
/// killed): its lease is never renewed nor settled. Daemon B is refused what A's lease
/// holds; at the lease's deadline B's next call charges it in full (once), and B then uses
/// the rest of the budget, and no more.
async fn shared_lease_of_a_lost_daemon_is_charged_at_its_deadline<R: Runtime>(rt: R) {
    let redis = store_servers::RedisServer::start().expect("redis-server");
    let client = redis_client(&rt, &redis.url());
    let proxy = CutProxy::start(redis.port());
    let upstream = Upstream::start(COMPLETION, false);
    let limit = 1000 * MILLI;
    let budget = [json!({"budget": {"usd": 1, "period": "day"}})];
    let a = start_gate(
        &rt,
        "lease-lost-a",
        &upstream_config(
            &upstream,
            "\"gpt-4o\"",
            &format!(
                "{PRICES}{}",
                store_section(&format!("redis://127.0.0.1:{}", proxy.port), "closed")
            ),
        ),
        &budget,
    )
    .await;
    let config = upstream_config(
        &upstream,
        "\"gpt-4o\"",
        &format!("{PRICES}{}", store_section(&redis.url(), "closed")),
    );
    let b = twin_gate(&rt, &a, "lease-lost-b", &config).await;
    let key_id = a.keys[0].id.clone();
    let body = json!({"model": "gpt-4o", "max_tokens": 300, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    // A's lease is read from Redis's monitor, as it was written: the flush tick after the
    // stream's admission (within 150 ms) grows it to $0.60, toward what the key reserved in
    // that interval, and the next tick (nothing reserved since) gives it back to $0.30.
    let monitor = Monitor::start(redis.port());
    let stream = RawStream::open(a.addr, "/v1/chat/completions", &a.keys[0].token, &body);
    wait_until(&rt, "A's stream to be admitted", || {
        stream.status().is_some()
    })
    .await;
    assert_eq!(stream.status(), Some(200), "{}", stream.text());
    let budget_key = budget_key(&key_id);
    // The script writes (spent, held) when it creates the budget (held 0), then once per call.
    let mut leases = Vec::new();
    wait_until(&rt, "A's first lease call in Redis's monitor", || {
        leases = monitor.budget_writes(&budget_key);
        leases.iter().any(|&(_, held)| held > 0)
    })
    .await;
    assert_eq!(
        leases.iter().find(|&&(_, held)| held > 0),
        Some(&(0, 300 * MILLI)),
        "an idle key leases exactly its request's maximum"
    );
    // A is cut from Redis only once its lease is back at $0.30 after the growth: from then
    // on, nothing reserved, its flushes keep it there (they only renew it), so the lease
    // charged at its deadline is exactly $0.30 (cut during the growth, it could be $0.60).
    wait_until(&rt, "A's lease grown and given back to $0.30", || {
        leases = monitor.budget_writes(&budget_key);
        let first = leases.iter().position(|&(_, held)| held > 0);
        first.is_some_and(|first| {
            leases[first..].iter().any(|&(_, held)| held != 300 * MILLI)
                && leases.last() == Some(&(0, 300 * MILLI))
        })
    })
    .await;
    drop(monitor);
    assert_eq!(
        redis_budget(&client, &key_id).await,
        (0, 300 * MILLI),
        "A's lease before the cut (writes: {leases:?})"
    );
    proxy.cut();
    let too_big = b
        .post("/v1/chat/completions", 0, chat("gpt-4o", 800, false))
        .await;
    assert_status(&too_big, StatusCode::PAYMENT_REQUIRED);
    // Each refusal is a lease call that charges expired leases.
    let end = Instant::now() + LEASE_TTL_WAIT;
    loop {
        let (spent, held) = redis_budget(&client, &key_id).await;
        if (spent, held) == (300 * MILLI, 0) {
            break;
        }
        assert_eq!((spent, held), (0, 300 * MILLI), "charged once, in full");
        assert!(Instant::now() < end, "A's lease was never charged");
        let refused = b
            .post("/v1/chat/completions", 0, chat("gpt-4o", 800, false))
            .await;
        assert_status(&refused, StatusCode::PAYMENT_REQUIRED);
        rt.sleep(Duration::from_millis(100)).await;
    }
    // B uses the rest ($0.70) in requests of at most $0.10 that cost $0.04.
    let mut n = 0u64;
    loop {
        let answer = b
            .post("/v1/chat/completions", 0, chat("gpt-4o", 100, false))
            .await;
        if answer.status == StatusCode::PAYMENT_REQUIRED {
            break;
        }
        assert_status(&answer, StatusCode::OK);
        n += 1;
        assert!(n < 100, "B was never refused");
    }
    let (spent, _) = wait_budget(
        &rt,
        &client,
        &key_id,
        limit,
        "B's lease given back",
        DEADLINE,
        |_, held| held == 0,
    )
    .await;
    assert_eq!(spent, 300 * MILLI + n * 40 * MILLI);
    assert!(
        spent + 100 * MILLI > limit - 40 * MILLI,
        "B used the rest: {spent}"
    );
    upstream.release();
}

/// A key's budget lowered while its lease on daemon A has room: A's next request is decided
/// under the new budget at once (refused: more than it is already spent), not from the old
/// lease, and the lease's unused part goes back to Redis.
async fn edited_key_drops_its_lease<R: Runtime>(rt: R) {
    let redis = store_servers::RedisServer::start().expect("redis-server");
    let client = redis_client(&rt, &redis.url());
    let upstream = Upstream::start(COMPLETION, true);
    let config = upstream_config(
        &upstream,
        "\"gpt-4o\"",
        &format!("{PRICES}{}", store_section(&redis.url(), "closed")),
    );
    let a = start_gate(
        &rt,
        "lease-edit",
        &config,
        &[json!({"budget": {"usd": 10, "period": "day"}})],
    )
    .await;
    let key_id = a.keys[0].id.clone();
    // Concurrent requests make the lease hold more than one request's maximum.
    let mut held_more = false;
    for _ in 0..10 {
        let mut answers = Vec::new();
        for _ in 0..8 {
            answers.push(a.post("/v1/chat/completions", 0, chat("gpt-4o", 100, false)));
        }
        for answer in answers {
            let answer = answer.await;
            assert_status(&answer, StatusCode::OK);
        }
        let (_, held) = redis_budget(&client, &key_id).await;
        if held > 100 * MILLI {
            held_more = true;
            break;
        }
    }
    assert!(held_more, "the lease never grew past one request");
    let path = TokenStore::path_in(&a.state);
    let mut stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let policy: KeyPolicy =
        serde_json::from_value(json!({"budget": {"usd": 0.2, "period": "day"}})).unwrap();
    stored["tokens"][0]["policy"] = serde_json::to_value(policy).unwrap();
    std::fs::write(&path, serde_json::to_vec(&stored).unwrap()).unwrap();
    a.gateway
        .set_tokens(TokenStore::load(&a.state).expect("token store"));
    let refused = a
        .post("/v1/chat/completions", 0, chat("gpt-4o", 100, false))
        .await;
    assert_status(&refused, StatusCode::PAYMENT_REQUIRED);
    assert!(refused.text().contains("$0.20"), "{}", refused.text());
    wait_budget(
        &rt,
        &client,
        &key_id,
        10_000 * MILLI,
        "the lease to be given back",
        DEADLINE,
        |_, held| held == 0,
    )
    .await;
}

/// A daemon that stops gives its lease back: after a round of concurrent requests on A (its
/// lease grown past one request), `give_back_leases` (the stop sequence's step) leaves Redis
/// with exactly what the requests cost spent and nothing held, at once, not at the lease's
/// deadline charged in full; B can then lease the whole rest of the budget.
async fn stopped_daemon_gives_its_lease_back<R: Runtime>(rt: R) {
    let upstream = Upstream::start(COMPLETION, true);
    let budget = [json!({"budget": {"usd": 10, "period": "day"}})];
    let (_redis, client, a, b) = twins_on_redis(&rt, "lease-stop", &upstream, true, &budget).await;
    let key_id = a.keys[0].id.clone();
    let mut n = 0u64;
    for _ in 0..3 {
        let mut answers = Vec::new();
        for _ in 0..8 {
            answers.push(a.post("/v1/chat/completions", 0, chat("gpt-4o", 100, false)));
        }
        for answer in answers {
            assert_status(&answer.await, StatusCode::OK);
            n += 1;
        }
    }
    assert_eq!(a.gateway.give_back_leases().await, Some(true));
    assert_eq!(
        redis_budget(&client, &key_id).await,
        (n * COMPLETION * MILLI, 0),
        "{n} requests spent, nothing held"
    );
    // All the rest is B's: a request whose maximum is the whole rest passes.
    let rest = 10_000 - n * COMPLETION;
    let answer = b
        .post("/v1/chat/completions", 0, chat("gpt-4o", rest, false))
        .await;
    assert_status(&answer, StatusCode::OK);
}

/// A lease's deadline (10 s) and a margin for a loaded machine.
const LEASE_TTL_WAIT: Duration = Duration::from_secs(30);

common::both_runtimes!(
    model_refusals_in_every_protocol,
    rate_limits_with_headers,
    budgets_and_settlement_on_every_route,
    answers_without_usage_are_charged_within_the_request_bound,
    concurrent_streams_never_overspend,
    abandoned_streams_are_settled,
    native_gemini_admission,
    shared_rate_limits_hold_across_daemons,
    shared_budget_never_overspends_under_streams,
    redis_outage_and_recovery,
    redis_password_is_used_and_never_shown,
    shared_budget_leases_under_load,
    shared_rate_leases_hold_across_daemons,
    shared_lease_of_a_lost_daemon_is_charged_at_its_deadline,
    edited_key_drops_its_lease,
    stopped_daemon_gives_its_lease_back,
);
