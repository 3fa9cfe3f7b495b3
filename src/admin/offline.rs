//! `chat-server restore`, `verify` and `compact`: operations on a store no server holds.
//!
//! redb locks its file, so each of these fails cleanly ("already open") while a server
//! runs on the data directory instead of reading or rewriting a file under it.

use std::fs;
use std::io;
use std::path::Path;

use crate::store::redb::{self, DB_FILE};
use crate::store::verified::Verified;
use crate::store::StoreError;

/// Why a command could not do its work.
#[derive(Debug)]
pub enum OfflineError {
    /// The store could not be opened or read.
    Store(StoreError),
    /// A file could not be read or written.
    Io(io::Error),
    /// The backup is damaged: restoring it would install a bad store.
    Damaged(Verified),
    /// The data directory holds something and `--force` was not given.
    NotEmpty(String),
}

impl std::fmt::Display for OfflineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OfflineError::Store(StoreError::Backend(e))
                if e.to_string().contains("already open") =>
            {
                write!(f, "{e} (is a server running on it? stop it first)")
            }
            OfflineError::Store(e) => write!(f, "{e}"),
            OfflineError::Io(e) => write!(f, "{e}"),
            OfflineError::Damaged(found) => {
                write!(
                    f,
                    "the backup is damaged, nothing was restored:\n{}",
                    describe(found)
                )
            }
            OfflineError::NotEmpty(dir) => write!(
                f,
                "{dir} is not empty; restore into an empty directory, or add --force to \
                 replace its store"
            ),
        }
    }
}

impl From<StoreError> for OfflineError {
    fn from(e: StoreError) -> OfflineError {
        OfflineError::Store(e)
    }
}

impl From<io::Error> for OfflineError {
    fn from(e: io::Error) -> OfflineError {
        OfflineError::Io(e)
    }
}

/// Verifies the store in `data_dir`.
pub fn verify(data_dir: &Path) -> Result<Verified, OfflineError> {
    Ok(redb::verify(&data_dir.join(DB_FILE))?)
}

/// Compacts the store in `data_dir`; its file size before and after.
pub fn compact(data_dir: &Path) -> Result<(u64, u64), OfflineError> {
    Ok(redb::compact(data_dir)?)
}

/// Installs `backup` as the store of `data_dir`, after verifying it. A data directory
/// that holds anything is refused unless `force`; with `force` its store is replaced
/// (its secrets stay, so tokens minted for it stay valid). The copy is written under a
/// temporary name, fsync'd and renamed, so the directory never holds half a store.
pub fn restore(backup: &Path, data_dir: &Path, force: bool) -> Result<Verified, OfflineError> {
    let found = redb::verify(backup)?;
    if !found.ok() {
        return Err(OfflineError::Damaged(found));
    }
    let occupied = match fs::read_dir(data_dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    if occupied && !force {
        return Err(OfflineError::NotEmpty(data_dir.display().to_string()));
    }
    fs::create_dir_all(data_dir)?;
    let target = data_dir.join(DB_FILE);
    // Held until the new file is in place: no server may start on, or be running on, the
    // store being replaced.
    let _old = match target.exists() {
        true => Some(::redb::Database::open(&target).map_err(StoreError::from)?),
        false => None,
    };
    let tmp = data_dir.join(format!(".{DB_FILE}.restore.tmp"));
    let copied = fs::copy(backup, &tmp).and_then(|_| fs::File::open(&tmp)?.sync_all());
    if let Err(e) = copied {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    fs::rename(&tmp, &target)?;
    fs::File::open(data_dir)?.sync_all()?;
    Ok(found)
}

/// A verification's counts and problems, as the commands print them.
pub fn describe(found: &Verified) -> String {
    let mut text = format!(
        "{} rooms, {} messages, {} clientMessageId index rows, {} inbox rows, {} profiles, \
         {} change rows, {} erased users",
        found.rooms,
        found.messages,
        found.client_ids,
        found.inbox_rows,
        found.profiles,
        found.change_rows,
        found.erased_users
    );
    for problem in &found.problems {
        text.push_str("\n  problem: ");
        text.push_str(problem);
    }
    let unlisted = found.problem_count - found.problems.len() as u64;
    if unlisted > 0 {
        text.push_str(&format!("\n  … and {unlisted} more problems"));
    }
    text
}
