//! Webhook figures. [`Receiver`] is a webhook receiver in the bench process that answers
//! every POST with one status: `--webhook 500` points every server the bench starts at one
//! that always fails (the send latency a failing hook costs), `--webhook 204` at a fast
//! one. The `webhook-drain` scenario measures how many events per second a server (with
//! `--nodes N`, a cluster) posts from a full outbox to a fast receiver.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_server::auth::Auth;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Dialect};
use crate::cluster::Cluster;
use crate::target::{self, Launch, Target};

/// The secret every bench server signs with; the receiver does not check signatures.
const SECRET: &str = "chat-bench-webhook";

/// The environment that points a server at `addr`, for every message (not only offline
/// recipients: every bench user is connected, so the default would post nothing).
pub fn server_env(addr: SocketAddr) -> Vec<(String, String)> {
    vec![
        ("CHAT_WEBHOOK_URL".into(), format!("http://{addr}/hook")),
        ("CHAT_WEBHOOK_SECRET".into(), SECRET.into()),
        ("CHAT_WEBHOOK_OFFLINE_ONLY".into(), "false".into()),
    ]
}

/// A receiver answering `status` to everything, on its own thread and runtime so that it
/// does not share the generator's. Stops with the bench.
pub struct Receiver {
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
}

impl Receiver {
    pub fn start(bind: SocketAddr, status: u16) -> Result<Receiver, String> {
        let status = StatusCode::from_u16(status).map_err(|e| e.to_string())?;
        let listener = std::net::TcpListener::bind(bind).map_err(|e| format!("{bind}: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let requests = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&requests);
        std::thread::Builder::new()
            .name("webhook-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the receiver");
                runtime.block_on(serve(listener, status, counter));
            })
            .map_err(|e| e.to_string())?;
        Ok(Receiver { addr, requests })
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn serve(listener: std::net::TcpListener, status: StatusCode, requests: Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
    while let Ok((stream, _)) = listener.accept().await {
        let requests = Arc::clone(&requests);
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                requests.fetch_add(1, Ordering::Relaxed);
                let response = Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::new()))
                    .expect("a response");
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What one drain run measured.
pub struct Drain {
    pub events: usize,
    pub secs: f64,
    pub events_per_sec: f64,
    /// CPU of the restarted server(s), start included, per event; and PostgreSQL's over
    /// the same time, in cluster mode.
    pub server_cpu_us_per_event: f64,
    pub postgres_cpu_us_per_event: Option<f64>,
}

/// A closed loopback port: the hook's, until the drain starts a receiver on it.
fn closed_port() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())
}

