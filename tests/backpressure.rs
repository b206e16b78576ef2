//! The backlog between the sockets and the disk is bounded: when the commit
//! thread cannot keep up, a stream listener stops reading and the sender is
//! slowed by TCP (its records wait in socket buffers), instead of ferry
//! reading ahead into memory that a crash would lose.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::*;

/// Every line is exactly this long, LF included.
const LINE: usize = 200;

#[test]
fn records_beyond_the_bounded_backlog_wait_in_the_senders_socket() {
    let dir = TestDir::new("backpressure");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    // zstd level 19 on noise makes the commit thread the bottleneck (a few
    // MB/s), as a slow disk would; the budget is commit_bytes = 1 MiB.
    let store = "zstd_level = 19\ncommit_bytes = \"1MiB\"\nfsync = \"always\"\ncompress_threads = 2";
    let cfg = node_config(&dir, &ports, store, "", "");
    let mut node = Node::start(&dir, &cfg, ports.admin);

    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (written, stop) = (written.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", ports.tcp)).unwrap();
            let mut chunk = Vec::with_capacity(1 << 20);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                chunk.clear();
                while chunk.len() + LINE <= 1 << 20 {
                    let head = format!("<13>bp-{n:012} ");
                    chunk.extend_from_slice(head.as_bytes());
                    chunk.extend_from_slice(&noise(n, LINE - 1 - head.len()).as_bytes()[..LINE - 1 - head.len()]);
                    chunk.push(b'\n');
                    n += 1;
                }
                if s.write_all(&chunk).is_err() {
                    break;
                }
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        })
    };

    // Commits: 1 MiB pending or being compressed, 1 MiB queued, plus what the
    // connection's batcher holds (one 64 KiB batch) and a batch in hand.
    let bound = (2 << 20) + (512 << 10);
    let started = Instant::now();
    let mut worst = 0f64;
    while started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        // Both counters from one scrape: two scrapes apart, under a loaded
        // machine, would count a commit cycle's records in one and not the other.
        let text = node.metrics();
        let committed = metric_value(&text, "ferry_committed_records_total", &[("stream", "live")]);
        let received = metric_value(&text, "ferry_received_records_total", &[("listener", "tcp")]);
        let held = (received - committed) * LINE as f64;
        worst = worst.max(held);
        assert!(held <= bound as f64, "ferry holds {held} bytes read but not committed (bound {bound})");
    }
    let received = node.metric("ferry_received_records_total", &[("listener", "tcp")]) * LINE as f64;
    let committed = node.metric("ferry_committed_records_total", &[("stream", "live")]) * LINE as f64;
    let sent = written.load(Ordering::Relaxed) as f64;
    eprintln!(
        "in 5 s: sender wrote {:.1} MB, ferry read {:.1} MB, committed {:.1} MB; at most {:.2} MB held in ferry",
        sent / 1e6,
        received / 1e6,
        committed / 1e6,
        worst / 1e6
    );
    assert!(committed > 0.0, "the node commits");
    // The sender is slowed, not buffered: beyond what ferry read it only got
    // as far as the kernel's socket buffers (receive up to tcp_rmem's 32 MiB
    // maximum here, send up to tcp_wmem's 4 MiB, and one write in hand).
    let kernel = ((32 + 4 + 1) << 20) as f64;
    assert!(sent - received <= kernel, "the sender wrote {sent} bytes, ferry read {received}");
    assert!(sent < 200e6, "a sender unslowed writes hundreds of MB in 5 s on loopback; this one wrote {sent}");

    // Once the sender stops, everything it wrote is read and committed.
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let total = written.load(Ordering::Relaxed) as f64 / LINE as f64;
    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(90), |v| v >= total);
    node.stop();
}
