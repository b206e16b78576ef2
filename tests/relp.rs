//! RELP with a real rsyslog and the shipped omrelp collector config:
//! acknowledged only after commit, so `kill -9` of ferry loses nothing.

mod util;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use util::rsyslog::Rsyslog;
use util::*;

fn rsyslog_with_shipped_relp_config(dir: &TestDir, relay_port: u16, input_port: u16) -> Rsyslog {
    Rsyslog::shipped_relp(dir, relay_port, input_port)
}

/// A RELP listener over TCP on `port` into stream `live`, with `keys` added.
fn relp_listener(port: u16, keys: &str) -> String {
    format!("\n[[listener]]\nname = \"relp\"\nkind = \"relp\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{port}\"\nstream = \"live\"\n{keys}")
}

fn ids(data: &std::path::Path) -> (usize, HashSet<String>) {
    // Also read while the node runs: a frame being written is read again.
    let text = zstdcat_running(data);
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let ids: HashSet<String> =
        lines.iter().filter_map(|l| l.split(' ').find(|w| w.starts_with("relp-")).map(str::to_owned)).collect();
    (lines.len(), ids)
}

#[test]
fn rsyslog_omrelp_loses_nothing_when_ferry_is_killed_four_times() {
    let dir = TestDir::new("relp");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let relp = free_port();
    let extra = relp_listener(relp, "");
    let cfg = node_config(&dir, &ports, "", "", &extra);
    let mut node = Node::start(&dir, &cfg, ports.admin);
    let input = free_port();
    let _rs = rsyslog_with_shipped_relp_config(&dir, relp, input);

    const N: usize = 200_000;
    let mut msgs = String::with_capacity(N * 90);
    for i in 0..N {
        msgs.push_str(&format!("<13>Nov 23 10:00:00 app-host app[9]: relp-{i:07} order=42 status=paid amount=12.50\n"));
    }
    let feeder = {
        let msgs = msgs.into_bytes();
        std::thread::spawn(move || ferry_send(&["--to", &format!("127.0.0.1:{input}"), "--rate", "40000"], &msgs))
    };
    // Kill points, in records each node commits (its counter starts at 0):
    // early in the first segment, then three times mid-stream (140,000 of
    // the 200,000 in all). A message rsyslog had an answer for is never
    // sent again: one lost by ferry would be missing.
    for at in [5_000.0, 35_000.0, 50_000.0, 50_000.0] {
        node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(60), |v| v >= at);
        node.kill9();
        std::thread::sleep(Duration::from_millis(500));
        node = Node::start(&dir, &cfg, ports.admin);
    }
    feeder.join().unwrap();
    let t = Instant::now();
    loop {
        let (lines, ids) = ids(&node.data);
        if ids.len() == N {
            eprintln!(
                "all {N} messages archived; {} duplicates (records whose RELP ack was lost in a kill -9)",
                lines - N
            );
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "only {} of {N} messages archived", ids.len());
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(node.metric("ferry_received_records_total", &[("listener", "relp")]) > 0.0);
    node.stop();
    assert_verify_ok(&node.data);
}

/// RELP over TLS (`tls="on"` in omrelp, librelp's GnuTLS), mutually
/// authenticated with the deployment CA: every message arrives once.
#[test]
fn rsyslog_omrelp_over_tls_delivers_every_message() {
    let dir = TestDir::new("relp-tls");
    let pki = util::link::Pki::new(&dir, "pki");
    let relp = free_port();
    let extra = listener("relp-tls", "relp", "tls", relp) + "\n" + &pki.tls_section("central");
    let mut node = start_node(&dir, "", &extra, &[]);
    let input = free_port();
    let edge = pki.dir.join("edge");
    let _rs = Rsyslog::omrelp_tls(&dir, relp, input, &edge.join("ca.pem"), &edge);
    const N: usize = 20_000;
    let mut msgs = String::new();
    for i in 0..N {
        msgs.push_str(&format!("<13>Nov 23 10:00:00 app-host app[9]: relp-{i:07} over tls\n"));
    }
    ferry_send(&["--to", &format!("127.0.0.1:{input}")], msgs.as_bytes());
    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(60), |v| {
        v >= N as f64
    });
    std::thread::sleep(Duration::from_millis(500));
    node.stop();
    assert_verify_ok(&node.data);
    let (lines, ids) = ids(&node.data);
    assert_eq!((lines, ids.len()), (N, N), "every message once");
}

