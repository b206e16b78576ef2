//! Deployment PKI: the certificates that let ferry nodes recognise each
//! other, made by `ferry certs` and used by the link's TLS and QUIC
//! transports.
//!
//! ## Design constraints
//!
//! - One private CA per deployment, nothing from the system trust store: a
//!   node trusts exactly the certificates in its `ca.pem`.
//! - Both ends authenticate (mutual TLS). A node learns *who* its peer is
//!   from the peer's certificate, never from anything the peer says later.
//! - Rotation without downtime: every `ca` file may hold several
//!   certificates (a bundle), so old and new CA are trusted side by side
//!   while nodes are re-issued.
//! - The CA key never has to be on a node: `create_ca` and `issue` run
//!   wherever the operator keeps it, and only the node's own files travel.
//!
//! ## Files
//!
//! ```text
//! CA directory      ca.pem   0644  the CA certificate (or a bundle, see below)
//!                   ca.key   0600  the CA private key: keep it offline
//! node directory    node.pem 0644  the node's leaf certificate
//!                   node.key 0600  the node's private key
//!                   ca.pem   0644  a copy of the CA directory's ca.pem
//! ```
//!
//! Everything is PEM. Keys are ECDSA P-256 in PKCS#8. Nothing is ever
//! overwritten: an existing output file is an error and no file is written.
//!
//! ## Certificate profile
//!
//! - CA: Subject `CN=<name>, O=ferry`; `basicConstraints CA:TRUE, pathlen:0`
//!   (critical); key usage `keyCertSign, cRLSign`.
//! - Node: Subject `CN=<node>, O=ferry, OU=<site>`; `basicConstraints
//!   CA:FALSE`; key usage `digitalSignature`; extended key usage
//!   `serverAuth, clientAuth` (any node can dial and be dialled); subject
//!   and authority key identifiers; a random 127-bit serial number.
//!
//! ## Identity
//!
//! A node's identity is the URI subject alternative name
//! `ferry://<site>/<node>`, exactly one per certificate. It is the only
//! authoritative place: the Subject fields repeat it for humans and tools.
//! `site` and `node` follow the config's name rule (1-64 characters of
//! `A-Z a-z 0-9 - _`, not starting with `-`) because they become path
//! components of the archive. DNS and IP SANs are optional and only name the
//! addresses a node is dialled at when it serves as a receiver.
//!
//! ## TLS policy
//!
//! [`server_config`] and [`client_config`] build TLS 1.3-only rustls
//! configs on the `ring` provider. The server *requires* a client
//! certificate chaining to its `ca`; the client trusts only its `ca` and
//! presents its own certificate. Both suit `quinn` as they are.

#![warn(missing_docs)]

mod files;
mod issue;
pub mod live;
mod revoke;
mod tls;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;

pub use files::{load_certs, load_key, TlsFiles};
pub use issue::{create_ca, issue};
pub use live::{Derived, Expiry, Live, Material};
pub use revoke::{revoke, revoked_serials, serial_hex, Reason, Revoked};
pub use tls::{
    client_config, client_config_from, collector_client_config, collector_server_config, collector_server_config_from,
    server_config, server_config_from,
};

/// The URI scheme of a node identity: `ferry://<site>/<node>`.
const IDENTITY_SCHEME: &str = "ferry://";

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The datacenter the node archives for (an edge relay's datacenter, or a
    /// central node's own site name).
    pub site: String,
    /// The node's name within its site.
    pub node: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{IDENTITY_SCHEME}{}/{}", self.site, self.node)
    }
}

/// Validity window for issued certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// The certificate is not valid before this instant (second precision).
    pub not_before: SystemTime,
    /// The certificate is not valid after this instant (second precision).
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from an hour ago (tolerating clock skew between nodes) until
    /// `days` days from now.
    pub fn days_from_now(days: u32) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

