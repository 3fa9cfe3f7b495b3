//! Throwaway `nats-server` processes for the cluster tests: one server, or three joined by
//! routes, each on ports the server picks itself on loopback (`-p -1`, read back from its
//! `--ports_file_dir` file), so a test never meets the system service on 4222 nor another
//! test's servers. Every process is killed when its handle drops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{raw_request, WAIT};

/// One `nats-server` process.
pub struct NatsServer {
    child: Option<Child>,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The route listener, when the server is part of a cluster.
    pub cluster: Option<SocketAddr>,
    monitor: SocketAddr,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl NatsServer {
    /// A lone server.
    pub fn start() -> NatsServer {
        NatsServer::spawn(Vec::new())
    }

    /// `nats://127.0.0.1:<port>`, what `cluster.nats_url` takes.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    fn spawn(extra: Vec<String>) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = ["-a", "127.0.0.1", "-p", "-1", "-m", "-1"]
            .map(String::from)
            .to_vec();
        args.extend(extra);
        let (child, ports) = launch(dir.path(), &args);
        let first = |key: &str| -> Option<SocketAddr> {
            let url = ports[key].as_array()?.first()?.as_str()?;
            Some(host_port(url))
        };
        let addr = first("nats").expect("a client port");
        // From now on the same ports, so that a restart comes back where clients expect it.
        let pinned = pin_ports(&args, addr, first("cluster"));
        NatsServer {
            child: Some(child),
            addr,
            cluster: first("cluster"),
            monitor: first("monitoring").expect("a monitoring port"),
            dir,
            args: pinned,
        }
    }

    /// `kill -9`, then the same server again on the same ports: every connection breaks
    /// and every subscription on it is gone until its client subscribes again.
    pub fn restart(&mut self) {
        self.kill();
        self.resume();
    }

    /// Starts the killed server again on the same ports.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "kill the server first");
        let (child, _) = launch(self.dir.path(), &self.args);
        self.child = Some(child);
    }

    /// `kill -9`: no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's route count, from its monitoring endpoint.
    async fn routes(&self) -> u64 {
        serde_json::from_str::<Value>(&self.monitoring("/routez").await)
            .ok()
            .and_then(|v| v["num_routes"].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three servers joined by routes: a message published on one reaches subscribers on
/// the others.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three servers, the second and third routed to the first (the servers gossip
    /// the rest of the mesh), and waits until each has a route to both others.
    pub async fn start() -> NatsCluster {
        let name = format!("chat-test-{}", std::process::id());
        let cluster_args = |routes: Option<SocketAddr>| {
            let mut args = vec![
                "--cluster_name".to_owned(),
                name.clone(),
                "--cluster".to_owned(),
                "nats://127.0.0.1:-1".to_owned(),
            ];
            if let Some(seed) = routes {
                args.extend(["--routes".to_owned(), format!("nats://{seed}")]);
            }
            args
        };
        let seed = NatsServer::spawn(cluster_args(None));
        let seed_route = seed.cluster.expect("the seed's route port");
        let mut servers = vec![seed];
        for _ in 0..2 {
            servers.push(NatsServer::spawn(cluster_args(Some(seed_route))));
        }
        let deadline = Instant::now() + WAIT;
        for server in &servers {
            while server.routes().await < 2 {
                assert!(Instant::now() < deadline, "the nats cluster did not form");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        NatsCluster { servers }
    }
}

impl NatsCluster {
    /// Waits until every server knows of a subscriber to `subject`, on its own connections
    /// or across a route: a message published anywhere then reaches it.
    pub async fn wait_interest(&self, subject: &str) {
        let deadline = Instant::now() + WAIT;
        for server in &self.servers {
            while !server.has_interest(subject).await {
                assert!(
                    Instant::now() < deadline,
                    "{subject} never reached every server"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

impl NatsServer {
    /// `/connz`: the server's client connections, with their names.
    pub async fn connections(&self) -> String {
        self.monitoring("/connz").await
    }

    /// Whether `subject` is among the subscriptions of this server's clients or routes.
    async fn has_interest(&self, subject: &str) -> bool {
        let quoted = format!("\"{subject}\"");
        for path in ["/connz?subs=1", "/routez?subs=1"] {
            if self.monitoring(path).await.contains(&quoted) {
                return true;
            }
        }
        false
    }

    /// The body of a monitoring endpoint.
    async fn monitoring(&self, path: &str) -> String {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.monitor
        );
        let raw = raw_request(self.monitor, &head, b"").await;
        let text = String::from_utf8_lossy(&raw);
        text.split_once("\r\n\r\n")
            .map_or(String::new(), |(_, body)| body.to_owned())
    }
}

/// Starts `nats-server` with `args`, its ports file in `dir`; returns the process and the
/// ports it reports.
fn launch(dir: &Path, args: &[String]) -> (Child, Value) {
    let mut child = Command::new(nats_server_binary())
        .args(args)
        .arg("--ports_file_dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server (scripts/test installs it)");
    let file = dir.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(ports) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        {
            return (child, ports);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server exited with {status} before listening");
        }
        assert!(Instant::now() < deadline, "nats-server wrote no ports file");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Debian installs it in /usr/sbin, which is not on every user's PATH.
fn nats_server_binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/nats-server");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("nats-server")
    }
}

/// `nats://127.0.0.1:4567` → 127.0.0.1:4567.
fn host_port(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.parse().expect("host:port")
}

/// `args` with the random client and route ports replaced by the ones the server took.
fn pin_ports(args: &[String], client: SocketAddr, cluster: Option<SocketAddr>) -> Vec<String> {
    let mut pinned = args.to_vec();
    for (i, arg) in args.iter().enumerate() {
        if arg == "-p" {
            pinned[i + 1] = client.port().to_string();
        }
        if arg == "--cluster" {
            if let Some(cluster) = cluster {
                pinned[i + 1] = format!("nats://{cluster}");
            }
        }
    }
    pinned
}
