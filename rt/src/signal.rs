//! The stop signals of both binaries (`gate serve`, `gate-relay serve`): SIGTERM and SIGINT,
//! awaited on any runtime. Installing the handlers explicitly also honours SIGINT in a process
//! whose parent ignored it (a shell script's `cmd &` starts it with SIGINT ignored).

use std::io;

use futures_lite::StreamExt as _;

/// Which signal asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM (systemd, `kill`).
    Term,
    /// SIGINT (Ctrl-C).
    Int,
}

impl std::fmt::Display for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
        })
    }
}

/// SIGTERM and SIGINT handlers, installed for as long as this lives (the default action, end
/// the process, no longer applies to them meanwhile).
pub struct StopSignals(async_signal::Signals);

impl std::fmt::Debug for StopSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StopSignals")
    }
}

impl StopSignals {
    /// Installs the handlers (whatever the inherited disposition, ignored included).
    pub fn install() -> io::Result<Self> {
        async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])
            .map(Self)
    }

    /// The next stop signal received.
    pub async fn next(&mut self) -> io::Result<StopSignal> {
        loop {
            match self.0.next().await {
                Some(Ok(async_signal::Signal::Term)) => return Ok(StopSignal::Term),
                Some(Ok(async_signal::Signal::Int)) => return Ok(StopSignal::Int),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the signal pipe closed",
                    ))
                }
            }
        }
    }
}
