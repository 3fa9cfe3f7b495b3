//! The harness's store switch (`CHAT_TEST_STORE`, issue 17): the same test files run on
//! the embedded store and, with `CHAT_TEST_STORE=postgres`, on cluster mode's PostgreSQL
//! store. This checks the switch itself: which store a server really uses, that servers
//! do not share data, and that a restart finds the same data.

mod common;

use common::{cluster_mode, ids, Server};

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
