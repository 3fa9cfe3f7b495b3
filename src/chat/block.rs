//! `block`, `unblock` and `blocks` (and `PUT`/`DELETE`/`GET /api/blocks`): a user's block
//! list. Checks (shape, who, rate limit), then the `BlockUser` / `UnblockUser` command the
//! writer applies, then the reply once it is durable; `blocks` reads the list from the
//! store.
//!
//! A block is enforced where it must be ordered against sends: `AppendMessage` looks it up
//! in the same write transaction (`send.rs`), so a send and a block racing are applied in
//! one order, and once a block is acknowledged every later send between the pair is
//! refused. Typing and unread counts only read it (`typing.rs`, the store's inbox page).

use serde_json::{json, Value};

use super::{internal, Chat, Handled, Reply, Success};
use crate::model::SessionUser;
use crate::protocol::event::{self, BlockRequest, ClientEvent};
use crate::protocol::room::is_valid_user_id;
use crate::protocol::server_event::ServerEvent;
use crate::protocol::time::{format_millis, now_millis};
use crate::protocol::{ChatError, ErrorCode};
use crate::ratelimit::Bucket;
use crate::store::{Lifted, WriteTxn};
use crate::writer::{outcome, Command, Context};

impl Chat {
    /// `block {userId}`: the caller stops hearing from `userId`.
    pub(super) async fn block(&self, user: &SessionUser, data: &str) -> Handled {
        match parse_target(ClientEvent::Block, data) {
            Ok(target) => self.block_user(user, &target).await,
            Err(e) => Handled::Done(Err(e)),
        }
    }

    /// `unblock {userId}`: lifts the caller's block of `userId`.
    pub(super) async fn unblock(&self, user: &SessionUser, data: &str) -> Handled {
        match parse_target(ClientEvent::Unblock, data) {
            Ok(target) => self.unblock_user(user, &target).await,
            Err(e) => Handled::Done(Err(e)),
        }
    }

    /// Blocks `target` for `user` (the `block` event and `PUT /api/blocks/{id}`).
    /// Idempotent: blocking again answers the first block's time.
    pub async fn block_user(&self, user: &SessionUser, target: &str) -> Handled {
        if let Err(e) = self.check_target(user, target) {
            return Handled::Done(Err(e));
        }
        let rx = self
            .writer
            .submit(BlockUser {
                blocker: user.id.clone(),
                blocked: target.to_owned(),
                max_blocks: self.limits.max_blocks_per_user,
            })
            .await;
        let target = target.to_owned();
        Handled::Pending(Box::pin(async move {
            let since_ms = outcome(rx).await?;
            Ok(Success::command(json!({
                "ok": true,
                "userId": target,
                "blockedAt": format_millis(since_ms),
            })))
        }))
    }

    /// Lifts `user`'s block of `target` (the `unblock` event and `DELETE /api/blocks/{id}`).
    /// Idempotent: unblocking someone not blocked succeeds and changes nothing.
    pub async fn unblock_user(&self, user: &SessionUser, target: &str) -> Handled {
        if let Err(e) = self.check_target(user, target) {
            return Handled::Done(Err(e));
        }
        let rx = self
            .writer
            .submit(UnblockUser {
                blocker: user.id.clone(),
                blocked: target.to_owned(),
            })
            .await;
        let target = target.to_owned();
        Handled::Pending(Box::pin(async move {
            outcome(rx).await?;
            Ok(Success::command(json!({ "ok": true, "userId": target })))
        }))
    }

    /// `blocks`: everyone the caller blocks, with their names, in id order.
    pub(super) async fn blocks(&self, user: &SessionUser, data: &str) -> Reply {
        if data != "null" {
            // Any object is accepted (its fields are for later versions); nothing else is.
            event::parse::<serde_json::Map<String, Value>>(ClientEvent::Blocks, data)?;
        }
        self.blocks_list(user).await
    }

    /// The caller's block list (`blocks` and `GET /api/blocks`).
    pub async fn blocks_list(&self, user: &SessionUser) -> Reply {
        self.rate_limiter.take(&user.id, Bucket::Request)?;
        let list = self.store.blocks(&user.id).await.map_err(internal)?;
        let blocks: Vec<Value> = list
            .into_iter()
            .map(|b| json!({ "user": b.user, "blockedAt": format_millis(b.since_ms) }))
            .collect();
        Ok(Success::request(
            ClientEvent::Blocks,
            json!({ "ok": true, "blocks": blocks }),
        ))
    }

    /// Who may be blocked: a well-formed id other than the caller's. Then the rate limit.
    fn check_target(&self, user: &SessionUser, target: &str) -> Result<(), ChatError> {
        if !is_valid_user_id(target) {
            return Err(ChatError::bad_request(format!(
                "userId {target:?} is not a user id (1 to 64 of A-Z a-z 0-9 _ . @ + -)"
            )));
        }
        if target == user.id {
            return Err(ChatError::bad_request(
                "you cannot block or unblock yourself",
            ));
        }
        self.rate_limiter.take(&user.id, Bucket::Request)
    }
}

fn parse_target(event: ClientEvent, data: &str) -> Result<String, ChatError> {
    let req: BlockRequest = event::parse(event, data)?;
    Ok(req.user_id)
}

/// `blocker` blocks `blocked`; answers since when. A new block is published as `block` to
/// the blocker's own connections, so their other tabs show it; the blocked user is not
/// told, and a repeated block publishes nothing.
pub struct BlockUser {
    pub blocker: String,
    pub blocked: String,
    /// `limits.max_blocks_per_user`.
    pub max_blocks: usize,
}

impl Command for BlockUser {
    type Output = i64;

    fn apply(self, txn: &mut dyn WriteTxn, cx: &mut Context<'_>) -> Result<i64, ChatError> {
        if let Some(since) = txn
            .blocked_since(&self.blocker, &self.blocked)
            .map_err(ChatError::internal)?
        {
            return Ok(since);
        }
        let count = txn
            .count_blocks(&self.blocker)
            .map_err(ChatError::internal)?;
        if count >= self.max_blocks {
            return Err(ChatError::new(
                ErrorCode::TooManyBlocks,
                format!("you already block {count} users, the most allowed; unblock someone first"),
            ));
        }
        let now = now_millis();
        let change = txn
            .put_block(&self.blocker, &self.blocked, now)
            .map_err(ChatError::internal)?;
        cx.publish_block(
            self.blocker,
            ServerEvent::Blocked {
                user_id: self.blocked,
                blocked_at: format_millis(now),
            },
            change,
        );
        Ok(now)
    }
}

/// `blocker` lifts their block of `blocked`, if there is one; a lifted block is published
/// as `unblock` to the blocker's own connections.
pub struct UnblockUser {
    pub blocker: String,
    pub blocked: String,
}

impl Command for UnblockUser {
    type Output = ();

    fn apply(self, txn: &mut dyn WriteTxn, cx: &mut Context<'_>) -> Result<(), ChatError> {
        let lifted = txn
            .remove_block(&self.blocker, &self.blocked, now_millis())
            .map_err(ChatError::internal)?;
        if let Lifted::Lifted { change } = lifted {
            cx.publish_block(
                self.blocker,
                ServerEvent::Unblocked {
                    user_id: self.blocked,
                },
                change,
            );
        }
        Ok(())
    }
}
