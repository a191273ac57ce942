//! Serving a listener's connections with hyper, under the limits a login server needs: caps on
//! HTTP/2 streams, flow-control windows and header lists (so what a connection can make the
//! server buffer is bounded), a deadline on each request body, an idle rule that counts
//! requests rather than bytes, and a hard close once a graceful one has had its grace.
//!
//! poem's `Server` is not used: it exposes none of the windows or deadlines, its idle timeout
//! is reset by every byte (so a client trickling one byte a minute is never idle), and its
//! graceful close waits for ever on a request whose client stopped sending. The endpoint is
//! still poem's; only the connection handling is here.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use poem::endpoint::BoxEndpoint;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, EndpointExt, IntoEndpoint, Response};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::tls::Listener;

/// Concurrent HTTP/2 streams per connection (RFC 9113 §5.1.2, SETTINGS_MAX_CONCURRENT_STREAMS).
/// A page here needs at most three requests at once (the page, its stylesheet and icon). RFC
/// 9113 §6.5.2 suggests at least 100 for general use; here each stream whose body stalls
/// holds about 50 KiB until `body_read_timeout` (measured: 64 streams cost 3.1 MiB per
/// connection), so the cap is what bounds a connection's memory.
pub const MAX_STREAMS: u32 = 8;

/// HTTP/2 flow-control windows (RFC 9113 §6.9): how much request body a client may send
/// before the server has read it. One stream may send a whole form (16 KiB) at once; the
/// connection as a whole at most four. (hyper's defaults are 1 MiB each.) In bytes.
pub const STREAM_WINDOW: u32 = 16 * 1024;
/// The connection-level window (RFC 9113 §6.9.1), in bytes: see [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 64 * 1024;

/// Largest request head: HTTP/2's header list (RFC 9113 §6.5.2, SETTINGS_MAX_HEADER_LIST_SIZE)
/// and HTTP/1's read buffer. Past it, 431 (HTTP/1) or a stream error (HTTP/2).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Response bytes hyper buffers per HTTP/2 stream before waiting for the client to read.
pub const MAX_SEND_BUFFER: usize = 64 * 1024;

/// How long a connection may take to close after it was asked to (idle, or shutting down)
/// before it is dropped: what a request in flight may still need, never "for ever".
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How one listener's connections are served.
#[derive(Clone)]
pub struct Options {
    /// Logged with each close.
    pub name: &'static str,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A request's whole body must arrive within this of its head; past it the body read
    /// fails with `TimedOut` (and the form reader answers 408).
    pub body_read_timeout: Duration,
    /// HTTP/1.1 keep-alive; off for the redirector, whose every answer is final.
    pub keep_alive: bool,
    /// Offer HTTP/2 (HTTPS only).
    pub http2: bool,
}

/// Serves `listener` with `endpoint` until `shutdown` completes; then stops accepting, asks
/// every connection to close, and gives them [`CLOSE_GRACE`] before dropping the rest.
/// Never fails: accept errors are retried (see [`Backoff`]) and a connection's errors end
/// only that connection.
pub async fn serve<E>(mut listener: Listener, endpoint: E, options: Options, shutdown: impl Future<Output = ()>)
where
    E: IntoEndpoint,
    E::Endpoint: 'static,
{
    let endpoint: Arc<BoxEndpoint<'static, Response>> = Arc::new(endpoint.into_endpoint().map_to_response().boxed());
    let local = LocalAddr(listener.local_addr().into());
    let scheme = if options.http2 { Scheme::HTTPS } else { Scheme::HTTP };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tracing::info!(name = options.name, addr = %listener.local_addr(), "listening");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            (io, peer) = listener.accept() => {
                let conn = ConnectionTask {
                    endpoint: Arc::clone(&endpoint),
                    local: local.clone(),
                    remote: RemoteAddr(peer.into()),
                    scheme: scheme.clone(),
                    options: options.clone(),
                    stop: stop_rx.clone(),
                };
                connections.spawn(conn.run(io));
            }
            // Reap finished connections so the set stays as small as the open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(CLOSE_GRACE + Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
    tracing::info!(name = options.name, "server stopped");
}

