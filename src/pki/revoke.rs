//! Taking trust back: the deployment CA's revocation list (`crl.pem` in the
//! CA directory), made and re-signed with rcgen, read with x509-parser.
//!
//! The list only grows: revoking a certificate re-signs the whole list with
//! the certificates revoked before, their dates and reasons kept, and a CRL
//! number one higher. Nodes read it through `[tls] crl` (at start and on
//! reload) and refuse the listed certificates in every handshake.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateRevocationListParams, KeyPair, RevocationReason, RevokedCertParams, SerialNumber};

use super::files::{self, CERT_MODE};
use super::issue::{issuer_of, signing_ca, unusable};
use super::{identity_from_cert, x509_error, Error, Identity, Validity};

/// rcgen's time type (the `time` crate's, which rcgen does not re-export).
macro_rules! offset {
    ($t:expr) => {
        rcgen::date_time_ymd(1970, 1, 1) + $t.duration_since(UNIX_EPOCH).unwrap_or_default()
    };
}

/// Why a certificate is revoked (RFC 5280 CRLReason), as `--reason` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The node's key may be known to someone else.
    KeyCompromise,
    /// The node was retired.
    CessationOfOperation,
    /// The node has a new certificate.
    Superseded,
    /// None given.
    Unspecified,
}

impl Reason {
    fn rcgen(self) -> RevocationReason {
        match self {
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::Unspecified => RevocationReason::Unspecified,
        }
    }
}

/// What `revoke` did.
#[derive(Debug)]
pub struct Revoked {
    /// The certificate's identity, when it has one.
    pub identity: Option<Identity>,
    /// Its serial number, hex.
    pub serial: String,
    /// When it was revoked (now, or the earlier date if it already was).
    pub at: SystemTime,
    /// False when the list already held it (nothing was written).
    pub new: bool,
    /// The list written: `<ca dir>/crl.pem`.
    pub crl: PathBuf,
    /// How many certificates the list now revokes.
    pub count: usize,
}

/// Add the certificate in `cert` (its first, leaf certificate) to the CA's
/// revocation list `ca_dir/crl.pem`, creating the list if there is none.
///
/// # Errors
///
/// The CA files' errors as for [`issue`](super::issue); [`Error::NotIssuedBy`]
/// if this CA did not issue the certificate; [`Error::Crl`] if the existing
/// list cannot be read or is not this CA's; [`Error::Write`] if the new list
/// cannot be written (the old one then stays whole).
pub fn revoke(ca_dir: &Path, cert: &Path, reason: Reason) -> Result<Revoked, Error> {
    let (ca_pem, ca_key, crl_path) = (ca_dir.join("ca.pem"), ca_dir.join("ca.key"), ca_dir.join("crl.pem"));
    let ca_certs = files::read_certs(&ca_pem, "CA certificate")?;
    let key = KeyPair::try_from(&files::read_key(&ca_key, "CA key")?)
        .map_err(|source| Error::UnusableKey { path: ca_key.clone(), source })?;
    let ca = signing_ca(&ca_certs, &key, &ca_pem, &ca_key)?;
    if let Ok(Some(ku)) = ca.key_usage() {
        if !ku.value.crl_sign() {
            return Err(unusable(&ca_pem, "its key usage lacks cRLSign"));
        }
    }

    let leaf = files::read_certs(cert, "certificate to revoke")?.remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| Error::Parse { what: format!("certificate {}", cert.display()), source: x509_error(e) })?;
    if parsed.issuer().as_raw() != ca.subject().as_raw() {
        return Err(Error::NotIssuedBy {
            cert: cert.to_owned(),
            ca: ca_dir.to_owned(),
            issuer: parsed.issuer().to_string(),
        });
    }
    let serial = parsed.raw_serial().to_vec();
    let identity = identity_from_cert(&leaf).ok();

    let now = SystemTime::now();
    let (mut entries, number) = existing(&crl_path, &ca)?;
    let hex = to_hex(&serial);
    if let Some(e) = entries.iter().find(|e| e.serial_number.as_ref() == serial.as_slice()) {
        let at = UNIX_EPOCH + Duration::from_secs(e.revocation_time.unix_timestamp().max(0) as u64);
        return Ok(Revoked { identity, serial: hex, at, new: false, crl: crl_path, count: entries.len() });
    }
    entries.push(RevokedCertParams {
        serial_number: SerialNumber::from_slice(&serial),
        revocation_time: offset!(now),
        reason_code: Some(reason.rcgen()),
        invalidity_date: None,
    });

    // The list means something as long as the CA does: it says so until then
    // (ferry does not refuse an old list; other tools may).
    let ca_end = UNIX_EPOCH + Duration::from_secs(ca.validity().not_after.timestamp().max(0) as u64);
    let next_update = ca_end.max(now + Duration::from_secs(86_400));
    let issuer = issuer_of(&ca, &key, &ca_pem, &Validity { not_before: now, not_after: now })?;
    let count = entries.len();
    let crl = CertificateRevocationListParams {
        this_update: offset!(now),
        next_update: offset!(next_update),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: entries,
        key_identifier_method: issuer.params().key_identifier_method.clone(),
    }
    .signed_by(&issuer, &key)
    .map_err(|source| Error::Generate { what: format!("the revocation list {}", crl_path.display()), source })?;
    let pem = crl.pem().map_err(|source| Error::Generate { what: "the revocation list's PEM".into(), source })?;
    files::replace(&crl_path, pem.as_bytes(), CERT_MODE)?;
    Ok(Revoked { identity, serial: hex, at: now, new: true, crl: crl_path, count })
}

