//! The public listener's connections: HTTP/1.1 with limits a hostile client cannot get around.
//!
//! - At most `[server] max_connections` at once; past that, new ones wait in the kernel's backlog
//!   until one closes.
//! - A request's head must arrive within `[server] header_timeout_seconds` (slowloris, and idle
//!   connections that never send anything, are closed), and fit in [`MAX_HEAD_BYTES`] with at
//!   most [`MAX_HEADERS`] headers (`431` otherwise).
//! - The webhook reads its body within `[server] body_timeout_seconds` (`http::webhook`).
//!
//! axum's `serve` sets no header timeout, hence this loop; the router and handlers are axum's.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};

/// Largest request head (request line and headers) read.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
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
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
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
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                let mut router = router.clone();
                async move { tower_service::Service::call(&mut router, request.map(Body::new)).await }
            });
            let mut connection = pin!(builder.serve_connection(TokioIo::new(io), service));
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { let _ = closed.wait_for(|c| *c).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    closing.send_replace(true);
    // Every connection holds a permit until it is closed.
    let _ = permits.acquire_many(limits.max_connections as u32).await;
}
