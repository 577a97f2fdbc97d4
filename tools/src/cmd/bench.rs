//! `gridback bench`: the performance suite (written next).

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::BenchArgs;

/// `gridback bench`.
pub async fn run(_a: BenchArgs) -> Result<ExitCode> {
    anyhow::bail!("gridback bench is not available in this build")
}
