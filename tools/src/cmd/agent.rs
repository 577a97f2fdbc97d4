//! `gridback agent`: the client's backup manager (F18). It asks the coordinator for
//! requested backups, runs each through the same pipeline as `gridback backup`, seals the
//! snapshot and reports the result, which the coordinator writes to the global backup log.
//! The agent keeps no state of its own: the schedule, its lease and its last result live
//! at the coordinator, so a restarted agent simply asks again.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gridback_fs::backup::{BackupOptions, backup};
use gridback_fs::client::GridClient;
use gridback_fs::config::ClientConfig;
use gridback_fs::progress::NoProgress;
use gridback_fs::tree::MasterKeyCipher;
use gridback_proto::now_unix_ms;
use gridback_proto::schedule_api::{BackupRequest, SchedulePoll, ScheduleReport, ScheduleResult};
use gridback_proto::units::{format_size, parse_duration};
use tracing::{Instrument, error, info, info_span, warn};

use crate::cli::AgentArgs;

/// Longest error text reported to the coordinator (the log keeps it readable).
const MAX_DETAIL: usize = 400;
/// Wait after a failed poll before asking again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Run one requested backup and describe the outcome.
async fn run_one(grid: &GridClient, req: &BackupRequest) -> ScheduleResult {
    let cipher = MasterKeyCipher::new(grid.keys());
    let opts = BackupOptions {
        from: req.from.clone(),
        ..BackupOptions::new(req.snapshot.clone())
    };
    let r = backup(
        grid,
        &cipher,
        Path::new(&req.path),
        &opts,
        Arc::new(NoProgress),
    )
    .await;
    let (ok, detail) = match r {
        Ok(s) => {
            info!(snapshot = %s.snapshot, files = s.files, bytes = s.bytes, uploaded = s.uploaded_bytes, "requested backup sealed");
            (
                true,
                format!(
                    "{} files, {} ({} uploaded), {} unchanged, {:.1}s",
                    s.files,
                    format_size(s.bytes),
                    format_size(s.uploaded_bytes),
                    s.skipped_unchanged,
                    s.seconds
                ),
            )
        }
        Err(e) => {
            let mut msg = format!("{:#}", anyhow::Error::new(e));
            error!(snapshot = %req.snapshot, path = %req.path, error = %msg, "requested backup failed");
            if msg.len() > MAX_DETAIL {
                let mut end = MAX_DETAIL;
                while !msg.is_char_boundary(end) {
                    end -= 1;
                }
                msg.truncate(end);
            }
            (false, msg)
        }
    };
    ScheduleResult {
        finished_unix_ms: now_unix_ms(),
        ok,
        snapshot: req.snapshot.clone(),
        detail,
    }
}

/// Ask once and run what is due; the number of requests handled.
async fn poll_once(grid: &GridClient) -> Result<usize> {
    let due = grid
        .coordinator()
        .call(SchedulePoll)
        .await
        .context("cannot ask the coordinator for requested backups")?;
    let n = due.requests.len();
    for req in due.requests {
        let span = info_span!("requested_backup", schedule = req.schedule, path = %req.path);
        let result = run_one(grid, &req).instrument(span).await;
        grid.coordinator()
            .call(ScheduleReport {
                schedule: req.schedule,
                result,
            })
            .await
            .with_context(|| {
                format!(
                    "cannot report the result of schedule {} to the coordinator",
                    req.schedule
                )
            })?;
    }
    Ok(n)
}

/// `gridback agent`.
pub async fn run(args: AgentArgs, stop: &super::StopSignal) -> Result<ExitCode> {
    let every = parse_duration(&args.poll).context("--poll")?;
    let cfg = ClientConfig::load(&args.config.config)?;
    let grid = GridClient::connect_for(&cfg, "agent")
        .await
        .with_context(|| format!("cannot reach the grid at {}", cfg.coordinator_addr))?;
    info!(client = %grid.client_id(), every = ?every, "agent started");
    if args.once {
        let r = poll_once(&grid).await;
        grid.close();
        let n = r?;
        println!("{n} requested backups handled");
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let wait = match poll_once(&grid).await {
            Ok(_) => every,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "agent poll failed; retrying");
                RETRY_AFTER.max(every)
            }
        };
        tokio::select! {
            _ = stop.wait() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    info!("agent stopping");
    grid.close();
    Ok(ExitCode::SUCCESS)
}
