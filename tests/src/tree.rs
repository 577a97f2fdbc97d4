//! Directory trees for tests: generated with awkward names, compared byte for byte.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// A deterministic pseudo-random byte generator (xorshift), so test data needs no crate.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Fill a buffer.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Text that compresses like prose.
pub fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "grid", "back", "chunk", "node", "packet", "snapshot", "the", "of", "data", "zstd",
        "parity", "a", "\n",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[(rng.next_u64() % WORDS.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// Random bytes.
pub fn random(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// Build a tree under `root` with nested dirs, names with spaces and UTF-8, empty files,
/// symlinks (relative, absolute, dangling), text, random and one larger file of
/// `big_bytes`. Returns the marker string embedded in one file's content.
pub fn make_tree(root: &Path, seed: u64, big_bytes: usize) -> String {
    let mut rng = Rng::new(seed);
    let marker = format!("GRIDBACK-PLAINTEXT-MARKER-{seed:016x}");
    let dirs = [
        "docs",
        "docs/deep/er/still deeper",
        "photos 2026",
        "naïve ünïcødé ✓",
        "empty dir",
    ];
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("docs/readme.txt"),
        format!("hello {marker}\n").repeat(200),
    )
    .unwrap();
    std::fs::write(root.join("docs/empty"), b"").unwrap();
    std::fs::write(
        root.join("docs/deep/er/still deeper/notes.md"),
        text(&mut rng, 300_000),
    )
    .unwrap();
    std::fs::write(
        root.join("photos 2026/IMG 0001.raw"),
        random(&mut rng, 3_000_000),
    )
    .unwrap();
    std::fs::write(
        root.join("naïve ünïcødé ✓/файл с пробелами.txt"),
        text(&mut rng, 10_000),
    )
    .unwrap();
    std::fs::write(root.join("big.bin"), random(&mut rng, big_bytes)).unwrap();
    for i in 0..40 {
        std::fs::write(
            root.join("docs").join(format!("small {i:03}.txt")),
            text(&mut rng, (i * 97) % 5000),
        )
        .unwrap();
    }
    std::fs::set_permissions(
        root.join("docs/readme.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    symlink("docs/readme.txt", root.join("link to readme")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    symlink("../photos 2026", root.join("docs/photos")).unwrap();
    marker
}

/// What a tree entry is, for comparison.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// Directory with mode.
    Dir { mode: u32 },
    /// File with mode, size, mtime and BLAKE3 of content.
    File {
        mode: u32,
        size: u64,
        mtime: i64,
        mtime_nsec: i64,
        hash: String,
    },
    /// Symlink target.
    Symlink { target: PathBuf },
}

/// Walk a tree into a map of relative path → entry.
pub fn snapshot_of(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.file_type().is_symlink() {
            out.insert(
                rel,
                Entry::Symlink {
                    target: std::fs::read_link(&p).unwrap(),
                },
            );
        } else if m.is_dir() {
            out.insert(
                rel,
                Entry::Dir {
                    mode: m.mode() & 0o7777,
                },
            );
            walk(root, &p, out);
        } else {
            let data = std::fs::read(&p).unwrap();
            out.insert(
                rel,
                Entry::File {
                    mode: m.mode() & 0o7777,
                    size: m.len(),
                    mtime: m.mtime(),
                    mtime_nsec: m.mtime_nsec(),
                    hash: blake3::hash(&data).to_hex().to_string(),
                },
            );
        }
    }
}

/// Assert two trees are identical, naming the first difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let ta = snapshot_of(a);
    let tb = snapshot_of(b);
    for (k, va) in &ta {
        match tb.get(k) {
            None => panic!("{} is missing from {}", k.display(), b.display()),
            Some(vb) => assert_eq!(va, vb, "{} differs", k.display()),
        }
    }
    for k in tb.keys() {
        assert!(
            ta.contains_key(k),
            "{} is extra in {}",
            k.display(),
            b.display()
        );
    }
}

/// Whether [`assert_same_tree_and_attrs`] compares the access times of regular files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atime {
    /// Compare them: the source's atimes must not move while the test reads it (see
    /// [`pin_atimes`]).
    Compare,
    /// Leave them out.
    Ignore,
}

