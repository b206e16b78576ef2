//! End-to-end throughput benchmark: syslog over TCP into a real `ferry run`
//! node with `fsync = "always"`, until every record is committed to the
//! archive. See `benches/README.md`.
//!
//! `cargo bench --bench e2e`, tuned by environment variables:
//! - `FERRY_BENCH_RECORDS` (default 2,000,000): corpus size in lines.
//! - `FERRY_BENCH_RUNS` (default 3): runs against a fresh node each; the
//!   summary gives the median of each figure.
//! - `FERRY_BENCH_SENDER` (default `threads`): `threads` sends from two
//!   threads of this process (std `TcpStream`, 1 MiB writes); `send` runs two
//!   `ferry send` processes instead.
//! - `FERRY_BENCH_STORE`: more `[store]` keys, `;`-separated (e.g.
//!   `compression = "gzip";gzip_level = 6`).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

mod common;
use common::corpus::generate_corpus;
use common::*;

const DEFAULT_RECORDS: u64 = 2_000_000;
const DEFAULT_RUNS: usize = 3;
/// Parallel sending connections (the corpus is split between them).
const CONNECTIONS: usize = 2;
/// Size of each `write` of the in-process sender.
const WRITE_CHUNK: usize = 1 << 20;
/// Chunk size of the plain zstd baseline: ferry's default `commit_bytes`.
const ZSTD_CHUNK: usize = 2 << 20;
const ZSTD_LEVEL: i32 = 1;
const POLL: Duration = Duration::from_millis(10);
const STREAM: &str = "live";

fn main() {
    let records = env_or("FERRY_BENCH_RECORDS", DEFAULT_RECORDS);
    let runs = env_or("FERRY_BENCH_RUNS", DEFAULT_RUNS as u64).max(1) as usize;
    let sender = match std::env::var("FERRY_BENCH_SENDER").as_deref() {
        Ok("send") => Sender::FerrySend,
        Ok("send-tls") => Sender::FerrySendTls,
        Ok("threads") | Err(_) => Sender::Threads,
        Ok(other) => panic!("FERRY_BENCH_SENDER must be `threads`, `send` or `send-tls`, not {other:?}"),
    };
    let ferry = ferry_binary();
    let tck = clock_ticks();
    println!(
        "ferry e2e bench: {records} records, {runs} run(s), {CONNECTIONS} TCP connections ({}), fsync = \"always\"",
        sender.describe()
    );
    println!("binary: {}", ferry.display());
    println!("machine: {} x {}", std::thread::available_parallelism().map_or(0, |n| n.get()), cpu_model());

    let work = tempfile::Builder::new().prefix("ferry-bench-").tempdir().expect("temp dir");
    let t = Instant::now();
    let corpus = generate_corpus(records);
    let parts = split_lines(&corpus, CONNECTIONS);
    let files: Vec<PathBuf> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let path = work.path().join(format!("corpus-{i}.log"));
            std::fs::write(&path, p).expect("write corpus");
            path
        })
        .collect();
    println!(
        "corpus: {} lines, {} bytes ({:.1} bytes/line incl. LF), generated and written in {:.2}s to {}",
        records,
        corpus.len(),
        corpus.len() as f64 / records as f64,
        t.elapsed().as_secs_f64(),
        work.path().display()
    );
    drop(parts);

    let setup = Setup { ferry, work: work.path().to_owned(), files, corpus, records, sender, tck };
    let mut results = Vec::new();
    for run in 1..=runs {
        let r = run_once(&setup);
        print_run(run, records, &r);
        results.push(r);
    }
    print_summary(records, &results);
}

/// What every run shares.
struct Setup {
    ferry: PathBuf,
    work: PathBuf,
    /// The corpus, one part per connection, as files (for `ferry send`).
    files: Vec<PathBuf>,
    /// The whole corpus, for the zstd baseline and the byte count check.
    corpus: Vec<u8>,
    records: u64,
    sender: Sender,
    /// Clock ticks per second of /proc times.
    tck: f64,
}

#[derive(Clone, Copy)]
enum Sender {
    Threads,
    FerrySend,
    /// `ferry send --transport tls` into a syslog-over-TLS listener (RFC 5425).
    FerrySendTls,
}

impl Sender {
    fn describe(self) -> &'static str {
        match self {
            Sender::Threads => "in-process sender threads, 1 MiB writes",
            Sender::FerrySend => "`ferry send` processes",
            Sender::FerrySendTls => "`ferry send --transport tls` processes, syslog over TLS with client certificates",
        }
    }
}

