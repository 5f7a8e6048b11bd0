//! JWT access token verification (RFC 9068, RFC 8725).
//!
//! One linear function, one reason per failure. The verifier decides the
//! algorithm: the token's `alg` must be on the configured allow-list *and*
//! equal the one algorithm its key is bound to. `jku`, `x5u` and other key
//! locations in the token are never followed; a `crit` header is refused.

pub mod algorithm;
#[cfg(test)]
mod curve_tests;
pub mod jwks;
pub mod jws;
pub mod key_sync;
mod modulus;
pub mod rs256;

use jwt_compact::alg::{Ed25519, Es256, Rsa};
use jwt_compact::{Algorithm as JwtAlgorithm, AlgorithmSignature};

use crate::host::RsaHost;
use crate::jwt::algorithm::Algorithm;
use crate::jwt::jwks::{KeyMaterial, KeySet, PublicKey};
use crate::jwt::jws::{FormError, Jws};
use crate::principal::{Principal, PrincipalKind};
pub use crate::token_problem::JwtError;

/// The claim rules a token must meet.
#[derive(Debug, Clone)]
pub struct ClaimRules<'a> {
    pub issuers: &'a [String],
    pub audiences: &'a [String],
    pub algorithms: &'a [Algorithm],
    pub clock_skew_seconds: u64,
    pub require_at_jwt_typ: bool,
}

/// Whether `signature` over `input` verifies under `key` with jwt-compact's
/// `algorithm` (the checks its validator makes, without re-reading the token).
fn verifies<A: JwtAlgorithm>(algorithm: A, key: &A::VerifyingKey, input: &[u8], signature: &[u8]) -> bool {
    if A::Signature::LENGTH.is_some_and(|length| length.get() != signature.len()) {
        return false;
    }
    A::Signature::try_from_slice(signature).is_ok_and(|s| algorithm.verify_signature(&s, key, input))
}

/// An RSA signature is a number below the modulus, written in exactly the
/// modulus's length (RFC 8017 §8.1.2, §8.2.2: "s out of range"). Checked
/// here whatever the verifier below does: `s + n` must not pass as `s`.
fn in_range(key: &rsa::RsaPublicKey, signature: &[u8]) -> bool {
    use rsa::traits::PublicKeyParts;
    signature.len() == key.size() && rsa::BigUint::from_bytes_be(signature) < *key.n()
}

/// How many of the module's verifications one signature of `alg` counts as:
/// ES384 and ES512 cost six to eight ES256 verifications in V8
/// (`make verify-costs`), so they count eight.
fn module_cost(alg: Algorithm) -> u32 {
    match alg {
        Algorithm::Es384 | Algorithm::Es512 => 8,
        _ => 1,
    }
}

/// The signature checked by the key in the module, with the algorithm the
/// key is bound to.
fn verified_in_module(algorithm: Algorithm, key: &PublicKey, input: &[u8], signature: &[u8]) -> Result<bool, JwtError> {
    let rsa = |a: Rsa, key| in_range(key, signature) && verifies(a, key, input, signature);
    Ok(match (algorithm, key) {
        (Algorithm::Rs256, PublicKey::Rsa(key)) => rsa(Rsa::rs256(), key),
        (Algorithm::Rs384, PublicKey::Rsa(key)) => rsa(Rsa::rs384(), key),
        (Algorithm::Rs512, PublicKey::Rsa(key)) => rsa(Rsa::rs512(), key),
        (Algorithm::Ps256, PublicKey::Rsa(key)) => rsa(Rsa::ps256(), key),
        (Algorithm::Ps384, PublicKey::Rsa(key)) => rsa(Rsa::ps384(), key),
        (Algorithm::Ps512, PublicKey::Rsa(key)) => rsa(Rsa::ps512(), key),
        // Both (r, s) and (r, n - s) verify, and both are accepted: ES256
        // signers (OpenSSL, RustCrypto's p256, most JOSE libraries) do not
        // normalise `s`, so refusing the high one would refuse about half
        // of an honest issuer's tokens. The cost: whoever holds a valid
        // token can make its twin, which is the same grant with another
        // fingerprint (docs/signing-keys.md).
        (Algorithm::Es256, PublicKey::P256(key)) => verifies(Es256, key, input, signature),
        (Algorithm::Es384, PublicKey::P384(key)) => {
            use p384::ecdsa::signature::Verifier;
            p384::ecdsa::Signature::from_slice(signature).is_ok_and(|s| key.verify(input, &s).is_ok())
        }
        (Algorithm::Es512, PublicKey::P521(key)) => {
            use p521::ecdsa::signature::Verifier;
            p521::ecdsa::Signature::from_slice(signature).is_ok_and(|s| key.verify(input, &s).is_ok())
        }
        (Algorithm::EdDsa, PublicKey::Ed25519(key)) => verifies(Ed25519, key, input, signature),
        (Algorithm::Ed25519, PublicKey::Ed25519(key)) => verifies(Ed25519::with_specific_name(), key, input, signature),
        // Keys are bound to an algorithm of their own kind when parsed.
        _ => return Err(JwtError::KeyAlgorithmMismatch),
    })
}

