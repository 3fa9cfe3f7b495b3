//! `POST /admin/backup`: a consistent copy of the store, taken while the server runs.
//!
//! The copy itself is the store's ([`crate::store::Maintenance::backup_into`]: one read
//! transaction, so it never holds the writer): a redb file, or in cluster mode a dump of
//! the PostgreSQL database (`chat-*.jsonl`, which `chat-server restore` loads into an
//! empty database). This file decides where it goes and how it becomes a backup: written
//! under a temporary name, fsync'd, renamed into place and the directory fsync'd, so a
//! file named `chat-*.redb` (or `.jsonl`) is always complete, even after a crash
//! mid-backup. Then only the newest `backup.keep` are kept. One backup runs at a time; a
//! second request waits for the first. The copy runs on a blocking thread, so the runtime
//! keeps serving sends meanwhile.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Mutex;
use warp::Reply;

use super::AdminReply;
use crate::app::App;
use crate::config::Config;
use crate::protocol::time::{format_millis, now_millis};
use crate::protocol::{ChatError, ErrorCode};
use crate::store::{Maintenance, StoreCounts};

/// File names of backups: this prefix, a UTC time, the suffix of the store's kind. The
/// time is fixed-width, so names sort oldest first.
const PREFIX: &str = "chat-";
/// A copy of the embedded store's file.
const REDB_SUFFIX: &str = ".redb";
/// A dump, cluster mode's backup.
const DUMP_SUFFIX: &str = ".jsonl";

/// The backups directory and its rules.
pub struct Backups {
    /// Where backups are written (`backup.dir`, else `<data>/backups`).
    dir: PathBuf,
    /// How many are kept (`backup.keep`).
    keep: usize,
    /// The backups' file suffix: [`REDB_SUFFIX`], or [`DUMP_SUFFIX`] in cluster mode.
    suffix: &'static str,
    /// Memory a backup may use for its copy (`memory.backup_buffer_bytes`).
    buffer_bytes: usize,
    /// Held for the whole of a backup: two at once would only compete for the disk.
    running: Arc<Mutex<()>>,
}

/// The answer to a backup, and what `chat-server backup` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupReport {
    /// The backup's file name inside the backups directory.
    pub name: String,
    /// Its full path, for `chat-server restore`.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Rooms in it.
    pub rooms: u64,
    /// Messages in it.
    pub messages: u64,
    /// The highest message id of any room in it.
    pub highest_message_id: u64,
    /// How long the copy took, in milliseconds.
    pub took_ms: u64,
    /// Older backups deleted to keep `backup.keep`.
    pub deleted: Vec<String>,
}

impl Backups {
    pub fn new(config: &Config) -> Backups {
        Backups {
            dir: config.backup_dir(),
            keep: config.backup.keep,
            suffix: match config.cluster.postgres_url {
                Some(_) => DUMP_SUFFIX,
                None => REDB_SUFFIX,
            },
            buffer_bytes: config.memory.backup_buffer_bytes,
            running: Arc::new(Mutex::new(())),
        }
    }
}

/// Takes a backup and answers with its [`BackupReport`].
pub async fn take(app: Arc<App>, backups: Arc<Backups>) -> AdminReply {
    let running = backups.running.clone().lock_owned().await;
    let store = app.maintenance.clone();
    let blocking = tokio::task::spawn_blocking(move || {
        // The guard goes with the work: if the request is abandoned (a timeout), the copy
        // still finishes before the next one starts.
        let _running = running;
        write_backup(&*store, &backups)
    });
    let report = blocking
        .await
        .map_err(|e| internal(format!("the backup task failed: {e}")))?
        .map_err(|e| internal(format!("backup failed: {e}")))?;
    tracing::info!(
        name = %report.name,
        bytes = report.bytes,
        rooms = report.rooms,
        messages = report.messages,
        took_ms = report.took_ms,
        deleted = ?report.deleted,
        "admin: backup written"
    );
    Ok(warp::reply::json(&report).into_response())
}

