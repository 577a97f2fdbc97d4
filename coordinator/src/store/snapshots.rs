//! Snapshots: the source data record (name, state, times, sizes), the data assembly record
//! (the encrypted tree's chunks) and the chunks each snapshot references.

use gridback_proto::ClientId;
use gridback_proto::coord_api::{SnapshotInfo, SnapshotState, TreeChunk};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::records::{decode, encode};
use super::redb_store::{CHUNK_REFS, SNAPSHOT_CHUNKS, SNAPSHOTS};
use super::{NewLogEntry, SnapshotRow, StoreError, log};

fn read_row(
    t: &impl ReadableTable<([u8; 16], &'static str), &'static [u8]>,
    client: &ClientId,
    name: &str,
) -> Result<Option<SnapshotRow>, StoreError> {
    t.get((client.0, name))?
        .map(|v| decode("snapshots", v.value()))
        .transpose()
}

fn not_found(name: &str) -> StoreError {
    StoreError::NotFound(format!("snapshot {name:?} does not exist"))
}

/// The snapshot's row, if it exists and is open (inside a larger transaction).
pub(super) fn require_open(
    tx: &WriteTransaction,
    client: &ClientId,
    name: &str,
) -> Result<SnapshotRow, StoreError> {
    let t = tx.open_table(SNAPSHOTS)?;
    let row = read_row(&t, client, name)?.ok_or_else(|| not_found(name))?;
    if row.info.state != SnapshotState::Open {
        return Err(StoreError::Conflict(format!("snapshot {name:?} is sealed")));
    }
    Ok(row)
}

pub(super) fn put(
    tx: &WriteTransaction,
    client: &ClientId,
    row: &SnapshotRow,
) -> Result<(), StoreError> {
    let mut t = tx.open_table(SNAPSHOTS)?;
    t.insert((client.0, row.info.name.as_str()), encode(row).as_slice())?;
    Ok(())
}

pub(super) fn create(
    tx: &WriteTransaction,
    client: &ClientId,
    name: &str,
    from: Option<&str>,
    now_unix_ms: u64,
) -> Result<SnapshotInfo, StoreError> {
    let mut chunk_refs = 0u64;
    {
        let snaps = tx.open_table(SNAPSHOTS)?;
        if read_row(&snaps, client, name)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "snapshot {name:?} already exists"
            )));
        }
        if let Some(from) = from {
            read_row(&snaps, client, from)?.ok_or_else(|| not_found(from))?;
            let mut refs = tx.open_table(SNAPSHOT_CHUNKS)?;
            let ids: Vec<[u8; 32]> = refs
                .range((client.0, from, [0u8; 32])..=(client.0, from, [0xffu8; 32]))?
                .map(|r| r.map(|(k, _)| k.value().2))
                .collect::<Result<_, _>>()?;
            for id in ids {
                refs.insert((client.0, name, id), ())?;
                chunk_refs += 1;
            }
        }
    }
    let info = SnapshotInfo {
        name: name.to_string(),
        state: SnapshotState::Open,
        created_unix_ms: now_unix_ms,
        sealed_unix_ms: None,
        tree_bytes: 0,
        chunk_refs,
    };
    put(
        tx,
        client,
        &SnapshotRow {
            info: info.clone(),
            tree: Vec::new(),
        },
    )?;
    let detail = match from {
        Some(f) => format!("name={name} from={f} chunk_refs={chunk_refs}"),
        None => format!("name={name}"),
    };
    let entry = NewLogEntry {
        client: Some(*client),
        node: None,
        kind: "snapshot.create",
        detail,
    };
    log::append(tx, &entry, now_unix_ms)?;
    Ok(info)
}

pub(super) fn list(
    tx: &ReadTransaction,
    client: &ClientId,
) -> Result<Vec<SnapshotInfo>, StoreError> {
    let t = tx.open_table(SNAPSHOTS)?;
    let mut out = Vec::new();
    for row in t.range((client.0, "")..)? {
        let (k, v) = row?;
        if k.value().0 != client.0 {
            break;
        }
        out.push(decode::<SnapshotRow>("snapshots", v.value())?.info);
    }
    Ok(out)
}

pub(super) fn get(
    tx: &ReadTransaction,
    client: &ClientId,
    name: &str,
) -> Result<Option<SnapshotRow>, StoreError> {
    read_row(&tx.open_table(SNAPSHOTS)?, client, name)
}

pub(super) fn seal(
    tx: &WriteTransaction,
    client: &ClientId,
    name: &str,
    tree: &[TreeChunk],
    tree_bytes: u64,
    now_unix_ms: u64,
) -> Result<SnapshotInfo, StoreError> {
    let mut row = require_open(tx, client, name)?;
    {
        let refs = tx.open_table(CHUNK_REFS)?;
        let mut snap_refs = tx.open_table(SNAPSHOT_CHUNKS)?;
        for c in tree {
            if refs.get((c.id.0, client.0))?.is_none() {
                return Err(StoreError::NotFound(format!(
                    "tree chunk {} is not a committed chunk of this client",
                    c.id
                )));
            }
            // The tree's own chunks belong to the snapshot, so GC keeps them with it.
            if snap_refs.insert((client.0, name, c.id.0), ())?.is_none() {
                row.info.chunk_refs += 1;
            }
        }
    }
    row.info.state = SnapshotState::Sealed;
    row.info.sealed_unix_ms = Some(now_unix_ms);
    row.info.tree_bytes = tree_bytes;
    row.tree = tree.to_vec();
    put(tx, client, &row)?;
    let entry = NewLogEntry {
        client: Some(*client),
        node: None,
        kind: "snapshot.seal",
        detail: format!(
            "name={name} tree_chunks={} tree_bytes={tree_bytes} chunk_refs={}",
            tree.len(),
            row.info.chunk_refs
        ),
    };
    log::append(tx, &entry, now_unix_ms)?;
    Ok(row.info)
}
