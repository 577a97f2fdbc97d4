//! `GridClient`: the real [`Grid`], over QUIC to the coordinator and the storage nodes.
//!
//! `connect` loads the TLS identity (`tls_dir`) and the recovery key file (`key_file`), opens
//! one client endpoint with one connection pool (one connection per peer, many streams),
//! greets the coordinator, and builds the write ([`Uploader`]) and read ([`Reader`]) pipelines
//! on top. It keeps the client's [`Terms`] (from the greeting, refreshed by a
//! [`TermsPoller`] every [`TERMS_POLL_INTERVAL`]), whose limits every transfer and CPU stage
//! honours live. The poller stops when the last clone is dropped or on [`GridClient::shutdown`].

use std::io::Read;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use gridback_proto::coord_api::{ClientWelcome, SnapshotInfo, SnapshotRecord, TreeChunk};
use gridback_proto::subscription::{ClientTerms, SubscriptionState};
use gridback_proto::transport::{CallError, ConnPool, EndpointError, client_endpoint};
use gridback_proto::{ChunkId, ClientId};
use tracing::info;

use crate::config::{ClientConfig, ConfigError};
use crate::coord_client::CoordClient;
use crate::crypto::ChunkCrypto;
use crate::grid::{ChunkRef, Grid, GridError, StoredData};
use crate::join::{JoinError, load_identity};
use crate::keys::{ClientKeys, KeyError};
use crate::node_client::NodeClient;
use crate::reader::Reader;
use crate::terms::{TERMS_POLL_INTERVAL, Terms, TermsPoller};
use crate::uploader::{UploadParams, Uploader};

/// Errors connecting a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key file could not be loaded.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The TLS identity could not be loaded (has this client joined?).
    #[error("client identity: {0}")]
    Identity(#[from] JoinError),
    /// The QUIC endpoint could not be created.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The coordinator could not be reached or refused the greeting.
    #[error("coordinator at {addr}: {source}{}", foreign_grid_hint(source))]
    Coordinator {
        /// Its address.
        addr: String,
        /// Cause.
        #[source]
        source: CallError,
    },
    /// The coordinator knows this certificate under another client id.
    #[error("identity.toml says client {file}, the coordinator says {coordinator}")]
    IdMismatch {
        /// From identity.toml.
        file: String,
        /// From the coordinator.
        coordinator: ClientId,
    },
}

/// A TLS failure against the coordinator usually means this client's state was made for
/// another grid (or the coordinator's CA was replaced): say so instead of only quoting rustls.
fn foreign_grid_hint(e: &CallError) -> &'static str {
    let text = e.to_string();
    let tls = [
        "UnknownIssuer",
        "BadCertificate",
        "CertificateRequired",
        "certificate",
    ];
    if matches!(e, CallError::Connect { .. }) && tls.iter().any(|t| text.contains(t)) {
        " (the TLS handshake failed: this client's state directory probably belongs to another \
         grid, or the coordinator's CA changed)"
    } else {
        ""
    }
}

struct Inner {
    coord: CoordClient,
    crypto: Arc<ChunkCrypto>,
    uploader: Uploader,
    reader: Reader,
    keys: ClientKeys,
    welcome: ClientWelcome,
    terms: Arc<Terms>,
    poller: Mutex<Option<TermsPoller>>,
}

/// A connected client of the grid. Cheap to clone.
#[derive(Clone)]
pub struct GridClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GridClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GridClient")
            .field("client", &self.inner.welcome.client)
            .field("coordinator", &self.inner.coord.addr())
            .finish_non_exhaustive()
    }
}

impl GridClient {
    /// Connect as described by `config` (purpose `"client"` in the coordinator's records).
    pub async fn connect(config: &ClientConfig) -> Result<GridClient, ClientError> {
        Self::connect_for(config, "client").await
    }

    /// Connect, naming what this process is (`mount`, `backup`, `restore`…).
    pub async fn connect_for(
        config: &ClientConfig,
        purpose: &str,
    ) -> Result<GridClient, ClientError> {
        let params = UploadParams::from_config(config)?;
        let location = config.location()?;
        let keys = ClientKeys::load(&config.key_file())?;
        let (identity, file) = load_identity(&config.tls_dir())?;
        let pool = ConnPool::new(client_endpoint(&identity)?);
        let coord = CoordClient::new(pool.clone(), config.coordinator_addr.clone());
        let welcome =
            coord
                .hello(purpose, location)
                .await
                .map_err(|source| ClientError::Coordinator {
                    addr: config.coordinator_addr.clone(),
                    source,
                })?;
        if file.client().ok() != Some(welcome.client) {
            return Err(ClientError::IdMismatch {
                file: file.client_id,
                coordinator: welcome.client,
            });
        }
        info!(client = %welcome.client, k = welcome.erasure_k, m = welcome.erasure_m, "connected to the grid");
        let client = Self::from_parts(coord, NodeClient::new(pool), keys, welcome, params);
        client.start_terms_poller();
        Ok(client)
    }

