//! The HTTP server for everything that listens on a socket itself (`ifs-guide serve`, the
//! standalone agent) — on Lambda, API Gateway does this job. It is hardened against clients that
//! hold connections without finishing requests: a deadline for a request's headers (which is
//! also how long an idle keep-alive connection stays open), a deadline for its whole body (408),
//! a deadline for each write of an answer to make progress (a client that stops reading is
//! closed), a cap on open connections below the open-file limit, and a deadline on graceful
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse as _;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt as _;

use crate::ApiError;

/// File descriptors kept free of connections: the store, the model, logs, outgoing requests.
const RESERVED_FDS: u64 = 64;
/// Largest request head (request line and headers) read; hyper answers a bare 431 beyond it.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How the server treats connections.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Seconds a client has to send a request's line and headers; an idle keep-alive connection
    /// is closed after the same time without a new request (1 to 300).
    #[arg(long, env = "HEADER_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub header_timeout: u64,
    /// Seconds a client has to send a request's whole body, however slowly it trickles in;
    /// then 408 (1 to 600).
    #[arg(long, env = "BODY_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub body_timeout: u64,
    /// Seconds an answer may wait for the client to read any of it; then the connection is
    /// closed (1 to 600). A client that never reads must not hold a connection and its answer.
    #[arg(long, env = "WRITE_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub write_timeout: u64,
    /// Most connections open at once; more wait in the listen backlog. Never more than the
    /// open-file limit allows, less 64 (1 to 1000000).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Seconds that requests in flight get to finish after SIGTERM or Ctrl-C; then the server
    /// exits anyway (0 to 300).
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub shutdown_timeout: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_timeout: 10,
            body_timeout: 30,
            write_timeout: 30,
            max_connections: 1024,
            shutdown_timeout: 10,
        }
    }
}

impl ServerConfig {
    /// The connection cap in force: `MAX_CONNECTIONS`, lowered to fit the open-file limit so that
    /// `accept` never fails for want of descriptors.
    #[must_use]
    pub fn connection_cap(&self) -> usize {
        let configured = u64::from(self.max_connections);
        let cap = match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
            Some(files) => configured.min(files.saturating_sub(RESERVED_FDS).max(1)),
            None => configured,
        };
        usize::try_from(cap).unwrap_or(usize::MAX)
    }

    /// One line for the start-up banner.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "limits: {} connections, headers {} s (and keep-alive idle), body {} s, stalled writes {} s, shutdown {} s",
            self.connection_cap(),
            self.header_timeout,
            self.body_timeout,
            self.write_timeout,
            self.shutdown_timeout
        )
    }
}

/// Serves `app` (already behind [`crate::http::edge`]) on `listener` until `shutdown` resolves,
/// then lets requests in flight finish for up to `SHUTDOWN_TIMEOUT` and closes what is left.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_timeout))
        .max_header_size(MAX_HEAD_BYTES);
    let body_timeout = Duration::from_secs(config.body_timeout);
    let write_timeout = Duration::from_secs(config.write_timeout);
    let slots = Arc::new(Semaphore::new(config.connection_cap()));
    let graceful = GracefulShutdown::new();
    let (force_close, closing) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        // Waiting for a free slot before accepting leaves further clients in the backlog
        // instead of taking descriptors the process may not have.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.context("connection slots closed")?,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(with_body_deadline(app, request, body_timeout).await) }
        });
        let stream = WriteDeadline { inner: stream, timeout: write_timeout, stalled: None };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                served = connection => if let Err(error) = served {
                    tracing::debug!(%error, "connection ended with an error");
                },
                _ = closing.wait_for(|closing| *closing) => {}
            }
        });
    }

    drop(listener);
    let open = graceful.count();
    let deadline = Duration::from_secs(config.shutdown_timeout);
    if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!(open, "requests still in flight after SHUTDOWN_TIMEOUT; closing their connections");
        // Dropping the connections closes their sockets.
        let _ = force_close.send(true);
    }
    Ok(())
}

/// A connection whose writes must make progress: a write that can send nothing (the client's
/// window and our socket buffer are full) for `timeout` fails, and the connection with it. A
/// page built for a client that never read it was held for as long as the client liked: 200
/// such clients held 1.9 GB.
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Since when writes have been waiting, if they are.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn progress<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            tracing::info!("the client read nothing of its answer within WRITE_TIMEOUT; closing");
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(cx, polled)
    }
}

/// Runs one request through `app` with a deadline on reading its body. A body still arriving
/// when the deadline passes fails as the handler reads it; whatever the handler made of that
/// failure, the client gets a 408 and the connection is closed.
async fn with_body_deadline(app: Router, request: Request<Incoming>, timeout: Duration) -> Response<Body> {
    use http_body::Body as _;
    if request.body().is_end_stream() {
        return app.oneshot(request.map(Body::new)).await.unwrap_or_else(|never| match never {});
    }
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            expired: Arc::clone(&expired),
        })
    });
    let response = app.oneshot(request).await.unwrap_or_else(|never| match never {});
    if !expired.load(Ordering::Acquire) {
        return response;
    }
    tracing::info!(status = 408, "request body did not arrive within BODY_TIMEOUT");
    let mut timed_out = ApiError::for_status(StatusCode::REQUEST_TIMEOUT).into_response();
    if let Some(id) = response.headers().get("x-request-id") {
        timed_out.headers_mut().insert("x-request-id", id.clone());
    }
    timed_out.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    timed_out
}

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

/// The error a [`DeadlineBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyDeadlinePassed;

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(BodyDeadlinePassed.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_is_the_setting_but_never_above_the_open_file_limit() {
        let few = ServerConfig { max_connections: 8, ..ServerConfig::default() };
        assert_eq!(few.connection_cap(), 8);

        let many = ServerConfig { max_connections: 1_000_000, ..ServerConfig::default() };
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let expected =
            limit.map_or(1_000_000, |files| files.saturating_sub(RESERVED_FDS).clamp(1, 1_000_000));
        assert_eq!(many.connection_cap() as u64, expected, "open-file limit {limit:?}");
    }

    /// One connection slot; the first client asks for 64 MB and never reads. Without a write
    /// deadline it holds the slot, and the second client, for ever.
    #[tokio::test]
    async fn a_client_that_stops_reading_is_closed_and_frees_its_slot() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let app = Router::new()
            .route("/big", axum::routing::get(|| async { vec![b'x'; 64 << 20] }))
            .route("/small", axum::routing::get(|| async { "small" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let config = ServerConfig { max_connections: 1, write_timeout: 1, ..ServerConfig::default() };
        tokio::spawn(async move { serve(listener, app, &config, std::future::pending()).await });

        let mut stalled = tokio::net::TcpStream::connect(address).await.unwrap();
        stalled.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let started = std::time::Instant::now();
        let mut next = tokio::net::TcpStream::connect(address).await.unwrap();
        next.write_all(b"GET /small HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(20), next.read_to_string(&mut answer))
            .await
            .expect("the second client was served")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("small"), "{answer}");
        assert!(started.elapsed() >= Duration::from_secs(1), "served only once the first was closed");
        // The first client finds its connection closed part way through the answer.
        let mut read = Vec::new();
        let _ = stalled.read_to_end(&mut read).await;
        assert!(read.len() < 64 << 20, "read {} bytes", read.len());
    }
}
