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
//!   concurrently. Finished events leave the outbox through small writer commands, so
//!   there is still one writer.
//! - **One node posts** ([`crate::duties`]): in cluster mode every node writes into the
//!   one outbox, and only the holder of the duties lock posts it; a commit on any node
//!   wakes it through a PostgreSQL notification.
//! - **A 410 is the cluster's** (in cluster mode): the dead letter of the event that got
//!   it records the hook as gone in PostgreSQL, every node reads that record every
//!   [`GONE_POLL`] (so its writer stops writing the hook's events) and a node taking the
//!   duties reads it before it posts, so no node posts to that hook again until the
//!   cluster restarts, as one server does not until it restarts.
//! - **At least once**: an event is removed only after a 2xx; a crash in between posts it
//!   again after the restart, with the same `id`, which receivers use to drop duplicates.
//! - **Signed** (`sign.rs`): HMAC-SHA256 over `"{timestamp}.{body}"`, the Stripe scheme,
//!   so a receiver can check both who sent it and that it is fresh.

mod deliver;
mod outbox;
mod sign;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::{WebhookConfig, WebhookEvent};
use crate::metrics;
use crate::store::ReadStore;

pub use deliver::{count, start, Delivery};
pub use outbox::{
    message_created, message_seen, user_erased, user_erased_offline, RetryDeadLetters,
    EVENT_ID_PREFIX,
};
pub use sign::{signature, SIGNATURE_VERSION};

/// The configured hooks, shared by the writer (which writes their events) and the
/// delivery tasks.
pub struct Hooks {
    hooks: Vec<Hook>,
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
        }
    }

    /// No hooks: commands write no events.
    pub fn none() -> Hooks {
        Hooks { hooks: Vec::new() }
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
        metrics::webhook_queued(1);
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

impl Hook {
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }

    /// Stops writing and posting events for this hook; true the first time.
    fn disable(&self) -> bool {
        !self.disabled.swap(true, Ordering::AcqRel)
    }
}
