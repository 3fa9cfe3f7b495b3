//! Cluster mode under test (`--nodes N`): a throwaway PostgreSQL and a nats-server on free
//! loopback ports, and N chat-server nodes on them, everything under one temp dir.
//!
//! The generator spreads its users with [`node_of`] so that the two users of every pair sit
//! on different nodes (from two nodes on): every message then crosses NATS, as between the
//! nodes behind a load balancer. With one node, cluster mode still stores in PostgreSQL
//! and fans out through NATS, so 1 node against the embedded server is the price of the
//! cluster's store and broker alone.
//!
//! Everything is stopped and the dir removed on drop, and also when the bench dies (Ctrl-C,
//! a panic that aborts, `kill -9`): the nodes and nats-server get SIGKILL from the kernel
//! when the bench exits (see [`crate::target::Target::start`]), and PostgreSQL, a daemon
//! that is not our child, is stopped by a watchdog outside the bench's process group,
//! which also removes the dir once the bench's end of a pipe closes.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::target::{self, Launch, Target};

/// The node that generator user `user` connects to, out of `nodes`: pair `k` (users `2k`
/// and `2k + 1`) goes to nodes `k` and `k + 1` (mod `nodes`), so partners never share a
/// node when there are two or more, and every node holds the same number of users.
pub fn node_of(user: usize, nodes: usize) -> usize {
    (user / 2 + user % 2) % nodes.max(1)
}

/// The servers of one run: one server (or the bare relay), a cluster, or a server the
/// user started (`--addr`), which the bench can only talk to.
pub enum Servers {
    One(Target),
    Cluster(Cluster),
    Given(SocketAddr),
}

/// CPU used by each part of the system under test: seconds so far, or µs per message;
/// and, in cluster mode, the nodes' store reads, which cost CPU on both sides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuUse {
    /// The chat-server processes, summed over the nodes.
    pub servers: f64,
    /// PostgreSQL and nats-server, in cluster mode.
    pub postgres: Option<f64>,
    pub nats: Option<f64>,
    /// The nodes' `chat_cluster_reads_total`, summed: reads so far, or reads per message
    /// (not µs). `None` outside cluster mode, or when a node did not answer `/metrics`.
    pub reads: Option<f64>,
}

impl CpuUse {
    /// µs (reads) per message between two readings.
    pub fn per_message_us(before: CpuUse, after: CpuUse, messages: u64) -> CpuUse {
        let messages = messages.max(1) as f64;
        let per = |b: f64, a: f64| (a - b) * 1e6 / messages;
        CpuUse {
            servers: per(before.servers, after.servers),
            postgres: before.postgres.zip(after.postgres).map(|(b, a)| per(b, a)),
            nats: before.nats.zip(after.nats).map(|(b, a)| per(b, a)),
            reads: before
                .reads
                .zip(after.reads)
                .map(|(b, a)| (a - b) / messages),
        }
    }
}

impl Servers {
    /// Where the generator connects; user `i` goes to `addrs[node_of(i, addrs.len())]`.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            Servers::One(target) => vec![target.addr],
            Servers::Cluster(cluster) => cluster.addrs(),
            Servers::Given(addr) => vec![*addr],
        }
    }

    /// CPU seconds used so far; `None` for a server the bench did not start.
    pub fn cpu(&self) -> Option<CpuUse> {
        match self {
            Servers::One(target) => Some(CpuUse {
                servers: target::cpu_secs(target.pid()),
                postgres: None,
                nats: None,
                reads: None,
            }),
            Servers::Cluster(cluster) => Some(CpuUse {
                servers: cluster
                    .nodes
                    .iter()
                    .map(|n| target::cpu_secs(n.pid()))
                    .sum(),
                postgres: Some(cluster.postgres_cpu_secs()),
                nats: Some(cluster.nats_cpu_secs()),
                reads: cluster.reads().ok(),
            }),
            Servers::Given(_) => None,
        }
    }

    /// The peak RSS of each server process so far, in bytes.
    pub fn peak_rss(&self) -> Vec<u64> {
        match self {
            Servers::One(target) => vec![target::peak_rss_bytes(target.pid())],
            Servers::Cluster(cluster) => cluster
                .nodes
                .iter()
                .map(|n| target::peak_rss_bytes(n.pid()))
                .collect(),
            Servers::Given(_) => Vec::new(),
        }
    }

    /// The cluster's repair counters (see [`Cluster::repairs`]); empty for one server.
    pub fn repairs(&self) -> Result<BTreeMap<String, f64>, String> {
        match self {
            Servers::Cluster(cluster) => cluster.repairs(),
            _ => Ok(BTreeMap::new()),
        }
    }

    /// Stops what the bench started: a lone server gracefully, a cluster at once.
    pub fn stop(self) {
        if let Servers::One(target) = self {
            target.stop();
        }
    }
}

/// The database user and database the nodes use.
const DB: &str = "chat";

