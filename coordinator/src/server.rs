//! The coordinator server: bind (initialise the data dir, open the records, listen), then run
//! until the shutdown token fires.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gridback_proto::transport::{EndpointError, serve, server_endpoint};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::config::CoordinatorConfig;
use crate::error::CoordinatorError;
use crate::init::{DataDirLayout, GridSecrets, admin_cert_record, init_data_dir, write_atomic};
use crate::membership::MembershipWorker;
use crate::service::{CoordService, Settings};
use crate::store::{MetaStore, RedbStore};

/// How long `run` waits, after shutdown, for in-flight requests to release the database, so
/// that a new server can open the same data dir as soon as `run` returns.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// A bound coordinator, ready to run.
pub struct Server {
    endpoint: quinn::Endpoint,
    service: Arc<CoordService>,
    store: Arc<dyn MetaStore>,
    local_addr: SocketAddr,
    grid: [u8; 16],
    ca_der: Vec<u8>,
    node_timeout: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Server({}, grid {})",
            self.local_addr,
            hex::encode(self.grid)
        )
    }
}

impl Server {
    /// Initialise the data dir if needed, open the metadata database and bind the QUIC
    /// endpoint. Must be called inside a tokio runtime.
    pub fn bind(config: CoordinatorConfig) -> Result<Server, CoordinatorError> {
        config.validate()?;
        init_data_dir(&config.data_dir)?;
        let secrets = GridSecrets::load(&config.data_dir)?;
        let layout = DataDirLayout::new(&config.data_dir);
        let store: Arc<dyn MetaStore> = Arc::new(RedbStore::open(&layout.meta_db())?);
        // The admin certificate on disk is the admin's, whatever the records say.
        let (admin_fp, admin_rec) = admin_cert_record(&config.data_dir)?;
        store.ensure_cert(&admin_fp, &admin_rec)?;
        let addr = config.listen_addr;
        let endpoint = server_endpoint(&secrets.identity, addr, true).map_err(|e| match e {
            EndpointError::Bind { source, .. }
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                CoordinatorError::AddrInUse { addr }
            }
            other => CoordinatorError::Listen {
                addr,
                source: other,
            },
        })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| CoordinatorError::Listen {
                addr,
                source: EndpointError::Bind { addr, source: e },
            })?;
        if let Some(path) = &config.addr_file {
            write_atomic(path, format!("{local_addr}\n").as_bytes(), 0o644).map_err(|source| {
                CoordinatorError::AddrFile {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        let grid = secrets.grid;
        let ca_der = secrets.ca.cert_der().to_vec();
        let settings = Settings {
            erasure_k: config.erasure_k,
            erasure_m: config.erasure_m,
            node_timeout: config.node_timeout,
            order_ttl: config.order_ttl,
        };
        let service = Arc::new(CoordService::new(
            store.clone(),
            secrets,
            settings,
            config.new_client_subscription(),
            local_addr,
        ));
        info!(addr = %local_addr, grid = %hex::encode(grid), "coordinator bound");
        Ok(Server {
            endpoint,
            service,
            store,
            local_addr,
            grid,
            ca_der,
            node_timeout: config.node_timeout,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The grid id.
    pub fn grid_id(&self) -> [u8; 16] {
        self.grid
    }

    /// The cluster CA certificate (DER), which joiners must trust to dial the coordinator.
    pub fn ca_cert_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// Serve until `shutdown` fires. When this returns, the database is closed (unless a
    /// request is stuck for more than 5 s, which is logged).
    pub async fn run(self, shutdown: CancellationToken) {
        let span = info_span!("coordinator", addr = %self.local_addr);
        async move {
            info!("coordinator running");
            let worker = MembershipWorker::new(self.store.clone(), self.node_timeout);
            let liveness = tokio::spawn(worker.run(shutdown.clone()).in_current_span());
            serve(self.endpoint.clone(), self.service, shutdown.clone()).await;
            let _ = liveness.await;
            let idle = tokio::time::timeout(CLOSE_DEADLINE, self.endpoint.wait_idle()).await;
            if idle.is_err() {
                warn!("connections did not close within {CLOSE_DEADLINE:?}");
            }
            // In-flight handlers hold the store; wait for them so the redb file is unlocked
            // when we return (a restart in the same process must be able to open it).
            let deadline = tokio::time::Instant::now() + CLOSE_DEADLINE;
            while Arc::strong_count(&self.store) > 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if Arc::strong_count(&self.store) > 1 {
                warn!("requests still running after {CLOSE_DEADLINE:?}; database left open");
            }
            info!("coordinator stopped");
        }
        .instrument(span)
        .await
    }
}
