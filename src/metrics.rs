//! The Prometheus metrics behind `GET /metrics`.
//!
//! Recording goes through the `metrics` crate's global recorder, so the code that observes
//! an event (the writer, a connection task, a dialect's reply encoder) calls one function
//! here and holds no handle. Figures that some other part keeps anyway (the hub's counts,
//! the latest-50 cache's size, the process's resident memory) are copied in at scrape time
//! instead, so keeping them current costs nothing between scrapes. [`install`] sets
//! `metrics-exporter-prometheus` as that recorder; until then (unit tests) every call is a
//! no-op. Metric names and labels live only in this file,
//! so the README's table of metrics can be checked against one place.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::ErrorCode;

const CONNECTIONS: &str = "chat_connections";
const USERS_ONLINE: &str = "chat_users_online";
const MESSAGES_STORED: &str = "chat_messages_stored_total";
const COMMIT_BATCH_SIZE: &str = "chat_commit_batch_size";
const SEND_DURABLE: &str = "chat_send_durable_seconds";
const COMMIT_SECONDS: &str = "chat_commit_seconds";
const SLOW_CONSUMERS: &str = "chat_slow_consumers_total";
const REJECTED: &str = "chat_rejected_total";
const RESIDENT: &str = "chat_process_resident_bytes";
const REDB_CACHE: &str = "chat_redb_cache_bytes";
const RECENT_ROOMS: &str = "chat_recent_cache_rooms";
const RECENT_BYTES: &str = "chat_recent_cache_bytes";
const RECENT_EVICTIONS: &str = "chat_recent_cache_evictions_total";
const OUTBOUND_QUEUED: &str = "chat_outbound_queued_bytes";
const OUTBOUND_CUTS: &str = "chat_outbound_budget_cuts_total";
const WEBHOOK_QUEUED: &str = "chat_webhook_queued";
const WEBHOOK_DELIVERED: &str = "chat_webhook_delivered_total";
const WEBHOOK_RETRIED: &str = "chat_webhook_retried_total";
const WEBHOOK_FAILED: &str = "chat_webhook_failed_total";
const WEBHOOK_DEAD_LETTERED: &str = "chat_webhook_dead_lettered_total";
const WEBHOOK_DEAD_LETTERS: &str = "chat_webhook_dead_letters";
const WEBHOOK_DELIVERY: &str = "chat_webhook_delivery_seconds";

const RETENTION_DELETED: &str = "chat_retention_deleted_total";

const STORE_FILE: &str = "chat_store_file_bytes";

// Cluster mode's fan-out (issue 17).
const CLUSTER_REPAIRS: &str = "chat_cluster_repairs_total";
const CLUSTER_READS: &str = "chat_cluster_reads_total";

// The cluster-wide duties: one node at a time delivers webhooks and sweeps retention.
const DUTIES: &str = "chat_duties_running";
const RETENTION_SWEEPS: &str = "chat_retention_sweeps_total";

/// How often histogram samples are folded into their buckets between scrapes, which keeps
/// their memory bounded on a server nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Buckets of the latency histograms: a commit on a fast disk takes well under a
/// millisecond, one on a stalled disk seconds.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of the webhook delivery histogram: from a few milliseconds when the receiver is
/// up to a day of retries.
const DELIVERY_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder and starts its upkeep task; call once, inside the
/// runtime, before serving.
pub fn install() -> Result<(), String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(COMMIT_BATCH_SIZE.into()),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ],
        )
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SEND_DURABLE.into()), SECONDS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMIT_SECONDS.into()), SECONDS))
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(WEBHOOK_DELIVERY.into()), DELIVERY_SECONDS)
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| e.to_string())?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    HANDLE
        .set(handle)
        .map_err(|_| "metrics installed twice".to_owned())
}