    /// Assemble a client from already-connected parts (tests, tools).
    pub fn from_parts(
        coord: CoordClient,
        nodes: NodeClient,
        keys: ClientKeys,
        welcome: ClientWelcome,
        params: UploadParams,
    ) -> Self {
        let crypto = Arc::new(ChunkCrypto::new(&keys.domain));
        let terms = Terms::new(Some(welcome.terms.clone()), params.workers);
        let nodes = nodes.with_limits(terms.limits().clone());
        let cpu = terms.limits().threads.clone();
        let uploader =
            Uploader::with_cpu_limit(coord.clone(), nodes.clone(), crypto.clone(), params, cpu);
        let reader = Reader::new(coord.clone(), nodes, crypto.clone()).with_terms(terms.clone());
        Self {
            inner: Arc::new(Inner {
                coord,
                crypto,
                uploader,
                reader,
                keys,
                welcome,
                terms,
                poller: Mutex::new(None),
            }),
        }
    }

    /// Start refreshing the terms every [`TERMS_POLL_INTERVAL`] (no-op if running already).
    /// `connect` does this; clients built with [`GridClient::from_parts`] call it when they
    /// live long enough to need it. Must be called inside a tokio runtime.
    pub fn start_terms_poller(&self) {
        let mut p = self.inner.poller.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_none() {
            *p = Some(TermsPoller::spawn(
                self.inner.coord.clone(),
                self.inner.terms.clone(),
                TERMS_POLL_INTERVAL,
            ));
        }
    }

    /// Stop the terms poller and wait for it (dropping the last clone stops it too, without
    /// waiting).
    pub async fn shutdown(&self) {
        let p = self
            .inner
            .poller
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(p) = p {
            p.shutdown().await;
        }
    }

    /// The latest terms (subscription, limits, usage, location).
    pub fn terms(&self) -> ClientTerms {
        self.inner
            .terms
            .current()
            .unwrap_or_else(|| self.inner.welcome.terms.clone())
    }

    /// The terms holder, with the live limits every transfer honours.
    pub fn live_terms(&self) -> &Arc<Terms> {
        &self.inner.terms
    }

    /// This client's id.
    pub fn client_id(&self) -> ClientId {
        self.inner.welcome.client
    }

    /// The coordinator's greeting (grid id, default erasure parameters).
    pub fn welcome(&self) -> &ClientWelcome {
        &self.inner.welcome
    }

    /// The client's keys (the tree cipher needs the master key).
    pub fn keys(&self) -> &ClientKeys {
        &self.inner.keys
    }

    /// The chunk cipher (chunk ids, to verify restored files).
    pub fn chunk_crypto(&self) -> Arc<ChunkCrypto> {
        self.inner.crypto.clone()
    }

    /// The coordinator client, for calls the `Grid` trait does not cover (status, log).
    pub fn coordinator(&self) -> &CoordClient {
        &self.inner.coord
    }

    /// Fetch several chunks at once (readahead, restore); results in the order asked.
    pub async fn read_chunks(&self, chunks: &[ChunkRef]) -> Vec<Result<Arc<Vec<u8>>, GridError>> {
        self.inner.reader.read_chunks(chunks).await
    }

    /// Look up the locations of `ids` not cached yet, in as few round trips as possible, so
    /// that reading them soon after needs none (restore, ahead of many small files).
    pub async fn prefetch_locations(&self, ids: &[ChunkId]) {
        self.inner.reader.prefetch_locations(ids).await
    }

    /// Close every connection (the client stays usable: calls re-dial).
    pub fn close(&self) {
        self.inner.coord.pool().close_all();
    }
}

impl Grid for GridClient {
    fn store_reader(
        &self,
        snapshot: String,
        reader: Box<dyn Read + Send>,
    ) -> BoxFuture<'_, Result<StoredData, GridError>> {
        async move { self.inner.uploader.store(&snapshot, reader).await }.boxed()
    }

    fn read_chunk(&self, chunk: ChunkRef) -> BoxFuture<'_, Result<Arc<Vec<u8>>, GridError>> {
        self.inner.reader.read_chunk(chunk).boxed()
    }

    fn prefetch_locations<'a>(&'a self, chunks: &'a [ChunkId]) -> BoxFuture<'a, ()> {
        self.inner.reader.prefetch_locations(chunks).boxed()
    }

    fn snapshot_create(
        &self,
        name: String,
        from: Option<String>,
    ) -> BoxFuture<'_, Result<SnapshotInfo, GridError>> {
        self.inner.coord.snapshot_create(name, from).boxed()
    }

    fn snapshot_list(&self) -> BoxFuture<'_, Result<Vec<SnapshotInfo>, GridError>> {
        self.inner.coord.snapshot_list().boxed()
    }

    fn snapshot_seal(
        &self,
        name: String,
        tree: Vec<TreeChunk>,
        tree_bytes: u64,
    ) -> BoxFuture<'_, Result<SnapshotInfo, GridError>> {
        self.inner
            .coord
            .snapshot_seal(name, tree, tree_bytes)
            .boxed()
    }

    fn snapshot_get(&self, name: String) -> BoxFuture<'_, Result<SnapshotRecord, GridError>> {
        self.inner.coord.snapshot_get(name).boxed()
    }

    fn terms(&self) -> Option<ClientTerms> {
        Some(GridClient::terms(self))
    }

    fn subscription_state(&self) -> Option<SubscriptionState> {
        Some(
            self.inner
                .terms
                .state()
                .unwrap_or(self.inner.welcome.terms.state),
        )
    }
}
