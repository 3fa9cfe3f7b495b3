//! User ids and room ids (PROTOCOL.md sections 1 and 8).
//!
//! A room id is `"<lowest>-<highest>"`, but user ids may themselves contain `-`, so the id
//! string alone does not always name one pair of users. The server therefore never looks a
//! room up by its id string: it resolves the id relative to the caller into a partner, and
//! stores the room under the pair. This module holds that resolution and its refusals.

/// Longest allowed user id, in bytes (the alphabet is ASCII, so bytes are characters).
const MAX_USER_ID_LEN: usize = 64;

/// True when `s` is a valid user id: 1..=64 chars, each from A-Z a-z 0-9 _ . @ + -
pub fn is_valid_user_id(s: &str) -> bool {
    (1..=MAX_USER_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'+' | b'-'))
}

/// How a pair is spelled on the wire; defined beside [`crate::model::RoomKey`], whose id it
/// is, and used here to check what a client sent.
pub use crate::model::canonical_room_id;

/// Why a room id is refused for a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomError {
    /// No reading of the id has the caller as a participant: someone else's room.
    Forbidden,
    /// Caller is in it, but the id is not canonical; carries the canonical id when one can be derived.
    NotCanonical { canonical: Option<String> },
    /// Caller is in it, but the partner part is not a valid user id.
    InvalidPartner,
    /// The id reads as two different partners for this caller.
    Ambiguous,
}

impl RoomError {
    /// One sentence for humans, naming the refused id (and the canonical one when known).
    pub fn message(&self, room_id: &str) -> String {
        // `{:?}` quotes the id and escapes anything odd a client may have put in it.
        match self {
            RoomError::Forbidden => format!("room {room_id:?} is not yours"),
            RoomError::NotCanonical {
                canonical: Some(canonical),
            } => format!("room id {room_id:?} is not canonical; use {canonical:?}"),
            RoomError::NotCanonical { canonical: None } => format!(
                "room id {room_id:?} is not canonical; use \"<lowest-user-id>-<highest-user-id>\", \
                 the two ids in byte order"
            ),
            RoomError::InvalidPartner => format!(
                "room id {room_id:?} does not name a valid partner: user ids are 1 to 64 \
                 characters from A-Z a-z 0-9 _ . @ + -"
            ),
            RoomError::Ambiguous => format!(
                "room id {room_id:?} is ambiguous: it reads as two different partners for you"
            ),
        }
    }
}

