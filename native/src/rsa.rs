//! RS256 natively: RSASSA-PKCS1-v1_5 with SHA-256. A 2048-bit key with
//! exponent 65537 (what identity services issue) on a CPU with AVX-512
//! IFMA goes through [`crate::ifma`]: `s^65537 mod n` there, then the
//! core's byte comparison with the PKCS#1 v1.5 encoding of the digest.
//! Every other key, and every key on another CPU, goes to AWS-LC (through
//! `aws-lc-rs`), the native counterpart of the wasm filter asking Envoy's
//! BoringSSL. Each key is prepared once and kept; docs/native.md has the
//! measurements.

use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use erp_edge_validator::hosting::RsaHost;

/// How many prepared keys are kept; a key set holds a handful, and a full
/// memory starts again (a key is prepared again on its next use).
const KEPT: usize = 32;

/// The native host's RSA verifier.
pub struct NativeRsa {
    /// Prepared keys by their SubjectPublicKeyInfo.
    prepared: Mutex<Vec<(Vec<u8>, Arc<Prepared>)>>,
    /// Whether RSA-2048 may take the IFMA path (off: AWS-LC for every key,
    /// what the tests and the bench compare it with).
    ifma: bool,
}

/// A key as both verifiers take it.
struct Prepared {
    aws_lc: ParsedPublicKey,
    /// RSA-2048 with exponent 65537: the modulus for the IFMA path.
    #[cfg(target_arch = "x86_64")]
    ifma: Option<(crate::ifma::Modulus, [u8; crate::ifma::BYTES])>,
}

impl Default for NativeRsa {
    fn default() -> Self {
        Self {
            prepared: Mutex::default(),
            ifma: true,
        }
    }
}

impl std::fmt::Debug for NativeRsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeRsa")
            .field("ifma", &self.ifma)
            .finish_non_exhaustive()
    }
}

impl NativeRsa {
    /// A verifier that asks AWS-LC for every key, whatever the CPU.
    pub fn aws_lc_only() -> Self {
        Self {
            prepared: Mutex::default(),
            ifma: false,
        }
    }

    /// How RSA-2048 with exponent 65537, what identity services issue, is
    /// verified here (for the log).
    pub fn describe(&self) -> &'static str {
        if self.ifma && crate::ffi::cpu_has_ifma() {
            "natively (RSA-2048 with AVX-512 IFMA, other keys with AWS-LC)"
        } else {
            "natively (AWS-LC)"
        }
    }

    /// The key, prepared: from memory, or prepared now and kept. `None`
    /// when it is not an RSA SubjectPublicKeyInfo AWS-LC takes.
    fn key(&self, spki_der: &[u8]) -> Option<Arc<Prepared>> {
        let mut prepared = self.prepared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, key)) = prepared.iter().find(|(der, _)| der == spki_der) {
            return Some(Arc::clone(key));
        }
        let info = spki::SubjectPublicKeyInfoRef::try_from(spki_der).ok()?;
        // An RSA key's SubjectPublicKeyInfo wraps its PKCS#1 RSAPublicKey.
        let pkcs1 = info.subject_public_key.as_bytes()?;
        let key = Arc::new(Prepared {
            aws_lc: ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pkcs1).ok()?,
            #[cfg(target_arch = "x86_64")]
            ifma: (self.ifma && crate::ffi::cpu_has_ifma())
                .then(|| ifma_modulus(pkcs1))
                .flatten(),
        });
        if prepared.len() >= KEPT {
            prepared.clear();
        }
        prepared.push((spki_der.to_vec(), Arc::clone(&key)));
        Some(key)
    }
}

/// The modulus of an RSA-2048 key with exponent 65537, prepared for IFMA.
#[cfg(target_arch = "x86_64")]
fn ifma_modulus(pkcs1_der: &[u8]) -> Option<(crate::ifma::Modulus, [u8; crate::ifma::BYTES])> {
    let key = pkcs1::RsaPublicKey::try_from(pkcs1_der).ok()?;
    if key.public_exponent.as_bytes() != [0x01, 0x00, 0x01] {
        return None;
    }
    let modulus = key.modulus.as_bytes();
    Some((crate::ifma::Modulus::new(modulus)?, modulus.try_into().ok()?))
}

