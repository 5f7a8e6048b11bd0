//! JWT access token verification (RFC 9068, RFC 8725).
//!
//! One linear function, one reason per failure. The verifier decides the
//! algorithm: the token's `alg` must be on the configured allow-list *and*
//! equal the one algorithm its key is bound to. `jku`, `x5u` and other key
//! locations in the token are never followed; a `crit` header is refused.

use jwt_compact::alg::Rsa;
use jwt_compact::{AlgorithmExt, Claims, ParseError, UntrustedToken, ValidationError};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::jwks::KeySet;
use crate::principal::{Principal, PrincipalKind, ScopeClaim};
use crate::rejection::Rejection;

/// The claim rules a token must meet.
#[derive(Debug, Clone)]
pub struct ClaimRules<'a> {
    pub issuers: &'a [String],
    pub audiences: &'a [String],
    pub algorithms: &'a [String],
    pub clock_skew_seconds: u64,
    pub require_at_jwt_typ: bool,
}

/// Why a JWT was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// The token names a `kid` that is not in the key set. Kept apart from
    /// other failures: it may mean the issuer rotated its keys.
    UnknownKey,
    /// No signing keys at all yet (remote keys not fetched): the token may
    /// be fine, so this is 503, not 401.
    NoKeys,
    /// Any other failure; the text is safe to send to the client.
    Invalid(&'static str),
}

impl From<JwtError> for Rejection {
    fn from(e: JwtError) -> Self {
        match e {
            JwtError::UnknownKey => Rejection::InvalidToken("the token's signing key is not known"),
            JwtError::NoKeys => Rejection::Unavailable("the signing keys are not available yet; retry later"),
            JwtError::Invalid(reason) => Rejection::InvalidToken(reason),
        }
    }
}

