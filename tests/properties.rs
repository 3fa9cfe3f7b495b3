//! Property tests of the decoders that see untrusted input: the plain-dialect envelope,
//! the event payloads and their shape checks, room id resolution, timestamps and client
//! message ids. A bounded number of cases each, so they run in the normal suite; the
//! open-ended versions of the same checks are the cargo-fuzz targets in `fuzz/`. One
//! property runs against the real server: a value of the wrong JSON type in any position
//! of any payload is a `bad_request` that changes nothing.

mod common;

use chat_server::dialect::plain::decode;
use chat_server::protocol::event::{
    is_valid_client_message_id, parse, ClientEvent, MessagesRequest, RoomsRequest, SendMessage,
    Typing,
};
use chat_server::protocol::room::{
    canonical_room_id, is_valid_user_id, resolve_partner, RoomError,
};
use chat_server::protocol::time::{format_millis, parse_rfc3339_millis};
use chat_server::protocol::ErrorCode;
use std::time::Duration;

use common::ids;
use proptest::prelude::*;
use serde_json::{json, Value};

/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z in Unix milliseconds.
const FIRST_MS: i64 = -62_167_219_200_000;
const LAST_MS: i64 = 253_402_300_799_999;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

/// Arbitrary JSON without floats (whose text form need not round-trip bit for bit).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn ack_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        any::<i64>().prop_map(|n| Some(json!(n))),
        any::<u64>().prop_map(|n| Some(json!(n))),
        any::<String>().prop_map(|s| Some(json!(s))),
    ]
}

fn user_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.@+-]{1,64}"
}

