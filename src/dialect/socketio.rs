//! Where a Socket.IO packet is decoded: the Socket.IO dialect (Engine.IO v4 / Socket.IO v5
//! at `/socket.io/`, long-polling and WebSocket), served by socketioxide.
//!
//! socketioxide owns the transports, the handshake, heartbeats and the packet codec; this
//! module is the thin codec between its events and [`Chat::dispatch`], like the plain
//! dialect. Three choices shape it:
//!
//! - Admission happens in the namespace's CONNECT middleware, so a bad token or a full
//!   per-user cap is answered with a CONNECT_ERROR (`unauthorized`, `too_many_connections`),
//!   and the event handlers are registered and a new name is durable before the client
//!   can emit anything.
//! - socketioxide runs each handler call as its own task, which would let a later `message`
//!   overtake an earlier one. So one fallback handler only queues each event packet, in
//!   arrival order, and a single session task per socket decodes and dispatches them,
//!   answering in request order as the plain dialect does.
//! - The user's channel is the same hub as the plain dialect's. Engine.IO's own buffer per
//!   socket is a few packets deep; when it is full the session waits, the hub queue fills
//!   up to `limits.max_outbound_bytes`, and the slow consumer is disconnected. (If even the
//!   DISCONNECT packet cannot be queued, Engine.IO's next heartbeat ping cannot be either,
//!   and that closes the transport.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request};
use serde_json::value::RawValue;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, TryData};
use socketioxide::handler::{ConnectHandler, FromConnectParts, FromMessageParts, MessageHandler};
use socketioxide::service::SocketIoService;
use socketioxide::socket::Socket;
use socketioxide::{SendError, SocketError, SocketIo};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::{answer, dispatch, waits_for_earlier, Answer, PendingReply};
use crate::app::App;
use crate::chat::Chat;
use crate::fanout::hub::{Cut, OverflowSignal, Subscription};
use crate::http::query::{query_pairs, query_value};
use crate::metrics::{self, Dialect};
use crate::model::SessionUser;
use crate::protocol::{ChatError, ErrorCode};

/// Engine.IO's heartbeat: a ping every 25 s, answered within 20 s (Socket.IO's defaults).
const PING_INTERVAL: Duration = Duration::from_secs(25);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Packets Engine.IO buffers per socket before a send reports it full. Kept small: what
/// waits beyond it waits in the hub queue, which is bounded in bytes.
const ENGINE_BUFFER_PACKETS: usize = 32;
/// How often a send into a full Engine.IO buffer is retried.
const FULL_RETRY: Duration = Duration::from_millis(20);
/// Frames that may wait for the session (its [`Arrivals`]), in units of
/// `limits.max_frame_bytes`: a client that sends this much faster than it is served is
/// disconnected.
const ARRIVALS_FRAMES_OF_MAX_SIZE: usize = 16;

/// Where Engine.IO is served; requests to it and below it go to socketioxide.
const PATH: &str = "/socket.io";
/// tungstenite's read buffer per WebSocket.
const WS_READ_BUFFER_BYTES: usize = 1024;

