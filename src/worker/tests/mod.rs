//! The coordination, tested as Envoy would drive it: several workers over
//! one shared store, a host that hands out call ids and delivers answers
//! (or cancels the calls of streams that went away), and an identity
//! service that answers truthfully unless told to fail.
//!
//! Every test ends with the rule the filter lives by: each request ends in
//! exactly one allow or one reply (the simulated host panics on a second),
//! and nothing is allowed that the identity service would not allow.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::OnceLock;
use std::time::Duration;

use erp_devstack::tokens::{self, SigningKey};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::host::{Answered, MemoryStore};
use crate::testing::{self as testkit, NOW};

const READ_PAT: &str = concat!(
    "enrt_",
    "1111111111111111111111111111111111111111111111111111111111111111"
);
const UPDATE_PAT: &str = concat!(
    "enrt_",
    "2222222222222222222222222222222222222222222222222222222222222222"
);
const REVOKED_PAT: &str = concat!(
    "enrt_",
    "3333333333333333333333333333333333333333333333333333333333333333"
);
/// Active, with more scopes than a shared-data slot holds.
const LARGE_PAT: &str = concat!(
    "enrt_",
    "5555555555555555555555555555555555555555555555555555555555555555"
);
const OTHER_API_PAT: &str = concat!(
    "enrt_",
    "4444444444444444444444444444444444444444444444444444444444444444"
);
const NEW_KID: &str = "rotated-key";

fn rotated_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate(NEW_KID, 2048).unwrap())
}

/// A valid JWT with `read` signed by the key only the rotated set has.
fn rotated_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| tokens::sign(&tokens::header(NEW_KID), &tokens::claims(NOW, &["read"]), rotated_key()))
}

fn old_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| testkit::token(&["read"]))
}

/// Keys and reference tokens both come from the identity service.
fn config() -> Config {
    config_with(|_| {})
}

fn config_with(patch: impl FnOnce(&mut Value)) -> Config {
    testkit::config_from(|d| {
        d.as_object_mut().unwrap().remove("jwks");
        d["remote_jwks"] = json!({
            "cluster": "identity", "authority": "idp", "refresh_seconds": 600,
            "unknown_kid_cooldown_seconds": 5, "timeout_ms": 1000,
        });
        d["introspection"] = testkit::introspection_json();
        d["introspection"]["timeout_ms"] = json!(500);
        patch(d);
    })
}

/// How the identity service answers the next callouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Truthful,
    Fails,
    Garbage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Allowed,
    Replied(u32),
}

#[derive(Debug)]
struct Stream {
    worker: usize,
    token: String,
    method: &'static str,
    outcome: Option<Outcome>,
    gone: bool,
}

#[derive(Debug)]
struct InFlight {
    worker: usize,
    owner: ContextId,
    callout: Callout,
}

/// Envoy with `workers` VMs, shared data, and the identity service.
struct Host {
    store: MemoryStore,
    workers: Vec<Worker>,
    now_ms: u64,
    clock_works: bool,
    streams: BTreeMap<ContextId, Stream>,
    calls: BTreeMap<CallId, InFlight>,
    next_id: u32,
    ticks: Vec<Duration>,
    counts: HashMap<Stat, u32>,
    /// Histogram and gauge values, in order.
    records: Vec<(Stat, u64)>,
    /// The keys the identity service publishes: the first key, then both,
    /// then the rotated one only.
    rotated: bool,
    retired_old: bool,
    service: Service,
    refuse_dispatch: bool,
}

impl Host {
    fn new(workers: usize) -> Self {
        Self::with_configs((0..workers).map(|_| config()).collect())
    }

