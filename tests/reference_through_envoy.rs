//! `enrt_` reference tokens through real Envoy and the identity emulator:
//! introspection, the shared cache, revocation, one call for many waiters,
//! and 503 (never a pass, never a 401) when the identity service fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use erp_devstack::envoy::EnvoyOptions;
use erp_devstack::idp::{Fault, ReferenceKind};
use erp_devstack::stack::{Stack, StackOptions};
use serde_json::json;

fn pat(stack: &Stack, scopes: &[&str]) -> String {
    stack.idp.issue_reference(ReferenceKind::Pat, scopes, 3600)
}

fn assert_unavailable(r: &erp_devstack::client::Response) {
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some(), "no Retry-After");
    assert_eq!(r.json()["error"], "temporarily_unavailable");
}

#[test]
fn pat_with_read_passes_in_every_credential_header_and_may_not_post() {
    let stack = stack();
    let token = pat(&stack, &["read"]);
    let auth = bearer(&token);
    for header in [
        ("authorization", auth.as_str()),
        ("x-api-key", &token),
        ("Api-Key", &token),
    ] {
        let headers = upstream_headers(&stack.get(CUSTOMERS, &[header, ("x-erp-token-kind", "jwt")]));
        assert_eq!(headers["x-erp-token-kind"], "reference-user", "{header:?}");
        assert_eq!(headers["x-erp-subject"], "user-7f3a");
        assert_eq!(headers["x-erp-scopes"], "read");
        assert_eq!(headers["x-erp-client-id"], "my.trusted.app/first");
    }
    let r = stack.request("POST", "/api/domain/odata/Customers", &[("x-api-key", &token)]);
    assert_rejected(&r, 403, "insufficient_scope");
    assert!(r.header("www-authenticate").unwrap().contains("scope=\"update\""));
    assert_eq!(stack.echo.count(), 3);
    assert_eq!(
        stack.idp.introspections(),
        1,
        "one call for four requests with one token"
    );
    let stat = |name: &str| stack.envoy.filter_stat(name);
    assert_eq!(stat("introspections"), Some(1));
    assert_eq!(
        stat("reference_cache_hits"),
        Some(2),
        "the two allowed requests after the first were answered from cache"
    );
    assert_not_leaked(&stack, &token);
}

#[test]
fn sat_is_a_service_principal() {
    let stack = stack();
    let token = stack.idp.issue_reference(ReferenceKind::Sat, &["read", "update"], 3600);
    let headers = upstream_headers(&stack.get(CUSTOMERS, &[("x-api-key", &token)]));
    assert_eq!(headers["x-erp-token-kind"], "reference-service");
    assert_eq!(headers["x-erp-system-user"], "integration@erp.test");
    assert!(headers.get("x-erp-subject").is_none());
}