/// How long PostgreSQL and nats-server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running cluster: PostgreSQL, one nats-server, the nodes.
pub struct Cluster {
    pub nodes: Vec<Target>,
    /// How each node was started, for [`Cluster::restart_nodes`].
    launches: Vec<Launch>,
    nats: Option<Child>,
    /// The postmaster, whose children are the backends serving the nodes.
    postmaster: u32,
    /// Closing it makes the watchdog stop PostgreSQL and remove the dir.
    watchdog: Option<(Child, ChildStdin)>,
}

impl Cluster {
    /// Starts PostgreSQL, nats-server and `nodes` nodes, each launched by `node` on its
    /// own data dir, one after the other: the first applies the schema migrations.
    pub fn start(nodes: usize, node: impl Fn(&Path) -> Launch) -> Result<Cluster, String> {
        let pg = PgCommands::new()?;
        let dir = target::temp_dir("cluster");
        let pg_dir = dir.join("pg");
        let data = pg_dir.join("data");
        let watchdog = start_watchdog(&dir, pg.stop(&data));
        let watchdog = match watchdog {
            Ok(watchdog) => watchdog,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        // From here on, an error drops the cluster built so far, and the watchdog cleans up.
        let mut cluster = Cluster {
            nodes: Vec::new(),
            launches: Vec::new(),
            nats: None,
            postmaster: 0,
            watchdog: Some(watchdog),
        };
        std::fs::create_dir(&pg_dir).map_err(|e| format!("{}: {e}", pg_dir.display()))?;
        if pg.run_as.is_some() {
            // The postgres user must reach its subdirectory, and own it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            run(Command::new("chown").arg("postgres:postgres").arg(&pg_dir))?;
        }
        let data_str = data.display().to_string();
        run(pg.command("initdb").args([
            "-D",
            &data_str,
            "-U",
            DB,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            // Thrown away after the run: only the server's commits need to be durable.
            "--no-sync",
        ]))?;
        let port = free_port()?;
        let options = format!(
            "-k {} -p {port} -c listen_addresses=127.0.0.1 -c max_connections=200",
            pg_dir.display()
        );
        let log = pg_dir.join("postgres.log").display().to_string();
        let timeout = START_TIMEOUT.as_secs().to_string();
        let started = run(pg.command("pg_ctl").args([
            "-D", &data_str, "-o", &options, "-l", &log, "-w", "-t", &timeout, "start",
        ]));
        if let Err(e) = started {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{e}\nPostgreSQL's log:\n{log}"));
        }
        cluster.postmaster = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse().ok())
            .ok_or("PostgreSQL wrote no readable postmaster.pid")?;
        let port_str = port.to_string();
        let socket = pg_dir.display().to_string();
        run(pg
            .command("createdb")
            .args(["-h", &socket, "-p", &port_str, "-U", DB, DB]))?;
        let postgres_url = format!("postgres://{DB}@127.0.0.1:{port}/{DB}");

        let nats_dir = dir.join("nats");
        std::fs::create_dir(&nats_dir).map_err(|e| format!("{}: {e}", nats_dir.display()))?;
        let (nats, nats_addr) = start_nats(&nats_dir)?;
        cluster.nats = Some(nats);

        for i in 0..nodes {
            let node_dir = dir.join(format!("node-{i}"));
            std::fs::create_dir(&node_dir).map_err(|e| format!("{}: {e}", node_dir.display()))?;
            let mut launch = node(&node_dir);
            launch.env.extend([
                ("CHAT_CLUSTER_POSTGRES_URL".to_owned(), postgres_url.clone()),
                (
                    "CHAT_CLUSTER_NATS_URL".to_owned(),
                    format!("nats://{nats_addr}"),
                ),
                ("CHAT_CLUSTER_NODE_NAME".to_owned(), format!("node-{i}")),
            ]);
            let target = Target::start(&launch, None)?;
            target::wait_healthy(target.addr)?;
            cluster.nodes.push(target);
            cluster.launches.push(launch);
        }
        Ok(cluster)
    }

    /// Stops every node (SIGTERM, so the duties lock is handed on at once), then starts
    /// them again on the same PostgreSQL and nats-server, each on its own data dir.
    pub fn restart_nodes(&mut self) -> Result<(), String> {
        for node in self.nodes.drain(..) {
            node.stop();
        }
        for launch in &self.launches {
            let target = Target::start(launch, None)?;
            target::wait_healthy(target.addr)?;
            self.nodes.push(target);
        }
        Ok(())
    }

