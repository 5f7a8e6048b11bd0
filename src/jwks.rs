//! JWKS parsing (RFC 7517) and key selection.
//!
//! Keys the filter cannot use (not RSA, `use` other than `sig`, an algorithm
//! outside the allow-list, shorter than 2048 bits, malformed) are skipped and
//! reported, never fatal for the whole set: an issuer that adds an EC key
//! next to its RSA key must not take the edge down.

use std::collections::HashMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::pkcs8::EncodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::algorithm::Algorithm;
use crate::rs256::PreparedKey;

/// Smallest RSA modulus accepted, in bits (RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits: bounds verification cost.
pub const MAX_RSA_BITS: usize = 4096;

/// One usable verification key, bound to exactly one algorithm (RFC 8725 §3.1).
#[derive(Clone)]
pub struct VerificationKey {
    pub kid: String,
    /// The one algorithm this key verifies: the JWK's `alg`, or `RS256` when
    /// the JWK does not name one.
    pub algorithm: Algorithm,
    pub key: RsaPublicKey,
    /// The same key prepared for the fast RS256 path (exponent 65537).
    pub fast: Option<PreparedKey>,
    /// The key as SubjectPublicKeyInfo DER, for the host's verifier (RS256
    /// keys only), converted once per key set.
    pub spki: Option<Vec<u8>>,
    /// SHA-256 of what the key is (algorithm, modulus, exponent): a verified
    /// token remembered under it stays trusted exactly while a key with the
    /// same material is in the set.
    pub material: KeyMaterial,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("bits", &(self.key.size() * 8))
            .finish()
    }
}

/// The identity of a key's material, whatever its `kid`.
pub type KeyMaterial = [u8; 32];

/// Why a key in a JWKS was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// The key's `kid`, or its position when it has none.
    pub key: String,
    pub reason: KeyProblem,
}

/// What is wrong with one key of a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    /// Not a JSON object with the JWK fields' types.
    Malformed,
    NoKty,
    /// A key type the verifier does not use (`EC`, `oct`, ...).
    UnsupportedKty(String),
    /// `use` other than `sig`.
    NotForSigning(String),
    NoKid,
    /// `alg` not on the configured allow-list.
    AlgorithmNotAllowed(String),
    /// `n` or `e` missing.
    Missing(&'static str),
    /// `n` or `e` not base64url.
    NotBase64(&'static str),
    /// Modulus size outside 2048..=4096 bits.
    Size(usize),
    /// The `rsa` crate refused the key.
    InvalidRsa,
    /// Another key already has this `kid`.
    DuplicateKid,
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => f.write_str("malformed JWK"),
            Self::NoKty => f.write_str("no kty"),
            Self::UnsupportedKty(kty) => write!(f, "kty `{kty}` is not supported"),
            Self::NotForSigning(u) => write!(f, "use `{u}` is not `sig`"),
            Self::NoKid => f.write_str("no kid"),
            Self::AlgorithmNotAllowed(alg) => write!(f, "alg `{alg}` is not allowed"),
            Self::Missing(name) => write!(f, "no `{name}`"),
            Self::NotBase64(name) => write!(f, "`{name}` is not base64url"),
            Self::Size(bits) if *bits < MIN_RSA_BITS => {
                write!(f, "{bits}-bit modulus is shorter than {MIN_RSA_BITS} bits")
            }
            Self::Size(bits) => write!(f, "{bits}-bit modulus is longer than {MAX_RSA_BITS} bits"),
            Self::InvalidRsa => f.write_str("invalid RSA key"),
            Self::DuplicateKid => f.write_str("duplicate kid"),
        }
    }
}

/// Why a document is not a JWKS at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    NotJson,
    /// JSON, but not `{"keys": [...]}`.
    NotAJwks,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotJson => f.write_str("not JSON"),
            Self::NotAJwks => f.write_str("not a JWKS (expected {\"keys\": [...]})"),
        }
    }
}

