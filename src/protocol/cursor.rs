//! Inbox cursors: opaque to clients, signed so the server accepts only cursors it issued.
//!
//! A cursor is the sort key of the last room on a page (activity time, room id, room
//! number). It is sent back verbatim, so it is tagged with an HMAC under a server key: a
//! made-up or edited cursor is a `bad_request`, as PROTOCOL.md asks, rather than a silent
//! jump to some arbitrary position.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::ChatError;
use crate::model::InboxCursor;

const PREFIX: &str = "c1.";
/// Hex digits of the tag kept in the cursor (64 bits: plenty against guessing).
const TAG_HEX: usize = 16;

/// Signs and checks cursors with one key.
pub struct CursorCodec {
    /// Keyed once; each tag starts from a copy.
    mac: Hmac<Sha256>,
}

impl CursorCodec {
    pub fn new(key: &[u8]) -> CursorCodec {
        CursorCodec {
            mac: Hmac::new_from_slice(key).expect("HMAC takes any key"),
        }
    }

    fn tag(&self, body: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(body.as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..TAG_HEX / 2]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn encode(&self, cursor: &InboxCursor) -> String {
        let body = format!(
            "{}.{}.{}",
            cursor.updated_ms, cursor.room_num, cursor.room_id
        );
        format!("{PREFIX}{}.{body}", self.tag(&body))
    }

    pub fn decode(&self, text: &str) -> Result<InboxCursor, ChatError> {
        let bad = || ChatError::bad_request("cursor is not one this server issued");
        let rest = text.strip_prefix(PREFIX).ok_or_else(bad)?;
        let (tag, body) = rest.split_once('.').ok_or_else(bad)?;
        if tag.len() != TAG_HEX || !same_in_constant_time(&self.tag(body), tag) {
            return Err(bad());
        }
        let mut parts = body.splitn(3, '.');
        let updated_ms = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let room_num = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let room_id = parts.next().filter(|r| !r.is_empty()).ok_or_else(bad)?;
        Ok(InboxCursor {
            updated_ms,
            room_id: room_id.to_owned(),
            room_num,
        })
    }
}

/// Compares two strings of equal length without stopping at the first difference, so the
/// time taken says nothing about how much of a forged tag was right.
fn same_in_constant_time(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_edits() {
        let codec = CursorCodec::new(b"key");
        let cursor = InboxCursor {
            updated_ms: 1_795_633_641_123,
            room_id: "a.b-c".into(),
            room_num: 42,
        };
        let text = codec.encode(&cursor);
        assert_eq!(codec.decode(&text).unwrap(), cursor);
        let edited = text.replace(".42.", ".43.");
        assert!(codec.decode(&edited).is_err());
        assert!(CursorCodec::new(b"other").decode(&text).is_err());
        for junk in ["", "c1.", "c1.x", "c1.0000000000000000.1.2.a-b", "x1.abc"] {
            assert!(codec.decode(junk).is_err(), "{junk}");
        }
    }
}