/// JOSE header fields jwt-compact does not model but we must see.
#[derive(Debug, Clone, Default, Deserialize)]
struct ExtraHeader {
    crit: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct AccessTokenClaims {
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    scope: Option<ScopeClaim>,
    client_id: Option<String>,
    sub: Option<String>,
    client_db: Option<String>,
    client_system_user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn any_in(&self, accepted: &[String]) -> bool {
        match self {
            Self::One(a) => accepted.contains(a),
            Self::Many(list) => list.iter().any(|a| accepted.contains(a)),
        }
    }
}

fn rsa_algorithm(name: &str) -> Option<Rsa> {
    Some(match name {
        "RS256" => Rsa::rs256(),
        "RS384" => Rsa::rs384(),
        "RS512" => Rsa::rs512(),
        "PS256" => Rsa::ps256(),
        "PS384" => Rsa::ps384(),
        "PS512" => Rsa::ps512(),
        _ => return None,
    })
}

/// SHA-256 of the JWS signing input (`header.payload`): the key of the
/// verified-token cache and, for RS256, the digest the signature is checked
/// against, so a request hashes its token once.
pub fn signing_digest(token: &str) -> [u8; 32] {
    let input = token.rsplit_once('.').map_or(token, |(input, _)| input);
    Sha256::digest(input.as_bytes()).into()
}

/// Verifies a JWT access token and returns who it speaks for.
/// `now` is seconds since the epoch, from the host clock.
pub fn verify(token: &str, keys: &KeySet, rules: &ClaimRules<'_>, now: u64) -> Result<Principal, JwtError> {
    verify_with_digest(token, &signing_digest(token), keys, rules, now)
}

/// [`verify`] with the [`signing_digest`] already computed.
pub fn verify_with_digest(
    token: &str,
    digest: &[u8; 32],
    keys: &KeySet,
    rules: &ClaimRules<'_>,
    now: u64,
) -> Result<Principal, JwtError> {
    let invalid = JwtError::Invalid;
    let untrusted = UntrustedToken::<ExtraHeader>::try_from(token).map_err(|e| match e {
        ParseError::InvalidTokenStructure => invalid("the token is not a JWT"),
        ParseError::InvalidBase64Encoding => invalid("the token is not base64url"),
        _ => invalid("the token header is malformed"),
    })?;
    let alg = untrusted.algorithm();
    if !rules.algorithms.iter().any(|a| a == alg) {
        return Err(invalid("the token's algorithm is not allowed"));
    }
    let header = untrusted.header();
    if header.other_fields.crit.is_some() {
        return Err(invalid("the token has critical header parameters"));
    }
    if rules.require_at_jwt_typ {
        let typ = header.token_type.as_deref().unwrap_or_default();
        if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("application/at+jwt") {
            return Err(invalid("the token is not an access token (typ is not at+jwt)"));
        }
    }
    let kid = header.key_id.as_deref().ok_or(invalid("the token has no kid"))?;
    let key = keys.get(kid).ok_or(JwtError::UnknownKey)?;
    if key.algorithm != alg {
        return Err(invalid("the token's algorithm does not match its key"));
    }
    let claims: Claims<AccessTokenClaims> = match (&key.fast, alg) {
        // The fast path: the digest is the one the caller already has; the
        // algorithm was checked against the allow-list and the key above.
        (Some(fast), "RS256") => {
            if !fast.verify_digest(digest, untrusted.signature_bytes()) {
                return Err(invalid("the token's signature is invalid"));
            }
            untrusted
                .deserialize_claims_unchecked()
                .map_err(|_| invalid("the token's claims are malformed"))?
        }
        _ => {
            let algorithm = rsa_algorithm(alg).ok_or(invalid("the token's algorithm is not allowed"))?;
            let token = algorithm
                .validator::<AccessTokenClaims>(&key.key)
                .validate(&untrusted)
                .map_err(|e| match e {
                    ValidationError::MalformedClaims(_) => invalid("the token's claims are malformed"),
                    ValidationError::AlgorithmMismatch { .. } => {
                        invalid("the token's algorithm does not match its key")
                    }
                    _ => invalid("the token's signature is invalid"),
                })?;
            token.into_parts().1
        }
    };
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let skew = i64::try_from(rules.clock_skew_seconds).unwrap_or(0);
    let exp = claims.expiration.ok_or(invalid("the token has no exp"))?.timestamp();
    if now > exp.saturating_add(skew) {
        return Err(invalid("the token has expired"));
    }
    if let Some(nbf) = claims.not_before {
        if nbf.timestamp() > now.saturating_add(skew) {
            return Err(invalid("the token is not valid yet"));
        }
    }
    let custom = &claims.custom;
    if !custom.iss.as_ref().is_some_and(|iss| rules.issuers.contains(iss)) {
        return Err(invalid("the token's issuer is not accepted"));
    }
    if !custom.aud.as_ref().is_some_and(|aud| aud.any_in(rules.audiences)) {
        return Err(invalid("the token's audience is not accepted"));
    }
    let custom = claims.custom;
    Ok(Principal {
        kind: PrincipalKind::Jwt,
        client_id: custom.client_id,
        subject: custom.sub,
        client_db: custom.client_db,
        system_user: custom.client_system_user,
        scopes: custom.scope.map(ScopeClaim::into_scopes).unwrap_or_default(),
        expires_at: u64::try_from(exp).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, NOW};
    use serde_json::json;

    fn verify_with(token: &str) -> Result<Principal, JwtError> {
        let config = testkit::config();
        verify(token, &config.inline_keys, &testkit::rules(&config), NOW)
    }

    fn invalid(token: &str) -> &'static str {
        match verify_with(token) {
            Err(JwtError::Invalid(reason)) => reason,
            other => panic!("expected Invalid, got {other:?}"),
        }
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
        assert_eq!(invalid(&t), "the token has expired");
        let within_skew = testkit::token_with(|_, c| c["exp"] = json!(NOW - 59));
        assert!(verify_with(&within_skew).is_ok());
    }

    #[test]
    fn missing_exp_is_rejected() {
        let t = testkit::token_with(|_, c| {
            c.as_object_mut().unwrap().remove("exp");
        });
        assert_eq!(invalid(&t), "the token has no exp");
    }

    #[test]
    fn future_nbf_beyond_skew_is_rejected() {
        let t = testkit::token_with(|_, c| c["nbf"] = json!(NOW + 61));
        assert_eq!(invalid(&t), "the token is not valid yet");
        let within_skew = testkit::token_with(|_, c| c["nbf"] = json!(NOW + 59));
        assert!(verify_with(&within_skew).is_ok());
    }

    #[test]
    fn wrong_issuer_is_rejected() {
        let t = testkit::token_with(|_, c| c["iss"] = json!("https://evil.example/id"));
        assert_eq!(invalid(&t), "the token's issuer is not accepted");
    }

    #[test]
    fn wrong_audience_is_rejected() {
        let t = testkit::token_with(|_, c| c["aud"] = json!(["TableAPI"]));
        assert_eq!(invalid(&t), "the token's audience is not accepted");
        let t = testkit::token_with(|_, c| c["aud"] = json!("DomainApi"));
        assert_eq!(
            invalid(&t),
            "the token's audience is not accepted",
            "audiences compare exactly"
        );
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
        assert_eq!(invalid(&t), "the token's signature is invalid");
    }

    #[test]
    fn flipped_signature_byte_is_rejected() {
        let t = testkit::flip_signature_byte(&testkit::token(&["read"]));
        assert_eq!(invalid(&t), "the token's signature is invalid");
    }

    #[test]
    fn alg_none_is_rejected() {
        let t = testkit::unsigned_token();
        assert_eq!(invalid(&t), "the token's algorithm is not allowed");
    }

    #[test]
    fn hs256_with_the_public_key_as_secret_is_rejected() {
        let t = testkit::hs256_token_with_public_key();
        assert_eq!(invalid(&t), "the token's algorithm is not allowed");
    }

    #[test]
    fn allowed_algorithm_must_match_the_keys_algorithm() {
        let config = testkit::config_from(|d| d["algorithms"] = json!(["RS256", "RS512"]));
        let t = testkit::token_with(|h, _| h["alg"] = json!("RS512"));
        assert_eq!(
            verify(&t, &config.inline_keys, &testkit::rules(&config), NOW),
            Err(JwtError::Invalid("the token's algorithm does not match its key"))
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
        assert_eq!(invalid(&t), "the token has no kid");
    }

    #[test]
    fn typ_must_be_at_jwt_when_required() {
        let t = testkit::token_with(|h, _| h["typ"] = json!("JWT"));
        assert_eq!(invalid(&t), "the token is not an access token (typ is not at+jwt)");
        let t = testkit::token_with(|h, _| h["typ"] = json!("application/at+jwt"));
        assert!(verify_with(&t).is_ok());
        let config = testkit::config_from(|d| d["require_at_jwt_typ"] = json!(false));
        let t = testkit::token_with(|h, _| h["typ"] = json!("JWT"));
        assert!(verify(&t, &config.inline_keys, &testkit::rules(&config), NOW).is_ok());
    }

    #[test]
    fn crit_header_is_rejected() {
        let t = testkit::token_with(|h, _| h["crit"] = json!(["exp"]));
        assert_eq!(invalid(&t), "the token has critical header parameters");
    }

    #[test]
    fn garbage_is_rejected() {
        for t in ["garbage", "a.b", "a.b.c", "eyJ.eyJ.sig", "....", "e30.e30.e30"] {
            assert!(matches!(verify_with(t), Err(JwtError::Invalid(_))), "{t}");
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
        assert_eq!(invalid(&t), "the token's claims are malformed");
    }
}