/// Fills a server's outbox with `messages` events while its hook's port is closed, stops
/// it, then starts a 204 receiver on that port and the server again, and times the outbox
/// down to empty (from the restart, so the server's start is counted against it).
pub fn drain(
    launch: &Launch,
    data_dir: std::path::PathBuf,
    auth: &Auth,
    users: usize,
    messages: usize,
) -> Result<Drain, String> {
    let port = closed_port()?;
    let mut launch = launch.clone();
    launch.env.extend(server_env(port));
    let server = Target::start(&launch, None)?;
    target::wait_healthy(server.addr)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(fill(server.addr, auth, users, messages))?;
    let queued = target::metric(server.addr, "chat_webhook_queued")?;
    if queued < messages as f64 {
        return Err(format!("only {queued} of {messages} events queued"));
    }
    server.stop();

    let receiver = Receiver::start(port, 204)?;
    let started = Instant::now();
    let server = Target::start(&launch, Some(data_dir))?;
    target::wait_healthy(server.addr)?;
    let deadline = started + Duration::from_secs(600);
    loop {
        if target::metric(server.addr, "chat_webhook_queued")? == 0.0 {
            break;
        }
        if Instant::now() > deadline {
            return Err("the outbox did not drain within 600 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = target::cpu_secs(server.pid());
    server.stop();
    drained(&receiver, messages, secs, cpu, None)
}

/// [`drain`] against a cluster of `nodes` (launched by `node`): filled through the first
/// node, then every node restarted with the receiver up, and timed until the node holding
/// the duties sees its outbox empty.
pub fn drain_cluster(
    nodes: usize,
    node: impl Fn(&std::path::Path) -> Launch,
    auth: &Auth,
    users: usize,
    messages: usize,
) -> Result<Drain, String> {
    let port = closed_port()?;
    let mut cluster = Cluster::start(nodes, |dir| {
        let mut launch = node(dir);
        launch.env.extend(server_env(port));
        launch
    })?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(fill(cluster.nodes[0].addr, auth, users, messages))?;
    // What the nodes report together is the outbox however they split it: the committing
    // node's own count, or the duties holder's count of the whole (after its next poll).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut queued = 0.0;
        for node in &cluster.nodes {
            queued += target::metric(node.addr, "chat_webhook_queued")?;
        }
        if queued >= messages as f64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {queued} of {messages} events queued"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let receiver = Receiver::start(port, 204)?;
    let started = Instant::now();
    let postgres_before = cluster.postgres_cpu_secs();
    cluster.restart_nodes()?;
    let deadline = started + Duration::from_secs(600);
    'drained: loop {
        for node in &cluster.nodes {
            if target::metric(node.addr, "chat_duties_running")? == 1.0
                && target::metric(node.addr, "chat_webhook_queued")? == 0.0
            {
                break 'drained;
            }
        }
        if Instant::now() > deadline {
            return Err("the outbox did not drain within 600 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cluster
        .nodes
        .iter()
        .map(|n| target::cpu_secs(n.pid()))
        .sum();
    let postgres = cluster.postgres_cpu_secs() - postgres_before;
    drop(cluster);
    drained(&receiver, messages, secs, cpu, Some(postgres))
}

/// The drain's figures, once the receiver is known to have had every event.
fn drained(
    receiver: &Receiver,
    messages: usize,
    secs: f64,
    server_cpu_secs: f64,
    postgres_cpu_secs: Option<f64>,
) -> Result<Drain, String> {
    if receiver.requests() < messages as u64 {
        return Err(format!(
            "the receiver got {} of {messages} events",
            receiver.requests()
        ));
    }
    let per_event = |secs: f64| secs * 1e6 / messages.max(1) as f64;
    Ok(Drain {
        events: messages,
        secs,
        events_per_sec: messages as f64 / secs,
        server_cpu_us_per_event: per_event(server_cpu_secs),
        postgres_cpu_us_per_event: postgres_cpu_secs.map(per_event),
    })
}

/// `users` even-numbered users each send their share of `messages` to their partner (never
/// connected), reading everything the server sends them, until all are stored.
async fn fill(addr: SocketAddr, auth: &Auth, users: usize, messages: usize) -> Result<(), String> {
    let senders: Vec<usize> = (0..users).map(|i| 2 * i).collect();
    let mut tasks = Vec::new();
    for (n, &i) in senders.iter().enumerate() {
        let id = client::user(i);
        let token = auth.mint(&id, None, Duration::from_secs(3600));
        let ws = client::connect(addr, &token, &id, None, 64 * 1024, Dialect::Plain).await?;
        let share = messages / users + usize::from(n < messages % users);
        let (mut sink, mut stream) = ws.split();
        tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        let room = client::room_of(i);
        tasks.push(tokio::spawn(async move {
            for seq in 0..share {
                let frame = client::message_frame(&id, &room, &format!("w{seq}"), None);
                sink.send(Message::text(frame))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(sink)
        }));
    }
    let mut sinks = Vec::new();
    for task in tasks {
        sinks.push(task.await.map_err(|e| e.to_string())??);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while target::metric(addr, "chat_messages_stored_total")? < messages as f64 {
        if Instant::now() > deadline {
            return Err("the messages were not all stored within 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(sinks);
    Ok(())
}