/// Everything a faithful copy keeps of an entry, for [`assert_same_tree_and_attrs`]: what
/// [`Entry`] holds plus owner, the entry's own mtime (`lstat`: a directory's or a symlink's
/// too), its `user.*` xattrs and, when asked, a regular file's atime.
#[derive(Debug, PartialEq, Eq)]
pub struct Attrs {
    /// Kind, mode, size, content or target.
    pub entry: Entry,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time in ns since the epoch (of the entry itself, never followed).
    pub mtime_ns: i128,
    /// Access time in ns of a regular file, with [`Atime::Compare`].
    pub atime_ns: Option<i128>,
    /// `user.*` extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn ns(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

/// The `user.*` xattrs of `path` (not following a symlink); none when the filesystem has
/// no xattrs.
pub fn user_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(n) = rustix::fs::llistxattr_query(path) else {
        return out;
    };
    let mut names = vec![0u8; n];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !name.starts_with(b"user.") {
            continue;
        }
        let key = std::ffi::OsStr::from_bytes(name);
        let len = rustix::fs::lgetxattr_query(path, key).unwrap();
        let mut v = vec![0u8; len];
        let len = rustix::fs::lgetxattr(path, key, &mut v[..]).unwrap();
        v.truncate(len);
        out.insert(name.to_vec(), v);
    }
    out
}

/// Walk a tree into relative path → [`Attrs`]; the root itself is the empty path. Each
/// entry is `lstat`ed before its content is read, so reading does not move the atime seen.
pub fn attrs_of(root: &Path, atime: Atime) -> BTreeMap<PathBuf, Attrs> {
    let mut out = BTreeMap::new();
    let root_meta = std::fs::symlink_metadata(root).unwrap();
    for (rel, m) in std::iter::once((PathBuf::new(), root_meta)).chain(metas(root)) {
        let p = root.join(&rel);
        let entry = if m.file_type().is_symlink() {
            Entry::Symlink {
                target: std::fs::read_link(&p).unwrap(),
            }
        } else if m.is_dir() {
            Entry::Dir {
                mode: m.mode() & 0o7777,
            }
        } else {
            Entry::File {
                mode: m.mode() & 0o7777,
                size: m.len(),
                mtime: m.mtime(),
                mtime_nsec: m.mtime_nsec(),
                hash: hash_path(&p),
            }
        };
        let atime_ns =
            (atime == Atime::Compare && m.is_file()).then(|| ns(m.atime(), m.atime_nsec()));
        out.insert(
            rel,
            Attrs {
                entry,
                uid: m.uid(),
                gid: m.gid(),
                mtime_ns: ns(m.mtime(), m.mtime_nsec()),
                atime_ns,
                xattrs: user_xattrs(&p),
            },
        );
    }
    out
}

