//! RS256 natively: RSASSA-PKCS1-v1_5 with SHA-256, checked by AWS-LC
//! (through `aws-lc-rs`), the native counterpart of the wasm filter asking
//! Envoy's BoringSSL. Each key is parsed once and kept (its Montgomery
//! context with it), which makes a verification about a quarter cheaper
//! than parsing it every time (docs/native.md has the measurements).

use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use erp_edge_validator::hosting::RsaHost;

/// How many parsed keys are kept; a key set holds a handful, and a full
/// memory starts again (a key is parsed again on its next use).
const KEPT: usize = 32;

/// The native host's RSA verifier.
#[derive(Default)]
pub struct NativeRsa {
    /// Parsed keys by their SubjectPublicKeyInfo.
    parsed: Mutex<Vec<(Vec<u8>, Arc<ParsedPublicKey>)>>,
}

impl std::fmt::Debug for NativeRsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeRsa").finish_non_exhaustive()
    }
}

impl NativeRsa {
    /// The key, parsed: from memory, or parsed now and kept. `None` when
    /// it is not an RSA SubjectPublicKeyInfo AWS-LC takes.
    fn key(&self, spki_der: &[u8]) -> Option<Arc<ParsedPublicKey>> {
        let mut parsed = self.parsed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, key)) = parsed.iter().find(|(der, _)| der == spki_der) {
            return Some(Arc::clone(key));
        }
        let info = spki::SubjectPublicKeyInfoRef::try_from(spki_der).ok()?;
        // An RSA key's SubjectPublicKeyInfo wraps its PKCS#1 RSAPublicKey.
        let pkcs1 = info.subject_public_key.as_bytes()?;
        let key = Arc::new(ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pkcs1).ok()?);
        if parsed.len() >= KEPT {
            parsed.clear();
        }
        parsed.push((spki_der.to_vec(), Arc::clone(&key)));
        Some(key)
    }
}

impl RsaHost for NativeRsa {
    /// `None` (the core then verifies in its own code) when the key is not
    /// one AWS-LC takes.
    fn verify_pkcs1_sha256(&self, spki_der: &[u8], message: &[u8], signature: &[u8]) -> Option<bool> {
        let key = self.key(spki_der)?;
        Some(key.verify_sig(message, signature).is_ok())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use erp_devstack::tokens::SigningKey;
    use erp_edge_validator::jwt::algorithm::Algorithm;
    use erp_edge_validator::jwt::jwks::KeySet;
    use rsa::pkcs1v15::{Signature, VerifyingKey};
    use rsa::pkcs8::DecodePublicKey;
    use rsa::signature::Verifier;

    /// The SubjectPublicKeyInfo the core hands a host for this key.
    fn spki(key: &SigningKey) -> Vec<u8> {
        let set = KeySet::from_value(&serde_json::json!({ "keys": [key.jwk()] }), &[Algorithm::Rs256]).unwrap();
        set.get(&key.kid).unwrap().spki.clone().unwrap()
    }

    /// The `rsa` crate's answer, the reference this verifier must agree with.
    fn reference(spki: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let key = rsa::RsaPublicKey::from_public_key_der(spki).unwrap();
        let verifier = VerifyingKey::<sha2::Sha256>::new(key);
        Signature::try_from(signature).is_ok_and(|s| verifier.verify(message, &s).is_ok())
    }

    #[test]
    fn accepts_the_valid_and_refuses_every_forgery_for_each_size() {
        for bits in [2048, 3072, 4096] {
            let key = SigningKey::generate("k", bits).unwrap();
            let spki = spki(&key);
            let input = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0";
            let valid = key.sign_as("RS256", input).unwrap();
            assert_eq!(
                NativeRsa::default().verify_pkcs1_sha256(&spki, input, &valid),
                Some(true),
                "{bits}"
            );
            for (what, forged) in key.forged_signatures(input) {
                assert_eq!(
                    NativeRsa::default().verify_pkcs1_sha256(&spki, input, &forged),
                    Some(false),
                    "{bits}: {what} was accepted"
                );
                assert!(
                    !reference(&spki, input, &forged),
                    "{bits}: the reference accepts {what}"
                );
            }
        }
    }

    #[test]
    fn agrees_with_the_rsa_crate_on_corrupted_signatures_and_messages() {
        let key = SigningKey::generate("k", 2048).unwrap();
        let spki = spki(&key);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut agreed = 0;
        for n in 0..200u32 {
            let message = format!("header.payload-{n}").into_bytes();
            let mut signature = key.sign_as("RS256", &message).unwrap();
            let mut message = message;
            match n % 4 {
                0 => {}
                1 => {
                    let at = (next() as usize) % signature.len();
                    signature[at] ^= 1 << (next() % 8);
                }
                2 => {
                    let at = (next() as usize) % message.len();
                    message[at] ^= 1;
                }
                _ => signature.truncate(signature.len() - 1),
            }
            let ours = NativeRsa::default().verify_pkcs1_sha256(&spki, &message, &signature);
            assert_eq!(ours, Some(reference(&spki, &message, &signature)), "case {n}");
            agreed += 1;
        }
        assert_eq!(agreed, 200);
    }

    #[test]
    fn a_key_is_parsed_once_and_the_memory_stays_bounded() {
        let rsa = NativeRsa::default();
        let keys: Vec<SigningKey> = (0..3)
            .map(|i| SigningKey::generate(&format!("k{i}"), 2048).unwrap())
            .collect();
        for round in 0..3 {
            for key in &keys {
                let signature = key.sign_as("RS256", b"m").unwrap();
                assert_eq!(
                    rsa.verify_pkcs1_sha256(&spki(key), b"m", &signature),
                    Some(true),
                    "{round}"
                );
            }
        }
        assert_eq!(rsa.parsed.lock().unwrap().len(), 3);
        // A full memory starts again rather than growing.
        let parsed = rsa.key(&spki(&keys[0])).unwrap();
        let mut der = spki(&keys[0]);
        while rsa.parsed.lock().unwrap().len() < KEPT {
            der.push(0);
            rsa.parsed.lock().unwrap().push((der.clone(), Arc::clone(&parsed)));
        }
        let fresh = SigningKey::generate("k9", 2048).unwrap();
        let signature = fresh.sign_as("RS256", b"m").unwrap();
        assert_eq!(rsa.verify_pkcs1_sha256(&spki(&fresh), b"m", &signature), Some(true));
        assert_eq!(rsa.parsed.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_key_it_cannot_read_is_left_to_the_module() {
        assert_eq!(NativeRsa::default().verify_pkcs1_sha256(b"not der", b"m", b"s"), None);
    }

    #[test]
    fn the_core_trusts_it_after_its_self_test() {
        assert!(erp_edge_validator::hosting::host_agrees(&NativeRsa::default()));
    }
}
