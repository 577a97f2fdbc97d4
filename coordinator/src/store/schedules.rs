//! Coordinator-requested backups (F18): schedule records, leases and results.

use gridback_proto::ClientId;
use gridback_proto::schedule_api::{Schedule, ScheduleResult};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::records::{decode, encode};
use super::redb_store::{COUNTER_SCHEDULE_ID, COUNTERS, SCHEDULES};
use super::{ScheduleRecord, StoreError};

fn not_found(id: u64) -> StoreError {
    StoreError::NotFound(format!("schedule {id} does not exist"))
}

pub(super) fn add(
    tx: &WriteTransaction,
    client: &ClientId,
    path: &str,
    every_ms: u64,
    now_unix_ms: u64,
) -> Result<Schedule, StoreError> {
    let id = {
        let mut c = tx.open_table(COUNTERS)?;
        let id = c.get(COUNTER_SCHEDULE_ID)?.map_or(0, |v| v.value()) + 1;
        c.insert(COUNTER_SCHEDULE_ID, id)?;
        id
    };
    let schedule = Schedule {
        id,
        client: *client,
        path: path.to_string(),
        every_ms,
        // The first run is due at once.
        next_due_unix_ms: now_unix_ms,
        last_result: None,
    };
    let rec = ScheduleRecord {
        schedule: schedule.clone(),
        leased_until_unix_ms: 0,
        last_ok_snapshot: None,
    };
    tx.open_table(SCHEDULES)?
        .insert(id, encode(&rec).as_slice())?;
    Ok(schedule)
}

/// Every schedule, or one client's, by id.
pub(super) fn list(
    tx: &ReadTransaction,
    client: Option<&ClientId>,
) -> Result<Vec<ScheduleRecord>, StoreError> {
    let t = tx.open_table(SCHEDULES)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (_, v) = row?;
        let rec: ScheduleRecord = decode("schedules", v.value())?;
        if client.is_none_or(|c| *c == rec.schedule.client) {
            out.push(rec);
        }
    }
    Ok(out)
}

pub(super) fn remove(tx: &WriteTransaction, id: u64) -> Result<Schedule, StoreError> {
    let mut t = tx.open_table(SCHEDULES)?;
    let old = t.remove(id)?.ok_or_else(|| not_found(id))?;
    Ok(decode::<ScheduleRecord>("schedules", old.value())?.schedule)
}

/// Lease every due, unleased schedule of `client` until `now + lease_ms`.
pub(super) fn lease(
    tx: &WriteTransaction,
    client: &ClientId,
    now_unix_ms: u64,
    lease_ms: u64,
) -> Result<Vec<ScheduleRecord>, StoreError> {
    let mut t = tx.open_table(SCHEDULES)?;
    let mut due = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        let rec: ScheduleRecord = decode("schedules", v.value())?;
        if rec.schedule.client == *client
            && rec.schedule.next_due_unix_ms <= now_unix_ms
            && rec.leased_until_unix_ms <= now_unix_ms
        {
            due.push((k.value(), rec));
        }
    }
    let mut out = Vec::with_capacity(due.len());
    for (id, mut rec) in due {
        rec.leased_until_unix_ms = now_unix_ms.saturating_add(lease_ms);
        t.insert(id, encode(&rec).as_slice())?;
        out.push(rec);
    }
    Ok(out)
}

/// Record a finished run: the result, the next due time and the lease released.
pub(super) fn report(
    tx: &WriteTransaction,
    client: &ClientId,
    id: u64,
    result: &ScheduleResult,
) -> Result<Schedule, StoreError> {
    let mut t = tx.open_table(SCHEDULES)?;
    let mut rec: ScheduleRecord = match t.get(id)? {
        Some(v) => decode("schedules", v.value())?,
        None => return Err(not_found(id)),
    };
    if rec.schedule.client != *client {
        return Err(not_found(id));
    }
    rec.schedule.next_due_unix_ms = result
        .finished_unix_ms
        .saturating_add(rec.schedule.every_ms);
    rec.schedule.last_result = Some(result.clone());
    rec.leased_until_unix_ms = 0;
    if result.ok {
        rec.last_ok_snapshot = Some(result.snapshot.clone());
    }
    t.insert(id, encode(&rec).as_slice())?;
    Ok(rec.schedule)
}
