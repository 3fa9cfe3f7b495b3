//! Every client event's payload parser and shape checks on arbitrary JSON text: they never
//! panic, refuse only with `bad_request`, and what they accept is in range.
#![no_main]

use chat_server::protocol::event::{
    is_valid_client_message_id, parse, ClientEvent, MessagesRequest, ReadItem, RoomsRequest,
    SendMessage, Typing, MAX_MESSAGES_LIMIT, MAX_ROOMS_LIMIT,
};
use chat_server::protocol::time::parse_rfc3339_millis;
use chat_server::protocol::{ChatError, ErrorCode};
use libfuzzer_sys::fuzz_target;

fn refused(error: ChatError) {
    assert_eq!(error.code, ErrorCode::BadRequest, "{}", error.message);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(json) = std::str::from_utf8(rest) else {
        return;
    };
    match selector % 5 {
        0 => match parse::<SendMessage>(ClientEvent::Message, json) {
            Ok(message) => match message.check_shape() {
                Ok(()) => assert!(message
                    .client_message_id
                    .as_deref()
                    .is_none_or(is_valid_client_message_id)),
                Err(e) => refused(e),
            },
            Err(e) => refused(e),
        },
        1 => match parse::<Vec<serde_json::Value>>(ClientEvent::Read, json) {
            Ok(items) => {
                for item in items {
                    if let Ok(item) = serde_json::from_value::<ReadItem>(item) {
                        // The seenDate check the handler runs next.
                        let _ = parse_rfc3339_millis(&item.seen_date);
                    }
                }
            }
            Err(e) => refused(e),
        },
        2 => {
            if let Err(e) = parse::<Typing>(ClientEvent::Typing, json) {
                refused(e);
            }
        }
        3 => match parse::<RoomsRequest>(ClientEvent::Rooms, json) {
            Ok(request) => match request.checked_limit() {
                Ok(limit) => {
                    assert!((1..=MAX_ROOMS_LIMIT).contains(&limit));
                    assert!(request.limit.is_none_or(|l| l == limit as u64));
                }
                Err(e) => refused(e),
            },
            Err(e) => refused(e),
        },
        _ => match parse::<MessagesRequest>(ClientEvent::Messages, json) {
            Ok(request) => {
                match request.checked_limit() {
                    Ok(limit) => {
                        assert!((1..=MAX_MESSAGES_LIMIT).contains(&limit));
                        assert!(request.limit.is_none_or(|l| l == limit as u64));
                    }
                    Err(e) => refused(e),
                }
                match request.checked_before() {
                    Ok(before) => {
                        assert_eq!(before, request.before);
                        assert!(before.is_none_or(|b| b >= 1));
                    }
                    Err(e) => refused(e),
                }
            }
            Err(e) => refused(e),
        },
    }
});