/// True for a request path socketioxide serves (engineioxide's own rule).
pub fn is_socketio_path(path: &str) -> bool {
    path.strip_prefix(PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The raw socket handle: acks are sent through it after the handler returned.
type SocketHandle = Arc<Socket<LocalAdapter>>;
/// One event packet as socketioxide hands it over (for Socket.IO's default parser, the
/// JSON text of `["event", data, …]` plus any binary attachments).
type Packet = socketioxide::handler::Value;

/// Builds the Socket.IO service in front of `inner`, which gets every request outside
/// `/socket.io/`; the returned handle closes every socket on shutdown.
pub fn service<S: Clone>(app: &Arc<App>, inner: S) -> (Detached<SocketIoService<S>>, SocketIo) {
    let limits = &app.config.limits;
    let (service, io) = SocketIo::builder()
        .req_path(PATH)
        // Idle sockets read nothing most of the time, and tungstenite allocates the read
        // buffer up front: 1 KiB as in the plain dialect, larger messages take more reads.
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        .ping_interval(PING_INTERVAL)
        .ping_timeout(PING_TIMEOUT)
        .max_payload(limits.max_frame_bytes as u64)
        // A backstop: `frame_limit` refuses a larger message with 1009 before these apply.
        .ws_max_message_size(limits.max_frame_bytes)
        .ws_max_frame_size(limits.max_frame_bytes)
        .max_buffer_size(ENGINE_BUFFER_PACKETS)
        .build_with_inner_svc(inner);
    let admit = {
        let app = app.clone();
        move |Handle(socket): Handle, TryData(auth): TryData<serde_json::Value>| {
            let app = app.clone();
            async move { admit(&app, &socket, auth.ok()).await }
        }
    };
    let start = {
        let app = app.clone();
        move |Handle(socket): Handle| {
            let app = app.clone();
            async move { start(&app, socket) }
        }
    };
    io.ns("/", start.with(admit));
    // Any other namespace is refused with PROTOCOL.md's `invalid namespace` (socketioxide's
    // own answer says "Invalid namespace"). The catch-all creates a child namespace per name
    // it matches; deleting it at once keeps names that clients invent from piling up.
    let refuse = async |io: SocketIo, Handle(socket): Handle| {
        io.delete_ns(socket.ns());
        Err::<(), _>(Refusal::InvalidNamespace)
    };
    io.dyn_ns("/{*path}", (async || {}).with(refuse))
        .expect("a valid namespace pattern");
    (Detached(service), io)
}

/// Hands socketioxide requests whose URI and headers own their bytes, with only the headers
/// Engine.IO reads.
///
/// Engine.IO keeps a copy of each socket's request head for the socket's whole life. hyper
/// parses header values and the URI as slices of its connection read buffer (8 KiB or
/// more), so a kept head would keep that buffer alive too: about 16 KiB per idle socket,
/// where copying the few values costs well under 1 KiB. Of the headers, Engine.IO reads
/// only [`ENGINE_IO_HEADERS`] (CORS has been answered before this layer, and a token comes
/// in the CONNECT payload or the query), so the rest are dropped: a browser's dozen headers
/// in a map sized for them cost about 0.7 KiB per socket, kept for nothing.
#[derive(Clone)]
pub struct Detached<S>(S);

/// The request headers engineioxide 0.17 reads: the WebSocket key of an upgrade
/// (`transport/ws.rs`), the type of a long-polling POST body (`transport/polling.rs`).
const ENGINE_IO_HEADERS: [http::header::HeaderName; 2] =
    [http::header::SEC_WEBSOCKET_KEY, http::header::CONTENT_TYPE];

impl<S, B> Service<Request<B>> for Detached<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        if !is_socketio_path(req.uri().path()) {
            return self.0.call(req);
        }
        let (mut head, body) = req.into_parts();
        if let Ok(uri) = head.uri.to_string().parse() {
            head.uri = uri;
        }
        let kept = ENGINE_IO_HEADERS
            .iter()
            .filter(|name| head.headers.contains_key(*name));
        let mut headers = HeaderMap::with_capacity(kept.count());
        for name in ENGINE_IO_HEADERS {
            for value in head.headers.get_all(&name) {
                if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
                    copy.set_sensitive(value.is_sensitive());
                    headers.append(name.clone(), copy);
                }
            }
        }
        head.headers = headers;
        self.0.call(Request::from_parts(head, body))
    }
}

/// The socket handle as a connect extractor.
struct Handle(SocketHandle);

impl FromConnectParts<LocalAdapter> for Handle {
    type Error = std::convert::Infallible;

    fn from_connect_parts(
        socket: &SocketHandle,
        _: &Option<Packet>,
    ) -> Result<Handle, Self::Error> {
        Ok(Handle(socket.clone()))
    }
}

/// Why a CONNECT is refused; its text is the CONNECT_ERROR's `message`.
#[derive(Debug)]
enum Refusal {
    Unauthorized,
    TooManyConnections,
    InvalidNamespace,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Unauthorized => ErrorCode::Unauthorized.as_str(),
            Refusal::TooManyConnections => ErrorCode::TooManyConnections.as_str(),
            Refusal::InvalidNamespace => "invalid namespace",
        })
    }
}

/// What admission hands the connect handler, through the socket's extensions.
#[derive(Clone)]
struct Admitted(Arc<Mutex<Option<Session>>>);

/// One admitted socket's state, owned by its session task.
struct Session {
    user: SessionUser,
    subscription: Subscription,
    arrivals: Arc<Arrivals>,
    /// Cancelled when socketioxide reports the socket disconnected, or on shutdown.
    gone: CancellationToken,
}

