//! Blocking users over the plain dialect and HTTP: a blocked pair exchanges no messages
//! (in either direction) and no typing, the blocker counts nothing unread from them,
//! `blocks` lists them, every call is idempotent, bad input changes nothing, and a block
//! survives kill -9 once acknowledged. The Socket.IO side is in tests/js/socketio.test.mjs.

mod common;

use std::time::Duration;

use common::{http_call, ids, Client, Server};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

async fn block(client: &mut Client, user: &str) -> Value {
    client.request("block", json!({ "userId": user })).await
}

async fn unblock(client: &mut Client, user: &str) -> Value {
    client.request("unblock", json!({ "userId": user })).await
}

/// Checks that `client` (one of the blocker's connections) is told of a change of its
/// block list: `event` is `block` or `unblock`.
async fn told(client: &mut Client, event: &str, user: &str) -> Value {
    let data = client.recv_event(event).await;
    assert_eq!(data["userId"], user, "{data}");
    data
}

/// The ids of everyone `client` blocks, in the order the list gives.
async fn blocked_ids(client: &mut Client) -> Vec<String> {
    let reply = client.request("blocks", Value::Null).await;
    assert_eq!(reply["ok"], true, "{reply}");
    reply["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["user"]["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `client`'s inbox row for `room`.
async fn inbox_row(client: &mut Client, room: &str) -> Value {
    let reply = client.request("rooms", json!({})).await;
    let rooms = reply["rooms"].as_array().unwrap();
    rooms
        .iter()
        .find(|r| r["roomId"] == room)
        .unwrap_or_else(|| panic!("no {room} in {reply}"))
        .clone()
}

async fn history(client: &mut Client, room: &str) -> Value {
    let reply = client.request("messages", json!({ "roomId": room })).await;
    assert_eq!(reply["ok"], true, "{reply}");
    reply["room"]["messages"].clone()
}

fn assert_blocked(reply: &Value) {
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "blocked", "{reply}");
}

#[tokio::test]
async fn a_block_refuses_sends_both_ways_until_unblocked() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    assert_eq!(alice.send_message("alice-bob", "hi").await["ok"], true);
    alice.recv_event("message:sent").await;
    bob.recv_event("message:sent").await;

    let mut bob_tab = server.connect("bob").await;
    let reply = block(&mut bob, "alice").await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["userId"], "alice");
    assert!(reply["blockedAt"].is_string(), "{reply}");
    // Every connection of the blocker hears of it; the blocked user is not told.
    for tab in [&mut bob, &mut bob_tab] {
        assert_eq!(
            told(tab, "block", "alice").await["blockedAt"],
            reply["blockedAt"]
        );
    }
    alice.expect_silence(QUIET).await;

    let refused = alice.send_message("alice-bob", "are you there?").await;
    assert_blocked(&refused);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not accept"),
        "{refused}"
    );
    // The blocker cannot write to the blocked user either: unblock first.
    let own = bob.send_message("alice-bob", "bye").await;
    assert_blocked(&own);
    assert!(
        own["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unblock"),
        "{own}"
    );
    // Without an ack, the refusal is an error event naming the event.
    alice
        .emit(
            "message",
            json!({ "userId": "alice", "roomId": "alice-bob", "message": "again" }),
        )
        .await;
    let error = alice.recv_event("error").await;
    assert_eq!(
        (&error["code"], &error["event"]),
        (&json!("blocked"), &json!("message"))
    );
    bob.expect_silence(QUIET).await;
    alice.expect_silence(QUIET).await;
    assert_eq!(ids(&history(&mut bob, "alice-bob").await), [1]);

    assert_eq!(unblock(&mut bob, "alice").await["ok"], true);
    for tab in [&mut bob, &mut bob_tab] {
        assert_eq!(
            told(tab, "unblock", "alice").await,
            json!({ "userId": "alice" })
        );
    }
    let ack = alice.send_message("alice-bob", "back").await;
    assert_eq!(ack["message"]["id"], 2, "{ack}");
    assert_eq!(
        bob.recv_event("message:sent").await["messages"][0]["message"],
        "back"
    );
    assert_eq!(
        bob.send_message("alice-bob", "hello again").await["ok"],
        true
    );
}

