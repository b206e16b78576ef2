use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::extensions::GeneralName;

use super::*;

fn ca(dir: &Path) {
    create_ca(dir, "test CA", &Validity::days_from_now(30)).unwrap();
}

fn node(ca_dir: &Path, site: &str, node: &str, out: &Path) -> Result<(), Error> {
    issue(ca_dir, site, node, &[], &[], &Validity::days_from_now(10), out)
}

fn leaf(dir: &Path) -> Vec<u8> {
    load_certs(&dir.join("node.pem")).unwrap()[0].to_vec()
}

/// A self-signed certificate with exactly these URI SANs.
fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())).collect();
    let key = KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn identity_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let (ca_dir, out) = (t.path().join("ca"), t.path().join("n"));
    ca(&ca_dir);
    issue(
        &ca_dir,
        "dc-1",
        "relay_07",
        &["central.example.net".into()],
        &[IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))],
        &Validity::days_from_now(10),
        &out,
    )
    .unwrap();

    let der = leaf(&out);
    let id = identity_from_cert(&der).unwrap();
    assert_eq!(id, Identity { site: "dc-1".into(), node: "relay_07".into() });
    assert_eq!(id.to_string(), "ferry://dc-1/relay_07");

    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let subject = cert.subject().to_string();
    for part in ["CN=relay_07", "O=ferry", "OU=dc-1"] {
        assert!(subject.contains(part), "{subject}");
    }
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let names = &san.value.general_names;
    assert!(names.contains(&GeneralName::DNSName("central.example.net")));
    assert!(names.contains(&GeneralName::IPAddress(&[10, 0, 0, 7])));
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
    assert!(!cert.is_ca());
    assert_eq!(fs::read(out.join("ca.pem")).unwrap(), fs::read(ca_dir.join("ca.pem")).unwrap());
}

#[test]
fn bad_site_or_node_name_refused() {
    let t = tempfile::tempdir().unwrap();
    let ca_dir = t.path().join("ca");
    ca(&ca_dir);
    let long = "x".repeat(65);
    for (site, node_name, field) in [
        ("dc 1", "r1", "site"),
        ("../etc", "r1", "site"),
        ("", "r1", "site"),
        ("-dc", "r1", "site"),
        (long.as_str(), "r1", "site"),
        ("dc1", "r/1", "node"),
        ("dc1", "rélais", "node"),
    ] {
        let out = t.path().join("out");
        let err = node(&ca_dir, site, node_name, &out).unwrap_err();
        match &err {
            Error::InvalidName { field: f, .. } => assert_eq!(*f, field, "{err}"),
            other => panic!("{site:?}/{node_name:?}: {other}"),
        }
        assert!(err.to_string().contains("1-64 characters"), "{err}");
        assert!(!out.exists(), "nothing is written for {site:?}/{node_name:?}");
    }
    let ok = "y".repeat(64);
    node(&ca_dir, &ok, &ok, &t.path().join("long")).unwrap();
}

#[test]
fn refuse_overwrite() {
    let t = tempfile::tempdir().unwrap();
    let ca_dir = t.path().join("ca");
    ca(&ca_dir);
    let ca_pem = fs::read(ca_dir.join("ca.pem")).unwrap();
    let ca_key = fs::read(ca_dir.join("ca.key")).unwrap();
    match create_ca(&ca_dir, "again", &Validity::days_from_now(30)) {
        Err(Error::Exists { path }) => assert_eq!(path, ca_dir.join("ca.pem")),
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read(ca_dir.join("ca.pem")).unwrap(), ca_pem);
    assert_eq!(fs::read(ca_dir.join("ca.key")).unwrap(), ca_key);

    let out = t.path().join("n");
    node(&ca_dir, "dc1", "r1", &out).unwrap();
    let before = leaf(&out);
    let err = node(&ca_dir, "dc1", "r1", &out).unwrap_err();
    assert!(matches!(err, Error::Exists { .. }), "{err}");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(leaf(&out), before);

    // One existing file is enough to refuse, and nothing else is written.
    let partial = t.path().join("partial");
    fs::create_dir(&partial).unwrap();
    fs::write(partial.join("node.key"), "keep me").unwrap();
    match node(&ca_dir, "dc1", "r2", &partial) {
        Err(Error::Exists { path }) => assert_eq!(path, partial.join("node.key")),
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read_to_string(partial.join("node.key")).unwrap(), "keep me");
    assert!(!partial.join("node.pem").exists());
    assert!(!partial.join("ca.pem").exists());

    assert!(matches!(node(&ca_dir, "dc1", "r3", &ca_dir), Err(Error::IssueIntoCaDir { .. })));
}

