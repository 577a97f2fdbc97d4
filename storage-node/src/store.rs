//! `PacketStore`: the allocated storage. One file per packet under
//! `DATA/packets/<first 2 hex>/<64 hex name>`, each carrying its own checksum (see
//! [`format`](mod@format)).
//!
//! A put of a new packet creates its file under its final name (`O_EXCL`: two puts of one
//! name cannot both create it), writes header and data, `fdatasync`s the file and fsyncs the
//! directory; only then is it acknowledged. Writing under the final name rather than a temp
//! file that is then linked into place saves a link, an unlink and, on ext4, a second journal
//! commit per packet (the directory entry is already in the commit that the file's sync
//! forces, so the directory fsync finds nothing left to do). A crash mid-write leaves a torn
//! file under the final name: its header length or checksum does not match, so it is never
//! served (`Corrupt`) and a re-put replaces it through a temp file and a rename. Puts of the
//! same name in this process are serialised by a striped lock, so a put never observes
//! another put's half-written file. Used bytes (file sizes, headers included) and
//! the packet count are kept in atomics: a put reserves its bytes before writing and releases
//! them if it fails, so concurrent puts can never overshoot the capacity.

pub mod format;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gridback_proto::PacketName;
use gridback_proto::node_api::{PacketData, PutAck};
use tracing::{info, warn};

use crate::error::StoreError;
use format::{HEADER_LEN, Header};

/// Directory under the data dir that holds the packets.
pub const PACKETS_DIR: &str = "packets";
/// Suffix of temp files; any left at start-up are from an interrupted put and are removed.
const TEMP_SUFFIX: &str = ".tmp";

/// How much of the allocated storage is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUsage {
    /// The byte limit.
    pub capacity_bytes: u64,
    /// Bytes in packet files, headers included.
    pub used_bytes: u64,
    /// Packets held.
    pub packet_count: u64,
}

/// The packet store of one node. Cheap to clone; clones share the same state.
#[derive(Debug, Clone)]
pub struct PacketStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// The byte limit in force; changed live by the coordinator's heartbeat answers.
    capacity_bytes: AtomicU64,
    used_bytes: AtomicU64,
    packet_count: AtomicU64,
    /// Put locks, chosen by the first byte of the packet name.
    put_locks: Vec<Mutex<()>>,
}

/// Stripes of the put lock: one per first byte of a name, so puts of different packets
/// almost never wait for each other (names are uniformly random).
const PUT_LOCK_STRIPES: usize = 256;

/// What is already stored under a name a put wants.
enum Existing {
    Absent,
    Same,
    Different,
    /// A damaged file of this many bytes: the put replaces it.
    Corrupt(u64),
}

impl PacketStore {
    /// Open (creating if needed) the store under `data_dir`, scanning it for used bytes and
    /// packets and removing temp files left by interrupted puts.
    pub async fn open(data_dir: &Path, capacity_bytes: u64) -> Result<Self, StoreError> {
        let dir = data_dir.join(PACKETS_DIR);
        blocking(move || Inner::open(dir, capacity_bytes))
            .await
            .map(|i| Self { inner: Arc::new(i) })
    }

    /// Store a packet durably. Storing the same bytes again is a no-op that reports
    /// `already_present`; different bytes under a taken name are a [`StoreError::Conflict`].
    pub async fn put(
        &self,
        name: PacketName,
        data: impl Into<bytes::Bytes>,
    ) -> Result<PutAck, StoreError> {
        let data = data.into();
        let inner = self.inner.clone();
        blocking(move || inner.put(name, &data, Sync::EachPacket)).await
    }

    /// Store several packets with one sync for all of them (group commit): each is written
    /// as [`put`](Self::put) writes it but without its own `fdatasync` and directory fsync,
    /// then one `syncfs` of the store's filesystem makes them all durable before any is
    /// acknowledged. Results are in the order given, one per packet, each as `put` would
    /// answer it; if the sync fails, every packet written by this call is removed again and
    /// answers the error.
    pub async fn put_many(
        &self,
        packets: Vec<(PacketName, bytes::Bytes)>,
    ) -> Vec<Result<PutAck, StoreError>> {
        let inner = self.inner.clone();
        let n = packets.len();
        blocking(move || Ok(inner.put_many(packets)))
            .await
            .unwrap_or_else(|e| {
                (0..n)
                    .map(|_| Err(StoreError::Task(e.to_string())))
                    .collect()
            })
    }