impl Prepared {
    /// The IFMA path's answer, or `None` when it does not apply (another
    /// key, another CPU: then the key was not prepared for it).
    #[cfg(target_arch = "x86_64")]
    fn verify_by_ifma(&self, message: &[u8], signature: &[u8]) -> Option<bool> {
        use sha2::Digest;
        let (modulus, n) = self.ifma.as_ref()?;
        // RFC 8017 §8.2.2 step 1: exactly k bytes; §5.2.2: s < n (both
        // big-endian and of one length, so bytewise order is numeric).
        let Ok(signature) = <&[u8; crate::ifma::BYTES]>::try_from(signature) else {
            return Some(false);
        };
        if signature >= n {
            return Some(false);
        }
        let em = crate::ffi::ifma_pow_f4(modulus, signature)?;
        Some(erp_edge_validator::hosting::is_pkcs1_sha256(
            &em,
            &sha2::Sha256::digest(message),
        ))
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn verify_by_ifma(&self, _: &[u8], _: &[u8]) -> Option<bool> {
        None
    }
}

impl RsaHost for NativeRsa {
    /// `None` (the core then verifies in its own code) when the key is not
    /// one AWS-LC takes.
    fn verify_pkcs1_sha256(&self, spki_der: &[u8], message: &[u8], signature: &[u8]) -> Option<bool> {
        let key = self.key(spki_der)?;
        key.verify_by_ifma(message, signature)
            .or_else(|| Some(key.aws_lc.verify_sig(message, signature).is_ok()))
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

    /// Both verifiers: the one shipped (IFMA for RSA-2048 where the CPU
    /// has it) and AWS-LC alone.
    fn verifiers() -> [NativeRsa; 2] {
        [NativeRsa::default(), NativeRsa::aws_lc_only()]
    }

    #[test]
    fn rsa_2048_with_exponent_65537_takes_the_ifma_path_where_the_cpu_has_it() {
        let key = SigningKey::generate("k", 2048).unwrap();
        let prepared = NativeRsa::default().key(&spki(&key)).unwrap();
        assert_eq!(prepared.ifma.is_some(), crate::ffi::cpu_has_ifma(), "prepared for IFMA");
        let signature = key.sign_as("RS256", b"m").unwrap();
        assert_eq!(
            prepared.verify_by_ifma(b"m", &signature),
            crate::ffi::cpu_has_ifma().then_some(true)
        );
        assert_eq!(
            prepared.verify_by_ifma(b"n", &signature),
            crate::ffi::cpu_has_ifma().then_some(false)
        );
        assert!(NativeRsa::aws_lc_only().key(&spki(&key)).unwrap().ifma.is_none());
        let big = SigningKey::generate("k", 3072).unwrap();
        assert!(
            NativeRsa::default().key(&spki(&big)).unwrap().ifma.is_none(),
            "3072 bits: AWS-LC"
        );
    }

    #[test]
    fn accepts_the_valid_and_refuses_every_forgery_for_each_size() {
        for (bits, rsa) in [2048, 3072, 4096].into_iter().flat_map(|b| verifiers().map(|v| (b, v))) {
            let key = SigningKey::generate("k", bits).unwrap();
            let spki = spki(&key);
            let input = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0";
            let valid = key.sign_as("RS256", input).unwrap();
            assert_eq!(
                rsa.verify_pkcs1_sha256(&spki, input, &valid),
                Some(true),
                "{bits} {rsa:?}"
            );
            for (what, forged) in key.forged_signatures(input) {
                assert_eq!(
                    rsa.verify_pkcs1_sha256(&spki, input, &forged),
                    Some(false),
                    "{bits} {rsa:?}: {what} was accepted"
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
            for rsa in verifiers() {
                let ours = rsa.verify_pkcs1_sha256(&spki, &message, &signature);
                assert_eq!(ours, Some(reference(&spki, &message, &signature)), "case {n} {rsa:?}");
                agreed += 1;
            }
        }
        assert_eq!(agreed, 400);
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
        assert_eq!(rsa.prepared.lock().unwrap().len(), 3);
        // A full memory starts again rather than growing.
        let parsed = rsa.key(&spki(&keys[0])).unwrap();
        let mut der = spki(&keys[0]);
        while rsa.prepared.lock().unwrap().len() < KEPT {
            der.push(0);
            rsa.prepared.lock().unwrap().push((der.clone(), Arc::clone(&parsed)));
        }
        let fresh = SigningKey::generate("k9", 2048).unwrap();
        let signature = fresh.sign_as("RS256", b"m").unwrap();
        assert_eq!(rsa.verify_pkcs1_sha256(&spki(&fresh), b"m", &signature), Some(true));
        assert_eq!(rsa.prepared.lock().unwrap().len(), 1);
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
