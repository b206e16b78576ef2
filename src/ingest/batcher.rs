//! Gathers one listener connection's records into per-stream batches:
//! escaping into a contiguous buffer (no per-record allocation), counting
//! what is received, truncated and flagged, and handing batches to the store.

use std::sync::Arc;

use prometheus::IntCounter;
use tracing::warn;

use super::router::Router;
use super::ListenerCtx;
use crate::metrics::DropReason;
use crate::store::escape::escape_into;
use crate::store::{Batch, Committed, Error as StoreError, StreamHandle};
use tokio::sync::oneshot;

struct Slot {
    handle: StreamHandle,
    data: Vec<u8>,
    records: u32,
    truncated: u32,
}

/// Per-connection (or per-socket) batcher.
pub struct Batcher {
    listener: Arc<str>,
    router: Arc<Router>,
    slots: Vec<Slot>,
    first_ms: i64,
    last_ms: i64,
    received_records: IntCounter,
    received_bytes: IntCounter,
    pending_bytes: u64,
    pending_records: u64,
    /// Peer, for log lines.
    peer: String,
    warned_utf8: bool,
    warned_nul: bool,
    warned_trunc: bool,
    /// Bytes a batch reserves at its first record (see [`Self::expect`]).
    reserve: usize,
    ctx: Arc<ListenerCtx>,
}

impl Batcher {
    /// A batcher for one connection (or socket) of a listener; `peer` names it in log lines.
    pub fn new(ctx: &Arc<ListenerCtx>, peer: String) -> Batcher {
        let m = &ctx.metrics;
        let name = ctx.cfg.name.as_str();
        Batcher {
            listener: ctx.name.clone(),
            router: ctx.router.clone(),
            slots: ctx
                .streams
                .iter()
                .map(|h| Slot {
                    handle: h.clone(),
                    // Allocated at the first record: an idle connection holds none.
                    data: Vec::new(),
                    records: 0,
                    truncated: 0,
                })
                .collect(),
            first_ms: 0,
            last_ms: 0,
            received_records: m.ingest.received_records.with_label_values(&[name]),
            received_bytes: m.ingest.received_bytes.with_label_values(&[name]),
            pending_bytes: 0,
            pending_records: 0,
            peer,
            warned_utf8: false,
            warned_nul: false,
            warned_trunc: false,
            reserve: FULL_BATCH,
            ctx: ctx.clone(),
        }
    }

    /// Size the next batch for about `bytes` of records (a read's worth): a
    /// collector waking up with one line does not allocate a full batch
    /// (thousands of them at once, after a restart, left the heap
    /// fragmented: issue 26); a full read still takes one allocation.
    pub fn expect(&mut self, bytes: usize) {
        self.reserve = (bytes + bytes / 8 + 256).min(FULL_BATCH);
    }

    /// Bytes buffered across streams.
    pub fn buffered(&self) -> usize {
        self.slots.iter().map(|s| s.data.len()).sum()
    }

    /// Add one record received at `now_ms`.
    #[inline]
    pub fn push(&mut self, record: &[u8], truncated: bool, now_ms: i64) {
        let idx = self.router.route(record);
        let slot = &mut self.slots[idx];
        if slot.records == 0 && self.first_ms == 0 {
            self.first_ms = now_ms;
        }
        self.last_ms = now_ms;
        if slot.data.capacity() == 0 {
            slot.data.reserve(self.reserve);
        }
        let nul = escape_into(record, &mut slot.data);
        slot.data.push(b'\n');
        slot.records += 1;
        self.pending_bytes += record.len() as u64;
        self.pending_records += 1;
        if truncated {
            slot.truncated += 1;
            self.flag_truncated(record.len());
        }
        if std::str::from_utf8(record).is_err() {
            self.flag("invalid_utf8");
        }
        if nul {
            self.flag("nul_byte");
        }
    }

    #[cold]
    fn flag(&mut self, flag: &'static str) {
        self.ctx.metrics.ingest.flagged_records.with_label_values(&[&self.listener, flag]).inc();
        let warned = if flag == "nul_byte" { &mut self.warned_nul } else { &mut self.warned_utf8 };
        if !*warned {
            *warned = true;
            warn!(listener = %self.listener, peer = %self.peer, %flag,
                "record kept as received but flagged (first on this connection; see ferry_flagged_records_total)");
        }
    }

