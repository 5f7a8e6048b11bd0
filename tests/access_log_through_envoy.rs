//! The decision in Envoy's access log (`access_log_fields`): the shipped
//! template's JSON access log prints who called, the token's kind, the
//! decision and the token's fingerprint, for allowed and refused requests,
//! on the first pass and after an introspection callout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use erp_devstack::idp::ReferenceKind;
use erp_devstack::stack::{Stack, StackOptions};
use erp_devstack::tokens;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What an operator computes: `printf %s "$TOKEN" | sha256sum | cut -c1-12`.
fn fingerprint(token: &str) -> String {
    Sha256::digest(token.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The access-log line of the one request to `path`, waiting for Envoy to
/// flush it.
fn line(stack: &Stack, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = stack
            .envoy
            .log()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["path"] == path)
            .collect();
        match lines.as_slice() {
            [one] => return one.clone(),
            [] if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("{} access-log lines for {path}:\n{}", other.len(), stack.envoy.log()),
        }
    }
}

/// Asserts status and the four fields (`None`: the field is absent or empty).
fn assert_line(v: &Value, status: u16, client_id: Option<&str>, kind: Option<&str>, decision: &str, fp: Option<&str>) {
    let field = |name: &str| {
        v[name]
            .as_str()
            .filter(|s| !s.is_empty() && *s != "-")
            .map(str::to_owned)
    };
    assert_eq!(v["status"], json!(status), "{v}");
    assert_eq!(field("client_id").as_deref(), client_id, "{v}");
    assert_eq!(field("token_kind").as_deref(), kind, "{v}");
    assert_eq!(field("decision").as_deref(), Some(decision), "{v}");
    assert_eq!(field("token_fingerprint").as_deref(), fp, "{v}");
}

#[test]
fn each_decision_reaches_the_access_log_with_client_kind_reason_and_fingerprint_never_the_token() {
    let stack = Stack::start(StackOptions {
        second_filter_config: Some(json!({"access_log_fields": false})),
        ..StackOptions::default()
    })
    .expect("stack starts");
    let send = |method: &str, path: &str, token: Option<&str>| {
        let auth = token.map(bearer);
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        stack.request(method, path, &headers).status
    };
    let jwt = stack.idp.access_token(&["DomainApi", "read"]);
    let fp = fingerprint(&jwt);

    assert_eq!(send("GET", "/api/domain/log/allowed", Some(&jwt)), 200);
    let v = line(&stack, "/api/domain/log/allowed");
    assert_line(&v, 200, Some("my.trusted.app/first"), Some("jwt"), "allowed", Some(&fp));

    // The same token again: from the worker's memory, the same fields.
    assert_eq!(send("GET", "/api/domain/log/again?secret=query", Some(&jwt)), 200);
    let v = line(&stack, "/api/domain/log/again");
    assert_line(&v, 200, Some("my.trusted.app/first"), Some("jwt"), "allowed", Some(&fp));

    // A valid token without the route's scope still names its client.
    assert_eq!(send("DELETE", "/api/domain/log/scope", Some(&jwt)), 403);
    let v = line(&stack, "/api/domain/log/scope");
    assert_line(
        &v,
        403,
        Some("my.trusted.app/first"),
        Some("jwt"),
        "denied_insufficient_scope",
        Some(&fp),
    );

    let key = stack.idp.signing_key();
    let mut claims = tokens::claims(tokens::now() - 7200, &["read"]);
    claims["exp"] = json!(tokens::now() - 3600);
    let expired = tokens::sign(&tokens::header(&key.kid), &claims, &key);
    assert_eq!(send("GET", "/api/domain/log/expired", Some(&expired)), 401);
    let v = line(&stack, "/api/domain/log/expired");
    assert_line(
        &v,
        401,
        None,
        Some("jwt"),
        "denied_expired",
        Some(&fingerprint(&expired)),
    );

    assert_eq!(send("GET", "/api/domain/log/none", None), 401);
    let v = line(&stack, "/api/domain/log/none");
    assert_line(&v, 401, None, None, "denied_no_credential", None);

    // A credential that is not a well-formed token (a password sent as an
    // API key) is neither named nor fingerprinted.
    let r = stack.request(
        "GET",
        "/api/domain/log/password",
        &[("x-api-key", "correct-horse-battery")],
    );
    assert_eq!(r.status, 401);
    let v = line(&stack, "/api/domain/log/password");
    assert_line(&v, 401, None, None, "denied_malformed", None);

    // Reference tokens: decided after the introspection callout.
    let pat = stack
        .idp
        .issue_reference(ReferenceKind::Pat, &["DomainApi", "read"], 600);
    assert_eq!(send("GET", "/api/domain/log/pat", Some(&pat)), 200);
    let v = line(&stack, "/api/domain/log/pat");
    assert_line(
        &v,
        200,
        Some("my.trusted.app/first"),
        Some("reference-user"),
        "allowed",
        Some(&fingerprint(&pat)),
    );
    let unknown = format!("enrt_{}", tokens::random_hex(32));
    assert_eq!(send("GET", "/api/domain/log/inactive", Some(&unknown)), 401);
    let v = line(&stack, "/api/domain/log/inactive");
    assert_line(
        &v,
        401,
        None,
        Some("reference"),
        "denied_reference_inactive",
        Some(&fingerprint(&unknown)),
    );

    assert_eq!(send("GET", "/healthz", None), 200);
    let v = line(&stack, "/healthz");
    assert_line(&v, 200, None, None, "public", None);

    // The path is logged without its query, and no token is anywhere.
    assert!(stack
        .envoy
        .log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .all(|l| !l.contains("secret=query")));
    assert_not_leaked(&stack, &jwt);
    assert_not_leaked(&stack, &pat);

    // A filter without `access_log_fields` sets none.
    let r = stack.get_second("/api/domain/log/off", &[("authorization", &bearer(&jwt))]);
    assert_eq!(r.status, 200);
    let v = line(&stack, "/api/domain/log/off");
    assert_eq!(v["status"], json!(200));
    for field in ["client_id", "token_kind", "decision", "token_fingerprint"] {
        assert!(
            v[field].as_str().is_none_or(|s| s.is_empty() || s == "-"),
            "{field}: {v}"
        );
    }
}