/// An untrusted RELP source over its rate is slowed, not dropped: RELP
/// acknowledges every record, so the limit is enforced by holding the
/// source's window, and every message arrives.
#[test]
fn an_untrusted_relp_source_over_its_rate_is_slowed_and_loses_nothing() {
    let dir = TestDir::new("relp-limited");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let relp = free_port();
    let extra = relp_listener(relp, "trust = \"untrusted\"\nsource_records_per_sec = 200\n");
    let mut node = Node::start(&dir, &node_config(&dir, &ports, "", "", &extra), ports.admin);
    let input = free_port();
    let _rs = rsyslog_with_shipped_relp_config(&dir, relp, input);
    const N: usize = 1_000;
    let msgs: String = (0..N).map(|i| format!("<13>Nov 23 10:00:00 app-host app[9]: relp-{i:07} limited\n")).collect();
    let t = Instant::now();
    ferry_send(&["--to", &format!("127.0.0.1:{input}")], msgs.as_bytes());
    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(30), |v| {
        v >= N as f64
    });
    let took = t.elapsed();
    // 200/s with one second's burst: (1000 - 200) / 200 = 4 s at least.
    assert!(took >= Duration::from_millis(3500), "held to its rate: {took:?}");
    assert_eq!(node.metric("ferry_dropped_records_total", &[("listener", "relp")]), 0.0, "nothing dropped");
    node.stop();
    let (lines, ids) = ids(&node.data);
    assert_eq!((lines, ids.len()), (N, N), "every message once");
}

