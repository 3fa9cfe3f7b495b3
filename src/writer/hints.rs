//! What the writer knows of each room's ids and delivered marks, for the
//! `message:received` handler (issue 16).
//!
//! A client showing delivered ticks marks every message it gets, and the handler checks
//! each mark before queueing it: a mark naming no message is refused, one at or below the
//! reader's mark is answered without a write. Reading that from the store costs a read
//! transaction per mark, a tenth of what a mark adds to a message's server CPU. The writer
//! sees every send and every mark move of this node, so it keeps the room's newest id and
//! both members' marks here, and the handler reads the store only on a miss.
//!
//! A hint must never be ahead of the store, or a valid mark would be refused or a new
//! mark dropped as stale. So it is raised only after the round that wrote it is durable
//! (and before that round's events go out, so a reader marking a message it just got
//! finds its room here), only ever raised, and dropped with the room whenever the room
//! loses messages (retention, a user's erasure). Behind the store it is harmless: the
//! handler then reads the store (a mark past the hint's newest id) or queues a mark that
//! the writer finds stale. Cluster mode starts with no hints (`mark_hint_rooms = 0`):
//! there other nodes write the same rooms and this node would not hear of their deletions.
//!
//! Bounded in rooms (`memory.mark_hint_rooms`); a new room past the bound displaces an
//! arbitrary one, which only costs that room a store read on its next mark.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::RoomKey;
use crate::store::MarkState;

/// A room as the writer last committed it: its newest id and its members' marks.
#[derive(Debug, Clone, Copy, Default)]
struct Room {
    last_id: u64,
    /// The delivered marks of the room's `low` and `high` member.
    low_mark: u64,
    high_mark: u64,
}

/// One change to the hints, gathered during a round and applied once it is durable.
#[derive(Debug)]
pub(super) enum Hint {
    Stored {
        room: RoomKey,
        id: u64,
    },
    Delivered {
        room: RoomKey,
        reader: String,
        up_to: u64,
    },
    Forget(RoomKey),
}

/// The hints themselves; see the module docs.
pub struct MarkHints {
    rooms: Mutex<HashMap<RoomKey, Room>>,
    max_rooms: usize,
}

impl MarkHints {
    /// Hints for at most `max_rooms` rooms; none at all for 0.
    pub fn new(max_rooms: usize) -> MarkHints {
        MarkHints {
            rooms: Mutex::new(HashMap::new()),
            max_rooms,
        }
    }

    /// `reader`'s mark in `room` and the room's newest id, as of a committed round, if
    /// the room is known here.
    pub fn get(&self, room: &RoomKey, reader: &str) -> Option<MarkState> {
        let rooms = self.rooms.lock().expect("not poisoned");
        let known = rooms.get(room)?;
        let mark = if reader == room.low {
            known.low_mark
        } else if reader == room.high {
            known.high_mark
        } else {
            return None;
        };
        Some(MarkState {
            mark,
            last_id: known.last_id,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.rooms.lock().expect("not poisoned").len()
    }

    pub(super) fn apply(&self, hints: Vec<Hint>) {
        if self.max_rooms == 0 || hints.is_empty() {
            return;
        }
        let mut rooms = self.rooms.lock().expect("not poisoned");
        for hint in hints {
            match hint {
                Hint::Forget(room) => {
                    rooms.remove(&room);
                }
                Hint::Stored { room, id } => {
                    let known = entry(&mut rooms, self.max_rooms, room);
                    known.last_id = known.last_id.max(id);
                }
                Hint::Delivered {
                    room,
                    reader,
                    up_to,
                } => {
                    let low = reader == room.low;
                    let known = entry(&mut rooms, self.max_rooms, room);
                    let mark = if low {
                        &mut known.low_mark
                    } else {
                        &mut known.high_mark
                    };
                    *mark = (*mark).max(up_to);
                }
            }
        }
    }
}

/// `room`'s entry, made room for within `max_rooms`. A new entry knows nothing (all zero),
/// which is never ahead of the store.
fn entry(rooms: &mut HashMap<RoomKey, Room>, max_rooms: usize, room: RoomKey) -> &mut Room {
    if rooms.len() >= max_rooms && !rooms.contains_key(&room) {
        let evicted = rooms.keys().next().cloned();
        if let Some(evicted) = evicted {
            rooms.remove(&evicted);
        }
    }
    rooms.entry(room).or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(room: &RoomKey, id: u64) -> Hint {
        Hint::Stored {
            room: room.clone(),
            id,
        }
    }

    fn delivered(room: &RoomKey, reader: &str, up_to: u64) -> Hint {
        Hint::Delivered {
            room: room.clone(),
            reader: reader.into(),
            up_to,
        }
    }

    #[test]
    fn hints_only_rise_and_keep_each_members_mark() {
        let hints = MarkHints::new(10);
        let room = RoomKey::new("alice", "bob");
        assert!(hints.get(&room, "alice").is_none());
        hints.apply(vec![stored(&room, 5), stored(&room, 3)]);
        hints.apply(vec![delivered(&room, "bob", 4), delivered(&room, "bob", 2)]);
        let bob = hints.get(&room, "bob").unwrap();
        assert_eq!((bob.mark, bob.last_id), (4, 5));
        let alice = hints.get(&room, "alice").unwrap();
        assert_eq!((alice.mark, alice.last_id), (0, 5));
        assert!(hints.get(&room, "carol").is_none(), "not a member");
    }

    #[test]
    fn a_forgotten_room_is_read_from_the_store_again() {
        let hints = MarkHints::new(10);
        let room = RoomKey::new("alice", "bob");
        hints.apply(vec![stored(&room, 9), Hint::Forget(room.clone())]);
        assert!(hints.get(&room, "alice").is_none());
        // Forgotten, then written again in the same round: only what follows counts.
        hints.apply(vec![Hint::Forget(room.clone()), stored(&room, 2)]);
        assert_eq!(hints.get(&room, "bob").unwrap().last_id, 2);
    }

    #[test]
    fn the_bound_holds_and_zero_keeps_nothing() {
        let hints = MarkHints::new(3);
        for i in 0..10 {
            let room = RoomKey::new("alice", &format!("u{i}"));
            hints.apply(vec![stored(&room, i + 1)]);
            assert!(hints.len() <= 3);
        }
        let last = RoomKey::new("alice", "u9");
        assert_eq!(hints.get(&last, "alice").unwrap().last_id, 10);

        let off = MarkHints::new(0);
        off.apply(vec![stored(&last, 1)]);
        assert_eq!(off.len(), 0);
        assert!(off.get(&last, "alice").is_none());
    }
}
