//! Sinks deliver what central mirrors into real brokers: a private RabbitMQ
//! node (Debian's rabbitmq-server) and a Kafka-protocol broker (tansu),
//! read back by independent clients (pika, confluent-kafka). Two edge sites
//! (one over TLS, one over QUIC) with two streams each feed one central node.

mod util;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::brokers::{check_delivery, Kafka, Msg, Rabbit};
use util::world::*;
use util::*;

fn rabbit_sink(r: &Rabbit, extra: &str) -> String {
    format!(
        "[[sink]]\nname = \"bus\"\nkind = \"rabbitmq\"\nsites = [\"edge1\", \"edge2\"]\nurl = \"{}\"\nexchange = \"logs\"\n\
         routing_key = \"{{site}}.{{stream}}\"\nbackoff_min = \"50ms\"\nbackoff_max = \"1s\"\n{extra}\n",
        r.url()
    )
}

fn kafka_sink(k: &Kafka, extra: &str) -> String {
    format!(
        "[[sink]]\nname = \"bus\"\nkind = \"kafka\"\nsites = [\"edge1\", \"edge2\"]\nbrokers = [\"{}\"]\n\
         topic = \"logs.{{stream}}\"\nbackoff_min = \"50ms\"\nbackoff_max = \"1s\"\n{extra}\n",
        k.bootstrap()
    )
}

fn assert_headers_and_places(msgs: &[Msg], kafka: bool) {
    for m in msgs {
        assert!(m.value.contains(&format!(" {} {} ", m.site, m.stream)), "record {m:?}");
        if kafka {
            assert!(m.place.starts_with(&format!("logs.{}/", m.stream)), "topic per stream: {m:?}");
            assert_eq!(m.key, format!("{}/{}/{}", m.site, m.node, m.stream), "key = site/node/stream");
        } else {
            assert_eq!(m.place, format!("logs/{}.{}", m.site, m.stream), "exchange/routing key: {m:?}");
        }
    }
    // One origin, one Kafka partition: its order holds.
    if kafka {
        let mut part = std::collections::HashMap::new();
        for m in msgs {
            let p = part.entry(m.key.clone()).or_insert_with(|| m.place.clone());
            assert_eq!(*p, m.place, "origin {} spread over partitions", m.key);
        }
    }
}

#[test]
fn rabbitmq_gets_every_record_of_two_sites_in_order_with_headers() {
    let dir = TestDir::new("sink-rmq");
    let rabbit = Rabbit::start(&dir.path, 128 << 20);
    rabbit.declare_queue("logs", "all");
    let w = World::start("sink-rmq", &rabbit_sink(&rabbit, ""), "");
    let sent = w.send(50_000, "a");
    w.wait_caught_up("bus", Duration::from_secs(240));
    let msgs = rabbit.consume("all", sent.len(), Duration::from_secs(2), Duration::from_secs(240));
    let (dups, disorder) = check_delivery(&msgs, &expected(&sent));
    assert_eq!(dups, 0, "no crash, no duplicates");
    assert_eq!(disorder, 0, "in sequence order per site/stream/node");
    assert_headers_and_places(&msgs, false);
    let status = http_get(w.central_ports.admin, "/status").unwrap().1;
    assert!(status.contains("sinks") && status.contains("edge1/live"), "ferry status shows the sink:\n{status}");
}

#[test]
fn kafka_gets_every_record_of_two_sites_in_order_with_headers() {
    let dir = TestDir::new("sink-kafka");
    let kafka = Kafka::start(&dir.path);
    for s in STREAMS {
        kafka.create_topic(&format!("logs.{s}"), 3);
    }
    let w = World::start("sink-kafka", &kafka_sink(&kafka, ""), "");
    let sent = w.send(50_000, "k");
    w.wait_caught_up("bus", Duration::from_secs(240));
    let msgs =
        kafka.consume(&["logs.live", "logs.audit"], sent.len(), Duration::from_secs(2), Duration::from_secs(240));
    let (dups, disorder) = check_delivery(&msgs, &expected(&sent));
    assert_eq!(dups, 0, "no crash, no duplicates");
    assert_eq!(disorder, 0, "in sequence order per site/stream/node");
    assert_headers_and_places(&msgs, true);
}

