//! The send path over the plain dialect: rooms, validation, fan-out, ordering, snapshots.

mod common;

use std::time::Duration;

use common::{ids, RawFrame, Server};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(300);

fn assert_iso_millis(value: &Value) {
    let re = regex_lite::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$").unwrap();
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    assert!(re.is_match(text), "bad timestamp {text}");
}

async fn history(client: &mut common::Client, room: &str) -> Value {
    let reply = client.request("messages", json!({ "roomId": room })).await;
    assert_eq!(reply["ok"], true, "{reply}");
    reply["room"]["messages"].clone()
}

#[tokio::test]
async fn alice_and_bob_chat_and_both_receive_message_sent() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;

    let ack = alice.send_message("alice-bob", "hi bob").await;
    assert_eq!(ack["ok"], true, "{ack}");
    let message = &ack["message"];
    assert_eq!(message["id"], 1);
    assert_eq!(message["userId"], "alice");
    assert_eq!(message["message"], "hi bob");
    assert_eq!(message["seenAt"], Value::Null);
    assert_eq!(message["clientMessageId"], Value::Null);
    assert_iso_millis(&message["sentAt"]);

    for client in [&mut alice, &mut bob] {
        let room = client.recv_event("message:sent").await;
        assert_eq!(room["roomId"], "alice-bob");
        assert_eq!(room["user"], json!({ "id": "alice", "name": "alice" }));
        assert_eq!(room["messages"][0], *message);
    }
}

#[tokio::test]
async fn canonical_rooms_with_dashes_numbers_and_self() {
    let server = Server::start();
    let cases = [
        ("10", "9", "10-9"),
        ("a-b", "c", "a-b-c"),
        ("b-c", "a", "a-b-c"),
        ("x", "x", "x-x"),
        ("User.1@example.com", "Alice", "Alice-User.1@example.com"),
    ];
    for (sender, partner, room) in cases {
        let mut a = server.connect(sender).await;
        let ack = a.send_message(room, "hello").await;
        assert_eq!(ack["ok"], true, "{sender} in {room}: {ack}");
        let sent = a.recv_event("message:sent").await;
        assert_eq!(sent["roomId"], room);
        if sender != partner {
            let mut b = server.connect(partner).await;
            let page = history(&mut b, room).await;
            assert!(
                !page.as_array().unwrap().is_empty(),
                "{partner} sees {room}"
            );
        }
    }
    // "a-b"+"c" and "a"+"b-c" both spell "a-b-c" yet are two rooms, one message each.
    let mut ab = server.connect("a-b").await;
    let one = history(&mut ab, "a-b-c").await;
    assert_eq!(
        (ids(&one), one[0]["userId"].clone()),
        (vec![1], json!("a-b"))
    );
    let mut a = server.connect("a").await;
    let other = history(&mut a, "a-b-c").await;
    assert_eq!(
        (ids(&other), other[0]["userId"].clone()),
        (vec![1], json!("b-c"))
    );
}

#[tokio::test]
async fn refused_sends_store_nothing_and_reach_nobody() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;

    let cases = [
        (
            json!({"userId": "alice", "roomId": "bob-alice", "message": "x"}),
            "invalid_room",
        ),
        (
            json!({"userId": "alice", "roomId": "bob-carol", "message": "x"}),
            "forbidden",
        ),
        (
            json!({"userId": "bob", "roomId": "alice-bob", "message": "x"}),
            "forbidden",
        ),
        (
            json!({"userId": "alice", "roomId": "alice-", "message": "x"}),
            "invalid_room",
        ),
        (
            json!({"userId": "alice", "roomId": "alice-bob", "message": ""}),
            "invalid_message",
        ),
        (
            json!({"userId": "alice", "roomId": "alice-bob", "message": "x".repeat(8193)}),
            "message_too_large",
        ),
        (
            json!({"userId": "alice", "roomId": "alice-bob", "message": 5}),
            "bad_request",
        ),
        (
            json!({"userId": "alice", "roomId": "alice-bob"}),
            "bad_request",
        ),
        (
            json!({"userId": "alice", "roomId": "alice-bob", "message": "x", "clientMessageId": "has space"}),
            "bad_request",
        ),
        (
            json!({"userId": "alice", "roomId": "alice-bob", "message": "x", "clientMessageId": ""}),
            "bad_request",
        ),
    ];
    for (payload, code) in cases {
        let reply = alice.request("message", payload.clone()).await;
        assert_eq!(reply["ok"], false, "{payload}");
        assert_eq!(reply["error"]["code"], code, "{payload}: {reply}");
        assert!(reply["error"]["message"].as_str().unwrap().len() > 3);
    }
    let reply = alice
        .request(
            "message",
            json!({"userId": "alice", "roomId": "bob-alice", "message": "x"}),
        )
        .await;
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alice-bob"),
        "{reply}"
    );

    alice.expect_silence(QUIET).await;
    bob.expect_silence(QUIET).await;
    carol.expect_silence(QUIET).await;
    assert!(history(&mut alice, "alice-bob")
        .await
        .as_array()
        .unwrap()
        .is_empty());
    assert!(history(&mut bob, "bob-carol")
        .await
        .as_array()
        .unwrap()
        .is_empty());

    // The largest allowed message passes.
    let ack = alice.send_message("alice-bob", &"é".repeat(4096)).await;
    assert_eq!(ack["ok"], true);
}