/// The token: the CONNECT auth payload's `token` wins over the `token` query parameter.
fn token_of<'a>(
    auth: Option<&'a serde_json::Value>,
    query: &'a [(String, String)],
) -> Option<&'a str> {
    match auth.and_then(|auth| auth.get("token")) {
        Some(token) => token.as_str(),
        None => query_value(query, "token"),
    }
}

/// The CONNECT middleware: authenticates, takes a slot in the user's channel, registers
/// the socket's handlers and makes the user's name durable, all before the client learns
/// it is connected (socketioxide sends the CONNECT packet once this returns).
async fn admit(
    app: &App,
    socket: &SocketHandle,
    auth: Option<serde_json::Value>,
) -> Result<(), Refusal> {
    let query = query_pairs(socket.req_parts().uri.query().unwrap_or("")).unwrap_or_default();
    let refused = |e: ChatError| {
        tracing::debug!(error = %e.message, "socket.io connect refused");
        match e.code {
            ErrorCode::TooManyConnections => Refusal::TooManyConnections,
            _ => Refusal::Unauthorized,
        }
    };
    let who = app
        .authenticate(token_of(auth.as_ref(), &query))
        .await
        .map_err(refused)?;
    // Once the client is connected, its partner may already be reading.
    let subscription = app.admit(&who).await.map_err(refused)?;
    let user = who.user;
    let limits = &app.config.limits;

    let arrivals = Arc::new(Arrivals {
        queue: Mutex::default(),
        ready: Notify::new(),
        max_bytes: ARRIVALS_FRAMES_OF_MAX_SIZE * limits.max_frame_bytes,
    });
    socket.on_fallback(Enqueue(arrivals.clone()));
    // Also a child of shutdown: socketioxide's `close` drops its namespaces before the
    // transports, so disconnect handlers do not run then.
    let gone = app.shutdown.child_token();
    socket.on_disconnect({
        let gone = gone.clone();
        move || {
            gone.cancel();
            async {}
        }
    });
    socket
        .extensions
        .insert(Admitted(Arc::new(Mutex::new(Some(Session {
            user,
            subscription,
            arrivals,
            gone,
        })))));
    Ok(())
}

/// The connect handler: runs the admitted socket's session.
fn start(app: &Arc<App>, socket: SocketHandle) {
    let admitted = socket.extensions.remove::<Admitted>();
    let Some(session) = admitted.and_then(|a| a.0.lock().expect("not poisoned").take()) else {
        return;
    };
    let chat = app.chat.clone();
    app.tracker.spawn(async move {
        let _counted = metrics::connection_opened(Dialect::SocketIo);
        serve(socket, session, &chat).await;
    });
}

/// One event packet waiting for the session.
struct Arrival {
    packet: Packet,
    ack: Option<i64>,
    /// Its bytes and the entry's own.
    cost: usize,
}

/// The event packets waiting for a socket's session, in arrival order, bounded in bytes.
///
/// A locked `VecDeque` rather than a tokio channel: a tokio channel allocates a block of
/// 32 entries (about 2 KiB here) up front for every socket, most of which stay idle.
struct Arrivals {
    queue: Mutex<Queue>,
    /// Woken when a packet is queued.
    ready: Notify,
    max_bytes: usize,
}

#[derive(Default)]
struct Queue {
    packets: VecDeque<Arrival>,
    /// The sum of the packets' costs.
    bytes: usize,
}

impl Arrivals {
    /// Queues a packet; false when it does not fit.
    fn push(&self, packet: Packet, ack: Option<i64>) -> bool {
        let cost = packet.len() + std::mem::size_of::<Arrival>();
        let mut queue = self.queue.lock().expect("not poisoned");
        if queue.bytes + cost > self.max_bytes {
            return false;
        }
        queue.bytes += cost;
        queue.packets.push_back(Arrival { packet, ack, cost });
        drop(queue);
        self.ready.notify_one();
        true
    }

    /// The next packet, once there is one.
    async fn pop(&self) -> Arrival {
        loop {
            if let Some(arrival) = self.take() {
                return arrival;
            }
            // A packet queued since `take` left a permit: this returns at once.
            self.ready.notified().await;
        }
    }

