//! The generator's side of a connection: connecting in either dialect (optionally from a
//! chosen loopback source address), the frames it sends, and reading back the one field it
//! needs from a `message:sent` without parsing the whole 50-message snapshot.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use chat_server::auth::Auth;
use chat_server::protocol::room::canonical_room_id;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::cluster::node_of;

pub type Ws = WebSocketStream<TcpStream>;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Handshakes in progress at once while connecting many users.
const CONNECT_CONCURRENCY: usize = 128;
/// Lifetime of the tokens the generator mints.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The user id of generator user `i`, zero-padded to a fixed width.
pub fn user(i: usize) -> String {
    format!("u{i:06}")
}

/// The room of user `i` and its partner `i ^ 1` (users `2k` and `2k+1` share a room).
pub fn room_of(i: usize) -> String {
    canonical_room_id(&user(i), &user(i ^ 1))
}

/// A `message` frame without ack: the reply that matters is the `message:sent` event.
/// With `client_message_id`, the server checks the send for a retry.
pub fn message_frame(
    user_id: &str,
    room_id: &str,
    text: &str,
    client_message_id: Option<&str>,
) -> String {
    let key = client_message_id
        .map(|key| format!(r#","clientMessageId":"{key}""#))
        .unwrap_or_default();
    format!(
        r#"{{"event":"message","data":{{"userId":"{user_id}","roomId":"{room_id}","message":"{text}"{key}}}}}"#
    )
}

/// The text the generator sends: sender index, sequence number, intended send time in µs.
pub fn message_text(sender: usize, seq: u64, sent_us: u64) -> String {
    format!("s{sender}:{seq}:{sent_us}")
}

/// What a received `message:sent` says about its newest message.
pub struct Sent {
    pub sender: usize,
    pub sent_us: u64,
}

/// Reads the newest message's text of a `message:sent` frame: the first `"message":"`
/// (the envelope and room fields come before the messages array).
pub fn parse_sent(frame: &str) -> Option<Sent> {
    if !frame.starts_with(r#"{"event":"message:sent""#) {
        return None;
    }
    const KEY: &str = r#""message":""#;
    let start = frame.find(KEY)? + KEY.len();
    let text = &frame[start..start + frame[start..].find('"')?];
    let mut parts = text.strip_prefix('s')?.split(':');
    let sender = parts.next()?.parse().ok()?;
    let _seq: u64 = parts.next()?.parse().ok()?;
    let sent_us = parts.next()?.parse().ok()?;
    Some(Sent { sender, sent_us })
}

/// The loopback source address for the `n`th connection of a generator: a new address
/// every 25,000 connections, below the ~28k ephemeral ports one source address has.
pub fn source_address(n: usize) -> Ipv4Addr {
    let k = u32::try_from(n / 25_000).unwrap_or(u32::MAX).min(250);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 1)) + k)
}

/// Which dialect a generator connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    /// The JSON envelope at `/ws`.
    Plain,
    /// Engine.IO v4 / Socket.IO v5 at `/socket.io/`, WebSocket transport only.
    Socketio,
}

/// Opens an authenticated connection as `user_id` in `dialect`.
///
/// With `source`, binds before connecting (with `IP_BIND_ADDRESS_NO_PORT`, so the kernel
/// still picks the port at connect time and one source address serves its full port range).
pub async fn connect(
    addr: SocketAddr,
    token: &str,
    user_id: &str,
    source: Option<Ipv4Addr>,
    read_buffer: usize,
    dialect: Dialect,
) -> Result<Ws, String> {
    let attempt = async {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        if let Some(ip) = source {
            bind_no_port(&socket, ip)?;
        }
        let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        // `user` is ignored by chat-server; the bare relay routes by it.
        let url = match dialect {
            Dialect::Plain => format!("ws://{addr}/ws?token={token}&user={user_id}"),
            Dialect::Socketio => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|e| e.to_string())?;
        if dialect == Dialect::Socketio {
            socketio_connect(&mut ws, token).await?;
        }
        Ok(ws)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| "connect timed out".to_string())?
}

