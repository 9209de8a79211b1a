//! Throughput of `gate_core::sni::parse` on real rustls ClientHellos in one piece: a 517-byte
//! hello (X25519, padded as browsers pad) and a 1733-byte one with an X25519MLKEM768-sized key
//! share, plus the PQ hello fragmented over 7 records. Criterion reports elements/s = hellos/s.
//!
//! Run: `cargo bench -p gate-core --bench sni`
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

#[path = "../tests/sni_hellos.rs"]
mod hellos;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gate_core::sni::{self, Status};
use std::hint::black_box;

fn bench_parse(c: &mut Criterion) {
    let small = hellos::small_hello();
    let pq = hellos::pq_hello();
    let pq_fragmented = hellos::reframe(&hellos::handshake_message(&pq), &[256]);
    let mut group = c.benchmark_group("sni_parse");
    group.throughput(Throughput::Elements(1));
    for (name, hello) in [
        ("small_517B", &small),
        ("pq_1733B", &pq),
        ("pq_1763B_7_records", &pq_fragmented),
    ] {
        assert!(matches!(sni::parse(hello), Ok(Status::Found(_))));
        group.bench_function(name, |b| b.iter(|| sni::parse(black_box(hello))));
    }
    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
