//! The counters an operator alerts on, read from Envoy's
//! `/stats/prometheus` after driving each case through real Envoy: denials
//! by reason, the JWT memory's hits and misses, and introspection outcomes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use erp_devstack::client;
use erp_devstack::idp::{Fault, ReferenceKind};
use erp_devstack::stack::Stack;
use erp_devstack::tokens::{self, SigningKey};
use serde_json::{json, Value};

/// Every `erp_edge_validator_*` value in `/stats/prometheus`, by the name
/// after that prefix.
fn counters(stack: &Stack) -> BTreeMap<String, u64> {
    let text = client::request(stack.envoy.admin, "GET", "/stats/prometheus", &[], b"")
        .unwrap()
        .text();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or_default();
        if let Some(short) = name.split("erp_edge_validator_").nth(1) {
            *out.entry(short.to_owned()).or_default() += value.parse::<f64>().unwrap_or(0.0) as u64;
        }
    }
    out
}

/// Sends one request and returns by how much each counter moved.
fn moved(stack: &Stack, method: &str, headers: &[(&str, &str)], expected_status: u16) -> BTreeMap<String, u64> {
    let before = counters(stack);
    let r = stack.request(method, CUSTOMERS, headers);
    assert_eq!(r.status, expected_status, "{headers:?}: {}", r.text());
    // Envoy flushes wasm counters to the admin view at once, but a worker
    // may still be finishing the request's effects.
    std::thread::sleep(Duration::from_millis(50));
    let after = counters(stack);
    after
        .into_iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(&k).copied().unwrap_or(0));
            (d > 0).then_some((k, d))
        })
        .collect()
}

fn signed(stack: &Stack, patch: impl Fn(&mut Value, &mut Value)) -> String {
    let key = stack.idp.signing_key();
    let mut header = tokens::header(&key.kid);
    let mut claims = tokens::claims(tokens::now(), &["DomainApi", "read"]);
    patch(&mut header, &mut claims);
    bearer(&tokens::sign(&header, &claims, &key))
}

/// Method, name, headers, status, the reason counter, the status counter.
type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, u16, &'a str, &'a str);

#[test]
fn each_denial_counts_under_its_reason_and_its_status() {
    let stack = stack_with(json!({"introspection": {"timeout_ms": 300}}));
    let now = tokens::now();
    let stranger = SigningKey::generate("stranger", 2048).unwrap();
    let good = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
    let revoked = stack.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600);
    stack.idp.revoke(&revoked);
    let cases: Vec<Case> = vec![
        (
            "GET",
            "expired".into(),
            vec![("authorization", signed(&stack, |_, c| c["exp"] = json!(now - 3600)))],
            401,
            "denied_expired",
            "denied_401",
        ),
        (
            "GET",
            "nbf".into(),
            vec![("authorization", signed(&stack, |_, c| c["nbf"] = json!(now + 3600)))],
            401,
            "denied_not_yet_valid",
            "denied_401",
        ),
        (
            "GET",
            "signature".into(),
            vec![(
                "authorization",
                bearer(&tokens::flip_signature_byte(&stack.idp.access_token(&["read"]))),
            )],
            401,
            "denied_bad_signature",
            "denied_401",
        ),
        (
            "GET",
            "kid".into(),
            vec![(
                "authorization",
                bearer(&tokens::sign(
                    &tokens::header("stranger"),
                    &tokens::claims(now, &["read"]),
                    &stranger,
                )),
            )],
            401,
            "denied_unknown_kid",
            "denied_401",
        ),
        (
            "GET",
            "alg".into(),
            vec![(
                "authorization",
                bearer(&tokens::unsigned(
                    &json!({"alg": "none", "typ": "at+jwt", "kid": "key-1"}),
                    &tokens::claims(now, &["read"]),
                )),
            )],
            401,
            "denied_algorithm",
            "denied_401",
        ),
        (
            "GET",
            "iss".into(),
            vec![(
                "authorization",
                signed(&stack, |_, c| c["iss"] = json!("https://evil.example")),
            )],
            401,
            "denied_issuer",
            "denied_401",
        ),
        (
            "GET",
            "aud".into(),
            vec![("authorization", signed(&stack, |_, c| c["aud"] = json!("TableAPI")))],
            401,
            "denied_audience",
            "denied_401",
        ),
        (
            "GET",
            "typ".into(),
            vec![("authorization", signed(&stack, |h, _| h["typ"] = json!("JWT")))],
            401,
            "denied_typ",
            "denied_401",
        ),
        (
            "GET",
            "malformed".into(),
            vec![("authorization", "Bearer abc.def".into())],
            401,
            "denied_malformed",
            "denied_401",
        ),
        ("GET", "none".into(), vec![], 401, "denied_no_credential", "denied_401"),
        (
            "GET",
            "two".into(),
            vec![("authorization", good.clone()), ("x-api-key", "k".into())],
            400,
            "denied_two_credentials",
            "denied_400",
        ),
        (
            "POST",
            "scope".into(),
            vec![("authorization", good.clone())],
            403,
            "denied_insufficient_scope",
            "denied_403",
        ),
        (
            "GET",
            "inactive".into(),
            vec![("authorization", bearer(&revoked))],
            401,
            "denied_reference_inactive",
            "denied_401",
        ),
        (
            "GET",
            "override".into(),
            vec![
                ("authorization", good.clone()),
                ("x-http-method-override", "DELETE".into()),
            ],
            400,
            "denied_invalid_request",
            "denied_400",
        ),
    ];
    for (method, name, headers, status, reason, by_status) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let m = moved(&stack, method, &headers, *status);
        assert_eq!(m.get(*reason), Some(&1), "{name}: {m:?}");
        assert_eq!(m.get(*by_status), Some(&1), "{name}: {m:?}");
        let reasons = m
            .keys()
            .filter(|k| k.starts_with("denied_") && !k.starts_with("denied_4"))
            .count();
        assert_eq!(reasons, 1, "{name}: one reason only: {m:?}");
    }
    // No rule: counted as such.
    let before = counters(&stack);
    assert_eq!(stack.get("/elsewhere", &[("authorization", &good)]).status, 403);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        counters(&stack)["denied_no_route"],
        before.get("denied_no_route").copied().unwrap_or(0) + 1
    );
}

