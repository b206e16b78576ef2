//! rustls configs for the link: TLS 1.3 only, `ring`, mutual authentication
//! against the deployment CA.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::files::{read_certs, read_key, TlsFiles};
use super::live::{client_verifier, provider, verifier_error, Material};
use super::Error;

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
/// listener (`optional_client_cert`). An optional certificate that is
/// presented must still verify.
///
/// # Errors
///
/// As [`server_config`].
pub fn collector_server_config(files: &TlsFiles, optional_client_cert: bool) -> Result<ServerConfig, Error> {
    collector_server_config_from(&Material::load(files)?, optional_client_cert)
}

/// [`collector_server_config`] from material already read.
pub fn collector_server_config_from(m: &Material, optional_client_cert: bool) -> Result<ServerConfig, Error> {
    let provider = provider();
    let (files, certs, key) = (&m.files, m.certs.clone(), m.key());
    let verifier = client_verifier(m, optional_client_cert)?;
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
