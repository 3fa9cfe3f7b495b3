//! The harness's store switch (`CHAT_TEST_STORE`, issue 17): the same test files run on
//! the embedded store and, with `CHAT_TEST_STORE=postgres`, on cluster mode's PostgreSQL
//! store (with `nats`, as one node of a cluster that fans out over NATS). This checks the
//! switch itself: which store and fan-out a server really uses, that servers do not share
//! data, and that a restart finds the same data.

mod common;

use common::{cluster_mode, ids, nats_mode, Server};

/// Room `alice-bob`'s message ids as bob sees them over HTTP.
async fn history(server: &Server) -> Vec<u64> {
    let (status, body) = server
        .get("/api/rooms/alice-bob/messages", Some(&server.token("bob")))
        .await;
    assert_eq!(status, 200, "{body}");
    ids(&body["room"]["messages"])
}

#[tokio::test]
async fn each_server_stores_alone_in_the_chosen_store_and_a_restart_keeps_it() {
    let mut first = Server::start();
    let second = Server::start();
    let mut alice = first.connect("alice").await;
    alice.send_message("alice-bob", "one").await;
    alice.send_message("alice-bob", "two").await;

    // The embedded store writes its file in the data dir; cluster mode must not, or the
    // "postgres" run would silently be a second redb run.
    let redb_file = first.data_dir().join("chat.redb");
    assert_eq!(
        redb_file.exists(),
        !cluster_mode(),
        "{} exists: {}",
        redb_file.display(),
        redb_file.exists()
    );
    assert_eq!(first.postgres_url().is_some(), cluster_mode());
    // A fresh database per server: the other server has nothing.
    assert_eq!(history(&second).await, Vec::<u64>::new());

    drop(alice);
    first.kill9();
    first.restart();
    assert_eq!(history(&first).await, vec![2, 1]);
    let mut alice = first.connect("alice").await;
    let ack = alice.send_message("alice-bob", "three").await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(history(&first).await, vec![3, 2, 1]);
}

#[tokio::test]
async fn with_nats_the_server_fans_out_over_nats() {
    let server = Server::start();
    // The cluster fan-out's series exist from its start, and only with it.
    let samples = common::metrics::scrape(&server).await;
    assert_eq!(
        samples.contains_key("chat_cluster_reads_total"),
        nats_mode(),
        "{samples:?}"
    );
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let ack = alice.send_message("alice-bob", "hello").await;
    assert_eq!(ack["ok"], true, "{ack}");
    let sent = bob.recv_event("message:sent").await;
    assert_eq!(sent["messages"][0]["message"], "hello", "{sent}");
}