#[test]
fn no_identity_or_malformed_identity_refused() {
    let t = tempfile::tempdir().unwrap();
    ca(t.path());
    let ca_der = load_certs(&t.path().join("ca.pem")).unwrap()[0].to_vec();
    let err = identity_from_cert(&ca_der).unwrap_err();
    assert!(matches!(err, Error::NoIdentity { .. }), "{err}");
    assert!(err.to_string().contains("CN=test CA"), "{err}");

    let err = identity_from_cert(&cert_with_uris(&["https://example.net/x"])).unwrap_err();
    assert!(matches!(err, Error::NoIdentity { .. }), "{err}");

    for uri in ["ferry://dc1", "ferry://dc1/r1/x", "ferry:///r1", "ferry://dc 1/r1"] {
        let err = identity_from_cert(&cert_with_uris(&[uri])).unwrap_err();
        assert!(matches!(err, Error::BadIdentity { .. }), "{uri}: {err}");
    }
    let err = identity_from_cert(&cert_with_uris(&["ferry://a/b", "ferry://a/c"])).unwrap_err();
    assert!(err.to_string().contains("exactly one"), "{err}");

    let ok = cert_with_uris(&["https://example.net/", "ferry://a/b"]);
    assert_eq!(identity_from_cert(&ok).unwrap().node, "b");

    let err = identity_from_cert(b"not a certificate").unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err}");
}

#[test]
fn load_errors_name_the_file_and_the_problem() {
    let t = tempfile::tempdir().unwrap();
    ca(t.path());
    let (pem, key) = (t.path().join("ca.pem"), t.path().join("ca.key"));

    let err = load_key(&pem).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NoKey { .. }), "{msg}");
    assert!(msg.contains(&pem.display().to_string()), "{msg}");
    assert!(msg.contains("holds a certificate"), "{msg}");

    let msg = load_certs(&key).unwrap_err().to_string();
    assert!(msg.contains("no certificate") && msg.contains("holds a private key"), "{msg}");

    let missing = t.path().join("missing.pem");
    match load_certs(&missing) {
        Err(Error::Read { path, source, .. }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }

    let empty = t.path().join("empty.pem");
    fs::write(&empty, "").unwrap();
    let msg = load_certs(&empty).unwrap_err().to_string();
    assert!(msg.contains("empty"), "{msg}");

    let der = t.path().join("der.pem");
    fs::write(&der, &load_certs(&pem).unwrap()[0]).unwrap();
    let msg = load_certs(&der).unwrap_err().to_string();
    assert!(msg.contains("no PEM blocks"), "{msg}");

    let broken = t.path().join("broken.pem");
    fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
    assert!(matches!(load_certs(&broken), Err(Error::Pem { .. })));
}

#[test]
fn ca_files_may_be_bundles() {
    let t = tempfile::tempdir().unwrap();
    let (old, new) = (t.path().join("old"), t.path().join("new"));
    ca(&old);
    ca(&new);
    let mut bundle = fs::read(old.join("ca.pem")).unwrap();
    bundle.extend(fs::read(new.join("ca.pem")).unwrap());
    fs::write(new.join("bundle.pem"), &bundle).unwrap();
    assert_eq!(load_certs(&new.join("bundle.pem")).unwrap().len(), 2);

    // Issuing with a bundle as ca.pem signs with the certificate matching
    // ca.key and hands the node the whole bundle.
    fs::rename(new.join("bundle.pem"), new.join("ca.pem")).unwrap();
    let out = t.path().join("n");
    node(&new, "dc1", "r1", &out).unwrap();
    assert_eq!(fs::read(out.join("ca.pem")).unwrap(), bundle);
    let new_ca = load_certs(&new.join("ca.pem")).unwrap().remove(1);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(new_ca).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let leaf = load_certs(&out.join("node.pem")).unwrap().remove(0);
    verifier
        .verify_client_cert(&leaf, &[], rustls_pki_types::UnixTime::now())
        .expect("the node certificate chains to the CA matching ca.key");
}