struct ConnectionTask {
    endpoint: Arc<BoxEndpoint<'static, Response>>,
    local: LocalAddr,
    remote: RemoteAddr,
    scheme: Scheme,
    options: Options,
    stop: watch::Receiver<bool>,
}

impl ConnectionTask {
    async fn run(mut self, mut io: crate::tls::Connection) {
        // The handshake's own deadline bounds this wait; a failed one ends the connection as
        // hyper's first read of it would have.
        let h2 = tokio::select! {
            negotiated = io.negotiate() => match negotiated {
                Ok(h2) => h2,
                Err(_) => return,
            },
            _ = self.stop.wait_for(|stop| *stop) => return,
        };
        let activity = Arc::new(Activity::default());
        let service = {
            let activity = Arc::clone(&activity);
            let (endpoint, local, remote, scheme) = (self.endpoint, self.local, self.remote.clone(), self.scheme);
            let body_timeout = self.options.body_read_timeout;
            hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let in_flight = activity.begin();
                let endpoint = Arc::clone(&endpoint);
                // A request without a body (most GETs) owes nothing more.
                let has_body = !hyper::body::Body::is_end_stream(req.body());
                let mut req = poem::Request::from((req, local.clone(), remote.clone(), scheme.clone()));
                if has_body {
                    let body = req.take_body();
                    req.set_body(poem::Body::from_bytes_stream(BodyDeadline::new(body, body_timeout)));
                }
                async move {
                    let resp: hyper::Response<BoxBody<Bytes, io::Error>> = endpoint.get_response(req).await.into();
                    drop(in_flight);
                    Ok::<_, Infallible>(resp)
                }
            })
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(self.options.keep_alive)
            // Ours (`stall::Owed`) covers heads without timing idle keep-alive connections.
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD_BYTES.max(8192));
        builder
            .http2()
            .max_concurrent_streams(MAX_STREAMS)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .adaptive_window(false)
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            .max_send_buf_size(MAX_SEND_BUFFER)
            .max_pending_accept_reset_streams(20);
        // Without this, hyper serves a connection whose first bytes are HTTP/2's preface as
        // HTTP/2 whatever ALPN chose, and HTTP/1.1 on a connection that chose "h2".
        let builder = if self.options.http2 && h2 { builder.http2_only() } else { builder.http1_only() };
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let why = tokio::select! {
            _ = conn.as_mut() => return,
            () = activity.idle_for(self.options.idle_timeout) => "idle",
            _ = self.stop.wait_for(|stop| *stop) => "shutting down",
        };
        conn.as_mut().graceful_shutdown();
        if tokio::time::timeout(CLOSE_GRACE, conn).await.is_err() {
            tracing::debug!(name = self.options.name, peer = %self.remote, why, "connection dropped: it did not close in time");
        }
    }
}

/// Requests in flight on one connection, and when that last changed.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    since: Mutex<Option<Instant>>,
    changed: Notify,
}

/// One request in flight; counted until dropped (its response is ready, or it was cancelled).
struct InFlight(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight(Arc::clone(self))
    }

    fn touch(&self) {
        // A poisoned lock holds a plain instant that is never half-written; keep using it.
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.changed.notify_waiters();
    }

    /// Completes once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            // Registered before the state is read, so a change in between still wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                let since = *self.since.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(Instant::now);
                tokio::select! {
                    () = tokio::time::sleep_until(since + timeout) => return,
                    () = changed => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// A request body that fails with `TimedOut` once its deadline has passed, however it
/// trickles in (a deadline per chunk would let one byte a minute through).
struct BodyDeadline {
    inner: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
}

impl BodyDeadline {
    fn new(body: poem::Body, timeout: Duration) -> Self {
        BodyDeadline {
            inner: Box::pin(body.into_bytes_stream()),
            deadline: Box::pin(tokio::time::sleep(timeout)),
            expired: false,
        }
    }
}

impl Stream for BodyDeadline {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            // Read off the clock too: a timer polled once the task's cooperative budget is
            // spent says `Pending` however late it is, and a client whose bytes never stop
            // (review 175: a chunk-size line of endless zeros) spends it on every turn.
            Poll::Pending
                if self.deadline.as_mut().poll(cx).is_ready()
                    || tokio::time::Instant::now() >= self.deadline.deadline() =>
            {
                self.expired = true;
                Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::TimedOut, "request body not received in time"))))
            }
            other => other,
        }
    }
}

