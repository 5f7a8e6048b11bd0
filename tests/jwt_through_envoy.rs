//! JWT access tokens through real Envoy: what reaches the upstream, and every
//! way a token is refused before it does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use erp_devstack::tokens::{self, SigningKey};
use serde_json::{json, Value};

/// Signs header and claims (patched from ERP.net's shape) with the stack's key.
fn token_with(stack: &erp_devstack::stack::Stack, patch: impl FnOnce(&mut Value, &mut Value)) -> String {
    let key = stack.idp.signing_key();
    let mut header = tokens::header(&key.kid);
    let mut claims = tokens::claims(tokens::now(), &["DomainApi", "read"]);
    patch(&mut header, &mut claims);
    tokens::sign(&header, &claims, &key)
}

#[test]
fn read_token_reaches_the_upstream_with_identity_headers_replacing_spoofed_ones() {
    let stack = stack();
    let token = stack.idp.access_token(&["DomainApi", "read"]);
    let r = stack.get(
        CUSTOMERS,
        &[
            ("authorization", &bearer(&token)),
            ("x-erp-client-id", "evil"),
            ("X-Erp-Subject", "admin"),
        ],
    );
    let headers = upstream_headers(&r);
    assert_eq!(headers["x-erp-client-id"], "my.trusted.app/first");
    assert_eq!(headers["x-erp-client-db"], "E1_DEV");
    assert_eq!(headers["x-erp-system-user"], "p.kostov@erp.bg");
    assert_eq!(headers["x-erp-scopes"], "DomainApi read");
    assert_eq!(headers["x-erp-token-kind"], "jwt");
    assert!(
        headers.get("x-erp-subject").is_none(),
        "client-sent subject must be removed: {headers}"
    );
    assert_eq!(
        headers["authorization"],
        bearer(&token),
        "credential forwarded by default"
    );
    assert_eq!(r.json()["path"], CUSTOMERS);
    assert_not_leaked(&stack, &token);
}

#[test]
fn read_only_token_may_not_post_and_the_upstream_never_sees_it() {
    let stack = stack();
    let token = stack.idp.access_token(&["read"]);
    let r = stack.request(
        "POST",
        "/api/domain/odata/Customers",
        &[("authorization", &bearer(&token))],
    );
    assert_rejected(&r, 403, "insufficient_scope");
    assert!(r.header("www-authenticate").unwrap().contains("scope=\"update\""));
    assert_eq!(stack.echo.count(), 0);
    let update = stack.idp.access_token(&["read", "update"]);
    let r = stack.request(
        "POST",
        "/api/domain/odata/Customers",
        &[("authorization", &bearer(&update))],
    );
    assert_eq!(r.status, 200);
}

/// Each case: a token the filter must refuse with 401 invalid_token, and
/// never forward.
fn assert_invalid_token(make: impl FnOnce(&erp_devstack::stack::Stack) -> String) {
    let stack = stack();
    let token = make(&stack);
    let r = stack.get(CUSTOMERS, &[("authorization", &bearer(&token))]);
    assert_rejected(&r, 401, "invalid_token");
    assert!(!r.text().contains(&token), "the token is echoed");
    assert_eq!(stack.echo.count(), 0, "an invalid token reached the upstream");
    assert_not_leaked(&stack, &token);
}

#[test]
fn expired_token_is_invalid() {
    assert_invalid_token(|s| token_with(s, |_, c| c["exp"] = json!(tokens::now() - 120)));
}

#[test]
fn token_not_yet_valid_beyond_skew_is_invalid() {
    assert_invalid_token(|s| token_with(s, |_, c| c["nbf"] = json!(tokens::now() + 300)));
}

#[test]
fn wrong_issuer_is_invalid() {
    assert_invalid_token(|s| token_with(s, |_, c| c["iss"] = json!("https://evil.example/id")));
}

#[test]
fn wrong_audience_is_invalid() {
    assert_invalid_token(|s| token_with(s, |_, c| c["aud"] = json!(["TableAPI", "OLAP"])));
}

#[test]
fn signature_of_another_key_is_invalid() {
    assert_invalid_token(|s| {
        let kid = s.idp.signing_key().kid;
        let other = SigningKey::generate(&kid, 2048).unwrap();
        tokens::sign(&tokens::header(&kid), &tokens::claims(tokens::now(), &["read"]), &other)
    });
}

#[test]
fn flipped_signature_byte_is_invalid() {
    assert_invalid_token(|s| tokens::flip_signature_byte(&s.idp.access_token(&["read"])));
}