/// Regression (issue 12): serde fills a struct from a JSON array by position, so an array
/// payload used to store a message and answer a history page.
#[tokio::test]
async fn payloads_of_the_wrong_json_type_are_bad_requests_and_change_nothing() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;

    // The frames of the issue, verbatim.
    alice
        .send_raw(Message::text(
            r#"{"event":"message","data":["alice","alice-bob","hi"],"ack":1}"#,
        ))
        .await;
    let reply = alice.wait_ack(json!(1)).await;
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
    alice
        .send_raw(Message::text(
            r#"{"event":"messages","data":["alice-bob"],"ack":2}"#,
        ))
        .await;
    let reply = alice.wait_ack(json!(2)).await;
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");

    let cases = [
        ("message", json!(["alice", "alice-bob", "hi", "cmid-1"])),
        ("message", json!("alice-bob")),
        ("message", json!(7)),
        ("message", json!(true)),
        ("message", Value::Null),
        (
            "message",
            json!({"userId": ["alice"], "roomId": "alice-bob", "message": "hi"}),
        ),
        (
            "message",
            json!({"userId": "alice", "roomId": {"0": "alice-bob"}, "message": "hi"}),
        ),
        (
            "message",
            json!({"userId": "alice", "roomId": "alice-bob", "message": ["hi"]}),
        ),
        (
            "message",
            json!({"userId": "alice", "roomId": "alice-bob", "message": "hi", "clientMessageId": ["c"]}),
        ),
        ("typing", json!(["alice-bob"])),
        ("typing", json!("alice-bob")),
        ("typing", json!({"roomId": ["alice-bob"]})),
        ("rooms", json!([10])),
        ("rooms", json!("x")),
        ("rooms", json!(10)),
        ("rooms", json!({"limit": [10]})),
        ("rooms", json!({"cursor": ["c1.x"]})),
        ("messages", json!(["alice-bob", 5, 10])),
        ("messages", json!({"roomId": "alice-bob", "limit": [5]})),
        (
            "messages",
            json!({"roomId": "alice-bob", "before": {"id": 1}}),
        ),
        (
            "message:read",
            json!({"userId": "alice", "roomId": "alice-bob", "messageId": 1, "seenDate": "2026-01-01T00:00:00Z"}),
        ),
        (
            "message:read",
            json!([["alice", "alice-bob", 1, "2026-01-01T00:00:00Z"]]),
        ),
        ("message:read", json!("alice-bob")),
    ];
    for (event, data) in &cases {
        let reply = alice.request(event, data.clone()).await;
        assert_eq!(reply["ok"], false, "{event} {data}: {reply}");
        assert_eq!(
            reply["error"]["code"], "bad_request",
            "{event} {data}: {reply}"
        );
    }
    // Without an ack: an `error` event naming the event, and no reply event.
    alice.emit("messages", json!(["alice-bob"])).await;
    let error = alice.recv_event("error").await;
    assert_eq!(
        (error["code"].as_str(), error["event"].as_str()),
        (Some("bad_request"), Some("messages"))
    );

    bob.expect_silence(QUIET).await;
    alice.expect_silence(QUIET).await;
    assert_eq!(history(&mut alice, "alice-bob").await, json!([]));
    let inbox = alice.request("rooms", json!({})).await;
    assert_eq!(inbox["rooms"], json!([]), "{inbox}");

    // A message:read with one item that is not an object is refused whole: the valid
    // item beside it is not applied.
    let sent = bob.send_message("alice-bob", "read me").await;
    let id = sent["message"]["id"].clone();
    let valid = json!({"userId": "alice", "roomId": "alice-bob", "messageId": id,
                       "seenDate": "2026-01-01T00:00:00Z"});
    for stray in [
        json!(["alice", "alice-bob", id, "x"]),
        json!(null),
        json!(1),
        json!("x"),
    ] {
        let reply = alice
            .request("message:read", json!([valid.clone(), stray.clone()]))
            .await;
        assert_eq!(reply["error"]["code"], "bad_request", "{stray}: {reply}");
    }
    assert_eq!(
        history(&mut alice, "alice-bob").await[0]["seenAt"],
        Value::Null
    );
    // The same valid item alone applies: the refusals above were about the shape only.
    let reply = alice.request("message:read", json!([valid])).await;
    assert_eq!(reply["seen"].as_array().map(Vec::len), Some(1), "{reply}");
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_open() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;

    let expect_error = |frame: Value, code: &str, event: Value| {
        assert_eq!(frame["event"], "error", "{frame}");
        assert_eq!(frame["data"]["code"], code, "{frame}");
        assert_eq!(frame["data"]["event"], event, "{frame}");
        assert!(frame["data"]["message"].is_string());
    };

    alice.send_raw(Message::text("{not json")).await;
    expect_error(alice.recv().await, "bad_request", Value::Null);
    alice.send_raw(Message::text("[1,2]")).await;
    expect_error(alice.recv().await, "bad_request", Value::Null);
    alice.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    expect_error(alice.recv().await, "bad_request", Value::Null);
    alice.send_json(json!({ "data": {} })).await;
    expect_error(alice.recv().await, "bad_request", Value::Null);
    alice
        .send_json(json!({ "event": "message", "ack": {"x": 1}, "data": {} }))
        .await;
    expect_error(alice.recv().await, "bad_request", json!("message"));
    alice.emit("message:sent", json!({})).await;
    expect_error(alice.recv().await, "unknown_event", json!("message:sent"));
    alice.emit("dance", json!({})).await;
    expect_error(alice.recv().await, "unknown_event", json!("dance"));
    alice
        .emit(
            "message",
            json!({"userId": "alice", "roomId": "alice-bob", "message": ""}),
        )
        .await;
    expect_error(alice.recv().await, "invalid_message", json!("message"));

    // With an ack, a failure is only the ack reply, never also an error event.
    let reply = alice.request("dance", json!({})).await;
    assert_eq!(reply["error"]["code"], "unknown_event");
    let string_ack = {
        alice
            .send_json(json!({"event": "typing", "data": {"roomId": "alice-bob"}, "ack": "t1"}))
            .await;
        alice.wait_ack(json!("t1")).await
    };
    assert_eq!(string_ack, json!({ "ok": true }));
    alice.expect_silence(QUIET).await;

    // Still open: a good message goes through, without ack no reply but message:sent.
    alice
        .emit(
            "message",
            json!({"userId": "alice", "roomId": "alice-bob", "message": "ok"}),
        )
        .await;
    let sent = alice.recv_event("message:sent").await;
    assert_eq!(sent["messages"][0]["message"], "ok");
}

