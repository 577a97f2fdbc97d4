//! Helpers shared by the tests that drive an `FsCore` directly.

use gridback_fs::core::FsCore;
use gridback_fs::core::namespace::Owner;

/// The owner every test file gets.
pub const ROOT_OWNER: Owner = Owner { uid: 0, gid: 0 };

/// Create `name` in `dir` (mode 0644), write `data`, close it; returns its inode.
pub async fn write_closed(core: &FsCore, dir: u64, name: &str, data: &[u8]) -> u64 {
    let (attr, fh) = core
        .create(dir, name.as_bytes(), 0o644, ROOT_OWNER, false)
        .await
        .unwrap();
    core.write(fh, 0, data).await.unwrap();
    core.flush(fh).await.unwrap();
    core.release(fh).await.unwrap();
    attr.ino
}

/// The whole content of `ino`, read through a fresh handle.
pub async fn read_all(core: &FsCore, ino: u64) -> Vec<u8> {
    let fh = core.open(ino, false, false).await.unwrap();
    let mut out = Vec::new();
    loop {
        let d = core.read(fh, out.len() as u64, 1 << 20).await.unwrap();
        if d.is_empty() {
            break;
        }
        out.extend_from_slice(&d);
    }
    core.release(fh).await.unwrap();
    out
}
