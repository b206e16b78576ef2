//! `ferry certs`: the real binary makes a CA and node certificates, and the
//! `pki` TLS configs built from them admit exactly the nodes of the
//! deployment over a real mutual-TLS handshake on loopback.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry::pki::{self, Identity, TlsFiles, Validity};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const ALPN: &[u8] = b"ferry-test/1";
/// Every handshake, and each side of it, finishes well within this.
const LIMIT: Duration = Duration::from_secs(10);

/// Run `ferry` with a restrictive umask, so file modes are the program's doing.
fn ferry(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(args);
    // SAFETY: umask is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    cmd.output().expect("run ferry")
}

/// `ferry args...`, which must succeed; its stdout.
fn ferry_ok(args: &[&str]) -> String {
    let out = ferry(args);
    assert!(out.status.success(), "ferry {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `ferry args...`, which must fail with exit 1; its stderr.
fn ferry_err(args: &[&str]) -> String {
    let out = ferry(args);
    assert_eq!(out.status.code(), Some(1), "ferry {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A deployment made with the binary: `ca/`, a central node `central/`
/// (`central/c1`, dialled at 127.0.0.1 and localhost) and an edge relay
/// `edge/` (`dc1/relay-1`).
struct Deployment {
    dir: tempfile::TempDir,
}

impl Deployment {
    fn new() -> Deployment {
        let d = Deployment { dir: tempfile::tempdir().unwrap() };
        let out = ferry_ok(&["certs", "ca", "--out", s(&d.path("ca")), "--name", "test CA"]);
        assert!(out.contains("ca.key") && out.contains("ca.pem"), "{out}");
        d.issue("ca", "central", "c1", "central", &["--ip", "127.0.0.1", "--dns", "localhost"]);
        d.issue("ca", "dc1", "relay-1", "edge", &[]);
        d
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `ferry certs issue` from CA directory `ca` into directory `out`.
    fn issue(&self, ca: &str, site: &str, node: &str, out: &str, extra: &[&str]) -> String {
        let (ca, out) = (self.path(ca), self.path(out));
        let mut args = vec!["certs", "issue", "--ca", s(&ca), "--site", site, "--node", node, "--out", s(&out)];
        args.extend(extra);
        ferry_ok(&args)
    }

    /// A node directory as TLS material.
    fn files(&self, node_dir: &str) -> TlsFiles {
        let d = self.path(node_dir);
        TlsFiles { ca: d.join("ca.pem"), cert: d.join("node.pem"), key: d.join("node.key"), crl: Vec::new() }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn identity(site: &str, node: &str) -> Identity {
    Identity { site: site.into(), node: node.into() }
}

fn leaf_identity(p: &Path) -> Identity {
    pki::identity_from_cert(&pki::load_certs(p).unwrap()[0]).unwrap()
}

/// Each side's view of one connection: the identity in the peer's
/// certificate, after a ping/pong through the tunnel; or what failed.
struct Outcome {
    server: Result<Identity, String>,
    client: Result<Identity, String>,
}

fn peer_identity(conn: &rustls::CommonState) -> Result<Identity, String> {
    if conn.alpn_protocol() != Some(ALPN) {
        return Err(format!("ALPN {:?}", conn.alpn_protocol()));
    }
    let certs = conn.peer_certificates().ok_or("no peer certificate")?;
    pki::identity_from_cert(&certs[0]).map_err(|e| e.to_string())
}

async fn connect(server: rustls::ServerConfig, client: rustls::ClientConfig) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| format!("handshake: {e}"))?;
        let id = peer_identity(tls.get_ref().1)?;
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await.map_err(|e| e.to_string())?;
        assert_eq!(&ping, b"ping");
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(id)
    });
    let client = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls =
            TlsConnector::from(Arc::new(client)).connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
        let id = peer_identity(tls.get_ref().1)?;
        // TLS 1.3: the server judges the client's certificate after the
        // client's handshake is done, so a refusal shows up here.
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut pong = [0u8; 4];
        tls.read_exact(&mut pong).await.map_err(|e| e.to_string())?;
        assert_eq!(&pong, b"pong");
        Ok(id)
    };
    let client = timeout(LIMIT, client).await.expect("client side timed out");
    let server = timeout(LIMIT, server).await.expect("server side timed out").expect("server task panicked");
    Outcome { server, client }
}

/// A client that trusts `ca` and presents no certificate.
fn anonymous_client(ca: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in pki::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

fn server(files: &TlsFiles) -> rustls::ServerConfig {
    pki::server_config(files, &[ALPN]).unwrap()
}

fn client(files: &TlsFiles) -> rustls::ClientConfig {
    pki::client_config(files, &[ALPN]).unwrap()
}

/// The server refused the client; the client noticed.
fn assert_refused(o: &Outcome, server_says: &str) {
    let err = o.server.as_ref().expect_err("the server must refuse");
    assert!(err.to_lowercase().contains(server_says), "server error {err:?} should mention {server_says:?}");
    assert!(o.client.is_err(), "client: {:?}", o.client);
}

#[test]
fn cli_writes_ca_and_node_certs_with_modes_and_identities() {
    let d = Deployment::new();
    for (file, want) in [
        ("ca/ca.key", 0o600),
        ("ca/ca.pem", 0o644),
        ("central/node.key", 0o600),
        ("central/node.pem", 0o644),
        ("central/ca.pem", 0o644),
        ("edge/node.key", 0o600),
        ("edge/node.pem", 0o644),
        ("edge/ca.pem", 0o644),
    ] {
        assert_eq!(mode(&d.path(file)), want, "{file}: {:o}", mode(&d.path(file)));
    }
    assert_eq!(leaf_identity(&d.path("central/node.pem")), identity("central", "c1"));
    assert_eq!(leaf_identity(&d.path("edge/node.pem")), identity("dc1", "relay-1"));
    assert_eq!(std::fs::read(d.path("edge/ca.pem")).unwrap(), std::fs::read(d.path("ca/ca.pem")).unwrap());

    // What was written is printed.
    let out = d.issue("ca", "dc2", "relay-9", "more", &["--dns", "r9.example.net"]);
    for part in ["node.key", "node.pem", "ca.pem", "ferry://dc2/relay-9", "DNS r9.example.net"] {
        assert!(out.contains(part), "{part:?} missing from {out}");
    }

    // Nothing is overwritten; every refusal names the file and the problem.
    let before = std::fs::read(d.path("ca/ca.key")).unwrap();
    let err = ferry_err(&["certs", "ca", "--out", s(&d.path("ca"))]);
    assert!(err.contains("ca.pem already exists; refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(d.path("ca/ca.key")).unwrap(), before);
    let edge = s(&d.path("edge")).to_owned();
    let ca = s(&d.path("ca")).to_owned();
    let err = ferry_err(&["certs", "issue", "--ca", &ca, "--site", "dc1", "--node", "relay-1", "--out", &edge]);
    assert!(err.contains("refusing to overwrite"), "{err}");

    let bad = s(&d.path("bad")).to_owned();
    let err = ferry_err(&["certs", "issue", "--ca", &ca, "--site", "dc 1", "--node", "r1", "--out", &bad]);
    assert!(err.contains("site \"dc 1\" must be 1-64 characters"), "{err}");
    assert!(!d.path("bad").exists());

    let nowhere = s(&d.path("nowhere")).to_owned();
    let err = ferry_err(&["certs", "issue", "--ca", &nowhere, "--site", "dc1", "--node", "r1", "--out", &bad]);
    assert!(err.contains("cannot read CA certificate") && err.contains("nowhere/ca.pem"), "{err}");
}

#[tokio::test]
async fn same_ca_handshake_succeeds_and_server_sees_client_identity() {
    let d = Deployment::new();
    let o = connect(server(&d.files("central")), client(&d.files("edge"))).await;
    assert_eq!(o.server, Ok(identity("dc1", "relay-1")));
    assert_eq!(o.client, Ok(identity("central", "c1")));
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let d = Deployment::new();
    ferry_ok(&["certs", "ca", "--out", s(&d.path("other-ca"))]);
    d.issue("other-ca", "dc1", "relay-1", "impostor", &[]);
    // The impostor trusts the real CA (so it would accept the server) but
    // its own certificate is from elsewhere.
    let impostor = TlsFiles { ca: d.path("ca/ca.pem"), ..d.files("impostor") };
    let o = connect(server(&d.files("central")), client(&impostor)).await;
    assert_refused(&o, "unknown");
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let d = Deployment::new();
    let o = connect(server(&d.files("central")), anonymous_client(&d.path("ca/ca.pem"))).await;
    assert_refused(&o, "no certificate");
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let d = Deployment::new();
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let past = Validity { not_before: now - 30 * day, not_after: now - day };
    pki::issue(&d.path("ca"), "dc1", "stale", &[], &[], &past, &d.path("stale")).unwrap();
    let o = connect(server(&d.files("central")), client(&d.files("stale"))).await;
    assert_refused(&o, "expired");
}

#[tokio::test]
async fn server_cert_from_another_ca_is_refused_by_the_client() {
    let d = Deployment::new();
    ferry_ok(&["certs", "ca", "--out", s(&d.path("other-ca"))]);
    d.issue("other-ca", "central", "c1", "fake-central", &["--ip", "127.0.0.1"]);
    let fake = TlsFiles { ca: d.path("ca/ca.pem"), ..d.files("fake-central") };
    let o = connect(server(&fake), client(&d.files("edge"))).await;
    let err = o.client.expect_err("the client must refuse");
    assert!(err.to_lowercase().contains("unknown"), "{err}");
    assert!(o.server.is_err());
}

#[tokio::test]
async fn ca_bundle_trusts_old_and_new_ca_during_rotation() {
    let d = Deployment::new();
    ferry_ok(&["certs", "ca", "--out", s(&d.path("new-ca"))]);
    d.issue("new-ca", "dc1", "relay-2", "edge-new", &[]);
    let mut bundle = std::fs::read(d.path("ca/ca.pem")).unwrap();
    bundle.extend(std::fs::read(d.path("new-ca/ca.pem")).unwrap());
    let bundle_path = d.path("bundle.pem");
    std::fs::write(&bundle_path, bundle).unwrap();
    assert_eq!(pki::load_certs(&bundle_path).unwrap().len(), 2);

    // The central node still holds its old-CA certificate but trusts both.
    let central = TlsFiles { ca: bundle_path.clone(), ..d.files("central") };
    for (edge, node) in [("edge", "relay-1"), ("edge-new", "relay-2")] {
        let files = TlsFiles { ca: bundle_path.clone(), ..d.files(edge) };
        let o = connect(server(&central), client(&files)).await;
        assert_eq!(o.server, Ok(identity("dc1", node)), "{edge}");
        assert_eq!(o.client, Ok(identity("central", "c1")), "{edge}");
    }
    // Without the bundle, the new edge is a stranger.
    let o = connect(server(&d.files("central")), client(&TlsFiles { ca: bundle_path, ..d.files("edge-new") })).await;
    assert_refused(&o, "unknown");
}
