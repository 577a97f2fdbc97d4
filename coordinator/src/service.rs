//! Request dispatch: who is asking (anonymous, a node, a client, the admin), what they may
//! ask, and the mapping of every failure to a [`WireError`]. The handlers live in one file
//! per area.

mod admin;
pub(crate) mod bench;
mod chunks;
mod grid_view;
mod join;
mod schedules;
mod snapshots;
mod status;
mod terms;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gridback_proto::coord_api::{CoordRequest, MAX_BATCH_CHUNKS, Role};
use gridback_proto::subscription::Subscription;
use gridback_proto::transport::{Peer, Service, respond};
use gridback_proto::wire::MAX_CONTROL_FRAME_BYTES;
use gridback_proto::{CertFingerprint, ClientId, ErrorCode, NodeId, WireError};
use tracing::{Instrument, Span, debug_span, error, warn};

use crate::init::GridSecrets;
use crate::pending::PendingAllocations;
use crate::store::{CertRecord, MetaStore, StoreError};

/// Settings the handlers need from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub erasure_k: u8,
    pub erasure_m: u8,
    pub node_timeout: Duration,
    pub order_ttl: Duration,
}

type Reply<T> = Result<T, WireError>;

/// Who sent a request.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// No client certificate: may only join.
    Anonymous,
    /// A storage node.
    Node { id: NodeId },
    /// A source client, with the fingerprint its orders are bound to.
    Client { id: ClientId, fp: CertFingerprint },
    /// The operator's certificate issued at `coordinator init`.
    Admin,
}

/// The coordinator's QUIC service.
#[derive(Clone)]
pub(crate) struct CoordService {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: Arc<dyn MetaStore>,
    secrets: GridSecrets,
    order_public_key: Vec<u8>,
    settings: Settings,
    local_addr: SocketAddr,
    pending: PendingAllocations,
    /// The grid as placement sees it, rebuilt only when membership, locations, addresses or
    /// capacity overrides change.
    views: grid_view::GridViews,
    /// The subscription of clients without their own record.
    default_subscription: Subscription,
    /// Certificates seen, so most requests need no database read. Certificates are never
    /// revoked today, so entries never go stale.
    certs: RwLock<HashMap<CertFingerprint, CertRecord>>,
}

impl CoordService {
    pub fn new(
        store: Arc<dyn MetaStore>,
        secrets: GridSecrets,
        settings: Settings,
        default_subscription: Subscription,
        local_addr: SocketAddr,
    ) -> Self {
        let order_public_key = secrets.signer.public_key();
        Self {
            inner: Arc::new(Inner {
                store,
                secrets,
                order_public_key,
                settings,
                local_addr,
                pending: PendingAllocations::default(),
                views: grid_view::GridViews::default(),
                default_subscription,
                certs: RwLock::default(),
            }),
        }
    }
}

fn method(req: &CoordRequest) -> &'static str {
    match req {
        CoordRequest::Join(_) => "join",
        CoordRequest::NodeHeartbeat(_) => "heartbeat",
        CoordRequest::ClientHello(_) => "client_hello",
        CoordRequest::QueryChunks(_) => "query_chunks",
        CoordRequest::AllocateChunks(_) => "allocate_chunks",
        CoordRequest::ReplaceTargets(_) => "replace_targets",
        CoordRequest::CommitChunks(_) => "commit_chunks",
        CoordRequest::LocateChunks(_) => "locate_chunks",
        CoordRequest::SnapshotCreate(_) => "snapshot_create",
        CoordRequest::SnapshotList(_) => "snapshot_list",
        CoordRequest::SnapshotSeal(_) => "snapshot_seal",
        CoordRequest::SnapshotGet(_) => "snapshot_get",
        CoordRequest::Status(_) => "status",
        CoordRequest::BackupLog(_) => "backup_log",
        CoordRequest::ClientPoll(_) => "client_poll",
        CoordRequest::AdminClients(_) => "admin_clients",
        CoordRequest::AdminClient(_) => "admin_client",
        CoordRequest::AdminSnapshots(_) => "admin_snapshots",
        CoordRequest::AdminNode(_) => "admin_node",
        CoordRequest::AdminChunk(_) => "admin_chunk",
        CoordRequest::AdminChunks(_) => "admin_chunks",
        CoordRequest::AdminNodeSet(_) => "admin_node_set",
        CoordRequest::AdminClientSet(_) => "admin_client_set",
        CoordRequest::AdminPlacementSet(_) => "admin_placement_set",
        CoordRequest::AdminPlacementGet(_) => "admin_placement_get",
        CoordRequest::AdminSubscriptionSet(_) => "admin_subscription_set",
        CoordRequest::AdminSubscriptionShow(_) => "admin_subscription_show",
        CoordRequest::AdminSubscriptionSuspend(_) => "admin_subscription_suspend",
        CoordRequest::ScheduleAdd(_) => "schedule_add",
        CoordRequest::ScheduleList(_) => "schedule_list",
        CoordRequest::ScheduleRemove(_) => "schedule_remove",
        CoordRequest::SchedulePoll(_) => "schedule_poll",
        CoordRequest::ScheduleReport(_) => "schedule_report",
    }
}

