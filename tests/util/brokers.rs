//! Real brokers for the sink tests, started privately by the test and
//! stopped by pid at the end (also when the test fails): RabbitMQ from
//! Debian's `rabbitmq-server` as its own Erlang node, and `tansu` (a
//! Kafka-protocol broker from crates.io, built into `target/tools` by the
//! test command). What ferry published is read back by independent clients
//! (Python's `pika` and `confluent-kafka`), never by ferry's own code.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, require_tool};

/// A private RabbitMQ node: its own node name, ports, epmd, mnesia and logs
/// in a directory owned by the `rabbitmq` user (Debian's wrapper drops to it).
pub struct Rabbit {
    pub port: u16,
    node: String,
    dir: PathBuf,
    env: Vec<(String, String)>,
    epmd_port: u16,
    pid: Option<i32>,
    /// Debian's wrapper (su → rabbitmq-server → beam): reaped at stop.
    wrapper: Option<Child>,
}

impl Rabbit {
    /// Start a node; `max_message_size` is its limit for one message.
    pub fn start(dir: &Path, max_message_size: usize) -> Rabbit {
        Rabbit::start_on(dir, max_message_size, free_port())
    }

    /// [`start`](Self::start) on a given AMQP port.
    pub fn start_on(dir: &Path, max_message_size: usize, port: u16) -> Rabbit {
        require_tool("rabbitmq-server");
        let epmd_port = free_port();
        let dist_port = free_port();
        let root = dir.join(format!("rabbitmq-{port}"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            root.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nmax_message_size = {max_message_size}\nloopback_users = none\n"),
        )
        .unwrap();
        std::fs::write(root.join("enabled_plugins"), "[].\n").unwrap();
        // The node runs as `rabbitmq`: it must be able to enter the test directory.
        for p in [dir, root.as_path()] {
            let _ = Command::new("chmod").arg("o+x").arg(p).status();
        }
        let st = Command::new("chown").args(["-R", "rabbitmq:rabbitmq"]).arg(&root).status().unwrap();
        assert!(st.success(), "chown of the RabbitMQ directory (tests run as root)");
        let node = format!("ferrytest{port}@localhost");
        let r = |s: &str| root.join(s).display().to_string();
        let env = vec![
            ("RABBITMQ_NODENAME".to_owned(), node.clone()),
            ("RABBITMQ_NODE_PORT".to_owned(), port.to_string()),
            ("RABBITMQ_DIST_PORT".to_owned(), dist_port.to_string()),
            ("ERL_EPMD_PORT".to_owned(), epmd_port.to_string()),
            ("RABBITMQ_MNESIA_BASE".to_owned(), r("mnesia")),
            ("RABBITMQ_LOG_BASE".to_owned(), r("log")),
            ("RABBITMQ_CONFIG_FILE".to_owned(), r("rabbitmq.conf")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE".to_owned(), r("enabled_plugins")),
            ("RABBITMQ_FEATURE_FLAGS_FILE".to_owned(), r("feature_flags")),
            ("RABBITMQ_PLUGINS_EXPAND_DIR".to_owned(), r("plugins-expand")),
            ("RABBITMQ_PID_FILE".to_owned(), r("pid")),
        ];
        let mut rb = Rabbit { port, node, dir: root, env, epmd_port, pid: None, wrapper: None };
        rb.boot();
        rb
    }

    /// Start the node (after [`stop`](Self::stop) or [`kill9`](Self::kill9))
    /// and wait until it answers a ping and accepts AMQP connections.
    pub fn boot(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("pid"));
        let wrapper = Command::new("rabbitmq-server")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::fs::File::create(self.dir.join("server.out")).unwrap())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.wrapper = Some(wrapper);
        let t = Instant::now();
        loop {
            let ok = Command::new("rabbitmq-diagnostics")
                .args(["-q", "-n", &self.node, "ping"])
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "RabbitMQ node {} did not start:\n{}",
                self.node,
                std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let pid = std::fs::read_to_string(self.dir.join("pid")).unwrap();
        self.pid = Some(pid.trim().parse().expect("RabbitMQ pid file"));
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stop the node (SIGTERM to its pid: a clean shutdown) and wait.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: kill(2) on the broker's pid, read from its pid file
            // (a frozen broker is woken first, or it could not stop).
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGTERM)
            };
            let t = Instant::now();
            // SAFETY: signal 0 only checks that the process exists.
            while unsafe { libc::kill(pid, 0) } == 0 {
                if t.elapsed() > Duration::from_secs(30) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if let Some(mut w) = self.wrapper.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    /// Start it again on the same data (durable queues and messages survive).
    pub fn restart(&mut self) {
        self.stop();
        self.boot();
    }

    /// SIGKILL to the broker's Erlang VM: no goodbye to any client.
    pub fn kill9(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: kill(2) on the broker's pid, read from its pid file.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let t = Instant::now();
            // SAFETY: signal 0 only checks that the process exists.
            while unsafe { libc::kill(pid, 0) } == 0 {
                assert!(t.elapsed() < Duration::from_secs(30), "RabbitMQ {pid} survived SIGKILL");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(mut w) = self.wrapper.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    /// `rabbitmqctl stop_app`: the node stays, the broker closes every
    /// connection and stops listening.
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
    }

    /// `rabbitmqctl start_app`, then wait until AMQP connections are accepted.
    pub fn start_app(&self) {
        self.ctl(&["start_app"]);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(60), "RabbitMQ did not listen again after start_app");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ctl(&self, args: &[&str]) {
        let out = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to the broker: a frozen broker
    /// keeps its sockets open (the kernel still accepts connections) and
    /// answers nothing.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.pid.expect("RabbitMQ running");
        // SAFETY: kill(2) on the broker's pid, read from its pid file.
        unsafe { libc::kill(pid, if frozen { libc::SIGSTOP } else { libc::SIGCONT }) };
    }

    /// Declare a durable topic exchange and a durable queue bound with `#`.
    pub fn declare_queue(&self, exchange: &str, queue: &str) {
        run_python(PIKA_DECLARE, &[&self.port.to_string(), exchange, queue], Duration::from_secs(30));
    }

    /// Read every message of `queue` (taken off it as read) until `want` distinct
    /// message ids were seen and the queue stayed empty for `idle`.
    pub fn consume(&self, queue: &str, want: usize, idle: Duration, limit: Duration) -> Vec<Msg> {
        consume(&self.dir, PIKA_CONSUME, &[&self.port.to_string(), queue], want, idle, limit)
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.stop();
        // The node's private epmd outlives it: stop that too.
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("pkill").args(["-f", &format!("epmd.*{}", self.epmd_port)]).status();
    }
}

/// One message as an independent consumer read it.
#[derive(Clone, Debug)]
pub struct Msg {
    /// Kafka topic and partition, or RabbitMQ exchange and routing key.
    pub place: String,
    pub key: String,
    pub id: String,
    pub site: String,
    pub node: String,
    pub stream: String,
    pub seq: u64,
    pub received_ms: i64,
    pub value: String,
}

/// Run a consumer script with `args` then `want idle limit out`, and read
/// what it wrote to `out` (a file under `dir`).
fn consume(dir: &Path, code: &str, args: &[&str], want: usize, idle: Duration, limit: Duration) -> Vec<Msg> {
    let out = dir.join(format!("consumed-{}.tsv", rand::random::<u32>()));
    let (want, idle_s, limit_s, out_s) =
        (want.to_string(), idle.as_secs_f64().to_string(), limit.as_secs_f64().to_string(), out.display().to_string());
    let mut all: Vec<&str> = args.to_vec();
    all.extend([want.as_str(), idle_s.as_str(), limit_s.as_str(), out_s.as_str()]);
    run_python(code, &all, limit + Duration::from_secs(30));
    read_msgs(&out)
}

fn read_msgs(path: &Path) -> Vec<Msg> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(9, '\t').collect();
            assert_eq!(f.len(), 9, "consumer output line {l:?}");
            Msg {
                place: f[0].into(),
                key: f[1].into(),
                id: f[2].into(),
                site: f[3].into(),
                node: f[4].into(),
                stream: f[5].into(),
                seq: f[6].parse().unwrap(),
                received_ms: f[7].parse().unwrap(),
                value: f[8].into(),
            }
        })
        .collect()
}

