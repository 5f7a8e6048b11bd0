//! ES256 (P-256), ES384 (P-384), ES512 (P-521) and EdDSA (Ed25519): the
//! attacks the RS256 tests cover,
//! on curves. Keys: wrong curve, wrong type, points that are not points,
//! small-order Ed25519 keys. Tokens: key confusion across types and
//! algorithms, and every malformed signature encoding.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::jwt::algorithm::Algorithm;
use crate::jwt::jwks::{KeyProblem, KeySet};
use crate::jwt::{verify, JwtError};
use crate::principal::Principal;
use crate::testing::{self as testkit, curve_config, curve_keys, curve_token, ed25519_key, p256_key, NOW};
use erp_devstack::tokens::{self, CurveKey};

fn check(token: &str) -> Result<Principal, JwtError> {
    let config = curve_config();
    verify(token, &config.inline_keys, &testkit::rules(&config), NOW)
}

fn parts(token: &str) -> (&str, Vec<u8>) {
    let (input, signature) = token.rsplit_once('.').unwrap();
    (input, URL_SAFE_NO_PAD.decode(signature).unwrap())
}

fn with_signature(token: &str, signature: &[u8]) -> String {
    format!("{}.{}", parts(token).0, URL_SAFE_NO_PAD.encode(signature))
}

fn keys_of(jwks: Value, algorithms: &[Algorithm]) -> KeySet {
    KeySet::from_value(&json!({ "keys": jwks }), algorithms).unwrap()
}

fn skipped(jwk: Value, algorithms: &[Algorithm]) -> KeyProblem {
    let set = keys_of(json!([jwk]), algorithms);
    assert!(set.is_empty(), "the key was taken");
    set.skipped()[0].reason.clone()
}

const CURVES: [Algorithm; 3] = [Algorithm::Es256, Algorithm::EdDsa, Algorithm::Ed25519];

#[test]
fn es256_and_eddsa_tokens_verify_with_their_keys() {
    for key in curve_keys() {
        let principal = check(&curve_token(&key, |_, _| {})).unwrap();
        assert_eq!(principal.client_id.as_deref(), Some("my.trusted.app/first"), "{key:?}");
        assert_eq!(principal.scopes, ["DomainApi", "read"]);
    }
}

/// ES256's malleability, accepted on purpose (see `verified_in_module`):
/// an honest signer makes high-S signatures about half the time, so both
/// halves verify; the twin is the same grant under another fingerprint.
#[test]
fn an_es256_signature_and_its_twin_in_the_other_half_both_verify() {
    let mut seen_high = false;
    for i in 0..16 {
        let token = curve_token(&p256_key(), |_, c| c["jti"] = json!(format!("t{i}")));
        let (_, signature) = parts(&token);
        let signature = p256::ecdsa::Signature::from_slice(&signature).unwrap();
        seen_high |= signature.normalize_s().is_some();
        let (r, s) = signature.split_scalars();
        let twin = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
        assert!(check(&token).is_ok());
        assert!(check(&with_signature(&token, &twin.to_bytes())).is_ok());
    }
    assert!(seen_high, "the signer never made a high-S signature in 16 tokens");
}

#[test]
fn curve_tokens_claims_are_read_only_under_a_good_signature() {
    for key in curve_keys() {
        let token = curve_token(&key, |_, c| c["exp"] = json!("tomorrow"));
        assert_eq!(check(&token).unwrap_err(), JwtError::MalformedClaims, "{key:?}");
        let (_, mut signature) = parts(&token);
        signature[0] ^= 1;
        let forged = with_signature(&token, &signature);
        assert_eq!(check(&forged).unwrap_err(), JwtError::BadSignature, "{key:?}");
    }
}

