//! What a fleet and a hostile client bring, through real Envoy: two APIs
//! behind one Envoy sharing an identity service, a flood of made-up
//! reference tokens, an identity service that is not who it says, spoofed
//! identity and override headers, non-canonical methods.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use erp_devstack::envoy::EnvoyOptions;
use erp_devstack::idp::{ReferenceKind, TABLE_API_CLIENT, TABLE_API_SECRET};
use erp_devstack::stack::{IdentityCertificate, Stack, StackOptions};
use erp_devstack::tokens;
use serde_json::{json, Value};

/// The first listener guards the Domain API; the second, in the same VM,
/// guards the Table API with its own identity-service client.
fn two_apis() -> Stack {
    Stack::start(StackOptions {
        second_filter_config: Some(json!({
            "audiences": ["TableAPI"],
            "introspection": {"client_id": TABLE_API_CLIENT, "client_secret": TABLE_API_SECRET},
        })),
        ..StackOptions::default()
    })
    .unwrap()
}

fn key(token: &str) -> [(&'static str, &str); 1] {
    [("x-api-key", token)]
}

#[test]
fn a_pat_for_one_api_is_refused_by_the_other_api_in_the_same_envoy() {
    let stack = two_apis();
    let table_only = stack
        .idp
        .issue_reference_for(ReferenceKind::Pat, &["read"], 3600, &["TableAPI"]);
    assert_eq!(
        stack.get_second(CUSTOMERS, &key(&table_only)).status,
        200,
        "cached by the Table API"
    );
    let r = stack.get(CUSTOMERS, &key(&table_only));
    assert_rejected(&r, 401, "invalid_token");
    let domain_only = stack.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600);
    assert_eq!(stack.get(CUSTOMERS, &key(&domain_only)).status, 200);
    assert_rejected(&stack.get_second(CUSTOMERS, &key(&domain_only)), 401, "invalid_token");
    assert_not_leaked(&stack, &table_only);
}

#[test]
fn an_answer_that_names_another_api_is_inactive_even_if_the_service_says_active() {
    let stack = two_apis();
    // An identity service that answers `active` to any resource, with `aud`.
    stack.idp.set_lenient_resources(true);
    let table_only = stack
        .idp
        .issue_reference_for(ReferenceKind::Sat, &["read"], 3600, &["TableAPI"]);
    assert_rejected(&stack.get(CUSTOMERS, &key(&table_only)), 401, "invalid_token");
    assert_eq!(stack.get_second(CUSTOMERS, &key(&table_only)).status, 200);
    assert_eq!(stack.echo.count(), 1, "only the Table API request went upstream");
}

/// A script sends a new random `enrt_` token on every request, from eight
/// connections at once, while a client whose PAT is cached keeps working.
#[test]
fn a_flood_of_random_reference_tokens_is_held_to_the_budget() {
    const BUDGET: u64 = 50;
    let stack = Arc::new(
        Stack::start(StackOptions {
            filter_config: Some(json!({"introspection": {"max_calls_per_second": BUDGET}})),
            envoy: EnvoyOptions {
                concurrency: 2,
                ..EnvoyOptions::default()
            },
            ..StackOptions::default()
        })
        .unwrap(),
    );
    let pat = stack.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600);
    assert_eq!(stack.get(CUSTOMERS, &key(&pat)).status, 200);
    let calls_before = stack.idp.introspections();
    let flooding = Arc::new(AtomicBool::new(true));
    let cached_client = {
        let (stack, pat, flooding) = (Arc::clone(&stack), pat.clone(), Arc::clone(&flooding));
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while flooding.load(Ordering::SeqCst) {
                statuses.push(stack.get(CUSTOMERS, &key(&pat)).status);
                std::thread::sleep(Duration::from_millis(20));
            }
            statuses
        })
    };
    let started = Instant::now();
    let flood: Vec<_> = (0..8)
        .map(|t| {
            let stack = Arc::clone(&stack);
            std::thread::spawn(move || {
                let mut counts = [0u32; 3];
                for _ in 0..625 {
                    let random = format!("enrt_{}", tokens::random_hex(32));
                    match stack.get(CUSTOMERS, &key(&random)).status {
                        401 => counts[0] += 1,
                        503 => counts[1] += 1,
                        other => panic!("thread {t}: a random token got {other}"),
                    }
                }
                counts
            })
        })
        .collect();
    let counts = flood
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold([0u32; 3], |a, c| [a[0] + c[0], a[1] + c[1], a[2] + c[2]]);
    let seconds = started.elapsed().as_secs_f64();
    flooding.store(false, Ordering::SeqCst);
    let cached = cached_client.join().unwrap();
    let calls = stack.idp.introspections() - calls_before;
    let allowed = BUDGET * (seconds.ceil() as u64 + 1);
    println!(
        "flood: 5000 random tokens in {seconds:.1} s: {} got 401, {} got 503; {calls} introspection calls (budget {BUDGET}/s allows {allowed}); the cached PAT got {} x 200 of {}",
        counts[0],
        counts[1],
        cached.iter().filter(|s| **s == 200).count(),
        cached.len()
    );
    assert!(calls <= allowed, "{calls} calls, at most {allowed} allowed");
    assert!(counts[1] > 0, "the budget was never reached: the test proves nothing");
    assert!(
        !cached.is_empty() && cached.iter().all(|s| *s == 200),
        "cached PAT: {cached:?}"
    );
    assert_eq!(
        stack.echo.count(),
        1 + cached.len(),
        "only the PAT's requests went upstream"
    );
    assert_eq!(
        stack.envoy.filter_stat("introspections_over_budget"),
        Some(u64::from(counts[1]))
    );
}

