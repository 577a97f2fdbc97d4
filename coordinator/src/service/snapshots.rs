//! Snapshot requests: create (optionally cloning another's references), list, get, seal.

use gridback_proto::ClientId;
use gridback_proto::coord_api::{
    SnapshotCreate, SnapshotInfo, SnapshotListing, SnapshotRecord, SnapshotSeal,
};
use gridback_proto::{ErrorCode, WireError, now_unix_ms};

use super::{Inner, Reply, bad_request, check_batch, store_err};

/// Longest snapshot name, as for a file name.
const MAX_NAME_BYTES: usize = 255;

/// A snapshot name is a directory name under `snapshots/`: 1 to 255 bytes, no `/`, no NUL,
/// not `.` or `..`.
pub(super) fn validate_name(name: &str) -> Reply<()> {
    let bad = |why: &str| {
        Err(bad_request(format!(
            "invalid snapshot name {name:?}: {why}"
        )))
    };
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return bad("must be 1 to 255 bytes");
    }
    if name.contains('/') || name.contains('\0') {
        return bad("must not contain '/' or NUL");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    Ok(())
}

impl Inner {
    pub(super) fn snapshot_create(
        &self,
        client: ClientId,
        s: SnapshotCreate,
    ) -> Reply<SnapshotInfo> {
        validate_name(&s.name)?;
        if let Some(from) = &s.from {
            validate_name(from)?;
        }
        let info = self
            .store
            .snapshot_create(&client, &s.name, s.from.as_deref(), now_unix_ms())
            .map_err(store_err)?;
        tracing::info!(client = %client, name = %s.name, from = ?s.from, "snapshot created");
        Ok(info)
    }

    pub(super) fn snapshot_list(&self, client: ClientId) -> Reply<SnapshotListing> {
        Ok(SnapshotListing {
            snapshots: self.store.snapshot_list(&client).map_err(store_err)?,
        })
    }

    pub(super) fn snapshot_get(
        &self,
        client: ClientId,
        s: gridback_proto::coord_api::SnapshotGet,
    ) -> Reply<SnapshotRecord> {
        validate_name(&s.name)?;
        let row = self
            .store
            .snapshot_get(&client, &s.name)
            .map_err(store_err)?
            .ok_or_else(|| {
                WireError::new(
                    ErrorCode::NotFound,
                    format!("snapshot {:?} does not exist", s.name),
                )
            })?;
        Ok(SnapshotRecord {
            info: row.info,
            tree: row.tree,
        })
    }

    pub(super) fn snapshot_seal(&self, client: ClientId, s: SnapshotSeal) -> Reply<SnapshotInfo> {
        validate_name(&s.name)?;
        check_batch("snapshot_seal tree", s.tree.len())?;
        let info = self
            .store
            .snapshot_seal(&client, &s.name, &s.tree, s.tree_bytes, now_unix_ms())
            .map_err(store_err)?;
        tracing::info!(client = %client, name = %s.name, "snapshot sealed");
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names() {
        for ok in ["a", "2026-11-25-home", "with space", &"x".repeat(255)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
        }
    }
}