/// The sink with every timing key at its default (backoff, timeouts,
/// stall_after): what an operator gets.
fn default_sink(bus: &str) -> String {
    format!("[[sink]]\nname = \"bus\"\nsites = [\"edge1\", \"edge2\"]\n{bus}\n")
}

/// Records in flight at most, in the crash tests.
const IN_FLIGHT: usize = 2_000;
/// Records of one frame at most (the edges commit at 256 KiB; a record
/// here is over 60 bytes): the sink stops publishing once `IN_FLIGHT` is
/// reached, after the frame that crossed it.
const FRAME: usize = 4_500;

/// Central killed with SIGKILL three times while its sink delivers a
/// backlog at full rate: after each restart everything is delivered, and
/// the records sent twice because of that crash are at most what was in
/// flight plus what the broker acknowledged within one cursor write
/// (10 ms interval plus the write and its fsyncs, which take up to a few
/// hundred ms on this machine's disk under the test's load: 250 ms at the
/// measured rate is the bound).
fn crash_three_times(kafka: bool) {
    let name = if kafka { "sink-crash-kafka" } else { "sink-crash-rmq" };
    let dir = TestDir::new(name);
    let limit = format!("max_in_flight = {IN_FLIGHT}");
    let (rabbit, broker, sink) = if kafka {
        let k = Kafka::start(&dir.path);
        for s in STREAMS {
            k.create_topic(&format!("logs.{s}"), 3);
        }
        let s = kafka_sink(&k, &limit);
        (None, Some(k), s)
    } else {
        let r = Rabbit::start(&dir.path, 128 << 20);
        r.declare_queue("logs", "all");
        let s = rabbit_sink(&r, &limit);
        (Some(r), None, s)
    };
    let mut w = World::start(name, &sink, "");
    let mut sent = Vec::new();
    let mut rates = Vec::new();
    let records = |w: &World| w.central().metric("ferry_sink_records_total", &[("sink", "bus")]);
    for crash in 1..=3 {
        let round = w.send(60_000, &format!("crash{crash}"));
        sent.extend(round.iter().cloned());
        // Full-rate delivery under way: a fifth of the round delivered,
        // the rate since the round's first delivery, then the kill.
        let c0 = records(&w);
        let first =
            w.central()
                .wait_metric("ferry_sink_records_total", &[("sink", "bus")], Duration::from_secs(120), |v| v > c0);
        let t1 = Instant::now();
        w.wait_delivered("bus", c0 as usize + round.len() / 5, Duration::from_secs(120));
        let r2 = records(&w);
        let rate = (r2 - first) / t1.elapsed().as_secs_f64();
        w.kill9_and_restart_central();
        assert!(r2 < c0 + round.len() as f64, "crash {crash} came after the round was delivered: not during delivery");
        rates.push(rate);
        w.wait_caught_up("bus", Duration::from_secs(240));
    }
    let msgs = match (&rabbit, &broker) {
        (Some(r), _) => r.consume("all", sent.len(), Duration::from_secs(2), Duration::from_secs(240)),
        (_, Some(k)) => {
            k.consume(&["logs.live", "logs.audit"], sent.len(), Duration::from_secs(2), Duration::from_secs(240))
        }
        _ => unreachable!(),
    };
    let (_, disorder) = check_delivery(&msgs, &expected(&sent));
    assert_eq!(disorder, 0, "in sequence order per origin");
    // Each round was delivered whole before the next: a duplicate belongs
    // to the crash of its record's round.
    let mut seen = std::collections::HashSet::new();
    let mut per_crash = [(0usize, 0usize); 3];
    for m in &msgs {
        if !seen.insert(m.id.as_str()) {
            let k = (1..=3).find(|k| m.value.contains(&format!(" crash{k} "))).expect("a record of a round");
            per_crash[k - 1].0 += 1;
            per_crash[k - 1].1 += m.value.len();
        }
    }
    for (k, ((d, b), rate)) in per_crash.iter().zip(&rates).enumerate() {
        let bound = IN_FLIGHT + FRAME + (rate * 0.25) as usize;
        eprintln!(
            "{name}: crash {} at {rate:.0} records/s: {d} records ({b} bytes) sent twice; bound {bound} \
             (in flight {IN_FLIGHT} + a frame {FRAME} + 250 ms of acknowledgements)",
            k + 1
        );
        assert!(*d <= bound, "crash {}: {d} duplicates, more than what was in flight ({bound})", k + 1);
    }
    assert_eq!(w.central().metric("ferry_sink_dead_letters_total", &[]), 0.0);
}

