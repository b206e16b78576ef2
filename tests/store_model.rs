//! A model-based test of the store (after vector's disk_v2 model tests):
//! random sequences of batches with and without acknowledgement, injected
//! disk faults (ENOSPC, EIO, EROFS, short writes on write, fsync, create,
//! rename and directory fsync), crashes at any point (the process image
//! dropped, the files as the fault layer left them), power cuts at a
//! restart (each file keeps only what was fsynced, plus at random part of
//! its unsynced tail in whole pages, sometimes a torn one; a directory not
//! fsynced since may lose its new entries, renames and removals: see
//! `store::fs`, "Power loss"), restarts and clock jumps, checked against a
//! simple in-memory model:
//!
//! - every acknowledged record is in the archive exactly once, in order;
//! - a record whose commit was reported failed is not there (unless its
//!   sender retried it and that was acknowledged: then exactly once);
//! - nothing appears twice; records without acknowledgement at most once;
//! - `ferry verify` passes (no hole, no torn frame, seals match the bytes);
//! - record sequence numbers are contiguous across segments.
//!
//! CI runs `CASES` cases from a random seed, printed; replay or run longer:
//!
//!     FERRY_MODEL_SEED=1234 FERRY_MODEL_CASES=500 cargo test --test store_model

mod util;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;

use ferry::config::Config;
use ferry::metrics::Metrics;
use ferry::store::clock::ManualClock;
use ferry::store::fs::{Faults, Fs, Kind, Op};
use ferry::store::segment::{seal_path, SealRecord};
use ferry::store::{Batch, Committed, Error, Store};

const CASES: u64 = 24;

/// Faults and crashes that fired, over all cases (a model test that injects
/// nothing proves nothing).
static INJECTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Unsynced bytes and directory entries that power cuts took away, over
/// all cases (a power-loss model that never loses anything proves nothing).
static CUT_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static CUT_ENTRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const OPS: usize = 60;
/// 2026-11-23T10:59:00Z: hour boundaries come up during a case.
const T0: i64 = 1_795_431_540_000;

fn config(dir: &Path) -> Config {
    util::store::config(dir, "commit_interval = \"5ms\"\ncommit_bytes = \"16KiB\"\nsegment_max_bytes = \"64KiB\"")
}

fn batch(ids: &[u64], ack: Option<oneshot::Sender<Result<Committed, Error>>>) -> Batch {
    let mut data = Vec::new();
    for id in ids {
        // Some bulk so segments rotate; the id leads the line.
        data.extend_from_slice(format!("rec-{id:08} {}\n", "x".repeat((id % 7 * 120) as usize)).as_bytes());
    }
    Batch { listener: "model".into(), ack, ..util::store::raw_batch(data, ids.len() as u32, 0) }
}

/// What the model knows of each record.
#[derive(Default)]
struct Model {
    /// Acknowledged, in acknowledgement order.
    acked: Vec<u64>,
    /// Reported failed (and not acknowledged since).
    failed: HashSet<u64>,
    /// Sent without acknowledgement, or in flight at a crash: at most once.
    maybe: HashSet<u64>,
}

struct Node {
    store: Store,
    faults: Arc<Faults>,
}

fn open(dir: &Path, clock: &ManualClock) -> Node {
    let faults = Arc::new(Faults::default());
    faults.track_power();
    let store =
        Store::open_with(&config(dir), Arc::new(clock.clone()), Metrics::new(), Fs::with_faults(faults.clone()))
            .expect("store opens after any fault or crash");
    Node { store, faults }
}

