//! Where a plain-dialect frame is parsed: the JSON envelope over a raw WebSocket, and the
//! session loop of one connection ([`handshake`] answers `GET /ws` and starts it).
//!
//! A connection runs two halves. The read half parses frames, dispatches them to the
//! handlers, and keeps the replies that wait for a commit in request order. The send half
//! sends those replies and the user's channel events, and is the one place that closes the
//! socket: 1001 on shutdown, 1008 when the client stops reading (its queue overflowed),
//! 4003 when its user is erased, 1009 for an oversize message. Splitting them means a client that does not read can
//! stall only its own send half, never the read half of anyone else.
//!
//! Long texts go out as WebSocket fragments gathered into one write ([`wire`]), so that no
//! connection keeps a write buffer the size of the largest message it ever sent.

pub mod handshake;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_channel::mpsc;
use futures_util::stream::{FuturesOrdered, SplitSink};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::{answer, dispatch, waits_for_earlier, Answer, PendingReply};
use crate::chat::{Chat, Reply};
use crate::fanout::hub::{Cut, Subscription};
use crate::model::SessionUser;
use crate::protocol::ChatError;
use wire::{fragments, Coalesce, FRAGMENT_BYTES};

pub type Socket = WebSocketStream<Coalesce<TokioIo<Upgraded>>>;

/// How long a closing client gets to complete the close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Timing of liveness checks.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Silence from the client after which the server pings.
    pub ping_after: Duration,
    /// Further silence after which the connection is dropped.
    pub drop_after: Duration,
}

/// The envelope `{ "event", "data", "ack" }`; `data` stays raw JSON for the handler.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    event: Option<Value>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    ack: Option<Value>,
}

/// A decoded frame: what to run, and how to answer.
#[derive(Debug, PartialEq)]
pub struct Frame<'a> {
    pub event: String,
    pub data: &'a str,
    pub ack: Option<Value>,
}

/// A frame that cannot run; answered with an `error` event naming `event` when readable.
#[derive(Debug, PartialEq)]
pub struct Unusable {
    pub event: Option<String>,
    pub error: ChatError,
}

/// Parses one text frame into an envelope, checking the envelope's own shape.
pub fn decode(text: &str) -> Result<Frame<'_>, Unusable> {
    let unusable = |event: Option<String>, message: String| Unusable {
        event,
        error: ChatError::bad_request(message),
    };
    // serde would also accept a JSON array as a struct; the protocol wants an object.
    if !text.trim_start().starts_with('{') {
        return Err(unusable(None, "a frame must be a JSON object".into()));
    }
    let envelope: Envelope = serde_json::from_str(text)
        .map_err(|e| unusable(None, format!("frame is not a valid envelope: {e}")))?;
    let event = match envelope.event {
        Some(Value::String(name)) => name,
        _ => return Err(unusable(None, "frame has no string `event`".into())),
    };
    let ack = match envelope.ack {
        None | Some(Value::Number(_)) | Some(Value::String(_)) => envelope.ack,
        Some(_) => {
            return Err(unusable(
                Some(event),
                "`ack` must be a number or a string".into(),
            ))
        }
    };
    Ok(Frame {
        event,
        data: envelope.data.map_or("null", RawValue::get),
        ack,
    })
}

/// The frames that answer one request, as [`answer`] decides.
fn reply_frames(event: Option<&str>, ack: Option<Value>, reply: Reply) -> Vec<String> {
    match answer(event, ack, reply) {
        Answer::Ack(ack, data) => {
            vec![json!({ "event": "ack", "ack": ack, "data": data }).to_string()]
        }
        Answer::Events(events) => events
            .into_iter()
            .map(|(name, data)| json!({ "event": name, "data": data }).to_string())
            .collect(),
    }
}