#[test]
fn the_fully_specified_ed25519_name_needs_a_key_bound_to_it() {
    let key = CurveKey::ed25519("ed-fully", "trusted ed25519");
    let mut jwk = key.jwk();
    jwk["alg"] = json!("Ed25519");
    let config = testkit::config_from(|c| {
        c["algorithms"] = json!(["Ed25519"]);
        c["jwks"] = json!({ "keys": [jwk] });
    });
    let rules = testkit::rules(&config);
    let named = curve_token(&key, |h, _| h["alg"] = json!("Ed25519"));
    assert!(verify(&named, &config.inline_keys, &rules, NOW).is_ok());
    // The same signature under the registered name: the key is bound to one.
    let registered = curve_token(&key, |_, _| {});
    assert_eq!(
        verify(&registered, &config.inline_keys, &rules, NOW).unwrap_err(),
        JwtError::AlgorithmNotAllowed
    );
}

#[test]
fn curve_tokens_are_refused_unless_their_algorithm_is_listed() {
    let config = testkit::config(); // RS256 only
    for key in curve_keys() {
        let token = curve_token(&key, |_, _| {});
        let got = verify(&token, &config.inline_keys, &testkit::rules(&config), NOW);
        assert_eq!(got.unwrap_err(), JwtError::AlgorithmNotAllowed, "{key:?}");
    }
    // Their keys in an RS256-only set are skipped, not fatal.
    let set = keys_of(json!([p256_key().jwk(), ed25519_key().jwk()]), &[Algorithm::Rs256]);
    let reasons: Vec<_> = set.skipped().iter().map(|s| s.reason.clone()).collect();
    assert_eq!(
        reasons,
        [
            KeyProblem::AlgorithmNotAllowed("ES256".into()),
            KeyProblem::AlgorithmNotAllowed("EdDSA".into())
        ]
    );
}

#[test]
fn keys_without_alg_are_bound_to_the_one_algorithm_of_their_curve() {
    for (key, alg) in [(p256_key(), Algorithm::Es256), (ed25519_key(), Algorithm::EdDsa)] {
        let mut jwk = key.jwk();
        jwk.as_object_mut().unwrap().remove("alg");
        let set = keys_of(json!([jwk]), &CURVES);
        assert_eq!(set.get(key.kid()).unwrap().algorithm, alg);
    }
}

#[test]
fn keys_on_other_curves_or_of_the_wrong_shape_are_skipped() {
    let p256 = p256_key().jwk();
    let ed = ed25519_key().jwk();
    let patched = |base: &Value, patch: &dyn Fn(&mut Value)| {
        let mut jwk = base.clone();
        patch(&mut jwk);
        jwk
    };
    let cases: Vec<(Value, KeyProblem)> = vec![
        (
            patched(&p256, &|j| j["crv"] = json!("P-192")),
            KeyProblem::UnsupportedCurve("P-192".into()),
        ),
        // A P-256 point labelled P-384 (its `alg` still ES256): bound to
        // neither.
        (
            patched(&p256, &|j| j["crv"] = json!("P-384")),
            KeyProblem::AlgorithmKeyMismatch("ES256".into()),
        ),
        (
            patched(&p256, &|j| j["crv"] = json!("secp256k1")),
            KeyProblem::UnsupportedCurve("secp256k1".into()),
        ),
        (
            patched(&ed, &|j| j["crv"] = json!("X25519")),
            KeyProblem::UnsupportedCurve("X25519".into()),
        ),
        (
            patched(&ed, &|j| j["crv"] = json!("Ed448")),
            KeyProblem::UnsupportedCurve("Ed448".into()),
        ),
        // The P-256 coordinates under the Ed25519 type, and back.
        (
            patched(&p256, &|j| j["kty"] = json!("OKP")),
            KeyProblem::UnsupportedCurve("P-256".into()),
        ),
        (
            patched(&ed, &|j| j["kty"] = json!("EC")),
            KeyProblem::UnsupportedCurve("Ed25519".into()),
        ),
        (
            patched(&p256, &|j| {
                j.as_object_mut().unwrap().remove("crv");
            }),
            KeyProblem::Missing("crv"),
        ),
        (
            patched(&p256, &|j| {
                j.as_object_mut().unwrap().remove("y");
            }),
            KeyProblem::Missing("y"),
        ),
        (patched(&p256, &|j| j["x"] = json!("***")), KeyProblem::NotBase64("x")),
        // An algorithm of another key type.
        (
            patched(&p256, &|j| j["alg"] = json!("EdDSA")),
            KeyProblem::AlgorithmKeyMismatch("EdDSA".into()),
        ),
        (
            patched(&ed, &|j| j["alg"] = json!("ES256")),
            KeyProblem::AlgorithmKeyMismatch("ES256".into()),
        ),
        (
            patched(&testkit::key().jwk(), &|j| j["alg"] = json!("ES256")),
            KeyProblem::AlgorithmKeyMismatch("ES256".into()),
        ),
    ];
    let mut algorithms = CURVES.to_vec();
    algorithms.push(Algorithm::Rs256);
    for (jwk, expected) in cases {
        assert_eq!(skipped(jwk.clone(), &algorithms), expected, "{jwk}");
    }
}

