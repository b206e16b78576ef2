//! Syslog over TLS (RFC 5425) with the deployment CA: a real rsyslog and a
//! real syslog-ng, each with its shipped collector config, deliver every
//! message; clients without a good certificate are refused with a clear log
//! line and deliver nothing.

mod util;

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::link::Pki;
use util::rsyslog::{wait_port, Rsyslog};
use util::syslog_ng::SyslogNg;
use util::*;

const N: usize = 20_000;

/// A node whose `tls` (client certificate required) and `tls-optional`
/// listeners use the "central" certificate of `pki` (SANs 127.0.0.1 and
/// localhost), with `pki`'s CA as the only trusted CA.
fn tls_node(dir: &TestDir, pki: &Pki) -> (Node, u16, u16) {
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let (req, opt) = (free_port(), free_port());
    let extra = format!(
        r#"
[[listener]]
name = "tls"
kind = "syslog"
transport = "tls"
listen = "127.0.0.1:{req}"
stream = "live"

[[listener]]
name = "tls-optional"
kind = "syslog"
transport = "tls"
listen = "127.0.0.1:{opt}"
stream = "live"
client_cert = "optional"

{tls}"#,
        tls = pki.tls_section("central")
    );
    let node = Node::start(dir, &node_config(dir, &ports, "", "", &extra), ports.admin);
    (node, req, opt)
}

/// The shipped collector config `name` with its placeholders filled in, the
/// client certificate being `pki`'s "edge" one.
fn shipped(name: &str, pki: &Pki, host: &str, port: u16, queue: &Path) -> String {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/collectors").join(name)).unwrap();
    let edge = pki.dir.join("edge");
    text.replace("@RELAY_HOST@", host)
        .replace("@RELAY_PORT@", &port.to_string())
        .replace("@RELAY_NAME@", "localhost")
        .replace("@CA@", &edge.join("ca.pem").display().to_string())
        .replace("@CERT@", &edge.join("node.pem").display().to_string())
        .replace("@KEY@", &edge.join("node.key").display().to_string())
        .replace("@QUEUE_DIR@", &queue.display().to_string())
}

fn messages(tag: &str) -> String {
    let mut input = String::new();
    for i in 0..N {
        input.push_str(&format!("<13>Nov 23 10:00:00 web-01 app[7]: {tag}-{i:07} user=alice action=login ok\n"));
    }
    input
}

/// Every line of the archive carries exactly one of the N ids, each once.
fn assert_each_once(data: &Path, tag: &str) {
    let lines = archive_lines(data);
    let ids: HashSet<&str> = lines
        .iter()
        .map(|l| {
            l.split(' ').find(|w| w.starts_with(&format!("{tag}-"))).unwrap_or_else(|| panic!("unexpected line {l:?}"))
        })
        .collect();
    assert_eq!(lines.len(), N, "one archive line per message");
    assert_eq!(ids.len(), N, "every message, once");
    assert!(!lines[0].ends_with("\\n"), "the sender's trailing LF is framing, not message: {:?}", lines[0]);
}

#[test]
fn rsyslog_over_tls_with_the_shipped_config_delivers_every_message() {
    assert!(
        Path::new("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so").exists(),
        "rsyslog-gnutls is not installed: run the README's test command"
    );
    let dir = TestDir::new("rsyslog-tls");
    let pki = Pki::new(&dir, "pki");
    let (mut node, port, _) = tls_node(&dir, &pki);
    let queue = dir.join("rsyslog-queue");
    std::fs::create_dir_all(&queue).unwrap();
    let input_port = free_port();
    let conf = format!(
        "global(workDirectory=\"{}\")\nmodule(load=\"imtcp\")\ninput(type=\"imtcp\" port=\"{input_port}\" address=\"127.0.0.1\")\n{}",
        dir.join("rsyslog-work").display(),
        shipped("rsyslog-omfwd-tls.conf", &pki, "127.0.0.1", port, &queue)
    );
    let _rs = Rsyslog::start(&dir, &conf);
    wait_port(input_port);
    ferry_send(&["--to", &format!("127.0.0.1:{input_port}")], messages("rstls").as_bytes());
    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(60), |v| {
        v >= N as f64
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.metric("ferry_connections_refused_total", &[("reason", "tls_handshake")]), 0.0);
    node.stop();
    assert_verify_ok(&node.data);
    assert_each_once(&node.data, "rstls");
}

#[test]
fn syslog_ng_over_tls_with_the_shipped_config_delivers_every_message() {
    let dir = TestDir::new("syslog-ng-tls");
    let pki = Pki::new(&dir, "pki");
    let (mut node, port, _) = tls_node(&dir, &pki);
    let queue = dir.join("syslog-ng-queue");
    std::fs::create_dir_all(&queue).unwrap();
    let input_port = free_port();
    // The shipped file reads from `s_src` (Debian's local source); here it is a TCP input.
    let conf = format!(
        "@version: 3.38\nsource s_src {{ network(ip(\"127.0.0.1\") port({input_port}) transport(\"tcp\") log-iw-size(100000)); }};\n{}",
        shipped("syslog-ng.conf", &pki, "localhost", port, &queue)
    );
    let sng = SyslogNg::start(&dir, &conf);
    wait_port(input_port);
    ferry_send(&["--to", &format!("127.0.0.1:{input_port}")], messages("sngtls").as_bytes());
    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(60), |v| {
        v >= N as f64
    });
    std::thread::sleep(Duration::from_millis(500));
    node.stop();
    drop(sng);
    assert_verify_ok(&node.data);
    assert_each_once(&node.data, "sngtls");
}

