//! `kind = "file"`: files tailed while real `logrotate` rotates them, through
//! `kill -9`, inode reuse, quotas and thousands of files.

mod util;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::*;

/// A node whose only listener tails `paths`, with `keys` added to it.
fn file_node_config(dir: &TestDir, admin: u16, paths: &[PathBuf], keys: &str) -> String {
    let paths: Vec<String> = paths.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    format!(
        r#"
[node]
site = "test"
name = "n1"
data_dir = "{data}"

[admin]
listen = "127.0.0.1:{admin}"

[store]
commit_interval = "50ms"

[[stream]]
name = "live"

[[listener]]
name = "files"
kind = "file"
paths = [{paths}]
stream = "live"
{keys}
"#,
        data = dir.join("data").display(),
        paths = paths.join(", "),
    )
}

/// One archived line of a tailed file: `f=<file> g=<generation> seq=<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Seen {
    gen: u32,
    seq: u64,
}

/// Lines per file name, in archive order, from records of the file listener.
fn archived(data: &Path) -> HashMap<String, Vec<Seen>> {
    let text = zstdcat_running(data);
    let mut out: HashMap<String, Vec<Seen>> = HashMap::new();
    for line in String::from_utf8_lossy(&text).lines() {
        let Some((_, msg)) = line.split_once("\"] ") else { continue };
        let mut f = None;
        let mut g = None;
        let mut s = None;
        for w in msg.split(' ') {
            if let Some(v) = w.strip_prefix("f=") {
                f = Some(v.to_owned());
            } else if let Some(v) = w.strip_prefix("g=") {
                g = v.parse().ok();
            } else if let Some(v) = w.strip_prefix("seq=") {
                s = v.parse().ok();
            }
        }
        if let (Some(f), Some(gen), Some(seq)) = (f, g, s) {
            out.entry(f).or_default().push(Seen { gen, seq });
        }
    }
    out
}

/// Appends lines `f=<name> g=<gen> seq=<n> …` to files at a total rate, the
/// way an application does: O_APPEND, and a reopen when its file was renamed
/// away (`logrotate`'s `create`; `g` counts the reopens).
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<HashMap<String, u64>>>,
}

impl Writer {
    fn start(files: Vec<PathBuf>, lines_per_sec: u64, pad: usize) -> Writer {
        Writer::start_with(files, lines_per_sec, pad, true)
    }

    /// `follow`: look for renames (a stat per file per write).
    fn start_with(files: Vec<PathBuf>, lines_per_sec: u64, pad: usize, follow: bool) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let open = |p: &Path| std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap();
            let mut fds: Vec<(std::fs::File, u64, u32)> = files
                .iter()
                .map(|p| {
                    let f = open(p);
                    let ino = f.metadata().unwrap().ino();
                    (f, ino, 0)
                })
                .collect();
            let names: Vec<String> =
                files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
            let mut seq = vec![0u64; files.len()];
            let start = Instant::now();
            let padding = "x".repeat(pad);
            let mut buf = Vec::new();
            let mut written = 0u64;
            while !s.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * lines_per_sec as f64) as u64;
                if due <= written {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let n = (due - written).min(lines_per_sec / 10 + 1);
                for i in (0..files.len()).filter(|_| follow) {
                    // The application notices its file was renamed away and opens a new one.
                    // Between logrotate's rename and its create there is no file:
                    // the application goes on writing to the old one (creating
                    // it itself would make logrotate move that one aside as a
                    // `.backup`, outside the globs).
                    if let Ok(m) = std::fs::metadata(&files[i]) {
                        if m.ino() != fds[i].1 {
                            if let Ok(f) = std::fs::OpenOptions::new().append(true).open(&files[i]) {
                                let ino = f.metadata().unwrap().ino();
                                let g = fds[i].2 + 1;
                                fds[i] = (f, ino, g);
                            }
                        }
                    }
                }
                let mut per = vec![Vec::new(); files.len()];
                for k in 0..n {
                    let i = ((written + k) % files.len() as u64) as usize;
                    buf.clear();
                    writeln!(buf, "f={} g={} seq={} {padding}", names[i], fds[i].2, seq[i]).unwrap();
                    per[i].extend_from_slice(&buf);
                    seq[i] += 1;
                }
                for (i, b) in per.iter().enumerate() {
                    if !b.is_empty() {
                        fds[i].0.write_all(b).unwrap();
                    }
                }
                written += n;
            }
            names.into_iter().zip(seq).collect()
        });
        Writer { stop, thread: Some(thread) }
    }

    /// Lines written per file name.
    fn finish(mut self) -> HashMap<String, u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `logrotate -f` on `conf` every `every` until stopped; returns the