    /// One worker per configuration, all in one VM (one shared store).
    fn with_configs(configs: Vec<Config>) -> Self {
        let workers = configs.len();
        let mut host = Self {
            store: MemoryStore::default(),
            workers: Vec::new(),
            now_ms: NOW * 1000,
            clock_works: true,
            streams: BTreeMap::new(),
            calls: BTreeMap::new(),
            next_id: 1,
            ticks: vec![Duration::ZERO; workers],
            counts: HashMap::new(),
            records: Vec::new(),
            rotated: false,
            retired_old: false,
            service: Service::Truthful,
            refuse_dispatch: false,
        };
        for (w, config) in configs.into_iter().enumerate() {
            let mut worker = Worker::new(config, None);
            let effects = worker.start();
            host.workers.push(worker);
            host.run(w, 1000 + w as u32, effects);
        }
        host
    }

    fn now(&self) -> Option<Now> {
        self.clock_works.then(|| Now::from_ms(self.now_ms))
    }

    fn root(w: usize) -> ContextId {
        1000 + w as u32
    }

    /// Carries out effects as the filter does, including the outcome of
    /// each dispatch.
    fn run(&mut self, w: usize, from: ContextId, effects: Vec<Effect>) {
        let mut queue = VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Allow { stream, .. } => self.end(stream, Outcome::Allowed),
                Effect::Reply { stream, rejection } => self.end(stream, Outcome::Replied(rejection.status())),
                Effect::Dispatch { purpose, callout } => {
                    let id = (!self.refuse_dispatch).then(|| {
                        let id = self.next_id;
                        self.next_id += 1;
                        self.calls.insert(
                            id,
                            InFlight {
                                worker: w,
                                owner: from,
                                callout,
                            },
                        );
                        id
                    });
                    let now = self.now();
                    let next = self.workers[w].dispatched(purpose, from, id, now, &self.store);
                    queue.extend(next);
                }
                Effect::Tick(period) => self.ticks[w] = period,
                Effect::Count(stat) => *self.counts.entry(stat).or_default() += 1,
                Effect::Record(stat, value) => self.records.push((stat, value)),
            }
        }
    }

    fn end(&mut self, stream: ContextId, outcome: Outcome) {
        let s = self
            .streams
            .get_mut(&stream)
            .expect("an effect for a stream the host never had");
        assert!(!s.gone, "stream {stream} answered after it went away");
        assert!(
            s.outcome.is_none(),
            "stream {stream} ended twice: {:?} then {outcome:?}",
            s.outcome
        );
        s.outcome = Some(outcome);
    }

    fn request_with(&mut self, w: usize, method: &'static str, token: &str) -> ContextId {
        self.request_racing(w, method, token, Vec::new())
    }

    /// A request on worker `w` during which another worker's `writes`
    /// land, right after this one reads the published key set (see
    /// [`Racing`]).
    fn request_racing(
        &mut self,
        w: usize,
        method: &'static str,
        token: &str,
        writes: Vec<(String, Vec<u8>)>,
    ) -> ContextId {
        let id = self.next_id;
        self.next_id += 1;
        self.streams.insert(
            id,
            Stream {
                worker: w,
                token: token.to_owned(),
                method,
                outcome: None,
                gone: false,
            },
        );
        let auth = format!("Bearer {token}");
        let headers = [("authorization", auth.as_str())];
        let head = RequestHead {
            method,
            path: "/api/domain/odata/Customers",
            headers: &headers,
            has_body: false,
        };
        let now = self.now();
        let racing = Racing::new(&self.store, writes);
        let effects = self.workers[w].request(id, &head, now, &racing);
        assert!(racing.landed(), "the other worker's writes landed mid-request");
        self.run(w, id, effects);
        id
    }

    fn request(&mut self, w: usize, token: &str) -> ContextId {
        self.request_with(w, "GET", token)
    }

    fn tick(&mut self, w: usize) {
        self.tick_racing(w, Vec::new());
    }

    /// A tick of worker `w` during which another worker's `writes` land
    /// (see [`Racing`]).
    fn tick_racing(&mut self, w: usize, writes: Vec<(String, Vec<u8>)>) {
        let now = self.now();
        let racing = Racing::new(&self.store, writes);
        let effects = self.workers[w].tick(now, &racing);
        assert!(racing.landed(), "the other worker's writes landed mid-tick");
        self.run(w, Self::root(w), effects);
    }

    fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    /// The identity service's answer to a callout.
    fn serve(&self, callout: &Callout) -> Answered {
        let path = callout
            .headers
            .iter()
            .find(|(n, _)| *n == ":path")
            .map(|(_, v)| v.as_str());
        let (status, body): (&str, Value) = match self.service {
            Service::Fails => ("500", json!({"error": "boom"})),
            Service::Garbage => ("200", json!("<html>")),
            Service::Truthful if path == Some("/id/connect/introspect") => {
                let form: HashMap<String, String> = form_urlencoded::parse(&callout.body).into_owned().collect();
                let token = form.get("token").map(String::as_str).unwrap_or_default();
                let answer = match token {
                    READ_PAT => {
                        json!({"active": true, "scope": "read", "exp": NOW + 3600, "client_id": "app", "sub": "u1"})
                    }
                    UPDATE_PAT => json!({"active": true, "scope": "update", "exp": NOW + 3600, "client_id": "app"}),
                    OTHER_API_PAT => json!({"active": true, "scope": "read", "aud": "TableAPI", "exp": NOW + 3600}),
                    LARGE_PAT => {
                        let scopes: Vec<String> = std::iter::once("read".to_owned())
                            .chain((0..800).map(|i| format!("s{i:04}")))
                            .collect();
                        json!({"active": true, "scope": scopes.join(" "), "exp": NOW + 3600, "client_id": "app"})
                    }
                    _ => json!({"active": false}),
                };
                ("200", answer)
            }
            Service::Truthful => {
                let jwks = if self.retired_old {
                    tokens::jwks([rotated_key()])
                } else if self.rotated {
                    tokens::jwks([testkit::key(), rotated_key()])
                } else {
                    tokens::jwks([testkit::key()])
                };
                ("200", jwks)
            }
        };
        Answered {
            status: Some(status.to_owned()),
            body: body.to_string().into_bytes(),
        }
    }

    /// Delivers the answer to call `id`, as the host does: to the context
    /// that made it.
    fn answer(&mut self, id: CallId) {
        let Some(call) = self.calls.remove(&id) else { return };
        let response = self.serve(&call.callout);
        let now = self.now();
        let effects = self.workers[call.worker].answered(id, &response, now, &self.store);
        self.run(call.worker, call.owner, effects);
    }

    /// A call the host gave up on (timeout): it answers 504.
    fn time_out(&mut self, id: CallId) {
        let Some(call) = self.calls.remove(&id) else { return };
        let response = Answered {
            status: Some("504".into()),
            body: b"upstream request timeout".to_vec(),
        };
        let now = self.now();
        let effects = self.workers[call.worker].answered(id, &response, now, &self.store);
        self.run(call.worker, call.owner, effects);
    }

    fn answer_all(&mut self) {
        while let Some(id) = self.calls.keys().next().copied() {
            self.answer(id);
        }
    }

    /// The stream goes away (client hung up, or Envoy finished it): the
    /// host cancels the calls it made and tells the worker.
    fn stream_done(&mut self, stream: ContextId) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        if s.gone {
            return;
        }
        s.gone = true;
        let w = s.worker;
        self.calls.retain(|_, c| c.owner != stream);
        let effects = self.workers[w].stream_done(stream, &self.store);
        self.run(w, stream, effects);
    }

    fn calls_to(&self, path: &str) -> usize {
        let to = |c: &InFlight| c.callout.headers.iter().any(|(n, v)| *n == ":path" && v == path);
        self.calls.values().filter(|c| to(c)).count()
    }

    fn outcome(&self, stream: ContextId) -> Option<Outcome> {
        self.streams[&stream].outcome.clone()
    }

    fn count(&self, stat: Stat) -> u32 {
        self.counts.get(&stat).copied().unwrap_or(0)
    }

    /// Publishes the first key set to every worker.
    fn with_keys(mut self) -> Self {
        for w in 0..self.workers.len() {
            self.tick(w);
        }
        self.answer_all();
        for w in 0..self.workers.len() {
            self.tick(w);
        }
        let first = self.request(0, old_token());
        assert_eq!(self.outcome(first), Some(Outcome::Allowed));
        self
    }

    /// Lets time pass in 20 ms steps, ticking every worker, answering
    /// every call as it is made, until nothing is paused.
    fn settle(&mut self) {
        for _ in 0..2000 {
            if self.streams.values().all(|s| s.outcome.is_some() || s.gone) && self.calls.is_empty() {
                return;
            }
            self.answer_all();
            self.advance(20);
            for w in 0..self.workers.len() {
                self.tick(w);
            }
        }
        panic!("requests still paused after 40 s: {:?}", self.paused());
    }

    /// Lets `ms` pass in 20 ms steps, ticking every worker and answering
    /// every call.
    fn run_for(&mut self, ms: u64) {
        for _ in 0..ms / 20 {
            self.answer_all();
            self.advance(20);
            for w in 0..self.workers.len() {
                self.tick(w);
            }
        }
    }

    fn paused(&self) -> Vec<ContextId> {
        self.streams
            .iter()
            .filter(|(_, s)| s.outcome.is_none() && !s.gone)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Shared data as two Envoy worker threads see it: `writes` (another
/// worker's, in its order) land right after this worker's first read of
/// the published key set.
struct Racing<'a> {
    store: &'a MemoryStore,
    writes: RefCell<Vec<(String, Vec<u8>)>>,
}

/// Whether a shared-data key is a published key set (its name as sealed:
/// `….jwks.<key id>`).
fn is_key_set(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(key, _)| key.ends_with(".jwks"))
}

