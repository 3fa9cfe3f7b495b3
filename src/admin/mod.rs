//! The admin API: operator actions on a running server, under `/admin/`.
//!
//! Every admin request carries `Authorization: Bearer <admin secret>` (config
//! `admin_secret`, else the file `<data>/admin-secret`), compared in constant time. The
//! admin secret and user tokens never stand in for each other: a user JWT here is 401, and
//! the admin secret is no JWT, so it opens no chat session. Every action is logged at
//! `info` with what it did; failures answer with the HTTP API's JSON errors.
//!
//! A new endpoint is one more [`admin_route`] in [`routes`]: the route gets the admin check
//! and the error mapping for free.
//!
//! - `backup.rs`: `POST /admin/backup`, the online backup, and the backups directory.
//! - `client.rs`: `chat-server backup`, which calls that endpoint on a running server.
//! - `offline.rs`: `restore`, `verify` and `compact`, which work on a stopped store.
//! - `erase.rs`: `DELETE /admin/users/{id}`, erasing a user (and `erase-user`, offline).
//! - `export.rs`: `GET /admin/export`, `chat-server export` from a running server.
//! - `webhooks.rs`: `GET /admin/webhooks/dead-letters` and `POST …/retry`, a webhook's
//!   dead letters.

pub mod backup;
pub mod client;
pub mod erase;
pub mod export;
pub mod offline;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use hyper::header::HeaderMap;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::app::App;
use crate::http::{bearer_header, error_response};
use crate::protocol::ChatError;

/// What an admin handler answers: a response, or an error shown as JSON.
pub type AdminReply = Result<Response, ChatError>;

/// Every admin route. Paths under `/admin/` that none matches fall through to the API's
/// JSON 404.
pub fn routes(
    app: Arc<App>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let backups = Arc::new(backup::Backups::new(&app.config));
    admin_route(
        &app,
        warp::path!("admin" / "backup").and(warp::post()),
        move |app, _query| backup::take(app, backups.clone()),
    )
    .or(admin_route_with(
        &app,
        warp::path!("admin" / "users" / String).and(warp::delete()),
        |app, segment, _query| erase::erase(app, segment),
    ))
    .unify()
    .or(admin_route(
        &app,
        warp::path!("admin" / "webhooks" / "dead-letters").and(warp::get()),
        webhooks::list,
    ))
    .unify()
    .or(admin_route(
        &app,
        warp::path!("admin" / "webhooks" / "dead-letters" / "retry").and(warp::post()),
        webhooks::retry,
    ))
    .unify()
    .or(admin_route(
        &app,
        warp::path!("admin" / "export").and(warp::get()),
        export::export,
    ))
    .unify()
}

/// A route behind the admin secret: `path` (a warp filter extracting nothing, method
/// included) answered by `handler` with the app and the raw query string, once the
/// `Authorization` header carries the admin secret.
pub fn admin_route<P, H, F>(
    app: &Arc<App>,
    path: P,
    handler: H,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static
where
    P: Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
    H: Fn(Arc<App>, String) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = AdminReply> + Send + 'static,
{
    admin_route_with(app, path.map(|| ()), move |app, (), query| {
        handler(app, query)
    })
}

/// [`admin_route`] for a path that extracts one value (a path parameter), which `handler`
/// gets between the app and the query string.
pub fn admin_route_with<P, T, H, F>(
    app: &Arc<App>,
    path: P,
    handler: H,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static
where
    P: Filter<Extract = (T,), Error = Rejection> + Clone + Send + Sync + 'static,
    T: Send + 'static,
    H: Fn(Arc<App>, T, String) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = AdminReply> + Send + 'static,
{
    let app = app.clone();
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    path.and(warp::header::headers_cloned()).and(query).then(
        move |param: T, headers: HeaderMap, query: String| {
            let app = app.clone();
            let handler = handler.clone();
            async move {
                let reply = match authorize(&app, &headers) {
                    Ok(()) => handler(app, param, query).await,
                    Err(e) => Err(e),
                };
                reply.unwrap_or_else(|e| error_response(&e))
            }
        },
    )
}

/// `Ok` when the request carries the admin secret; `unauthorized` otherwise.
fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ChatError> {
    let given = bearer_header(headers)?.ok_or_else(|| {
        ChatError::unauthorized("the admin API needs `Authorization: Bearer <admin secret>`")
    })?;
    if app.admin_secret.matches(given) {
        Ok(())
    } else {
        tracing::warn!("admin request refused: wrong admin secret");
        Err(ChatError::unauthorized("not the admin secret"))
    }
}
