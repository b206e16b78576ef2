use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::pki::{self, Validity};

/// `ferry certs ca | issue | revoke`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a deployment CA: DIR/ca.pem (0644) and DIR/ca.key (0600, keep it offline).
    Ca {
        /// Directory to write into (created if missing; existing files are never replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The CA's common name, e.g. "acme logs CA".
        #[arg(long, default_value = "ferry CA")]
        name: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Issue a node certificate: DIR/node.pem, DIR/node.key (0600) and a copy of the CA's ca.pem.
    Issue {
        /// The CA directory (ca.pem, ca.key).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The node's site: an edge relay's datacenter, or a central node's own site.
        #[arg(long)]
        site: String,
        /// The node's name within its site.
        #[arg(long)]
        node: String,
        /// Directory to write into (created if missing; existing files are never replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A DNS name peers dial this node at (receivers); repeatable.
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// An IP address peers dial this node at (receivers); repeatable.
        #[arg(long, value_name = "ADDR")]
        ip: Vec<IpAddr>,
        /// Days the certificate is valid; it may not outlive the CA.
        #[arg(long, default_value_t = 825, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Revoke a node's certificate: add it to the CA's revocation list DIR/crl.pem (created if
    /// missing, re-signed with every earlier entry kept). Copy crl.pem to every node's `[tls] crl`
    /// and reload them: its sessions end, its handshakes fail with certificate_revoked.
    Revoke {
        /// The CA directory (ca.pem, ca.key); the list is written beside them.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The certificate to revoke (the node's node.pem).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Why, recorded in the list.
        #[arg(long, value_enum, default_value = "key-compromise")]
        reason: RevokeReason,
    },
}

/// `--reason` of `ferry certs revoke`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RevokeReason {
    /// The node's key may be known to someone else.
    KeyCompromise,
    /// The node was retired.
    CessationOfOperation,
    /// The node has a new certificate.
    Superseded,
    /// No reason recorded.
    Unspecified,
}

/// Run `ferry certs ...`: 0 on success; errors say which file and why.
pub fn certs(args: CertsArgs) -> anyhow::Result<i32> {
    match args.command {
        CertsCommand::Ca { out, name, days } => {
            pki::create_ca(&out, &name, &Validity::days_from_now(days))
                .with_context(|| format!("cannot create a CA in {}", out.display()))?;
            let pem = out.join("ca.pem");
            println!("wrote {} (CA private key, mode 0600: keep it offline)", out.join("ca.key").display());
            println!("wrote {} (CA certificate {name:?}, valid until {})", pem.display(), not_after(&pem)?);
        }
        CertsCommand::Issue { ca, site, node, out, dns, ip, days } => {
            pki::issue(&ca, &site, &node, &dns, &ip, &Validity::days_from_now(days), &out).with_context(|| {
                format!("cannot issue a certificate for site {site:?} node {node:?} into {}", out.display())
            })?;
            let pem = out.join("node.pem");
            let der = pki::load_certs(&pem)?.remove(0);
            let mut names = vec![pki::identity_from_cert(&der)?.to_string()];
            names.extend(dns.iter().map(|d| format!("DNS {d}")));
            names.extend(ip.iter().map(|a| format!("IP {a}")));
            println!("wrote {} (node private key, mode 0600)", out.join("node.key").display());
            println!("wrote {} ({}, valid until {})", pem.display(), names.join(", "), not_after(&pem)?);
            let bundle = out.join("ca.pem");
            println!(
                "wrote {} (copy of {}, {} CA certificate(s))",
                bundle.display(),
                ca.join("ca.pem").display(),
                pki::load_certs(&bundle)?.len()
            );
        }
        CertsCommand::Revoke { ca, cert, reason } => {
            let reason = match reason {
                RevokeReason::KeyCompromise => pki::Reason::KeyCompromise,
                RevokeReason::CessationOfOperation => pki::Reason::CessationOfOperation,
                RevokeReason::Superseded => pki::Reason::Superseded,
                RevokeReason::Unspecified => pki::Reason::Unspecified,
            };
            let r = pki::revoke(&ca, &cert, reason)
                .with_context(|| format!("cannot revoke {} with the CA in {}", cert.display(), ca.display()))?;
            let who =
                r.identity.as_ref().map(|i| i.to_string()).unwrap_or_else(|| "a certificate without identity".into());
            let at = crate::store::clock::rfc3339_secs(
                r.at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
            );
            if r.new {
                println!("revoked {who} (serial {}) at {at}", r.serial);
                println!("wrote {} ({} certificate(s) revoked)", r.crl.display(), r.count);
                println!("next: copy it to every node's [tls] crl path and reload them (systemctl reload ferry, or the Ansible role with ferry_crl_src)");
            } else {
                println!("{who} (serial {}) was already revoked at {at}; {} unchanged", r.serial, r.crl.display());
            }
        }
    }
    Ok(0)
}

/// When the first certificate in `path` expires, for the operator.
fn not_after(path: &Path) -> anyhow::Result<String> {
    let der = pki::load_certs(path)?.remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("cannot parse {}: {e}", path.display()))?;
    Ok(cert.validity().not_after.to_string())
}
