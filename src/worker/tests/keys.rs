//! Signing keys: waiters resumed by a new set, fetch timeouts, the unknown
//! `kid` cooldown, rotation bursts and the races of a fetch completing or
//! claimed while another worker reads.

use super::*;

#[test]
fn key_waiters_resume_when_the_new_set_arrives() {
    let mut host = Host::new(1).with_keys();
    host.rotated = true;
    let streams: Vec<_> = (0..10).map(|_| host.request(0, rotated_token())).collect();
    assert!(streams.iter().all(|s| host.outcome(*s).is_none()));
    assert!(
        streams.iter().all(|s| host.workers[0].is_waiting(*s)),
        "their bodies wait too"
    );
    host.tick(0);
    assert_eq!(host.calls.len(), 1, "one forced fetch for all");
    host.answer_all();
    host.tick(0);
    assert!(streams.iter().all(|s| host.outcome(*s) == Some(Outcome::Allowed)));
    assert!(!streams.iter().any(|s| host.workers[0].is_waiting(*s)));
}

#[test]
fn key_waiters_get_503_when_the_fetch_times_out() {
    let mut host = Host::new(1).with_keys();
    host.rotated = true;
    let s = host.request(0, rotated_token());
    host.tick(0);
    let id = *host.calls.keys().next().unwrap();
    host.advance(1000);
    host.time_out(id);
    host.tick(0);
    assert_eq!(host.outcome(s), Some(Outcome::Replied(503)));
}

#[test]
fn key_waiters_get_503_when_the_fetch_never_answers() {
    let mut host = Host::new(1).with_keys();
    host.rotated = true;
    let s = host.request(0, rotated_token());
    host.tick(0);
    for _ in 0..200 {
        host.advance(20);
        host.tick(0);
    }
    assert_eq!(host.outcome(s), Some(Outcome::Replied(503)));
}

#[test]
fn an_unknown_kid_within_the_cooldown_is_refused_at_once() {
    let mut host = Host::new(1).with_keys();
    let s = host.request(0, &testkit::token_with(|h, _| h["kid"] = json!("nobody")));
    host.settle();
    assert_eq!(host.outcome(s), Some(Outcome::Replied(401)));
    assert_eq!(host.count(Stat::JwksFetches), 2, "the first set and one forced fetch");
    let again = host.request(0, &testkit::token_with(|h, _| h["kid"] = json!("nobody-else")));
    assert_eq!(host.outcome(again), Some(Outcome::Replied(401)), "cooldown: no wait");
    assert!(host.calls.is_empty());
}

/// Right after a rotation, a burst of first requests with the new `kid` on
/// every worker, some arriving while the forced fetch is in flight, some
/// after it published the set but before their worker's tick, some within
/// the cooldown: all end allowed.
#[test]
fn rotation_burst_every_request_is_allowed_whichever_worker_fetched() {
    for round in 0..4 {
        let mut host = Host::new(3).with_keys();
        host.rotated = true;
        let mut streams = Vec::new();
        for i in 0..8 {
            streams.push(host.request(i % 3, rotated_token()));
        }
        // Worker `round % 3` ticks first and makes the forced fetch.
        let fetcher = round % 3;
        host.tick(fetcher);
        for i in 0..6 {
            streams.push(host.request(i % 3, rotated_token()));
        }
        host.answer_all();
        // The set is published; the other workers have not ticked yet.
        for i in 0..9 {
            streams.push(host.request(i % 3, rotated_token()));
        }
        host.advance(2000);
        for i in 0..6 {
            streams.push(host.request(i % 3, rotated_token()));
        }
        host.settle();
        for s in &streams {
            assert_eq!(host.outcome(*s), Some(Outcome::Allowed), "round {round}, stream {s}");
        }
        assert_eq!(host.count(Stat::JwksFetches), 2, "the first set and one forced fetch");
    }
}