/// A per-second allowance of signatures checked by the module's own
/// verifiers (every algorithm but RS256, which Envoy or the module's
/// vectorised code checks): a flood of forged ES*, EdDSA, PS* or RS384/512
/// signatures costs a worker at most this many verifications a second.
#[derive(Debug)]
pub struct VerifyBudget {
    per_second: u32,
    /// The second of the clock and the verifications made in it.
    window: std::sync::Mutex<(u64, u32)>,
}

impl VerifyBudget {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window: std::sync::Mutex::new((0, 0)),
        }
    }

    /// Takes `weight` verifications in second `now`; false when they are
    /// spent.
    pub fn take(&self, now: u64, weight: u32) -> bool {
        let mut window = self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (second, used) = *window;
        let used = if second == now { used } else { 0 };
        if used.saturating_add(weight) > self.per_second {
            return false;
        }
        *window = (now, used + weight);
        true
    }
}

/// Verifies a JWT access token and returns who it speaks for.
/// `now` is seconds since the epoch, from the host clock.
pub fn verify(token: &str, keys: &KeySet, rules: &ClaimRules<'_>, now: u64) -> Result<Principal, JwtError> {
    verify_with(token, keys, rules, now, None, None).map(|v| v.principal)
}

/// A verified token: who it speaks for, which key material verified it, and
/// whether the host's verifier did.
#[derive(Debug, Clone)]
pub struct Verified {
    pub principal: Principal,
    pub key: KeyMaterial,
    pub by_host: bool,
}