#[test]
fn jwt_memory_and_introspection_outcomes_are_counted() {
    let stack = stack_with(json!({"introspection": {"timeout_ms": 300}}));
    let fresh = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
    let m = moved(&stack, "GET", &[("authorization", &fresh)], 200);
    assert_eq!(m.get("jwt_cache_misses"), Some(&1), "{m:?}");
    // The same token again on the same worker (one worker in these tests).
    let m = moved(&stack, "GET", &[("authorization", &fresh)], 200);
    assert_eq!(
        (m.get("jwt_cache_hits"), m.get("jwt_cache_misses")),
        (Some(&1), None),
        "{m:?}"
    );

    let pat = stack.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600);
    let m = moved(&stack, "GET", &[("authorization", &bearer(&pat))], 200);
    assert_eq!(
        (m.get("introspections"), m.get("introspection_active")),
        (Some(&1), Some(&1)),
        "{m:?}"
    );
    let unknown = format!("enrt_{}", tokens::random_hex(32));
    let m = moved(&stack, "GET", &[("authorization", &bearer(&unknown))], 401);
    assert_eq!(m.get("introspection_inactive"), Some(&1), "{m:?}");

    stack.idp.set_introspection_fault(Fault::Status(500));
    let other = stack.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600);
    let m = moved(&stack, "GET", &[("authorization", &bearer(&other))], 503);
    assert_eq!(
        (m.get("introspection_errors"), m.get("unavailable_503")),
        (Some(&1), Some(&1)),
        "{m:?}"
    );
    assert!(
        !m.keys().any(|k| k.starts_with("denied_")),
        "a 503 has no denial reason: {m:?}"
    );

    stack
        .idp
        .set_introspection_fault(Fault::Slow(Duration::from_millis(1500)));
    let another = stack.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600);
    let m = moved(&stack, "GET", &[("authorization", &bearer(&another))], 503);
    assert_eq!(m.get("introspection_timeouts"), Some(&1), "{m:?}");
    stack.idp.set_introspection_fault(Fault::None);

    // The latency histogram shows up at Envoy's next stats flush (5 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    loop {
        let c = counters(&stack);
        if c.get("introspection_latency_ms_count").is_some_and(|n| *n >= 4) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no latency histogram: {c:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The key set's age: fetched at start, so a few seconds at most.
    let age = counters(&stack).get("key_set_age_seconds").copied();
    assert!(age.is_some_and(|a| a < 60), "key set age {age:?}");
}
