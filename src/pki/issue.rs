//! Making a CA and issuing node certificates with rcgen.

use std::net::IpAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose,
    Ia5String, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, PrintableString, SanType, SerialNumber,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;

use super::files::{self, NewFiles, CERT_MODE, KEY_MODE};
use super::{check_name, x509_error, Error, Identity, Validity};

/// The latest instant X.509 can express: 9999-12-31T23:59:59Z.
const MAX_X509_SECS: u64 = 253_402_300_799;

/// Create a deployment CA in `out` (created if missing): `ca.pem` (0644)
/// and `ca.key` (0600). `name` becomes the CA's Subject CN.
///
/// # Errors
///
/// [`Error::InvalidName`] for an empty or over-long `name`,
/// [`Error::InvalidValidity`] for an empty window, [`Error::Exists`] if
/// either file is already there (nothing is written then),
/// [`Error::Write`] if `out` or a file cannot be created.
pub fn create_ca(out: &Path, name: &str, validity: &Validity) -> Result<(), Error> {
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Error::InvalidName { field: "CA name", value: name.to_owned() });
    }
    check_validity(validity)?;
    let (cert_path, key_path) = (out.join("ca.pem"), out.join("ca.key"));
    files::check_absent(&[&cert_path, &key_path])?;

    let key = generate_key("the CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "ferry");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, validity);
    let cert = params
        .self_signed(&key)
        .map_err(|source| Error::Generate { what: format!("the CA certificate {name:?}"), source })?;

    files::create_dir(out)?;
    let mut written = NewFiles::default();
    written.write(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
    written.write(&cert_path, cert.pem().as_bytes(), CERT_MODE)?;
    written.keep();
    Ok(())
}

/// Issue a node certificate signed by the CA in `ca_dir` (`ca.pem`,
/// `ca.key`), written to `out` (created if missing) as `node.pem` (0644, the
/// leaf certificate) and `node.key` (0600), plus a copy of `ca.pem` (0644)
/// so the node's directory is complete.
///
/// The identity is the URI SAN `ferry://<site>/<node>`; the Subject is
/// `CN=<node>, O=ferry, OU=<site>`. `dns` and `ips` become DNS and IP SANs,
/// the names the node can be dialled at as a receiver. `ca.pem` may be a
/// bundle: the certificate matching `ca.key` signs, and the whole bundle is
/// copied.
///
/// # Errors
///
/// [`Error::InvalidName`] for a `site` or `node` outside the config's name
/// rule, [`Error::InvalidDnsName`], [`Error::InvalidValidity`] for an empty
/// window or one that ends after the CA's; [`Error::Exists`] if an output
/// file is already there and [`Error::IssueIntoCaDir`] if `out` is
/// `ca_dir` (nothing is written then); the `load_*` errors for the CA's
/// files, [`Error::KeyMismatch`], [`Error::UnusableKey`] and
/// [`Error::UnusableCa`] when they cannot sign; [`Error::Write`].
pub fn issue(
    ca_dir: &Path,
    site: &str,
    node: &str,
    dns: &[String],
    ips: &[IpAddr],
    validity: &Validity,
    out: &Path,
) -> Result<(), Error> {
    check_name("site", site)?;
    check_name("node", node)?;
    let mut sans = vec![SanType::URI(ia5(&Identity { site: site.to_owned(), node: node.to_owned() }.to_string())?)];
    for name in dns {
        sans.push(SanType::DnsName(dns_name(name)?));
    }
    sans.extend(ips.iter().copied().map(SanType::IpAddress));
    check_validity(validity)?;

    let (ca_pem, ca_key) = (ca_dir.join("ca.pem"), ca_dir.join("ca.key"));
    let outputs = [out.join("node.pem"), out.join("node.key"), out.join("ca.pem")];
    if let (Ok(a), Ok(b)) = (ca_dir.canonicalize(), out.canonicalize()) {
        if a == b {
            return Err(Error::IssueIntoCaDir { path: ca_dir.to_owned() });
        }
    }
    files::check_absent(&[&outputs[0], &outputs[1], &outputs[2]])?;

    let bundle = files::read(&ca_pem, "CA certificate")?;
    let ca_certs = files::read_certs(&ca_pem, "CA certificate")?;
    let ca_keypair = KeyPair::try_from(&files::read_key(&ca_key, "CA key")?)
        .map_err(|source| Error::UnusableKey { path: ca_key.clone(), source })?;
    let ca = signing_ca(&ca_certs, &ca_keypair, &ca_pem, &ca_key)?;
    let issuer = issuer_of(&ca, &ca_keypair, &ca_pem, validity)?;

    let key = generate_key("a node key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "ferry");
    params.distinguished_name.push(DnType::OrganizationalUnitName, site);
    params.distinguished_name.push(DnType::CommonName, node);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, validity);
    let cert = params
        .signed_by(&key, &issuer, &ca_keypair)
        .map_err(|source| Error::Generate { what: format!("the certificate for ferry://{site}/{node}"), source })?;

    // Chain building matches issuer to subject byte for byte: make sure the
    // re-encoded CA name is the CA's own.
    let (_, leaf) = x509_parser::parse_x509_certificate(cert.der())
        .map_err(|e| Error::Parse { what: "the newly issued certificate".into(), source: x509_error(e) })?;
    if leaf.issuer().as_raw() != ca.subject().as_raw() {
        return Err(unusable(&ca_pem, "its Subject cannot be reproduced byte for byte (repeated attributes?)"));
    }

    files::create_dir(out)?;
    let mut written = NewFiles::default();
    written.write(&outputs[1], key.serialize_pem().as_bytes(), KEY_MODE)?;
    written.write(&outputs[0], cert.pem().as_bytes(), CERT_MODE)?;
    written.write(&outputs[2], &bundle, CERT_MODE)?;
    written.keep();
    Ok(())
}

/// An rcgen stand-in for the CA certificate `ca`: same Subject, same key,
/// same key identifier, so what it signs chains to `ca`.
/// The certificate of the bundle whose public key is `key`'s: the CA that
/// signs with it (a bundle may hold the old and the new CA).
pub(super) fn signing_ca<'a>(
    ca_certs: &'a [rustls_pki_types::CertificateDer<'static>],
    key: &KeyPair,
    ca_pem: &Path,
    ca_key: &Path,
) -> Result<X509Certificate<'a>, Error> {
    for (i, der) in ca_certs.iter().enumerate() {
        let (_, c) = x509_parser::parse_x509_certificate(der).map_err(|e| Error::Parse {
            what: format!("certificate #{} in {}", i + 1, ca_pem.display()),
            source: x509_error(e),
        })?;
        if c.public_key().raw == key.public_key_der() {
            return Ok(c);
        }
    }
    Err(Error::KeyMismatch { key: ca_key.to_owned(), ca: ca_pem.to_owned() })
}

