//! Running `chat-server export` and `import`, and writing dump lines by hand.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

/// The binary, without the test environment's settings.
pub fn chat_server() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-server"));
    cmd.env_remove("CHAT_JWT_SECRET")
        .env_remove("CHAT_CONFIG")
        .env_remove("CHAT_DATA");
    cmd
}

/// `export --data DIR [--user ID]`.
pub fn export(dir: &Path, user: Option<&str>) -> Output {
    let mut cmd = chat_server();
    cmd.args(["export", "--data", dir.to_str().unwrap()]);
    if let Some(user) = user {
        cmd.args(["--user", user]);
    }
    cmd.output().unwrap()
}

/// `import --data DIR` with `input` on stdin.
pub fn import(dir: &Path, input: &[u8]) -> Output {
    let mut child = chat_server()
        .args(["import", "--data", dir.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refused import may stop reading early; the pipe closing then is expected.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

/// A dump's first line, of version 1 (before the lifecycle, block and erased lines): the
/// tests built on it show that such dumps still import.
pub fn header() -> Value {
    json!({"type": "header", "format": "chat-server-dump", "version": 1,
           "exportedAt": "2026-01-01T00:00:00.000Z"})
}

/// A room line; `roomId` is spelled from the pair.
pub fn room(pair: [&str; 2], last_id: u64, last_sent_at: &str, unread: [u64; 2]) -> Value {
    json!({"type": "room", "roomId": format!("{}-{}", pair[0], pair[1]), "pair": pair,
           "lastId": last_id, "lastSentAt": last_sent_at, "unread": unread})
}

/// An unseen message line without `clientMessageId`; its text is `m<id>`.
pub fn message(pair: [&str; 2], id: u64, from: &str, sent_at: &str) -> Value {
    json!({"type": "message", "roomId": format!("{}-{}", pair[0], pair[1]), "pair": pair,
           "id": id, "userId": from, "message": format!("m{id}"), "sentAt": sent_at,
           "seenAt": null, "clientMessageId": null})
}

/// The lines as a dump.
pub fn dump_of(lines: &[Value]) -> Vec<u8> {
    lines
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes()
}
