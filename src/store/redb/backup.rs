//! Whole-file operations on a redb store: the online backup, the file size, and offline
//! compaction.
//!
//! A redb file cannot be copied safely with `cp` while the server writes to it, so the
//! backup is taken from inside the process (as redb's maintainers advise): one read
//! transaction sees the store as of one commit, and every row is copied through it into a
//! new file. The read transaction never waits for or blocks the writer (MVCC); it only
//! keeps the pages it sees from being reused until it ends, so the live file may grow a
//! little during a long backup.

use std::path::Path;

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle, Value, WriteTransaction,
};

use super::{
    RedbStore, BLOCKS, CHANGES, CLIENT_IDS, DB_FILE, ERASED, INBOX, MESSAGES, META, PROFILES,
    ROOMS, ROOM_NUMS, WEBHOOK_DEAD, WEBHOOK_OUTBOX,
};
use crate::store::{Maintenance, Result, StoreCounts, StoreError};

impl Maintenance for RedbStore {
    fn backup_into(&self, dest: &Path, buffer_bytes: usize) -> Result<StoreCounts> {
        let source = self.db.begin_read()?;
        // A table the copy below does not know would be silently missing from the backup.
        let known = [
            META.name(),
            ROOM_NUMS.name(),
            ROOMS.name(),
            MESSAGES.name(),
            CLIENT_IDS.name(),
            INBOX.name(),
            PROFILES.name(),
            CHANGES.name(),
            ERASED.name(),
            BLOCKS.name(),
            WEBHOOK_OUTBOX.name(),
            WEBHOOK_DEAD.name(),
        ];
        for table in source.list_tables()? {
            if !known.contains(&table.name()) {
                return Err(StoreError::Corrupt(format!(
                    "table `{}` is unknown to the backup; refusing to write an incomplete copy",
                    table.name()
                )));
            }
        }
        if dest.exists() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already exists", dest.display()),
            )));
        }
        // The backup file's own page cache and its uncommitted rows share the budget.
        let target = redb::Builder::new()
            .set_cache_size(buffer_bytes / 2)
            .create(dest)?;
        let mut copy = Copy {
            target: &target,
            txn: None,
            bytes: 0,
            commit_every: (buffer_bytes / 2) as u64,
        };
        copy.table(&source, META, |_, _| ())?;
        copy.table(&source, ROOM_NUMS, |_, _| ())?;
        copy.table(&source, PROFILES, |_, _| ())?;
        copy.table(&source, CLIENT_IDS, |_, _| ())?;
        copy.table(&source, INBOX, |_, _| ())?;
        copy.table(&source, CHANGES, |_, _| ())?;
        copy.table(&source, ERASED, |_, _| ())?;
        copy.table(&source, BLOCKS, |_, _| ())?;
        copy.table(&source, WEBHOOK_OUTBOX, |_, _| ())?;
        copy.table(&source, WEBHOOK_DEAD, |_, _| ())?;
        let mut counts = StoreCounts::default();
        copy.table(&source, ROOMS, |_, _| counts.rooms += 1)?;
        copy.table(&source, MESSAGES, |(_, id), _| {
            counts.messages += 1;
            counts.highest_message_id = counts.highest_message_id.max(id);
        })?;
        copy.finish()?;
        // redb's last commit was fsync'd (Durability::Immediate); closing releases the
        // file's lock so it can be renamed, opened or copied at once.
        drop(target);
        Ok(counts)
    }

    fn file_bytes(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.path).map_err(StoreError::Io)?.len())
    }

    fn export_dump(
        &self,
        user: Option<&str>,
        out: &mut dyn std::io::Write,
    ) -> std::result::Result<crate::ops::export::Exported, crate::ops::export::ExportError> {
        crate::ops::export::write_dump(self, user, out)
    }
}

/// A copy into the backup file under way. The copy is committed in pieces: the file is
/// private until it is renamed into place, so splitting costs no consistency, and it
/// keeps redb's buffer of uncommitted pages bounded whatever the store's size.
struct Copy<'d> {
    /// The backup file.
    target: &'d Database,
    /// The write transaction rows go into.
    txn: Option<WriteTransaction>,
    /// Key and value bytes in `txn`.
    bytes: u64,
    /// `txn` is committed once it holds this many bytes.
    commit_every: u64,
}

impl Copy<'_> {
    /// Copies every row of `def` from `source`, calling `seen` on each.
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        source: &ReadTransaction,
        def: TableDefinition<K, V>,
        mut seen: impl FnMut(K::SelfType<'_>, V::SelfType<'_>),
    ) -> Result<()> {
        let from = source.open_table(def)?;
        let mut rows = from.iter()?;
        // Created even when empty, so that the backup has every table the server expects.
        let mut more = true;
        while more {
            let (mut in_txn, commit_every) = (self.bytes, self.commit_every);
            {
                let mut to = self.txn()?.open_table(def)?;
                more = false;
                for row in rows.by_ref() {
                    let (key, value) = row?;
                    let (key, value) = (key.value(), value.value());
                    in_txn += (K::as_bytes(&key).as_ref().len()
                        + V::as_bytes(&value).as_ref().len()) as u64;
                    to.insert(&key, &value)?;
                    seen(key, value);
                    if in_txn >= commit_every {
                        more = true;
                        break;
                    }
                }
            }
            self.bytes = in_txn;
            if more {
                // fsync'd although only the last commit must be: unsynced pieces pile up
                // as dirty pages, and the writer's fsyncs of the live store wait behind
                // their writeback. Back-to-back backups of a 1M-message store put the p99
                // of sends at 1.43 s with unsynced pieces, 0.56 s with these (BENCHMARKS.md).
                self.commit()?;
            }
        }
        Ok(())
    }

    /// The open write transaction, begun if there is none.
    fn txn(&mut self) -> Result<&WriteTransaction> {
        if self.txn.is_none() {
            self.txn = Some(self.target.begin_write()?);
        }
        Ok(self.txn.as_ref().expect("just begun"))
    }

    fn commit(&mut self) -> Result<()> {
        if let Some(mut txn) = self.txn.take() {
            txn.set_durability(Durability::Immediate)?;
            txn.commit()?;
        }
        self.bytes = 0;
        Ok(())
    }

    /// The last commit, fsync'd: only after it is the file a complete backup.
    fn finish(mut self) -> Result<()> {
        self.txn()?;
        self.commit()
    }
}

/// Compacts the store in `data_dir` offline (no server may hold it) and returns the
/// file's size before and after, in bytes.
pub fn compact(data_dir: &Path) -> Result<(u64, u64)> {
    let path = data_dir.join(DB_FILE);
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(StoreError::Io)
    };
    let before = size(&path)?;
    let mut db = Database::open(&path)?;
    // redb compacts in steps; each call reports whether it could do more.
    while db.compact()? {}
    drop(db);
    Ok((before, size(&path)?))
}