#[test]
fn rabbitmq_central_killed_three_times_repeats_at_most_what_was_in_flight() {
    crash_three_times(false);
}

#[test]
fn kafka_central_killed_three_times_repeats_at_most_what_was_in_flight() {
    crash_three_times(true);
}

/// tansu on SQLite survives its own restart: central killed twice, then the
/// broker restarted, and every record is there once after dropping
/// duplicates. It gives records back at a few hundred a second under load:
/// the volume is what it can serve within the test's time.
#[test]
fn kafka_loses_nothing_when_central_is_killed_twice_and_the_broker_restarts() {
    let name = "sink-crash-kafka-durable";
    let dir = TestDir::new(name);
    let mut k = Kafka::start_durable(&dir.path);
    for s in STREAMS {
        k.create_topic(&format!("logs.{s}"), 3);
    }
    // tansu on SQLite cannot give back one large producer batch.
    let mut w = World::start(name, &kafka_sink(&k, "options = { \"batch.num.messages\" = \"200\" }"), "");
    let sent = w.send(300, "c");
    // Once a quarter is delivered, and again as soon as central is back
    // (while it starts delivering from its cursor).
    w.wait_delivered("bus", sent.len() / 4, Duration::from_secs(240));
    w.kill9_and_restart_central();
    w.kill9_and_restart_central();
    k.restart();
    w.wait_caught_up("bus", Duration::from_secs(240));
    let msgs = k.consume(&["logs.live", "logs.audit"], sent.len(), Duration::from_secs(3), Duration::from_secs(240));
    let (dups, _) = check_delivery(&msgs, &expected(&sent));
    eprintln!("{name}: {} messages read for {} records, {dups} duplicates", msgs.len(), sent.len());
    assert_eq!(w.central().metric("ferry_sink_dead_letters_total", &[]), 0.0);
}

/// Wait until the sink delivers a record it had not delivered at `since`
/// (the broker just came back); returns how long that took.
fn delivering_again(w: &World, since: Instant, limit: Duration) -> Duration {
    let c = w.central();
    let at = c.metric("ferry_sink_records_total", &[("sink", "bus")]);
    c.wait_metric("ferry_sink_records_total", &[("sink", "bus")], limit, |v| v > at);
    since.elapsed()
}

