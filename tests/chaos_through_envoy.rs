//! Chaos in the identity service while traffic flows through real Envoy
//! (two workers): the service killed and restarted, its key set answering
//! garbage for a while, introspection hanging past the timeout.
//!
//! In every case: JWTs with cached keys are unaffected, cached reference
//! tokens keep working (their TTL outlasts the fault), new reference tokens
//! get 503 with `Retry-After`, answers are normal again within 2 s of the
//! service coming back, and nothing unauthenticated reaches the upstream
//! (read from the echo's own record, by request id).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use erp_devstack::envoy::EnvoyOptions;
use erp_devstack::idp::{Fault, ReferenceKind};
use erp_devstack::stack::{Stack, StackOptions};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// A JWT whose key the filter has.
    Jwt,
    /// A PAT the filter has already introspected (cached for 60 s).
    CachedPat,
    /// A PAT never seen before.
    FreshPat,
    /// No credential: must never pass.
    Nothing,
}

#[derive(Debug, Clone)]
struct Sent {
    kind: Kind,
    /// Seconds since the load started.
    at: f64,
    status: u16,
    retry_after: bool,
    seconds: f64,
}

fn stack() -> Stack {
    Stack::start(StackOptions {
        filter_config: Some(json!({
            "remote_jwks": {"refresh_seconds": 1},
            // The load brings about 150 new reference tokens a second, more
            // than the half of the default budget that tokens never seen
            // active may use; the budget is not what these tests are about.
            "introspection": {"cache_max_ttl_seconds": 60, "max_calls_per_second": 2000}
        })),
        envoy: EnvoyOptions {
            concurrency: 2,
            ..EnvoyOptions::default()
        },
        ..StackOptions::default()
    })
    .unwrap()
}

/// Sends a mix of kinds from four threads for `seconds`, while `chaos`
/// runs with the load's start time; returns every request's outcome by id.
fn under_load(stack: &Stack, seconds: f64, chaos: impl FnOnce(Instant)) -> HashMap<u64, Sent> {
    let jwt = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
    let cached = stack.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600);
    assert_eq!(stack.get(CUSTOMERS, &[("authorization", &bearer(&cached))]).status, 200);
    assert_eq!(stack.get(CUSTOMERS, &[("authorization", &jwt)]).status, 200);
    let fresh: Vec<String> = (0..2000)
        .map(|_| stack.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600))
        .collect();
    let fresh = Mutex::new(fresh);
    stack.echo.clear();
    let next_id = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let sent = Mutex::new(HashMap::new());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let id = next_id.fetch_add(1, Ordering::SeqCst);
                    let kind = [Kind::Jwt, Kind::CachedPat, Kind::FreshPat, Kind::Nothing][(id % 4) as usize];
                    let credential = match kind {
                        Kind::Jwt => Some(jwt.clone()),
                        Kind::CachedPat => Some(bearer(&cached)),
                        Kind::FreshPat => fresh.lock().unwrap().pop().map(|t| bearer(&t)),
                        Kind::Nothing => None,
                    };
                    let id_text = id.to_string();
                    let mut headers = vec![("x-chaos-id", id_text.as_str())];
                    if let Some(credential) = &credential {
                        headers.push(("authorization", credential));
                    }
                    let at = start.elapsed().as_secs_f64();
                    let began = Instant::now();
                    let r = stack.get(CUSTOMERS, &headers);
                    sent.lock().unwrap().insert(
                        id,
                        Sent {
                            kind,
                            at,
                            status: r.status,
                            retry_after: r.header("retry-after").is_some(),
                            seconds: began.elapsed().as_secs_f64(),
                        },
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        chaos(start);
        while start.elapsed().as_secs_f64() < seconds {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
    });
    let sent = sent.into_inner().unwrap();
    assert_nothing_unauthenticated_upstream(stack, &sent);
    sent
}

/// Every request the echo received was sent with a credential that passed.
fn assert_nothing_unauthenticated_upstream(stack: &Stack, sent: &HashMap<u64, Sent>) {
    let arrived = stack.echo.take();
    assert!(!arrived.is_empty());
    for request in arrived {
        let id: u64 = request
            .header("x-chaos-id")
            .and_then(|v| v.parse().ok())
            .expect("an id");
        let s = &sent[&id];
        assert!(
            s.kind != Kind::Nothing && s.status == 200,
            "request {id} ({:?}, answered {}) reached the upstream",
            s.kind,
            s.status
        );
    }
}

