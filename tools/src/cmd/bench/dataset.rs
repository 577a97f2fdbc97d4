//! The bench's generated data set: prose-like text, binary-like files (runs and tables),
//! incompressible random data, a duplicated part (exact copies of earlier files, which dedup
//! must absorb) and many small files.

use std::path::{Path, PathBuf};

use anyhow::Result;

/// Small files in the data set: what a home directory is mostly made of.
const SMALL_FILES: usize = 400;
/// Size of the generated files, so that several chunks make up each large file.
const LARGE_FILE_BYTES: u64 = 32 << 20;

/// A deterministic xorshift generator, so the data set is the same on every run.
pub struct Rng(pub u64);
impl Rng {
    /// Next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Fill a buffer.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "grid",
        "stores",
        "every",
        "chunk",
        "of",
        "your",
        "files",
        "encrypted",
        "and",
        "erasure",
        "coded",
        "across",
        "nodes",
        "so",
        "that",
        "losing",
        "two",
        "loses",
        "nothing",
        "\n",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

fn binary(rng: &mut Rng, len: usize) -> Vec<u8> {
    // Like an executable: tables of small integers, runs of zeros, some random bytes.
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        match rng.next() % 4 {
            0 => out.extend(std::iter::repeat_n(0u8, 64 + (rng.next() % 512) as usize)),
            1 => {
                let mut b = vec![0u8; 64];
                rng.fill(&mut b);
                out.extend_from_slice(&b);
            }
            _ => {
                for _ in 0..64 {
                    out.extend_from_slice(&((rng.next() % 4096) as u32).to_le_bytes());
                }
            }
        }
    }
    out.truncate(len);
    out
}

/// Generate the data set; returns (files with their BLAKE3, total bytes).
pub fn generate(root: &Path, total: u64) -> Result<(Vec<(PathBuf, blake3::Hash)>, u64)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut files = Vec::new();
    let mut written = 0u64;
    let mut write =
        |rel: PathBuf, data: Vec<u8>, files: &mut Vec<(PathBuf, blake3::Hash)>| -> Result<()> {
            let p = root.join(&rel);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&p, &data)?;
            written += data.len() as u64;
            files.push((rel, blake3::hash(&data)));
            Ok(())
        };
    let small_budget = (total / 20).min(SMALL_FILES as u64 * 16 * 1024);
    for i in 0..SMALL_FILES {
        let len = ((small_budget / SMALL_FILES as u64) as usize).max(1) * (1 + i % 3) / 2;
        let data = if i % 2 == 0 {
            text(&mut rng, len)
        } else {
            binary(&mut rng, len)
        };
        write(
            PathBuf::from(format!("small/dir {}/file {i:04}.dat", i % 20)),
            data,
            &mut files,
        )?;
    }
    let large_total = total.saturating_sub(small_budget);
    let dup_share = large_total * 15 / 100;
    let unique = large_total - dup_share;
    let mut produced = 0u64;
    let mut i = 0;
    while produced < unique {
        let len = LARGE_FILE_BYTES.min(unique - produced) as usize;
        let (kind, data) = match i % 3 {
            0 => ("text", text(&mut rng, len)),
            1 => ("binary", binary(&mut rng, len)),
            _ => {
                let mut b = vec![0u8; len];
                rng.fill(&mut b);
                ("random", b)
            }
        };
        write(
            PathBuf::from(format!("large/{kind}-{i:03}.bin")),
            data,
            &mut files,
        )?;
        produced += len as u64;
        i += 1;
    }
    // The duplicated part: copies of earlier large files under other names.
    let originals: Vec<PathBuf> = files
        .iter()
        .filter(|(p, _)| p.starts_with("large"))
        .map(|(p, _)| p.clone())
        .collect();
    let mut dup = 0u64;
    for (j, orig) in originals.iter().cycle().enumerate() {
        if dup >= dup_share || originals.is_empty() {
            break;
        }
        let data = std::fs::read(root.join(orig))?;
        dup += data.len() as u64;
        write(
            PathBuf::from(format!("copies/copy-{j:03}.bin")),
            data,
            &mut files,
        )?;
    }
    Ok((files, written))
}
