//! RS256 verification as what it really is: `s^65537 mod n`, then a byte
//! comparison with the PKCS#1 v1.5 encoding of the SHA-256 digest
//! (RFC 8017 §8.2.2, EMSA-PKCS1-v1_5).
//!
//! The `rsa` crate's general big-number path costs about 0.7 ms per
//! verification in Envoy's V8, which makes a flood of distinct well-formed
//! tokens a denial-of-service lever. Here the exponentiation is exactly 16
//! Montgomery squarings and two multiplications ([`crate::jwt::modulus`]), and the
//! Montgomery constants are computed once per key, by crypto-bigint, when
//! keys are loaded.
//!
//! Only the public-key operation is done here; there is no secret to leak,
//! so variable-time code on public values is fine. Keys whose exponent is
//! not 65537 fall back to the `rsa` crate (see [`crate::jwt`]). The verifier
//! is checked against the `rsa` crate on thousands of random keys and
//! signatures, valid and corrupted, in this module's tests.

use std::fmt;

use crypto_bigint::modular::FixedMontyParams;
use crypto_bigint::{Encoding, Odd, Uint, U2048, U3072, U4096};
use sha2::{Digest, Sha256};

use crate::host::RsaHost;
use crate::jwt::modulus::{self, Modulus};

/// DER encoding of the SHA-256 `DigestInfo` prefix (RFC 8017 §9.2 note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
];

/// The exponent this fast path handles.
pub const F4: u32 = 65_537;

/// An RSA public key with exponent 65537, prepared for verification.
#[derive(Clone)]
pub struct PreparedKey {
    /// The modulus with its Montgomery constants, at the width of its size
    /// class (2048, 3072 or 4096 bits).
    monty: Modulus,
    /// The modulus, big-endian, `k` bytes (no leading zero byte).
    modulus: Vec<u8>,
}

impl fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PreparedKey({} bits)", self.modulus.len() * 8)
    }
}

/// The Montgomery constants of `modulus` for `R = 2^(bits of Uint<LIMBS>)`,
/// which is the same on every target whatever crypto-bigint's limb width.
fn constants<const LIMBS: usize>(modulus: &[u8]) -> Option<Modulus>
where
    Uint<LIMBS>: Encoding,
{
    let width = Uint::<LIMBS>::BYTES;
    let mut padded = vec![0u8; width.checked_sub(modulus.len())?];
    padded.extend_from_slice(modulus);
    let n = Odd::new(Uint::<LIMBS>::from_be_slice(&padded)).into_option()?;
    let params = FixedMontyParams::new_vartime(n);
    let limbs = width / 4;
    Modulus::new(
        modulus::limbs_from_be(&padded, limbs)?,
        // -n⁻¹ mod 2^64 (or 2^32) reduced mod 2^32 is -n⁻¹ mod 2^32.
        params.mod_neg_inv().0 as u32,
        modulus::limbs_from_be(params.r2().to_be_bytes().as_ref(), limbs)?,
    )
}

impl PreparedKey {
    /// Prepares a key from its modulus (big-endian) and exponent. `None`
    /// when the exponent is not 65537 or the modulus is not an odd number of
    /// 2048 to 4096 bits: the caller then uses the general path.
    pub fn new(modulus: &[u8], exponent: &[u8]) -> Option<Self> {
        let significant: Vec<u8> = exponent.iter().skip_while(|b| **b == 0).copied().collect();
        // Longer exponents would lose their high bytes in the fold below
        // (and could fold to 65537): refused before folding.
        if significant.len() > 4 {
            return None;
        }
        let exponent = significant.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        if exponent != u64::from(F4) {
            return None;
        }
        let modulus: Vec<u8> = modulus.iter().skip_while(|b| **b == 0).copied().collect();
        let monty = match modulus.len() {
            256 => constants::<{ U2048::LIMBS }>(&modulus)?,
            257..=384 => constants::<{ U3072::LIMBS }>(&modulus)?,
            385..=512 => constants::<{ U4096::LIMBS }>(&modulus)?,
            _ => return None,
        };
        Some(Self { monty, modulus })
    }