/// RabbitMQ taken away ten times while both edges send, three ways
/// (`rabbitmqctl stop_app`/`start_app`; the broker's VM killed with SIGKILL
/// and booted; the node stopped and booted), with the sink's default
/// timing: each time the sink delivers again within 5 s of the broker
/// accepting connections, and at the end every record is there once after
/// dropping duplicates, in order per origin.
#[test]
fn rabbitmq_restarted_ten_times_the_sink_delivers_again_within_5s_each_time() {
    let dir = TestDir::new("sink-bounce-rmq");
    let mut rabbit = Rabbit::start(&dir.path, 128 << 20);
    rabbit.declare_queue("logs", "all");
    let bus = format!("kind = \"rabbitmq\"\nurl = \"{}\"\nexchange = \"logs\"", rabbit.url());
    let w = Arc::new(World::start("sink-bounce-rmq", &default_sink(&bus), ""));
    let sender = w.keep_sending(25, Duration::from_millis(200), "b");
    let mut waits = Vec::new();
    for i in 0..10 {
        let c = w.central();
        let before = c.metric("ferry_sink_records_total", &[("sink", "bus")]);
        c.wait_metric("ferry_sink_records_total", &[("sink", "bus")], Duration::from_secs(60), |v| v > before);
        let how = ["stop_app", "kill -9", "stop"][i % 3];
        match i % 3 {
            0 => rabbit.stop_app(),
            1 => rabbit.kill9(),
            _ => rabbit.stop(),
        }
        std::thread::sleep(Duration::from_secs(2));
        match i % 3 {
            0 => rabbit.start_app(),
            _ => rabbit.boot(),
        }
        let waited = delivering_again(&w, Instant::now(), Duration::from_secs(60));
        eprintln!("RabbitMQ {how} ({}): delivering again {waited:?} after it accepted connections", i + 1);
        waits.push((how, waited));
    }
    let sent = sender.finish();
    w.wait_caught_up("bus", Duration::from_secs(240));
    let msgs = rabbit.consume("all", sent.len(), Duration::from_secs(3), Duration::from_secs(240));
    let (dups, disorder) = check_delivery(&msgs, &expected(&sent));
    eprintln!("{} records, {dups} duplicates after 10 broker restarts", sent.len());
    assert_eq!(disorder, 0, "in sequence order per origin");
    assert!(waits.iter().all(|(_, d)| *d <= Duration::from_secs(5)), "delivering again within 5 s: {waits:?}");
}

/// The in-memory Kafka broker restarted ten times (it forgets everything:
/// the test reads what it holds first and creates the topics again), while
/// both edges send: the sink delivers again within 5 s of the broker
/// accepting connections, and every record is there once in the end.
#[test]
fn kafka_restarted_ten_times_with_topics_recreated_the_sink_delivers_again_within_5s() {
    let dir = TestDir::new("sink-bounce-kafka");
    let mut kafka = Kafka::start(&dir.path);
    let topics = ["logs.live", "logs.audit"];
    let create = |k: &Kafka| topics.iter().for_each(|t| k.create_topic(t, 3));
    create(&kafka);
    let bus = format!("kind = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"logs.{{stream}}\"", kafka.bootstrap());
    let w = Arc::new(World::start("sink-bounce-kafka", &default_sink(&bus), ""));
    let sender = w.keep_sending(25, Duration::from_millis(200), "k");
    let (mut all, mut waits) = (Vec::<Msg>::new(), Vec::new());
    let distinct = |m: &[Msg]| m.iter().map(|m| m.id.as_str()).collect::<std::collections::HashSet<_>>().len();
    for i in 0..10 {
        // What this broker holds is read before it forgets it.
        sender.pause();
        w.wait_caught_up("bus", Duration::from_secs(120));
        let want = sender.sent.lock().unwrap().len() - distinct(&all);
        all.extend(kafka.consume(&topics, want, Duration::from_secs(2), Duration::from_secs(120)));
        kafka.stop();
        sender.resume();
        std::thread::sleep(Duration::from_secs(2));
        kafka.boot();
        let up = Instant::now();
        create(&kafka);
        let waited = delivering_again(&w, up, Duration::from_secs(60));
        eprintln!("Kafka restart {}: delivering again {waited:?} after it accepted connections", i + 1);
        waits.push(waited);
    }
    sender.pause();
    let sent = std::mem::take(&mut *sender.sent.lock().unwrap());
    w.wait_caught_up("bus", Duration::from_secs(120));
    all.extend(kafka.consume(&topics, sent.len() - distinct(&all), Duration::from_secs(2), Duration::from_secs(120)));
    drop(sender);
    let (dups, disorder) = check_delivery(&all, &expected(&sent));
    eprintln!("{} records, {dups} duplicates after 10 broker restarts", sent.len());
    assert_eq!(disorder, 0, "in sequence order per origin");
    assert!(waits.iter().all(|d| *d <= Duration::from_secs(5)), "delivering again within 5 s: {waits:?}");
}

