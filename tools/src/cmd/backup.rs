//! `gridback backup PATH --snapshot NAME`: a scripted backup without the mount.

use std::process::ExitCode;

use anyhow::{Context, Result};
use gridback_fs::backup::{BackupOptions, BackupSummary, backup};
use gridback_fs::client::GridClient;
use gridback_fs::config::ClientConfig;
use gridback_fs::tree::MasterKeyCipher;
use gridback_proto::units::format_size;

use crate::cli::BackupArgs;

/// The one-line JSON summary.
pub fn summary_json(s: &BackupSummary) -> Result<String> {
    let mut v = serde_json::to_value(s)?;
    v["mb_per_s"] = serde_json::json!(s.mb_per_s());
    Ok(serde_json::to_string(&v)?)
}

/// `gridback backup`.
pub async fn run(args: BackupArgs) -> Result<ExitCode> {
    let cfg = ClientConfig::load(&args.config.config)?;
    let grid = GridClient::connect_for(&cfg, "backup")
        .await
        .with_context(|| format!("cannot reach the grid at {}", cfg.coordinator_addr))?;
    let cipher = MasterKeyCipher::new(grid.keys());
    let opts = BackupOptions {
        from: args.from.clone(),
        exclude: args.exclude.clone(),
        walk_threads: usize::from(args.walk_threads),
        ..BackupOptions::new(args.snapshot.clone())
    };
    let (progress, bar) = super::progress::for_terminal();
    let result = backup(&grid, &cipher, &args.path, &opts, progress).await;
    if let Some(bar) = bar {
        bar.finish();
    }
    grid.close();
    let s = result.with_context(|| {
        format!(
            "backup of {} into {:?} failed",
            args.path.display(),
            args.snapshot
        )
    })?;
    if args.json {
        println!("{}", summary_json(&s)?);
    } else {
        println!(
            "sealed {}: {} files, {} dirs, {} symlinks, {} ({} new, {} uploaded), {} unchanged, {:.1}s, {:.1} MB/s",
            s.snapshot,
            s.files,
            s.dirs,
            s.symlinks,
            format_size(s.bytes),
            format_size(s.new_bytes),
            format_size(s.uploaded_bytes),
            s.skipped_unchanged,
            s.seconds,
            s.mb_per_s()
        );
    }
    if s.warnings > 0 {
        eprintln!(
            "gridback: {} entries could not be read and were left out (see the log)",
            s.warnings
        );
    }
    Ok(ExitCode::SUCCESS)
}
