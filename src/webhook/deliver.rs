//! Posting the outbox: one task per hook, reading its outbox from the store a window at a
//! time, posting each recipient's events in order and recipients concurrently.
//!
//! The window (`memory.webhook_window_events`) is the only memory a hook's backlog takes:
//! past it, events stay on disk until earlier ones are finished. Each event is retried
//! with exponential backoff and full jitter (a receiver coming back up is not hit by every
//! event at the same instant) until a 2xx, or until `give_up_after_secs` after its commit,
//! when it moves to the dead letters. A 410 Gone disables the hook: the receiver says the
//! endpoint is gone for good, so its events go to the dead letters rather than being
//! retried for a day.
//!
//! A delivered event is taken out of the outbox with the others delivered meanwhile: one
//! writer command (PostgreSQL: one statement) per batch, not one per event. One batch is
//! in flight at a time and the next is sent as soon as it is answered, so a batch holds
//! what was delivered during one writer round: at most the window, and never waiting on
//! a timer. Until removed, an event keeps its place in the window. A recipient's next
//! event is posted once the previous one got its 2xx, not once it is removed: if the
//! node stops in between, both are posted again, in order, with their ids (at least once).
//!
//! Redirects are never followed (hyper's client does not, and nothing here does): a 3xx
//! counts as a failure and is retried, so a receiver that moved must be reconfigured,
//! and an event is never posted to a host the operator did not name.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::{JoinHandle, JoinSet};

use super::outbox::{GiveUp, RemoveDelivered};
use super::sign::signature;
use super::{Hook, Hooks};
use crate::metrics;
use crate::protocol::time::now_millis;
use crate::store::{OutboxEvent, ReadStore};
use crate::writer::{outcome, Writer};

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How long to wait before reading the outbox again after the store failed to answer.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The running delivery tasks; [`Delivery::stop`] ends them.
pub struct Delivery {
    tasks: Vec<JoinHandle<()>>,
}

impl Delivery {
    /// Stops posting. An event posted but not yet removed is posted again after the next
    /// start: delivery is at least once.
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Counts what each hook's outbox and dead letters hold, for `/metrics`. Call it once,
/// before serving: counted here, an event committed later is counted by the writer, never
/// twice.
pub async fn count(hooks: &Hooks, store: &dyn ReadStore) {
    for hook in hooks.all() {
        let url = &hook.config.url;
        match store.webhook_counts(url).await {
            Ok(counts) => {
                metrics::webhook_queued(counts.pending as i64);
                metrics::webhook_dead_letters_stored(counts.dead);
            }
            Err(e) => tracing::error!(error = %e, hook = %url, "cannot count the webhook outbox"),
        }
    }
}

/// Starts one delivery task per hook, each reading its outbox from the start and holding
/// at most `window` events in memory.
pub fn start(
    hooks: Arc<Hooks>,
    store: Arc<dyn ReadStore>,
    writer: Writer,
    window: usize,
) -> Delivery {
    let client = http_client(window);
    let tasks = (0..hooks.all().len())
        .map(|index| {
            let task = HookTask {
                hooks: Arc::clone(&hooks),
                index,
                store: Arc::clone(&store),
                writer: writer.clone(),
                client: client.clone(),
                window: window.max(1),
            };
            tokio::spawn(task.run())
        })
        .collect();
    Delivery { tasks }
}

/// http and https (rustls, with the Mozilla roots compiled in, so a container needs no CA
/// bundle); at most `idle` idle connections per receiver.
fn http_client(idle: usize) -> HttpClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .build(https)
}

/// Delivers one hook's outbox.
struct HookTask {
    /// All hooks, shared with the writer: this task's hook is `hooks[index]`, whose
    /// `disabled` flag both sides read.
    hooks: Arc<Hooks>,
    index: usize,
    /// Where the outbox is read from, a window at a time.
    store: Arc<dyn ReadStore>,
    /// Where finished events are taken out of the outbox: the one writer.
    writer: Writer,
    /// Shared by all hooks; it pools connections per receiver.
    client: HttpClient,
    /// Most events of this hook in memory at once (`memory.webhook_window_events`).
    window: usize,
}

