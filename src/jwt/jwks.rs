//! JWKS parsing (RFC 7517) and key selection.
//!
//! Keys the filter cannot use (a type or curve it does not verify with,
//! `use` other than `sig`, an algorithm outside the allow-list, RSA shorter
//! than 2048 bits, a point not on its curve, malformed) are skipped and
//! reported, never fatal for the whole set: an issuer that adds a key of
//! another kind next to its RSA key must not take the edge down.

use std::collections::HashMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::pkcs8::EncodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::jwt::algorithm::{Algorithm, KeyType};
use crate::jwt::rs256::PreparedKey;

/// Smallest RSA modulus accepted, in bits (RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits: bounds verification cost.
pub const MAX_RSA_BITS: usize = 4096;

/// One usable verification key, bound to exactly one algorithm (RFC 8725 §3.1).
#[derive(Clone)]
pub struct VerificationKey {
    pub kid: String,
    /// The one algorithm this key verifies: the JWK's `alg`, or when the
    /// JWK does not name one, `RS256` for RSA (what ERP.net signs), `ES256`
    /// for P-256 and `EdDSA` for Ed25519 (the only ones those keys fit).
    pub algorithm: Algorithm,
    pub key: PublicKey,
    /// The same key prepared for the fast RS256 path (exponent 65537).
    pub fast: Option<PreparedKey>,
    /// The key as SubjectPublicKeyInfo DER, for the host's verifier (RS256
    /// keys only), converted once per key set.
    pub spki: Option<Vec<u8>>,
    /// SHA-256 of what the key is (algorithm and public key): a verified
    /// token remembered under it stays trusted exactly while a key with the
    /// same material is in the set.
    pub material: KeyMaterial,
}

/// A public key of one of the kinds the verifier uses.
#[derive(Clone)]
pub enum PublicKey {
    Rsa(RsaPublicKey),
    /// A P-256 point, checked to be on the curve and not the identity.
    P256(p256::ecdsa::VerifyingKey),
    /// A P-384 point, checked the same way.
    P384(p384::ecdsa::VerifyingKey),
    /// A P-521 point, checked the same way.
    P521(p521::ecdsa::VerifyingKey),
    /// An Ed25519 point, checked to decode and not to be of small order.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl PublicKey {
    /// `RSA-2048`, `P-256`, `Ed25519`: for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Rsa(key) => format!("RSA-{}", key.size() * 8),
            Self::P256(_) => "P-256".into(),
            Self::P384(_) => "P-384".into(),
            Self::P521(_) => "P-521".into(),
            Self::Ed25519(_) => "Ed25519".into(),
        }
    }
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("key", &self.key.describe())
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
    /// A key type the verifier does not use (`oct`, ...).
    UnsupportedKty(String),
    /// A curve the verifier does not use (`P-384`, `X25519`, ...).
    UnsupportedCurve(String),
    /// `alg` names an algorithm for another kind of key (`ES256` on an
    /// RSA key, `RS256` on a P-256 key, ...).
    AlgorithmKeyMismatch(String),
    /// `use` other than `sig`.
    NotForSigning(String),
    NoKid,
    /// `alg` not on the configured allow-list.
    AlgorithmNotAllowed(String),
    /// A field the key type needs (`n`, `e`, `crv`, `x`, `y`) is missing.
    Missing(&'static str),
    /// `n`, `e`, `x` or `y` not base64url.
    NotBase64(&'static str),
    /// A curve point that is not one: a coordinate of the wrong length, not
    /// on the curve, the identity, or an Ed25519 point of small order.
    InvalidPoint(&'static str),
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
            Self::UnsupportedCurve(crv) => write!(f, "crv `{crv}` is not supported"),
            Self::AlgorithmKeyMismatch(alg) => write!(f, "alg `{alg}` does not fit the key type"),
            Self::NotForSigning(u) => write!(f, "use `{u}` is not `sig`"),
            Self::NoKid => f.write_str("no kid"),
            Self::AlgorithmNotAllowed(alg) => write!(f, "alg `{alg}` is not allowed"),
            Self::Missing(name) => write!(f, "no `{name}`"),
            Self::NotBase64(name) => write!(f, "`{name}` is not base64url"),
            Self::InvalidPoint(curve) => write!(f, "not a valid {curve} public key"),
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
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
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
    let key_type = match (jwk.kty.as_deref(), jwk.crv.as_deref()) {
        (Some("RSA"), _) => KeyType::Rsa,
        (Some("EC"), Some("P-256")) => KeyType::P256,
        (Some("EC"), Some("P-384")) => KeyType::P384,
        (Some("EC"), Some("P-521")) => KeyType::P521,
        (Some("OKP"), Some("Ed25519")) => KeyType::Ed25519,
        (Some("EC" | "OKP"), Some(crv)) => return Err(KeyProblem::UnsupportedCurve(crv.to_owned())),
        (Some("EC" | "OKP"), None) => return Err(KeyProblem::Missing("crv")),
        (Some(other), _) => return Err(KeyProblem::UnsupportedKty(other.to_owned())),
        (None, _) => return Err(KeyProblem::NoKty),
    };
    if let Some(use_) = &jwk.use_ {
        if use_ != "sig" {
            return Err(KeyProblem::NotForSigning(use_.clone()));
        }
    }
    let kid = jwk.kid.clone().filter(|k| !k.is_empty()).ok_or(KeyProblem::NoKid)?;
    let algorithm = match &jwk.alg {
        // RFC 8725 §3.1: a key without `alg` is bound to the one algorithm
        // of its kind: what ERP.net signs for RSA, the only fit otherwise.
        None => match key_type {
            KeyType::Rsa => Algorithm::Rs256,
            KeyType::P256 => Algorithm::Es256,
            KeyType::P384 => Algorithm::Es384,
            KeyType::P521 => Algorithm::Es512,
            KeyType::Ed25519 => Algorithm::EdDsa,
        },
        Some(name) => {
            let algorithm = Algorithm::parse(name)
                .filter(|a| allowed_algorithms.contains(a))
                .ok_or_else(|| KeyProblem::AlgorithmNotAllowed(name.clone()))?;
            if algorithm.key_type() != key_type {
                return Err(KeyProblem::AlgorithmKeyMismatch(name.clone()));
            }
            algorithm
        }
    };
    if !allowed_algorithms.contains(&algorithm) {
        return Err(KeyProblem::AlgorithmNotAllowed(algorithm.as_str().to_owned()));
    }
    let (key, public_bytes) = match key_type {
        KeyType::Rsa => return rsa_key(&jwk, kid, algorithm),
        // SEC 1 uncompressed form; decoding checks the point is on the
        // curve and not the identity.
        KeyType::P256 => {
            let sec1 = ec_point(&jwk, "P-256", 32)?;
            let key =
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| KeyProblem::InvalidPoint("P-256"))?;
            (PublicKey::P256(key), sec1)
        }
        KeyType::P384 => {
            let sec1 = ec_point(&jwk, "P-384", 48)?;
            let key =
                p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| KeyProblem::InvalidPoint("P-384"))?;
            (PublicKey::P384(key), sec1)
        }
        KeyType::P521 => {
            let sec1 = ec_point(&jwk, "P-521", 66)?;
            let key =
                p521::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| KeyProblem::InvalidPoint("P-521"))?;
            (PublicKey::P521(key), sec1)
        }
        KeyType::Ed25519 => {
            let x = coordinate(jwk.x.as_deref(), "x", "Ed25519", 32)?;
            let bytes: [u8; 32] = x
                .as_slice()
                .try_into()
                .map_err(|_| KeyProblem::InvalidPoint("Ed25519"))?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .ok()
                // A small-order key verifies signatures of many messages.
                .filter(|k| !k.is_weak())
                .ok_or(KeyProblem::InvalidPoint("Ed25519"))?;
            (PublicKey::Ed25519(key), x)
        }
    };
    Ok(VerificationKey {
        kid,
        algorithm,
        key,
        fast: None,
        spki: None,
        material: material(algorithm, &[&public_bytes]),
    })
}

