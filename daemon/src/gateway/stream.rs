//! The streamed response body ([`StreamPipe`]): forwards or converts upstream SSE as it
//! arrives, batches what has already arrived into one write, and ends a broken or silent
//! stream with an error event in the client's protocol.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gate_core::llm::convert::is_usage_only_chunk;
use gate_core::llm::gemini::GeminiArrayDecoder;
use gate_core::llm::sse::{SseFramer, SseParser, SseWatcher};
use gate_core::route::WireProtocol;
use gate_rt::Runtime;
use http::StatusCode;
use hyper::body::{Body as HttpBody, Frame};

use super::attempt::AttemptSlot;
use super::policy::Charge;
use super::Endpoint;
use crate::convert::StreamConverter;
use crate::errors::stream_error_event;
use crate::metrics::Metrics;
use crate::web::BoxError;
use gate_core::llm::usage::Usage;
use gate_core::route::AttemptOutcome;

/// Limits of SSE lines and events read from upstreams.
pub(super) const SSE_MAX_LINE: usize = 4 << 20;
pub(super) const SSE_MAX_EVENT: usize = 16 << 20;

pub(super) enum Mode {
    /// Same protocol: forward upstream bytes as they come; the watcher only reads the events
    /// that carry `"usage"` (the others are not parsed).
    PassThrough(SseWatcher),
    /// Other protocol: parse events and re-encode them in the client's protocol.
    Convert(SseParser, Box<dyn StreamConverter>),
    /// Same protocol, but Gate asked the upstream for usage the client did not ask for:
    /// events are forwarded byte for byte as each completes, except the usage-only chunk.
    PassThroughStripUsage(SseFramer),
    /// Gemini's JSON-array stream passed through: bytes forwarded as they come; the decoder
    /// finds the elements (for usage) and how to close the array if the stream breaks.
    PassThroughArray(GeminiArrayDecoder),
    /// The framer's end state was taken (the stream is over).
    Ended,
}

/// How many scheduler turns in a row without new upstream data the pipe yields before it
/// writes what it has (see [`StreamPipe`]). One is not enough on the multi-threaded runtime:
/// the idle worker steals the yielding task and polls it again while the upstream connection's
/// task is still decoding the next chunk on the other worker. Measured on 2 cores (streamed
/// chat, 10 events per answer, concurrency 50): 0 or 1 turn, 11-12 writes per answer; 2 to 6
/// turns, about 2 writes and less than half the CPU per answer.
pub(super) const BATCH_YIELDS: u32 = 2;

/// The most bytes gathered into one body frame before it is handed to the connection.
pub(super) const BATCH_MAX_BYTES: usize = 64 * 1024;

/// The streamed response body: forwards (or converts) upstream SSE as it arrives, cuts
/// the stream with an error event after `idle` of silence or on an upstream error.
///
/// Batching without buffering: hyper's client hands the upstream body over one chunk (one
/// SSE event, usually) at a time, each after a switch to the upstream connection's task. When
/// the next chunk is not there yet, the pipe yields (wakes itself and returns `Pending`) for up
/// to [`BATCH_YIELDS`] scheduler turns in a row so that task can pass on what it has already
/// read, and then writes everything gathered as one body frame (one write to the client instead
/// of one per event). It never waits for time or for more upstream data: if nothing came in
/// during those turns, what it has goes out, so an event that has arrived is never held for the
/// next one.
///
/// The head goes out with the first batch: [`StreamPipe::prime`] gathers it, by the same
/// rule, before the response is handed to the connection (at most [`BATCH_YIELDS`] turns more
/// when nothing has come yet), so a stream whose head and first events arrived together
/// leaves in one write instead of a head-only write and then the events.
pub(super) struct StreamPipe<R: Runtime> {
    pub(super) inner: super::UpstreamBody<R>,
    pub(super) rt: R,
    pub(super) idle: Duration,
    /// The idle timer, armed the first time the pipe waits for upstream data with nothing
    /// to send (a stream that arrives whole never registers one: ~500 instructions and an
    /// allocation of every streamed request in the bench, issue 16).
    pub(super) sleep: Option<Pin<Box<R::Sleep>>>,
    /// When the running `sleep` was armed; data after it pushes the deadline back lazily
    /// (the timer is re-armed only when it fires, not per chunk).
    pub(super) armed_at: Instant,
    /// When the last upstream data came.
    pub(super) last_data: Instant,
    pub(super) client_protocol: WireProtocol,
    pub(super) upstream_protocol: WireProtocol,
    pub(super) mode: Mode,
    pub(super) pending: VecDeque<Bytes>,
    pub(super) pending_bytes: usize,
    /// The first batch, gathered by [`StreamPipe::prime`] before the head went out.
    pub(super) primed: Option<Bytes>,
    /// Data came since the pipe last yielded or returned `Pending`.
    pub(super) fresh: bool,
    /// Turns yielded since data last came (up to [`BATCH_YIELDS`]).
    pub(super) empty_yields: u32,
    pub(super) done: bool,
    pub(super) first_byte: bool,
    pub(super) started: Instant,
    pub(super) usage: Usage,
    pub(super) metrics: Arc<Metrics>,
    pub(super) upstream_name: std::sync::Arc<str>,
    pub(super) model: String,
    pub(super) endpoint: Endpoint,
    /// The attempt's breaker slot: settled as a success when the stream ends cleanly, as
    /// [`AttemptOutcome::FailedAfterFirstByte`] when it breaks; given back unsettled when the
    /// client goes away first.
    pub(super) slot: Option<AttemptSlot>,
    /// Every configured secret, scrubbed from each chunk before it goes out. Chunk by chunk:
    /// a secret split across two upstream chunks is not caught (the pipe never holds data
    /// back to look at the next chunk); upstreams send whole events per chunk in practice.
    pub(super) secrets: Arc<gate_core::llm::scrub::Scrubber>,
    /// The daemon's "end the streams" signal, the pipe's key in it and the waker it holds.
    pub(super) stop: StreamStop,
    pub(super) stop_id: u64,
    pub(super) stop_waker: Option<Waker>,
    /// The key's charge for this request: finished when the stream ends or breaks, and as
    /// abandoned when the pipe is dropped first (the client went away).
    pub(super) charge: Option<Charge>,
}

