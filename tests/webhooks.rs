//! Webhooks (issue 15): the real server posting to a real HTTP receiver that runs in the
//! test process, on its own ephemeral loopback port (`common::receiver`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chat_server::protocol::time::parse_rfc3339_millis;
use chat_server::store::postgres::PgStore;
use chat_server::store::redb::RedbStore;
use chat_server::store::{DeadLetter, ReadStore};
use common::metrics::{scrape, value};
use common::receiver::{Mode, Received, Receiver};
use common::{http_request, unix_now, Server, WAIT};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::net::TcpListener;

const SECRET: &str = "receiver-secret";

/// The environment for one hook at `url`, retrying fast; `extra` adds or overrides.
fn hook_env<'a>(url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("CHAT_WEBHOOK_URL", url),
        ("CHAT_WEBHOOK_SECRET", SECRET),
        ("CHAT_WEBHOOK_INITIAL_BACKOFF_MS", "50"),
        ("CHAT_WEBHOOK_MAX_BACKOFF_SECS", "1"),
    ];
    env.extend_from_slice(extra);
    env
}

/// The receiver's side of the signature check, written from the README's description and
/// not from the server's code: HMAC-SHA256 over `"{timestamp}.{body}"`, lowercase hex.
fn signature_is_valid(received: &Received) -> bool {
    let Some(hex) = received.signature.strip_prefix("v1=") else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{}.{}", received.timestamp, received.body).as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == hex
}

