//! A seconds-long, tiny-count run of every chat-bench scenario against the debug server,
//! so the harness behind BENCHMARKS.md cannot rot. It checks that the harness works
//! (non-zero counts, valid JSON), not how fast anything is.

use std::process::Command;

use serde_json::Value;

#[test]
fn every_bench_scenario_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(["--server", env!("CARGO_BIN_EXE_chat-server")])
        .args(["--runs", "1", "--users", "4", "--window", "2"])
        .args(["--warmup-secs", "0.2", "--duration-secs", "0.5"])
        .args([
            "--latency-users",
            "10",
            "--rate",
            "50",
            "--latency-secs",
            "0.5",
        ])
        // Two connections per generator process forces the multi-process idle path.
        .args(["--idle-counts", "2,5", "--conns-per-process", "2"])
        .args(["--idle-settle-secs", "0.3"])
        .args(["--restart-messages", "300", "--restart-small", "10"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run chat-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chat-bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for scenario in [
        "throughput:",
        "latency:",
        "latency floor (bare relay):",
        "idle:",
        "idle-socketio:",
        "restart:",
        "ceiling:",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(scenario)),
            "no {scenario} line in\n{stdout}"
        );
    }

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let s = &report["scenarios"];
    assert!(s["throughput"]["details"][0]["completed"].as_u64().unwrap() > 0);
    assert!(s["throughput"]["avg_frame_bytes"].as_f64().unwrap() > 100.0);
    assert!(s["ceiling"]["details"][0]["completed"].as_u64().unwrap() > 0);
    assert!(s["ceiling"]["server_to_ceiling_ratio"].as_f64().unwrap() > 0.0);
    let latency = &s["latency"]["details"][0];
    assert!(latency["delivered"].as_u64().unwrap() > 0);
    assert!(latency["p99_ms"].as_f64().unwrap() >= latency["p50_ms"].as_f64().unwrap());
    assert!(latency["avg_frame_bytes"].as_f64().unwrap() > 100.0);
    assert!(latency["steal_percent"].as_f64().unwrap() >= 0.0);
    assert!(
        s["latency"]["floor"]["details"][0]["delivered"]
            .as_u64()
            .unwrap()
            > 0
    );
    // The Socket.IO workers complete the CONNECT handshake or the scenario fails.
    for name in ["idle", "idle-socketio"] {
        let idle = &s[name]["details"][0];
        assert_eq!(idle["points"].as_array().unwrap().len(), 2, "{name}");
        assert_eq!(idle["points"][1]["connections"], 5, "{name}");
        assert_eq!(idle["generator_processes"], 3, "{name}");
        assert!(idle["rss_before"].as_u64().unwrap() > 0, "{name}");
        assert_eq!(s[name]["settle_secs"], 0.3, "{name}");
    }
    for store in ["10", "300"] {
        assert!(
            s["restart"][store]["to_healthy_secs"]["median"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        assert!(s["restart"][store]["rss_bytes"]["median"].as_f64().unwrap() > 0.0);
    }
    assert!(report["machine"]["cpus"].as_u64().unwrap() > 0);
}

/// Runs chat-bench against the debug server with `args`, returning its stdout and report.
fn bench(args: &[&str]) -> (String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(["--server", env!("CARGO_BIN_EXE_chat-server")])
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run chat-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "chat-bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    (stdout, report)
}

/// The soak with a 1 MiB outbound bound, on a store filled before the server starts:
/// memory is sampled, latency is windowed, and the stalled connections are cut. Few users
/// at a high rate, so each stalled connection gets enough traffic to fill the loopback
/// socket buffers (a few MiB) and then its queue within seconds.
#[test]
fn the_soak_samples_memory_and_cuts_stalled_connections() {
    let (stdout, report) = bench(&[
        "--scenarios",
        "soak",
        "--soak-secs",
        "10",
        "--soak-rate",
        "500",
        "--soak-users",
        "10",
        "--soak-stalled",
        "0.5",
        "--soak-window-secs",
        "2",
        "--soak-sample-secs",
        "0.5",
        "--soak-prefill",
        "2500",
        "--server-env",
        "CHAT_LIMITS_MAX_OUTBOUND_BYTES=1048576",
    ]);
    assert!(
        stdout.lines().any(|l| l.starts_with("soak: peak RSS")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("soak: filled a store of 2500 messages")),
        "{stdout}"
    );
    let soak = &report["scenarios"]["soak"];
    assert_eq!(soak["prefill_messages"], 2500);
    let rss = &soak["rss"];
    let samples = rss["samples"].as_array().unwrap();
    // 12.5 s paced (2.5 s warm-up + 10 s), a sample every 0.5 s.
    assert!(samples.len() >= 20, "{} RSS samples", samples.len());
    let peak = rss["peak_bytes"].as_u64().unwrap();
    assert!(peak >= rss["max_sampled_bytes"].as_u64().unwrap() && peak > 1 << 20);
    assert!(rss["slope_mib_per_min"].as_f64().unwrap().is_finite());
    assert!(rss["slope_stderr_mib_per_min"].as_f64().unwrap() >= 0.0);
    assert!(rss["under_ceiling"].as_bool().unwrap());
    let windows = soak["windows"].as_array().unwrap();
    assert!(
        (4..=5).contains(&windows.len()),
        "{} windows",
        windows.len()
    );
    for w in windows {
        assert!(w["delivered"].as_u64().unwrap() > 0);
        assert!(w["p99_ms"].as_f64().unwrap() >= w["p50_ms"].as_f64().unwrap());
    }
    assert!(soak["delivered"].as_u64().unwrap() > soak["offered"].as_u64().unwrap() / 2);
    let stalled = &soak["stalled"];
    assert_eq!(stalled["opened"], 5);
    let cut = ["closed_1008", "dropped_without_close"]
        .iter()
        .map(|k| stalled[k].as_u64().unwrap())
        .sum::<u64>();
    assert!(cut > 0, "no stalled connection was cut: {stalled}");
    assert_eq!(stalled["closed_other"], 0, "{stalled}");
    // The server cut at least those the client saw cut, and none of the readers.
    let server_cut = soak["slow_consumers_cut"].as_f64().unwrap();
    assert!(
        server_cut >= cut as f64 && server_cut <= 5.0,
        "{server_cut} cut"
    );
}

/// The history scenario fills a store, pages through cold rooms with each cache size and
/// checks every room was walked completely.
#[test]
fn history_pages_through_cold_rooms_per_cache_size() {
    let (stdout, report) = bench(&[
        "--scenarios",
        "history",
        "--runs",
        "1",
        "--history-messages",
        "3000",
        "--history-rooms",
        "2",
        "--history-cache-bytes",
        "default,1048576",
    ]);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("history: cache default")),
        "{stdout}"
    );
    let history = &report["scenarios"]["history"];
    assert_eq!(history["messages"], 3000);
    assert!(history["store_bytes"].as_u64().unwrap() > 3000 * 96);
    assert!(history["page_cache_dropped"].is_boolean());
    for size in ["default", "1048576"] {
        let figures = &history["cache_bytes"][size];
        let p50 = figures["p50_ms"]["median"].as_f64().unwrap();
        assert!(p50 > 0.0 && figures["p99_ms"]["median"].as_f64().unwrap() >= p50);
    }
}