/// The stop signal [`StreamPipe`]s poll: once fired (a stop whose grace is over), each ends
/// with an error event in its client's protocol. Holds one waker per live pipe (its key from
/// [`StreamStop::next_id`]), replaced only when the pipe's waker changes, removed when the pipe
/// is dropped.
#[derive(Clone, Default)]
pub(crate) struct StreamStop(Arc<StreamStopInner>);

#[derive(Default)]
pub(crate) struct StreamStopInner {
    fired: std::sync::atomic::AtomicBool,
    next_id: std::sync::atomic::AtomicU64,
    wakers: Mutex<std::collections::HashMap<u64, Waker>>,
}

impl StreamStop {
    pub(crate) fn fire(&self) {
        self.0
            .fired
            .store(true, std::sync::atomic::Ordering::Release);
        let wakers = std::mem::take(&mut *self.0.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.0
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn fired(&self) -> bool {
        self.0.fired.load(std::sync::atomic::Ordering::Acquire)
    }

    fn forget(&self, id: u64) {
        self.0
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

impl<R: Runtime> Drop for StreamPipe<R> {
    fn drop(&mut self) {
        if self.stop_waker.is_some() {
            self.stop.forget(self.stop_id);
        }
        if let Some(charge) = self.charge.take() {
            charge.finish(StatusCode::OK, self.usage, Some("abandoned"));
        }
    }
}

/// `chunk` without any of `secrets` (untouched, not copied, when none occurs).
fn scrub_chunk(secrets: &gate_core::llm::scrub::Scrubber, chunk: Bytes) -> Bytes {
    match secrets.scrub(&chunk) {
        std::borrow::Cow::Borrowed(_) => chunk,
        std::borrow::Cow::Owned(scrubbed) => Bytes::from(scrubbed),
    }
}

impl<R: Runtime> StreamPipe<R> {
    /// True once the daemon's stop has fired; otherwise registers the task's waker with it.
    fn stop_fired(&mut self, cx: &Context<'_>) -> bool {
        if self.stop.fired() {
            return true;
        }
        if !self
            .stop_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.stop_waker = Some(cx.waker().clone());
            self.stop
                .0
                .wakers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(self.stop_id, cx.waker().clone());
        }
        // Fired between the first check and the registration: its wake may have missed us.
        self.stop.fired()
    }

    pub(super) fn push(&mut self, bytes: Bytes) {
        self.pending_bytes += bytes.len();
        self.pending.push_back(bytes);
    }

    /// Everything gathered, as one frame (`None` when nothing is).
    pub(super) fn take_batch(&mut self) -> Option<Bytes> {
        let batch = if self.pending.len() <= 1 {
            self.pending.pop_front()
        } else {
            let mut out = bytes::BytesMut::with_capacity(self.pending_bytes);
            for piece in self.pending.drain(..) {
                out.extend_from_slice(&piece);
            }
            Some(out.freeze())
        };
        self.pending_bytes = 0;
        batch
    }

    pub(super) fn fail(&mut self, message: &str) {
        if let Some(slot) = self.slot.take() {
            slot.settle(&AttemptOutcome::FailedAfterFirstByte, None);
        }
        if let Some(charge) = self.charge.take() {
            charge.finish(StatusCode::OK, self.usage, Some("upstream_error"));
        }
        self.end_with_error(StatusCode::BAD_GATEWAY, message);
    }

    /// Ends the stream with an error event that is not the upstream's fault (the daemon is
    /// stopping): the breaker slot is given back unsettled.
    fn end_for_stop(&mut self) {
        drop(self.slot.take());
        if let Some(charge) = self.charge.take() {
            charge.finish(StatusCode::OK, self.usage, Some("shutdown"));
        }
        self.end_with_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "gate is shutting down and its grace period for streams is over; retry the request",
        );
    }

    fn end_with_error(&mut self, status: StatusCode, message: &str) {
        tracing::warn!(upstream = %self.upstream_name, %message, "stream broke off");
        if let Mode::Convert(_, converter) = &mut self.mode {
            let _ = converter.finish(false);
        }
        if let Mode::PassThroughArray(decoder) = &self.mode {
            // An error element that keeps the client's array one JSON document.
            if let Some(framing) = decoder.error_framing() {
                let mut bytes = framing.prefix.as_bytes().to_vec();
                bytes.extend_from_slice(&gate_core::llm::gemini::error_body(
                    status.as_u16(),
                    message,
                ));
                bytes.extend_from_slice(framing.suffix.as_bytes());
                self.push(Bytes::from(bytes));
            }
            self.finish_metrics();
            self.done = true;
            return;
        }
        self.push(stream_error_event(self.client_protocol, status, message));
        self.finish_metrics();
        self.done = true;
    }

    pub(super) fn finish_metrics(&mut self) {
        self.metrics
            .add_usage(&self.upstream_name, &self.model, &self.usage);
        self.metrics
            .observe_request_duration(self.endpoint, self.started.elapsed().as_secs_f64());
    }

    pub(super) fn on_data(&mut self, data: Bytes) {
        if let Some(charge) = &mut self.charge {
            charge.on_bytes(data.len());
        }
        if !self.first_byte {
            self.first_byte = true;
            self.metrics.observe_time_to_first_token(
                &self.upstream_name,
                self.started.elapsed().as_secs_f64(),
            );
        }
        match &mut self.mode {
            Mode::PassThrough(watcher) => {
                let (usage, protocol) = (&mut self.usage, self.upstream_protocol);
                watcher.push(&data, |event_data| {
                    usage.observe(protocol, event_data.as_bytes())
                });
                let data = scrub_chunk(&self.secrets, data);
                self.push(data);
            }
            Mode::PassThroughArray(decoder) => {
                decoder.push(&data);
                // A malformed array is the client's to see; only usage is read here.
                while let Some(element) = decoder.next_element() {
                    if let Ok(element) = element {
                        self.usage.observe_gemini_json(&element);
                    }
                }
                let data = scrub_chunk(&self.secrets, data);
                self.push(data);
            }
            Mode::PassThroughStripUsage(framer) => {
                framer.push(&data);
                let mut failed = None;
                let mut out = Vec::new();
                while let Some(frame) = framer.next_frame() {
                    match frame {
                        Ok(frame) => {
                            if let Some(event) = &frame.event {
                                self.usage.observe_json(event.data.as_bytes());
                                if is_usage_only_chunk(&event.data) {
                                    continue;
                                }
                            }
                            out.push(Bytes::from(frame.bytes));
                        }
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                }
                for piece in out {
                    let piece = scrub_chunk(&self.secrets, piece);
                    self.push(piece);
                }
                if let Some(message) = failed {
                    self.fail(&format!("the upstream stream is malformed: {message}"));
                }
            }
            Mode::Ended => {}
            Mode::Convert(parser, converter) => {
                parser.push(&data);
                let mut failed = None;
                while let Some(event) = parser.next_event() {
                    match event {
                        Ok(event) => {
                            self.usage
                                .observe(self.upstream_protocol, event.data.as_bytes());
                            for out in converter.event(event.event.as_deref(), &event.data) {
                                let out = scrub_chunk(&self.secrets, out);
                                self.pending_bytes += out.len();
                                self.pending.push_back(out);
                            }
                        }
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                }
                if let Some(message) = failed {
                    self.fail(&format!("the upstream stream is malformed: {message}"));
                }
            }
        }
    }

    pub(super) fn on_end(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.settle(&AttemptOutcome::HttpStatus(200), None);
        }
        if let Some(charge) = self.charge.take() {
            charge.finish(StatusCode::OK, self.usage, None);
        }
        if matches!(self.mode, Mode::PassThroughStripUsage(_)) {
            if let Mode::PassThroughStripUsage(framer) =
                std::mem::replace(&mut self.mode, Mode::Ended)
            {
                // Bytes after the last complete event go out as they are.
                if let Ok(end) = framer.finish() {
                    if !end.leftover.is_empty() {
                        let leftover = scrub_chunk(&self.secrets, Bytes::from(end.leftover));
                        self.push(leftover);
                    }
                }
            }
        }
        if let Mode::Convert(_, converter) = &mut self.mode {
            for out in converter.finish(true) {
                self.push(out);
            }
        }
        self.finish_metrics();
        self.done = true;
    }

    /// Polls the idle timer; true when the upstream has been silent for `idle`.
    pub(super) fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return false;
                }
                // The timer ran from `armed_at`; data since then moves the deadline.
                if self.last_data <= self.armed_at {
                    return true;
                }
            }
            // Not armed yet, or data came since it was: the deadline is `idle` after the
            // last data (or after the pipe started, before any).
            let deadline = self.last_data + self.idle;
            let now = Instant::now();
            if deadline <= now {
                return true;
            }
            self.armed_at = now;
            self.sleep = Some(Box::pin(self.rt.sleep(deadline - now)));
        }
    }
}