/// User ids that avoid every known ambiguous case: no `-` at all.
fn plain_user_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.@+]{1,64}"
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_valid_envelope_round_trips_through_decode(
        event in any::<String>(),
        data in json_value(),
        ack in ack_value(),
        extra in json_value(),
    ) {
        let mut envelope = json!({ "event": event, "data": data, "extra": extra });
        if let Some(ack) = &ack {
            envelope["ack"] = ack.clone();
        }
        let text = envelope.to_string();
        let frame = decode(&text).expect("a valid envelope decodes");
        prop_assert_eq!(&frame.event, &event);
        prop_assert_eq!(&frame.ack, &ack);
        let decoded: Value = serde_json::from_str(frame.data).unwrap();
        prop_assert_eq!(decoded, data);
    }

    #[test]
    fn a_null_ack_or_missing_data_is_the_same_as_none(event in any::<String>()) {
        let text = json!({ "event": event, "ack": null }).to_string();
        let frame = decode(&text).unwrap();
        prop_assert_eq!(frame.ack, None);
        prop_assert_eq!(frame.data, "null");
    }

    #[test]
    fn an_ack_of_another_type_is_refused_naming_the_event(
        event in any::<String>(),
        ack in prop_oneof![
            any::<bool>().prop_map(Value::from),
            Just(json!([])),
            Just(json!({})),
        ],
    ) {
        let refused = decode(&json!({ "event": event, "ack": ack }).to_string()).unwrap_err();
        prop_assert_eq!(refused.error.code, ErrorCode::BadRequest);
        prop_assert_eq!(refused.event, Some(event));
    }

    #[test]
    fn decode_never_panics_on_arbitrary_text(text in any::<String>()) {
        if let Err(refused) = decode(&text) {
            prop_assert_eq!(refused.error.code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn decode_never_panics_on_object_like_text(text in r#"\{[ -~]{0,80}\}?"#) {
        if let Err(refused) = decode(&text) {
            prop_assert_eq!(refused.error.code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn payload_parsers_refuse_only_with_bad_request(data in json_value()) {
        let text = data.to_string();
        let refused = |e: chat_server::protocol::ChatError| e.code == ErrorCode::BadRequest;
        // What a parser accepts was an object: serde alone would also take an array.
        match parse::<SendMessage>(ClientEvent::Message, &text) {
            Ok(_) => prop_assert!(data.is_object(), "{}", text),
            Err(e) => prop_assert!(refused(e)),
        }
        match parse::<Typing>(ClientEvent::Typing, &text) {
            Ok(_) => prop_assert!(data.is_object(), "{}", text),
            Err(e) => prop_assert!(refused(e)),
        }
        match parse::<MessagesRequest>(ClientEvent::Messages, &text) {
            Ok(request) => {
                prop_assert!(data.is_object(), "{}", text);
                if let Ok(limit) = request.checked_limit() {
                    prop_assert!((1..=50).contains(&limit));
                }
                if let Ok(Some(before)) = request.checked_before() {
                    prop_assert!(before >= 1);
                }
            }
            Err(e) => prop_assert!(refused(e)),
        }
        match parse::<RoomsRequest>(ClientEvent::Rooms, &text) {
            Ok(request) => {
                prop_assert!(data.is_object(), "{}", text);
                if let Ok(limit) = request.checked_limit() {
                    prop_assert!((1..=100).contains(&limit));
                }
            }
            Err(e) => prop_assert!(refused(e)),
        }
    }

    #[test]
    fn limits_are_accepted_exactly_in_range(limit in any::<u64>(), before in any::<u64>()) {
        let request: MessagesRequest = parse(
            ClientEvent::Messages,
            &json!({ "roomId": "a-b", "limit": limit, "before": before }).to_string(),
        )
        .unwrap();
        prop_assert_eq!(request.checked_limit().is_ok(), (1..=50).contains(&limit));
        prop_assert_eq!(request.checked_before().is_ok(), before >= 1);
        let rooms: RoomsRequest =
            parse(ClientEvent::Rooms, &json!({ "limit": limit }).to_string()).unwrap();
        prop_assert_eq!(rooms.checked_limit().is_ok(), (1..=100).contains(&limit));
    }

    #[test]
    fn formatted_times_round_trip(ms in FIRST_MS..=LAST_MS) {
        let text = format_millis(ms);
        prop_assert_eq!(text.len(), 24);
        prop_assert_eq!(parse_rfc3339_millis(&text), Some(ms));
    }

    #[test]
    fn offsets_and_extra_fraction_digits_parse_to_the_same_instant(
        ms in FIRST_MS + 86_400_000..=LAST_MS - 86_400_000,
        offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59i64),
        extra_digits in "[0-9]{0,6}",
        lower_case in any::<bool>(),
    ) {
        // The same instant written in local time at that offset.
        let local = format_millis(ms + offset_minutes * 60_000);
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let offset = format!("{sign}{:02}:{:02}", offset_minutes.abs() / 60, offset_minutes.abs() % 60);
        let mut text = format!("{}{extra_digits}{offset}", &local[..23]);
        if lower_case {
            text = text.replacen('T', "t", 1);
        }
        prop_assert_eq!(parse_rfc3339_millis(&text), Some(ms), "{}", text);
    }

    #[test]
    fn time_parsing_never_panics(text in any::<String>()) {
        if let Some(ms) = parse_rfc3339_millis(&text) {
            prop_assert_eq!(format_millis(ms).len(), 24);
        }
    }

    #[test]
    fn formatting_clamps_outside_the_printable_years(ms in any::<i64>()) {
        prop_assert_eq!(
            parse_rfc3339_millis(&format_millis(ms)),
            Some(ms.clamp(FIRST_MS, LAST_MS))
        );
    }

    #[test]
    fn a_canonical_room_resolves_to_the_partner_unless_ambiguous(
        caller in user_id(),
        partner in user_id(),
    ) {
        let room_id = canonical_room_id(&caller, &partner);
        match resolve_partner(&caller, &room_id) {
            Ok(resolved) => prop_assert_eq!(resolved, partner),
            Err(error) => prop_assert_eq!(error, RoomError::Ambiguous),
        }
    }

    #[test]
    fn ids_without_dashes_always_resolve_and_the_reversed_id_names_the_canonical_one(
        caller in plain_user_id(),
        partner in plain_user_id(),
    ) {
        let room_id = canonical_room_id(&caller, &partner);
        prop_assert_eq!(resolve_partner(&caller, &room_id), Ok(partner.clone()));
        prop_assert_eq!(resolve_partner(&partner, &room_id), Ok(caller.clone()));
        if caller != partner {
            let reversed = if room_id == format!("{caller}-{partner}") {
                format!("{partner}-{caller}")
            } else {
                format!("{caller}-{partner}")
            };
            prop_assert_eq!(
                resolve_partner(&caller, &reversed),
                Err(RoomError::NotCanonical { canonical: Some(room_id) })
            );
        }
    }

    #[test]
    fn any_resolved_partner_recanonicalizes_to_the_room_id(
        caller in user_id(),
        rest in "[A-Za-z0-9_.@+-]{0,70}",
        placement in 0..3,
    ) {
        // Mostly ids that hold the caller in front or behind, so some of them resolve.
        let room_id = match placement {
            0 => rest,
            1 => format!("{caller}-{rest}"),
            _ => format!("{rest}-{caller}"),
        };
        match resolve_partner(&caller, &room_id) {
            Ok(partner) => {
                prop_assert!(is_valid_user_id(&partner));
                prop_assert_eq!(canonical_room_id(&caller, &partner), room_id);
            }
            Err(RoomError::Forbidden) => {
                let front = format!("{caller}-");
                let back = format!("-{caller}");
                prop_assert!(!room_id.starts_with(&front) && !room_id.ends_with(&back));
            }
            Err(_) => {}
        }
    }

    #[test]
    fn client_message_ids_of_printable_ascii_are_accepted(id in "[!-~]{1,64}") {
        prop_assert!(is_valid_client_message_id(&id));
        let message: SendMessage = parse(
            ClientEvent::Message,
            &json!({ "userId": "a", "roomId": "a-b", "message": "hi", "clientMessageId": id })
                .to_string(),
        )
        .unwrap();
        prop_assert!(message.check_shape().is_ok());
    }

    #[test]
    fn client_message_id_validity_matches_its_definition(id in any::<String>()) {
        let expected = (1..=64).contains(&id.len()) && id.chars().all(|c| ('!'..='~').contains(&c));
        prop_assert_eq!(is_valid_client_message_id(&id), expected);
        let message: SendMessage = parse(
            ClientEvent::Message,
            &json!({ "userId": "a", "roomId": "a-b", "message": "hi", "clientMessageId": id })
                .to_string(),
        )
        .unwrap();
        prop_assert_eq!(message.check_shape().is_ok(), expected);
    }
}

/// Found by the `plain_decode` fuzz target: a lone surrogate escape is valid JSON syntax,
/// so the envelope decodes and names its event, but no Rust string can hold it, so the
/// payload parser refuses the data with `bad_request` (never a panic, never stored).
#[test]
fn a_lone_surrogate_or_huge_number_in_data_is_refused_by_the_payload_parser() {
    let text = r#"{"event":"message","data":{"userId":"a","roomId":"a-b","message":"\ud800"}}"#;
    let frame = decode(text).expect("the envelope itself is valid JSON");
    assert_eq!(frame.event, "message");
    let refused = parse::<SendMessage>(ClientEvent::Message, frame.data).unwrap_err();
    assert_eq!(refused.code, ErrorCode::BadRequest);
    // Likewise a number beyond f64, also found by the fuzzer.
    let huge = r#"{"event":"message","data":{"userId":"a","roomId":"a-b","message":1e999}}"#;
    let frame = decode(huge).expect("the envelope itself is valid JSON");
    let refused = parse::<SendMessage>(ClientEvent::Message, frame.data).unwrap_err();
    assert_eq!(refused.code, ErrorCode::BadRequest);
    let paired = r#"{"userId":"a","roomId":"a-b","message":"\ud83d\ude00"}"#;
    let message: SendMessage = parse(ClientEvent::Message, paired).unwrap();
    assert_eq!(message.message, "\u{1f600}");
}

/// Found by the `plain_decode` fuzz target: `ack` is echoed back and must be the same
/// value, but serde_json's default float parsing may be off by one unit in the last place
/// (the fuzzer's 7.000000000000001e25 and proptest's -1.4187828003672035e133 came back as
/// other doubles). The `float_roundtrip` feature parses floats exactly, as JavaScript does.
#[test]
fn a_float_ack_comes_back_as_the_same_number() {
    for literal in ["7.000000000000001e25", "-1.4187828003672035e133"] {
        let text = format!(r#"{{"event":"x","ack":{literal}}}"#);
        let frame = decode(&text).unwrap();
        let expected: f64 = literal.parse().unwrap();
        assert_eq!(frame.ack.unwrap().as_f64(), Some(expected), "{literal}");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_float_ack_round_trips(ack in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let text = json!({ "event": "x", "ack": ack }).to_string();
        let frame = decode(&text).unwrap();
        prop_assert_eq!(frame.ack.and_then(|a| a.as_f64()), Some(ack));
    }
}

/// Where a value sits in a client event's payload.
#[derive(Debug, Clone, Copy)]
enum Where {
    /// The payload itself.
    Payload,
    /// The (only) item of a `message:read`.
    Item,
    /// A field of the payload, or of the `message:read` item.
    Field(&'static str),
}

/// The JSON types a position takes.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// An object.
    Object,
    /// An object, or `null` for the defaults (the `rooms` payload).
    ObjectOrNull,
    /// An array (the `message:read` payload).
    Array,
    /// A string.
    Text,
    /// A string, or `null`.
    OptionalText,
    /// A whole number.
    Count,
    /// A whole number, or `null`.
    OptionalCount,
}

/// Every position of every client event's payload.
const POSITIONS: &[(&str, Where, Slot)] = &[
    ("message", Where::Payload, Slot::Object),
    ("message", Where::Field("userId"), Slot::Text),
    ("message", Where::Field("roomId"), Slot::Text),
    ("message", Where::Field("message"), Slot::Text),
    (
        "message",
        Where::Field("clientMessageId"),
        Slot::OptionalText,
    ),
    ("typing", Where::Payload, Slot::Object),
    ("typing", Where::Field("roomId"), Slot::Text),
    ("rooms", Where::Payload, Slot::ObjectOrNull),
    ("rooms", Where::Field("limit"), Slot::OptionalCount),
    ("rooms", Where::Field("cursor"), Slot::OptionalText),
    ("messages", Where::Payload, Slot::Object),
    ("messages", Where::Field("roomId"), Slot::Text),
    ("messages", Where::Field("before"), Slot::OptionalCount),
    ("messages", Where::Field("limit"), Slot::OptionalCount),
    ("message:read", Where::Payload, Slot::Array),
    ("message:read", Where::Item, Slot::Object),
    ("message:read", Where::Field("userId"), Slot::Text),
    ("message:read", Where::Field("roomId"), Slot::Text),
    ("message:read", Where::Field("messageId"), Slot::Count),
    ("message:read", Where::Field("seenDate"), Slot::Text),
];

/// alice's read of bob's first message in their room.
fn read_item() -> Value {
    json!({ "userId": "alice", "roomId": "alice-bob", "messageId": 1,
            "seenDate": "2026-01-01T00:00:00.000Z" })
}

/// A payload that alice may send and that would succeed (and store, for `message` and
/// `message:read`).
fn valid_payload(event: &str) -> Value {
    match event {
        "message" => json!({ "userId": "alice", "roomId": "alice-bob", "message": "hi",
                             "clientMessageId": "c-1" }),
        "typing" => json!({ "roomId": "alice-bob" }),
        "rooms" => json!({ "limit": 10 }),
        "messages" => json!({ "roomId": "alice-bob", "before": 5, "limit": 10 }),
        "message:read" => json!([read_item()]),
        other => unreachable!("{other} is no client event"),
    }
}

/// The valid value of a position, moved into the container of the other kind: what a
/// lenient decoder would take for the real thing (serde maps an array onto a struct by
/// position, for one).
fn reshaped(event: &str, at: Where) -> Value {
    match (event, at) {
        ("message", Where::Payload) => json!(["alice", "alice-bob", "hi", "c-1"]),
        ("typing", Where::Payload) => json!(["alice-bob"]),
        ("rooms", Where::Payload) => json!([10]),
        ("messages", Where::Payload) => json!(["alice-bob", 5, 10]),
        ("message:read", Where::Payload) => read_item(),
        (_, Where::Item) => json!(["alice", "alice-bob", 1, "2026-01-01T00:00:00.000Z"]),
        ("message:read", Where::Field(field)) => json!([read_item()[field]]),
        (_, Where::Field(field)) => json!([valid_payload(event)[field]]),
        _ => unreachable!(),
    }
}

/// Any JSON value whose type `slot` does not take.
fn misfit(slot: Slot, reshaped: Value) -> BoxedStrategy<Value> {
    let null = Just(Value::Null).boxed();
    let boolean = any::<bool>().prop_map(Value::from).boxed();
    let number = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12..1e12f64).prop_map(Value::from),
    ]
    .boxed();
    let not_whole = prop_oneof![
        (i64::MIN..0).prop_map(Value::from),
        (0..1_000_000u32).prop_map(|n| Value::from(f64::from(n) + 0.5)),
    ]
    .boxed();
    let string = prop_oneof![
        any::<String>().prop_map(Value::from),
        "[0-9]{1,4}".prop_map(Value::from),
    ]
    .boxed();
    let arbitrary_array = prop::collection::vec(json_value(), 0..4).prop_map(Value::Array);
    let arbitrary_object = prop::collection::btree_map(any::<String>(), json_value(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()));
    let array = prop_oneof![Just(reshaped.clone()), arbitrary_array].boxed();
    let object = arbitrary_object.boxed();
    let choices = match slot {
        Slot::Object => vec![null, boolean, number, string, array],
        Slot::ObjectOrNull => vec![boolean, number, string, array],
        Slot::Array => vec![
            null,
            boolean,
            number,
            string,
            prop_oneof![Just(reshaped), object].boxed(),
        ],
        Slot::Text => vec![null, boolean, number, array, object],
        Slot::OptionalText => vec![boolean, number, array, object],
        Slot::Count => vec![null, boolean, not_whole, string, array, object],
        Slot::OptionalCount => vec![boolean, not_whole, string, array, object],
    };
    proptest::strategy::Union::new(choices).boxed()
}

/// The payload of `event` with `value` put at `at`.
fn payload_with(event: &str, at: Where, value: Value) -> Value {
    let mut payload = valid_payload(event);
    match at {
        Where::Payload => return value,
        Where::Item => payload[0] = value,
        Where::Field(field) if event == "message:read" => payload[0][field] = value,
        Where::Field(field) => payload[field] = value,
    }
    payload
}

/// Regression (issue 12): every position of every payload, given a value of a JSON type it
/// does not take (arrays, strings, numbers, booleans, nulls, objects), is a `bad_request`
/// and changes nothing. A `message:read` item with a field of the wrong type is rejected
/// on its own, in `rejected`; anything else refuses the whole request.
#[test]
fn a_value_of_the_wrong_json_type_anywhere_is_refused_and_changes_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = common::Server::start();
    let clients = runtime.block_on(async {
        let mut alice = server.connect("alice").await;
        let mut bob = server.connect("bob").await;
        let sent = bob.send_message("alice-bob", "unread").await;
        assert_eq!(sent["message"]["id"], 1, "{sent}");
        bob.recv_event("message:sent").await;
        alice.recv_event("message:sent").await;
        (alice, bob)
    });
    let clients = std::cell::RefCell::new(clients);
    let strategy = (0..POSITIONS.len()).prop_flat_map(|i| {
        let (event, at, slot) = POSITIONS[i];
        misfit(slot, reshaped(event, at)).prop_map(move |value| (i, value))
    });
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let result = runner.run(&strategy, |(i, value)| {
        let (event, at, _) = POSITIONS[i];
        let payload = payload_with(event, at, value);
        let (alice, _) = &mut *clients.borrow_mut();
        runtime.block_on(async {
            let reply = alice.request(event, payload.clone()).await;
            let per_item = event == "message:read" && matches!(at, Where::Field(_));
            if per_item {
                prop_assert_eq!(
                    &reply["ok"],
                    &json!(true),
                    "{} {}: {}",
                    event,
                    payload,
                    reply
                );
                prop_assert_eq!(
                    &reply["seen"],
                    &json!([]),
                    "{} {}: {}",
                    event,
                    payload,
                    reply
                );
                prop_assert_eq!(&reply["rejected"][0]["index"], &json!(0));
                prop_assert_eq!(&reply["rejected"][0]["code"], &json!("bad_request"));
            } else {
                prop_assert_eq!(
                    &reply["ok"],
                    &json!(false),
                    "{} {}: {}",
                    event,
                    payload,
                    reply
                );
                prop_assert_eq!(
                    &reply["error"]["code"],
                    &json!("bad_request"),
                    "{} {}: {}",
                    event,
                    payload,
                    reply
                );
            }
            let history = alice
                .request("messages", json!({ "roomId": "alice-bob" }))
                .await;
            let messages = &history["room"]["messages"];
            prop_assert_eq!(
                ids(messages),
                vec![1],
                "{} {}: stored {}",
                event,
                payload,
                messages
            );
            prop_assert_eq!(
                &messages[0]["seenAt"],
                &Value::Null,
                "{} {}",
                event,
                payload
            );
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Nothing reached anyone: no message:sent, no typing, no message:seen.
    let (mut alice, mut bob) = clients.into_inner();
    runtime.block_on(async {
        alice.expect_silence(Duration::from_millis(300)).await;
        bob.expect_silence(Duration::from_millis(300)).await;
    });
}