/// A failed backup, with its cause: the caller is the operator, who needs it.
fn internal(message: String) -> ChatError {
    tracing::error!("admin: {message}");
    ChatError::new(ErrorCode::Internal, message)
}

/// Writes one backup into the backups directory and prunes the oldest beyond `keep`.
fn write_backup(store: &dyn Maintenance, backups: &Backups) -> io::Result<BackupReport> {
    let dir = &backups.dir;
    create_private_dir(dir)?;
    let started = Instant::now();
    let name = fresh_name(dir, backups.suffix);
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let counts = match copy_into(store, &tmp, backups.buffer_bytes) {
        Ok(counts) => counts,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &path)?;
    fs::File::open(dir)?.sync_all()?;
    let took_ms = started.elapsed().as_millis() as u64;
    let bytes = fs::metadata(&path)?.len();
    let deleted = prune(dir, backups.keep, backups.suffix)?;
    Ok(BackupReport {
        name,
        path: path.display().to_string(),
        bytes,
        rooms: counts.rooms,
        messages: counts.messages,
        highest_message_id: counts.highest_message_id,
        took_ms,
        deleted,
    })
}

/// The store copied into `tmp`, and the file fsync'd on its own as well as by redb's last
/// commit, so that nothing of it is only in the page cache when it is renamed.
fn copy_into(store: &dyn Maintenance, tmp: &Path, buffer_bytes: usize) -> io::Result<StoreCounts> {
    let counts = store
        .backup_into(tmp, buffer_bytes)
        .map_err(io::Error::other)?;
    fs::File::open(tmp)?.sync_all()?;
    Ok(counts)
}

/// `chat-20261130T130501.123Z.redb` (or `.jsonl`), for now; a name already taken (two
/// backups in one millisecond) waits for the next millisecond.
fn fresh_name(dir: &Path, suffix: &str) -> String {
    loop {
        let stamp: String = format_millis(now_millis())
            .chars()
            .filter(|c| *c != '-' && *c != ':')
            .collect();
        let name = format!("{PREFIX}{stamp}{suffix}");
        if !dir.join(&name).exists() {
            return name;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Backups (files ending in `suffix`) in `dir`, oldest first.
pub fn list(dir: &Path, suffix: &str) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(PREFIX) && name.ends_with(suffix))
        .collect();
    names.sort();
    Ok(names)
}

/// Deletes the oldest backups (of `suffix`) beyond `keep`; returns their names.
fn prune(dir: &Path, keep: usize, suffix: &str) -> io::Result<Vec<String>> {
    let names = list(dir, suffix)?;
    let excess = names.len().saturating_sub(keep);
    let mut deleted = Vec::with_capacity(excess);
    for name in names.into_iter().take(excess) {
        fs::remove_file(dir.join(&name))?;
        deleted.push(name);
    }
    if !deleted.is_empty() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(deleted)
}

/// Backups hold every message, so their directory is created readable by the owner only.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_oldest_first_and_prune_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let a = fresh_name(dir.path(), REDB_SUFFIX);
        assert!(a.starts_with("chat-2") && a.ends_with("Z.redb"), "{a}");
        assert_eq!(a.len(), "chat-20261130T130501.123Z.redb".len(), "{a}");
        for name in [
            "chat-20240101T000000.000Z.redb",
            "chat-20250101T000000.000Z.redb",
            &a,
            "other.redb",
            ".chat-20260101T000000.000Z.redb.tmp",
            "chat-20230101T000000.000Z.jsonl",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        let deleted = prune(dir.path(), 2, REDB_SUFFIX).unwrap();
        assert_eq!(deleted, ["chat-20240101T000000.000Z.redb"]);
        assert_eq!(
            list(dir.path(), REDB_SUFFIX).unwrap(),
            ["chat-20250101T000000.000Z.redb".to_owned(), a]
        );
        assert!(dir.path().join("other.redb").exists());
        // Backups of the other kind are not counted, nor deleted.
        assert_eq!(
            list(dir.path(), DUMP_SUFFIX).unwrap(),
            ["chat-20230101T000000.000Z.jsonl"]
        );
    }
}
