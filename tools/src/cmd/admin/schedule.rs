//! `admin schedule add|list|remove`: backups the coordinator requests from a client (F18).

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use gridback_proto::ClientId;
use gridback_proto::schedule_api::{ScheduleAdd, ScheduleList, ScheduleRemove, Schedules};
use gridback_proto::units::parse_duration;

use super::table::Table;
use super::when::format_instant;
use super::{Admin, parse_id, print_json};
use crate::cli::ScheduleCmd;

/// Shortest interval accepted: more often than this is a mistake, not a backup policy.
const MIN_EVERY_MS: u64 = 10_000;

fn print(s: &Schedules, json: bool) -> Result<ExitCode> {
    if json {
        return print_json(&s.schedules);
    }
    let mut t = Table::new(&["ID", "CLIENT", "PATH", "EVERY", "NEXT DUE", "LAST RESULT"]);
    for s in &s.schedules {
        let last = s.last_result.as_ref().map_or_else(
            || "-".to_string(),
            |r| {
                format!(
                    "{} {} {} ({})",
                    if r.ok { "ok" } else { "FAILED" },
                    format_instant(r.finished_unix_ms),
                    r.snapshot,
                    r.detail
                )
            },
        );
        t.row(vec![
            s.id.to_string(),
            s.client.to_string(),
            s.path.clone(),
            format!("{}s", s.every_ms / 1000),
            format_instant(s.next_due_unix_ms),
            last,
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}

/// A checked schedule subcommand.
#[derive(Debug)]
pub enum ScheduleRequest {
    /// `schedule add`.
    Add(ScheduleAdd),
    /// `schedule list`.
    List(ScheduleList),
    /// `schedule remove`.
    Remove(ScheduleRemove),
}

/// Check a schedule subcommand's arguments.
pub fn prepare(cmd: ScheduleCmd) -> Result<ScheduleRequest> {
    Ok(match cmd {
        ScheduleCmd::Add {
            client,
            path,
            every,
        } => {
            let client: ClientId = parse_id("client", &client).context("--client")?;
            let every_ms = parse_duration(&every).context("--every")?.as_millis() as u64;
            if every_ms < MIN_EVERY_MS {
                bail!("--every must be at least 10s");
            }
            if !path.starts_with('/') {
                bail!("--path must be absolute (it is a path on the client's machine)");
            }
            ScheduleRequest::Add(ScheduleAdd {
                client,
                path,
                every_ms,
            })
        }
        ScheduleCmd::List { client } => ScheduleRequest::List(ScheduleList {
            client: client
                .map(|c| parse_id::<ClientId>("client", &c))
                .transpose()?,
        }),
        ScheduleCmd::Remove { id } => ScheduleRequest::Remove(ScheduleRemove { id }),
    })
}

/// Run a schedule subcommand checked by [`prepare`].
pub async fn run(admin: &Admin, req: ScheduleRequest, json: bool) -> Result<ExitCode> {
    let s = match req {
        ScheduleRequest::Add(a) => admin.call(a).await?,
        ScheduleRequest::List(l) => admin.call(l).await?,
        ScheduleRequest::Remove(r) => admin.call(r).await?,
    };
    print(&s, json)
}