#[test]
fn alg_none_is_invalid() {
    assert_invalid_token(|s| {
        let kid = s.idp.signing_key().kid;
        tokens::unsigned(
            &json!({"alg": "none", "kid": kid, "typ": "at+jwt"}),
            &tokens::claims(tokens::now(), &["read"]),
        )
    });
}

#[test]
fn hs256_signed_with_the_public_key_is_invalid() {
    assert_invalid_token(|s| {
        let key = s.idp.signing_key();
        let secret = key.public_pem().unwrap();
        tokens::sign_hs256(
            &json!({"alg": "HS256", "kid": key.kid, "typ": "at+jwt"}),
            &tokens::claims(tokens::now(), &["read"]),
            secret.as_bytes(),
        )
        .unwrap()
    });
}

#[test]
fn unknown_kid_is_invalid() {
    assert_invalid_token(|s| token_with(s, |h, _| h["kid"] = json!("not-published")));
}

#[test]
fn plain_jwt_typ_is_invalid_when_at_jwt_is_required() {
    assert_invalid_token(|s| token_with(s, |h, _| h["typ"] = json!("JWT")));
}

/// Up to the largest `max_token_bytes` (64 KiB) and beyond, a token still
/// reaches the filter and gets a proper 401 rather than Envoy's bare 431.
#[test]
fn a_token_past_the_largest_max_token_bytes_is_invalid_not_431() {
    assert_invalid_token(|s| {
        let token = s.idp.access_token(&["read"]);
        let (input, signature) = token.rsplit_once('.').unwrap();
        format!("{input}{}.{signature}", "A".repeat(65_537))
    });
}

/// Past the header budget (96 KiB), Envoy refuses the request before the
/// filter copies anything, and nothing reaches the upstream.
#[test]
fn a_one_mebibyte_token_is_refused_by_envoy_before_the_filter() {
    let stack = stack();
    let token = stack.idp.access_token(&["read"]);
    let (input, signature) = token.rsplit_once('.').unwrap();
    let huge = format!("{input}{}.{signature}", "A".repeat(1 << 20));
    let r = stack.get(CUSTOMERS, &[("authorization", &bearer(&huge))]);
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(stack.echo.count(), 0);
}

#[test]
fn garbage_is_invalid() {
    assert_invalid_token(|_| "this-is-not-a-jwt".into());
}

#[test]
fn scope_as_array_or_string_and_aud_as_string_or_array_all_work() {
    let stack = stack();
    let cases = [
        json!({"scope": ["read"], "aud": "DomainAPI"}),
        json!({"scope": "read update", "aud": "DomainAPI"}),
        json!({"scope": ["read"], "aud": ["TableAPI", "DomainAPI"]}),
        json!({"scope": "DomainApi read", "aud": ["DomainAPI"]}),
    ];
    for case in cases {
        let token = token_with(&stack, |_, c| {
            c["scope"] = case["scope"].clone();
            c["aud"] = case["aud"].clone();
        });
        let r = stack.get(CUSTOMERS, &[("authorization", &bearer(&token))]);
        assert_eq!(r.status, 200, "{case}: {}", r.text());
    }
    let string_scope_without_read = token_with(&stack, |_, c| c["scope"] = json!("update"));
    let r = stack.get(CUSTOMERS, &[("authorization", &bearer(&string_scope_without_read))]);
    assert_rejected(&r, 403, "insufficient_scope");
}

#[test]
fn two_credentials_are_an_invalid_request() {
    let stack = stack();
    let token = stack.idp.access_token(&["read"]);
    let auth = bearer(&token);
    let both = stack.get(CUSTOMERS, &[("authorization", &auth), ("x-api-key", &token)]);
    assert_rejected(&both, 400, "invalid_request");
    let twice = stack.get(CUSTOMERS, &[("authorization", &auth), ("authorization", &auth)]);
    assert_rejected(&twice, 400, "invalid_request");
    let two_keys = stack.get(CUSTOMERS, &[("X-API-KEY", &token), ("api-key", &token)]);
    assert_rejected(&two_keys, 400, "invalid_request");
    assert_eq!(stack.echo.count(), 0);
}

#[test]
fn missing_credential_gets_a_bare_challenge_and_public_routes_pass() {
    let stack = stack();
    let r = stack.get(CUSTOMERS, &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"erp-domain-api\""));
    assert_eq!(stack.echo.count(), 0);
    let health = stack.get("/healthz", &[("x-erp-client-id", "evil")]);
    assert_eq!(health.status, 200);
    assert!(upstream_headers(&health).get("x-erp-client-id").is_none());
}