impl<'a> Racing<'a> {
    fn new(store: &'a MemoryStore, writes: Vec<(String, Vec<u8>)>) -> Self {
        Self {
            store,
            writes: RefCell::new(writes),
        }
    }

    /// Whether the other worker's writes have landed.
    fn landed(&self) -> bool {
        self.writes.borrow().is_empty()
    }
}

impl SharedStore for Racing<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let value = self.store.get(key);
        if is_key_set(key) {
            for (k, v) in self.writes.take() {
                self.store.set(&k, &v, None);
            }
        }
        value
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.store.set(key, value, cas)
    }
}

/// Shared data that records what is written to it, in order.
struct Recording {
    store: MemoryStore,
    writes: RefCell<Vec<(String, Vec<u8>)>>,
}

impl SharedStore for Recording {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.writes.borrow_mut().push((key.to_owned(), value.to_vec()));
        self.store.set(key, value, cas)
    }
}

impl Host {
    /// Runs `event` on worker `w` against a copy of shared data and
    /// returns what it wrote there, in order, for a [`Racing`] store to
    /// land at the worst moment. Its effects (a dispatch) go to the host.
    fn aside(
        &mut self,
        w: usize,
        from: ContextId,
        event: impl FnOnce(&mut Worker, &dyn SharedStore) -> Vec<Effect>,
    ) -> Vec<(String, Vec<u8>)> {
        let aside = Recording {
            store: self.store.snapshot(),
            writes: RefCell::new(Vec::new()),
        };
        let effects = event(&mut self.workers[w], &aside);
        self.run(w, from, effects);
        aside.writes.take()
    }

