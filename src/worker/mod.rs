//! One worker's coordination, as a pure state machine: events in, effects
//! out. No host calls: shared data comes through the [`SharedStore`] port,
//! the clock as a value read once per event, and everything the host must
//! do is returned as an [`Effect`] that `filter` carries out.
//!
//! What it coordinates:
//! - Reference tokens: requests waiting for one token's introspection wait
//!   for one callout; across workers a claim in shared data lets one worker
//!   call while the others poll the shared cache on a short tick. A claim
//!   that outlives its deadline is taken over; a callout that dies with the
//!   request that made it is made again from the root context for the
//!   requests still waiting; a failure is shared for 250 ms.
//! - Signing keys: a JWT whose `kid` is unknown looks for a newer published
//!   key set first, then waits for a fetch (forcing one if the cooldown
//!   allows). The root context fetches when due; every worker picks up a
//!   published set on its tick or when a request needs it.
//!
//! The rule every path keeps: a paused request ends in exactly one
//! [`Effect::Allow`] or one [`Effect::Reply`]; an unexpected state replies
//! 503, never allows.

pub mod access_log;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::config::Config;
use crate::decision::credential;
use crate::decision::verified_cache::Remembered;
use crate::decision::{Allowed, Engine, PendingJwt, PendingReference, RequestHead, Step, Verdict};
use crate::host::{Callout, CalloutResponse, Now, RsaHost, SharedStore};
use crate::jwt::jwks::KeySet;
use crate::jwt::key_sync::{KeySync, KeyWait, Reason, CLAIM_SLACK_MS};
use crate::jwt::JwtError;
use crate::reference::cache::{last_usable_second, Claim, Flight, ReferenceCache};
use crate::reference::introspection::{self, Answer, AnswerRules, OVER_BUDGET, UNAVAILABLE};
use crate::rejection::Rejection;
use crate::secret::{fingerprint, Secret, TokenHash};
use crate::stats::Stat;
use access_log::{Ending, Fields};

/// A test build's way to crash the VM on purpose (`x-chaos-trap`), so the
/// tests can show what Envoy's `FAIL_RELOAD` brings back. Never in the
/// shipped filter: only the `chaos-trap` feature compiles it.
#[cfg(feature = "chaos-trap")]
fn chaos_trap(head: &RequestHead<'_>) {
    if head
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("x-chaos-trap"))
    {
        std::process::abort();
    }
}

/// Envoy's id of a context: a request's stream, or the root context.
pub type ContextId = u32;
/// The host's token for a callout in flight.
pub type CallId = u32;

/// How often a worker waiting on another worker's callout looks for the answer.
pub const REMOTE_POLL: Duration = Duration::from_millis(20);
/// How long a failed callout is shared with the requests already waiting.
pub const FAILURE_SHARED_MS: u64 = 250;
/// How often a worker checks for new signing keys and whether a fetch is due.
pub const KEY_CHECK: Duration = Duration::from_millis(250);
/// Right away (the next turn of the event loop).
pub const NOW_TICK: Duration = Duration::from_millis(1);

const NO_CLOCK: Rejection = Rejection::Unavailable("the clock is unavailable");
const KEYS_UNAVAILABLE: Rejection = Rejection::Unavailable("the signing keys could not be fetched; retry later");

/// Something the host must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Let the request go on with these changes: the request being decided
    /// continues, a paused one is resumed.
    Allow { stream: ContextId, allowed: Allowed },
    /// Answer the request with this rejection.
    Reply { stream: ContextId, rejection: Rejection },
    /// Make this callout now, from the context handling the event; report
    /// the outcome with [`Worker::dispatched`].
    Dispatch { purpose: Purpose, callout: Callout },
    /// Ask the host to tick at this period (zero: stop).
    Tick(Duration),
    /// Count this in stats.
    Count(Stat),
    /// Record this value in a histogram, or set a gauge to it.
    Record(Stat, u64),
}

/// What a callout is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// Introspection of the token with this hash.
    Introspect(TokenHash),
    /// The JWKS fetch.
    Keys,
}

/// A request paused for a reference token's answer.
#[derive(Debug)]
struct Waiter {
    stream: ContextId,
    pending: PendingReference,
}

/// A request paused for signing keys.
#[derive(Debug)]
struct KeyWaiter {
    stream: ContextId,
    pending: PendingJwt,
    /// Fetches claimed when it arrived: only a later one can vouch that
    /// its `kid` does not exist.
    seen_fetches: u64,
    deadline_ms: u64,
}

