//! The coordinator's TOML configuration.
//!
//! ```toml
//! data_dir = "/var/lib/gridback/coordinator"   # required
//! listen_addr = "127.0.0.1:7400"
//! addr_file = "/run/gridback/coordinator.addr"  # optional
//! erasure_k = 4
//! erasure_m = 2
//! node_timeout = "10s"
//! order_ttl = "15m"
//!
//! # Optional: the subscription every new client starts with (F15-F17). Omitted fields are
//! # unlimited; `gridback admin subscription set` changes one client at run time.
//! [default_subscription]
//! plan = "default"
//! quota_bytes = 107374182400        # source storage allocation, bytes
//! bandwidth_up = 5000000            # bytes/s
//! bandwidth_down = 5000000          # bytes/s
//! threads = 4                       # worker threads for chunk, compress, encrypt
//! transfers = 8                     # concurrent packet transfers
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gridback_proto::subscription::{DEFAULT_PLAN, Limits, Subscription};
use serde::{Deserialize, Serialize};

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read coordinator config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid coordinator config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid coordinator config: {0}")]
    Invalid(String),
}

/// Coordinator settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Directory holding the CA, the order and sequence keys, the grid id, the join token and
    /// the metadata database. Created and initialised on first start.
    pub data_dir: PathBuf,
    /// UDP address the QUIC server binds. Port 0 picks a free port (see `addr_file`).
    #[serde(default = "default_listen_addr")]
    pub listen_addr: SocketAddr,
    /// After binding, the bound address is written here (atomically), so that tools and
    /// scripts can find a coordinator started on port 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr_file: Option<PathBuf>,
    /// Data packets per chunk when the grid has enough nodes.
    #[serde(default = "default_erasure_k")]
    pub erasure_k: u8,
    /// Parity packets per chunk: how many node losses a chunk survives.
    #[serde(default = "default_erasure_m")]
    pub erasure_m: u8,
    /// A node without a heartbeat for this long is considered down.
    #[serde(
        default = "default_node_timeout",
        with = "gridback_proto::units::human_duration"
    )]
    pub node_timeout: Duration,
    /// How long signed put/get orders stay valid; also how long an allocation may wait for
    /// its commit.
    #[serde(
        default = "default_order_ttl",
        with = "gridback_proto::units::human_duration"
    )]
    pub order_ttl: Duration,
    /// The subscription of clients the operator has not configured (absent: plan
    /// `default`, no limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_subscription: Option<DefaultSubscription>,
}

/// The `[default_subscription]` section: plan and limits of new clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultSubscription {
    /// Plan name.
    #[serde(default = "default_plan")]
    pub plan: String,
    /// Source storage allocation in bytes (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    /// Upload bandwidth in bytes per second (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_up: Option<u64>,
    /// Download bandwidth in bytes per second (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_down: Option<u64>,
    /// Worker threads (absent: the client's own default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// Concurrent packet transfers (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfers: Option<u32>,
}

/// Default plan name of the `[default_subscription]` section.
pub fn default_plan() -> String {
    DEFAULT_PLAN.to_string()
}

impl DefaultSubscription {
    /// The subscription it describes (never suspended, never expiring, no proximity
    /// overrides).
    pub fn subscription(&self) -> Subscription {
        Subscription {
            plan: self.plan.clone(),
            limits: Limits {
                quota_bytes: self.quota_bytes,
                bandwidth_up: self.bandwidth_up,
                bandwidth_down: self.bandwidth_down,
                threads: self.threads,
                transfers: self.transfers,
            },
            ..Subscription::default()
        }
    }
}

/// Default listen address: loopback, the grid's well-known port.
pub fn default_listen_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400))
}

/// Default data packets per chunk: 4 + 2 stores 1.5x the data and survives two lost nodes.
pub fn default_erasure_k() -> u8 {
    4
}

/// Default parity packets per chunk (see [`default_erasure_k`]).
pub fn default_erasure_m() -> u8 {
    2
}

/// Default failure timeout: a few missed heartbeats (nodes beat every couple of seconds).
pub fn default_node_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Default order lifetime: long enough to upload a large batch on a slow link, short enough
/// that a leaked order is soon useless.
pub fn default_order_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

