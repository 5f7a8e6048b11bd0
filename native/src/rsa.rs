//! RS256 natively: RSASSA-PKCS1-v1_5 with SHA-256, checked by `ring`
//! (BoringSSL's RSA verification, in Rust and assembly), the native
//! counterpart of the wasm filter asking Envoy's BoringSSL.

use erp_edge_validator::hosting::RsaHost;
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

/// The native host's RSA verifier.
#[derive(Debug, Clone, Copy)]
pub struct RingRsa;

impl RsaHost for RingRsa {
    /// `None` (the core then verifies in its own code) when the key is not
    /// a SubjectPublicKeyInfo this can read.
    fn verify_pkcs1_sha256(&self, spki_der: &[u8], message: &[u8], signature: &[u8]) -> Option<bool> {
        let info = spki::SubjectPublicKeyInfoRef::try_from(spki_der).ok()?;
        // An RSA key's SubjectPublicKeyInfo wraps its PKCS#1 RSAPublicKey,
        // which is what ring reads.
        let pkcs1 = info.subject_public_key.as_bytes()?;
        let key = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pkcs1);
        Some(key.verify(message, signature).is_ok())
    }
}
