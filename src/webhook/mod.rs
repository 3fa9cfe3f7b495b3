//! Webhooks: the app's own backend hears of every message, signed, retried, never lost, so
//! that it can notify users who are not connected (push notifications are its business: a
//! self-hosted server cannot talk to FCM or APNs for someone else's app).
//!
//! Why it is built this way:
//! - **A transactional outbox** (`outbox.rs`): a command writes its event into the store in
//!   the same transaction as the message it describes, so a crash can neither lose an
//!   event nor send one for a message that was never stored. Whether the recipient is
//!   online (for `offline_only`) is read from the broker as the command is applied.
//! - **Delivery reads the disk, not a queue** (`deliver.rs`): one task per hook pages
//!   through its outbox, holding at most `memory.webhook_window_events` events, so a hook
//!   that is down makes the outbox grow on disk, never the heap, and never slows a send.
//!   Each recipient's events go out in commit order, one at a time; recipients go
//!   concurrently. Finished events leave the outbox through writer commands, so there is
//!   still one writer: delivered ones in batches, one command for all delivered while the
//!   previous batch was being taken out.
//! - **One node posts** ([`crate::duties`]): in cluster mode every node writes into the
//!   one outbox, and only the holder of the duties lock posts it; a commit on any node
//!   wakes it through a PostgreSQL notification.
//! - **A 410 is the cluster's** (in cluster mode): the dead letter of the event that got
//!   it records the hook as gone in PostgreSQL, every node reads that record every
//!   [`GONE_POLL`] (so its writer stops writing the hook's events) and a node taking the
//!   duties reads it before it posts, so no node posts to that hook again until the
//!   cluster restarts, as one server does not until it restarts.
//! - **The cluster's outbox size** (in cluster mode): `chat_webhook_queued` is the
//!   duties holder's, counted in PostgreSQL ([`follow_queued`]); the other nodes, which
//!   post nothing, report 0, so that a sum over the nodes is the outbox.
//! - **At least once**: an event is removed only after a 2xx; a crash in between posts it
//!   again after the restart, with the same `id`, which receivers use to drop duplicates.
//! - **Signed** (`sign.rs`): HMAC-SHA256 over `"{timestamp}.{body}"`, the Stripe scheme,
//!   so a receiver can check both who sent it and that it is fresh.

mod deliver;
mod outbox;
mod sign;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::{WebhookConfig, WebhookEvent};
use crate::metrics;
use crate::store::ReadStore;

pub use deliver::{count, start, Delivery};
pub use outbox::{
    message_created, message_created_users, message_seen, message_seen_users, user_erased,
    user_erased_offline, RetryDeadLetters, EVENT_ID_PREFIX,
};
pub use sign::{signature, SIGNATURE_VERSION};

/// The configured hooks, shared by the writer (which writes their events) and the
/// delivery tasks.
pub struct Hooks {
    hooks: Vec<Hook>,
    /// Whether this node's `chat_webhook_queued` counts the outbox: always on one node;
    /// in cluster mode while it holds the duties ([`follow_queued`]).
    counting: AtomicBool,
}

/// One hook and what delivery has learnt about it.
pub struct Hook {
    pub config: WebhookConfig,
    /// Set once the receiver answered 410 Gone (in cluster mode: to any node): nothing
    /// more is written or posted for this hook until the server (the cluster) restarts.
    disabled: AtomicBool,
    /// Wakes the hook's delivery task when a commit put events in its outbox.
    wake: Notify,
}

impl Hooks {
    pub fn new(configs: &[WebhookConfig]) -> Hooks {
        Hooks {
            hooks: configs
                .iter()
                .map(|config| Hook {
                    config: config.clone(),
                    disabled: AtomicBool::new(false),
                    wake: Notify::new(),
                })
                .collect(),
            counting: AtomicBool::new(true),
        }
    }

    /// No hooks: commands write no events.
    pub fn none() -> Hooks {
        Hooks::new(&[])
    }

    /// Each enabled hook subscribed to `event`, with its index.
    pub fn subscribed(&self, event: WebhookEvent) -> impl Iterator<Item = (usize, &Hook)> {
        self.hooks
            .iter()
            .enumerate()
            .filter(move |(_, h)| h.config.events.contains(&event) && !h.is_disabled())
    }

    /// The index of the configured hook at `url`.
    pub fn index_of(&self, url: &str) -> Option<usize> {
        self.hooks.iter().position(|h| h.config.url == url)
    }

