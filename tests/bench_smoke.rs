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
