//! The gateway's upstream connections: one [`CorePool`] per serving core (and one for every
//! other thread), on hyper's connection API.
//!
//! Why not hyper-util's pooled client (which the other outbound callers, ACME and discovery
//! of nothing else, still use): a request through it cost ~7,000 instructions of pool work on
//! top of hyper's own (issue 16, callgrind): its pool is shared between threads behind a
//! lock, keyed by `(Scheme, Authority)` in a SipHash map whose key is hashed a byte at a
//! time (four lookups per request), each request races its checkout against a lazily built
//! connect future, and a returned connection goes through a readiness future of its own.
//! Here a pool belongs to one thread (its mutex is never contended), hosts are found by a
//! byte comparison among the few an operator configures, and an HTTP/1.1 connection goes
//! back to the pool when its response body has been read to the end.
//!
//! Behaviour kept from hyper-util: HTTP/1.1 requests are sent in origin form with a `Host`
//! header (the port only when it is not the scheme's default); HTTP/2 (negotiated by ALPN
//! over TLS) shares one connection per host; a request that a pooled connection refused
//! before sending anything (the upstream closed it while it was idle) is sent again once on
//! a new connection; idle connections are dropped after the idle timeout (checked when the
//! host is next used) and beyond `max_idle_per_host`.
//!
//! Must not: hold the pool's lock across an await, reuse an HTTP/1.1 connection whose
//! response was not read to the end, or retry a request that may have reached the upstream.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};

use crate::client::{ClientSettings, ConnectError, Connector};
use crate::hyper_glue::{HyperExecutor, HyperTimer};
use crate::Runtime;

/// Why a request through the pool failed.
#[derive(Debug)]
pub enum PoolError {
    /// The URL cannot be sent to (no scheme or host).
    Uri(String),
    /// No connection could be made.
    Connect(ConnectError),
    /// The HTTP handshake on a new connection failed.
    Handshake(hyper::Error),
    /// The request failed on its connection.
    Send(hyper::Error),
    /// A new connection closed before the request could be sent.
    Closed,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Uri(uri) => write!(f, "cannot send a request to {uri} (no scheme or host)"),
            PoolError::Connect(_) => f.write_str("client error (Connect)"),
            PoolError::Handshake(_) => f.write_str("client error (HTTP handshake)"),
            PoolError::Send(_) => f.write_str("client error (SendRequest)"),
            PoolError::Closed => {
                f.write_str("client error (the connection closed before the request was sent)")
            }
        }
    }
}

impl StdError for PoolError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            PoolError::Uri(_) | PoolError::Closed => None,
            PoolError::Connect(e) => Some(e),
            PoolError::Handshake(e) | PoolError::Send(e) => Some(e),
        }
    }
}

/// A connection's request handle.
enum Sender<B> {
    H1(http1::SendRequest<B>),
    H2(http2::SendRequest<B>),
}

/// An idle HTTP/1.1 connection.
struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

/// The connections to one `scheme://authority`.
struct Host<B> {
    https: bool,
    authority: Box<str>,
    /// Most recently returned last.
    idle: Vec<Idle<B>>,
    /// The host's HTTP/2 connection, shared by every request.
    h2: Option<http2::SendRequest<B>>,
}

struct Inner<R, B> {
    rt: R,
    connector: Connector<R>,
    idle_timeout: Duration,
    max_idle_per_host: usize,
    hosts: Mutex<Vec<Host<B>>>,
}

/// A connection pool for one thread (see the module docs). Cheap to clone.
pub struct CorePool<R, B> {
    inner: Arc<Inner<R, B>>,
}

impl<R, B> Clone for CorePool<R, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// Which host a request goes to.
#[derive(Clone)]
struct Key {
    https: bool,
    authority: http::uri::Authority,
}

