//! Mirror → sink throughput: an archive of the e2e corpus (2,000,000 nginx
//! lines by default) is delivered by a `ferry run` node's sink into a broker
//! on the same host, Kafka (tansu) and RabbitMQ (publisher confirms), from
//! node start until the broker acknowledged every record. Beside each, the
//! broker's own ceiling with a minimal client of the same library
//! (librdkafka, lapin) publishing the same records with the same guarantees,
//! so the ratio shows where the limit is. See `benches/README.md`.
//!
//! `cargo bench --bench sink` (needs the test command's tools: tansu in
//! target/tools, rabbitmq-server). `FERRY_BENCH_RECORDS` sets the corpus
//! size, `FERRY_BENCH_SINKS` = `kafka,rabbitmq` which buses to run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::corpus::generate_corpus;
use common::util::brokers;
use common::*;

fn main() {
    let records: u64 = std::env::var("FERRY_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
    let which = std::env::var("FERRY_BENCH_SINKS").unwrap_or_else(|_| "kafka,rabbitmq".into());
    let ferry = ferry_binary();
    println!("ferry sink bench: {records} records of the e2e corpus");
    println!("machine: {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()));
    let work = tempfile::Builder::new().prefix("ferry-sink-bench-").tempdir().expect("temp dir");
    let corpus = generate_corpus(records);
    let archive = build_archive(&ferry, work.path(), &corpus, records);
    let lines: Vec<&[u8]> = corpus.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    for bus in which.split(',') {
        let dir = work.path().join(bus);
        std::fs::create_dir_all(&dir).unwrap();
        let (sink, ceiling): (String, Box<dyn Fn() -> f64>) = match bus {
            "kafka" => {
                let k = Arc::new(brokers::Kafka::start(&dir));
                k.create_topic("bench.live", 3);
                let sink = format!(
                    "[[sink]]\nname = \"bus\"\nkind = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"bench.{{stream}}\"\n",
                    k.bootstrap()
                );
                let k2 = k.clone();
                let l = lines.clone();
                (sink, Box::new(move || kafka_ceiling(&k2.bootstrap(), &l)))
            }
            "rabbitmq" => {
                let r = Arc::new(brokers::Rabbit::start(&dir, 128 << 20));
                r.declare_queue("logs", "all");
                let sink = format!(
                    "[[sink]]\nname = \"bus\"\nkind = \"rabbitmq\"\nurl = \"{}\"\nexchange = \"logs\"\n",
                    r.url()
                );
                let r2 = r.clone();
                let l = lines.clone();
                (sink, Box::new(move || rabbit_ceiling(&r2.url(), &l)))
            }
            other => panic!("unknown bus {other:?}"),
        };
        let (secs, cpu, rss) = deliver(&ferry, &dir, &archive, &sink, records);
        println!(
            "{bus:>9} sink:    {:>10.0} records/s  {:>6.2} s  CPU {:>5.2} s ({:.2} CPU s per million)  peak RSS {} MiB",
            records as f64 / secs,
            secs,
            cpu,
            cpu / (records as f64 / 1e6),
            rss >> 10
        );
        let cpu0 = self_cpu_secs();
        let c = ceiling();
        let cpu = self_cpu_secs() - cpu0;
        println!(
            "{bus:>9} minimal client: {:>10.0} records/s  {c:>6.2} s  CPU {cpu:>5.2} s ({:.2} CPU s per million; same library and guarantees, no ferry)",
            records as f64 / c,
            cpu / (records as f64 / 1e6)
        );
    }
}

fn metric(admin: u16, name: &str) -> f64 {
    http_get(admin, "/metrics").map(|(_, t)| metric_value(&t, name, &[])).unwrap_or(0.0)
}

/// A node over a copy of the archive with `sink`: seconds from ready until
/// the broker acknowledged every record, the node's CPU seconds, peak RSS (KiB).
fn deliver(ferry: &Path, dir: &Path, archive: &Path, sink: &str, records: u64) -> (f64, f64, u64) {
    let data = dir.join("data");
    let st = std::process::Command::new("cp").arg("-a").arg(archive).arg(&data).status().unwrap();
    assert!(st.success());
    let admin = free_port();
    let cfg = dir.join("sink.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nsite = \"central\"\nname = \"c1\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [[stream]]\nname = \"live\"\n[[listener]]\nname = \"tcp\"\nkind = \"syslog\"\ntransport = \"tcp\"\n\
             listen = \"127.0.0.1:{}\"\nstream = \"live\"\n{sink}",
            data.display(),
            free_port()
        ),
    )
    .unwrap();
    let mut node = Node::start(ferry, &cfg, &dir.join("sink.log"), admin);
    let t = Instant::now();
    let cpu0 = cpu_secs(node.pid);
    loop {
        if metric(admin, "ferry_sink_records_total") >= records as f64 {
            break;
        }
        node.check_running("while delivering");
        assert!(t.elapsed() < Duration::from_secs(900), "not delivered in 15 min:\n{}", node.tail());
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs(node.pid) - cpu0;
    let rss = hwm_kib(node.pid);
    node.stop();
    (secs, cpu, rss)
}

/// CPU seconds used by this process so far (the minimal clients run here).
fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// librdkafka alone: the same settings and headers, every delivery awaited.
fn kafka_ceiling(bootstrap: &str, lines: &[&[u8]]) -> f64 {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let p: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.codec", "zstd")
        .set("compression.level", "1")
        .set("linger.ms", "10")
        .set("batch.num.messages", "100000")
        .set("batch.size", "4000000")
        .set("queue.buffering.max.messages", "400000")
        .create()
        .unwrap();
    let t = Instant::now();
    for (i, l) in lines.iter().enumerate() {
        let seq = i.to_string();
        let h = OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: "site", value: Some("sg1") })
            .insert(Header { key: "node", value: Some("relay-1") })
            .insert(Header { key: "stream", value: Some("live") })
            .insert(Header { key: "seq", value: Some(seq.as_str()) })
            .insert(Header { key: "received_ms", value: Some("1764500000000") });
        let mut r = BaseRecord::to("bench.live").key("sg1/relay-1/live").payload(*l).headers(h);
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    p.flush(Duration::from_secs(600)).unwrap();
    t.elapsed().as_secs_f64()
}

/// lapin alone: persistent messages with headers and ids, confirms awaited.
fn rabbit_ceiling(url: &str, lines: &[&[u8]]) -> f64 {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let t = Instant::now();
        let mut pending = std::collections::VecDeque::new();
        for (i, l) in lines.iter().enumerate() {
            let mut h = FieldTable::default();
            h.insert("site".into(), AMQPValue::LongString(LongString::from("sg1")));
            h.insert("node".into(), AMQPValue::LongString(LongString::from("relay-1")));
            h.insert("stream".into(), AMQPValue::LongString(LongString::from("live")));
            h.insert("seq".into(), AMQPValue::LongLongInt(i as i64));
            h.insert("received_ms".into(), AMQPValue::LongLongInt(1_764_500_000_000));
            let props = lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(format!("sg1/relay-1/live/{i}").into())
                .with_timestamp(1_764_500_000)
                .with_headers(h);
            let opts = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
            let c = ch.basic_publish("logs".into(), "sg1.live".into(), opts, l, props).await.unwrap();
            pending.push_back(c);
            // The same bound as the sink's in-flight limit.
            if pending.len() >= 50_000 {
                pending.pop_front().unwrap().await.unwrap();
            }
        }
        for c in pending {
            c.await.unwrap();
        }
        t.elapsed().as_secs_f64()
    })
}
