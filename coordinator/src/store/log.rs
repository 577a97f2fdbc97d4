//! The append-only global backup log.

use gridback_proto::coord_api::LogEntry;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::records::{decode, encode};
use super::redb_store::LOG;
use super::{NewLogEntry, StoreError};

/// Largest page of log entries returned by one query, whatever the caller asks: keeps one
/// answer well under the control-frame limit.
pub const MAX_LOG_PAGE: u32 = 10_000;

/// Append an entry inside a larger transaction; returns its sequence number (from 1).
pub(super) fn append(
    tx: &WriteTransaction,
    entry: &NewLogEntry,
    now_unix_ms: u64,
) -> Result<u64, StoreError> {
    let mut t = tx.open_table(LOG)?;
    let seq = match t.last()? {
        Some((k, _)) => k.value() + 1,
        None => 1,
    };
    let full = LogEntry {
        seq,
        at_unix_ms: now_unix_ms,
        client: entry.client,
        node: entry.node,
        kind: entry.kind.to_string(),
        detail: entry.detail.clone(),
    };
    t.insert(seq, encode(&full).as_slice())?;
    Ok(seq)
}

pub(super) fn since(
    tx: &ReadTransaction,
    since_seq: u64,
    since_unix_ms: Option<u64>,
    limit: u32,
) -> Result<Vec<LogEntry>, StoreError> {
    let t = tx.open_table(LOG)?;
    let max = limit.min(MAX_LOG_PAGE) as usize;
    let mut out = Vec::new();
    for row in t.range(since_seq..)? {
        if out.len() >= max {
            break;
        }
        let (_, v) = row?;
        let e: LogEntry = decode("log", v.value())?;
        // Entries are appended in time order, but a clock step back could interleave them:
        // filter each rather than searching for the first.
        if since_unix_ms.is_none_or(|t| e.at_unix_ms >= t) {
            out.push(e);
        }
    }
    Ok(out)
}
