//! Test certificates: a CA and the PEM files it signs, made with rcgen in
//! a temporary directory (for TLS to Redis and the server's own TLS).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A CA and the PEM files signed by it, in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn s(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }
}

/// `{prefix}ca.pem`, `{prefix}server.pem`/`.key` (for 127.0.0.1 and
/// localhost) and `{prefix}client.pem`/`.key`, all signed by one new CA.
pub fn write_pki(dir: &Path, prefix: &str) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{prefix}corecast test CA"));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write(&format!("{prefix}ca.pem"), ca.pem());
    for (name, sans) in [
        (
            "server",
            vec!["127.0.0.1".to_string(), "localhost".to_string()],
        ),
        ("client", vec!["corecast-node".to_string()]),
    ] {
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        write(&format!("{prefix}{name}.pem"), cert.pem());
        write(&format!("{prefix}{name}.key"), key.serialize_pem());
    }
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    write_pki(dir.path(), "");
    write_pki(dir.path(), "other-");
    Pki { dir }
}
