//! The client's TOML configuration (mount, backup, restore all read it).
//!
//! ```toml
//! coordinator_addr = "127.0.0.1:7400"   # required
//! state_dir = "/var/lib/gridback/client" # required: local metadata, spool, cache
//! # tls_dir = "<state_dir>/tls"          # client.crt, client.key (0600), ca.crt, identity.toml
//! # key_file = "<state_dir>/keys.toml"   # the recovery key file
//! location = "default/default/<host name>" # REGION/ZONE/HOST, sent to the coordinator
//! # coords = "48.14,11.58"               # optional LAT,LON in degrees
//! [chunking]
//! min_size = "256KiB"
//! avg_size = "1MiB"
//! max_size = "4MiB"
//! [pipeline]
//! workers = 0               # CPU workers for compress/encrypt; 0 = number of cores
//! compression_level = 3
//! batch_chunks = 256        # chunks per batch (of many files) at most
//! upload_concurrency = 24   # put requests in flight (each to one node, many packets)
//! upload_memory = "32MiB"   # plaintext in the upload pipeline at once
//! [mount]
//! cache_size = "48MiB"
//! readahead_chunks = 4
//! fuse_threads = 4
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use gridback_proto::Location;
use gridback_proto::location::Coords;
use gridback_proto::units::parse_size;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::chunker::{ChunkingError, ChunkingParams};
use crate::compress::{CompressError, Level};

/// Errors loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: toml::de::Error,
    },
    /// Chunk sizes are invalid.
    #[error("[chunking]: {0}")]
    Chunking(#[from] ChunkingError),
    /// The compression level is invalid.
    #[error("[pipeline] compression_level: {0}")]
    Compression(#[from] CompressError),
    /// Another value is out of range.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A byte size written for humans (`"256KiB"`), or a plain integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if self.0 != 0 && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Chunk size bounds (FastCDC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChunkingConfig {
    /// Smallest chunk (except a stream's last).
    pub min_size: ByteSize,
    /// Average chunk.
    pub avg_size: ByteSize,
    /// Largest chunk.
    pub max_size: ByteSize,
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        let d = ChunkingParams::default();
        Self {
            min_size: ByteSize(d.min().into()),
            avg_size: ByteSize(d.avg().into()),
            max_size: ByteSize(d.max().into()),
        }
    }
}

/// The write pipeline's parallelism and batching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// CPU workers for compression and encryption; 0 means the number of cores.
    pub workers: usize,
    /// zstd level (1..=22) for chunks that compress.
    pub compression_level: i32,
    /// Chunks per batch at most: one coordinator round trip each for the dedup query, the
    /// allocation and the commit, and one put request per node, for all of them.
    pub batch_chunks: usize,
    /// Put requests in flight at once, over all nodes (each carries many packets).
    pub upload_concurrency: usize,
    /// Plaintext bytes in the upload pipeline at once, all files together (readers wait
    /// beyond it); at least one largest chunk.
    pub upload_memory: ByteSize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            compression_level: 3,
            batch_chunks: crate::uploader::DEFAULT_BATCH_CHUNKS,
            upload_concurrency: 24,
            upload_memory: ByteSize(crate::uploader::DEFAULT_MEMORY_BYTES as u64),
        }
    }
}

impl PipelineConfig {
    /// The upload memory budget in bytes.
    pub fn upload_memory_bytes(&self) -> Result<usize, ConfigError> {
        usize::try_from(self.upload_memory.0).map_err(|_| ConfigError::Invalid {
            field: "pipeline.upload_memory",
            reason: "too large".into(),
        })
    }

    /// Workers, with 0 resolved to the number of cores.
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// Default size of the mount's chunk cache. The mount's whole resident memory should stay
/// within 128 MiB while reading (issue 8): the cache, an eighth of it prefetched ahead of the
/// reader, the fetches in flight (their packets and decode buffers), the location cache,
/// redb's cache and the runtime. The kernel's page cache keeps sealed files across opens
/// (`FOPEN_KEEP_CACHE`), so a larger cache of our own gains little. (Measured 2026-12-05,
/// `tar` of the 1 GiB real tree: peak RSS ~416 MiB with this cache, and the same with an
/// 8 MiB cache: the rest is not the cache; see issue 8.)
pub const DEFAULT_CACHE_BYTES: u64 = 48 << 20;

/// The FUSE mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MountConfig {
    /// Decoded chunks kept in memory for reads.
    pub cache_size: ByteSize,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead_chunks: u32,
    /// Threads serving kernel requests.
    pub fuse_threads: usize,
}

