//! TLS configurations built from PEM files, with rustls on the ring
//! provider: today the client side towards Redis (`rediss://`).
//!
//! It owns reading certificates and keys and choosing what is trusted; it
//! must not do I/O on sockets (the connection that speaks TLS is
//! [`crate::engine::redis::conn`]'s).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// What a TLS client trusts and presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    /// PEM file of the CA certificate(s) to trust; none: the system's.
    pub ca: Option<String>,
    /// PEM file of a client certificate chain (with `key`), for servers
    /// that require one (Redis's `tls-auth-clients yes`, its default).
    pub cert: Option<String>,
    /// PEM file of the client certificate's private key.
    pub key: Option<String>,
    /// Do not verify the server's certificate at all (`#insecure`).
    pub insecure: bool,
}

/// Builds the client configuration, once at start: a file that cannot be
/// read or holds nothing usable is an error that names it.
pub fn client_config(files: &ClientFiles) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if files.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        builder.with_root_certificates(roots(files.ca.as_deref())?)
    };
    let config = match (&files.cert, &files.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("{key}: no private key read ({e})"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{cert}: the certificate does not go with the key: {e}"))?
        }
        _ => return Err("a client certificate needs both its cert and its key".into()),
    };
    Ok(Arc::new(config))
}

/// The certificates in a PEM file (at least one).
fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{path}: cannot read certificates ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate in it"));
    }
    Ok(certs)
}

/// The CAs in `ca`, or the system's trust store.
fn roots(ca: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{path}: not a CA certificate: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no system CA certificates found ({} errors); name a CA file",
                    found.errors.len()
                ));
            }
        }
    }
    Ok(roots)
}

/// Accepts any server certificate (`#insecure`); handshake signatures are
/// still checked, so the session is encrypted, just not authenticated.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