fn sleep_until(start: Instant, seconds: f64) {
    let at = start + Duration::from_secs_f64(seconds);
    if let Some(left) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

/// Statuses of one kind sent within `[from, to)`.
fn statuses(sent: &HashMap<u64, Sent>, kind: Kind, from: f64, to: f64) -> Vec<&Sent> {
    let mut v: Vec<&Sent> = sent
        .values()
        .filter(|s| s.kind == kind && s.at >= from && s.at < to)
        .collect();
    v.sort_by(|a, b| a.at.total_cmp(&b.at));
    v
}

/// The promises every chaos case keeps, with the fault on during
/// `[from, to)` for the kinds it touches.
fn assert_promises(sent: &HashMap<u64, Sent>, from: f64, to: f64, end: f64) {
    for s in statuses(sent, Kind::Jwt, 0.0, end) {
        assert_eq!(s.status, 200, "a JWT at {:.2} s", s.at);
    }
    for s in statuses(sent, Kind::CachedPat, 0.0, end) {
        assert_eq!(s.status, 200, "a cached PAT at {:.2} s", s.at);
    }
    for s in statuses(sent, Kind::Nothing, 0.0, end) {
        assert_eq!(s.status, 401, "no credential at {:.2} s", s.at);
    }
    // Fresh tokens while the fault is on (a little after it starts, and
    // not those whose callout began before it ends).
    let during = statuses(sent, Kind::FreshPat, from + 0.2, to - 1.2);
    assert!(during.len() >= 5, "only {} fresh tokens during the fault", during.len());
    for s in &during {
        assert_eq!(s.status, 503, "a fresh PAT at {:.2} s during the fault", s.at);
        assert!(s.retry_after, "503 without Retry-After at {:.2} s", s.at);
    }
    // Normal again within 2 s of the service coming back.
    let after = statuses(sent, Kind::FreshPat, to + 2.0, end);
    assert!(after.len() >= 5, "only {} fresh tokens after recovery", after.len());
    for s in &after {
        assert_eq!(
            s.status, 200,
            "a fresh PAT at {:.2} s, after recovery at {to:.2} s",
            s.at
        );
    }
}

#[test]
fn identity_service_killed_under_load_and_restarted() {
    let stack = stack();
    let (from, to, end) = (1.0, 4.0, 7.5);
    let jwks_before = stack.idp.jwks_requests();
    let sent = under_load(&stack, end, |start| {
        sleep_until(start, from);
        stack.idp.stop();
        sleep_until(start, to);
        stack.idp.restart().unwrap();
    });
    assert_promises(&sent, from, to, end);
    // Keys were refreshed every second before and after, and kept while
    // the service was down.
    assert!(stack.idp.jwks_requests() > jwks_before + 2);
}

#[test]
fn key_set_answering_garbage_for_a_while_keeps_the_last_good_keys() {
    let stack = stack();
    let (from, to, end) = (0.5, 4.0, 6.0);
    let mut fetched_during = 0;
    let sent = under_load(&stack, end, |start| {
        sleep_until(start, from);
        let before = stack.idp.jwks_requests();
        stack.idp.set_jwks_fault(Fault::Garbage);
        sleep_until(start, to);
        fetched_during = stack.idp.jwks_requests() - before;
        stack.idp.set_jwks_fault(Fault::None);
    });
    // The filter did fetch garbage (refresh every second) and kept the
    // keys it had: every JWT passed.
    assert!(fetched_during >= 2, "only {fetched_during} fetches during the fault");
    for s in statuses(&sent, Kind::Jwt, 0.0, end) {
        assert_eq!(s.status, 200, "a JWT at {:.2} s", s.at);
    }
    // Introspection was never touched: fresh tokens passed throughout.
    for s in statuses(&sent, Kind::FreshPat, 0.0, end) {
        assert_eq!(s.status, 200, "a fresh PAT at {:.2} s", s.at);
    }
    // A JWT from a new key cannot be verified until the set is good again.
    let kid = stack.idp.rotate().unwrap();
    stack.idp.set_jwks_fault(Fault::Garbage);
    let new = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
    let r = stack.get(CUSTOMERS, &[("authorization", &new)]);
    assert!(
        matches!(r.status, 401 | 503),
        "key {kid} while the set is garbage: {}",
        r.status
    );
    stack.idp.set_jwks_fault(Fault::None);
    let deadline = Instant::now() + Duration::from_secs(3);
    while stack.get(CUSTOMERS, &[("authorization", &new)]).status != 200 {
        assert!(Instant::now() < deadline, "the new key was not picked up within 3 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn introspection_hanging_past_the_timeout_gives_503_in_time() {
    let stack = stack();
    let (from, to, end) = (0.5, 4.0, 7.0);
    let sent = under_load(&stack, end, |start| {
        sleep_until(start, from);
        stack.idp.set_introspection_fault(Fault::Slow(Duration::from_secs(5)));
        sleep_until(start, to);
        stack.idp.set_introspection_fault(Fault::None);
    });
    assert_promises(&sent, from, to, end);
    // A hanging service costs a request the callout timeout (1 s), not more.
    for s in statuses(&sent, Kind::FreshPat, from + 0.2, to - 1.2) {
        assert!(s.seconds < 1.6, "a fresh PAT waited {:.2} s", s.seconds);
    }
}