/// (start, end) of each run.
struct Rotator {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(Instant, Instant)>>>,
}

impl Rotator {
    fn start(dir: &TestDir, conf: &str, every: Duration) -> Rotator {
        let logrotate = require_tool("logrotate");
        let conf_path = dir.join("logrotate.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let state = dir.join("logrotate.state");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut runs = Vec::new();
            let mut next = Instant::now() + every;
            while !s.load(Ordering::Relaxed) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                next += every;
                let t0 = Instant::now();
                let out = std::process::Command::new(&logrotate)
                    .arg("-f")
                    .arg("-s")
                    .arg(&state)
                    .arg(&conf_path)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "logrotate failed: {}", String::from_utf8_lossy(&out.stderr));
                runs.push((t0, Instant::now()));
            }
            runs
        });
        Rotator { stop, thread: Some(thread) }
    }

    fn finish(mut self) -> Vec<(Instant, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Rotator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// This test process holds a descriptor per file it writes.
fn raise_open_files_limit(want: u64) {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        if l.rlim_cur < want {
            l.rlim_cur = want.min(l.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
        }
    }
    assert!(l.rlim_cur >= want, "the open files hard limit {} is below the {want} this test needs", l.rlim_max);
}

/// Wait until every file's archived lines reach what was written, or
/// nothing more arrives for 3 s (a copytruncate file never reaches it).
fn wait_archived(node: &Node, written: &HashMap<String, u64>, limit: Duration) -> HashMap<String, Vec<Seen>> {
    let t = Instant::now();
    let (mut last_total, mut since) = (0usize, Instant::now());
    loop {
        let got = archived(&node.data);
        let done = written.iter().all(|(f, n)| {
            let distinct: std::collections::HashSet<u64> = got.get(f).into_iter().flatten().map(|s| s.seq).collect();
            distinct.len() as u64 >= *n
        });
        let total: usize = got.values().map(|v| v.len()).sum();
        if total != last_total {
            (last_total, since) = (total, Instant::now());
        }
        if done || t.elapsed() > limit || since.elapsed() > Duration::from_secs(3) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every line of a file at most once, and in order within each file the
/// application wrote (a generation): a line of generation g is never archived
/// after a later line of g.
fn check_order(name: &str, seen: &[Seen]) {
    let mut last: HashMap<u32, u64> = HashMap::new();
    for s in seen {
        if let Some(prev) = last.get(&s.gen) {
            assert!(s.seq > *prev, "{name}: seq {} of generation {} archived after seq {prev}", s.seq, s.gen);
        }
        last.insert(s.gen, s.seq);
    }
}

/// Real logrotate every 2 s, `create` for two files and `copytruncate` for
/// a third, while 20,000 lines/s are appended to the three: every line of
/// the renamed files is archived exactly once and in order; the
/// copytruncate file loses only lines written in the window logrotate's own
/// design leaves (after ferry's last read, before the truncation), counted
/// and bounded, and doubles none.
#[test]
fn logrotate_create_and_copytruncate_every_two_seconds_under_20k_lines_per_second() {
    let dir = TestDir::new("files-rotate");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let admin = free_port();
    let files: Vec<PathBuf> = ["a.log", "b.log", "c.log"].iter().map(|f| logs.join(f)).collect();
    // The first rotated name of the `create` files too: a start between a
    // rename and the last read of the renamed file finds it there.
    let globs = vec![logs.join("[ab].log"), logs.join("[ab].log.1"), logs.join("c.log")];
    let cfg = file_node_config(&dir, admin, &globs, "rotate_wait = \"1s\"");
    let mut node = Node::start(&dir, &cfg, admin);
    let conf = format!(
        "{a} {b} {{\n  create\n  rotate 3\n  missingok\n  nocompress\n}}\n{c} {{\n  copytruncate\n  rotate 3\n  missingok\n  nocompress\n}}\n",
        a = files[0].display(),
        b = files[1].display(),
        c = files[2].display()
    );
    let writer = Writer::start(files.clone(), 20_000, 60);
    let rotator = Rotator::start(&dir, &conf, Duration::from_secs(2));
    std::thread::sleep(Duration::from_secs(21));
    let runs = rotator.finish();
    let written = writer.finish();
    assert!(runs.len() >= 9, "logrotate ran {} times", runs.len());
    let got = wait_archived(&node, &written, Duration::from_secs(60));
    let truncations = node.metric("ferry_file_truncations_total", &[("listener", "files")]);
    let finished = node.metric("ferry_file_finished_total", &[("listener", "files")]);
    node.stop();
    assert_verify_ok(&node.data);
    for f in ["a.log", "b.log"] {
        let seen = &got[f];
        check_order(f, seen);
        let mut seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
        seqs.sort_unstable();
        let n = written[f];
        assert_eq!(seqs.len() as u64, n, "{f}: {} archived of {n} written (duplicates or losses)", seqs.len());
        assert!(seqs.iter().enumerate().all(|(i, s)| *s == i as u64), "{f}: a line is missing or doubled");
        let gens = seen.iter().map(|s| s.gen).max().unwrap();
        assert!(gens as usize >= runs.len() - 1, "{f}: only {gens} rotations seen of {} runs", runs.len());
    }
    // copytruncate: no line twice, in order; the missing ones are the
    // windows between ferry's last read and each truncation.
    let seen = &got["c.log"];
    check_order("c.log", seen);
    let mut seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
    let len = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), len, "c.log: lines archived twice");
    let n = written["c.log"];
    let missing = n - seqs.len() as u64;
    // Runs of missing lines: each must sit at a truncation.
    let mut holes = Vec::new();
    let mut expect = 0u64;
    for s in &seqs {
        if *s > expect {
            holes.push(s - expect);
        }
        expect = s + 1;
    }
    if expect < n {
        holes.push(n - expect);
    }
    let per_sec = 20_000.0 / 3.0;
    eprintln!(
        "copytruncate: {} truncations seen by ferry of {} logrotate runs; {missing} of {n} lines lost in {} windows (largest {} lines = {:.1} ms of writing); {finished} renamed files finished",
        truncations,
        runs.len(),
        holes.len(),
        holes.iter().max().unwrap_or(&0),
        *holes.iter().max().unwrap_or(&0) as f64 / per_sec * 1000.0,
    );
    assert!(truncations >= (runs.len() - 1) as f64, "ferry saw {truncations} truncations of {} runs", runs.len());
    assert!(
        holes.len() <= runs.len(),
        "{} holes for {} truncations: lines lost outside the rotation window",
        holes.len(),
        runs.len()
    );
    // The window is logrotate's copy plus ferry's read delay: bounded well
    // under a quarter second of writing per rotation.
    let bound = (per_sec * 0.25) as u64;
    assert!(holes.iter().all(|h| *h <= bound), "a copytruncate window lost more than {bound} lines: {holes:?}");
    assert!(finished >= (2 * (runs.len() - 1)) as f64, "renamed files finished: {finished}");
}

/// `kill -9` five times while logrotate renames the files every 2 s and
/// 20,000 lines/s are written: no line is lost; lines archived twice are at
/// most what the commits in flight held (`ferry_file_repeated_bytes_total`).
#[test]
fn kill9_five_times_during_rotation_loses_no_line() {
    let dir = TestDir::new("files-kill");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let admin = free_port();
    let files: Vec<PathBuf> = ["a.log", "b.log", "c.log"].iter().map(|f| logs.join(f)).collect();
    let globs = vec![logs.join("*.log"), logs.join("*.log.1")];
    let cfg = file_node_config(&dir, admin, &globs, "rotate_wait = \"1s\"");
    let mut node = Node::start(&dir, &cfg, admin);
    let conf = format!(
        "{} {} {} {{\n  create\n  rotate 5\n  missingok\n  nocompress\n}}\n",
        files[0].display(),
        files[1].display(),
        files[2].display()
    );
    const PAD: usize = 60;
    let writer = Writer::start(files.clone(), 20_000, PAD);
    let rotator = Rotator::start(&dir, &conf, Duration::from_secs(2));
    let mut repeated = 0.0;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(2500));
        node.kill9();
        std::thread::sleep(Duration::from_millis(300));
        node = Node::start(&dir, &cfg, admin);
        repeated += node.metric("ferry_file_repeated_bytes_total", &[("listener", "files")]);
    }
    std::thread::sleep(Duration::from_secs(2));
    let runs = rotator.finish();
    let written = writer.finish();
    let got = wait_archived(&node, &written, Duration::from_secs(60));
    node.stop();
    assert_verify_ok(&node.data);
    let mut doubled = 0u64;
    let mut bytes_doubled = 0u64;
    for (f, n) in &written {
        let seen = got.get(f).cloned().unwrap_or_default();
        let mut count: HashMap<u64, u32> = HashMap::new();
        for s in &seen {
            *count.entry(s.seq).or_default() += 1;
        }
        let lost: Vec<u64> = (0..*n).filter(|s| !count.contains_key(s)).take(10).collect();
        assert!(lost.is_empty(), "{f}: lines lost, first {lost:?} ({} archived of {n})", count.len());
        for (seq, c) in count {
            if c > 1 {
                doubled += u64::from(c - 1);
                bytes_doubled += u64::from(c - 1) * format!("f={f} g=0 seq={seq} {}\n", "x".repeat(PAD)).len() as u64;
            }
        }
    }
    eprintln!(
        "5 kill -9 and {} rotations: every line of {} archived; {doubled} lines ({bytes_doubled} bytes) twice, {repeated} bytes counted as possibly repeated",
        runs.len(),
        written.values().sum::<u64>()
    );
    // Generation digits differ from 0 by a few bytes per line: allow them.
    assert!(
        bytes_doubled as f64 <= repeated + doubled as f64 * 4.0,
        "{bytes_doubled} bytes archived twice but only {repeated} counted as repeated"
    );
}

