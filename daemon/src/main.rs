//! The `gate` binary: parses the command line and hands over to the library.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gate_daemon::cli::main()
}
