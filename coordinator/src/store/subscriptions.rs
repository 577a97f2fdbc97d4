//! Subscriptions (F15) and usage against the source storage allocation (F16).

use gridback_proto::ClientId;
use gridback_proto::subscription::Usage;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::records::{decode, encode};
use super::redb_store::{SUBSCRIPTIONS, USAGE};
use super::{StoreError, SubscriptionRecord};

pub(super) fn get(
    tx: &ReadTransaction,
    client: &ClientId,
) -> Result<Option<SubscriptionRecord>, StoreError> {
    let t = tx.open_table(SUBSCRIPTIONS)?;
    t.get(client.as_bytes())?
        .map(|v| decode("subscriptions", v.value()))
        .transpose()
}

pub(super) fn put(
    tx: &WriteTransaction,
    client: &ClientId,
    rec: &SubscriptionRecord,
) -> Result<(), StoreError> {
    let mut t = tx.open_table(SUBSCRIPTIONS)?;
    t.insert(client.as_bytes(), encode(rec).as_slice())?;
    Ok(())
}

/// A client's usage (zero when it never stored anything).
pub(super) fn usage(
    t: &impl ReadableTable<[u8; 16], &'static [u8]>,
    client: &ClientId,
) -> Result<Usage, StoreError> {
    Ok(t.get(client.as_bytes())?
        .map(|v| decode("usage", v.value()))
        .transpose()?
        .unwrap_or_default())
}

pub(super) fn read_usage(tx: &ReadTransaction, client: &ClientId) -> Result<Usage, StoreError> {
    usage(&tx.open_table(USAGE)?, client)
}

/// Add to a client's usage inside a larger transaction.
pub(super) fn add_usage(
    tx: &WriteTransaction,
    client: &ClientId,
    delta: Usage,
) -> Result<Usage, StoreError> {
    let mut t = tx.open_table(USAGE)?;
    let mut u = usage(&t, client)?;
    u.charged_bytes = u.charged_bytes.saturating_add(delta.charged_bytes);
    u.chunk_count = u.chunk_count.saturating_add(delta.chunk_count);
    u.uploaded_packet_bytes = u
        .uploaded_packet_bytes
        .saturating_add(delta.uploaded_packet_bytes);
    t.insert(client.as_bytes(), encode(&u).as_slice())?;
    Ok(u)
}
