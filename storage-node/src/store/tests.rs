//! Packet store tests on real files in a temp dir.

use super::*;

fn packet(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn open(dir: &Path, cap: u64) -> PacketStore {
    PacketStore::open(dir, cap).await.unwrap()
}

#[tokio::test]
async fn put_get_delete_round_trip_with_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20).await;
    let name = PacketName::random();
    let data = packet(1000, 1);
    let ack = s.put(name, data.clone()).await.unwrap();
    assert!(!ack.already_present);
    assert_eq!(ack.checksum, *blake3::hash(&data).as_bytes());
    let path = s.packet_path(name);
    assert!(path.starts_with(dir.path().join(PACKETS_DIR).join(&name.to_string()[..2])));
    assert_eq!(fs::metadata(&path).unwrap().len(), 1000 + HEADER_LEN as u64);
    assert_eq!(s.usage().used_bytes, 1000 + HEADER_LEN as u64);
    assert_eq!(s.usage().packet_count, 1);

    let got = s.get(name).await.unwrap();
    assert_eq!(got.data, data);
    assert_eq!(got.checksum, ack.checksum);

    assert!(s.delete(name).await.unwrap());
    assert!(!s.delete(name).await.unwrap());
    assert!(matches!(s.get(name).await, Err(StoreError::NotFound(n)) if n == name));
    assert_eq!(
        s.usage(),
        StoreUsage {
            capacity_bytes: 1 << 20,
            used_bytes: 0,
            packet_count: 0
        }
    );
}

#[tokio::test]
async fn re_put_is_idempotent_and_a_different_packet_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20).await;
    let name = PacketName::random();
    s.put(name, packet(500, 1)).await.unwrap();
    let used = s.usage();
    let again = s.put(name, packet(500, 1)).await.unwrap();
    assert!(again.already_present);
    assert_eq!(s.usage(), used);
    let e = s.put(name, packet(500, 2)).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(n) if n == name), "{e}");
    assert_eq!(e.code(), gridback_proto::ErrorCode::Conflict);
    assert_eq!(s.get(name).await.unwrap().data, packet(500, 1));
    assert_eq!(s.usage(), used);
}

#[tokio::test]
async fn flipped_byte_on_disk_is_corrupt_and_a_re_put_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20).await;
    let name = PacketName::random();
    let data = packet(4096, 7);
    s.put(name, data.clone()).await.unwrap();
    let path = s.packet_path(name);
    let mut bytes = fs::read(&path).unwrap();
    bytes[HEADER_LEN + 100] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let e = s.get(name).await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert_eq!(e.code(), gridback_proto::ErrorCode::Corrupt);

    // A truncated file is corrupt too, not a short read served as data.
    fs::write(&path, &bytes[..HEADER_LEN + 10]).unwrap();
    assert!(matches!(s.get(name).await, Err(StoreError::Corrupt { .. })));

    // Repair puts the good bytes back; the accounting follows the file size.
    let ack = s.put(name, data.clone()).await.unwrap();
    assert!(!ack.already_present);
    assert_eq!(s.get(name).await.unwrap().data, data);
    assert_eq!(s.usage().packet_count, 1);
    assert_eq!(s.usage().used_bytes, 4096 + HEADER_LEN as u64);
}

#[tokio::test]
async fn capacity_is_enforced_and_nothing_is_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 2 * (1000 + HEADER_LEN as u64) + 10;
    let s = open(dir.path(), cap).await;
    s.put(PacketName::random(), packet(1000, 1)).await.unwrap();
    s.put(PacketName::random(), packet(1000, 2)).await.unwrap();
    let full = PacketName::random();
    let e = s.put(full, packet(1000, 3)).await.unwrap_err();
    assert!(matches!(e, StoreError::NodeFull { .. }), "{e}");
    assert_eq!(e.code(), gridback_proto::ErrorCode::NodeFull);
    assert!(!s.packet_path(full).exists());
    assert_eq!(s.usage().packet_count, 2);
    // Even an empty packet needs its header, which does not fit in the 10 bytes left.
    let e = s.put(PacketName::random(), Vec::new()).await.unwrap_err();
    assert!(matches!(e, StoreError::NodeFull { .. }), "{e}");
    // Deleting frees room again.
    let first = PacketName::random();
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = open(dir2.path(), 1000 + HEADER_LEN as u64).await;
    s2.put(first, packet(1000, 1)).await.unwrap();
    assert!(s2.put(PacketName::random(), packet(1, 1)).await.is_err());
    s2.delete(first).await.unwrap();
    s2.put(PacketName::random(), packet(1000, 2)).await.unwrap();
}