#[tokio::test]
async fn every_tab_of_both_users_receives_and_outsiders_do_not() {
    let server = Server::start();
    let mut alice1 = server.connect("alice").await;
    let mut alice2 = server.connect("alice").await;
    let mut bob1 = server.connect("bob").await;
    let mut bob2 = server.connect("bob").await;
    let mut carol = server.connect("carol").await;
    bob1.send_message("alice-bob", "to both tabs").await;
    for tab in [&mut alice1, &mut alice2, &mut bob1, &mut bob2] {
        let room = tab.recv_event("message:sent").await;
        assert_eq!(room["messages"][0]["message"], "to both tabs");
        assert_eq!(room["user"]["id"], "bob");
    }
    carol.expect_silence(QUIET).await;

    // A self room reaches the user's tabs once each, and nobody else.
    alice1.send_message("alice-alice", "note to self").await;
    for tab in [&mut alice1, &mut alice2] {
        let room = tab.recv_event("message:sent").await;
        assert_eq!(room["roomId"], "alice-alice");
    }
    alice2.expect_silence(QUIET).await;
    bob1.expect_silence(QUIET).await;
}

async fn send_all(client: &mut common::Client, frames: Vec<Message>) {
    for frame in frames {
        client.ws.feed(frame).await.unwrap();
    }
    client.ws.flush().await.unwrap();
}

