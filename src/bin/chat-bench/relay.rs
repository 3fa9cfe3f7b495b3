//! The ceiling: a bare WebSocket relay with no storage and no validation.
//!
//! It speaks just enough of the plain dialect for the throughput load: each `message`
//! frame is answered by one `message:sent`-shaped frame of a fixed size (the mean size the
//! real server sent in the throughput run), pushed to both users of the room. What it can
//! carry is what the WebSocket layer itself allows on this machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Users = Arc<RwLock<HashMap<String, mpsc::UnboundedSender<Utf8Bytes>>>>;

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    data: Data<'a>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(rename = "roomId")]
    room_id: &'a str,
    message: &'a str,
}

/// Runs the relay until killed, printing `listening on http://ADDR` like the server.
pub fn main(bind: SocketAddr, frame_bytes: usize) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(bind).await.expect("bind the relay");
        println!(
            "listening on http://{}",
            listener.local_addr().expect("local addr")
        );
        let users: Users = Arc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(connection(stream, users.clone(), frame_bytes));
        }
    });
}

async fn connection(stream: TcpStream, users: Users, frame_bytes: usize) {
    let mut user = None;
    // The callback's error type is tungstenite's own HTTP response; it is never built here.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        user = request.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|p| p.strip_prefix("user="))
                .map(str::to_owned)
        });
        Ok(response)
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    let Some(user) = user else { return };
    let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
    users
        .write()
        .expect("not poisoned")
        .insert(user.clone(), tx);
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.send(Message::Text(frame)).await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(incoming) = serde_json::from_str::<Incoming>(&text) else {
            continue;
        };
        let frame = sent_frame(incoming.data.room_id, incoming.data.message, frame_bytes);
        let users = users.read().expect("not poisoned");
        for member in incoming.data.room_id.split('-') {
            if let Some(tx) = users.get(member) {
                let _ = tx.send(frame.clone());
            }
        }
    }
    users.write().expect("not poisoned").remove(&user);
    writer.abort();
}

/// A `message:sent`-shaped frame of `size` bytes whose newest message is `text`.
fn sent_frame(room_id: &str, text: &str, size: usize) -> Utf8Bytes {
    let head = format!(
        r#"{{"event":"message:sent","data":{{"roomId":"{room_id}","messages":[{{"message":"{text}"}}],"pad":""#
    );
    let tail = "\"}}";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut frame = String::with_capacity(head.len() + pad + tail.len());
    frame.push_str(&head);
    frame.extend(std::iter::repeat_n('x', pad));
    frame.push_str(tail);
    Utf8Bytes::from(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_requested_size_and_parse() {
        let frame = sent_frame("u000000-u000001", "s0:1:5", 7000);
        assert_eq!(frame.len(), 7000);
        assert!(serde_json::from_str::<serde_json::Value>(&frame).is_ok());
        assert_eq!(crate::client::parse_sent(&frame).unwrap().sent_us, 5);
    }
}