/// Resolve `room_id` relative to `caller` (already a valid user id): returns the partner's user id.
pub fn resolve_partner(caller: &str, room_id: &str) -> Result<String, RoomError> {
    // The two places the caller can sit: in front ("caller-partner") or behind
    // ("partner-caller"). For the self room both readings give the same partner.
    let front = room_id
        .strip_prefix(caller)
        .and_then(|rest| rest.strip_prefix('-'));
    let back = room_id
        .strip_suffix(caller)
        .and_then(|rest| rest.strip_suffix('-'));
    if front.is_none() && back.is_none() {
        return Err(RoomError::Forbidden);
    }
    let readings = [front, back];
    let valid = || {
        readings
            .into_iter()
            .flatten()
            .filter(|p| is_valid_user_id(p))
    };

    // Only the exact canonical spelling counts, so that one pair has one id on the wire.
    let mut counting = valid().filter(|p| canonical_room_id(caller, p) == room_id);
    if let Some(first) = counting.next() {
        return match counting.next() {
            Some(second) if second != first => Err(RoomError::Ambiguous),
            _ => Ok(first.to_owned()),
        };
    }

    // Nothing counts: a valid partner means merely the wrong order, so the client can be told
    // the right spelling — unless two readings would suggest two different spellings.
    let mut suggestions = valid().map(|p| canonical_room_id(caller, p));
    match suggestions.next() {
        None => Err(RoomError::InvalidPartner),
        Some(first) => {
            let canonical = match suggestions.next() {
                Some(second) if second != first => None,
                _ => Some(first),
            };
            Err(RoomError::NotCanonical { canonical })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_canonical(canonical: &str) -> Result<String, RoomError> {
        Err(RoomError::NotCanonical {
            canonical: Some(canonical.to_owned()),
        })
    }

    #[test]
    fn user_id_alphabet_and_length() {
        assert!(is_valid_user_id("alice"));
        assert!(is_valid_user_id("A-Z_a.z@0+9"));
        assert!(is_valid_user_id("550e8400-e29b-41d4-a716-446655440000"));
        assert!(is_valid_user_id("-"));
        assert!(is_valid_user_id(&"x".repeat(64)));
        assert!(!is_valid_user_id(&"x".repeat(65)));
        assert!(!is_valid_user_id(""));
        for bad in ["a b", "a/b", "a:b", "a#b", "é", "a\u{0}", "a\n", "a%20"] {
            assert!(!is_valid_user_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn canonical_orders_bytewise() {
        assert_eq!(canonical_room_id("alice", "bob"), "alice-bob");
        assert_eq!(canonical_room_id("bob", "alice"), "alice-bob");
        assert_eq!(canonical_room_id("9", "10"), "10-9");
        assert_eq!(canonical_room_id("10", "9"), "10-9");
        // Upper case sorts before lower case.
        assert_eq!(canonical_room_id("alice", "Bob"), "Bob-alice");
        assert_eq!(canonical_room_id("a", "a"), "a-a");
    }

    #[test]
    fn plain_room_resolves_for_both_sides() {
        assert_eq!(resolve_partner("alice", "alice-bob"), Ok("bob".into()));
        assert_eq!(resolve_partner("bob", "alice-bob"), Ok("alice".into()));
    }

    #[test]
    fn reversed_order_names_the_canonical_id() {
        assert_eq!(
            resolve_partner("alice", "bob-alice"),
            not_canonical("alice-bob")
        );
        assert_eq!(
            resolve_partner("bob", "bob-alice"),
            not_canonical("alice-bob")
        );
    }

    #[test]
    fn numeric_ids_compare_as_strings() {
        assert_eq!(resolve_partner("10", "10-9"), Ok("9".into()));
        assert_eq!(resolve_partner("9", "10-9"), Ok("10".into()));
        assert_eq!(resolve_partner("9", "9-10"), not_canonical("10-9"));
        assert_eq!(resolve_partner("10", "9-10"), not_canonical("10-9"));
    }

    #[test]
    fn ids_with_dashes_resolve_for_their_own_caller() {
        // "a-b"+"c" and "a"+"b-c" (or "c"+"a-b") share the string "a-b-c"; each caller
        // reads it unambiguously.
        assert_eq!(resolve_partner("a-b", "a-b-c"), Ok("c".into()));
        assert_eq!(resolve_partner("c", "a-b-c"), Ok("a-b".into()));
        assert_eq!(resolve_partner("a", "a-b-c"), Ok("b-c".into()));
        assert_eq!(resolve_partner("b-c", "a-b-c"), Ok("a".into()));
        assert_eq!(resolve_partner("b", "a-b-c"), Err(RoomError::Forbidden));
        // Caller "a" in "a-b-a": "a" + "b-a" is canonical, "a-b" + "a" is not, and only
        // the canonical reading counts.
        assert_eq!(resolve_partner("a", "a-b-a"), Ok("b-a".into()));
    }

    #[test]
    fn someone_elses_room_is_forbidden() {
        assert_eq!(
            resolve_partner("carol", "alice-bob"),
            Err(RoomError::Forbidden)
        );
        // The caller's id must be a whole part, not just a prefix or suffix of one.
        assert_eq!(
            resolve_partner("alice", "alicex-bob"),
            Err(RoomError::Forbidden)
        );
        assert_eq!(
            resolve_partner("bob", "alice-xbob"),
            Err(RoomError::Forbidden)
        );
        assert_eq!(resolve_partner("alice", "alice"), Err(RoomError::Forbidden));
        assert_eq!(resolve_partner("alice", ""), Err(RoomError::Forbidden));
        assert_eq!(
            resolve_partner("Alice", "alice-bob"),
            Err(RoomError::Forbidden)
        );
    }

    #[test]
    fn self_room() {
        assert_eq!(resolve_partner("a", "a-a"), Ok("a".into()));
        assert_eq!(resolve_partner("alice", "alice-alice"), Ok("alice".into()));
        // "a-a"+"a" is "a-a-a" read either way round, and both readings name "a".
        assert_eq!(resolve_partner("a-a", "a-a-a"), Ok("a".into()));
    }

    #[test]
    fn invalid_partner_part() {
        assert_eq!(
            resolve_partner("alice", "alice-"),
            Err(RoomError::InvalidPartner)
        );
        assert_eq!(
            resolve_partner("alice", "-alice"),
            Err(RoomError::InvalidPartner)
        );
        assert_eq!(
            resolve_partner("alice", "alice-b b"),
            Err(RoomError::InvalidPartner)
        );
        assert_eq!(
            resolve_partner("alice", "alice-bé"),
            Err(RoomError::InvalidPartner)
        );
    }

    #[test]
    fn partner_length_limit() {
        let max = "z".repeat(64);
        let room = format!("alice-{max}");
        assert_eq!(resolve_partner("alice", &room), Ok(max.clone()));
        let long = "z".repeat(65);
        let room = format!("alice-{long}");
        assert_eq!(
            resolve_partner("alice", &room),
            Err(RoomError::InvalidPartner)
        );
        // A 64-character caller works the same.
        let room = format!("alice-{max}");
        assert_eq!(resolve_partner(&max, &room), Ok("alice".into()));
    }

    #[test]
    fn ambiguous_ids() {
        // Found by brute force over ids from {a, b, -}. The shortest: caller "-a-" in
        // "-a--a-" is "-a-" + "a-" and also "-a" + "-a-", both canonical.
        assert_eq!(resolve_partner("-a-", "-a--a-"), Err(RoomError::Ambiguous));
        // The shortest with no leading, trailing or doubled '-': "a-b-a" + "b-a" and
        // "a-b" + "a-b-a" both give "a-b-a-b-a".
        assert_eq!(canonical_room_id("a-b-a", "b-a"), "a-b-a-b-a");
        assert_eq!(canonical_room_id("a-b", "a-b-a"), "a-b-a-b-a");
        assert_eq!(
            resolve_partner("a-b-a", "a-b-a-b-a"),
            Err(RoomError::Ambiguous)
        );
        // The partners themselves read the id unambiguously.
        assert_eq!(resolve_partner("b-a", "a-b-a-b-a"), Ok("a-b-a".into()));
        assert_eq!(resolve_partner("a-b", "a-b-a-b-a"), Ok("a-b-a".into()));
    }

    #[test]
    fn wrong_order_with_two_possible_spellings() {
        // Caller "a" in "a--a": partner "-a" (canonical "-a-a") or "a-" (canonical "a-a-");
        // there is no single id to suggest.
        assert_eq!(
            resolve_partner("a", "a--a"),
            Err(RoomError::NotCanonical { canonical: None })
        );
    }

    #[test]
    fn messages_are_sentences() {
        assert_eq!(
            not_canonical("alice-bob").unwrap_err().message("bob-alice"),
            "room id \"bob-alice\" is not canonical; use \"alice-bob\""
        );
        assert_eq!(
            RoomError::Forbidden.message("x-y"),
            "room \"x-y\" is not yours"
        );
        assert!(RoomError::Ambiguous
            .message("alice-b-c")
            .starts_with("room id \"alice-b-c\" is ambiguous"));
        assert!(RoomError::InvalidPartner
            .message("alice-")
            .starts_with("room id \"alice-\" does not name a valid partner"));
        assert!(RoomError::NotCanonical { canonical: None }
            .message("x")
            .starts_with("room id \"x\" is not canonical"));
    }

    /// Every id of up to `len` characters over a small alphabet rich in `-`.
    fn short_ids(len: usize) -> Vec<String> {
        let mut all = Vec::new();
        let mut last = vec![String::new()];
        for _ in 0..len {
            last = last
                .iter()
                .flat_map(|s| ['a', 'b', '-'].map(|c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn every_pair_resolves_back_unless_ambiguous() {
        let ids = short_ids(4);
        for caller in &ids {
            for partner in &ids {
                let room = canonical_room_id(caller, partner);
                match resolve_partner(caller, &room) {
                    Ok(p) => assert_eq!(&p, partner, "{caller:?} in {room:?}"),
                    Err(RoomError::Ambiguous) => {}
                    other => panic!("{caller:?} in {room:?}: {other:?}"),
                }
            }
        }
    }
}
