//! Reference tokens: one callout for many waiters, claims across workers,
//! shared failures, the introspection budget.

use super::*;

#[test]
fn one_callout_answers_many_waiters_on_one_worker() {
    let mut host = Host::new(1).with_keys();
    let streams: Vec<_> = (0..50).map(|_| host.request(0, READ_PAT)).collect();
    assert_eq!(host.calls_to("/id/connect/introspect"), 1);
    assert!(streams.iter().all(|s| host.outcome(*s).is_none()), "all wait");
    host.answer_all();
    assert!(streams.iter().all(|s| host.outcome(*s) == Some(Outcome::Allowed)));
    assert_eq!(host.count(Stat::Introspections), 1);
    let again = host.request(0, READ_PAT);
    assert_eq!(host.outcome(again), Some(Outcome::Allowed), "remembered, no call");
    assert!(host.calls.is_empty());
}

#[test]
fn a_request_waits_for_its_decision_until_the_answer_and_no_longer() {
    let mut host = Host::new(1).with_keys();
    let stream = host.request(0, READ_PAT);
    assert!(host.workers[0].is_waiting(stream), "its body must wait");
    host.answer_all();
    assert_eq!(host.outcome(stream), Some(Outcome::Allowed));
    assert!(!host.workers[0].is_waiting(stream));
    // Decided at once: never waiting.
    let again = host.request(0, READ_PAT);
    assert!(!host.workers[0].is_waiting(again));
}

#[test]
fn introspection_latency_and_key_set_age_are_recorded() {
    let mut host = Host::new(1).with_keys();
    let stream = host.request(0, READ_PAT);
    host.advance(37);
    host.answer_all();
    assert_eq!(host.outcome(stream), Some(Outcome::Allowed));
    assert!(
        host.records.contains(&(Stat::IntrospectionLatencyMs, 37)),
        "{:?}",
        host.records
    );
    assert_eq!(
        (
            host.count(Stat::IntrospectionActive),
            host.count(Stat::IntrospectionErrors)
        ),
        (1, 0)
    );
    // Five seconds after the last good fetch, a tick says so.
    host.records.clear();
    host.advance(5_000);
    host.tick(0);
    let age = host.records.iter().rev().find(|(s, _)| *s == Stat::KeySetAgeSeconds);
    assert!(matches!(age, Some((_, 5))), "{:?}", host.records);
}

#[test]
fn a_claim_held_by_another_worker_is_polled_until_its_answer_appears() {
    let mut host = Host::new(2).with_keys();
    let first = host.request(0, READ_PAT);
    let second = host.request(1, READ_PAT);
    assert_eq!(host.calls.len(), 1, "worker 1 waits for worker 0's call");
    assert_eq!(host.ticks[1], REMOTE_POLL, "and polls");
    host.advance(20);
    host.tick(1);
    assert_eq!(host.outcome(second), None, "no answer yet");
    host.answer_all();
    assert_eq!(host.outcome(first), Some(Outcome::Allowed));
    host.advance(20);
    host.tick(1);
    assert_eq!(
        host.outcome(second),
        Some(Outcome::Allowed),
        "found in the shared cache"
    );
    assert_eq!(host.count(Stat::Introspections), 1);
    assert!(host.calls.is_empty());
}

#[test]
fn a_stale_claim_is_taken_over() {
    let mut host = Host::new(2).with_keys();
    host.request(0, READ_PAT);
    let waiting = host.request(1, READ_PAT);
    // Worker 0's call never answers (its VM is stuck): past the claim's
    // deadline, worker 1 calls itself.
    let stuck: Vec<CallId> = host.calls.keys().copied().collect();
    host.advance(500 + CLAIM_SLACK_MS + 1);
    host.tick(1);
    assert_eq!(host.calls.len(), 2, "worker 1 took over");
    let mine = *host.calls.keys().find(|id| !stuck.contains(id)).unwrap();
    assert_eq!(host.calls[&mine].owner, Host::root(1), "from its root context");
    host.answer(mine);
    assert_eq!(host.outcome(waiting), Some(Outcome::Allowed));
}

