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
mod introspection;
mod keys;

use introspection::{Call, RemoteWait, Waiter};
use keys::KeyWaiter;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::decision::credential;
use crate::decision::verified_cache::Remembered;
use crate::decision::{Allowed, Engine, PendingJwt, PendingReference, RequestHead, Step, Verdict};
use crate::host::{Callout, CalloutResponse, MemoryStore, Now, RsaHost, SharedStore};
use crate::jwt::jwks::KeySet;
use crate::jwt::key_sync::{KeySync, KeyWait, Reason, CLAIM_SLACK_MS};
use crate::jwt::JwtError;
use crate::reference::cache::{last_usable_second, Claim, Flight, ReferenceCache};
use crate::reference::introspection::{Answer, AnswerRules, OVER_BUDGET, UNAVAILABLE};
use crate::rejection::Rejection;
use crate::sealed::{SealKey, Sealed};
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

/// Everything one worker (one VM) keeps between events.
#[derive(Debug)]
pub struct Worker {
    /// Authenticates what this worker reads from and writes to shared data.
    seal: Option<Arc<SealKey>>,
    /// Without a key: the worker's own store, in place of shared data.
    private: Arc<MemoryStore>,
    /// The host's store is the host's own memory, written by nothing but
    /// this filter (the native host): used as it is, neither sealed nor
    /// replaced.
    store_trusted: bool,
    engine: Arc<Engine>,
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
        let seal = config.seal_key().map(Arc::new);
        Self {
            seal,
            private: Arc::new(MemoryStore::default()),
            store_trusted: false,
            engine: Arc::new(match rsa_host {
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

    /// The same worker, for a host whose store is process memory that only
    /// this filter writes (the native dynamic module): the store is used as
    /// it is, without the seal that guards Envoy's shared data against
    /// other plugins, and without falling back to a private store.
    pub fn trusting_the_store(mut self) -> Self {
        self.store_trusted = true;
        self.seal = None;
        self
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
        if self.seal.is_none() && !self.store_trusted && self.key_sync.is_some() {
            log::warn!(
                "erp-edge-validator: no shared_data_secret and no introspection client secret: \
                 nothing is trusted from shared data, and each worker fetches its own signing keys"
            );
        }
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
        host: &dyn SharedStore,
    ) -> Vec<Effect> {
        self.with_store(host, |w, store| w.on_request(stream, head, now, store))
    }

    fn on_request(
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
        host: &dyn SharedStore,
    ) -> Vec<Effect> {
        self.with_store(host, |w, store| w.on_dispatched(purpose, owner, call, now, store))
    }

    fn on_dispatched(
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
        host: &dyn SharedStore,
    ) -> Vec<Effect> {
        self.with_store(host, |w, store| w.on_answered(call, response, now, store))
    }

    fn on_answered(
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
    pub fn tick(&mut self, now: Option<Now>, host: &dyn SharedStore) -> Vec<Effect> {
        self.with_store(host, |w, store| w.on_tick(now, store))
    }

    fn on_tick(&mut self, now: Option<Now>, store: &dyn SharedStore) -> Vec<Effect> {
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
    pub fn stream_done(&mut self, stream: ContextId, host: &dyn SharedStore) -> Vec<Effect> {
        self.with_store(host, |w, store| w.on_stream_done(stream, store))
    }

    fn on_stream_done(&mut self, stream: ContextId, store: &dyn SharedStore) -> Vec<Effect> {
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

    /// Whether the request on `stream` waits for its decision (an
    /// introspection answer or signing keys): until then its body and
    /// trailers must wait too, or Envoy would pass the request on with them.
    pub fn is_waiting(&self, stream: ContextId) -> bool {
        self.waiters.values().flatten().any(|w| w.stream == stream)
            || self.key_waiters.iter().any(|w| w.stream == stream)
    }

    /// Runs an event against the store this worker may trust: the host's
    /// shared data, authenticated with the configuration's key (values
    /// that do not verify read as absent, and are counted), or without a
    /// key the worker's own store.
    fn with_store(
        &mut self,
        host: &dyn SharedStore,
        event: impl FnOnce(&mut Self, &dyn SharedStore) -> Vec<Effect>,
    ) -> Vec<Effect> {
        if self.store_trusted {
            return event(self, host);
        }
        match self.seal.clone() {
            Some(key) => {
                let sealed = Sealed::new(host, &key);
                let mut out = event(self, &sealed);
                out.extend((0..sealed.refused()).map(|_| Effect::Count(Stat::SharedDataRefused)));
                out
            }
            None => {
                let private = Arc::clone(&self.private);
                event(self, &*private)
            }
        }
    }

    /// Requests paused on this worker (for tests and for a log line).
    pub fn paused(&self) -> usize {
        self.waiters.values().map(Vec::len).sum::<usize>() + self.key_waiters.len()
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
            (counts.over_budget, Stat::ModuleVerificationsOverBudget),
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

#[cfg(test)]
mod tests;
