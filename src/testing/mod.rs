//! Fixtures for the unit tests: keys generated once per test run, a fixed
//! clock, the shipped configuration's shape, and token builders.

use std::sync::OnceLock;

use erp_devstack::tokens::{self, SigningKey};
use serde_json::{json, Value};

use crate::config::Config;
use crate::decision::Engine;
use crate::jwt::ClaimRules;

/// The example PAT from ERP.net's documentation (split so that no literal
/// token stands in the source).
pub(crate) const EXAMPLE_PAT: &str = concat!(
    "enrt_",
    "445659C00F83CCA2D427BF113EFB355319346865C0B4FE5A3C76C16271B06AFF"
);

/// The fixed "now" of every unit test.
pub(crate) const NOW: u64 = 1_700_000_000;
/// `kid` of the key the test configuration trusts.
pub(crate) const KID: &str = "test-key-1";

fn keys() -> &'static (SigningKey, SigningKey) {
    static KEYS: OnceLock<(SigningKey, SigningKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            SigningKey::generate(KID, 2048).unwrap(),
            SigningKey::generate(KID, 2048).unwrap(),
        )
    })
}

/// The trusted key.
pub(crate) fn key() -> &'static SigningKey {
    &keys().0
}

/// A key with the same `kid` that nobody trusts.
pub(crate) fn other_key() -> &'static SigningKey {
    &keys().1
}

pub(crate) fn jwks() -> Value {
    tokens::jwks([key()])
}

pub(crate) fn small_rsa_jwk(kid: &str) -> Value {
    SigningKey::generate(kid, 1024).unwrap().jwk()
}

/// The configuration the unit tests run with (the shipped policy's shape).
pub(crate) fn config_json() -> Value {
    json!({
        "issuers": [tokens::ISSUER],
        "audiences": ["DomainAPI"],
        "jwks": jwks(),
        "routes": [
            {"exact": "/healthz", "public": true},
            {"prefix": "/api/domain/", "methods": ["GET", "HEAD"], "all_of": ["read"]},
            {"prefix": "/api/domain/", "methods": ["POST", "PUT", "PATCH", "MERGE", "DELETE"], "all_of": ["update"]},
        ],
    })
}

pub(crate) fn config_from(patch: impl FnOnce(&mut Value)) -> Config {
    let mut doc = config_json();
    patch(&mut doc);
    Config::from_json(doc.to_string().as_bytes()).unwrap()
}

pub(crate) fn config() -> Config {
    config_from(|_| {})
}

pub(crate) fn engine() -> Engine {
    Engine::new(config())
}

pub(crate) fn rules(config: &Config) -> ClaimRules<'_> {
    ClaimRules {
        issuers: &config.issuers,
        audiences: &config.audiences,
        algorithms: &config.algorithms,
        clock_skew_seconds: config.clock_skew_seconds,
        require_at_jwt_typ: config.require_at_jwt_typ,
    }
}

/// A valid token with these scopes.
pub(crate) fn token(scopes: &[&str]) -> String {
    token_with(|_, c| c["scope"] = json!(scopes))
}

/// A valid token, then `patch` applied to header and claims before signing.
pub(crate) fn token_with(patch: impl FnOnce(&mut Value, &mut Value)) -> String {
    let mut header = tokens::header(KID);
    let mut claims = tokens::claims(NOW, &["DomainApi", "read"]);
    patch(&mut header, &mut claims);
    tokens::sign(&header, &claims, key())
}

pub(crate) fn token_signed_by_other_key() -> String {
    tokens::sign(&tokens::header(KID), &tokens::claims(NOW, &["read"]), other_key())
}

pub(crate) fn flip_signature_byte(token: &str) -> String {
    tokens::flip_signature_byte(token)
}

pub(crate) fn unsigned_token() -> String {
    tokens::unsigned(
        &json!({"alg": "none", "kid": KID, "typ": "at+jwt"}),
        &tokens::claims(NOW, &["read"]),
    )
}

pub(crate) fn hs256_token_with_public_key() -> String {
    let secret = key().public_pem().unwrap();
    tokens::sign_hs256(
        &json!({"alg": "HS256", "kid": KID, "typ": "at+jwt"}),
        &tokens::claims(NOW, &["read"]),
        secret.as_bytes(),
    )
    .unwrap()
}

/// An `introspection` block pointing at the emulator's endpoint.
pub(crate) fn introspection_json() -> Value {
    json!({
        "cluster": "identity",
        "authority": "idp.erp.test",
        "client_id": erp_devstack::idp::INTROSPECTION_CLIENT,
        "client_secret": erp_devstack::idp::INTROSPECTION_SECRET,
    })
}

/// `kid`s of the curve keys in [`curve_config`].
pub(crate) const ES256_KID: &str = "p256-1";
pub(crate) const EDDSA_KID: &str = "ed25519-1";

/// A P-256 key the curve configuration trusts, and one it does not.
pub(crate) fn p256_key() -> tokens::CurveKey {
    tokens::CurveKey::p256(ES256_KID, "trusted p256").unwrap()
}

pub(crate) fn ed25519_key() -> tokens::CurveKey {
    tokens::CurveKey::ed25519(EDDSA_KID, "trusted ed25519")
}

pub(crate) fn p384_key() -> tokens::CurveKey {
    tokens::CurveKey::p384("p384-1", "trusted p384").unwrap()
}

pub(crate) fn p521_key() -> tokens::CurveKey {
    tokens::CurveKey::p521("p521-1", "trusted p521").unwrap()
}

/// One trusted key of each curve: ES256, ES384, ES512, EdDSA.
pub(crate) fn curve_keys() -> [tokens::CurveKey; 4] {
    [p256_key(), p384_key(), p521_key(), ed25519_key()]
}

/// The test configuration with ES256, ES384, ES512 and EdDSA allowed and
/// one key of each next to the RSA key.
pub(crate) fn curve_config() -> Config {
    config_from(|c| {
        c["algorithms"] = json!(["RS256", "ES256", "ES384", "ES512", "EdDSA"]);
        let mut keys = vec![key().jwk()];
        keys.extend(curve_keys().iter().map(tokens::CurveKey::jwk));
        c["jwks"] = json!({ "keys": keys });
    })
}

/// A token signed by a curve key, `patch` applied to header and claims first.
pub(crate) fn curve_token(key: &tokens::CurveKey, patch: impl FnOnce(&mut Value, &mut Value)) -> String {
    let mut header = key.header();
    let mut claims = tokens::claims(NOW, &["DomainApi", "read"]);
    patch(&mut header, &mut claims);
    key.sign(&header, &claims)
}
