//! Dialects: codecs that turn a transport's frames into calls of [`crate::chat::Chat`] and
//! its replies and events back into frames. They hold no chat logic of their own.
//!
//! How a [`Reply`] is answered (an ack reply object, a reply event, an `error` event, or
//! nothing) is the same in every dialect, so it is decided once here by [`answer`]; a
//! dialect only frames the result.

pub mod frame_limit;
pub mod plain;
pub mod socketio;

use std::future::Future;
use std::pin::Pin;

use serde_json::{json, Value};

use crate::chat::{Chat, Reply};
use crate::metrics;
use crate::model::SessionUser;
use crate::protocol::event::ClientEvent;
use crate::protocol::ChatError;

/// A request's answer to come: its event name (when usable), the dialect's ack handle `A`,
/// and the reply, which may wait for a commit. Sessions keep these in request order.
pub type PendingReply<A> = Pin<Box<dyn Future<Output = (Option<String>, Option<A>, Reply)> + Send>>;

/// Whether a decoded request must wait until every earlier request of its connection is
/// answered (see [`ClientEvent::reads_store`]).
pub fn waits_for_earlier<E>(decoded: &Result<(String, &str), E>) -> bool {
    decoded
        .as_ref()
        .is_ok_and(|(event, _)| ClientEvent::from_name(event).is_some_and(ClientEvent::reads_store))
}

/// Dispatches one decoded request, or passes on why it could not be decoded (with the
/// event name, when it was readable).
pub async fn dispatch<A: Send + 'static>(
    chat: &Chat,
    user: &SessionUser,
    decoded: Result<(String, &str), (Option<String>, ChatError)>,
    ack: Option<A>,
) -> PendingReply<A> {
    match decoded {
        Err((event, error)) => Box::pin(async move { (event, ack, Err(error)) }),
        Ok((event, data)) => {
            // Boxed: inline, the largest handler's state would be part of every
            // session's future for the connection's whole life.
            let handled = Box::pin(chat.dispatch(user, &event, data, ack.is_some())).await;
            Box::pin(async move { (Some(event), ack, handled.into_reply().await) })
        }
    }
}

/// How one client request is answered; `A` is the dialect's handle of the client's ack.
#[derive(Debug, PartialEq)]
pub enum Answer<A> {
    /// The client asked for an ack: the reply object `{ "ok": true, … }` or
    /// `{ "ok": false, "error": … }`, and nothing else.
    Ack(A, Value),
    /// No ack: events to emit, in order (none for a command that succeeded).
    Events(Vec<(&'static str, Value)>),
}

/// Decides how to answer `reply` to a request named `event` (`None` when the frame had no
/// usable event name), with or without an ack. Every refusal is counted here, for both
/// dialects (a `message:read` with rejected items counts its first code).
pub fn answer<A>(event: Option<&str>, ack: Option<A>, reply: Reply) -> Answer<A> {
    match &reply {
        Err(error) => metrics::rejected(error.code),
        Ok(success) => {
            if let Some(error) = &success.error_without_ack {
                metrics::rejected(error.code);
            }
        }
    }
    match (ack, reply) {
        (Some(ack), Ok(success)) => Answer::Ack(ack, success.body),
        (Some(ack), Err(error)) => Answer::Ack(ack, json!({ "ok": false, "error": error })),
        (None, Err(error)) => Answer::Events(vec![error_event(&error, event)]),
        (None, Ok(success)) => {
            let mut events = Vec::new();
            if let Some(error) = &success.error_without_ack {
                events.push(error_event(error, event));
            }
            if let Some(name) = success.reply_event {
                events.push((name, success.body));
            }
            Answer::Events(events)
        }
    }
}

/// The `error` event: `{ code, message, …, event }`.
fn error_event(error: &ChatError, event: Option<&str>) -> (&'static str, Value) {
    let mut data = serde_json::to_value(error).expect("errors serialize");
    data["event"] = json!(event);
    ("error", data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Success;
    use crate::protocol::ErrorCode;

    fn ok_request() -> Reply {
        Ok(Success {
            body: json!({"ok": true}),
            reply_event: Some("rooms"),
            error_without_ack: None,
        })
    }

    #[test]
    fn an_ack_gets_only_the_reply_object() {
        assert_eq!(
            answer(Some("rooms"), Some(7), ok_request()),
            Answer::Ack(7, json!({"ok": true}))
        );
        let Answer::Ack((), failed) =
            answer(Some("message"), Some(()), Err(ChatError::bad_request("x")))
        else {
            panic!("expected an ack");
        };
        assert_eq!(failed["ok"], false);
        assert_eq!(failed["error"]["code"], "bad_request");
    }

    #[test]
    fn without_ack_requests_reply_by_event_and_failures_by_error_event() {
        assert_eq!(
            answer::<()>(Some("rooms"), None, ok_request()),
            Answer::Events(vec![("rooms", json!({"ok": true}))])
        );
        let Answer::Events(events) = answer::<()>(None, None, Err(ChatError::bad_request("x")))
        else {
            panic!("expected events");
        };
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, "error");
        assert_eq!(events[0].1["code"], "bad_request");
        assert_eq!(events[0].1["event"], Value::Null);
    }

    #[test]
    fn a_partly_rejected_read_without_ack_reports_an_error_event() {
        let reply = Ok(Success {
            body: json!({"ok": true, "seen": [], "rejected": [{"index": 0}]}),
            reply_event: None,
            error_without_ack: Some(ChatError::new(ErrorCode::NotFound, "no such message")),
        });
        let Answer::Events(events) = answer::<()>(Some("message:read"), None, reply) else {
            panic!("expected events");
        };
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].1["code"], "not_found");
        assert_eq!(events[0].1["event"], "message:read");
    }
}
