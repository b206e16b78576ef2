//! TLS material that can be replaced while the node runs (on reload).
//!
//! The files named by `[tls]` are read into a [`Material`] once; every TLS
//! config the node uses (collector listeners, link receivers, uplinks) is a
//! [`Derived`] value built from the [`Live`] material and rebuilt on its first
//! use after a replacement. New handshakes use the new material; sessions
//! already established keep theirs (a TLS session is never re-verified).
//!
//! A replacement is checked before it is made ([`Material::load_checked`]):
//! the key must match the certificate and the CA bundle must verify it, else
//! the node keeps what it has. Operators rotate by editing files then
//! reloading; a half-done edit must not take the links down.

use std::sync::{Arc, Mutex, RwLock};

use rustls::RootCertStore;
use std::path::Path;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;

use super::files::{read_certs, read_crls, read_key, TlsFiles};
use super::Error;

/// The CA bundle, the node's certificate chain and key, as read.
pub struct Material {
    /// Where it was read from.
    pub files: TlsFiles,
    /// The CA bundle's certificates, in file order.
    pub ca: Vec<CertificateDer<'static>>,
    /// The same, as trust anchors.
    pub roots: RootCertStore,
    /// This node's certificate, then any intermediates.
    pub certs: Vec<CertificateDer<'static>>,
    /// The revocation lists of `files.crl`, in order.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    pub(super) key: PrivateKeyDer<'static>,
}

/// One loaded certificate's expiry, for the metric and `ferry status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// `node` (this node's certificate) or `ca` (a certificate of the bundle).
    pub role: &'static str,
    /// The certificate's subject, e.g. `CN=ferry-ca-2026, O=ferry`.
    pub subject: String,
    /// Seconds since the epoch.
    pub not_after: i64,
}

impl Material {
    /// Read the three files.
    ///
    /// # Errors
    ///
    /// The errors of [`load_certs`](super::load_certs) and
    /// [`load_key`](super::load_key), naming the file; [`Error::Tls`] when a
    /// CA certificate is not a usable trust anchor.
    pub fn load(files: &TlsFiles) -> Result<Material, Error> {
        let ca = read_certs(&files.ca, "CA file")?;
        let mut roots = RootCertStore::empty();
        for (i, cert) in ca.iter().enumerate() {
            roots.add(cert.clone()).map_err(|source| Error::Tls {
                what: format!("certificate #{} in CA file {} is not a usable trust anchor", i + 1, files.ca.display()),
                source,
            })?;
        }
        let mut crls = Vec::new();
        for path in &files.crl {
            for crl in read_crls(path)? {
                check_crl_issuer(path, &crl, &ca)?;
                crls.push(crl);
            }
        }
        Ok(Material {
            files: files.clone(),
            ca,
            roots,
            certs: read_certs(&files.cert, "certificate file")?,
            crls,
            key: read_key(&files.key, "private key file")?,
        })
    }

    /// [`load`](Self::load), then check that the key is the certificate's and
    /// that the CA bundle verifies the certificate now: what a reload demands
    /// before it replaces working material.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load); [`Error::Tls`] naming the files when the key
    /// does not match or the bundle does not verify the certificate.
    pub fn load_checked(files: &TlsFiles) -> Result<Material, Error> {
        let m = Material::load(files)?;
        m.check()?;
        Ok(m)
    }

    /// The key matches the certificate, and the bundle verifies the chain.
    pub fn check(&self) -> Result<(), Error> {
        rustls::sign::CertifiedKey::from_der(self.certs.clone(), self.key(), &provider()).map_err(|source| {
            Error::Tls {
                what: format!(
                    "cannot use certificate {} with key {}",
                    self.files.cert.display(),
                    self.files.key.display()
                ),
                source,
            }
        })?;
        // The verifier peers meet, CRLs included: the CRLs' signatures are
        // checked when a certificate of their CA is, so our own certificate
        // shows a CRL the CA did not sign before any peer meets it (which
        // would refuse every peer of that CA). Our own revocation is not a
        // reason to keep old material: `own_revoked` reports it.
        let verifier = client_verifier(self, false)?;
        let (leaf, chain) = self.certs.split_first().expect("read_certs returns at least one");
        match verifier.verify_client_cert(leaf, chain, UnixTime::now()) {
            Ok(_) | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => Ok(()),
            Err(rustls::Error::InvalidCertRevocationList(e)) => Err(Error::Crl {
                path: self.files.crl.first().cloned().unwrap_or_default(),
                reason: format!("not usable with the CA bundle {}: {e:?}", self.files.ca.display()),
            }),
            Err(source) => Err(Error::Tls {
                what: format!(
                    "certificate {} is not verified by the CA bundle {}",
                    self.files.cert.display(),
                    self.files.ca.display()
                ),
                source,
            }),
        }
    }