impl Service for CoordService {
    type Request = CoordRequest;
    const REQUEST_LIMIT: u32 = MAX_CONTROL_FRAME_BYTES;

    fn handle(
        &self,
        peer: Peer,
        req: CoordRequest,
    ) -> impl std::future::Future<Output = Vec<u8>> + Send {
        let inner = self.inner.clone();
        let span = debug_span!("rpc", method = method(&req));
        async move {
            // Handlers read and write redb (fsync on commit): run them on the blocking pool.
            let span2 = Span::current();
            let task =
                tokio::task::spawn_blocking(move || span2.in_scope(|| inner.dispatch(peer, req)));
            task.await.unwrap_or_else(|e| {
                error!(error = %e, "request handler panicked");
                respond::<()>(&Err(WireError::new(ErrorCode::Internal, "handler failed")))
            })
        }
        .instrument(span)
    }
}

/// Map a store failure to what the caller sees. Failures of the store itself are logged here
/// with their cause and reported as `Internal` without details.
fn store_err(e: StoreError) -> WireError {
    match e {
        StoreError::NotFound(m) => WireError::new(ErrorCode::NotFound, m),
        StoreError::Conflict(m) => WireError::new(ErrorCode::Conflict, m),
        StoreError::Invalid(m) => WireError::new(ErrorCode::BadRequest, m),
        e @ StoreError::QuotaExceeded { .. } => {
            warn!(error = %e, "write refused: quota");
            WireError::new(ErrorCode::QuotaExceeded, e.to_string())
        }
        other @ (StoreError::Locked { .. } | StoreError::Corrupt { .. } | StoreError::Redb(_)) => {
            error!(error = %other, "metadata store failed");
            WireError::new(ErrorCode::Unavailable, "coordinator metadata store failed")
        }
    }
}

fn unauthorized(msg: &str) -> WireError {
    WireError::new(ErrorCode::Unauthorized, msg)
}

fn bad_request(msg: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::BadRequest, msg)
}

/// Refuse batches over the protocol limit.
fn check_batch(what: &str, n: usize) -> Reply<()> {
    if n > MAX_BATCH_CHUNKS {
        return Err(bad_request(format!(
            "{what}: {n} chunks in one request, the limit is {MAX_BATCH_CHUNKS}"
        )));
    }
    Ok(())
}

