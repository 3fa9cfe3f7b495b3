//! Crash trials: `kill -9` the real server at a random moment under a concurrent,
//! pipelined send load, restart it on the same data dir, and check PROTOCOL.md section 7:
//! every acknowledged message is stored with the same id and content, ids are 1..=n per
//! room, no `clientMessageId` is stored twice, the store opens and `/healthz` answers; then
//! resending every unacknowledged message (same `clientMessageId`) stores each exactly once.
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
