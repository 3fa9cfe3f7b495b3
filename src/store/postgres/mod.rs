//! The PostgreSQL backend: cluster mode's store of record (issue 17), for several
//! chat-server nodes sharing one database. Chosen in `main.rs` when
//! `cluster.postgres_url` is set; otherwise nothing here runs.
//!
//! Reads ([`ReadStore`]) are async queries on a `deadpool-postgres` pool: each a single
//! statement, so each sees one snapshot, as a redb read transaction does. The write side
//! ([`WriteTxn`]) keeps the group-commit writer's model: one PostgreSQL transaction per
//! round on one dedicated connection (`txn`), committed with `synchronous_commit = on`,
//! so [`WriteTxn::commit`] returns once PostgreSQL has flushed the commit. A round's
//! statements go out pipelined, a handful of round trips per round rather than one per
//! statement (see `txn`).
//!
//! The writer is a plain OS thread and the write side is synchronous, while
//! tokio-postgres is async. A client's futures only talk to its connection task over
//! channels, so the writer polls them on its own thread (`wait`, parking between
//! wake-ups) while the connection task, the one part that needs tokio's reactor, runs on
//! a small runtime of the store's own (`PgStore::io`). That works whoever calls: the
//! writer thread, a test running inside a runtime, an admin command on a blocking thread.
//!
//! Nothing waits forever: every write statement has a deadline ([`OP_TIMEOUT`]), and a
//! connection that failed or timed out is dropped and made anew by the next round, so
//! service resumes by itself once PostgreSQL is back.

mod dump;
mod leader;
mod presence;
mod schema;
mod txn;
mod verify;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Row};

use super::{
    BlockChange, BlockCursor, BlockFrom, DeadLetter, ExpiryScan, Maintenance, MarkState,
    OutboxEvent, Read, ReadStore, Result, StoreCounts, StoreError, WebhookCounts, WriteStore,
    WriteTxn,
};
use crate::model::{
    BlockedUser, ChangesPage, ChatMessage, HistoryPage, InboxCursor, InboxRoom, RoomKey,
    SessionUser,
};

pub use dump::PgLoader;
pub use leader::{Leader, OnOutbox, Term};
pub use presence::PresenceBoard;
pub use schema::VERSION as SCHEMA_VERSION;

/// How long one statement may take before the store gives up on it (and on its
/// connection). Far above a healthy statement (milliseconds, or a lock held by another
/// node's round); it bounds how long a send waits when PostgreSQL hangs rather than fails.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long making a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns of a message, in the order [`message_from`] reads them.
const MESSAGE_COLUMNS: &str = "id, user_id, message, sent_ms, seen_ms, client_message_id, \
                               delivered_ms, edited_ms, deleted_ms, change";

/// Why PostgreSQL failed, in words an operator can act on; kept as the backend's error.
#[derive(Debug)]
struct PgError(String);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PgError {}

fn backend(what: String) -> StoreError {
    StoreError::Backend(Box::new(PgError(what)))
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        use tokio_postgres::error::SqlState;
        // The server's own words: tokio-postgres' Display says only "db error".
        let detail = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        let what = match e.code() {
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED => format!(
                "PostgreSQL: deadlock with another node's transaction; this round was rolled \
                 back: {detail}"
            ),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE => {
                format!("PostgreSQL: serialization failure; this round was rolled back: {detail}")
            }
            Some(_) => format!("PostgreSQL: {detail}"),
            None if e.is_closed() => format!("PostgreSQL: the connection is closed: {detail}"),
            None => format!("PostgreSQL is unreachable: {detail}"),
        };
        backend(what)
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> StoreError {
        backend(format!("PostgreSQL is unreachable: {e}"))
    }
}

/// The store: a pool for the reads, one connection for the writer's rounds.
pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
    /// Runs the writer connection's task (see the module docs). Shut down on drop without
    /// waiting, so dropping the store inside a runtime is allowed.
    io: Option<tokio::runtime::Runtime>,
    /// The writer's connection between rounds; `None` until the first round, or after
    /// one failed.
    writer_conn: Arc<Mutex<Option<txn::Conn>>>,
    /// Round trips the writer's connections made, for the tests that hold a round to a
    /// constant number of them.
    round_trips: Arc<AtomicU64>,
}

