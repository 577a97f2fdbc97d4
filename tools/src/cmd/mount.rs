//! `gridback mount`: the FUSE mount in the foreground, with the control socket.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gridback_fs::client::GridClient;
use gridback_fs::config::ClientConfig;
use gridback_fs::core::{CoreConfig, FsCore};
use gridback_fs::keys::ClientKeys;
use gridback_fs::tree::MasterKeyCipher;
use tokio_util::sync::CancellationToken;

use crate::cli::MountArgs;

/// How long the unmount waits for pending uploads without progress before it leaves them
/// to the next mount (they stay in the state directory).
const UNMOUNT_PATIENCE: Duration = Duration::from_secs(30);

/// Open the filesystem core for a client configuration.
pub async fn open_core(cfg: &ClientConfig) -> Result<Arc<FsCore>> {
    let keys = ClientKeys::load(&cfg.key_file())
        .with_context(|| format!("cannot load client keys from {}", cfg.key_file().display()))?;
    let grid = GridClient::connect(cfg)
        .await
        .with_context(|| format!("cannot reach the coordinator at {}", cfg.coordinator_addr))?;
    let core_cfg = CoreConfig {
        cache_bytes: cfg.mount.cache_size.0 as usize,
        readahead_chunks: cfg.mount.readahead_chunks as usize,
    };
    let core = FsCore::new(
        &cfg.state_dir,
        Arc::new(grid),
        Arc::new(MasterKeyCipher::new(&keys)),
        core_cfg,
    )
    .with_context(|| format!("cannot open the local state in {}", cfg.state_dir.display()))?;
    Ok(Arc::new(core))
}

/// `gridback mount`.
pub async fn run(args: MountArgs, stop: &super::StopSignal) -> Result<ExitCode> {
    let cfg = ClientConfig::load(&args.config.config)?;
    super::local::check_mountpoint(&args.mountpoint)?;
    let core = open_core(&cfg).await?;
    core.start_write_back();
    core.sync_snapshots()
        .await
        .context("cannot list snapshots at the coordinator")?;
    let session = gridback_fs::fuse::mount(
        core.clone(),
        &args.mountpoint,
        tokio::runtime::Handle::current(),
        cfg.mount.fuse_threads,
    )?;
    let shutdown = CancellationToken::new();
    let sock = gridback_fs::control::socket_path(&cfg.state_dir);
    let control = tokio::spawn(gridback_fs::control::serve(
        core.clone(),
        sock,
        shutdown.clone(),
    ));
    tracing::info!(mountpoint = %args.mountpoint.display(), "mounted");
    println!("mounted at {}", args.mountpoint.display());
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if session.guard.is_finished() {
            tracing::warn!("the filesystem was unmounted from outside");
            break;
        }
    }
    shutdown.cancel();
    let _ = control.await;
    tracing::info!("unmounting");
    tokio::task::spawn_blocking(move || session.umount_and_join())
        .await?
        .context("unmount failed")?;
    // Files closed just before the unmount may still be on their way to the grid.
    core.drain_write_back(UNMOUNT_PATIENCE).await;
    Ok(ExitCode::SUCCESS)
}