    /// RSASSA-PKCS1-v1_5 verification with SHA-256 of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.verify_digest(&Sha256::digest(message), signature)
    }

    /// The same, given the SHA-256 digest.
    pub fn verify_digest(&self, digest: &[u8], signature: &[u8]) -> bool {
        let k = self.modulus.len();
        // §8.2.2 step 1: the signature is exactly k bytes; §5.2.2: s < n.
        if signature.len() != k || signature >= self.modulus.as_slice() || digest.len() != 32 {
            return false;
        }
        let Some(em) = modulus::limbs_from_be(signature, self.monty.limbs()).and_then(|s| self.monty.pow_f4(&s)) else {
            return false;
        };
        let em = modulus::limbs_to_be(&em);
        // The encoded message is the last k bytes; anything before is zero.
        let Some(split) = em.len().checked_sub(k) else {
            return false;
        };
        let (high, em) = em.split_at(split);
        high.iter().all(|b| *b == 0) && is_pkcs1_sha256(em, digest)
    }
}

/// `0x00 0x01 FF…FF 0x00 DigestInfo(SHA-256) H`, at least 8 bytes of `FF`:
/// whether `em`, a signature raised to the key's exponent, is the
/// EMSA-PKCS1-v1_5 encoding of `digest` (also the native host's test).
pub fn is_pkcs1_sha256(em: &[u8], digest: &[u8]) -> bool {
    let tail = SHA256_DIGEST_INFO.len() + digest.len();
    let Some(padding) = em.len().checked_sub(3 + tail) else {
        return false;
    };
    padding >= 8
        && em[0] == 0x00
        && em[1] == 0x01
        && em[2..2 + padding].iter().all(|b| *b == 0xff)
        && em[2 + padding] == 0x00
        && em[3 + padding..3 + padding + SHA256_DIGEST_INFO.len()] == SHA256_DIGEST_INFO
        && &em[em.len() - digest.len()..] == digest
}

/// RFC 7515 appendix A.2: an RS256 JWS and its published key (base64url).
#[cfg_attr(not(all(target_arch = "wasm32", feature = "filter")), allow(dead_code))]
mod rfc7515 {
    pub(super) const N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    pub(super) const INPUT: &[u8] = b"eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    pub(super) const SIGNATURE: &str = "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
}