/// A callout in flight and the context the host delivers its answer to.
#[derive(Debug)]
struct Call {
    purpose: Purpose,
    owner: ContextId,
    /// When it was made (ms), when the clock could be read.
    sent_ms: Option<u64>,
}

/// Another worker's introspection this worker waits for: the claim's
/// deadline, and the token, kept only to take over if it never answers.
#[derive(Debug)]
struct RemoteWait {
    deadline_ms: u64,
    token: Secret,
}

/// Everything one worker (one VM) keeps between events.
#[derive(Debug)]
pub struct Worker {
    engine: Rc<Engine>,
    cache: Option<ReferenceCache>,
    key_sync: Option<KeySync>,
    /// The keys requests are checked against: inline ones plus the last
    /// published remote set.
    keys: KeySet,
    key_version: u64,
    memory: Remembered,
    /// Paused requests by token hash.
    waiters: HashMap<TokenHash, Vec<Waiter>>,
    calls: HashMap<CallId, Call>,
    /// A keys fetch was dispatched and has not answered.
    fetching_keys: bool,
    /// Tokens whose callout died with the request that made it while other
    /// requests still wait: the root context calls again on its next tick.
    orphans: Vec<(TokenHash, Secret)>,
    remote: HashMap<TokenHash, RemoteWait>,
    key_waiters: Vec<KeyWaiter>,
    /// An unknown `kid` asked for an early key fetch.
    force_key_fetch: bool,
    /// The tick period last asked of the host.
    tick: Duration,
}

impl Worker {
    /// A worker for a validated configuration; `rsa_host` is the host's RSA
    /// verifier, when it offers one.
    pub fn new(config: Config, rsa_host: Option<Box<dyn RsaHost>>) -> Self {
        if config.report_only || !config.policy.report_only_rules().is_empty() {
            log::warn!(
                "erp-edge-validator: REPORT-ONLY mode is on: requests it would refuse pass (see report_only_passed)"
            );
        }
        let cache = config.introspection.as_ref().map(|i| {
            // Two configurations share cached answers only when everything
            // that decides an answer, what it carries (mapped claims) and
            // its lifetime is the same.
            let decides = format!(
                "{}|{:?}|{:?}|{}|{}|{}|{:?}",
                i.client_id,
                config.audiences,
                config.issuers,
                i.cache_max_ttl_seconds,
                i.negative_cache_ttl_seconds,
                i.cache_max_entries,
                config.claims_to_headers
            );
            ReferenceCache::new(
                &i.endpoint().namespace(&decides),
                i.cache_max_entries,
                i.cache_max_ttl_seconds,
                i.negative_cache_ttl_seconds,
            )
        });
        let key_sync = config
            .remote_jwks
            .as_ref()
            .map(|r| KeySync::new(&r.endpoint().namespace(""), r));
        let memory = Remembered::new(
            config.jwt_cache_max_entries,
            config
                .introspection
                .as_ref()
                .map_or(0, |i| i.cache_max_entries as usize),
        );
        let keys = config.inline_keys.clone();
        Self {
            engine: Rc::new(match rsa_host {
                Some(host) => Engine::new(config).with_rsa_host(host),
                None => Engine::new(config),
            }),
            cache,
            key_sync,
            keys,
            key_version: 0,
            memory,
            waiters: HashMap::new(),
            calls: HashMap::new(),
            fetching_keys: false,
            orphans: Vec::new(),
            remote: HashMap::new(),
            key_waiters: Vec::new(),
            force_key_fetch: false,
            tick: Duration::ZERO,
        }
    }

    pub fn config(&self) -> &Config {
        self.engine.config()
    }

    /// The access-log fields of a request that ended this way, from its
    /// headers (see [`access_log::of_identity`] for the allowed requests
    /// that need none): the identity this worker remembers for its token,
    /// if any, names the client.
    pub fn log_fields(&self, ending: Ending<'_>, headers: &[(&str, &str)], now: Option<Now>) -> Fields<'_> {
        let config = self.engine.config();
        let located = credential::locate(headers.iter().copied(), &config.api_key_headers, config.max_token_bytes);
        let token = located.ok().map(|l| l.token);
        let remembered = token.zip(now).and_then(|(token, now)| {
            let jwt = self.memory.jwts.get(token, now.secs);
            jwt.or_else(|| self.memory.references.get(token, now.secs))
        });
        access_log::of_request(ending, token, remembered.map(|identity| &**identity))
    }

    /// The first effects after configuration: with remote keys, tick at once
    /// to pick up a published set or fetch one.
    pub fn start(&mut self) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.key_sync.is_some() {
            self.tick = NOW_TICK;
            out.push(Effect::Tick(NOW_TICK));
        }
        out
    }

