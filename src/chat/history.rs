//! `messages` and `GET /api/rooms/{id}/messages`: one page of a room's history, read from
//! the store: newest first below `before`, or, for catch-up, oldest first above `after`.

use serde_json::json;

use super::{internal, room_for, Chat, Reply, Success};
use crate::model::SessionUser;
use crate::protocol::event::{self, ClientEvent, MessagesRequest};
use crate::ratelimit::Bucket;

impl Chat {
    /// One page of a room's history (the `messages` event).
    pub async fn messages(&self, user: &SessionUser, data: &str) -> Reply {
        let req: MessagesRequest = event::parse(ClientEvent::Messages, data)?;
        self.messages_page(user, &req).await
    }

    /// One page of a room's history (`messages` and `GET /api/rooms/{id}/messages`).
    pub async fn messages_page(&self, user: &SessionUser, req: &MessagesRequest) -> Reply {
        let limit = req.checked_limit()?;
        let before = req.checked_before()?;
        let after = req.checked_after()?;
        let room = room_for(&user.id, &req.room_id)?;
        self.rate_limiter.take(&user.id, Bucket::Request)?;
        let page = match after {
            Some(after) => {
                self.store
                    .messages_after(&room, &user.id, after, limit)
                    .await
            }
            None => {
                self.store
                    .messages_page(&room, &user.id, before, limit)
                    .await
            }
        }
        .map_err(internal)?;
        Ok(Success::request(
            ClientEvent::Messages,
            json!({
                "ok": true,
                "room": { "roomId": req.room_id, "user": page.partner, "messages": page.messages },
            }),
        ))
    }
}