/// A file deleted and a new one created at the same inode with other
/// content is read from its start: while the node runs, and across a
/// restart (where only the fingerprint can tell them apart).
#[test]
fn a_new_file_at_a_reused_inode_is_read_from_its_start() {
    // A real disk (tmpfs never reuses inode numbers): under target/.
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = TestDir::new("files-inode");
    let logs = tempfile::Builder::new().prefix("ferry-inode-").tempdir_in(&base).unwrap();
    let admin = free_port();
    let path = logs.path().join("app.log");
    let cfg = file_node_config(&dir, admin, &[logs.path().join("*.log")], "rotate_wait = \"300ms\"");

    // A new file at the inode of `path`, `lines` long, tagged `tag`.
    let replace = |tag: &str, lines: usize| -> u64 {
        let old = std::fs::metadata(&path).unwrap().ino();
        std::fs::remove_file(&path).unwrap();
        let mut spare = Vec::new();
        for i in 0..5000 {
            let p = logs.path().join(format!("new-{tag}-{i}.tmp"));
            let mut body = String::new();
            for n in 0..lines {
                body.push_str(&format!("f=app.log g=0 seq={n} {tag} a longer life at the same inode\n"));
            }
            std::fs::write(&p, body).unwrap();
            if std::fs::metadata(&p).unwrap().ino() == old {
                std::fs::rename(&p, &path).unwrap();
                for s in spare {
                    std::fs::remove_file(s).unwrap();
                }
                return old;
            }
            spare.push(p);
        }
        panic!("the filesystem under {} gave inode {old} to none of 5000 new files", base.display());
    };
    let tagged = |data: &Path, tag: &str| -> Vec<u64> {
        let text = zstdcat_running(data);
        let mut v: Vec<u64> = String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| l.contains(tag))
            .filter_map(|l| l.split(' ').find_map(|w| w.strip_prefix("seq=")).and_then(|s| s.parse().ok()))
            .collect();
        v.sort_unstable();
        v
    };
    let wait_tag = |node: &Node, tag: &str, n: usize| {
        let t = Instant::now();
        while tagged(&node.data, tag).len() < n && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let got = tagged(&node.data, tag);
        assert_eq!(got, (0..n as u64).collect::<Vec<_>>(), "{tag}: lines archived");
    };

    let mut first = String::new();
    for n in 0..100 {
        first.push_str(&format!("f=app.log g=0 seq={n} first\n"));
    }
    std::fs::write(&path, first).unwrap();
    let mut node = Node::start(&dir, &cfg, admin);
    wait_tag(&node, "first", 100);
    // While running: deleted, closed after rotate_wait, a new file at its inode.
    std::thread::sleep(Duration::from_millis(200));
    replace("second", 300);
    wait_tag(&node, "second", 300);
    // Across a restart: the checkpoint holds the inode at an offset inside
    // the new file; the fingerprint says it is another file.
    node.stop();
    replace("third", 600);
    node = Node::start(&dir, &cfg, admin);
    wait_tag(&node, "third", 600);
    node.stop();
    assert_eq!(tagged(&node.data, "first").len(), 100, "the first file's lines once");
    assert_eq!(tagged(&node.data, "second").len(), 300, "the second file's lines once");
}