#[test]
fn ca_key_must_match_ca_certificate() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    ca(&a);
    ca(&b);
    fs::remove_file(a.join("ca.key")).unwrap();
    fs::copy(b.join("ca.key"), a.join("ca.key")).unwrap();
    let err = node(&a, "dc1", "r1", &t.path().join("n")).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");

    let err = node(&t.path().join("nowhere"), "dc1", "r1", &t.path().join("n")).unwrap_err();
    assert!(err.to_string().contains("cannot read CA certificate"), "{err}");
}

#[test]
fn validity_is_checked() {
    let t = tempfile::tempdir().unwrap();
    let ca_dir = t.path().join("ca");
    ca(&ca_dir);
    let out = t.path().join("n");
    let long = Validity::days_from_now(31);
    let err = issue(&ca_dir, "dc1", "r1", &[], &[], &long, &out).unwrap_err();
    assert!(err.to_string().contains("outlive its CA"), "{err}");

    let now = SystemTime::now();
    let backwards = Validity { not_before: now, not_after: now - Duration::from_secs(1) };
    let err = issue(&ca_dir, "dc1", "r1", &[], &[], &backwards, &out).unwrap_err();
    assert!(matches!(err, Error::InvalidValidity(_)), "{err}");
    let err = create_ca(&t.path().join("ca2"), "x", &Validity::days_from_now(u32::MAX)).unwrap_err();
    assert!(matches!(err, Error::InvalidValidity(_)), "{err}");
    assert!(!out.exists());
}

#[test]
fn bad_dns_names_refused() {
    let t = tempfile::tempdir().unwrap();
    ca(t.path());
    for name in ["10.0.0.1", "bad name", "", "a..b"] {
        let err =
            issue(t.path(), "dc1", "r1", &[name.to_owned()], &[], &Validity::days_from_now(1), &t.path().join("n"))
                .unwrap_err();
        assert!(matches!(err, Error::InvalidDnsName { .. }), "{name:?}: {err}");
    }
}

#[test]
fn tls_configs_build_and_key_mismatch_names_files() {
    let t = tempfile::tempdir().unwrap();
    let ca_dir = t.path().join("ca");
    ca(&ca_dir);
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    node(&ca_dir, "dc1", "a", &a).unwrap();
    node(&ca_dir, "dc1", "b", &b).unwrap();
    let files = TlsFiles { ca: a.join("ca.pem"), cert: a.join("node.pem"), key: a.join("node.key"), crl: Vec::new() };
    let server = server_config(&files, &[b"ferry/1"]).unwrap();
    assert_eq!(server.alpn_protocols, vec![b"ferry/1".to_vec()]);
    client_config(&files, &[b"ferry/1"]).unwrap();

    let wrong = TlsFiles { key: b.join("node.key"), ..files.clone() };
    let err = server_config(&wrong, &[]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Tls { .. }), "{msg}");
    assert!(msg.contains(&b.join("node.key").display().to_string()), "{msg}");
    assert!(client_config(&wrong, &[]).is_err());

    let swapped = TlsFiles { cert: files.key.clone(), key: files.cert.clone(), ..files };
    let msg = client_config(&swapped, &[]).unwrap_err().to_string();
    assert!(msg.contains("certificate file") && msg.contains("holds a private key"), "{msg}");
}

