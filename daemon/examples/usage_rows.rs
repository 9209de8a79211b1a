//! The usage log's cost per row, alone (issue 16): writes `--rows` records to a fresh
//! `usage.db` in batches of `--batch` (the writer's `MAX_BATCH` by default), as
//! `gate_daemon::usage::writer` does, and prints the CPU time per row. Under callgrind
//! (`bench/callgrind.sh --usage-rows 50000`) it counts the instructions per row, which is how
//! changes to the schema or the insert statements are compared.
//!
//! ```text
//! cargo run --release -p gate-daemon --example usage_rows -- [--rows 100000] [--batch 1024] [--dir DIR]
//! ```
//! Rows look like the throughput bench's: one key, one model, one upstream, a cost, each a
//! millisecond-ish apart. The directory is a new temporary one unless `--dir` is given, and
//! is removed at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a tool reports failure

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use gate_core::accounting::{UsageRecord, Usd};
use gate_daemon::usage::UsageDb;

#[derive(Parser)]
struct Args {
    /// Rows to write.
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Rows per transaction.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Where to create usage.db (default: a new temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn main() {
    let args = Args::parse();
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("gate-usage-rows-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).unwrap();
    let mut db = UsageDb::open(&UsageDb::path_in(&dir)).unwrap();
    let key: Arc<str> = "k-0123456789ab".into();
    let model: Arc<str> = "bench-model".into();
    let upstream: Arc<str> = "plain".into();
    let start_ms = 1_796_310_245_000u64;
    let started = Instant::now();
    let cpu = cpu_ns();
    let mut written = 0u64;
    let mut batch = Vec::with_capacity(args.batch);
    while written < args.rows {
        batch.clear();
        for i in 0..args
            .batch
            .min(usize::try_from(args.rows - written).unwrap())
        {
            let n = written + i as u64;
            batch.push(UsageRecord {
                at_ms: start_ms + n / 25,
                key_id: key.clone(),
                owner: None,
                endpoint: "chat".into(),
                model: model.clone(),
                served_model: Some(model.clone()),
                upstream: Some(upstream.clone()),
                input_tokens: 12,
                output_tokens: 10,
                cached_tokens: 0,
                cache_write_tokens: 0,
                cost: Some(Usd(7_800)),
                latency_ms: 1,
                ttft_ms: None,
                status: 200,
                error: None,
            });
        }
        db.insert(&batch).unwrap();
        written += batch.len() as u64;
    }
    let cpu = cpu_ns() - cpu;
    println!(
        "{written} rows in batches of {}: {:.2} µs CPU per row ({:.2} s wall)",
        args.batch,
        cpu as f64 / 1000.0 / written as f64,
        started.elapsed().as_secs_f64()
    );
    drop(db);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// This process's CPU time (user + system), nanoseconds, from /proc/self/stat.
fn cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 10_000_000 // USER_HZ = 100 on Linux
}
