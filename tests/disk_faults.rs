//! Injected disk faults (`FERRY_FAULTS`, through `store::fs`) in real nodes
//! driven by real senders: every fault (write EIO, short write, fsync EIO,
//! create failure, rename failure, EROFS) against each acknowledged path
//! into the archive (rsyslog over RELP, curl over HTTP, an uplink into a
//! central receiver). In every case: no acknowledged record lost, none
//! archived twice because of a retry, `ferry verify` clean (no hole, no
//! torn frame, seals match), and the fault really fired (counted).

mod util;

use std::time::{Duration, Instant};

use util::link::{assert_byte_identical, pair, wait_mirrored, Pki, Via};
use util::rsyslog::Rsyslog;
use util::*;

/// Faults on the archive's files, counted from the node's start.
const WRITE_EIO: &str = "write~archive/:eio@4x3";
const SHORT_WRITE: &str = "write~archive/:short@3x2";
const FSYNC_EIO: &str = "fsync~archive/:eio@4x2";
const CREATE_FAILS: &str = "create~archive/:eio@2x3";
const RENAME_FAILS: &str = "rename~seals/:eio@1x3";
const READ_ONLY: &str = "any~archive/:erofs@8x30";

const STORE: &str = "commit_bytes = \"64KiB\"\nsegment_max_bytes = \"256KiB\"";

fn line(tag: &str, i: usize) -> String {
    format!("{tag}-{i:06} {}", noise(i as u64 + 7, 80))
}

fn fault_fired(node: &Node) {
    let n = node.metric("ferry_disk_errors_total", &[]) + node.metric("ferry_mirror_errors_total", &[]);
    assert!(n > 0.0, "the injected fault fired and was counted:\n{}", node.log_text());
    assert!(node.log_text().contains("FERRY_FAULTS is set"), "the node says faults are injected");
}

fn relp(spec: &str) {
    let dir = TestDir::new("fault-relp");
    let relp = free_port();
    let mut node = start_node(&dir, STORE, &listener("relp", "relp", "tcp", relp), &[("FERRY_FAULTS", spec)]);
    let input = free_port();
    let _rs = Rsyslog::shipped_relp(&dir, relp, input);
    const N: usize = 20_000;
    let text: String = (0..N).map(|i| format!("<13>Nov 30 10:00:00 h app: {}\n", line("relp", i))).collect();
    ferry_send(&["--to", &format!("127.0.0.1:{input}"), "--rate", "20000"], text.as_bytes());
    wait_each_once(&node.data, "relp-", N, Duration::from_secs(90));
    fault_fired(&node);
    node.stop();
    assert_verify_ok(&node.data);
}

fn http(spec: &str) {
    let dir = TestDir::new("fault-http");
    let http = free_port();
    let mut node = start_node(&dir, STORE, &listener("http", "http", "tcp", http), &[("FERRY_FAULTS", spec)]);
    const BATCHES: usize = 40;
    const PER: usize = 250;
    let mut refused = 0;
    for b in 0..BATCHES {
        let body = dir.join("body.txt");
        std::fs::write(&body, (0..PER).map(|i| line(&format!("http{b:03}"), i) + "\n").collect::<String>()).unwrap();
        let t = Instant::now();
        loop {
            let status = post_status(http, &body);
            if status == 200 {
                break;
            }
            assert!([503, 507].contains(&status), "batch {b}: unexpected status {status}");
            refused += 1;
            assert!(t.elapsed() < Duration::from_secs(30), "batch {b} never accepted");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    eprintln!("{spec}: {refused} refusals retried");
    wait_each_once(&node.data, "http", BATCHES * PER, Duration::from_secs(5));
    fault_fired(&node);
    node.stop();
    assert_verify_ok(&node.data);
}

fn receiver(spec: &str) {
    let pki_dir = TestDir::new("pki");
    let pki = Pki::new(&pki_dir, "pki");
    let port = free_port();
    let p = pair("fault-link", &pki, Via::Tls, port, port, STORE, "");
    let mut central = Node::start_with_env(
        &p.central_dir,
        &p.central_cfg,
        p.central_ports.admin,
        &[("FERRY_FAULTS", &spec.replace("seals/", "seals/edge1"))],
    );
    let mut edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    const N: usize = 20_000;
    let text: String = (0..N).map(|i| format!("<13>Nov 30 10:00:00 h app: {}\n", line("link", i))).collect();
    ferry_send(&["--to", &format!("127.0.0.1:{}", p.edge_ports.tcp), "--rate", "20000"], text.as_bytes());
    edge.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(30), |v| {
        v >= N as f64
    });
    edge.stop(); // seals the last segment
    let edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    wait_mirrored(&edge.data, &central.data, Duration::from_secs(60));
    assert_byte_identical(&edge.data, &central.data);
    wait_each_once(&central.data, "link-", N, Duration::from_secs(5));
    fault_fired(&central);
    central.stop();
    assert_verify_ok(&central.data);
    drop(edge);
}

macro_rules! fault_tests {
    ($($name:ident: $spec:ident;)*) => {
        mod relp_acks_only_what_is_durable {
            $(#[test] fn $name() { super::relp(super::$spec) })*
        }
        mod http_answers_200_only_for_what_is_durable {
            $(#[test] fn $name() { super::http(super::$spec) })*
        }
        mod the_mirror_stays_byte_identical {
            $(#[test] fn $name() { super::receiver(super::$spec) })*
        }
    };
}

fault_tests! {
    write_eio: WRITE_EIO;
    short_write: SHORT_WRITE;
    fsync_eio: FSYNC_EIO;
    create_fails: CREATE_FAILS;
    rename_fails: RENAME_FAILS;
    read_only_filesystem: READ_ONLY;
}
