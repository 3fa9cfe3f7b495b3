//! `GET /admin/webhooks/dead-letters` and `POST /admin/webhooks/dead-letters/retry`: the
//! events a webhook gave up on (issue 15, item 3), so that an operator can see why and,
//! once the receiver is fixed, send them again.
//!
//! A retried event goes back to the end of its hook's outbox with a new give-up time; its
//! `id` and body are unchanged, so a receiver that did get an earlier attempt drops it as
//! a duplicate. It is posted after the events its recipient got since it died: order per
//! recipient holds among events that are delivered on their first run, not across a
//! retry.

use std::sync::Arc;

use serde_json::{json, Value};
use warp::Reply;

use super::AdminReply;
use crate::app::App;
use crate::http::query::{query_number, query_pairs, query_param};
use crate::protocol::time::format_millis;
use crate::protocol::ChatError;

/// Dead letters listed when the request names no `limit`.
const DEFAULT_LIMIT: u64 = 100;
/// Most dead letters in one answer: each carries its body.
const MAX_LIMIT: u64 = 1000;

/// `?hook=URL&limit=N&after=SEQ`: up to `limit` of the hook's dead letters, oldest first,
/// and whether more follow (ask again with `after` = the last `seq`).
pub async fn list(app: Arc<App>, query: String) -> AdminReply {
    let pairs = query_pairs(&query)?;
    let hook = required_hook(&pairs)?;
    let limit = match query_number(&pairs, "limit")? {
        None => DEFAULT_LIMIT,
        Some(n @ 1..=MAX_LIMIT) => n,
        Some(n) => {
            return Err(ChatError::bad_request(format!(
                "limit must be 1 to {MAX_LIMIT}, got {n}"
            )))
        }
    } as usize;
    let after = query_number(&pairs, "after")?;
    let mut dead = app
        .chat
        .webhook_dead_letters(hook, after, limit + 1)
        .await?;
    let more = dead.len() > limit;
    dead.truncate(limit);
    let listed: Vec<Value> = dead
        .into_iter()
        .map(|d| {
            // Stored as posted; shown as JSON rather than a string of it.
            let body =
                serde_json::from_str::<Value>(&d.event.body).unwrap_or(Value::String(d.event.body));
            json!({
                "seq": d.event.seq,
                "id": d.event.id,
                "recipient": d.event.recipient,
                "createdAt": format_millis(d.event.created_ms),
                "reason": d.reason,
                "deadAt": format_millis(d.dead_ms),
                "body": body,
            })
        })
        .collect();
    tracing::info!(hook = %hook, listed = listed.len(), "admin: webhook dead letters listed");
    Ok(
        warp::reply::json(&json!({ "hook": hook, "deadLetters": listed, "more": more }))
            .into_response(),
    )
}

/// `?hook=URL`: moves every dead letter of that configured hook back to its outbox.
pub async fn retry(app: Arc<App>, query: String) -> AdminReply {
    let pairs = query_pairs(&query)?;
    let hook = required_hook(&pairs)?;
    let retried = app
        .chat
        .retry_webhook_dead_letters(hook)
        .await
        .inspect_err(|e| {
            tracing::warn!(hook = %hook, error = %e.message, "admin: dead letter retry refused");
        })?;
    tracing::info!(hook = %hook, retried, "admin: webhook dead letters retried");
    Ok(warp::reply::json(&json!({ "hook": hook, "retried": retried })).into_response())
}

fn required_hook(pairs: &[(String, String)]) -> Result<&str, ChatError> {
    query_param(pairs, "hook")?
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ChatError::bad_request("hook is required: the webhook's url"))
}