#[tokio::test]
async fn a_blocked_user_cannot_start_a_conversation_and_self_rooms_are_untouched() {
    let server = Server::start();
    let mut carol = server.connect("carol").await;
    let mut dave = server.connect("dave").await;
    assert_eq!(block(&mut carol, "dave").await["ok"], true);
    told(&mut carol, "block", "dave").await;
    assert_blocked(&dave.send_message("carol-dave", "first contact").await);
    carol.expect_silence(QUIET).await;
    let rooms = carol.request("rooms", json!({})).await;
    assert_eq!(rooms["rooms"], json!([]), "no room was created: {rooms}");
    // Notes to oneself never meet a block.
    assert_eq!(carol.send_message("carol-carol", "note").await["ok"], true);
}

#[tokio::test]
async fn sends_racing_a_block_are_stored_only_up_to_it() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    const N: u64 = 40;
    for i in 1..=N {
        alice
            .send_json(json!({ "event": "message", "ack": i, "data": {
                "userId": "alice", "roomId": "alice-bob", "message": format!("m{i}") } }))
            .await;
        if i == N / 2 {
            bob.send_json(json!({ "event": "block", "ack": 1, "data": { "userId": "alice" } }))
                .await;
        }
    }
    assert_eq!(bob.wait_ack(json!(1)).await["ok"], true);
    let mut stored = Vec::new();
    let mut refused = 0;
    for i in 1..=N {
        let reply = alice.wait_ack(json!(i)).await;
        if reply["ok"] == true {
            assert_eq!(refused, 0, "ack {i} succeeded after a refusal: {reply}");
            stored.push(reply["message"]["id"].as_u64().unwrap());
        } else {
            assert_blocked(&reply);
            refused += 1;
        }
    }
    assert!(refused > 0, "the block never took effect");
    // Exactly the acknowledged sends were stored, with ids 1..=n and nothing after.
    let n = stored.len() as u64;
    assert_eq!(stored, (1..=n).collect::<Vec<_>>());
    let mut expected: Vec<u64> = (1..=n).collect();
    expected.reverse();
    assert_eq!(ids(&history(&mut bob, "alice-bob").await), expected);
}

#[tokio::test]
async fn typing_is_not_relayed_between_a_blocked_pair() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let typing = json!({ "roomId": "alice-bob" });
    assert_eq!(alice.request("typing", typing.clone()).await["ok"], true);
    assert_eq!(bob.recv_event("typing").await["userId"], "alice");

    assert_eq!(block(&mut bob, "alice").await["ok"], true);
    told(&mut bob, "block", "alice").await;
    // The typist gets ok either way; nothing reaches the other side, in both directions.
    assert_eq!(alice.request("typing", typing.clone()).await["ok"], true);
    bob.expect_silence(QUIET).await;
    assert_eq!(bob.request("typing", typing.clone()).await["ok"], true);
    alice.expect_silence(QUIET).await;

    assert_eq!(unblock(&mut bob, "alice").await["ok"], true);
    told(&mut bob, "unblock", "alice").await;
    assert_eq!(alice.request("typing", typing).await["ok"], true);
    assert_eq!(bob.recv_event("typing").await["userId"], "alice");
}

#[tokio::test]
async fn a_blocked_users_messages_do_not_count_as_unread() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    for text in ["one", "two"] {
        assert_eq!(alice.send_message("alice-bob", text).await["ok"], true);
    }
    let row = inbox_row(&mut bob, "alice-bob").await;
    assert_eq!(
        (&row["unread"], &row["blocked"]),
        (&json!(2), &json!(false))
    );

    assert_eq!(block(&mut bob, "alice").await["ok"], true);
    let row = inbox_row(&mut bob, "alice-bob").await;
    assert_eq!((&row["unread"], &row["blocked"]), (&json!(0), &json!(true)));
    // The conversation stays listed for the blocker, and the blocked side sees no flag.
    let theirs = inbox_row(&mut alice, "alice-bob").await;
    assert_eq!(theirs["blocked"], false);
    // Nothing was marked seen: alice's messages still have no seenAt.
    let stored = history(&mut alice, "alice-bob").await;
    assert!(stored
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["seenAt"].is_null()));

    // Unblocking shows the messages that are still unseen again.
    assert_eq!(unblock(&mut bob, "alice").await["ok"], true);
    let row = inbox_row(&mut bob, "alice-bob").await;
    assert_eq!(
        (&row["unread"], &row["blocked"]),
        (&json!(2), &json!(false))
    );
}

