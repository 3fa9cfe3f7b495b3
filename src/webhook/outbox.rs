//! Writing events into the outbox, inside the command that stores what they describe, and
//! the two commands that take them out again (delivered, given up).
//!
//! The body is rendered here, once, at commit: it is what is stored, signed and posted on
//! every attempt, so a retry is byte for byte the first attempt.

use serde_json::json;

use crate::config::{WebhookConfig, WebhookEvent};
use crate::model::{ChatMessage, RoomKey, SessionUser};
use crate::protocol::time::{format_millis, now_millis};
use crate::protocol::ChatError;
use crate::store::{self, HookUser, OutboxEvent, WriteTxn};
use crate::writer::{Command, Context};

use super::Hooks;

/// Every event id starts with it; 32 random hex digits follow.
pub const EVENT_ID_PREFIX: &str = "evt_";

/// Writes a `message.created` event for the recipient of a new `message` in `room`, to
/// every hook subscribed (and, for `offline_only` hooks, only when the recipient has no
/// connection now). A self room has no recipient, so no event.
pub fn message_created(
    txn: &mut dyn WriteTxn,
    cx: &mut Context<'_>,
    room: &RoomKey,
    message: &ChatMessage,
    sender: &SessionUser,
) -> store::Result<()> {
    if room.is_self_room() {
        return Ok(());
    }
    let recipient = room.partner_of(&sender.id).to_owned();
    write_event(
        txn,
        cx,
        WebhookEvent::MessageCreated,
        &recipient,
        OfflineOnly::Applies,
        |txn, online| {
            Ok(json!({
                "room": room.id(),
                "message": message,
                "sender": sender,
                "recipient": txn.profile(&recipient)?,
                "recipientOnline": online,
            }))
        },
    )
}

/// The user a [`message_created`] event of a send by `sender` in `room` reads (the
/// recipient: their profile, and whether they are connected), if a hook subscribes to
/// it, for [`crate::writer::Command::hook_users`].
pub fn message_created_users<'a>(
    hooks: &Hooks,
    room: &'a RoomKey,
    sender: &str,
    out: &mut Vec<HookUser<'a>>,
) {
    if !room.is_self_room() && is_subscribed(hooks, WebhookEvent::MessageCreated) {
        out.push(HookUser {
            user: room.partner_of(sender),
            presence: true,
        });
    }
}

/// The users a [`message_seen`] event of `reader`'s in `room` reads (the reader's profile;
/// the author's, their partner's as no one sees their own message, and whether the author
/// is connected), if a hook subscribes to it, for [`crate::writer::Command::hook_users`].
pub fn message_seen_users<'a>(
    hooks: &Hooks,
    room: &'a RoomKey,
    reader: &'a str,
    out: &mut Vec<HookUser<'a>>,
) {
    if !room.is_self_room() && is_subscribed(hooks, WebhookEvent::MessageSeen) {
        out.extend([
            HookUser {
                user: reader,
                presence: false,
            },
            HookUser {
                user: room.partner_of(reader),
                presence: true,
            },
        ]);
    }
}

fn is_subscribed(hooks: &Hooks, kind: WebhookEvent) -> bool {
    hooks.subscribed(kind).next().is_some()
}

/// Writes a `message.seen` event for the author of `message`, which `reader` has just seen
/// in `room`, to every hook subscribed (the same `offline_only` rule, for the author).
pub fn message_seen(
    txn: &mut dyn WriteTxn,
    cx: &mut Context<'_>,
    room: &RoomKey,
    message: &ChatMessage,
    reader: &str,
) -> store::Result<()> {
    let author = message.user_id.clone();
    write_event(
        txn,
        cx,
        WebhookEvent::MessageSeen,
        &author,
        OfflineOnly::Applies,
        |txn, online| {
            Ok(json!({
                "room": room.id(),
                "message": message,
                "reader": txn.profile(reader)?,
                "recipient": txn.profile(&author)?,
                "recipientOnline": online,
            }))
        },
    )
}