    /// Hook number `index`.
    pub fn get(&self, index: usize) -> &Hook {
        &self.hooks[index]
    }

    /// A commit put an event in hook `index`'s outbox.
    pub fn queued(&self, index: usize) {
        if self.counting.load(Ordering::Relaxed) {
            metrics::webhook_queued(1);
        }
        self.hooks[index].wake.notify_one();
    }

    /// Some commit, maybe on another node, put events in the outbox: every hook's
    /// delivery task reads its outbox again.
    pub fn wake_all(&self) {
        for hook in &self.hooks {
            hook.wake.notify_one();
        }
    }

    fn all(&self) -> &[Hook] {
        &self.hooks
    }
}

/// How often a node of a cluster reads which hooks are gone.
pub const GONE_POLL: Duration = Duration::from_secs(2);

/// Disables the hooks the store records as gone (a 410 on any node of the cluster); false
/// when the store could not say.
pub async fn learn_gone(hooks: &Hooks, store: &dyn ReadStore) -> bool {
    if hooks.hooks.is_empty() {
        return true;
    }
    match store.webhooks_gone().await {
        Ok(gone) => {
            for url in gone {
                if let Some(index) = hooks.index_of(&url) {
                    if hooks.get(index).disable() {
                        tracing::error!(
                            hook = %url,
                            "webhook answered 410 Gone to another node: disabled until the \
                             cluster restarts; its events go to the dead letters"
                        );
                    }
                }
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read which webhooks answered 410 Gone");
            false
        }
    }
}

/// Cluster mode: every [`GONE_POLL`], disables the hooks another node found gone, so that
/// this node's writer stops writing their events too.
pub fn follow_gone(hooks: Arc<Hooks>, store: Arc<dyn ReadStore>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(GONE_POLL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            learn_gone(&hooks, store.as_ref()).await;
        }
    })
}

/// The shortest wait between two counts of the cluster's outbox.
pub const QUEUED_POLL: Duration = Duration::from_secs(2);

/// Counting the outbox takes at most one part in this many of the time: a count that
/// took 50 ms (a few hundred thousand events) waits 5 s for the next.
const QUEUED_COUNT_SHARE: u32 = 100;

/// Cluster mode, on the duties holder: `chat_webhook_queued` is the outbox of the whole
/// cluster (this node's hooks), counted in PostgreSQL now and then every [`QUEUED_POLL`]
/// or longer, so that counting a large outbox (one index scan per count) stays a small
/// share of the database's time. In between, this node's own commits and deliveries
/// move it; what other nodes commit shows at the next count. Until then, and on the
/// other nodes, the gauge is 0. Stop it with [`Counting::stop`].
pub async fn follow_queued(hooks: Arc<Hooks>, store: Arc<dyn ReadStore>) -> Counting {
    hooks.counting.store(true, Ordering::Relaxed);
    let urls: Vec<String> = hooks.all().iter().map(|h| h.config.url.clone()).collect();
    if urls.is_empty() {
        return Counting { hooks, task: None };
    }
    let count = move || {
        let (store, urls) = (Arc::clone(&store), urls.clone());
        async move {
            let started = Instant::now();
            match store.webhook_queued(&urls).await {
                Ok(queued) => metrics::webhook_queued_counted(queued),
                Err(e) => tracing::warn!(error = %e, "cannot count the webhook outbox"),
            }
            QUEUED_POLL.max(started.elapsed() * QUEUED_COUNT_SHARE)
        }
    };
    // Once before delivery starts, so that the gauge never shows an outbox emptier than
    // it is.
    let mut wait = count().await;
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(wait).await;
            wait = count().await;
        }
    });
    Counting {
        hooks,
        task: Some(task),
    }
}

/// A running [`follow_queued`].
pub struct Counting {
    hooks: Arc<Hooks>,
    task: Option<JoinHandle<()>>,
}

impl Counting {
    /// This node no longer posts the outbox: its gauge says 0 again.
    pub fn stop(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        not_counting(&self.hooks);
    }
}

/// Cluster mode, on a node that does not hold the duties: its `chat_webhook_queued`
/// stays 0 ([`follow_queued`]).
pub fn not_counting(hooks: &Hooks) {
    hooks.counting.store(false, Ordering::Relaxed);
    metrics::webhook_queued_counted(0);
}

impl Hook {
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }

    /// Stops writing and posting events for this hook; true the first time.
    fn disable(&self) -> bool {
        !self.disabled.swap(true, Ordering::AcqRel)
    }
}