impl CoordinatorConfig {
    /// A configuration with every default and the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen_addr: default_listen_addr(),
            addr_file: None,
            erasure_k: default_erasure_k(),
            erasure_m: default_erasure_m(),
            node_timeout: default_node_timeout(),
            order_ttl: default_order_ttl(),
            default_subscription: None,
        }
    }

    /// The subscription of a client without its own record.
    pub fn new_client_subscription(&self) -> Subscription {
        self.default_subscription
            .as_ref()
            .map_or_else(Subscription::default, DefaultSubscription::subscription)
    }

    /// Read and validate a TOML file.
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

    /// Check value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.erasure_k == 0 {
            return Err(ConfigError::Invalid("erasure_k must be at least 1".into()));
        }
        if usize::from(self.erasure_k) + usize::from(self.erasure_m) > usize::from(u8::MAX) {
            return Err(ConfigError::Invalid(
                "erasure_k + erasure_m must be at most 255".into(),
            ));
        }
        if self.node_timeout.is_zero() || self.order_ttl.is_zero() {
            return Err(ConfigError::Invalid(
                "node_timeout and order_ttl must be positive".into(),
            ));
        }
        Ok(())
    }

    /// The configuration as TOML (for `print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("invariant: the config serializes to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "data_dir = \"/tmp/x\"\n").unwrap();
        let cfg = CoordinatorConfig::load(&path).unwrap();
        assert_eq!(cfg, CoordinatorConfig::new("/tmp/x"));
        let toml = cfg.to_toml();
        assert!(toml.contains("node_timeout = \"10s\""), "{toml}");
        assert!(toml.contains("order_ttl = \"15m\""), "{toml}");
        assert!(toml.contains("listen_addr = \"127.0.0.1:7400\""), "{toml}");
        let back: CoordinatorConfig = toml::from_str(&toml).unwrap();
        assert_eq!(back, cfg);
    }

    /// Pins the defaults that `print-config` shows; changing one is a visible decision.
    #[test]
    fn default_config_is_pinned() {
        assert_eq!(
            CoordinatorConfig::new("/var/lib/gridback/coordinator").to_toml(),
            "data_dir = \"/var/lib/gridback/coordinator\"\nlisten_addr = \"127.0.0.1:7400\"\n\
             erasure_k = 4\nerasure_m = 2\nnode_timeout = \"10s\"\norder_ttl = \"15m\"\n"
        );
    }

    #[test]
    fn full_config_parses() {
        let cfg: CoordinatorConfig = toml::from_str(
            "data_dir = \"/d\"\nlisten_addr = \"127.0.0.1:0\"\naddr_file = \"/d/a\"\n\
             erasure_k = 3\nerasure_m = 1\nnode_timeout = \"500ms\"\norder_ttl = \"1h\"\n",
        )
        .unwrap();
        assert_eq!(cfg.listen_addr.port(), 0);
        assert_eq!(cfg.addr_file.as_deref(), Some(Path::new("/d/a")));
        assert_eq!((cfg.erasure_k, cfg.erasure_m), (3, 1));
        assert_eq!(cfg.node_timeout, Duration::from_millis(500));
        assert_eq!(cfg.order_ttl, Duration::from_secs(3600));
        assert_eq!(
            toml::from_str::<CoordinatorConfig>(&cfg.to_toml()).unwrap(),
            cfg
        );
    }

    #[test]
    fn default_subscription_section_parses_with_defaults() {
        let cfg: CoordinatorConfig = toml::from_str(
            "data_dir = \"/d\"\n[default_subscription]\nquota_bytes = 1000\nthreads = 2\n",
        )
        .unwrap();
        let s = cfg.new_client_subscription();
        assert_eq!(s.plan, "default");
        assert_eq!(s.limits.quota_bytes, Some(1000));
        assert_eq!(s.limits.threads, Some(2));
        assert_eq!(s.limits.bandwidth_up, None);
        assert_eq!(
            toml::from_str::<CoordinatorConfig>(&cfg.to_toml()).unwrap(),
            cfg
        );
        assert_eq!(
            CoordinatorConfig::new("/d").new_client_subscription(),
            Subscription::default()
        );
        assert!(
            toml::from_str::<CoordinatorConfig>(
                "data_dir = \"/d\"\n[default_subscription]\nq = 1\n"
            )
            .is_err()
        );
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "data_dir = \"/d\"\nbogus = 1\n").unwrap();
        let e = CoordinatorConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        std::fs::write(&path, "data_dir = \"/d\"\nnode_timeout = \"soon\"\n").unwrap();
        let e = CoordinatorConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("soon"), "{e}");
        std::fs::write(&path, "data_dir = \"/d\"\nerasure_k = 0\n").unwrap();
        assert!(matches!(
            CoordinatorConfig::load(&path),
            Err(ConfigError::Invalid(_))
        ));
        std::fs::write(&path, "listen_addr = \"127.0.0.1:1\"\n").unwrap();
        let e = CoordinatorConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("data_dir"), "{e}");
        assert!(matches!(
            CoordinatorConfig::load(&dir.path().join("missing.toml")),
            Err(ConfigError::Read { .. })
        ));
    }
}