/// The Socket.IO handshake over an open Engine.IO WebSocket: the server's OPEN packet
/// (`0{...}`), our CONNECT to `/` with the token (`40{...}`), and the server's CONNECT
/// reply (`40{"sid":...}`), or the CONNECT_ERROR (`44{...}`) as an error.
async fn socketio_connect(ws: &mut Ws, token: &str) -> Result<(), String> {
    let open = next_text(ws).await?;
    if !open.starts_with("0{") {
        return Err(format!("expected an Engine.IO OPEN packet, got {open:?}"));
    }
    let connect = format!(r#"40{{"token":"{token}"}}"#);
    ws.send(Message::text(connect))
        .await
        .map_err(|e| e.to_string())?;
    let reply = next_text(ws).await?;
    if !reply.starts_with(r#"40{"sid":"#) {
        return Err(format!("socket.io CONNECT refused: {reply:?}"));
    }
    Ok(())
}

/// The next text frame, answering Engine.IO pings on the way.
async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                ws.send(Message::text("3"))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the server closed the connection".into()),
        }
    }
}

/// Keeps a connection alive without sending anything of its own: reads every frame and,
/// for Socket.IO, answers Engine.IO's heartbeat pings (`2`) with pongs (`3`), since the
/// server drops a socket that misses one. (tungstenite answers WebSocket pings itself.)
pub async fn hold(mut ws: Ws, dialect: Dialect) {
    while let Some(Ok(message)) = ws.next().await {
        if dialect == Dialect::Socketio
            && matches!(&message, Message::Text(text) if text.as_str() == "2")
            && ws.send(Message::text("3")).await.is_err()
        {
            return;
        }
    }
}

/// Connects generator users `users` (each with a freshly minted token), a few at a time,
/// each to its node of `addrs` ([`node_of`]).
pub async fn connect_users(
    addrs: &[SocketAddr],
    auth: &Auth,
    users: std::ops::Range<usize>,
    source_offset: usize,
    read_buffer: usize,
    dialect: Dialect,
) -> Result<Vec<Ws>, String> {
    let first = users.start;
    futures_util::stream::iter(users)
        .map(|i| {
            let id = user(i);
            let token = auth.mint(&id, None, TOKEN_TTL);
            let source = Some(source_address(source_offset + i - first));
            let addr = addrs[node_of(i, addrs.len())];
            async move { connect(addr, &token, &id, source, read_buffer, dialect).await }
        })
        .buffered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
}

fn bind_no_port(socket: &TcpSocket, ip: Ipv4Addr) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!(
            "IP_BIND_ADDRESS_NO_PORT: {}",
            std::io::Error::last_os_error()
        ));
    }
    socket
        .bind(SocketAddr::from((ip, 0)))
        .map_err(|e| format!("bind {ip}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_canonical_pairs() {
        assert_eq!(room_of(0), "u000000-u000001");
        assert_eq!(room_of(9), "u000008-u000009");
        assert_eq!(source_address(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_address(25_000), Ipv4Addr::new(127, 0, 0, 2));
    }

    #[test]
    fn a_message_frame_carries_its_client_message_id_when_asked() {
        let plain: serde_json::Value =
            serde_json::from_str(&message_frame("a", "a-b", "s1:2:0", None)).unwrap();
        assert_eq!(plain["data"]["message"], "s1:2:0");
        assert!(plain["data"].get("clientMessageId").is_none(), "{plain}");
        let keyed: serde_json::Value =
            serde_json::from_str(&message_frame("a", "a-b", "s1:2:0", Some("s1:2:0"))).unwrap();
        assert_eq!(keyed["event"], "message");
        assert_eq!(keyed["data"]["clientMessageId"], "s1:2:0");
        assert_eq!(keyed["data"]["userId"], "a");
    }

    #[test]
    fn reads_the_newest_message_of_a_snapshot() {
        let frame = r#"{"event":"message:sent","data":{"roomId":"a-b","user":{"id":"a","name":"a"},"messages":[{"id":2,"userId":"a","message":"s7:3:99","sentAt":"x"},{"id":1,"userId":"a","message":"s7:2:50"}]}}"#;
        let sent = parse_sent(frame).unwrap();
        assert_eq!((sent.sender, sent.sent_us), (7, 99));
        assert!(parse_sent(r#"{"event":"error","data":{}}"#).is_none());
    }
}
