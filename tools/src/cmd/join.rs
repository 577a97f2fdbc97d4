//! `gridback join`: become a client of a grid.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use gridback_fs::config::ClientConfig;
use gridback_fs::keys::ClientKeys;

use crate::cli::JoinArgs;

/// `gridback join`.
pub async fn run(a: JoinArgs) -> Result<ExitCode> {
    if a.write_config.exists() {
        bail!(
            "{} already exists; refusing to overwrite a client configuration",
            a.write_config.display()
        );
    }
    std::fs::create_dir_all(&a.state_dir)?;
    let state_dir = a.state_dir.canonicalize()?;
    let token = std::fs::read_to_string(&a.token_file)
        .with_context(|| format!("cannot read the join token {}", a.token_file.display()))?;
    let mut cfg = ClientConfig::new(a.coordinator.clone(), state_dir.clone());
    let label = hostname();
    let id =
        gridback_fs::join::join_client(&a.coordinator, &a.ca, token.trim(), &cfg.tls_dir(), &label)
            .await
            .context("joining the grid failed")?;
    let keys = match &a.domain_from {
        Some(p) => ClientKeys::with_domain(ClientKeys::load(p)?.domain),
        None => ClientKeys::generate(),
    };
    cfg.key_file = Some(state_dir.join("keys.toml"));
    keys.save(&cfg.key_file())?;
    std::fs::write(&a.write_config, cfg.to_toml())
        .with_context(|| format!("cannot write {}", a.write_config.display()))?;
    println!("joined as client {id}");
    println!("config: {}", a.write_config.display());
    println!(
        "keys:   {} (your recovery key: keep a private copy)",
        cfg.key_file().display()
    );
    Ok(ExitCode::SUCCESS)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "client".into())
}
