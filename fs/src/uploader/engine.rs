//! The engine's two tasks: the collector cuts batches out of the chunks of every store and
//! prepares them (dedup query, sealing); the committer uploads and commits them, one at a
//! time and in order, and tells each store's ticket how its chunks fared. A channel of depth
//! one between them lets the next batch be prepared while one uploads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use gridback_proto::ChunkId;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{Instrument, debug_span};

use super::batch::PreparedBatch;
use super::ticket::Ticket;
use super::{BATCH_LINGER, MAX_BATCH_BYTES, Shared};

/// Chunks that may wait in the engine's input queue. Memory is bounded by the permits each
/// chunk holds, not by this; it only keeps the queue itself small.
const INPUT_QUEUE: usize = 1024;

/// One chunk of one store, admitted into the engine.
pub(crate) struct Item {
    /// Its id.
    pub id: ChunkId,
    /// Its plaintext (a slice of the store's read block).
    pub data: Bytes,
    /// The store it belongs to.
    pub ticket: Arc<Ticket>,
    /// Its share of the engine's memory budget, given back when the item is dropped.
    pub _memory: OwnedSemaphorePermit,
}

/// Start the engine's tasks; they stop once every sender of the returned queue is dropped
/// and the batches in flight are done.
pub(super) fn spawn(shared: Arc<Shared>) -> mpsc::Sender<Item> {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    let (batches_tx, batches_rx) = mpsc::channel(1);
    let busy = Arc::new(AtomicUsize::new(0));
    tokio::spawn(collector(shared.clone(), rx, batches_tx, busy.clone()));
    tokio::spawn(committer(shared, batches_rx, busy));
    tx
}

async fn collector(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Item>,
    batches: mpsc::Sender<PreparedBatch>,
    busy: Arc<AtomicUsize>,
) {
    let mut held: Option<Item> = None;
    let mut seq = 0u64;
    loop {
        let first = match held.take() {
            Some(i) => i,
            None => match rx.recv().await {
                Some(i) => i,
                None => return,
            },
        };
        let items = collect(&shared, first, &mut rx, &mut held, &busy).await;
        seq += 1;
        let span = debug_span!("batch", seq, chunks = items.len());
        let Some(prepared) = shared.prepare(seq, items).instrument(span).await else {
            continue;
        };
        busy.fetch_add(1, Ordering::SeqCst);
        if batches.send(prepared).await.is_err() {
            return;
        }
    }
}

/// Gather one batch, starting with `first`: chunks of the same snapshot until the batch is
/// full, or nothing is waiting and the committer is idle, or [`BATCH_LINGER`] has passed.
/// A chunk of another snapshot ends the batch and is kept in `held` for the next one.
async fn collect(
    shared: &Shared,
    first: Item,
    rx: &mut mpsc::Receiver<Item>,
    held: &mut Option<Item>,
    busy: &AtomicUsize,
) -> Vec<Item> {
    let started = Instant::now();
    let max_chunks = shared.params.batch_chunks.max(1);
    let mut bytes = first.data.len();
    let mut items = vec![first];
    let fits =
        |items: &Vec<Item>, bytes: usize| items.len() < max_chunks && bytes < MAX_BATCH_BYTES;
    while fits(&items, bytes) {
        let next = match rx.try_recv() {
            Ok(i) => Some(i),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                if busy.load(Ordering::SeqCst) == 0 {
                    None
                } else {
                    let left = BATCH_LINGER.saturating_sub(started.elapsed());
                    tokio::time::timeout(left, rx.recv()).await.ok().flatten()
                }
            }
        };
        let Some(item) = next else { break };
        if item.ticket.snapshot != items[0].ticket.snapshot {
            *held = Some(item);
            break;
        }
        bytes += item.data.len();
        items.push(item);
    }
    items
}

async fn committer(
    shared: Arc<Shared>,
    mut batches: mpsc::Receiver<PreparedBatch>,
    busy: Arc<AtomicUsize>,
) {
    while let Some(batch) = batches.recv().await {
        let span = debug_span!("upload", seq = batch.seq);
        shared.upload(batch).instrument(span).await;
        busy.fetch_sub(1, Ordering::SeqCst);
    }
}
