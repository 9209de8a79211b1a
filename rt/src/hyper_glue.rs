//! hyper glue over any [`Runtime`]: an executor, a timer and the HTTP/1 + HTTP/2 server
//! connection driver. Written once for both runtimes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;

use crate::{ByteStream, Runtime};

/// Runs hyper's background futures (HTTP/2 connection tasks, pool upkeep) on a [`Runtime`].
#[derive(Clone, Debug)]
pub struct HyperExecutor<R>(pub R);

impl<R: Runtime, F> hyper::rt::Executor<F> for HyperExecutor<R>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(async move {
            let _ = fut.await;
        });
    }
}

/// hyper's timer over a [`Runtime`]'s sleep.
#[derive(Clone, Debug)]
pub struct HyperTimer<R>(pub R);

struct HyperSleep<S>(Pin<Box<S>>);

impl<S: Future<Output = ()>> Future for HyperSleep<S> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl<S: Future<Output = ()> + Send + Sync + 'static> hyper::rt::Sleep for HyperSleep<S> {}

impl<R: Runtime> hyper::rt::Timer for HyperTimer<R> {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep(Box::pin(self.0.sleep(duration))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

/// Server-side HTTP settings shared by the daemon's listeners: how long a connection may
/// stay silent, in each of its states.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// From the start of the connection (after a TLS handshake, if any) to the first full
    /// request: a client that sends nothing, half an HTTP/1 head or half the HTTP/2 preface is
    /// closed after this. For HTTP/1 it also bounds every later request head, counted from
    /// the end of the answer before it (an HTTP/1 connection is idle until a full head came).
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight (HTTP/1 between requests, HTTP/2 with
    /// no open stream) may stay open before it is closed gracefully; for HTTP/1, at most
    /// `header_read_timeout`.
    pub keep_alive_timeout: Duration,
    /// HTTP/2: how often a PING goes out to check that the peer is still there.
    pub http2_keepalive_interval: Duration,
    /// HTTP/2: how long a PING may go unanswered before the connection is closed.
    pub http2_keepalive_timeout: Duration,
    /// HTTP/1: whether the end of the client's input while its request is in flight is only
    /// the end of what it sends (`true`: the answer is still written), or the client going
    /// away (`false`: the request is dropped, and with it its upstream call). TCP cannot tell
    /// the two apart until something is written.
    pub half_close: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(10),
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(10),
            half_close: false,
        }
    }
}

/// Once a connection was told to close (idle, or never a first request), how long it has to
/// go before it is dropped outright.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves one accepted connection (HTTP/1.1 or HTTP/2, detected from the preface) with
/// `service` until the client closes it or one of the [`ServerSettings`] limits closes it.
pub async fn serve_connection<R, IO, S, B>(
    rt: R,
    io: IO,
    settings: &ServerSettings,
    service: S,
) -> Result<(), BoxError>
where
    R: Runtime,
    IO: ByteStream,
    S: Service<hyper::Request<Incoming>, Response = hyper::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_connection_until(rt, io, settings.clone(), service, std::future::pending()).await
}

/// [`serve_connection`], and when `shutdown` completes the connection is closed gracefully:
/// requests in flight finish (HTTP/2 gets a GOAWAY), no new one is read, idle connections
/// close at once.
pub fn serve_connection_until<R, IO, S, B, D>(
    rt: R,
    io: IO,
    settings: ServerSettings,
    service: S,
    shutdown: D,
) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>
where
    R: Runtime,
    IO: ByteStream,
    S: Service<hyper::Request<Incoming>, Response = hyper::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    D: Future<Output = ()> + Send + 'static,
{
    Box::pin(async move {
        let mut builder = auto::Builder::new(HyperExecutor(rt.clone()));
        // hyper's own HTTP/1 head timer is off, and HTTP/1 gets no timer at all (that timer
        // was its only use): it made, registered and dropped a timer for every request (~950
        // instructions and an allocation, issue 16), for what the watchdog below enforces
        // anyway (an HTTP/1 connection between requests is silent for it, a half-sent head
        // included; see `Activity::silent_until`).
        builder
            .http1()
            .header_read_timeout(None)
            .half_close(settings.half_close)
            .keep_alive(true);
        builder
            .http2()
            .timer(HyperTimer(rt.clone()))
            .keep_alive_interval(settings.http2_keepalive_interval)
            .keep_alive_timeout(settings.http2_keepalive_timeout);
        let activity = Arc::new(Activity::new());
        let service = Tracked {
            inner: service,
            activity: activity.clone(),
        };
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let timer = Box::pin(rt.sleep(settings.header_read_timeout));
        let side = Arc::new(SideWake::default());
        Watchdog {
            conn: std::pin::pin!(conn),
            shutdown: std::pin::pin!(shutdown),
            shutdown_seen: false,
            closing: false,
            timer,
            rt,
            activity,
            settings,
            side_waker: Waker::from(side.clone()),
            side,
        }
        .await
    })
}

