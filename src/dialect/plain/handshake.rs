//! The plain dialect's handshake: `GET /ws` authenticated and admitted, then answered
//! with 101 and the session started on the upgraded connection.
//!
//! The handshake is done here rather than by a WebSocket library's server handshake so
//! that every refusal (401, 429, 400) is the same JSON error as the HTTP API's, and so
//! that the 101 goes out only once the user is admitted and their name is durable.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use warp::reply::Response;

use super::wire::Coalesce;
use super::{serve, Liveness};
use crate::app::App;
use crate::http::query::{query_pairs, query_value};
use crate::http::{bearer_header, error_response};
use crate::metrics::{self, Dialect};
use crate::protocol::ChatError;

fn header_has_token(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// `GET /ws`: authenticates, reserves the user's connection slot, makes the user's name
/// durable, answers 101 and runs the plain dialect on the upgraded connection.
pub async fn upgrade(app: &Arc<App>, mut req: Request<Incoming>) -> Response {
    let pairs = match query_pairs(req.uri().query().unwrap_or("")) {
        Ok(pairs) => pairs,
        Err(e) => return error_response(&e),
    };
    // The header wins over the query parameter when both are given.
    let token = bearer_header(req.headers()).map(|header| header.or(query_value(&pairs, "token")));
    let authenticated = match token {
        Ok(token) => app.authenticate(token).await,
        Err(e) => Err(e),
    };
    let who = match authenticated {
        Ok(who) => who,
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
    // Before the 101: once the client can send, its partner may already be reading.
    let subscription = match app.admit(&who).await {
        Ok(subscription) => subscription,
        Err(error) => return error_response(&error),
    };
    let user = who.user;
    let limits = &app.config.limits;

    let on_upgrade = hyper::upgrade::on(&mut req);
    // Client frames are small; tungstenite allocates the read buffer up front for every
    // connection, so 1 KiB instead of 4 KiB is 3 KiB less per idle connection. Larger
    // frames still arrive, in more reads. No write buffering here: each frame goes
    // straight to `Coalesce`, which gathers a message's fragments into one write.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    let liveness = Liveness {
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
        let socket = WebSocketStream::from_raw_socket(
            Coalesce::new(TokioIo::new(upgraded)),
            Role::Server,
            Some(ws_config),
        )
        .await;
        serve(
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