#[test]
fn when_the_first_request_leaves_the_call_is_made_again_for_the_others() {
    let mut host = Host::new(1).with_keys();
    let first = host.request(0, READ_PAT);
    let others: Vec<_> = (0..3).map(|_| host.request(0, READ_PAT)).collect();
    host.stream_done(first);
    assert!(host.calls.is_empty(), "the host cancelled the call with its stream");
    assert_eq!(host.ticks[0], NOW_TICK, "the root calls again at once");
    host.tick(0);
    assert_eq!(host.calls.len(), 1);
    assert_eq!(host.calls.values().next().unwrap().owner, Host::root(0));
    host.answer_all();
    assert!(others.iter().all(|s| host.outcome(*s) == Some(Outcome::Allowed)));
    assert_eq!(host.outcome(first), None, "the one that left gets nothing");
}

#[test]
fn a_lone_request_that_leaves_releases_its_claim_for_other_workers() {
    let mut host = Host::new(2).with_keys();
    let first = host.request(0, READ_PAT);
    host.stream_done(first);
    let other = host.request(1, READ_PAT);
    assert_eq!(
        host.calls.len(),
        1,
        "worker 1 calls at once instead of waiting out the claim"
    );
    host.answer_all();
    assert_eq!(host.outcome(other), Some(Outcome::Allowed));
}

#[test]
fn a_failure_is_shared_for_250_ms_then_forgotten() {
    let mut host = Host::new(2).with_keys();
    let first = host.request(0, READ_PAT);
    let remote = host.request(1, READ_PAT);
    host.service = Service::Fails;
    host.answer_all();
    assert_eq!(host.outcome(first), Some(Outcome::Replied(503)));
    host.advance(20);
    host.tick(1);
    assert_eq!(
        host.outcome(remote),
        Some(Outcome::Replied(503)),
        "shared, no second call"
    );
    host.advance(200);
    let within = host.request(1, READ_PAT);
    assert_eq!(host.outcome(within), Some(Outcome::Replied(503)));
    assert!(host.calls.is_empty(), "still within 250 ms: no call");
    host.advance(FAILURE_SHARED_MS);
    host.service = Service::Truthful;
    let after = host.request(1, READ_PAT);
    assert_eq!(host.calls.len(), 1, "forgotten: a new call");
    host.answer_all();
    assert_eq!(host.outcome(after), Some(Outcome::Allowed));
    assert_eq!(host.count(Stat::Introspections), 2);
}

#[test]
fn a_refused_dispatch_answers_503_at_once() {
    let mut host = Host::new(1).with_keys();
    host.refuse_dispatch = true;
    let s = host.request(0, READ_PAT);
    assert_eq!(host.outcome(s), Some(Outcome::Replied(503)));
}

#[test]
fn answers_decide_by_the_route_and_the_token() {
    let mut host = Host::new(1).with_keys();
    let update_on_get = host.request(0, UPDATE_PAT);
    let revoked = host.request(0, REVOKED_PAT);
    let post_with_update = host.request_with(0, "POST", UPDATE_PAT);
    let other_api = host.request(0, OTHER_API_PAT);
    host.answer_all();
    assert_eq!(
        host.outcome(other_api),
        Some(Outcome::Replied(401)),
        "active, but for TableAPI"
    );
    assert_eq!(host.outcome(update_on_get), Some(Outcome::Replied(403)));
    assert_eq!(host.outcome(revoked), Some(Outcome::Replied(401)));
    assert_eq!(host.outcome(post_with_update), Some(Outcome::Allowed));
}

#[test]
fn garbage_from_the_identity_service_is_503_not_a_pass() {
    let mut host = Host::new(1).with_keys();
    host.service = Service::Garbage;
    let s = host.request(0, READ_PAT);
    host.answer_all();
    assert_eq!(host.outcome(s), Some(Outcome::Replied(503)));
}