#[tokio::test]
async fn concurrent_puts_never_overshoot_and_same_name_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let unit = 1000 + HEADER_LEN as u64;
    let s = open(dir.path(), 5 * unit).await;
    let mut tasks = Vec::new();
    for i in 0..12u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.put(PacketName::random(), packet(1000, i)).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::NodeFull { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(s.usage().used_bytes, 5 * unit);

    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20).await;
    let name = PacketName::random();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(
            async move { s.put(name, packet(1000, 5)).await },
        ));
    }
    let mut fresh = 0;
    for t in tasks {
        if !t.await.unwrap().unwrap().already_present {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(s.usage().packet_count, 1);
    assert_eq!(s.usage().used_bytes, unit);
    let shard = s.packet_path(name).parent().unwrap().to_path_buf();
    assert_eq!(
        fs::read_dir(shard).unwrap().count(),
        1,
        "no temp file left behind"
    );
}

#[tokio::test]
async fn reopen_recounts_usage_and_removes_stale_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<PacketName> = (0..3).map(|_| PacketName::random()).collect();
    let before = {
        let s = open(dir.path(), 1 << 20).await;
        for (i, n) in names.iter().enumerate() {
            s.put(*n, packet(100 * (i + 1), i as u8)).await.unwrap();
        }
        s.usage()
    };
    let shard = dir
        .path()
        .join(PACKETS_DIR)
        .join(&names[0].to_string()[..2]);
    let stale = shard.join(format!(".{}.0011223344556677{TEMP_SUFFIX}", names[0]));
    fs::write(&stale, b"half a put").unwrap();
    let s = open(dir.path(), 1 << 20).await;
    assert_eq!(s.usage(), before);
    assert!(!stale.exists());
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            s.get(*n).await.unwrap().data,
            packet(100 * (i + 1), i as u8)
        );
    }
}

/// Puts write straight under the packet's final name, so a crash in the middle of a put
/// leaves a torn file there (a prefix of the packet file, possibly without a full header).
/// After a restart such a file must never be served, an acknowledged neighbour must survive,
/// and a re-put (the client's retry) must replace the torn file and be counted once.
#[tokio::test]
async fn torn_put_under_the_final_name_is_detected_after_reopen_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (acked, torn) = (PacketName::random(), PacketName::random());
    let data = packet(10_000, 3);
    let full_file = {
        let s = open(dir.path(), 1 << 20).await;
        s.put(acked, packet(5000, 1)).await.unwrap();
        s.put(torn, data.clone()).await.unwrap();
        fs::read(s.packet_path(torn)).unwrap()
    };
    for cut in [0, 20, HEADER_LEN, HEADER_LEN + 9_999] {
        let s = open(dir.path(), 1 << 20).await;
        fs::write(s.packet_path(torn), &full_file[..cut]).unwrap();
        let s = open(dir.path(), 1 << 20).await;
        assert!(
            matches!(s.get(torn).await, Err(StoreError::Corrupt { .. })),
            "torn at {cut} bytes was served"
        );
        assert_eq!(s.get(acked).await.unwrap().data, packet(5000, 1));
        let ack = s.put(torn, data.clone()).await.unwrap();
        assert!(!ack.already_present, "torn at {cut}");
        assert_eq!(s.get(torn).await.unwrap().data, data);
        assert_eq!(s.usage().packet_count, 2);
        assert_eq!(
            s.usage().used_bytes,
            (5000 + 10_000 + 2 * HEADER_LEN) as u64,
            "torn at {cut}"
        );
    }
}

#[tokio::test]
async fn a_batch_is_stored_with_one_sync_and_answers_each_packet_as_a_put_would() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 3 * (1000 + HEADER_LEN as u64) + 10;
    let s = open(dir.path(), cap).await;
    let (taken, fresh, twin, too_big) = (
        PacketName::random(),
        PacketName::random(),
        PacketName::random(),
        PacketName::random(),
    );
    s.put(taken, packet(1000, 1)).await.unwrap();
    s.put(twin, packet(1000, 3)).await.unwrap();
    let answers = s
        .put_many(vec![
            (taken, packet(1000, 9).into()), // different bytes under a taken name
            (fresh, packet(1000, 2).into()), // new
            (twin, packet(1000, 3).into()),  // the same bytes again
            (too_big, packet(1000, 4).into()), // over the capacity
        ])
        .await;
    assert_eq!(answers.len(), 4);
    assert!(matches!(answers[0], Err(StoreError::Conflict(n)) if n == taken));
    let new = answers[1].as_ref().unwrap();
    assert!(!new.already_present);
    assert_eq!(new.checksum, *blake3::hash(&packet(1000, 2)).as_bytes());
    assert!(answers[2].as_ref().unwrap().already_present);
    assert!(
        matches!(answers[3], Err(StoreError::NodeFull { .. })),
        "{:?}",
        answers[3]
    );
    assert_eq!(s.get(fresh).await.unwrap().data, packet(1000, 2));
    assert_eq!(s.get(taken).await.unwrap().data, packet(1000, 1));
    assert_eq!(s.usage().packet_count, 3);
    assert_eq!(s.usage().used_bytes, 3 * (1000 + HEADER_LEN as u64));
    // What a batch stored is found again, and counted alike, after a reopen.
    drop(s);
    let s = open(dir.path(), cap).await;
    assert_eq!(s.usage().packet_count, 3);
    assert_eq!(s.get(fresh).await.unwrap().data, packet(1000, 2));
}
