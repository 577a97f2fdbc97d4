//! `gridback restore SNAPSHOT[/PATH] DEST`: write a sealed snapshot out, without the mount.

use std::process::ExitCode;

use anyhow::{Context, Result};
use gridback_fs::client::GridClient;
use gridback_fs::config::ClientConfig;
use gridback_fs::restore::{RestoreOptions, RestoreSummary, restore};
use gridback_fs::tree::MasterKeyCipher;
use gridback_proto::units::format_size;

use crate::cli::RestoreArgs;

/// The one-line JSON summary.
pub fn summary_json(s: &RestoreSummary) -> Result<String> {
    let mut v = serde_json::to_value(s)?;
    v["mb_per_s"] = serde_json::json!(s.mb_per_s());
    Ok(serde_json::to_string(&v)?)
}

/// `gridback restore`.
pub async fn run(args: RestoreArgs) -> Result<ExitCode> {
    let cfg = ClientConfig::load(&args.config.config)?;
    let grid = GridClient::connect_for(&cfg, "restore")
        .await
        .with_context(|| format!("cannot reach the grid at {}", cfg.coordinator_addr))?;
    let cipher = MasterKeyCipher::new(grid.keys());
    let opts = RestoreOptions {
        overwrite: args.overwrite,
        ..RestoreOptions::default()
    };
    let (progress, bar) = super::progress::for_terminal();
    let result = restore(&grid, &cipher, &args.source, &args.dest, &opts, progress).await;
    if let Some(bar) = bar {
        bar.finish();
    }
    grid.close();
    let s = result.with_context(|| {
        format!(
            "restore of {} into {} failed",
            args.source,
            args.dest.display()
        )
    })?;
    if args.json {
        println!("{}", summary_json(&s)?);
    } else {
        println!(
            "restored {}{}{} into {}: {} files, {} dirs, {} symlinks, {} ({} kept), {:.1}s, {:.1} MB/s",
            s.snapshot,
            if s.path.is_empty() { "" } else { "/" },
            s.path,
            args.dest.display(),
            s.files,
            s.dirs,
            s.symlinks,
            format_size(s.bytes),
            s.skipped_existing,
            s.seconds,
            s.mb_per_s()
        );
    }
    if s.warnings > 0 {
        eprintln!(
            "gridback: {} attributes could not be set (see the log)",
            s.warnings
        );
    }
    Ok(ExitCode::SUCCESS)
}
