//! Nothing acknowledged is lost: kill -9, SIGTERM and restarts on the same data dir.

mod common;

use std::time::Duration;

use common::load::history;
use common::{ids, Server};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn acknowledged_messages_survive_kill_9() {
    let mut server = Server::start();
    let mut acked = Vec::new();
    {
        let mut alice = server.connect("alice").await;
        for i in 0..120 {
            let room = if i % 3 == 0 {
                "alice-carol"
            } else {
                "alice-bob"
            };
            let text = format!("message {i} ✓");
            alice.send_message(room, &text).await;
            let sent = alice.recv_event("message:sent").await;
            acked.push((room, sent["messages"][0].clone()));
        }
    }
    server.kill9();
    server.restart();

    let mut alice = server.connect("alice").await;
    for room in ["alice-bob", "alice-carol"] {
        let stored = history(&mut alice, room).await;
        let mut expected: Vec<Value> = acked
            .iter()
            .filter(|(r, _)| *r == room)
            .map(|(_, m)| m.clone())
            .collect();
        expected.reverse();
        assert_eq!(stored, expected, "room {room} after kill -9");
        let n = stored.len() as u64;
        assert_eq!(
            ids(&Value::Array(stored)),
            (1..=n).rev().collect::<Vec<_>>()
        );
    }
    // New messages continue the same id sequence.
    let ack = alice.send_message("alice-bob", "after restart").await;
    assert_eq!(ack["message"]["id"], 81);
}

