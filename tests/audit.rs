//! `ferry audit`: a complete archive says so; a missing segment, a
//! truncated one and a break in the record sequence are each a gap with the
//! right origin, hour and reason, in the table and in `--json`, and a
//! non-zero exit.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ferry::metrics::Metrics;
use ferry::store::clock::ManualClock;
use ferry::store::reader::{SegmentReader, Step};
use ferry::store::segment::{seal_path, sha256_file, SealRecord};
use ferry::store::Store;
use util::store::{batch, commit, config_of, HoldAll};
use util::FERRY;

/// 2026-11-30T10:00:00Z
const T0: i64 = 1_796_032_800_000;
const HOUR: i64 = 3_600_000;

/// Four sealed hourly segments (10:00 to 13:00) of 5 commits of 100 records.
async fn archive(dir: &Path) {
    let clock = ManualClock::new(T0);
    let store =
        Store::open(&config_of("sg1", "relay-1", dir, "", &["live"]), Arc::new(clock.clone()), Metrics::new()).unwrap();
    for hour in 0..4 {
        for c in 0..5 {
            let t = T0 + hour * HOUR + c * 600_000;
            clock.set(t);
            let lines: Vec<Vec<u8>> = (0..100).map(|i| format!("<13>h{hour} c{c} record {i}").into_bytes()).collect();
            commit(&store, "live", batch(&lines, t)).await;
        }
    }
    store.close().await;
}

fn segment(dir: &Path, hour: u32) -> PathBuf {
    let mut v = util::segments(dir);
    v.sort();
    v.into_iter().find(|p| p.to_string_lossy().contains(&format!("T{hour:02}-"))).unwrap()
}

fn audit(dir: &Path) -> (i32, String, serde_json::Value) {
    let d = dir.display().to_string();
    let table = Command::new(FERRY).args(["audit", &d]).output().unwrap();
    let json = Command::new(FERRY).args(["audit", &d, "--json"]).output().unwrap();
    assert_eq!(table.status.code(), json.status.code());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    (table.status.code().unwrap(), String::from_utf8(table.stdout).unwrap(), v)
}

