//! `block` and `unblock` events that NATS lost are said again (issue 17): real server
//! binaries on one throwaway PostgreSQL. Nodes `a` and `b` share a nats-server; node `s`
//! ("silent") has a nats-server of its own, so what it commits never reaches `a` or `b`:
//! a lost NATS message for them, whatever the NATS client would have buffered.

mod common;

use std::time::{Duration, Instant};

use common::metrics::{scrape, value};
use common::nats::NatsServer;
use common::postgres::TestPostgres;
use common::{Client, Server, WAIT};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

fn node(pg: &TestPostgres, nats: &NatsServer) -> Server {
    Server::start_with(&[
        ("CHAT_CLUSTER_POSTGRES_URL", &pg.url()),
        ("CHAT_CLUSTER_NATS_URL", &nats.url()),
    ])
}

/// Gives the subscriptions of the clients just connected time to reach their NATS server
/// (as `tests/cluster_nodes.rs` does).
async fn let_subscriptions_settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// `block` (or `unblock`) from `client`, acknowledged, and its announcement to the same
/// tab, which its own node delivers.
async fn change(client: &mut Client, event: &str, user: &str) -> Value {
    let ack = client.request(event, json!({ "userId": user })).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(client.recv_event(event).await["userId"], user);
    ack
}

/// The next event, which must be `event` about `user`.
async fn told(client: &mut Client, event: &str, user: &str) -> Value {
    let data = client.recv_event(event).await;
    assert_eq!(data["userId"], user, "{data}");
    data
}

async fn repairs(node: &Server, kind: &str) -> f64 {
    let series = format!("chat_cluster_repairs_total{{kind=\"{kind}\"}}");
    value(&scrape(node).await, &series)
}

#[tokio::test]
async fn a_block_and_an_unblock_made_while_nats_is_down_reach_the_blockers_tab_on_another_node() {
    let pg = TestPostgres::start();
    let mut nats = NatsServer::start();
    let quiet_nats = NatsServer::start();
    let b = node(&pg, &nats);
    let s = node(&pg, &quiet_nats);
    let mut bob_b = b.connect("bob").await;
    let mut bob_s = s.connect("bob").await;
    let_subscriptions_settle().await;

    // Committed while node b's NATS is down, and never published where b listens: only
    // catching up after the reconnect finds it. Node b knows no block change of bob yet:
    // it reads those made since he came.
    nats.kill();
    let ack = change(&mut bob_s, "block", "mallory").await;
    nats.resume();
    let blocked = told(&mut bob_b, "block", "mallory").await;
    assert_eq!(blocked["blockedAt"], ack["blockedAt"]);
    bob_b.expect_silence(QUIET).await;

    // The same for an unblock, now past the change node b knows.
    nats.kill();
    change(&mut bob_s, "unblock", "mallory").await;
    nats.resume();
    told(&mut bob_b, "unblock", "mallory").await;
    bob_b.expect_silence(QUIET).await;
    assert_eq!(repairs(&b, "recovered_block").await, 2.0);
    assert!(repairs(&b, "catch_up").await >= 2.0);
    let (status, list) = b.get("/api/blocks", Some(&b.token("bob"))).await;
    assert_eq!((status, &list["blocks"]), (200, &json!([])), "{list}");
}

#[tokio::test]
async fn a_lost_block_change_is_delivered_before_the_next_and_a_repeated_one_is_dropped() {
    let pg = TestPostgres::start();
    let nats = NatsServer::start();
    let quiet_nats = NatsServer::start();
    let a = node(&pg, &nats);
    let b = node(&pg, &nats);
    let s = node(&pg, &quiet_nats);
    let mut bob_a = a.connect("bob").await;
    let mut bob_b = b.connect("bob").await;
    let mut bob_s = s.connect("bob").await;
    let_subscriptions_settle().await;

    // Change 1 crosses over NATS.
    change(&mut bob_a, "block", "eve").await;
    told(&mut bob_b, "block", "eve").await;
    // Change 2 is lost for a and b; change 3 shows them the gap: change 2 first, from
    // the store, then change 3. Node b had it from NATS, node a committed it.
    // (Node s never heard of change 1: knowing no change of bob's, it reads those made
    // since he came before delivering his first.)
    change_with_gap(&mut bob_s, "block", "carol", ("block", "eve")).await;
    bob_b.expect_silence(QUIET).await;
    change_with_gap(&mut bob_a, "block", "dave", ("block", "carol")).await;
    told(&mut bob_b, "block", "carol").await;
    told(&mut bob_b, "block", "dave").await;
    bob_b.expect_silence(QUIET).await;
    assert_eq!(repairs(&b, "block_gap").await, 1.0);
    assert_eq!(repairs(&b, "recovered_block").await, 1.0);
    assert_eq!(repairs(&a, "block_gap").await, 1.0);

    // A lost unblock is said as an unblock: the pair's row says the block was lifted.
    change_with_gap(&mut bob_s, "unblock", "eve", ("block", "dave")).await;
    change_with_gap(&mut bob_a, "block", "frank", ("unblock", "eve")).await;
    told(&mut bob_b, "unblock", "eve").await;
    told(&mut bob_b, "block", "frank").await;
    bob_b.expect_silence(QUIET).await;
    assert_eq!(repairs(&b, "recovered_block").await, 2.0);

    // A block notice that NATS carries twice reaches the tab once.
    let tap = async_nats::connect(nats.url()).await.unwrap();
    let bob_subject = chat_server::fanout::nats::subject("bob");
    let mut tapped = tap.subscribe(bob_subject.clone()).await.unwrap();
    tap.flush().await.unwrap();
    change(&mut bob_a, "unblock", "dave").await;
    told(&mut bob_b, "unblock", "dave").await;
    let published = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut tapped))
        .await
        .unwrap()
        .unwrap();
    let duplicates = repairs(&b, "duplicate_block").await;
    tap.publish(bob_subject, published.payload).await.unwrap();
    tap.flush().await.unwrap();
    bob_b.expect_silence(QUIET).await;
    let deadline = Instant::now() + WAIT;
    while repairs(&b, "duplicate_block").await < duplicates + 1.0 {
        assert!(Instant::now() < deadline, "the duplicate was never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, list) = b.get("/api/blocks", Some(&b.token("bob"))).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["user"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["carol", "frank"]);
}

/// A change made on the tab's own node after one it missed: the ack, then the missed
/// change's event, then this change's.
async fn change_with_gap(client: &mut Client, event: &str, user: &str, missed: (&str, &str)) {
    let ack = client.request(event, json!({ "userId": user })).await;
    assert_eq!(ack["ok"], true, "{ack}");
    told(client, missed.0, missed.1).await;
    told(client, event, user).await;
}