impl PgStore {
    /// Connects, applies the schema migrations, and refuses a database migrated by a newer
    /// chat-server. `pool_size` bounds the read connections (`cluster.postgres_pool_size`).
    pub fn open(url: &str, pool_size: usize) -> Result<PgStore> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| backend(format!("cluster.postgres_url is not a PostgreSQL URL: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true);
        config.application_name("chat-server");
        // Acknowledged means flushed: whatever the database's default, this store's
        // sessions commit synchronously. The server gives up on a statement before this
        // side does (so the connection stays usable), and ends a transaction left open
        // by a node that vanished mid-round (so its room locks do not outlive it).
        config.options(
            "-c synchronous_commit=on -c default_transaction_isolation=read\\ committed \
             -c statement_timeout=8s -c idle_in_transaction_session_timeout=15s",
        );
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("chat-pg-io")
            .enable_all()
            .build()
            .map_err(StoreError::Io)?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| backend(format!("cannot build the PostgreSQL pool: {e}")))?;
        let store = PgStore {
            pool,
            config,
            io: Some(io),
            writer_conn: Arc::new(Mutex::new(None)),
            round_trips: Arc::new(AtomicU64::new(0)),
        };
        let mut conn = store.connect()?;
        migrate(&mut conn)?;
        *store.writer_conn.lock().unwrap() = Some(conn);
        Ok(store)
    }

    /// Round trips the writer has made so far.
    #[cfg(test)]
    fn round_trips(&self) -> u64 {
        self.round_trips.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn io(&self) -> &tokio::runtime::Handle {
        self.io
            .as_ref()
            .expect("the runtime lives as long as the store")
            .handle()
    }

    /// A new connection whose task runs on the store's runtime.
    fn connect(&self) -> Result<txn::Conn> {
        Ok(txn::Conn::new(self.client()?, self.round_trips.clone()))
    }

    /// A new client of its own (not the pool's), its connection task on the store's
    /// runtime: for a long transaction (an export's walk, an import) that must not hold a
    /// pooled connection the requests need.
    fn client(&self) -> Result<tokio_postgres::Client> {
        let config = self.config.clone();
        let task = self.io().spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "PostgreSQL connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        Ok(wait(task, CONNECT_TIMEOUT + Duration::from_secs(1))?
            .map_err(|e| backend(format!("PostgreSQL connection task failed: {e}")))??)
    }

    /// A pooled connection for one read, within [`OP_TIMEOUT`].
    async fn read<T, F, Fut>(&self, query: F) -> Result<T>
    where
        F: FnOnce(deadpool_postgres::Client) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let work = async {
            let client = self.pool.get().await?;
            query(client).await
        };
        tokio::time::timeout(OP_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| Err(backend("PostgreSQL did not answer in time".into())))
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            io.shutdown_background();
        }
    }
}

/// Brings the database to [`schema::VERSION`], or refuses a newer one.
fn migrate(conn: &mut txn::Conn) -> Result<()> {
    conn.batch("BEGIN")?;
    conn.batch(schema::PREPARE)?;
    let rows = conn.query_raw("SELECT version FROM schema_version", &[])?;
    let found = rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64);
    if found > schema::VERSION {
        let _ = conn.batch("ROLLBACK");
        return Err(StoreError::NewerFormat {
            found,
            supported: schema::VERSION,
        });
    }
    for (at, migration) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
        tracing::info!(version = at + 1, "applying PostgreSQL schema migration");
        conn.batch(migration)?;
    }
    if rows.is_empty() {
        conn.query_raw(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&(schema::VERSION as i64)],
        )?;
    } else if found < schema::VERSION {
        conn.query_raw(
            "UPDATE schema_version SET version = $1",
            &[&(schema::VERSION as i64)],
        )?;
    }
    conn.batch("COMMIT")
}

/// Polls `future` on this thread until it is ready or `within` has passed (`None`).
/// Fit only for futures that need no runtime of the calling thread: a tokio-postgres
/// client's requests (its connection task runs on the store's runtime), a `JoinHandle`.
fn wait<F: Future>(future: F, within: Duration) -> Result<F::Output> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    let deadline = Instant::now() + within;
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Ok(out);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(backend(format!(
                "PostgreSQL did not answer within {} s",
                within.as_secs()
            )));
        }
        std::thread::park_timeout(deadline - now);
    }
}