    fn take(&self) -> Option<Arrival> {
        let mut queue = self.queue.lock().expect("not poisoned");
        let arrival = queue.packets.pop_front()?;
        queue.bytes -= arrival.cost;
        if queue.packets.is_empty() {
            // What a burst grew is given back once it is served.
            queue.packets.shrink_to_fit();
        }
        Some(arrival)
    }
}

/// The fallback handler of every event: queues the packet for the session, in order.
struct Enqueue(Arc<Arrivals>);

/// Marks [`Enqueue`]'s own [`MessageHandler`] implementation.
struct Queued;

impl MessageHandler<LocalAdapter, Queued> for Enqueue {
    fn call(&self, socket: SocketHandle, packet: Packet, ack: Option<i64>) {
        if !self.0.push(packet, ack) {
            tracing::debug!("socket.io client sends faster than it is served; disconnecting");
            let _ = socket.disconnect();
        }
    }
}

/// An event packet's name and payload JSON (`null` when it has none); a packet that
/// cannot run is refused with `bad_request`, naming the event when it is readable.
fn decode(packet: &Packet) -> Result<(String, &str), (Option<String>, ChatError)> {
    let Packet::Str(text, attachments) = packet else {
        return Err((None, binary_refused()));
    };
    let parts: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| {
        (
            None,
            ChatError::bad_request(format!("invalid event packet: {e}")),
        )
    })?;
    let event: Option<String> = parts
        .first()
        .and_then(|p| serde_json::from_str(p.get()).ok());
    let Some(event) = event else {
        return Err((
            None,
            ChatError::bad_request("event packet without an event name"),
        ));
    };
    if attachments.as_ref().is_some_and(|a| !a.is_empty()) {
        return Err((Some(event), binary_refused()));
    }
    Ok((event, parts.get(1).map_or("null", |data| data.get())))
}

fn binary_refused() -> ChatError {
    ChatError::bad_request("binary payloads are not supported; send JSON")
}

/// Decodes and dispatches one event packet (its reply may wait for a commit). A request
/// that reads the store first answers every earlier one: read-your-writes.
async fn handle(
    arrival: Arrival,
    user: &SessionUser,
    chat: &Chat,
    pending: &mut FuturesOrdered<PendingReply<i64>>,
    socket: &SocketHandle,
    overflow: &OverflowSignal,
    gone: &CancellationToken,
) -> Result<(), Stop> {
    let decoded = decode(&arrival.packet);
    if waits_for_earlier(&decoded) {
        while let Some((event, ack, reply)) = pending.next().await {
            send_answer(socket, answer(event.as_deref(), ack, reply), overflow, gone).await?;
        }
    }
    pending.push_back(dispatch(chat, user, decoded, arrival.ack).await);
    Ok(())
}

/// Why a session stops.
enum Stop {
    /// socketioxide reported the socket closed.
    Gone,
    /// The hub cut the connection (the client does not take its events, or its user was
    /// erased): it is cut off.
    Cut(Cut),
}

/// Runs one socket until it disconnects: requests in order, replies in request order, and
/// the user's channel events.
async fn serve(socket: SocketHandle, session: Session, chat: &Chat) {
    let Session {
        user,
        mut subscription,
        arrivals,
        gone,
    } = session;
    let overflow = subscription.overflow_signal();
    let mut pending: FuturesOrdered<PendingReply<i64>> = FuturesOrdered::new();
    // The work of each branch is boxed: the task of an idle socket then holds only what
    // it waits on, not room for the largest of them (an allocation per event instead).
    let stop = loop {
        let step = tokio::select! {
            biased;
            _ = gone.cancelled() => Err(Stop::Gone),
            cut = overflow.overflowed() => Err(Stop::Cut(cut)),
            Some((event, ack, reply)) = pending.next(), if !pending.is_empty() => {
                let answer = answer(event.as_deref(), ack, reply);
                Box::pin(send_answer(&socket, answer, &overflow, &gone)).await
            }
            arrival = arrivals.pop() => {
                Box::pin(handle(arrival, &user, chat, &mut pending, &socket, &overflow, &gone)).await
            }
            Some(event) = subscription.recv() => {
                let data = event.raw_data();
                let send = || socket.emit(event.name, data);
                let sent = Box::pin(deliver(send, &overflow, &gone)).await;
                subscription.sent(&event);
                sent
            }
        };
        if let Err(stop) = step {
            break stop;
        }
    };
    if let Stop::Cut(cut) = stop {
        drop(subscription);
        disconnect(&socket, &gone, cut).await;
    }
    tracing::debug!(user = %user.id, "socket.io connection closed");
}

