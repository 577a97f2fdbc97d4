//! Coordinator-requested backups (F18): an operator adds a schedule for a client's path;
//! the client's agent polls for due requests, runs the backup, seals the snapshot and
//! reports the result, which lands in the global backup log.

use serde::{Deserialize, Serialize};

use crate::ids::ClientId;

/// Add a schedule (admin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleAdd {
    /// The client that must run it.
    pub client: ClientId,
    /// Path on the client's machine.
    pub path: String,
    /// Interval in milliseconds.
    pub every_ms: u64,
}

/// A schedule record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Id (unique in the grid).
    pub id: u64,
    /// The client.
    pub client: ClientId,
    /// Path on the client.
    pub path: String,
    /// Interval in milliseconds.
    pub every_ms: u64,
    /// When the next run is due.
    pub next_due_unix_ms: u64,
    /// Last completed run: (finished at, snapshot name or error).
    pub last_result: Option<ScheduleResult>,
}

/// Outcome of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleResult {
    /// When it finished.
    pub finished_unix_ms: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// Snapshot name created (and sealed) by the run.
    pub snapshot: String,
    /// Summary or error message.
    pub detail: String,
}

/// List schedules (admin: all, or of one client).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleList {
    /// Only this client's.
    pub client: Option<ClientId>,
}

/// Answer to [`ScheduleList`] and [`ScheduleAdd`]/[`ScheduleRemove`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Schedules {
    /// Schedules by id.
    pub schedules: Vec<Schedule>,
}

/// Remove a schedule (admin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleRemove {
    /// Its id.
    pub id: u64,
}

/// A client agent asks for due backups. Due schedules are leased to the caller (not handed
/// out again until the lease runs out or a result is reported).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulePoll;

/// Work for an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequest {
    /// Schedule id.
    pub schedule: u64,
    /// Path to back up.
    pub path: String,
    /// Snapshot name to create and seal.
    pub snapshot: String,
    /// Previous snapshot of the same schedule, for an incremental backup.
    pub from: Option<String>,
}

/// Answer to [`SchedulePoll`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupRequests {
    /// Due requests (possibly none).
    pub requests: Vec<BackupRequest>,
}

/// An agent reports a finished run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleReport {
    /// Schedule id.
    pub schedule: u64,
    /// Outcome.
    pub result: ScheduleResult,
}