    #[cold]
    fn flag_truncated(&mut self, kept: usize) {
        self.ctx.metrics.ingest.truncated_records.with_label_values(&[&self.listener]).inc();
        if !self.warned_trunc {
            self.warned_trunc = true;
            warn!(listener = %self.listener, peer = %self.peer, kept_bytes = kept,
                "record longer than max_record_bytes truncated (first on this connection; see ferry_truncated_records_total)");
        }
    }

    fn take(&mut self, i: usize) -> Option<(StreamHandle, Batch)> {
        let slot = &mut self.slots[i];
        if slot.records == 0 {
            return None;
        }
        // The next batch allocates at its first record (one allocation per
        // batch as before, none held while the connection is idle).
        let data = std::mem::take(&mut slot.data);
        let b = Batch {
            listener: self.listener.clone(),
            data,
            records: slot.records,
            truncated: slot.truncated,
            first_ms: self.first_ms,
            last_ms: self.last_ms,
            ack: None,
        };
        slot.records = 0;
        slot.truncated = 0;
        Some((slot.handle.clone(), b))
    }

    fn count_received(&mut self) {
        self.received_records.inc_by(self.pending_records);
        self.received_bytes.inc_by(self.pending_bytes);
        self.pending_records = 0;
        self.pending_bytes = 0;
    }

    /// Put a batch that the store did not take back into its slot, to be
    /// offered again.
    fn put_back(&mut self, i: usize, b: Batch) {
        let slot = &mut self.slots[i];
        slot.data = b.data;
        slot.records = b.records;
        slot.truncated = b.truncated;
    }

    /// Queue every slot's batch if the store has room now: the usual case,
    /// with no future to hold. False if one is left for [`Self::flush`]'s
    /// waiting path.
    fn queue_now(&mut self) -> bool {
        for i in 0..self.slots.len() {
            let Some((h, b)) = self.take(i) else { continue };
            if let Err((_, back)) = h.try_submit(b) {
                self.put_back(i, back);
                return false;
            }
        }
        self.first_ms = 0;
        true
    }

    /// Hand everything to the store, waiting for room (stream listeners). If
    /// the store refuses for now (archive full, disk full or failing), wait
    /// and retry: the sender is held back (TCP backpressure) rather than its
    /// records dropped.
    ///
    /// Memory (issue 26): what waits for room is a boxed future made only
    /// when the store has none now, so a connection's task is not sized for
    /// it while it idles.
    pub async fn flush(&mut self) {
        self.count_received();
        if self.queue_now() {
            return;
        }
        Box::pin(self.flush_waiting()).await
    }

    async fn flush_waiting(&mut self) {
        for i in 0..self.slots.len() {
            let Some((h, mut b)) = self.take(i) else {
                continue;
            };
            let mut logged = false;
            loop {
                match h.submit(b).await {
                    Ok(()) => break,
                    Err((e, back)) if e.is_temporary() => {
                        if !logged {
                            warn!(listener = %self.listener, peer = %self.peer, stream = h.name(), reason = %e,
                                "store refuses records for now: holding this connection (it stops being read) until it takes them");
                            logged = true;
                        }
                        b = back;
                        tokio::time::sleep(HOLD_WAIT).await;
                    }
                    Err((e, back)) => {
                        self.ctx.metrics.drop_records(&self.listener, reason_for(&e), u64::from(back.records));
                        break;
                    }
                }
            }
        }
        self.first_ms = 0;
    }

    /// Hand the (single-stream) batch to the store with an acknowledgement
    /// that arrives once it is durable; waits for room, and while the store is
    /// full (the sender's acknowledgements are held meanwhile). `None` if the
    /// store is closed.
    pub async fn flush_acked(&mut self) -> Option<oneshot::Receiver<Result<Committed, StoreError>>> {
        self.count_received();
        let (h, mut b) = self.take(0)?;
        let (tx, rx) = oneshot::channel();
        b.ack = Some(tx);
        match h.try_submit(b) {
            Ok(()) => Some(rx),
            Err((_, back)) => Box::pin(self.submit_acked(h, back, rx)).await,
        }
    }

