//! A store whose chosen reads wait until the test releases them: a slow database, for
//! the cluster fan-out tests that fill a queue behind a read. Every other read goes
//! straight to the store it wraps.
#![allow(dead_code)] // only the cluster test crates hold reads

use std::sync::Arc;

use chat_server::model::{
    BlockedUser, ChangesPage, ChatMessage, HistoryPage, InboxCursor, InboxRoom, RoomKey,
    SessionUser,
};
use chat_server::store::{
    BlockChange, BlockCursor, DeadLetter, ExpiryScan, MarkState, OutboxEvent, Read, ReadStore,
    WebhookCounts,
};

use super::WAIT;

/// Which reads wait.
pub enum Hold {
    /// Pages of this room's messages.
    Room(RoomKey),
    /// Reads of block changes.
    BlockChanges,
}

pub struct HeldStore {
    inner: Arc<dyn ReadStore>,
    hold: Hold,
    open: tokio::sync::watch::Sender<bool>,
    reached: tokio::sync::Notify,
}

impl HeldStore {
    pub fn new(inner: Arc<dyn ReadStore>, hold: Hold) -> HeldStore {
        HeldStore {
            inner,
            hold,
            open: tokio::sync::watch::channel(false).0,
            reached: tokio::sync::Notify::new(),
        }
    }

    /// Waits until a held read has come.
    pub async fn wait_held(&self) {
        tokio::time::timeout(WAIT, self.reached.notified())
            .await
            .expect("no held read came");
    }

    /// Lets every held read, and every later one, go.
    pub fn release(&self) {
        self.open.send_replace(true);
    }

    async fn gate(&self) {
        let mut open = self.open.subscribe();
        self.reached.notify_one();
        let _ = open.wait_for(|open| *open).await;
    }
}

impl ReadStore for HeldStore {
    fn find_by_client_id<'a>(
        &'a self,
        room: &'a RoomKey,
        sender: &'a str,
        client_message_id: &'a str,
    ) -> Read<'a, Option<ChatMessage>> {
        self.inner
            .find_by_client_id(room, sender, client_message_id)
    }

    fn messages_page<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        before: Option<u64>,
        limit: usize,
    ) -> Read<'a, HistoryPage> {
        Box::pin(async move {
            if matches!(&self.hold, Hold::Room(held) if held == room) {
                self.gate().await;
            }
            self.inner.messages_page(room, viewer, before, limit).await
        })
    }

    fn messages_after<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        after: u64,
        limit: usize,
    ) -> Read<'a, HistoryPage> {
        self.inner.messages_after(room, viewer, after, limit)
    }

    fn changes<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        since: u64,
        limit: usize,
    ) -> Read<'a, ChangesPage> {
        self.inner.changes(room, viewer, since, limit)
    }

    fn inbox_page<'a>(
        &'a self,
        user: &'a str,
        after: Option<&'a InboxCursor>,
        limit: usize,
    ) -> Read<'a, Vec<InboxRoom>> {
        self.inner.inbox_page(user, after, limit)
    }

    fn profile<'a>(&'a self, user: &'a str) -> Read<'a, SessionUser> {
        self.inner.profile(user)
    }

    fn blocks<'a>(&'a self, blocker: &'a str) -> Read<'a, Vec<BlockedUser>> {
        self.inner.blocks(blocker)
    }

    fn delivered_mark<'a>(
        &'a self,
        room: &'a RoomKey,
        reader: &'a str,
    ) -> Read<'a, Option<MarkState>> {
        self.inner.delivered_mark(room, reader)
    }

    fn blocked_between<'a>(&'a self, a: &'a str, b: &'a str) -> Read<'a, bool> {
        self.inner.blocked_between(a, b)
    }

    fn webhook_outbox<'a>(
        &'a self,
        hook: &'a str,
        after: Option<u64>,
        limit: usize,
    ) -> Read<'a, Vec<OutboxEvent>> {
        self.inner.webhook_outbox(hook, after, limit)
    }

    fn webhook_dead_letters<'a>(
        &'a self,
        hook: &'a str,
        after: Option<u64>,
        limit: usize,
    ) -> Read<'a, Vec<DeadLetter>> {
        self.inner.webhook_dead_letters(hook, after, limit)
    }

    fn webhook_counts<'a>(&'a self, hook: &'a str) -> Read<'a, WebhookCounts> {
        self.inner.webhook_counts(hook)
    }

    fn rooms_to_expire(
        &self,
        cutoff_ms: i64,
        after: Option<u64>,
        limit: usize,
    ) -> Read<'_, ExpiryScan> {
        self.inner.rooms_to_expire(cutoff_ms, after, limit)
    }

    fn erased_at<'a>(&'a self, user: &'a str) -> Read<'a, Option<i64>> {
        self.inner.erased_at(user)
    }

    fn rooms_active_since<'a>(
        &'a self,
        user: &'a str,
        since_ms: i64,
        limit: usize,
    ) -> Read<'a, Vec<RoomKey>> {
        self.inner.rooms_active_since(user, since_ms, limit)
    }

    fn erasures<'a>(&'a self, users: &'a [String]) -> Read<'a, Vec<(String, i64)>> {
        self.inner.erasures(users)
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
        self.inner
            .changes_and_page(room, viewer, since, limit, before, page_limit)
    }

    fn webhooks_gone(&self) -> Read<'_, Vec<String>> {
        self.inner.webhooks_gone()
    }

    fn block_changes<'a>(&'a self, blockers: &'a [BlockCursor]) -> Read<'a, Vec<BlockChange>> {
        Box::pin(async move {
            if matches!(self.hold, Hold::BlockChanges) {
                self.gate().await;
            }
            self.inner.block_changes(blockers).await
        })
    }
}
