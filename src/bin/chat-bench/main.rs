//! `chat-bench`: the reproducible load harness behind BENCHMARKS.md.
//!
//! It starts `chat-server` itself (or targets a given loopback address), mints its own
//! tokens with the server's secret, runs each scenario `--runs` times, prints one summary
//! line per scenario (median, lowest–highest) and writes every figure to a JSON file.
//! Scenarios: `throughput`, `latency`, `idle` and `idle-socketio` (the same measure for
//! each dialect), `restart`, `ceiling` (the throughput load through a bare relay, see
//! `relay`), and, only when named, `soak` (memory under a long steady load), `history`
//! (paging through cold rooms of a large store) and `webhook-drain` (events per second
//! from a full webhook outbox). `--webhook STATUS` points every server at a receiver in
//! the bench answering STATUS. `--nodes N` runs the throughput, latency and webhook-drain
//! scenarios against cluster mode instead: N nodes on a PostgreSQL and a nats-server the bench
//! starts (see `cluster`). Everything targets loopback and is bounded in time and count.

mod backups;
mod client;
mod cluster;
mod history;
mod idle;
mod latency;
mod relay;
mod restart;
mod soak;
mod stats;
mod target;
mod throughput;
mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chat_server::auth::Auth;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use client::Dialect;
use cluster::{Cluster, CpuUse, Servers};
use stats::{CpuTimes, Spread};
use target::{Launch, Target};

#[derive(Parser)]
#[command(
    name = "chat-bench",
    about = "Load harness for chat-server (loopback only)"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand)]
enum Mode {
    /// The bare relay of the ceiling scenario (started by the bench).
    #[command(hide = true)]
    Relay {
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: SocketAddr,
        #[arg(long)]
        frame_bytes: usize,
    },
    /// Holds idle connections for the idle scenario (started by the bench).
    #[command(hide = true)]
    IdleWorker {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        first: usize,
        #[arg(long, value_enum)]
        dialect: Dialect,
    },
}

#[derive(clap::Args)]
struct Opts {
    /// Comma-separated scenarios to run.
    #[arg(
        long,
        default_value = "throughput,latency,idle,idle-socketio,restart,ceiling"
    )]
    scenarios: String,
    /// The server binary to start.
    #[arg(long, default_value = "target/release/chat-server")]
    server: PathBuf,
    /// Target an already running server on this loopback address instead (throughput and
    /// latency only); it must use `--secret` as its CHAT_JWT_SECRET.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Run against cluster mode: this many nodes of `--server`, on a throwaway PostgreSQL
    /// and nats-server started for each run, each pair's two users on different nodes
    /// (throughput, latency, ceiling and webhook-drain only).
    #[arg(long, conflicts_with = "addr")]
    nodes: Option<usize>,
    /// JWT secret given to the server and used to mint tokens.
    #[arg(long, default_value = "chat-bench-secret")]
    secret: String,
    /// Repetitions of each scenario; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// `taskset -c` CPUs for the server (and the relay).
    #[arg(long)]
    server_cpus: Option<String>,
    /// CPUs to pin the generator to.
    #[arg(long)]
    bench_cpus: Option<String>,
    /// Throughput: users (pairs share a room).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Throughput: messages each sender keeps in flight.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Throughput: each partner sends `message:received` for every message it gets, as a
    /// client showing delivered ticks does.
    #[arg(long)]
    received: bool,
    /// Throughput: each message carries a `clientMessageId`, as the web client's do (the
    /// server then checks each for a retry).
    #[arg(long)]
    client_message_ids: bool,
    /// Throughput: seconds before counting starts.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Throughput: seconds counted.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Latency: connected users.
    #[arg(long, default_value_t = 10_000)]
    latency_users: usize,
    /// Latency: offered messages per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Latency: seconds measured (after one second of warm-up).
    #[arg(long, default_value_t = 10.0)]
    latency_secs: f64,
    /// Latency: messages written into each server's store before it starts (in rooms of a
    /// thousand, as in the restart scenario), so that a backup has something to copy.
    #[arg(long, default_value_t = 0)]
    latency_prefill: usize,
    /// Latency: take online backups back to back (`POST /admin/backup`) during each run.
    #[arg(long)]
    latency_backups: bool,
    /// Idle: connection counts to measure at (clipped to the open-file hard limit).
    #[arg(long, default_value = "5000,10000,19000")]
    idle_counts: String,
    /// Idle: connections per generator process (default: the hard limit less headroom).
    #[arg(long)]
    conns_per_process: Option<usize>,
    /// Idle: seconds to wait at each count before reading the server's RSS (over 25, every
    /// Socket.IO connection has had an Engine.IO heartbeat).
    #[arg(long, default_value_t = 1.0)]
    idle_settle_secs: f64,
    /// Restart: messages in the big store.
    #[arg(long, default_value_t = 1_000_000)]
    restart_messages: usize,
    /// Restart: messages in the small store it is compared with.
    #[arg(long, default_value_t = 1_000)]
    restart_small: usize,
    /// Ceiling: relay frame size when the throughput scenario did not run.
    #[arg(long, default_value_t = 7000)]
    frame_bytes: usize,
    /// Extra environment for every server the bench starts, `KEY=VALUE` (repeatable), e.g.
    /// `CHAT_MEMORY_REDB_CACHE_BYTES=67108864`.
    #[arg(long = "server-env", value_parser = parse_env)]
    server_env: Vec<(String, String)>,
    /// History: messages in the store, in rooms of a thousand.
    #[arg(long, default_value_t = 10_000_000)]
    history_messages: usize,
    /// History: cold rooms paged through per run.
    #[arg(long, default_value_t = 20)]
    history_rooms: usize,
    /// History: redb cache sizes to compare, in bytes (`CHAT_MEMORY_REDB_CACHE_BYTES`);
    /// `default` starts the server without the setting.
    #[arg(long, default_value = "default,1073741824")]
    history_cache_bytes: String,
    /// History: drop the OS page cache (machine-wide; needs root) before each server start.
    #[arg(long)]
    drop_caches: bool,
    /// Soak: seconds of steady load (runs once, whatever `--runs` says).
    #[arg(long, default_value_t = 1800.0)]
    soak_secs: f64,
    /// Soak: offered rate as a share of the throughput measured first (closed loop, with
    /// the throughput options), unless `--soak-rate` is given.
    #[arg(long, default_value_t = 0.5)]
    soak_fraction: f64,
    /// Soak: offered messages per second, instead of a share of a measured throughput.
    #[arg(long)]
    soak_rate: Option<f64>,
    /// Soak: connected users, all reading.
    #[arg(long, default_value_t = 10_000)]
    soak_users: usize,
    /// Soak: share of the users that also hold a connection that never reads.
    #[arg(long, default_value_t = 0.05)]
    soak_stalled: f64,
    /// Soak: seconds per latency window (p99 per window).
    #[arg(long, default_value_t = 60.0)]
    soak_window_secs: f64,
    /// Soak: seconds between two readings of the server's RSS.
    #[arg(long, default_value_t = 5.0)]
    soak_sample_secs: f64,
    /// Soak: messages written into the server's store before it starts (in rooms of a
    /// thousand, as in the restart scenario), to see in minutes what a long run's store
    /// does to memory.
    #[arg(long, default_value_t = 0)]
    soak_prefill: usize,
    /// Point every server the bench starts at a webhook receiver in the bench that answers
    /// every event with this status (500: a hook failing for the whole run), for every
    /// message (`offline_only = false`).
    #[arg(long)]
    webhook: Option<u16>,
    /// Webhook drain: events put in the outbox before it is drained.
    #[arg(long, default_value_t = 20_000)]
    drain_events: usize,
    /// Webhook drain: sending users, each with an offline partner (one delivery lane each).
    #[arg(long, default_value_t = 100)]
    drain_users: usize,
}

