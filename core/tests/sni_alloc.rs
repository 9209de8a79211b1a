//! Proves that `gate_core::sni::parse` performs no heap allocation, with a counting global
//! allocator. The count is per thread, so allocations by the test harness on other threads do
//! not disturb it.
//!
//! This test file holds the only `unsafe` of the sni work: implementing `GlobalAlloc` requires
//! it. The implementation only forwards to the system allocator and bumps a thread-local
//! counter.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// a panic is how a test or tool reports failure
// The counting global allocator needs `unsafe impl GlobalAlloc`: the one place in the
// workspace that opts out of the `unsafe_code` lint, and only in this test binary.
#![allow(unsafe_code)]

#[path = "sni_hellos.rs"]
mod hellos;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use gate_core::sni::{self, Status};

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with` fails only while the thread is being torn down; nothing to count then.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is upheld by `System`; the counter touches no allocator state.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Parses `input` and returns the answer with the number of allocations the parse made.
fn parse_counting(input: &[u8]) -> (Result<Status, sni::SniError>, u64) {
    let before = allocations();
    let status = sni::parse(input);
    let after = allocations();
    (status, after - before)
}

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let boxed = std::hint::black_box(Box::new(7u64));
    assert!(
        allocations() > before,
        "the counting allocator must be active"
    );
    drop(boxed);
}

#[test]
fn parsing_a_hello_in_one_piece_does_not_allocate() {
    for hello in [hellos::small_hello(), hellos::pq_hello()] {
        let (status, count) = parse_counting(&hello);
        assert!(matches!(status, Ok(Status::Found(_))), "{status:?}");
        assert_eq!(count, 0, "parse of a {}-byte hello allocated", hello.len());
    }
}

#[test]
fn parsing_fragments_prefixes_and_errors_does_not_allocate() {
    let hello = hellos::pq_hello();
    let reframed = hellos::reframe(&hellos::handshake_message(&hello), &[1, 100, 7]);
    let mut garbage = hello.clone();
    garbage[60] ^= 0xff;
    let inputs: [&[u8]; 5] = [
        &reframed,
        &hello[..hello.len() / 2],
        &garbage,
        b"GET / HTTP/1.1\r\n",
        &[],
    ];
    for input in inputs {
        let (status, count) = parse_counting(input);
        assert_eq!(count, 0, "parse allocated for {status:?}");
    }
}