impl<R, B> CorePool<R, B>
where
    R: Runtime,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// A pool whose connections are made by a [`Connector`] with `settings` and driven on
    /// `rt` (a serving core's runtime keeps them on its thread).
    pub fn new(rt: R, settings: &ClientSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector: Connector::new(rt.clone(), settings),
                rt,
                idle_timeout: settings.pool_idle_timeout,
                max_idle_per_host: settings.pool_max_idle_per_host,
                hosts: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Sends `req` (an absolute `http` or `https` URL) on a pooled or new connection.
    pub async fn request(&self, req: Request<B>) -> Result<Response<PooledBody<R, B>>, PoolError> {
        let key = match (req.uri().scheme(), req.uri().authority()) {
            (Some(scheme), Some(authority))
                if *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS =>
            {
                Key {
                    https: *scheme == Scheme::HTTPS,
                    authority: authority.clone(),
                }
            }
            _ => return Err(PoolError::Uri(req.uri().to_string())),
        };
        let mut req = req;
        // A pooled connection first; on one the upstream had closed meanwhile, the request
        // comes back unsent and goes out once more on a new connection.
        if let Some(sender) = self.reusable(&key).await {
            match self.send(&key, sender, req).await {
                Ok(response) => return Ok(response),
                Err(Retry::No(e)) => return Err(PoolError::Send(e)),
                Err(Retry::Unsent(unsent)) => req = *unsent,
            }
        }
        // Boxed: connecting (resolving, TLS) is a large future, and inline it would make every
        // request's future as large, moved and copied on each await (issue 16: +11,000
        // instructions of `memcpy` per request).
        let sender = Box::pin(self.connect(&key, req.uri())).await?;
        match self.send(&key, sender, req).await {
            Ok(response) => Ok(response),
            Err(Retry::No(e)) => Err(PoolError::Send(e)),
            Err(Retry::Unsent(_)) => Err(PoolError::Closed),
        }
    }

    /// The host's shared HTTP/2 connection, or its most recently used idle HTTP/1.1 one that
    /// is still open and ready; drops expired and closed ones on the way.
    async fn reusable(&self, key: &Key) -> Option<Sender<B>> {
        loop {
            let candidate = {
                let mut hosts = self.inner.lock();
                let host = hosts.iter_mut().find(|h| key.is(h))?;
                if let Some(h2) = &host.h2 {
                    if h2.is_closed() {
                        host.h2 = None;
                    } else {
                        return Some(Sender::H2(h2.clone()));
                    }
                }
                let now = Instant::now();
                let timeout = self.inner.idle_timeout;
                host.idle
                    .retain(|i| now.duration_since(i.since) < timeout && !i.sender.is_closed());
                host.idle.pop()?.sender
            };
            let mut sender = candidate;
            // Ready at once unless it is still finishing the response it was returned after.
            if sender.ready().await.is_ok() {
                return Some(Sender::H1(sender));
            }
        }
    }

    /// A new connection to `key` (HTTP/2 when TLS negotiated it), its driver spawned on the
    /// pool's runtime.
    async fn connect(&self, key: &Key, uri: &Uri) -> Result<Sender<B>, PoolError> {
        let io = self
            .inner
            .connector
            .clone()
            .connect(uri.clone())
            .await
            .map_err(PoolError::Connect)?;
        let rt = &self.inner.rt;
        if io.is_h2() {
            let (sender, conn) = http2::Builder::new(HyperExecutor(rt.clone()))
                .timer(HyperTimer(rt.clone()))
                .handshake(io)
                .await
                .map_err(PoolError::Handshake)?;
            rt.spawn(async move {
                let _ = conn.await;
            });
            let mut hosts = self.inner.lock();
            let host = self.inner.host(&mut hosts, key);
            if host.h2.as_ref().is_none_or(|h| h.is_closed()) {
                host.h2 = Some(sender.clone());
            }
            return Ok(Sender::H2(sender));
        }
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(PoolError::Handshake)?;
        rt.spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H1(sender))
    }

    async fn send(
        &self,
        key: &Key,
        sender: Sender<B>,
        mut req: Request<B>,
    ) -> Result<Response<PooledBody<R, B>>, Retry<B>> {
        match sender {
            Sender::H2(mut sender) => {
                let response = sender.try_send_request(req).await.map_err(Retry::from)?;
                Ok(response.map(|inner| PooledBody { inner, back: None }))
            }
            Sender::H1(mut sender) => {
                to_origin_form(&mut req, &key.authority);
                let response = sender.try_send_request(req).await.map_err(Retry::from)?;
                let back = GiveBack {
                    pool: self.clone(),
                    key: key.clone(),
                    sender: Some(sender),
                };
                let mut response = response.map(|inner| PooledBody {
                    inner,
                    back: Some(back),
                });
                // A body already at its end (none, or `content-length: 0`) frees the
                // connection now.
                response.body_mut().give_back_if_done();
                Ok(response)
            }
        }
    }
}

impl<R, B> CorePool<R, B> {
    /// Takes an HTTP/1.1 connection back after its response was read to the end.
    fn put(&self, key: &Key, sender: http1::SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut hosts = self.inner.lock();
        let max = self.inner.max_idle_per_host;
        let host = self.inner.host(&mut hosts, key);
        if host.idle.len() < max {
            host.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Idle HTTP/1.1 connections held for `scheme://authority` (tests).
    pub fn idle_connections(&self, https: bool, authority: &str) -> usize {
        let hosts = self.inner.lock();
        hosts
            .iter()
            .find(|h| h.https == https && h.authority.eq_ignore_ascii_case(authority))
            .map_or(0, |h| h.idle.len())
    }
}

impl<R, B> Inner<R, B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Host<B>>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `key`'s entry, made if it is new.
    fn host<'h>(&self, hosts: &'h mut Vec<Host<B>>, key: &Key) -> &'h mut Host<B> {
        let index = match hosts.iter().position(|h| key.is(h)) {
            Some(i) => i,
            None => {
                hosts.push(Host {
                    https: key.https,
                    authority: key.authority.as_str().into(),
                    idle: Vec::new(),
                    h2: None,
                });
                hosts.len() - 1
            }
        };
        &mut hosts[index]
    }
}

impl Key {
    fn is<B>(&self, host: &Host<B>) -> bool {
        let authority = self.authority.as_str();
        host.https == self.https
            && (*host.authority == *authority || host.authority.eq_ignore_ascii_case(authority))
    }
}

