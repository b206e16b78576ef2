//! What a receiver refuses, each with a log line naming the peer and the
//! reason, a counter, and nothing written: certificates from another CA,
//! expired ones, no certificate, a site writing under another site, another
//! protocol version, malformed or oversized messages, invalid frames.

mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, BytesMut};
use ferry::link::proto::{Code, Msg, ALPN, VERSION};
use ferry::link::transport::{quic, tls, Link, Timing};
use ferry::pki::{self, TlsFiles, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use util::link::*;
use util::*;

fn timing() -> Timing {
    Timing {
        keepalive: Duration::from_secs(1),
        dead_after: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
    }
}

async fn dial(via: Via, files: &TlsFiles, addr: SocketAddr) -> std::io::Result<Link> {
    let live = ferry::pki::Live::new(ferry::pki::Material::load(files).map_err(std::io::Error::other)?);
    match via {
        Via::Tls => tls::Dialer::new(&live).map_err(std::io::Error::other)?.connect(addr, "127.0.0.1", &timing()).await,
        Via::Quic => quic::Dialer::new(&live, &timing(), false)?.connect(addr, "127.0.0.1", &timing()).await,
    }
}

/// A test client: a link and what has been read from it but not decoded yet.
struct Client {
    link: Link,
    buf: BytesMut,
}

async fn dial_client(via: Via, files: &TlsFiles, addr: SocketAddr) -> std::io::Result<Client> {
    Ok(Client { link: dial(via, files, addr).await?, buf: BytesMut::new() })
}

/// Send raw bytes, then read until one message arrives or the link ends.
async fn exchange(c: &mut Client, raw: &[u8]) -> Option<Msg> {
    let fut = async {
        let (link, buf) = (&mut c.link, &mut c.buf);
        link.io.write_all(raw).await.ok()?;
        link.io.flush().await.ok()?;
        loop {
            if let Ok(Some(m)) = Msg::decode(buf) {
                return Some(m);
            }
            match link.io.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await.ok().flatten()
}

fn enc(msgs: &[Msg]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for m in msgs {
        m.encode(&mut b);
    }
    b.to_vec()
}

fn hello(version: u16) -> Msg {
    Msg::Hello { version, node: "relay-1".into() }
}

const OWN: &str = "edge1/live/2026-11-23/live-2026-11-23T10-relay-1-00000001.log.zst";

fn files(pki: &Pki, who: &str) -> TlsFiles {
    let d = pki.dir.join(who);
    TlsFiles { ca: d.join("ca.pem"), cert: d.join("node.pem"), key: d.join("node.key"), crl: Vec::new() }
}

/// A client with no certificate at all (plain rustls, trusting the real CA).
async fn dial_without_cert(via: Via, ca: &std::path::Path, addr: SocketAddr) -> Option<Msg> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pki::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let hello = enc(&[hello(VERSION)]);
    let fut = async {
        match via {
            Via::Tls => {
                let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
                let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.ok()?;
                s.write_all(&hello).await.ok()?;
                s.flush().await.ok()?;
                let mut buf = BytesMut::new();
                match s.read_buf(&mut buf).await {
                    Ok(n) if n > 0 => Msg::decode(&mut buf).ok().flatten(),
                    _ => None,
                }
            }
            Via::Quic => {
                let qc = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap();
                let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
                let conn =
                    ep.connect_with(quinn::ClientConfig::new(Arc::new(qc)), addr, "127.0.0.1").ok()?.await.ok()?;
                let (mut send, mut recv) = conn.open_bi().await.ok()?;
                send.write_all(&hello).await.ok()?;
                let mut buf = vec![0u8; 64];
                match recv.read(&mut buf).await {
                    Ok(Some(n)) if n > 0 => Msg::decode(&mut BytesMut::from(&buf[..n])).ok().flatten(),
                    _ => None,
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await.ok().flatten()
}

fn wait_refused(central: &Node, reason: &str) {
    central.wait_metric("ferry_link_refused_total", &[("reason", reason)], Duration::from_secs(10), |v| v >= 1.0);
    let log = central.log_text();
    assert!(
        log.lines().any(|l| l.contains("link refused") && l.contains(reason) && l.contains("peer=127.0.0.1:")),
        "a log line names the peer and {reason}:\n{log}"
    );
}

fn refusals(via: Via) {
    let dir = TestDir::new("refusals");
    let pki = Pki::new(&dir, "pki");
    let rogue = Pki::new(&dir, "rogue");
    let port = free_port();
    let p = pair("refusals", &pki, via, port, port, "", "");
    let central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    rt.block_on(async {
        // A certificate from another CA (the client trusts the real CA, so only the server can refuse).
        let mut f = files(&rogue, "edge");
        f.ca = pki.dir.join("ca/ca.pem");
        if let Ok(mut l) = dial_client(via, &f, addr).await {
            assert!(!matches!(exchange(&mut l, &enc(&[hello(VERSION)])).await, Some(Msg::Welcome { .. })));
        }
        wait_refused(&central, "unknown_ca");

        // An expired certificate from the right CA.
        let old = dir.join("expired");
        let day = Duration::from_secs(86_400);
        let v = Validity { not_before: SystemTime::now() - 30 * day, not_after: SystemTime::now() - day };
        pki::issue(&pki.dir.join("ca"), "edge1", "old", &[], &[], &v, &old).unwrap();
        let f = TlsFiles {
            ca: pki.dir.join("ca/ca.pem"),
            cert: old.join("node.pem"),
            key: old.join("node.key"),
            crl: Vec::new(),
        };
        if let Ok(mut l) = dial_client(via, &f, addr).await {
            assert!(!matches!(exchange(&mut l, &enc(&[hello(VERSION)])).await, Some(Msg::Welcome { .. })));
        }
        wait_refused(&central, "expired");

        // No client certificate.
        assert!(!matches!(dial_without_cert(via, &pki.dir.join("ca/ca.pem"), addr).await, Some(Msg::Welcome { .. })));
        wait_refused(&central, "no_client_cert");

        let good = files(&pki, "edge");
        // A site writing under another site's directory.
        let mut l = dial_client(via, &good, addr).await.unwrap();
        let open =
            Msg::Open { id: 1, path: "other/live/2026-11-23/live-2026-11-23T10-relay-1-00000001.log.zst".into() };
        assert!(matches!(exchange(&mut l, &enc(&[hello(VERSION)])).await, Some(Msg::Welcome { version: VERSION, .. })));
        assert!(matches!(exchange(&mut l, &enc(&[open])).await, Some(Msg::Refuse { code: Code::NotAuthorized, .. })));
        wait_refused(&central, "not_authorized");

        // Another protocol version.
        let mut l = dial_client(via, &good, addr).await.unwrap();
        assert!(matches!(
            exchange(&mut l, &enc(&[hello(0)])).await,
            Some(Msg::Refuse { code: Code::VersionUnsupported, .. })
        ));
        wait_refused(&central, "version_unsupported");

        // An oversized message, then a malformed one.
        let mut l = dial_client(via, &good, addr).await.unwrap();
        let mut raw = enc(&[hello(VERSION)]);
        raw.extend_from_slice(&[0xff, 0xff, 0xff, 0x00, 3]);
        assert!(matches!(exchange(&mut l, &raw).await, Some(Msg::Welcome { .. })));
        assert!(matches!(exchange(&mut l, &[]).await, Some(Msg::Refuse { code: Code::MessageTooLarge, .. })));
        wait_refused(&central, "message_too_large");
        let mut l = dial_client(via, &good, addr).await.unwrap();
        let mut raw = enc(&[hello(VERSION)]);
        raw.extend_from_slice(&[0, 0, 0, 1, 77]);
        assert!(matches!(exchange(&mut l, &raw).await, Some(Msg::Welcome { .. })));
        assert!(matches!(exchange(&mut l, &[]).await, Some(Msg::Refuse { code: Code::ProtocolViolation, .. })));
        wait_refused(&central, "protocol_violation");

        // Bytes that are not whole ferry frames.
        let mut l = dial_client(via, &good, addr).await.unwrap();
        assert!(matches!(exchange(&mut l, &enc(&[hello(VERSION)])).await, Some(Msg::Welcome { .. })));
        let have = exchange(&mut l, &enc(&[Msg::Open { id: 1, path: OWN.into() }])).await;
        assert_eq!(have, Some(Msg::Have { id: 1, len: 0, sealed: false }));
        let mut garbage = BytesMut::new();
        garbage.put_slice(&[0x5e, 0x2a, 0x4d, 0x18, 200, 0, 0, 0]);
        garbage.put_slice(&[7u8; 300]);
        let append = Msg::Append { id: 1, offset: 0, frames: garbage.freeze() };
        assert!(matches!(
            exchange(&mut l, &enc(&[append])).await,
            Some(Msg::Error { id: 1, code: Code::InvalidFrame, .. })
        ));
        wait_refused(&central, "invalid_frame");
    });
    assert!(segments(&central.data).is_empty(), "nothing was written: {:?}", segments(&central.data));
    assert!(!central.data.join("archive/other").exists());
}

#[test]
fn tls_receiver_refuses_bad_peers_and_bad_messages_and_writes_nothing() {
    refusals(Via::Tls)
}

#[test]
fn quic_receiver_refuses_bad_peers_and_bad_messages_and_writes_nothing() {
    refusals(Via::Quic)
}

/// An uplink dialling a name the receiver's certificate does not hold says
/// so, with the fix: the log line and `ferry status` name `ferry certs issue
/// --dns/--ip`, and the error is counted as `certificate_name` (before: only
/// rustls's message, counted as `connect`).
#[test]
fn an_uplink_to_a_name_the_certificate_lacks_is_told_how_to_fix_it() {
    use util::{free_port, Node, TestDir, FERRY};
    for via in [Via::Tls, Via::Quic] {
        let pki_dir = TestDir::new("pki");
        let pki = Pki::new(&pki_dir, "pki");
        let port = free_port();
        let p = pair("name", &pki, via, port, port, "", "server_name = \"wrong.example\"");
        let mut central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
        let mut edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
        let reason = [("uplink", "central"), ("reason", "certificate_name")];
        edge.wait_metric("ferry_uplink_errors_total", &reason, Duration::from_secs(20), |v| v >= 1.0);
        let log = edge.log_text();
        assert!(log.contains("ferry certs issue --dns"), "{log}");
        let out = std::process::Command::new(FERRY)
            .args(["status", "--admin", &format!("127.0.0.1:{}", p.edge_ports.admin)])
            .output()
            .unwrap();
        let status = String::from_utf8(out.stdout).unwrap();
        assert!(status.contains("certificate_name") && status.contains("ferry certs issue --dns/--ip"), "{status}");
        edge.stop();
        central.stop();
    }
}

/// Issue 28: a peer writes only its own node's segments. relay-2 (a real
/// edge) delivers and seals its segments; then relay-1's certificate, saying
/// HELLO as relay-2, tries to open relay-2's sealed segment and a future one
/// of relay-2, to tombstone relay-2's segment, to write under another site,
/// and to append to and seal ids it never opened: every one refused with
/// not_authorized (or protocol_violation for the ids), counted each time,
/// logged once for the peer; relay-2's mirror is byte for byte what it was.
fn own_segments_only(via: Via) {
    let dir = TestDir::new("own-segments");
    let pki = Pki::new(&dir, "pki");
    pki.issue("edge1", "relay-2", "r2", &[]);
    let port = free_port();
    let p = pair("own", &pki, via, port, port, "commit_bytes = \"16KiB\"\nsegment_max_bytes = \"64KiB\"", "");
    let r2_cfg = p
        .edge_cfg
        .replace(&pki.dir.join("edge").display().to_string(), &pki.dir.join("r2").display().to_string())
        .replace("name = \"relay-1\"", "name = \"relay-2\"");
    let mut central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
    let mut r2 = Node::start(&p.edge_dir, &r2_cfg, p.edge_ports.admin);
    let input: String =
        (0..5_000).map(|i| format!("<13>Nov 23 10:00:00 h app: r2-{i:06} {}\n", noise(i as u64, 80))).collect();
    ferry_send(&["--to", &format!("127.0.0.1:{}", p.edge_ports.tcp)], input.as_bytes());
    r2.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(30), |v| v >= 5_000.0);
    r2.stop();
    wait_mirrored(&r2.data, &central.data, Duration::from_secs(30));
    let theirs = segment_files(&central.data, "edge1");
    let sealed = theirs.iter().find(|r| is_sealed(&central.data, r)).expect("relay-2 sealed a segment").clone();
    assert!(sealed.to_string_lossy().contains("-relay-2-"), "{}", sealed.display());
    let snapshot = |d: &std::path::Path| -> Vec<(std::path::PathBuf, Vec<u8>)> {
        segment_files(d, "edge1")
            .into_iter()
            .map(|r| (r.clone(), std::fs::read(d.join("archive").join(&r)).unwrap()))
            .collect()
    };
    let before = snapshot(&central.data);

    let sealed_path = sealed.to_string_lossy().into_owned();
    let dash = sealed_path.rfind('-').unwrap();
    let future = format!("{}-00000099{}", &sealed_path[..dash], &sealed_path[dash + 9..]);
    assert!(future.ends_with(".log.zst") && future != sealed_path, "{future}");
    let other_site = "edge2/live/2026-11-23/live-2026-11-23T10-relay-1-00000001.log.zst";
    let tombstone = ferry::link::proto::Tombstone {
        len: 0,
        frames: 0,
        records: 10,
        first_seq: 0,
        next_seq: 10,
        sealed_ms: 0,
        sha256: [0; 32],
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mine = files(&pki, "edge");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let attempts = [
        Msg::Open { id: 1, path: sealed_path.clone() },
        Msg::Open { id: 1, path: future.clone() },
        Msg::Gone { id: 1, path: sealed_path.clone(), tombstone },
        Msg::Open { id: 1, path: other_site.into() },
    ];
    rt.block_on(async {
        for m in &attempts {
            let mut l = dial_client(via, &mine, addr).await.unwrap();
            let hello = Msg::Hello { version: VERSION, node: "relay-2".into() };
            assert!(matches!(exchange(&mut l, &enc(&[hello])).await, Some(Msg::Welcome { .. })));
            let got = exchange(&mut l, &enc(std::slice::from_ref(m))).await;
            assert!(
                matches!(&got, Some(Msg::Refuse { code: Code::NotAuthorized, reason }) if reason.contains("relay-1")),
                "{m:?} answered {got:?}"
            );
        }
        for m in [
            Msg::Append { id: 1, offset: 0, frames: bytes::Bytes::from_static(b"x") },
            Msg::Seal { id: 1, len: 0, sha256: [0; 32] },
        ] {
            let mut l = dial_client(via, &mine, addr).await.unwrap();
            assert!(matches!(exchange(&mut l, &enc(&[hello(VERSION)])).await, Some(Msg::Welcome { .. })));
            let got = exchange(&mut l, &enc(std::slice::from_ref(&m))).await;
            assert!(matches!(got, Some(Msg::Refuse { code: Code::ProtocolViolation, .. })), "{m:?} answered {got:?}");
        }
    });
    let n = central.wait_metric(
        "ferry_link_refused_total",
        &[("reason", "not_authorized")],
        Duration::from_secs(10),
        |v| v >= 4.0,
    );
    assert_eq!(n, 4.0, "each attempt counted");
    let log = central.log_text();
    let logged = log.lines().filter(|l| l.contains("link refused") && l.contains("not_authorized")).count();
    assert_eq!(logged, 1, "one log line for the peer within a minute:\n{log}");
    assert!(log.contains("a node writes only its own segments"), "{log}");
    central.stop();
    assert!(snapshot(&central.data) == before, "relay-2's mirror is untouched");
    assert!(!central.data.join("archive/edge2").exists());
    assert!(!central.data.join("archive").join(&future).exists());
}

#[test]
fn over_tls_a_node_writes_only_its_own_segments() {
    own_segments_only(Via::Tls)
}

#[test]
fn over_quic_a_node_writes_only_its_own_segments() {
    own_segments_only(Via::Quic)
}