impl Default for MountConfig {
    fn default() -> Self {
        Self {
            cache_size: ByteSize(DEFAULT_CACHE_BYTES),
            readahead_chunks: 4,
            fuse_threads: 4,
        }
    }
}

/// Default location: `default/default/<host name>` (the host name cleaned to label
/// characters), so clients on different hosts are told apart without any setting.
pub fn default_location() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let label: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(gridback_proto::location::MAX_LABEL_BYTES)
        .collect();
    let label = if label.is_empty() {
        "host".into()
    } else {
        label
    };
    format!("default/default/{label}")
}

/// The client configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Coordinator address (`host:port`).
    pub coordinator_addr: String,
    /// Local metadata, spool and cache.
    pub state_dir: PathBuf,
    /// TLS identity directory; default `<state_dir>/tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<PathBuf>,
    /// Recovery key file; default `<state_dir>/keys.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Where this client is, `REGION/ZONE/HOST` (labels of `A-Z a-z 0-9 - _ .`), sent in the
    /// greeting; backup proximity rules measure from it. An operator's override wins.
    #[serde(default = "default_location")]
    pub location: String,
    /// Optional coordinates, `LAT,LON` in degrees, for distance bounds in kilometres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coords: Option<String>,
    /// Chunk sizes.
    #[serde(default)]
    pub chunking: ChunkingConfig,
    /// Write pipeline.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// FUSE mount.
    #[serde(default)]
    pub mount: MountConfig,
}

