//! Locations and operator overrides of nodes and clients (F12, F13, F16), and the
//! cluster-wide proximity rules.

use gridback_proto::location::Proximity;
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use super::records::{decode, encode};
use super::redb_store::SETTINGS;
use super::{PlaceRecord, StoreError};

/// Settings key of the cluster-wide [`Proximity`].
const PROXIMITY_KEY: &str = "proximity";

/// Read one member's place from `table` (nodes or clients, by 16-byte id).
pub(super) fn get(
    tx: &ReadTransaction,
    table: TableDefinition<[u8; 16], &[u8]>,
    id: [u8; 16],
) -> Result<PlaceRecord, StoreError> {
    let t = tx.open_table(table)?;
    Ok(t.get(id)?
        .map(|v| decode("places", v.value()))
        .transpose()?
        .unwrap_or_default())
}

/// Every place in `table`.
pub(super) fn all(
    tx: &ReadTransaction,
    table: TableDefinition<[u8; 16], &[u8]>,
) -> Result<Vec<([u8; 16], PlaceRecord)>, StoreError> {
    let t = tx.open_table(table)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        out.push((k.value(), decode("places", v.value())?));
    }
    Ok(out)
}

pub(super) fn put(
    tx: &WriteTransaction,
    table: TableDefinition<[u8; 16], &[u8]>,
    id: [u8; 16],
    rec: &PlaceRecord,
) -> Result<(), StoreError> {
    let mut t = tx.open_table(table)?;
    t.insert(id, encode(rec).as_slice())?;
    Ok(())
}

/// The cluster-wide proximity rules (none set: unbounded).
pub(super) fn proximity(tx: &ReadTransaction) -> Result<Proximity, StoreError> {
    let t = tx.open_table(SETTINGS)?;
    Ok(t.get(PROXIMITY_KEY)?
        .map(|v| decode("settings", v.value()))
        .transpose()?
        .unwrap_or_default())
}

pub(super) fn set_proximity(tx: &WriteTransaction, p: &Proximity) -> Result<(), StoreError> {
    let mut t = tx.open_table(SETTINGS)?;
    t.insert(PROXIMITY_KEY, encode(p).as_slice())?;
    Ok(())
}
