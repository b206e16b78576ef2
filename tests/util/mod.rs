//! Test harness: real `ferry` processes in per-test directories, real tools.
//!
//! A test that needs an external tool (zstdcat, logger, rsyslogd) calls
//! [`require_tool`], which fails the test when the tool is missing: the test
//! command installs them, and nothing here ever skips.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
pub mod brokers;
pub mod link;
pub mod proxy;
pub mod rsyslog;
pub mod seaweed;
pub mod store;
pub mod syslog_ng;
pub mod tmpfs;
pub mod world;

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Fail (never skip) when a tool the test needs is not installed.
pub fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/sbin", "/usr/bin"]) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("required tool {name:?} is not installed: run the README's test command, which installs it");
}

static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port free for both TCP and UDP, never handed out twice per process.
pub fn free_port() -> u16 {
    let mut used = PORTS.lock().unwrap();
    let used = used.get_or_insert_with(HashSet::new);
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if used.contains(&port) || UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        used.insert(port);
        return port;
    }
}

/// A per-test directory, removed on success and kept (path printed) on failure.
pub struct TestDir {
    pub path: PathBuf,
    _tmp: tempfile::TempDir,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let tmp = tempfile::Builder::new().prefix(&format!("ferry-{name}-")).tempdir().unwrap();
        TestDir { path: tmp.path().to_owned(), _tmp: tmp }
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

/// Addresses of a test node.
#[derive(Clone, Debug)]
pub struct Ports {
    pub tcp: u16,
    pub udp: u16,
    pub admin: u16,
}

/// A config for a single test node: syslog TCP, UDP and a unix datagram
/// socket into stream `live`, plus `extra` appended verbatim.
pub fn node_config(dir: &TestDir, ports: &Ports, store: &str, listener_extra: &str, extra: &str) -> String {
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
{store}

[[stream]]
name = "live"

[[listener]]
name = "tcp"
kind = "syslog"
transport = "tcp"
listen = "127.0.0.1:{tcp}"
stream = "live"
{listener_extra}

[[listener]]
name = "udp"
kind = "syslog"
transport = "udp"
listen = "127.0.0.1:{udp}"

[[listener]]
name = "unix"
kind = "syslog"
transport = "unix"
listen = "{sock}"
{extra}
"#,
        data = dir.join("data").display(),
        sock = dir.join("ferry.sock").display(),
        admin = ports.admin,
        tcp = ports.tcp,
        udp = ports.udp,
    )
}

/// A `[[listener]]` table into stream `live`: `name`, of `kind`, over
/// `transport` on 127.0.0.1:`port`.
pub fn listener(name: &str, kind: &str, transport: &str, port: u16) -> String {
    format!(
        "\n[[listener]]\nname = \"{name}\"\nkind = \"{kind}\"\ntransport = \"{transport}\"\nlisten = \"127.0.0.1:{port}\"\nstream = \"live\"\n"
    )
}

/// A test node ([`node_config`] on free ports, `store` lines) with `extra`
/// appended (a [`listener`], a `[tls]` table), started with `env`.
pub fn start_node(dir: &TestDir, store: &str, extra: &str, env: &[(&str, &str)]) -> Node {
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    Node::start_with_env(dir, &node_config(dir, &ports, store, "", extra), ports.admin, env)
}

/// A running ferry node. Killed (SIGKILL) on drop if still running.
pub struct Node {
    pub child: Option<Child>,
    pub config: PathBuf,
    pub log: PathBuf,
    pub admin: u16,
    pub data: PathBuf,
}

impl Node {
    /// Start `ferry run -c config` and wait until `/readyz` answers 200.
    pub fn start(dir: &TestDir, config: &str, admin: u16) -> Node {
        Node::start_with_env(dir, config, admin, &[])
    }

