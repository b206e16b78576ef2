//! File tail throughput: one 2,000,000-line log file read into the archive by
//! a `kind = "file"` listener (`fsync = "always"`, zstd level 1), side by side
//! with rsyslog's imfile writing its own compressed file (omfile
//! `zipLevel="1"`), on the same corpus and machine. See `benches/README.md`.
//!
//! `cargo bench --bench files`; `FERRY_BENCH_RECORDS` (default 2,000,000),
//! `FERRY_BENCH_RUNS` (default 3; medians reported).
//!
//! ferry's time runs from its start to the last record committed (from
//! its metrics). rsyslog's, from its start to the last CPU tick it spends
//! (polled every 10 ms) once impstats says its output action processed
//! every line: its file is written by then.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::corpus::generate_corpus;
use common::*;

fn main() {
    let records = env_or("FERRY_BENCH_RECORDS", 2_000_000);
    let runs = env_or("FERRY_BENCH_RUNS", 3).max(1) as usize;
    let ferry = ferry_binary();
    let rsyslogd = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("rsyslogd is not installed (apt install rsyslog)");
    println!("file tail bench: {records} lines, {runs} run(s)");
    println!("machine: {} x {}", std::thread::available_parallelism().map_or(0, |n| n.get()), cpu_model());
    let work = tempfile::Builder::new().prefix("ferry-bench-files-").tempdir().expect("temp dir");
    let corpus = generate_corpus(records);
    println!("corpus: {} bytes, {:.1} bytes/line", corpus.len(), corpus.len() as f64 / records as f64);
    let mut f_rows = Vec::new();
    let mut r_rows = Vec::new();
    for run in 1..=runs {
        let dir = work.path().join(format!("run-{run}"));
        std::fs::create_dir_all(&dir).unwrap();
        let f = run_ferry(&ferry, &dir.join("ferry"), &corpus, records);
        println!(
            "run {run} ferry:   {:.2} s, {:>9.0} lines/s, {:.2} CPU s per million, archive {} bytes",
            f.secs,
            records as f64 / f.secs,
            f.cpu / records as f64 * 1e6,
            f.bytes
        );
        let r = run_rsyslog(&rsyslogd, &dir.join("rsyslog"), &corpus, records);
        println!(
            "run {run} rsyslog: {:.2} s, {:>9.0} lines/s, {:.2} CPU s per million, output {} bytes",
            r.secs,
            records as f64 / r.secs,
            r.cpu / records as f64 * 1e6,
            r.bytes
        );
        f_rows.push(f);
        r_rows.push(r);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let med = |v: Vec<f64>| median(v);
    let (fs, rs) = (med(f_rows.iter().map(|r| r.secs).collect()), med(r_rows.iter().map(|r| r.secs).collect()));
    let (fc, rc) = (med(f_rows.iter().map(|r| r.cpu).collect()), med(r_rows.iter().map(|r| r.cpu).collect()));
    println!(
        "median: ferry {:.0} lines/s ({:.2} CPU s/M), rsyslog imfile+omfile zipLevel 1 {:.0} lines/s ({:.2} CPU s/M): ferry {:.1}x the rate",
        records as f64 / fs,
        fc / records as f64 * 1e6,
        records as f64 / rs,
        rc / records as f64 * 1e6,
        rs / fs
    );
}

struct Row {
    secs: f64,
    cpu: f64,
    bytes: u64,
}

fn run_ferry(ferry: &Path, dir: &Path, corpus: &[u8], records: u64) -> Row {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("app.log"), corpus).unwrap();
    let admin = free_port();
    let cfg = dir.join("ferry.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nsite = \"sg1\"\nname = \"relay-1\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [[stream]]\nname = \"live\"\n[[listener]]\nname = \"files\"\nkind = \"file\"\npaths = [\"{}/*.log\"]\nstream = \"live\"\n",
            dir.join("data").display(),
            logs.display()
        ),
    )
    .unwrap();
    let t = Instant::now();
    let mut node = Node::start(ferry, &cfg, &dir.join("ferry.log"), admin);
    loop {
        let done = http_get(admin, "/metrics")
            .map(|(_, m)| metric_value(&m, "ferry_committed_records_total", &[]))
            .unwrap_or(0.0);
        if done >= records as f64 {
            break;
        }
        node.check_running("while reading");
        assert!(t.elapsed() < Duration::from_secs(600), "ferry did not commit every line");
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs(node.pid);
    node.stop();
    Row { secs, cpu, bytes: dir_bytes(&dir.join("data/archive")) }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_rsyslog(bin: &Path, dir: &Path, corpus: &[u8], records: u64) -> Row {
    let logs = dir.join("logs");
    let work = dir.join("work");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(logs.join("app.log"), corpus).unwrap();
    let stats = dir.join("stats.json");
    let out = dir.join("out.log.gz");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}")
module(load="impstats" interval="1" format="json" log.file="{stats}" log.syslog="off")
module(load="imfile" mode="inotify")
input(type="imfile" file="{logs}/app.log" tag="app" facility="local0" severity="notice" freshStartTail="off" ruleset="out")
ruleset(name="out") {{
  action(type="omfile" name="out" file="{out}" zipLevel="1")
}}
"#,
            work = work.display(),
            stats = stats.display(),
            logs = logs.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let check = Command::new(bin).arg("-N1").arg("-f").arg(&conf).output().unwrap();
    assert!(check.status.success(), "rsyslogd -N1: {}", String::from_utf8_lossy(&check.stderr));
    let t = Instant::now();
    let child = Killed(
        Command::new(bin)
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let mut last_cpu = 0.0;
    let mut last_change = t.elapsed();
    loop {
        let cpu = cpu_secs(pid);
        if cpu > last_cpu {
            last_cpu = cpu;
            last_change = t.elapsed();
        }
        let processed = std::fs::read_to_string(&stats)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"name\": \"out\"") || l.contains("\"name\":\"out\""))
            .filter_map(|l| l.split("\"processed\":").nth(1))
            .filter_map(|v| v.trim().split([',', '}']).next().and_then(|n| n.trim().parse::<u64>().ok()))
            .max()
            .unwrap_or(0);
        if processed >= records && t.elapsed() - last_change > Duration::from_millis(500) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(900), "rsyslog processed only {processed} lines");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(child);
    Row { secs: last_change.as_secs_f64(), cpu: last_cpu, bytes: std::fs::metadata(&out).map_or(0, |m| m.len()) }
}

fn dir_bytes(p: &Path) -> u64 {
    walkdir::WalkDir::new(p)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
