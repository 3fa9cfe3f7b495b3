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

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts with extra `CHAT_*` environment settings.
    pub fn start_with(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let env: Vec<_> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, addr) = spawn(dir.path(), &env);
        Server {
            child: Some(child),
            addr,
            dir,
            env,
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
        let url = format!("ws://{}/ws?token={token}", self.addr);
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--data", dir.to_str().unwrap(), "--bind", "127.0.0.1:0"])
        .env("CHAT_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
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
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("socket address");
    (child, addr)
}

/// A minimal HTTP/1.1 GET over a raw TCP stream (no client library needed).
pub async fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
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

pub fn data_dir_of(server: &Server) -> PathBuf {
    server.data_dir().to_path_buf()
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

pub mod load;

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
