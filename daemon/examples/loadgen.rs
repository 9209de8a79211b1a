//! A small HTTP/1.1 load generator for the gateway benchmark (`bench/gateway.sh`).
//!
//! It owns: a fixed number of keep-alive connections (one per unit of concurrency), each sending
//! the same request back to back; per-request latency (request sent until the last body byte),
//! and for streams the time to the first complete SSE event (request sent until the first
//! `\n\n` of the body); a JSON report on stdout. It must not run unbounded: it stops after
//! `--requests` requests or `--duration` seconds, whichever comes first, and every request has
//! a timeout. It is a benchmark tool, not a test: it prints numbers and judges nothing except
//! that answers were well-formed (status 2xx; streams end with `data: [DONE]`).
//!
//! ```text
//! cargo run --release -p gate-daemon --example loadgen -- \
//!     --url http://127.0.0.1:PORT/v1/chat/completions --body '{"model":"m","messages":[...]}' \
//!     --header 'authorization: Bearer KEY' --concurrency 50 --requests 20000 --duration 10 \
//!     [--warmup 200] [--stream] [--label gate-c50]
//! ```
//!
//! Report (milliseconds): `{"label", "url", "concurrency", "stream", "requests", "errors",
//! "first_error", "elapsed_s", "throughput_rps", "latency_ms": {"mean","p50","p90","p99","max"},
//! "ttfb_ms": {...} (streams only), "bytes_received", "client_cpu_ms_per_request"}`. Warm-up requests are not counted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Fixed-concurrency HTTP/1.1 load generator with latency percentiles.
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
struct Args {
    /// Target URL (http only, e.g. http://127.0.0.1:3000/v1/chat/completions).
    #[arg(long)]
    url: String,
    /// Request body (sent with POST and content-type application/json). Empty: GET.
    #[arg(long, default_value = "")]
    body: String,
    /// Extra header `name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Number of connections, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Stop after this many measured requests.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Stop after this many seconds of measurement, whatever the count.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Requests per connection sent before measuring (not counted).
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Expect an SSE stream: measure time to the first event, check it ends with `data: [DONE]`.
    #[arg(long)]
    stream: bool,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A label copied into the report.
    #[arg(long, default_value = "")]
    label: String,
}

/// One measured request, in nanoseconds.
#[derive(Clone, Copy)]
struct Sample {
    latency_ns: u64,
    ttfb_ns: u64,
}

struct Shared {
    issued: AtomicU64,
    limit: u64,
    deadline: Mutex<Option<Instant>>,
    stop: AtomicBool,
    errors: AtomicU64,
    bytes: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn note_error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            if first.is_none() {
                *first = Some(message);
            }
        }
    }

    /// Claims the right to send one more measured request.
    fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        if let Ok(deadline) = self.deadline.lock() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.stop.store(true, Ordering::Relaxed);
                return false;
            }
        }
        self.issued.fetch_add(1, Ordering::Relaxed) < self.limit
    }
}

