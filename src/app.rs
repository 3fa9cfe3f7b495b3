//! The running server's shared state, and the one way in for a connection of any dialect.
//!
//! [`App`] is what every connection and request holds: the chat handlers, the token
//! checker, the settings, the shutdown signal and the task tracker. It sits below the
//! server (which builds the service stack around it) and the dialects and HTTP routes
//! (which use it), so none of them imports another to reach it. [`App::authenticate`] and
//! [`App::admit`] are the single path by which a plain handshake, a Socket.IO CONNECT and
//! an API request become a user, and a connection joins its user's channel.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{predates_erasure, AdminSecret, Auth};
use crate::chat::Chat;
use crate::config::Config;
use crate::fanout::hub::Subscription;
use crate::model::SessionUser;
use crate::protocol::{ChatError, ErrorCode};
use crate::store::Maintenance;

/// Shared state of the running server.
pub struct App {
    /// The event handlers.
    pub chat: Arc<Chat>,
    /// Verifies tokens on every handshake and API request.
    pub auth: Auth,
    /// The settings, limits included.
    pub config: Config,
    /// Cancelled once on shutdown; every session watches it.
    pub shutdown: CancellationToken,
    /// Every connection and session task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The admin API's secret (`crate::admin`).
    pub admin_secret: AdminSecret,
    /// Whole-store operations for the admin API and the store's size in `/metrics`.
    pub maintenance: Arc<dyn Maintenance>,
}

impl App {
    pub fn new(
        chat: Arc<Chat>,
        auth: Auth,
        config: Config,
        admin_secret: AdminSecret,
        maintenance: Arc<dyn Maintenance>,
    ) -> Arc<App> {
        Arc::new(App {
            chat,
            auth,
            config,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            admin_secret,
            maintenance,
        })
    }

    /// The user a token names, and when the token was issued; `unauthorized` when there
    /// is none, it does not verify, or it predates the user's erasure
    /// ([`crate::auth::predates_erasure`]). Where the token is found (a header, a query
    /// parameter, an auth payload) is the transport's business.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Authenticated, ChatError> {
        let token = token.ok_or_else(|| ChatError::unauthorized("missing token"))?;
        let (user, issued_at) = self
            .auth
            .verify_issued(token)
            .map_err(|e| ChatError::unauthorized(e.to_string()))?;
        let who = Authenticated { user, issued_at };
        self.refuse_if_erased(&who).await?;
        Ok(who)
    }

    /// Admits one more connection of `who`: a slot in the user's channel, within the
    /// per-user cap and with the configured outbound bound, and the user's name made
    /// durable if it changed. Returns once both are done, so a dialect that answers the
    /// client after this (the 101, the CONNECT ack) lets every later read see the name.
    ///
    /// The erasure check runs again once the slot is taken: an erasure that committed
    /// after [`App::authenticate`] looked cut the user's connections before this one was
    /// in the channel, and this second look sees it.
    pub async fn admit(&self, who: &Authenticated) -> Result<Subscription, ChatError> {
        let limits = &self.config.limits;
        let subscription = self
            .chat
            .hub()
            .subscribe(
                &who.user.id,
                who.issued_at,
                limits.max_connections_per_user,
                limits.max_outbound_bytes,
            )
            .map_err(|_| {
                ChatError::new(
                    ErrorCode::TooManyConnections,
                    format!(
                        "at most {} connections per user",
                        limits.max_connections_per_user
                    ),
                )
            })?;
        self.refuse_if_erased(who).await?;
        self.chat.remember_profile(&who.user, who.issued_at).await;
        Ok(subscription)
    }

    async fn refuse_if_erased(&self, who: &Authenticated) -> Result<(), ChatError> {
        match self.chat.erased_at(&who.user.id).await? {
            Some(at) if predates_erasure(who.issued_at, at) => Err(ChatError::unauthorized(
                "this user was erased; the token was issued before that",
            )),
            _ => Ok(()),
        }
    }
}

/// A verified token that no erasure refuses.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user: SessionUser,
    /// The token's `iat`, in seconds.
    pub issued_at: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ChatLimits;
    use crate::fanout::hub::Hub;
    use crate::store::redb::RedbStore;
    use crate::writer::{Writer, WriterConfig};

    /// A handshake that authenticated just before an erasure committed, and joins the
    /// user's channel only after the erasure cut it, is refused by the second look.
    #[tokio::test]
    async fn admit_refuses_a_user_erased_after_authentication() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        let hub = Hub::new(usize::MAX, 0);
        let config = Config::default();
        let writer_config = WriterConfig {
            recent_cache_bytes: 1 << 20,
            max_batch: 16,
            mark_hint_rooms: 1024,
        };
        let thread = Writer::spawn(
            store.clone(),
            hub.clone(),
            Arc::new(crate::webhook::Hooks::none()),
            writer_config,
        );
        let limits = ChatLimits::from(&config);
        let chat = Chat::new(
            store.clone(),
            thread.writer(),
            hub.clone(),
            hub,
            limits,
            b"s",
        );
        let admin = AdminSecret::new(b"admin".to_vec());
        let app = App::new(Arc::new(chat), Auth::new(b"s"), config, admin, store);
        let now = crate::protocol::time::now_millis() / 1000;
        let who = Authenticated {
            user: SessionUser::unnamed("a"),
            issued_at: Some(now as u64 - 10),
        };
        let first = app.admit(&who).await.unwrap();

        let report = app.chat.erase_user("a").await.unwrap();
        assert_eq!(report.connections_closed, 1);
        drop(first);
        match app.admit(&who).await {
            Err(refused) => assert_eq!(refused.code, ErrorCode::Unauthorized),
            Ok(_) => panic!("admitted a token from before the erasure"),
        }
        assert_eq!(app.chat.hub().connection_count(), 0);
        // A token from after the erasure gets in.
        let later = Authenticated {
            issued_at: Some(now as u64 + 2),
            ..who
        };
        app.admit(&later).await.unwrap();
        thread.shutdown().await;
    }
}
