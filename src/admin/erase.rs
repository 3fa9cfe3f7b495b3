//! `DELETE /admin/users/{id}` and `chat-server erase-user ID`: erasing a user (issue 14,
//! item 5), on a running server or on a stopped store.
//!
//! Both end in the store's one write transaction ([`crate::store::WriteTxn::erase_user`]),
//! committed once with fsync before anything is answered or printed. Online, it goes
//! through the writer like every write ([`crate::chat::Chat::erase_user`]), which then
//! closes the user's connections; offline, redb's file lock refuses the command while a
//! server holds the store, so the two never run on one store at once. In cluster mode the
//! command is one more writer on the shared database, as a node is.

use std::path::Path;
use std::sync::Arc;

use warp::Reply;

use super::offline::OfflineError;
use super::AdminReply;
use crate::app::App;
use crate::chat::ErasureReport;
use crate::config::WebhookConfig;
use crate::http::query::percent_decode_strict;
use crate::protocol::room::is_valid_user_id;
use crate::protocol::time::now_millis;
use crate::protocol::ChatError;
use crate::store::postgres::PgStore;
use crate::store::redb::{RedbStore, DB_FILE};
use crate::store::{StoreError, WriteStore};
use crate::webhook;

/// Erases the user named by the path segment and answers with the [`ErasureReport`].
pub async fn erase(app: Arc<App>, segment: String) -> AdminReply {
    let user = percent_decode_strict(&segment)
        .filter(|id| is_valid_user_id(id))
        .ok_or_else(|| {
            ChatError::bad_request(
                "the path must end in a valid user id (1 to 64 of A-Z a-z 0-9 _ . @ + -)",
            )
        })?;
    let report = app.chat.erase_user(&user).await.inspect_err(|e| {
        tracing::error!(user = %user, error = %e.message, "admin: erasure failed");
    })?;
    tracing::info!(
        user = %report.user_id,
        messages_tombstoned = report.messages_tombstoned,
        rooms_touched = report.rooms_touched,
        connections_closed = report.connections_closed,
        erased_at_ms = report.erased_at_ms,
        "admin: user erased"
    );
    Ok(warp::reply::json(&report).into_response())
}

/// Erases `user` from the store in `data_dir`, which no server may hold, and queues a
/// `user.erased` event for each of `hooks` subscribed (posted by the next server start).
/// The command prints the report; no server log exists to write it to.
pub fn erase_offline(
    data_dir: &Path,
    hooks: &[WebhookConfig],
    user: &str,
) -> Result<ErasureReport, OfflineError> {
    // Opening would create an empty store where there is none.
    if !data_dir.join(DB_FILE).is_file() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no store in {}", data_dir.display()),
        ))
        .into());
    }
    erase_in(&RedbStore::open(data_dir)?, hooks, user)
}

/// Erases `user` from cluster mode's PostgreSQL database at `url`, while the nodes run:
/// one more writer, as a node is, in a transaction that takes the same row locks. The
/// nodes close the user's connections at their next presence heartbeat (every 5 s), which
/// checks their users against the erasures; the duties holder posts the `user.erased`
/// events at once (the outbox's notification wakes it).
pub fn erase_in_database(
    url: &str,
    hooks: &[WebhookConfig],
    user: &str,
) -> Result<ErasureReport, OfflineError> {
    erase_in(&PgStore::open(url, 1)?, hooks, user)
}

/// The erasure in `store`'s one write transaction, with its webhook events.
fn erase_in(
    store: &dyn WriteStore,
    hooks: &[WebhookConfig],
    user: &str,
) -> Result<ErasureReport, OfflineError> {
    let mut txn = store.begin()?;
    let erasure = txn.erase_user(user, now_millis())?;
    let erased_at_ms = txn.erased_at(user)?.unwrap_or_default();
    webhook::user_erased_offline(txn.as_mut(), hooks, user, erased_at_ms)?;
    txn.commit()?;
    Ok(ErasureReport {
        user_id: user.to_owned(),
        messages_tombstoned: erasure.messages,
        rooms_touched: erasure.rooms.len() as u64,
        connections_closed: 0,
        erased_at_ms,
    })
}
