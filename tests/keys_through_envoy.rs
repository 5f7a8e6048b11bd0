//! Signing keys fetched from the identity service through real Envoy with
//! two workers: one fetch per period for all workers, rotation without an
//! outage, a rate-limited refetch on unknown `kid`s, 503 before the first
//! keys, and the last good set kept when the endpoint fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use erp_devstack::envoy::EnvoyOptions;
use erp_devstack::idp::Fault;
use erp_devstack::stack::{Stack, StackOptions};
use erp_devstack::tokens;
use serde_json::{json, Value};

fn two_workers(patch: Value, jwks_fault_at_start: Option<Fault>) -> Stack {
    Stack::start(StackOptions {
        filter_config: Some(patch),
        envoy: EnvoyOptions {
            concurrency: 2,
            ..EnvoyOptions::default()
        },
        jwks_fault_at_start,
        ..StackOptions::default()
    })
    .unwrap()
}

fn get_with(stack: &Stack, token: &str) -> erp_devstack::client::Response {
    stack.get(CUSTOMERS, &[("authorization", &bearer(token))])
}

#[test]
fn keys_are_fetched_once_per_period_for_all_workers() {
    let stack = two_workers(json!({"remote_jwks": {"refresh_seconds": 2}}), None);
    let started = Instant::now();
    let token = stack.idp.access_token(&["read"]);
    while started.elapsed() < Duration::from_millis(6_500) {
        assert_eq!(get_with(&stack, &token).status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    let fetches = stack.idp.jwks_requests();
    println!("JWKS fetches over three 2 s periods with 3 root contexts: {fetches}");
    assert!(
        (2..=4).contains(&fetches),
        "{fetches} fetches: at most one per period plus the initial one"
    );
    assert_not_leaked(&stack, &token);
}

#[test]
fn rotation_is_picked_up_on_the_first_new_kid_and_retired_keys_stop_working() {
    let stack = two_workers(json!({"remote_jwks": {"refresh_seconds": 2}}), None);
    let old = stack.idp.access_token(&["read"]);
    let before = stack.idp.jwks_requests();
    stack.idp.rotate().unwrap();
    let new = stack.idp.access_token(&["read"]);
    assert_eq!(get_with(&stack, &new).status, 200, "the first request with the new kid");
    assert!(stack.idp.jwks_requests() > before, "a refetch on the unknown kid");
    assert_eq!(
        get_with(&stack, &old).status,
        200,
        "old tokens keep working while the old key is published"
    );
    stack.idp.retire_old_keys();
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let r = get_with(&stack, &old);
        if r.status == 401 {
            assert_rejected(&r, 401, "invalid_token");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a retired key still verifies tokens after a refresh"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get_with(&stack, &new).status, 200);
}

#[test]
fn a_flood_of_random_kids_costs_at_most_one_fetch_and_all_are_refused() {
    let stack = Arc::new(two_workers(json!({}), None));
    let before = stack.idp.jwks_requests();
    let key = stack.idp.signing_key();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (stack, key) = (Arc::clone(&stack), key.clone());
            std::thread::spawn(move || {
                for i in 0..250 {
                    let header = json!({"alg": "RS256", "kid": format!("random-{t}-{i}"), "typ": "at+jwt"});
                    let token = tokens::sign(&header, &tokens::claims(tokens::now(), &["read"]), &key);
                    let r = get_with(&stack, &token);
                    assert_rejected(&r, 401, "invalid_token");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let extra = stack.idp.jwks_requests() - before;
    println!("1,000 random kids: {extra} extra JWKS fetch(es)");
    assert!(extra <= 1, "{extra} extra fetches");
    assert_eq!(stack.echo.count(), 0);
}

#[test]
fn jwks_down_at_start_gives_503_until_it_comes_up() {
    let stack = two_workers(json!({}), Some(Fault::Status(503)));
    let token = stack.idp.access_token(&["read"]);
    std::thread::sleep(Duration::from_millis(300));
    let r = get_with(&stack, &token);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let pat = stack
        .idp
        .issue_reference(erp_devstack::idp::ReferenceKind::Pat, &["read"], 3600);
    assert_eq!(
        stack.get(CUSTOMERS, &[("x-api-key", &pat)]).status,
        200,
        "reference tokens are unaffected"
    );
    stack.idp.set_jwks_fault(Fault::None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_with(&stack, &token).status != 200 {
        assert!(
            Instant::now() < deadline,
            "keys never arrived after the endpoint came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        stack.echo.count(),
        2,
        "only the PAT and the final JWT request reached the upstream"
    );
}

#[test]
fn jwks_failures_after_a_good_fetch_keep_the_last_good_keys() {
    let stack = two_workers(json!({"remote_jwks": {"refresh_seconds": 1}}), None);
    let token = stack.idp.access_token(&["read"]);
    for fault in [
        Fault::Status(500),
        Fault::Garbage,
        Fault::Oversized(70_000),
        Fault::Incomplete,
    ] {
        stack.idp.set_jwks_fault(fault.clone());
        let fetches = stack.idp.jwks_requests();
        let deadline = Instant::now() + Duration::from_secs(5);
        while stack.idp.jwks_requests() == fetches {
            assert!(Instant::now() < deadline, "no refresh attempt under {fault:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(get_with(&stack, &token).status, 200, "keys lost after {fault:?}");
    }
    assert!(stack.envoy.log().contains("keeping the last good set"));
}

/// Right after each rotation, a burst of concurrent first requests carrying
/// a token with the new `kid` lands on both workers: whichever worker makes
/// the fetch, every request is answered with the new set, none with 401.
#[test]
fn rotation_burst_every_first_request_with_the_new_kid_is_allowed() {
    let stack = Arc::new(two_workers(
        json!({"remote_jwks": {"refresh_seconds": 5, "unknown_kid_cooldown_seconds": 3}}),
        None,
    ));
    assert_eq!(get_with(&stack, &stack.idp.access_token(&["read"])).status, 200);
    for round in 0..5 {
        stack.idp.rotate().unwrap();
        let token = stack.idp.access_token(&["read"]);
        let barrier = Arc::new(std::sync::Barrier::new(24));
        let threads: Vec<_> = (0..24)
            .map(|_| {
                let (stack, token, barrier) = (Arc::clone(&stack), token.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let r = get_with(&stack, &token);
                    (r.status, r.text())
                })
            })
            .collect();
        let answers: Vec<(u16, String)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let refused: Vec<&(u16, String)> = answers.iter().filter(|(s, _)| *s != 200).collect();
        assert!(refused.is_empty(), "round {round}: refused {refused:?}");
        // The next rotation comes after the cooldown, as a real one would.
        std::thread::sleep(Duration::from_millis(3_200));
    }
    assert_not_leaked(&stack, "eyJ");
}