/// HELP texts, and zero values so that every series is present before its first event.
fn describe() {
    describe_gauge!(CONNECTIONS, "Open WebSocket connections, by dialect.");
    describe_gauge!(USERS_ONLINE, "Users with at least one open connection.");
    describe_counter!(MESSAGES_STORED, "New messages committed to disk.");
    describe_histogram!(
        COMMIT_BATCH_SIZE,
        "Writes (sends, reads, profile updates) committed per writer round."
    );
    describe_histogram!(
        SEND_DURABLE,
        metrics::Unit::Seconds,
        "Time from a message frame's arrival to the commit that made it durable."
    );
    describe_histogram!(
        COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Time a writer round spends committing: writing its pages and the fsyncs."
    );
    describe_counter!(
        SLOW_CONSUMERS,
        "Connections cut off (1008) because their outbound queue overflowed."
    );
    describe_counter!(REJECTED, "Error replies sent to clients, by error code.");
    describe_gauge!(
        RESIDENT,
        metrics::Unit::Bytes,
        "Resident memory of the process (RSS), read at scrape time."
    );
    describe_gauge!(
        REDB_CACHE,
        metrics::Unit::Bytes,
        "The redb page cache setting (memory.redb_cache_bytes)."
    );
    describe_gauge!(RECENT_ROOMS, "Rooms in the latest-50 cache.");
    describe_gauge!(
        RECENT_BYTES,
        metrics::Unit::Bytes,
        "Bytes the latest-50 cache holds, at most memory.recent_cache_bytes."
    );
    describe_counter!(
        RECENT_EVICTIONS,
        "Rooms dropped from the latest-50 cache to stay within its budget."
    );
    describe_gauge!(
        OUTBOUND_QUEUED,
        metrics::Unit::Bytes,
        "Event bytes queued for all connections together, not yet written to their sockets."
    );
    describe_counter!(
        OUTBOUND_CUTS,
        "Connections cut off (1008) because all queues together were over \
         memory.outbound_total_bytes; also counted in chat_slow_consumers_total."
    );
    describe_gauge!(
        WEBHOOK_QUEUED,
        "Webhook events in the outbox on disk, not yet delivered or given up."
    );
    describe_counter!(WEBHOOK_DELIVERED, "Webhook events answered with a 2xx.");
    describe_counter!(
        WEBHOOK_RETRIED,
        "Webhook attempts scheduled again after a failure."
    );
    describe_counter!(
        WEBHOOK_FAILED,
        "Webhook attempts that failed: no answer in time, no connection, or a status other \
         than 2xx."
    );
    describe_counter!(
        WEBHOOK_DEAD_LETTERED,
        "Webhook events given up (past give_up_after_secs, or the hook answered 410)."
    );
    describe_gauge!(
        WEBHOOK_DEAD_LETTERS,
        "Webhook events in the dead-letter table, since the store was created."
    );
    describe_histogram!(
        WEBHOOK_DELIVERY,
        metrics::Unit::Seconds,
        "Time from a webhook event's commit to its 2xx, retries included."
    );

    describe_counter!(
        RETENTION_DELETED,
        "Messages deleted for being older than retention.max_age_days."
    );
    counter!(RETENTION_DELETED).absolute(0);
    describe_counter!(
        RETENTION_SWEEPS,
        "Retention sweeps this node finished (in cluster mode, only the node running the \
         duties sweeps)."
    );
    counter!(RETENTION_SWEEPS).absolute(0);
    describe_gauge!(
        DUTIES,
        "1 while this node runs the duties done once per deployment (posting webhooks, \
         retention sweeps): always on one node; in cluster mode, on the holder of the \
         PostgreSQL duties lock only."
    );
    describe_gauge!(
        STORE_FILE,
        metrics::Unit::Bytes,
        "Size of the store's file on disk; `chat-server compact` shrinks it offline."
    );
    for dialect in [Dialect::Plain, Dialect::SocketIo] {
        gauge!(CONNECTIONS, "dialect" => dialect.label()).set(0.0);
    }
    for name in [
        WEBHOOK_DELIVERED,
        WEBHOOK_RETRIED,
        WEBHOOK_FAILED,
        WEBHOOK_DEAD_LETTERED,
    ] {
        counter!(name).absolute(0);
    }
    gauge!(USERS_ONLINE).set(0.0);
    counter!(MESSAGES_STORED).absolute(0);
    counter!(SLOW_CONSUMERS).absolute(0);
    counter!(RECENT_EVICTIONS).absolute(0);
    counter!(OUTBOUND_CUTS).absolute(0);
    for name in [
        RESIDENT,
        REDB_CACHE,
        RECENT_ROOMS,
        RECENT_BYTES,
        OUTBOUND_QUEUED,
        WEBHOOK_QUEUED,
        WEBHOOK_DEAD_LETTERS,
        STORE_FILE,
    ] {
        gauge!(name).set(0.0);
    }
    for code in ErrorCode::ALL {
        counter!(REJECTED, "code" => code.as_str()).absolute(0);
    }
}