    /// A request's headers arrived on `stream`. No effect for `stream` in the
    /// result means it is paused.
    pub fn request(
        &mut self,
        stream: ContextId,
        head: &RequestHead<'_>,
        now: Option<Now>,
        store: &dyn SharedStore,
    ) -> Vec<Effect> {
        #[cfg(feature = "chaos-trap")]
        chaos_trap(head);
        let mut out = Vec::new();
        let Some(now) = now else {
            out.push(Effect::Reply {
                stream,
                rejection: NO_CLOCK,
            });
            return out;
        };
        match self.engine.decide(head, &self.keys, &mut self.memory, now.secs) {
            Step::Done(verdict) => {
                // Per-request lines are debug: at info a flood of bad tokens
                // would become a flood of log writes. No query, no token.
                if log::log_enabled!(log::Level::Debug) {
                    let path = head.path.split('?').next().unwrap_or_default();
                    match &verdict {
                        Verdict::Allow(a) => log::debug!(
                            "erp-edge-validator: allowed {} {path} client_id={:?}",
                            head.method,
                            a.principal().and_then(|p| p.client_id.as_deref())
                        ),
                        Verdict::Deny(r) => log::debug!("erp-edge-validator: denied {} {path}: {r}", head.method),
                    }
                }
                if let Verdict::Allow(allowed) = &verdict {
                    // A reference token allowed at once: this worker
                    // remembered the shared cache's answer.
                    if allowed.principal().is_some_and(|p| p.kind.is_reference()) {
                        out.push(Effect::Count(Stat::ReferenceCacheHits));
                    }
                }
                out.push(conclude(stream, verdict));
            }
            Step::Introspect(pending) => self.introspect(stream, pending, now, store, &mut out),
            Step::AwaitKeys(pending) => self.await_keys(stream, pending, now, store, &mut out),
        }
        self.wrap_up(&mut out);
        out
    }

    /// The outcome of an [`Effect::Dispatch`] made from context `owner`:
    /// the host's call id, or `None` when the host refused the call.
    pub fn dispatched(
        &mut self,
        purpose: Purpose,
        owner: ContextId,
        call: Option<CallId>,
        now: Option<Now>,
        store: &dyn SharedStore,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        match (call, purpose) {
            (Some(id), Purpose::Keys) => {
                log::debug!("erp-edge-validator: fetching signing keys");
                self.calls.insert(
                    id,
                    Call {
                        purpose: Purpose::Keys,
                        owner,
                        sent_ms: now.map(|n| n.ms),
                    },
                );
            }
            (Some(id), Purpose::Introspect(hash)) => {
                log::debug!("erp-edge-validator: introspecting {}", fingerprint(&hash));
                out.push(Effect::Count(Stat::Introspections));
                self.calls.insert(
                    id,
                    Call {
                        purpose: Purpose::Introspect(hash),
                        owner,
                        sent_ms: now.map(|n| n.ms),
                    },
                );
            }
            (None, Purpose::Keys) => {
                log::warn!("erp-edge-validator: cannot fetch signing keys: the host refused the call");
                self.fetching_keys = false;
                if let (Some(sync), Some(now)) = (&self.key_sync, now) {
                    sync.finish(store, now.ms, None);
                }
            }
            (None, Purpose::Introspect(hash)) => {
                log::error!("erp-edge-validator: cannot call the identity service: the host refused the call");
                out.push(Effect::Count(Stat::IntrospectionErrors));
                if let Some(cache) = &self.cache {
                    cache.finish(store, &hash, now.map(|n| n.ms.saturating_add(FAILURE_SHARED_MS)));
                }
                self.resolve(&hash, Err(&UNAVAILABLE), None, &mut out);
            }
        }
        self.wrap_up(&mut out);
        out
    }