/// Pauses between failed `accept` calls: the connection stays queued, so retrying at once
/// would fail again and spin a core. Starts at [`Backoff::FIRST`], doubles up to
/// [`Backoff::MOST`], and starts again after a success. Used by every accept loop.
pub struct Backoff {
    what: &'static str,
    pause: Duration,
}

impl Backoff {
    /// The pause after a first failure.
    pub const FIRST: Duration = Duration::from_millis(10);
    /// The longest pause: at most one failed accept (and one log line) a second.
    pub const MOST: Duration = Duration::from_secs(1);

    /// `what` names the listener in the log.
    pub fn new(what: &'static str) -> Self {
        Backoff { what, pause: Self::FIRST }
    }

    /// Calls `accept` until it succeeds, pausing after each failure (out of file descriptors,
    /// most likely, which clears once connections close).
    pub async fn accept<T, F, Fut>(&mut self, mut accept: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<T>>,
    {
        loop {
            match accept().await {
                Ok(accepted) => {
                    self.pause = Self::FIRST;
                    return accepted;
                }
                Err(e) => {
                    tracing::warn!(listener = self.what, error = %e, retry_in_ms = self.pause.as_millis() as u64, "cannot accept a connection");
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(Self::MOST);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_are_retried_after_growing_pauses_and_a_success_resets_them() {
        let mut backoff = Backoff::new("test");
        let started = Instant::now();
        let mut calls = Vec::new();
        let mut left = 8;
        let got = backoff
            .accept(|| {
                calls.push(started.elapsed());
                left -= 1;
                let result = if left > 0 { Err(io::Error::from_raw_os_error(libc::EMFILE)) } else { Ok(7) };
                async move { result }
            })
            .await;
        assert_eq!(got, 7);
        let gaps: Vec<u128> = calls.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
        assert_eq!(gaps, [10, 20, 40, 80, 160, 320, 640]);
        assert_eq!(backoff.pause, Backoff::FIRST);
        // Past the cap the pause stays at a second: at most one failed accept (and one log
        // line) a second, however long descriptors stay short.
        let mut left = 12;
        let before = Instant::now();
        backoff
            .accept(|| {
                left -= 1;
                let result = if left > 0 { Err(io::Error::from_raw_os_error(libc::EMFILE)) } else { Ok(()) };
                async move { result }
            })
            .await;
        assert_eq!(before.elapsed().as_millis(), 10 + 20 + 40 + 80 + 160 + 320 + 640 + 4 * 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_no_request_in_flight() {
        let activity = Arc::new(Activity::default());
        let timeout = Duration::from_secs(60);
        let started = Instant::now();
        activity.idle_for(timeout).await;
        assert_eq!(started.elapsed(), timeout, "idle from the start");

        let request = activity.begin();
        let idle = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.idle_for(timeout).await }
        });
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(!idle.is_finished(), "a request in flight for five minutes is not idleness");
        let ended = Instant::now();
        drop(request);
        idle.await.unwrap();
        assert_eq!(ended.elapsed(), timeout, "idle from the end of the last request");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_trickles_fails_at_its_deadline() {
        use futures_util::StreamExt;
        let trickle = futures_util::stream::unfold(0, |n| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok::<_, io::Error>(Bytes::from_static(b"x")), n + 1))
        });
        let mut body = BodyDeadline::new(poem::Body::from_bytes_stream(trickle), Duration::from_secs(20));
        let started = Instant::now();
        let mut got = 0;
        let err = loop {
            match body.next().await {
                Some(Ok(b)) => got += b.len(),
                Some(Err(e)) => break e,
                None => panic!("the body ended instead of failing"),
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        assert!(got <= 20);
        assert!(body.next().await.is_none());
    }
}