/// A file writing ten times its quota gets exactly its quota per period
/// archived; the rest is counted as dropped (reason file_quota), and the
/// file is not read into memory (RSS stays flat).
#[test]
fn a_file_over_its_quota_gets_its_quota_per_period_and_the_rest_is_counted() {
    let dir = TestDir::new("files-quota");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let admin = free_port();
    const QUOTA: u64 = 20 << 10;
    const PERIOD: u64 = 2;
    let cfg = file_node_config(&dir, admin, &[logs.join("*.log")], "quota = \"20KiB/2s\"");
    let mut node = Node::start(&dir, &cfg, admin);
    // 100-byte lines, 10x the quota: 2,000 lines per 2 s period.
    let line_len = format!("f=q.log g=0 seq={} {}\n", 0, "x".repeat(70)).len() as u64;
    let per_sec = 10 * QUOTA / PERIOD / line_len;
    let writer = Writer::start(vec![logs.join("q.log")], per_sec, 70);
    std::thread::sleep(Duration::from_secs(9));
    let written = writer.finish()["q.log"];
    std::thread::sleep(Duration::from_secs(1));
    node.wait_metric("ferry_file_lag_bytes", &[("listener", "files")], Duration::from_secs(5), |v| v == 0.0);
    let dropped = node.metric("ferry_dropped_records_total", &[("listener", "files"), ("reason", "file_quota")]);
    let passed_over = node.metric("ferry_file_quota_skipped_bytes_total", &[("listener", "files")]);
    node.stop();
    let text = String::from_utf8_lossy(&zstdcat(&node.data)).into_owned();
    // Bytes per period, by the time each record was read (its timestamp).
    let mut per_period: HashMap<u64, u64> = HashMap::new();
    let mut archived = 0u64;
    for l in text.lines() {
        let ts = l.split(' ').nth(1).unwrap();
        let secs = (ts[11..13].parse::<u64>().unwrap() * 3600)
            + ts[14..16].parse::<u64>().unwrap() * 60
            + ts[17..19].parse::<u64>().unwrap();
        let msg = l.split_once("\"] ").unwrap().1;
        *per_period.entry(secs / PERIOD).or_default() += msg.len() as u64 + 1;
        archived += 1;
    }
    let mut periods: Vec<_> = per_period.into_iter().collect();
    periods.sort_unstable();
    eprintln!("quota {QUOTA} B per {PERIOD} s; archived per period: {periods:?}; {archived} of {written} lines archived, {dropped} dropped ({passed_over} bytes passed over)");
    assert_eq!(archived + dropped as u64, written, "every line archived or counted as dropped");
    assert!(periods.iter().all(|(_, b)| *b <= QUOTA), "a period got more than its quota");
    // The periods the writer covered whole got their quota to the line.
    for (_, b) in &periods[1..periods.len() - 1] {
        assert!(*b > QUOTA - line_len, "a whole period got {b} of its quota {QUOTA}");
    }
    assert!(dropped as u64 >= written * 8 / 10, "only {dropped} of {written} dropped");
    let kept: std::collections::HashSet<u64> = text
        .lines()
        .filter_map(|l| l.split(' ').find_map(|w| w.strip_prefix("seq=")).and_then(|s| s.parse().ok()))
        .collect();
    let dropped_bytes: u64 = (0..written)
        .filter(|s| !kept.contains(s))
        .map(|s| format!("f=q.log g=0 seq={s} {}\n", "x".repeat(70)).len() as u64)
        .sum();
    assert_eq!(passed_over as u64, dropped_bytes, "skipped bytes are the dropped lines");
}