/// An RSA key: modulus size bounded, prepared for the fast RS256 path and
/// the host's verifier.
fn rsa_key(jwk: &Jwk, kid: String, algorithm: Algorithm) -> Result<VerificationKey, KeyProblem> {
    let n = decode_uint(jwk.n.as_deref(), "n")?;
    let e = decode_uint(jwk.e.as_deref(), "e")?;
    let bits = n.bits();
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(KeyProblem::Size(bits));
    }
    let fast = (algorithm == Algorithm::Rs256)
        .then(|| PreparedKey::new(&n.to_bytes_be(), &e.to_bytes_be()))
        .flatten();
    let material = material(algorithm, &[&n.to_bytes_be(), &e.to_bytes_be()]);
    let key = RsaPublicKey::new(n, e).map_err(|_| KeyProblem::InvalidRsa)?;
    let spki = (algorithm == Algorithm::Rs256)
        .then(|| key.to_public_key_der().ok().map(|der| der.as_bytes().to_vec()))
        .flatten();
    Ok(VerificationKey {
        kid,
        algorithm,
        key: PublicKey::Rsa(key),
        fast,
        spki,
        material,
    })
}

/// SHA-256 over the algorithm's name and the key's public parts, each
/// after a zero byte.
fn material(algorithm: Algorithm, parts: &[&[u8]]) -> KeyMaterial {
    let mut hash = Sha256::new().chain_update(algorithm.as_str());
    for part in parts {
        hash.update([0]);
        hash.update(part);
    }
    hash.finalize().into()
}

fn decode(field: Option<&str>, name: &'static str) -> Result<Vec<u8>, KeyProblem> {
    let text = field.ok_or(KeyProblem::Missing(name))?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| KeyProblem::NotBase64(name))
}

fn decode_uint(field: Option<&str>, name: &'static str) -> Result<BigUint, KeyProblem> {
    decode(field, name).map(|bytes| BigUint::from_bytes_be(&bytes))
}

/// A curve coordinate: exactly 32 bytes (RFC 7518 §6.2.1.2, RFC 8037 §2:
/// the full length, leading zeros kept).
/// An EC key's `x` and `y`, each `len` bytes, as a SEC 1 uncompressed point.
fn ec_point(jwk: &Jwk, curve: &'static str, len: usize) -> Result<Vec<u8>, KeyProblem> {
    let x = coordinate(jwk.x.as_deref(), "x", curve, len)?;
    let y = coordinate(jwk.y.as_deref(), "y", curve, len)?;
    Ok([&[0x04][..], &x, &y].concat())
}

fn coordinate(field: Option<&str>, name: &'static str, curve: &'static str, len: usize) -> Result<Vec<u8>, KeyProblem> {
    let bytes = decode(field, name)?;
    if bytes.len() != len {
        return Err(KeyProblem::InvalidPoint(curve));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing as testkit;
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
                KeyProblem::AlgorithmNotAllowed("ES256".into()),
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