pub(super) fn issuer_of(
    ca: &X509Certificate<'_>,
    key: &KeyPair,
    path: &Path,
    validity: &Validity,
) -> Result<Certificate, Error> {
    if !ca.is_ca() {
        return Err(unusable(path, "it is not a CA (basicConstraints CA:TRUE is missing)"));
    }
    if let Ok(Some(ku)) = ca.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err(unusable(path, "its key usage lacks keyCertSign"));
        }
    }
    let ca_end = ca.validity().not_after;
    if secs(validity.not_after) > ca_end.timestamp() {
        return Err(Error::InvalidValidity(format!(
            "the certificate would outlive its CA {} (which expires {ca_end}); \
             ask for fewer days or rotate the CA",
            path.display()
        )));
    }

    let mut dn = DistinguishedName::new();
    for rdn in ca.subject().iter_rdn() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(unusable(path, "its Subject has a multi-valued RDN"));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| unusable(path, "its Subject has an attribute OID out of range"))?
            .collect();
        let value = attr.attr_value();
        let text = std::str::from_utf8(value.data).map_err(|_| unusable(path, "its Subject has a non-UTF-8 string"))?;
        let invalid = |_| unusable(path, "its Subject has an invalid string");
        let value = match value.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(PrintableString::try_from(text).map_err(invalid)?),
            Tag::Ia5String => DnValue::Ia5String(Ia5String::try_from(text).map_err(invalid)?),
            t => {
                return Err(unusable(
                    path,
                    &format!("its Subject uses ASN.1 string type {t:?}, which ferry cannot reproduce"),
                ))
            }
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    let key_identifier = ca.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
        _ => None,
    });

    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.key_identifier_method = match key_identifier {
        Some(id) => KeyIdMethod::PreSpecified(id),
        None => KeyIdMethod::Sha256,
    };
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .self_signed(key)
        .map_err(|source| Error::Generate { what: format!("a signer for CA {}", path.display()), source })
}

pub(super) fn unusable(path: &Path, reason: &str) -> Error {
    Error::UnusableCa { path: path.to_owned(), reason: reason.to_owned() }
}

fn generate_key(what: &str) -> Result<KeyPair, Error> {
    KeyPair::generate().map_err(|source| Error::Generate { what: what.to_owned(), source })
}

fn ia5(s: &str) -> Result<Ia5String, Error> {
    // Only called with validated names: ASCII by construction.
    Ia5String::try_from(s).map_err(|_| Error::InvalidName { field: "identity", value: s.to_owned() })
}

fn dns_name(name: &str) -> Result<Ia5String, Error> {
    let invalid = |reason| Error::InvalidDnsName { name: name.to_owned(), reason };
    if name.parse::<IpAddr>().is_ok() {
        return Err(invalid("is an IP address; give it as an IP address instead"));
    }
    if rustls_pki_types::DnsName::try_from(name).is_err() {
        return Err(invalid("is not a valid DNS name"));
    }
    Ia5String::try_from(name).map_err(|_| invalid("is not ASCII"))
}

fn check_validity(v: &Validity) -> Result<(), Error> {
    if v.not_after <= v.not_before {
        return Err(Error::InvalidValidity("not_after must be later than not_before".into()));
    }
    if secs(v.not_before) < 0 || secs(v.not_after) > MAX_X509_SECS as i64 {
        return Err(Error::InvalidValidity("the window must lie between 1970 and the end of 9999".into()));
    }
    Ok(())
}

/// Seconds since the Unix epoch, negative before it.
fn secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Copy a (checked) [`Validity`] into rcgen's parameters.
pub(super) fn set_validity(params: &mut CertificateParams, v: &Validity) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let at = |t: SystemTime| epoch + t.duration_since(UNIX_EPOCH).unwrap_or_default();
    params.not_before = at(v.not_before);
    params.not_after = at(v.not_after);
}

/// 16 random bytes, positive and non-zero as RFC 5280 requires.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}