#[test]
fn points_that_are_not_points_are_skipped() {
    let p256 = p256_key().jwk();
    let y = URL_SAFE_NO_PAD.decode(p256["y"].as_str().unwrap()).unwrap();
    let mut off_curve = y.clone();
    off_curve[31] ^= 1;
    let zero = URL_SAFE_NO_PAD.encode([0u8; 32]);
    let short = URL_SAFE_NO_PAD.encode(&y[1..]);
    let mut long = vec![0u8];
    long.extend_from_slice(&y);
    for (field, value) in [
        ("y", URL_SAFE_NO_PAD.encode(&off_curve)),
        ("y", short.clone()),
        ("y", URL_SAFE_NO_PAD.encode(&long)),
    ] {
        let mut jwk = p256.clone();
        jwk[field] = json!(value);
        assert_eq!(
            skipped(jwk, &CURVES),
            KeyProblem::InvalidPoint("P-256"),
            "{field}={value}"
        );
    }
    // (0, 0), which the SEC 1 encoding of the identity resembles.
    let mut jwk = p256.clone();
    jwk["x"] = json!(zero);
    jwk["y"] = json!(zero);
    assert_eq!(skipped(jwk, &CURVES), KeyProblem::InvalidPoint("P-256"));

    // Ed25519: the identity and a point of order 2 are small-order keys that
    // "verify" signatures of many messages; a 31-byte key is no key.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut order_two = [0u8; 32];
    order_two[0] = 0xec;
    order_two[1..31].fill(0xff);
    order_two[31] = 0x7f;
    for x in [identity.to_vec(), order_two.to_vec(), vec![7u8; 31]] {
        let mut jwk = ed25519_key().jwk();
        jwk["x"] = json!(URL_SAFE_NO_PAD.encode(&x));
        assert_eq!(skipped(jwk, &CURVES), KeyProblem::InvalidPoint("Ed25519"), "{x:?}");
    }
}

#[test]
fn key_confusion_across_types_and_algorithms_is_refused() {
    let p256 = p256_key();
    let ed = ed25519_key();
    let claims = tokens::claims(NOW, &["read"]);
    let header = |alg: &str, kid: &str| json!({"alg": alg, "kid": kid, "typ": "at+jwt"});
    let cases = [
        // A curve signature claiming the RSA key, and the other way round.
        (
            p256.sign(&header("ES256", testkit::KID), &claims),
            JwtError::KeyAlgorithmMismatch,
        ),
        (
            ed.sign(&header("EdDSA", testkit::KID), &claims),
            JwtError::KeyAlgorithmMismatch,
        ),
        (
            tokens::sign(&header("RS256", testkit::ES256_KID), &claims, testkit::key()),
            JwtError::KeyAlgorithmMismatch,
        ),
        // One curve's signature under the other curve's key.
        (
            p256.sign(&header("ES256", testkit::EDDSA_KID), &claims),
            JwtError::KeyAlgorithmMismatch,
        ),
        (
            ed.sign(&header("EdDSA", testkit::ES256_KID), &claims),
            JwtError::KeyAlgorithmMismatch,
        ),
        // The right key named, another key's algorithm claimed.
        (
            ed.sign(&header("ES256", testkit::EDDSA_KID), &claims),
            JwtError::KeyAlgorithmMismatch,
        ),
        // HMAC with the public key's bytes as the secret.
        (
            tokens::sign_hs256(
                &header("HS256", testkit::ES256_KID),
                &claims,
                p256.jwk()["x"].as_str().unwrap().as_bytes(),
            )
            .unwrap(),
            JwtError::AlgorithmNotAllowed,
        ),
        (
            tokens::sign_hs256(
                &header("HS256", testkit::EDDSA_KID),
                &claims,
                &URL_SAFE_NO_PAD.decode(ed.jwk()["x"].as_str().unwrap()).unwrap(),
            )
            .unwrap(),
            JwtError::AlgorithmNotAllowed,
        ),
        (
            tokens::unsigned(&header("none", testkit::ES256_KID), &claims),
            JwtError::AlgorithmNotAllowed,
        ),
        // Another algorithm of the family, listed, under a P-256 key.
        (
            p256.sign(&header("ES384", testkit::ES256_KID), &claims),
            JwtError::KeyAlgorithmMismatch,
        ),
        // An algorithm of the family that is not listed.
        (
            p256.sign(&header("ES256K", testkit::ES256_KID), &claims),
            JwtError::AlgorithmNotAllowed,
        ),
    ];
    for (token, expected) in cases {
        assert_eq!(
            check(&token).unwrap_err(),
            expected,
            "{}",
            token.split('.').next().unwrap()
        );
    }
}