/// Writes a `user.erased` event for `user`, erased at `erased_at_ms`, to every hook
/// subscribed, online or not: `offline_only` is about notifying a user, and this tells the
/// app's backend to erase its own copy of the user's data.
pub fn user_erased(
    txn: &mut dyn WriteTxn,
    cx: &mut Context<'_>,
    user: &str,
    erased_at_ms: i64,
) -> store::Result<()> {
    write_event(
        txn,
        cx,
        WebhookEvent::UserErased,
        user,
        OfflineOnly::Ignored,
        |_, _| Ok(user_erased_data(user, erased_at_ms)),
    )
}

/// [`user_erased`] for `chat-server erase-user`, which runs with no server and so no
/// writer: the event goes into the outbox of every configured hook subscribed, in the
/// erasure's transaction, and the next server start delivers it.
pub fn user_erased_offline(
    txn: &mut dyn WriteTxn,
    hooks: &[WebhookConfig],
    user: &str,
    erased_at_ms: i64,
) -> store::Result<()> {
    let mut subscribed = hooks
        .iter()
        .filter(|h| h.events.contains(&WebhookEvent::UserErased))
        .peekable();
    if subscribed.peek().is_none() {
        return Ok(());
    }
    let event = render(
        WebhookEvent::UserErased,
        user,
        user_erased_data(user, erased_at_ms),
    );
    for hook in subscribed {
        txn.enqueue_webhook(&hook.url, &event)?;
    }
    Ok(())
}

fn user_erased_data(user: &str, erased_at_ms: i64) -> serde_json::Value {
    json!({
        "userId": user,
        "erasedAt": format_millis(erased_at_ms),
    })
}

/// Whether a hook's `offline_only` holds back an event whose recipient is online (and so
/// whether the event says if they are).
#[derive(PartialEq)]
enum OfflineOnly {
    Applies,
    Ignored,
}

/// Renders the body once, if any hook wants it, and puts it in each such hook's outbox.
fn write_event(
    txn: &mut dyn WriteTxn,
    cx: &mut Context<'_>,
    kind: WebhookEvent,
    recipient: &str,
    offline_only: OfflineOnly,
    data: impl FnOnce(&dyn WriteTxn, bool) -> store::Result<serde_json::Value>,
) -> store::Result<()> {
    let subscribed: Vec<(usize, String, bool)> = cx
        .hooks()
        .subscribed(kind)
        .map(|(index, hook)| (index, hook.config.url.clone(), hook.config.offline_only))
        .collect();
    if subscribed.is_empty() {
        return Ok(());
    }
    // Connected here, or (cluster mode) on another node: asked of the store only when the
    // answer matters (a `user.erased` goes out either way) and this node has no
    // connection of theirs; read with the round's first statement when the command named
    // the recipient ([`crate::writer::Command::hook_users`]).
    let online = offline_only == OfflineOnly::Applies
        && (cx.is_online(recipient) || txn.online_elsewhere(recipient)?);
    let hooks: Vec<(usize, String)> = subscribed
        .into_iter()
        .filter(|(_, _, only_offline)| !(*only_offline && online))
        .map(|(index, url, _)| (index, url))
        .collect();
    if hooks.is_empty() {
        return Ok(());
    }
    let event = render(kind, recipient, data(txn, online)?);
    for (index, url) in hooks {
        txn.enqueue_webhook(&url, &event)?;
        cx.webhook_queued(index);
    }
    Ok(())
}

/// The event as stored and posted: a new id, the commit time, and `data`.
fn render(kind: WebhookEvent, recipient: &str, data: serde_json::Value) -> OutboxEvent {
    let created_ms = now_millis();
    let id = format!("{EVENT_ID_PREFIX}{:032x}", rand::random::<u128>());
    let body = json!({
        "id": id,
        "type": kind.name(),
        "createdAt": format_millis(created_ms),
        "data": data,
    })
    .to_string();
    OutboxEvent {
        seq: 0,
        recipient: recipient.to_owned(),
        id,
        created_ms,
        body,
    }
}

/// Moves up to `max` of a configured hook's dead letters back to its outbox and wakes its
/// delivery task; answers how many moved. At most `max` a round, so that a large pile
/// never holds the writer long: the caller submits it again until fewer move.
pub struct RetryDeadLetters {
    pub hook: String,
    pub max: usize,
}

impl Command for RetryDeadLetters {
    type Output = u64;

