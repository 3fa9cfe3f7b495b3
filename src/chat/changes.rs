//! `changes` and `GET /api/rooms/{id}/changes`: catch-up. Every change to a room's
//! messages (a send, a delivered or seen mark, an edit, a delete) takes the room's next
//! change number; a client that keeps the `position` of its last reply learns everything
//! that happened since, each changed message once and as it is now, in pages. The position
//! is opaque to clients (see `event::format_position`).

use serde_json::json;

use super::{internal, room_for, Chat, Reply, Success};
use crate::model::SessionUser;
use crate::protocol::event::{self, format_position, ChangesRequest, ClientEvent};
use crate::ratelimit::Bucket;

impl Chat {
    /// The `changes` event.
    pub async fn changes(&self, user: &SessionUser, data: &str) -> Reply {
        let req: ChangesRequest = event::parse(ClientEvent::Changes, data)?;
        self.changes_page(user, &req).await
    }

    /// One page of a room's changes (`changes` and `GET /api/rooms/{id}/changes`).
    pub async fn changes_page(&self, user: &SessionUser, req: &ChangesRequest) -> Reply {
        let limit = req.checked_limit()?;
        let since = req.checked_since()?;
        let room = room_for(&user.id, &req.room_id)?;
        self.rate_limiter.take(&user.id, Bucket::Request)?;
        let page = self
            .store
            .changes(&room, &user.id, since, limit)
            .await
            .map_err(internal)?;
        Ok(Success::request(
            ClientEvent::Changes,
            json!({
                "ok": true,
                "room": { "roomId": req.room_id, "user": page.partner, "messages": page.messages },
                "position": format_position(page.position),
                "more": page.more,
            }),
        ))
    }
}
