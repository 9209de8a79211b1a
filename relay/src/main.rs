//! The `gate-relay` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    gate_relay::cli::main()
}