#[test]
fn revoke_builds_a_list_that_the_verifiers_apply() {
    let t = tempfile::tempdir().unwrap();
    let ca_dir = t.path().join("ca");
    ca(&ca_dir);
    let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
    node(&ca_dir, "dc1", "a", &a).unwrap();
    node(&ca_dir, "dc1", "b", &b).unwrap();
    node(&ca_dir, "dc1", "c", &c).unwrap();
    let crl = ca_dir.join("crl.pem");

    let r = revoke(&ca_dir, &b.join("node.pem"), Reason::KeyCompromise).unwrap();
    assert!(r.new && r.count == 1 && r.crl == crl);
    assert_eq!(r.identity.unwrap().to_string(), "ferry://dc1/b");
    assert_eq!(Some(r.serial.clone()), serial_hex(&leaf(&b)));
    let again = revoke(&ca_dir, &b.join("node.pem"), Reason::Unspecified).unwrap();
    assert!(!again.new && again.count == 1, "revoking twice changes nothing");
    let r2 = revoke(&ca_dir, &c.join("node.pem"), Reason::CessationOfOperation).unwrap();
    assert_eq!(r2.count, 2, "the earlier entry is kept");
    let listed: Vec<String> = revoked_serials(std::slice::from_ref(&crl)).unwrap().into_iter().map(|x| x.0).collect();
    assert_eq!(listed, vec![r.serial.clone(), r2.serial.clone()]);
    let der = files::read_crls(&crl).unwrap().remove(0);
    let (_, parsed) = x509_parser::parse_x509_crl(&der).unwrap();
    assert_eq!(parsed.crl_number().map(|n| n.to_string()), Some("2".into()));

    // a's material with the list: b and c refused as revoked, a itself fine.
    let files =
        TlsFiles { ca: a.join("ca.pem"), cert: a.join("node.pem"), key: a.join("node.key"), crl: vec![crl.clone()] };
    let m = Material::load_checked(&files).unwrap();
    assert!(!m.own_revoked());
    let chain = |d: &Path| load_certs(&d.join("node.pem")).unwrap();
    assert_eq!(m.verify_peer(&chain(&b)), Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)));
    assert!(m.verify_peer(&chain(&a)).is_ok());
    let mb = Material::load(&TlsFiles {
        ca: b.join("ca.pem"),
        cert: b.join("node.pem"),
        key: b.join("node.key"),
        crl: vec![crl.clone()],
    })
    .unwrap();
    assert!(mb.own_revoked(), "a node can tell that its own certificate is revoked");
    assert!(
        !m.same_as(&Material::load(&TlsFiles { crl: Vec::new(), ..files.clone() }).unwrap()),
        "a new list is a change"
    );

    // A list from another CA is refused with the file named, and so is a
    // file without a list; a certificate of another CA cannot be revoked here.
    let other = t.path().join("other");
    create_ca(&other, "other CA", &Validity::days_from_now(30)).unwrap();
    let o = t.path().join("o");
    node(&other, "dc1", "o", &o).unwrap();
    revoke(&other, &o.join("node.pem"), Reason::KeyCompromise).unwrap();
    let err = Material::load(&TlsFiles { crl: vec![other.join("crl.pem")], ..files.clone() }).err().unwrap();
    assert!(matches!(err, Error::Crl { .. }) && err.to_string().contains("not a CA of the bundle"), "{err}");
    // A CA of the same name but another key: its list passes the name check,
    // and the check of the node's own certificate refuses it.
    let twin = t.path().join("twin");
    ca(&twin);
    let w = t.path().join("w");
    node(&twin, "dc1", "w", &w).unwrap();
    revoke(&twin, &w.join("node.pem"), Reason::KeyCompromise).unwrap();
    let err = Material::load_checked(&TlsFiles { crl: vec![twin.join("crl.pem")], ..files.clone() }).err().unwrap();
    assert!(matches!(err, Error::Crl { .. }), "{err}");
    let err = Material::load(&TlsFiles { crl: vec![a.join("node.pem")], ..files.clone() }).err().unwrap();
    assert!(err.to_string().contains("no CRL in it") && err.to_string().contains("holds a certificate"), "{err}");
    let err = revoke(&ca_dir, &o.join("node.pem"), Reason::KeyCompromise).unwrap_err();
    assert!(matches!(err, Error::NotIssuedBy { .. }), "{err}");
}