/// Submit until the store takes it: while the disk is refused (a fault just
/// fired) the stream refuses batches for a moment, as it does to a listener.
async fn submit(node: &Node, mut b: Batch) -> Result<(), Error> {
    let h = node.store.stream("live").unwrap();
    let t = Instant::now();
    loop {
        match h.submit(b).await {
            Ok(()) => return Ok(()),
            Err((e, back)) if e.is_temporary() && !node.faults.crashed() => {
                assert!(t.elapsed() < Duration::from_secs(10), "the stream stayed unwritable: {e}");
                b = back;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

async fn run_case(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut node = open(dir.path(), &clock);
    let mut m = Model::default();
    let mut next_id = 0u64;
    let mut retry: Vec<Vec<u64>> = Vec::new();
    for _ in 0..OPS {
        match rng.random_range(0..100) {
            // A batch with an acknowledgement (RELP, HTTP), or the retry of a failed one.
            0..=44 => {
                let ids: Vec<u64> = if !retry.is_empty() && rng.random_bool(0.5) {
                    retry.swap_remove(0)
                } else {
                    let n = rng.random_range(1..40);
                    next_id += n;
                    (next_id - n..next_id).collect()
                };
                let (tx, rx) = oneshot::channel();
                if submit(&node, batch(&ids, Some(tx))).await.is_err() {
                    // Refused before queueing (crashed store): nothing written;
                    // the sender keeps it for later.
                    if !ids.iter().any(|id| m.failed.contains(id)) {
                        m.failed.extend(&ids);
                    }
                    retry.push(ids);
                    continue;
                }
                let answer = bounded("the acknowledgement", rx).await;
                eprintln!(
                    "  acked batch {}..={}: {:?} crashed={}",
                    ids[0],
                    ids[ids.len() - 1],
                    answer.as_ref().map(|r| r.as_ref().map(|_| ()).map_err(|e| e.to_string())),
                    node.faults.crashed()
                );
                match answer {
                    Ok(Ok(_)) => {
                        for id in &ids {
                            m.failed.remove(id);
                        }
                        m.acked.extend(&ids);
                    }
                    // After a crash the sender hears nothing in reality: unknown
                    // (a retry of a failed batch may now be archived once).
                    _ if node.faults.crashed() => {
                        for id in &ids {
                            m.failed.remove(id);
                        }
                        m.maybe.extend(&ids);
                    }
                    Ok(Err(_)) | Err(_) => {
                        m.failed.extend(&ids);
                        retry.push(ids);
                    }
                }
            }
            // Plain syslog: no acknowledgement.
            45..=59 => {
                let n = rng.random_range(1..40);
                next_id += n;
                let ids: Vec<u64> = (next_id - n..next_id).collect();
                m.maybe.extend(&ids);
                eprintln!("  unacked batch {}..={}", ids[0], ids[ids.len() - 1]);
                let _ = submit(&node, batch(&ids, None)).await;
                if rng.random_bool(0.5) {
                    let _ = bounded("a flush", node.store.stream("live").unwrap().flush()).await;
                }
            }
            // A disk fault on one of the next calls.
            60..=79 => {
                let op = [Op::Write, Op::Write, Op::Fsync, Op::Fsync, Op::Create, Op::Rename, Op::DirSync]
                    [rng.random_range(0..7)];
                let kind = [Kind::NoSpace, Kind::Eio, Kind::ReadOnly, Kind::Short][rng.random_range(0..4)];
                let count = if rng.random_bool(0.2) { rng.random_range(2..6) } else { 1 };
                let from = rng.random_range(1..4);
                eprintln!("  fault {op:?} {kind:?} from {from} x{count}");
                node.faults.add(Some(op), None, kind, from, count);
            }
            // A crash at some call soon, then a restart.
            80..=86 => {
                // Half at any call, half at an fsync (written, not yet durable:
                // what a power cut then takes away).
                let from = rng.random_range(1..12);
                let op = if rng.random_bool(0.5) { Some(Op::Fsync) } else { None };
                eprintln!("  crash from call {from} of {op:?}");
                node.faults.add(op, None, Kind::Crash, from, u64::MAX);
            }
            87..=93 => {
                // Restart: a crashed node's writers find every call failing, as
                // if the process were gone; then the files are opened afresh.
                eprintln!("  restart");
                bounded("a close", node.store.close()).await;
                INJECTED.fetch_add(node.faults.injected(), std::sync::atomic::Ordering::Relaxed);
                if rng.random_bool(0.5) {
                    power_cut(&node, rng.random());
                }
                node = open(dir.path(), &clock);
            }
            // The clock: time passing, or jumps back an hour / forward a day.
            _ => {
                let jump = match rng.random_range(0..3) {
                    0 => {
                        clock.advance(rng.random_range(1_000..600_000));
                        "time passes"
                    }
                    1 => {
                        clock.set(clock_now(&clock) - 3_600_000);
                        "clock back an hour"
                    }
                    _ => {
                        clock.set(clock_now(&clock) + 86_400_000);
                        "clock forward a day"
                    }
                };
                eprintln!("  {jump}");
            }
        }
    }
    bounded("a close", node.store.close()).await;
    INJECTED.fetch_add(node.faults.injected(), std::sync::atomic::Ordering::Relaxed);
    if rng.random_bool(0.5) {
        power_cut(&node, rng.random());
    }
    // A clean restart and stop: recovery seals whatever a crash left open.
    let node = open(dir.path(), &clock);
    bounded("a close", node.store.close()).await;
    check(dir.path(), &m);
}

/// The power goes: what was not durable is taken away (after a crash, or
/// after a clean stop, which must have left nothing to take).
fn power_cut(node: &Node, seed: u64) {
    let cut = node.faults.power_cut(seed).expect("the power-cut model applies");
    eprintln!("  power cut (crashed={}): {cut:?}", node.faults.crashed());
    CUT_BYTES.fetch_add(cut.bytes_lost, std::sync::atomic::Ordering::Relaxed);
    CUT_ENTRIES.fetch_add(cut.entries_undone, std::sync::atomic::Ordering::Relaxed);
}

/// Await `f`, failing the case (not hanging it) if the store never answers.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(20), f).await {
        Ok(v) => v,
        Err(_) => panic!("the store did not answer {what} within 20 s"),
    }
}

fn clock_now(c: &ManualClock) -> i64 {
    ferry::store::clock::Clock::now_ms(c)
}

fn check(data: &Path, m: &Model) {
    util::assert_verify_ok(data);
    let lines = util::archive_lines(data);
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut order = Vec::with_capacity(lines.len());
    for l in &lines {
        let id: u64 = l.get(4..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not a model line: {l:?}"));
        *seen.entry(id).or_default() += 1;
        order.push(id);
    }
    for (id, n) in &seen {
        assert_eq!(*n, 1, "record {id} archived {n} times");
    }
    for id in &m.acked {
        assert!(seen.contains_key(id), "acknowledged record {id} is missing");
    }
    for id in &m.failed {
        assert!(!seen.contains_key(id), "record {id} was reported failed (and never acknowledged) but is archived");
    }
    let acked: HashSet<u64> = m.acked.iter().copied().collect();
    let archived_acked: Vec<u64> = order.iter().copied().filter(|id| acked.contains(id)).collect();
    assert_eq!(archived_acked, m.acked, "acknowledged records in acknowledgement order");
    for id in seen.keys() {
        assert!(
            acked.contains(id) || m.maybe.contains(id),
            "record {id} archived but never acknowledged nor sent unacknowledged"
        );
    }
    // Sequence numbers run on from segment to segment.
    let mut next = None;
    for seg in util::segments(data) {
        let rel = seg.strip_prefix(data.join("archive")).unwrap();
        let seal = SealRecord::load(&seal_path(&data.join("state"), rel)).unwrap().expect("every segment sealed");
        if let Some(n) = next {
            assert_eq!(seal.first_seq, n, "{}: sequence numbers continue from the previous segment", rel.display());
        }
        next = Some(seal.next_seq);
    }
}

#[test]
fn acknowledged_records_survive_any_sequence_of_disk_faults_crashes_and_clock_jumps() {
    util::require_tool("zstdcat");
    let base: u64 = std::env::var("FERRY_MODEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let cases: u64 = std::env::var("FERRY_MODEL_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(CASES);
    eprintln!("store model: {cases} cases from seed {base} (replay: FERRY_MODEL_SEED={base})");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if std::env::var_os("FERRY_MODEL_TRACE").is_some() {
        tracing_subscriber::fmt().with_env_filter("info").with_writer(std::io::stderr).init();
    }
    for case in 0..cases {
        let seed = base.wrapping_add(case);
        eprintln!("case {case}: seed {seed}");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run_case(seed))));
        if let Err(e) = r {
            eprintln!("store model FAILED at case {case}: replay with FERRY_MODEL_SEED={seed} FERRY_MODEL_CASES=1");
            std::panic::resume_unwind(e);
        }
    }
    let injected = INJECTED.load(std::sync::atomic::Ordering::Relaxed);
    let (bytes, entries) =
        (CUT_BYTES.load(std::sync::atomic::Ordering::Relaxed), CUT_ENTRIES.load(std::sync::atomic::Ordering::Relaxed));
    eprintln!(
        "store model: {cases} cases passed, {injected} faults injected, power cuts took {bytes} unsynced bytes and undid {entries} directory entries"
    );
    assert!(cases > 0, "FERRY_MODEL_CASES=0 runs nothing");
    assert!(injected >= cases, "faults fired: {injected}");
    assert!(bytes > 0, "the power cuts took nothing away: the model does not bite");
}