/// Run an inline Python program; fail the test with its stderr if it fails.
pub fn run_python(code: &str, args: &[&str], limit: Duration) -> String {
    let py = require_tool("python3");
    let mut child =
        Command::new(py).arg("-c").arg(code).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    loop {
        if let Some(_s) = child.try_wait().unwrap() {
            break;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("python program killed after {limit:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python program failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PIKA_DECLARE: &str = r#"
import sys, pika
port, exchange, queue = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', port))
ch = c.channel()
ch.exchange_declare(exchange, exchange_type='topic', durable=True)
ch.queue_declare(queue, durable=True)
ch.queue_bind(queue, exchange, routing_key='#')
c.close()
"#;

const PIKA_CONSUME: &str = r#"
import sys, time, pika
port, queue, want, idle, limit, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', port, heartbeat=0))
ch = c.channel()
ch.basic_qos(prefetch_count=5000)
ids = set(); start = time.time(); last = time.time()
with open(out, 'w') as f:
    for method, props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=0.2):
        now = time.time()
        if method is None:
            if len(ids) >= want and now - last > idle:
                break
            if now - start > limit:
                sys.exit('consumer timed out: %d of %d distinct message ids after %.0f s' % (len(ids), want, now - start))
            continue
        h = props.headers or {}
        f.write('\t'.join([method.exchange + '/' + method.routing_key, '-', props.message_id or '',
            str(h.get('site', '')), str(h.get('node', '')), str(h.get('stream', '')), str(h.get('seq', -1)),
            str(h.get('received_ms', -1)), body.decode('utf-8', 'replace').replace('\n', '\\n')]) + '\n')
        ids.add(props.message_id)
        last = now
ch.cancel()
c.close()
"#;

/// A private Kafka-protocol broker (tansu) on loopback.
pub struct Kafka {
    pub port: u16,
    dir: PathBuf,
    storage: String,
    child: Option<Child>,
}

/// tansu, built by the test command into `target/tools`.
pub fn tansu_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/tansu");
    assert!(p.is_file(), "{} is missing: run the README's test command, which builds it", p.display());
    p
}

impl Kafka {
    /// Start tansu in memory (fast; forgets everything when stopped).
    pub fn start(dir: &Path) -> Kafka {
        Kafka::start_with(dir, "memory://tansu/")
    }

    /// Start tansu on SQLite in `dir`: it survives a restart. Measured here:
    /// it takes 20,000 records in 2 s but gives them back at about 800 a
    /// second, and a fetch over one large producer batch (10,000+ records)
    /// does not return at all, so producers writing to it must send small
    /// batches (`batch.num.messages`).
    pub fn start_durable(dir: &Path) -> Kafka {
        // tansu resolves sqlite://FILE against its working directory.
        Kafka::start_with(dir, "sqlite://tansu.db")
    }

    fn start_with(dir: &Path, storage: &str) -> Kafka {
        let root = dir.join("kafka");
        std::fs::create_dir_all(&root).unwrap();
        let storage = storage.to_owned();
        let mut k = Kafka { port: free_port(), dir: root, storage, child: None };
        k.boot();
        k
    }

    /// Start the broker (after [`stop`](Self::stop)) and wait until it listens.
    pub fn boot(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let n = std::fs::read_dir(&self.dir).unwrap().count();
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--storage-engine",
                &self.storage,
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .env("RUST_LOG", "warn")
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(format!("tansu-{n}.log"))).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "tansu did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let out = Command::new(tansu_bin())
            .args(["topic", "create", topic, "--partitions", &partitions.to_string(), "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .output()
            .unwrap();
        assert!(out.status.success(), "tansu topic create {topic}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while c.try_wait().unwrap().is_none() {
                if t.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.boot();
    }

    /// Read `topics` from the beginning with confluent-kafka until `want`
    /// distinct (key, seq) were seen and nothing came for `idle`.
    pub fn consume(&self, topics: &[&str], want: usize, idle: Duration, limit: Duration) -> Vec<Msg> {
        consume(&self.dir, KAFKA_CONSUME, &[&self.bootstrap(), &topics.join(",")], want, idle, limit)
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const KAFKA_CONSUME: &str = r#"
import sys, time, os
from confluent_kafka import Consumer
boot, topics, want, idle, limit, out = sys.argv[1], sys.argv[2].split(','), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
c = Consumer({'bootstrap.servers': boot, 'group.id': 'ferry-test-%d' % os.getpid(), 'auto.offset.reset': 'earliest',
              'enable.auto.commit': False})
c.subscribe(topics)
ids = set(); start = time.time(); last = time.time()
with open(out, 'w') as f:
    while True:
        now = time.time()
        if len(ids) >= want and now - last > idle:
            break
        if now - start > limit:
            sys.exit('consumer timed out: %d of %d distinct (key, seq) after %.0f s' % (len(ids), want, now - start))
        ms = c.consume(10000, 0.2)
        for m in ms:
            if m.error():
                sys.exit('consumer error: %s' % m.error())
            h = {k: v.decode() for k, v in (m.headers() or [])}
            key = m.key().decode()
            mid = key + '/' + h.get('seq', '')
            f.write('\t'.join([m.topic() + '/' + str(m.partition()), key, mid, h.get('site', ''), h.get('node', ''),
                h.get('stream', ''), h.get('seq', '-1'), h.get('received_ms', '-1'),
                m.value().decode('utf-8', 'replace').replace('\n', '\\n')]) + '\n')
            ids.add(mid)
            last = time.time()
c.close()
"#;

/// Check what a consumer read against what was sent: after dropping
/// duplicates by id, exactly `sent` (value → count 1 each); every duplicate
/// carries the same value as its original; order by seq per origin.
/// Returns (duplicates, out-of-order pairs).
pub fn check_delivery(msgs: &[Msg], sent: &[String]) -> (usize, usize) {
    let mut by_id: HashMap<&str, &Msg> = HashMap::new();
    let mut dups = 0;
    for m in msgs {
        assert!(!m.site.is_empty() && !m.node.is_empty() && !m.stream.is_empty(), "headers missing: {m:?}");
        assert_eq!(m.id, format!("{}/{}/{}/{}", m.site, m.node, m.stream, m.seq), "message id = site/node/stream/seq");
        assert!(m.received_ms > 1_600_000_000_000, "receive time header: {m:?}");
        if let Some(first) = by_id.insert(&m.id, m) {
            dups += 1;
            assert_eq!(first.value, m.value, "a duplicate carries the same record as its original ({})", m.id);
        }
    }
    let mut got: Vec<&str> = by_id.values().map(|m| m.value.as_str()).collect();
    got.sort_unstable();
    let mut want: Vec<&str> = sent.iter().map(String::as_str).collect();
    want.sort_unstable();
    if got != want {
        let gs: std::collections::HashSet<&str> = got.iter().copied().collect();
        let ws: std::collections::HashSet<&str> = want.iter().copied().collect();
        let missing: Vec<_> = ws.difference(&gs).take(5).collect();
        let extra: Vec<_> = gs.difference(&ws).take(5).collect();
        panic!(
            "after dropping duplicates the broker holds {} records, {} were sent; missing e.g. {missing:?}, unexpected e.g. {extra:?}",
            got.len(),
            want.len()
        );
    }
    // Order: per origin, sequence numbers as consumed never go back except
    // to re-send (a duplicate of something already seen).
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut disorder = 0;
    for m in msgs {
        let origin = format!("{}/{}/{}", m.site, m.node, m.stream);
        let fresh = seen.insert(&m.id);
        if let Some(prev) = last.get(&origin) {
            if fresh && m.seq < *prev {
                disorder += 1;
            }
        }
        last.insert(origin, m.seq);
    }
    (dups, disorder)
}
