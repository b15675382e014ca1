//! TLS configurations built from PEM files, with rustls on the ring
//! provider: the server side of the listener (`[tls]`, with its
//! certificate reloadable on SIGHUP) and the client side towards Redis
//! (`rediss://`).
//!
//! It owns reading certificates and keys and choosing what is trusted; it
//! must not do I/O on sockets (the connections that speak TLS are
//! [`crate::core`]'s streams and [`crate::engine::redis::conn`]'s).
//!
//! ring rather than aws-lc-rs: it builds with nothing but a C compiler
//! (aws-lc-rs wants cmake, and for some targets Go and bindgen), the Redis
//! client side already used it, and for the AES-GCM / ChaCha20 record
//! work that dominates a long-lived WebSocket both are assembly from the
//! same lineage.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::sync::{Arc, RwLock};

/// The listener's TLS: one rustls configuration for the server's life,
/// whose certificate is looked up per handshake, so [`ServerTls::reload`]
/// changes what new handshakes present while established connections keep
/// their session.
#[derive(Debug)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    current: Arc<CurrentCert>,
    cert: String,
    key: String,
    provider: Arc<CryptoProvider>,
}

/// The certificate new handshakes get (read once per handshake, written on
/// reload: the lock is never on the message path).
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl ServerTls {
    /// Reads `cert` (a PEM chain, leaf first) and `key` (PEM, PKCS#8,
    /// PKCS#1 or SEC1) and builds the server configuration: TLS 1.2 and
    /// 1.3, ALPN `http/1.1`, no client certificates. The error names the
    /// file and what is wrong with it.
    pub fn load(cert: &str, key: &str) -> Result<ServerTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = certified_key(cert, key, &provider)?;
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(certified))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Resumption across cores: the default stateful cache (shared, 256
        // sessions) plus stateless tickets, so a reconnecting client skips
        // the certificate exchange whichever core accepts it.
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS: {e}"))?;
        Ok(ServerTls {
            config: Arc::new(config),
            current,
            cert: cert.to_string(),
            key: key.to_string(),
            provider,
        })
    }

    /// The configuration every new connection is built from.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Reads the certificate and key files again (SIGHUP); on success new
    /// handshakes present the new certificate, on failure the old one
    /// stays and the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let certified = certified_key(&self.cert, &self.key, &self.provider)?;
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        Ok(())
    }

    /// The files it reads: (certificate chain, key).
    pub fn files(&self) -> (&str, &str) {
        (&self.cert, &self.key)
    }
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(cert: &str, key: &str, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = certs(cert)?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{key}: no private key read ({e})"))?;
    CertifiedKey::from_der(chain, der, provider)
        .map_err(|e| format!("{cert} / {key}: the certificate does not go with the key: {e}"))
}

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
