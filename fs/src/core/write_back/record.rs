//! The write-back record: `STATE/spool/<ino>.rec`, written when a file is closed before its
//! content is on the grid, removed once it is. It says which closed version the spool file
//! `STATE/spool/<ino>` holds, so a mount that was killed uploads it at its next start.
//!
//! ```text
//! offset size field
//! 0      4    magic b"GBWB" ("GridBack Write-Back")
//! 4      2    record version (u16 LE) = 1
//! 6      4    payload length (u32 LE)
//! 10     n    payload: postcard of `RecordV1`
//! 10+n   16   first 16 bytes of BLAKE3(payload)
//! ```
//! Written to `<ino>.rec.tmp` and renamed over `<ino>.rec`, so a killed process leaves the
//! old record, the new one, or a temp file (dropped at start), never a torn record. A new
//! layout gets a new version number; version 1 stays readable (fixture:
//! `fs/tests/fixtures/write_back_record_v1.bin`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::meta::{Inode, Kind, Time};

const MAGIC: [u8; 4] = *b"GBWB";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 10;
const CHECK_LEN: usize = 16;
/// Suffix of record files in the spool directory.
pub const RECORD_SUFFIX: &str = ".rec";
/// Suffix of a record being written.
pub const TEMP_SUFFIX: &str = ".rec.tmp";

/// A closed file whose content is not on the grid yet (record version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordV1 {
    /// Inode number.
    pub ino: u64,
    /// Directory that holds it.
    pub parent: u64,
    /// Its name there: kept for a file created in this session, so a crash that loses the
    /// (not yet durable) creation can re-create it. `None` for files that existed before.
    #[serde(with = "opt_bytes")]
    pub name: Option<Vec<u8>>,
    /// Root inode of its snapshot.
    pub snapshot: u64,
    /// Bytes of content (the spool's length).
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Times as (seconds, nanoseconds) since the epoch.
    pub atime: (i64, u32),
    /// Modification time.
    pub mtime: (i64, u32),
    /// Status change time: the newer of this and the database's wins at replay.
    pub ctime: (i64, u32),
    /// Extended attributes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_deref().map(serde_bytes::Bytes::new).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<serde_bytes::ByteBuf>::deserialize(d)?.map(|b| b.into_vec()))
    }
}

fn t(x: Time) -> (i64, u32) {
    (x.secs, x.nanos)
}

fn time((secs, nanos): (i64, u32)) -> Time {
    Time { secs, nanos }
}

impl RecordV1 {
    /// The record of `inode` closed with `size` bytes.
    pub fn new(ino: u64, name: Option<Vec<u8>>, inode: &Inode) -> Self {
        Self {
            ino,
            parent: inode.parent,
            name,
            snapshot: inode.snapshot,
            size: inode.size,
            perm: inode.perm,
            uid: inode.uid,
            gid: inode.gid,
            atime: t(inode.atime),
            mtime: t(inode.mtime),
            ctime: t(inode.ctime),
            xattrs: inode
                .xattrs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Apply the recorded attributes to `inode` (link count, parent and kind stay).
    pub fn apply(&self, inode: &mut Inode) {
        inode.size = self.size;
        inode.perm = self.perm;
        inode.uid = self.uid;
        inode.gid = self.gid;
        inode.atime = time(self.atime);
        inode.mtime = time(self.mtime);
        inode.ctime = time(self.ctime);
        inode.xattrs = self.xattrs.iter().cloned().collect();
    }

    /// A fresh inode from the record (for a file whose creation the crash lost).
    pub fn to_inode(&self) -> Inode {
        let mut inode = Inode {
            kind: Kind::File,
            perm: 0,
            uid: 0,
            gid: 0,
            size: 0,
            atime: Time::default(),
            mtime: Time::default(),
            ctime: Time::default(),
            nlink: 1,
            parent: self.parent,
            snapshot: self.snapshot,
            symlink: None,
            xattrs: Default::default(),
            provisional: true,
        };
        self.apply(&mut inode);
        inode
    }

    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let payload = postcard::to_allocvec(self)
            .expect("invariant: postcard encoding into a Vec cannot fail");
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CHECK_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&blake3::hash(&payload).as_bytes()[..CHECK_LEN]);
        out
    }

