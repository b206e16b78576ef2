//! The link end to end: an edge and a central node on loopback, over TLS and
//! over QUIC. Every scenario runs on both transports.

mod util;

use std::collections::HashSet;
use std::time::Duration;

use util::link::*;
use util::*;

/// Run a scenario once per transport.
macro_rules! both_transports {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn tls() {
                $body(Via::Tls)
            }
            #[test]
            fn quic() {
                $body(Via::Quic)
            }
        }
    };
}

fn lines(tag: &str, from: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 120);
    for i in from..from + n {
        out.extend_from_slice(format!("<134>Nov 23 10:00:00 web-{:02} nginx[{}]: {tag}-{i:08} GET /api/items?id={} 200 {}\n", i % 40, 1000 + i % 7, i * 13 % 100_000, i % 9000).as_bytes());
    }
    out
}

/// The ids of archive lines, checked unique.
fn unique_ids(lines: &[String]) -> HashSet<String> {
    let mut ids = HashSet::new();
    for l in lines {
        let id = l.split(' ').nth(5).unwrap_or_default().to_owned();
        assert!(ids.insert(id.clone()), "duplicate line {id}");
    }
    ids
}

both_transports!(million_records_arrive_byte_identical, |via: Via| {
    let pki_dir = TestDir::new("pki");
    let pki = Pki::new(&pki_dir, "pki");
    let port = free_port();
    let p = pair("e2e", &pki, via, port, port, "commit_bytes = \"256KiB\"\nsegment_max_bytes = \"1MiB\"", "");
    let mut central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
    let mut edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    ferry_send(&["--to", &format!("127.0.0.1:{}", p.edge_ports.tcp)], &lines("e2e", 0, 1_000_000));
    edge.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(60), |v| v >= 1_000_000.0);
    wait_mirrored(&edge.data, &central.data, Duration::from_secs(60));
    assert_eq!(edge.metric("ferry_uplink_connected", &[("uplink", "central")]), 1.0);
    // Stopping the edge seals its open segments; the uplink delivers those seals before exiting.
    edge.stop();
    wait_mirrored(&edge.data, &central.data, Duration::from_secs(30));
    central.stop();
    assert_byte_identical(&edge.data, &central.data);
    assert_verify_ok(&central.data);
    let got = archive_lines(&central.data);
    assert_eq!(got.len(), 1_000_000);
    assert_eq!(unique_ids(&got).len(), 1_000_000);
});