/// Sends a DISCONNECT to a cut connection as soon as its buffer has room for it, until the
/// socket is gone (Engine.IO's heartbeat closes a transport whose buffer stays full).
async fn disconnect(socket: &SocketHandle, gone: &CancellationToken, cut: Cut) {
    match cut {
        Cut::SlowConsumer => {
            tracing::debug!("socket.io client too slow: outbound queue full; disconnecting")
        }
        Cut::Erased => tracing::debug!("socket.io client's user erased; disconnecting"),
    }
    while let Err(SocketError::InternalChannelFull) = socket.clone().disconnect() {
        tokio::select! {
            _ = tokio::time::sleep(FULL_RETRY) => {}
            _ = gone.cancelled() => return,
        }
    }
}

/// Sends one answer: the ack reply, or its events.
async fn send_answer(
    socket: &SocketHandle,
    answer: Answer<i64>,
    overflow: &OverflowSignal,
    gone: &CancellationToken,
) -> Result<(), Stop> {
    match answer {
        Answer::Ack(ack, reply) => {
            deliver(|| ack_sender(socket, ack).send(&reply), overflow, gone).await
        }
        Answer::Events(events) => {
            for (name, data) in events {
                deliver(|| socket.emit(name, &data), overflow, gone).await?;
            }
            Ok(())
        }
    }
}

/// The sender of the ack numbered `ack` on `socket`.
fn ack_sender(socket: &SocketHandle, ack: i64) -> AckSender {
    let mut unused = Packet::Bytes(Default::default());
    let Ok(sender) = AckSender::from_message_parts(socket, &mut unused, &Some(ack));
    sender
}