/// A RELP session ended by a stop (SIGTERM here; a reload that replaces the
/// listener ends it the same way) answers what it committed, and those
/// answers reach a client that reads them slowly: every record in the
/// archive was answered, so a client that sends again what had no answer
/// doubles nothing. (Closing a socket with unread input makes the kernel
/// send a reset and throw away answers still queued for sending.)
#[test]
fn a_relp_session_ended_by_a_stop_delivers_every_answer_it_owes() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = TestDir::new("relp-answers");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let relp = free_port();
    let extra = relp_listener(relp, "");
    let mut node = Node::start(&dir, &node_config(&dir, &ports, "", "", &extra), ports.admin);

    let mut c = std::net::TcpStream::connect(("127.0.0.1", relp)).unwrap();
    let offer = "relp_version=0\nrelp_software=ferry-test\ncommands=syslog";
    c.write_all(format!("1 open {} {offer}\n", offer.len()).as_bytes()).unwrap();
    // Frames as fast as the socket takes them; nothing is read yet.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut w, stop) = (c.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            let mut txnr = 2u64;
            let mut buf = Vec::with_capacity(16 << 10);
            while !stop.load(Ordering::Relaxed) {
                buf.clear();
                for _ in 0..100 {
                    let msg = format!("<13>Nov 30 10:00:00 h app: answer-{txnr:09} x");
                    writeln!(buf, "{txnr} syslog {} {msg}", msg.len()).unwrap();
                    txnr += 1;
                }
                if w.write_all(&buf).is_err() {
                    break;
                }
            }
        })
    };
    // Ferry commits until its answers fill the client's window and its own
    // send buffer, then it waits; stop it there, and only then read.
    let mut last = 0.0;
    let waiting = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = node.metric("ferry_committed_records_total", &[]);
        if now > 10_000.0 && now == last {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "ferry never waited for the client to read its answers: {now} records committed after 60 s"
        );
        last = now;
    }
    let stopper = std::thread::spawn(move || {
        node.stop();
        node
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut answers = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded: a node that neither answers nor closes fails the test, not hangs it.
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    loop {
        match c.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answers.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("the stopping node neither answered nor closed the session within 60 s")
            }
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    drop(c);
    writer.join().unwrap();
    let node = stopper.join().unwrap();
    let answered: HashSet<String> = String::from_utf8_lossy(&answers)
        .lines()
        .filter(|l| l.contains(" rsp ") && l.ends_with("200 OK"))
        .filter_map(|l| l.split(' ').next()?.parse::<u64>().ok())
        .filter(|&t| t >= 2)
        .map(|t| format!("answer-{t:09}"))
        .collect();
    let lines = archive_lines(&node.data);
    let archived: HashSet<String> =
        lines.iter().filter_map(|l| l.split(' ').find(|w| w.starts_with("answer-")).map(str::to_owned)).collect();
    let unanswered = archived.difference(&answered).count();
    eprintln!(
        "{} records archived, {} answered, {unanswered} archived without an answer",
        archived.len(),
        answered.len()
    );
    assert!(answered.is_subset(&archived), "an answered record is archived");
    assert_eq!(unanswered, 0, "every archived record was answered (a resending client would double the rest)");
}

/// One RELP frame as ferry sends it: `txnr command datalen[ data]\n`.
fn read_frame(r: &mut impl std::io::BufRead) -> std::io::Result<(u64, String, Vec<u8>)> {
    use std::io::{Error, ErrorKind};
    let mut token = |stop: &[u8]| -> std::io::Result<(Vec<u8>, u8)> {
        let mut v = Vec::new();
        let mut b = [0u8; 1];
        loop {
            r.read_exact(&mut b)?;
            if stop.contains(&b[0]) {
                return Ok((v, b[0]));
            }
            v.push(b[0]);
            if v.len() > 32 {
                return Err(Error::new(ErrorKind::InvalidData, "RELP header too long"));
            }
        }
    };
    let bad = |what: &str| Error::new(ErrorKind::InvalidData, what.to_owned());
    let (txnr, _) = token(b" ")?;
    let (cmd, _) = token(b" ")?;
    let (len, end) = token(b" \n")?;
    let txnr = String::from_utf8_lossy(&txnr).parse().map_err(|_| bad("txnr"))?;
    let len: usize = String::from_utf8_lossy(&len).parse().map_err(|_| bad("datalen"))?;
    let mut data = vec![0u8; len];
    if end == b' ' {
        r.read_exact(&mut data)?;
        let mut lf = [0u8; 1];
        r.read_exact(&mut lf)?;
    }
    Ok((txnr, String::from_utf8_lossy(&cmd).into_owned(), data))
}

/// Acknowledged means durable over RELP, seen from the client: a RELP
/// client (omrelp's protocol: open, windows of `syslog` frames, one `rsp`
/// each) notes every message answered `200 OK`; the node is killed right
/// after the client has seen 2,000, 20,000 and 60,000 answers (three kill
/// points, each within milliseconds of an acknowledgement) and started
/// again. Every message the client had an answer for is in the archive.
#[test]
fn relp_messages_acknowledged_right_before_kill9_are_in_the_archive_after_restart() {
    use std::io::{BufReader, Write};
    let dir = TestDir::new("relp-ack-kill");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let relp = free_port();
    let cfg = node_config(&dir, &ports, "", "", &relp_listener(relp, ""));
    let mut node = Node::start(&dir, &cfg, ports.admin);
    const TOTAL: u64 = 100_000;
    const WINDOW: u64 = 200;
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let client = std::thread::spawn(move || {
        let t = Instant::now();
        let mut acked: Vec<u64> = Vec::new();
        let mut next_id = 0u64;
        while next_id < TOTAL {
            assert!(t.elapsed() < Duration::from_secs(180), "sending {TOTAL} messages took over 180 s");
            let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", relp)) else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut w = c.try_clone().unwrap();
            let mut r = BufReader::new(c);
            let offer = "relp_version=0\nrelp_software=ferry-test\ncommands=syslog";
            if w.write_all(format!("1 open {} {offer}\n", offer.len()).as_bytes()).is_err()
                || !matches!(read_frame(&mut r), Ok((1, ref cmd, _)) if cmd == "rsp")
            {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            // One session: windows until the connection breaks.
            let mut txnr = 2u64;
            'session: while next_id < TOTAL {
                let mut sent = std::collections::HashMap::new();
                let mut buf = Vec::new();
                for _ in 0..WINDOW.min(TOTAL - next_id) {
                    let msg = format!("<13>Dec  4 10:00:00 h app: relpkill-{next_id:07} x");
                    writeln!(buf, "{txnr} syslog {} {msg}", msg.len()).unwrap();
                    sent.insert(txnr, next_id);
                    txnr += 1;
                    // Unanswered messages are not sent again: a new number each.
                    next_id += 1;
                }
                if w.write_all(&buf).is_err() {
                    break 'session;
                }
                while !sent.is_empty() {
                    match read_frame(&mut r) {
                        Ok((n, cmd, data)) if cmd == "rsp" => {
                            if let Some(id) = sent.remove(&n) {
                                if data.starts_with(b"200") {
                                    acked.push(id);
                                    let _ = tx.send(acked.len());
                                }
                            }
                        }
                        Ok(_) => {} // serverclose
                        Err(_) => break 'session,
                    }
                }
            }
        }
        acked
    });
    kill_after_acks(&mut node, &dir, &cfg, &rx, &[2_000, 20_000, 60_000]);
    let acked = client.join().unwrap();
    node.stop();
    let text = String::from_utf8_lossy(&zstdcat(&dir.join("data"))).into_owned();
    let archived: HashSet<u64> = text
        .lines()
        .filter_map(|l| l.split("relpkill-").nth(1).and_then(|r| r.get(..7)).and_then(|n| n.parse().ok()))
        .collect();
    let lost: Vec<u64> = acked.iter().copied().filter(|id| !archived.contains(id)).take(10).collect();
    eprintln!("{} of {TOTAL} messages acknowledged through 3 kills; {} archived", acked.len(), archived.len());
    assert!(acked.len() >= 80_000, "too few acknowledged to mean anything: {}", acked.len());
    assert!(lost.is_empty(), "acknowledged messages missing after kill -9 (first ten): {lost:?}");
}
