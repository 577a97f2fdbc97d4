//! The storage node's TOML configuration. Sizes and durations are written for humans
//! (`"10GiB"`, `"2s"`) and parsed once, when the file is read, by `proto::units`.
//!
//! ```toml
//! data_dir = "/var/lib/gridback/node"   # required: the allocated storage lives here
//! capacity = "10GiB"                    # byte limit of the allocated storage
//! listen_addr = "127.0.0.1:0"           # port 0 works; the bound address is reported
//! advertise_addr = "192.0.2.7:7401"     # optional; default: the bound address
//! coordinator_addr = "127.0.0.1:7400"   # required
//! ca_file = "/etc/gridback/ca.crt"      # the cluster CA, needed to join
//! join_token_file = "/etc/gridback/token"  # needed only before the node has an identity
//! label = "node-1"                      # default: the host name
//! location = "eu/eu-1/rack7-a"          # REGION/ZONE/HOST; default: default/default/<host name>
//! coords = "48.14,11.58"                # optional LAT,LON in degrees
//! heartbeat_interval = "2s"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gridback_proto::Location;
use gridback_proto::location::Coords;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Configuration of one storage node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Directory of the allocated storage: packets, the node's TLS identity and its grid id.
    pub data_dir: PathBuf,
    /// Byte limit of the allocated storage (`"10GiB"`, `"500MB"`, or plain bytes); packet
    /// files, headers included, never exceed it.
    #[serde(
        rename = "capacity",
        with = "human_size",
        default = "default_capacity_bytes"
    )]
    pub capacity_bytes: u64,
    /// UDP address the QUIC server binds. Port 0 picks a free port; the bound address is
    /// what `Server::local_addr` reports.
    #[serde(default = "default_listen_addr")]
    pub listen_addr: SocketAddr,
    /// Address (`host:port`) clients are told to dial; defaults to the bound address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_addr: Option<String>,
    /// Address (`host:port`) of the coordinator, for joining and heartbeats.
    pub coordinator_addr: String,
    /// The cluster CA certificate (PEM) used to check the coordinator when joining. After the
    /// join the node keeps its own copy in `data_dir/tls/ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// File holding the one-time join token. Needed only for the first start, before the
    /// node has an identity in `data_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token_file: Option<PathBuf>,
    /// Free-form name of this node in the coordinator's records and in `gridback status`.
    #[serde(default = "default_label")]
    pub label: String,
    /// Time between two heartbeats to the coordinator (`"2s"`, `"500ms"`).
    #[serde(
        with = "gridback_proto::units::human_duration",
        default = "default_heartbeat_interval"
    )]
    pub heartbeat_interval: Duration,
    /// Where the node is, `REGION/ZONE/HOST` (labels of `A-Z a-z 0-9 - _ .`), sent in every
    /// heartbeat; placement rules measure distances with it. An operator's override at the
    /// coordinator wins.
    #[serde(default = "default_location")]
    pub location: String,
    /// Optional coordinates, `LAT,LON` in degrees, for distance bounds in kilometres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coords: Option<String>,
}

/// Default byte limit of the allocated storage: 10 GiB, enough for a trial grid on one disk.
pub fn default_capacity_bytes() -> u64 {
    10 << 30
}

/// Default listen address: loopback with a free port, so a node started without thinking
/// is not exposed to the network.
pub fn default_listen_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Default label: the host name, or `node` when it cannot be read.
pub fn default_label() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

/// Default location: `default/default/<host name>`, so a grid without any location settings
/// still tells its hosts apart (the host label is the host name, cleaned to label
/// characters).
pub fn default_location() -> String {
    format!("default/default/{}", host_label(&default_label()))
}

/// `name` reduced to the characters a location label allows (others become `-`), cut to
/// the label length limit; `host` if nothing is left.
fn host_label(name: &str) -> String {
    let label: String = name
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
    if label.is_empty() {
        "host".into()
    } else {
        label
    }
}

/// Default heartbeat interval: 2 s, so a coordinator with a failure timeout of a few
/// intervals notices a dead node within about ten seconds.
pub fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(2)
}

/// Shortest heartbeat interval accepted; anything faster only loads the coordinator.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

impl NodeConfig {
    /// A config with every default, for the given data dir and coordinator.
    pub fn new(data_dir: impl Into<PathBuf>, coordinator_addr: impl Into<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            capacity_bytes: default_capacity_bytes(),
            listen_addr: default_listen_addr(),
            advertise_addr: None,
            coordinator_addr: coordinator_addr.into(),
            ca_file: None,
            join_token_file: None,
            label: default_label(),
            heartbeat_interval: default_heartbeat_interval(),
            location: default_location(),
            coords: None,
        }
    }

    /// The node's location, from `location` and `coords` (checked by [`Self::validate`]).
    pub fn location(&self) -> Result<Location, ConfigError> {
        let mut loc: Location = self
            .location
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("location: {e}")))?;
        if let Some(c) = &self.coords {
            let c: Coords = c
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("coords: {e}")))?;
            loc.coords = Some(c);
        }
        Ok(loc)
    }

    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
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

    /// Parse a config from TOML text (no file involved).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("data_dir must not be empty".into()));
        }
        if self.coordinator_addr.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "coordinator_addr must not be empty".into(),
            ));
        }
        if self.capacity_bytes == 0 {
            return Err(ConfigError::Invalid(
                "capacity must be larger than 0".into(),
            ));
        }
        if self.heartbeat_interval < MIN_HEARTBEAT_INTERVAL {
            return Err(ConfigError::Invalid(format!(
                "heartbeat_interval must be at least {MIN_HEARTBEAT_INTERVAL:?}"
            )));
        }
        self.location()?;
        Ok(())
    }

    /// The config as TOML, with every default written out (for `print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("invariant: a NodeConfig always serializes to TOML")
    }
}