/// A connection that can be told to close once its requests in flight are done.
trait GracefulConnection: Future<Output = Result<(), BoxError>> {
    fn close_gracefully(self: Pin<&mut Self>);
}

impl<I, S, E, B> GracefulConnection for auto::UpgradeableConnection<'_, I, S, E>
where
    S: Service<hyper::Request<Incoming>, Response = hyper::Response<B>>,
    S::Future: 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: auto::HttpServerConnExec<S::Future, B>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Drives a connection and closes it when `shutdown` completes or when it has been silent
/// longer than the settings allow (a named future rather than a closure: hyper's executors
/// need `Send` for every lifetime, which closures over borrowed state do not prove).
///
/// `shutdown` and `timer` are polled with a waker of their own ([`SideWake`]) and only after
/// one of them woke the task, not on each of the connection's wake-ups (4-6 a request: ~250
/// instructions each for a channel's listener and a timer that had not fired, issue 16).
struct Watchdog<'c, C, D, R: Runtime> {
    conn: Pin<&'c mut C>,
    shutdown: Pin<&'c mut D>,
    shutdown_seen: bool,
    closing: bool,
    timer: Pin<Box<R::Sleep>>,
    rt: R,
    activity: Arc<Activity>,
    settings: ServerSettings,
    side: Arc<SideWake>,
    /// A waker of `side`, made once.
    side_waker: Waker,
}

/// The waker `shutdown` and the silence timer of a [`Watchdog`] are polled with: it notes that
/// one of them fired and wakes the connection's task.
struct SideWake {
    /// One of them woke (or may have something new); starts set so both are polled (and
    /// register) on the first poll.
    fired: AtomicBool,
    /// The connection task's waker, as of its last poll.
    task: Mutex<Option<Waker>>,
}

impl Default for SideWake {
    fn default() -> Self {
        Self {
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        }
    }
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waker) = task.as_ref() {
            waker.wake_by_ref();
        }
    }
}

impl SideWake {
    /// Keeps `waker` (the task's, from this poll) for the side wake-ups.
    fn track(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if !task.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }
}

// No field is structurally pinned: the pinned futures sit behind `Pin<&mut>` and `Pin<Box>`.
impl<C, D, R: Runtime> Unpin for Watchdog<'_, C, D, R> {}

impl<C, D, R> Future for Watchdog<'_, C, D, R>
where
    C: GracefulConnection,
    D: Future<Output = ()>,
    R: Runtime,
{
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // Before anything is polled, so a side wake-up from now on reaches this task.
        this.side.track(cx.waker());
        if let Poll::Ready(result) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        if !this.side.fired.swap(false, Ordering::AcqRel) {
            // Neither the shutdown nor the timer woke since they were last polled.
            return Poll::Pending;
        }
        let mut side_cx = Context::from_waker(&this.side_waker);
        if !this.shutdown_seen && this.shutdown.as_mut().poll(&mut side_cx).is_ready() {
            this.shutdown_seen = true;
            this.conn.as_mut().close_gracefully();
            // The connection may be done right away (idle): poll it again, and the timer
            // with it.
            this.side.fired.store(true, Ordering::Release);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        while this.timer.as_mut().poll(&mut side_cx).is_ready() {
            if this.closing {
                if this.activity.in_flight.load(Ordering::Acquire) > 0 {
                    // A request came in just as it was told to close: hyper finishes that one
                    // and then closes the connection; look again later.
                    this.timer = Box::pin(this.rt.sleep(this.settings.keep_alive_timeout));
                    continue;
                }
                // Told to close and still not gone: drop it.
                return Poll::Ready(Ok(()));
            }
            match this.activity.silent_until(&this.settings) {
                Some(deadline) if deadline > Instant::now() => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    this.timer = Box::pin(this.rt.sleep(wait));
                }
                Some(_) => {
                    this.closing = true;
                    this.conn.as_mut().close_gracefully();
                    this.timer = Box::pin(this.rt.sleep(CLOSE_GRACE));
                    // The new timer is polled (and registers) on the next poll.
                    this.side.fired.store(true, Ordering::Release);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                // A request is in flight: look again later.
                None => this.timer = Box::pin(this.rt.sleep(this.settings.keep_alive_timeout)),
            }
        }
        Poll::Pending
    }
}

