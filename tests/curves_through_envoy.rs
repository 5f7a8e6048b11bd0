//! ES256 (P-256), ES384 (P-384), ES512 (P-521) and EdDSA (Ed25519) tokens
//! through real Envoy, with the
//! keys fetched from the identity emulator's JWKS next to its RSA key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use erp_devstack::stack::{Stack, StackOptions};
use erp_devstack::tokens::{self, CurveKey};
use serde_json::json;

fn keys() -> [CurveKey; 4] {
    [
        CurveKey::p256("p256-1", "curves through envoy").unwrap(),
        CurveKey::p384("p384-1", "curves through envoy").unwrap(),
        CurveKey::p521("p521-1", "curves through envoy").unwrap(),
        CurveKey::ed25519("ed25519-1", "curves through envoy"),
    ]
}

fn stack_allowing(algorithms: &[&str]) -> Stack {
    Stack::start(StackOptions {
        // Every forgery below is verified in one second or two; the
        // verification budget (tested on its own) would answer 503 first.
        filter_config: Some(json!({ "algorithms": algorithms, "max_module_verifications_per_second": 100_000 })),
        curve_keys: keys().to_vec(),
        ..StackOptions::default()
    })
    .expect("stack starts")
}

fn token(key: &CurveKey, scopes: &[&str]) -> String {
    key.sign(&key.header(), &tokens::claims(tokens::now(), scopes))
}

#[test]
fn curve_tokens_pass_and_every_forgery_and_confusion_is_refused_before_the_upstream() {
    let stack = stack_allowing(&["RS256", "ES256", "ES384", "ES512", "EdDSA"]);
    let rsa = stack.idp.access_token(&["DomainApi", "read"]);
    assert_eq!(stack.get(CUSTOMERS, &[("authorization", &bearer(&rsa))]).status, 200);
    for key in keys() {
        let good = token(&key, &["DomainApi", "read"]);
        let r = stack.get(CUSTOMERS, &[("authorization", &bearer(&good))]);
        let headers = upstream_headers(&r);
        assert_eq!(headers["x-erp-client-id"], "my.trusted.app/first", "{key:?}");
        assert_eq!(headers["x-erp-scopes"], "DomainApi read");
        // Scopes are enforced as for RS256.
        let r = stack.request(
            "POST",
            "/api/domain/odata/Customers",
            &[("authorization", &bearer(&good))],
        );
        assert_rejected(&r, 403, "insufficient_scope");
    }
    stack.echo.clear();

    let mut refused = Vec::new();
    for key in keys() {
        let good = token(&key, &["DomainApi", "read"]);
        let (input, _) = good.rsplit_once('.').unwrap();
        for (what, signature) in key.forged_signatures(input.as_bytes()) {
            refused.push((
                format!("{key:?}: {what}"),
                format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)),
            ));
        }
    }
    let [p256, _, _, ed] = keys();
    let claims = tokens::claims(tokens::now(), &["DomainApi", "read"]);
    let header = |alg: &str, kid: &str| json!({"alg": alg, "kid": kid, "typ": "at+jwt"});
    let rsa_kid = stack.idp.signing_key().kid;
    let x = p256.jwk()["x"].as_str().unwrap().to_owned();
    let confusions = [
        (
            "ES256 under the RSA key",
            p256.sign(&header("ES256", &rsa_kid), &claims),
        ),
        (
            "EdDSA under the P-256 key",
            ed.sign(&header("EdDSA", "p256-1"), &claims),
        ),
        (
            "ES256 under the Ed25519 key",
            p256.sign(&header("ES256", "ed25519-1"), &claims),
        ),
        (
            "RS256 under the P-256 key",
            tokens::sign(&header("RS256", "p256-1"), &claims, &stack.idp.signing_key()),
        ),
        (
            "HS256 with the P-256 x as secret",
            tokens::sign_hs256(&header("HS256", "p256-1"), &claims, x.as_bytes()).unwrap(),
        ),
        (
            "ES384 under the P-256 key",
            p256.sign(&header("ES384", "p256-1"), &claims),
        ),
    ];
    refused.extend(confusions.map(|(what, t)| (what.to_owned(), t)));
    assert!(refused.len() >= 30);
    for (what, token) in &refused {
        let r = stack.get(CUSTOMERS, &[("authorization", &bearer(token))]);
        assert_rejected(&r, 401, "invalid_token");
        assert_eq!(stack.echo.count(), 0, "{what} reached the upstream");
    }
    assert_not_leaked(&stack, &rsa);
}

#[test]
fn curve_keys_are_skipped_and_their_tokens_refused_unless_allowed() {
    let stack = stack_allowing(&["RS256"]);
    for key in keys() {
        let r = stack.get(CUSTOMERS, &[("authorization", &bearer(&token(&key, &["read"])))]);
        assert_rejected(&r, 401, "invalid_token");
        assert_eq!(r.json()["error_description"], "the token's algorithm is not allowed");
    }
    assert_eq!(stack.echo.count(), 0);
    // The RS256 key in the same set still serves.
    let rsa = stack.idp.access_token(&["DomainApi", "read"]);
    assert_eq!(stack.get(CUSTOMERS, &[("authorization", &bearer(&rsa))]).status, 200);
    let log = stack.envoy.log();
    assert!(log.contains("p256-1: alg `ES256` is not allowed"), "{log}");
    assert!(log.contains("ed25519-1: alg `EdDSA` is not allowed"), "{log}");
}