impl Inner {
    fn caller(&self, peer: &Peer) -> Reply<Caller> {
        let Some(fp) = peer.fingerprint else {
            return Ok(Caller::Anonymous);
        };
        let cached = self
            .certs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fp)
            .copied();
        let rec = match cached {
            Some(r) => r,
            None => {
                let r = self.store.cert(&fp).map_err(store_err)?.ok_or_else(|| {
                    unauthorized("this certificate was not issued to a member of this grid")
                })?;
                self.certs
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fp, r);
                r
            }
        };
        Ok(match rec.role {
            Role::Node => Caller::Node { id: NodeId(rec.id) },
            Role::Client => Caller::Client {
                id: ClientId(rec.id),
                fp,
            },
            Role::Admin => Caller::Admin,
        })
    }

    fn admin(&self, peer: &Peer) -> Reply<()> {
        match self.caller(peer)? {
            Caller::Admin => Ok(()),
            _ => Err(unauthorized(
                "admin requests need the admin certificate from the coordinator's data dir \
                 (DATA_DIR/admin)",
            )),
        }
    }

    fn node(&self, peer: &Peer) -> Reply<NodeId> {
        match self.caller(peer)? {
            Caller::Node { id } => Ok(id),
            Caller::Anonymous => Err(unauthorized("join the grid first (no client certificate)")),
            Caller::Client { .. } | Caller::Admin => {
                Err(unauthorized("this request needs a node certificate"))
            }
        }
    }

    fn client(&self, peer: &Peer) -> Reply<(ClientId, CertFingerprint)> {
        match self.caller(peer)? {
            Caller::Client { id, fp } => Ok((id, fp)),
            Caller::Anonymous => Err(unauthorized("join the grid first (no client certificate)")),
            Caller::Node { .. } | Caller::Admin => {
                Err(unauthorized("this request needs a client certificate"))
            }
        }
    }

    fn member(&self, peer: &Peer) -> Reply<Caller> {
        match self.caller(peer)? {
            Caller::Anonymous => Err(unauthorized("join the grid first (no client certificate)")),
            c => Ok(c),
        }
    }

    fn order_expiry(&self, now_unix_ms: u64) -> u64 {
        now_unix_ms.saturating_add(self.settings.order_ttl.as_millis() as u64)
    }

    fn dispatch(&self, peer: Peer, req: CoordRequest) -> Vec<u8> {
        use CoordRequest as R;
        match req {
            R::Join(j) => respond(&self.join(&peer, j)),
            R::NodeHeartbeat(h) => respond(&self.node(&peer).and_then(|id| self.heartbeat(id, h))),
            R::ClientHello(h) => respond(&self.client(&peer).and_then(|(id, _)| self.hello(id, h))),
            R::QueryChunks(q) => respond(&self.client(&peer).and_then(|_| self.query(q))),
            R::AllocateChunks(a) => respond(
                &self
                    .writer(&peer)
                    .and_then(|(id, fp, sub)| self.allocate(id, fp, &sub, a)),
            ),
            R::ReplaceTargets(r) => respond(
                &self
                    .writer(&peer)
                    .and_then(|(id, fp, sub)| self.replace(id, fp, &sub, r)),
            ),
            R::CommitChunks(c) => respond(
                &self
                    .writer(&peer)
                    .and_then(|(id, _, sub)| self.commit(id, &sub, c)),
            ),
            R::LocateChunks(l) => respond(
                &self
                    .client(&peer)
                    .and_then(|(id, fp)| self.locate(id, fp, l)),
            ),
            R::SnapshotCreate(s) => respond(
                &self
                    .writer(&peer)
                    .and_then(|(id, _, _)| self.snapshot_create(id, s)),
            ),
            R::SnapshotList(_) => respond(
                &self
                    .client(&peer)
                    .and_then(|(id, _)| self.snapshot_list(id)),
            ),
            R::SnapshotSeal(s) => respond(
                &self
                    .writer(&peer)
                    .and_then(|(id, _, _)| self.snapshot_seal(id, s)),
            ),
            R::SnapshotGet(s) => respond(
                &self
                    .client(&peer)
                    .and_then(|(id, _)| self.snapshot_get(id, s)),
            ),
            R::Status(_) => respond(&self.member(&peer).and_then(|c| self.status(c))),
            R::BackupLog(q) => respond(&self.member(&peer).and_then(|_| self.backup_log(q))),
            R::ClientPoll(_) => respond(&self.client(&peer).and_then(|(id, _)| self.terms(id))),
            R::AdminClients(_) => respond(&self.admin(&peer).and_then(|_| self.admin_clients())),
            R::AdminClient(r) => respond(&self.admin(&peer).and_then(|_| self.client_detail(r.id))),
            R::AdminSnapshots(r) => {
                respond(&self.admin(&peer).and_then(|_| self.admin_snapshots(r)))
            }
            R::AdminNode(r) => respond(&self.admin(&peer).and_then(|_| self.admin_node(r.id))),
            R::AdminChunk(r) => respond(&self.admin(&peer).and_then(|_| self.admin_chunk(r.id))),
            R::AdminChunks(r) => respond(&self.admin(&peer).and_then(|_| self.admin_chunks(r))),
            R::AdminNodeSet(r) => respond(&self.admin(&peer).and_then(|_| self.admin_node_set(r))),
            R::AdminClientSet(r) => {
                respond(&self.admin(&peer).and_then(|_| self.admin_client_set(r)))
            }
            R::AdminPlacementSet(r) => {
                respond(&self.admin(&peer).and_then(|_| self.admin_placement_set(r)))
            }
            R::AdminPlacementGet(_) => {
                respond(&self.admin(&peer).and_then(|_| self.admin_placement_get()))
            }
            R::AdminSubscriptionSet(r) => {
                respond(&self.admin(&peer).and_then(|_| self.subscription_set(r)))
            }
            R::AdminSubscriptionShow(r) => {
                respond(&self.admin(&peer).and_then(|_| self.client_detail(r.client)))
            }
            R::AdminSubscriptionSuspend(r) => {
                respond(&self.admin(&peer).and_then(|_| self.subscription_suspend(r)))
            }
            R::ScheduleAdd(r) => respond(&self.admin(&peer).and_then(|_| self.schedule_add(r))),
            R::ScheduleList(r) => {
                respond(&self.member(&peer).and_then(|c| self.schedule_list(c, r)))
            }
            R::ScheduleRemove(r) => {
                respond(&self.admin(&peer).and_then(|_| self.schedule_remove(r)))
            }
            R::SchedulePoll(_) => respond(
                &self
                    .client(&peer)
                    .and_then(|(id, _)| self.schedule_poll(id)),
            ),
            R::ScheduleReport(r) => respond(
                &self
                    .client(&peer)
                    .and_then(|(id, _)| self.schedule_report(id, r)),
            ),
        }
    }
}
