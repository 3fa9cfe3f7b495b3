//! Which node runs the cluster-wide duties (webhook delivery, retention sweeps): the one
//! holding a PostgreSQL advisory lock, on a session of its own.
//!
//! Why an advisory lock: PostgreSQL already is the one thing every node shares and
//! trusts, and a session lock is released by PostgreSQL itself when the session ends,
//! so a node that dies (`kill -9`, a crash) hands the duties over as soon as its socket
//! closes, with no lease to expire and no consensus of our own. The other nodes wait in
//! `pg_advisory_lock` (no polling): the first in line gets it the moment it is free.
//!
//! The holder also `LISTEN`s for the outbox trigger's notifications (schema migration 2),
//! so an event committed on any node wakes the delivering node at once.
//!
//! Losing the lock is noticed from this side too: the session's connection ending, or a
//! heartbeat not answered within [`HEARTBEAT`], ends the term; the node stops its duties
//! before it closes the session, so that the next holder never overlaps with it. A node
//! that vanished without closing its socket (a network cut) is dropped by PostgreSQL
//! after its TCP keepalives fail ([`KEEPALIVE_OPTIONS`]), later than this side gives up.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{backend, CONNECT_TIMEOUT};
use crate::store::Result;

/// The advisory lock key of the duties (the schema migrations use another).
const DUTIES_LOCK: i64 = 7_235_361_813_413_870_918;
/// The channel the outbox trigger notifies.
const OUTBOX_CHANNEL: &str = "chat_webhook_outbox";
/// How often the holder checks that its session still answers, and how long it waits.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long to wait before trying again after PostgreSQL failed.
const RETRY: Duration = Duration::from_secs(1);
/// The server drops a session whose peer stopped answering after about 5 + 2 × 3 s, so a
/// holder cut off from the network frees the lock in seconds, not hours. No statement
/// timeout: the standbys wait in `pg_advisory_lock` for as long as the holder lives.
const KEEPALIVE_OPTIONS: &str = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 \
                                 -c tcp_keepalives_count=3 -c statement_timeout=0";

/// The election: each node makes one and campaigns whenever it does not hold the duties.
pub struct Leader {
    config: tokio_postgres::Config,
}

/// Called for each outbox notification while this node holds the duties.
pub type OnOutbox = Arc<dyn Fn() + Send + Sync>;

impl Leader {
    /// For the database at `url` (`cluster.postgres_url`).
    pub fn new(url: &str) -> Result<Leader> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| backend(format!("cluster.postgres_url is not a PostgreSQL URL: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        config.application_name("chat-server duties");
        config.options(KEEPALIVE_OPTIONS);
        Ok(Leader { config })
    }

    /// Waits until this node holds the duties lock, trying again for as long as
    /// PostgreSQL fails; `on_outbox` is called for each outbox notification during the
    /// term.
    pub async fn campaign(&self, on_outbox: OnOutbox) -> Term {
        loop {
            match self.try_campaign(on_outbox.clone()).await {
                Ok(term) => return term,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster duties: cannot campaign; trying again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    async fn try_campaign(&self, on_outbox: OnOutbox) -> Result<Term> {
        let (client, mut connection) = self.config.connect(NoTls).await?;
        let (ended_tx, ended) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            let why = loop {
                match messages.next().await {
                    Some(Ok(AsyncMessage::Notification(_))) => on_outbox(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break e.to_string(),
                    None => break "closed".to_owned(),
                }
            };
            let _ = ended_tx.send(why);
        });
        let term = Term {
            client,
            ended,
            task,
        };
        // Blocks until the lock is free: a standby's whole wait is this one statement.
        term.client
            .query_one("SELECT pg_advisory_lock($1)", &[&DUTIES_LOCK])
            .await?;
        // After the lock: the holder reads the whole outbox once it starts, so only what
        // commits from here on needs waking for.
        term.client
            .batch_execute(&format!("LISTEN {OUTBOX_CHANNEL}"))
            .await?;
        Ok(term)
    }
}

/// This node holds the duties lock until [`Term::lost`] returns; dropping the term closes
/// the session, which releases the lock.
pub struct Term {
    client: tokio_postgres::Client,
    /// Says why the session's connection ended.
    ended: oneshot::Receiver<String>,
    /// Drives the session's connection and hands notifications over.
    task: JoinHandle<()>,
}

impl Term {
    /// Returns once this node may no longer hold the lock: the session ended, or did not
    /// answer a heartbeat in time. Says why.
    pub async fn lost(&mut self) -> String {
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                why = &mut self.ended => {
                    return format!("the session ended: {}", why.unwrap_or_default());
                }
                _ = beat.tick() => {
                    match tokio::time::timeout(HEARTBEAT, self.client.simple_query("")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return format!("the session failed: {e}"),
                        Err(_) => {
                            return format!(
                                "the session did not answer within {} s",
                                HEARTBEAT.as_secs()
                            )
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        // The connection goes with its task; PostgreSQL then ends the session and
        // releases the lock.
        self.task.abort();
    }
}