    /// Worker `w`'s tick, its writes held back (see [`Host::aside`]).
    fn tick_aside(&mut self, w: usize) -> Vec<(String, Vec<u8>)> {
        let now = self.now();
        self.aside(w, Self::root(w), |worker, store| worker.tick(now, store))
    }

    /// The answer to call `id`, its writes held back (see [`Host::aside`]).
    fn answer_aside(&mut self, id: CallId) -> Vec<(String, Vec<u8>)> {
        let call = self.calls.remove(&id).expect("a call in flight");
        let response = self.serve(&call.callout);
        let now = self.now();
        self.aside(call.worker, call.owner, |worker, store| {
            worker.answered(id, &response, now, store)
        })
    }
}

mod introspection;
mod keys;

#[test]
fn a_failed_clock_read_is_503_never_time_zero() {
    let mut host = Host::new(1).with_keys();
    host.clock_works = false;
    let jwt = host.request(0, old_token());
    let pat = host.request(0, READ_PAT);
    assert_eq!(host.outcome(jwt), Some(Outcome::Replied(503)));
    assert_eq!(host.outcome(pat), Some(Outcome::Replied(503)));
    assert!(host.calls.is_empty());
}

#[test]
fn a_clock_lost_while_requests_wait_answers_them_503_and_caches_nothing() {
    let mut host = Host::new(1).with_keys();
    let waiting = host.request(0, READ_PAT);
    host.clock_works = false;
    host.answer_all();
    assert_eq!(host.outcome(waiting), Some(Outcome::Replied(503)));
    let entries = host.store.entries();
    assert!(
        entries.iter().all(|(k, _)| !k.contains(".ref.")),
        "no answer cached without a time"
    );
    host.clock_works = true;
    let pat = host.request(0, UPDATE_PAT);
    host.rotated = true;
    let jwt = host.request(0, rotated_token());
    assert_eq!(host.paused(), [pat, jwt]);
    host.clock_works = false;
    host.tick(0);
    assert_eq!(host.outcome(pat), Some(Outcome::Replied(503)));
    assert_eq!(host.outcome(jwt), Some(Outcome::Replied(503)));
    assert_eq!(
        host.workers[0].paused(),
        0,
        "a tick without a clock leaves nobody waiting"
    );
}

