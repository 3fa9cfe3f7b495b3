//! Crash trials: `kill -9` the real server at a random moment under a concurrent,
//! pipelined send load, restart it on the same data dir, and check PROTOCOL.md section 7:
//! every acknowledged message is stored with the same id and content, ids are 1..=n per
//! room, no `clientMessageId` is stored twice, the store opens and `/healthz` answers; then
//! resending every unacknowledged message (same `clientMessageId`) stores each exactly once.
//!
//! A second test does the same to the message lifecycle: pipelined edits and delivered
//! marks, killed at a random moment; every acknowledged one must be stored.
//!
//! `CRASH_TRIALS` sets the number of trials (default 3, a few seconds); the data dir is
//! kept across trials, so later trials reopen a store that has been crashed many times.
//! `CRASH_SEED` replays a run's kill moments. The long run:
//!
//! ```sh
//! CRASH_TRIALS=50 cargo test --release --test crash_trials -- --nocapture
//! ```

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::load::{self, Load, UNTHROTTLED};
use common::{wait_healthy, Server};
use rand::{Rng, SeedableRng};

/// Users sending at once; each writes to two rooms, and each room has two senders.
const USERS: usize = 6;
/// Unacknowledged messages each user keeps in flight.
const WINDOW: usize = 16;
/// A bound on each user's sends per trial, should the kill come late.
const CAP_PER_USER: usize = 20_000;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_at_random_moments() {
    let trials = env_number("CRASH_TRIALS", 3);
    let seed = env_number(
        "CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    println!("crash trials: {trials} trials, CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let users = load::users(USERS);
    let mut server = Server::start_with(UNTHROTTLED);
    // Everything ever acknowledged, across trials: it must all still be there each time.
    let mut ledger: HashMap<String, serde_json::Value> = HashMap::new();
    let mut restart_times = Vec::new();
    let mut acked_total = 0;

    for trial in 0..trials {
        let load = Load::start(&server, &users, &format!("t{trial}"), WINDOW, CAP_PER_USER).await;
        let kill_after = Duration::from_millis(rng.random_range(50..700));
        tokio::time::sleep(kill_after).await;
        server.kill9();
        let outcome = load.finish().await;

        let restarting = Instant::now();
        server.restart();
        let restart =
            restarting.elapsed() + wait_healthy(server.addr, Duration::from_secs(30)).await;
        restart_times.push(restart);

        acked_total += outcome.acked.len();
        ledger.extend(outcome.acked.clone());
        let audit = load::audit(&server, &users, &ledger).await;
        assert!(
            audit.problems.is_empty(),
            "trial {trial} (CRASH_SEED={seed}) after kill -9: {} problems, first: {:#?}",
            audit.problems.len(),
            &audit.problems[..audit.problems.len().min(10)]
        );
        let stored_unacked = load::stored_unacked(&outcome, &audit);

        let unacked = outcome.unacked();
        let (resent, problems) = load::resend(&server, &unacked, &audit.stored).await;
        assert!(problems.is_empty(), "trial {trial}: resend: {problems:#?}");
        ledger.extend(resent);
        let after = load::audit(&server, &users, &ledger).await;
        assert!(
            after.problems.is_empty(),
            "trial {trial} (CRASH_SEED={seed}) after resending: {:#?}",
            &after.problems[..after.problems.len().min(10)]
        );
        for sent in &outcome.sent {
            assert!(
                after.stored.contains_key(&sent.client_message_id),
                "trial {trial}: {} sent and resent but not stored",
                sent.client_message_id
            );
        }

        println!(
            "trial {trial:>3}: killed after {:>3} ms, sent {:>5}, acked {:>5}, stored {:>5} \
             ({} of them unacked), resent {:>3}, store now {:>6}, restart to /healthz {:>4} ms",
            kill_after.as_millis(),
            outcome.sent.len(),
            outcome.acked.len(),
            outcome.acked.len() + stored_unacked,
            stored_unacked,
            unacked.len(),
            after.stored.len(),
            restart.as_millis(),
        );
    }

    restart_times.sort();
    let median = restart_times[restart_times.len() / 2];
    println!(
        "crash trials done: {trials} trials, {acked_total} messages acknowledged under load, \
         {} stored after resends, 0 losses, median restart to /healthz {} ms (max {} ms)",
        ledger.len(),
        median.as_millis(),
        restart_times.last().unwrap().as_millis()
    );
}

/// The lifecycle under a crash: pipelined edits of many messages and delivered marks,
/// `kill -9` at a random moment. Every acknowledged edit is stored (or a later edit of the
/// same message, which may have committed without its ack getting out), and every
/// acknowledged delivered mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_edits_and_marks_survive_kill_9_at_random_moments() {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{json, Value};
    use tokio_tungstenite::tungstenite::Message;

    const MESSAGES: u64 = 40;
    const ROUNDS: u64 = 50;
    let trials = env_number("CRASH_TRIALS", 3);
    let seed = env_number(
        "CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    println!("lifecycle crash trials: {trials} trials, CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut server = Server::start_with(UNTHROTTLED);
    for trial in 0..trials {
        let room = format!("alice-bob{trial}");
        let partner = format!("bob{trial}");
        let mut alice = server.connect("alice").await;
        let mut bob = server.connect(&partner).await;
        for i in 1..=MESSAGES {
            alice.send_message(&room, &format!("m{i}")).await;
        }
        // Bob's marks (ack id) walk the room, pipelined ahead of the edits; edit k of
        // message id (ack k * 1000 + id) sets the text "v{k}".
        for id in 1..=MESSAGES {
            let data = json!([{ "roomId": room, "messageId": id }]);
            let frame = json!({ "event": "message:received", "data": data, "ack": id });
            bob.ws.feed(Message::text(frame.to_string())).await.unwrap();
        }
        bob.ws.flush().await.unwrap();
        for k in 1..=ROUNDS {
            for id in 1..=MESSAGES {
                let data = json!({ "roomId": room, "messageId": id, "message": format!("v{k}") });
                let frame = json!({ "event": "message:edit", "data": data, "ack": k * 1000 + id });
                alice
                    .ws
                    .feed(Message::text(frame.to_string()))
                    .await
                    .unwrap();
            }
        }
        alice.ws.flush().await.unwrap();
        let kill_after = Duration::from_millis(rng.random_range(5..400));
        let acks = |mut client: common::Client| async move {
            let mut acked = Vec::new();
            while let Ok(Some(Ok(Message::Text(text)))) =
                tokio::time::timeout(Duration::from_secs(5), client.ws.next()).await
            {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["event"] == "ack" {
                    assert_eq!(frame["data"]["ok"], true, "{frame}");
                    acked.push(frame["ack"].as_u64().unwrap());
                }
            }
            acked
        };
        let alice_acks = tokio::spawn(acks(alice));
        let bob_acks = tokio::spawn(acks(bob));
        tokio::time::sleep(kill_after).await;
        server.kill9();
        let (edits, marks) = (alice_acks.await.unwrap(), bob_acks.await.unwrap());
        server.restart();

        let mut alice = server.connect("alice").await;
        let stored = load::history(&mut alice, &room).await;
        let version = |m: &Value| {
            let text = m["message"].as_str().unwrap();
            text.strip_prefix('v')
                .map_or(0, |k| k.parse::<u64>().unwrap())
        };
        for ack in &edits {
            let (k, id) = (ack / 1000, ack % 1000);
            let m = &stored[(MESSAGES - id) as usize];
            assert!(
                version(m) >= k,
                "trial {trial} (CRASH_SEED={seed}): edit v{k} of {id} was acked, stored {m}"
            );
        }
        let highest_mark = marks.iter().max().copied().unwrap_or(0);
        for m in &stored {
            if m["id"].as_u64().unwrap() <= highest_mark {
                assert!(m["deliveredAt"].is_string(), "trial {trial}: {m}");
            }
        }
        println!(
            "lifecycle trial {trial}: killed after {} ms, {} edits and {} marks acked",
            kill_after.as_millis(),
            edits.len(),
            marks.len()
        );
    }
}
