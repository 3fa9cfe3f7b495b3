//! `rooms` and `GET /api/rooms`: one page of a user's inbox, read from the store.

use serde_json::json;

use super::{internal, Chat, Reply, Success};
use crate::model::SessionUser;
use crate::protocol::event::{self, ClientEvent, RoomsRequest};
use crate::protocol::time::format_millis;
use crate::ratelimit::Bucket;

impl Chat {
    /// One page of the user's inbox (the `rooms` event and `GET /api/rooms`).
    pub async fn rooms(&self, user: &SessionUser, data: &str) -> Reply {
        let req: RoomsRequest = if data == "null" {
            RoomsRequest::default()
        } else {
            event::parse(ClientEvent::Rooms, data)?
        };
        self.rooms_page(user, &req).await
    }

    pub async fn rooms_page(&self, user: &SessionUser, req: &RoomsRequest) -> Reply {
        let limit = req.checked_limit()?;
        let cursor = req
            .cursor
            .as_deref()
            .map(|c| self.cursors.decode(c))
            .transpose()?;
        self.rate_limiter.take(&user.id, Bucket::Request)?;
        let page = self
            .store
            .inbox_page(&user.id, cursor.as_ref(), limit)
            .await
            .map_err(internal)?;
        let next_cursor = match page.last() {
            Some(last) if page.len() == limit => Some(self.cursors.encode(&last.cursor())),
            _ => None,
        };
        let mut rooms = Vec::with_capacity(page.len());
        for row in page {
            rooms.push(json!({
                "roomId": row.room_id,
                "user": row.partner,
                "lastMessage": row.last_message,
                "unread": row.unread,
                "updatedAt": format_millis(row.updated_ms),
                "blocked": row.blocked,
            }));
        }
        Ok(Success::request(
            ClientEvent::Rooms,
            json!({ "ok": true, "rooms": rooms, "nextCursor": next_cursor }),
        ))
    }
}
