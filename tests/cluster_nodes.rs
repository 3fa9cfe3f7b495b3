//! Cluster mode end to end: real server binaries on one throwaway PostgreSQL
//! (`common::postgres`) fanning events out over one throwaway nats-server
//! (`common::nats`), with clients connected to different nodes.

mod common;

use std::time::Duration;

use common::nats::NatsServer;
use common::postgres::TestPostgres;
use common::{ids, Client, Server};
use serde_json::json;

fn node(pg: &TestPostgres, nats: &NatsServer) -> Server {
    Server::start_with(&[
        ("CHAT_CLUSTER_POSTGRES_URL", &pg.url()),
        ("CHAT_CLUSTER_NATS_URL", &nats.url()),
    ])
}

/// A node subscribes to a user's NATS subject once their first connection is admitted;
/// give the subscriptions of the clients just connected time to reach the NATS server,
/// so the first publish is not the one core NATS drops (that case has its own tests in
/// `tests/cluster.rs`).
async fn let_subscriptions_settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Sends, drains the sender's own `message:sent`, and returns the new message's id.
async fn send(from: &mut Client, room: &str, text: &str) -> u64 {
    let ack = from.send_message(room, text).await;
    assert_eq!(ack["ok"], true, "{ack}");
    from.recv_event("message:sent").await;
    ack["message"]["id"].as_u64().expect("message id")
}

#[tokio::test]
async fn users_on_different_nodes_chat_and_a_user_with_tabs_on_both_gets_everything() {
    let pg = TestPostgres::start();
    let nats = NatsServer::start();
    let a = node(&pg, &nats);
    let b = node(&pg, &nats);

    let mut alice = a.connect("alice").await;
    let mut bob_on_b = b.connect("bob").await;
    let mut bob_on_a = a.connect("bob").await;
    let_subscriptions_settle().await;

    // alice (node A) to bob: both of bob's tabs get it, the one on node B over NATS.
    assert_eq!(send(&mut alice, "alice-bob", "hi from A").await, 1);
    for tab in [&mut bob_on_b, &mut bob_on_a] {
        let sent = tab.recv_event("message:sent").await;
        assert_eq!(sent["user"]["id"], "alice", "{sent}");
        assert_eq!(ids(&sent["messages"]), vec![1], "{sent}");
        assert_eq!(sent["messages"][0]["message"], "hi from A");
    }

    // bob answers from node B: alice on node A gets it with the room's history, and
    // bob's tab on node A gets his own echo.
    assert_eq!(send(&mut bob_on_b, "alice-bob", "hello from B").await, 2);
    let sent = alice.recv_event("message:sent").await;
    assert_eq!(sent["user"]["id"], "bob", "{sent}");
    assert_eq!(ids(&sent["messages"]), vec![2, 1], "{sent}");
    let echo = bob_on_a.recv_event("message:sent").await;
    assert_eq!(ids(&echo["messages"]), vec![2, 1], "{echo}");

    // A read on node A reaches the sender on node B: a read implies received, so
    // message:delivered comes first, then message:seen.
    let reply = alice
        .request(
            "message:read",
            json!([{ "userId": "alice", "roomId": "alice-bob", "messageId": 2,
                     "seenDate": "2026-11-30T12:00:00.000Z" }]),
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let delivered = bob_on_b.recv_event("message:delivered").await;
    assert_eq!(delivered[0]["messageId"], 2, "{delivered}");
    let seen = bob_on_b.recv_event("message:seen").await;
    assert_eq!(seen[0]["messageId"], 2, "{seen}");
    assert_eq!(seen[0]["userId"], "alice", "{seen}");

    // Both nodes read the same history from PostgreSQL.
    for client in [&mut alice, &mut bob_on_b] {
        let reply = client
            .request("messages", json!({ "roomId": "alice-bob", "limit": 50 }))
            .await;
        assert_eq!(ids(&reply["room"]["messages"]), vec![2, 1], "{reply}");
        assert!(
            reply["room"]["messages"][0]["seenAt"].is_string(),
            "{reply}"
        );
    }
}

#[tokio::test]
async fn a_node_killed_mid_conversation_loses_nothing_and_its_users_catch_up_on_another() {
    let pg = TestPostgres::start();
    let nats = NatsServer::start();
    let mut a = node(&pg, &nats);
    let b = node(&pg, &nats);

    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    let_subscriptions_settle().await;

    for n in 1..=20u64 {
        assert_eq!(send(&mut alice, "alice-bob", &format!("m{n}")).await, n);
    }
    a.kill9();

    // alice reconnects to node B and goes on; bob, who never left, gets every message
    // exactly once and in order, the ones committed by the dead node included.
    let mut alice = b.connect("alice").await;
    let_subscriptions_settle().await;
    for n in 21..=30u64 {
        assert_eq!(send(&mut alice, "alice-bob", &format!("m{n}")).await, n);
    }
    let mut got = Vec::new();
    while got.len() < 30 {
        let sent = bob.recv_event("message:sent").await;
        got.push(sent["messages"][0]["id"].as_u64().expect("id"));
    }
    assert_eq!(got, (1..=30).collect::<Vec<_>>());
    bob.expect_silence(Duration::from_millis(300)).await;

    // Catch-up after the reconnect: alice asks for what follows her last known id.
    let reply = alice
        .request(
            "messages",
            json!({ "roomId": "alice-bob", "after": 10, "limit": 50 }),
        )
        .await;
    let after = ids(&reply["room"]["messages"]);
    let mut sorted = after.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (11..=30).collect::<Vec<_>>(), "{reply}");
}