fn message_from(row: &Row, at: usize) -> ChatMessage {
    ChatMessage {
        id: row.get::<_, i64>(at) as u64,
        user_id: row.get(at + 1),
        message: row.get(at + 2),
        sent_ms: row.get(at + 3),
        seen_ms: row.get(at + 4),
        client_message_id: row.get(at + 5),
        delivered_ms: row.get(at + 6),
        edited_ms: row.get(at + 7),
        deleted_ms: row.get(at + 8),
        change: row.get::<_, i64>(at + 9) as u64,
    }
}

/// Ids travel as `bigint`; one past `i64::MAX` is "no bound".
fn id_param(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

async fn profile_of(client: &deadpool_postgres::Client, user: &str) -> Result<SessionUser> {
    // Prepared once per connection: every history page and every message a receiving
    // node builds asks for a profile, and an unnamed statement costs a round trip and a
    // parse each time.
    let statement = client
        .prepare_cached("SELECT name FROM profiles WHERE user_id = $1")
        .await?;
    let row = client.query_opt(&statement, &[&user]).await?;
    Ok(SessionUser {
        id: user.to_owned(),
        name: row.map_or_else(|| user.to_owned(), |r| r.get(0)),
    })
}

/// A history page: the room's change counter and its messages in one statement, so the
/// position is never newer than the messages.
async fn page_query(
    client: &deadpool_postgres::Client,
    room: &RoomKey,
    viewer: &str,
    inner: &str,
    bound: i64,
    limit: usize,
) -> Result<HistoryPage> {
    let sql = format!(
        "SELECT r.change, m.* FROM rooms r LEFT JOIN LATERAL ({inner}) m ON true \
         WHERE r.low = $1 AND r.high = $2"
    );
    let (rows, partner) = futures_util::future::try_join(
        async {
            // Prepared once per connection, as in `profile_of`: a receiving node in
            // cluster mode reads a page for other nodes' messages.
            let statement = client.prepare_cached(&sql).await?;
            Ok::<_, StoreError>(
                client
                    .query(
                        &statement,
                        &[&room.low, &room.high, &bound, &limit_param(limit)],
                    )
                    .await?,
            )
        },
        profile_of(client, room.partner_of(viewer)),
    )
    .await?;
    let position = rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64);
    let messages = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(1).is_some())
        .map(|r| message_from(r, 1))
        .collect();
    Ok(HistoryPage {
        partner,
        messages,
        position,
    })
}

