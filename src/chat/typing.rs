//! `typing`: relayed at once to the partner's connections, never stored.

use serde_json::json;

use super::{room_for, Chat, Reply, Success};
use crate::fanout::Outbound;
use crate::model::SessionUser;
use crate::protocol::event::{self, ClientEvent, Typing};
use crate::protocol::server_event::ServerEvent;
use crate::ratelimit::Bucket;

impl Chat {
    pub(super) fn typing(&self, user: &SessionUser, data: &str) -> Reply {
        let req: Typing = event::parse(ClientEvent::Typing, data)?;
        let room = room_for(&user.id, &req.room_id)?;
        self.rate_limiter.take(&user.id, Bucket::Request)?;
        if !room.is_self_room() {
            let event = Outbound::new(ServerEvent::Typing {
                room_id: req.room_id,
                user_id: user.id.clone(),
            });
            self.broker.publish(room.partner_of(&user.id), &event);
        }
        Ok(Success::command(json!({ "ok": true })))
    }
}