/// `KEY=VALUE` of `--server-env`.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// Open files a process keeps for itself besides connections.
const FD_HEADROOM: usize = 200;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // The idle scenario holds as many connections as the hard limit allows.
    if let Err(e) = chat_server::server::raise_open_file_limit() {
        eprintln!("chat-bench: cannot raise the open-file limit: {e}");
    }
    match cli.mode {
        Some(Mode::Relay { bind, frame_bytes }) => {
            relay::main(bind, frame_bytes);
            ExitCode::SUCCESS
        }
        Some(Mode::IdleWorker {
            addr,
            first,
            dialect,
        }) => {
            let secret = std::env::var("CHAT_BENCH_SECRET").unwrap_or_default();
            idle::worker(addr, &secret, first, dialect);
            ExitCode::SUCCESS
        }
        None => match bench(&mut cli.opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chat-bench: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn bench(opts: &mut Opts) -> Result<(), String> {
    if let Some(addr) = opts.addr {
        if !addr.ip().is_loopback() {
            return Err(format!("{addr} is not a loopback address"));
        }
    }
    // Kept for the whole bench: every server started from here on posts to it.
    let receiver = match opts.webhook {
        Some(status) => {
            let receiver = webhook::Receiver::start(([127, 0, 0, 1], 0).into(), status)?;
            opts.server_env.extend(webhook::server_env(receiver.addr));
            Some(receiver)
        }
        None => None,
    };
    let opts = &*opts;
    if opts.nodes.is_some() {
        check_cluster_options(opts)?;
    }
    if let Some(cpus) = &opts.bench_cpus {
        target::pin_self(cpus)?;
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let runs = opts.runs.max(1);
    let mut results = serde_json::Map::new();
    let mut frame_bytes = opts.frame_bytes;
    let mut server_rate = None;
    for scenario in opts.scenarios.split(',').map(str::trim) {
        let value = match scenario {
            "throughput" => {
                let (value, median, frame) = throughput_on(opts, &runtime, runs, None)?;
                server_rate = Some(median);
                frame_bytes = frame;
                value
            }
            "latency" => latency(opts, runs)?,
            "idle" => idle(opts, runs, Dialect::Plain)?,
            "idle-socketio" => idle(opts, runs, Dialect::Socketio)?,
            "restart" => restart(opts, runs)?,
            "soak" => soak(opts, &runtime, server_rate)?,
            "history" => history(opts, runs)?,
            "webhook-drain" => webhook_drain(opts, runs)?,
            "ceiling" => {
                let launch = relay_launch(opts, frame_bytes);
                let (mut value, median, _) = throughput_on(opts, &runtime, runs, Some(launch))?;
                if let Some(rate) = server_rate {
                    let ratio = rate / median.max(f64::MIN_POSITIVE);
                    value["server_to_ceiling_ratio"] = json!(ratio);
                    println!(
                        "ceiling: chat-server reaches {:.0}% of the bare relay",
                        ratio * 100.0
                    );
                }
                value
            }
            other => return Err(format!("unknown scenario {other:?}")),
        };
        results.insert(scenario.to_owned(), value);
    }
    if let (Some(receiver), Some(status)) = (&receiver, opts.webhook) {
        println!(
            "webhook receiver: answered {status} to {} requests",
            receiver.requests()
        );
    }
    let report = json!({
        "machine": machine(),
        "runs": runs,
        "webhook_status": opts.webhook,
        "scenarios": results,
    });
    std::fs::write(
        &opts.out,
        serde_json::to_string_pretty(&report).expect("values serialize"),
    )
    .map_err(|e| format!("cannot write {}: {e}", opts.out.display()))?;
    println!("results: {}", opts.out.display());
    Ok(())
}

/// What `--nodes` supports: a fresh cluster for each run of the throughput and latency
/// scenarios (the ceiling needs no server).
fn check_cluster_options(opts: &Opts) -> Result<(), String> {
    if opts.nodes == Some(0) {
        return Err("--nodes: at least one node".into());
    }
    if let Some(other) = opts
        .scenarios
        .split(',')
        .map(str::trim)
        .find(|s| !matches!(*s, "throughput" | "latency" | "ceiling" | "webhook-drain"))
    {
        return Err(format!(
            "--nodes: the {other:?} scenario runs against the embedded server only"
        ));
    }
    if opts.latency_prefill > 0 || opts.latency_backups {
        return Err("--nodes: --latency-prefill and --latency-backups need redb".into());
    }
    Ok(())
}

/// Events per second posted from a full outbox to a fast receiver (see `webhook`).
fn webhook_drain(opts: &Opts, runs: usize) -> Result<Value, String> {
    let auth = Auth::new(opts.secret.as_bytes());
    let (mut rates, mut cpu, mut postgres) = (Vec::new(), Vec::new(), Vec::new());
    let mut details = Vec::new();
    for _ in 0..runs {
        let run = match opts.nodes {
            Some(nodes) => webhook::drain_cluster(
                nodes,
                |dir| server_launch(opts, dir),
                &auth,
                opts.drain_users,
                opts.drain_events,
            )?,
            None => {
                let dir = target::temp_dir("webhook-drain");
                let launch = server_launch(opts, &dir);
                webhook::drain(&launch, dir, &auth, opts.drain_users, opts.drain_events)?
            }
        };
        rates.push(run.events_per_sec);
        cpu.push(run.server_cpu_us_per_event);
        postgres.extend(run.postgres_cpu_us_per_event);
        details.push(json!({
            "events": run.events,
            "secs": run.secs,
            "events_per_sec": run.events_per_sec,
            "server_cpu_us_per_event": run.server_cpu_us_per_event,
            "postgres_cpu_us_per_event": run.postgres_cpu_us_per_event,
        }));
    }
    let spread = Spread::of(&rates);
    let postgres_text = if postgres.is_empty() {
        String::new()
    } else {
        format!(", PostgreSQL {} µs", Spread::of(&postgres).text(1))
    };
    println!(
        "webhook-drain: {} events/s posted to a 204 receiver from a full outbox, median \
         (lowest–highest) of {runs}; {} events, {} recipients, server start included; CPU \
         per event: chat-server {} µs{postgres_text}",
        spread.text(0),
        opts.drain_events,
        opts.drain_users,
        Spread::of(&cpu).text(1),
    );
    Ok(json!({
        "events_per_sec": spread.json(&rates),
        "server_cpu_us_per_event": Spread::summary(&cpu),
        "postgres_cpu_us_per_event": Spread::summary(&postgres),
        "nodes": opts.nodes,
        "events": opts.drain_events,
        "recipients": opts.drain_users,
        "details": details,
    }))
}

/// The bare relay of the ceiling, sending `message:sent` frames of `frame_bytes`.
fn relay_launch(opts: &Opts, frame_bytes: usize) -> Launch {
    Launch {
        program: std::env::current_exe().unwrap_or_else(|_| "chat-bench".into()),
        args: vec![
            "relay".into(),
            "--frame-bytes".into(),
            frame_bytes.to_string(),
        ],
        env: Vec::new(),
        cpus: opts.server_cpus.clone(),
    }
}

/// The server on `data_dir` with the bench's secret, limits and `--server-env`.
fn server_launch(opts: &Opts, data_dir: &std::path::Path) -> Launch {
    let mut launch = Launch::server(
        &opts.server,
        data_dir,
        &opts.secret,
        opts.server_cpus.clone(),
    );
    launch.env.extend(opts.server_env.iter().cloned());
    launch
}

/// Starts a fresh server or cluster (or uses `--addr`) for one run.
fn start_server(opts: &Opts, label: &str) -> Result<Servers, String> {
    if let Some(addr) = opts.addr {
        return Ok(Servers::Given(addr));
    }
    if let Some(nodes) = opts.nodes {
        let cluster = Cluster::start(nodes, |dir| server_launch(opts, dir))?;
        return Ok(Servers::Cluster(cluster));
    }
    let dir = target::temp_dir(label);
    let server = Target::start(&server_launch(opts, &dir), Some(dir))?;
    target::wait_healthy(server.addr)?;
    Ok(Servers::One(server))
}

/// The throughput load against the server, or against `relay` when given.
fn throughput_on(
    opts: &Opts,
    runtime: &tokio::runtime::Runtime,
    runs: usize,
    relay: Option<Launch>,
) -> Result<(Value, f64, usize), String> {
    let name = if relay.is_some() {
        "ceiling"
    } else {
        "throughput"
    };
    let auth = Auth::new(opts.secret.as_bytes());
    let config = throughput::LoadConfig {
        users: opts.users,
        window: opts.window,
        warmup: Duration::from_secs_f64(opts.warmup_secs),
        duration: Duration::from_secs_f64(opts.duration_secs),
        received: opts.received,
        client_message_ids: opts.client_message_ids,
    };
    let (mut rates, mut details, mut frames) = (Vec::new(), Vec::new(), Vec::new());
    let mut cpu = CpuRuns::default();
    let mut peak_rss = Vec::new();
    for _ in 0..runs {
        let servers = match &relay {
            Some(launch) => Servers::One(Target::start(launch, None)?),
            None => start_server(opts, name)?,
        };
        let result = runtime.block_on(throughput::run(
            &servers.addrs(),
            &|| servers.cpu(),
            &auth,
            config,
        ));
        let rss = servers.peak_rss();
        let repairs = servers.repairs();
        servers.stop();
        let result = result?;
        if result.completed == 0 {
            return Err(format!(
                "{name}: no message completed (first other frame: {:?})",
                result.first_other
            ));
        }
        rates.push(result.msgs_per_sec);
        frames.push(result.avg_frame_bytes);
        cpu.push(result.cpu_us_per_msg);
        details.push(json!({
            "msgs_per_sec": result.msgs_per_sec,
            "completed": result.completed,
            "avg_frame_bytes": result.avg_frame_bytes,
            "other_frames": result.other_frames,
            "server_cpu_us_per_msg": result.cpu_us_per_msg.map(|c| c.servers),
            "postgres_cpu_us_per_msg": result.cpu_us_per_msg.and_then(|c| c.postgres),
            "nats_cpu_us_per_msg": result.cpu_us_per_msg.and_then(|c| c.nats),
            "cluster_reads_per_msg": result.cpu_us_per_msg.and_then(|c| c.reads),
            "peak_rss_bytes_per_server": rss,
            "cluster_repairs": repairs?,
        }));
        peak_rss.push(rss);
    }
    let spread = Spread::of(&rates);
    let frame = Spread::of(&frames).median;
    println!(
        "{name}: {} msgs/s delivered to both participants, median (lowest–highest) of {runs}; \
         {} users, window {}{}, {:.0}-byte message:sent frames; {}{}",
        spread.text(0),
        opts.users,
        opts.window,
        match (opts.received, opts.client_message_ids) {
            (false, false) => "",
            (true, false) => ", message:received on",
            (false, true) => ", clientMessageIds on",
            (true, true) => ", message:received and clientMessageIds on",
        },
        frame,
        cpu.text(opts.nodes.filter(|_| relay.is_none())),
        peak_rss_text(&peak_rss),
    );
    let mut value = json!({
        "server_cpu_us_per_msg": Spread::summary(&cpu.servers),
        "msgs_per_sec": spread.json(&rates),
        "avg_frame_bytes": frame,
        "users": opts.users,
        "window": opts.window,
        "received": opts.received,
        "client_message_ids": opts.client_message_ids,
        "duration_secs": opts.duration_secs,
        "details": details,
    });
    if relay.is_none() {
        cpu.add_json(&mut value, opts.nodes);
    }
    Ok((value, spread.median, frame.round() as usize))
}

/// The CPU per message of several runs, by part of the system under test.
#[derive(Default)]
struct CpuRuns {
    servers: Vec<f64>,
    postgres: Vec<f64>,
    nats: Vec<f64>,
    /// The cluster's store reads per message (not CPU, but paid in it on both sides).
    reads: Vec<f64>,
}

impl CpuRuns {
    fn push(&mut self, cpu: Option<CpuUse>) {
        let Some(cpu) = cpu else { return };
        self.servers.push(cpu.servers);
        self.postgres.extend(cpu.postgres);
        self.nats.extend(cpu.nats);
        self.reads.extend(cpu.reads);
    }

    /// The report's words for it, with the node count in cluster mode.
    fn text(&self, nodes: Option<usize>) -> String {
        let servers = Spread::of(&self.servers).text(1);
        match nodes {
            None => format!("server CPU {servers} µs per message"),
            Some(n) => format!(
                "CPU per message: chat-server {servers} µs summed over {n} node{}, \
                 PostgreSQL {} µs, nats-server {} µs; chat_cluster_reads_total {} per \
                 message",
                if n == 1 { "" } else { "s" },
                Spread::of(&self.postgres).text(1),
                Spread::of(&self.nats).text(1),
                Spread::of(&self.reads).text(3),
            ),
        }
    }

    fn add_json(&self, value: &mut Value, nodes: Option<usize>) {
        value["nodes"] = json!(nodes);
        if nodes.is_some() {
            value["postgres_cpu_us_per_msg"] = Spread::summary(&self.postgres);
            value["nats_cpu_us_per_msg"] = Spread::summary(&self.nats);
            value["cluster_reads_per_msg"] = Spread::summary(&self.reads);
        }
    }
}

/// `; peak RSS per server M, N MiB` (medians over the runs, server by server).
fn peak_rss_text(runs: &[Vec<u64>]) -> String {
    let servers = runs.iter().map(Vec::len).max().unwrap_or(0);
    if servers == 0 {
        return String::new();
    }
    let medians: Vec<String> = (0..servers)
        .map(|k| {
            let mib: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.get(k))
                .map(|&b| b as f64 / 1048576.0)
                .collect();
            format!("{:.1}", Spread::of(&mib).median)
        })
        .collect();
    format!("; peak RSS per server {} MiB", medians.join(", "))
}

/// The latency load against the server and, right after it in each run, against the bare
/// relay sending frames of the size the server sent: the relay's figures are the floor this
/// machine and generator allow, taken under the same conditions (the hypervisor's steal is
/// reported for both).
fn latency(opts: &Opts, runs: usize) -> Result<Value, String> {
    // One generator thread (plus the pacer): a second worker would only add cross-thread
    // wake-ups, whose delays on a shared 2-core VM land in the measured latency.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let auth = Auth::new(opts.secret.as_bytes());
    let config = latency::LatencyConfig {
        users: opts.latency_users,
        rate: opts.rate,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs_f64(opts.latency_secs),
    };
    // One store filled once and copied for each run: filling is the slow part.
    let template = match opts.latency_prefill {
        0 => None,
        n => {
            let dir = target::temp_dir("latency-store");
            let took = restart::fill(&dir, n)?;
            println!("latency: filled a store of {n} messages in {took:.1?}");
            Some(dir)
        }
    };
    let mut backup_times = Vec::new();
    let (mut server, mut floor) = (LatencyRuns::default(), LatencyRuns::default());
    let (mut cpu, mut peak_rss) = (CpuRuns::default(), Vec::new());
    for _ in 0..runs {
        let servers = start_latency_server(opts, template.as_deref())?;
        let addrs = servers.addrs();
        let backups = opts
            .latency_backups
            .then(|| backups::BackupLoop::start(addrs[0]));
        let steal = CpuTimes::now();
        let result = runtime.block_on(latency::run(&addrs, &|| servers.cpu(), &auth, config));
        if let Some(backups) = backups {
            let took = backups.finish()?;
            let ms: Vec<String> = took.iter().map(|d| d.as_millis().to_string()).collect();
            println!(
                "latency: {} backups during the run, ms: {}",
                took.len(),
                ms.join(", ")
            );
            backup_times.push(json!(took
                .iter()
                .map(|d| d.as_secs_f64())
                .collect::<Vec<_>>()));
        }
        let result = result?;
        let frame_bytes = result.avg_frame_bytes.round() as usize;
        cpu.push(result.cpu_us_per_msg);
        peak_rss.push(servers.peak_rss());
        let repairs = servers.repairs()?;
        server.push(result, steal.steal_percent_since());
        if let Some(details) = server.details.last_mut() {
            details["cluster_repairs"] = json!(repairs);
        }
        // The floor once per run against one server; a cluster's runs compare with the
        // embedded server's, floor included.
        if let Servers::One(target) = servers {
            target.stop();
            let target = Target::start(&relay_launch(opts, frame_bytes), None)?;
            let steal = CpuTimes::now();
            let result = runtime.block_on(latency::run(&[target.addr], &|| None, &auth, config))?;
            floor.push(result, steal.steal_percent_since());
            target.stop();
        } else {
            servers.stop();
        }
    }
    if server.delivered == 0 {
        return Err("latency: no message was delivered".into());
    }
    let load = format!(
        "{} users, {} msgs/s offered open-loop",
        opts.latency_users, opts.rate
    );
    server.print("latency", &load, runs);
    if !cpu.servers.is_empty() {
        println!(
            "latency: {} offered{}",
            cpu.text(opts.nodes),
            peak_rss_text(&peak_rss)
        );
    }
    let mut value = server.json();
    value["server_cpu_us_per_msg"] = Spread::summary(&cpu.servers);
    cpu.add_json(&mut value, opts.nodes);
    if !floor.p50.is_empty() {
        floor.print("latency floor (bare relay)", &load, runs);
        value["floor"] = floor.json();
    }
    value["users"] = json!(opts.latency_users);
    value["rate"] = json!(opts.rate);
    value["prefill_messages"] = json!(opts.latency_prefill);
    if opts.latency_backups {
        value["backup_secs_per_run"] = json!(backup_times);
    }
    if let Some(dir) = template {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(value)
}

/// A server for one latency run: on a copy of `template`'s store when given, and with the
/// admin secret when backups are taken (keeping one backup, so runs do not fill the disk).
fn start_latency_server(
    opts: &Opts,
    template: Option<&std::path::Path>,
) -> Result<Servers, String> {
    if opts.addr.is_some() || opts.nodes.is_some() {
        return start_server(opts, "latency");
    }
    let dir = target::temp_dir("latency");
    if let Some(template) = template {
        let file = chat_server::store::redb::DB_FILE;
        std::fs::copy(template.join(file), dir.join(file)).map_err(|e| e.to_string())?;
    }
    let mut launch = server_launch(opts, &dir);
    if opts.latency_backups {
        launch.env.extend([
            (
                "CHAT_ADMIN_SECRET".to_owned(),
                backups::ADMIN_SECRET.to_owned(),
            ),
            ("CHAT_BACKUP_KEEP".to_owned(), "1".to_owned()),
        ]);
    }
    let server = Target::start(&launch, Some(dir))?;
    target::wait_healthy(server.addr)?;
    Ok(Servers::One(server))
}

/// The latency figures of several runs of one target.
#[derive(Default)]
struct LatencyRuns {
    delivered: u64,
    p50: Vec<f64>,
    p99: Vec<f64>,
    p999: Vec<f64>,
    steal: Vec<f64>,
    details: Vec<Value>,
}

impl LatencyRuns {
    fn push(&mut self, result: latency::LatencyResult, steal_percent: f64) {
        self.delivered += result.delivered;
        self.p50.push(result.p50);
        self.p99.push(result.p99);
        self.p999.push(result.p999);
        self.steal.push(steal_percent);
        self.details.push(json!({
            "p50_ms": result.p50, "p99_ms": result.p99, "p999_ms": result.p999,
            "max_ms": result.max, "offered": result.offered, "delivered": result.delivered,
            "offered_rate": result.offered_rate, "avg_frame_bytes": result.avg_frame_bytes,
            "steal_percent": steal_percent,
            "server_cpu_us_per_msg": result.cpu_us_per_msg.map(|c| c.servers),
            "postgres_cpu_us_per_msg": result.cpu_us_per_msg.and_then(|c| c.postgres),
            "nats_cpu_us_per_msg": result.cpu_us_per_msg.and_then(|c| c.nats),
            "cluster_reads_per_msg": result.cpu_us_per_msg.and_then(|c| c.reads),
        }));
    }

    fn print(&self, name: &str, load: &str, runs: usize) {
        println!(
            "{name}: p50 {} ms, p99 {} ms, p99.9 {} ms (median, lowest–highest of {runs}); \
             {load}; CPU stolen by the hypervisor {} %",
            Spread::of(&self.p50).text(2),
            Spread::of(&self.p99).text(2),
            Spread::of(&self.p999).text(2),
            Spread::of(&self.steal).text(0),
        );
    }

    fn json(&self) -> Value {
        json!({
            "p50_ms": Spread::summary(&self.p50),
            "p99_ms": Spread::summary(&self.p99),
            "p999_ms": Spread::summary(&self.p999),
            "steal_percent": Spread::summary(&self.steal),
            "details": self.details,
        })
    }
}

/// The idle scenario for one dialect; its summary line starts with the scenario's name.
fn idle(opts: &Opts, runs: usize, dialect: Dialect) -> Result<Value, String> {
    let name = match dialect {
        Dialect::Plain => "idle",
        Dialect::Socketio => "idle-socketio",
    };
    let hard = target::nofile_hard_limit() as usize;
    let cap = hard.saturating_sub(FD_HEADROOM).max(1);
    let per_process = opts.conns_per_process.unwrap_or(cap).clamp(1, cap);
    let mut counts: Vec<usize> = opts
        .idle_counts
        .split(',')
        .map(|c| {
            c.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad count {c:?}"))
        })
        .collect::<Result<_, _>>()?;
    counts.iter_mut().for_each(|c| *c = (*c).min(cap));
    counts.dedup();
    let (mut slopes, mut details) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let dir = target::temp_dir(name);
        let launch = server_launch(opts, &dir);
        let settle = Duration::from_secs_f64(opts.idle_settle_secs);
        let result = idle::run(
            &launch,
            &opts.secret,
            &counts,
            per_process,
            settle,
            dialect,
            dir,
        )?;
        slopes.push(result.slope);
        details.push(json!({
            "rss_before": result.rss_before,
            "points": result.points.iter().map(|&(n, b)| json!({
                "connections": n, "rss_growth": b, "bytes_per_connection": b as f64 / n as f64,
            })).collect::<Vec<_>>(),
            "fitted_bytes_per_connection": result.slope,
            "fitted_intercept": result.intercept,
            "generator_processes": result.workers,
        }));
    }
    let spread = Spread::of(&slopes);
    let kib: Vec<f64> = slopes.iter().map(|s| s / 1024.0).collect();
    println!(
        "{name}: {} KiB of server RSS per idle connection (fitted slope, median, \
         lowest–highest of {runs}) at {:?} connections, {} s after each; open-file hard limit \
         {hard}",
        Spread::of(&kib).text(2),
        counts,
        opts.idle_settle_secs,
    );
    Ok(json!({
        "bytes_per_connection": spread.json(&slopes),
        "counts": counts,
        "settle_secs": opts.idle_settle_secs,
        "nofile_hard_limit": hard,
        "details": details,
    }))
}

fn restart(opts: &Opts, runs: usize) -> Result<Value, String> {
    let mut value = serde_json::Map::new();
    let mut line = Vec::new();
    for messages in [opts.restart_small, opts.restart_messages] {
        let dir = target::temp_dir("restart");
        let filled = restart::fill(&dir, messages);
        let result = filled.and_then(|fill| {
            let launch = server_launch(opts, &dir);
            let (mut secs, mut rss) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let r = restart::measure(&launch)?;
                secs.push(r.to_healthy.as_secs_f64());
                rss.push(r.rss as f64);
            }
            let size = std::fs::metadata(dir.join(chat_server::store::redb::DB_FILE))
                .map_or(0, |m| m.len());
            Ok((fill, secs, rss, size))
        });
        let _ = std::fs::remove_dir_all(&dir);
        let (fill, secs, rss, size) = result?;
        let (s, r) = (Spread::of(&secs), Spread::of(&rss));
        let mib: Vec<f64> = rss.iter().map(|b| b / 1048576.0).collect();
        line.push(format!(
            "{messages} messages ({:.0} MiB): healthy after {} s, RSS {} MiB",
            size as f64 / 1048576.0,
            s.text(3),
            Spread::of(&mib).text(1)
        ));
        value.insert(
            messages.to_string(),
            json!({
                "to_healthy_secs": s.json(&secs), "rss_bytes": r.json(&rss),
                "store_bytes": size, "fill_secs": fill.as_secs_f64(),
            }),
        );
    }
    println!(
        "restart: {} (median, lowest–highest of {runs})",
        line.join("; ")
    );
    Ok(Value::Object(value))
}

/// Pages through cold rooms of a large store with each redb cache size, the sizes
/// interleaved run by run so a change in the machine's load hits them alike.
fn history(opts: &Opts, runs: usize) -> Result<Value, String> {
    let sizes: Vec<Option<u64>> = opts
        .history_cache_bytes
        .split(',')
        .map(str::trim)
        .map(|s| match s {
            "default" => Ok(None),
            _ => s
                .parse()
                .map(Some)
                .map_err(|_| format!("bad cache size {s:?}")),
        })
        .collect::<Result<_, _>>()?;
    let label = |size: Option<u64>| size.map_or("default".to_string(), |b| b.to_string());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let auth = Auth::new(opts.secret.as_bytes());
    let messages = opts.history_messages.max(1);
    let rooms = messages.div_ceil(restart::PER_ROOM);
    let dir = target::temp_dir("history");
    let measured = (|| {
        let fill = restart::fill(&dir, messages)?;
        let mut pages: Vec<Vec<(f64, f64)>> = vec![Vec::new(); sizes.len()];
        let (mut rss, mut dropped) = (vec![Vec::new(); sizes.len()], Vec::new());
        for run in 0..runs {
            for (k, &size) in sizes.iter().enumerate() {
                dropped.push(opts.drop_caches && history::drop_page_cache());
                let mut launch = server_launch(opts, &dir);
                if let Some(bytes) = size {
                    launch
                        .env
                        .push(("CHAT_MEMORY_REDB_CACHE_BYTES".into(), bytes.to_string()));
                }
                let server = Target::start(&launch, None)?;
                target::wait_healthy(server.addr)?;
                let picked = history::pick_rooms(rooms, opts.history_rooms, run * sizes.len() + k);
                let walked = runtime.block_on(history::page_through(server.addr, &auth, &picked));
                rss[k].push(server.rss_bytes() as f64);
                server.stop();
                let (mut ms, counts) = walked?;
                for (&r, &count) in picked.iter().zip(&counts) {
                    // Room `r` holds the messages `i` with `i % rooms == r`.
                    let expected = (messages + rooms - 1 - r) / rooms;
                    if count != expected {
                        return Err(format!(
                            "history: paging room {r} returned {count} messages, not {expected}"
                        ));
                    }
                }
                ms.sort_by(f64::total_cmp);
                pages[k].push((stats::percentile(&ms, 0.50), stats::percentile(&ms, 0.99)));
            }
        }
        let size =
            std::fs::metadata(dir.join(chat_server::store::redb::DB_FILE)).map_or(0, |m| m.len());
        Ok((fill, pages, rss, dropped, size))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let (fill, pages, rss, dropped, store_bytes) = measured?;
    let all_dropped = dropped.iter().all(|&d| d);
    let mut by_size = serde_json::Map::new();
    let mut line = Vec::new();
    for (k, &size) in sizes.iter().enumerate() {
        let p50: Vec<f64> = pages[k].iter().map(|p| p.0).collect();
        let p99: Vec<f64> = pages[k].iter().map(|p| p.1).collect();
        let mib: Vec<f64> = rss[k].iter().map(|b| b / 1048576.0).collect();
        line.push(format!(
            "cache {}: p50 {} ms, p99 {} ms per page, server RSS after {} MiB",
            label(size),
            Spread::of(&p50).text(2),
            Spread::of(&p99).text(2),
            Spread::of(&mib).text(1),
        ));
        by_size.insert(
            label(size),
            json!({
                "p50_ms": Spread::summary(&p50),
                "p99_ms": Spread::summary(&p99),
                "rss_bytes_after": Spread::summary(&rss[k]),
            }),
        );
    }
    println!(
        "history: {} (median, lowest–highest of {runs}); {} cold rooms of {} messages per \
         run, {messages} messages ({:.0} MiB store); OS page cache {}",
        line.join("; "),
        opts.history_rooms.min(rooms),
        restart::PER_ROOM,
        store_bytes as f64 / 1048576.0,
        if all_dropped {
            "dropped before each start"
        } else {
            "NOT dropped (needs --drop-caches, as root)"
        },
    );
    Ok(json!({
        "messages": messages,
        "store_bytes": store_bytes,
        "fill_secs": fill.as_secs_f64(),
        "rooms_per_run": opts.history_rooms.min(rooms),
        "page_limit": 50,
        "page_cache_dropped": all_dropped,
        "cache_bytes": by_size,
    }))
}

/// The RSS the soak must stay under.
const SOAK_CEILING_BYTES: u64 = 256 * 1024 * 1024;

/// A long steady open-loop load on one fresh server, at `--soak-rate` or at
/// `--soak-fraction` of a throughput measured first (`measured`, when the throughput
/// scenario ran before it, or one throughput run now, on its own server).
fn soak(
    opts: &Opts,
    runtime: &tokio::runtime::Runtime,
    measured: Option<f64>,
) -> Result<Value, String> {
    if opts.addr.is_some() {
        return Err("soak: needs a server it starts itself (it reads the server's RSS)".into());
    }
    if !(opts.soak_stalled >= 0.0 && opts.soak_stalled <= 1.0) {
        return Err(format!(
            "soak: --soak-stalled {} is not a share in 0..=1",
            opts.soak_stalled
        ));
    }
    let (rate, measured) = match opts.soak_rate {
        Some(rate) => (rate, None),
        None => {
            let measured = match measured {
                Some(rate) => rate,
                None => throughput_on(opts, runtime, 1, None)?.1,
            };
            (opts.soak_fraction * measured, Some(measured))
        }
    };
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("soak: the offered rate {rate} is not positive"));
    }
    let config = soak::SoakConfig {
        users: opts.soak_users,
        stalled: (opts.soak_users as f64 * opts.soak_stalled).round() as usize,
        rate,
        warmup: Duration::from_secs(5).min(Duration::from_secs_f64(opts.soak_secs / 4.0)),
        duration: Duration::from_secs_f64(opts.soak_secs),
        window: Duration::from_secs_f64(opts.soak_window_secs.max(0.1)),
        sample_every: Duration::from_secs_f64(opts.soak_sample_secs.max(0.1)),
    };
    let dir = target::temp_dir("soak");
    if opts.soak_prefill > 0 {
        let took = restart::fill(&dir, opts.soak_prefill)?;
        println!(
            "soak: filled a store of {} messages in {took:.1?}",
            opts.soak_prefill
        );
    }
    let server = Target::start(&server_launch(opts, &dir), Some(dir))?;
    target::wait_healthy(server.addr)?;
    let auth = Auth::new(opts.secret.as_bytes());
    let result = runtime.block_on(soak::run(server.addr, server.pid(), &auth, config));
    server.stop();
    let r = result?;
    let mib = |b: u64| b as f64 / 1048576.0;
    let p99: Vec<f64> = r.windows.iter().map(|w| w.p99).collect();
    let measured_secs = opts.soak_secs;
    let achieved = r.delivered as f64 / measured_secs;
    println!(
        "soak: peak RSS {:.1} MiB (ceiling {} MiB), RSS slope over the last two thirds \
         {:+.3} ± {:.3} MiB/min; {:.0} msgs/s offered, {:.0} delivered per second; p99 per \
         {}-s window {} ms; {} of {} stalled connections cut (server: {} slow consumers); \
         {} users, {:.0} s",
        mib(r.peak_rss),
        SOAK_CEILING_BYTES / 1048576,
        r.slope_mib_per_min,
        r.slope_stderr,
        r.offered_rate,
        achieved,
        opts.soak_window_secs,
        Spread::of(&p99).text(2),
        r.stalled.closed_1008 + r.stalled.closed_other + r.stalled.dropped,
        r.stalled.opened,
        r.slow_consumers,
        config.users,
        measured_secs,
    );
    Ok(json!({
        "users": config.users,
        "prefill_messages": opts.soak_prefill,
        "duration_secs": measured_secs,
        "rate": {
            "offered_per_sec": rate,
            "achieved_offered_per_sec": r.offered_rate,
            "measured_throughput": measured,
            "fraction": measured.map(|_| opts.soak_fraction),
        },
        "offered": r.offered,
        "delivered": r.delivered,
        "delivered_per_sec": achieved,
        "rss": {
            "peak_bytes": r.peak_rss,
            "max_sampled_bytes": r.rss.iter().map(|s| s.1).max().unwrap_or(0),
            "ceiling_bytes": SOAK_CEILING_BYTES,
            "under_ceiling": r.peak_rss < SOAK_CEILING_BYTES,
            "slope_mib_per_min": r.slope_mib_per_min,
            "slope_stderr_mib_per_min": r.slope_stderr,
            "sample_secs": opts.soak_sample_secs,
            "samples": r.rss.iter().map(|&(t, b)| json!([t, b])).collect::<Vec<_>>(),
        },
        "p99_ms_per_window": Spread::summary(&p99),
        "windows": r.windows.iter().map(|w| json!({
            "start_secs": w.start_secs, "delivered": w.delivered,
            "p50_ms": w.p50, "p99_ms": w.p99, "max_ms": w.max,
        })).collect::<Vec<_>>(),
        "stalled": {
            "opened": r.stalled.opened,
            "closed_1008": r.stalled.closed_1008,
            "closed_other": r.stalled.closed_other,
            "dropped_without_close": r.stalled.dropped,
            "still_open": r.stalled.open,
        },
        "slow_consumers_cut": r.slow_consumers,
    }))
}

/// What the figures were measured on.
fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem_kib = target::proc_kib("/proc/meminfo", "MemTotal:").unwrap_or(0);
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": cpu,
        "memory_gib": mem_kib as f64 / 1048576.0,
        "nofile_hard_limit": target::nofile_hard_limit(),
    })
}
