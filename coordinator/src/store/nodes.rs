//! Certificates and storage nodes: who may connect, and the target client profile.

use gridback_proto::coord_api::Role;
use gridback_proto::{CertFingerprint, NodeId};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::records::{decode, encode};
use super::redb_store::{CERTS, CLIENTS, NODES};
use super::{CertRecord, NewMember, NodeRecord, StoreError};

pub(super) fn cert(
    tx: &ReadTransaction,
    fp: &CertFingerprint,
) -> Result<Option<CertRecord>, StoreError> {
    let t = tx.open_table(CERTS)?;
    t.get(fp.as_bytes())?
        .map(|v| decode("certs", v.value()))
        .transpose()
}

/// Record a certificate and its member. Ids are random, so an existing id means a bug or a
/// forged replay: refuse rather than overwrite.
pub(super) fn register(
    tx: &WriteTransaction,
    fp: &CertFingerprint,
    member: &NewMember,
) -> Result<(), StoreError> {
    let mut certs = tx.open_table(CERTS)?;
    if certs.get(fp.as_bytes())?.is_some() {
        return Err(StoreError::Conflict(format!(
            "certificate {fp} is already registered"
        )));
    }
    let (role, id, value) = match member {
        NewMember::Node(id, rec) => (Role::Node, id.0, encode(rec)),
        NewMember::Client(id, rec) => (Role::Client, id.0, encode(rec)),
    };
    debug_assert!(role != Role::Admin, "admins are not members");
    certs.insert(fp.as_bytes(), encode(&CertRecord { role, id }).as_slice())?;
    let mut t = tx.open_table(if role == Role::Node { NODES } else { CLIENTS })?;
    if t.insert(id, value.as_slice())?.is_some() {
        return Err(StoreError::Conflict(format!(
            "{role:?} id {} is taken",
            hex::encode(id)
        )));
    }
    Ok(())
}

/// Every certificate with its holder.
pub(super) fn certs(
    tx: &ReadTransaction,
) -> Result<Vec<(CertFingerprint, CertRecord)>, StoreError> {
    let t = tx.open_table(CERTS)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        out.push((CertFingerprint(k.value()), decode("certs", v.value())?));
    }
    Ok(out)
}

/// Record a certificate that has no member record (the admin's); true when it was new.
pub(super) fn ensure_cert(
    tx: &WriteTransaction,
    fp: &CertFingerprint,
    rec: &CertRecord,
) -> Result<bool, StoreError> {
    let mut certs = tx.open_table(CERTS)?;
    if certs.get(fp.as_bytes())?.is_some() {
        return Ok(false);
    }
    certs.insert(fp.as_bytes(), encode(rec).as_slice())?;
    Ok(true)
}

pub(super) fn node(tx: &ReadTransaction, id: &NodeId) -> Result<Option<NodeRecord>, StoreError> {
    let t = tx.open_table(NODES)?;
    t.get(id.as_bytes())?
        .map(|v| decode("nodes", v.value()))
        .transpose()
}

pub(super) fn all(tx: &ReadTransaction) -> Result<Vec<(NodeId, NodeRecord)>, StoreError> {
    let t = tx.open_table(NODES)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        out.push((NodeId(k.value()), decode("nodes", v.value())?));
    }
    Ok(out)
}

pub(super) fn put(tx: &WriteTransaction, id: &NodeId, rec: &NodeRecord) -> Result<(), StoreError> {
    let mut t = tx.open_table(NODES)?;
    t.insert(id.as_bytes(), encode(rec).as_slice())?;
    Ok(())
}