impl<R: Runtime> StreamPipe<R> {
    /// Gathers the first batch before the response's head is handed to the connection, so
    /// that the head and the first events leave in one write (and reach the client as one
    /// segment) when they arrived together. Waits for nothing but the scheduler: when no
    /// upstream data has come after [`BATCH_YIELDS`] turns, the head goes out alone, as it
    /// would without this. What was gathered is the body's first frame.
    pub(super) async fn prime(&mut self) {
        let mut turns = 0;
        std::future::poll_fn(|cx| match self.poll_batch(cx, false) {
            Poll::Ready(batch) => {
                self.primed = batch;
                Poll::Ready(())
            }
            // Data came and the pipe is yielding to gather more: it woke itself.
            Poll::Pending if !self.pending.is_empty() => Poll::Pending,
            Poll::Pending if turns < BATCH_YIELDS => {
                turns += 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => Poll::Ready(()),
        })
        .await;
    }

    /// The next batch (`None` at the end). With `wait` false, a pipe that has nothing returns
    /// `Pending` without registering for the stop signal or arming its idle timer (the caller
    /// is [`StreamPipe::prime`], which then stops waiting).
    fn poll_batch(&mut self, cx: &mut Context<'_>, wait: bool) -> Poll<Option<Bytes>> {
        loop {
            if self.done {
                return Poll::Ready(self.take_batch());
            }
            if self.stop.fired() {
                self.end_for_stop();
                continue;
            }
            if self.pending_bytes >= BATCH_MAX_BYTES {
                if let Some(bytes) = self.take_batch() {
                    return Poll::Ready(Some(bytes));
                }
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            self.fresh = true;
                            self.last_data = Instant::now();
                            self.on_data(data);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let message = format!("the upstream connection failed mid-stream: {e}");
                    self.fail(&message);
                }
                Poll::Ready(None) => self.on_end(),
                Poll::Pending => {
                    if !self.pending.is_empty() {
                        if self.fresh {
                            self.empty_yields = 0;
                        }
                        self.fresh = false;
                        if self.empty_yields < BATCH_YIELDS {
                            // A scheduler turn for the upstream connection to hand over what
                            // it already read (see the type's docs).
                            self.empty_yields += 1;
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        if let Some(bytes) = self.take_batch() {
                            return Poll::Ready(Some(bytes));
                        }
                    }
                    self.fresh = false;
                    if !wait {
                        return Poll::Pending;
                    }
                    if self.stop_fired(cx) {
                        // Ended at the top of the loop.
                        continue;
                    }
                    if self.idle_expired(cx) {
                        let message = format!("the upstream sent nothing for {:?}", self.idle);
                        self.fail(&message);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<R: Runtime> HttpBody for StreamPipe<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(bytes) = this.primed.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        this.poll_batch(cx, true)
            .map(|batch| batch.map(|bytes| Ok(Frame::data(bytes))))
    }
}

// No field is structurally pinned: the upstream body is Unpin and the timer is boxed.
impl<R: Runtime> Unpin for StreamPipe<R> {}

impl<R: Runtime> std::fmt::Debug for StreamPipe<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPipe")
            .field("upstream", &self.upstream_name)
            .field("upstream_protocol", &self.upstream_protocol)
            .finish_non_exhaustive()
    }
}
