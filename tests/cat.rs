//! `ferry cat`: records by time range from frame headers (frames outside are
//! not decompressed), the segment being written read while it grows, exact
//! records for scripts, and a quiet end on a closed pipe.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry::metrics::Metrics;
use ferry::store::clock::ManualClock;
use ferry::store::Store;
use proptest::prelude::*;
use util::store::{batch, config, config_of};
use util::*;

/// 2026-11-30T10:00:00Z
const T0: i64 = 1_796_032_800_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

/// One commit of `lines` received at `ms`.
async fn commit(store: &Store, ms: i64, lines: &[Vec<u8>]) {
    commit_to(store, "live", ms, lines).await
}

async fn commit_to(store: &Store, stream: &str, ms: i64, lines: &[Vec<u8>]) {
    util::store::commit(store, stream, batch(lines, ms)).await
}

fn ferry_cat(args: &[&str]) -> (Vec<u8>, String) {
    let out = Command::new(FERRY).arg("cat").args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ferry cat {args:?}: {err}");
    (out.stdout, err)
}

fn stat(stderr: &str, name: &str) -> u64 {
    let at = stderr.find(name).unwrap_or_else(|| panic!("no {name} in {stderr:?}"));
    stderr[at + name.len()..].trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_range_gives_exactly_its_records_and_frames_outside_are_not_decompressed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = Store::open(&config(dir.path(), ""), Arc::new(clock.clone()), Metrics::new()).unwrap();
    // Three hours, a commit every 5 minutes, each line tagged with its time.
    for h in 0..3 {
        for m in (0..60).step_by(5) {
            let t = T0 + h * HOUR + m * MIN;
            clock.set(t);
            let lines: Vec<Vec<u8>> = (0..40).map(|i| format!("<13>h{h}m{m:02} line {i}").into_bytes()).collect();
            commit(&store, t, &lines).await;
        }
    }
    store.close().await;
    let data = dir.path().display().to_string();
    let everything = String::from_utf8(zstdcat(dir.path())).unwrap();
    assert_eq!(everything.lines().count(), 3 * 12 * 40);

    // 11:10 to 11:30: minutes 10, 15, 20, 25 of the second hour.
    let (out, err) =
        ferry_cat(&[&data, "--from", "2026-11-30T11:10", "--to", "2026-11-30T11:30:00Z", "--raw", "--stats"]);
    let want: String = everything
        .lines()
        .filter(|l| ["h1m10 ", "h1m15 ", "h1m20 ", "h1m25 "].iter().any(|t| l.contains(t)))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(String::from_utf8(out).unwrap(), want);
    assert_eq!(stat(&err, "decompressed"), 4, "only the four frames in the range were decompressed: {err}");
    assert!(stat(&err, "skipped") >= 8, "frames of the same hour outside the range were skipped unread: {err}");
    assert!(stat(&err, "segments") <= 3, "{err}");

    // The readable form of plain lines is the same text; --json has one object per record.
    let (readable, _) = ferry_cat(&[&data, "--from", "2026-11-30T11:10", "--to", "2026-11-30T11:30"]);
    assert_eq!(String::from_utf8(readable).unwrap(), want);
    let (json, _) = ferry_cat(&[&data, "--from", "2026-11-30T12:55", "--json"]);
    let objs: Vec<serde_json::Value> =
        String::from_utf8(json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(objs.len(), 40);
    assert_eq!(objs[0]["site"], "s1");
    assert_eq!(objs[0]["node"], "n1");
    assert_eq!(objs[0]["record"], "<13>h2m55 line 0");
    assert_eq!(objs[0]["seq"].as_u64(), Some(35 * 40));
    assert_eq!(objs[39]["seq"].as_u64(), Some(36 * 40 - 1));

    // No range: everything, in order; an unknown stream: nothing.
    let (all, _) = ferry_cat(&[&data, "--raw"]);
    assert_eq!(String::from_utf8(all).unwrap(), everything);
    let (none, _) = ferry_cat(&[&data, "--stream", "other"]);
    assert!(none.is_empty());
    // A relative time is taken as the value of --from, not as an option
    // (`--from -5m` as the docs write it): nothing that recent here.
    let out = Command::new(FERRY).args(["cat", &data, "--from", "-5m", "--to", "-1m"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
    // A bad time names itself.
    let out = Command::new(FERRY).args(["cat", &data, "--from", "yesterday"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"yesterday\" is not a time"));
}

#[test]
fn the_segment_being_written_is_read_while_it_grows() {
    let dir = TestDir::new("cat-open");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let mut node = Node::start(&dir, &node_config(&dir, &ports, "", "", ""), ports.admin);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", ports.tcp)).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut b = Vec::new();
                for _ in 0..500 {
                    writeln!(b, "<13>open-{i:08} a line into the open segment").unwrap();
                    i += 1;
                }
                s.write_all(&b).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            i
        })
    };
    let data = dir.join("data").display().to_string();
    let (mut last, mut grew) = (0, 0);
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(150));
        let (out, _) = ferry_cat(&[&data, "--raw"]);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (k, l) in lines.iter().enumerate() {
            assert_eq!(*l, format!("<13>open-{k:08} a line into the open segment"), "whole records, in order");
        }
        assert!(lines.len() >= last, "the open segment only grows");
        grew += usize::from(lines.len() > last);
        last = lines.len();
    }
    // Read while it grew, not once at the end: most reads saw more than the one before.
    assert!(grew >= 4, "only {grew} of 8 reads saw the open segment grow ({last} records)");
    let sealed = walkdir::WalkDir::new(dir.join("data/state/seals")).into_iter().filter_map(Result::ok);
    assert_eq!(sealed.filter(|e| e.file_type().is_file()).count(), 0, "the segment read was the open one");
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    node.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(20), |v| v >= sent as f64);
    let (out, _) = ferry_cat(&[&data, "--raw"]);
    assert_eq!(String::from_utf8(out).unwrap().lines().count() as u64, sent);
    node.stop();
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let store = Store::open(&config(dir.path(), ""), Arc::new(ManualClock::new(T0)), Metrics::new()).unwrap();
        for k in 0..20 {
            let lines: Vec<Vec<u8>> =
                (0..5_000).map(|i| format!("<13>pipe {k} {i} {}", "x".repeat(80)).into_bytes()).collect();
            commit(&store, T0 + k, &lines).await;
        }
        store.close().await;
    });
    let mut c = Command::new(FERRY)
        .args(["cat", &dir.path().display().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(c.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert_eq!(first, format!("<13>pipe 0 0 {}\n", "x".repeat(80)));
    // The reader went away (as `| head -1` does).
    let status = c.wait().unwrap();
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.is_empty(), "nothing on stderr: {err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any bytes (LF, CR, NUL, backslashes, invalid UTF-8) come back exactly.
    #[test]
    fn records_of_any_bytes_come_back_exactly(records in prop::collection::vec(
        prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(0u8), Just(b'\\'), Just(b'n'), any::<u8>()], 0..40),
        1..60,
    )) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(async {
            let store = Store::open(&config(dir.path(), ""), Arc::new(ManualClock::new(T0)), Metrics::new()).unwrap();
            commit(&store, T0, &records).await;
            store.close().await;
        });
        let (out, _) = ferry_cat(&[&dir.path().display().to_string(), "--json"]);
        let got: Vec<Vec<u8>> = String::from_utf8(out).unwrap().lines().map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            match v.get("record").and_then(|r| r.as_str()) {
                Some(s) => s.as_bytes().to_vec(),
                None => {
                    let hex = v["record_hex"].as_str().unwrap();
                    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
                }
            }
        }).collect();
        prop_assert_eq!(got, records);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_interleaves_streams_by_receive_time_and_filters_by_stream() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_of("s1", "n1", dir.path(), "", &["live", "audit"]);
    let clock = ManualClock::new(T0);
    let store = Store::open(&cfg, Arc::new(clock.clone()), Metrics::new()).unwrap();
    for k in 0..10i64 {
        let t = T0 + k * MIN;
        clock.set(t);
        let stream = if k % 2 == 0 { "live" } else { "audit" };
        commit_to(&store, stream, t, &[format!("<13>{stream} at minute {k}").into_bytes()]).await;
    }
    store.close().await;
    let data = dir.path().display().to_string();
    let (merged, _) = ferry_cat(&[&data, "--merge", "--raw"]);
    let want: String =
        (0..10).map(|k| format!("<13>{} at minute {k}\n", if k % 2 == 0 { "live" } else { "audit" })).collect();
    assert_eq!(String::from_utf8(merged).unwrap(), want);
    // Without --merge: one origin after the other (audit sorts first).
    let (grouped, _) = ferry_cat(&[&data, "--raw"]);
    let grouped = String::from_utf8(grouped).unwrap();
    assert!(grouped.starts_with("<13>audit at minute 1\n<13>audit at minute 3\n"), "{grouped}");
    let (live, _) = ferry_cat(&[&data, "--raw", "--stream", "live", "--merge"]);
    assert_eq!(String::from_utf8(live).unwrap().lines().count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grep_matches_what_zstdcat_and_grep_match_in_the_same_order() {
    let grep = require_tool("grep");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = Store::open(&config(dir.path(), ""), Arc::new(clock.clone()), Metrics::new()).unwrap();
    let verbs = ["GET", "POST", "get", "DELETE"];
    let words = ["ok", "ERROR disk", "error: a.b", "Error axb", "timeout", "x"];
    let mut x: u64 = 7;
    for c in 0..150i64 {
        clock.set(T0 + c * 60_000); // two hours and a half: three segments
        let lines: Vec<Vec<u8>> = (0..200)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!(
                    "<13>host-{} {} /api/v{}/items?id={} {} {}",
                    x % 7,
                    verbs[(x >> 8) as usize % 4],
                    1 + (x >> 12) % 3,
                    c * 200 + i,
                    words[(x >> 20) as usize % 6],
                    if (x >> 30) % 50 == 0 { "rare-needle" } else { "" }
                )
                .into_bytes()
            })
            .collect();
        commit(&store, T0 + c * 60_000, &lines).await;
    }
    store.close().await;
    let data = dir.path().display().to_string();
    let files = segments(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    let cases: &[&[&str]] = &[
        &["GET /api/v[12]"],
        &["-F", "a.b"],
        &["-i", "error"],
        &["-v", "GET"],
        &["-c", "POST"],
        &["-c", "-v", "-i", "get"],
        &["-F", "-i", "ERROR DISK"],
        &["^<13>host-3 "],
        &["x$"],
        &["rare-needle"],
        &["-F", "no such thing anywhere"],
        // grep users' habits: -E (always so here), several -e, -w.
        &["-E", "POST|DELETE /x"],
        &["-e", "POST", "-e", "timeout"],
        &["-c", "-e", "x$", "-e", "^<13>"],
        &["-w", "x"],
        &["-w", "-i", "error"],
        &["-w", "-F", "a.b"],
    ];
    let all = zstdcat(dir.path());
    for args in cases {
        let mut g = Command::new(&grep).args(*args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut stdin = g.stdin.take().unwrap();
        let input = all.clone();
        let feeder = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let want = g.wait_with_output().unwrap();
        feeder.join().unwrap();
        let got = Command::new(FERRY).args(["grep"]).args(*args).args([&data, "--raw"]).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got.stdout),
            String::from_utf8_lossy(&want.stdout),
            "ferry grep {args:?} {}",
            String::from_utf8_lossy(&got.stderr)
        );
        assert_eq!(got.status.code(), want.status.code(), "exit status as grep's for {args:?}");
    }
    // With -e the word after the options is the archive; given twice, refused by name.
    let twice = Command::new(FERRY).args(["grep", "-e", "x", &data, &data]).output().unwrap();
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("name the archive once"));
    let p = Command::new(FERRY).args(["grep", "-P", "x", &data]).output().unwrap();
    assert!(String::from_utf8_lossy(&p.stderr).contains("'-P'"), "an option grep has and ferry not is named");
    // -l names the segments with a match; a time range narrows the search.
    let l = Command::new(FERRY).args(["grep", "-l", "rare-needle", &data]).output().unwrap();
    let listed: Vec<String> = String::from_utf8(l.stdout).unwrap().lines().map(str::to_owned).collect();
    assert!(!listed.is_empty() && listed.len() <= files.len());
    let out = Command::new(FERRY)
        .args(["grep", "-c", "GET", &data, "--from", "2026-11-30T10:10", "--to", "2026-11-30T10:11", "--stats"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stat(&err, "decompressed"), 1, "one commit in that minute: {err}");
    let in_minute: usize = String::from_utf8_lossy(&all)
        .lines()
        .filter(|l| {
            let id: i64 = l.split("id=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
            (10 * 200..11 * 200).contains(&id) && l.contains("GET")
        })
        .count();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), in_minute.to_string());
    // JSON matches carry their own sequence numbers (the id is the sequence here).
    let j = Command::new(FERRY).args(["grep", "rare-needle", &data, "--json"]).output().unwrap();
    let json = String::from_utf8(j.stdout).unwrap();
    assert!(json.lines().count() > 0, "grep --json finds the needles");
    for l in json.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let rec = v["record"].as_str().unwrap();
        let id: u64 = rec.split("id=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert_eq!(v["seq"].as_u64(), Some(id), "{rec}");
    }
}