    /// A callout answered (a failed call answers too, with 503/504).
    pub fn answered(
        &mut self,
        call: CallId,
        response: &dyn CalloutResponse,
        now: Option<Now>,
        store: &dyn SharedStore,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        match self.calls.remove(&call) {
            None => {}
            Some(Call {
                purpose: Purpose::Keys, ..
            }) => self.keys_fetched(response, now, store, &mut out),
            Some(Call {
                purpose: Purpose::Introspect(hash),
                sent_ms,
                ..
            }) => {
                if let (Some(sent), Some(now)) = (sent_ms, now) {
                    out.push(Effect::Record(
                        Stat::IntrospectionLatencyMs,
                        now.ms.saturating_sub(sent),
                    ));
                }
                self.introspected(&hash, response, now, store, &mut out);
            }
        }
        self.wrap_up(&mut out);
        out
    }

    /// The root context's timer fired.
    pub fn tick(&mut self, now: Option<Now>, store: &dyn SharedStore) -> Vec<Effect> {
        let mut out = Vec::new();
        match now {
            Some(now) => {
                self.tick_keys(now, store, &mut out);
                self.poll_remote(now, store, &mut out);
            }
            // Deadlines cannot be judged without a clock: nobody is left
            // waiting on a timer that can no longer tell time.
            None => self.reply_all(&NO_CLOCK, &mut out),
        }
        self.wrap_up(&mut out);
        out
    }