    /// [`start`](Self::start) with extra environment (e.g. `FERRY_FAULTS`).
    pub fn start_with_env(dir: &TestDir, config: &str, admin: u16, env: &[(&str, &str)]) -> Node {
        let cfg = dir.join("ferry.toml");
        std::fs::write(&cfg, config).unwrap();
        let n = std::fs::read_dir(&dir.path)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("ferry.log"))
            .count();
        let log = dir.join(&format!("ferry.log.{n}"));
        let child = Command::new(FERRY)
            .args(["run", "-c"])
            .arg(&cfg)
            .env("FERRY_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut node = Node { child: Some(child), config: cfg, log, admin, data: dir.join("data") };
        node.wait_ready(Duration::from_secs(20));
        node
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self, limit: Duration) {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ferry exited during start ({status}):\n{}", self.log_text());
            }
            if let Ok((200, _)) = http_get(self.admin, "/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ferry not ready after {limit:?}:\n{}", self.log_text());
    }

    /// GET /metrics.
    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").expect("metrics scrape").1
    }

    /// Sum of every sample of `name` whose labels contain all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels)
    }

    /// Poll until `cond(metric)` holds, or panic after `limit`.
    pub fn wait_metric(&self, name: &str, labels: &[(&str, &str)], limit: Duration, cond: impl Fn(f64) -> bool) -> f64 {
        let t = Instant::now();
        let mut v = 0.0;
        while t.elapsed() < limit {
            v = self.metric(name, labels);
            if cond(v) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "metric {name}{labels:?} = {v} did not reach the expected value within {limit:?}\nlog:\n{}",
            self.log_text()
        );
    }

    /// SIGTERM and wait for a clean exit (status 0).
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                assert!(s.success(), "ferry exited with {s} after SIGTERM:\n{}", self.log_text());
                return;
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("ferry did not stop within 30s of SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no warning.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!(
                    "--- ferry log ({}) ---\n{}",
                    self.log.display(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        }
    }
}

/// Ack-then-kill: `kill -9` the node right after the client reported (on
/// `acks`, its running count) each of `points` acknowledgements, and start
/// it again from `config`. Fails if acknowledgements stop for 60 s.
pub fn kill_after_acks(
    node: &mut Node,
    dir: &TestDir,
    config: &str,
    acks: &std::sync::mpsc::Receiver<usize>,
    points: &[usize],
) {
    for &kill_at in points {
        let t = Instant::now();
        loop {
            let n = acks.recv_timeout(Duration::from_secs(60)).expect("acknowledgements stopped coming");
            if n >= kill_at {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "{kill_at} acknowledgements not reached in 60 s");
        }
        node.kill9();
        *node = Node::start(dir, config, node.admin);
    }
}

/// GET from a node's admin listener on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    ferry::admin::client::get(&format!("127.0.0.1:{port}"), path, Duration::from_secs(5))
}

/// The longest time a sampled counter did not grow: between two growths,
/// and with `to_end` also from the last growth to the last sample.
pub fn longest_pause(samples: &[(Instant, f64)], to_end: bool) -> Duration {
    let Some(first) = samples.first() else { return Duration::ZERO };
    let (mut longest, mut since) = (Duration::ZERO, first.0);
    for w in samples.windows(2) {
        if w[1].1 > w[0].1 {
            longest = longest.max(w[1].0 - since);
            since = w[1].0;
        }
    }
    if to_end {
        longest = longest.max(samples[samples.len() - 1].0 - since);
    }
    longest
}

/// Sum of samples of `name` whose label set includes all `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    ferry::admin::client::metric_value(text, name, labels)
}

/// Segment files under `data/archive`, sorted by name (= by stream, hour, seq).
pub fn segments(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        walkdir(&data.join("archive")).into_iter().filter(|p| p.to_string_lossy().ends_with(".log.zst")).collect();
    v.sort_by_key(|p| p.file_name().unwrap().to_owned());
    v
}

/// Segments of both codecs (`.log.zst` and `.log.gz`), sorted by file name.
pub fn all_segments(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir(&data.join("archive"))
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            s.ends_with(".log.zst") || s.ends_with(".log.gz")
        })
        .collect();
    v.sort_by_key(|p| p.file_name().unwrap().to_owned());
    v
}