/// What became of one event.
enum Outcome {
    /// Answered 2xx, this long after its commit.
    Delivered(Duration),
    /// Given up on, with why; `gone` when the receiver answered 410 Gone.
    Dead { reason: String, gone: bool },
}

impl Outcome {
    fn dead(reason: String) -> Outcome {
        Outcome::Dead {
            reason,
            gone: false,
        }
    }

    fn gone() -> Outcome {
        Outcome::Dead {
            reason: "the hook answered 410 Gone; it is disabled".into(),
            gone: true,
        }
    }
}

impl HookTask {
    fn hook(&self) -> &Hook {
        &self.hooks.all()[self.index]
    }

    async fn run(self) {
        let url = self.hook().config.url.clone();
        let this = Arc::new(self);
        // The events in memory, by recipient, oldest first; each lane's head is being
        // posted by a task in `posting`.
        let mut lanes: HashMap<String, VecDeque<OutboxEvent>> = HashMap::new();
        let mut posting: JoinSet<Posted> = JoinSet::new();
        // Delivered events not yet taken out of the outbox, and the one batch being taken
        // out (its size, once done).
        let mut delivered: Vec<(u64, Duration)> = Vec::new();
        let mut removing: JoinSet<usize> = JoinSet::new();
        // Events read and not yet finished (removed, or given up on).
        let mut loaded = 0;
        let mut last_seq = None;
        let mut maybe_more = true;
        loop {
            if maybe_more && loaded < this.window {
                let want = this.window - loaded;
                match this.store.webhook_outbox(&url, last_seq, want).await {
                    Ok(page) => {
                        maybe_more = page.len() == want;
                        loaded += page.len();
                        for event in page {
                            last_seq = Some(event.seq);
                            let lane = lanes.entry(event.recipient.clone()).or_default();
                            if lane.is_empty() {
                                posting.spawn(Arc::clone(&this).post(event.clone()));
                            }
                            lane.push_back(event);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, hook = %url, "cannot read the webhook outbox");
                        tokio::time::sleep(STORE_RETRY).await;
                        continue;
                    }
                }
            }
            if removing.is_empty() && !delivered.is_empty() {
                removing.spawn(Arc::clone(&this).remove(std::mem::take(&mut delivered)));
            }
            tokio::select! {
                () = this.hook().wake.notified(), if !maybe_more => maybe_more = true,
                Some(removed) = removing.join_next() => match removed {
                    Ok(count) => loaded -= count,
                    Err(e) => panic!("taking delivered webhook events out panicked: {e}"),
                },
                Some(finished) = posting.join_next() => {
                    let Posted { recipient, seq, delivered: took } = match finished {
                        Ok(posted) => posted,
                        Err(e) => panic!("a webhook post panicked: {e}"),
                    };
                    match took {
                        Some(took) => delivered.push((seq, took)),
                        None => loaded -= 1,
                    }
                    let lane = lanes.get_mut(&recipient).expect("a posted event has a lane");
                    lane.pop_front();
                    match lane.front() {
                        Some(next) => {
                            posting.spawn(Arc::clone(&this).post(next.clone()));
                        }
                        None => {
                            lanes.remove(&recipient);
                        }
                    }
                }
            }
        }
    }

    /// Posts `event` until it is delivered or given up; one given up on goes to the dead
    /// letters now, one delivered is left to [`HookTask::remove`].
    async fn post(self: Arc<Self>, event: OutboxEvent) -> Posted {
        let hook = self.hook();
        let url = &hook.config.url;
        let (reason, gone) = match self.attempts(&event).await {
            Outcome::Delivered(took) => {
                return Posted {
                    recipient: event.recipient,
                    seq: event.seq,
                    delivered: Some(took),
                }
            }
            Outcome::Dead { reason, gone } => (reason, gone),
        };
        let give_up = GiveUp {
            hook: url.clone(),
            seq: event.seq,
            reason: reason.clone(),
            gone,
        };
        match outcome(self.writer.submit(give_up).await).await {
            Ok(true) => {
                metrics::webhook_queued(-1);
                tracing::error!(
                    hook = %url, id = %event.id, recipient = %event.recipient, %reason,
                    "webhook event moved to the dead letters"
                );
                metrics::webhook_dead_lettered();
            }
            // Already gone: a node that held the duties before this one delivered it.
            Ok(false) => {}
            // It stays in the outbox and is posted again after a restart.
            Err(e) => tracing::error!(error = %e.message, hook = %url, id = %event.id,
                "cannot move a webhook event to the dead letters"),
        }
        Posted {
            recipient: event.recipient,
            seq: event.seq,
            delivered: None,
        }
    }