    /// The nodes' `chat_cluster_reads_total`, summed: the fan-out's reads of a room from
    /// PostgreSQL (notices from other nodes, gaps, catch-ups).
    pub fn reads(&self) -> Result<f64, String> {
        let mut sum = 0.0;
        for node in &self.nodes {
            sum += target::metric(node.addr, "chat_cluster_reads_total")?;
        }
        Ok(sum)
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// The nodes' `chat_cluster_repairs_total` by kind, summed: how often a node read
    /// from PostgreSQL what NATS did not bring, or dropped a duplicate.
    pub fn repairs(&self) -> Result<BTreeMap<String, f64>, String> {
        let mut sum = BTreeMap::new();
        for node in &self.nodes {
            for (labels, value) in target::metric_series(node.addr, "chat_cluster_repairs_total")? {
                *sum.entry(labels).or_insert(0.0) += value;
            }
        }
        Ok(sum)
    }

    /// CPU seconds used so far by PostgreSQL: the postmaster, the children it has reaped,
    /// and the live ones (the nodes' backends, the WAL writer, the checkpointer, …).
    pub fn postgres_cpu_secs(&self) -> f64 {
        let ticks = target::proc_ticks(self.postmaster).map_or(0, |t| t.own + t.children)
            + children_of(self.postmaster)
                .into_iter()
                .filter_map(target::proc_ticks)
                .map(|t| t.own)
                .sum::<u64>();
        target::ticks_to_secs(ticks)
    }

    pub fn nats_cpu_secs(&self) -> f64 {
        self.nats.as_ref().map_or(0.0, |n| target::cpu_secs(n.id()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The nodes first, so that none sees its store or broker vanish under it.
        self.nodes.clear();
        if let Some(mut nats) = self.nats.take() {
            let _ = nats.kill();
            let _ = nats.wait();
        }
        if let Some((mut watchdog, pipe)) = self.watchdog.take() {
            drop(pipe);
            let _ = watchdog.wait();
        }
    }
}

/// The PostgreSQL programs, run as the `postgres` user when the bench runs as root
/// (initdb refuses root), as `tests/common/postgres.rs` does.
struct PgCommands {
    bin: PathBuf,
    run_as: Option<&'static str>,
}

impl PgCommands {
    fn new() -> Result<PgCommands, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as = (unsafe { libc::geteuid() } == 0).then_some("postgres");
        Ok(PgCommands {
            bin: pg_bin_dir()?,
            run_as,
        })
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// `pg_ctl stop -m immediate`: a thrown-away cluster needs no clean shutdown.
    fn stop(&self, data: &Path) -> Command {
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(data)
            .args(["-m", "immediate", "-w", "stop"]);
        c
    }
}

/// A process in its own process group (so Ctrl-C in the terminal does not reach it) that
/// waits for its stdin to close, which happens when the bench drops the pipe or exits in
/// any way, then runs `stop` and removes `dir`.
fn start_watchdog(dir: &Path, stop: Command) -> Result<(Child, ChildStdin), String> {
    let mut child = Command::new("sh")
        .args([
            "-c",
            r#"cat >/dev/null; "$@" >/dev/null 2>&1; rm -rf "$BENCH_DIR""#,
        ])
        .arg("sh")
        .arg(stop.get_program())
        .args(stop.get_args())
        .env("BENCH_DIR", dir)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the cleanup watchdog: {e}"))?;
    let pipe = child.stdin.take().expect("piped stdin");
    Ok((child, pipe))
}

/// `nats-server` on a port it picks on loopback, read back from its ports file.
fn start_nats(dir: &Path) -> Result<(Child, SocketAddr), String> {
    let program = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nats-server"));
    let mut command = Command::new(&program);
    command
        .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    target::die_with_parent(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let file = dir.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let ports = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        if let Some(url) = ports.as_ref().and_then(|p| p["nats"][0].as_str()) {
            let addr = url
                .rsplit_once("://")
                .map_or(url, |(_, a)| a)
                .parse()
                .map_err(|_| format!("nats-server reported {url:?}"))?;
            return Ok((child, addr));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("nats-server exited with {status} before listening"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("nats-server wrote no ports file".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion; its output in the error when it fails.
fn run(command: &mut Command) -> Result<(), String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{:?} {:?} failed ({}): {}{}",
        command.get_program(),
        command.get_args().collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// `$PG_BIN`, else the newest Debian `/usr/lib/postgresql/<version>/bin`.
fn pg_bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .ok_or_else(|| {
            "no PostgreSQL in /usr/lib/postgresql (install Debian's postgresql, or set \
             PG_BIN)"
                .into()
        })
}

/// A port nothing listens on now (the postmaster binds it a moment later).
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// The live processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| target::proc_ticks(pid).is_some_and(|t| t.parent == parent))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::node_of;

    #[test]
    fn partners_sit_on_different_nodes_and_nodes_share_the_users() {
        for nodes in 2..=5 {
            let mut per_node = vec![0; nodes];
            for user in 0..1000 {
                let (mine, partner) = (node_of(user, nodes), node_of(user ^ 1, nodes));
                assert!(mine < nodes);
                assert_ne!(mine, partner, "user {user} and partner share node {mine}");
                per_node[mine] += 1;
            }
            let (min, max) = (per_node.iter().min(), per_node.iter().max());
            assert!(
                max.unwrap() - min.unwrap() <= 2,
                "{nodes} nodes: {per_node:?}"
            );
        }
        assert!((0..10).all(|user| node_of(user, 1) == 0));
        assert_eq!(
            (0..6).map(|u| node_of(u, 3)).collect::<Vec<_>>(),
            [0, 1, 1, 2, 2, 0]
        );
    }
}