    /// Verify a peer's chain (leaf first) as a handshake now would: against
    /// the CA bundle and the CRLs. A session established before a reload
    /// is checked with this against the reloaded material.
    pub fn verify_peer(&self, chain: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Err(rustls::Error::NoCertificatesPresented);
        };
        let verifier = client_verifier(self, false)
            .map_err(|e| rustls::Error::General(format!("cannot build the verifier: {e}")))?;
        verifier.verify_client_cert(leaf, rest, UnixTime::now()).map(|_| ())
    }

    /// Whether a CRL in force revokes this node's own certificate (its peers
    /// will refuse it: worth an error in the log at start and reload).
    pub fn own_revoked(&self) -> bool {
        matches!(
            self.verify_peer(&self.certs),
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked))
        )
    }

    /// Every loaded certificate's expiry: the node's leaf, then each CA.
    pub fn expiries(&self) -> Vec<Expiry> {
        let mut out = Vec::new();
        let mut one = |role: &'static str, der: &CertificateDer<'_>| {
            if let Ok((_, c)) = x509_parser::parse_x509_certificate(der) {
                out.push(Expiry {
                    role,
                    subject: c.subject().to_string(),
                    not_after: c.validity().not_after.timestamp(),
                });
            }
        };
        if let Some(leaf) = self.certs.first() {
            one("node", leaf);
        }
        for c in &self.ca {
            one("ca", c);
        }
        out
    }

    /// The same certificates and key (whatever the paths).
    pub fn same_as(&self, other: &Material) -> bool {
        self.ca == other.ca
            && self.certs == other.certs
            && self.crls == other.crls
            && self.key.secret_der() == other.key.secret_der()
    }

    pub(super) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// A CRL must come from a CA of the bundle: one from elsewhere would never
/// apply (its issuer matches no chain), and the operator would believe a
/// certificate revoked that is not.
fn check_crl_issuer(
    path: &Path,
    crl: &CertificateRevocationListDer<'_>,
    ca: &[CertificateDer<'_>],
) -> Result<(), Error> {
    let (_, parsed) = x509_parser::parse_x509_crl(crl)
        .map_err(|e| Error::Crl { path: path.to_owned(), reason: format!("cannot parse it: {e}") })?;
    let issuer = parsed.issuer();
    let known = ca
        .iter()
        .any(|c| x509_parser::parse_x509_certificate(c).is_ok_and(|(_, c)| c.subject().as_raw() == issuer.as_raw()));
    if known {
        Ok(())
    } else {
        Err(Error::Crl {
            path: path.to_owned(),
            reason: format!("issued by {issuer}, which is not a CA of the bundle"),
        })
    }
}

/// The material in force, replaceable.
pub struct Live {
    current: RwLock<Arc<Material>>,
    /// The generation, bumped by every replacement: configs built from the
    /// material compare it, and tasks that must act on a replacement at once
    /// (a receiver ends the sessions of peers a new CRL revokes) watch it.
    replaced: tokio::sync::watch::Sender<u64>,
}

impl Live {
    /// Material put in force at start.
    pub fn new(m: Material) -> Arc<Live> {
        let (replaced, _) = tokio::sync::watch::channel(1);
        Arc::new(Live { current: RwLock::new(Arc::new(m)), replaced })
    }

    /// Changes whenever the material is replaced.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.replaced.subscribe()
    }

    /// The material in force.
    pub fn current(&self) -> Arc<Material> {
        self.current.read().expect("not poisoned").clone()
    }

    /// Bumped by every [`replace`](Self::replace).
    pub fn generation(&self) -> u64 {
        *self.replaced.borrow()
    }

    /// Put `m` in force: handshakes from now on use it.
    pub fn replace(&self, m: Material) {
        *self.current.write().expect("not poisoned") = Arc::new(m);
        self.replaced.send_modify(|g| *g += 1);
    }

    /// The paths in force.
    pub fn files(&self) -> TlsFiles {
        self.current().files.clone()
    }
}

type Build<T> = Box<dyn Fn(&Material) -> Result<T, Error> + Send + Sync>;

/// A TLS config built from the live material, rebuilt (once) on its first
/// use after the material was replaced.
pub struct Derived<T: Clone> {
    live: Arc<Live>,
    build: Build<T>,
    cache: Mutex<(u64, T)>,
}

impl<T: Clone> Derived<T> {
    /// Build it now from what is in force (a failure fails the caller's start).
    pub fn new(
        live: Arc<Live>,
        build: impl Fn(&Material) -> Result<T, Error> + Send + Sync + 'static,
    ) -> Result<Derived<T>, Error> {
        let generation = live.generation();
        let first = build(&live.current())?;
        Ok(Derived { live, build: Box::new(build), cache: Mutex::new((generation, first)) })
    }

    /// The material it is built from.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The config for a new handshake.
    pub fn get(&self) -> T {
        let g = self.live.generation();
        let mut c = self.cache.lock().expect("not poisoned");
        if c.0 != g {
            match (self.build)(&self.live.current()) {
                Ok(t) => *c = (g, t),
                // Checked before it was put in force: cannot fail but for a bug.
                Err(e) => {
                    tracing::error!(error = %e, "cannot build a TLS config from the reloaded material; keeping the previous one");
                    c.0 = g;
                }
            }
        }
        c.1.clone()
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
pub(super) fn verifier_error(m: &Material, source: rustls::server::VerifierBuilderError) -> Error {
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
