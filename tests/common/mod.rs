//! Test harness: the real `chat-server` binary on an ephemeral loopback port with a temp
//! data dir, and a real WebSocket client that talks to it like a front end would.
#![allow(dead_code)] // each test crate uses a different part of the harness

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_server::auth::Auth;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-for-integration-tests";
/// How long a test waits for a frame that must come.
pub const WAIT: Duration = Duration::from_secs(10);

/// Seconds since the Unix epoch, for hand-made token claims.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with exactly these claims, signed with the test servers' secret (for expired
/// or malformed tokens, which `Auth::mint` cannot make).
pub fn token_with_claims(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// The server's own nats-server, with `CHAT_TEST_STORE=nats`.
    _nats: Option<nats::NatsServer>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts with extra `CHAT_*` environment settings.
    pub fn start_with(env: &[(&str, &str)]) -> Server {
        Server::start_in(tempfile::tempdir().expect("temp dir"), env)
    }

    /// Starts on a data directory prepared beforehand (an imported store, say).
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Server {
        let mut env: Vec<_> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let nats = store_under_test(&mut env);
        let (child, addr) = spawn(dir.path(), &env);
        Server {
            child: Some(child),
            addr,
            dir,
            env,
            _nats: nats,
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// SIGTERM, then wait for the process to exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let mut child = self.child.take().expect("server running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("send SIGTERM");
        assert!(status.success());
        child.wait().expect("reap").success()
    }

    /// Starts the binary again on the same data dir (on a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        let (child, addr) = spawn(self.dir.path(), &self.env);
        self.child = Some(child);
        self.addr = addr;
    }

    pub fn token(&self, user: &str) -> String {
        Auth::new(SECRET.as_bytes()).mint(user, None, Duration::from_secs(3600))
    }

    pub fn named_token(&self, user: &str, name: &str) -> String {
        Auth::new(SECRET.as_bytes()).mint(user, Some(name), Duration::from_secs(3600))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn connect(&self, user: &str) -> Client {
        self.connect_token(user, &self.token(user)).await
    }

    pub async fn connect_token(&self, user: &str, token: &str) -> Client {
        connect_at(self.addr, user, token).await
    }

    /// The HTTP status of a handshake that is expected to fail, with its JSON body.
    pub async fn refused_handshake(
        &self,
        path_and_query: &str,
        bearer: Option<&str>,
    ) -> (u16, Value) {
        let mut request = format!("ws://{}{}", self.addr, path_and_query)
            .into_client_request()
            .unwrap();
        if let Some(token) = bearer {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| serde_json::from_slice(b).expect("JSON error body"))
                    .unwrap_or(Value::Null);
                (status, body)
            }
            Err(e) => panic!("unexpected handshake error {e}"),
            Ok(_) => panic!("handshake unexpectedly succeeded"),
        }
    }

    /// A GET with a bearer token; returns status and JSON body.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        http_get(self.addr, path, token).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(dir: &Path, env: &[(String, String)]) -> (Child, SocketAddr) {
    spawn_at(dir, env, "127.0.0.1:0")
}

fn spawn_at(dir: &Path, env: &[(String, String)], bind: &str) -> (Child, SocketAddr) {
    try_spawn_at(dir, env, bind).unwrap_or_else(|e| panic!("chat-server on {bind}: {e}"))
}

/// Starts the binary; an error when it exits instead of printing its listening line.
fn try_spawn_at(
    dir: &Path,
    env: &[(String, String)],
    bind: &str,
) -> Result<(Child, SocketAddr), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--data", dir.to_str().unwrap(), "--bind", bind])
        .env("CHAT_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        // Tests send faster than a person types; rate-limit tests set their own rates.
        .env("CHAT_LIMITS_SEND_BURST", "100000")
        .env("CHAT_LIMITS_REQUEST_BURST", "100000")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start chat-server");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    match line.trim().strip_prefix("listening on http://") {
        Some(addr) => Ok((child, addr.parse().expect("socket address"))),
        None => {
            let status = child.wait().expect("reap");
            Err(format!("exited with {status} before listening"))
        }
    }
}

/// Sends one HTTP/1.1 request (`head` ends with its blank line) over a fresh connection
/// and reads the response until the server closes it (no client library needed). A reset
/// after the response, as when the server refuses a body it did not read, is not an error.
pub async fn raw_request(addr: SocketAddr, head: &str, body: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "no complete response in time");
    raw
}