fn untrusted_identity(certificate: IdentityCertificate) {
    let stack = Stack::start(StackOptions {
        identity_certificate: certificate,
        ..StackOptions::default()
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let jwt = stack.idp.access_token(&["read"]);
    let r = stack.get(CUSTOMERS, &[("authorization", &bearer(&jwt))]);
    assert_eq!(r.status, 503, "{certificate:?}: {}", r.text());
    assert!(r.header("retry-after").is_some());
    let pat = stack.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600);
    let r = stack.get(CUSTOMERS, &key(&pat));
    assert_eq!(r.status, 503, "{certificate:?}: {}", r.text());
    assert_eq!(
        (stack.idp.introspections(), stack.idp.jwks_requests()),
        (0, 0),
        "{certificate:?}: a request reached the identity service in the clear"
    );
    assert_eq!(stack.echo.count(), 0);
}

#[test]
fn an_identity_service_with_a_certificate_from_another_ca_is_refused() {
    untrusted_identity(IdentityCertificate::OtherAuthority);
}

#[test]
fn an_identity_service_with_a_certificate_for_another_name_is_refused() {
    untrusted_identity(IdentityCertificate::OtherName);
}

#[test]
fn the_identity_service_is_reached_over_tls_and_plaintext_is_a_marked_development_setting() {
    let stack = stack();
    let yaml = std::fs::read_to_string(erp_devstack::envoy::repo_root().join("envoy/envoy.compose.yaml")).unwrap();
    assert!(yaml.contains("UpstreamTlsContext") && yaml.contains("sni: \"idp.erp.test\""));
    assert!(yaml.contains("match_typed_subject_alt_names"));
    assert!(stack.ca.is_some(), "the test stack trusts its own CA");
    let plaintext = Stack::start(StackOptions {
        identity_certificate: IdentityCertificate::Plaintext,
        ..StackOptions::default()
    })
    .unwrap();
    let pat = plaintext.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600);
    assert_eq!(plaintext.get(CUSTOMERS, &key(&pat)).status, 200);
}