/// What the silence watchdog of a connection needs: requests in flight and since when none is.
struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `origin` when the last request in flight ended.
    idle_since_ms: AtomicU64,
    /// Whether a request came at all.
    served: AtomicBool,
    /// Whether the requests come over HTTP/2 (a client may then stay idle, no head pending,
    /// for the whole keep-alive timeout).
    http2: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            http2: AtomicBool::new(false),
        }
    }

    /// When the connection has been silent too long, if no request is in flight. Between two
    /// HTTP/1 requests the next head may already be coming (a slow client, or one holding the
    /// connection with a head it never finishes): the header-read limit applies then too.
    fn silent_until(&self, settings: &ServerSettings) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.served.load(Ordering::Acquire) {
            return Some(self.origin + settings.header_read_timeout);
        }
        let idle_since =
            self.origin + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        let limit = if self.http2.load(Ordering::Relaxed) {
            settings.keep_alive_timeout
        } else {
            settings
                .keep_alive_timeout
                .min(settings.header_read_timeout)
        };
        Some(idle_since + limit)
    }

    fn start(self: &Arc<Self>) -> FlightGuard {
        self.served.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        FlightGuard(self.clone())
    }
}

/// One request in flight, from the service call until its response body is dropped.
pub struct FlightGuard(Arc<Activity>);

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The service with each request counted in flight until its response body is done.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> Service<hyper::Request<Incoming>> for Tracked<S>
where
    S: Service<hyper::Request<Incoming>, Response = hyper::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
{
    type Response = hyper::Response<GuardedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        if req.version() == hyper::Version::HTTP_2 {
            self.activity.http2.store(true, Ordering::Relaxed);
        }
        let guard = self.activity.start();
        TrackedFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response being made; its body takes over the in-flight guard.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<FlightGuard>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<hyper::Response<B>, E>>,
{
    type Output = Result<hyper::Response<GuardedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(response)) => response,
        };
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| GuardedBody {
            inner,
            _guard: guard,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until it is dropped.
    pub struct GuardedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<FlightGuard>,
    }
}

impl<B: hyper::body::Body> hyper::body::Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_deadline_follows_the_connection_state() {
        let settings = ServerSettings {
            header_read_timeout: Duration::from_secs(3),
            keep_alive_timeout: Duration::from_secs(7),
            ..ServerSettings::default()
        };
        let activity = Arc::new(Activity::new());
        // No request yet: the header-read limit from the start.
        assert_eq!(
            activity.silent_until(&settings),
            Some(activity.origin + Duration::from_secs(3))
        );
        let first = activity.start();
        let second = activity.start();
        // Requests in flight: no deadline, however long they take.
        assert_eq!(activity.silent_until(&settings), None);
        drop(first);
        assert_eq!(activity.silent_until(&settings), None);
        drop(second);
        // Idle HTTP/1: the next head may be on its way, so the shorter of the keep-alive and
        // header-read limits, from the end of the last request.
        let deadline = activity.silent_until(&settings).expect("a deadline");
        let ended =
            activity.origin + Duration::from_millis(activity.idle_since_ms.load(Ordering::Acquire));
        assert_eq!(deadline, ended + Duration::from_secs(3));
        // Idle HTTP/2 (no stream open, nothing half-sent): the keep-alive limit.
        activity.http2.store(true, Ordering::Relaxed);
        let deadline = activity.silent_until(&settings).expect("a deadline");
        assert_eq!(deadline, ended + Duration::from_secs(7));
        // A longer header-read limit does not stretch the keep-alive one.
        let long_heads = ServerSettings {
            header_read_timeout: Duration::from_secs(30),
            ..settings
        };
        activity.http2.store(false, Ordering::Relaxed);
        assert_eq!(
            activity.silent_until(&long_heads),
            Some(ended + Duration::from_secs(7))
        );
    }
}