struct Target {
    authority: String,
    host_port: String,
    path: String,
    body: Bytes,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    stream: bool,
    timeout: Duration,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

fn parse_target(args: &Args) -> Result<Target, String> {
    let uri: http::Uri = args.url.parse().map_err(|e| format!("bad --url: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported".into());
    }
    let authority = uri.authority().ok_or("the URL has no host")?.to_string();
    let host_port = if uri.port().is_some() {
        authority.clone()
    } else {
        format!("{authority}:80")
    };
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let mut headers = Vec::new();
    for raw in &args.headers {
        let (name, value) = raw
            .split_once(':')
            .ok_or_else(|| format!("bad --header {raw:?}: want `name: value`"))?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| format!("bad header name: {e}"))?;
        let value = http::HeaderValue::from_str(value.trim())
            .map_err(|e| format!("bad header value: {e}"))?;
        headers.push((name, value));
    }
    Ok(Target {
        authority,
        host_port,
        path,
        body: Bytes::from(args.body.clone().into_bytes()),
        headers,
        stream: args.stream,
        timeout: Duration::from_secs_f64(args.timeout.max(0.001)),
    })
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let target = Arc::new(parse_target(&args)?);
    let shared = Arc::new(Shared {
        issued: AtomicU64::new(0),
        limit: args.requests,
        deadline: Mutex::new(None),
        stop: AtomicBool::new(false),
        errors: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let concurrency = args.concurrency.max(1);

    // Connect and warm up every connection, then start the clock for all of them at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let target = target.clone();
        let shared = shared.clone();
        let barrier = barrier.clone();
        let warmup = args.warmup;
        workers.push(tokio::spawn(async move {
            worker(target, shared, barrier, warmup).await
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let cpu_at_start = own_cpu_seconds();
    if let Ok(mut deadline) = shared.deadline.lock() {
        *deadline = Some(started + Duration::from_secs_f64(args.duration.max(0.0)));
    }
    let mut samples: Vec<Sample> = Vec::new();
    for w in workers {
        match w.await {
            Ok(mut s) => samples.append(&mut s),
            Err(e) => shared.note_error(format!("worker panicked: {e}")),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let client_cpu_s = own_cpu_seconds() - cpu_at_start;

    let mut latencies: Vec<u64> = samples.iter().map(|s| s.latency_ns).collect();
    let mut ttfbs: Vec<u64> = samples.iter().map(|s| s.ttfb_ns).collect();
    let mut report = serde_json::json!({
        "label": args.label,
        "url": args.url,
        "concurrency": concurrency,
        "stream": args.stream,
        "requests": samples.len(),
        "errors": shared.errors.load(Ordering::Relaxed),
        "first_error": shared.first_error.lock().ok().and_then(|e| e.clone()),
        "elapsed_s": elapsed,
        "throughput_rps": if elapsed > 0.0 { samples.len() as f64 / elapsed } else { 0.0 },
        "latency_ms": summary(&mut latencies),
        "bytes_received": shared.bytes.load(Ordering::Relaxed),
        "client_cpu_ms_per_request": if samples.is_empty() { 0.0 } else { client_cpu_s * 1000.0 / samples.len() as f64 },
    });
    if args.stream {
        report["ttfb_ms"] = summary(&mut ttfbs);
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat` (0 elsewhere).
fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which ends with the last ')'): state is field 3, utime 14, stime 15.
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // The kernel reports in clock ticks; USER_HZ is 100 on every Linux ABI Rust targets.
    (ticks(11) + ticks(12)) / 100.0
}

/// Mean and percentiles (nearest rank) in milliseconds.
fn summary(values: &mut [u64]) -> serde_json::Value {
    if values.is_empty() {
        return serde_json::Value::Null;
    }
    values.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    let pct = |p: f64| {
        let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
        let index = rank.clamp(1, values.len()) - 1;
        values.get(index).copied().map(ms).unwrap_or(0.0)
    };
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64 / 1e6;
    serde_json::json!({
        "mean": mean,
        "p50": pct(50.0),
        "p90": pct(90.0),
        "p99": pct(99.0),
        "max": values.last().copied().map(ms).unwrap_or(0.0),
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(target: &Target) -> Result<Sender, String> {
    let stream = TcpStream::connect(&target.host_port)
        .await
        .map_err(|e| format!("connect {}: {e}", target.host_port))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn worker(
    target: Arc<Target>,
    shared: Arc<Shared>,
    barrier: Arc<tokio::sync::Barrier>,
    warmup: u64,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut sender: Option<Sender> = connect(&target)
        .await
        .map_err(|e| shared.note_error(e))
        .ok();
    for _ in 0..warmup {
        if let Some(s) = sender.as_mut() {
            if one_request(&target, s).await.is_err() {
                sender = None;
            }
        }
    }
    barrier.wait().await;
    while shared.claim() {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match connect(&target).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    shared.note_error(e);
                    // Do not spin on a dead target.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        match one_request(&target, s).await {
            Ok((sample, bytes)) => {
                shared.bytes.fetch_add(bytes, Ordering::Relaxed);
                samples.push(sample);
            }
            Err(e) => {
                shared.note_error(e);
                sender = None;
            }
        }
    }
    samples
}

/// Sends one request on the connection and reads the whole answer.
async fn one_request(target: &Target, sender: &mut Sender) -> Result<(Sample, u64), String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection not ready: {e}"))?;
    let method = if target.body.is_empty() {
        http::Method::GET
    } else {
        http::Method::POST
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(target.path.as_str())
        .header(http::header::HOST, target.authority.as_str());
    if !target.body.is_empty() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    for (name, value) in &target.headers {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(Full::new(target.body.clone()))
        .map_err(|e| format!("request: {e}"))?;
    let started = Instant::now();
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = response.status();
        let mut body: Incoming = response.into_body();
        let mut ttfb: Option<Instant> = None;
        let mut bytes = 0u64;
        let mut last_byte = 0u8;
        // Only the tail is kept to check the end of a stream; nothing else is buffered.
        let mut tail: Vec<u8> = Vec::with_capacity(64);
        let mut first_chunk: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if ttfb.is_none()
                && (memchr_pair(&data) || (last_byte == b'\n' && data.first() == Some(&b'\n')))
            {
                ttfb = Some(Instant::now());
            }
            if first_chunk.len() < 512 {
                first_chunk.extend_from_slice(&data[..data.len().min(512 - first_chunk.len())]);
            }
            last_byte = data.last().copied().unwrap_or(last_byte);
            bytes += data.len() as u64;
            tail.extend_from_slice(&data);
            if tail.len() > 64 {
                tail.drain(..tail.len() - 64);
            }
        }
        let done = Instant::now();
        if !status.is_success() {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&first_chunk)
            ));
        }
        if target.stream && !String::from_utf8_lossy(&tail).contains("data: [DONE]") {
            return Err(format!(
                "stream did not end with data: [DONE] (tail {:?})",
                String::from_utf8_lossy(&tail)
            ));
        }
        let latency_ns = (done - started).as_nanos() as u64;
        let ttfb_ns = ttfb
            .map(|t| (t - started).as_nanos() as u64)
            .unwrap_or(latency_ns);
        Ok((
            Sample {
                latency_ns,
                ttfb_ns,
            },
            bytes,
        ))
    };
    match tokio::time::timeout(target.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {:?}", target.timeout)),
    }
}

/// Whether the chunk holds a blank line (`\n\n`), the end of an SSE event.
fn memchr_pair(data: &[u8]) -> bool {
    data.windows(2).any(|w| w == b"\n\n")
}