    /// A request's stream ended (answered, reset, or the client left). If it
    /// owned a callout others still wait for, the host has cancelled that
    /// callout: the root context calls again on its next tick.
    pub fn stream_done(&mut self, stream: ContextId, store: &dyn SharedStore) -> Vec<Effect> {
        let mut out = Vec::new();
        // Nearly every stream: nobody waits and no call is out, so there
        // is nothing to forget, and no tick or count to change.
        if self.calls.is_empty() && self.waiters.is_empty() && self.key_waiters.is_empty() {
            return out;
        }
        for waiting in self.waiters.values_mut() {
            waiting.retain(|w| w.stream != stream);
        }
        self.waiters.retain(|_, waiting| !waiting.is_empty());
        self.key_waiters.retain(|w| w.stream != stream);
        let owned: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| c.owner == stream)
            .map(|(id, _)| *id)
            .collect();
        for id in owned {
            let Some(call) = self.calls.remove(&id) else { continue };
            match call.purpose {
                Purpose::Keys => {
                    self.fetching_keys = false;
                    self.force_key_fetch = true;
                }
                Purpose::Introspect(hash) => match self.waiters.get(&hash).and_then(|w| w.first()) {
                    Some(waiter) => {
                        log::debug!(
                            "erp-edge-validator: calling again for {}: its first request went away",
                            fingerprint(&hash)
                        );
                        self.orphans.push((hash, waiter.pending.token().clone()));
                    }
                    // Nobody here needs it: let another worker claim at once.
                    None => {
                        if let Some(cache) = &self.cache {
                            cache.finish(store, &hash, None);
                        }
                    }
                },
            }
        }
        self.wrap_up(&mut out);
        out
    }

    /// Requests paused on this worker (for tests and for a log line).
    pub fn paused(&self) -> usize {
        self.waiters.values().map(Vec::len).sum::<usize>() + self.key_waiters.len()
    }

    fn introspect(
        &mut self,
        stream: ContextId,
        pending: PendingReference,
        now: Now,
        store: &dyn SharedStore,
        out: &mut Vec<Effect>,
    ) {
        let (Some(cache), Some(config)) = (&self.cache, &self.engine.config().introspection) else {
            out.push(Effect::Reply {
                stream,
                rejection: UNAVAILABLE,
            });
            return;
        };
        if let Some((answer, until)) = cache.get_until(store, &pending.hash, now.secs) {
            out.push(Effect::Count(Stat::ReferenceCacheHits));
            let verdict = self
                .engine
                .finish_reference(&pending, Ok(&answer), &mut self.memory.references, Some(until));
            out.push(conclude(stream, verdict));
            return;
        }
        let hash = pending.hash;
        if let Some(waiting) = self.waiters.get_mut(&hash) {
            waiting.push(Waiter { stream, pending });
            return;
        }
        let deadline_ms = now.ms.saturating_add(config.timeout_ms).saturating_add(CLAIM_SLACK_MS);
        match cache.claim(store, &hash, now.ms, deadline_ms) {
            Claim::Failed => {
                out.push(Effect::Reply {
                    stream,
                    rejection: UNAVAILABLE,
                });
                return;
            }
            Claim::Theirs { deadline_ms } => {
                log::debug!("erp-edge-validator: {} waits for another worker", pending.fingerprint());
                let token = pending.token().clone();
                self.remote.insert(hash, RemoteWait { deadline_ms, token });
            }
            Claim::Mine => {
                let token = pending.token().clone();
                self.waiters.insert(hash, vec![Waiter { stream, pending }]);
                return self.call_identity(hash, &token, now, store, out);
            }
        }
        self.waiters.insert(hash, vec![Waiter { stream, pending }]);
    }

    /// Makes the introspection call for a claimed token if this second's
    /// budget allows; otherwise releases the claim and answers its waiters
    /// 503 without calling.
    fn call_identity(
        &mut self,
        hash: TokenHash,
        token: &Secret,
        now: Now,
        store: &dyn SharedStore,
        out: &mut Vec<Effect>,
    ) {
        let engine = Rc::clone(&self.engine);
        let (Some(cache), Some(config)) = (&self.cache, &engine.config().introspection) else {
            return self.resolve(&hash, Err(&UNAVAILABLE), None, out);
        };
        if cache.spend(store, now.secs, config.max_calls_per_second) {
            out.push(Effect::Dispatch {
                purpose: Purpose::Introspect(hash),
                callout: config.callout(token),
            });
            return;
        }
        cache.finish(store, &hash, None);
        let refused = self.waiters.get(&hash).map_or(0, Vec::len);
        out.extend((0..refused).map(|_| Effect::Count(Stat::IntrospectionsOverBudget)));
        log::debug!(
            "erp-edge-validator: introspection budget spent; {} not asked",
            fingerprint(&hash)
        );
        self.resolve(&hash, Err(&OVER_BUDGET), None, out);
    }

    fn introspected(
        &mut self,
        hash: &TokenHash,
        response: &dyn CalloutResponse,
        now: Option<Now>,
        store: &dyn SharedStore,
        out: &mut Vec<Effect>,
    ) {
        let (Some(cache), Some(config)) = (&self.cache, &self.engine.config().introspection) else {
            return self.resolve(hash, Err(&UNAVAILABLE), None, out);
        };
        let Some(now) = now else {
            // Without a clock no expiry can be computed: nothing is cached,
            // and the next request calls again.
            cache.finish(store, hash, None);
            return self.resolve(hash, Err(&NO_CLOCK), None, out);
        };
        let status = response.status();
        let answer = match response.body(config.max_response_bytes) {
            None => Err(UNAVAILABLE),
            Some(body) => {
                let rules = AnswerRules {
                    audiences: &self.engine.config().audiences,
                    issuers: &self.engine.config().issuers,
                    claims_to_headers: &self.engine.config().claims_to_headers,
                };
                introspection::read_answer(status.as_deref(), &body, now.secs, rules)
            }
        };
        let mut until = None;
        out.push(Effect::Count(match (&answer, status.as_deref()) {
            (Ok(Answer::Active(_)), _) => Stat::IntrospectionActive,
            (Ok(_), _) => Stat::IntrospectionInactive,
            // Envoy answers a callout that ran out of time with its own 504.
            (Err(_), Some("504")) => Stat::IntrospectionTimeouts,
            (Err(_), _) => Stat::IntrospectionErrors,
        }));
        match &answer {
            Ok(a) => {
                let expiry = cache.put(store, hash, a, now.secs);
                until = expiry.map(last_usable_second);
                cache.finish(store, hash, None);
                log::debug!(
                    "erp-edge-validator: {} is {} (cached until {expiry:?})",
                    fingerprint(hash),
                    if matches!(a, Answer::Active(_)) {
                        "active"
                    } else {
                        "inactive"
                    }
                );
            }
            Err(_) => {
                log::warn!(
                    "erp-edge-validator: introspection of {} failed (status {})",
                    fingerprint(hash),
                    status.as_deref().unwrap_or("none")
                );
                cache.finish(store, hash, Some(now.ms.saturating_add(FAILURE_SHARED_MS)));
            }
        }
        self.resolve(hash, answer.as_ref(), until, out);
    }

    /// Decides every request waiting for a token; an answer the shared
    /// cache keeps until second `until` is remembered.
    fn resolve(
        &mut self,
        hash: &TokenHash,
        answer: Result<&Answer, &Rejection>,
        until: Option<u64>,
        out: &mut Vec<Effect>,
    ) {
        self.remote.remove(hash);
        self.orphans.retain(|(h, _)| h != hash);
        for waiter in self.waiters.remove(hash).unwrap_or_default() {
            let verdict = self
                .engine
                .finish_reference(&waiter.pending, answer, &mut self.memory.references, until);
            if let Verdict::Deny(r) = &verdict {
                log::debug!("erp-edge-validator: denied {}: {r}", waiter.pending.fingerprint());
            }
            out.push(conclude(waiter.stream, verdict));
        }
    }

    /// Looks for answers other workers fetched; takes over a claim that
    /// ended without an answer or outlived its deadline; calls again for
    /// orphaned requests.
    fn poll_remote(&mut self, now: Now, store: &dyn SharedStore, out: &mut Vec<Effect>) {
        let engine = Rc::clone(&self.engine);
        let (Some(cache), Some(config)) = (self.cache.clone(), engine.config().introspection.as_ref()) else {
            return;
        };
        let deadline_ms = now.ms.saturating_add(config.timeout_ms).saturating_add(CLAIM_SLACK_MS);
        for (hash, token) in std::mem::take(&mut self.orphans) {
            if self.waiters.contains_key(&hash) {
                self.call_identity(hash, &token, now, store, out);
            }
        }
        let remote: Vec<(TokenHash, u64)> = self.remote.iter().map(|(h, r)| (*h, r.deadline_ms)).collect();
        for (hash, their_deadline) in remote {
            if let Some((answer, until)) = cache.get_until(store, &hash, now.secs) {
                out.push(Effect::Count(Stat::ReferenceCacheHits));
                self.resolve(&hash, Ok(&answer), Some(until), out);
                continue;
            }
            match cache.flight(store, &hash, now.ms) {
                Flight::Failed => self.resolve(&hash, Err(&UNAVAILABLE), None, out),
                Flight::InProgress { .. } if now.ms <= their_deadline => {}
                // Their claim ended without an answer, or outlived its deadline.
                _ => match cache.claim(store, &hash, now.ms, deadline_ms) {
                    Claim::Theirs { deadline_ms } => {
                        if let Some(wait) = self.remote.get_mut(&hash) {
                            wait.deadline_ms = deadline_ms;
                        }
                    }
                    Claim::Failed => self.resolve(&hash, Err(&UNAVAILABLE), None, out),
                    Claim::Mine => {
                        if let Some(wait) = self.remote.remove(&hash) {
                            log::debug!("erp-edge-validator: taking over the call for {}", fingerprint(&hash));
                            self.call_identity(hash, &wait.token, now, store, out);
                        }
                    }
                },
            }
        }
    }

    /// A JWT names an unknown `kid`: use a newer published set if there is
    /// one; otherwise wait for a fetch in flight, or force one if the
    /// cooldown allows; otherwise decide now.
    fn await_keys(
        &mut self,
        stream: ContextId,
        pending: PendingJwt,
        now: Now,
        store: &dyn SharedStore,
        out: &mut Vec<Effect>,
    ) {
        let Some(sync) = self.key_sync.clone() else {
            let verdict = self.engine.finish_jwt(&pending, &self.keys, &mut self.memory, now.secs);
            out.push(conclude(stream, verdict));
            return;
        };
        // Before the set (see `KeySync::fetches`).
        let fetches = sync.fetches(store);
        if self.refresh_keys(&sync, store, now) {
            let verdict = self.engine.finish_jwt(&pending, &self.keys, &mut self.memory, now.secs);
            if !is_unknown_key(&verdict) {
                out.push(conclude(stream, verdict));
                return;
            }
        }
        let waiting_already = self.force_key_fetch || self.fetching_keys || !self.key_waiters.is_empty();
        // A fetch another worker claimed since the snapshot may bring the
        // key: wait for it (it counts as one the request may trust).
        if !waiting_already && !fetches.in_flight(now.ms) && !sync.claimed_since(store, &fetches) {
            if !sync.may_force(store, now.ms) {
                log::debug!(
                    "erp-edge-validator: unknown kid within the cooldown (keys v{})",
                    self.key_version
                );
                let verdict = self.engine.finish_jwt(&pending, &self.keys, &mut self.memory, now.secs);
                out.push(unknown_key_verdict(stream, verdict, &sync, store, now));
                return;
            }
            self.force_key_fetch = true;
        }
        let timeout_ms = self.engine.config().remote_jwks.as_ref().map_or(0, |r| r.timeout_ms);
        self.key_waiters.push(KeyWaiter {
            stream,
            pending,
            seen_fetches: fetches.claimed,
            // Room for a fetch claimed on the next tick to time out and be
            // reported.
            deadline_ms: now
                .ms
                .saturating_add(timeout_ms)
                .saturating_add(CLAIM_SLACK_MS)
                .saturating_add(KEY_CHECK.as_millis() as u64),
        });
    }

    /// Picks up a newly published key set. True when the keys changed.
    fn refresh_keys(&mut self, sync: &KeySync, store: &dyn SharedStore, now: Now) -> bool {
        if sync.is_stale(store, now.ms) {
            if self.key_version != 0 {
                log::error!("erp-edge-validator: no good key fetch for `remote_jwks.max_stale_seconds`: fetched keys are no longer trusted");
                self.use_keys(self.engine.config().inline_keys.clone());
                // Any set published once fetches succeed again is taken.
                self.key_version = 0;
            }
            return false;
        }
        let Some((version, body)) = sync.newer_than(store, self.key_version) else {
            return false;
        };
        self.key_version = version;
        match KeySet::from_json(&body, &self.engine.config().algorithms) {
            Ok(remote) => {
                log::info!("erp-edge-validator: signing keys v{version}: {:?}", remote.kids());
                self.use_keys(self.engine.config().inline_keys.merged(&remote));
                true
            }
            Err(e) => {
                log::error!("erp-edge-validator: published key set v{version} unreadable: {e}");
                false
            }
        }
    }

    /// Checks requests against `keys` from now on. Tokens verified by a key
    /// that changed or disappeared are forgotten, so a retired key stops
    /// working for remembered tokens too; the others stay remembered.
    fn use_keys(&mut self, keys: KeySet) {
        self.memory.jwts.retain_keys(|material| keys.has_material(material));
        self.keys = keys;
    }

    /// Picks up a published set, fetches when due (or forced), and decides
    /// the requests that waited for keys.
    fn tick_keys(&mut self, now: Now, store: &dyn SharedStore, out: &mut Vec<Effect>) {
        let Some(sync) = self.key_sync.clone() else { return };
        // Before the set (see `KeySync::fetches`): what it says has
        // completed is in the keys the waiters are decided with.
        let fetches = sync.fetches(store);
        self.refresh_keys(&sync, store, now);
        if let Some(good_ms) = sync.last_good_ms(store) {
            out.push(Effect::Record(
                Stat::KeySetAgeSeconds,
                now.ms.saturating_sub(good_ms) / 1000,
            ));
        }
        let forced = std::mem::take(&mut self.force_key_fetch);
        if !self.fetching_keys
            && ((forced && sync.try_claim(store, Reason::UnknownKid, now.ms))
                || sync.try_claim(store, Reason::Periodic, now.ms))
        {
            if let Some(remote) = &self.engine.config().remote_jwks {
                self.fetching_keys = true;
                out.push(Effect::Dispatch {
                    purpose: Purpose::Keys,
                    callout: remote.callout(),
                });
            }
        }
        let mut still_waiting = Vec::new();
        for waiter in std::mem::take(&mut self.key_waiters) {
            let verdict = self
                .engine
                .finish_jwt(&waiter.pending, &self.keys, &mut self.memory, now.secs);
            if !is_unknown_key(&verdict) {
                out.push(conclude(waiter.stream, verdict));
                continue;
            }
            let unavailable = Effect::Reply {
                stream: waiter.stream,
                rejection: KEYS_UNAVAILABLE,
            };
            let state = fetches.wait_state(waiter.seen_fetches, now.ms);
            log::debug!(
                "erp-edge-validator: a request waiting for keys (v{}): {state:?}, seen {} fetches",
                self.key_version,
                waiter.seen_fetches
            );
            match state {
                KeyWait::Fetched { ok: true } => out.push(conclude(waiter.stream, verdict)),
                // The identity service could not say whether the key exists.
                KeyWait::Fetched { ok: false } => out.push(unavailable),
                _ if now.ms >= waiter.deadline_ms => out.push(unavailable),
                KeyWait::InFlight => still_waiting.push(waiter),
                KeyWait::Idle if forced || self.fetching_keys => still_waiting.push(waiter),
                // Claimed since the snapshot: the next tick decides.
                KeyWait::Idle if sync.claimed_since(store, &fetches) => still_waiting.push(waiter),
                KeyWait::Idle if sync.may_force(store, now.ms) => {
                    self.force_key_fetch = true;
                    still_waiting.push(waiter);
                }
                KeyWait::Idle => out.push(unknown_key_verdict(waiter.stream, verdict, &sync, store, now)),
            }
        }
        self.key_waiters = still_waiting;
    }

    /// The JWKS fetch answered: publish a good set, keep the old one otherwise.
    fn keys_fetched(
        &mut self,
        response: &dyn CalloutResponse,
        now: Option<Now>,
        store: &dyn SharedStore,
        out: &mut Vec<Effect>,
    ) {
        self.fetching_keys = false;
        let (Some(sync), Some(config)) = (&self.key_sync, &self.engine.config().remote_jwks) else {
            return;
        };
        let Some(now) = now else {
            // The claim runs out by itself; the next tick with a clock retries.
            return;
        };
        let status = response.status();
        let body = response.body(config.max_bytes);
        match config.read(status.as_deref(), body.as_deref(), &self.engine.config().algorithms) {
            Ok(keys) => {
                if !keys.skipped().is_empty() {
                    log::warn!("erp-edge-validator: skipped signing keys: {}", keys.skipped_summary());
                }
                out.push(Effect::Count(Stat::JwksFetches));
                sync.finish(store, now.ms, body.as_deref().map(|b| (b, keys.digest())));
            }
            Err(e) => {
                log::warn!("erp-edge-validator: signing key fetch failed, keeping the last good set: {e}");
                out.push(Effect::Count(Stat::JwksFetchFailures));
                sync.finish(store, now.ms, None);
            }
        }
        // Pick the new set up and decide the waiters on the next tick, now.
        self.tick = NOW_TICK;
        out.push(Effect::Tick(NOW_TICK));
    }

    /// Replies to every paused request (the clock is gone).
    fn reply_all(&mut self, rejection: &Rejection, out: &mut Vec<Effect>) {
        for waiter in std::mem::take(&mut self.waiters).into_values().flatten() {
            out.push(Effect::Reply {
                stream: waiter.stream,
                rejection: rejection.clone(),
            });
        }
        for waiter in std::mem::take(&mut self.key_waiters) {
            out.push(Effect::Reply {
                stream: waiter.stream,
                rejection: rejection.clone(),
            });
        }
        self.remote.clear();
        self.orphans.clear();
    }

    /// The tick period the current work needs.
    fn desired_tick(&self) -> Duration {
        if !self.orphans.is_empty() || self.force_key_fetch {
            NOW_TICK
        } else if !self.remote.is_empty() || !self.key_waiters.is_empty() {
            REMOTE_POLL
        } else if self.key_sync.is_some() {
            KEY_CHECK
        } else {
            Duration::ZERO
        }
    }

    /// The end of every event: the tick period the work needs, and the
    /// signatures verified meanwhile, by path.
    fn wrap_up(&mut self, out: &mut Vec<Effect>) {
        self.retick(out);
        let counts = self.engine.take_counts();
        for (n, stat) in [
            (counts.by_host, Stat::Rs256HostVerifications),
            (counts.in_module, Stat::Rs256ModuleVerifications),
            (counts.jwt_hits, Stat::JwtCacheHits),
            (counts.jwt_misses, Stat::JwtCacheMisses),
        ] {
            out.extend((0..n).map(|_| Effect::Count(stat)));
        }
    }

    /// Asks the host for the tick period the work needs, if it changed.
    fn retick(&mut self, out: &mut Vec<Effect>) {
        let period = self.desired_tick();
        if period != self.tick {
            self.tick = period;
            out.push(Effect::Tick(period));
        }
    }
}

fn conclude(stream: ContextId, verdict: Verdict) -> Effect {
    match verdict {
        Verdict::Allow(allowed) => Effect::Allow { stream, allowed },
        Verdict::Deny(rejection) => Effect::Reply { stream, rejection },
    }
}

/// The final answer for a `kid` no fetch will bring: 401, unless the keys
/// themselves are stale (then nobody can say, and it is 503).
fn unknown_key_verdict(
    stream: ContextId,
    verdict: Verdict,
    sync: &KeySync,
    store: &dyn SharedStore,
    now: Now,
) -> Effect {
    if is_unknown_key(&verdict) && sync.is_stale(store, now.ms) {
        return Effect::Reply {
            stream,
            rejection: KEYS_UNAVAILABLE,
        };
    }
    conclude(stream, verdict)
}

fn is_unknown_key(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Deny(r) if *r == Rejection::from(JwtError::UnknownKey))
}

#[cfg(test)]
mod tests;