/// Worker 0's forced fetch completes (set published, then the fetch
/// recorded done) just after worker 1, on a request with the new `kid`,
/// has read the old set: worker 1 must not conclude that no fetch is
/// coming and refuse within the cooldown.
#[test]
fn a_fetch_completing_as_another_worker_reads_the_keys_is_not_a_401() {
    let mut host = Host::new(2).with_keys();
    host.rotated = true;
    let first = host.request(0, rotated_token());
    host.tick(0);
    let id = *host.calls.keys().next().expect("the forced fetch");
    let writes = host.answer_aside(id);
    assert!(writes.iter().any(|(k, _)| is_key_set(k)), "the fetch published a set");
    let stream = host.request_racing(1, "GET", rotated_token(), writes);
    host.settle();
    assert_eq!(host.outcome(first), Some(Outcome::Allowed));
    assert_eq!(host.outcome(stream), Some(Outcome::Allowed));
    assert_eq!(host.count(Stat::JwksFetches), 2, "the first set and one forced fetch");
}

/// The same race on a tick: worker 1 holds a request that arrived while
/// worker 0's fetch was in flight, and the fetch completes just after
/// worker 1's tick has read the old set.
#[test]
fn a_fetch_completing_as_a_waiting_worker_ticks_is_not_a_401() {
    let mut host = Host::new(2).with_keys();
    host.rotated = true;
    let first = host.request(0, rotated_token());
    host.tick(0);
    let id = *host.calls.keys().next().expect("the forced fetch");
    let waiting = host.request(1, rotated_token());
    assert_eq!(host.outcome(waiting), None, "a fetch is in flight: it waits");
    let writes = host.answer_aside(id);
    host.tick_racing(1, writes);
    host.settle();
    assert_eq!(host.outcome(first), Some(Outcome::Allowed));
    assert_eq!(host.outcome(waiting), Some(Outcome::Allowed));
}

/// Worker 0 claims a forced fetch just after worker 1, on a request with
/// the new `kid`, has read the old set: the cooldown that claim starts
/// must not refuse worker 1's request, which waits for the fetch instead.
#[test]
fn a_fetch_claimed_as_another_worker_reads_the_keys_is_waited_for() {
    let mut host = Host::new(2).with_keys();
    host.rotated = true;
    let first = host.request(0, rotated_token());
    let writes = host.tick_aside(0);
    assert_eq!(host.calls.len(), 1, "worker 0 claimed and sent the forced fetch");
    let stream = host.request_racing(1, "GET", rotated_token(), writes);
    assert_eq!(host.outcome(stream), None, "it waits for worker 0's fetch");
    host.settle();
    assert_eq!(host.outcome(first), Some(Outcome::Allowed));
    assert_eq!(host.outcome(stream), Some(Outcome::Allowed));
    assert_eq!(host.count(Stat::JwksFetches), 2, "the first set and one forced fetch");
}

/// The same on a tick: worker 1 holds a request no finished fetch has
/// answered for, within the cooldown, and worker 0 claims its retry of a
/// failed fetch just after worker 1's tick has read the set.
#[test]
fn a_fetch_claimed_as_a_waiting_worker_ticks_is_waited_for() {
    let mut host = Host::new(2).with_keys();
    host.service = Service::Fails;
    host.request(0, rotated_token());
    host.tick(0);
    let id = *host.calls.keys().next().expect("the forced fetch");
    let waiting = host.request(1, rotated_token());
    // The fetch fails: worker 0 retries after 1 s; the cooldown runs 5 s.
    host.answer(id);
    host.advance(1_000);
    host.service = Service::Truthful;
    host.rotated = true;
    let writes = host.tick_aside(0);
    assert_eq!(host.calls.len(), 1, "worker 0 claimed and sent the retry");
    host.tick_racing(1, writes);
    assert_eq!(host.outcome(waiting), None, "it waits for worker 0's retry");
    host.settle();
    assert_eq!(host.outcome(waiting), Some(Outcome::Allowed));
}