impl ReadStore for PgStore {
    fn find_by_client_id<'a>(
        &'a self,
        room: &'a RoomKey,
        sender: &'a str,
        client_message_id: &'a str,
    ) -> Read<'a, Option<ChatMessage>> {
        Box::pin(self.read(move |c| async move {
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE room = (SELECT num FROM rooms WHERE low = $1 AND high = $2) \
                 AND user_id = $3 AND client_message_id = $4"
            );
            let row = c
                .query_opt(&sql, &[&room.low, &room.high, &sender, &client_message_id])
                .await?;
            Ok(row.map(|r| message_from(&r, 0)))
        }))
    }

    fn messages_page<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        before: Option<u64>,
        limit: usize,
    ) -> Read<'a, HistoryPage> {
        Box::pin(self.read(move |c| async move {
            let inner = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE room = r.num AND id < $3 \
                 ORDER BY id DESC LIMIT $4"
            );
            let before = before.map_or(i64::MAX, id_param);
            page_query(&c, room, viewer, &inner, before, limit).await
        }))
    }

    fn messages_after<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        after: u64,
        limit: usize,
    ) -> Read<'a, HistoryPage> {
        Box::pin(self.read(move |c| async move {
            let inner = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE room = r.num AND id > $3 \
                 ORDER BY id LIMIT $4"
            );
            page_query(&c, room, viewer, &inner, id_param(after), limit).await
        }))
    }

    fn changes<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        since: u64,
        limit: usize,
    ) -> Read<'a, ChangesPage> {
        Box::pin(self.read(move |c| async move {
            let inner = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE room = r.num AND change > $3 \
                 ORDER BY change LIMIT $4"
            );
            // One more than asked for: whether more follow.
            let page = page_query(&c, room, viewer, &inner, id_param(since), limit + 1).await?;
            let room_exists = page.position > 0 || !page.messages.is_empty();
            let mut messages = page.messages;
            let more = messages.len() > limit;
            messages.truncate(limit);
            let position = if more {
                messages.last().map_or(since, |m| m.change)
            } else if room_exists {
                page.position
            } else {
                since
            };
            Ok(ChangesPage {
                partner: page.partner,
                messages,
                position,
                more,
            })
        }))
    }

    fn inbox_page<'a>(
        &'a self,
        user: &'a str,
        after: Option<&'a InboxCursor>,
        limit: usize,
    ) -> Read<'a, Vec<InboxRoom>> {
        Box::pin(self.read(move |c| async move {
            // Most recent first, then by room id bytewise, then room number: the order of
            // the embedded store's inbox keys, so cursors mean the same in both.
            let sql = format!(
                "WITH mine AS ( \
                   SELECT r.*, CASE WHEN r.low = $1 THEN r.high ELSE r.low END AS partner, \
                          (r.low || '-' || r.high) COLLATE \"C\" AS room_id \
                   FROM rooms r WHERE r.listed AND (r.low = $1 OR r.high = $1)) \
                 SELECT mine.num, mine.room_id, mine.partner, mine.last_sent_ms, \
                        CASE WHEN mine.low = mine.high THEN 0 \
                             WHEN mine.low = $1 THEN mine.unread_low \
                             ELSE mine.unread_high END, \
                        p.name, b.blocker IS NOT NULL, m.* \
                 FROM mine \
                 JOIN LATERAL (SELECT {MESSAGE_COLUMNS} FROM messages \
                               WHERE room = mine.num AND id = mine.last_id) m ON true \
                 LEFT JOIN profiles p ON p.user_id = mine.partner \
                 LEFT JOIN blocks b ON b.blocker = $1 AND b.blocked = mine.partner \
                                   AND b.since_ms IS NOT NULL \
                 WHERE $2::bigint IS NULL OR mine.last_sent_ms < $2 \
                    OR (mine.last_sent_ms = $2 AND (mine.room_id, mine.num) > ($3 COLLATE \"C\", $4)) \
                 ORDER BY mine.last_sent_ms DESC, mine.room_id, mine.num \
                 LIMIT $5"
            );
            let updated = after.map(|a| a.updated_ms);
            let room_id = after.map_or("", |a| a.room_id.as_str());
            let num = after.map_or(0, |a| id_param(a.room_num));
            let rows = c
                .query(&sql, &[&user, &updated, &room_id, &num, &limit_param(limit)])
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let partner: String = r.get(2);
                    let name: Option<String> = r.get(5);
                    let blocked: bool = r.get(6);
                    InboxRoom {
                        room_num: r.get::<_, i64>(0) as u64,
                        room_id: r.get(1),
                        updated_ms: r.get(3),
                        // A blocked partner's messages count for nothing while the block
                        // stands; the stored count is kept for after an unblock.
                        unread: if blocked { 0 } else { r.get::<_, i64>(4) as u64 },
                        partner: SessionUser {
                            name: name.unwrap_or_else(|| partner.clone()),
                            id: partner,
                        },
                        last_message: message_from(r, 7),
                        blocked,
                    }
                })
                .collect())
        }))
    }

    fn profile<'a>(&'a self, user: &'a str) -> Read<'a, SessionUser> {
        Box::pin(self.read(move |c| async move { profile_of(&c, user).await }))
    }

    fn blocks<'a>(&'a self, blocker: &'a str) -> Read<'a, Vec<BlockedUser>> {
        Box::pin(self.read(move |c| async move {
            let rows = c
                .query(
                    "SELECT b.blocked, b.since_ms, p.name FROM blocks b \
                     LEFT JOIN profiles p ON p.user_id = b.blocked \
                     WHERE b.blocker = $1 AND b.since_ms IS NOT NULL ORDER BY b.blocked",
                    &[&blocker],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let id: String = r.get(0);
                    let name: Option<String> = r.get(2);
                    BlockedUser {
                        user: SessionUser {
                            name: name.unwrap_or_else(|| id.clone()),
                            id,
                        },
                        since_ms: r.get(1),
                    }
                })
                .collect())
        }))
    }

    fn delivered_mark<'a>(
        &'a self,
        room: &'a RoomKey,
        reader: &'a str,
    ) -> Read<'a, Option<MarkState>> {
        Box::pin(self.read(move |c| async move {
            let row = c
                .query_opt(
                    "SELECT CASE WHEN low = $3 THEN delivered_low ELSE delivered_high END, \
                     last_id FROM rooms WHERE low = $1 AND high = $2 AND last_id > 0",
                    &[&room.low, &room.high, &reader],
                )
                .await?;
            Ok(row.map(|r| MarkState {
                mark: r.get::<_, i64>(0) as u64,
                last_id: r.get::<_, i64>(1) as u64,
            }))
        }))
    }

    fn blocked_between<'a>(&'a self, a: &'a str, b: &'a str) -> Read<'a, bool> {
        Box::pin(self.read(move |c| async move {
            let row = c
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM blocks WHERE since_ms IS NOT NULL \
                     AND ((blocker = $1 AND blocked = $2) OR (blocker = $2 AND blocked = $1)))",
                    &[&a, &b],
                )
                .await?;
            Ok(row.get(0))
        }))
    }

    fn block_changes<'a>(&'a self, blockers: &'a [BlockCursor]) -> Read<'a, Vec<BlockChange>> {
        Box::pin(self.read(move |c| async move {
            let users: Vec<&str> = blockers.iter().map(|b| b.blocker.as_str()).collect();
            let after: Vec<Option<i64>> = blockers
                .iter()
                .map(|b| match b.from {
                    BlockFrom::After(change) => Some(id_param(change)),
                    BlockFrom::Since(_) => None,
                })
                .collect();
            let since: Vec<Option<i64>> = blockers
                .iter()
                .map(|b| match b.from {
                    BlockFrom::After(_) => None,
                    BlockFrom::Since(ms) => Some(ms),
                })
                .collect();
            // A NULL compares as neither: each blocker's rows by the one cursor it has.
            let rows = c
                .query(
                    "SELECT b.blocker, b.blocked, b.since_ms, b.change \
                     FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS w(blocker, after, since) \
                     JOIN blocks b ON b.blocker = w.blocker \
                      AND (b.change > w.after OR b.changed_ms >= w.since) \
                     ORDER BY b.blocker, b.change",
                    &[&users, &after, &since],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| BlockChange {
                    blocker: r.get(0),
                    blocked: r.get(1),
                    since_ms: r.get(2),
                    change: r.get::<_, i64>(3) as u64,
                })
                .collect())
        }))
    }

    fn webhook_outbox<'a>(
        &'a self,
        hook: &'a str,
        after: Option<u64>,
        limit: usize,
    ) -> Read<'a, Vec<OutboxEvent>> {
        Box::pin(self.read(move |c| async move {
            let rows = c
                .query(
                    "SELECT seq, recipient, id, created_ms, body FROM webhook_outbox \
                     WHERE hook = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&hook, &after.map_or(0, id_param), &limit_param(limit)],
                )
                .await?;
            Ok(rows.iter().map(|r| outbox_event(r, 0)).collect())
        }))
    }

    fn webhook_dead_letters<'a>(
        &'a self,
        hook: &'a str,
        after: Option<u64>,
        limit: usize,
    ) -> Read<'a, Vec<DeadLetter>> {
        Box::pin(self.read(move |c| async move {
            let rows = c
                .query(
                    "SELECT seq, recipient, id, created_ms, body, reason, dead_ms \
                     FROM webhook_dead WHERE hook = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&hook, &after.map_or(0, id_param), &limit_param(limit)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| DeadLetter {
                    event: outbox_event(r, 0),
                    reason: r.get(5),
                    dead_ms: r.get(6),
                })
                .collect())
        }))
    }

    fn webhook_counts<'a>(&'a self, hook: &'a str) -> Read<'a, WebhookCounts> {
        Box::pin(self.read(move |c| async move {
            let row = c
                .query_one(
                    "SELECT (SELECT count(*) FROM webhook_outbox WHERE hook = $1), \
                            (SELECT count(*) FROM webhook_dead WHERE hook = $1)",
                    &[&hook],
                )
                .await?;
            Ok(WebhookCounts {
                pending: row.get::<_, i64>(0) as u64,
                dead: row.get::<_, i64>(1) as u64,
            })
        }))
    }

    fn rooms_to_expire(
        &self,
        cutoff_ms: i64,
        after: Option<u64>,
        limit: usize,
    ) -> Read<'_, ExpiryScan> {
        Box::pin(self.read(move |c| async move {
            let rows = c
                .query(
                    "SELECT r.num, r.low, r.high, \
                       (SELECT sent_ms FROM messages WHERE room = r.num ORDER BY id LIMIT 1) \
                     FROM rooms r WHERE r.num > $1 ORDER BY r.num LIMIT $2",
                    &[
                        &after.map_or(0, id_param),
                        &limit_param(limit.saturating_add(1)),
                    ],
                )
                .await?;
            let more = rows.len() > limit;
            let mut scan = ExpiryScan::default();
            for r in rows.iter().take(limit) {
                let oldest: Option<i64> = r.get(3);
                if oldest.is_some_and(|sent| sent < cutoff_ms) {
                    scan.rooms.push(RoomKey {
                        low: r.get(1),
                        high: r.get(2),
                    });
                }
            }
            if more {
                scan.next = rows
                    .get(limit.wrapping_sub(1))
                    .map(|r| r.get::<_, i64>(0) as u64);
            }
            Ok(scan)
        }))
    }

    fn erased_at<'a>(&'a self, user: &'a str) -> Read<'a, Option<i64>> {
        Box::pin(self.read(move |c| async move {
            let row = c
                .query_opt("SELECT at_ms FROM erased WHERE user_id = $1", &[&user])
                .await?;
            Ok(row.map(|r| r.get(0)))
        }))
    }

    /// One count over the outbox's primary key (hook, seq), without the dead letters.
    fn webhook_queued<'a>(&'a self, hooks: &'a [String]) -> Read<'a, u64> {
        Box::pin(self.read(move |c| async move {
            let row = c
                .query_one(
                    "SELECT count(*) FROM webhook_outbox WHERE hook = ANY($1)",
                    &[&hooks],
                )
                .await?;
            Ok(row.get::<_, i64>(0) as u64)
        }))
    }

    fn webhooks_gone(&self) -> Read<'_, Vec<String>> {
        Box::pin(self.read(|c| async move {
            let rows = c
                .query("SELECT hook FROM webhook_gone ORDER BY hook", &[])
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        }))
    }

    fn rooms_active_since<'a>(
        &'a self,
        user: &'a str,
        since_ms: i64,
        limit: usize,
    ) -> Read<'a, Vec<RoomKey>> {
        Box::pin(self.read(move |c| async move {
            // One range of each inbox index (`rooms_inbox_low`, `rooms_inbox_high`), each
            // stopping at `since_ms` and at `limit`; a self room is in the first only.
            let rows = c
                .query(
                    "(SELECT low, high, last_sent_ms FROM rooms \
                      WHERE listed AND low = $1 AND last_sent_ms >= $2 \
                      ORDER BY last_sent_ms DESC LIMIT $3) \
                     UNION ALL \
                     (SELECT low, high, last_sent_ms FROM rooms \
                      WHERE listed AND high = $1 AND low <> $1 AND last_sent_ms >= $2 \
                      ORDER BY last_sent_ms DESC LIMIT $3) \
                     ORDER BY last_sent_ms DESC LIMIT $3",
                    &[&user, &since_ms, &limit_param(limit)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| RoomKey {
                    low: r.get(0),
                    high: r.get(1),
                })
                .collect())
        }))
    }

    fn changes_and_page<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        since: u64,
        limit: usize,
        before: Option<u64>,
        page_limit: usize,
    ) -> Read<'a, (ChangesPage, HistoryPage)> {
        Box::pin(self.read(move |c| async move {
            // One statement: the changes (one more than asked for: whether more follow)
            // and the page, each message tagged with the half it answers; a message in
            // both comes twice.
            let inner = format!(
                "(SELECT true AS changed, {MESSAGE_COLUMNS} FROM messages \
                  WHERE room = r.num AND change > $3 ORDER BY change LIMIT $4) \
                 UNION ALL \
                 (SELECT false, {MESSAGE_COLUMNS} FROM messages \
                  WHERE room = r.num AND id < $5 ORDER BY id DESC LIMIT $6)"
            );
            let sql = format!(
                "SELECT r.change, m.* FROM rooms r LEFT JOIN LATERAL ({inner}) m ON true \
                 WHERE r.low = $1 AND r.high = $2"
            );
            let (rows, partner) = futures_util::future::try_join(
                async {
                    let statement = c.prepare_cached(&sql).await?;
                    Ok::<_, StoreError>(
                        c.query(
                            &statement,
                            &[
                                &room.low,
                                &room.high,
                                &id_param(since),
                                &limit_param(limit.saturating_add(1)),
                                &before.map_or(i64::MAX, id_param),
                                &limit_param(page_limit),
                            ],
                        )
                        .await?,
                    )
                },
                profile_of(&c, room.partner_of(viewer)),
            )
            .await?;
            let counter = rows.first().map(|r| r.get::<_, i64>(0) as u64);
            let (mut changed, mut latest) = (Vec::new(), Vec::new());
            for r in &rows {
                match r.get::<_, Option<bool>>(1) {
                    Some(true) => changed.push(message_from(r, 2)),
                    Some(false) => latest.push(message_from(r, 2)),
                    None => {}
                }
            }
            changed.sort_by_key(|m| m.change);
            latest.sort_by_key(|m| std::cmp::Reverse(m.id));
            let more = changed.len() > limit;
            changed.truncate(limit);
            // As `changes`: the last listed change while more follow, else the room's
            // counter (or `since` for a room that does not exist).
            let room_exists = counter.is_some_and(|c| c > 0) || !changed.is_empty();
            let position = match counter {
                _ if more => changed.last().map_or(since, |m| m.change),
                Some(counter) if room_exists => counter,
                _ => since,
            };
            let changes = ChangesPage {
                partner: partner.clone(),
                messages: changed,
                position,
                more,
            };
            let page = HistoryPage {
                partner,
                messages: latest,
                position: counter.unwrap_or(0),
            };
            Ok((changes, page))
        }))
    }

    fn erasures<'a>(&'a self, users: &'a [String]) -> Read<'a, Vec<(String, i64)>> {
        Box::pin(self.read(move |c| async move {
            let rows = c
                .query(
                    "SELECT user_id, at_ms FROM erased WHERE user_id = ANY($1)",
                    &[&users],
                )
                .await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        }))
    }
}