// Used by the Envoy glue (wasm32 only) and the tests.
#[cfg_attr(not(all(target_arch = "wasm32", feature = "filter")), allow(dead_code))]
/// Whether a host verifier answers like this module on a known vector: the
/// RFC 7515 A.2 signature accepted, a tampered message and a flipped
/// signature refused. The host's verifier is used only when this holds.
pub fn host_agrees(host: &dyn RsaHost) -> bool {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use rsa::pkcs8::EncodePublicKey;
    let (Ok(n), Ok(signature)) = (
        URL_SAFE_NO_PAD.decode(rfc7515::N),
        URL_SAFE_NO_PAD.decode(rfc7515::SIGNATURE),
    ) else {
        return false;
    };
    let key = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(&n), rsa::BigUint::from(F4));
    let Some(spki) = key.ok().and_then(|k| k.to_public_key_der().ok()) else {
        return false;
    };
    let spki = spki.as_bytes();
    let mut tampered = rfc7515::INPUT.to_vec();
    tampered[40] ^= 1;
    let mut flipped = signature.clone();
    flipped[100] ^= 0x10;
    host.verify_pkcs1_sha256(spki, rfc7515::INPUT, &signature) == Some(true)
        && host.verify_pkcs1_sha256(spki, &tampered, &signature) == Some(false)
        && host.verify_pkcs1_sha256(spki, rfc7515::INPUT, &flipped) == Some(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_exponent_longer_than_four_bytes_is_refused_before_it_is_folded() {
        let modulus = [0xffu8; 256];
        // 2^64 + 65537: folding it into a u64 would give 65537.
        let long = [1u8, 0, 0, 0, 0, 0, 1, 0, 1];
        assert!(PreparedKey::new(&modulus, &long).is_none());
        assert!(
            PreparedKey::new(&modulus, &[0, 0, 0, 0, 0, 1, 0, 1]).is_some(),
            "leading zeros are fine"
        );
        assert!(PreparedKey::new(&modulus, &[1, 0, 1]).is_some());
    }

    use super::*;
    use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
    use rsa::signature::{SignatureEncoding, Signer, Verifier};
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    use rsa::{RsaPrivateKey, RsaPublicKey};

    struct Case {
        public: RsaPublicKey,
        prepared: PreparedKey,
        signing: SigningKey<Sha256>,
    }

    fn case(bits: usize, rng: &mut impl rsa::rand_core::CryptoRngCore) -> Case {
        let private = RsaPrivateKey::new(rng, bits).unwrap();
        let public = private.to_public_key();
        let prepared = PreparedKey::new(&public.n().to_bytes_be(), &public.e().to_bytes_be()).unwrap();
        Case {
            public,
            prepared,
            signing: SigningKey::<Sha256>::new(private),
        }
    }

    /// The reference answer: the `rsa` crate.
    fn reference(public: &RsaPublicKey, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = Signature::try_from(signature) else {
            return false;
        };
        VerifyingKey::<Sha256>::new(public.clone())
            .verify(message, &signature)
            .is_ok()
    }

    /// Every way to spoil a valid signature the issue lists, and then some.
    fn corruptions(
        c: &Case,
        message: &[u8],
        good: &[u8],
        rng: &mut impl rsa::rand_core::RngCore,
    ) -> Vec<(&'static str, Vec<u8>)> {
        let k = good.len();
        let n = c.public.n().to_bytes_be();
        let mut out = Vec::new();
        let mut flipped = good.to_vec();
        let bit = (rng.next_u32() as usize) % (k * 8);
        flipped[bit / 8] ^= 1 << (bit % 8);
        out.push(("one bit flipped", flipped));
        out.push(("s = n", n.clone()));
        let mut above = n.clone();
        if let Some(last) = above.last_mut() {
            *last = last.wrapping_add(1);
        }
        out.push(("s = n + 1", above));
        out.push(("all ones", vec![0xff; k]));
        out.push(("zero", vec![0; k]));
        out.push(("one", {
            let mut v = vec![0; k];
            v[k - 1] = 1;
            v
        }));
        out.push(("one byte short", good[1..].to_vec()));
        out.push(("one byte long", [&[0u8][..], good].concat()));
        out.push(("empty", Vec::new()));
        // Correct RSA operations on wrong encodings: sign crafted messages
        // with the raw private key so only the encoding is wrong.
        let digest = Sha256::digest(message);
        let other_digest = Sha256::digest(b"another message");
        out.push((
            "signature of another message",
            c.signing.sign(b"another message").to_vec(),
        ));
        let _ = other_digest;
        let sha1_info: [u8; 15] = [
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
        ];
        out.push(("wrong DigestInfo", raw_sign(c, &encode(k, &sha1_info, &digest[..20]))));
        out.push((
            "DigestInfo without NULL",
            raw_sign(c, &encode(k, &SHA256_DIGEST_INFO[2..], &digest).to_vec()),
        ));
        let mut bad_padding = encode(k, &SHA256_DIGEST_INFO, &digest);
        bad_padding[5] = 0xfe;
        out.push(("wrong padding byte", raw_sign(c, &bad_padding)));
        let mut block_type_2 = encode(k, &SHA256_DIGEST_INFO, &digest);
        block_type_2[1] = 0x02;
        out.push(("block type 2", raw_sign(c, &block_type_2)));
        let mut no_separator = encode(k, &SHA256_DIGEST_INFO, &digest);
        let sep = k - 32 - SHA256_DIGEST_INFO.len() - 1;
        no_separator[sep] = 0xff;
        out.push(("no zero separator", raw_sign(c, &no_separator)));
        out
    }

    /// EMSA-PKCS1-v1_5 with any prefix (for building wrong encodings).
    fn encode(k: usize, prefix: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut em = vec![0x00, 0x01];
        em.extend(std::iter::repeat_n(0xff, k - 3 - prefix.len() - digest.len()));
        em.push(0x00);
        em.extend_from_slice(prefix);
        em.extend_from_slice(digest);
        em
    }

    /// m^d mod n with the `rsa` crate's raw decryption primitive.
    fn raw_sign(c: &Case, em: &[u8]) -> Vec<u8> {
        let private: &RsaPrivateKey = c.signing.as_ref();
        let m = rsa::BigUint::from_bytes_be(em);
        let s = m.modpow(private.d(), private.n());
        let bytes = s.to_bytes_be();
        [vec![0u8; c.public.size() - bytes.len()], bytes].concat()
    }

    fn differential(keys: usize, signatures_per_key: usize, bits: &[usize]) -> usize {
        let mut rng = rsa::rand_core::OsRng;
        let mut checked = 0;
        for i in 0..keys {
            let c = case(bits[i % bits.len()], &mut rng);
            for j in 0..signatures_per_key {
                let message = format!("header.payload-{i}-{j}-{}", rsa::rand_core::RngCore::next_u64(&mut rng));
                let good = c.signing.sign(message.as_bytes()).to_vec();
                assert!(c.prepared.verify(message.as_bytes(), &good), "valid signature refused");
                assert!(reference(&c.public, message.as_bytes(), &good));
                checked += 1;
                for (what, bad) in corruptions(&c, message.as_bytes(), &good, &mut rng) {
                    let ours = c.prepared.verify(message.as_bytes(), &bad);
                    let theirs = reference(&c.public, message.as_bytes(), &bad);
                    assert_eq!(ours, theirs, "{what}: ours {ours}, rsa crate {theirs}");
                    assert!(!ours, "{what} accepted");
                    checked += 1;
                }
            }
        }
        checked
    }

    #[test]
    fn agrees_with_the_rsa_crate_on_random_keys_and_corrupted_signatures() {
        let checked = differential(8, 20, &[2048, 2048, 3072, 4096]);
        assert!(checked > 2000, "{checked} cases");
    }

    #[test]
    #[ignore = "long: run with `cargo test --release -- --ignored`"]
    fn agrees_with_the_rsa_crate_on_many_keys() {
        let checked = differential(200, 50, &[2048, 2048, 2048, 3072, 4096]);
        println!("{checked} cases");
    }

    #[test]
    fn keys_outside_the_fast_path_are_declined() {
        let mut rng = rsa::rand_core::OsRng;
        let c = case(2048, &mut rng);
        let n = c.public.n().to_bytes_be();
        assert!(PreparedKey::new(&n, &[3]).is_none(), "e = 3");
        assert!(PreparedKey::new(&n[..128], &[1, 0, 1]).is_none(), "1024 bits");
        let mut even = n.clone();
        if let Some(last) = even.last_mut() {
            *last &= 0xfe;
        }
        assert!(PreparedKey::new(&even, &[1, 0, 1]).is_none(), "even modulus");
        assert!(
            PreparedKey::new(&[&[0u8, 0][..], &n].concat(), &[0, 1, 0, 1]).is_some(),
            "leading zeros are fine"
        );
    }

    #[test]
    fn a_published_vector_verifies() {
        // RFC 7515 appendix A.2: an RS256 JWS with its published RSA key.
        let n = base64url(rfc7515::N);
        let key = PreparedKey::new(&n, &[1, 0, 1]).unwrap();
        let input = rfc7515::INPUT;
        let signature = base64url(rfc7515::SIGNATURE);
        assert!(key.verify(input, &signature));
        let mut tampered = input.to_vec();
        tampered[40] ^= 1;
        assert!(!key.verify(&tampered, &signature));
    }

    fn base64url(text: &str) -> Vec<u8> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        URL_SAFE_NO_PAD.decode(text).unwrap()
    }

    /// A host verifier that is the rsa crate: what Envoy's should agree with.
    struct RsaCrateHost;

    impl RsaHost for RsaCrateHost {
        fn verify_pkcs1_sha256(&self, spki: &[u8], message: &[u8], signature: &[u8]) -> Option<bool> {
            use rsa::pkcs8::DecodePublicKey;
            let key = RsaPublicKey::from_public_key_der(spki).ok()?;
            let verifier = VerifyingKey::<sha2::Sha256>::new(key);
            let signature = Signature::try_from(signature).ok()?;
            Some(verifier.verify(message, &signature).is_ok())
        }
    }

    /// Says yes to everything, or cannot be asked: never to be trusted.
    struct Yes(Option<bool>);

    impl RsaHost for Yes {
        fn verify_pkcs1_sha256(&self, _: &[u8], _: &[u8], _: &[u8]) -> Option<bool> {
            self.0
        }
    }

    #[test]
    fn a_host_verifier_is_trusted_only_if_it_agrees_on_the_known_vector() {
        assert!(host_agrees(&RsaCrateHost));
        assert!(!host_agrees(&Yes(Some(true))), "a verifier that accepts anything");
        assert!(!host_agrees(&Yes(Some(false))), "a verifier that refuses everything");
        assert!(!host_agrees(&Yes(None)), "a host without a verifier");
    }
}