/// [`verify`], with RS256 signatures checked by `host` when it is given
/// and answers (the in-module verifier otherwise).
pub fn verify_with(
    token: &str,
    keys: &KeySet,
    rules: &ClaimRules<'_>,
    now: u64,
    host: Option<&dyn RsaHost>,
    budget: Option<&VerifyBudget>,
) -> Result<Verified, JwtError> {
    let jws = Jws::parse(token).map_err(|e| match e {
        FormError::NotThreeParts => JwtError::NotAJwt,
        FormError::NotBase64 => JwtError::NotBase64,
        FormError::MalformedHeader => JwtError::MalformedHeader,
    })?;
    let header = &jws.header;
    let alg = Algorithm::parse(&header.alg)
        .filter(|a| rules.algorithms.contains(a))
        .ok_or(JwtError::AlgorithmNotAllowed)?;
    if header.crit.is_some() {
        return Err(JwtError::CriticalHeader);
    }
    if rules.require_at_jwt_typ {
        let typ = header.typ.as_deref().unwrap_or_default();
        if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("application/at+jwt") {
            return Err(JwtError::NotAnAccessToken);
        }
    }
    let kid = header.kid.as_deref().ok_or(JwtError::NoKid)?;
    if keys.is_empty() {
        return Err(JwtError::NoKeys);
    }
    let key = keys.get(kid).ok_or(JwtError::UnknownKey)?;
    if key.algorithm != alg {
        return Err(JwtError::KeyAlgorithmMismatch);
    }
    let (input, signature) = (jws.signing_input.as_bytes(), jws.signature.as_slice());
    // The algorithm was checked against the allow-list and the key above.
    let by_host = match (host, &key.spki) {
        (Some(host), Some(spki)) if alg == Algorithm::Rs256 => host.verify_pkcs1_sha256(spki, input, signature),
        _ => None,
    };
    let valid = match (by_host, &key.fast) {
        (Some(valid), _) => valid,
        // The module's own RS256: s^65537 mod n, vectorised for wasm.
        (None, Some(fast)) if alg == Algorithm::Rs256 => fast.verify(input, signature),
        (None, _) if budget.is_some_and(|b| !b.take(now, module_cost(alg))) => {
            return Err(JwtError::VerificationBudgetSpent)
        }
        (None, _) => verified_in_module(alg, &key.key, input, signature)?,
    };
    if !valid {
        return Err(JwtError::BadSignature);
    }
    let claims = jws.claims().ok_or(JwtError::MalformedClaims)?;
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let skew = i64::try_from(rules.clock_skew_seconds).unwrap_or(0);
    let exp = claims.exp.ok_or(JwtError::NoExpiry)?;
    if now > exp.saturating_add(skew) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = claims.nbf {
        if nbf > now.saturating_add(skew) {
            return Err(JwtError::NotYetValid);
        }
    }
    if !claims.iss.as_ref().is_some_and(|iss| rules.issuers.contains(iss)) {
        return Err(JwtError::IssuerNotAccepted);
    }
    if !claims.aud.as_ref().is_some_and(|aud| aud.any_in(rules.audiences)) {
        return Err(JwtError::AudienceNotAccepted);
    }
    let principal = Principal {
        kind: PrincipalKind::Jwt,
        client_id: claims.client_id,
        subject: claims.sub,
        client_db: claims.client_db,
        system_user: claims.client_system_user,
        scopes: match claims.scope {
            Some(claim) => claim.into_scopes().map_err(|_| JwtError::MalformedScope)?,
            None => Vec::new(),
        },
        expires_at: u64::try_from(exp).unwrap_or(0),
        claims: Vec::new(),
    };
    Ok(Verified {
        principal,
        key: key.material,
        by_host: by_host.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self as testkit, NOW};
    use serde_json::json;

    fn verify_with(token: &str) -> Result<Principal, JwtError> {
        let config = testkit::config();
        verify(token, &config.inline_keys, &testkit::rules(&config), NOW)
    }

    fn invalid(token: &str) -> JwtError {
        match verify_with(token) {
            Err(e) => e,
            Ok(p) => panic!("expected a failure, got {p:?}"),
        }
    }

    /// A PS256 key whose modulus leaves room below 2^2048 for `s + n`, and
    /// a PS256 token under it whose `s + n` still fits in 256 bytes.
    fn ps256_token_with_room() -> (KeySet, String, Vec<u8>) {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        use erp_devstack::tokens::{self, SigningKey};
        let key = (0..64)
            .map(|_| SigningKey::generate("ps", 2048).unwrap())
            .find(|k| k.modulus()[0] < 0xc0)
            .expect("a modulus below 0xc0… in 64 tries");
        let mut jwk = key.jwk();
        jwk["alg"] = json!("PS256");
        let keys = KeySet::from_value(&json!({"keys": [jwk]}), &[Algorithm::Ps256]).unwrap();
        let header = json!({"alg": "PS256", "kid": "ps", "typ": "at+jwt"});
        let claims = tokens::claims(NOW, &["read"]);
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let n = rsa::BigUint::from_bytes_be(&key.modulus());
        let limit = rsa::BigUint::from_bytes_be(&[0xff; 256]);
        for _ in 0..64 {
            let signature = key.sign_ps256(input.as_bytes());
            let s = rsa::BigUint::from_bytes_be(&signature);
            if &s + &n <= limit {
                let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&signature));
                let mut plus_n = (&s + &n).to_bytes_be();
                while plus_n.len() < 256 {
                    plus_n.insert(0, 0);
                }
                return (keys, token, plus_n);
            }
        }
        panic!("no PS256 signature with room for s + n in 64 tries")
    }

    #[test]
    fn a_ps256_signature_plus_the_modulus_is_refused() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let (keys, token, plus_n) = ps256_token_with_room();
        let config = testkit::config();
        let mut rules = testkit::rules(&config);
        let allowed = [Algorithm::Ps256];
        rules.algorithms = &allowed;
        assert!(verify(&token, &keys, &rules, NOW).is_ok(), "the PS256 token itself");
        let input = token.rsplit_once('.').unwrap().0;
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&plus_n));
        assert_eq!(verify(&forged, &keys, &rules, NOW).unwrap_err(), JwtError::BadSignature);
    }

    #[test]
    fn valid_token_gives_its_principal() {
        let p = verify_with(&testkit::token(&["DomainApi", "read"])).unwrap();
        assert_eq!(p.kind, PrincipalKind::Jwt);
        assert_eq!(p.client_id.as_deref(), Some("my.trusted.app/first"));
        assert_eq!(p.client_db.as_deref(), Some("E1_DEV"));
        assert_eq!(p.scopes, ["DomainApi", "read"]);
        assert_eq!(p.expires_at, NOW + 3600);
    }

    #[test]
    fn expired_token_is_rejected() {
        let t = testkit::token_with(|_, c| c["exp"] = json!(NOW - 61));
        assert_eq!(invalid(&t), JwtError::Expired);
        let within_skew = testkit::token_with(|_, c| c["exp"] = json!(NOW - 59));
        assert!(verify_with(&within_skew).is_ok());
    }

    #[test]
    fn missing_exp_is_rejected() {
        let t = testkit::token_with(|_, c| {
            c.as_object_mut().unwrap().remove("exp");
        });
        assert_eq!(invalid(&t), JwtError::NoExpiry);
    }

    #[test]
    fn future_nbf_beyond_skew_is_rejected() {
        let t = testkit::token_with(|_, c| c["nbf"] = json!(NOW + 61));
        assert_eq!(invalid(&t), JwtError::NotYetValid);
        let within_skew = testkit::token_with(|_, c| c["nbf"] = json!(NOW + 59));
        assert!(verify_with(&within_skew).is_ok());
    }

    #[test]
    fn wrong_issuer_is_rejected() {
        let t = testkit::token_with(|_, c| c["iss"] = json!("https://evil.example/id"));
        assert_eq!(invalid(&t), JwtError::IssuerNotAccepted);
    }

    #[test]
    fn wrong_audience_is_rejected() {
        let t = testkit::token_with(|_, c| c["aud"] = json!(["TableAPI"]));
        assert_eq!(invalid(&t), JwtError::AudienceNotAccepted);
        let t = testkit::token_with(|_, c| c["aud"] = json!("DomainApi"));
        assert_eq!(invalid(&t), JwtError::AudienceNotAccepted, "audiences compare exactly");
    }

    #[test]
    fn audience_may_be_string_or_array() {
        assert!(verify_with(&testkit::token_with(|_, c| c["aud"] = json!("DomainAPI"))).is_ok());
        assert!(verify_with(&testkit::token_with(|_, c| c["aud"] = json!(["OLAP", "DomainAPI"]))).is_ok());
    }

    #[test]
    fn scope_may_be_string() {
        let p = verify_with(&testkit::token_with(|_, c| c["scope"] = json!("read update"))).unwrap();
        assert_eq!(p.scopes, ["read", "update"]);
    }

    #[test]
    fn signature_of_another_key_is_rejected() {
        let t = testkit::token_signed_by_other_key();
        assert_eq!(invalid(&t), JwtError::BadSignature);
    }

    #[test]
    fn flipped_signature_byte_is_rejected() {
        let t = testkit::flip_signature_byte(&testkit::token(&["read"]));
        assert_eq!(invalid(&t), JwtError::BadSignature);
    }

    #[test]
    fn alg_none_is_rejected() {
        let t = testkit::unsigned_token();
        assert_eq!(invalid(&t), JwtError::AlgorithmNotAllowed);
    }

    #[test]
    fn hs256_with_the_public_key_as_secret_is_rejected() {
        let t = testkit::hs256_token_with_public_key();
        assert_eq!(invalid(&t), JwtError::AlgorithmNotAllowed);
    }

    #[test]
    fn allowed_algorithm_must_match_the_keys_algorithm() {
        let config = testkit::config_from(|d| d["algorithms"] = json!(["RS256", "RS512"]));
        let t = testkit::token_with(|h, _| h["alg"] = json!("RS512"));
        assert_eq!(
            verify(&t, &config.inline_keys, &testkit::rules(&config), NOW),
            Err(JwtError::KeyAlgorithmMismatch)
        );
    }

    #[test]
    fn unknown_kid_is_reported_apart() {
        let t = testkit::token_with(|h, _| h["kid"] = json!("rotated"));
        assert_eq!(verify_with(&t), Err(JwtError::UnknownKey));
    }

    #[test]
    fn missing_kid_is_rejected() {
        let t = testkit::token_with(|h, _| {
            h.as_object_mut().unwrap().remove("kid");
        });
        assert_eq!(invalid(&t), JwtError::NoKid);
    }

    #[test]
    fn typ_must_be_at_jwt_when_required() {
        let t = testkit::token_with(|h, _| h["typ"] = json!("JWT"));
        assert_eq!(invalid(&t), JwtError::NotAnAccessToken);
        let t = testkit::token_with(|h, _| h["typ"] = json!("application/at+jwt"));
        assert!(verify_with(&t).is_ok());
        let config = testkit::config_from(|d| d["require_at_jwt_typ"] = json!(false));
        let t = testkit::token_with(|h, _| h["typ"] = json!("JWT"));
        assert!(verify(&t, &config.inline_keys, &testkit::rules(&config), NOW).is_ok());
    }

    #[test]
    fn scope_elements_that_are_not_scope_tokens_are_rejected() {
        for scope in [
            json!(["read", "update delete"]),
            json!(["read", ""]),
            json!("read\nupdate"),
        ] {
            let t = testkit::token_with(|_, c| c["scope"] = scope.clone());
            assert_eq!(invalid(&t), JwtError::MalformedScope, "{scope}");
        }
    }

    #[test]
    fn crit_header_is_rejected() {
        let t = testkit::token_with(|h, _| h["crit"] = json!(["exp"]));
        assert_eq!(invalid(&t), JwtError::CriticalHeader);
    }

    #[test]
    fn garbage_is_rejected() {
        let cases = [
            ("garbage", JwtError::NotAJwt),
            ("a.b", JwtError::NotAJwt),
            ("a.b.c", JwtError::NotBase64),
            ("eyJ.eyJ.sig", JwtError::NotBase64),
            ("....", JwtError::NotAJwt),
            ("e30.e30.e30", JwtError::MalformedHeader),
            ("e30.e30.***", JwtError::NotBase64),
        ];
        for (t, expected) in cases {
            assert_eq!(verify_with(t), Err(expected), "{t}");
        }
    }

    #[test]
    fn a_set_with_unusable_keys_still_verifies_with_the_good_one() {
        let config = testkit::config();
        let good = testkit::jwks()["keys"][0].clone();
        let doc = json!({"keys": [
            {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "RSA", "kid": "enc-1", "use": "enc", "n": good["n"], "e": "AQAB"},
            testkit::small_rsa_jwk("rsa-1024"),
            good,
        ]});
        let keys = KeySet::from_value(&doc, &config.algorithms).unwrap();
        assert_eq!(keys.skipped().len(), 3);
        let p = verify(&testkit::token(&["read"]), &keys, &testkit::rules(&config), NOW).unwrap();
        assert_eq!(p.scopes, ["read"]);
    }

    #[test]
    fn malformed_claims_are_rejected() {
        let t = testkit::token_with(|_, c| c["exp"] = json!("tomorrow"));
        assert_eq!(invalid(&t), JwtError::MalformedClaims);
    }

    #[test]
    fn claims_are_read_only_under_a_good_signature() {
        let t = testkit::token_with(|_, c| c["exp"] = json!("tomorrow"));
        assert_eq!(invalid(&testkit::flip_signature_byte(&t)), JwtError::BadSignature);
    }
}