#[tokio::test]
async fn concurrent_senders_get_gap_free_ids_in_order_everywhere() {
    let server = Server::start();
    const EACH: usize = 100;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut watcher = server.connect("alice").await;

    // Both pipeline all their messages without waiting for any reply.
    let frames = |user: &str| -> Vec<Message> {
        (0..EACH)
            .map(|i| {
                Message::text(
                    json!({"event": "message", "data": {"userId": user, "roomId": "alice-bob",
                        "message": format!("{user} {i}")}})
                    .to_string(),
                )
            })
            .collect()
    };
    let (alice_frames, bob_frames) = (frames("alice"), frames("bob"));
    tokio::join!(
        send_all(&mut alice, alice_frames),
        send_all(&mut bob, bob_frames)
    );

    for client in [&mut alice, &mut bob, &mut watcher] {
        let mut expected = 1;
        let mut per_sender = std::collections::HashMap::new();
        while expected <= (2 * EACH) as u64 {
            let room = client.recv_event("message:sent").await;
            let newest = &room["messages"][0];
            assert_eq!(newest["id"], expected, "ids arrive in order without gaps");
            // Each sender's own messages keep their sending order.
            let sender = newest["userId"].as_str().unwrap().to_owned();
            let n: usize = newest["message"]
                .as_str()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            let next = per_sender.entry(sender).or_insert(0usize);
            assert_eq!(n, *next);
            *next += 1;
            expected += 1;
        }
    }
    let page = history(&mut alice, "alice-bob").await;
    assert_eq!(ids(&page), (151..=200).rev().collect::<Vec<u64>>());
}

#[tokio::test]
async fn snapshot_is_the_latest_fifty_newest_first_including_the_new_one() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    for i in 1..=60u64 {
        let ack = alice.send_message("alice-bob", &format!("m{i}")).await;
        let room = alice.recv_event("message:sent").await;
        let got = ids(&room["messages"]);
        let expected: Vec<u64> = (i.saturating_sub(49).max(1)..=i).rev().collect();
        assert_eq!(got, expected, "after message {i}");
        assert_eq!(room["messages"][0], ack["message"]);
        for m in room["messages"].as_array().unwrap() {
            assert_iso_millis(&m["sentAt"]);
        }
    }
    // sentAt never goes backwards within the room.
    let page = history(&mut alice, "alice-bob").await;
    let times: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sentAt"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
}

#[tokio::test]
async fn retry_with_the_same_client_message_id_stores_once() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let send = |text: &str| json!({"userId": "alice", "roomId": "alice-bob", "message": text, "clientMessageId": "c-1"});

    let first = alice.request("message", send("hello")).await;
    assert_eq!(first["message"]["clientMessageId"], "c-1");
    alice.recv_event("message:sent").await;
    bob.recv_event("message:sent").await;
    alice.send_message("alice-bob", "later").await;
    alice.recv_event("message:sent").await;
    bob.recv_event("message:sent").await;

    let retry = alice.request("message", send("different text")).await;
    assert_eq!(
        retry["message"], first["message"],
        "the stored message comes back"
    );
    let again = alice.recv_event("message:sent").await;
    assert_eq!(
        ids(&again["messages"]),
        vec![2, 1],
        "the room's current latest"
    );
    bob.expect_silence(QUIET).await;

    // The same key from the partner is a different message.
    let from_bob = bob
        .request("message", json!({"userId": "bob", "roomId": "alice-bob", "message": "b", "clientMessageId": "c-1"}))
        .await;
    assert_eq!(from_bob["message"]["id"], 3);
    assert_eq!(ids(&history(&mut alice, "alice-bob").await), vec![3, 2, 1]);
}

#[tokio::test]
async fn names_from_tokens_travel_with_messages() {
    let server = Server::start();
    let token = server.named_token("alice", "  Alice Liddell  ");
    let mut alice = server.connect_token("alice", &token).await;
    alice.send_message("alice-bob", "hi").await;
    let room = alice.recv_event("message:sent").await;
    assert_eq!(
        room["user"],
        json!({"id": "alice", "name": "Alice Liddell"})
    );
}

#[tokio::test]
async fn long_messages_arrive_intact_as_fragments_of_at_most_1_kib() {
    let server = Server::start();
    let mut alice = server.raw_ws("alice", None).await;
    let mut bob = server.connect("bob").await;
    // Characters of 1 to 4 bytes, so the cuts meet every kind of character boundary.
    let text = "é€😀a".repeat(300);
    let ack = bob.send_message("alice-bob", &text).await;
    assert_eq!(ack["ok"], true, "{ack}");

    // tokio-tungstenite reassembles the fragments into one message.
    let room = bob.recv_event("message:sent").await;
    assert_eq!(room["messages"][0]["message"], text);

    // On the wire: a text frame and continuations, none over 1020 bytes of payload.
    let frame = loop {
        match alice.next_frame().await.expect("connection open") {
            RawFrame::Text(frame) => break frame,
            RawFrame::Ping => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    };
    let frame: Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(frame["event"], "message:sent");
    assert_eq!(frame["data"]["messages"][0]["message"], text);
    let sizes = &alice.last_fragments;
    assert!(sizes.len() >= 3, "not fragmented: {sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 1020), "{sizes:?}");
}
