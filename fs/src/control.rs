//! The mount's control socket (`<state_dir>/control.sock`): how `gridback snapshot seal` and
//! `gridback snapshot create` reach a running mount, which owns the local metadata. One JSON
//! request line, one JSON answer line per connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::core::namespace::Owner;
use crate::core::{CacheStats, FsCore, WriteBackStatus};

/// Largest request line accepted.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A request to the mount.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Is the mount alive?
    Ping,
    /// Seal a snapshot.
    Seal {
        /// Name.
        name: String,
        /// Seal even if files are open for writing.
        force: bool,
    },
    /// Open a snapshot, optionally as a clone.
    Create {
        /// Name.
        name: String,
        /// Snapshot to clone.
        from: Option<String>,
    },
    /// What the mount's chunk cache has done since it started.
    Stats,
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlResponse {
    /// Success.
    pub ok: bool,
    /// What happened, or why not.
    pub message: String,
    /// errno of the failure, if any.
    pub errno: Option<i32>,
    /// The answer to [`ControlRequest::Stats`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<CacheStats>,
    /// With [`ControlRequest::Stats`]: files closed but not yet on the grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_back: Option<WriteBackStatus>,
}

impl ControlResponse {
    fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: message.into(),
            errno: None,
            stats: None,
            write_back: None,
        }
    }

    fn failed(message: impl Into<String>, errno: i32) -> Self {
        Self {
            ok: false,
            message: message.into(),
            errno: Some(errno),
            stats: None,
            write_back: None,
        }
    }
}

/// Path of the control socket for a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Serve the control socket until `shutdown`.
pub async fn serve(
    core: Arc<FsCore>,
    path: PathBuf,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = shutdown.cancelled() => break,
        };
        let core = core.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(core, stream).await {
                tracing::warn!(error = %e, "control request failed");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn handle(core: Arc<FsCore>, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST_BYTES as u64));
    reader.read_line(&mut line).await?;
    let answer = match serde_json::from_str::<ControlRequest>(&line) {
        Err(e) => ControlResponse::failed(format!("bad request: {e}"), libc::EINVAL),
        Ok(ControlRequest::Ping) => ControlResponse::ok("pong"),
        Ok(ControlRequest::Seal { name, force }) => match core.seal(&name, force).await {
            Ok(r) => ControlResponse::ok(format!(
                "sealed {} ({} entries, tree {} bytes)",
                r.name, r.entries, r.tree_bytes
            )),
            Err(e) => ControlResponse::failed(e.to_string(), e.errno()),
        },
        Ok(ControlRequest::Create { name, from }) => {
            match core
                .create_snapshot(&name, from.as_deref(), 0o755, Owner { uid: 0, gid: 0 })
                .await
            {
                Ok(_) => ControlResponse::ok(format!("opened {name}")),
                Err(e) => ControlResponse::failed(e.to_string(), e.errno()),
            }
        }
        Ok(ControlRequest::Stats) => ControlResponse {
            stats: Some(core.cache().stats()),
            write_back: Some(core.write_back_status()),
            ..ControlResponse::ok("stats")
        },
    };
    let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

/// Send one request to a running mount. `Ok(None)` when no mount is listening.
pub async fn request(
    state_dir: &Path,
    req: &ControlRequest,
) -> std::io::Result<Option<ControlResponse>> {
    let stream = match UnixStream::connect(socket_path(state_dir)).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.shutdown().await?;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(std::io::Error::other)
}
