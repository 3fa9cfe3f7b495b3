//! The background duties that must run once per deployment, not once per node: posting
//! the webhook outbox and sweeping retention.
//!
//! On one node they simply run. In cluster mode every node shares one outbox and one set
//! of rooms: run on each node, every webhook event would be posted once per node, and
//! every node would repeat every sweep. So the node holding the PostgreSQL duties lock
//! ([`Leader`]) runs them, and the others wait in line for the lock; when the holder dies
//! or loses its session, the next node takes over and starts from what the store holds
//! (the outbox is read from its start, and a sweep runs at once). Delivery stays at least
//! once: an event posted by a node that died before taking it out of the outbox is posted
//! again, with the same `id`, by the next one. A hook whose receiver answered 410 Gone to
//! any node is read from the store before the holder posts, and every node keeps up with
//! those hooks while it runs ([`webhook::follow_gone`]), so none posts or writes for them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::metrics;
use crate::retention;
use crate::store::postgres::{Leader, Term};
use crate::store::ReadStore;
use crate::webhook::{self, Hooks};
use crate::writer::Writer;

/// What the duties need.
pub struct Work {
    pub hooks: Arc<Hooks>,
    pub store: Arc<dyn ReadStore>,
    pub writer: Writer,
    /// `memory.webhook_window_events`.
    pub webhook_window: usize,
    /// `retention.max_age_days`; 0 keeps everything.
    pub retention_days: u64,
}

/// The running duties; [`Duties::stop`] ends them.
pub struct Duties {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Duties {
    /// Runs `work` on this node: at once without `leader` (one node), else whenever this
    /// node holds the duties lock.
    pub fn spawn(work: Work, leader: Option<Leader>) -> Duties {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(work, leader, stopped));
        Duties { stop, task }
    }

    /// Stops the duties (a sweep in progress ends between its commands; an event posted
    /// and not yet taken out of the outbox is posted again by the next start) and, in
    /// cluster mode, hands the lock to the next node.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// How long the new holder waits before reading the hooks that are gone again, after the
/// store failed to say.
const GONE_RETRY: Duration = Duration::from_secs(1);

async fn run(work: Work, leader: Option<Leader>, mut stopped: oneshot::Receiver<()>) {
    metrics::cluster_duties(false);
    if leader.is_some() {
        webhook::not_counting(&work.hooks);
    }
    let follower = leader
        .as_ref()
        .map(|_| webhook::follow_gone(work.hooks.clone(), work.store.clone()));
    terms(&work, leader.as_ref(), &mut stopped).await;
    if let Some(following) = follower {
        following.abort();
    }
}

/// Runs the duties whenever this node holds them, until `stopped`.
async fn terms(work: &Work, leader: Option<&Leader>, stopped: &mut oneshot::Receiver<()>) {
    loop {
        let mut term = match leader {
            None => None,
            Some(leader) => {
                let hooks = work.hooks.clone();
                tokio::select! {
                    term = leader.campaign(Arc::new(move || hooks.wake_all())) => Some(term),
                    _ = &mut *stopped => return,
                }
            }
        };
        let mut counting = None;
        if term.is_some() {
            tracing::info!("cluster duties: this node now delivers webhooks and sweeps retention");
            // Before posting: a hook gone (410) for the last holder stays gone.
            while !webhook::learn_gone(&work.hooks, work.store.as_ref()).await {
                tokio::select! {
                    () = tokio::time::sleep(GONE_RETRY) => {}
                    _ = &mut *stopped => return,
                }
            }
            // The holder's `chat_webhook_queued` is the cluster's outbox.
            counting = Some(webhook::follow_queued(work.hooks.clone(), work.store.clone()).await);
        }
        metrics::cluster_duties(true);
        let delivery = webhook::start(
            work.hooks.clone(),
            work.store.clone(),
            work.writer.clone(),
            work.webhook_window,
        );
        let sweeper =
            retention::spawn(work.store.clone(), work.writer.clone(), work.retention_days);
        let lost = tokio::select! {
            why = held_until_lost(&mut term) => Some(why),
            _ = &mut *stopped => None,
        };
        // Stopped before the lock is released (`term` dropped), so the next holder never
        // runs them alongside this node.
        delivery.stop();
        if let Some(counting) = counting {
            counting.stop();
        }
        if let Some(sweeping) = sweeper {
            sweeping.abort();
        }
        metrics::cluster_duties(false);
        drop(term);
        match lost {
            Some(why) => {
                tracing::warn!(%why, "cluster duties: lost the lock; waiting for it again")
            }
            None => return,
        }
    }
}

/// Returns why the term ended; never, on one node.
async fn held_until_lost(term: &mut Option<Term>) -> String {
    match term {
        Some(term) => term.lost().await,
        None => std::future::pending().await,
    }
}