fn outbox_event(r: &Row, at: usize) -> OutboxEvent {
    OutboxEvent {
        seq: r.get::<_, i64>(at) as u64,
        recipient: r.get(at + 1),
        id: r.get(at + 2),
        created_ms: r.get(at + 3),
        body: r.get(at + 4),
    }
}

impl WriteStore for PgStore {
    fn begin(&self) -> Result<Box<dyn WriteTxn>> {
        // A connection that failed (PostgreSQL restarted, a timeout) is not given back,
        // and one whose connection task saw it close is not reused: the next round
        // connects anew, which is how service resumes by itself. The round's `BEGIN`
        // goes out with its first statement (see `txn`).
        let held = self.writer_conn.lock().unwrap().take();
        let conn = match held.filter(|c| !c.is_closed()) {
            Some(conn) => conn,
            None => self.connect()?,
        };
        Ok(Box::new(txn::Round::new(conn, self.writer_conn.clone())))
    }
}

impl Maintenance for PgStore {
    /// A dump of the whole database (`chat-server restore` loads it into an empty one),
    /// from one `REPEATABLE READ` snapshot: the backup of a database operators do not
    /// back up with PostgreSQL's own tools, or a copy to move to an embedded server.
    fn backup_into(&self, dest: &std::path::Path, _buffer_bytes: usize) -> Result<StoreCounts> {
        use crate::ops::export::{write_dump, ExportError};
        let io = |e: std::io::Error| backend(format!("cannot write {}: {e}", dest.display()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(io)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        let written = write_dump(self, None, &mut out).map_err(|e| match e {
            ExportError::Store(e) => e,
            ExportError::Write(e) => io(e),
        })?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(StoreCounts {
            rooms: written.rooms,
            messages: written.messages,
            highest_message_id: written.highest_message_id,
        })
    }

    /// The database's size on disk, as PostgreSQL counts it.
    fn file_bytes(&self) -> Result<u64> {
        let pool = self.pool.clone();
        let task = self.io().spawn(async move {
            let client = pool.get().await?;
            let row = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await?;
            Ok::<_, StoreError>(row.get::<_, i64>(0) as u64)
        });
        wait(task, OP_TIMEOUT)?
            .map_err(|e| backend(format!("PostgreSQL size query failed: {e}")))?
    }

    /// The dump from one `REPEATABLE READ` snapshot (`dump`), while the nodes go on.
    fn export_dump(
        &self,
        user: Option<&str>,
        out: &mut dyn std::io::Write,
    ) -> std::result::Result<crate::ops::export::Exported, crate::ops::export::ExportError> {
        crate::ops::export::write_dump(self, user, out)
    }
}

#[cfg(test)]
mod tests;
