//! The plain dialect's frame decoder on arbitrary text frames: it never panics, a decoded
//! frame carries syntactically valid JSON data and an ack of an allowed type, and
//! re-encoding a decoded frame decodes to the same frame.
#![no_main]

use chat_server::dialect::plain::decode;
use chat_server::protocol::ErrorCode;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 by the time they reach the decoder.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode(text) {
        Ok(frame) => {
            let payload = match serde_json::from_str::<Value>(frame.data) {
                Ok(payload) => payload,
                // `data` is checked for JSON syntax only. Some valid syntax holds values
                // serde_json will not build (a lone surrogate escape "\ud800", a number
                // beyond f64 such as 1e999): the payload parser refuses those later,
                // still as `bad_request`, or ignores them in unknown fields.
                Err(e) => {
                    assert_eq!(e.classify(), serde_json::error::Category::Syntax, "{e}");
                    return;
                }
            };
            assert!(matches!(
                frame.ack,
                None | Some(Value::Number(_)) | Some(Value::String(_))
            ));
            let again = json!({ "event": frame.event, "data": payload, "ack": frame.ack });
            let text = again.to_string();
            let round = decode(&text).expect("a re-encoded frame decodes");
            assert_eq!(round.event, frame.event);
            assert_eq!(round.ack, frame.ack);
            let round_data: Value = serde_json::from_str(round.data).unwrap();
            assert_eq!(round_data, payload);
        }
        Err(unusable) => assert_eq!(unusable.error.code, ErrorCode::BadRequest),
    }
});