/// What the read half hands the send half.
enum Outgoing {
    Text(String),
    Ping,
    Close(CloseCode, &'static str),
}

/// Runs one plain-dialect connection until either side ends it.
///
/// Not an `async fn`: its arguments would stay in the future for the connection's life
/// (the socket alone is a few hundred bytes, moved into the split halves at once).
pub fn serve(
    socket: Socket,
    user: SessionUser,
    subscription: Subscription,
    chat: Arc<Chat>,
    liveness: Liveness,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> {
    let (sink, stream) = socket.split();
    // futures' channel rather than tokio's: tokio's allocates a block of 32 slots and a
    // cache-padded state up front (about 1.5 KiB per connection); this one allocates a
    // node per queued item, and one or two are queued at a time.
    let (out_tx, out_rx) = mpsc::channel(64);
    async move {
        let receiving = read_half(stream, &user, &chat, out_tx, liveness);
        let sending = send_half(sink, subscription, out_rx, shutdown);
        tokio::pin!(receiving, sending);
        // Whichever half ends first ends the connection: the send half after closing,
        // the read half when the client closed or vanished.
        tokio::select! {
            _ = &mut receiving => {}
            _ = &mut sending => {}
        }
        tracing::debug!(user = %user.id, "plain connection closed");
    }
}

async fn read_half(
    mut stream: futures_util::stream::SplitStream<Socket>,
    user: &SessionUser,
    chat: &Chat,
    mut out: mpsc::Sender<Outgoing>,
    liveness: Liveness,
) {
    let mut pending: FuturesOrdered<PendingReply<Value>> = FuturesOrdered::new();
    let mut last_heard = Instant::now();
    let mut pinged = false;
    loop {
        let deadline = if pinged {
            last_heard + liveness.ping_after + liveness.drop_after
        } else {
            last_heard + liveness.ping_after
        };
        tokio::select! {
            Some((event, ack, reply)) = pending.next(), if !pending.is_empty() => {
                if !send_reply(&mut out, event.as_deref(), ack, reply).await {
                    return;
                }
            }
            frame = stream.next() => {
                last_heard = Instant::now();
                pinged = false;
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        let error = ChatError::bad_request("binary frames are not supported; send JSON text");
                        pending.push_back(Box::pin(async move { (None, None, Err(error)) }));
                        continue;
                    }
                    // tungstenite answers a close frame itself; polling on lets that answer
                    // go out, and the stream ends once the handshake is complete.
                    Some(Ok(_)) => continue,
                    None => return,
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                        return close_via_send_half(&mut out, CloseCode::Size, "message too large").await;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "plain connection read failed");
                        return;
                    }
                };
                let (decoded, ack) = match decode(text.as_str()) {
                    Err(Unusable { event, error }) => (Err((event, error)), None),
                    Ok(frame) => (Ok((frame.event, frame.data)), frame.ack),
                };
                if waits_for_earlier(&decoded) {
                    while let Some((event, ack, reply)) = pending.next().await {
                        if !send_reply(&mut out, event.as_deref(), ack, reply).await {
                            return;
                        }
                    }
                }
                pending.push_back(dispatch(chat, user, decoded, ack).await);
            }
            _ = sleep_until(deadline) => {
                if pinged {
                    tracing::debug!(user = %user.id, "dropping a silent connection");
                    return close_via_send_half(&mut out, CloseCode::Away, "idle timeout").await;
                }
                pinged = true;
                if out.send(Outgoing::Ping).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Asks the send half to close the socket, then waits for it to do so: returning
/// would end the connection before the close frame is out.
async fn close_via_send_half(
    out: &mut mpsc::Sender<Outgoing>,
    code: CloseCode,
    reason: &'static str,
) {
    if out.send(Outgoing::Close(code, reason)).await.is_ok() {
        std::future::pending::<()>().await;
    }
}

/// Hands one request's answer to the send half; false once the connection is gone.
async fn send_reply(
    out: &mut mpsc::Sender<Outgoing>,
    event: Option<&str>,
    ack: Option<Value>,
    reply: Reply,
) -> bool {
    for frame in reply_frames(event, ack, reply) {
        if out.send(Outgoing::Text(frame)).await.is_err() {
            return false;
        }
    }
    true
}

async fn send_half(
    mut sink: SplitSink<Socket, Message>,
    mut subscription: Subscription,
    mut out: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
) {
    let overflow = subscription.overflow_signal();
    loop {
        // A channel event's bytes stay counted against the queue bounds until the socket
        // took it: a frame stuck in a stalled write is memory too.
        let mut in_flight = None;
        let message = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                return close(&mut sink, CloseCode::Away, "server shutting down").await;
            }
            cut = overflow.overflowed() => {
                let (code, reason) = cut_close(cut);
                return close(&mut sink, code, reason).await;
            }
            outgoing = out.next() => match outgoing {
                Some(Outgoing::Text(text)) => Message::text(text),
                Some(Outgoing::Ping) => Message::Ping(Default::default()),
                Some(Outgoing::Close(code, reason)) => return close(&mut sink, code, reason).await,
                None => return,
            },
            event = subscription.recv() => match event {
                Some(event) => Message::Text(in_flight.insert(event).plain_frame()),
                None => return,
            },
        };
        let sent = tokio::select! {
            sent = send(&mut sink, message) => sent,
            _ = shutdown.cancelled() => {
                return close(&mut sink, CloseCode::Away, "server shutting down").await;
            }
            cut = overflow.overflowed() => {
                let (code, reason) = cut_close(cut);
                return close(&mut sink, code, reason).await;
            }
        };
        if let Some(event) = in_flight {
            subscription.sent(&event);
        }
        if sent.is_err() {
            return;
        }
    }
}