    /// Takes a batch of delivered events out of the outbox; answers how many it held.
    async fn remove(self: Arc<Self>, delivered: Vec<(u64, Duration)>) -> usize {
        let url = &self.hook().config.url;
        let command = RemoveDelivered {
            hook: url.clone(),
            seqs: delivered.iter().map(|(seq, _)| *seq).collect(),
        };
        match outcome(self.writer.submit(command).await).await {
            Ok(mut removed) => {
                removed.sort_unstable();
                // Those not there any more were delivered by a node that held the duties
                // before this one, and counted there.
                for (seq, took) in &delivered {
                    if removed.binary_search(seq).is_ok() {
                        metrics::webhook_delivered(*took);
                    }
                }
                metrics::webhook_queued(-(removed.len() as i64));
            }
            // They stay in the outbox and are posted again after a restart.
            Err(e) => tracing::error!(error = %e.message, hook = %url, events = delivered.len(),
                "cannot take delivered webhook events out of the outbox"),
        }
        delivered.len()
    }

    /// Attempts until a 2xx, a 410, or the give-up time.
    async fn attempts(&self, event: &OutboxEvent) -> Outcome {
        let hook = self.hook();
        let config = &hook.config;
        let give_up_at = event
            .created_ms
            .saturating_add((config.give_up_after_secs.saturating_mul(1000)) as i64);
        let mut backoff = Duration::from_millis(config.initial_backoff_ms);
        let max_backoff = Duration::from_secs(config.max_backoff_secs);
        loop {
            if hook.is_disabled() {
                return Outcome::gone();
            }
            let failure = match self.attempt(event).await {
                Ok(status) if status.is_success() => {
                    return Outcome::Delivered(elapsed_since(event.created_ms))
                }
                Ok(StatusCode::GONE) => {
                    if hook.disable() {
                        tracing::error!(
                            hook = %config.url,
                            "webhook answered 410 Gone: disabled until restart (in cluster \
                             mode, of the cluster); its events go to the dead letters"
                        );
                    }
                    return Outcome::gone();
                }
                Ok(status) if status.is_redirection() => {
                    format!("answered {status}; redirects are not followed")
                }
                Ok(status) => format!("answered {status}"),
                Err(e) => e,
            };
            metrics::webhook_failed();
            let left = give_up_at - now_millis();
            if left <= 0 {
                return Outcome::dead(format!(
                    "not delivered within {} s; last attempt: {failure}",
                    config.give_up_after_secs
                ));
            }
            tracing::debug!(hook = %config.url, id = %event.id, %failure, "webhook attempt failed");
            metrics::webhook_retried();
            // Full jitter over the upper half, so that the wait still grows.
            let wait = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
            tokio::time::sleep(wait.min(Duration::from_millis(left as u64))).await;
            backoff = (backoff * 2).min(max_backoff);
        }
    }

    /// One signed POST; the status, or why there was none.
    async fn attempt(&self, event: &OutboxEvent) -> Result<StatusCode, String> {
        let config = &self.hook().config;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let request = Request::post(config.url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("chat-server/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", event.id.as_str())
            .header("webhook-timestamp", timestamp)
            .header(
                "webhook-signature",
                signature(&config.secret, timestamp, &event.body),
            )
            .body(Full::new(Bytes::from(event.body.clone())))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let timeout = Duration::from_secs(config.timeout_secs);
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            // The body is not read: only the status matters.
            Ok(Ok(response)) => Ok(response.status()),
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err(format!("no answer within {} s", config.timeout_secs)),
        }
    }
}

/// A post finished: whose lane may go on, and when it was delivered, how long after its
/// commit (`None`: given up on).
struct Posted {
    recipient: String,
    seq: u64,
    delivered: Option<Duration>,
}

/// The error and its causes, which is where hyper's client says what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn elapsed_since(created_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_millis() - created_ms).unwrap_or(0))
}
