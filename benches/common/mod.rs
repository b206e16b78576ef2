//! What the benchmarks share: the release `ferry` binary, a node process
//! that cannot outlive its run, an edge/central pair, and the tests'
//! helpers (`tests/util`: ports, the admin client, brokers, SeaweedFS, PKI).
#![allow(dead_code)]

pub mod corpus;
pub mod pair;
/// The tests' helpers: what a bench shares with the tests comes from there.
#[path = "../../tests/util/mod.rs"]
pub mod util;

// Each bench uses a subset.
#[allow(unused_imports)]
pub use util::{free_port, http_get, metric_value, require_tool, status_kib};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The release `ferry` binary: `FERRY_BENCH_BIN` when set (to measure an
/// older build back to back), else the one cargo built for this bench, or
/// `target/release/ferry`, built first if missing.
pub fn ferry_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BENCH_BIN") {
        return p.into();
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_ferry") {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("release").join("ferry");
    if !bin.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "ferry"])
            .current_dir(root)
            .status()
            .expect("run cargo build --release");
        assert!(status.success(), "cargo build --release failed");
    }
    bin
}

/// A running `ferry run`. Killed (SIGKILL) on drop if still running, so a
/// failed run leaves no node behind.
pub struct Node {
    pub child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl Node {
    /// Start `ferry run -c config` and wait until `/readyz` answers 200.
    pub fn start(ferry: &Path, config: &Path, log: &Path, admin: u16) -> Node {
        // FERRY_BENCH_NODE_ENV="K=V;K=V": the node's environment, e.g. another
        // allocator (LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2).
        let extra = std::env::var("FERRY_BENCH_NODE_ENV").unwrap_or_default();
        let extra = extra.split(';').filter_map(|kv| kv.split_once('='));
        let child = Command::new(ferry)
            .args(["run", "-c"])
            .arg(config)
            .envs(extra)
            .env("FERRY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(log).expect("log file"))
            .spawn()
            .expect("start ferry");
        let mut node = Node { pid: child.id(), child, log: log.to_owned() };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            node.check_running("during start");
            if let Ok((200, _)) = http_get(admin, "/readyz") {
                return node;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("ferry not ready after 20s:\n{}", node.tail());
    }

    pub fn check_running(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("ferry exited {when} ({status}):\n{}", self.tail());
        }
    }

    /// SIGTERM, then require a clean exit within 30 s.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                assert!(s.success(), "ferry exited with {s} after SIGTERM:\n{}", self.tail());
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "ferry did not stop within 30s of SIGTERM:\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last lines of the node's log, for failure messages.
    pub fn tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // utime, stime: fields 14 and 15 (1-based), 11 and 12 after the state.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Peak resident set of a process, KiB.
pub fn hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Resident set of a process now, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A node of site `sg1` with one stream, `live`, fed by a TCP syslog
/// listener on `tcp`; `extra` is appended (a `[store]` table, a `[[bucket]]`).
pub fn one_stream_node(data: &Path, admin: u16, tcp: u16, extra: &str) -> String {
    format!(
        "[node]\nsite = \"sg1\"\nname = \"relay-1\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [[stream]]\nname = \"live\"\n[[listener]]\nname = \"tcp\"\nkind = \"syslog\"\ntransport = \"tcp\"\n\
         listen = \"127.0.0.1:{tcp}\"\nstream = \"live\"\n{extra}",
        data.display()
    )
}

/// Ingest the corpus into a single node's archive (stream `live`) and stop it.
pub fn build_archive(ferry: &Path, work: &Path, corpus: &[u8], records: u64) -> PathBuf {
    let data = work.join("archive-node");
    let (tcp, admin) = (free_port(), free_port());
    let cfg = work.join("ingest.toml");
    std::fs::write(&cfg, one_stream_node(&data, admin, tcp, "")).unwrap();
    let mut node = Node::start(ferry, &cfg, &work.join("ingest.log"), admin);
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", tcp)).unwrap();
    for chunk in corpus.chunks(1 << 20) {
        s.write_all(chunk).unwrap();
    }
    drop(s);
    let t = Instant::now();
    while http_get(admin, "/metrics")
        .map(|(_, t)| metric_value(&t, "ferry_committed_records_total", &[]))
        .unwrap_or(0.0)
        < records as f64
    {
        assert!(t.elapsed() < Duration::from_secs(300), "archive not built:\n{}", node.tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    node.stop();
    data
}

/// A whole number from the environment (`_` separators allowed), else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.replace('_', "").parse().unwrap_or_else(|_| panic!("{name} must be a whole number, not {v:?}")),
        Err(_) => default,
    }
}

/// The CPU's model name, for the figures' machine line.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