/// Scrapes until `series` satisfies `done`.
async fn wait_metric(server: &Server, series: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let got = value(&scrape(server).await, series);
        if done(got) {
            return got;
        }
        assert!(Instant::now() < deadline, "{series} stuck at {got}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The message ids of `message.created` events, by recipient, in the order delivered.
fn delivered_ids_by_recipient(received: &[Received]) -> BTreeMap<String, Vec<u64>> {
    let mut by = BTreeMap::<String, Vec<u64>>::new();
    for r in received {
        let body = r.json();
        let recipient = body["data"]["recipient"]["id"].as_str().unwrap().to_owned();
        by.entry(recipient)
            .or_default()
            .push(body["data"]["message"]["id"].as_u64().unwrap());
    }
    by
}

#[tokio::test]
async fn the_signature_verifies_and_the_event_matches_the_stored_message() {
    let receiver = Receiver::start(Mode::Status(204)).await;
    let url = receiver.url();
    let server = Server::start_with(&hook_env(&url, &[]));
    let mut ann = server
        .connect_token("ann", &server.named_token("ann", "Ann"))
        .await;
    let ack = ann.send_message("ann-bob", "hello bob").await;
    assert_eq!(ack["ok"], true, "{ack}");

    let received = receiver.wait_until("one event", |r| !r.is_empty()).await;
    assert_eq!(received.len(), 1, "{received:#?}");
    let event = &received[0];
    assert!(signature_is_valid(event), "{event:#?}");
    let mut tampered = event.clone();
    tampered.body = tampered.body.replace("hello bob", "hello eve");
    assert!(!signature_is_valid(&tampered));
    let timestamp: u64 = event.timestamp.parse().unwrap();
    assert!(timestamp.abs_diff(unix_now()) < 60, "{timestamp}");

    let body = event.json();
    assert_eq!(body["id"], event.id.as_str());
    assert!(
        event.id.starts_with("evt_") && event.id.len() == 4 + 32,
        "{}",
        event.id
    );
    assert_eq!(body["type"], "message.created");
    // The stored message as the history shows it, byte for byte the wire's.
    let history = ann
        .request("messages", json!({ "roomId": "ann-bob" }))
        .await;
    let stored = &history["room"]["messages"][0];
    assert_eq!(body["data"]["message"], *stored);
    assert_eq!(body["data"]["message"], ack["message"]);
    assert_eq!(
        body["data"],
        json!({
            "room": "ann-bob",
            "message": stored,
            "sender": { "id": "ann", "name": "Ann" },
            "recipient": { "id": "bob", "name": "bob" },
            "recipientOnline": false,
        })
    );
    assert_eq!(body["createdAt"].as_str().unwrap().len(), 24, "{body}");

    wait_metric(&server, "chat_webhook_delivered_total", |v| v == 1.0).await;
    let samples = scrape(&server).await;
    assert_eq!(value(&samples, "chat_webhook_queued"), 0.0);
    assert_eq!(value(&samples, "chat_webhook_failed_total"), 0.0);
    assert_eq!(value(&samples, "chat_webhook_delivery_seconds_count"), 1.0);
}

#[tokio::test]
async fn offline_only_posts_only_for_recipients_without_a_connection() {
    let offline_only = Receiver::start(Mode::Status(200)).await;
    let every = Receiver::start(Mode::Status(200)).await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(
        &mut file,
        format!(
            "[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
             [[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\noffline_only = false\n\
             events = [\"message.created\", \"message.seen\"]\n",
            offline_only.url(),
            every.url()
        )
        .as_bytes(),
    )
    .unwrap();
    let server = Server::start_with(&[("CHAT_CONFIG", file.path().to_str().unwrap())]);
    let mut ann = server.connect("ann").await;
    let mut bob = server.connect("bob").await;
    let to_bob = ann.send_message("ann-bob", "bob is here").await;
    let to_cat = ann.send_message("ann-cat", "cat is not").await;
    // Bob reads: Ann is online, so only the hook that is not offline_only hears of it.
    let read = bob
        .request(
            "message:read",
            json!([{
                "userId": "bob",
                "roomId": "ann-bob",
                "messageId": to_bob["message"]["id"],
                "seenDate": "2030-01-01T00:00:00.000Z",
            }]),
        )
        .await;
    assert_eq!(read["seen"].as_array().unwrap().len(), 1, "{read}");

    let every_events = every.wait_until("three events", |r| r.len() == 3).await;
    // Every event the offline_only hook would get was written in the same commits as
    // those: once the outbox is empty, it has all it will ever get.
    wait_metric(&server, "chat_webhook_queued", |v| v == 0.0).await;
    let only = offline_only.received();
    assert_eq!(only.len(), 1, "{only:#?}");
    let body = only[0].json();
    assert_eq!(body["data"]["recipient"]["id"], "cat");
    assert_eq!(body["data"]["recipientOnline"], false);
    assert_eq!(body["data"]["message"], to_cat["message"]);

    let mut by_type = BTreeMap::<String, Vec<Value>>::new();
    for r in &every_events {
        assert!(signature_is_valid(r));
        let body = r.json();
        by_type
            .entry(body["type"].as_str().unwrap().to_owned())
            .or_default()
            .push(body["data"].clone());
    }
    let mut created = by_type["message.created"].clone();
    created.sort_by_key(|d| d["recipient"]["id"].as_str().unwrap().to_owned());
    assert_eq!(
        created
            .iter()
            .map(|d| (d["recipient"]["id"].clone(), d["recipientOnline"].clone()))
            .collect::<Vec<_>>(),
        [(json!("bob"), json!(true)), (json!("cat"), json!(false))]
    );
    let seen = &by_type["message.seen"];
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["reader"]["id"], "bob");
    assert_eq!(seen[0]["recipient"]["id"], "ann");
    assert_eq!(seen[0]["recipientOnline"], true);
    assert_eq!(seen[0]["message"]["id"], to_bob["message"]["id"]);
    assert_eq!(seen[0]["message"]["seenAt"], read["seen"][0]["seenAt"]);
    assert_eq!(
        value(&scrape(&server).await, "chat_webhook_delivered_total"),
        4.0
    );
}

#[tokio::test]
async fn a_receiver_down_then_up_gets_every_event_in_order_per_recipient() {
    // A port with nothing listening: the hook is down (connection refused).
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let url = format!("http://{addr}/hook");
    let server = Server::start_with(&hook_env(&url, &[]));
    let mut ann = server.connect("ann").await;
    let mut sent = BTreeMap::<String, Vec<u64>>::new();
    for i in 0..30 {
        let partner = ["bob", "cat", "dan"][i % 3];
        let ack = ann
            .send_message(&format!("ann-{partner}"), &format!("m{i}"))
            .await;
        sent.entry(partner.to_owned())
            .or_default()
            .push(ack["message"]["id"].as_u64().unwrap());
    }
    wait_metric(&server, "chat_webhook_retried_total", |v| v >= 3.0).await;
    assert_eq!(value(&scrape(&server).await, "chat_webhook_queued"), 30.0);

    let receiver = Receiver::start_on(TcpListener::bind(addr).await.unwrap(), Mode::Status(200));
    let received = receiver.wait_until("30 events", |r| r.len() >= 30).await;
    wait_metric(&server, "chat_webhook_queued", |v| v == 0.0).await;
    let received = if received.len() > 30 {
        receiver.received()
    } else {
        received
    };
    // Each recipient's events arrived in commit order, none missing, none twice.
    assert_eq!(delivered_ids_by_recipient(&received), sent);
    let ids: BTreeSet<&str> = received.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 30);
}

#[tokio::test]
async fn after_kill_9_every_pending_event_is_delivered_with_the_same_id() {
    let receiver = Receiver::start(Mode::Status(503)).await;
    let url = receiver.url();
    let mut server = Server::start_with(&hook_env(&url, &[]));
    let mut ann = server.connect("ann").await;
    let mut messages = BTreeSet::new();
    for i in 0..10 {
        let partner = ["bob", "cat"][i % 2];
        let ack = ann
            .send_message(&format!("ann-{partner}"), &format!("m{i}"))
            .await;
        messages.insert((partner.to_owned(), ack["message"]["id"].as_u64().unwrap()));
    }
    // Each recipient's first event has been tried and refused; all ten are pending.
    let tried = receiver
        .wait_until("both recipients tried", |r| {
            delivered_ids_by_recipient(r).len() == 2
        })
        .await;
    assert_eq!(value(&scrape(&server).await, "chat_webhook_queued"), 10.0);
    server.kill9();
    drop(ann);

    receiver.set_mode(Mode::Status(200));
    server.restart();
    // At least once: a request in flight at the kill may have been answered 200 to a dead
    // server, and comes again; what counts is that every event arrives.
    let unique = |received: &[Received]| -> BTreeSet<(String, u64)> {
        received
            .iter()
            .filter(|r| r.answered == Some(200))
            .map(|r| {
                let body = r.json();
                (
                    body["data"]["recipient"]["id"].as_str().unwrap().to_owned(),
                    body["data"]["message"]["id"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let received = receiver
        .wait_until("ten delivered", |r| unique(r).len() == 10)
        .await;
    assert_eq!(unique(&received), messages);
    let delivered: Vec<Received> = received
        .into_iter()
        .filter(|r| r.answered == Some(200))
        .collect();
    // The events tried before the crash came back with the ids they had then.
    let ids_after: BTreeSet<&str> = delivered.iter().map(|r| r.id.as_str()).collect();
    for before in &tried {
        assert!(ids_after.contains(before.id.as_str()), "{} lost", before.id);
    }
    for mut by_recipient in delivered_ids_by_recipient(&delivered).into_values() {
        by_recipient.dedup();
        assert!(
            by_recipient.windows(2).all(|w| w[0] < w[1]),
            "{by_recipient:?}"
        );
    }
    wait_metric(&server, "chat_webhook_queued", |v| v == 0.0).await;
}

#[tokio::test]
async fn a_410_disables_the_hook_and_dead_letters_its_event() {
    let receiver = Receiver::start(Mode::Status(410)).await;
    let url = receiver.url();
    let mut server = Server::start_with(&hook_env(&url, &[]));
    let mut ann = server.connect("ann").await;
    ann.send_message("ann-bob", "first").await;
    receiver.wait_until("one attempt", |r| r.len() == 1).await;
    wait_metric(&server, "chat_webhook_dead_lettered_total", |v| v == 1.0).await;

    // Disabled: the next message writes no event at all. The queued gauge counts an
    // event before its message is acknowledged, so it would show one here.
    let ack = ann.send_message("ann-bob", "second").await;
    assert_eq!(ack["ok"], true);
    let samples = scrape(&server).await;
    assert_eq!(value(&samples, "chat_webhook_queued"), 0.0);
    assert_eq!(value(&samples, "chat_webhook_dead_letters"), 1.0);
    assert_eq!(value(&samples, "chat_webhook_retried_total"), 0.0);
    assert_eq!(receiver.received().len(), 1);

    assert!(server.terminate());
    let dead = dead_letters(&server, &url).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert!(dead[0].reason.contains("410"), "{}", dead[0].reason);
    assert_eq!(dead[0].event.id, receiver.received()[0].id);
}

#[tokio::test]
async fn an_event_is_dead_lettered_after_the_give_up_time() {
    let receiver = Receiver::start(Mode::Status(500)).await;
    let url = receiver.url();
    let mut server =
        Server::start_with(&hook_env(&url, &[("CHAT_WEBHOOK_GIVE_UP_AFTER_SECS", "1")]));
    let mut ann = server.connect("ann").await;
    let ack = ann.send_message("ann-bob", "never delivered").await;
    wait_metric(&server, "chat_webhook_dead_lettered_total", |v| v == 1.0).await;
    let samples = scrape(&server).await;
    assert_eq!(value(&samples, "chat_webhook_queued"), 0.0);
    assert_eq!(value(&samples, "chat_webhook_dead_letters"), 1.0);
    assert_eq!(value(&samples, "chat_webhook_delivered_total"), 0.0);
    let attempts = receiver.received().len();
    assert!(attempts >= 2, "{attempts} attempts");
    assert_eq!(
        value(&samples, "chat_webhook_failed_total"),
        attempts as f64
    );
    assert_eq!(
        value(&samples, "chat_webhook_retried_total"),
        attempts as f64 - 1.0
    );

    assert!(server.terminate());
    let dead = dead_letters(&server, &url).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert!(dead[0].reason.contains("500"), "{}", dead[0].reason);
    let body: Value = serde_json::from_str(&dead[0].event.body).unwrap();
    assert_eq!(body["data"]["message"], ack["message"]);
    // After a restart the dead letter is still counted, and not posted again.
    server.restart();
    wait_metric(&server, "chat_webhook_dead_letters", |v| v == 1.0).await;
    assert_eq!(value(&scrape(&server).await, "chat_webhook_queued"), 0.0);
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_hold_up_sends() {
    let receiver = Receiver::start(Mode::Hang).await;
    let url = receiver.url();
    let server = Server::start_with(&hook_env(&url, &[("CHAT_WEBHOOK_TIMEOUT_SECS", "600")]));
    let mut ann = server.connect("ann").await;
    ann.send_message("ann-bob", "first").await;
    // The hook is now stuck on Bob's first event and will be for ten minutes.
    receiver
        .wait_until("a request in hand", |r| r.len() == 1)
        .await;
    for i in 0..50 {
        let partner = ["bob", "cat"][i % 2];
        let ack = ann
            .send_message(&format!("ann-{partner}"), &format!("m{i}"))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    // Every send was acknowledged while the receiver held Bob's first event (and Cat's)
    // without answering: nothing was delivered, everything waits in the outbox.
    let samples = scrape(&server).await;
    assert_eq!(value(&samples, "chat_webhook_queued"), 51.0);
    assert_eq!(value(&samples, "chat_webhook_delivered_total"), 0.0);
    assert!(receiver.received().iter().all(|r| r.answered.is_none()));
}

/// A hook's dead letters, read from the data directory of a stopped server.
/// The dead letters of a stopped server, read from the store it used: its redb file, or
/// in cluster mode its PostgreSQL database.
async fn dead_letters(server: &Server, url: &str) -> Vec<DeadLetter> {
    match server.postgres_url() {
        Some(db) => PgStore::open(db, 1)
            .unwrap()
            .webhook_dead_letters(url, None, 100)
            .await
            .unwrap(),
        None => RedbStore::open(server.data_dir())
            .unwrap()
            .webhook_dead_letters(url, None, 100)
            .await
            .unwrap(),
    }
}

/// An `https://` hook is posted over TLS: against a receiver that speaks plain HTTP the
/// handshake fails (no request ever reaches it), the failure is retried and finally dead-
/// lettered with the TLS error. (A full TLS round trip needs a certificate the Mozilla
/// roots trust, which a loopback test cannot have.)
#[tokio::test]
async fn an_https_hook_speaks_tls() {
    let receiver = Receiver::start(Mode::Status(200)).await;
    let url = format!("https://{}/hook", receiver.addr);
    let mut server =
        Server::start_with(&hook_env(&url, &[("CHAT_WEBHOOK_GIVE_UP_AFTER_SECS", "1")]));
    let mut ann = server.connect("ann").await;
    ann.send_message("ann-bob", "over TLS").await;
    wait_metric(&server, "chat_webhook_dead_lettered_total", |v| v == 1.0).await;
    assert!(receiver.received().is_empty());
    assert!(server.terminate());
    let dead = dead_letters(&server, &url).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let reason = dead[0].reason.to_ascii_lowercase();
    assert!(
        !reason.contains("answered") && !reason.contains("scheme"),
        "{reason}"
    );
    assert!(
        reason.contains("tls")
            || reason.contains("corrupt message")
            || reason.contains("handshake"),
        "{reason}"
    );
}

const ADMIN: &str = "admin-secret-for-webhook-tests";

#[tokio::test]
async fn a_dead_letter_is_listed_by_the_admin_api_and_delivered_once_retried() {
    let receiver = Receiver::start(Mode::Status(500)).await;
    let url = receiver.url();
    let server = Server::start_with(&hook_env(
        &url,
        &[
            ("CHAT_WEBHOOK_GIVE_UP_AFTER_SECS", "1"),
            ("CHAT_ADMIN_SECRET", ADMIN),
        ],
    ));
    let mut ann = server.connect("ann").await;
    let ack = ann.send_message("ann-bob", "late but delivered").await;
    wait_metric(&server, "chat_webhook_dead_lettered_total", |v| v == 1.0).await;

    let hook = url.replace(':', "%3A").replace('/', "%2F");
    let listing = format!("/admin/webhooks/dead-letters?hook={hook}");
    let (status, body) = http_request(server.addr, "GET", &listing, Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hook"], url.as_str());
    assert_eq!(body["more"], false);
    let dead = body["deadLetters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{body}");
    let first_attempt = &receiver.received()[0];
    assert_eq!(dead[0]["id"], first_attempt.id.as_str());
    assert_eq!(dead[0]["recipient"], "bob");
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("500"),
        "{body}"
    );
    assert_eq!(dead[0]["body"], first_attempt.json());
    assert_eq!(dead[0]["body"]["data"]["message"], ack["message"]);
    for field in ["createdAt", "deadAt"] {
        assert_eq!(dead[0][field].as_str().unwrap().len(), 24, "{body}");
    }
    assert!(dead[0]["seq"].as_u64().unwrap() > 0);

    // Bad input is refused and moves nothing.
    for (method, path, code) in [
        ("GET", "/admin/webhooks/dead-letters".to_owned(), 400),
        ("GET", format!("{listing}&limit=0"), 400),
        ("GET", format!("{listing}&limit=1001"), 400),
        ("POST", "/admin/webhooks/dead-letters/retry".to_owned(), 400),
        (
            "POST",
            "/admin/webhooks/dead-letters/retry?hook=http%3A%2F%2Fother.example%2F".to_owned(),
            404,
        ),
    ] {
        let (status, body) = http_request(server.addr, method, &path, Some(ADMIN)).await;
        assert_eq!(status, code, "{method} {path}: {body}");
    }
    assert_eq!(
        value(&scrape(&server).await, "chat_webhook_dead_letters"),
        1.0
    );

    // The receiver is fixed; the retry posts the same event, signed, and it is delivered.
    receiver.set_mode(Mode::Status(200));
    let retry = format!("/admin/webhooks/dead-letters/retry?hook={hook}");
    let (status, body) = http_request(server.addr, "POST", &retry, Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "hook": url, "retried": 1 }));
    let received = receiver
        .wait_until("the retried event", |r| {
            r.last().is_some_and(|r| r.answered == Some(200))
        })
        .await;
    let delivered = received.last().unwrap();
    assert_eq!(delivered.id, first_attempt.id);
    assert_eq!(delivered.body, first_attempt.body);
    assert!(signature_is_valid(delivered));
    wait_metric(&server, "chat_webhook_delivered_total", |v| v == 1.0).await;
    let samples = scrape(&server).await;
    assert_eq!(value(&samples, "chat_webhook_dead_letters"), 0.0);
    assert_eq!(value(&samples, "chat_webhook_queued"), 0.0);
    let (_, body) = http_request(server.addr, "GET", &listing, Some(ADMIN)).await;
    assert_eq!(body["deadLetters"], json!([]), "{body}");
}

#[tokio::test]
async fn erasing_a_user_posts_one_signed_user_erased_event_even_while_they_are_online() {
    let receiver = Receiver::start(Mode::Status(200)).await;
    let url = receiver.url();
    let server = Server::start_with(&hook_env(
        &url,
        &[
            ("CHAT_WEBHOOK_EVENTS", "user.erased"),
            ("CHAT_ADMIN_SECRET", ADMIN),
        ],
    ));
    let mut ann = server.connect("ann").await;
    // Not subscribed to message.created: this makes no event.
    ann.send_message("ann-bob", "hello").await;
    let _bob = server.connect("bob").await;
    let (status, report) =
        http_request(server.addr, "DELETE", "/admin/users/bob", Some(ADMIN)).await;
    assert_eq!(status, 200, "{report}");

    let received = receiver.wait_until("one event", |r| !r.is_empty()).await;
    assert_eq!(received.len(), 1, "{received:#?}");
    let event = &received[0];
    assert!(signature_is_valid(event), "{event:#?}");
    let body = event.json();
    assert_eq!(body["id"], event.id.as_str());
    assert_eq!(body["type"], "user.erased");
    assert_eq!(body["createdAt"].as_str().unwrap().len(), 24, "{body}");
    let erased_at = parse_rfc3339_millis(body["data"]["erasedAt"].as_str().unwrap()).unwrap();
    assert_eq!(erased_at, report["erasedAtMs"].as_i64().unwrap(), "{body}");
    assert_eq!(body["data"]["userId"], "bob");
    assert_eq!(body["data"].as_object().unwrap().len(), 2, "{body}");
    wait_metric(&server, "chat_webhook_delivered_total", |v| v == 1.0).await;
}

#[tokio::test]
async fn erase_user_offline_queues_user_erased_for_the_next_start() {
    if common::cluster_mode() {
        return; // Offline `erase-user` works on the embedded store's file only.
    }
    let receiver = Receiver::start(Mode::Status(200)).await;
    let url = receiver.url();
    let env = hook_env(&url, &[("CHAT_WEBHOOK_EVENTS", "user.erased")]);
    let mut server = Server::start_with(&env);
    server.kill9();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["erase-user", "bob", "--data"])
        .arg(server.data_dir())
        .env("CHAT_JWT_SECRET", common::SECRET)
        .env_remove("CHAT_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(receiver.received().is_empty());

    server.restart();
    let received = receiver.wait_until("one event", |r| !r.is_empty()).await;
    assert_eq!(received.len(), 1, "{received:#?}");
    assert!(signature_is_valid(&received[0]));
    let body = received[0].json();
    assert_eq!(body["type"], "user.erased");
    assert_eq!(body["data"]["userId"], "bob");
    assert_eq!(
        parse_rfc3339_millis(body["data"]["erasedAt"].as_str().unwrap()),
        report["erasedAtMs"].as_i64()
    );
}

#[tokio::test]
async fn delivered_events_leave_the_outbox_in_batches_not_one_write_each() {
    let receiver = Receiver::start(Mode::Status(503)).await;
    let url = receiver.url();
    let mut server = Server::start_with(&hook_env(&url, &[]));
    let mut ann = server.connect("ann").await;
    // A hundred recipients, so that a hundred events are posted at once once it is back.
    let events = 100;
    for i in 0..events {
        let ack = ann.send_message(&format!("ann-u{i:03}"), "hi").await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    wait_metric(&server, "chat_webhook_queued", |v| v == events as f64).await;
    server.kill9();
    drop(ann);

    receiver.set_mode(Mode::Status(200));
    server.restart();
    wait_metric(&server, "chat_webhook_delivered_total", |v| {
        v == events as f64
    })
    .await;
    let samples = scrape(&server).await;
    assert_eq!(value(&samples, "chat_webhook_queued"), 0.0);
    // The restarted server's only writes were taking the events out: in a few batches,
    // not one command (one PostgreSQL statement) per event.
    let writes = value(&samples, "chat_commit_batch_size_sum");
    assert!(
        writes > 0.0 && writes <= events as f64 / 4.0,
        "{writes} writes"
    );
    let unique: BTreeSet<String> = receiver
        .received()
        .into_iter()
        .filter(|r| r.answered == Some(200))
        .map(|r| r.id)
        .collect();
    assert_eq!(unique.len(), events);
}
