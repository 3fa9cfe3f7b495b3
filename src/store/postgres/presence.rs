//! Presence across nodes, for `offline_only` webhooks: whether a recipient has a
//! connection anywhere in the cluster, not only on the node that commits their message.
//!
//! Each node writes the users connected to it into the `presence` table (schema migration
//! 2) as its hub's presence changes (a user's first connection here, their last one), and
//! beats a heartbeat in `cluster_nodes`. The writer asks the table, inside its
//! transaction, only when the hub says the recipient has no connection here, and leaves
//! this node's rows out ([`crate::store::WriteTxn::online_elsewhere`]): for all the
//! recipients a round's commands name at once, with the round's first statement
//! ([`crate::store::WriteTxn::read_hook_users`]). A node that dies stops beating: after
//! [`NODE_EXPIRY`] its rows count for nothing, and an hour later they are deleted. A node
//! starting (or reconnecting to PostgreSQL) rewrites its whole list, which clears what a
//! previous run under the same name left.
//!
//! The presence session also says the node is alive to the others: it holds the nodes
//! lock ([`NODES_LOCK`]) shared for as long as it lives, and PostgreSQL frees it the
//! moment the session ends (`kill -9` included). A node that starts and can take that
//! lock exclusively is the only one: the cluster starts afresh, so it clears what lasts
//! only as long as a run of the cluster (hooks disabled by a 410, schema migration 3,
//! as one server's last until it restarts). It does so before it serves or takes the
//! duties.
//!
//! The heartbeat also enforces erasures: an erasure's notice crosses NATS once, and core
//! NATS may lose it (the erasing node's NATS link down at that moment, which no other node
//! hears of). With each heartbeat the node asks which of the users it lists here were
//! erased, and closes the connections admitted with a token from before the erasure,
//! as the notice would have: an erasure holds on every node within a heartbeat or two,
//! for one query joining this node's presence rows to `erased` every 5 s.
//!
//! Changes wait in a set, one entry per user, until the task writes them (milliseconds,
//! unless PostgreSQL is down); past `cluster.presence_pending_users` the set is dropped
//! and the next write rewrites the node's whole list from the hub instead.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use super::{backend, CONNECT_TIMEOUT};
use crate::fanout::hub::{Hub, Presence};
use crate::fanout::Broker;
use crate::store::Result;

/// A node whose heartbeat is older than this is taken for dead: its users count as
/// offline. Three heartbeats.
pub const NODE_EXPIRY: Duration = Duration::from_secs(15);
/// How often a node says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long to wait before trying again after PostgreSQL failed.
const RETRY: Duration = Duration::from_secs(1);
/// The advisory lock key every live node holds shared (the migrations and the duties use
/// others).
const NODES_LOCK: i64 = 7_235_361_813_413_870_919;

/// This process's node name, once its board started: the writer's question leaves this
/// node's rows out (its hub answers for them, and is never behind them). One per process,
/// as a process is one node.
static THIS_NODE: OnceLock<String> = OnceLock::new();

/// The name this node's rows go by; empty before a board started.
pub(super) fn this_node() -> &'static str {
    THIS_NODE.get().map_or("", String::as_str)
}

/// Writes this node's presence until dropped.
pub struct PresenceBoard {
    task: JoinHandle<()>,
}

/// Between the hub's watcher and the task.
struct Shared {
    pending: Mutex<Pending>,
    wake: Notify,
    /// `cluster.presence_pending_users`.
    cap: usize,
}

#[derive(Default)]
struct Pending {
    users: HashSet<String>,
    /// The set passed its cap and was dropped: rewrite the whole list.
    overflowed: bool,
}

struct Watcher(Arc<Shared>);

impl Presence for Watcher {
    fn changed(&self, user: &str) {
        let mut pending = self.0.pending.lock().expect("presence lock poisoned");
        if !pending.overflowed {
            if pending.users.len() < self.0.cap {
                pending.users.insert(user.to_owned());
            } else {
                pending.users = HashSet::new();
                pending.overflowed = true;
            }
        }
        self.0.wake.notify_one();
    }
}

impl PresenceBoard {
    /// Joins the cluster (see the module docs) and starts writing the presence of `hub`'s
    /// users, as node `node`, into the database at `url` (`cluster.postgres_url`).
    pub async fn start(url: &str, node: String, hub: Arc<Hub>, pending_cap: usize) -> Result<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| backend(format!("cluster.postgres_url is not a PostgreSQL URL: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true);
        config.application_name("chat-server presence");
        config.options("-c statement_timeout=8s");
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            wake: Notify::new(),
            cap: pending_cap.max(1),
        });
        if THIS_NODE.set(node.clone()).is_err() {
            return Err(backend("a process writes the presence of one node".into()));
        }
        let (client, connection) = connect(&config).await?;
        if let Err(e) = join(&client).await {
            connection.abort();
            return Err(e.into());
        }
        hub.watch_presence(Arc::new(Watcher(shared.clone())));
        let task = tokio::spawn(run(config, node, hub, shared, Some((client, connection))));
        Ok(PresenceBoard { task })
    }
}

impl Drop for PresenceBoard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A session and the task driving its connection.
type Session = (Client, JoinHandle<()>);

async fn connect(
    config: &tokio_postgres::Config,
) -> std::result::Result<Session, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, connection))
}

