//! Directory trees for tests: generated with awkward names, compared byte for byte.

use std::collections::BTreeMap;
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