/// `--webhook 500` points the latency run's server at a failing receiver in the bench,
/// which gets events; the drain scenario empties a full outbox into a fast one.
#[test]
fn the_webhook_options_post_events_and_the_drain_empties_the_outbox() {
    let (stdout, report) = bench(&[
        "--scenarios",
        "latency,webhook-drain",
        "--runs",
        "1",
        "--latency-users",
        "10",
        "--rate",
        "50",
        "--latency-secs",
        "0.5",
        "--webhook",
        "500",
        "--drain-events",
        "200",
        "--drain-users",
        "5",
    ]);
    let answered: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("webhook receiver: answered 500 to "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no receiver line in\n{stdout}"));
    assert!(answered > 0, "{stdout}");
    assert_eq!(report["webhook_status"], 500);
    let drain = &report["scenarios"]["webhook-drain"];
    assert_eq!(drain["details"][0]["events"], 200);
    assert!(drain["details"][0]["events_per_sec"].as_f64().unwrap() > 0.0);
    assert!(
        stdout.lines().any(|l| l.starts_with("webhook-drain: ")),
        "{stdout}"
    );
}

/// `--nodes 2`: a throwaway PostgreSQL and nats-server, two nodes, the three scenarios,
/// and the cluster's CPU, reads and memory figures; nothing of the cluster is left
/// afterwards.
#[test]
fn a_two_node_cluster_is_measured_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let child = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(["--server", env!("CARGO_BIN_EXE_chat-server")])
        .args([
            "--nodes",
            "2",
            "--scenarios",
            "throughput,latency,webhook-drain",
        ])
        .args(["--runs", "1", "--users", "4", "--window", "2"])
        .args(["--drain-events", "200", "--drain-users", "5"])
        .args(["--warmup-secs", "1", "--duration-secs", "1"])
        .args(["--latency-users", "10", "--rate", "50"])
        .args(["--latency-secs", "1"])
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run chat-bench");
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chat-bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("summed over 2 nodes, PostgreSQL"),
        "no cluster CPU in\n{stdout}"
    );
    assert!(
        stdout.contains("chat_cluster_reads_total"),
        "no cluster reads in\n{stdout}"
    );

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let throughput = &report["scenarios"]["throughput"];
    assert_eq!(throughput["nodes"], 2);
    let run = &throughput["details"][0];
    assert!(run["completed"].as_u64().unwrap() > 0, "{run}");
    for part in ["server", "postgres"] {
        let key = format!("{part}_cpu_us_per_msg");
        assert!(run[&key].as_f64().unwrap() > 0.0, "{key}: {run}");
    }
    // Counted in clock ticks (10 ms): a second of this tiny load may not reach one.
    assert!(run["nats_cpu_us_per_msg"].as_f64().unwrap() >= 0.0, "{run}");
    // Every message crosses to the partner's node, which reads its room from the store.
    assert!(
        run["cluster_reads_per_msg"].as_f64().unwrap() > 0.0,
        "{run}"
    );
    assert!(
        throughput["cluster_reads_per_msg"]["median"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let rss = run["peak_rss_bytes_per_server"].as_array().unwrap();
    assert_eq!(rss.len(), 2, "{run}");
    assert!(rss.iter().all(|b| b.as_u64().unwrap() > 0), "{run}");
    let latency = &report["scenarios"]["latency"];
    assert!(latency["details"][0]["delivered"].as_u64().unwrap() > 0);
    assert!(
        latency["postgres_cpu_us_per_msg"]["median"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // The bare relay's floor is the embedded runs' business.
    assert!(latency["floor"].is_null());
    let drain = &report["scenarios"]["webhook-drain"];
    assert_eq!(drain["nodes"], 2);
    let run = &drain["details"][0];
    assert_eq!(run["events"], 200);
    for key in [
        "events_per_sec",
        "server_cpu_us_per_event",
        "postgres_cpu_us_per_event",
    ] {
        assert!(run[key].as_f64().unwrap() > 0.0, "{key}: {run}");
    }

    // The nodes, nats-server and PostgreSQL were stopped and their dir removed.
    let prefix = format!("chat-bench-{pid}-");
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn nodes_are_refused_where_the_cluster_is_not_supported() {
    for (args, error) in [
        (vec!["--nodes", "0"], "at least one node"),
        (
            vec!["--nodes", "2", "--scenarios", "throughput,idle"],
            "\"idle\" scenario runs against the embedded server only",
        ),
        (
            vec![
                "--nodes",
                "1",
                "--scenarios",
                "latency",
                "--latency-backups",
            ],
            "--latency-backups need redb",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
            .args(["--server", env!("CARGO_BIN_EXE_chat-server")])
            .args(&args)
            .output()
            .expect("run chat-bench");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} ran");
        assert!(stderr.contains(error), "{args:?}: {stderr}");
    }
}
