//! Coordinator-requested backups (F18): operators add and remove schedules, client agents poll
//! for due runs (leased so that two agents do not run the same one) and report results.

use gridback_proto::schedule_api::{
    BackupRequest, BackupRequests, ScheduleAdd, ScheduleList, ScheduleRemove, ScheduleReport,
    Schedules,
};
use gridback_proto::{ClientId, now_unix_ms};
use tracing::info;

use super::{Caller, Inner, Reply, bad_request, store_err, unauthorized};
use crate::store::NewLogEntry;

/// How long a handed-out run stays with its agent before it is handed out again: long enough
/// for a large backup to report, short enough that a crashed agent's run is retried soon.
pub const LEASE_MS: u64 = 10 * 60 * 1000;

/// Shortest interval accepted: a schedule is not a busy loop.
pub const MIN_EVERY_MS: u64 = 1000;

/// Longest path accepted (PATH_MAX on Linux).
const MAX_PATH_BYTES: usize = 4096;

/// `YYYYMMDDTHHMMSSZ` in UTC (days-from-civil inverted, proleptic Gregorian).
pub fn utc_stamp(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The snapshot name of one scheduled run.
pub fn run_snapshot_name(id: u64, unix_ms: u64) -> String {
    format!("sched-{id}-{}", utc_stamp(unix_ms))
}

impl Inner {
    pub(super) fn schedule_add(&self, r: ScheduleAdd) -> Reply<Schedules> {
        self.require_client(&r.client)?;
        if r.path.is_empty() || r.path.len() > MAX_PATH_BYTES || r.path.contains('\0') {
            return Err(bad_request(format!(
                "path must be 1-{MAX_PATH_BYTES} bytes without NUL"
            )));
        }
        if r.every_ms < MIN_EVERY_MS {
            return Err(bad_request(format!(
                "every must be at least {MIN_EVERY_MS} ms, got {} ms",
                r.every_ms
            )));
        }
        let entry = NewLogEntry {
            client: Some(r.client),
            node: None,
            kind: "schedule.add",
            detail: format!("path={} every={}ms", r.path, r.every_ms),
        };
        let s = self
            .store
            .schedule_add(&r.client, &r.path, r.every_ms, now_unix_ms(), &entry)
            .map_err(store_err)?;
        info!(id = s.id, client = %r.client, path = %r.path, "schedule added");
        Ok(Schedules { schedules: vec![s] })
    }

    pub(super) fn schedule_list(&self, caller: Caller, r: ScheduleList) -> Reply<Schedules> {
        let client: Option<ClientId> = match caller {
            Caller::Admin => r.client,
            Caller::Client { id, .. } => {
                if r.client.is_some_and(|c| c != id) {
                    return Err(unauthorized("a client may list only its own schedules"));
                }
                Some(id)
            }
            _ => {
                return Err(unauthorized(
                    "schedules are listed by the admin or a client",
                ));
            }
        };
        let schedules = self
            .store
            .schedules(client.as_ref())
            .map_err(store_err)?
            .into_iter()
            .map(|r| r.schedule)
            .collect();
        Ok(Schedules { schedules })
    }

    pub(super) fn schedule_remove(&self, r: ScheduleRemove) -> Reply<Schedules> {
        let entry = NewLogEntry {
            client: None,
            node: None,
            kind: "schedule.remove",
            detail: format!("id={}", r.id),
        };
        let s = self
            .store
            .schedule_remove(r.id, &entry)
            .map_err(store_err)?;
        info!(id = s.id, "schedule removed");
        Ok(Schedules { schedules: vec![s] })
    }

    pub(super) fn schedule_poll(&self, client: ClientId) -> Reply<BackupRequests> {
        let now = now_unix_ms();
        let leased = self
            .store
            .schedule_lease(&client, now, LEASE_MS)
            .map_err(store_err)?;
        let requests = leased
            .into_iter()
            .map(|r| BackupRequest {
                schedule: r.schedule.id,
                path: r.schedule.path,
                snapshot: run_snapshot_name(r.schedule.id, now),
                from: r.last_ok_snapshot,
            })
            .collect();
        Ok(BackupRequests { requests })
    }

    pub(super) fn schedule_report(&self, client: ClientId, r: ScheduleReport) -> Reply<Schedules> {
        super::snapshots::validate_name(&r.result.snapshot)?;
        let outcome = if r.result.ok { "ok" } else { "failed" };
        let entry = NewLogEntry {
            client: Some(client),
            node: None,
            kind: "backup.scheduled",
            detail: format!(
                "schedule={} snapshot={} {outcome}: {}",
                r.schedule, r.result.snapshot, r.result.detail
            ),
        };
        let s = self
            .store
            .schedule_report(&client, r.schedule, &r.result, &entry)
            .map_err(store_err)?;
        info!(id = s.id, client = %client, ok = r.result.ok, "scheduled backup reported");
        Ok(Schedules { schedules: vec![s] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        // 2026-11-25T17:36:24Z
        assert_eq!(utc_stamp(1_795_628_184_000), "20261125T173624Z");
        // Leap day.
        assert_eq!(utc_stamp(951_782_400_000), "20000229T000000Z");
        assert_eq!(run_snapshot_name(7, 0), "sched-7-19700101T000000Z");
    }
}