#[test]
fn repeated_token_is_introspected_once_and_revocation_bites_within_max_ttl() {
    let stack = stack_with(json!({"introspection": {"cache_max_ttl_seconds": 2}}));
    let token = pat(&stack, &["read"]);
    let cached_at = Instant::now();
    for _ in 0..10 {
        assert_eq!(stack.get(CUSTOMERS, &[("x-api-key", &token)]).status, 200);
    }
    assert_eq!(stack.idp.introspections(), 1);
    // Revoke right away: the cached answer keeps the token alive until the
    // entry expires (2 s in whole seconds: between 1 s and 2 s after caching),
    // and not a moment past max_ttl + 1 s.
    assert!(stack.idp.revoke(&token));
    let mut first_refusal = None;
    while cached_at.elapsed() < Duration::from_secs(5) {
        let r = stack.get(CUSTOMERS, &[("x-api-key", &token)]);
        if r.status == 401 {
            assert_rejected(&r, 401, "invalid_token");
            first_refusal = Some(cached_at.elapsed());
            break;
        }
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused_after = first_refusal.expect("a revoked token was still accepted after max_ttl + 1 s");
    assert!(
        refused_after <= Duration::from_secs(3),
        "refused only {refused_after:?} after caching"
    );
    assert!(
        refused_after >= Duration::from_millis(950),
        "refused {refused_after:?} after caching: the cached entry was not used"
    );
    assert_eq!(stack.idp.introspections(), 2);
}

#[test]
fn fifty_concurrent_requests_with_one_new_token_make_at_most_two_calls() {
    let stack = Arc::new(
        Stack::start(StackOptions {
            envoy: EnvoyOptions {
                concurrency: 2,
                ..EnvoyOptions::default()
            },
            ..StackOptions::default()
        })
        .unwrap(),
    );
    // A slow answer keeps every request waiting on the same call.
    stack
        .idp
        .set_introspection_fault(Fault::Slow(Duration::from_millis(300)));
    let token = Arc::new(pat(&stack, &["read"]));
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (stack, token) = (Arc::clone(&stack), Arc::clone(&token));
            std::thread::spawn(move || stack.get(CUSTOMERS, &[("x-api-key", &token)]).status)
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let calls = stack.idp.introspections();
    println!("50 concurrent requests, 2 workers: {calls} introspection call(s)");
    assert!((1..=2).contains(&calls), "{calls} calls");
    assert_eq!(stack.echo.count(), 50);
}

#[test]
fn unknown_token_is_refused_and_remembered_briefly_and_malformed_is_never_asked() {
    let stack = stack();
    let unknown = format!("enrt_{}", "AB".repeat(32));
    assert_rejected(&stack.get(CUSTOMERS, &[("x-api-key", &unknown)]), 401, "invalid_token");
    assert_rejected(&stack.get(CUSTOMERS, &[("x-api-key", &unknown)]), 401, "invalid_token");
    assert_eq!(stack.idp.introspections(), 1, "the negative answer is cached");
    for bad in [
        "enrt_XYZ",
        "enrt_",
        &format!("enrt_{}", "G".repeat(64)),
        &format!("{unknown}00"),
    ] {
        assert_rejected(&stack.get(CUSTOMERS, &[("x-api-key", bad)]), 401, "invalid_token");
    }
    assert_eq!(stack.idp.introspections(), 1, "malformed tokens make no call");
    assert_eq!(stack.echo.count(), 0);
}

fn assert_fault_gives_503(stack: &Stack) {
    let token = pat(stack, &["read"]);
    let forwarded = stack.echo.count();
    for _ in 0..2 {
        assert_unavailable(&stack.get(CUSTOMERS, &[("x-api-key", &token)]));
    }
    assert_eq!(
        stack.echo.count(),
        forwarded,
        "a request reached the upstream unauthenticated"
    );
    let jwt = stack.idp.access_token(&["read"]);
    assert_eq!(
        stack.get(CUSTOMERS, &[("authorization", &bearer(&jwt))]).status,
        200,
        "JWTs keep working"
    );
    assert!(
        !stack.envoy.log().contains("edge-introspection-secret"),
        "the client secret is logged"
    );
    assert_not_leaked(stack, &token);
}

#[test]
fn identity_service_down_gives_503() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let stack = Stack::start(StackOptions {
        identity_override: Some(closed),
        inline_jwks: true,
        ..StackOptions::default()
    })
    .unwrap();
    assert_fault_gives_503(&stack);
}

#[test]
fn identity_service_slower_than_the_timeout_gives_503() {
    let stack = stack_with(json!({"introspection": {"timeout_ms": 200}}));
    stack
        .idp
        .set_introspection_fault(Fault::Slow(Duration::from_millis(1500)));
    let started = Instant::now();
    assert_fault_gives_503(&stack);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn identity_service_error_gives_503() {
    let stack = stack();
    stack.idp.set_introspection_fault(Fault::Status(500));
    assert_fault_gives_503(&stack);
}

#[test]
fn identity_service_garbage_gives_503() {
    let stack = stack();
    stack.idp.set_introspection_fault(Fault::Garbage);
    assert_fault_gives_503(&stack);
}

#[test]
fn identity_service_oversized_or_incomplete_answer_gives_503() {
    let stack = stack();
    stack.idp.set_introspection_fault(Fault::Oversized(100_000));
    assert_fault_gives_503(&stack);
    stack.idp.set_introspection_fault(Fault::Incomplete);
    assert_fault_gives_503(&stack);
}

#[test]
fn wrong_introspection_credentials_give_503_not_401() {
    let stack = stack_with(json!({"introspection": {"client_secret": "wrong"}}));
    assert_fault_gives_503(&stack);
}

#[test]
fn identity_service_recovery_is_not_held_back_by_the_failure() {
    let stack = stack();
    stack.idp.set_introspection_fault(Fault::Status(500));
    let token = pat(&stack, &["read"]);
    assert_unavailable(&stack.get(CUSTOMERS, &[("x-api-key", &token)]));
    stack.idp.set_introspection_fault(Fault::None);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        stack.get(CUSTOMERS, &[("x-api-key", &token)]).status,
        200,
        "errors are not cached"
    );
}