/// Everything recorded so far, in the Prometheus text format; empty before [`install`].
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// The wire dialect of a connection, the `dialect` label of `chat_connections`.
#[derive(Debug, Clone, Copy)]
pub enum Dialect {
    /// The JSON envelope over a raw WebSocket (`/ws`).
    Plain,
    /// Socket.IO (`/socket.io/`).
    SocketIo,
}

impl Dialect {
    fn label(self) -> &'static str {
        match self {
            Dialect::Plain => "plain",
            Dialect::SocketIo => "socketio",
        }
    }
}

/// Counts one open connection in `chat_connections` for as long as it lives.
#[must_use = "the connection is counted only while the guard lives"]
pub struct ConnectionGauge(Dialect);

/// Counts a connection as open until the returned guard is dropped.
pub fn connection_opened(dialect: Dialect) -> ConnectionGauge {
    gauge!(CONNECTIONS, "dialect" => dialect.label()).increment(1.0);
    ConnectionGauge(dialect)
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        gauge!(CONNECTIONS, "dialect" => self.0.label()).decrement(1.0);
    }
}

/// The hub's own counts, copied in just before a scrape renders them: the hub keeps them
/// anyway, so connecting, disconnecting and cutting off a client touch no metric.
pub fn hub_state(users_online: usize, slow_consumers: u64, queued_bytes: usize, budget_cuts: u64) {
    gauge!(USERS_ONLINE).set(users_online as f64);
    counter!(SLOW_CONSUMERS).absolute(slow_consumers);
    gauge!(OUTBOUND_QUEUED).set(queued_bytes as f64);
    counter!(OUTBOUND_CUTS).absolute(budget_cuts);
}

/// The latest-50 cache's size as its atomics last published it.
pub fn recent_cache_state(rooms: usize, bytes: usize, evictions: u64) {
    gauge!(RECENT_ROOMS).set(rooms as f64);
    gauge!(RECENT_BYTES).set(bytes as f64);
    counter!(RECENT_EVICTIONS).absolute(evictions);
}

/// The process's resident memory, read now, and the redb cache setting.
pub fn process_state(redb_cache_bytes: usize) {
    gauge!(REDB_CACHE).set(redb_cache_bytes as f64);
    if let Some(bytes) = resident_bytes() {
        gauge!(RESIDENT).set(bytes as f64);
    }
}

/// The store's file size, read now.
pub fn store_state(file_bytes: u64) {
    gauge!(STORE_FILE).set(file_bytes as f64);
}

/// RSS from `/proc/self/statm` (its second field, in pages); `None` off Linux.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the running system.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

/// A writer round committed `jobs` writes, `new_messages` of them new messages.
pub fn committed(jobs: usize, new_messages: u64) {
    histogram!(COMMIT_BATCH_SIZE).record(jobs as f64);
    counter!(MESSAGES_STORED).increment(new_messages);
}

/// A writer round's commit (writing its pages and the fsyncs) took this long.
pub fn commit_took(elapsed: Duration) {
    histogram!(COMMIT_SECONDS).record(elapsed.as_secs_f64());
}