/// What went wrong making, reading or using certificates. Every variant
/// names the file or the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A site or node name that cannot be part of an identity.
    #[error("{field} {value:?} must be 1-64 characters of A-Z a-z 0-9 - _, not starting with '-'")]
    InvalidName {
        /// `"site"` or `"node"`.
        field: &'static str,
        /// The name as given.
        value: String,
    },
    /// A DNS name that cannot go into a certificate.
    #[error("DNS name {name:?} {reason}")]
    InvalidDnsName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A validity window that cannot be issued.
    #[error("invalid validity: {0}")]
    InvalidValidity(String),
    /// A file could not be read (missing, unreadable).
    #[error("cannot read {what} {}", .path.display())]
    Read {
        /// The file's role, e.g. "CA certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be created or written.
    #[error("cannot write {}", .path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An output file is already there; nothing was written.
    #[error("{} already exists; refusing to overwrite it", .path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// An output directory that must not receive node files.
    #[error("refusing to issue into the CA directory {} (node files must not sit beside ca.key)", .path.display())]
    IssueIntoCaDir {
        /// The CA directory.
        path: PathBuf,
    },
    /// A file that is not well-formed PEM.
    #[error("{what} {} is not valid PEM", .path.display())]
    Pem {
        /// The file's role.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A rustls config QUIC cannot use (a bug if seen: ours are TLS 1.3).
    #[error("QUIC cannot use this TLS config: {0}")]
    Quic(String),
    /// A file with no PEM `CERTIFICATE` block.
    #[error("{what} {}: no certificate in it{note}", .path.display())]
    NoCertificate {
        /// The file's role.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the file holds instead, e.g. " (it holds a private key)".
        note: &'static str,
    },
    /// A file with no PEM private key block.
    #[error("{what} {}: no private key in it{note}", .path.display())]
    NoKey {
        /// The file's role.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the file holds instead, e.g. " (it holds a certificate)".
        note: &'static str,
    },
    /// DER that is not a certificate x509-parser can read.
    #[error("cannot parse {what}")]
    Parse {
        /// Which certificate or extension, with its file when there is one.
        what: String,
        /// The cause.
        #[source]
        source: X509Error,
    },
    /// A CA certificate that `issue` cannot sign with.
    #[error("CA certificate {} cannot issue certificates: {reason}", .path.display())]
    UnusableCa {
        /// The CA certificate file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A CA key whose public half is in none of the CA file's certificates.
    #[error("CA key {} matches no certificate in {}", .key.display(), .ca.display())]
    KeyMismatch {
        /// The CA key file.
        key: PathBuf,
        /// The CA certificate file.
        ca: PathBuf,
    },
    /// A private key rcgen cannot sign with (ring needs PKCS#8 ECDSA,
    /// Ed25519 or RSA).
    #[error("CA key {} cannot sign certificates", .path.display())]
    UnusableKey {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// Key generation or signing failed.
    #[error("cannot generate {what}")]
    Generate {
        /// What was being generated.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate without a `ferry://<site>/<node>` URI SAN.
    #[error("certificate has no ferry identity (a URI SAN ferry://<site>/<node>); subject: {subject}")]
    NoIdentity {
        /// The certificate's Subject, to tell which certificate it was.
        subject: String,
    },
    /// A `ferry://` URI SAN that is not a valid identity.
    #[error("certificate identity {uri:?} is malformed: {reason}")]
    BadIdentity {
        /// The URI as found in the certificate.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the material, e.g. a key that does not match its
    /// certificate or a CA certificate that is not a usable trust anchor.
    #[error("{what}")]
    Tls {
        /// What was being done, with the files involved.
        what: String,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// A CRL file that cannot be used: none in it, not issued by a CA of the
    /// bundle, or refused by the verifier (bad signature, malformed).
    #[error("CRL file {}: {reason}", .path.display())]
    Crl {
        /// The CRL file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `ferry certs revoke` was given a certificate this CA did not issue.
    #[error("certificate {} was not issued by the CA in {} (its issuer is {issuer}); revoke it with its own CA", .cert.display(), .ca.display())]
    NotIssuedBy {
        /// The certificate to revoke.
        cert: PathBuf,
        /// The CA directory.
        ca: PathBuf,
        /// The certificate's issuer.
        issuer: String,
    },
    /// The client-certificate verifier could not be built from the CA file.
    #[error("cannot build a client-certificate verifier from CA file {}", .path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// The config's rule for names that become path components.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !s.starts_with('-')
}

fn check_name(field: &'static str, value: &str) -> Result<(), Error> {
    if valid_name(value) {
        Ok(())
    } else {
        Err(Error::InvalidName { field, value: value.to_owned() })
    }
}

/// x509-parser's nom wrapper to its error type.
fn x509_error(e: x509_parser::nom::Err<X509Error>) -> X509Error {
    match e {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
        x509_parser::nom::Err::Incomplete(_) => X509Error::InvalidCertificate,
    }
}

/// The identity in a peer's leaf certificate (DER), from its
/// `ferry://<site>/<node>` URI SAN.
///
/// This reads the certificate only: call it on a certificate the TLS layer
/// has already verified (e.g. `peer_certificates()[0]` after the handshake).
///
/// # Errors
///
/// [`Error::Parse`] if `der` is not a certificate or its SAN extension is
/// malformed, [`Error::NoIdentity`] if it carries no `ferry://` URI,
/// [`Error::BadIdentity`] if the URI is not `ferry://<site>/<node>` with
/// valid names or if there is more than one.
pub fn identity_from_cert(der: &[u8]) -> Result<Identity, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::Parse { what: "peer certificate".into(), source: x509_error(e) })?;
    let san = cert
        .subject_alternative_name()
        .map_err(|source| Error::Parse { what: format!("subjectAltName of certificate {}", cert.subject()), source })?;
    let mut uris = san.iter().flat_map(|ext| ext.value.general_names.iter()).filter_map(|n| match n {
        GeneralName::URI(u) if u.starts_with(IDENTITY_SCHEME) => Some(*u),
        _ => None,
    });
    let Some(uri) = uris.next() else {
        return Err(Error::NoIdentity { subject: cert.subject().to_string() });
    };
    if let Some(other) = uris.next() {
        return Err(Error::BadIdentity {
            uri: uri.to_owned(),
            reason: format!("the certificate also names {other:?}; exactly one identity is allowed"),
        });
    }
    parse_identity(uri)
}

fn parse_identity(uri: &str) -> Result<Identity, Error> {
    let bad = |reason: String| Error::BadIdentity { uri: uri.to_owned(), reason };
    let rest = &uri[IDENTITY_SCHEME.len()..];
    let Some((site, node)) = rest.split_once('/') else {
        return Err(bad("expected ferry://<site>/<node>".into()));
    };
    for (field, value) in [("site", site), ("node", node)] {
        if !valid_name(value) {
            return Err(bad(format!(
                "{field} {value:?} must be 1-64 characters of A-Z a-z 0-9 - _, not starting with '-'"
            )));
        }
    }
    Ok(Identity { site: site.to_owned(), node: node.to_owned() })
}

#[cfg(test)]
mod tests;

/// Classify a failed TLS handshake over TCP (tokio-rustls) for logs and the
/// `reason` label, from rustls's error type when the I/O error carries one
/// (our side refused the peer, or the peer's alert said why it refused
/// ours), else from the I/O error's kind.
pub fn classify_tls_error(e: &std::io::Error) -> &'static str {
    if let Some(reason) = tls_failure(e) {
        return reason;
    }
    match e.kind() {
        std::io::ErrorKind::TimedOut => "timeout",
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe => "aborted",
        _ => "tls",
    }
}

/// The `reason` of an I/O error that is a TLS refusal, by either side: a
/// rustls error (TCP), or a QUIC connection closed with a TLS alert's code.
/// `None` for an error that is not about TLS (reset, timeout, ...).
pub fn tls_failure(e: &std::io::Error) -> Option<&'static str> {
    let inner = e.get_ref()?;
    if let Some(r) = inner.downcast_ref::<rustls::Error>() {
        return Some(rustls_reason(r));
    }
    let conn = if let Some(c) = inner.downcast_ref::<quinn::ConnectionError>() {
        c
    } else if let Some(quinn::ReadError::ConnectionLost(c)) = inner.downcast_ref::<quinn::ReadError>() {
        c
    } else if let Some(quinn::WriteError::ConnectionLost(c)) = inner.downcast_ref::<quinn::WriteError>() {
        c
    } else {
        return None;
    };
    quic_tls_reason(conn)
}

/// Whether a TLS failure ([`tls_failure`]) is the peer's refusal of this
/// node (its alert, or its QUIC close with an alert's code) rather than this
/// node's refusal of the peer's certificate.
pub fn refused_by_peer(e: &std::io::Error) -> bool {
    let Some(inner) = e.get_ref() else { return false };
    if let Some(r) = inner.downcast_ref::<rustls::Error>() {
        return matches!(r, rustls::Error::AlertReceived(_));
    }
    let conn = inner.downcast_ref::<quinn::ConnectionError>().or_else(|| {
        match (inner.downcast_ref::<quinn::ReadError>(), inner.downcast_ref::<quinn::WriteError>()) {
            (Some(quinn::ReadError::ConnectionLost(c)), _) | (_, Some(quinn::WriteError::ConnectionLost(c))) => Some(c),
            _ => None,
        }
    });
    matches!(conn, Some(quinn::ConnectionError::ConnectionClosed(_)))
}

/// Classify a failed QUIC handshake for logs and the `reason` label: from
/// the TLS alert in the connection's error code (QUIC carries an alert as
/// CRYPTO_ERROR 0x100 + alert, RFC 9001 §4.8), whichever side sent it.
pub fn classify_quic(e: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError as Q;
    if let Some(reason) = quic_tls_reason(e) {
        return reason;
    }
    match e {
        Q::TimedOut => "timeout",
        Q::Reset | Q::ApplicationClosed(_) | Q::LocallyClosed => "aborted",
        _ => "tls",
    }
}

fn quic_tls_reason(e: &quinn::ConnectionError) -> Option<&'static str> {
    use quinn::ConnectionError as Q;
    let code = match e {
        Q::TransportError(t) => u64::from(t.code),
        Q::ConnectionClosed(c) => u64::from(c.error_code),
        _ => return None,
    };
    let alert = u8::try_from(code.checked_sub(0x100)?).ok()?;
    Some(alert_reason(rustls::AlertDescription::from(alert)))
}

fn rustls_reason(r: &rustls::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match r {
        // UnknownIssuer: no trusted CA of that name; BadSignature: a CA of
        // the same name but another key. Either way not this deployment's.
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => "unknown_ca",
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "expired",
        E::InvalidCertificate(C::Revoked) => "certificate_revoked",
        E::NoCertificatesPresented => "no_client_cert",
        E::NoApplicationProtocol => "alpn",
        E::AlertReceived(a) => alert_reason(*a),
        _ => "tls",
    }
}

fn alert_reason(a: rustls::AlertDescription) -> &'static str {
    use rustls::AlertDescription as A;
    match a {
        // rustls answers a certificate signed by another key of the same CA
        // name (BadSignature) with decrypt_error.
        A::UnknownCA | A::BadCertificate | A::DecryptError => "unknown_ca",
        A::CertificateExpired => "expired",
        A::CertificateRevoked => "certificate_revoked",
        A::CertificateRequired => "no_client_cert",
        A::NoApplicationProtocol => "alpn",
        _ => "tls",
    }
}

/// Whether a failed dial is the receiver's certificate not naming the
/// address dialled (or `server_name`): rustls's error type over TCP, its
/// text where quinn gives only text.
pub fn is_name_mismatch(e: &std::io::Error) -> bool {
    use rustls::{CertificateError as C, Error as E};
    if let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
        return matches!(r, E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }));
    }
    let t = e.to_string().to_ascii_lowercase();
    t.contains("notvalidforname") || t.contains("not valid for name")
}
