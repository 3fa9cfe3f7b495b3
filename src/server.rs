//! The server's lifecycle: accept loop, one task per connection, limits, graceful drain.
//!
//! [`run`] takes an already-bound listener (tests bind port 0) and a shutdown future. Each
//! accepted TCP connection first takes a permit from the global connection semaphore, so
//! past the cap the server simply stops accepting and the kernel backlog holds the rest.
//! The permit travels with the TCP stream itself (`Counted`), so a connection upgraded
//! to a WebSocket of either dialect keeps its slot for as long as it lives.
//!
//! One service stack serves every request: CORS, then Socket.IO (socketioxide, at
//! `/socket.io/`), then the plain-dialect handshake for `/ws`, then the warp routes.
//! Requests that reach `/ws` or the warp routes first take a permit from a second
//! semaphore capping requests and upgrades in progress (`limits.max_pending_upgrades`)
//! and have their body size checked; API requests run under `limits.request_timeout_secs`.
//! Socket.IO long-polling requests are exempt: they are held open by design, and
//! Engine.IO bounds their bodies by `maxPayload`. On
//! shutdown the loop stops accepting, every plain session is told to close (1001), every
//! Socket.IO socket is disconnected, HTTP connections finish their in-flight requests,
//! and `run` returns once all tasks are done (or a grace period passed); the caller then
//! drains the writer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_layer::Layer;
use tower_service::Service;
use warp::reply::Response;

use crate::auth::Auth;
use crate::chat::Chat;
use crate::config::Config;
use crate::hub::Subscription;
use crate::model::SessionUser;
use crate::protocol::{ChatError, ErrorCode};
use crate::{dialect, http};

/// How long shutdown waits for connections to finish before giving up on them.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Shared state of the running server.
pub struct App {
    /// The event handlers.
    pub chat: Arc<Chat>,
    /// Verifies tokens on every handshake and API request.
    pub auth: Auth,
    /// The settings, limits included.
    pub config: Config,
    /// Cancelled once on shutdown; every session watches it.
    pub shutdown: CancellationToken,
    /// Every connection and session task, so shutdown can wait for them.
    pub tracker: TaskTracker,
}

impl App {
    pub fn new(chat: Arc<Chat>, auth: Auth, config: Config) -> Arc<App> {
        Arc::new(App {
            chat,
            auth,
            config,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        })
    }

    /// Joins `user`'s channel for one more connection, within the per-user cap and with
    /// the configured outbound bound: the same admission for every dialect.
    pub fn subscribe(&self, user: &SessionUser) -> Result<Subscription, ChatError> {
        let limits = &self.config.limits;
        self.chat
            .hub()
            .subscribe(
                &user.id,
                limits.max_connections_per_user,
                limits.max_outbound_bytes,
            )
            .map_err(|_| {
                ChatError::new(
                    ErrorCode::TooManyConnections,
                    format!(
                        "at most {} connections per user",
                        limits.max_connections_per_user
                    ),
                )
            })
    }
}

/// Serves connections from `listener` until `signal` resolves, then drains.
pub async fn run(listener: TcpListener, app: Arc<App>, signal: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(app.config.limits.max_connections));
    let routes = Routes {
        app: app.clone(),
        warp: warp::service(http::routes(app.clone())),
        in_flight: Arc::new(Semaphore::new(app.config.limits.max_pending_upgrades)),
    };
    let (socketio, io) = dialect::socketio::service(&app, routes);
    let service = http::cors_layer(&app.config.cors).layer(socketio);
    tokio::pin!(signal);
    let mut backoff = Duration::from_millis(100);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = &mut signal => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        backoff = Duration::from_millis(100);
        let _ = stream.set_nodelay(true);
        let stream = Counted {
            stream,
            _permit: permit,
        };
        app.tracker
            .clone()
            .spawn(serve_connection(stream, app.clone(), service.clone()));
    }

    tracing::info!("shutting down: closing connections");
    app.shutdown.cancel();
    app.tracker.close();
    let drained = async {
        io.close().await;
        app.tracker.wait().await;
    };
    if tokio::time::timeout(DRAIN_GRACE, drained).await.is_err() {
        tracing::warn!("some connections did not close within the grace period");
    }
}

/// The plain dialect's handshake at `/ws`, and warp's routes for every other path: what
/// the Socket.IO layer passes on.
#[derive(Clone)]
struct Routes<W> {
    app: Arc<App>,
    warp: W,
    /// Caps requests and upgrades in progress.
    in_flight: Arc<Semaphore>,
}

/// The answer when `limits.max_pending_upgrades` requests are already in progress: 429,
/// like the per-user connection cap, because for the client both mean "back off and retry".
fn too_busy() -> ChatError {
    ChatError::new(
        ErrorCode::TooManyConnections,
        "the server is handling too many requests at once; retry shortly",
    )
}

impl<W> Service<Request<Incoming>> for Routes<W>
where
    W: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    W::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let answer = |response| -> Self::Future { Box::pin(std::future::ready(Ok(response))) };
        // Held until the response (for `/ws`: the 101) is ready.
        let Ok(in_flight) = self.in_flight.clone().try_acquire_owned() else {
            return answer(http::error_response(&too_busy()));
        };
        let limits = &self.app.config.limits;
        if let Some(refusal) = http::refuse_body(&req, limits.max_http_body_bytes) {
            return answer(refusal);
        }
        if req.uri().path() == "/ws" {
            let app = self.app.clone();
            return Box::pin(async move {
                let _in_flight = in_flight;
                Ok(http::upgrade_plain(&app, req).await)
            });
        }
        let request_timeout = Duration::from_secs(limits.request_timeout_secs);
        let mut warp = self.warp.clone();
        Box::pin(async move {
            let _in_flight = in_flight;
            match tokio::time::timeout(request_timeout, warp.call(req)).await {
                Ok(response) => response,
                Err(_) => Ok(http::error_response(&ChatError::internal(
                    "an HTTP request exceeded limits.request_timeout_secs",
                ))),
            }
        })
    }
}

/// A TCP stream holding its slot of the connection cap until it is dropped, wherever an
/// upgrade took it.
struct Counted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn serve_connection<S, B>(stream: Counted, app: Arc<App>, service: S)
where
    S: Service<Request<Incoming>, Response = hyper::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let shutdown = app.shutdown.clone();
    let request_timeout = Duration::from_secs(app.config.limits.request_timeout_secs);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout);
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Raises the soft open-file limit to the hard limit: every connection is a file, and the
/// usual soft default (1024) would cap the server far below `limits.max_connections`.
/// Returns the limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process, with a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}
