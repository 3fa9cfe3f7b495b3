//! The server's lifecycle: accept loop, one task per connection, limits, graceful drain.
//!
//! [`run`] takes an already-bound listener (tests bind port 0) and a shutdown future. Each
//! accepted TCP connection first takes a permit from the global connection semaphore, so
//! past the cap the server simply stops accepting and the kernel backlog holds the rest.
//! Requests go to the plain-dialect handshake for `/ws` and to the warp routes for
//! everything else. Each request first takes a permit from a second semaphore capping
//! requests and upgrades in progress (`limits.max_pending_upgrades`), has its body size
//! checked, and (for the API) runs under `limits.request_timeout_secs`. On shutdown the
//! loop stops accepting, every session is told to close (1001), HTTP connections finish
//! their in-flight requests, and `run` returns once all tasks are done (or a grace period
//! passed); the caller then drains the writer.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use warp::reply::Response;

use crate::auth::Auth;
use crate::chat::Chat;
use crate::config::Config;
use crate::http;
use crate::protocol::{ChatError, ErrorCode};

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
}

/// Serves connections from `listener` until `signal` resolves, then drains.
pub async fn run(listener: TcpListener, app: Arc<App>, signal: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(app.config.limits.max_connections));
    let in_flight = Arc::new(Semaphore::new(app.config.limits.max_pending_upgrades));
    let routes = warp::service(http::routes(app.clone()));
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
        let app = app.clone();
        let routes = routes.clone();
        let in_flight = in_flight.clone();
        app.tracker
            .clone()
            .spawn(serve_connection(stream, app, routes, permit, in_flight));
    }

    // New connections are refused from here on instead of waiting in the backlog.
    drop(listener);
    tracing::info!("shutting down: closing connections");
    app.shutdown.cancel();
    app.tracker.close();
    if tokio::time::timeout(DRAIN_GRACE, app.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within the grace period");
    }
}

/// The answer when `limits.max_pending_upgrades` requests are already in progress: 429,
/// like the per-user connection cap, because for the client both mean "back off and retry".
fn too_busy() -> ChatError {
    ChatError::new(
        ErrorCode::TooManyConnections,
        "the server is handling too many requests at once; retry shortly",
    )
}

async fn serve_connection<S>(
    stream: tokio::net::TcpStream,
    app: Arc<App>,
    routes: S,
    permit: OwnedSemaphorePermit,
    in_flight: Arc<Semaphore>,
) where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let permit = Arc::new(permit);
    let shutdown = app.shutdown.clone();
    let request_timeout = Duration::from_secs(app.config.limits.request_timeout_secs);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        let mut routes = routes.clone();
        let permit = permit.clone();
        let in_flight = in_flight.clone();
        async move {
            // Held until the response (for `/ws`: the 101) is ready.
            let _in_flight = match in_flight.try_acquire_owned() {
                Ok(in_flight) => in_flight,
                Err(_) => return Ok(http::error_response(&too_busy())),
            };
            if let Some(refusal) = http::refuse_body(&req, app.config.limits.max_http_body_bytes) {
                return Ok(refusal);
            }
            if req.uri().path() == "/ws" {
                return Ok::<_, Infallible>(http::upgrade_plain(&app, req, permit));
            }
            match tokio::time::timeout(request_timeout, routes.call(req)).await {
                Ok(response) => response,
                Err(_) => Ok(http::error_response(&ChatError::internal(
                    "an HTTP request exceeded limits.request_timeout_secs",
                ))),
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
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
