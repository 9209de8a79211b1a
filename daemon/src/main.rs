//! The `gate` binary: parses the command line and hands over to the library.
#![forbid(unsafe_code)]

/// mimalloc instead of glibc's malloc (issue 16; BENCHMARKS.md, "HTTP-layer limit", says
/// what it changed): the request path allocates many small objects on every worker thread.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gate_daemon::cli::main()
}