    /// Parse a record, refusing damaged or unknown ones with the reason.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < HEADER_LEN + CHECK_LEN || bytes[..4] != MAGIC {
            return Err(format!("not a write-back record ({} bytes)", bytes.len()));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(format!(
                "write-back record version {version} is not supported (this build reads {VERSION})"
            ));
        }
        let len = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]) as usize;
        if bytes.len() != HEADER_LEN + len + CHECK_LEN {
            return Err(format!(
                "record says {len} payload bytes, file holds {}",
                bytes.len().saturating_sub(HEADER_LEN + CHECK_LEN)
            ));
        }
        let payload = &bytes[HEADER_LEN..HEADER_LEN + len];
        if blake3::hash(payload).as_bytes()[..CHECK_LEN] != bytes[HEADER_LEN + len..] {
            return Err("record checksum does not match".into());
        }
        postcard::from_bytes(payload).map_err(|e| format!("record payload: {e}"))
    }
}

/// Path of the record of `ino`.
pub fn path(spool_dir: &Path, ino: u64) -> PathBuf {
    spool_dir.join(format!("{ino}{RECORD_SUFFIX}"))
}

/// Write the record atomically (temp file, rename). No fsync: the record must outlive the
/// process, which the page cache guarantees; a machine crash may lose it like any write not
/// yet fsynced (fsync(2) on the file waits for the grid instead).
pub fn write(spool_dir: &Path, rec: &RecordV1) -> std::io::Result<()> {
    let tmp = spool_dir.join(format!("{}{TEMP_SUFFIX}", rec.ino));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&rec.encode())?;
    drop(f);
    std::fs::rename(&tmp, path(spool_dir, rec.ino))
}

/// Remove the record of `ino` (absent is fine).
pub fn remove(spool_dir: &Path, ino: u64) -> std::io::Result<()> {
    match std::fs::remove_file(path(spool_dir, ino)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record behind the committed fixture.
    pub(crate) fn fixture_record() -> RecordV1 {
        RecordV1 {
            ino: 4242,
            parent: 17,
            name: Some(b"r\xc3\xa9sum\xc3\xa9 \xff.txt".to_vec()),
            snapshot: 16,
            size: 123_456_789,
            perm: 0o4755,
            uid: 1000,
            gid: 100,
            atime: (1_700_000_000, 1),
            mtime: (-5, 999_999_999),
            ctime: (1_764_900_000, 500),
            xattrs: vec![(b"user.tag".to_vec(), vec![0, 1, 2, 255])],
        }
    }

    const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/write_back_record_v1.bin");

    #[test]
    fn version_1_fixture_decodes_forever() {
        if std::env::var_os("GRIDBACK_WRITE_FIXTURES").is_some() {
            std::fs::write(
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/write_back_record_v1.bin"
                ),
                fixture_record().encode(),
            )
            .unwrap();
        }
        assert_eq!(RecordV1::decode(FIXTURE).unwrap(), fixture_record());
        assert_eq!(fixture_record().encode(), FIXTURE);
    }

    #[test]
    fn damage_is_refused_with_a_reason() {
        let good = fixture_record().encode();
        let mut flipped = good.clone();
        let mid = good.len() / 2;
        flipped[mid] ^= 0x40;
        let mut newer = good.clone();
        newer[4] = 2;
        for (bad, why) in [
            (&good[..good.len() - 1], "payload bytes"),
            (&flipped[..], "checksum"),
            (&newer[..], "version 2"),
            (
                &b"GBWX0000000000000000000000"[..],
                "not a write-back record",
            ),
        ] {
            let e = RecordV1::decode(bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn attributes_round_trip_through_an_inode() {
        let r = fixture_record();
        let inode = r.to_inode();
        assert_eq!(inode.size, r.size);
        assert!(inode.provisional);
        assert_eq!(RecordV1::new(r.ino, r.name.clone(), &inode), r);
    }
}
