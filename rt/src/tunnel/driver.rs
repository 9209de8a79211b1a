//! The one control-stream driver both ends of the tunnel run: the daemon's relay client for
//! each relay, and the relay for each daemon connection.
//!
//! Owns: the loop around a `gate_core::tunnel` session (drain every output: frames are encoded
//! and written, other outputs go to the end; then wait for exactly one of timer, the end's own
//! input, or bytes on the control stream; hand it to the session), the control stream's halves
//! and its frame decoder. Must not: decide anything about the protocol. A frame that does not
//! decode and a frame that does not encode are both handed to the session
//! ([`ControlEnd::handle_undecodable`], [`ControlEnd::handle_encode_failed`]), which decides
//! (in core) what is sent and why the connection closes; the driver never drops a frame
//! silently.
//!
//! ```text
//! loop {
//!     while let Some(output) = end.poll_output() {
//!         Transmit(frame) => encode + write   (encode error -> end.handle_encode_failed)
//!         Event(event)    => end.handle_event(event, &mut control).await   (may Stop)
//!     }
//!     match wait(timer, end.next_input(), control.read()) {
//!         Timer     => end.handle_timeout(now),
//!         Input(i)  => end.handle_input(now, i, &mut control)             (may Stop after a flush)
//!         Read(..)  => every decoded frame -> end.handle_frame(now, frame),
//!                      a decode error -> end.handle_undecodable, end of stream -> end.handle_stream_lost
//!     }
//! }
//! ```

use std::future::Future;
use std::time::Instant;

use gate_core::tunnel::{EncodeError, Frame, FrameDecoder, FrameError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tcp::H2Stream;
use crate::Runtime;

/// Bytes read from the control stream at a time.
const READ_CHUNK: usize = 8 * 1024;

/// A control stream: the two halves of the QUIC stream, or the HTTP/2 stream of a TCP tunnel
/// ([`super::tcp`]), and the decoder of what arrives.
pub struct ControlStream {
    halves: Halves,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

/// The transport under a control stream.
enum Halves {
    Quic {
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
    Tcp(H2Stream),
}

impl std::fmt::Debug for ControlStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("ControlStream");
        match &self.halves {
            Halves::Quic { send, .. } => out.field("quic_id", &send.id()),
            Halves::Tcp(_) => out.field("transport", &"tcp"),
        };
        out.field("buffered", &self.decoder.buffered_len()).finish()
    }
}

impl ControlStream {
    /// The control stream made of `send` and `recv`, with a decoder of the default maximum.
    pub fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        Self::with(Halves::Quic { send, recv })
    }

    /// The control stream of a TCP tunnel.
    pub fn tcp(stream: H2Stream) -> Self {
        Self::with(Halves::Tcp(stream))
    }

    fn with(halves: Halves) -> Self {
        Self {
            halves,
            decoder: FrameDecoder::default(),
            buf: vec![0u8; READ_CHUNK],
        }
    }

    /// Finishes the send side (the peer reads the end of the stream after what was written).
    pub fn finish(&mut self) {
        match &mut self.halves {
            Halves::Quic { send, .. } => {
                let _ = send.finish();
            }
            Halves::Tcp(stream) => stream.finish(),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.halves {
            Halves::Quic { send, .. } => send.write_all(bytes).await.map_err(Into::into),
            Halves::Tcp(stream) => stream.write_all(bytes).await,
        }
    }

    /// Reads into the buffer: `Ok(None)` at the end of the stream.
    async fn read(&mut self) -> std::io::Result<Option<usize>> {
        match &mut self.halves {
            Halves::Quic { recv, .. } => recv.read(&mut self.buf).await.map_err(Into::into),
            Halves::Tcp(stream) => match stream.read(&mut self.buf).await? {
                0 => Ok(None),
                count => Ok(Some(count)),
            },
        }
    }

    /// After [`Self::finish`]: completes once the peer has acknowledged everything written
    /// (or stopped the stream, or the connection is gone). Closing the connection before
    /// that discards what is still unacknowledged, such as a last `Refused` frame.
    /// Over TCP there is nothing to wait for: HTTP/2 frames leave in order on one TCP
    /// connection, so what was written goes out before the connection's own close.
    pub async fn flushed(&self) {
        match &self.halves {
            Halves::Quic { send, .. } => {
                let _ = send.stopped().await;
            }
            Halves::Tcp(_) => {}
        }
    }
}

/// An output of a session, as the driver sees it.
#[derive(Debug)]
pub enum Output<E> {
    /// Encode this frame and write it on the control stream.
    Transmit(Frame),
    /// Anything else: handed to [`ControlEnd::handle_event`].
    Event(E),
}

/// Whether the driver goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep driving.
    Continue,
    /// Stop: from [`ControlEnd::handle_event`] at once, from [`ControlEnd::handle_input`] after
    /// the outputs queued so far are written.
    Stop,
}

/// Why a write on the control stream failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("writing the control stream failed: {0}")]
    Write(#[from] std::io::Error),
}

/// One end of the tunnel: a core session plus what the end does with its other outputs. The
/// methods that take `now` forward to the session's `handle_*`; see the module docs for the
/// order in which the driver calls them.
pub trait ControlEnd {
    /// Inputs from the end's own sources (commands, shutdown, DNS answers).
    type Input: Send;
    /// Session outputs other than frames.
    type Event: Send;