    /// [`Self::flush_acked`]'s waiting path, boxed for the reason
    /// [`Self::flush`] gives.
    async fn submit_acked(
        &self,
        h: StreamHandle,
        mut b: Batch,
        rx: oneshot::Receiver<Result<Committed, StoreError>>,
    ) -> Option<oneshot::Receiver<Result<Committed, StoreError>>> {
        let mut logged = false;
        loop {
            match h.submit(b).await {
                Ok(()) => return Some(rx),
                Err((e, back)) if e.is_temporary() => {
                    if !logged {
                        warn!(listener = %self.listener, peer = %self.peer, stream = h.name(), reason = %e,
                            "store refuses records for now: holding acknowledgements until it takes them");
                        logged = true;
                    }
                    b = back;
                    tokio::time::sleep(HOLD_WAIT).await;
                }
                Err((e, back)) => {
                    // Not dropped: the sender gets a 5xx and keeps the records.
                    warn!(listener = %self.listener, peer = %self.peer, error = %e, records = back.records, "cannot queue records; refusing them");
                    return None;
                }
            }
        }
    }

    /// Hand everything to the store without waiting (datagram listeners):
    /// what does not fit is dropped and counted.
    pub fn try_flush(&mut self) {
        self.count_received();
        let mut held = false;
        for i in 0..self.slots.len() {
            let Some((h, b)) = self.take(i) else { continue };
            match h.try_submit(b) {
                Ok(()) => {}
                // A full queue is mostly a writer stalled for a moment (an fsync, a
                // busy CPU): hold the records and retry on the next flush, up to
                // HOLD_BYTES per stream; only beyond that are they dropped.
                Err((StoreError::Overloaded(_), back)) if back.data.len() < HOLD_BYTES => {
                    self.put_back(i, back);
                    held = true;
                }
                Err((e, back)) => {
                    self.ctx.metrics.drop_records(&self.listener, reason_for(&e), u64::from(back.records));
                    self.ctx.note_drop(&e);
                }
            }
        }
        if !held {
            self.first_ms = 0;
        }
    }

    /// At a stop: offer held records for up to `limit`, then drop what is
    /// left, counted as `shutting_down` (never wait on a full store forever).
    pub async fn drain(&mut self, limit: std::time::Duration) {
        let until = std::time::Instant::now() + limit;
        loop {
            self.try_flush();
            if !self.has_records() {
                return;
            }
            if std::time::Instant::now() >= until {
                break;
            }
            tokio::time::sleep(HOLD_RETRY).await;
        }
        for i in 0..self.slots.len() {
            if let Some((_, b)) = self.take(i) {
                self.ctx.metrics.drop_records(&self.listener, DropReason::ShuttingDown, u64::from(b.records));
            }
        }
    }

    /// Whether any record is buffered.
    pub fn has_buffered(&self) -> bool {
        self.has_records()
    }

    /// Forget what is buffered: the file listener reads it again after a
    /// failed commit (counted when read again, not dropped).
    pub fn discard(&mut self) {
        for s in &mut self.slots {
            s.data.clear();
            s.records = 0;
            s.truncated = 0;
        }
        self.first_ms = 0;
    }

    /// Whether records are waiting (held by [`try_flush`](Self::try_flush)).
    pub fn has_records(&self) -> bool {
        self.slots.iter().any(|s| s.records > 0)
    }
}

/// A batch's buffer when the records to come are not known: the store's
/// batch size and room for the record that crosses it.
const FULL_BATCH: usize = crate::store::BATCH_BYTES + 1024;

/// Records a datagram listener holds per stream while the stream's queue is
/// full, before it drops (counted as `overload`): about half a second of a
/// busy UDP source. Bounded, like everything in front of the store.
pub const HOLD_BYTES: usize = 4 << 20;

/// How soon a stream connection offers records again to a store that
/// refused them for now.
const HOLD_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// How soon held records are offered again when no datagram arrives.
pub const HOLD_RETRY: std::time::Duration = std::time::Duration::from_millis(5);

fn reason_for(e: &StoreError) -> DropReason {
    match e {
        StoreError::Full => DropReason::StoreFull,
        StoreError::Overloaded(_) => DropReason::Overload,
        StoreError::Closed => DropReason::ShuttingDown,
        e if e.is_disk_full() => DropReason::DiskFull,
        StoreError::Io { .. } | StoreError::Open { .. } | StoreError::Unwritable { .. } => DropReason::StoreError,
    }
}
