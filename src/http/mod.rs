//! HTTP: the REST API, health, metrics, CORS, and JSON errors.
//!
//! The REST endpoints call the same handlers as the socket requests (`Chat::rooms_page`,
//! `Chat::messages_page`, `Chat::changes_page`, and for blocks `Chat::blocks_list`,
//! `Chat::block_user`, `Chat::unblock_user`) and answer with exactly the socket reply
//! object. Every failure,
//! including unknown paths, is `{ "error": { "code", "message" } }` with the status of its
//! code, turned into a response in one place ([`error_response`]).

pub mod query;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use hyper::{Request, StatusCode};
use tower_http::cors::{AllowOrigin, CorsLayer};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::app::App;
use crate::auth::bearer_token;
use crate::config::CorsConfig;
use crate::metrics;
use crate::protocol::event::{ChangesRequest, MessagesRequest, RoomsRequest};
use crate::protocol::{ChatError, ErrorCode};
use query::{percent_decode_strict, query_number, query_pairs, query_param};

/// `{ "error": { "code", "message", … } }` with the status of its code.
pub fn error_response(error: &ChatError) -> Response {
    metrics::rejected(error.code);
    let status =
        StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": error })),
        status,
    )
    .into_response()
}

/// A request whose body is larger than `max_bytes` (by its declared length) is refused
/// before routing. No endpoint reads a body, so one of unknown length is never buffered.
pub fn refuse_body<B: hyper::body::Body>(req: &Request<B>, max_bytes: usize) -> Option<Response> {
    let declared = req.body().size_hint().lower();
    (declared > max_bytes as u64).then(|| {
        error_response(&ChatError::bad_request(format!(
            "the request body is {declared} bytes; the limit is {max_bytes}"
        )))
    })
}

fn reply_response(reply: crate::chat::Reply) -> Response {
    match reply {
        Ok(success) => warp::reply::json(&success.body).into_response(),
        Err(error) => error_response(&error),
    }
}

/// The token of an `Authorization: Bearer` header, if the request has one; a header in
/// another form is `unauthorized`.
pub(crate) fn bearer_header(headers: &HeaderMap) -> Result<Option<&str>, ChatError> {
    headers
        .get(AUTHORIZATION)
        .map(|value| {
            value.to_str().ok().and_then(bearer_token).ok_or_else(|| {
                ChatError::unauthorized("the Authorization header must be `Bearer <token>`")
            })
        })
        .transpose()
}

/// A user id from a path segment; broken escapes are `bad_request` (the id itself is
/// checked by the handler).
fn user_id_from_path(segment: &str) -> Result<String, ChatError> {
    percent_decode_strict(segment).ok_or_else(|| {
        ChatError::bad_request("the user id in the path is not cleanly percent-encoded")
    })
}

/// A room id from a path segment; `%2F` and broken escapes are `invalid_room`.
fn room_id_from_path(segment: &str) -> Result<String, ChatError> {
    percent_decode_strict(segment)
        .filter(|id| !id.contains('/'))
        .ok_or_else(|| {
            ChatError::new(
                ErrorCode::InvalidRoom,
                "the room id in the path is not cleanly percent-encoded",
            )
        })
}

/// The warp routes: health, the REST API, the built-in web client, and a JSON 404 for
/// everything else.
pub fn routes(
    app: Arc<App>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_app = {
        let app = app.clone();
        warp::any().map(move || app.clone())
    };
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({ "status": "ok" })).into_response());

    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_app.clone())
        .then(|app: Arc<App>| async move {
            let hub = app.chat.hub();
            metrics::hub_state(
                hub.users_online(),
                hub.slow_consumers(),
                hub.queued_bytes(),
                hub.budget_cuts(),
            );
            let cache = app.chat.writer().recent_cache();
            metrics::recent_cache_state(cache.rooms(), cache.bytes(), cache.evictions());
            metrics::process_state(app.config.memory.redb_cache_bytes);
            store_size(&app).await;
            warp::reply::with_header(
                metrics::render(),
                "content-type",
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .into_response()
        });

    let rooms = warp::path!("api" / "rooms")
        .and(warp::get())
        .and(with_app.clone())
        .and(warp::header::headers_cloned())
        .and(query)
        .then(
            |app: Arc<App>, headers: HeaderMap, query: String| async move {
                let reply = async {
                    let user = app.authenticate(bearer_header(&headers)?).await?.user;
                    let pairs = query_pairs(&query)?;
                    let req = RoomsRequest {
                        limit: query_number(&pairs, "limit")?,
                        cursor: query_param(&pairs, "cursor")?.map(str::to_owned),
                    };
                    app.chat.rooms_page(&user, &req).await
                };
                reply_response(reply.await)
            },
        );

    let changes = warp::path!("api" / "rooms" / String / "changes")
        .and(warp::get())
        .and(with_app.clone())
        .and(warp::header::headers_cloned())
        .and(query)
        .then(
            |segment: String, app: Arc<App>, headers: HeaderMap, query: String| async move {
                let reply = async {
                    let user = app.authenticate(bearer_header(&headers)?).await?.user;
                    let pairs = query_pairs(&query)?;
                    let req = ChangesRequest {
                        room_id: room_id_from_path(&segment)?,
                        since: query_param(&pairs, "since")?.map(str::to_owned),
                        limit: query_number(&pairs, "limit")?,
                    };
                    app.chat.changes_page(&user, &req).await
                };
                reply_response(reply.await)
            },
        );

    let messages = warp::path!("api" / "rooms" / String / "messages")
        .and(warp::get())
        .and(with_app.clone())
        .and(warp::header::headers_cloned())
        .and(query)
        .then(
            |segment: String, app: Arc<App>, headers: HeaderMap, query: String| async move {
                let reply = async {
                    let user = app.authenticate(bearer_header(&headers)?).await?.user;
                    let pairs = query_pairs(&query)?;
                    let req = MessagesRequest {
                        room_id: room_id_from_path(&segment)?,
                        before: query_number(&pairs, "before")?,
                        after: query_number(&pairs, "after")?,
                        limit: query_number(&pairs, "limit")?,
                    };
                    app.chat.messages_page(&user, &req).await
                };
                reply_response(reply.await)
            },
        );

    let blocks = blocks_routes(with_app);

    let not_found = warp::any().map(|| error_response(&ChatError::not_found("no such endpoint")));

    healthz
        .or(metrics)
        .unify()
        .or(crate::admin::routes(app.clone()))
        .unify()
        .or(rooms)
        .unify()
        .or(messages)
        .unify()
        .or(blocks)
        .unify()
        .or(changes)
        .unify()
        .or(crate::web::routes())
        .unify()
        .or(not_found)
        .unify()
}

