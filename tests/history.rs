//! History paging and the inbox, over the socket and over HTTP, and who may see what.

mod common;

use std::collections::BTreeSet;

use common::{ids, Server};
use serde_json::{json, Value};

/// Pages backwards through a room over the socket; returns each page's ids.
async fn socket_pages(client: &mut common::Client, room: &str, limit: u64) -> Vec<Vec<u64>> {
    let mut pages = Vec::new();
    let mut before = Value::Null;
    loop {
        let reply = client
            .request(
                "messages",
                json!({ "roomId": room, "before": before, "limit": limit }),
            )
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        let page = ids(&reply["room"]["messages"]);
        if page.is_empty() {
            return pages;
        }
        before = json!(page.last().unwrap());
        pages.push(page);
    }
}

async fn http_pages(server: &Server, token: &str, room: &str) -> Vec<Vec<u64>> {
    let mut pages = Vec::new();
    let mut path = format!("/api/rooms/{room}/messages");
    loop {
        let (status, body) = server.get(&path, Some(token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["ok"], true);
        let page = ids(&body["room"]["messages"]);
        if page.is_empty() {
            return pages;
        }
        path = format!("/api/rooms/{room}/messages?before={}", page.last().unwrap());
        pages.push(page);
    }
}

async fn send_many(client: &mut common::Client, room: &str, n: usize) {
    for i in 0..n {
        client.send_message(room, &format!("m{i}")).await;
    }
}

#[tokio::test]
async fn one_hundred_twenty_messages_page_50_50_20_over_socket_and_http() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    send_many(&mut alice, "alice-bob", 120).await;
    let mut bob = server.connect("bob").await;

    let pages = socket_pages(&mut bob, "alice-bob", 50).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![50, 50, 20]
    );
    let all: Vec<u64> = pages.concat();
    assert_eq!(all, (1..=120).rev().collect::<Vec<_>>());

    let token = server.token("bob");
    assert_eq!(http_pages(&server, &token, "alice-bob").await, pages);

    // The reply shape: the room with the partner as user.
    let (_, body) = server
        .get(
            "/api/rooms/alice-bob/messages?limit=2&before=200",
            Some(&token),
        )
        .await;
    assert_eq!(body["room"]["roomId"], "alice-bob");
    assert_eq!(body["room"]["user"]["id"], "alice");
    assert_eq!(ids(&body["room"]["messages"]), vec![120, 119]);
}

#[tokio::test]
async fn paging_while_messages_arrive_walks_the_history_exactly_once() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    send_many(&mut alice, "alice-bob", 60).await;

    let mut seen = Vec::new();
    let mut before = Value::Null;
    loop {
        let reply = bob
            .request(
                "messages",
                json!({ "roomId": "alice-bob", "before": before, "limit": 7 }),
            )
            .await;
        let page = ids(&reply["room"]["messages"]);
        if page.is_empty() {
            break;
        }
        before = json!(page.last().unwrap());
        seen.extend(page);
        // New messages land between pages.
        alice.send_message("alice-bob", "interleaved").await;
    }
    assert_eq!(seen, (1..=60).rev().collect::<Vec<_>>());
}

#[tokio::test]
async fn inbox_is_ordered_by_activity_and_pages_with_a_stable_cursor() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let partners = ["u1", "u2", "u3", "u4", "u5", "u6", "u7"];
    for p in partners {
        alice.send_message(&format!("alice-{p}"), "hi").await;
        // Distinct activity times.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let first = alice.request("rooms", json!({ "limit": 3 })).await;
    let first_ids: Vec<&str> = first["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["roomId"].as_str().unwrap())
        .collect();
    assert_eq!(first_ids, ["alice-u7", "alice-u6", "alice-u5"]);
    let room = &first["rooms"][0];
    assert_eq!(room["user"], json!({ "id": "u7", "name": "u7" }));
    assert_eq!(room["lastMessage"]["message"], "hi");
    assert_eq!(room["unread"], 0);
    assert_eq!(room["updatedAt"], room["lastMessage"]["sentAt"]);

    // A room that gains a message while paging moves to the top; the others are neither
    // skipped nor repeated.
    let mut u2 = server.connect("u2").await;
    u2.send_message("alice-u2", "bump").await;
    let mut listed: Vec<String> = first_ids.iter().map(|s| s.to_string()).collect();
    let mut cursor = first["nextCursor"].clone();
    while !cursor.is_null() {
        let page = alice
            .request("rooms", json!({ "limit": 3, "cursor": cursor }))
            .await;
        assert_eq!(page["ok"], true, "{page}");
        for r in page["rooms"].as_array().unwrap() {
            listed.push(r["roomId"].as_str().unwrap().to_owned());
        }
        cursor = page["nextCursor"].clone();
    }
    assert_eq!(
        listed,
        ["alice-u7", "alice-u6", "alice-u5", "alice-u4", "alice-u3", "alice-u1"]
    );
    let top = alice.request("rooms", json!({ "limit": 1 })).await;
    assert_eq!(top["rooms"][0]["roomId"], "alice-u2");
    assert_eq!(top["rooms"][0]["unread"], 1);

    // The same over HTTP, and the reply event without ack.
    let token = server.token("alice");
    let (status, body) = server.get("/api/rooms?limit=100", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["rooms"].as_array().unwrap().len(), 7);
    assert_eq!(body["nextCursor"], Value::Null);
    let unique: BTreeSet<&str> = body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["roomId"].as_str().unwrap())
        .collect();
    assert_eq!(unique.len(), 7);
    alice.emit("rooms", json!({ "limit": 1 })).await;
    loop {
        let frame = alice.recv().await;
        if frame["event"] == "rooms" {
            assert_eq!(frame["data"]["rooms"][0]["roomId"], "alice-u2");
            break;
        }
        assert_eq!(frame["event"], "message:sent", "{frame}");
    }
}

