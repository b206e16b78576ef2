//! A real rsyslog, started with its own config, forwards to ferry with
//! omfwd over TCP: every message arrives.

mod util;

use std::collections::HashSet;
use std::time::Duration;

use util::rsyslog::{wait_port, Rsyslog};
use util::*;

#[test]
fn rsyslog_omfwd_tcp_delivers_every_message() {
    let dir = TestDir::new("rsyslog");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let mut node = Node::start(&dir, &node_config(&dir, &ports, "", "", ""), ports.admin);
    let rs_in = free_port();
    let conf = format!(
        r#"
global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" port="{rs_in}" address="127.0.0.1")
*.* action(type="omfwd" target="127.0.0.1" port="{tcp}" protocol="tcp"
           tcp_framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format"
           queue.type="LinkedList" queue.size="200000" action.resumeRetryCount="-1")
"#,
        work = dir.join("rsyslog-work").display(),
        tcp = ports.tcp,
    );
    let _rs = Rsyslog::start(&dir, &conf);
    wait_port(rs_in);

    const N: usize = 20_000;
    let mut input = String::new();
    for i in 0..N {
        input.push_str(&format!("<13>Nov 23 10:00:00 web-01 app[7]: rsyslog-{i:07} user=alice action=login ok\n"));
    }
    ferry_send(&["--to", &format!("127.0.0.1:{rs_in}")], input.as_bytes());

    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(60), |v| {
        v >= N as f64
    });
    // Nothing more than was sent shows up either.
    std::thread::sleep(Duration::from_millis(500));
    node.stop();
    assert_verify_ok(&node.data);
    let lines = archive_lines(&node.data);
    assert_eq!(lines.len(), N, "exactly one archive line per message");
    let ids: HashSet<String> = lines
        .iter()
        .map(|l| {
            l.split(' ')
                .find(|w| w.starts_with("rsyslog-"))
                .unwrap_or_else(|| panic!("unexpected line {l:?}"))
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), N, "every message, once");
    assert!(lines[0].starts_with("<13>1 "), "forwarded in RFC 5424 as configured: {}", lines[0]);
}