    /// The session's next output, if any.
    fn poll_output(&mut self) -> Option<Output<Self::Event>>;
    /// When [`ControlEnd::handle_timeout`] must next be called.
    fn poll_timeout(&self) -> Option<Instant>;
    /// A timer set by [`ControlEnd::poll_timeout`] fired.
    fn handle_timeout(&mut self, now: Instant);
    /// A frame arrived on the control stream.
    fn handle_frame(&mut self, now: Instant, frame: Frame);
    /// The control stream carried bytes that are not a frame.
    fn handle_undecodable(&mut self, now: Instant, error: FrameError);
    /// A frame the session asked to send could not be encoded (nothing was written).
    fn handle_encode_failed(&mut self, now: Instant, error: EncodeError);
    /// The control stream ended or failed; `reason` says how.
    fn handle_stream_lost(&mut self, now: Instant, reason: String);
    /// The next input from the end's own sources; pending forever when there is none.
    /// `has_control` tells whether a control stream is open.
    fn next_input(&self, has_control: bool) -> impl Future<Output = Self::Input> + Send + '_;
    /// Acts on an input; may open or replace the control stream.
    fn handle_input(
        &mut self,
        now: Instant,
        input: Self::Input,
        control: &mut Option<ControlStream>,
    ) -> Flow;
    /// Carries out a non-frame output; may open, replace or close the control stream.
    fn handle_event(
        &mut self,
        event: Self::Event,
        control: &mut Option<ControlStream>,
    ) -> impl Future<Output = Flow> + Send;
}

/// What ended one wait of the driver.
enum Wake<I> {
    Timer,
    Input(I),
    Read(std::io::Result<Option<usize>>),
}

/// Runs `end` over `control` until the end says [`Flow::Stop`]. The control stream may be
/// absent (the daemon between connections, the relay before the daemon opens it); the end
/// opens it in [`ControlEnd::handle_input`] or [`ControlEnd::handle_event`].
pub async fn drive<R: Runtime, E: ControlEnd>(
    rt: &R,
    end: &mut E,
    control: &mut Option<ControlStream>,
) {
    loop {
        if flush(end, control).await == Flow::Stop {
            return;
        }
        let wake = wait(rt, end, control).await;
        let now = Instant::now();
        match wake {
            Wake::Timer => end.handle_timeout(now),
            Wake::Input(input) => {
                if end.handle_input(now, input, control) == Flow::Stop {
                    let _ = flush(end, control).await;
                    return;
                }
            }
            Wake::Read(Ok(Some(count))) => {
                let Some(stream) = control.as_mut() else {
                    continue;
                };
                stream
                    .decoder
                    .push(stream.buf.get(..count).unwrap_or_default());
                loop {
                    match stream.decoder.decode() {
                        Ok(Some(frame)) => end.handle_frame(now, frame),
                        Ok(None) => break,
                        Err(error) => {
                            end.handle_undecodable(now, error);
                            break;
                        }
                    }
                }
            }
            Wake::Read(Ok(None)) => {
                end.handle_stream_lost(now, "the peer closed the control stream".to_owned());
            }
            Wake::Read(Err(error)) => {
                end.handle_stream_lost(now, format!("reading the control stream failed: {error}"));
            }
        }
    }
}

/// Drains every output of the session: frames are written in order, events handed to the end.
async fn flush<E: ControlEnd>(end: &mut E, control: &mut Option<ControlStream>) -> Flow {
    while let Some(output) = end.poll_output() {
        match output {
            Output::Transmit(frame) => {
                let Some(stream) = control.as_mut() else {
                    tracing::debug!(
                        frame_type = frame.frame_type(),
                        "no control stream; frame not sent"
                    );
                    continue;
                };
                match send(stream, &frame).await {
                    Ok(()) => {}
                    Err(SendError::Encode(error)) => {
                        tracing::error!(
                            frame_type = frame.frame_type(),
                            "could not encode a control frame: {error}"
                        );
                        end.handle_encode_failed(Instant::now(), error);
                    }
                    Err(error @ SendError::Write(_)) => {
                        end.handle_stream_lost(Instant::now(), error.to_string());
                    }
                }
            }
            Output::Event(event) => {
                if end.handle_event(event, control).await == Flow::Stop {
                    return Flow::Stop;
                }
            }
        }
    }
    Flow::Continue
}

async fn send(stream: &mut ControlStream, frame: &Frame) -> Result<(), SendError> {
    let bytes = frame.to_bytes()?;
    stream.write_all(&bytes).await?;
    Ok(())
}

/// Waits for exactly one of: the session's timer, the end's input, bytes on the control stream.
async fn wait<R: Runtime, E: ControlEnd>(
    rt: &R,
    end: &E,
    control: &mut Option<ControlStream>,
) -> Wake<E::Input> {
    let deadline = end.poll_timeout();
    let timer = async {
        match deadline {
            Some(at) => rt.sleep(at.saturating_duration_since(Instant::now())).await,
            None => std::future::pending().await,
        }
        Wake::Timer
    };
    let has_control = control.is_some();
    let input = async { Wake::Input(end.next_input(has_control).await) };
    let read = async {
        match control.as_mut() {
            Some(stream) => Wake::Read(stream.read().await),
            None => std::future::pending().await,
        }
    };
    futures_lite::future::or(timer, futures_lite::future::or(input, read)).await
}