impl ClientConfig {
    /// A configuration with defaults for everything optional.
    pub fn new(coordinator_addr: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            coordinator_addr: coordinator_addr.into(),
            state_dir: state_dir.into(),
            tls_dir: None,
            key_file: None,
            location: default_location(),
            coords: None,
            chunking: ChunkingConfig::default(),
            pipeline: PipelineConfig::default(),
            mount: MountConfig::default(),
        }
    }

    /// Read and validate a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration as TOML (for `print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("invariant: the config serializes to TOML")
    }

    /// Check every value that can be wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.chunking_params()?;
        self.compression_level()?;
        let positive = |field, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    field,
                    reason: "must be at least 1".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("pipeline.batch_chunks", self.pipeline.batch_chunks)?;
        positive(
            "pipeline.upload_concurrency",
            self.pipeline.upload_concurrency,
        )?;
        positive("mount.fuse_threads", self.mount.fuse_threads)?;
        if self.pipeline.batch_chunks > gridback_proto::coord_api::MAX_BATCH_CHUNKS {
            return Err(ConfigError::Invalid {
                field: "pipeline.batch_chunks",
                reason: format!(
                    "at most {} (the coordinator's batch limit)",
                    gridback_proto::coord_api::MAX_BATCH_CHUNKS
                ),
            });
        }
        if self.coordinator_addr.trim().is_empty() {
            return Err(ConfigError::Invalid {
                field: "coordinator_addr",
                reason: "empty".into(),
            });
        }
        self.location()?;
        Ok(())
    }

    /// The client's location, from `location` and `coords`.
    pub fn location(&self) -> Result<Location, ConfigError> {
        let mut loc: Location =
            self.location
                .parse()
                .map_err(
                    |e: gridback_proto::location::LocationError| ConfigError::Invalid {
                        field: "location",
                        reason: e.to_string(),
                    },
                )?;
        if let Some(c) = &self.coords {
            let c: Coords = c
                .parse()
                .map_err(
                    |e: gridback_proto::location::LocationError| ConfigError::Invalid {
                        field: "coords",
                        reason: e.to_string(),
                    },
                )?;
            loc.coords = Some(c);
        }
        Ok(loc)
    }

    /// Validated chunk sizes.
    pub fn chunking_params(&self) -> Result<ChunkingParams, ConfigError> {
        let c = &self.chunking;
        let as_u32 = |field, v: ByteSize| {
            u32::try_from(v.0).map_err(|_| ConfigError::Invalid {
                field,
                reason: "too large".into(),
            })
        };
        Ok(ChunkingParams::new(
            as_u32("chunking.min_size", c.min_size)?,
            as_u32("chunking.avg_size", c.avg_size)?,
            as_u32("chunking.max_size", c.max_size)?,
        )?)
    }

    /// Validated compression level.
    pub fn compression_level(&self) -> Result<Level, ConfigError> {
        Ok(Level::new(self.pipeline.compression_level)?)
    }

    /// TLS identity directory.
    pub fn tls_dir(&self) -> PathBuf {
        self.tls_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("tls"))
    }

    /// Recovery key file.
    pub fn key_file(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("keys.toml"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_defaults_and_round_trips() {
        let cfg: ClientConfig =
            toml::from_str("coordinator_addr = \"127.0.0.1:7400\"\nstate_dir = \"/s\"\n").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.tls_dir(), PathBuf::from("/s/tls"));
        assert_eq!(cfg.key_file(), PathBuf::from("/s/keys.toml"));
        assert_eq!(cfg.chunking_params().unwrap(), ChunkingParams::default());
        assert_eq!(cfg.pipeline, PipelineConfig::default());
        assert_eq!(cfg.mount.cache_size, ByteSize(48 << 20));
        let text = cfg.to_toml();
        assert!(text.contains("min_size = \"256KiB\""), "{text}");
        assert!(text.contains("cache_size = \"48MiB\""), "{text}");
        let back: ClientConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        assert!(cfg.pipeline.effective_workers() >= 1);
        assert!(
            cfg.location.starts_with("default/default/"),
            "{}",
            cfg.location
        );
        assert!(cfg.location().unwrap().coords.is_none());
    }

    #[test]
    fn location_and_coords_are_checked_by_key() {
        let base = "coordinator_addr = \"x:1\"\nstate_dir = \"/s\"\n";
        let cfg: ClientConfig = toml::from_str(&format!(
            "{base}location = \"eu/eu-1/h1\"\ncoords = \"48.14,11.58\"\n"
        ))
        .unwrap();
        let loc = cfg.location().unwrap();
        assert_eq!(loc.labels(), "eu/eu-1/h1");
        assert_eq!(loc.coords.map(|c| c.lon), Some(11.58));
        let back: ClientConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
        let bad: ClientConfig = toml::from_str(&format!("{base}location = \"eu\"\n")).unwrap();
        let e = bad.validate().unwrap_err();
        assert!(e.to_string().starts_with("location: "), "{e}");
        let bad: ClientConfig = toml::from_str(&format!("{base}coords = \"48.1;11\"\n")).unwrap();
        let e = bad.validate().unwrap_err();
        assert!(e.to_string().starts_with("coords: "), "{e}");
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "coordinator_addr = \"x:1\"\nstate_dir = \"/s\"\nbogus = 1\n",
        )
        .unwrap();
        let e = ClientConfig::load(&p).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        std::fs::write(
            &p,
            "coordinator_addr = \"x:1\"\nstate_dir = \"/s\"\n[chunking]\nmin_size = \"2MiB\"\n",
        )
        .unwrap();
        assert!(matches!(
            ClientConfig::load(&p),
            Err(ConfigError::Chunking(_))
        ));
        std::fs::write(
            &p,
            "coordinator_addr = \"x:1\"\nstate_dir = \"/s\"\n[pipeline]\ncompression_level = 0\n",
        )
        .unwrap();
        assert!(matches!(
            ClientConfig::load(&p),
            Err(ConfigError::Compression(_))
        ));
        std::fs::write(
            &p,
            "coordinator_addr = \"x:1\"\nstate_dir = \"/s\"\n[mount]\ncache_size = \"lots\"\n",
        )
        .unwrap();
        assert!(matches!(
            ClientConfig::load(&p),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            ClientConfig::load(&dir.path().join("none")),
            Err(ConfigError::Io { .. })
        ));
        let mut cfg = ClientConfig::new("c:1", "/s");
        cfg.pipeline.batch_chunks = 0;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::Invalid {
                field: "pipeline.batch_chunks",
                ..
            })
        ));
    }
}
