//! HTTPS for the identity emulator: a throwaway CA made at start (rcgen),
//! a server certificate it signs, and the rustls configuration that serves
//! it. Envoy trusts the CA through a file the stack writes.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::tokens::Error;

/// The name the identity service's certificate is for, and Envoy's SNI.
pub const IDENTITY_NAME: &str = "idp.erp.test";

/// A certificate authority that exists for one run.
pub struct Authority {
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl Authority {
    pub fn new(name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Self { key, cert })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate to `path` (what Envoy's `trusted_ca` reads).
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.pem())?;
        Ok(())
    }

    /// A server configuration presenting a certificate for `name` (and
    /// 127.0.0.1, for curl) signed by this authority.
    pub fn server(&self, name: &str) -> Result<Arc<rustls::ServerConfig>, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, private)?;
        Ok(Arc::new(config))
    }
}

/// A CA file in a fresh temporary directory, removed when dropped.
pub struct CaFile {
    dir: PathBuf,
    pub path: PathBuf,
}

impl CaFile {
    pub fn write(authority: &Authority) -> Result<Self, Error> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("erp-edge-ca-{}-{n}", std::process::id()));
        let path = dir.join("identity-ca.pem");
        authority.write(&path)?;
        Ok(Self { dir, path })
    }
}

impl Drop for CaFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
