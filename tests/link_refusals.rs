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
    TlsFiles { ca: d.join("ca.pem"), cert: d.join("node.pem"), key: d.join("node.key") }
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
        let f = TlsFiles { ca: pki.dir.join("ca/ca.pem"), cert: old.join("node.pem"), key: old.join("node.key") };
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
