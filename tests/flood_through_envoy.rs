//! A steady flood of made-up `enrt_` tokens at ten times the introspection
//! budget, for three cache lifetimes, while real personal access tokens are
//! used throughout: their answers expire and are renewed during the flood,
//! from the share of the budget reserved for tokens seen active, so their
//! holders keep getting 200. Prints the figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use erp_devstack::idp::ReferenceKind;
use erp_devstack::tokens;
use serde_json::json;

const BUDGET: u64 = 10;
const TTL_SECONDS: u64 = 2;

#[test]
fn real_tokens_keep_passing_through_a_flood_of_made_up_ones_at_ten_times_the_budget() {
    let stack = Arc::new(stack_with(json!({"introspection": {
        "max_calls_per_second": BUDGET,
        "cache_max_ttl_seconds": TTL_SECONDS,
        "negative_cache_ttl_seconds": 1
    }})));
    let pats: Vec<String> = (0..3)
        .map(|_| stack.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600))
        .collect();
    // In use before the flood starts, as real tokens are.
    for pat in &pats {
        assert_eq!(stack.get(CUSTOMERS, &[("x-api-key", pat)]).status, 200);
    }
    let introspections_before = stack.idp.introspections();
    let stop = Arc::new(AtomicBool::new(false));
    let flood_sent = Arc::new(AtomicU64::new(0));
    let flood_threads: Vec<_> = (0..2)
        .map(|_| {
            let (stack, stop, sent) = (Arc::clone(&stack), Arc::clone(&stop), Arc::clone(&flood_sent));
            std::thread::spawn(move || {
                // 50 a second from each thread: 100 a second, ten times the budget.
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let made_up = format!("enrt_{}", tokens::random_hex(32));
                    let r = stack.get(CUSTOMERS, &[("x-api-key", &made_up)]);
                    assert!(matches!(r.status, 401 | 503), "a made-up token got {}", r.status);
                    sent.fetch_add(1, Ordering::Relaxed);
                    next += Duration::from_millis(20);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
        })
        .collect();
    let (ok, unavailable) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flood_for = Duration::from_secs(3 * TTL_SECONDS);
    let started = Instant::now();
    // Each holder calls five times a second, at its own phase: a renewal
    // falls anywhere in a second, as real traffic's does, not only in its
    // first milliseconds (where it would beat the flood to the budget).
    let users: Vec<_> = pats
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, pat)| {
            let (stack, ok, unavailable) = (Arc::clone(&stack), Arc::clone(&ok), Arc::clone(&unavailable));
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(70 * i as u64 + 30));
                while started.elapsed() < flood_for {
                    match stack.get(CUSTOMERS, &[("x-api-key", &pat)]).status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        503 => unavailable.fetch_add(1, Ordering::Relaxed),
                        other => panic!("a real token got {other}"),
                    };
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        })
        .collect();
    for user in users {
        user.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for thread in flood_threads {
        thread.join().unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let (ok, unavailable) = (ok.load(Ordering::Relaxed), unavailable.load(Ordering::Relaxed));
    let calls = stack.idp.introspections() - introspections_before;
    let rate = ok as f64 / (ok + unavailable) as f64;
    let over_budget = stack.envoy.filter_stat("introspections_over_budget").unwrap_or(0);
    let _ = writeln!(
        std::io::stderr(),
        "flood: {:.0} made-up tokens/s for {seconds:.1} s (budget {BUDGET}/s, answers live {TTL_SECONDS} s); \
         real PATs: {ok} x 200, {unavailable} x 503 ({:.2}% success); introspection calls {:.1}/s; \
         {over_budget} refused over budget",
        flood_sent.load(Ordering::Relaxed) as f64 / seconds,
        rate * 100.0,
        calls as f64 / seconds,
    );
    assert!(ok + unavailable > 60, "too few requests to judge: {ok} + {unavailable}");
    assert!(
        rate >= 0.99,
        "real PATs passed {:.2}% of the time during the flood",
        rate * 100.0
    );
    assert!(
        (calls as f64 / seconds) <= BUDGET as f64 * 1.5,
        "{calls} calls in {seconds:.1} s: the budget did not hold"
    );
    assert!(over_budget > 0, "the flood never reached the budget");
    // The second layer, Envoy's local rate limit, saw every request.
    let limited = stack
        .envoy
        .stat("domain_api_local_rate_limit.http_local_rate_limit.enabled")
        .unwrap_or(0);
    assert!(
        limited >= ok + unavailable,
        "local_ratelimit is not in front of the filter: {limited}"
    );
}