fn statuses(v: &serde_json::Value) -> Vec<(String, String)> {
    v["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["hour"].as_str().unwrap().to_owned(), h["status"].as_str().unwrap().to_owned()))
        .collect()
}

fn only_gap(v: &serde_json::Value) -> (String, String) {
    let gaps = v["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let g = &gaps[0];
    assert_eq!(
        (g["site"].as_str(), g["stream"].as_str(), g["node"].as_str()),
        (Some("sg1"), Some("live"), Some("relay-1"))
    );
    (g["hour"].as_str().unwrap().to_owned(), g["reason"].as_str().unwrap().to_owned())
}

fn copy_dir(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_archive_then_each_kind_of_gap_with_its_hour_and_reason() {
    let base = tempfile::tempdir().unwrap();
    archive(base.path()).await;
    let (code, table, v) = audit(base.path());
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("no gaps"), "{table}");
    let hours: Vec<(String, String)> = (10..14).map(|h| (format!("2026-11-30T{h}"), "complete".to_owned())).collect();
    assert_eq!(statuses(&v), hours);
    assert_eq!(v["hours"][1]["records"].as_u64(), Some(500));
    assert_eq!((v["hours"][1]["first_seq"].as_u64(), v["hours"][1]["next_seq"].as_u64()), (Some(500), Some(1000)));
    assert!(table.contains("sg1/live/relay-1") && table.contains("500..1000"), "{table}");
    let closed: Vec<bool> = v["hours"].as_array().unwrap().iter().map(|h| h["closed"].as_bool().unwrap()).collect();
    assert_eq!(closed, [true, true, true, false], "the last hour has no successor yet");
    // The same facts as metrics: 12:00 is the newest hour complete and
    // closed, so the gauge says 13:00; no gap.
    let (m, mut seen) = (Metrics::new(), Default::default());
    let st = base.path().join("state");
    ferry::query::watch::refresh(&base.path().join("archive"), &st, &m, &mut seen).unwrap();
    let origin = [("site", "sg1"), ("stream", "live"), ("node", "relay-1")];
    let text = m.render();
    assert_eq!(
        util::metric_value(&text, "ferry_audit_complete_hour_seconds", &origin),
        ((T0 + 3 * HOUR) / 1000) as f64
    );
    assert!(!text.contains("ferry_audit_gaps{"), "{text}");

    // A segment missing (deleted from the mirror, never delivered).
    let d = tempfile::tempdir().unwrap();
    copy_dir(base.path(), d.path());
    let seg = segment(d.path(), 11);
    std::fs::remove_file(&seg).unwrap();
    let (code, table, v) = audit(d.path());
    assert_eq!(code, 1);
    assert_eq!(only_gap(&v), ("2026-11-30T11".into(), "segment_missing".into()));
    assert!(table.contains("2026-11-30T11: segment_missing"), "{table}");
    assert!(statuses(&v).contains(&("2026-11-30T11".into(), "gap".into())));
    let (st, archive) = (d.path().join("state"), d.path().join("archive"));
    ferry::query::watch::refresh(&archive, &st, &m, &mut seen).unwrap();
    let gap = [origin.as_slice(), &[("reason", "segment_missing")]].concat();
    assert_eq!(util::metric_value(&m.render(), "ferry_audit_gaps", &gap), 1.0);
    // Put back, the gap is gone from the metrics too (0, not a stale 1).
    copy_dir(base.path(), d.path());
    ferry::query::watch::refresh(&archive, &st, &m, &mut seen).unwrap();
    assert_eq!(util::metric_value(&m.render(), "ferry_audit_gaps", &gap), 0.0);

    // Two hours missing in a row: both are gaps, not only the first.
    let d = tempfile::tempdir().unwrap();
    copy_dir(base.path(), d.path());
    std::fs::remove_file(segment(d.path(), 11)).unwrap();
    std::fs::remove_file(segment(d.path(), 12)).unwrap();
    let (code, table, v) = audit(d.path());
    assert_eq!(code, 1, "{table}");
    for h in ["2026-11-30T11", "2026-11-30T12"] {
        assert!(statuses(&v).contains(&(h.into(), "gap".into())), "{h}: {table}");
    }

    // A sealed segment cut short.
    let d = tempfile::tempdir().unwrap();
    copy_dir(base.path(), d.path());
    let seg = segment(d.path(), 12);
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 50).unwrap();
    let (code, table, v) = audit(d.path());
    assert_eq!(code, 1, "{table}");
    assert_eq!(only_gap(&v), ("2026-11-30T12".into(), "seal_mismatch".into()));

    // Records cut from the end of a segment (as after a failed fsync: the
    // segment sealed at its durable length, the numbers lost with it).
    let d = tempfile::tempdir().unwrap();
    copy_dir(base.path(), d.path());
    let seg = segment(d.path(), 10);
    let mut r = SegmentReader::open(&seg).unwrap();
    let mut last = (0, 0);
    while let Step::Frame { offset, header } = r.next_frame().unwrap() {
        last = (offset, header.records);
    }
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(last.0).unwrap();
    let rel = seg.strip_prefix(d.path().join("archive")).unwrap();
    let sp = seal_path(&d.path().join("state"), rel);
    let mut seal = SealRecord::load(&sp).unwrap().unwrap();
    seal.len = last.0;
    seal.sha256 = sha256_file(&seg).unwrap();
    seal.frames -= 1;
    seal.records -= u64::from(last.1);
    seal.next_seq -= u64::from(last.1);
    std::fs::write(&sp, seal.to_text()).unwrap();
    let (code, table, v) = audit(d.path());
    assert_eq!(code, 1, "{table}");
    assert_eq!(only_gap(&v), ("2026-11-30T11".into(), "records_missing".into()));
    assert_eq!((v["gaps"][0]["from_seq"].as_u64(), v["gaps"][0]["to_seq"].as_u64()), (Some(400), Some(500)));
}

/// Also: central loses its whole state directory (seal records, epoch) and
/// gets it back from the edge, which sees the new epoch and offers every
/// segment again; then a deleted and a cut mirror segment are gaps.
#[test]
fn a_central_mirror_after_a_transfer_is_complete_and_a_deleted_mirror_segment_is_a_gap() {
    use std::time::Duration;
    use util::link::{pair, wait_mirrored, Pki, Via};
    use util::{ferry_send, free_port, Node, TestDir};
    let pki_dir = TestDir::new("pki");
    let pki = Pki::new(&pki_dir, "pki");
    let port = free_port();
    let p = pair("audit", &pki, Via::Tls, port, port, "commit_bytes = \"64KiB\"\nsegment_max_bytes = \"256KiB\"", "");
    let mut central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
    let mut edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    let mut input = Vec::new();
    for i in 0..30_000 {
        input.extend_from_slice(format!("<13>audit-{i:06} {}\n", util::noise(i, 40)).as_bytes());
    }
    ferry_send(&["--to", &format!("127.0.0.1:{}", p.edge_ports.tcp)], &input);
    edge.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(30), |v| v >= 30_000.0);
    edge.stop();
    wait_mirrored(&edge.data, &central.data, Duration::from_secs(30));
    central.stop();
    for data in [&edge.data, &central.data] {
        let (code, table, v) = audit(data);
        assert_eq!(code, 0, "{table}");
        let hours = v["hours"].as_array().unwrap();
        assert!(hours.iter().all(|h| h["status"] == "complete" && h["site"] == "edge1"), "{table}");
        let records: u64 = hours.iter().map(|h| h["records"].as_u64().unwrap()).sum();
        assert_eq!(records, 30_000, "{table}");
    }

    std::fs::remove_dir_all(central.data.join("state")).unwrap();
    let (_, table, v) = audit(&central.data);
    let hours = v["hours"].as_array().unwrap();
    assert!(!hours.is_empty(), "the segments are still there to be audited: {table}");
    assert!(hours.iter().all(|h| h["status"] == "open"), "no seal, nothing proven: {table}");
    let mut central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
    let mut edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    wait_mirrored(&edge.data, &central.data, Duration::from_secs(30));
    edge.stop();
    central.stop();
    let (code, table, v) = audit(&central.data);
    assert_eq!(code, 0, "{table}");
    assert!(v["hours"].as_array().unwrap().iter().all(|h| h["status"] == "complete"), "{table}");

    let segs = util::segments(&central.data);
    assert!(segs.len() >= 4, "{segs:?}");
    let mut sorted = segs.clone();
    sorted.sort();
    std::fs::remove_file(&sorted[1]).unwrap();
    let len = std::fs::metadata(&sorted[3]).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&sorted[3]).unwrap().set_len(len - 50).unwrap();
    let (code, table, v) = audit(&central.data);
    assert_eq!(code, 1, "{table}");
    let reasons: Vec<&str> = v["gaps"].as_array().unwrap().iter().map(|g| g["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["segment_missing", "seal_mismatch"], "{table}");
    assert!(v["gaps"].as_array().unwrap().iter().all(|g| g["site"] == "edge1"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undelivered_segment_deleted_by_drop_oldest_is_named_as_such() {
    let base = tempfile::tempdir().unwrap();
    archive(base.path()).await;
    let d = tempfile::tempdir().unwrap();
    copy_dir(base.path(), d.path());
    // 12:30, max_age 1h: the 10:00 segment (sealed at 11:00) is too old, and
    // drop_oldest deletes it although no uplink delivered it.
    let retention = "[store.retention]\nmax_age = \"1h\"\non_full = \"drop_oldest\"";
    let store = Store::open(
        &config_of("sg1", "relay-1", d.path(), retention, &["live"]),
        Arc::new(ManualClock::new(T0 + 2 * HOUR + HOUR / 2)),
        Metrics::new(),
    )
    .unwrap();
    let out = store.retention_pass(&HoldAll).unwrap();
    assert_eq!(out.deleted.len(), 1, "{:?}", out.deleted);
    // Kept by the next pass: its `max_age` counts from when it was written.
    store.retention_pass(&HoldAll).unwrap();
    let tomb = ferry::store::segment::gone_path(&d.path().join("state"), &out.deleted[0]);
    assert!(tomb.exists());
    let (code, table, v) = audit(d.path());
    assert_eq!(code, 1, "{table}");
    assert_eq!(only_gap(&v), ("2026-11-30T10".into(), "deleted_undelivered".into()));
    assert_eq!((v["gaps"][0]["from_seq"].as_u64(), v["gaps"][0]["to_seq"].as_u64()), (Some(0), Some(500)));
    assert!(table.contains("deleted before delivery"), "{table}");
    assert!(statuses(&v).contains(&("2026-11-30T11".into(), "complete".into())), "{table}");
    // Written more than `max_age` before the store's now (12:30): expired.
    let f = std::fs::File::options().write(true).open(&tomb).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_millis((T0 + HOUR) as u64)).unwrap();
    store.retention_pass(&HoldAll).unwrap();
    assert!(!tomb.exists(), "expired with retention");
    store.close().await;
}

/// The edge deletes undelivered segments (`drop_oldest`, archive over
/// `max_bytes`) while central is down; once central is back the uplink
/// delivers the rest and tells it what was deleted (GONE): `ferry audit` at
/// central names each hole `deleted_undelivered` with the same sequence
/// ranges as at the edge, and every record sent is either at central or in
/// one of those ranges.
#[test]
fn a_drop_oldest_deletion_at_the_edge_before_delivery_is_a_gap_at_central() {
    use std::time::Duration;
    use util::link::{pair, wait_mirrored, Pki, Via};
    use util::{ferry_send, free_port, Node, TestDir};
    let pki_dir = TestDir::new("pki");
    let pki = Pki::new(&pki_dir, "pki");
    let port = free_port();
    let store = "commit_bytes = \"64KiB\"\nsegment_max_bytes = \"256KiB\"\n[store.retention]\nmax_bytes = \"1MiB\"\non_full = \"drop_oldest\"\ncheck_interval = \"200ms\"";
    let p = pair("gone", &pki, Via::Tls, port, port, store, "");
    let mut edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    const N: usize = 80_000;
    let mut input = Vec::new();
    for i in 0..N {
        input.extend_from_slice(format!("<13>gone-{i:06} {}\n", util::noise(i as u64, 60)).as_bytes());
    }
    ferry_send(&["--to", &format!("127.0.0.1:{}", p.edge_ports.tcp)], &input);
    edge.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(30), |v| v >= N as f64);
    let undelivered = [("reason", "undelivered")];
    edge.wait_metric("ferry_retention_deleted_segments_total", &undelivered, Duration::from_secs(30), |v| v >= 2.0);
    // Central comes up; the edge delivers what is left and stops once
    // everything, tombstones included, is taken.
    let mut central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
    edge.stop();
    wait_mirrored(&edge.data, &central.data, Duration::from_secs(30));
    // Central's metrics say so too (refreshed after the layout changed).
    let gap = [("site", "edge1"), ("stream", "live"), ("node", "relay-1"), ("reason", "deleted_undelivered")];
    central.wait_metric("ferry_audit_gaps", &gap, Duration::from_secs(30), |v| v >= 2.0);
    central.stop();
    let (code, table, at_edge) = audit(&edge.data);
    assert_eq!(code, 1, "{table}");
    let (code, table, at_central) = audit(&central.data);
    assert_eq!(code, 1, "{table}");
    let gaps = at_central["gaps"].as_array().unwrap();
    assert!(gaps.len() >= 2, "{table}");
    assert!(gaps.iter().all(|g| g["reason"] == "deleted_undelivered" && g["site"] == "edge1"), "{table}");
    assert_eq!(at_central["gaps"], at_edge["gaps"], "{table}");
    let held: u64 = at_central["hours"].as_array().unwrap().iter().map(|h| h["records"].as_u64().unwrap()).sum();
    let lost: u64 = gaps.iter().map(|g| g["to_seq"].as_u64().unwrap() - g["from_seq"].as_u64().unwrap()).sum();
    assert!(lost > 0);
    assert_eq!(held + lost, N as u64, "{table}");
    eprintln!("{table}");
    assert!(table.contains("deleted before delivery"), "{table}");
}