#[test]
fn an_answer_too_large_to_share_is_remembered_by_its_worker_and_counted() {
    let mut host = Host::new(1).with_keys();
    let first = host.request(0, LARGE_PAT);
    host.answer_all();
    assert_eq!(host.outcome(first), Some(Outcome::Allowed));
    assert_eq!(host.count(Stat::IntrospectionAnswersTooLarge), 1);
    for _ in 0..5 {
        let again = host.request(0, LARGE_PAT);
        assert_eq!(host.outcome(again), Some(Outcome::Allowed), "from the worker's memory");
    }
    assert_eq!(host.count(Stat::Introspections), 1, "one call, not one a request");
    // Remembered no longer than a shared answer: cache_max_ttl_seconds.
    host.now_ms += 31_000;
    let later = host.request(0, LARGE_PAT);
    assert_eq!(host.outcome(later), None, "asked again after the TTL");
    host.answer_all();
    assert_eq!(host.count(Stat::Introspections), 2);
}

#[test]
fn a_token_seen_active_renews_from_the_reserve_while_a_flood_spends_the_rest() {
    let budget = || config_with(|d| d["introspection"]["max_calls_per_second"] = json!(4));
    let mut host = Host::with_configs(vec![budget()]).with_keys();
    let first = host.request(0, READ_PAT);
    host.answer_all();
    assert_eq!(host.outcome(first), Some(Outcome::Allowed));
    // Its answer expires; in the new second a flood takes the unknown share.
    host.advance(31_000);
    let flood: Vec<_> = (0..20)
        .map(|i| host.request(0, &format!("enrt_{:064x}", 0xBAD_0000_u64 + i as u64)))
        .collect();
    host.answer_all();
    let over = flood
        .iter()
        .filter(|s| host.outcome(**s) == Some(Outcome::Replied(503)))
        .count();
    assert_eq!(over, 18, "two of four calls for tokens never seen active");
    // The real token is renewed from the reserve, in the same second.
    let renewed = host.request(0, READ_PAT);
    assert_eq!(host.calls_to("/id/connect/introspect"), 1, "asked again");
    host.answer_all();
    assert_eq!(host.outcome(renewed), Some(Outcome::Allowed));
}

#[test]
fn a_flood_of_unknown_tokens_is_held_to_the_budget() {
    let budget = || config_with(|d| d["introspection"]["max_calls_per_second"] = json!(5));
    let mut host = Host::with_configs(vec![budget(), budget()]).with_keys();
    let cached = host.request(0, READ_PAT);
    host.answer_all();
    assert_eq!(host.outcome(cached), Some(Outcome::Allowed));
    let spent_before = host.count(Stat::Introspections);
    let flood: Vec<_> = (0..60)
        .map(|i| host.request(i % 2, &format!("enrt_{:064x}", 0xF00D_0000_u64 + i as u64)))
        .collect();
    assert_eq!(
        host.count(Stat::Introspections) - spent_before,
        2,
        "the share of tokens never seen active (3 of 5), minus the call already made"
    );
    let refused = flood
        .iter()
        .filter(|s| host.outcome(**s) == Some(Outcome::Replied(503)))
        .count();
    assert_eq!(refused, 58, "the rest: 503 without a call");
    assert_eq!(host.count(Stat::IntrospectionsOverBudget), 58);
    let cached_again = host.request(1, READ_PAT);
    assert_eq!(
        host.outcome(cached_again),
        Some(Outcome::Allowed),
        "a cached token passes"
    );
    host.answer_all();
    host.advance(1000);
    let next_second = host.request_with(0, "POST", UPDATE_PAT);
    assert_eq!(host.calls.len(), 1, "a new second, a new budget");
    host.answer_all();
    assert_eq!(host.outcome(next_second), Some(Outcome::Allowed));
}
