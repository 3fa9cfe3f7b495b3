//! HTTP: the plain-dialect WebSocket handshake, the REST API, health, and JSON errors.
//!
//! The REST endpoints call the same handlers as the socket requests (`Chat::rooms_page`,
//! `Chat::messages_page`) and answer with exactly the socket reply object. Every failure,
//! including unknown paths, is `{ "error": { "code", "message" } }` with the status of its
//! code, turned into a response in one place ([`error_response`]).

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONNECTION, UPGRADE};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tower_http::cors::{AllowOrigin, CorsLayer};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::auth::bearer_token;
use crate::config::CorsConfig;
use crate::dialect::plain;
use crate::metrics::{self, Dialect};
use crate::model::SessionUser;
use crate::protocol::event::{MessagesRequest, RoomsRequest};
use crate::protocol::{ChatError, ErrorCode};
use crate::server::App;

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

/// The user of a request: the `Authorization: Bearer` header, else the `token` query
/// parameter when `query_token` is given (the WebSocket handshake allows it).
fn authenticate(
    app: &App,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<SessionUser, ChatError> {
    let token = match headers.get(AUTHORIZATION) {
        Some(value) => value.to_str().ok().and_then(bearer_token).ok_or_else(|| {
            ChatError::unauthorized("the Authorization header must be `Bearer <token>`")
        })?,
        None => query_token.ok_or_else(|| ChatError::unauthorized("missing token"))?,
    };
    app.auth
        .verify(token)
        .map_err(|e| ChatError::unauthorized(e.to_string()))
}

/// Decodes a query string into (name, value) pairs.
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ChatError> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_decode_strict(&name.replace('+', " "));
            let value = percent_decode_strict(&value.replace('+', " "));
            match (name, value) {
                (Some(n), Some(v)) => Ok((n, v)),
                _ => Err(ChatError::bad_request(
                    "the query string is not valid percent-encoding",
                )),
            }
        })
        .collect()
}

pub(crate) fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A request parameter of the HTTP API. Given twice it is a `bad_request`, like a JSON
/// array where one value belongs: taking either copy would be a guess.
fn query_param<'a>(
    pairs: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, ChatError> {
    let mut values = pairs.iter().filter(|(n, _)| n == name);
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(ChatError::bad_request(format!(
            "{name} is given more than once"
        ))),
        (first, _) => Ok(first.map(|(_, v)| v.as_str())),
    }
}

fn query_number(pairs: &[(String, String)], name: &str) -> Result<Option<u64>, ChatError> {
    query_param(pairs, name)?
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ChatError::bad_request(format!("{name} must be a whole number, got {v:?}"))
            })
        })
        .transpose()
}

/// Percent-decodes strictly: every `%` must start a valid escape and the result must be
/// UTF-8; `None` otherwise.
fn percent_decode_strict(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
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
        .map(|app: Arc<App>| {
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
                    let user = authenticate(&app, &headers, None)?;
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

    let messages = warp::path!("api" / "rooms" / String / "messages")
        .and(warp::get())
        .and(with_app)
        .and(warp::header::headers_cloned())
        .and(query)
        .then(
            |segment: String, app: Arc<App>, headers: HeaderMap, query: String| async move {
                let reply = async {
                    let user = authenticate(&app, &headers, None)?;
                    let pairs = query_pairs(&query)?;
                    let req = MessagesRequest {
                        room_id: room_id_from_path(&segment)?,
                        before: query_number(&pairs, "before")?,
                        limit: query_number(&pairs, "limit")?,
                    };
                    app.chat.messages_page(&user, &req).await
                };
                reply_response(reply.await)
            },
        );

    let not_found = warp::any().map(|| error_response(&ChatError::not_found("no such endpoint")));

    healthz
        .or(metrics)
        .unify()
        .or(rooms)
        .unify()
        .or(messages)
        .unify()
        .or(crate::web::routes())
        .unify()
        .or(not_found)
        .unify()
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
        .allow_methods([hyper::Method::GET, hyper::Method::POST])
        .allow_headers([AUTHORIZATION, hyper::header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(3600))
}

fn header_has_token(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// `GET /ws`: authenticates, reserves the user's connection slot, makes the user's name
/// durable, answers 101 and runs the plain dialect on the upgraded connection.
pub async fn upgrade_plain(app: &Arc<App>, mut req: Request<Incoming>) -> Response {
    let pairs = match query_pairs(req.uri().query().unwrap_or("")) {
        Ok(pairs) => pairs,
        Err(e) => return error_response(&e),
    };
    let user = match authenticate(app, req.headers(), query_value(&pairs, "token")) {
        Ok(user) => user,
        Err(e) => return error_response(&e),
    };
    let headers = req.headers();
    let key = headers.get("sec-websocket-key").cloned();
    let is_upgrade = req.method() == hyper::Method::GET
        && header_has_token(headers, UPGRADE, "websocket")
        && header_has_token(headers, CONNECTION, "upgrade")
        && headers.get("sec-websocket-version").map(|v| v.as_bytes()) == Some(b"13");
    let Some(key) = key.filter(|_| is_upgrade) else {
        return error_response(&ChatError::bad_request(
            "GET /ws expects a WebSocket upgrade (version 13)",
        ));
    };
    let subscription = match app.subscribe(&user) {
        Ok(subscription) => subscription,
        Err(error) => return error_response(&error),
    };
    // Before the 101: once the client can send, its partner may already be reading.
    app.chat.remember_profile(&user).await;
    let limits = &app.config.limits;

    let on_upgrade = hyper::upgrade::on(&mut req);
    // Client frames are small; tungstenite allocates the read buffer up front for every
    // connection, so 1 KiB instead of 4 KiB is 3 KiB less per idle connection. Larger
    // frames still arrive, in more reads.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    let liveness = plain::Liveness {
        ping_after: std::time::Duration::from_secs(limits.ping_after_secs),
        drop_after: std::time::Duration::from_secs(limits.idle_timeout_secs),
    };
    let session_app = app.clone();
    app.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let _counted = metrics::connection_opened(Dialect::Plain);
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
                .await;
        plain::serve(
            socket,
            user,
            subscription,
            session_app.chat.clone(),
            liveness,
            session_app.shutdown.clone(),
        )
        .await;
    });

    let mut response = Response::new(String::new().into());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_percent_decoding() {
        assert_eq!(
            percent_decode_strict("alice-bob").as_deref(),
            Some("alice-bob")
        );
        assert_eq!(percent_decode_strict("a%40b").as_deref(), Some("a@b"));
        assert_eq!(percent_decode_strict("%zz"), None);
        assert_eq!(percent_decode_strict("%4"), None);
        assert_eq!(percent_decode_strict("%ff"), None);
        assert!(room_id_from_path("a%2Fb").is_err());
    }

    #[test]
    fn query_numbers() {
        let pairs = query_pairs("limit=5&before=&cursor=c1.x").unwrap();
        assert_eq!(query_number(&pairs, "limit").unwrap(), Some(5));
        assert!(query_number(&pairs, "before").is_err());
        assert_eq!(query_number(&pairs, "other").unwrap(), None);
        assert_eq!(query_value(&pairs, "cursor"), Some("c1.x"));
        assert!(query_pairs("limit=%zz").is_err());
        let repeated = query_pairs("limit=5&cursor=a&limit=5&cursor=b").unwrap();
        assert!(query_number(&repeated, "limit").is_err());
        assert!(query_param(&repeated, "cursor").is_err());
        assert!(query_param(&repeated, "before").unwrap().is_none());
    }
}