#[test]
fn malformed_signatures_are_refused() {
    for key in curve_keys() {
        let token = curve_token(&key, |_, _| {});
        let forged = key.forged_signatures(parts(&token).0.as_bytes());
        assert!(forged.len() >= 12, "{key:?}");
        for (what, signature) in forged {
            assert_eq!(
                check(&with_signature(&token, &signature)).unwrap_err(),
                JwtError::BadSignature,
                "{key:?}: {what}"
            );
        }
    }
}

#[test]
fn es256_accepts_the_high_s_twin_as_rfc_7518_does() {
    // ECDSA signatures are malleable: (r, n - s) verifies as well as (r, s).
    // JWS does not require low S, and neither do jwt_authn or BoringSSL:
    // the twin is accepted (it is another string, so it is cached apart).
    let token = curve_token(&p256_key(), |_, _| {});
    let signature = p256::ecdsa::Signature::from_slice(&parts(&token).1).unwrap();
    let (r, s) = signature.split_scalars();
    let twin = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
    assert!(check(&with_signature(&token, &twin.to_bytes())).is_ok());
}

#[test]
fn claim_checks_apply_to_curve_tokens_too() {
    for key in curve_keys() {
        let expired = curve_token(&key, |_, c| c["exp"] = json!(NOW - 61));
        assert_eq!(check(&expired).unwrap_err(), JwtError::Expired);
        let wrong_typ = curve_token(&key, |h, _| h["typ"] = json!("JWT"));
        assert_eq!(check(&wrong_typ).unwrap_err(), JwtError::NotAnAccessToken);
        let unknown = curve_token(&key, |h, _| h["kid"] = json!("nobody"));
        assert_eq!(check(&unknown).unwrap_err(), JwtError::UnknownKey);
    }
}

#[test]
fn curve_keys_are_remembered_by_their_material() {
    let set = keys_of(json!([p256_key().jwk(), ed25519_key().jwk()]), &CURVES);
    let p = set.get(testkit::ES256_KID).unwrap();
    let e = set.get(testkit::EDDSA_KID).unwrap();
    assert_ne!(p.material, e.material);
    // The same key under another kid has the same material; another key not.
    let mut renamed = p256_key().jwk();
    renamed["kid"] = json!("renamed");
    let again = keys_of(json!([renamed]), &CURVES);
    assert_eq!(again.get("renamed").unwrap().material, p.material);
    let other = CurveKey::p256(testkit::ES256_KID, "not trusted").unwrap();
    assert_ne!(
        keys_of(json!([other.jwk()]), &CURVES)
            .get(testkit::ES256_KID)
            .unwrap()
            .material,
        p.material
    );
    assert_eq!(
        format!("{p:?}"),
        format!(
            "VerificationKey {{ kid: {:?}, algorithm: Es256, key: \"P-256\" }}",
            testkit::ES256_KID
        )
    );
}
