//! `typing`: relayed at once to the partner's connections, never stored, and never
//! between two users where either blocks the other (the typist still gets `ok`, as a
//! typing indicator is best-effort and says nothing about delivery).

use serde_json::json;

use super::{internal, room_for, Chat, Reply, Success};
use crate::fanout::Outbound;
use crate::model::SessionUser;
use crate::protocol::event::{self, ClientEvent, Typing};
use crate::protocol::server_event::ServerEvent;
use crate::ratelimit::Bucket;

impl Chat {
    pub(super) async fn typing(&self, user: &SessionUser, data: &str) -> Reply {
        let req: Typing = event::parse(ClientEvent::Typing, data)?;
        let room = room_for(&user.id, &req.room_id)?;
        self.rate_limiter.take(&user.id, Bucket::Request)?;
        let partner = room.partner_of(&user.id);
        if !room.is_self_room()
            && !self
                .store
                .blocked_between(&user.id, partner)
                .await
                .map_err(internal)?
        {
            let event = Outbound::new(ServerEvent::Typing {
                room_id: req.room_id,
                user_id: user.id.clone(),
            });
            self.broker.publish(partner, &event);
        }
        Ok(Success::command(json!({ "ok": true })))
    }
}
