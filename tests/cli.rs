//! The command line and the process: configuration errors, the token command, refusing a
//! newer store, the open-file limit.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};

/// The first line a child printed on its piped stdout (the server's listening line).
fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

fn chat_server() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-server"));
    cmd.env_remove("CHAT_JWT_SECRET").env_remove("CHAT_CONFIG");
    cmd
}

#[test]
fn a_bad_setting_is_one_line_naming_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat.toml");
    std::fs::write(&file, "[limits]\nmax_frame_byte = 10\n").unwrap();
    let out = chat_server()
        .args([
            "--data",
            dir.path().to_str().unwrap(),
            "--config",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("limits.max_frame_byte"), "{stderr}");

    let out = chat_server()
        .args(["--data", dir.path().to_str().unwrap()])
        .env("CHAT_LIMITS_MAX_MESSAGE_BYTES", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("max_message_bytes"), "{stderr}");
}

#[tokio::test]
async fn the_token_command_mints_a_token_the_server_accepts() {
    // Both the server and the token command use the secret generated in the data dir.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = chat_server()
        .args([
            "token", "alice", "--name", "Alice", "--ttl", "1h", "--data", data,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    let token = lines.next().unwrap().to_owned();
    assert!(lines.next().unwrap().ends_with(&format!("/#token={token}")));

    let mut child = chat_server()
        .args(["--data", data, "--bind", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap()
        .to_owned();
    let (status, body) = common::http_get(addr.parse().unwrap(), "/api/rooms", Some(&token)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status, 200, "{body}");

    let secret = std::fs::metadata(dir.path().join("jwt-secret")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(secret.permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_store_from_a_newer_version_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join("chat.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        txn.open_table(meta)
            .unwrap()
            .insert("format_version", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let out = chat_server()
        .args([
            "--data",
            dir.path().to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
        ])
        .env("CHAT_JWT_SECRET", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("format 99"), "{stderr}");
}

#[test]
fn the_token_command_survives_a_closed_pipe() {
    // `chat-server token alice | head -1` closes the pipe before the second line; here the
    // reader is gone before the first, the harshest case. Regression: it used to panic.
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = chat_server()
        .args(["token", "alice", "--data", dir.path().to_str().unwrap()])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
}

#[test]
fn the_server_raises_its_soft_open_file_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    // A shell lowers the soft limit, then becomes the server (same pid).
    let mut child = Command::new("sh")
        .args([
            "-c",
            "ulimit -Sn 256 && exec \"$0\" --data \"$1\" --bind 127.0.0.1:0",
            env!("CARGO_BIN_EXE_chat-server"),
            dir.path().to_str().unwrap(),
        ])
        .env("CHAT_JWT_SECRET", "limits-test")
        .env_remove("CHAT_CONFIG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    assert!(line.starts_with("listening on "), "{line}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let open_files: Vec<u64> = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .expect("an open-files line")
        .split_whitespace()
        .take(2)
        .map(|n| n.parse().expect("a number"))
        .collect();
    let (soft, hard) = (open_files[0], open_files[1]);
    assert!(hard > 256, "the hard limit {hard} leaves nothing to raise");
    assert_eq!(soft, hard, "{limits}");
}
