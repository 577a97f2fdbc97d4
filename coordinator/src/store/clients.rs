//! Source clients: the global client profile and the source client profile.

use gridback_proto::ClientId;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::records::{decode, encode};
use super::redb_store::CLIENTS;
use super::{ClientRecord, StoreError};

pub(super) fn get(tx: &ReadTransaction, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
    let t = tx.open_table(CLIENTS)?;
    t.get(id.as_bytes())?
        .map(|v| decode("clients", v.value()))
        .transpose()
}

pub(super) fn all(tx: &ReadTransaction) -> Result<Vec<(ClientId, ClientRecord)>, StoreError> {
    let t = tx.open_table(CLIENTS)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        out.push((ClientId(k.value()), decode("clients", v.value())?));
    }
    Ok(out)
}

pub(super) fn put(
    tx: &WriteTransaction,
    id: &ClientId,
    rec: &ClientRecord,
) -> Result<(), StoreError> {
    let mut t = tx.open_table(CLIENTS)?;
    t.insert(id.as_bytes(), encode(rec).as_slice())?;
    Ok(())
}

/// Add `bytes` to a client's stored bytes inside a larger transaction.
pub(super) fn add_stored_bytes(
    tx: &WriteTransaction,
    id: &ClientId,
    bytes: u64,
) -> Result<(), StoreError> {
    if bytes == 0 {
        return Ok(());
    }
    let mut t = tx.open_table(CLIENTS)?;
    let mut rec: ClientRecord = match t.get(id.as_bytes())? {
        Some(v) => decode("clients", v.value())?,
        None => {
            return Err(StoreError::NotFound(format!(
                "client {id} is not registered"
            )));
        }
    };
    rec.stored_bytes = rec.stored_bytes.saturating_add(bytes);
    t.insert(id.as_bytes(), encode(&rec).as_slice())?;
    Ok(())
}