#[test]
fn client_identity_headers_never_reach_the_upstream_in_any_spelling() {
    let stack = stack_with(json!({"identity_headers": {"client_id": "x-caller-id"}}));
    let token = stack.idp.access_token(&["read"]);
    let auth = bearer(&token);
    let r = stack.get(
        CUSTOMERS,
        &[
            ("authorization", &auth),
            ("x-erp-client-id", "spoofed"),
            ("X-ERP-Roles", "admin"),
            ("x-caller-id", "spoofed"),
        ],
    );
    let seen = upstream_headers(&r);
    assert_eq!(seen["x-caller-id"], json!("my.trusted.app/first"), "{seen}");
    assert!(
        seen.get("x-erp-client-id").is_none() && seen.get("x-erp-roles").is_none(),
        "{seen}"
    );
    // Underscores are refused by Envoy itself (headers_with_underscores_action).
    let r = stack.get(CUSTOMERS, &[("authorization", &auth), ("x_erp_client_id", "spoofed")]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(stack.echo.count(), 1);
}

#[test]
fn method_and_url_override_headers_are_refused() {
    let stack = stack();
    let token = stack.idp.access_token(&["read", "update"]);
    let auth = bearer(&token);
    for (name, value) in [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
    ] {
        let r = stack.request("POST", CUSTOMERS, &[("authorization", &auth), (name, value)]);
        assert_rejected(&r, 400, "invalid_request");
    }
    assert_eq!(stack.echo.count(), 0);
}

#[test]
fn a_report_only_rule_does_not_let_override_headers_through() {
    let stack = stack_with(json!({"routes": [
        {"prefix": "/api/domain/", "methods": ["GET", "HEAD"], "all_of": ["read"], "report_only": true},
        {"prefix": "/api/domain/", "methods": ["POST", "PUT", "PATCH", "MERGE", "DELETE"], "all_of": ["update"]}
    ]}));
    let auth = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
    let r = stack.request(
        "GET",
        CUSTOMERS,
        &[("authorization", &auth), ("X-HTTP-Method-Override", "DELETE")],
    );
    assert_rejected(&r, 400, "invalid_request");
    assert_eq!(stack.echo.count(), 0, "the override reached the upstream");
    // The rule's own refusals are still only reported.
    assert_eq!(stack.get(CUSTOMERS, &[]).status, 200);
    assert_eq!(stack.echo.count(), 1);
}

#[test]
fn a_lower_case_method_never_reaches_the_upstream() {
    let stack = stack_with(json!({"unmatched_routes": "authenticated"}));
    let token = stack.idp.access_token(&["read"]);
    let raw = format!(
        "post {CUSTOMERS} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    let r = erp_devstack::client::send_raw(stack.envoy.listener, raw.as_bytes()).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(stack.echo.count(), 0);
}

#[test]
fn a_rule_may_match_paths_case_insensitively() {
    let rules: Value = json!([
        {"prefix": "/api/domain/", "methods": ["GET"], "all_of": ["read"], "case_insensitive": true},
    ]);
    let stack = stack_with(json!({"routes": rules}));
    let token = stack.idp.access_token(&["read"]);
    let r = stack.get("/API/Domain/odata/Customers", &[("authorization", &bearer(&token))]);
    assert_eq!(r.status, 200, "{}", r.text());
    let strict = stack_with(json!({}));
    let token = strict.idp.access_token(&["read"]);
    let r = strict.get("/API/Domain/odata/Customers", &[("authorization", &bearer(&token))]);
    assert_rejected(&r, 403, "insufficient_scope");
}

#[test]
fn scope_elements_that_are_not_scope_tokens_are_refused() {
    let stack = stack();
    let key = stack.idp.signing_key();
    let mut claims = tokens::claims(tokens::now(), &["read"]);
    claims["scope"] = json!(["read", "update delete"]);
    let token = tokens::sign(&tokens::header(&key.kid), &claims, &key);
    let r = stack.request("DELETE", CUSTOMERS, &[("authorization", &bearer(&token))]);
    assert_rejected(&r, 401, "invalid_token");
    assert_eq!(stack.echo.count(), 0);
}

#[test]
fn the_admin_interface_listens_on_loopback_only() {
    let stack = stack();
    assert!(stack.envoy.admin.ip().is_loopback());
    let root = erp_devstack::envoy::repo_root();
    // The compose stack: every container on the host's network (no
    // bridge, nothing published), so the admin address its Envoy
    // configuration names, 127.0.0.1, is the host's loopback and nothing else.
    let compose: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("envoy/docker-compose.yaml")).unwrap()).unwrap();
    for (name, service) in compose["services"].as_object().unwrap() {
        assert_eq!(service["network_mode"], "host", "{name}");
        assert!(service.get("ports").is_none(), "{name} publishes ports");
        assert!(service.get("networks").is_none(), "{name} joins a network");
    }
    let envoy: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("envoy/envoy.compose.yaml")).unwrap()).unwrap();
    assert_eq!(envoy["admin"]["address"]["socket_address"]["address"], "127.0.0.1");
}