#[tokio::test]
async fn blocks_lists_names_and_every_call_is_idempotent() {
    let server = Server::start();
    // alice's name is remembered from her token.
    let alice_token = server.named_token("alice", "Alice Liddell");
    drop(server.connect_token("alice", &alice_token).await);
    let mut bob = server.connect("bob").await;
    assert!(blocked_ids(&mut bob).await.is_empty());

    let first = block(&mut bob, "carol").await;
    assert_eq!(block(&mut bob, "alice").await["ok"], true);
    let again = block(&mut bob, "carol").await;
    assert_eq!(again, first, "a repeated block answers the first block");
    // Only the two new blocks were announced.
    told(&mut bob, "block", "carol").await;
    told(&mut bob, "block", "alice").await;

    let reply = bob.request("blocks", json!({ "future": 1 })).await;
    assert_eq!(
        reply["blocks"][0]["user"],
        json!({ "id": "alice", "name": "Alice Liddell" })
    );
    assert_eq!(
        reply["blocks"][1]["user"],
        json!({ "id": "carol", "name": "carol" })
    );
    assert_eq!(reply["blocks"][1]["blockedAt"], first["blockedAt"]);
    assert_eq!(reply["blocks"].as_array().unwrap().len(), 2);

    // Without an ack, `blocks` answers with a `blocks` event; block and unblock answer
    // nothing but the announcement of the change.
    bob.emit("blocks", Value::Null).await;
    assert_eq!(bob.recv_event("blocks").await, reply);
    bob.emit("unblock", json!({ "userId": "carol" })).await;
    told(&mut bob, "unblock", "carol").await;
    bob.expect_silence(QUIET).await;
    assert_eq!(blocked_ids(&mut bob).await, ["alice"]);
    let twice = unblock(&mut bob, "carol").await;
    assert_eq!(twice, json!({ "ok": true, "userId": "carol" }));
    // Unblocking someone never blocked is fine too; neither announces anything.
    assert_eq!(unblock(&mut bob, "zed").await["ok"], true);
    bob.expect_silence(QUIET).await;
    assert_eq!(blocked_ids(&mut bob).await, ["alice"]);
    // A block is the blocker's alone.
    let mut carol = server.connect("carol").await;
    assert!(blocked_ids(&mut carol).await.is_empty());
}

#[tokio::test]
async fn bad_block_requests_are_refused_and_change_nothing() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let bad: [(&str, Value); 12] = [
        ("block", json!({})),
        ("block", Value::Null),
        ("block", json!({ "userId": null })),
        ("block", json!({ "userId": 7 })),
        ("block", json!({ "userId": ["bob"] })),
        ("block", json!(["bob"])),
        ("block", json!("bob")),
        ("block", json!({ "userId": "alice" })),
        ("block", json!({ "userId": "" })),
        ("block", json!({ "userId": "bob smith" })),
        ("unblock", json!({ "userId": "alice" })),
        ("unblock", json!({ "user": "bob" })),
    ];
    for (event, data) in &bad {
        let reply = alice.request(event, data.clone()).await;
        assert_eq!(reply["ok"], false, "{event} {data}: {reply}");
        assert_eq!(
            reply["error"]["code"], "bad_request",
            "{event} {data}: {reply}"
        );
    }
    let reply = alice.request("blocks", json!([1])).await;
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
    alice.emit("block", json!({ "userId": 5 })).await;
    let error = alice.recv_event("error").await;
    assert_eq!(
        (&error["code"], &error["event"]),
        (&json!("bad_request"), &json!("block"))
    );

    assert!(blocked_ids(&mut alice).await.is_empty());
    assert_eq!(
        alice.send_message("alice-bob", "still talking").await["ok"],
        true
    );
    assert_eq!(bob.recv_event("message:sent").await["messages"][0]["id"], 1);
}