/// What a failed send leaves: the request itself when it never left (a retry may send it).
enum Retry<B> {
    Unsent(Box<Request<B>>),
    No(hyper::Error),
}

impl<B> From<hyper::client::conn::TrySendError<Request<B>>> for Retry<B> {
    fn from(mut e: hyper::client::conn::TrySendError<Request<B>>) -> Self {
        match e.take_message() {
            Some(req) => Retry::Unsent(Box::new(req)),
            None => Retry::No(e.into_error()),
        }
    }
}

/// HTTP/1.1's request target: the path and query, with the authority in `Host` unless the
/// caller set one (see [`host_header`]). A caller that sends many requests to one URL
/// builds that header once and sets it itself (the gateway does, with its configuration
/// snapshot): parsing the port and copying the host into a new header value per request
/// cost ~500 instructions of a ~64,000-instruction request (issue 16).
fn to_origin_form<B>(req: &mut Request<B>, authority: &http::uri::Authority) {
    if !req.headers().contains_key(HOST) {
        if let Some(value) = host_for(req.uri().scheme_str(), authority) {
            req.headers_mut().insert(HOST, value);
        }
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
}

/// The `Host` header the pool sends with a request to `uri` (an absolute URL) when the
/// request has none: the authority's host, with its port only when it is not the scheme's
/// default, never user info. `None` for a URL without an authority.
pub fn host_header(uri: &Uri) -> Option<HeaderValue> {
    host_for(uri.scheme_str(), uri.authority()?)
}

fn host_for(scheme: Option<&str>, authority: &http::uri::Authority) -> Option<HeaderValue> {
    let default_port = match scheme {
        Some("https") => 443,
        _ => 80,
    };
    let with_port = authority
        .port_u16()
        .is_some_and(|port| port != default_port);
    let host = match with_port {
        // `host:port` as written (no user info: the authority is the header's value).
        true if !authority.as_str().contains('@') => authority.as_str(),
        true => authority.as_str().rsplit('@').next().unwrap_or_default(),
        false => authority.host(),
    };
    HeaderValue::from_str(host).ok()
}

/// Returns an HTTP/1.1 connection to its pool.
struct GiveBack<R, B> {
    pool: CorePool<R, B>,
    key: Key,
    sender: Option<http1::SendRequest<B>>,
}

/// A response body from the pool: hyper's, and for HTTP/1.1 the connection it came on,
/// which goes back to the pool once the body has been read to its end (dropped earlier, the
/// connection is closed with it).
pub struct PooledBody<R, B> {
    inner: Incoming,
    back: Option<GiveBack<R, B>>,
}

impl<R, B> PooledBody<R, B> {
    fn give_back_if_done(&mut self) {
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }

    fn give_back(&mut self) {
        if let Some(mut back) = self.back.take() {
            if let Some(sender) = back.sender.take() {
                back.pool.put(&back.key, sender);
            }
        }
    }
}

impl<R, B> Drop for PooledBody<R, B> {
    fn drop(&mut self) {
        // Read to its end without the last poll (a reader that stopped at `is_end_stream`).
        self.give_back_if_done();
    }
}

impl<R, B> Body for PooledBody<R, B>
where
    R: Runtime,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) => this.give_back_if_done(),
            // The connection is not reusable: dropped with `back`.
            Poll::Ready(Some(Err(_))) => this.back = None,
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<R, B> fmt::Debug for PooledBody<R, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn host(url: &str) -> Option<String> {
        host_header(&url.parse::<Uri>().unwrap()).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn host_header_names_the_port_only_when_it_is_not_the_schemes() {
        for (url, want) in [
            ("http://127.0.0.1:8080/v1", Some("127.0.0.1:8080")),
            ("http://example.com:80/v1", Some("example.com")),
            ("http://example.com/v1", Some("example.com")),
            ("https://example.com:443/", Some("example.com")),
            ("https://example.com:80/", Some("example.com:80")),
            ("http://user:pw@example.com:81/", Some("example.com:81")),
            ("http://user@example.com/", Some("example.com")),
            ("/only/a/path", None),
        ] {
            assert_eq!(host(url).as_deref(), want, "{url}");
        }
    }

    /// What `to_origin_form` leaves: the path as the target, and `Host` from the authority
    /// unless the caller set one.
    #[test]
    fn origin_form_keeps_a_host_the_caller_set() {
        let mut req = Request::post("http://127.0.0.1:9000/v1/chat?x=1")
            .body(())
            .unwrap();
        let authority = req.uri().authority().cloned().unwrap();
        to_origin_form(&mut req, &authority);
        assert_eq!(req.uri(), "/v1/chat?x=1");
        assert_eq!(req.headers()[HOST], "127.0.0.1:9000");

        let mut req = Request::post("http://127.0.0.1:9000/v1").body(()).unwrap();
        req.headers_mut()
            .insert(HOST, HeaderValue::from_static("set.by.caller"));
        to_origin_form(&mut req, &authority);
        assert_eq!(req.headers()[HOST], "set.by.caller");
        assert_eq!(req.headers().get_all(HOST).iter().count(), 1);
    }
}
