//! Room id resolution on arbitrary callers and ids: it never panics, a resolved partner is
//! a valid user id whose canonical room id with the caller is exactly the id given, a
//! refusal as somebody else's room really has no reading with the caller in it, and the
//! canonical id of any valid pair resolves back to the partner unless it is ambiguous.
#![no_main]

use chat_server::protocol::room::{
    canonical_room_id, is_valid_user_id, resolve_partner, RoomError,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let split = usize::from(split).min(text.len());
    if !text.is_char_boundary(split) {
        return;
    }
    let (caller, other) = text.split_at(split);
    // The server resolves rooms only for authenticated, hence valid, user ids.
    if !is_valid_user_id(caller) {
        return;
    }

    // `other` as a room id.
    match resolve_partner(caller, other) {
        Ok(partner) => {
            assert!(is_valid_user_id(&partner));
            assert_eq!(canonical_room_id(caller, &partner), other);
        }
        Err(error) => {
            if error == RoomError::Forbidden {
                assert!(!other.starts_with(&format!("{caller}-")));
                assert!(!other.ends_with(&format!("-{caller}")));
            }
            assert!(!error.message(other).is_empty());
        }
    }

    // `other` as a partner.
    if is_valid_user_id(other) {
        let room_id = canonical_room_id(caller, other);
        match resolve_partner(caller, &room_id) {
            Ok(partner) => assert_eq!(partner, other),
            Err(error) => assert_eq!(error, RoomError::Ambiguous, "{caller} {other}"),
        }
    }
});