/// `openssl s_client` as a TLS syslog client: sends `line` and waits for
/// the server to close or a short while. With `who = None` no certificate.
fn s_client(port: u16, ca: &Path, who: Option<&Path>, line: &str) {
    let openssl = require_tool("openssl");
    let mut cmd = Command::new(openssl);
    cmd.args(["s_client", "-quiet", "-no_ign_eof", "-connect", &format!("127.0.0.1:{port}"), "-CAfile"]).arg(ca);
    if let Some(d) = who {
        cmd.arg("-cert").arg(d.join("node.pem")).arg("-key").arg(d.join("node.key"));
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(format!("{line}\n").as_bytes()).unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    // Refusal log lines are rate-limited to one a second per listener.
    std::thread::sleep(Duration::from_millis(1100));
}

#[test]
fn clients_without_a_certificate_from_the_deployment_ca_are_refused() {
    let dir = TestDir::new("tls-refused");
    let pki = Pki::new(&dir, "pki");
    let other = Pki::new(&dir, "other");
    let (mut node, required, optional) = tls_node(&dir, &pki);
    let ca = pki.dir.join("ca/ca.pem");

    // A certificate from another CA: refused on both listeners.
    s_client(required, &ca, Some(&other.dir.join("edge")), "<13>Nov 23 10:00:00 h app: from-other-ca");
    s_client(optional, &ca, Some(&other.dir.join("edge")), "<13>Nov 23 10:00:00 h app: from-other-ca-opt");
    // No certificate: refused where one is required, accepted where optional.
    s_client(required, &ca, None, "<13>Nov 23 10:00:00 h app: no-cert-required");
    s_client(optional, &ca, None, "<13>Nov 23 10:00:00 h app: no-cert-optional");
    // The deployment CA's certificate: accepted.
    s_client(required, &ca, Some(&pki.dir.join("edge")), "<13>Nov 23 10:00:00 h app: good-cert");

    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(20), |v| v >= 2.0);
    let refused = node.wait_metric(
        "ferry_connections_refused_total",
        &[("reason", "tls_handshake")],
        Duration::from_secs(20),
        |v| v >= 3.0,
    );
    assert_eq!(refused, 3.0, "other CA twice, no certificate once");
    let status =
        Command::new(FERRY).args(["status", "--admin", &format!("127.0.0.1:{}", node.admin)]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.lines().any(|l| l.trim_start().starts_with("tls ") && l.contains("connections_refused:tls_handshake=2")),
        "ferry status shows the refusals per listener:\n{status}"
    );
    // Each refusal is logged (one line a second at most per listener: the
    // clients above were spaced for it); wait for the third, bounded.
    let t = Instant::now();
    while node.log_text().lines().filter(|l| l.contains("TLS connection refused")).count() < 3 {
        assert!(t.elapsed() < Duration::from_secs(10), "refusals not logged:\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    node.stop();
    let log = node.log_text();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("TLS connection refused")).collect();
    assert_eq!(refusals.len(), 3, "one log line per refusal:\n{log}");
    for l in &refusals {
        assert!(l.contains("peer=127.0.0.1:"), "names the peer: {l}");
    }
    assert!(
        refusals.iter().filter(|l| l.contains("not issued by the deployment CA")).count() == 2,
        "says the certificate is from an unknown CA:\n{log}"
    );
    assert!(
        refusals.iter().any(|l| l.contains("listener=tls ") && l.contains("sent no certificate")),
        "says the client sent no certificate:\n{log}"
    );
    let lines = archive_lines(&node.data);
    let got: HashSet<&str> = lines.iter().filter_map(|l| l.rsplit(' ').next()).collect();
    assert_eq!(got, HashSet::from(["good-cert", "no-cert-optional"]), "only the accepted clients' records: {lines:?}");
}

/// `ferry send --transport tls`, the operator's own TLS client: with a
/// deployment certificate every line arrives; without one, where a
/// certificate is required, it fails loudly instead of reporting lines the
/// relay threw away.
#[test]
fn ferry_send_over_tls_delivers_and_reports_a_refusal() {
    let dir = TestDir::new("send-tls");
    let pki = Pki::new(&dir, "pki");
    let (mut node, required, _) = tls_node(&dir, &pki);
    let edge = pki.dir.join("edge");
    let send = |tag: &str, cert: bool| {
        let mut c = Command::new(FERRY);
        c.args(["send", "--transport", "tls", "--framing", "octet", "--to", &format!("127.0.0.1:{required}"), "--ca"])
            .arg(edge.join("ca.pem"));
        if cert {
            c.arg("--cert").arg(edge.join("node.pem")).arg("--key").arg(edge.join("node.key"));
        }
        let mut child = c.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let lines: String = (0..1000).map(|i| format!("<13>Nov 26 10:00:00 h app: {tag}-{i:04}\n")).collect();
        child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = send("sent-with-cert", true);
    assert!(ok, "{err}");
    let (ok, err) = send("sent-without-cert", false);
    assert!(!ok, "a refused session is an error: {err}");
    assert!(err.contains("TLS"), "says it was TLS: {err}");
    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(20), |v| v >= 1000.0);
    node.stop();
    let lines = archive_lines(&node.data);
    assert_eq!(lines.iter().filter(|l| l.contains("sent-with-cert-")).count(), 1000);
    assert!(!lines.iter().any(|l| l.contains("sent-without-cert")));
    assert!(!node.log_text().contains("close_notify"), "ferry send ends its sessions cleanly:\n{}", node.log_text());
}
