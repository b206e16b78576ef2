//! Two edge sites (edge1 over TLS, edge2 over QUIC), two streams each,
//! feeding one central node whose extra config (a sink, a bucket) the test
//! gives: the world of the sink and bucket tests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::link::{Pki, Via};
use super::*;

/// Two edges (edge1 over TLS, edge2 over QUIC) and a central node with a sink.
/// Fields drop in order: the nodes (which print their logs when a test
/// fails) before their directories.
pub struct World {
    pub central: Option<Node>,
    pub edges: Vec<(Node, TestDir, Ports, u16)>,
    /// Records sent to each edge so far.
    pub sent: [AtomicUsize; 2],
    pub _pki_dir: TestDir,
    pub central_dir: TestDir,
    pub central_ports: Ports,
    pub central_cfg: String,
    /// Central's data_dir on a small real disk, if asked for.
    pub central_disk: Option<super::tmpfs::Tmpfs>,
}

pub const STREAMS: [&str; 2] = ["live", "audit"];

impl World {
    /// `sink` is the `[[sink]]` table; `central_store` extra `[store]` keys.
    pub fn start(name: &str, sink: &str, central_store: &str) -> World {
        World::start_with_disk(name, sink, central_store, None)
    }

    /// [`start`](Self::start) with central's data_dir on a tmpfs of `size` (e.g. "16m").
    pub fn start_with_disk(name: &str, sink: &str, central_store: &str, size: Option<&str>) -> World {
        let pki_dir = TestDir::new(&format!("{name}-pki"));
        let pki = Pki::new(&pki_dir, "pki");
        let issue = |site: &str, node: &str, out: &str| {
            let o = std::process::Command::new(FERRY)
                .args(["certs", "issue", "--ca"])
                .arg(pki.dir.join("ca"))
                .args(["--site", site, "--node", node, "--out"])
                .arg(pki.dir.join(out))
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        issue("edge2", "relay-2", "edge2");
        let central_dir = TestDir::new(&format!("{name}-central"));
        let central_disk = size.map(|s| super::tmpfs::Tmpfs::mount(&central_dir.join("data"), s));
        let central_ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
        let (tls_port, quic_port) = (free_port(), free_port());
        let central_extra = format!(
            "{tls}\n[[listener]]\nname = \"link-tls\"\nkind = \"ferry\"\ntransport = \"tls\"\nlisten = \"127.0.0.1:{tls_port}\"\n\
             \n[[listener]]\nname = \"link-quic\"\nkind = \"ferry\"\ntransport = \"quic\"\nlisten = \"127.0.0.1:{quic_port}\"\n\n{sink}\n",
            tls = pki.tls_section("central"),
        );
        let central_cfg = node_config(&central_dir, &central_ports, central_store, "", &central_extra)
            .replace("site = \"test\"", "site = \"central\"")
            .replace("name = \"n1\"", "name = \"c1\"");
        let central = Node::start(&central_dir, &central_cfg, central_ports.admin);
        let mut edges = Vec::new();
        for (site, node, certs, via, port) in
            [("edge1", "relay-1", "edge", Via::Tls, tls_port), ("edge2", "relay-2", "edge2", Via::Quic, quic_port)]
        {
            let dir = TestDir::new(&format!("{name}-{site}"));
            let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
            let audit = free_port();
            let extra = format!(
                "{tls}\n[[stream]]\nname = \"audit\"\n\n[[listener]]\nname = \"tcp-audit\"\nkind = \"syslog\"\ntransport = \"tcp\"\n\
                 listen = \"127.0.0.1:{audit}\"\nstream = \"audit\"\n\n[[uplink]]\nname = \"central\"\ntransport = \"{t}\"\n\
                 addresses = [\"127.0.0.1:{port}\"]\nkeepalive = \"300ms\"\ndead_after = \"2s\"\nbackoff_min = \"50ms\"\n\
                 backoff_max = \"500ms\"\nconnect_timeout = \"2s\"\n",
                tls = pki.tls_section(certs),
                t = via.uplink(),
            );
            // Records up to 1 MiB (the oversized-record tests send one above the brokers' limits).
            let cfg = node_config(
                &dir,
                &ports,
                "commit_bytes = \"256KiB\"\nsegment_max_bytes = \"1MiB\"",
                "max_record_bytes = \"1MiB\"",
                &extra,
            )
            .replace("site = \"test\"", &format!("site = \"{site}\""))
            .replace("name = \"n1\"", &format!("name = \"{node}\""));
            let n = Node::start(&dir, &cfg, ports.admin);
            edges.push((n, dir, ports, audit));
        }
        World {
            _pki_dir: pki_dir,
            central_dir,
            central_ports,
            central_cfg,
            edges,
            sent: [AtomicUsize::new(0), AtomicUsize::new(0)],
            central: Some(central),
            central_disk,
        }
    }

    pub fn central(&self) -> &Node {
        self.central.as_ref().expect("central running")
    }

    /// Send `per_stream` records to each stream of each edge (in parallel);
    /// returns every record sent.
    pub fn send(&self, per_stream: usize, tag: &str) -> Vec<String> {
        self.send_padded(per_stream, tag, 0)
    }

    /// [`send`](Self::send) with `pad` bytes of incompressible text per record.
    pub fn send_padded(&self, per_stream: usize, tag: &str, pad: usize) -> Vec<String> {
        let mut all = Vec::new();
        let mut jobs = Vec::new();
        for (i, (_, _, ports, audit)) in self.edges.iter().enumerate() {
            self.sent[i].fetch_add(per_stream * STREAMS.len(), Ordering::SeqCst);
            for (stream, port) in STREAMS.iter().zip([ports.tcp, *audit]) {
                let lines: Vec<String> = (0..per_stream)
                    .map(|n| {
                        let p = if pad > 0 {
                            noise((i * 1_000_000 + n) as u64 + stream.len() as u64, pad)
                        } else {
                            String::new()
                        };
                        format!("<14>ferry sinktest {tag} edge{} {stream} n={n:07} {p}", i + 1)
                    })
                    .collect();
                all.extend(lines.iter().cloned());
                let input = lines.join("\n") + "\n";
                jobs.push(std::thread::spawn(move || {
                    ferry_send(&["--to", &format!("127.0.0.1:{port}")], input.as_bytes());
                }));
            }
        }
        for j in jobs {
            j.join().unwrap();
        }
        all
    }

    pub fn wait_delivered(&self, sink: &str, n: usize, limit: Duration) {
        self.central().wait_metric("ferry_sink_records_total", &[("sink", sink)], limit, |v| v >= n as f64);
    }

    /// Wait until the sink has delivered everything sent so far, judged from
    /// what the nodes report (so that it holds across central restarts):
    /// every record committed at its edge, every edge's uplink lag 0, then
    /// the sink's lag 0 and not stalled for 2.5 s (two reports). A lag
    /// that stops shrinking for 60 s fails as a stall, distinct from a
    /// sink that is only slow and from records missing at the broker.
    pub fn wait_caught_up(&self, sink: &str, limit: Duration) {
        let t = Instant::now();
        for (i, (edge, _, _, _)) in self.edges.iter().enumerate() {
            let n = self.sent[i].load(Ordering::SeqCst) as f64;
            edge.wait_metric("ferry_committed_records_total", &[], limit, |v| v >= n);
            edge.wait_metric("ferry_uplink_lag_bytes", &[], limit, |v| v == 0.0);
        }
        const STALL: Duration = Duration::from_secs(60);
        let (mut best, mut best_at, mut zero_since) = (f64::MAX, Instant::now(), None::<Instant>);
        loop {
            let m = self.central().metrics();
            let lag = metric_value(&m, "ferry_sink_lag_records", &[("sink", sink)]);
            let stalled = metric_value(&m, "ferry_sink_stalled", &[("sink", sink)]);
            if lag == 0.0 && stalled == 0.0 {
                if zero_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_millis(2500) {
                    return;
                }
            } else {
                zero_since = None;
            }
            if lag < best {
                (best, best_at) = (lag, Instant::now());
            }
            assert!(
                lag == 0.0 || best_at.elapsed() < STALL,
                "sink stalled: lag {lag} records for {:?} (ferry_sink_stalled = {stalled})\ncentral log:\n{}",
                best_at.elapsed(),
                self.central().log_text()
            );
            assert!(
                t.elapsed() < limit,
                "sink too slow (not stalled): lag {lag} records after {limit:?}\ncentral log:\n{}",
                self.central().log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Send `per_stream` records to every stream of both edges every
    /// `every`, on a thread of its own, until the returned sender stops.
    pub fn keep_sending(self: &Arc<Self>, per_stream: usize, every: Duration, tag: &str) -> Sender {
        let flag = || Arc::new(AtomicBool::new(false));
        let (stop, paused, busy) = (flag(), flag(), flag());
        let sent: Arc<Mutex<Vec<String>>> = Arc::default();
        let (w, st, pa, bu, se, tag) =
            (self.clone(), stop.clone(), paused.clone(), busy.clone(), Arc::clone(&sent), tag.to_owned());
        let thread = std::thread::spawn(move || {
            let mut round = 0;
            while !st.load(Ordering::SeqCst) {
                // Busy before looking at `paused`: a pause never misses a round.
                bu.store(true, Ordering::SeqCst);
                if !pa.load(Ordering::SeqCst) {
                    let lines = w.send(per_stream, &format!("{tag}{round}"));
                    se.lock().unwrap().extend(lines);
                    round += 1;
                }
                bu.store(false, Ordering::SeqCst);
                std::thread::sleep(every);
            }
        });
        Sender { stop, paused, busy, sent, thread: Some(thread) }
    }

    pub fn kill9_and_restart_central(&mut self) {
        self.central.as_mut().unwrap().kill9();
        self.central = None;
        self.central = Some(Node::start(&self.central_dir, &self.central_cfg, self.central_ports.admin));
    }
}

/// A background sender ([`World::keep_sending`]).
pub struct Sender {
    pub stop: Arc<AtomicBool>,
    pub paused: Arc<AtomicBool>,
    pub busy: Arc<AtomicBool>,
    pub sent: Arc<Mutex<Vec<String>>>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl Sender {
    /// Hold sending after the round under way (waits for it).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        let t = Instant::now();
        while self.busy.load(Ordering::SeqCst) {
            assert!(t.elapsed() < Duration::from_secs(60), "a round of sends did not finish");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Stop and return every record sent.
    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

impl Drop for Sender {
    /// Stop and wait for the thread: it holds the world, whose nodes are
    /// killed only when the last holder lets go (before the test process ends).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The records as the archive holds them: what a consumer must get back
/// (the syslog line as sent, which ferry stores as received).
pub fn expected(sent: &[String]) -> Vec<String> {
    sent.to_vec()
}