#[test]
fn waiters_are_answered_when_the_request_that_made_the_call_hangs_up() {
    let stack = Arc::new(stack());
    stack
        .idp
        .set_introspection_fault(Fault::Slow(Duration::from_millis(600)));
    let token = pat(&stack, &["read"]);
    // The first request makes the call, then its client goes away.
    let raw = format!("GET {CUSTOMERS} HTTP/1.1\r\nhost: x\r\nx-api-key: {token}\r\n\r\n");
    let mut first = std::net::TcpStream::connect(stack.envoy.listener).unwrap();
    std::io::Write::write_all(&mut first, raw.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let second = {
        let (stack, token) = (Arc::clone(&stack), token.clone());
        std::thread::spawn(move || stack.get(CUSTOMERS, &[("x-api-key", &token)]).status)
    };
    std::thread::sleep(Duration::from_millis(150));
    drop(first);
    assert_eq!(second.join().unwrap(), 200);
    assert_eq!(stack.idp.introspections(), 2, "the cancelled call was made again");
    assert!(stack.envoy.log().contains("its first request went away"));
}

#[test]
fn cache_keyspace_is_bounded_in_unit_tests_and_memory_is_flat_through_envoy() {
    // Every token must be asked about (no budget in the way): this is about
    // the keyspace bound, not the flood defence.
    let stack = Arc::new(stack_with(
        json!({"introspection": {"cache_max_entries": 1000, "max_calls_per_second": 100_000}}),
    ));
    let allocated = |stack: &Stack| -> u64 {
        let r = erp_devstack::client::request(stack.envoy.admin, "GET", "/memory", &[], b"").unwrap();
        r.json()["allocated"].as_str().unwrap().parse().unwrap()
    };
    let send = |from: usize, to: usize| {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let stack = Arc::clone(&stack);
                std::thread::spawn(move || {
                    for i in (from + t..to).step_by(8) {
                        let token = format!("enrt_{i:064X}");
                        let r = stack.get(CUSTOMERS, &[("x-api-key", &token)]);
                        if r.status != 401 {
                            let log = stack.envoy.log();
                            let lines: Vec<&str> = log
                                .lines()
                                .filter(|l| l.contains("warn") || l.contains("error"))
                                .collect();
                            panic!(
                                "{} {}\n{}",
                                r.status,
                                r.text(),
                                lines[lines.len().saturating_sub(10)..].join("\n")
                            );
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    };
    send(0, 10_000);
    let after_10k = allocated(&stack);
    send(10_000, 20_000);
    let after_20k = allocated(&stack);
    let growth = (after_20k as f64 - after_10k as f64) / after_10k as f64;
    println!(
        "Envoy allocated: {after_10k} after 10,000 tokens, {after_20k} after 20,000 ({:+.2}%)",
        growth * 100.0
    );
    assert!(growth.abs() <= 0.05, "memory grew {:.1}%", growth * 100.0);
    assert_eq!(stack.idp.introspections(), 20_000);
    assert_not_leaked(&stack, "enrt_");
}

/// Sends a request's head, then (after `gap`) its body, on one connection;
/// returns the raw answer once Envoy closes it.
fn send_in_two_parts(addr: std::net::SocketAddr, head: &str, body: &[u8], gap: Duration) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(gap);
    stream.write_all(body).unwrap();
    stream
}

#[test]
fn a_body_sent_while_introspection_is_held_waits_for_the_decision_and_arrives_intact() {
    use std::io::Read;
    let stack = stack();
    let token = pat(&stack, &["read", "update"]);
    stack
        .idp
        .set_introspection_fault(Fault::Slow(Duration::from_millis(700)));
    let body = br#"{"Name":"a body that must wait for the decision"}"#;
    for framing in ["content-length", "chunked"] {
        stack.echo.clear();
        let (length_header, payload) = match framing {
            "content-length" => (format!("content-length: {}\r\n", body.len()), body.to_vec()),
            _ => {
                let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
                chunked.extend_from_slice(body);
                chunked.extend_from_slice(b"\r\n0\r\n\r\n");
                ("transfer-encoding: chunked\r\n".to_owned(), chunked)
            }
        };
        // A new token each time: the first answer is cached.
        let token = if framing == "chunked" {
            pat(&stack, &["read", "update"])
        } else {
            token.clone()
        };
        let head = format!(
            "POST {CUSTOMERS} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-api-key: {token}\r\ncontent-type: application/json\r\n{length_header}\r\n"
        );
        let mut stream = send_in_two_parts(stack.envoy.listener, &head, &payload, Duration::from_millis(150));
        // The body is in Envoy now; the introspection answer is not yet.
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            stack.echo.count(),
            0,
            "{framing}: the request reached the upstream before its decision"
        );
        let mut answer = String::new();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{framing}: {answer}");
        let seen = stack.echo.take();
        assert_eq!(seen.len(), 1, "{framing}");
        assert_eq!(seen[0].body, body.to_vec(), "{framing}: the body changed on the way");
        assert_eq!(
            seen[0]
                .headers
                .iter()
                .find(|(n, _)| n == "x-erp-token-kind")
                .map(|(_, v)| v.as_str()),
            Some("reference-user"),
            "{framing}"
        );
    }
    assert_not_leaked(&stack, &token);
}