#[test]
fn unmatched_route_is_refused() {
    let stack = stack();
    let token = stack.idp.access_token(&["read", "update", "sec"]);
    let r = stack.get("/admin/users", &[("authorization", &bearer(&token))]);
    assert_rejected(&r, 403, "insufficient_scope");
    let sneaky = stack.get("/api/domain/../../admin/users", &[("authorization", &bearer(&token))]);
    assert_rejected(&sneaky, 403, "insufficient_scope");
    assert_eq!(stack.echo.count(), 0);
}

#[test]
fn an_allowed_request_keeps_everything_but_the_identity_headers() {
    // The filter writes the header map back whole; nothing else may change.
    let stack = stack();
    let token = stack.idp.access_token(&["DomainApi", "update"]);
    let body = br#"{"Name":"M\u00fcller, Ltd"}"#;
    let raw = [
        b"POST /api/domain/odata/Customers?$select=Name&x=%2Fa HTTP/1.1\r\nhost: erp.example\r\nconnection: close\r\n"
            .as_slice(),
        format!("authorization: {}\r\n", bearer(&token)).as_bytes(),
        b"x-trace: one\r\nx-erp-scopes: spoofed\r\nx-trace: two\r\nx-bytes: caf\xe9\r\nx-empty:\r\n",
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
        body,
    ]
    .concat();
    let r = erp_devstack::client::send_raw(stack.envoy.listener, &raw).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = stack.echo.seen();
    let request = seen.last().unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(request.url, "/api/domain/odata/Customers?$select=Name&x=%2Fa");
    assert_eq!(request.body, body);
    let values = |name: &str| -> Vec<&[u8]> {
        request
            .headers
            .iter()
            .zip(&request.raw_values)
            .filter(|((n, _), _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    assert_eq!(
        values("x-trace"),
        [b"one".as_slice(), b"two"],
        "repeated headers, in order"
    );
    assert_eq!(values("x-bytes"), [b"caf\xe9".as_slice()], "bytes kept as sent");
    assert_eq!(values("x-empty"), [b"".as_slice()]);
    assert_eq!(values("host"), [b"erp.example".as_slice()]);
    assert_eq!(values("content-type"), [b"application/json".as_slice()]);
    assert_eq!(
        values("x-erp-scopes"),
        [b"DomainApi update".as_slice()],
        "one copy, the filter's"
    );
    assert_eq!(values("x-erp-client-id"), [b"my.trusted.app/first".as_slice()]);
    assert_eq!(values("authorization"), [bearer(&token).as_bytes()]);
    assert_not_leaked(&stack, &token);
}

#[test]
fn non_utf8_header_value_is_refused_and_the_filter_keeps_running() {
    let stack = stack();
    let mut raw =
        b"GET /api/domain/odata/Customers HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-api-key: ab\xff\xfecd\r\n\r\n"
            .to_vec();
    let r = erp_devstack::client::send_raw(stack.envoy.listener, &raw).unwrap();
    assert_rejected(&r, 400, "invalid_request");
    raw = b"GET /api/domain/odata/Customers HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-erp-subject: \xff\r\n\r\n"
        .to_vec();
    let r = erp_devstack::client::send_raw(stack.envoy.listener, &raw).unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let token = stack.idp.access_token(&["read"]);
    assert_eq!(stack.get(CUSTOMERS, &[("authorization", &bearer(&token))]).status, 200);
    assert_eq!(stack.echo.count(), 1);
}

#[test]
fn strip_credential_keeps_the_token_from_the_upstream() {
    let stack = stack_with(json!({"strip_credential": true}));
    let token = stack.idp.access_token(&["read"]);
    let headers = upstream_headers(&stack.get(CUSTOMERS, &[("authorization", &bearer(&token))]));
    assert!(headers.get("authorization").is_none(), "{headers}");
    assert_eq!(headers["x-erp-token-kind"], "jwt");
}

#[test]
fn denials_are_counted_in_envoy_stats() {
    let stack = stack();
    let stat = |name: &str| stack.envoy.filter_stat(name).unwrap_or(0);
    let (allowed, denied) = (stat("allowed"), stat("denied_401"));
    let token = stack.idp.access_token(&["read"]);
    stack.get(CUSTOMERS, &[("authorization", &bearer(&token))]);
    stack.get(CUSTOMERS, &[]);
    stack.get(CUSTOMERS, &[]);
    assert_eq!(stat("allowed"), allowed + 1);
    assert_eq!(stat("denied_401"), denied + 2);
}

/// Flips one bit of a token's signature and encodes it again, so the token
/// stays well-formed and only the signature is wrong.
fn flip_signature_bit(token: &str, bit: usize) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let (input, signature) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let bit = bit % (bytes.len() * 8);
    bytes[bit / 8] ^= 1 << (bit % 8);
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Valid tokens under 2048-, 3072- and 4096-bit keys pass and every kind of
/// forged signature is refused, by whichever verifier `rsa_verifier` picks;
/// the stats say which one ran.
fn rs256_through_envoy(verifier: &str) {
    let mid = SigningKey::generate("mid-3072", 3072).unwrap();
    let big = SigningKey::generate("big-4096", 4096).unwrap();
    let stack = stack_with(json!({"jwks": tokens::jwks([&mid, &big]), "rsa_verifier": verifier}));
    let keys = [stack.idp.signing_key(), mid, big];
    let get = |token: &str| stack.get(CUSTOMERS, &[("authorization", &bearer(token))]);
    let mut valid = 0;
    for (k, key) in keys.iter().enumerate() {
        for i in 0..30 {
            let mut claims = tokens::claims(tokens::now(), &["DomainApi", "read"]);
            claims["jti"] = json!(format!("{verifier}-{k}-{i}"));
            let token = tokens::sign(&tokens::header(&key.kid), &claims, key);
            assert_eq!(get(&token).status, 200, "{verifier}: {} token {i} refused", key.kid);
            valid += 1;
            // Bits spread over the whole signature, low and high limbs.
            let bad = flip_signature_bit(&token, i * 97 + k);
            assert_rejected(&get(&bad), 401, "invalid_token");
        }
        let claims = tokens::claims(tokens::now(), &["DomainApi", "read"]);
        let token = tokens::sign(&tokens::header(&key.kid), &claims, key);
        let (input, _) = token.rsplit_once('.').unwrap();
        for (what, signature) in key.forged_signatures(input.as_bytes()) {
            use base64::engine::general_purpose::URL_SAFE_NO_PAD;
            use base64::Engine as _;
            let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature));
            let r = get(&forged);
            assert_eq!(r.status, 401, "{verifier}, {}: {what} was accepted", key.kid);
            assert_rejected(&r, 401, "invalid_token");
        }
    }
    assert_eq!(stack.echo.count(), valid);
    let stat = |name: &str| stack.envoy.filter_stat(name).unwrap_or(0);
    let (by_host, in_module) = (
        stat("signatures_verified_by_host"),
        stat("signatures_verified_in_module"),
    );
    println!("{verifier}: {by_host} signatures verified by Envoy, {in_module} in the module");
    if verifier == "module" {
        assert_eq!(by_host, 0);
        assert!(in_module >= valid as u64);
    } else {
        // The wasm filter asks Envoy's BoringSSL (verify_signature, Envoy
        // 1.40); the native module verifies RSA-2048 with AVX-512 IFMA where
        // the CPU has it, otherwise with AWS-LC. Either way, not the core's
        // own arithmetic.
        assert_eq!(in_module, 0, "the host's verifier is used");
        assert!(by_host >= valid as u64);
        let by = match erp_devstack::envoy::Host::current().unwrap() {
            erp_devstack::envoy::Host::Wasm => "RS256 verified by Envoy (BoringSSL)",
            erp_devstack::envoy::Host::Native if cpu_has_ifma() => {
                "RS256 verified natively (RSA-2048 with AVX-512 IFMA, other keys with AWS-LC)"
            }
            erp_devstack::envoy::Host::Native => "RS256 verified natively (AWS-LC)",
        };
        assert!(stack.envoy.log().contains(by));
    }
}

/// Whether the native module's IFMA path runs on this CPU.
fn cpu_has_ifma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512ifma");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

#[test]
fn rs256_by_envoys_verifier_accepts_the_valid_and_refuses_every_forgery() {
    rs256_through_envoy("auto");
}

#[test]
fn rs256_in_the_module_accepts_the_valid_and_refuses_every_forgery() {
    // The arithmetic is vectorised for wasm: the native differential test of
    // src/rs256.rs does not run this code as compiled; here V8 does.
    rs256_through_envoy("module");
}