/// A "broker" that accepts TCP connections and never answers, then a real
/// one that stops answering mid-delivery (SIGSTOP): the sink never hangs.
/// Its connects time out (counted `timeout`), it says it is stalled (metric,
/// status, log) and it delivers everything once the broker answers.
#[test]
fn a_broker_that_never_answers_is_a_counted_timeout_and_a_stall_never_a_hang() {
    let port = free_port();
    let silent = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    silent.set_nonblocking(true).unwrap();
    let quiet = Arc::new(AtomicBool::new(true));
    let q = quiet.clone();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        while q.load(Ordering::SeqCst) {
            if let Ok((c, _)) = silent.accept() {
                held.push(c);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        held.len()
    });
    let bus = format!(
        "kind = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:{port}/%2f\"\nexchange = \"logs\"\n\
         connect_timeout = \"1s\"\nrequest_timeout = \"2s\"\nstall_after = \"4s\"\nbackoff_max = \"1s\""
    );
    let w = World::start("sink-silent", &default_sink(&bus), "");
    let mut sent = w.send(2_000, "silent");
    let c = w.central();
    c.wait_metric("ferry_sink_errors_total", &[("sink", "bus"), ("reason", "timeout")], Duration::from_secs(30), |v| {
        v >= 2.0
    });
    c.wait_metric("ferry_sink_stalled", &[("sink", "bus")], Duration::from_secs(30), |v| v == 1.0);
    assert_eq!(c.metric("ferry_sink_connected", &[("sink", "bus")]), 0.0);
    let log = c.log_text();
    assert!(log.contains("connect: no answer from the broker within 1s"), "the timeout is named:\n{log}");
    assert!(log.contains("sink stalled"), "the stall is said:\n{log}");
    let status = http_get(w.central_ports.admin, "/status").unwrap().1;
    assert!(status.contains("STALLED"), "ferry status shows the stall:\n{status}");
    quiet.store(false, Ordering::SeqCst);
    let held = holder.join().unwrap();
    assert!(held >= 2, "the sink dialled the silent listener: {held} connections");

    // The real broker takes the port: everything is delivered.
    let dir = TestDir::new("sink-silent-broker");
    let rabbit = Rabbit::start_on(&dir.path, 128 << 20, port);
    rabbit.declare_queue("logs", "all");
    w.wait_caught_up("bus", Duration::from_secs(120));

    // It stops answering mid-delivery: confirms never come.
    rabbit.freeze(true);
    let stalls = c.metric("ferry_sink_errors_total", &[("sink", "bus"), ("reason", "stalled")]);
    sent.extend(w.send(2_000, "frozen"));
    c.wait_metric("ferry_sink_stalled", &[("sink", "bus")], Duration::from_secs(30), |v| v == 1.0);
    c.wait_metric("ferry_sink_errors_total", &[("sink", "bus"), ("reason", "stalled")], Duration::from_secs(30), |v| {
        v > stalls
    });
    rabbit.freeze(false);
    w.wait_caught_up("bus", Duration::from_secs(120));
    assert_eq!(c.metric("ferry_sink_stalled", &[("sink", "bus")]), 0.0, "delivering again: not stalled");
    let msgs = rabbit.consume("all", sent.len(), Duration::from_secs(2), Duration::from_secs(120));
    check_delivery(&msgs, &expected(&sent));
}