#[tokio::test]
async fn outsiders_are_forbidden_everywhere() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    alice.send_message("alice-bob", "private").await;
    let mut eve = server.connect("eve").await;

    let events = [
        (
            "message",
            json!({ "userId": "eve", "roomId": "alice-bob", "message": "x" }),
        ),
        ("typing", json!({ "roomId": "alice-bob" })),
        ("messages", json!({ "roomId": "alice-bob" })),
        (
            "message:read",
            json!([{ "userId": "eve", "roomId": "alice-bob", "messageId": 1, "seenDate": "2026-01-01T00:00:00Z" }]),
        ),
    ];
    for (event, data) in events {
        let reply = eve.request(event, data).await;
        let code = if event == "message:read" {
            reply["rejected"][0]["code"].clone()
        } else {
            reply["error"]["code"].clone()
        };
        assert_eq!(code, "forbidden", "{event}: {reply}");
    }
    let rooms = eve.request("rooms", json!({})).await;
    assert_eq!(rooms["rooms"], json!([]));

    let token = server.token("eve");
    let (status, body) = server
        .get("/api/rooms/alice-bob/messages", Some(&token))
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");
    // Nothing changed for alice.
    let page = alice
        .request("messages", json!({ "roomId": "alice-bob" }))
        .await;
    assert_eq!(ids(&page["room"]["messages"]), vec![1]);
    assert_eq!(page["room"]["messages"][0]["seenAt"], Value::Null);
}

#[tokio::test]
async fn http_errors_have_their_status_and_never_500() {
    let server = Server::start();
    let token = server.token("alice");
    let cases: &[(&str, Option<&str>, u16, &str)] = &[
        ("/api/rooms", None, 401, "unauthorized"),
        (
            "/api/rooms/alice-bob/messages",
            Some("garbage"),
            401,
            "unauthorized",
        ),
        ("/api/rooms?limit=0", Some(&token), 400, "bad_request"),
        ("/api/rooms?limit=101", Some(&token), 400, "bad_request"),
        ("/api/rooms?limit=abc", Some(&token), 400, "bad_request"),
        ("/api/rooms?limit=-1", Some(&token), 400, "bad_request"),
        (
            "/api/rooms?cursor=nonsense",
            Some(&token),
            400,
            "bad_request",
        ),
        ("/api/rooms?cursor=%zz", Some(&token), 400, "bad_request"),
        (
            "/api/rooms/alice-bob/messages?limit=51",
            Some(&token),
            400,
            "bad_request",
        ),
        (
            "/api/rooms/alice-bob/messages?before=0",
            Some(&token),
            400,
            "bad_request",
        ),
        (
            "/api/rooms/alice-bob/messages?before=1.5",
            Some(&token),
            400,
            "bad_request",
        ),
        (
            "/api/rooms/bob-alice/messages",
            Some(&token),
            400,
            "invalid_room",
        ),
        // A parameter given twice is the query string's array: refused, not guessed at.
        (
            "/api/rooms?limit=5&limit=500",
            Some(&token),
            400,
            "bad_request",
        ),
        (
            "/api/rooms?cursor=a&cursor=b",
            Some(&token),
            400,
            "bad_request",
        ),
        (
            "/api/rooms/alice-bob/messages?before=2&before=1",
            Some(&token),
            400,
            "bad_request",
        ),
        ("/api/rooms/%zz/messages", Some(&token), 400, "invalid_room"),
        (
            "/api/rooms/alice%2Fbob/messages",
            Some(&token),
            400,
            "invalid_room",
        ),
        (
            "/api/rooms/bob-carol/messages",
            Some(&token),
            403,
            "forbidden",
        ),
        ("/api/nothing", Some(&token), 404, "not_found"),
    ];
    for (path, bearer, status, code) in cases {
        let (got, body) = server.get(path, *bearer).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (*status, Some(*code)),
            "{path}: {body}"
        );
        assert!(body["error"]["message"].is_string());
    }
    // Percent-encoded room ids decode.
    let (status, body) = server
        .get("/api/rooms/alice%2Dbob/messages", Some(&token))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room"]["messages"], json!([]));
}

#[tokio::test]
async fn request_errors_over_the_socket() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    for (event, data, code) in [
        ("rooms", json!({ "limit": 0 }), "bad_request"),
        ("rooms", json!({ "cursor": 5 }), "bad_request"),
        ("rooms", json!({ "cursor": "c1.x" }), "bad_request"),
        (
            "messages",
            json!({ "roomId": "alice-bob", "limit": "5" }),
            "bad_request",
        ),
        (
            "messages",
            json!({ "roomId": "alice-bob", "before": -1 }),
            "bad_request",
        ),
        ("messages", json!({ "limit": 5 }), "bad_request"),
        // Range errors are shape errors and come before room checks.
        (
            "messages",
            json!({ "roomId": "x-y", "limit": 0 }),
            "bad_request",
        ),
        ("messages", json!({ "roomId": "x-y" }), "forbidden"),
    ] {
        let reply = alice.request(event, data.clone()).await;
        assert_eq!(reply["error"]["code"], code, "{event} {data}: {reply}");
    }
    // Without ack a failing request gets an error event, never the reply event.
    alice
        .emit("messages", json!({ "roomId": "bob-alice" }))
        .await;
    let error = alice.recv_event("error").await;
    assert_eq!(
        (error["code"].as_str(), error["event"].as_str()),
        (Some("invalid_room"), Some("messages"))
    );
    alice.emit("rooms", Value::Null).await;
    let rooms = alice.recv_event("rooms").await;
    assert_eq!(
        rooms,
        json!({ "ok": true, "rooms": [], "nextCursor": null })
    );
}