/// A send became durable this long after its frame arrived.
pub fn send_durable(elapsed: Duration) {
    histogram!(SEND_DURABLE).record(elapsed.as_secs_f64());
}

/// Retention deleted `messages` old messages.
pub fn retention_deleted(messages: u64) {
    counter!(RETENTION_DELETED).increment(messages);
}

/// A retention sweep finished.
pub fn retention_swept() {
    counter!(RETENTION_SWEEPS).increment(1);
}

/// This node started (`true`) or stopped running the cluster-wide duties.
pub fn cluster_duties(running: bool) {
    gauge!(DUTIES).set(if running { 1.0 } else { 0.0 });
}

/// Cluster mode started: its repair counters show from now on, each `kind` at zero.
pub fn cluster_started(kinds: &[&'static str]) {
    describe_counter!(
        CLUSTER_REPAIRS,
        "Cluster fan-out repairs, by kind: messages recovered from the store after a lost NATS \
         message, duplicates dropped, events dropped for a full fan-out queue, catch-ups of \
         every room after a NATS reconnect or slow consumer, receipts and updates recovered \
         from the store, duplicate ones dropped, holes in a room's changes read from the store, \
         connections of erased users closed by a catch-up after their notice was lost."
    );
    for &kind in kinds {
        counter!(CLUSTER_REPAIRS, "kind" => kind).absolute(0);
    }
    describe_counter!(
        CLUSTER_READS,
        "Cluster fan-out reads of the store: a room's messages for message:sent events \
         (notices from other nodes, gaps, catch-ups), its changes (with its messages when \
         both are needed, one read), a catch-up's erasures and users' active rooms."
    );
    counter!(CLUSTER_READS).absolute(0);
}

/// The cluster fan-out repaired one thing of `kind`.
pub fn cluster_repair(kind: &'static str) {
    counter!(CLUSTER_REPAIRS, "kind" => kind).increment(1);
}

/// The cluster fan-out read the store: a room's messages or changes, or for a catch-up
/// its users' erasures or active rooms.
pub fn cluster_read() {
    counter!(CLUSTER_READS).increment(1);
}

/// An error reply with `code` went to a client.
pub fn rejected(code: ErrorCode) {
    counter!(REJECTED, "code" => code.as_str()).increment(1);
}

/// `change` webhook events entered (positive) or left (negative) the outbox.
pub fn webhook_queued(change: i64) {
    gauge!(WEBHOOK_QUEUED).increment(change as f64);
}

/// Cluster mode: the outbox holds `count` events for this node's hooks, as counted in
/// PostgreSQL by the duties holder.
pub fn webhook_queued_counted(count: u64) {
    gauge!(WEBHOOK_QUEUED).set(count as f64);
}

/// A hook's delivery task found `count` dead letters already stored at startup.
pub fn webhook_dead_letters_stored(count: u64) {
    gauge!(WEBHOOK_DEAD_LETTERS).increment(count as f64);
}

/// The admin API moved `count` dead letters back to the outbox.
pub fn webhook_dead_letters_retried(count: u64) {
    gauge!(WEBHOOK_DEAD_LETTERS).decrement(count as f64);
}

/// A webhook event got its 2xx this long after its commit.
pub fn webhook_delivered(since_commit: Duration) {
    counter!(WEBHOOK_DELIVERED).increment(1);
    histogram!(WEBHOOK_DELIVERY).record(since_commit.as_secs_f64());
}

/// A webhook attempt failed.
pub fn webhook_failed() {
    counter!(WEBHOOK_FAILED).increment(1);
}

/// A failed webhook attempt will be made again.
pub fn webhook_retried() {
    counter!(WEBHOOK_RETRIED).increment(1);
}

/// A webhook event moved to the dead letters.
pub fn webhook_dead_lettered() {
    counter!(WEBHOOK_DEAD_LETTERED).increment(1);
    gauge!(WEBHOOK_DEAD_LETTERS).increment(1.0);
}