/// The entries of the list at `path` (none if there is no file) and the
/// CRL number the next list takes.
fn existing(
    path: &Path,
    ca: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<(Vec<RevokedCertParams>, u64), Error> {
    if !path.exists() {
        return Ok((Vec::new(), 1));
    }
    let ders = files::read_crls(path)?;
    if ders.len() != 1 {
        return Err(Error::Crl { path: path.to_owned(), reason: format!("holds {} lists; expected one", ders.len()) });
    }
    let bad = |reason: String| Error::Crl { path: path.to_owned(), reason };
    let (_, crl) = x509_parser::parse_x509_crl(&ders[0]).map_err(|e| bad(format!("cannot parse it: {e}")))?;
    if crl.issuer().as_raw() != ca.subject().as_raw() {
        return Err(bad(format!("issued by {}, not by this CA ({})", crl.issuer(), ca.subject())));
    }
    let mut out = Vec::new();
    for r in crl.iter_revoked_certificates() {
        let reason_code = r.reason_code().map(|(_, c)| reason_of(c.0));
        out.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(r.raw_serial()),
            revocation_time: offset!(UNIX_EPOCH + Duration::from_secs(r.revocation_date.timestamp().max(0) as u64)),
            reason_code,
            invalidity_date: None,
        });
    }
    let next = crl.crl_number().and_then(|n| u64::try_from(n).ok()).unwrap_or(0).saturating_add(1);
    Ok((out, next))
}

fn reason_of(code: u8) -> RevocationReason {
    match code {
        1 => RevocationReason::KeyCompromise,
        2 => RevocationReason::CaCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        9 => RevocationReason::PrivilegeWithdrawn,
        10 => RevocationReason::AaCompromise,
        _ => RevocationReason::Unspecified,
    }
}

/// Certificates a list revokes, by serial (hex), with their revocation time.
///
/// # Errors
///
/// As the CRL files are read ([`Error::Read`], [`Error::Pem`], [`Error::Crl`]).
pub fn revoked_serials(paths: &[PathBuf]) -> Result<Vec<(String, SystemTime)>, Error> {
    let mut out = Vec::new();
    for path in paths {
        for der in files::read_crls(path)? {
            let (_, crl) = x509_parser::parse_x509_crl(&der)
                .map_err(|e| Error::Crl { path: path.clone(), reason: format!("cannot parse it: {e}") })?;
            for r in crl.iter_revoked_certificates() {
                let at = UNIX_EPOCH + Duration::from_secs(r.revocation_date.timestamp().max(0) as u64);
                out.push((to_hex(r.raw_serial()), at));
            }
        }
    }
    Ok(out)
}

/// A certificate's serial as [`revoke`] and [`revoked_serials`] write it.
pub fn serial_hex(der: &[u8]) -> Option<String> {
    x509_parser::parse_x509_certificate(der).ok().map(|(_, c)| to_hex(c.raw_serial()))
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