#[tokio::test]
async fn idempotent_retry_survives_a_restart() {
    let mut server = Server::start();
    let payload = json!({"userId": "alice", "roomId": "alice-bob", "message": "once", "clientMessageId": "retry-me"});
    let first = {
        let mut alice = server.connect("alice").await;
        alice.request("message", payload.clone()).await
    };
    server.kill9();
    server.restart();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let retry = alice.request("message", payload).await;
    assert_eq!(retry["message"], first["message"]);
    let sent = alice.recv_event("message:sent").await;
    assert_eq!(ids(&sent["messages"]), vec![1]);
    bob.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(history(&mut alice, "alice-bob").await.len(), 1);
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_keeps_every_acknowledged_message() {
    let mut server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    // Pipeline a burst, then terminate while it is being written.
    for i in 0..300 {
        alice
            .ws
            .feed(Message::text(
                json!({"event": "message", "data": {"userId": "alice", "roomId": "alice-bob",
                    "message": format!("m{i}")}})
                .to_string(),
            ))
            .await
            .unwrap();
    }
    alice.ws.flush().await.unwrap();
    // Wait until some are acknowledged so the shutdown lands mid-load.
    let mut acked = Vec::new();
    for _ in 0..20 {
        acked.push(bob.recv_event("message:sent").await["messages"][0].clone());
    }
    assert!(server.terminate(), "clean exit on SIGTERM");

    // Bob reads what was delivered before the close, then the close code.
    loop {
        match bob.recv_raw().await {
            Some(Message::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                acked.push(frame["data"]["messages"][0].clone());
            }
            Some(Message::Close(frame)) => {
                assert_eq!(frame.expect("close frame").code, CloseCode::Away);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    server.restart();
    let mut alice = server.connect("alice").await;
    let stored = history(&mut alice, "alice-bob").await;
    for message in &acked {
        let id = message["id"].as_u64().unwrap();
        let found = stored
            .iter()
            .find(|m| m["id"] == id)
            .expect("acknowledged id stored");
        assert_eq!(found, message);
    }
    let n = stored.len() as u64;
    assert_eq!(
        ids(&Value::Array(stored)),
        (1..=n).rev().collect::<Vec<_>>()
    );
}

/// SIGTERM under the same concurrent load as the crash trials: a clean exit, no
/// acknowledged message lost, and the next start serves its first request at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_concurrent_load_loses_nothing_and_the_next_start_serves_at_once() {
    use common::load::{self, Load, UNTHROTTLED};
    use std::time::Instant;

    let mut server = Server::start_with(UNTHROTTLED);
    let users = load::users(4);
    let mut observer = server.connect(&users[1]).await;
    let load = Load::start(&server, &users, "term", 16, 20_000).await;
    // Terminate mid-load: once commits are flowing, whatever the machine's speed.
    for _ in 0..50 {
        observer.recv_event("message:sent").await;
    }
    let terminating = Instant::now();
    assert!(server.terminate(), "clean exit on SIGTERM under load");
    let shutdown = terminating.elapsed();
    let outcome = load.finish().await;
    assert!(
        !outcome.acked.is_empty(),
        "the load was acknowledged before SIGTERM"
    );

    // From spawning the process to the first successful authenticated API request.
    let restarting = Instant::now();
    server.restart();
    let room = load::rooms_of(&users, 0)[0].clone();
    let token = server.token(&users[0]);
    let (status, body) = server
        .get(&format!("/api/rooms/{room}/messages?limit=1"), Some(&token))
        .await;
    let first_request = restarting.elapsed();
    assert_eq!(status, 200, "{body}");
    println!(
        "SIGTERM under load: {} acked, exit took {} ms, restart to first API reply {} ms",
        outcome.acked.len(),
        shutdown.as_millis(),
        first_request.as_millis()
    );
    // Shutdown drains within its 10 s grace; the next start needs no recovery time.
    assert!(shutdown < Duration::from_secs(10), "exit took {shutdown:?}");
    assert!(
        first_request < Duration::from_secs(3),
        "restart took {first_request:?}"
    );

    let audit = load::audit(&server, &users, &outcome.acked).await;
    assert!(audit.problems.is_empty(), "{:#?}", audit.problems);
    let (resent, problems) = load::resend(&server, &outcome.unacked(), &audit.stored).await;
    assert!(problems.is_empty(), "{problems:#?}");
    let mut acked = outcome.acked.clone();
    acked.extend(resent);
    let after = load::audit(&server, &users, &acked).await;
    assert!(after.problems.is_empty(), "{:#?}", after.problems);
    assert_eq!(
        after.stored.len(),
        outcome.sent.len(),
        "each sent message stored once"
    );
}

#[tokio::test]
async fn acknowledged_edits_deletes_and_marks_survive_kill_9() {
    let mut server = Server::start();
    let before_kill = {
        let mut alice = server.connect("alice").await;
        let mut bob = server.connect("bob").await;
        for i in 1..=10 {
            alice.send_message("alice-bob", &format!("m{i}")).await;
        }
        let marks = bob
            .request(
                "message:received",
                json!([{ "roomId": "alice-bob", "messageId": 10 }]),
            )
            .await;
        assert_eq!(marks["rejected"], json!([]));
        let read = bob
            .request(
                "message:read",
                json!([{ "userId": "bob", "roomId": "alice-bob", "messageId": 4,
                         "seenDate": "2000-01-01T00:00:00Z" }]),
            )
            .await;
        assert_eq!(read["rejected"], json!([]));
        for id in 1..=5 {
            let reply = alice
                .request(
                    "message:edit",
                    json!({ "roomId": "alice-bob", "messageId": id, "message": format!("edited {id}") }),
                )
                .await;
            assert_eq!(reply["ok"], true, "{reply}");
        }
        for id in [6, 7] {
            let reply = alice
                .request(
                    "message:delete",
                    json!({ "roomId": "alice-bob", "messageId": id }),
                )
                .await;
            assert_eq!(reply["ok"], true, "{reply}");
        }
        history(&mut alice, "alice-bob").await
    };
    server.kill9();
    server.restart();

    let mut alice = server.connect("alice").await;
    let after = history(&mut alice, "alice-bob").await;
    assert_eq!(after, before_kill);
    let by_id = |id: u64| &after[10 - id as usize];
    assert_eq!(by_id(3)["message"], "edited 3");
    assert!(by_id(3)["editedAt"].is_string());
    assert_eq!(by_id(6)["deleted"], true);
    assert!(by_id(4)["seenAt"].is_string());
    assert!(after.iter().all(|m| m["deliveredAt"].is_string()));
    // The change log came back too: everything is listed once since the start.
    let changes = alice
        .request("changes", json!({ "roomId": "alice-bob" }))
        .await;
    assert_eq!(changes["room"]["messages"].as_array().unwrap().len(), 10);
    // New changes continue the counter rather than reuse a position.
    let position = changes["position"].clone();
    alice
        .request(
            "message:delete",
            json!({ "roomId": "alice-bob", "messageId": 1 }),
        )
        .await;
    let next = alice
        .request(
            "changes",
            json!({ "roomId": "alice-bob", "since": position }),
        )
        .await;
    assert_eq!(ids(&next["room"]["messages"]), [1]);
}