/// A node's first presence session: clears the cluster's run-long state if no other node
/// is alive, then holds the nodes lock shared.
async fn join(client: &Client) -> std::result::Result<(), tokio_postgres::Error> {
    let alone: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&NODES_LOCK])
        .await?
        .get(0);
    if alone {
        let enabled = client.execute("DELETE FROM webhook_gone", &[]).await?;
        if enabled > 0 {
            tracing::info!(
                hooks = enabled,
                "cluster start: hooks disabled by a 410 during the last run are enabled again"
            );
        }
    }
    client
        .query_one("SELECT pg_advisory_lock_shared($1)", &[&NODES_LOCK])
        .await?;
    if alone {
        client
            .query_one("SELECT pg_advisory_unlock($1)", &[&NODES_LOCK])
            .await?;
    }
    Ok(())
}

/// A later session, after PostgreSQL failed: the node was alive all along, so it only
/// takes the nodes lock again.
async fn rejoin(
    config: &tokio_postgres::Config,
) -> std::result::Result<Session, tokio_postgres::Error> {
    let (client, connection) = connect(config).await?;
    match client
        .query_one("SELECT pg_advisory_lock_shared($1)", &[&NODES_LOCK])
        .await
    {
        Ok(_) => Ok((client, connection)),
        Err(e) => {
            connection.abort();
            Err(e)
        }
    }
}

async fn run(
    config: tokio_postgres::Config,
    node: String,
    hub: Arc<Hub>,
    shared: Arc<Shared>,
    mut joined: Option<Session>,
) {
    loop {
        let session = match joined.take() {
            Some(session) => Ok(session),
            None => rejoin(&config).await,
        };
        match session {
            Ok((mut client, connection)) => {
                let e = serve(&mut client, &node, &hub, &shared).await;
                tracing::warn!(error = %e, "cluster presence: PostgreSQL failed; reconnecting");
                connection.abort();
            }
            Err(e) => tracing::warn!(error = %e, "cluster presence: cannot connect"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Writes changes and heartbeats until PostgreSQL fails. The first write rewrites the
/// node's whole list: what changed while disconnected was not written.
async fn serve(
    client: &mut tokio_postgres::Client,
    node: &str,
    hub: &Hub,
    shared: &Shared,
) -> tokio_postgres::Error {
    let mut whole = true;
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = {
            let mut pending = shared.pending.lock().expect("presence lock poisoned");
            whole |= std::mem::take(&mut pending.overflowed);
            std::mem::take(&mut pending.users)
        };
        let written = if whole {
            rewrite(client, node, hub.online_users()).await
        } else {
            write(client, node, hub, changed).await
        };
        if let Err(e) = written {
            return e;
        }
        whole = false;
        tokio::select! {
            () = shared.wake.notified() => {}
            _ = beat.tick() => {
                if let Err(e) = heartbeat(client, node).await {
                    return e;
                }
                if let Err(e) = close_erased(client, node, hub).await {
                    return e;
                }
            }
        }
    }
}

/// This node's list is exactly `users`.
async fn rewrite(
    client: &mut tokio_postgres::Client,
    node: &str,
    users: Vec<String>,
) -> std::result::Result<(), tokio_postgres::Error> {
    let txn = client.transaction().await?;
    txn.execute("DELETE FROM presence WHERE node = $1", &[&node])
        .await?;
    txn.execute(
        "INSERT INTO presence (user_id, node) SELECT unnest($2::text[]), $1 \
         ON CONFLICT DO NOTHING",
        &[&node, &users],
    )
    .await?;
    txn.commit().await
}

/// Writes what became of each user in `changed`, as the hub has it now.
async fn write(
    client: &tokio_postgres::Client,
    node: &str,
    hub: &Hub,
    changed: HashSet<String>,
) -> std::result::Result<(), tokio_postgres::Error> {
    if changed.is_empty() {
        return Ok(());
    }
    let (online, offline): (Vec<String>, Vec<String>) =
        changed.into_iter().partition(|user| hub.is_online(user));
    if !online.is_empty() {
        client
            .execute(
                "INSERT INTO presence (user_id, node) SELECT unnest($2::text[]), $1 \
                 ON CONFLICT DO NOTHING",
                &[&node, &online],
            )
            .await?;
    }
    if !offline.is_empty() {
        client
            .execute(
                "DELETE FROM presence WHERE node = $1 AND user_id = ANY($2)",
                &[&node, &offline],
            )
            .await?;
    }
    Ok(())
}

/// Says this node is alive, and deletes what nodes dead for an hour left.
async fn heartbeat(
    client: &tokio_postgres::Client,
    node: &str,
) -> std::result::Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO cluster_nodes (name, seen) VALUES ($1, now()) \
             ON CONFLICT (name) DO UPDATE SET seen = now()",
            &[&node],
        )
        .await?;
    client
        .batch_execute(
            "DELETE FROM presence WHERE node IN \
               (SELECT name FROM cluster_nodes WHERE seen < now() - interval '1 hour'); \
             DELETE FROM cluster_nodes WHERE seen < now() - interval '1 hour'",
        )
        .await
}

/// Closes this node's connections of users erased after they were admitted (the ones
/// whose token predates the erasure, [`Hub::disconnect_erased`]): the erasure's NATS
/// notice closes them at once, and this, with every heartbeat, whatever became of the
/// notice. One index probe of `erased` per user listed here; a connection admitted
/// after the erasure is left alone, so asking again closes nothing twice.
async fn close_erased(
    client: &tokio_postgres::Client,
    node: &str,
    hub: &Hub,
) -> std::result::Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT e.user_id, e.at_ms FROM presence p \
             JOIN erased e ON e.user_id = p.user_id WHERE p.node = $1",
            &[&node],
        )
        .await?;
    for row in rows {
        let (user, at_ms): (String, i64) = (row.get(0), row.get(1));
        let connections = hub.disconnect_erased(&user, at_ms);
        if connections > 0 {
            tracing::info!(%user, connections, "user erased on another node: connections closed");
        }
    }
    Ok(())
}
