//! An edge and a central node on loopback, linked over TLS or QUIC with
//! the tests' deployment PKI (`tests/util/link.rs`): the link and uplink
//! benches.

use std::path::{Path, PathBuf};

use super::util::link::Pki;
use super::{free_port, http_get, metric_value, Node};

/// The configs, ports and directory of an edge and a central node; the
/// nodes start with [`Pair::edge`] and [`Pair::central`].
pub struct Pair {
    pub dir: tempfile::TempDir,
    pub ferry: PathBuf,
    pub edge_cfg: PathBuf,
    pub central_cfg: PathBuf,
    pub edge_admin: u16,
    pub central_admin: u16,
    pub edge_tcp: u16,
}

impl Pair {
    pub fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    pub fn edge(&self) -> Node {
        Node::start(&self.ferry, &self.edge_cfg, &self.path("edge.log"), self.edge_admin)
    }

    pub fn central(&self) -> Node {
        Node::start(&self.ferry, &self.central_cfg, &self.path("central.log"), self.central_admin)
    }

    /// A metric of the edge; NaN when its admin listener does not answer.
    pub fn edge_metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        scrape(self.edge_admin, name, labels).unwrap_or(f64::NAN)
    }

    /// Bytes of the edge's segments held by central's mirror.
    pub fn mirrored(&self) -> u64 {
        dir_bytes(&self.path("central-data/archive/edge1"))
    }
}

/// A metric of the node whose admin listener is `admin`; `None` when it
/// does not answer 200.
pub fn scrape(admin: u16, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match http_get(admin, "/metrics") {
        Ok((200, text)) => Some(metric_value(&text, name, labels)),
        _ => None,
    }
}

/// Bytes of the files under `p`.
pub fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// An edge (syslog TCP into `live`, one uplink over `transport`: `tcp`
/// for TLS, or `quic`) and a central receiver, with `edge_store` and
/// `uplink` lines added to the defaults. The certificates are made by the
/// build under test (`tests/util`'s `FERRY`), the nodes run `ferry`.
pub fn pair(ferry: &Path, transport: &str, edge_store: &str, uplink: &str) -> Pair {
    let dir = tempfile::Builder::new().prefix("ferry-pairbench-").tempdir().unwrap();
    let d = dir.path();
    let p = |s: &str| d.join(s).display().to_string();
    let pki = Pki::at(d.to_owned());
    let (edge_admin, central_admin, edge_tcp, link) = (free_port(), free_port(), free_port(), free_port());
    let listener = if transport == "quic" { "quic" } else { "tls" };
    let central = format!(
        "[node]\nsite = \"central\"\nname = \"c1\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{central_admin}\"\n{}\n[[stream]]\nname = \"live\"\n[[listener]]\nname = \"link\"\nkind = \"ferry\"\ntransport = \"{listener}\"\nlisten = \"127.0.0.1:{link}\"\n",
        p("central-data"),
        pki.tls_section("central")
    );
    let edge = format!(
        "[node]\nsite = \"edge1\"\nname = \"relay-1\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{edge_admin}\"\n{}\n[store]\n{edge_store}\n[[stream]]\nname = \"live\"\n[[listener]]\nname = \"tcp\"\nkind = \"syslog\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{edge_tcp}\"\n[[uplink]]\nname = \"central\"\ntransport = \"{transport}\"\naddresses = [\"127.0.0.1:{link}\"]\n{uplink}\n",
        p("edge-data"),
        pki.tls_section("edge")
    );
    std::fs::write(d.join("central.toml"), central).unwrap();
    std::fs::write(d.join("edge.toml"), edge).unwrap();
    Pair {
        ferry: ferry.to_owned(),
        edge_cfg: d.join("edge.toml"),
        central_cfg: d.join("central.toml"),
        dir,
        edge_admin,
        central_admin,
        edge_tcp,
    }
}