    fn apply(self, txn: &mut dyn WriteTxn, cx: &mut Context<'_>) -> Result<u64, ChatError> {
        let index = cx.hooks().index_of(&self.hook).ok_or_else(|| {
            ChatError::not_found("no configured webhook has this url; its events would never go")
        })?;
        if cx.hooks().get(index).is_disabled() {
            return Err(ChatError::bad_request(
                "this webhook answered 410 Gone and is disabled until the server restarts; \
                 (in cluster mode: until the cluster restarts); its events would go straight \
                 back to the dead letters",
            ));
        }
        let moved = txn
            .retry_dead_webhooks(&self.hook, self.max, now_millis())
            .map_err(ChatError::internal)?;
        for _ in 0..moved {
            cx.webhook_queued(index);
        }
        Ok(moved)
    }
}

/// Takes a batch of delivered events out of a hook's outbox. Answers the seqs that were
/// still there.
pub(super) struct RemoveDelivered {
    pub hook: String,
    pub seqs: Vec<u64>,
}

impl Command for RemoveDelivered {
    type Output = Vec<u64>;

    fn apply(self, txn: &mut dyn WriteTxn, _: &mut Context<'_>) -> Result<Vec<u64>, ChatError> {
        txn.remove_webhooks(&self.hook, &self.seqs)
            .map_err(ChatError::internal)
    }
}

/// Moves an event given up on from a hook's outbox to its dead letters. Answers whether
/// the row was still there. For a 410 (`gone`) it also records the hook as gone, in the
/// same commit, for the other nodes of a cluster.
pub(super) struct GiveUp {
    pub hook: String,
    pub seq: u64,
    pub reason: String,
    pub gone: bool,
}

impl Command for GiveUp {
    type Output = bool;

    fn apply(self, txn: &mut dyn WriteTxn, _: &mut Context<'_>) -> Result<bool, ChatError> {
        if self.gone {
            txn.webhook_gone(&self.hook).map_err(ChatError::internal)?;
        }
        txn.dead_letter_webhook(&self.hook, self.seq, &self.reason, now_millis())
            .map_err(ChatError::internal)
    }
}

#[cfg(test)]
mod tests {
    //! Which users a round reads for its commands' events: a wrong name or a missing
    //! presence mark costs a round trip per event in cluster mode, unseen by any answer.

    use super::*;

    fn hooks(events: &[WebhookEvent]) -> Hooks {
        Hooks::new(&[WebhookConfig {
            events: events.to_vec(),
            ..WebhookConfig::default()
        }])
    }

    fn users<'a>(name: impl FnOnce(&mut Vec<HookUser<'a>>)) -> Vec<(&'a str, bool)> {
        let mut out = Vec::new();
        name(&mut out);
        out.into_iter().map(|u| (u.user, u.presence)).collect()
    }

    #[test]
    fn a_send_names_its_recipient_and_a_read_both_members_with_the_author_s_presence() {
        let both = hooks(&[WebhookEvent::MessageCreated, WebhookEvent::MessageSeen]);
        let (ab, self_room) = (RoomKey::new("bob", "ann"), RoomKey::new("ann", "ann"));
        assert_eq!(
            users(|out| message_created_users(&both, &ab, "bob", out)),
            [("ann", true)]
        );
        // bob reads ann's message: bob's profile, ann's profile and presence.
        assert_eq!(
            users(|out| message_seen_users(&both, &ab, "bob", out)),
            [("bob", false), ("ann", true)]
        );
        // A self room has no recipient, so no event.
        assert!(users(|out| message_created_users(&both, &self_room, "ann", out)).is_empty());
        assert!(users(|out| message_seen_users(&both, &self_room, "ann", out)).is_empty());
        // Every event says whether its recipient is online (`recipientOnline`), so a hook
        // without `offline_only` needs the presence as well.
        let all_posted = Hooks::new(&[WebhookConfig {
            offline_only: false,
            ..WebhookConfig::default()
        }]);
        assert_eq!(
            users(|out| message_created_users(&all_posted, &ab, "bob", out)),
            [("ann", true)]
        );
        // Nothing for an event no hook subscribes to.
        let erased = hooks(&[WebhookEvent::UserErased]);
        assert!(users(|out| message_created_users(&erased, &ab, "bob", out)).is_empty());
        assert!(users(|out| message_seen_users(&erased, &ab, "bob", out)).is_empty());
    }
}