/// The usable keys of a JWKS, by `kid`.
#[derive(Debug, Default, Clone)]
pub struct KeySet {
    keys: HashMap<String, VerificationKey>,
    skipped: Vec<SkippedKey>,
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

/// The fields of a JWK that matter here; everything else is ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

impl KeySet {
    /// Parses a JWKS document. Fails only when the document itself is not a
    /// JWKS; unusable keys are skipped and listed in [`KeySet::skipped`].
    pub fn from_json(bytes: &[u8], allowed_algorithms: &[Algorithm]) -> Result<Self, JwksError> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| JwksError::NotJson)?;
        Self::from_value(&value, allowed_algorithms)
    }

    /// Like [`KeySet::from_json`], from an already parsed value.
    pub fn from_value(value: &serde_json::Value, allowed_algorithms: &[Algorithm]) -> Result<Self, JwksError> {
        let doc = JwksDocument::deserialize(value).map_err(|_| JwksError::NotAJwks)?;
        let mut set = KeySet::default();
        for (i, raw) in doc.keys.iter().enumerate() {
            let label = raw
                .get("kid")
                .and_then(|k| k.as_str())
                .map_or_else(|| format!("#{i}"), str::to_owned);
            match parse_key(raw, allowed_algorithms) {
                Ok(key) if set.keys.contains_key(&key.kid) => set.skipped.push(SkippedKey {
                    key: label,
                    reason: KeyProblem::DuplicateKid,
                }),
                Ok(key) => {
                    set.keys.insert(key.kid.clone(), key);
                }
                Err(reason) => set.skipped.push(SkippedKey { key: label, reason }),
            }
        }
        Ok(set)
    }

    /// These keys, then `other`'s under `kid`s not already present.
    pub fn merged(&self, other: &KeySet) -> KeySet {
        let mut keys = self.keys.clone();
        for (kid, key) in &other.keys {
            keys.entry(kid.clone()).or_insert_with(|| key.clone());
        }
        KeySet {
            keys,
            skipped: other.skipped.clone(),
        }
    }

    /// The key for a token's `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerificationKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys that were not taken, with the reason.
    pub fn skipped(&self) -> &[SkippedKey] {
        &self.skipped
    }

    /// One line for logs: `kid: reason; ...`.
    pub fn skipped_summary(&self) -> String {
        if self.skipped.is_empty() {
            return "no keys in the set".into();
        }
        self.skipped
            .iter()
            .map(|s| format!("{}: {}", s.key, s.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Whether a key with this material is in the set (under any `kid`).
    pub fn has_material(&self, material: &KeyMaterial) -> bool {
        self.keys.values().any(|k| &k.material == material)
    }

    /// SHA-256 over the sorted `kid`s and their material: equal for two sets
    /// with the same usable keys, whatever else differs in the documents.
    pub fn digest(&self) -> [u8; 32] {
        let mut keys: Vec<(&String, &KeyMaterial)> = self.keys.iter().map(|(k, v)| (k, &v.material)).collect();
        keys.sort_unstable();
        let mut hash = Sha256::new();
        for (kid, material) in keys {
            hash.update((kid.len() as u64).to_be_bytes());
            hash.update(kid.as_bytes());
            hash.update(material);
        }
        hash.finalize().into()
    }

    /// The `kid`s of the usable keys, sorted.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }
}

fn parse_key(raw: &serde_json::Value, allowed_algorithms: &[Algorithm]) -> Result<VerificationKey, KeyProblem> {
    let jwk = Jwk::deserialize(raw).map_err(|_| KeyProblem::Malformed)?;
    match jwk.kty.as_deref() {
        Some("RSA") => {}
        Some(other) => return Err(KeyProblem::UnsupportedKty(other.to_owned())),
        None => return Err(KeyProblem::NoKty),
    }
    if let Some(use_) = jwk.use_ {
        if use_ != "sig" {
            return Err(KeyProblem::NotForSigning(use_));
        }
    }
    let kid = jwk.kid.filter(|k| !k.is_empty()).ok_or(KeyProblem::NoKid)?;
    let algorithm = match jwk.alg {
        // RFC 8725 §3.1: a key without `alg` is bound to what ERP.net signs.
        None => Algorithm::Rs256,
        Some(name) => Algorithm::parse(&name)
            .filter(|a| allowed_algorithms.contains(a))
            .ok_or(KeyProblem::AlgorithmNotAllowed(name))?,
    };
    if !allowed_algorithms.contains(&algorithm) {
        return Err(KeyProblem::AlgorithmNotAllowed(algorithm.as_str().to_owned()));
    }
    let n = decode_uint(jwk.n.as_deref(), "n")?;
    let e = decode_uint(jwk.e.as_deref(), "e")?;
    let bits = n.bits();
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(KeyProblem::Size(bits));
    }
    let fast = (algorithm == Algorithm::Rs256)
        .then(|| PreparedKey::new(&n.to_bytes_be(), &e.to_bytes_be()))
        .flatten();
    let material = Sha256::new()
        .chain_update(algorithm.as_str())
        .chain_update([0])
        .chain_update(n.to_bytes_be())
        .chain_update([0])
        .chain_update(e.to_bytes_be())
        .finalize()
        .into();
    let key = RsaPublicKey::new(n, e).map_err(|_| KeyProblem::InvalidRsa)?;
    let spki = (algorithm == Algorithm::Rs256)
        .then(|| key.to_public_key_der().ok().map(|der| der.as_bytes().to_vec()))
        .flatten();
    Ok(VerificationKey {
        kid,
        algorithm,
        key,
        fast,
        spki,
        material,
    })
}

fn decode_uint(field: Option<&str>, name: &'static str) -> Result<BigUint, KeyProblem> {
    let text = field.ok_or(KeyProblem::Missing(name))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| KeyProblem::NotBase64(name))?;
    Ok(BigUint::from_bytes_be(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use serde_json::json;

    fn rs256() -> Vec<Algorithm> {
        vec![Algorithm::Rs256]
    }

    #[test]
    fn good_key_is_taken_by_kid() {
        let set = KeySet::from_value(&testkit::jwks(), &rs256()).unwrap();
        assert_eq!(set.kids(), [testkit::KID]);
        assert_eq!(set.get(testkit::KID).unwrap().algorithm, Algorithm::Rs256);
        assert!(set.get("other").is_none());
    }

    #[test]
    fn unusable_keys_are_skipped_not_fatal() {
        let good = testkit::jwks()["keys"][0].clone();
        let small = testkit::small_rsa_jwk("small");
        let doc = json!({"keys": [
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": good["n"], "e": "AQAB"},
            small,
            {"kty": "RSA", "kid": "hs", "alg": "HS256", "n": good["n"], "e": "AQAB"},
            {"kty": "RSA", "n": good["n"], "e": "AQAB"},
            {"kty": "RSA", "kid": "bad-n", "n": "***", "e": "AQAB"},
            "not an object",
            good,
        ]});
        let set = KeySet::from_value(&doc, &rs256()).unwrap();
        assert_eq!(set.kids(), [testkit::KID]);
        let reasons: Vec<_> = set.skipped().iter().map(|s| s.reason.clone()).collect();
        assert_eq!(
            reasons,
            [
                KeyProblem::UnsupportedKty("EC".into()),
                KeyProblem::NotForSigning("enc".into()),
                KeyProblem::Size(1024),
                KeyProblem::AlgorithmNotAllowed("HS256".into()),
                KeyProblem::NoKid,
                KeyProblem::NotBase64("n"),
                KeyProblem::Malformed,
            ]
        );
        assert_eq!(
            set.skipped()[2].reason.to_string(),
            "1024-bit modulus is shorter than 2048 bits"
        );
    }

    #[test]
    fn a_document_that_is_not_a_jwks_is_an_error() {
        assert!(KeySet::from_json(b"[]", &rs256()).is_err());
        assert!(KeySet::from_json(b"{\"keys\": 1}", &rs256()).is_err());
        assert!(KeySet::from_json(b"<html>", &rs256()).is_err());
    }
}