/// 5,000 files in one glob, one line a second each: every line archived;
/// CPU and RSS reported; idle (nothing written) the listener costs nearly
/// nothing.
#[test]
fn five_thousand_files_one_line_a_second_each() {
    let dir = TestDir::new("files-5000");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let admin = free_port();
    const FILES: usize = 5000;
    let files: Vec<PathBuf> = (0..FILES).map(|i| logs.join(format!("app-{i:04}.log"))).collect();
    for f in &files {
        std::fs::write(f, b"").unwrap();
    }
    let cfg = file_node_config(&dir, admin, &[logs.join("app-*.log")], "max_open_files = 8192");
    let mut node = Node::start(&dir, &cfg, admin);
    node.wait_metric("ferry_file_watched", &[("listener", "files")], Duration::from_secs(20), |v| v == FILES as f64);
    let cpu = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = stat.rsplit_once(") ").unwrap().1;
        let f: Vec<&str> = rest.split(' ').collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let pid = node.pid();
    let (c0, t0) = (cpu(pid), Instant::now());
    raise_open_files_limit(FILES as u64 + 1000);
    let writer = Writer::start_with(files.clone(), FILES as u64, 40, false);
    std::thread::sleep(Duration::from_secs(10));
    let written = writer.finish();
    let busy = (cpu(pid) - c0) / t0.elapsed().as_secs_f64();
    let rss_busy = rss_bytes(pid);
    let got = wait_archived(&node, &written, Duration::from_secs(30));
    let total: u64 = written.values().sum();
    let archived: usize = got.values().map(|v| v.len()).sum();
    assert_eq!(archived as u64, total, "every line archived once");
    // Idle: nothing written for 6 s (one poll of every file included).
    let (c1, t1) = (cpu(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(6));
    let idle = (cpu(pid) - c1) / t1.elapsed().as_secs_f64();
    let rss_idle = rss_bytes(pid);
    eprintln!(
        "{FILES} files, {total} lines in 10 s: node CPU {:.1}% of a core while written to, {:.2}% idle; RSS {:.1} MiB busy, {:.1} MiB idle",
        busy * 100.0,
        idle * 100.0,
        rss_busy as f64 / 1048576.0,
        rss_idle as f64 / 1048576.0
    );
    assert!(idle < 0.03, "idle CPU {:.1}% of a core with {FILES} quiet files", idle * 100.0);
    assert!(rss_idle < 96 << 20, "RSS {rss_idle} with {FILES} files");
    node.stop();
}

/// Stack traces joined by `multiline_start`, a last line without its newline
/// taken after `partial_timeout`, a line over `max_record_bytes` cut and
/// counted, CRLF endings, a path with a quote escaped in the record; and the
/// file keys checked by `ferry check`.
#[test]
fn multiline_partial_and_long_lines_become_the_records_expected() {
    let dir = TestDir::new("files-lines");
    let logs = dir.join("lo\"gs");
    std::fs::create_dir_all(&logs).unwrap();
    let admin = free_port();
    let cfg = file_node_config(
        &dir,
        admin,
        &[logs.join("*.log")],
        "multiline_start = '^\\d{4}-'\npartial_timeout = \"500ms\"\nmax_record_bytes = \"1KiB\"\nhost = \"web-7\"",
    );
    let mut node = Node::start(&dir, &cfg, admin);
    let long = "y".repeat(3000);
    let body = format!(
        "2026-12-04 10:00:00 ERROR boom\n  at a.b(C.java:1)\n  at d.e(F.java:2)\r\n2026-12-04 10:00:01 INFO ok\r\n2026-12-04 {long}\n2026-12-04 10:00:02 no newline yet"
    );
    std::fs::write(logs.join("app.log"), body).unwrap();
    node.wait_metric("ferry_received_records_total", &[("listener", "files")], Duration::from_secs(10), |v| v >= 4.0);
    let truncated = node.metric("ferry_truncated_records_total", &[("listener", "files")]);
    node.stop();
    let lines = archive_lines(&node.data);
    let msgs: Vec<&str> = lines.iter().map(|l| l.split_once("\"] ").unwrap().1).collect();
    assert_eq!(msgs.len(), 4, "{lines:#?}");
    assert_eq!(msgs[0], "2026-12-04 10:00:00 ERROR boom\\n  at a.b(C.java:1)\\n  at d.e(F.java:2)");
    assert_eq!(msgs[1], "2026-12-04 10:00:01 INFO ok");
    assert_eq!(msgs[2].len(), 1024, "a long line is cut at max_record_bytes");
    assert_eq!(msgs[3], "2026-12-04 10:00:02 no newline yet");
    assert_eq!(truncated, 1.0);
    // RFC 5424 escapes the quote (`\"`), and the archive escapes that backslash (`\\`).
    let want = format!(
        " web-7 app.log - - [file@32473 path=\"{}\"] ",
        logs.join("app.log").display().to_string().replace('"', "\\\\\"")
    );
    assert!(lines.iter().all(|l| l.starts_with("<133>1 20") && l.contains(&want)), "{lines:#?}");

    // Keys checked one by one, with the line.
    let bad = cfg.replace(
        "partial_timeout = \"500ms\"",
        "partial_timeout = \"500ms\"\nquota = \"64MiB\"\nlisten = \"127.0.0.1:1\"\nstart_at = \"middle\"",
    );
    let path = dir.join("bad.toml");
    std::fs::write(&path, bad).unwrap();
    let out = std::process::Command::new(FERRY).args(["check", "-c"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for key in ["listener[0].quota", "listener[0].listen", "listener[0].start_at"] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
}
