use super::*;
use crate::store::suite::{store_suite, Fixture};

/// A redb store in a temporary data directory.
struct TempStore(tempfile::TempDir);

impl Fixture for TempStore {
    type Store = RedbStore;

    fn new() -> TempStore {
        TempStore(tempfile::tempdir().unwrap())
    }

    fn open(&self) -> RedbStore {
        RedbStore::open(self.0.path()).unwrap()
    }
}

store_suite!(TempStore);

#[test]
fn refuses_a_newer_format() {
    let place = TempStore::new();
    {
        let store = place.open();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("format_version", FORMAT_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    match RedbStore::open(place.0.path()) {
        Err(StoreError::NewerFormat { found, supported }) => {
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION))
        }
        other => panic!("expected NewerFormat, got {:?}", other.err()),
    }
}