/// `GET /api/blocks` (the caller's block list), `PUT /api/blocks/{userId}` (block) and
/// `DELETE /api/blocks/{userId}` (unblock), answered like the `blocks`, `block` and
/// `unblock` events' ack replies.
/// Longest a scrape waits for the store's size (in cluster mode a PostgreSQL query).
const STORE_SIZE_WAIT: Duration = Duration::from_secs(1);

/// Updates `chat_store_file_bytes`, off the runtime's threads and for at most
/// [`STORE_SIZE_WAIT`]: a scrape must answer while the database is slow or down (that is
/// when the other metrics matter most), so a late size leaves the gauge at its last value.
async fn store_size(app: &App) {
    let maintenance = Arc::clone(&app.maintenance);
    let size = tokio::task::spawn_blocking(move || maintenance.file_bytes());
    match tokio::time::timeout(STORE_SIZE_WAIT, size).await {
        Ok(Ok(Ok(bytes))) => metrics::store_state(bytes),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "cannot read the store's file size"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the store's size task failed"),
        Err(_) => tracing::warn!(
            "the store's size took over {STORE_SIZE_WAIT:?}: chat_store_file_bytes keeps its last value"
        ),
    }
}

fn blocks_routes(
    with_app: impl Filter<Extract = (Arc<App>,), Error = Infallible> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let list = warp::path!("api" / "blocks")
        .and(warp::get())
        .and(with_app.clone())
        .and(warp::header::headers_cloned())
        .then(|app: Arc<App>, headers: HeaderMap| async move {
            let reply = async {
                let user = app.authenticate(bearer_header(&headers)?).await?.user;
                app.chat.blocks_list(&user).await
            };
            reply_response(reply.await)
        });
    let change = warp::path!("api" / "blocks" / String)
        .and(
            warp::put()
                .map(|| true)
                .or(warp::delete().map(|| false))
                .unify(),
        )
        .and(with_app)
        .and(warp::header::headers_cloned())
        .then(
            |segment: String, block: bool, app: Arc<App>, headers: HeaderMap| async move {
                let reply = async {
                    let user = app.authenticate(bearer_header(&headers)?).await?.user;
                    let target = user_id_from_path(&segment)?;
                    let handled = if block {
                        app.chat.block_user(&user, &target).await
                    } else {
                        app.chat.unblock_user(&user, &target).await
                    };
                    handled.into_reply().await
                };
                reply_response(reply.await)
            },
        );
    list.or(change).unify()
}

/// Cross-origin access for browser front ends served from another origin (the HTTP API
/// and Socket.IO's long-polling requests): only the configured origins, none by default.
pub fn cors_layer(config: &CorsConfig) -> CorsLayer {
    let origins = if config.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(config.allowed_origins.iter().filter_map(|origin| {
            match HeaderValue::from_str(origin) {
                Ok(value) => Some(value),
                Err(_) => {
                    tracing::warn!(%origin, "ignoring a CORS origin that is no header value");
                    None
                }
            }
        }))
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            hyper::Method::GET,
            hyper::Method::POST,
            hyper::Method::PUT,
            hyper::Method::DELETE,
        ])
        .allow_headers([AUTHORIZATION, hyper::header::CONTENT_TYPE])
        .max_age(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_in_paths_decode_strictly() {
        assert_eq!(room_id_from_path("alice-bob").unwrap(), "alice-bob");
        assert_eq!(room_id_from_path("a%40b").unwrap(), "a@b");
        assert!(room_id_from_path("a%2Fb").is_err());
        assert!(room_id_from_path("%zz").is_err());
    }
}
