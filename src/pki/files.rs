//! Reading PEM certificates and keys, and writing new files with fixed modes.

use std::fs::{self, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::Error;

/// Mode of private keys: owner read/write only.
pub(super) const KEY_MODE: u32 = 0o600;
/// Mode of certificates: world-readable.
pub(super) const CERT_MODE: u32 = 0o644;

/// Every certificate in a PEM file, in file order: a leaf, a chain, or a CA
/// bundle (several trust anchors, e.g. old and new CA during a rotation).
/// Blocks of other kinds (keys, CRLs) are skipped.
///
/// # Errors
///
/// [`Error::Read`] if the file cannot be read (missing, permissions),
/// [`Error::Pem`] if it is not well-formed PEM, [`Error::NoCertificate`] if
/// it holds no `CERTIFICATE` block (the message says what it holds instead).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    read_certs(path, "certificate file")
}

/// The first private key in a PEM file: PKCS#8 (`PRIVATE KEY`), SEC1
/// (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`). Encrypted keys are not
/// supported.
///
/// # Errors
///
/// [`Error::Read`] if the file cannot be read, [`Error::Pem`] if it is not
/// well-formed PEM, [`Error::NoKey`] if it holds no private key (the message
/// says what it holds instead, e.g. a certificate).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    read_key(path, "private key file")
}

/// [`load_certs`] naming the file's role (`what`) in errors.
pub(super) fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error(path, what, source))?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            what,
            path: path.to_owned(),
            note: holds_instead(&bytes, SectionKind::Certificate),
        });
    }
    Ok(certs)
}

/// [`load_key`] naming the file's role (`what`) in errors.
pub(super) fn read_key(path: &Path, what: &'static str) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = read(path, what)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => {
            Err(Error::NoKey { what, path: path.to_owned(), note: holds_instead(&bytes, SectionKind::PrivateKey) })
        }
        Err(source) => Err(pem_error(path, what, source)),
    }
}

/// Every CRL (`X509 CRL` block) in a PEM file, in file order.
///
/// # Errors
///
/// [`Error::Read`], [`Error::Pem`] as for certificates; [`Error::Crl`] if the
/// file holds no CRL (saying what it holds instead).
pub(super) fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let what = "CRL file";
    let bytes = read(path, what)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error(path, what, source))?;
    if crls.is_empty() {
        let note = holds_instead(&bytes, SectionKind::Crl);
        return Err(Error::Crl { path: path.to_owned(), reason: format!("no CRL in it{note}") });
    }
    Ok(crls)
}

/// Replace `path` with `contents` atomically and durably (a temporary file
/// beside it, fsync, rename, directory fsync): a CRL is rewritten in place,
/// and a reader must see the old list or the new one, never half of one.
pub(super) fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let err = |source| Error::Write { path: path.to_owned(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(err)?;
    let written = f
        .set_permissions(Permissions::from_mode(mode))
        .and_then(|_| f.write_all(contents))
        .and_then(|_| f.sync_all())
        .and_then(|_| fs::rename(&tmp, path))
        .and_then(|_| fs::File::open(dir)?.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(err)
}

pub(super) fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|source| Error::Read { what, path: path.to_owned(), source })
}

fn pem_error(path: &Path, what: &'static str, source: pem::Error) -> Error {
    Error::Pem { what, path: path.to_owned(), source }
}

/// Why a file holds none of the `wanted` blocks, as a note for the message.
fn holds_instead(bytes: &[u8], wanted: SectionKind) -> &'static str {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return " (the file is empty)";
    }
    if wanted != SectionKind::Certificate
        && bytes.windows(b"ENCRYPTED PRIVATE KEY".len()).any(|w| w == b"ENCRYPTED PRIVATE KEY")
    {
        return " (it holds an encrypted key; ferry needs it unencrypted)";
    }
    let kinds = <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes).filter_map(|s| s.ok().map(|s| s.0));
    for kind in kinds {
        let note = match kind {
            SectionKind::Certificate => " (it holds a certificate)",
            SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey => {
                " (it holds a private key)"
            }
            SectionKind::PublicKey => " (it holds a public key)",
            SectionKind::Csr => " (it holds a certificate signing request)",
            SectionKind::Crl => " (it holds a CRL)",
            _ => continue,
        };
        return note;
    }
    " (it has no PEM blocks ferry reads; DER files are not accepted)"
}

/// Fail with [`Error::Exists`] if any of `paths` exists.
pub(super) fn check_absent(paths: &[&Path]) -> Result<(), Error> {
    for p in paths {
        if fs::symlink_metadata(p).is_ok() {
            return Err(Error::Exists { path: p.to_path_buf() });
        }
    }
    Ok(())
}

pub(super) fn create_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|source| Error::Write { path: dir.to_owned(), source })
}

/// Files written so far by one operation; removed again unless
/// [`NewFiles::keep`] is called, so a failure leaves no half-made set.
#[derive(Default)]
pub(super) struct NewFiles {
    written: Vec<PathBuf>,
}

impl NewFiles {
    /// Create `path` (never replacing an existing file) with exactly `mode`,
    /// whatever the umask, and make its contents durable.
    pub(super) fn write(&mut self, path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
        let err = |source| Error::Write { path: path.to_owned(), source };
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists { path: path.to_owned() }
            } else {
                err(e)
            }
        })?;
        self.written.push(path.to_owned());
        f.set_permissions(Permissions::from_mode(mode)).map_err(err)?;
        f.write_all(contents).map_err(err)?;
        f.sync_all().map_err(err)
    }

    /// The operation succeeded: leave the files in place.
    pub(super) fn keep(mut self) {
        self.written.clear();
    }
}

impl Drop for NewFiles {
    fn drop(&mut self) {
        for p in &self.written {
            let _ = fs::remove_file(p);
        }
    }
}

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