    /// Read a packet, verified against its checksum.
    pub async fn get(&self, name: PacketName) -> Result<PacketData, StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.get(name)).await
    }

    /// Delete a packet; returns whether it existed.
    pub async fn delete(&self, name: PacketName) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.delete(name)).await
    }

    /// Current usage.
    pub fn usage(&self) -> StoreUsage {
        StoreUsage {
            capacity_bytes: self.inner.capacity_bytes.load(Ordering::SeqCst),
            used_bytes: self.inner.used_bytes.load(Ordering::SeqCst),
            packet_count: self.inner.packet_count.load(Ordering::SeqCst),
        }
    }

    /// Change the byte limit while running. Packets already stored stay even when they now
    /// exceed it; new puts are refused until enough is deleted. Reservations compare against
    /// the limit in force when they are made, so the limit is never exceeded by a put that
    /// started after the change. Returns the previous limit.
    pub fn set_capacity(&self, capacity_bytes: u64) -> u64 {
        self.inner
            .capacity_bytes
            .swap(capacity_bytes, Ordering::SeqCst)
    }

    /// Path of the file that holds (or would hold) a packet.
    pub fn packet_path(&self, name: PacketName) -> PathBuf {
        self.inner.packet_path(name)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}

impl Inner {
    fn open(dir: PathBuf, capacity_bytes: u64) -> Result<Self, StoreError> {
        fs::create_dir_all(&dir).map_err(|e| StoreError::io("create", &dir, e))?;
        let (mut used, mut count, mut stale) = (0u64, 0u64, 0u64);
        let read_dir = |d: &Path| fs::read_dir(d).map_err(|e| StoreError::io("list", d, e));
        for shard in read_dir(&dir)? {
            let shard = shard.map_err(|e| StoreError::io("list", &dir, e))?;
            let shard_path = shard.path();
            if !shard_path.is_dir() {
                warn!(path = %shard_path.display(), "unexpected file in the packet store, ignored");
                continue;
            }
            for entry in read_dir(&shard_path)? {
                let entry = entry.map_err(|e| StoreError::io("list", &shard_path, e))?;
                let path = entry.path();
                let file_name = entry.file_name();
                let file_name = file_name.to_string_lossy();
                if file_name.ends_with(TEMP_SUFFIX) {
                    fs::remove_file(&path).map_err(|e| StoreError::io("remove", &path, e))?;
                    stale += 1;
                } else if file_name.parse::<PacketName>().is_ok() {
                    // Counted as a put of it counted it (its header's size), so that a torn
                    // file left by a crash is released by the same amount when a re-put
                    // replaces it.
                    used += counted_len(&path);
                    count += 1;
                } else {
                    warn!(path = %path.display(), "unexpected file in the packet store, ignored");
                }
            }
        }
        info!(
            dir = %dir.display(),
            packets = count,
            used_bytes = used,
            capacity_bytes,
            stale_temp_files = stale,
            "packet store opened"
        );
        Ok(Self {
            dir,
            capacity_bytes: AtomicU64::new(capacity_bytes),
            used_bytes: AtomicU64::new(used),
            packet_count: AtomicU64::new(count),
            put_locks: (0..PUT_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    fn shard_dir(&self, name: PacketName) -> PathBuf {
        self.dir.join(&name.to_string()[..2])
    }

    fn packet_path(&self, name: PacketName) -> PathBuf {
        self.shard_dir(name).join(name.to_string())
    }

    /// Reserve `need` bytes of the allocation, or refuse with NodeFull.
    fn reserve(&self, need: u64) -> Result<(), StoreError> {
        let capacity = self.capacity_bytes.load(Ordering::SeqCst);
        self.used_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(need).filter(|total| *total <= capacity)
            })
            .map(|_| ())
            .map_err(|used| StoreError::NodeFull {
                need,
                used,
                capacity,
            })
    }

    fn release(&self, bytes: u64) {
        // Saturating, so an accounting slip can never wrap around to "full forever".
        let _ = self
            .used_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    fn existing(
        &self,
        name: PacketName,
        path: &Path,
        header: &Header,
    ) -> Result<Existing, StoreError> {
        match read_packet(name, path) {
            Ok(stored) if stored.checksum == header.checksum => Ok(Existing::Same),
            Ok(_) => Ok(Existing::Different),
            Err(StoreError::NotFound(_)) => Ok(Existing::Absent),
            Err(StoreError::Corrupt { reason, .. }) => {
                let len = counted_len(path);
                warn!(packet = %name, reason, "corrupt packet replaced by a new put");
                Ok(Existing::Corrupt(len))
            }
            Err(e) => Err(e),
        }
    }

    fn put_many(
        &self,
        packets: Vec<(PacketName, bytes::Bytes)>,
    ) -> Vec<Result<PutAck, StoreError>> {
        let mut results: Vec<Result<PutAck, StoreError>> = Vec::with_capacity(packets.len());
        // Packets this call wrote (index, name, counted bytes): undone if the sync fails.
        let mut written = Vec::new();
        for (i, (name, data)) in packets.iter().enumerate() {
            let r = self.put(*name, data, Sync::Deferred);
            if let Ok(ack) = &r
                && !ack.already_present
            {
                written.push((i, *name, Header::for_data(data).file_len()));
            }
            results.push(r);
        }
        if written.is_empty() {
            return results;
        }
        if let Err(e) = syncfs(&self.dir) {
            warn!(packets = written.len(), error = %e, "group sync failed: the batch's new packets are removed");
            for (i, name, len) in written {
                let path = self.packet_path(name);
                if fs::remove_file(&path).is_ok() {
                    self.release(len);
                    self.packet_count.fetch_sub(1, Ordering::SeqCst);
                }
                results[i] = Err(StoreError::io(
                    "sync",
                    &self.dir,
                    std::io::Error::other(e.to_string()),
                ));
            }
        }
        results
    }

    fn put(&self, name: PacketName, data: &[u8], sync: Sync) -> Result<PutAck, StoreError> {
        let stripe = usize::from(name.0[0]) % PUT_LOCK_STRIPES;
        let _lock = self.put_locks[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let header = Header::for_data(data);
        let path = self.packet_path(name);
        let ack = |already_present| PutAck {
            checksum: header.checksum,
            already_present,
        };
        let replacing = match self.existing(name, &path, &header)? {
            Existing::Same => return Ok(ack(true)),
            Existing::Different => return Err(StoreError::Conflict(name)),
            Existing::Absent => None,
            Existing::Corrupt(old_len) => Some(old_len),
        };
        let need = header.file_len();
        self.reserve(need)?;
        match self.install(name, &path, &header, data, replacing.is_some(), sync) {
            Ok(true) => {
                match replacing {
                    Some(old_len) => self.release(old_len),
                    None => {
                        self.packet_count.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Ok(ack(false))
            }
            Ok(false) => {
                // Another put of this name won the race: answer as a re-put would.
                self.release(need);
                match self.existing(name, &path, &header)? {
                    Existing::Same => Ok(ack(true)),
                    _ => Err(StoreError::Conflict(name)),
                }
            }
            Err(e) => {
                self.release(need);
                Err(e)
            }
        }
    }

    /// Write the packet durably under its name: directly when the name is free, through a
    /// temp file and a rename when replacing a corrupt file. Returns false if the name was
    /// taken meanwhile (only when not replacing).
    fn install(
        &self,
        name: PacketName,
        path: &Path,
        header: &Header,
        data: &[u8],
        replace: bool,
        sync: Sync,
    ) -> Result<bool, StoreError> {
        let each = sync == Sync::EachPacket;
        let fsync_dir = |dir: &Path| if each { fsync_dir(dir) } else { Ok(()) };
        let shard = self.shard_dir(name);
        if !shard.is_dir() {
            match fs::create_dir(&shard) {
                Ok(()) => fsync_dir(&self.dir)?,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io("create", &shard, e)),
            }
        }
        if !replace {
            return match write_file(path, header, data, each) {
                Ok(()) => fsync_dir(&shard).map(|()| true),
                Err(WriteError::Exists) => Ok(false),
                Err(WriteError::Failed(e)) => {
                    // Never leave a torn file of ours under the name.
                    let _ = fs::remove_file(path);
                    Err(e)
                }
            };
        }
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| StoreError::Task(e.to_string()))?;
        let temp = shard.join(format!(".{name}.{}{TEMP_SUFFIX}", hex::encode(nonce)));
        let result = write_file(&temp, header, data, each)
            .map_err(|e| match e {
                WriteError::Exists => {
                    StoreError::Task(format!("temp file {} exists", temp.display()))
                }
                WriteError::Failed(e) => e,
            })
            .and_then(|()| {
                fs::rename(&temp, path).map_err(|e| StoreError::io("rename", path, e))?;
                fsync_dir(&shard)?;
                Ok(true)
            });
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    fn get(&self, name: PacketName) -> Result<PacketData, StoreError> {
        let r = read_packet(name, &self.packet_path(name));
        if let Err(StoreError::Corrupt { reason, .. }) = &r {
            warn!(packet = %name, reason, "corrupt packet refused");
        }
        r
    }

    fn delete(&self, name: PacketName) -> Result<bool, StoreError> {
        let path = self.packet_path(name);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io("stat", &path, e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io("remove", &path, e)),
        }
        self.release(len);
        self.packet_count.fetch_sub(1, Ordering::SeqCst);
        fsync_dir(&self.shard_dir(name))?;
        Ok(true)
    }
}

/// The size a damaged packet file was counted with: what its header says if the header is
/// intact (the file was written with that size), else its current size.
fn counted_len(path: &Path) -> u64 {
    let mut h = [0u8; HEADER_LEN];
    let from_header = File::open(path)
        .and_then(|mut f| f.read_exact(&mut h))
        .ok()
        .and_then(|()| Header::decode(&h).ok())
        .map(|hdr| hdr.file_len());
    from_header.unwrap_or_else(|| fs::metadata(path).map(|m| m.len()).unwrap_or(0))
}

/// Why [`write_file`] did not write.
enum WriteError {
    /// The file exists (nothing was written).
    Exists,
    /// Writing or syncing failed (the file may be partly written).
    Failed(StoreError),
}

/// Create `path` (it must not exist), write header and data and make them durable. Data sync
/// is enough: for a new file it also flushes the size, which is the only metadata a read
/// needs; the directory entry is the caller's directory fsync.
fn write_file(path: &Path, header: &Header, data: &[u8], sync: bool) -> Result<(), WriteError> {
    let io = |e| WriteError::Failed(StoreError::io("write", path, e));
    let mut f = match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(WriteError::Exists),
        Err(e) => return Err(io(e)),
    };
    f.write_all(&header.encode()).map_err(io)?;
    f.write_all(data).map_err(io)?;
    if sync {
        f.sync_data().map_err(io)
    } else {
        Ok(())
    }
}

/// When a put makes its packet durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// `fdatasync` of the file and fsync of its directory before the put returns.
    EachPacket,
    /// Not here: the caller syncs the whole filesystem once for a group of puts.
    Deferred,
}

/// `syncfs(2)` of the filesystem holding `dir`: every dirty page and inode on it, one call.
fn syncfs(dir: &Path) -> std::io::Result<()> {
    let d = File::open(dir)?;
    rustix::fs::syncfs(&d).map_err(std::io::Error::from)
}

/// Read and verify one packet file.
fn read_packet(name: PacketName, path: &Path) -> Result<PacketData, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { name, reason };
    let io = |e| StoreError::io("read", path, e);
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::NotFound(name)),
        Err(e) => return Err(io(e)),
    };
    let file_len = f.metadata().map_err(io)?.len();
    let mut h = [0u8; HEADER_LEN];
    if file_len < HEADER_LEN as u64 {
        return Err(corrupt(format!(
            "file of {file_len} bytes has no complete header"
        )));
    }
    f.read_exact(&mut h).map_err(io)?;
    let header = Header::decode(&h).map_err(corrupt)?;
    if header.file_len() != file_len {
        return Err(corrupt(format!(
            "header says {} data bytes, file holds {}",
            header.data_len,
            file_len - HEADER_LEN as u64
        )));
    }
    let len = usize::try_from(header.data_len).map_err(|_| corrupt("length overflows".into()))?;
    let mut data = vec![0u8; len];
    f.read_exact(&mut data).map_err(io)?;
    format::verify(&header, &data).map_err(corrupt)?;
    Ok(PacketData {
        data,
        checksum: header.checksum,
    })
}

#[cfg(test)]
mod tests;