/// The gzip segments as the real `zcat` prints them, segment after segment.
pub fn zcat(data: &Path) -> Vec<u8> {
    let files: Vec<PathBuf> = all_segments(data).into_iter().filter(|p| p.to_string_lossy().ends_with(".gz")).collect();
    if files.is_empty() {
        return Vec::new();
    }
    let out = Command::new(require_tool("zcat")).args(&files).output().unwrap();
    assert!(out.status.success(), "zcat failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn walkdir(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walkdir(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The archive as the real `zstdcat` prints it, segment after segment.
pub fn zstdcat(data: &Path) -> Vec<u8> {
    let zstdcat = require_tool("zstdcat");
    let files = segments(data);
    if files.is_empty() {
        return Vec::new();
    }
    let out = Command::new(zstdcat).args(&files).output().unwrap();
    assert!(out.status.success(), "zstdcat failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Archive lines (without LF), as zstdcat prints them.
pub fn archive_lines(data: &Path) -> Vec<String> {
    String::from_utf8_lossy(&zstdcat(data)).lines().map(str::to_owned).collect()
}

/// zstdcat of a running node's archive: a frame being written makes it fail
/// for a moment, so it reads again (10 s at most, then fails naming it).
pub fn zstdcat_running(data: &Path) -> Vec<u8> {
    let t = std::time::Instant::now();
    loop {
        let files = segments(data);
        if files.is_empty() {
            return Vec::new();
        }
        let out = Command::new(require_tool("zstdcat")).args(&files).output().unwrap();
        if out.status.success() {
            return out.stdout;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "zstdcat could not read the archive for 10 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run `ferry verify` on a data dir.
pub fn verify(data: &Path) -> Output {
    Command::new(FERRY).arg("verify").arg(data).output().unwrap()
}

pub fn assert_verify_ok(data: &Path) {
    let out = verify(data);
    assert!(
        out.status.success(),
        "ferry verify failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `len` lowercase letters from a xorshift seeded by `seed`: lines that
/// zstd barely compresses, so a few MB of them fill a disk or rotate segments.
pub fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

/// Syslog lines `<tag>-<n>` followed by 200 random base64 characters (zstd
/// keeps about three quarters of them), `bytes` or a line more in all: a
/// backlog that keeps a capped link busy for a known time. Also how many.
pub fn incompressible_lines(rng: &mut impl rand::Rng, tag: &str, bytes: usize) -> (Vec<u8>, usize) {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(bytes + 256);
    let mut n = 0;
    while out.len() < bytes {
        out.extend_from_slice(format!("<13>Nov 30 10:00:00 h app: {tag}-{n:08} ").as_bytes());
        out.extend((0..200).map(|_| ALPHABET[rng.random_range(0..64)]));
        out.push(b'\n');
        n += 1;
    }
    (out, n)
}

/// How often each id (the first word starting with `prefix`) is in the
/// archive; `None` while zstdcat cannot read it whole (a segment being
/// created or cut at that moment on a running node).
pub fn id_counts(data: &Path, prefix: &str) -> Option<std::collections::HashMap<String, usize>> {
    let files = segments(data);
    let out = Command::new(require_tool("zstdcat")).args(&files).output().unwrap();
    out.status.success().then(|| count_ids(&out.stdout, prefix))
}

/// [`id_counts`] of a running node's archive ([`zstdcat_running`]).
pub fn id_counts_running(data: &Path, prefix: &str) -> std::collections::HashMap<String, usize> {
    count_ids(&zstdcat_running(data), prefix)
}

fn count_ids(text: &[u8], prefix: &str) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for l in String::from_utf8_lossy(text).lines() {
        if let Some(id) = l.split(' ').find(|w| w.starts_with(prefix)) {
            *m.entry(id.to_owned()).or_default() += 1;
        }
    }
    m
}

/// `ids` (from [`id_counts`]) holds `n` ids, each once.
pub fn assert_each_once(ids: &std::collections::HashMap<String, usize>, n: usize, what: &str) {
    assert_eq!(ids.len(), n, "{what}: every id");
    assert!(ids.values().all(|&c| c == 1), "{what}: each once");
}

/// Wait (`limit` at most) until the archive in `data` holds `n` ids starting
/// with `prefix`; none of them may ever be there twice.
pub fn wait_each_once(data: &Path, prefix: &str, n: usize, limit: Duration) {
    let t = Instant::now();
    loop {
        let Some(ids) = id_counts(data, prefix) else {
            assert!(t.elapsed() < limit, "the archive never became readable by zstdcat");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let twice: Vec<_> = ids.iter().filter(|(_, c)| **c > 1).take(5).collect();
        assert!(twice.is_empty(), "archived twice: {twice:?}");
        if ids.len() == n {
            return;
        }
        assert!(t.elapsed() < limit, "{} of {n} records archived", ids.len());
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// POST the file `body` to stream `live` of an HTTP listener with curl; the
/// HTTP status (0 if curl got no answer).
pub fn post_status(port: u16, body: &Path) -> u16 {
    let out = Command::new(require_tool("curl"))
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("http://127.0.0.1:{port}/v1/streams/live"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// A random generator for a randomised test, seeded from `FERRY_TEST_SEED`
/// or at random, the seed printed so a failure can be replayed.
pub fn seeded_rng(test: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed = std::env::var("FERRY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (replay with FERRY_TEST_SEED={seed})");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Run `ferry send` with `args`, feeding `input` on stdin.
/// `ferry send` of `input`; its report (stderr).
pub fn ferry_send(args: &[&str], input: &[u8]) -> String {
    let mut c = Command::new(FERRY)
        .arg("send")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "ferry send {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Resident set size of a process, in bytes (from /proc).
pub fn rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), 0 if absent.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