// ---------------------------------------------------------------------------
// Corpus

/// `data` cut into `n` parts of about equal size, each ending at a LF.
fn split_lines(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    let mut start = 0;
    for i in 1..=n {
        let end = if i == n {
            data.len()
        } else {
            let target = (data.len() * i / n).max(start);
            match data[target..].iter().position(|&b| b == b'\n') {
                Some(p) => target + p + 1,
                None => data.len(),
            }
        };
        parts.push(&data[start..end]);
        start = end;
    }
    parts
}

// ---------------------------------------------------------------------------
// One run

#[derive(Clone, Debug, Default)]
struct RunResult {
    /// Send start to the last record committed.
    secs: f64,
    /// Send start to the last record read by ferry (to within one poll).
    received_secs: f64,
    /// Ferry CPU seconds over the same interval, and over its whole life.
    ferry_cpu: f64,
    ferry_cpu_total: f64,
    /// Ferry CPU seconds per thread name over its whole life.
    threads: Vec<(String, f64)>,
    /// CPU seconds of the senders (threads of this process or `ferry send`
    /// children) and of this process's /metrics polling while sending.
    bench_cpu: f64,
    /// Busy, iowait and stolen cores of the whole machine while sending.
    machine_busy: f64,
    machine_iowait: f64,
    machine_steal: f64,
    /// Busy cores of the whole machine in the second before the node started.
    busy_before: f64,
    rss_hwm_kib: u64,
    archive_bytes: u64,
    commits: f64,
    commit_secs: f64,
    fsync_secs: f64,
    zstd_secs: f64,
    zstd_bytes: u64,
    corpus_bytes: u64,
}

impl RunResult {
    fn records_per_s(&self, records: u64) -> f64 {
        records as f64 / self.secs
    }
    fn cpu_per_million(&self, records: u64) -> f64 {
        self.ferry_cpu / (records as f64 / 1e6)
    }
    fn zstd_records_per_s(&self, records: u64) -> f64 {
        records as f64 / self.zstd_secs
    }
    fn zstd_mb_per_s(&self) -> f64 {
        self.corpus_bytes as f64 / 1e6 / self.zstd_secs
    }
    fn ferry_mb_per_s(&self) -> f64 {
        self.corpus_bytes as f64 / 1e6 / self.secs
    }
}