#[test]
fn the_test_builds_crash_header_means_nothing_to_the_shipped_filter() {
    // `x-chaos-trap` aborts only the `chaos-trap` test build (see
    // reload_through_envoy.rs); the shipped filter passes the request.
    let stack = stack();
    // VMs created so far (the native module has none: zero throughout).
    let created = || match host() {
        Host::Wasm => stack
            .envoy
            .stat("wasm.envoy.wasm.runtime.v8.created")
            .expect("the VM counter"),
        Host::Native => 0,
    };
    let before = created();
    let auth = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
    for _ in 0..4 {
        let r = stack.get(CUSTOMERS, &[("authorization", &auth), ("x-chaos-trap", "1")]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(created(), before, "a VM was created again");
}

#[test]
fn cors_preflights_pass_without_a_credential_only_when_configured() {
    let preflight = [
        ("origin", "https://app.erp.test"),
        ("access-control-request-method", "POST"),
        ("x-erp-client-id", "forged"),
    ];
    let on = stack_with(json!({"bypass_cors_preflight": true}));
    let r = on.request("OPTIONS", CUSTOMERS, &preflight);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["method"], "OPTIONS");
    assert!(
        r.json()["headers"].get("x-erp-client-id").is_none(),
        "a client identity header passed"
    );
    // An OPTIONS that is not a preflight still needs a credential and a rule.
    assert_eq!(on.request("OPTIONS", CUSTOMERS, &preflight[..1]).status, 403);
    assert_eq!(on.echo.count(), 1);
    drop(on);
    // Off by default.
    let off = stack();
    assert_eq!(off.request("OPTIONS", CUSTOMERS, &preflight).status, 403);
    assert_eq!(off.echo.count(), 0);
}

#[test]
fn a_preflight_with_a_body_or_for_a_route_no_rule_allows_is_not_bypassed() {
    let stack = stack_with(json!({"bypass_cors_preflight": true}));
    let preflight = |method: &'static str| {
        [
            ("origin", "https://app.erp.test"),
            ("access-control-request-method", method),
        ]
    };
    // With a body: judged as any OPTIONS (no rule for it: 403), never passed.
    let r = stack
        .try_request("OPTIONS", CUSTOMERS, &preflight("POST"), b"{\"x\":1}")
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    let chunked = format!(
        "OPTIONS {CUSTOMERS} HTTP/1.1\r\nhost: x\r\nconnection: close\r\norigin: https://app.erp.test\r\n\
         access-control-request-method: POST\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let r = erp_devstack::client::send_raw(stack.envoy.listener, chunked.as_bytes()).unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    // For a path or a method no rule allows.
    assert_eq!(
        stack.request("OPTIONS", "/internal/admin", &preflight("GET")).status,
        403
    );
    assert_eq!(stack.request("OPTIONS", CUSTOMERS, &preflight("TRACE")).status, 403);
    assert_eq!(stack.echo.count(), 0, "a request reached the upstream");
    // The plain preflight still passes.
    assert_eq!(stack.request("OPTIONS", CUSTOMERS, &preflight("POST")).status, 200);
}

#[test]
fn claims_to_headers_go_upstream_and_client_copies_do_not() {
    let stack = stack_with(json!({"claims_to_headers": [
        {"claim": "client_system_user_type", "header": "x-user-type"},
        {"claim": "aud", "header": "x-audiences"},
        {"claim": "client_id", "header": "x-app"}
    ]}));
    let jwt = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
    // (An underscore spelling never arrives: Envoy refuses such headers.)
    let forged = [("x-user-type", "Administrator"), ("x-app", "forged")];
    let mut headers = vec![("authorization", jwt.as_str())];
    headers.extend(forged);
    let seen = upstream_headers(&stack.get(CUSTOMERS, &headers));
    assert_eq!(seen["x-user-type"], "Internal");
    assert!(
        seen["x-audiences"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|a| a == "DomainAPI"),
        "{seen}"
    );
    assert_eq!(
        seen["x-app"], "my.trusted.app/first",
        "the client's copy is gone: {seen}"
    );
    // A PAT: the introspection answer's fields, through the shared cache too.
    let pat = bearer(&stack.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600));
    for _ in 0..2 {
        let mut headers = vec![("authorization", pat.as_str())];
        headers.extend(forged);
        let seen = upstream_headers(&stack.get(CUSTOMERS, &headers));
        assert!(
            seen.get("x-user-type").is_none(),
            "the answer has no such field: {seen}"
        );
        assert_eq!(seen["x-app"], seen["x-erp-client-id"], "{seen}");
    }
}

#[test]
fn a_report_only_rule_passes_its_refusals_counts_them_and_warns_at_start() {
    let stack = stack_with(json!({"routes": [
        {"prefix": "/api/domain/", "methods": ["GET", "HEAD"], "all_of": ["read"]},
        {"prefix": "/api/domain/", "methods": ["POST"], "all_of": ["update"], "report_only": true}
    ]}));
    assert!(
        stack.envoy.log().contains("REPORT-ONLY mode is on"),
        "no warning at start"
    );
    let read = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
    let r = stack.request(
        "POST",
        CUSTOMERS,
        &[("authorization", &read), ("x-erp-client-id", "forged")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json()["headers"].clone();
    assert!(
        seen.get("x-erp-client-id").is_none(),
        "identity headers on a would-be refusal: {seen}"
    );
    assert_eq!(stack.request("POST", CUSTOMERS, &[]).status, 200);
    // The other rule is enforced.
    assert_eq!(stack.get(CUSTOMERS, &[]).status, 401);
    assert_eq!(stack.envoy.filter_stat("report_only_passed"), Some(2));
    assert_eq!(stack.envoy.filter_stat("denied_401"), Some(1));
    assert!(
        stack.envoy.log().contains("report-only: would refuse: 403"),
        "the refusal is not logged"
    );
    assert_not_leaked(&stack, &read);
}