/// Sizes as human strings: parsed with `parse_size`, written exactly in the largest binary
/// unit that divides them.
mod human_size {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        let text = UNITS
            .iter()
            .find(|(_, m)| *v != 0 && v.is_multiple_of(*m))
            .map(|(u, m)| format!("{}{u}", v / m))
            .unwrap_or_else(|| v.to_string());
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        gridback_proto::units::parse_size(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config_parses() {
        let c = NodeConfig::from_toml(
            r#"
            data_dir = "/srv/node"
            capacity = "64MiB"
            listen_addr = "0.0.0.0:7401"
            advertise_addr = "192.0.2.7:7401"
            coordinator_addr = "127.0.0.1:7400"
            ca_file = "/etc/ca.crt"
            join_token_file = "/etc/token"
            label = "node-1"
            heartbeat_interval = "500ms"
            location = "eu/eu-1/rack7-a"
            coords = "48.14,11.58"
            "#,
        )
        .unwrap();
        assert_eq!(c.capacity_bytes, 64 << 20);
        assert_eq!(c.listen_addr.port(), 7401);
        assert_eq!(c.advertise_addr.as_deref(), Some("192.0.2.7:7401"));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(c.label, "node-1");
        let loc = c.location().unwrap();
        assert_eq!(loc.labels(), "eu/eu-1/rack7-a");
        assert_eq!(loc.coords.map(|c| c.lat), Some(48.14));
        assert_eq!(NodeConfig::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn defaults_apply_and_round_trip() {
        let c = NodeConfig::from_toml("data_dir = \"/d\"\ncoordinator_addr = \"c:1\"\n").unwrap();
        assert_eq!(c.capacity_bytes, 10 << 30);
        assert_eq!(c.listen_addr, default_listen_addr());
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert!(c.advertise_addr.is_none() && c.ca_file.is_none() && c.join_token_file.is_none());
        let text = c.to_toml();
        assert!(text.contains("capacity = \"10GiB\""), "{text}");
        assert!(text.contains("heartbeat_interval = \"2s\""), "{text}");
        assert!(text.contains("location = \"default/default/"), "{text}");
        assert!(c.location().unwrap().coords.is_none());
        assert_eq!(NodeConfig::from_toml(&text).unwrap(), c);
        assert_eq!(NodeConfig::new("/d", "c:1"), c);
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_error() {
        let base = "data_dir = \"/d\"\ncoordinator_addr = \"c:1\"\n";
        let e = NodeConfig::from_toml(&format!("{base}colour = \"red\"\n")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = NodeConfig::from_toml(&format!("{base}capacity = \"12 bananas\"\n")).unwrap_err();
        assert!(e.to_string().contains("12 bananas"), "{e}");
        let e = NodeConfig::from_toml(&format!("{base}capacity = \"0\"\n")).unwrap_err();
        assert!(e.to_string().contains("capacity"), "{e}");
        let e = NodeConfig::from_toml("coordinator_addr = \"c:1\"\n").unwrap_err();
        assert!(e.to_string().contains("data_dir"), "{e}");
        let e =
            NodeConfig::from_toml(&format!("{base}heartbeat_interval = \"1ms\"\n")).unwrap_err();
        assert!(e.to_string().contains("heartbeat_interval"), "{e}");
        let e = NodeConfig::from_toml(&format!("{base}location = \"eu/z1\"\n")).unwrap_err();
        assert!(e.to_string().contains("location"), "{e}");
        let e = NodeConfig::from_toml(&format!("{base}coords = \"95,0\"\n")).unwrap_err();
        assert!(e.to_string().contains("coords"), "{e}");
        assert_eq!(host_label("my host!"), "my-host-");
        assert_eq!(host_label(""), "host");
    }

    #[test]
    fn load_reports_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = NodeConfig::load(&missing).unwrap_err();
        assert!(e.to_string().contains("nope.toml"), "{e}");
        let p = dir.path().join("node.toml");
        std::fs::write(&p, "data_dir = \"/d\"\ncoordinator_addr = \"c:1\"\n").unwrap();
        assert_eq!(NodeConfig::load(&p).unwrap().coordinator_addr, "c:1");
    }
}