/// Start a fresh node, send the corpus, measure, stop the node, then time
/// plain zstd over the same bytes.
fn run_once(setup: &Setup) -> RunResult {
    let Setup { ferry, work, files, corpus, records, sender, tck } = setup;
    let (records, sender, tck) = (*records, *sender, *tck);
    let dir = tempfile::Builder::new().prefix("run-").tempdir_in(work).expect("run dir");
    // Others' load skews every figure: measure it, and say so below.
    let quiet0 = machine_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let busy_before = machine_ticks().since(&quiet0).0 / tck;
    let (tcp, admin) = (free_port(), free_port());
    let data = dir.path().join("data");
    let tls = matches!(sender, Sender::FerrySendTls);
    let pki = dir.path().join("pki");
    let tls_section = if tls {
        let certs = |args: &[&str]| {
            let st = Command::new(ferry).arg("certs").args(args).stdout(Stdio::null()).status().expect("ferry certs");
            assert!(st.success(), "ferry certs {args:?}");
        };
        let p = |s: &str| pki.join(s).display().to_string();
        certs(&["ca", "--out", &p("ca")]);
        certs(&[
            "issue",
            "--ca",
            &p("ca"),
            "--site",
            "bench",
            "--node",
            "n1",
            "--ip",
            "127.0.0.1",
            "--out",
            &p("relay"),
        ]);
        certs(&["issue", "--ca", &p("ca"), "--site", "bench", "--node", "sender", "--out", &p("sender")]);
        format!("\n[tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/node.pem\"\nkey = \"{0}/node.key\"\n", p("relay"))
    } else {
        String::new()
    };
    let config = format!(
        r#"[node]
site = "bench"
name = "n1"
data_dir = "{data}"

[admin]
listen = "127.0.0.1:{admin}"

[store]
commit_interval = "100ms"
fsync = "always"
{store_extra}

[[stream]]
name = "{STREAM}"

[[listener]]
name = "tcp"
kind = "syslog"
transport = "{transport}"
listen = "127.0.0.1:{tcp}"
stream = "{STREAM}"
# No per-source limits: the bench is one source sending as fast as it can.
trust = "trusted"
{tls_section}"#,
        data = data.display(),
        transport = if tls { "tls" } else { "tcp" },
        // commit_bytes as the node's default unless FERRY_BENCH_STORE sets it.
        store_extra = std::env::var("FERRY_BENCH_STORE").unwrap_or_default().replace(';', "\n"),
    );
    let cfg_path = dir.path().join("ferry.toml");
    std::fs::write(&cfg_path, config).expect("write config");
    let mut node = Node::start(ferry, &cfg_path, &dir.path().join("ferry.log"), admin);
    let pid = node.pid;

    // Connect (or load the senders) before the clock starts.
    let barrier = Arc::new(Barrier::new(CONNECTIONS + 1));
    let mut threads = Vec::new();
    let mut procs: Vec<Child> = Vec::new();
    if let Sender::Threads = sender {
        for f in files {
            let mut buf = Vec::new();
            File::open(f).and_then(|mut r| r.read_to_end(&mut buf)).expect("read corpus part");
            let mut s = TcpStream::connect(("127.0.0.1", tcp)).expect("connect to ferry");
            let b = barrier.clone();
            threads.push(std::thread::spawn(move || {
                b.wait();
                for chunk in buf.chunks(WRITE_CHUNK) {
                    s.write_all(chunk).expect("send to ferry");
                }
                s.shutdown(Shutdown::Write).expect("shutdown");
            }));
        }
    }
    let (ferry_cpu0, bench_cpu0, machine0) =
        (proc_cpu_ticks(&format!("/proc/{pid}/stat")).0, proc_cpu_ticks("/proc/self/stat"), machine_ticks());
    let started = Instant::now();
    match sender {
        Sender::Threads => {
            barrier.wait();
        }
        Sender::FerrySend | Sender::FerrySendTls => {
            for f in files {
                let mut cmd = Command::new(ferry);
                cmd.args(["send", "--to", &format!("127.0.0.1:{tcp}"), "--framing", "lf"]);
                if tls {
                    let s = pki.join("sender");
                    cmd.args(["--transport", "tls", "--ca"])
                        .arg(s.join("ca.pem"))
                        .arg("--cert")
                        .arg(s.join("node.pem"))
                        .arg("--key")
                        .arg(s.join("node.key"));
                }
                procs.push(cmd.arg(f).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start ferry send"));
            }
        }
    }

    // Poll until every record is committed.
    let limit = Duration::from_secs(60 + records / 20_000);
    let mut received_at = None;
    let metrics = loop {
        node.check_running("during the run");
        let m = http_get(admin, "/metrics").map(|r| r.1).unwrap_or_default();
        let committed = metric_value(&m, "ferry_committed_records_total", &[("stream", STREAM)]);
        if received_at.is_none() && metric_value(&m, "ferry_received_records_total", &[]) >= records as f64 {
            received_at = Some(started.elapsed().as_secs_f64());
        }
        if committed >= records as f64 {
            break m;
        }
        let dropped = metric_value(&m, "ferry_dropped_records_total", &[]);
        assert!(dropped == 0.0, "ferry dropped {dropped} records:\n{}", node.tail());
        assert!(
            started.elapsed() < limit,
            "only {committed} of {records} records committed after {limit:?}:\n{}",
            node.tail()
        );
        std::thread::sleep(POLL);
    };
    let secs = started.elapsed().as_secs_f64();
    // Read the process figures before it stops.
    let ferry_cpu1 = proc_cpu_ticks(&format!("/proc/{pid}/stat")).0;
    let bench_own1 = proc_cpu_ticks("/proc/self/stat").0;
    let machine1 = machine_ticks();
    let rss_hwm_kib = vm_hwm_kib(pid);
    let threads_cpu = thread_cpu(pid, tck);

    for t in threads {
        t.join().expect("sender thread");
    }
    for p in procs {
        let out = p.wait_with_output().expect("ferry send");
        assert!(out.status.success(), "ferry send failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Reaped `ferry send` children count in this process's children's times;
    // the node is not reaped yet.
    let bench_children1 = proc_cpu_ticks("/proc/self/stat").1;

    // The run's own sanity checks: everything arrived exactly once.
    let committed = metric_value(&metrics, "ferry_committed_records_total", &[("stream", STREAM)]);
    assert_eq!(committed, records as f64, "committed count differs from records sent");
    let committed_bytes = metric_value(&metrics, "ferry_committed_bytes_total", &[("stream", STREAM)]);
    assert_eq!(committed_bytes, corpus.len() as f64, "committed bytes differ from the corpus");
    let commits = metric_value(&metrics, "ferry_commits_total", &[("stream", STREAM)]);
    let commit_secs = metric_value(&metrics, "ferry_commit_duration_seconds_sum", &[("stream", STREAM)]);
    let fsync_secs = metric_value(&metrics, "ferry_fsync_duration_seconds_sum", &[]);

    node.stop();
    let archive_bytes = dir_bytes(&data.join("archive"));
    drop(dir);

    // Plain zstd on one core over the same bytes, with the node stopped.
    let t = Instant::now();
    let mut zstd_bytes = 0u64;
    let mut rest: &[u8] = corpus;
    while !rest.is_empty() {
        let cut = if rest.len() <= ZSTD_CHUNK {
            rest.len()
        } else {
            ZSTD_CHUNK + rest[ZSTD_CHUNK..].iter().position(|&b| b == b'\n').map_or(rest.len() - ZSTD_CHUNK, |p| p + 1)
        };
        let z = zstd::bulk::compress(&rest[..cut], ZSTD_LEVEL).expect("zstd");
        zstd_bytes += z.len() as u64;
        rest = &rest[cut..];
    }
    let zstd_secs = t.elapsed().as_secs_f64();

    let (busy, iowait, steal) = machine1.since(&machine0);
    RunResult {
        secs,
        received_secs: received_at.unwrap_or(secs),
        ferry_cpu: (ferry_cpu1 - ferry_cpu0) / tck,
        ferry_cpu_total: ferry_cpu1 / tck,
        threads: threads_cpu,
        bench_cpu: (bench_own1 - bench_cpu0.0 + bench_children1 - bench_cpu0.1) / tck,
        machine_busy: busy / tck / secs,
        machine_iowait: iowait / tck / secs,
        machine_steal: steal / tck / secs,
        busy_before,
        rss_hwm_kib,
        archive_bytes,
        commits,
        commit_secs,
        fsync_secs,
        zstd_secs,
        zstd_bytes,
        corpus_bytes: corpus.len() as u64,
    }
}

fn print_run(run: usize, records: u64, r: &RunResult) {
    let m = records as f64 / 1e6;
    let threads: Vec<String> = r.threads.iter().map(|(n, s)| format!("{n} {s:.2}s")).collect();
    println!("\nrun {run}: {records} records committed in {:.3}s (all received by {:.3}s)", r.secs, r.received_secs);
    println!(
        "  ferry:      {:>10.0} records/s ({:.1} MB/s raw), {:.2} CPU s per million records",
        r.records_per_s(records),
        r.ferry_mb_per_s(),
        r.cpu_per_million(records)
    );
    println!(
        "              CPU s: {:.2} in the run, {:.2} over its life ({})",
        r.ferry_cpu,
        r.ferry_cpu_total,
        threads.join(", ")
    );
    println!("  peak RSS:   {:.1} MiB (VmHWM)", r.rss_hwm_kib as f64 / 1024.0);
    println!(
        "  archive:    {} bytes, {:.2} bytes/record (ratio {:.2}); {} commits, {:.2}s in commits, {:.2}s of it fsync",
        r.archive_bytes,
        r.archive_bytes as f64 / records as f64,
        r.corpus_bytes as f64 / r.archive_bytes as f64,
        r.commits,
        r.commit_secs,
        r.fsync_secs
    );
    println!(
        "  plain zstd: {:>10.0} records/s ({:.1} MB/s, level {ZSTD_LEVEL}, 2 MiB chunks, one core), \
         {:.2} bytes/record, {:.2} CPU s per million records",
        r.zstd_records_per_s(records),
        r.zstd_mb_per_s(),
        r.zstd_bytes as f64 / records as f64,
        r.zstd_secs / m
    );
    println!("  ferry / plain zstd records/s: {:.3}", r.records_per_s(records) / r.zstd_records_per_s(records));
    println!(
        "  machine:    {:.2} cores busy, {:.2} iowait, {:.2} stolen by the hypervisor while sending; \
         senders and polling {:.2} CPU s",
        r.machine_busy, r.machine_iowait, r.machine_steal, r.bench_cpu
    );
    let others = (r.machine_busy - (r.ferry_cpu + r.bench_cpu) / r.secs).max(0.0);
    if r.busy_before > 0.1 || others > 0.15 || r.machine_steal > 0.15 {
        println!(
            "  WARNING: the machine is not quiet ({:.2} cores busy before the run, ~{:.2} cores \
             used by other processes and {:.2} stolen during it): these figures understate ferry",
            r.busy_before, others, r.machine_steal
        );
    }
}

fn print_summary(records: u64, results: &[RunResult]) {
    let med = |f: &dyn Fn(&RunResult) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let rps = med(&|r| r.records_per_s(records));
    let rss = med(&|r| r.rss_hwm_kib as f64 / 1024.0);
    println!(
        "\nsummary (median of {} run(s)):\n\
         \x20 records/s into the archive  {:.0}\n\
         \x20 ferry CPU s / M records     {:.2}\n\
         \x20 peak RSS (VmHWM)            {:.1} MiB\n\
         \x20 compressed bytes / record   {:.2}\n\
         \x20 plain zstd -{ZSTD_LEVEL} records/s       {:.0} ({:.1} MB/s)\n\
         \x20 ferry / plain zstd          {:.3}\n\
         \x20 target (>= 1,000,000 records/s, RSS < 100 MiB): {}",
        results.len(),
        rps,
        med(&|r| r.cpu_per_million(records)),
        rss,
        med(&|r| r.archive_bytes as f64 / records as f64),
        med(&|r| r.zstd_records_per_s(records)),
        med(&|r| r.zstd_mb_per_s()),
        med(&|r| r.records_per_s(records) / r.zstd_records_per_s(records)),
        match (rps >= 1e6, rss < 100.0) {
            (true, true) => "met",
            (false, true) => "NOT met (throughput)",
            (true, false) => "NOT met (RSS)",
            (false, false) => "NOT met (throughput and RSS)",
        }
    );
}

// ---------------------------------------------------------------------------
// /proc

/// Clock ticks per second for /proc times (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (utime + stime, cutime + cstime of reaped children), in clock ticks, from
/// a `/proc/.../stat` file.
fn proc_cpu_ticks(path: &str) -> (f64, f64) {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (_, own, children) = stat_cpu_ticks(&s);
    (own, children)
}

/// (comm, utime + stime, cutime + cstime) from the text of a `stat` file.
fn stat_cpu_ticks(s: &str) -> (String, f64, f64) {
    let open = s.find('(').expect("stat comm");
    let close = s.rfind(')').expect("stat comm");
    // After the comm, field 3 (state) is index 0: utime, stime, cutime and
    // cstime (fields 14 to 17) are indices 11 to 14.
    let f: Vec<f64> =
        s[close + 1..].split_whitespace().skip(11).take(4).map(|x| x.parse().expect("tick count")).collect();
    (s[open + 1..close].to_owned(), f[0] + f[1], f[2] + f[3])
}

/// CPU seconds of each live thread of `pid`, summed per thread name.
fn thread_cpu(pid: u32, tck: f64) -> Vec<(String, f64)> {
    let mut by_name: Vec<(String, f64)> = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for e in rd.flatten() {
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (name, ticks, _) = stat_cpu_ticks(&s);
        match by_name.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => *t += ticks / tck,
            None => by_name.push((name, ticks / tck)),
        }
    }
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    by_name
}

/// VmHWM (peak resident set) of `pid`, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// The machine's aggregate CPU ticks from /proc/stat.
struct MachineTicks {
    total: f64,
    idle: f64,
    iowait: f64,
    steal: f64,
}

impl MachineTicks {
    /// Ticks between `earlier` and `self`: (busy, iowait, steal). Busy counts
    /// neither idle, iowait nor steal (time the hypervisor gave to others).
    fn since(&self, earlier: &MachineTicks) -> (f64, f64, f64) {
        let total = self.total - earlier.total;
        let idle = self.idle - earlier.idle;
        let iowait = self.iowait - earlier.iowait;
        let steal = self.steal - earlier.steal;
        (total - idle - iowait - steal, iowait, steal)
    }
}

fn machine_ticks() -> MachineTicks {
    let s = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = s.lines().next().expect("cpu line");
    // cpu user nice system idle iowait irq softirq steal (guest time is
    // already counted in user and nice).
    let f: Vec<f64> = line.split_whitespace().skip(1).take(8).map(|x| x.parse().expect("tick count")).collect();
    MachineTicks { total: f.iter().sum(), idle: f[3], iowait: f[4], steal: f[7] }
}

/// Total bytes of the files under `p`.
fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                n += dir_bytes(&e.path());
            } else {
                n += m.len();
            }
        }
    }
    n
}