#[test]
fn debug_output_shows_no_token_and_no_secret() {
    let mut host = Host::new(1).with_keys();
    host.request(0, READ_PAT);
    host.rotated = true;
    host.request(0, rotated_token());
    let shown = format!("{:?} {:?} {:?}", host.workers[0], host.workers[0].config(), host.calls);
    let secret = erp_devstack::idp::INTROSPECTION_SECRET;
    assert!(!shown.contains(secret), "the client secret is shown");
    assert!(!shown.contains(&READ_PAT[5..]), "a reference token is shown");
    assert!(!shown.contains(rotated_token()), "a JWT is shown");
    assert!(!shown.contains("eyJ"), "something shaped like a JWT is shown");
    assert!(shown.contains("Secret("), "the redaction is visible: {}", &shown[..200]);
}

#[test]
fn two_configurations_in_one_vm_never_share_answers() {
    let table_api = config_with(|d| d["audiences"] = json!(["TableAPI"]));
    let mut host = Host::with_configs(vec![config(), table_api]).with_keys();
    let domain = host.request(0, READ_PAT);
    host.answer_all();
    assert_eq!(host.outcome(domain), Some(Outcome::Allowed));
    let table = host.request(1, READ_PAT);
    assert_eq!(host.calls.len(), 1, "the other API asks for itself");
    host.answer_all();
    assert_eq!(host.outcome(table), Some(Outcome::Allowed));
    assert_eq!(host.count(Stat::Introspections), 2);
    // A longer lifetime elsewhere does not stretch this one's revocation delay.
    let longer = config_with(|d| d["introspection"]["cache_max_ttl_seconds"] = json!(300));
    let mut host = Host::with_configs(vec![config(), longer]).with_keys();
    host.request(1, READ_PAT);
    host.answer_all();
    let mine = host.request(0, READ_PAT);
    assert_eq!(host.calls.len(), 1);
    assert_eq!(host.outcome(mine), None);
    // Answers carry mapped claims: another mapping asks for itself.
    let mapped = config_with(|d| d["claims_to_headers"] = json!([{"claim": "client_id", "header": "x-app"}]));
    let mut host = Host::with_configs(vec![config(), mapped]).with_keys();
    host.request(0, READ_PAT);
    host.answer_all();
    let other = host.request(1, READ_PAT);
    assert_eq!(
        host.calls.len(),
        1,
        "a cached answer without the mapped claims was used"
    );
    assert_eq!(host.outcome(other), None);
}