/// Sends one message, a long text as fragments that [`Coalesce`] writes out together.
async fn send(sink: &mut SplitSink<Socket, Message>, message: Message) -> Result<(), WsError> {
    match message {
        Message::Text(text) if text.len() > FRAGMENT_BYTES => {
            for frame in fragments(text) {
                sink.feed(frame).await?;
            }
            sink.flush().await
        }
        message => sink.send(message).await,
    }
}

/// The close frame of a connection the hub cut: 1008 for a client that stopped reading;
/// 4003 once its user was erased, a code of its own so that a client does not take it for
/// a slow connection and reconnect with the token now refused.
fn cut_close(cut: Cut) -> (CloseCode, &'static str) {
    match cut {
        Cut::SlowConsumer => (CloseCode::Policy, "too slow: outbound queue full"),
        Cut::Erased => (CloseCode::Library(4003), "user erased"),
    }
}

/// Sends a close frame and gives the client [`CLOSE_GRACE`] to take it.
async fn close(sink: &mut SplitSink<Socket, Message>, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn decodes_envelopes() {
        let frame = decode(r#"{"event":"message","data":{"a":1},"ack":7,"x":0}"#).unwrap();
        assert_eq!(frame.event, "message");
        assert_eq!(frame.data, r#"{"a":1}"#);
        assert_eq!(frame.ack, Some(json!(7)));
        let no_data = decode(r#"{"event":"rooms","ack":null}"#).unwrap();
        assert_eq!((no_data.data, no_data.ack), ("null", None));
        assert_eq!(
            decode(r#"{"event":"x","ack":"k"}"#).unwrap().ack,
            Some(json!("k"))
        );
    }

    #[test]
    fn refuses_unusable_frames() {
        for (text, event) in [
            ("not json", None),
            ("[\"message\", {}]", None),
            (r#"{"data":{}}"#, None),
            (r#"{"event":5}"#, None),
            (
                r#"{"event":"message","ack":{}}"#,
                Some("message".to_string()),
            ),
            (
                r#"{"event":"message","ack":true}"#,
                Some("message".to_string()),
            ),
        ] {
            let err = decode(text).unwrap_err();
            assert_eq!(err.error.code, ErrorCode::BadRequest, "{text}");
            assert_eq!(err.event, event, "{text}");
        }
    }

    #[test]
    fn replies_follow_the_ack_rules() {
        let ok = || {
            Ok(crate::chat::Success {
                body: json!({"ok": true}),
                reply_event: Some("rooms"),
                error_without_ack: None,
            })
        };
        let with_ack = reply_frames(Some("rooms"), Some(json!(1)), ok());
        assert_eq!(with_ack.len(), 1);
        assert!(with_ack[0].contains(r#""event":"ack""#));
        let without = reply_frames(Some("rooms"), None, ok());
        assert_eq!(
            without,
            vec![r#"{"data":{"ok":true},"event":"rooms"}"#.to_string()]
        );
        let failed = reply_frames(Some("rooms"), None, Err(ChatError::bad_request("x")));
        let v: Value = serde_json::from_str(&failed[0]).unwrap();
        assert_eq!(v["data"]["event"], "rooms");
        assert_eq!(v["data"]["code"], "bad_request");
    }
}