/// Runs `send` until Engine.IO's buffer takes the packet, waiting while it is full.
async fn deliver(
    mut send: impl FnMut() -> Result<(), SendError>,
    overflow: &OverflowSignal,
    gone: &CancellationToken,
) -> Result<(), Stop> {
    loop {
        match send() {
            Ok(()) => return Ok(()),
            Err(SendError::Socket(SocketError::InternalChannelFull)) => tokio::select! {
                _ = tokio::time::sleep(FULL_RETRY) => {}
                cut = overflow.overflowed() => return Err(Stop::Cut(cut)),
                _ = gone.cancelled() => return Err(Stop::Gone),
            },
            Err(SendError::Socket(_)) => return Err(Stop::Gone),
            Err(SendError::Serialize(e)) => {
                tracing::error!(error = %e, "cannot encode a socket.io packet");
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(text: &str) -> Packet {
        Packet::Str(text.to_owned().into(), None)
    }

    /// A service that hands back the request it was called with.
    struct Echo;

    impl Service<Request<()>> for Echo {
        type Response = Request<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Request<()>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<()>) -> Self::Future {
            std::future::ready(Ok(req))
        }
    }

    #[test]
    fn socketio_request_heads_stop_sharing_the_connection_buffer() {
        // As hyper parses them: the URI and header values are slices of its read buffer.
        let text = "/socket.io/?EIO=4&transport=websocket /ws dGhlIHNhbXBsZSBub25jZQ== ";
        let buffer = bytes::Bytes::from(format!("{text}{}", " ".repeat(8192)));
        let within = |p: *const u8| buffer.as_ptr_range().contains(&p);
        let head = |uri: bytes::Bytes| {
            let mut req = Request::new(());
            *req.uri_mut() = http::Uri::from_maybe_shared(uri).unwrap();
            let headers = req.headers_mut();
            let shared = HeaderValue::from_maybe_shared(buffer.slice(1..10)).unwrap();
            headers.insert("x-shared", shared);
            let mut key = HeaderValue::from_maybe_shared(buffer.slice(42..66)).unwrap();
            key.set_sensitive(true);
            headers.insert(http::header::SEC_WEBSOCKET_KEY, key);
            headers.insert(http::header::USER_AGENT, HeaderValue::from_static("test"));
            headers.append("x-shared", HeaderValue::from_static("twice"));
            req
        };
        let call = |req| {
            futures_util::FutureExt::now_or_never(Detached(Echo).call(req))
                .unwrap()
                .unwrap()
        };

        let socketio = head(buffer.slice(..37));
        assert!(within(socketio.headers()["x-shared"].as_bytes().as_ptr()));
        let passed = call(socketio);
        assert_eq!(passed.uri(), "/socket.io/?EIO=4&transport=websocket");
        assert!(!within(passed.uri().path().as_ptr()));
        // Only what Engine.IO reads is kept, copied out of the buffer, in a map of its size.
        let key = &passed.headers()[http::header::SEC_WEBSOCKET_KEY];
        assert_eq!(key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert!(!within(key.as_bytes().as_ptr()));
        assert!(key.is_sensitive());
        assert_eq!(passed.headers().len(), 1);
        assert!(passed.headers().capacity() < 4);

        // A long-polling POST keeps its body type.
        let mut post = head(bytes::Bytes::from_static(b"/socket.io/?EIO=4&sid=x"));
        post.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        let passed = call(post);
        assert_eq!(passed.headers()[http::header::CONTENT_TYPE], "text/plain");
        assert_eq!(passed.headers().len(), 2);

        // Other paths pass as they are.
        let passed = call(head(buffer.slice(38..41)));
        assert_eq!(passed.uri(), "/ws");
        assert!(within(passed.headers()["x-shared"].as_bytes().as_ptr()));
        assert_eq!(passed.headers().len(), 4);
    }

    fn arrivals(max_bytes: usize) -> Arrivals {
        Arrivals {
            queue: Mutex::default(),
            ready: Notify::new(),
            max_bytes,
        }
    }

    #[tokio::test]
    async fn arrivals_keep_their_order_and_byte_bound() {
        let entry = std::mem::size_of::<Arrival>();
        assert!(entry <= 96, "an arrival costs {entry} bytes");
        let arrivals = arrivals(2 * (entry + 10));
        assert!(arrivals.push(packet("0123456789"), Some(1)));
        assert!(arrivals.push(packet("abcdefghij"), None));
        // Full: the handler disconnects the client.
        assert!(!arrivals.push(packet("x"), None));
        let first = arrivals.pop().await;
        assert_eq!((first.packet.len(), first.ack), (10, Some(1)));
        // Popping gives its bytes back.
        assert!(arrivals.push(packet("klmnopqrst"), None));
        assert_eq!(arrivals.pop().await.ack, None);
        assert_eq!(arrivals.pop().await.packet.len(), 10);
        let queue = arrivals.queue.lock().unwrap();
        assert_eq!((queue.bytes, queue.packets.capacity()), (0, 0));
    }

    #[tokio::test]
    async fn the_session_wakes_for_a_packet_queued_while_it_waits() {
        let arrivals = Arc::new(arrivals(1024));
        let waiting = tokio::spawn({
            let arrivals = arrivals.clone();
            async move { arrivals.pop().await.ack }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(arrivals.push(packet("[]"), Some(7)));
        let ack = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(ack.unwrap().unwrap(), Some(7));
    }

    #[test]
    fn decodes_event_packets() {
        let p = packet(r#"["message",{"a":1},"extra"]"#);
        assert_eq!(decode(&p).unwrap(), ("message".to_owned(), r#"{"a":1}"#));
        let p = packet(r#"["rooms"]"#);
        assert_eq!(decode(&p).unwrap(), ("rooms".to_owned(), "null"));
    }

    #[test]
    fn refuses_binary_attachments_naming_the_event() {
        let p = Packet::Str(
            r#"["message",{"_placeholder":true,"num":0}]"#.into(),
            Some([bytes::Bytes::from_static(b"\x01")].into()),
        );
        let (event, error) = decode(&p).unwrap_err();
        assert_eq!(event.as_deref(), Some("message"));
        assert_eq!(error.code, ErrorCode::BadRequest);
    }

    #[test]
    fn the_auth_payload_token_wins_over_the_query() {
        let query = vec![("token".to_owned(), "q".to_owned())];
        let auth = serde_json::json!({ "token": "a" });
        assert_eq!(token_of(Some(&auth), &query), Some("a"));
        assert_eq!(token_of(Some(&serde_json::json!({})), &query), Some("q"));
        assert_eq!(token_of(None, &query), Some("q"));
        assert_eq!(
            token_of(Some(&serde_json::json!({ "token": 5 })), &query),
            None
        );
        assert_eq!(token_of(None, &[]), None);
    }
}
