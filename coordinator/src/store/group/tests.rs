//! Group commit against real redb files: serial equivalence, isolation of failing methods,
//! durability across reopen, and the store's chunk commits under concurrency.

use std::sync::{Arc, Barrier};

use gridback_proto::coord_api::SnapshotState;
use gridback_proto::{CertFingerprint, ChunkId, ClientId, NodeId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::GroupCommit;
use crate::store::tests::{chunk, client_rec, log};
use crate::store::{CommitBatch, MetaStore, NewMember, RedbStore, StoreError};

const T: TableDefinition<u64, u64> = TableDefinition::new("t");
/// Key of the shared counter every writer increments.
const COUNTER: u64 = u64::MAX;

fn db(dir: &tempfile::TempDir) -> Database {
    Database::create(dir.path().join("g.redb")).unwrap()
}

fn read(db: &Database, key: u64) -> Option<u64> {
    let tx = db.begin_read().unwrap();
    let t = match tx.open_table(T) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return None,
        Err(e) => panic!("{e}"),
    };
    t.get(key).unwrap().map(|v| v.value())
}

/// Insert `key` and increment the shared counter (read-modify-write: lost updates would show).
fn put_and_count(g: &GroupCommit, db: &Database, key: u64) -> Result<u64, StoreError> {
    g.write(db, true, |tx| {
        let mut t = tx.open_table(T)?;
        let n = t.get(COUNTER)?.map_or(0, |v| v.value()) + 1;
        t.insert(COUNTER, n)?;
        t.insert(key, n)?;
        Ok(n)
    })
}

#[test]
fn concurrent_writers_share_commits_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(db(&dir));
    let g = Arc::new(GroupCommit::default());
    let (threads, each) = (8u64, 100u64);
    let start = Arc::new(Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (db, g, start) = (db.clone(), g.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                (0..each)
                    .map(|i| put_and_count(&g, &db, t * 1000 + i).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    seen.sort_unstable();
    // Every writer saw a distinct counter value: the methods ran one after the other.
    assert_eq!(seen, (1..=threads * each).collect::<Vec<_>>());
    let (commits, applied) = g.stats();
    assert_eq!(applied, threads * each);
    assert!(
        commits < applied,
        "8 concurrent writers never shared a commit ({commits} commits)"
    );
    drop(db);
    let db = Database::open(dir.path().join("g.redb")).unwrap();
    assert_eq!(read(&db, COUNTER), Some(threads * each));
    for t in 0..threads {
        for i in 0..each {
            assert!(read(&db, t * 1000 + i).is_some(), "key {t}/{i} lost");
        }
    }
}

#[test]
fn a_failing_method_leaves_no_trace_and_others_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(db(&dir));
    let g = Arc::new(GroupCommit::default());
    let threads = 8u64;
    let start = Arc::new(Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (db, g, start) = (db.clone(), g.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for i in 0..50u64 {
                    let key = t * 1000 + i;
                    let fail = i % 3 == 0;
                    let r = g.write(&db, true, |tx| {
                        let mut t = tx.open_table(T)?;
                        t.insert(key, 1)?; // written before the failure
                        if fail {
                            return Err(StoreError::Conflict(format!("{key} refused")));
                        }
                        Ok(())
                    });
                    match (fail, r) {
                        (true, Err(StoreError::Conflict(m))) => {
                            assert_eq!(m, format!("{key} refused"))
                        }
                        (false, Ok(())) => {}
                        (f, r) => panic!("key {key}: fail={f} gave {r:?}"),
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for t in 0..threads {
        for i in 0..50u64 {
            assert_eq!(read(&db, t * 1000 + i).is_some(), i % 3 != 0, "key {t}/{i}");
        }
    }
}

#[test]
fn a_panicking_method_is_rethrown_and_the_group_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(&dir);
    let g = GroupCommit::default();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        g.write(&db, true, |tx| -> Result<(), StoreError> {
            tx.open_table(T)?.insert(1, 1)?;
            panic!("boom");
        })
    }));
    assert!(r.is_err());
    assert_eq!(put_and_count(&g, &db, 2).unwrap(), 1);
    assert_eq!(read(&db, 1), None);
    assert_eq!(read(&db, 2), Some(1));
}

#[test]
fn concurrent_chunk_commits_are_all_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    let nodes = [NodeId::random(), NodeId::random(), NodeId::random()];
    let client = ClientId::random();
    let (threads, each) = (6usize, 40usize);
    let shared = ChunkId::random(); // committed by every thread: stored once
    {
        let s = Arc::new(RedbStore::open(&path).unwrap());
        let fp = CertFingerprint::random();
        s.register(
            &fp,
            &NewMember::Client(client, client_rec()),
            &log("client.join"),
        )
        .unwrap();
        s.snapshot_create(&client, "s", None, 1).unwrap();
        let start = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (s, start) = (s.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut stored = 0;
                    for i in 0..each {
                        let mut chunks = vec![chunk(ChunkId::random(), &nodes)];
                        if i == 0 {
                            chunks.push(chunk(shared, &nodes));
                        }
                        let batch = CommitBatch {
                            snapshot: "s".into(),
                            chunks,
                            refs: Vec::new(),
                            now_unix_ms: 2,
                            quota_bytes: None,
                        };
                        stored += s.commit_chunks(&client, &batch).unwrap().stored;
                    }
                    stored
                })
            })
            .collect();
        let stored: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(stored as usize, threads * each + 1);
        let (commits, applied) = s.group_stats();
        assert!(applied >= (threads * each) as u64 && commits <= applied);
    }
    // Everything acknowledged is in the file after a reopen.
    let s = RedbStore::open(&path).unwrap();
    let total = threads * each + 1;
    assert_eq!(s.stats().unwrap().chunk_count, total as u64);
    let info = s.snapshot_get(&client, "s").unwrap().unwrap().info;
    assert_eq!(
        (info.state, info.chunk_refs),
        (SnapshotState::Open, total as u64)
    );
    assert_eq!(s.usage(&client).unwrap().chunk_count, total as u64);
    let commits = s
        .log_since(0, None, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "chunks.commit")
        .count();
    assert_eq!(commits, threads * each);
    assert_eq!(s.node_packets(&nodes[0]).unwrap().len(), total);
}
