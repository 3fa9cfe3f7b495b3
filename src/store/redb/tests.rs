use super::*;
use crate::store::suite::{store_suite, Fixture};
use crate::store::WriteStore;

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

#[tokio::test]
async fn the_expiry_scan_pages_through_every_room_and_names_the_old_ones() {
    let place = TempStore::new();
    let store = place.open();
    let mut txn = store.begin().unwrap();
    for (partner, sent) in [("b", 10), ("c", 1_000), ("d", 20)] {
        txn.append(&RoomKey::new("a", partner), "a", "x", None, sent)
            .unwrap();
    }
    txn.commit().unwrap();
    let mut found = Vec::new();
    let mut after = None;
    let mut steps = 0;
    loop {
        let scan = store.rooms_to_expire(100, after, 1).await.unwrap();
        steps += 1;
        found.extend(scan.rooms.into_iter().map(|r| r.id()));
        match scan.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(steps, 3);
    assert_eq!(found, ["a-b", "a-d"]);
}