#[tokio::test]
async fn the_block_list_is_bounded() {
    let server = Server::start_with(&[("CHAT_LIMITS_MAX_BLOCKS_PER_USER", "2")]);
    let mut alice = server.connect("alice").await;
    for user in ["b1", "b2"] {
        assert_eq!(block(&mut alice, user).await["ok"], true);
    }
    let refused = block(&mut alice, "b3").await;
    assert_eq!(refused["error"]["code"], "too_many_blocks", "{refused}");
    // Repeating a block that exists is still fine at the bound.
    assert_eq!(block(&mut alice, "b2").await["ok"], true);
    assert_eq!(blocked_ids(&mut alice).await, ["b1", "b2"]);
    assert_eq!(unblock(&mut alice, "b1").await["ok"], true);
    assert_eq!(block(&mut alice, "b3").await["ok"], true);
    assert_eq!(blocked_ids(&mut alice).await, ["b2", "b3"]);
}

#[tokio::test]
async fn an_acknowledged_block_survives_kill_9() {
    let mut server = Server::start();
    {
        let mut bob = server.connect("bob").await;
        assert_eq!(block(&mut bob, "alice").await["ok"], true);
        assert_eq!(block(&mut bob, "carol").await["ok"], true);
        assert_eq!(unblock(&mut bob, "carol").await["ok"], true);
    }
    server.kill9();
    server.restart();
    let mut alice = server.connect("alice").await;
    assert_blocked(&alice.send_message("alice-bob", "after the crash").await);
    let mut bob = server.connect("bob").await;
    assert_eq!(blocked_ids(&mut bob).await, ["alice"]);
    let mut carol = server.connect("carol").await;
    assert_eq!(
        carol.send_message("bob-carol", "unblocked").await["ok"],
        true
    );
}

#[tokio::test]
async fn blocks_over_http() {
    let server = Server::start();
    let bob = server.token("bob");
    let mut bob_socket = server.connect("bob").await;
    let (status, body) = http_call(server.addr, "PUT", "/api/blocks/alice", Some(&bob)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["ok"], &body["userId"]),
        (&json!(true), &json!("alice"))
    );
    told(&mut bob_socket, "block", "alice").await;
    let (status, again) = http_call(server.addr, "PUT", "/api/blocks/alice", Some(&bob)).await;
    assert_eq!((status, &again), (200, &body));

    let (status, list) = server.get("/api/blocks", Some(&bob)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["blocks"][0]["user"]["id"], "alice");
    assert_eq!(list["blocks"][0]["blockedAt"], body["blockedAt"]);

    let mut alice = server.connect("alice").await;
    assert_blocked(&alice.send_message("alice-bob", "hi").await);

    // Bad input: the status of its code, and nothing changes.
    for (method, path, token, status, code) in [
        (
            "PUT",
            "/api/blocks/bob",
            Some(bob.as_str()),
            400,
            "bad_request",
        ),
        ("PUT", "/api/blocks/a%20b", Some(&bob), 400, "bad_request"),
        ("PUT", "/api/blocks/%zz", Some(&bob), 400, "bad_request"),
        ("DELETE", "/api/blocks/alice", None, 401, "unauthorized"),
        (
            "PUT",
            "/api/blocks/carol",
            Some("not-a-token"),
            401,
            "unauthorized",
        ),
        ("POST", "/api/blocks/carol", Some(&bob), 404, "not_found"),
    ] {
        let (got, body) = http_call(server.addr, method, path, token).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
    }
    let (_, unchanged) = server.get("/api/blocks", Some(&bob)).await;
    assert_eq!(unchanged, list);

    let (status, body) = http_call(server.addr, "DELETE", "/api/blocks/alice", Some(&bob)).await;
    assert_eq!(
        (status, body),
        (200, json!({ "ok": true, "userId": "alice" }))
    );
    told(&mut bob_socket, "unblock", "alice").await;
    bob_socket.expect_silence(QUIET).await;
    let (_, empty) = server.get("/api/blocks", Some(&bob)).await;
    assert_eq!(empty, json!({ "ok": true, "blocks": [] }));
    assert_eq!(
        alice.send_message("alice-bob", "hi again").await["ok"],
        true
    );
}