/// `lstat` of every entry under `root` (relative paths, depth first), before any content
/// is read.
fn metas(root: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let is_dir = m.is_dir();
            out.push((p.strip_prefix(root).unwrap().to_path_buf(), m));
            if is_dir {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

fn hash_path(p: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(p).unwrap()).unwrap();
    h.finalize().to_hex().to_string()
}

/// Assert two trees are identical in names, kinds, bytes, link targets, modes, owners,
/// mtimes of every entry (directories and symlinks included, the roots too), `user.*`
/// xattrs, and with [`Atime::Compare`] the atimes of regular files; names the first
/// difference. What `gridback restore` and `cp -a` (as root) must both keep.
pub fn assert_same_tree_and_attrs(a: &Path, b: &Path, atime: Atime) {
    let ta = attrs_of(a, atime);
    let tb = attrs_of(b, atime);
    for (k, va) in &ta {
        match tb.get(k) {
            None => panic!("{} is missing from {}", k.display(), b.display()),
            Some(vb) => assert_eq!(
                va,
                vb,
                "{:?} differs ({} vs {})",
                k,
                a.display(),
                b.display()
            ),
        }
    }
    for k in tb.keys() {
        assert!(
            ta.contains_key(k),
            "{} is extra in {}",
            k.display(),
            b.display()
        );
    }
}

/// Give every regular file under `root` an atime an hour ahead, with nanoseconds, so that
/// reading it does not move it (`relatime` updates an atime only when it is not after the
/// mtime and the ctime, or is a day old) and atimes can be compared after copies.
pub fn pin_atimes(root: &Path) {
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 3600;
    for (i, (rel, m)) in metas(root).into_iter().enumerate() {
        if !m.is_file() {
            continue;
        }
        let atime = nix::sys::time::TimeSpec::new(ahead + i as i64, 123_456_789);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &root.join(rel),
            &atime,
            &nix::sys::time::TimeSpec::UTIME_OMIT,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

/// Whether any file under `dir` contains `needle` (in its bytes) or has it in its path.
pub fn tree_contains(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    for e in walkdir(dir) {
        if e.to_string_lossy()
            .as_bytes()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            return Some(e);
        }
        if e.is_file() {
            let data = std::fs::read(&e).unwrap_or_default();
            if data.windows(needle.len()).any(|w| w == needle) {
                return Some(e);
            }
        }
    }
    None
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// An entry reduced to what a model-based test can predict: kind, content, link target
/// (modes and times depend on when and how each side ran the operations).
fn content_only(e: &Entry) -> String {
    match e {
        Entry::Dir { .. } => "dir".to_string(),
        Entry::File { size, hash, .. } => format!("file size={size} blake3={hash}"),
        Entry::Symlink { target } => format!("symlink -> {}", target.display()),
    }
}

/// Assert two trees hold the same names, kinds, file bytes and link targets, ignoring modes
/// and times; names the first difference.
pub fn assert_same_content(a: &Path, b: &Path) {
    let ta: BTreeMap<_, _> = snapshot_of(a)
        .iter()
        .map(|(k, v)| (k.clone(), content_only(v)))
        .collect();
    let tb: BTreeMap<_, _> = snapshot_of(b)
        .iter()
        .map(|(k, v)| (k.clone(), content_only(v)))
        .collect();
    for (k, va) in &ta {
        match tb.get(k) {
            None => panic!("{} is missing from {}", k.display(), b.display()),
            Some(vb) => assert_eq!(va, vb, "{} differs", k.display()),
        }
    }
    for k in tb.keys() {
        assert!(
            ta.contains_key(k),
            "{} is extra in {}",
            k.display(),
            b.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;

    fn set_times(p: &Path, atime: TimeSpec, mtime: TimeSpec) {
        utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn mtime_of(p: &Path) -> TimeSpec {
        let m = std::fs::symlink_metadata(p).unwrap();
        TimeSpec::new(m.mtime(), m.mtime_nsec())
    }

    /// The strict comparison sees every attribute it claims to compare.
    #[test]
    fn strict_comparison_catches_each_attribute() {
        let work = tempfile::tempdir().unwrap();
        let (a, b) = (work.path().join("a"), work.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        make_tree(&a, 3, 1000);
        pin_atimes(&a);
        let fresh_copy = || {
            let _ = std::fs::remove_dir_all(&b);
            std::fs::create_dir(&b).unwrap();
            crate::local::cp_a(&a, &b);
        };
        let differs = |atime| {
            let (a, b) = (a.clone(), b.clone());
            std::panic::catch_unwind(move || assert_same_tree_and_attrs(&a, &b, atime)).is_err()
        };
        let at = |p: &str| b.join(p);
        let omit = TimeSpec::UTIME_OMIT;
        let old = TimeSpec::new(1_000, 1);

        fresh_copy();
        assert!(!differs(Atime::Compare), "cp -a keeps everything compared");
        // A directory's mtime, the root's mtime, a symlink's own mtime.
        set_times(&at("docs/deep"), omit, old);
        assert!(differs(Atime::Ignore), "directory mtime");
        fresh_copy();
        set_times(&b, omit, old);
        assert!(differs(Atime::Ignore), "root mtime");
        fresh_copy();
        set_times(&at("dangling"), omit, old);
        assert!(differs(Atime::Ignore), "symlink mtime");
        // A file's atime: only with Atime::Compare.
        fresh_copy();
        set_times(&at("docs/readme.txt"), old, omit);
        assert!(differs(Atime::Compare), "file atime");
        assert!(!differs(Atime::Ignore), "atime ignored");
        // An xattr on a directory.
        fresh_copy();
        if rustix::fs::setxattr(at("docs"), "user.x", b"1", rustix::fs::XattrFlags::empty()).is_ok()
        {
            assert!(differs(Atime::Ignore), "directory xattr");
        }
        // Owners (root only).
        if rustix::process::geteuid().is_root() {
            fresh_copy();
            std::os::unix::fs::lchown(at("link to readme"), Some(7), None).unwrap();
            assert!(differs(Atime::Ignore), "symlink owner");
            fresh_copy();
            std::os::unix::fs::lchown(at("empty dir"), None, Some(7)).unwrap();
            assert!(differs(Atime::Ignore), "directory group");
        }
        // A symlink's target, all its times and its directory's kept.
        fresh_copy();
        std::fs::remove_file(at("dangling")).unwrap();
        symlink("/elsewhere", at("dangling")).unwrap();
        set_times(&at("dangling"), omit, mtime_of(&a.join("dangling")));
        set_times(&b, omit, mtime_of(&a));
        assert!(differs(Atime::Ignore), "symlink target");
    }
}