/// The broker is gone for 20 s while both edges keep sending: the link and
/// the mirror go on, the sink's lag grows and shows, memory stays flat, and
/// the backlog drains once the broker is back.
#[test]
fn broker_down_20s_the_link_goes_on_the_lag_shows_and_drains() {
    let dir = TestDir::new("sink-outage");
    let mut rabbit = Rabbit::start(&dir.path, 128 << 20);
    rabbit.declare_queue("logs", "all");
    let w = World::start("sink-outage", &rabbit_sink(&rabbit, ""), "");
    let mut sent = w.send(5_000, "before");
    w.wait_delivered("bus", sent.len(), Duration::from_secs(120));
    let pid = w.central().pid();
    let rss_before = rss_bytes(pid);
    rabbit.stop();
    let down = Instant::now();
    let mirrored_before = w.central().metric("ferry_link_received_bytes_total", &[]);
    let mut rss_max = 0;
    let mut round = 0;
    while down.elapsed() < Duration::from_secs(20) {
        sent.extend(w.send(1_000, &format!("down{round}")));
        round += 1;
        rss_max = rss_max.max(rss_bytes(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    let c = w.central();
    assert!(c.metric("ferry_link_received_bytes_total", &[]) > mirrored_before, "the mirror kept growing");
    c.wait_metric("ferry_sink_connected", &[("sink", "bus")], Duration::from_secs(10), |v| v == 0.0);
    let lag = c.wait_metric("ferry_sink_lag_records", &[("sink", "bus")], Duration::from_secs(10), |v| v > 5_000.0);
    let lag_secs = c.metric("ferry_sink_lag_seconds", &[("sink", "bus")]);
    assert!(lag_secs > 1.0, "lag in seconds grows: {lag_secs}");
    let status = http_get(w.central_ports.admin, "/status").unwrap().1;
    assert!(status.contains("bus") && status.contains(" NO "), "ferry status shows the sink down:\n{status}");
    eprintln!(
        "outage: lag {lag} records, {lag_secs:.1}s; RSS before {} MiB, max during {} MiB",
        rss_before >> 20,
        rss_max >> 20
    );
    assert!(
        rss_max < rss_before + (48 << 20),
        "memory stays flat while the broker is down: {} MiB before, {} MiB max",
        rss_before >> 20,
        rss_max >> 20
    );
    rabbit.restart();
    w.wait_caught_up("bus", Duration::from_secs(180));
    c.wait_metric("ferry_sink_lag_records", &[("sink", "bus")], Duration::from_secs(30), |v| v == 0.0);
    // pika reads a few thousand messages a second under the suite's load.
    let msgs = rabbit.consume("all", sent.len(), Duration::from_secs(2), Duration::from_secs(240));
    check_delivery(&msgs, &expected(&sent));
}

/// A record larger than the broker takes goes to the dead-letter file,
/// counted, and delivery goes on. RabbitMQ's limit is the broker's own
/// (ferry is not told: it finds the record by itself); Kafka's is
/// `max_message_bytes`, enforced by librdkafka before the broker.
fn oversized(kafka: bool) {
    let name = if kafka { "sink-big-kafka" } else { "sink-big-rmq" };
    let dir = TestDir::new(name);
    let (rabbit, broker, sink) = if kafka {
        let k = Kafka::start(&dir.path);
        for s in STREAMS {
            k.create_topic(&format!("logs.{s}"), 1);
        }
        let s = kafka_sink(&k, "max_message_bytes = \"100KiB\"");
        (None, Some(k), s)
    } else {
        let r = Rabbit::start(&dir.path, 100_000);
        r.declare_queue("logs", "all");
        let s = rabbit_sink(&r, "");
        (Some(r), None, s)
    };
    let w = World::start(name, &sink, "");
    // Listener limit above the broker's: the record is archived whole.
    let big = format!("<14>ferry sinktest big edge1 live {}", "x".repeat(150_000));
    let (_, _, ports, _) = &w.edges[0];
    let mut sent = w.send(2_000, "small1");
    let input = format!("{big}\n");
    ferry_send(&["--to", &format!("127.0.0.1:{}", ports.tcp)], input.as_bytes());
    sent.extend(w.send(2_000, "small2"));
    let c = w.central();
    c.wait_metric(
        "ferry_sink_dead_letters_total",
        &[("sink", "bus"), ("reason", "too_large")],
        Duration::from_secs(120),
        |v| v == 1.0,
    );
    w.wait_delivered("bus", sent.len(), Duration::from_secs(120));
    let dl = std::fs::read_to_string(w.central_dir.join("data/state/sinks/bus.deadletter")).unwrap();
    assert_eq!(dl.lines().count(), 1, "one dead letter:\n{dl}");
    let e: serde_json::Value = serde_json::from_str(dl.lines().next().unwrap()).unwrap();
    assert_eq!(e["site"], "edge1");
    assert_eq!(e["stream"], "live");
    assert_eq!(e["reason"], "too_large");
    assert_eq!(e["record"].as_str().unwrap(), big, "the record itself is in the dead-letter file");
    let msgs = match (&rabbit, &broker) {
        (Some(r), _) => r.consume("all", sent.len(), Duration::from_secs(2), Duration::from_secs(60)),
        (_, Some(k)) => {
            k.consume(&["logs.live", "logs.audit"], sent.len(), Duration::from_secs(2), Duration::from_secs(60))
        }
        _ => unreachable!(),
    };
    check_delivery(&msgs, &expected(&sent));
}

#[test]
fn rabbitmq_record_too_large_is_dead_lettered_and_delivery_goes_on() {
    oversized(false);
}

#[test]
fn kafka_record_too_large_is_dead_lettered_and_delivery_goes_on() {
    oversized(true);
}

/// With `on_full = "reject"`, retention at central keeps every segment the
/// sink has not delivered: central fills to `max_bytes`, then refuses the
/// edges' bytes (they keep them) rather than delete anything; once the
/// broker takes what central holds, retention deletes it, central takes the
/// rest, and every record is delivered.
#[test]
fn retention_keeps_what_the_sink_has_not_delivered() {
    // No broker yet: the sink cannot deliver anything.
    let port = free_port();
    let sink = format!(
        "[[sink]]\nname = \"bus\"\nkind = \"rabbitmq\"\nsites = [\"edge1\", \"edge2\"]\nurl = \"amqp://guest:guest@127.0.0.1:{port}/%2f\"\n\
         backoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n"
    );
    let store = "[store.retention]\nmax_bytes = \"1MiB\"\non_full = \"reject\"\ncheck_interval = \"200ms\"\n";
    let w = World::start("sink-retention", &sink, store);
    let sent = w.send_padded(20_000, "r", 100);
    let c = w.central();
    // Full: central takes what it began and refuses new segments (the
    // edges keep them); nothing undelivered is deleted.
    c.wait_metric("ferry_store_full", &[], Duration::from_secs(120), |v| v == 1.0);
    // Not a synchronisation: the window (ten retention passes at
    // check_interval = 200ms) in which a deletion must not happen.
    std::thread::sleep(Duration::from_secs(2));
    let mirrored: Vec<_> =
        ["edge1", "edge2"].iter().flat_map(|s| util::link::segment_files(&w.central_dir.join("data"), s)).collect();
    let sealed = mirrored.iter().filter(|r| util::link::is_sealed(&w.central_dir.join("data"), r)).count();
    assert!(sealed >= 1, "sealed segments mirrored (retention may only delete those): {mirrored:?}");
    assert_eq!(c.metric("ferry_retention_deleted_segments_total", &[]), 0.0, "nothing deleted while undelivered");
    assert_eq!(c.metric("ferry_store_full", &[]), 1.0, "over max_bytes with undelivered data: full (reject)");
    // The broker appears: everything is delivered, then retention may delete.
    let dir2 = TestDir::new("sink-retention-broker");
    let rabbit = Rabbit::start_on(&dir2.path, 128 << 20, port);
    rabbit.declare_queue("logs", "all");
    w.wait_delivered("bus", sent.len(), Duration::from_secs(180));
    c.wait_metric("ferry_retention_deleted_segments_total", &[], Duration::from_secs(60), |v| v > 0.0);
    let msgs = rabbit.consume("all", sent.len(), Duration::from_secs(2), Duration::from_secs(60));
    check_delivery(&msgs, &expected(&sent));
}

/// With `live_share`, a sink that is behind gives part of its pace to each
/// origin's newest segment: fresh records arrive while the backlog drains.
/// Without it (the default) an origin's records arrive in strict order.
#[test]
fn live_share_sends_fresh_records_while_a_backlog_drains() {
    let port = free_port();
    let sink = format!(
        "[[sink]]\nname = \"bus\"\nkind = \"rabbitmq\"\nsites = [\"edge1\", \"edge2\"]\nurl = \"amqp://guest:guest@127.0.0.1:{port}/%2f\"\n\
         exchange = \"logs\"\nbackoff_min = \"50ms\"\nbackoff_max = \"300ms\"\nlive_share = 0.5\nmax_in_flight = 2000\n"
    );
    let w = World::start("sink-live", &sink, "");
    // A backlog of several sealed segments per stream while there is no broker.
    let mut sent = w.send_padded(15_000, "old", 200);
    for (_, _, ports, _) in &w.edges {
        let t = Instant::now();
        while metric_value(&http_get(ports.admin, "/metrics").unwrap().1, "ferry_uplink_lag_bytes", &[]) > 0.0 {
            assert!(t.elapsed() < Duration::from_secs(120), "edge did not deliver to central");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let dir = TestDir::new("sink-live-broker");
    let rabbit = Rabbit::start_on(&dir.path, 128 << 20, port);
    rabbit.declare_queue("logs", "all");
    // Fresh records while the sink drains the backlog.
    let t = Instant::now();
    let mut round = 0;
    while w.central().metric("ferry_sink_lag_records", &[]) > 0.0 || round == 0 {
        sent.extend(w.send(200, &format!("new{round}")));
        round += 1;
        assert!(t.elapsed() < Duration::from_secs(180), "backlog not drained");
        std::thread::sleep(Duration::from_millis(300));
    }
    w.wait_delivered("bus", sent.len(), Duration::from_secs(120));
    let msgs = rabbit.consume("all", sent.len(), Duration::from_secs(2), Duration::from_secs(240));
    check_delivery(&msgs, &expected(&sent));
    let last_old = msgs.iter().rposition(|m| m.value.contains(" old ")).unwrap();
    let first_new = msgs.iter().position(|m| m.value.contains(" new0 ")).unwrap();
    eprintln!("live_share: first fresh record at {first_new}, last backlog record at {last_old} of {}", msgs.len());
    assert!(first_new < last_old, "fresh records arrived before the backlog was drained");
}

/// A Kafka topic that does not exist is named (log, `ferry status`,
/// `ferry_sink_missing_topic`) and counted once, not at every retry; once
/// it is created, delivery goes on and the sink says so.
#[test]
fn kafka_topic_missing_is_named_once_and_delivery_follows_its_creation() {
    let dir = TestDir::new("sink-topic");
    let kafka = Kafka::start(&dir.path);
    // librdkafka gives a missing topic 30 s by default before it says so.
    let opts =
        "options = { \"topic.metadata.propagation.max.ms\" = \"1000\", \"allow.auto.create.topics\" = \"false\" }";
    let w = World::start("sink-topic", &kafka_sink(&kafka, opts).replace("logs.{stream}", "missing.{stream}"), "");
    let sent = w.send(1_000, "t");
    let c = w.central();
    let gauge = |t: &str| c.metric("ferry_sink_missing_topic", &[("sink", "bus"), ("topic", t)]);
    c.wait_metric(
        "ferry_sink_missing_topic",
        &[("sink", "bus"), ("topic", "missing.live")],
        Duration::from_secs(60),
        |v| v == 1.0,
    );
    let status = http_get(w.central_ports.admin, "/status").unwrap().1;
    assert!(status.contains("topic missing.live does not exist"), "ferry status names the topic:\n{status}");
    // Retries go on (backoff_max 1 s here); the count stays one per topic.
    std::thread::sleep(Duration::from_secs(8));
    let counted = c.metric("ferry_sink_errors_total", &[("sink", "bus"), ("reason", "unknown_topic")]);
    let missing = ["missing.live", "missing.audit"].iter().filter(|t| gauge(t) == 1.0).count();
    assert!(
        (1.0..=2.0).contains(&counted) && counted as usize == missing,
        "counted once per topic: {counted} for {missing}"
    );
    let log = c.log_text();
    assert_eq!(log.matches("topic \"missing.live\" does not exist").count(), 1, "the log names the topic once:\n{log}");
    for s in STREAMS {
        kafka.create_topic(&format!("missing.{s}"), 1);
    }
    w.wait_caught_up("bus", Duration::from_secs(120));
    assert_eq!(gauge("missing.live") + gauge("missing.audit"), 0.0, "the topics exist now");
    let msgs =
        kafka.consume(&["missing.live", "missing.audit"], sent.len(), Duration::from_secs(2), Duration::from_secs(60));
    check_delivery(&msgs, &expected(&sent));
}