/// A minimal HTTP/1.1 GET; returns the status and the JSON body.
pub async fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, Value) {
    http_call(addr, "GET", path, token).await
}

/// A minimal bodiless HTTP/1.1 request with any method; returns the status and JSON body.
pub async fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    status_and_json(raw_request(addr, &head, b"").await)
}

/// A minimal HTTP/1.1 request without a body, any method; returns the status and the
/// JSON body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    status_and_json(raw_request(addr, &head, b"").await)
}

/// The status and JSON body (or the text, when it is not JSON) of a raw HTTP response.
fn status_and_json(raw: Vec<u8>) -> (u16, Value) {
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, json)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// A plain-dialect connection to whatever server listens on `addr` (a node that a test
/// composed in-process, say).
pub async fn connect_at(addr: SocketAddr, user: &str, token: &str) -> Client {
    let url = format!("ws://{addr}/ws?token={token}");
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket handshake");
    Client {
        ws,
        user: user.to_owned(),
        buffered: VecDeque::new(),
        next_ack: 1,
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub user: String,
    /// Frames that arrived while waiting for something else.
    buffered: VecDeque<Value>,
    next_ack: u64,
}

impl Client {
    pub async fn send_json(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send frame");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send frame");
    }

    /// Sends an event without `ack`.
    pub async fn emit(&mut self, event: &str, data: Value) {
        self.send_json(json!({ "event": event, "data": data }))
            .await;
    }

    /// Sends an event with an `ack` and returns the ack reply's `data`, keeping every
    /// other frame that arrives meanwhile for later `recv`s.
    pub async fn request(&mut self, event: &str, data: Value) -> Value {
        let ack = self.next_ack;
        self.next_ack += 1;
        self.send_json(json!({ "event": event, "data": data, "ack": ack }))
            .await;
        self.wait_ack(json!(ack)).await
    }

    pub async fn wait_ack(&mut self, ack: Value) -> Value {
        loop {
            let frame = self.next_frame().await;
            if frame["event"] == "ack" && frame["ack"] == ack {
                return frame["data"].clone();
            }
            self.buffered.push_back(frame);
        }
    }

    /// Sends a chat message with an ack and returns the ack reply.
    pub async fn send_message(&mut self, room: &str, text: &str) -> Value {
        let user = self.user.clone();
        self.request(
            "message",
            json!({ "userId": user, "roomId": room, "message": text }),
        )
        .await
    }

    /// The next frame (buffered first).
    pub async fn recv(&mut self) -> Value {
        match self.buffered.pop_front() {
            Some(frame) => frame,
            None => self.next_frame().await,
        }
    }

    /// The next frame of the named event, skipping none: fails if another comes first.
    pub async fn recv_event(&mut self, event: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["event"], event, "expected {event}, got {frame}");
        frame["data"].clone()
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        assert!(self.buffered.is_empty(), "unexpected {:?}", self.buffered);
        match tokio::time::timeout(quiet, self.ws.next()).await {
            Err(_) => {}
            Ok(frame) => panic!("expected silence, got {frame:?}"),
        }
    }

    /// The next raw message from the socket (for close frames).
    pub async fn recv_raw(&mut self) -> Option<Message> {
        tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("a frame in time")
            .map(|r| r.expect("read frame"))
    }

    /// Skips events until the connection's close frame, and returns its code and reason.
    pub async fn close_frame(
        &mut self,
    ) -> (
        tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode,
        String,
    ) {
        loop {
            match self.recv_raw().await {
                Some(Message::Close(Some(frame))) => return (frame.code, frame.reason.to_string()),
                Some(Message::Text(_) | Message::Ping(_) | Message::Pong(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    async fn next_frame(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no frame within {WAIT:?}", self.user))
                .expect("connection open")
                .expect("read frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// The `messages` request's message ids, newest first.
pub fn ids(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

/// The folder of the JavaScript test clients, with its npm packages installed (`npm ci`
/// once per test binary, when `scripts/test` has not already done it).
pub fn js_dir() -> PathBuf {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    INSTALL.call_once(|| {
        if !dir.join("node_modules").is_dir() {
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .status()
                .expect("npm is needed for the JavaScript client tests");
            assert!(status.success(), "npm ci failed in {}", dir.display());
        }
    });
    dir
}

/// Reads a node process's output to the end, calling `on_line` for each stdout line, and
/// asserts that it exited 0 (printing all it said otherwise); returns its stdout. A
/// watchdog kills it after `deadline`, so a hung client fails the test instead of hanging
/// the suite.
pub fn finish_node(mut node: Child, deadline: Duration, mut on_line: impl FnMut(&str)) -> String {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let pid = node.id().to_string();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(deadline).is_err() {
            eprintln!("node still running after {deadline:?}; killing it");
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    });
    let stderr = node.stderr.take().expect("node's stderr is piped");
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut stdout = String::new();
    for line in BufReader::new(node.stdout.take().expect("node's stdout is piped")).lines() {
        let line = line.expect("node's stdout");
        on_line(&line);
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let status = node.wait().expect("node exits");
    let _ = done.send(());
    watchdog.join().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(
        status.success(),
        "node failed ({status}):\n{stdout}\n{stderr}"
    );
    stdout
}

impl Server {
    /// The server process's id (for /proc/<pid>/status and the like).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// The server's resident memory in KiB, from /proc/<pid>/status.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }

    /// A plain-dialect connection whose WebSocket handshake is done by hand over a raw
    /// socket, so nothing answers pings or reads unless the test does. `recv_buffer`
    /// shrinks the socket's receive buffer (before connecting, so the window is small).
    pub async fn raw_ws(&self, user: &str, recv_buffer: Option<u32>) -> RawWs {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut stream = socket.connect(self.addr).await.expect("connect");
        let request = format!(
            "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            self.token(user),
            self.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // Byte by byte, so that nothing after the response head is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
                .await
                .expect("handshake response in time")
                .unwrap();
            assert_eq!(n, 1, "connection closed during the handshake");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "handshake refused: {head}"
        );
        RawWs {
            stream,
            buffer: Vec::new(),
            last_fragments: Vec::new(),
            partial: None,
        }
    }
}

/// A server-to-client WebSocket frame as read off a raw socket.
#[derive(Debug)]
pub enum RawFrame {
    Text(String),
    Ping,
    /// The close code, if the frame had one.
    Close(Option<u16>),
    Other(u8),
}

/// A WebSocket client reduced to a socket: it reads only when asked and never answers.
pub struct RawWs {
    pub stream: TcpStream,
    buffer: Vec<u8>,
    /// The payload sizes of the frames that carried the last text message, in order
    /// (one entry when it was not fragmented).
    pub last_fragments: Vec<usize>,
    /// A fragmented text message still arriving, and its fragments' sizes.
    partial: Option<(Vec<u8>, Vec<usize>)>,
}

impl RawWs {
    /// The next message, fragments reassembled (control frames between them come first),
    /// or `None` once the server closed the TCP connection.
    pub async fn next_frame(&mut self) -> Option<RawFrame> {
        use tokio::io::AsyncReadExt;
        loop {
            let frame = parse_server_frame(&self.buffer).map(|(f, o, p, u)| (f, o, p.to_vec(), u));
            if let Some((fin, opcode, payload, used)) = frame {
                self.buffer.drain(..used);
                let text = match (opcode, self.partial.take()) {
                    (0x1, None) => (payload.to_vec(), vec![payload.len()]),
                    (0x0, Some((mut text, mut sizes))) => {
                        text.extend_from_slice(&payload);
                        sizes.push(payload.len());
                        (text, sizes)
                    }
                    (0x1 | 0x0, partial) => panic!("continuation out of place: {partial:?}"),
                    (0x8, partial) => {
                        self.partial = partial;
                        let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                        return Some(RawFrame::Close(code));
                    }
                    (0x9, partial) => {
                        self.partial = partial;
                        return Some(RawFrame::Ping);
                    }
                    (other, partial) => {
                        self.partial = partial;
                        return Some(RawFrame::Other(other));
                    }
                };
                if !fin {
                    self.partial = Some(text);
                    continue;
                }
                self.last_fragments = text.1;
                return Some(RawFrame::Text(
                    String::from_utf8(text.0).expect("UTF-8 text"),
                ));
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// One unmasked frame from the start of `bytes`: its FIN bit, opcode, payload, and length.
fn parse_server_frame(bytes: &[u8]) -> Option<(bool, u8, &[u8], usize)> {
    let (&b0, &b1) = (bytes.first()?, bytes.get(1)?);
    let (len, at) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = bytes.get(at..at + len)?;
    Some((b0 & 0x80 != 0, b0 & 0x0f, payload, at + len))
}

/// A GET over a raw socket that also sends `body`, declaring its length; returns the
/// status and the JSON body of the answer.
pub async fn http_get_with_body(
    addr: SocketAddr,
    path: &str,
    token: &str,
    body: &[u8],
) -> (u16, Value) {
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    status_and_json(raw_request(addr, &head, body).await)
}

impl Server {
    /// Starts the binary again on the same data dir and the same address as before, so
    /// clients that reconnect to the old URL find it (Socket.IO, a browser tab). Retries
    /// the bind for a few seconds while the old socket is released.
    pub fn restart_same_port(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match try_spawn_at(self.dir.path(), &self.env, &self.addr.to_string()) {
                Ok((child, _)) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("restart on {}: {e}; retrying", self.addr);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot restart on {}: {e}", self.addr),
            }
        }
    }
}
/// A GET whose raw status line, headers and body are returned as text (to check
/// content types and other headers).
pub async fn http_get_raw(addr: SocketAddr, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8(raw_request(addr, &request, b"").await).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    (head.to_ascii_lowercase(), body.to_owned())
}
pub mod dump;
pub mod held;
pub mod load;
pub mod metrics;
pub mod postgres;
pub mod receiver;

pub mod nats;

// ---- The same tests against cluster mode's store (issue 17) ----

/// The environment variable that picks the store every `Server` runs on: unset or
/// `redb` for the embedded store, `postgres` for cluster mode's PostgreSQL store with the
/// in-process fan-out (one node), `nats` for PostgreSQL with the NATS fan-out (one node
/// of a cluster: every event goes through the fan-out tasks that serve a cluster).
pub const TEST_STORE: &str = "CHAT_TEST_STORE";

/// Whether this run's servers store in PostgreSQL (`CHAT_TEST_STORE=postgres` or `nats`).
/// Tests about the embedded store itself (its files, backups, crash trials) check this
/// and return, saying why.
pub fn cluster_mode() -> bool {
    match std::env::var(TEST_STORE).as_deref() {
        Err(_) | Ok("redb") => false,
        Ok("postgres") | Ok("nats") => true,
        Ok(other) => panic!("{TEST_STORE}={other:?}: expected \"redb\", \"postgres\" or \"nats\""),
    }
}

/// Whether this run's servers also fan out over NATS (`CHAT_TEST_STORE=nats`).
pub fn nats_mode() -> bool {
    std::env::var(TEST_STORE).as_deref() == Ok("nats")
}

/// The setting that puts a server in cluster mode, on this PostgreSQL database.
const URL: &str = "CHAT_CLUSTER_POSTGRES_URL";

/// One throwaway PostgreSQL per test binary, started on first use; it is stopped and
/// deleted when the binary exits (a static is never dropped).
static TEST_CLUSTER: std::sync::LazyLock<postgres::TestPostgres> = std::sync::LazyLock::new(|| {
    let pg = postgres::TestPostgres::start();
    pg.stop_at_exit();
    pg
});

/// In cluster mode, gives a new server a fresh database of its own (tests stay
/// independent); the URL goes into the server's saved environment, so `restart`,
/// `restart_same_port` and a start after `kill9` find the same data. A test that
/// already names a database (the cluster tests) keeps it. With `nats`, the server also
/// gets a nats-server of its own (NATS subjects are per user, so servers of different
/// tests sharing one would hear each other's users), returned to live as long as it.
fn store_under_test(env: &mut Vec<(String, String)>) -> Option<nats::NatsServer> {
    if !cluster_mode() || env.iter().any(|(k, _)| k == URL) {
        return None;
    }
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let url = TEST_CLUSTER.create_database(&format!("server_{n}"));
    env.push((URL.to_owned(), url));
    if !nats_mode() {
        return None;
    }
    let nats = nats::NatsServer::start();
    env.push(("CHAT_CLUSTER_NATS_URL".to_owned(), nats.url()));
    Some(nats)
}

impl Server {
    /// The PostgreSQL database this server stores in, in cluster mode; `None` on redb.
    pub fn postgres_url(&self) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == URL)
            .map(|(_, v)| v.as_str())
    }
}

/// Polls `GET /healthz` until it answers 200 and returns how long that took; panics after
/// `within`. Connection errors count as "not yet".
pub async fn wait_healthy(addr: SocketAddr, within: Duration) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    loop {
        if let Ok(mut stream) = TcpStream::connect(addr).await {
            let request =
                format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let mut head = [0u8; 12];
            if stream.write_all(request.as_bytes()).await.is_ok()
                && stream.read_exact(&mut head).await.is_ok()
                && head.starts_with(b"HTTP/1.1 200")
            {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < within,
            "/healthz not 200 within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
