//! Two-node link fixtures: a deployment PKI made with `ferry certs`, an edge
//! node with an uplink and a central node with a receiver.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// Certificates for one CA: `ca/`, `edge/`, `central/`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &TestDir, name: &str) -> Pki {
        Pki::at(dir.join(name))
    }

    /// A new CA and the edge's and central's certificates ([`issue_nodes`])
    /// in `root`.
    pub fn at(root: PathBuf) -> Pki {
        let run = |args: &[&str]| {
            let out = Command::new(FERRY).arg("certs").args(args).output().unwrap();
            assert!(out.status.success(), "ferry certs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["ca", "--out", &root.join("ca").display().to_string()]);
        issue_nodes(&root.join("ca"), &root);
        Pki { dir: root }
    }

    /// Issue `ferry://<site>/<node>` with the deployment CA into
    /// `<pki>/<dir>`, with `extra` arguments (`--ip`, `--dns`).
    pub fn issue(&self, site: &str, node: &str, dir: &str, extra: &[&str]) {
        let out = Command::new(FERRY)
            .args(["certs", "issue", "--ca"])
            .arg(self.dir.join("ca"))
            .args(["--site", site, "--node", node, "--out"])
            .arg(self.dir.join(dir))
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "ferry certs issue {site}/{node}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A `[tls]` section for the node whose certificate is in `who/`.
    pub fn tls_section(&self, who: &str) -> String {
        let d = self.dir.join(who);
        format!(
            "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            d.join("ca.pem").display(),
            d.join("node.pem").display(),
            d.join("node.key").display()
        )
    }
}

/// Issue the edge's (`out/edge`) and central's (`out/central`, for
/// 127.0.0.1 and localhost) certificates with the CA in `ca`.
pub fn issue_nodes(ca: &Path, out: &Path) {
    let run = |args: &[&str]| {
        let o = Command::new(FERRY).arg("certs").args(args).output().unwrap();
        assert!(o.status.success(), "ferry certs {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let (ca, p) = (ca.display().to_string(), |s: &str| out.join(s).display().to_string());
    run(&["issue", "--ca", &ca, "--site", "edge1", "--node", "relay-1", "--out", &p("edge")]);
    run(&[
        "issue",
        "--ca",
        &ca,
        "--site",
        "central",
        "--node",
        "c1",
        "--ip",
        "127.0.0.1",
        "--dns",
        "localhost",
        "--out",
        &p("central"),
    ]);
}

/// Link transport of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Tls,
    Quic,
}

impl Via {
    pub fn uplink(self) -> &'static str {
        match self {
            Via::Tls => "tls",
            Via::Quic => "quic",
        }
    }
    pub fn listener(self) -> &'static str {
        match self {
            Via::Tls => "tls",
            Via::Quic => "quic",
        }
    }
}

pub struct Pair {
    pub edge_dir: TestDir,
    pub central_dir: TestDir,
    pub edge_ports: Ports,
    pub central_ports: Ports,
    pub link_port: u16,
    pub edge_cfg: String,
    pub central_cfg: String,
}

/// Configs for an edge (site edge1) uplinking to `target` and a central node
/// receiving on `link_port`. `uplink_extra` adds keys to the `[[uplink]]`.
pub fn pair(
    name: &str,
    pki: &Pki,
    via: Via,
    target: u16,
    link_port: u16,
    edge_store: &str,
    uplink_extra: &str,
) -> Pair {
    let edge_dir = TestDir::new(&format!("{name}-edge"));
    let central_dir = TestDir::new(&format!("{name}-central"));
    let edge_ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let central_ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let edge_extra = format!(
        "{tls}\n[[uplink]]\nname = \"central\"\ntransport = \"{t}\"\naddresses = [\"127.0.0.1:{target}\"]\nkeepalive = \"300ms\"\ndead_after = \"2s\"\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\nconnect_timeout = \"2s\"\n{uplink_extra}\n",
        tls = pki.tls_section("edge"),
        t = via.uplink(),
    );
    let edge_cfg = node_config(&edge_dir, &edge_ports, edge_store, "", &edge_extra)
        .replace("site = \"test\"", "site = \"edge1\"")
        .replace("name = \"n1\"", "name = \"relay-1\"");
    let central_extra = format!(
        "{tls}\n[[listener]]\nname = \"link\"\nkind = \"ferry\"\ntransport = \"{t}\"\nlisten = \"127.0.0.1:{link_port}\"\nidle_timeout = \"3s\"\n",
        tls = pki.tls_section("central"),
        t = via.listener(),
    );
    let central_cfg = node_config(&central_dir, &central_ports, "", "", &central_extra)
        .replace("site = \"test\"", "site = \"central\"")
        .replace("name = \"n1\"", "name = \"c1\"");
    Pair { edge_dir, central_dir, edge_ports, central_ports, link_port, edge_cfg, central_cfg }
}

/// Relative paths and SHA-256 of every segment under `data/archive/<site>`.
pub fn segment_files(data: &Path, site: &str) -> Vec<PathBuf> {
    all_segments(data)
        .into_iter()
        .filter_map(|p| p.strip_prefix(data.join("archive")).ok().map(Path::to_path_buf))
        .filter(|r| r.starts_with(site))
        .collect()
}

pub fn archive_bytes(data: &Path, site: &str) -> u64 {
    segment_files(data, site)
        .iter()
        .map(|r| std::fs::metadata(data.join("archive").join(r)).map(|m| m.len()).unwrap_or(0))
        .sum()
}

pub fn is_sealed(data: &Path, rel: &Path) -> bool {
    data.join("state/seals").join(format!("{}.seal", rel.display())).exists()
}

/// Wait until central mirrors every edge segment byte for byte and has sealed
/// every segment the edge has sealed.
pub fn wait_mirrored(edge: &Path, central: &Path, limit: Duration) {
    let t = Instant::now();
    loop {
        let e = segment_files(edge, "edge1");
        let c = segment_files(central, "edge1");
        let same_len = !e.is_empty()
            && e.iter().all(|r| {
                let a = std::fs::metadata(edge.join("archive").join(r)).map(|m| m.len()).ok();
                let b = std::fs::metadata(central.join("archive").join(r)).map(|m| m.len()).ok();
                a.is_some() && a == b
            })
            && c.len() == e.len();
        let seals = e.iter().all(|r| !is_sealed(edge, r) || is_sealed(central, r));
        if same_len && seals {
            return;
        }
        assert!(
            t.elapsed() < limit,
            "central did not catch up within {limit:?}: edge {} segments / {} bytes, central {} segments / {} bytes",
            e.len(),
            archive_bytes(edge, "edge1"),
            c.len(),
            archive_bytes(central, "edge1")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every sealed segment identical on both sides; whole archives equal through zstdcat.
pub fn assert_byte_identical(edge: &Path, central: &Path) {
    let e = segment_files(edge, "edge1");
    assert_eq!(e, segment_files(central, "edge1"), "same segment files on both sides");
    let mut sealed = 0;
    for r in &e {
        let a = std::fs::read(edge.join("archive").join(r)).unwrap();
        let b = std::fs::read(central.join("archive").join(r)).unwrap();
        assert!(a == b, "{} differs ({} vs {} bytes)", r.display(), a.len(), b.len());
        if is_sealed(edge, r) {
            assert!(is_sealed(central, r), "{} sealed at the edge but not at central", r.display());
            let se = std::fs::read_to_string(edge.join("state/seals").join(format!("{}.seal", r.display()))).unwrap();
            let sc =
                std::fs::read_to_string(central.join("state/seals").join(format!("{}.seal", r.display()))).unwrap();
            let sha = |s: &str| s.lines().find(|l| l.starts_with("sha256=")).unwrap().to_owned();
            assert_eq!(sha(&se), sha(&sc), "{}: seal checksums", r.display());
            sealed += 1;
        }
    }
    assert!(sealed > 0, "at least one sealed segment compared");
    let zc = |d: &Path| {
        let files: Vec<PathBuf> = segment_files(d, "edge1").iter().map(|r| d.join("archive").join(r)).collect();
        let out = Command::new(require_tool("zstdcat")).args(&files).output().unwrap();
        assert!(out.status.success());
        out.stdout
    };
    assert!(zc(edge) == zc(central), "zstdcat of the central archive equals zstdcat of the edge archive");
}
