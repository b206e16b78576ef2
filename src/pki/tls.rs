//! rustls configs for the link: TLS 1.3 only, `ring`, mutual authentication
//! against the deployment CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::files::{read_certs, read_key};
use super::live::Material;
use super::Error;

/// Paths of a node's TLS material (config section `[tls]` maps onto this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificates to trust for peers: one, or a bundle of several
    /// during a CA rotation. Usually `/etc/ferry/ca.pem`.
    pub ca: PathBuf,
    /// This node's certificate (leaf first, then any intermediates). Usually
    /// `/etc/ferry/node.pem`.
    pub cert: PathBuf,
    /// This node's private key. Usually `/etc/ferry/node.key`.
    pub key: PathBuf,
    /// Certificate revocation lists (PEM `X509 CRL`), e.g.
    /// `/etc/ferry/crl.pem` from `ferry certs revoke`: a peer or collector
    /// whose certificate one of them lists is refused (`certificate_revoked`).
    /// A certificate from a CA no list covers is accepted (several CAs
    /// during a rotation, only one of them revoking).
    pub crl: Vec<PathBuf>,
}

/// A server config that requires every client to present a certificate
/// chaining to `files.ca`, and presents `files.cert`. TLS 1.3 only, `ring`
/// provider, ALPN protocols `alpn` (a client that offers ALPN but none of
/// these is refused; one that offers no ALPN at all is not).
///
/// The client's identity is then
/// `identity_from_cert(&conn.peer_certificates()[0])`.
///
/// # Errors
///
/// The [`load_certs`](super::load_certs) / [`load_key`](super::load_key)
/// errors for each file, naming it; [`Error::Tls`] if a CA certificate is
/// not a usable trust anchor or the key does not match the certificate;
/// [`Error::Verifier`] if no trust anchor could be built.
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerConfig, Error> {
    server_config_from(&Material::load(files)?, alpn)
}

/// [`server_config`] from material already read (see [`super::live`]).
pub fn server_config_from(m: &Material, alpn: &[&[u8]]) -> Result<ServerConfig, Error> {
    let provider = provider();
    let (files, certs, key) = (&m.files, m.certs.clone(), m.key());
    let verifier = client_verifier(m, false)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| tls_error("cannot select TLS 1.3 with the ring provider", source))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|source| tls_error(&mismatch(files), source))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A server config for site collectors speaking syslog over TLS (RFC 5425)
/// or RELP over TLS: the same CA and node certificate as the link, but TLS
/// 1.2 as well as 1.3 (rsyslog's and syslog-ng's TLS libraries on older
/// hosts), no ALPN, and the client certificate required or optional per
/// listener. An optional certificate that is presented must still verify.
///
/// # Errors
///
/// As [`server_config`].
pub fn collector_server_config(
    files: &TlsFiles,
    client_cert: crate::config::ClientCert,
) -> Result<ServerConfig, Error> {
    collector_server_config_from(&Material::load(files)?, client_cert)
}

/// [`collector_server_config`] from material already read.
pub fn collector_server_config_from(
    m: &Material,
    client_cert: crate::config::ClientCert,
) -> Result<ServerConfig, Error> {
    let provider = provider();
    let (files, certs, key) = (&m.files, m.certs.clone(), m.key());
    let verifier = client_verifier(m, client_cert == crate::config::ClientCert::Optional)?;
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| tls_error("cannot select TLS 1.2 and 1.3 with the ring provider", source))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|source| tls_error(&mismatch(files), source))
}

/// A client config that trusts only `files.ca` (not the system store) and
/// authenticates with `files.cert` and `files.key`. TLS 1.3 only, `ring`
/// provider, ALPN protocols `alpn`.
///
/// The server is verified against the name the caller dials (a DNS or IP
/// SAN in its certificate); its ferry identity is
/// `identity_from_cert(&conn.peer_certificates()[0])`.
///
/// # Errors
///
/// As [`server_config`].
pub fn client_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ClientConfig, Error> {
    client_config_from(&Material::load(files)?, alpn)
}

/// [`client_config`] from material already read.
pub fn client_config_from(m: &Material, alpn: &[&[u8]]) -> Result<ClientConfig, Error> {
    let (files, certs, key) = (&m.files, m.certs.clone(), m.key());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(m.roots.clone()), provider())
        .with_crls(m.crls.iter().cloned())
        .allow_unknown_revocation_status()
        .build()
        .map_err(|source| verifier_error(m, source))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| tls_error("cannot select TLS 1.3 with the ring provider", source))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(|source| tls_error(&mismatch(files), source))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client config for a collector-side tool (`ferry send --transport tls`):
/// trusts only the CA file `ca`, presents `own` (certificate and key files)
/// when given, TLS 1.2 or 1.3, no ALPN.
///
/// # Errors
///
/// As [`client_config`].
pub fn collector_client_config(ca: &Path, own_files: Option<(&Path, &Path)>) -> Result<ClientConfig, Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| tls_error("cannot select TLS 1.2 and 1.3 with the ring provider", source))?
        .with_root_certificates(roots(ca)?);
    match own_files {
        Some((cert, key)) => {
            let (certs, k) = (read_certs(cert, "certificate file")?, read_key(key, "private key file")?);
            builder.with_client_auth_cert(certs, k).map_err(|source| {
                tls_error(&format!("cannot use certificate {} with key {}", cert.display(), key.display()), source)
            })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The verifier of client certificates: chains to the CA bundle, not listed
/// in a CRL of the material (a certificate from a CA no CRL covers passes).
/// `optional`: a client may present none (a presented one must still verify).
pub(super) fn client_verifier(m: &Material, optional: bool) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(m.roots.clone()), provider())
        .with_crls(m.crls.iter().cloned())
        .allow_unknown_revocation_status();
    if optional {
        b = b.allow_unauthenticated();
    }
    b.build().map_err(|source| verifier_error(m, source))
}

/// A builder error, named by the file at fault: a CRL rustls cannot parse
/// names the CRL files, anything else the CA file.
fn verifier_error(m: &Material, source: rustls::server::VerifierBuilderError) -> Error {
    use rustls::server::VerifierBuilderError as V;
    match &source {
        V::InvalidCrl(e) => Error::Crl {
            path: m.files.crl.first().cloned().unwrap_or_default(),
            reason: format!("rustls cannot use it: {e:?}"),
        },
        _ => Error::Verifier { path: m.files.ca.clone(), source },
    }
}

pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the CA file as a trust anchor; all of them must be.
fn roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in read_certs(path, "CA file")?.into_iter().enumerate() {
        roots.add(cert).map_err(|source| {
            tls_error(
                &format!("certificate #{} in CA file {} is not a usable trust anchor", i + 1, path.display()),
                source,
            )
        })?;
    }
    Ok(roots)
}

fn mismatch(files: &TlsFiles) -> String {
    format!("cannot use certificate {} with key {}", files.cert.display(), files.key.display())
}

fn tls_error(what: &str, source: rustls::Error) -> Error {
    Error::Tls { what: what.to_owned(), source }
}
