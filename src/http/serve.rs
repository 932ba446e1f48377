//! The public listener's connections: HTTP/1.1 with limits a hostile client cannot get around.
//!
//! - At most `[server] max_connections` at once; past that, new ones wait in the kernel's backlog
//!   until one closes.
//! - A request's head must arrive within `[server] header_timeout_seconds` of its first byte, and
//!   a new connection's first head within that of the accept (slowloris, and connections that
//!   never send anything, are closed); it must fit in [`MAX_HEAD_BYTES`] with at most
//!   [`MAX_HEADERS`] headers (`431` otherwise).
//! - Between requests a kept-alive connection may stay silent for `[server] idle_timeout_seconds`;
//!   then it is closed cleanly (with TLS, a `close_notify`). This is longer than the header
//!   timeout on purpose: a load balancer reuses its pooled connections, and a gateway that closes
//!   one as the balancer sends on it loses that request (the sender does not retry), so the
//!   gateway must be the last to let an idle connection go (docs/operations.md).
//! - The webhook reads its body within `[server] body_timeout_seconds` (`http::webhook`).
//!
//! axum's `serve` sets no header timeout, and hyper's bounds the idle time between requests with
//! the header timeout, hence this loop and [`Phase`]; the router and handlers are axum's.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// Largest request head (request line and headers) read.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Where a connection stands, which says how long it may stay silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's first byte: a new connection's within the header timeout of the
    /// accept, a kept-alive one's within the idle timeout of the answer before.
    Waiting { since: Instant, first: bool },
    /// A head has begun: it must be whole within the header timeout.
    Head { since: Instant },
    /// A request is being handled or answered: its own bounds apply (the body timeout, a long
    /// poll's wait).
    Busy,
}

impl Phase {
    /// When the connection is to be let go if it stays in this phase, and whether cleanly.
    fn deadline(self, limits: &ConnectionLimits) -> Option<(Instant, Close)> {
        match self {
            Phase::Waiting { since, first: true } => Some((since + limits.header_timeout, Close::Drop)),
            Phase::Waiting { since, first: false } => Some((since + limits.idle_timeout, Close::Graceful)),
            Phase::Head { since } => Some((since + limits.header_timeout, Close::Drop)),
            Phase::Busy => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Close {
    /// Nothing was asked of it: let it go (with TLS, a `close_notify` first).
    Graceful,
    /// It sends too slowly or not at all: drop it.
    Drop,
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets every
/// connection finish its request in flight, and returns once all are closed.
pub async fn serve<L>(mut listener: L, router: Router, limits: ConnectionLimits, shutdown: impl Future<Output = ()>)
where
    L: Listener<Addr = SocketAddr>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closed) = watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The connection's own loop below bounds heads and idle time ([`Phase`]).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let mut closed = closed.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let phase = Arc::new(watch::Sender::new(Phase::Waiting { since: Instant::now(), first: true }));
            let mut phases = phase.subscribe();
            let io = Watched { io, phase: Arc::clone(&phase) };
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                phase.send_replace(Phase::Busy);
                request.extensions_mut().insert(ConnectInfo(remote));
                let mut router = router.clone();
                let phase = Arc::clone(&phase);
                async move {
                    let response = tower_service::Service::call(&mut router, request.map(Body::new)).await;
                    // Idle again once the answer's body is written (or given up).
                    response.map(|r| r.map(|body| Body::new(Answer { body, phase })))
                }
            });
            let mut connection = pin!(builder.serve_connection(TokioIo::new(io), service));
            loop {
                let deadline = phases.borrow_and_update().deadline(&limits);
                let expired = async {
                    match deadline {
                        Some((at, close)) => {
                            tokio::time::sleep_until(at).await;
                            close
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = connection.as_mut() => break,
                    _ = async { let _ = closed.wait_for(|c| *c).await; } => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                        break;
                    }
                    _ = phases.changed() => {}
                    close = expired => {
                        if let Close::Graceful = close {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                        break;
                    }
                }
            }
        });
    }
    closing.send_replace(true);
    // Every connection holds a permit until it is closed.
    let _ = permits.acquire_many(limits.max_connections as u32).await;
}

/// The connection's reads, watched for the first byte of a request after a silence.
struct Watched<I> {
    io: I,
    phase: Arc<watch::Sender<Phase>>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.phase.send_if_modified(|phase| match phase {
                Phase::Waiting { .. } => {
                    *phase = Phase::Head { since: Instant::now() };
                    true
                }
                _ => false,
            });
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// An answer's body: once it is written or given up, the connection waits for its next request.
struct Answer {
    body: Body,
    phase: Arc<watch::Sender<Phase>>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.phase.send_replace(Phase::Waiting { since: Instant::now(), first: false });
    }
}

impl HttpBody for Answer {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
