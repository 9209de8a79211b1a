//! Starting a server under test on ports probed free, again when a test running in parallel
//! took one of them first.
//!
//! A port probed free (bound to port 0 and let go) can be taken by another test before the
//! server binds it; the server then exits saying the address is in use. Shared by the Rust
//! tests of every crate: include it by path,
//! `#[path = "../../tests/support/retry_start.rs"] mod retry_start;`

use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// How many times a server is started on new ports after losing one to another test.
pub const START_ATTEMPTS: usize = 5;
/// How often the start-up is checked.
const POLL: Duration = Duration::from_millis(20);

/// A server process under test, as [`start_on_free_ports`] watches it.
pub trait Started {
    /// Its exit status, once it has exited.
    fn exit_status(&mut self) -> Option<ExitStatus>;
    /// What it has logged so far.
    fn log_text(&self) -> String;
}

/// Starts a server with `start` (which probes ports, writes the config and spawns it) and
/// waits until `ready` sees it up. When the server exits saying an address is in use, `start`
/// is called again (new ports), up to [`START_ATTEMPTS`] times. Any other exit, or no
/// readiness within `deadline` of a start, fails the test with the server's log.
pub fn start_on_free_ports<P: Started, T>(
    what: &str,
    deadline: Duration,
    mut start: impl FnMut() -> (P, T),
    mut ready: impl FnMut(&P, &T) -> bool,
) -> (P, T) {
    for _ in 0..START_ATTEMPTS {
        let (mut proc, value) = start();
        let end = Instant::now() + deadline;
        loop {
            if ready(&proc, &value) {
                return (proc, value);
            }
            if let Some(status) = proc.exit_status() {
                let log = proc.log_text();
                assert!(
                    log.contains("in use"),
                    "{what} exited ({status}) before it was ready:\n{log}"
                );
                break;
            }
            assert!(
                Instant::now() < end,
                "timed out after {deadline:?} waiting for {what} to start\n{}",
                proc.log_text()
            );
            std::thread::sleep(POLL);
        }
    }
    panic!("{what}: a port was taken at each of {START_ATTEMPTS} attempts");
}