#[test]
fn an_unchanged_key_set_keeps_verified_tokens_and_a_changed_one_forgets_only_its_keys() {
    let mut host =
        Host::with_configs(vec![config_with(|d| d["remote_jwks"]["refresh_seconds"] = json!(1))]).with_keys();
    host.rotated = true;
    host.advance(1000);
    host.tick(0);
    host.answer_all();
    host.tick(0);
    host.request(0, old_token());
    host.request(0, rotated_token());
    assert_eq!(host.workers[0].memory.jwts.len(), 2);
    let version = host.workers[0].key_version;
    host.advance(1000);
    host.tick(0);
    assert_eq!(host.calls.len(), 1, "a periodic fetch");
    host.answer_all();
    host.tick(0);
    assert_eq!(host.workers[0].key_version, version, "same keys, same version");
    assert_eq!(host.workers[0].memory.jwts.len(), 2, "nothing forgotten");
    // The identity service withdraws the old key: only its tokens are forgotten.
    host.retired_old = true;
    host.advance(1000);
    host.tick(0);
    host.answer_all();
    host.tick(0);
    assert_eq!(
        host.workers[0].memory.jwts.len(),
        1,
        "the rotated key's token stays remembered"
    );
    let old = host.request(0, old_token());
    host.settle();
    assert_eq!(
        host.outcome(old),
        Some(Outcome::Replied(401)),
        "the withdrawn key's token is refused"
    );
}

#[test]
fn stale_keys_are_not_trusted_past_max_stale_seconds() {
    let stale_soon = config_with(|d| {
        d["remote_jwks"]["refresh_seconds"] = json!(10);
        d["remote_jwks"]["max_stale_seconds"] = json!(60);
    });
    let mut host = Host::with_configs(vec![stale_soon]).with_keys();
    host.service = Service::Fails;
    for _ in 0..59 {
        host.advance(1000);
        host.tick(0);
        host.answer_all();
    }
    let fresh = host.request(0, old_token());
    assert_eq!(host.outcome(fresh), Some(Outcome::Allowed), "59 s: still trusted");
    host.advance(1000);
    host.tick(0);
    let stale = host.request(0, old_token());
    host.settle();
    assert_eq!(host.outcome(stale), Some(Outcome::Replied(503)));
    host.service = Service::Truthful;
    host.run_for(30_000);
    let back = host.request(0, old_token());
    host.settle();
    assert_eq!(
        host.outcome(back),
        Some(Outcome::Allowed),
        "a good fetch makes them trusted again"
    );
}

/// A set published under the right seal (say, by a writer that holds the
/// secret but not the identity service's keys) whose digest is not its
/// keys' digest: the worker recomputes the digest and does not use it.
#[test]
fn a_published_set_whose_digest_does_not_describe_its_keys_is_not_used() {
    use crate::jwt::key_sync::KeySync;
    use crate::sealed::Sealed;
    let mut host = Host::new(1).with_keys();
    let config = config();
    let remote = config.remote_jwks.as_ref().unwrap();
    let sync = KeySync::new(&remote.endpoint().namespace(""), remote);
    let seal = config.seal_key().unwrap();
    let sealed = Sealed::new(&host.store, &seal);
    // The rotated key's set, under the published set's digest.
    let (version, digest, _) = sync.newer_published(&sealed, 0).unwrap();
    let planted = json!({"keys": [rotated_key().jwk()]}).to_string();
    let mut value = (version + 1).to_be_bytes().to_vec();
    value.extend_from_slice(&digest);
    value.extend_from_slice(planted.as_bytes());
    assert!(sealed.set(&format!("{}.jwks", remote.endpoint().namespace("")), &value, None));
    host.tick(0);
    // The identity service does not know the planted key: after the forced
    // fetch the token is refused, never allowed from the planted set.
    let stream = host.request(0, rotated_token());
    host.settle();
    assert_eq!(host.outcome(stream), Some(Outcome::Replied(401)));
}
