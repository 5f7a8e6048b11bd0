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
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use serde::Deserialize;

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
    pub algorithm: String,
    pub key: RsaPublicKey,
    /// The same key prepared for the fast RS256 path (exponent 65537).
    pub fast: Option<PreparedKey>,
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

/// Why a key in a JWKS was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// The key's `kid`, or its position when it has none.
    pub key: String,
    pub reason: String,
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
    pub fn from_json(bytes: &[u8], allowed_algorithms: &[String]) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        Self::from_value(&value, allowed_algorithms)
    }

    /// Like [`KeySet::from_json`], from an already parsed value.
    pub fn from_value(value: &serde_json::Value, allowed_algorithms: &[String]) -> Result<Self, String> {
        let doc =
            JwksDocument::deserialize(value).map_err(|e| format!("not a JWKS (expected {{\"keys\": [...]}}): {e}"))?;
        let mut set = KeySet::default();
        for (i, raw) in doc.keys.iter().enumerate() {
            let label = raw
                .get("kid")
                .and_then(|k| k.as_str())
                .map_or_else(|| format!("#{i}"), str::to_owned);
            match parse_key(raw, allowed_algorithms) {
                Ok(key) if set.keys.contains_key(&key.kid) => set.skipped.push(SkippedKey {
                    key: label,
                    reason: "duplicate kid".into(),
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

    /// The `kid`s of the usable keys, sorted.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }
}

fn parse_key(raw: &serde_json::Value, allowed_algorithms: &[String]) -> Result<VerificationKey, String> {
    let jwk = Jwk::deserialize(raw).map_err(|e| format!("malformed JWK: {e}"))?;
    match jwk.kty.as_deref() {
        Some("RSA") => {}
        Some(other) => return Err(format!("kty `{other}` is not supported")),
        None => return Err("no kty".into()),
    }
    if let Some(use_) = jwk.use_.as_deref() {
        if use_ != "sig" {
            return Err(format!("use `{use_}` is not `sig`"));
        }
    }
    let kid = jwk.kid.filter(|k| !k.is_empty()).ok_or("no kid")?;
    let algorithm = jwk.alg.unwrap_or_else(|| "RS256".into());
    if !allowed_algorithms.contains(&algorithm) {
        return Err(format!("alg `{algorithm}` is not allowed"));
    }
    let n = decode_uint(jwk.n.as_deref(), "n")?;
    let e = decode_uint(jwk.e.as_deref(), "e")?;
    let bits = n.bits();
    if bits < MIN_RSA_BITS {
        return Err(format!("{bits}-bit modulus is shorter than {MIN_RSA_BITS} bits"));
    }
    if bits > MAX_RSA_BITS {
        return Err(format!("{bits}-bit modulus is longer than {MAX_RSA_BITS} bits"));
    }
    let fast = (algorithm == "RS256")
        .then(|| PreparedKey::new(&n.to_bytes_be(), &e.to_bytes_be()))
        .flatten();
    let key = RsaPublicKey::new(n, e).map_err(|e| format!("invalid RSA key: {e}"))?;
    Ok(VerificationKey {
        kid,
        algorithm,
        key,
        fast,
    })
}

fn decode_uint(field: Option<&str>, name: &str) -> Result<BigUint, String> {
    let text = field.ok_or_else(|| format!("no `{name}`"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| format!("`{name}` is not base64url"))?;
    Ok(BigUint::from_bytes_be(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use serde_json::json;

    fn rs256() -> Vec<String> {
        vec!["RS256".into()]
    }

    #[test]
    fn good_key_is_taken_by_kid() {
        let set = KeySet::from_value(&testkit::jwks(), &rs256()).unwrap();
        assert_eq!(set.kids(), [testkit::KID]);
        assert_eq!(set.get(testkit::KID).unwrap().algorithm, "RS256");
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
        let reasons: Vec<_> = set
            .skipped()
            .iter()
            .map(|s| (s.key.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 7, "{reasons:?}");
        assert!(reasons[0].1.contains("kty `EC`"));
        assert!(reasons[1].1.contains("use `enc`"));
        assert!(reasons[2].1.contains("1024-bit"));
        assert!(reasons[3].1.contains("HS256"));
        assert_eq!(reasons[4].1, "no kid");
        assert!(reasons[5].1.contains("base64url"));
    }

    #[test]
    fn a_document_that_is_not_a_jwks_is_an_error() {
        assert!(KeySet::from_json(b"[]", &rs256()).is_err());
        assert!(KeySet::from_json(b"{\"keys\": 1}", &rs256()).is_err());
        assert!(KeySet::from_json(b"<html>", &rs256()).is_err());
    }
}