/// One step of the host's life.
#[derive(Debug, Clone)]
enum Op {
    Request { worker: usize, token: usize, post: bool },
    Answer { pick: usize },
    TimeOut { pick: usize },
    Tick { worker: usize },
    Advance { ms: u64 },
    Done { pick: usize },
    Rotate,
    Service(Service),
    Clock(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..6usize, any::<bool>()).prop_map(|(worker, token, post)| Op::Request { worker, token, post }),
        3 => (0..8usize).prop_map(|pick| Op::Answer { pick }),
        1 => (0..8usize).prop_map(|pick| Op::TimeOut { pick }),
        3 => (0..3usize).prop_map(|worker| Op::Tick { worker }),
        2 => (0..800u64).prop_map(|ms| Op::Advance { ms }),
        2 => (0..16usize).prop_map(|pick| Op::Done { pick }),
        1 => Just(Op::Rotate),
        1 => prop_oneof![Just(Service::Truthful), Just(Service::Fails), Just(Service::Garbage)].prop_map(Op::Service),
        1 => prop_oneof![5 => Just(true), 1 => Just(false)].prop_map(Op::Clock),
    ]
}

fn token_of(i: usize) -> String {
    match i {
        0 => READ_PAT.to_owned(),
        1 => UPDATE_PAT.to_owned(),
        2 => REVOKED_PAT.to_owned(),
        3 => old_token().to_owned(),
        4 => rotated_token().to_owned(),
        _ => testkit::flip_signature_byte(old_token()),
    }
}

/// Whether the truth allows this request: the identity service's real
/// answer, the real keys, the route's scope.
fn truly_allowed(stream: &Stream, rotated_ever: bool) -> bool {
    let token = stream.token.as_str();
    match stream.method {
        "GET" => token == READ_PAT || token == old_token() || (token == rotated_token() && rotated_ever),
        _ => token == UPDATE_PAT,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Any interleaving of requests, answers, timeouts, ticks, hang-ups,
    /// rotations, faults and clock failures: every request ends exactly once
    /// (the host panics on a second ending), nothing is left waiting once
    /// time passes, and nothing is allowed that the truth does not allow.
    #[test]
    fn every_paused_request_ends_exactly_once_and_only_truth_allows(ops in proptest::collection::vec(op(), 1..60)) {
        let mut host = Host::new(3).with_keys();
        let mut rotated_ever = false;
        for op in ops {
            match op {
                Op::Request { worker, token, post } => {
                    let method = if post { "POST" } else { "GET" };
                    host.request_with(worker, method, &token_of(token));
                }
                Op::Answer { pick } => {
                    if let Some(id) = host.calls.keys().nth(pick % host.calls.len().max(1)).copied() {
                        host.answer(id);
                    }
                }
                Op::TimeOut { pick } => {
                    if let Some(id) = host.calls.keys().nth(pick % host.calls.len().max(1)).copied() {
                        host.time_out(id);
                    }
                }
                Op::Tick { worker } => host.tick(worker),
                Op::Advance { ms } => host.advance(ms),
                Op::Done { pick } => {
                    let ids: Vec<ContextId> = host.streams.keys().copied().collect();
                    if let Some(id) = ids.get(pick % ids.len().max(1)) {
                        host.stream_done(*id);
                    }
                }
                Op::Rotate => {
                    host.rotated = true;
                    rotated_ever = true;
                }
                Op::Service(service) => host.service = service,
                Op::Clock(works) => host.clock_works = works,
            }
        }
        host.clock_works = true;
        host.service = Service::Truthful;
        host.settle();
        for (id, stream) in &host.streams {
            prop_assert!(stream.outcome.is_some() || stream.gone, "stream {} never ended", id);
            if stream.outcome == Some(Outcome::Allowed) {
                prop_assert!(truly_allowed(stream, rotated_ever), "stream {} allowed: {:?}", id, stream);
            }
        }
        for worker in &host.workers {
            prop_assert_eq!(worker.paused(), 0);
        }
    }
}
