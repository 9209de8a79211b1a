//! hyper glue over any [`Runtime`]: an executor, a timer and the HTTP/1 + HTTP/2 server
//! connection driver. Written once for both runtimes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
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

/// Server-side HTTP settings shared by the daemon's listeners.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// How long a client may take to send request headers (slowloris protection).
    pub header_read_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves one accepted connection (HTTP/1.1 or HTTP/2, detected from the preface) with
/// `service` until the client closes it.
pub async fn serve_connection<R, IO, S, B>(
    rt: R,
    io: IO,
    settings: &ServerSettings,
    service: S,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    R: Runtime,
    IO: ByteStream,
    S: Service<hyper::Request<Incoming>, Response = hyper::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(HyperExecutor(rt.clone()));
    builder
        .http1()
        .timer(HyperTimer(rt.clone()))
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(HyperTimer(rt));
    builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
}
