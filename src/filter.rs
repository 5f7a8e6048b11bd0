//! The only module that talks to Envoy: it gathers the request head and the
//! clock, asks the pure [`Engine`] for a decision, and turns the decision into
//! host calls. Every host call's result is checked; a failure denies.
//!
//! Reference tokens: each worker keeps the requests waiting for a token's
//! introspection in a [`Coordinator`]; one callout answers all of them (they
//! are resumed through `set_effective_context`). Across workers, a claim in
//! shared data lets one worker call while the others poll the shared cache
//! on a short tick.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::cache::{Claim, Flight, ReferenceCache, SharedStore, TokenHash};
use crate::config::Config;
use crate::decision::{Decision, Engine, PendingJwt, PendingReference, RequestHead};
use crate::introspection::{self, Answer, UNAVAILABLE};
use crate::jwks::KeySet;
use crate::key_refresh::{KeySync, Reason};
use crate::principal::PrincipalKind;
use crate::rejection::Rejection;
use crate::verified::Remembered;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> { Box::new(Root { context_id, shared: None }) });
}}

/// Verification needs no randomness; anything asking for it gets an error
/// instead of a `wasm-bindgen` import Envoy cannot provide.
fn no_randomness(_: &mut [u8]) -> Result<(), getrandom::Error> {
    Err(getrandom::Error::UNSUPPORTED)
}
getrandom::register_custom_getrandom!(no_randomness);

/// How often a worker waiting on another worker's callout looks for the answer.
const REMOTE_POLL: Duration = Duration::from_millis(20);
/// How long a failed callout is shared with the requests already waiting.
const FAILURE_SHARED_MS: u64 = 250;
/// How often a worker checks for new signing keys and whether a fetch is due.
const KEY_CHECK: Duration = Duration::from_millis(250);
/// Right away (the next tick of the event loop).
const NOW_TICK: Duration = Duration::from_millis(1);

/// Method and path (without the query) of a request, for log lines;
/// formatted only when a line is written.
struct What<'a>(&'a str, &'a str);

impl std::fmt::Display for What<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1.split('?').next().unwrap_or_default())
    }
}

/// The shared-data key prefix for one identity-service endpoint, so two
/// configurations in one VM never read each other's entries.
fn namespace(cluster: &str, authority: &str, path: &str) -> String {
    let id = crate::cache::fingerprint(&crate::cache::hash_token(&format!("{cluster}|{authority}|{path}")));
    format!("erp_edge_validator.{id}")
}

/// Envoy's shared data, visible to every worker.
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}

/// The host clock: (seconds, milliseconds) since the epoch.
fn now() -> Option<(u64, u64)> {
    let elapsed = hostcalls::get_current_time().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some((
        elapsed.as_secs(),
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
    ))
}

/// The answer of a callout: its `:status`, and its body unless it is larger
/// than `max_bytes` (then `None`, without reading it).
fn callout_answer(body_size: usize, max_bytes: usize) -> (Option<String>, Option<Vec<u8>>) {
    let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .map(|s| String::from_utf8_lossy(&s).into_owned());
    let body = (body_size <= max_bytes).then(|| {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
    });
    (status, body)
}

/// Counters, visible in Envoy's stats as `wasmcustom.erp_edge_validator.*`.
struct Metrics {
    allowed: u32,
    denied_400: u32,
    denied_401: u32,
    denied_403: u32,
    unavailable_503: u32,
    introspections: u32,
    cache_hits: u32,
    jwks_fetches: u32,
    jwks_fetch_failures: u32,
}

impl Metrics {
    fn define() -> Option<Self> {
        let counter =
            |name: &str| hostcalls::define_metric(MetricType::Counter, &format!("erp_edge_validator.{name}")).ok();
        Some(Self {
            allowed: counter("allowed")?,
            denied_400: counter("denied_400")?,
            denied_401: counter("denied_401")?,
            denied_403: counter("denied_403")?,
            unavailable_503: counter("unavailable_503")?,
            introspections: counter("introspections")?,
            cache_hits: counter("reference_cache_hits")?,
            jwks_fetches: counter("jwks_fetches")?,
            jwks_fetch_failures: counter("jwks_fetch_failures")?,
        })
    }

    fn decided(&self, status: Option<u32>) {
        let id = match status {
            None => self.allowed,
            Some(400) => self.denied_400,
            Some(401) => self.denied_401,
            Some(403) => self.denied_403,
            Some(_) => self.unavailable_503,
        };
        // A stats failure must not change a decision.
        let _ = hostcalls::increment_metric(id, 1);
    }

    fn bump(id: u32) {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// Everything a worker's contexts share.
struct Shared {
    engine: Engine,
    metrics: Option<Metrics>,
    cache: Option<ReferenceCache>,
    coordinator: RefCell<Coordinator>,
    /// The signing keys requests are checked against: inline ones plus the
    /// last published remote set, re-parsed only when its version changes.
    keys: RefCell<KeySet>,
    key_version: Cell<u64>,
    key_sync: Option<KeySync>,
    /// What this worker remembers: verified JWTs (cleared whenever the keys
    /// change) and reference-token answers read from the shared cache.
    memory: RefCell<Remembered>,
    /// The tick period last asked of Envoy (asking again restarts the timer).
    tick: Cell<Duration>,
}

/// A request whose JWT names a `kid` the worker does not know yet.
struct KeyWaiter {
    context_id: u32,
    pending: PendingJwt,
    deadline_ms: u64,
}

/// A paused request and what it waits for.
struct Waiter {
    context_id: u32,
    pending: PendingReference,
}

/// A callout in flight. The token is kept (in this worker's memory only)
/// until the answer arrives, in case the call must be made again.
struct Callout {
    hash: TokenHash,
    /// The context the SDK delivers the answer to.
    owner: u32,
    token: String,
}

/// This worker's introspections in progress.
#[derive(Default)]
struct Coordinator {
    /// Paused requests by token hash.
    waiters: HashMap<TokenHash, Vec<Waiter>>,
    /// Callouts this worker made, by callout token.
    callouts: HashMap<u32, Callout>,
    /// Tokens whose callout died with the request that made it while other
    /// requests still wait: the root context calls again on its next tick.
    orphans: Vec<(TokenHash, String)>,
    /// Tokens another worker is introspecting: the claim's deadline (ms),
    /// and the token, kept only to take over if that worker never answers.
    remote: HashMap<TokenHash, (u64, String)>,
    /// Requests waiting for fresh signing keys.
    key_waiters: Vec<KeyWaiter>,
    /// An unknown `kid` asked for an early key fetch.
    force_key_fetch: bool,
    /// The JWKS fetch this worker has in flight.
    jwks_callout: Option<u32>,
}

impl Shared {
    fn realm(&self) -> &str {
        &self.engine.config().realm
    }

    fn count(&self, status: Option<u32>) {
        if let Some(m) = &self.metrics {
            m.decided(status);
        }
    }

    /// Applies a decision to the current effective context. True when the
    /// request may go on (the caller continues or resumes it).
    fn apply(&self, decision: Decision, what: &dyn std::fmt::Display) -> bool {
        match decision {
            Decision::Allow(allowed) => {
                // Client copies were removed when the request arrived, so
                // adding is setting (without Envoy's lookup-and-replace).
                for (name, value) in allowed.set_headers() {
                    if let Err(status) = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value) {
                        log::error!("erp-edge-validator: cannot set header {name}: {status:?}");
                        return self.reply(&Rejection::Unavailable("the request could not be rewritten"));
                    }
                }
                if let Some(name) = &allowed.remove_header {
                    if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None) {
                        log::error!("erp-edge-validator: cannot remove header {name}: {status:?}");
                        return self.reply(&Rejection::Unavailable("the request could not be rewritten"));
                    }
                }
                log::debug!(
                    "erp-edge-validator: allowed {what} client_id={:?}",
                    allowed.principal().and_then(|p| p.client_id.as_deref())
                );
                self.count(None);
                true
            }
            Decision::Deny(rejection) => {
                // Per-request lines are debug: at info a flood of bad tokens
                // would turn into a flood of log writes. Stats count them.
                log::debug!("erp-edge-validator: denied {what}: {rejection}");
                self.reply(&rejection)
            }
            Decision::Introspect { .. } | Decision::AwaitKeys(_) => {
                log::error!("erp-edge-validator: {what} left undecided");
                self.reply(&Rejection::Unavailable("the request could not be decided"))
            }
        }
    }

    /// Sends the rejection's reply on the current effective context.
    /// Always false: the request does not go on.
    fn reply(&self, rejection: &Rejection) -> bool {
        self.count(Some(rejection.status()));
        let response = rejection.to_response(self.realm());
        let headers: Vec<(&str, &str)> = response.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        if let Err(status) = hostcalls::send_http_response(response.status, headers, Some(response.body.as_bytes())) {
            log::error!(
                "erp-edge-validator: cannot send the {} reply: {status:?}",
                response.status
            );
        }
        false
    }

    /// Starts (or joins) the introspection of a token for a paused request.
    /// Returns the decision when it can be made at once.
    fn introspect(&self, context_id: u32, pending: PendingReference, token: &str) -> Option<Decision> {
        let (cache, config) = match (&self.cache, &self.engine.config().introspection) {
            (Some(cache), Some(config)) => (cache, config),
            _ => return Some(Decision::Deny(UNAVAILABLE)),
        };
        let Some((now, now_ms)) = now() else {
            return Some(Decision::Deny(Rejection::Unavailable("the clock is unavailable")));
        };
        if let Some((answer, until)) = cache.get_until(&HostStore, &pending.hash, now) {
            if let Some(m) = &self.metrics {
                Metrics::bump(m.cache_hits);
            }
            let references = &mut self.memory.borrow_mut().references;
            let decision = self
                .engine
                .finish_reference(&pending, Ok(&answer), references, Some(until));
            return Some(decision);
        }
        let mut coordinator = self.coordinator.borrow_mut();
        let hash = pending.hash;
        if let Some(waiting) = coordinator.waiters.get_mut(&hash) {
            waiting.push(Waiter { context_id, pending });
            return None;
        }
        let deadline_ms = now_ms.saturating_add(config.timeout_ms).saturating_add(200);
        match cache.claim(&HostStore, &hash, now_ms, deadline_ms) {
            Claim::Failed => return Some(Decision::Deny(UNAVAILABLE)),
            Claim::Theirs { deadline_ms } => {
                log::debug!("erp-edge-validator: {} waits for another worker", pending.fingerprint());
                coordinator.remote.insert(hash, (deadline_ms, token.to_owned()));
            }
            Claim::Mine => {
                if let Err(rejection) = self.dispatch(&mut coordinator, &hash, token, context_id, now_ms) {
                    return Some(Decision::Deny(rejection));
                }
            }
        }
        coordinator.waiters.insert(hash, vec![Waiter { context_id, pending }]);
        drop(coordinator);
        self.retick();
        None
    }

    /// The tick period the current work needs.
    fn desired_tick(&self) -> Duration {
        let c = self.coordinator.borrow();
        if !c.orphans.is_empty() || c.force_key_fetch {
            NOW_TICK
        } else if !c.remote.is_empty() || !c.key_waiters.is_empty() {
            REMOTE_POLL
        } else if self.key_sync.is_some() {
            KEY_CHECK
        } else {
            Duration::ZERO
        }
    }

    /// Asks Envoy for the tick period the work needs, if it changed.
    fn retick(&self) {
        let period = self.desired_tick();
        if period != self.tick.get() && hostcalls::set_tick_period(period).is_ok() {
            self.tick.set(period);
        }
    }

    /// A JWT names an unknown `kid`: wait for a key fetch already in flight,
    /// or force one if the cooldown allows; otherwise decide now.
    fn await_keys(&self, context_id: u32, pending: PendingJwt, now: u64) -> Option<Decision> {
        let Some(sync) = &self.key_sync else {
            return Some(self.engine.finish_jwt(&pending, &self.keys.borrow(), now));
        };
        let Some((_, now_ms)) = self::now() else {
            return Some(Decision::Deny(Rejection::Unavailable("the clock is unavailable")));
        };
        let in_flight = sync.in_flight(&HostStore, now_ms);
        let mut coordinator = self.coordinator.borrow_mut();
        if !in_flight && !coordinator.force_key_fetch {
            if !sync.may_force(&HostStore, now_ms) {
                drop(coordinator);
                return Some(self.engine.finish_jwt(&pending, &self.keys.borrow(), now));
            }
            coordinator.force_key_fetch = true;
        }
        let timeout_ms = self.engine.config().remote_jwks.as_ref().map_or(2000, |r| r.timeout_ms);
        coordinator.key_waiters.push(KeyWaiter {
            context_id,
            pending,
            deadline_ms: now_ms.saturating_add(timeout_ms).saturating_add(500),
        });
        drop(coordinator);
        self.retick();
        None
    }

    /// Tick: pick up a newly published key set, fetch keys when due (or
    /// forced), and decide the requests that waited for keys.
    fn tick_keys(&self) {
        let Some(sync) = &self.key_sync else { return };
        let Some((now, now_ms)) = now() else { return };
        if let Some((version, body)) = sync.newer_than(&HostStore, self.key_version.get()) {
            match KeySet::from_json(&body, &self.engine.config().algorithms) {
                Ok(remote) => {
                    log::info!("erp-edge-validator: signing keys v{version}: {:?}", remote.kids());
                    *self.keys.borrow_mut() = self.engine.config().inline_keys.merged(&remote);
                    // A retired key must stop working for cached tokens too.
                    self.memory.borrow_mut().jwts.clear();
                }
                Err(e) => log::error!("erp-edge-validator: published key set v{version} unreadable: {e}"),
            }
            self.key_version.set(version);
        }
        let forced = std::mem::take(&mut self.coordinator.borrow_mut().force_key_fetch);
        if self.coordinator.borrow().jwks_callout.is_none()
            && ((forced && sync.try_claim(&HostStore, Reason::UnknownKid, now_ms))
                || sync.try_claim(&HostStore, Reason::Periodic, now_ms))
        {
            self.fetch_keys(sync, now_ms);
        }
        let in_flight = sync.in_flight(&HostStore, now_ms);
        let ready: Vec<KeyWaiter> = {
            let mut c = self.coordinator.borrow_mut();
            let waiters = std::mem::take(&mut c.key_waiters);
            let (ready, waiting) = waiters.into_iter().partition(|w| !in_flight || w.deadline_ms <= now_ms);
            c.key_waiters = waiting;
            ready
        };
        for waiter in ready {
            if hostcalls::set_effective_context(waiter.context_id).is_err() {
                continue;
            }
            let decision = self.engine.finish_jwt(&waiter.pending, &self.keys.borrow(), now);
            if self.apply(decision, &"a request that waited for signing keys") {
                let _ = hostcalls::resume_http_request();
            }
        }
    }

    /// Sends the JWKS fetch (from the root context's tick, so the answer
    /// comes back to the root context, which lives as long as the VM).
    fn fetch_keys(&self, sync: &KeySync, now_ms: u64) {
        let Some(config) = &self.engine.config().remote_jwks else {
            return;
        };
        let callout = config.callout();
        let headers: Vec<(&str, &str)> = callout.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        match hostcalls::dispatch_http_call(
            &config.cluster,
            headers,
            None,
            Vec::new(),
            Duration::from_millis(config.timeout_ms),
        ) {
            Ok(id) => {
                log::debug!("erp-edge-validator: fetching signing keys");
                self.coordinator.borrow_mut().jwks_callout = Some(id);
            }
            Err(status) => {
                log::warn!(
                    "erp-edge-validator: cannot fetch signing keys from cluster `{}`: {status:?}",
                    config.cluster
                );
                sync.finish(&HostStore, now_ms, None);
            }
        }
    }

    /// The JWKS fetch answered: publish a good set, keep the old one otherwise.
    fn on_keys_fetched(&self, body_size: usize) {
        let (Some(sync), Some(config)) = (&self.key_sync, &self.engine.config().remote_jwks) else {
            return;
        };
        let (_, now_ms) = now().unwrap_or((0, 0));
        let (status, body) = callout_answer(body_size, config.max_bytes);
        let result = match body {
            None => Err(format!("{body_size} bytes is over the {}-byte limit", config.max_bytes)),
            Some(body) => config
                .read(status.as_deref(), &body, &self.engine.config().algorithms)
                .map(|keys| (keys, body)),
        };
        match result {
            Ok((keys, body)) => {
                if !keys.skipped().is_empty() {
                    log::warn!("erp-edge-validator: skipped signing keys: {}", keys.skipped_summary());
                }
                if let Some(m) = &self.metrics {
                    Metrics::bump(m.jwks_fetches);
                }
                sync.finish(&HostStore, now_ms, Some(&body));
            }
            Err(e) => {
                log::warn!("erp-edge-validator: signing key fetch failed, keeping the last good set: {e}");
                if let Some(m) = &self.metrics {
                    Metrics::bump(m.jwks_fetch_failures);
                }
                sync.finish(&HostStore, now_ms, None);
            }
        }
        // Pick the new set up and decide the waiters on the next tick, now.
        if hostcalls::set_tick_period(NOW_TICK).is_ok() {
            self.tick.set(NOW_TICK);
        }
    }

    /// Sends the introspection callout for a token this worker has claimed.
    fn dispatch(
        &self,
        coordinator: &mut Coordinator,
        hash: &TokenHash,
        token: &str,
        owner: u32,
        now_ms: u64,
    ) -> Result<(), Rejection> {
        let (Some(cache), Some(config)) = (&self.cache, &self.engine.config().introspection) else {
            return Err(UNAVAILABLE);
        };
        let callout = config.callout(token);
        let headers: Vec<(&str, &str)> = callout.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let timeout = Duration::from_millis(config.timeout_ms);
        match hostcalls::dispatch_http_call(&config.cluster, headers, Some(&callout.body), Vec::new(), timeout) {
            Ok(id) => {
                if let Some(m) = &self.metrics {
                    Metrics::bump(m.introspections);
                }
                log::debug!("erp-edge-validator: introspecting {}", crate::cache::fingerprint(hash));
                coordinator.callouts.insert(
                    id,
                    Callout {
                        hash: *hash,
                        owner,
                        token: token.to_owned(),
                    },
                );
                Ok(())
            }
            Err(status) => {
                log::error!(
                    "erp-edge-validator: cannot call cluster `{}`: {status:?}",
                    config.cluster
                );
                cache.finish(&HostStore, hash, Some(now_ms + FAILURE_SHARED_MS));
                Err(UNAVAILABLE)
            }
        }
    }

    /// A callout answered (or failed): cache the answer, share it, and
    /// decide every request waiting for it.
    fn on_callout(&self, callout_id: u32, body_size: usize) {
        let is_jwks = {
            let mut c = self.coordinator.borrow_mut();
            let is = c.jwks_callout == Some(callout_id);
            if is {
                c.jwks_callout = None;
            }
            is
        };
        if is_jwks {
            self.on_keys_fetched(body_size);
            return;
        }
        let Some(Callout { hash, .. }) = self.coordinator.borrow_mut().callouts.remove(&callout_id) else {
            return;
        };
        let (Some(cache), Some(config)) = (&self.cache, &self.engine.config().introspection) else {
            return;
        };
        let (now, now_ms) = now().unwrap_or((0, 0));
        let (status, body) = callout_answer(body_size, config.max_response_bytes);
        let answer = match body {
            None => Err(UNAVAILABLE),
            Some(body) => introspection::read_answer(status.as_deref(), &body, now),
        };
        let mut until = None;
        match &answer {
            Ok(a) => {
                let expiry = cache.put(&HostStore, &hash, a, now);
                until = expiry.map(crate::cache::last_usable_second);
                cache.finish(&HostStore, &hash, None);
                log::debug!(
                    "erp-edge-validator: {} is {} (cached until {expiry:?})",
                    crate::cache::fingerprint(&hash),
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
                    crate::cache::fingerprint(&hash),
                    status.as_deref().unwrap_or("none")
                );
                cache.finish(&HostStore, &hash, Some(now_ms + FAILURE_SHARED_MS));
            }
        }
        self.resolve(&hash, answer.as_ref(), until);
    }

    /// Decides and resumes (or answers) every request waiting for a token;
    /// an answer the shared cache keeps until second `until` is remembered.
    fn resolve(&self, hash: &TokenHash, answer: Result<&Answer, &Rejection>, until: Option<u64>) {
        let waiters = {
            let mut coordinator = self.coordinator.borrow_mut();
            coordinator.remote.remove(hash);
            coordinator.waiters.remove(hash).unwrap_or_default()
        };
        for waiter in waiters {
            // The stream may be gone (client hung up): nothing to do then.
            if hostcalls::set_effective_context(waiter.context_id).is_err() {
                continue;
            }
            // The memory is borrowed for the decision only: replying may call
            // back into the filter.
            let decision = {
                let references = &mut self.memory.borrow_mut().references;
                self.engine.finish_reference(&waiter.pending, answer, references, until)
            };
            let what = waiter.pending.fingerprint();
            if self.apply(decision, &what) {
                if let Err(status) = hostcalls::resume_http_request() {
                    log::warn!("erp-edge-validator: cannot resume a request for {what}: {status:?}");
                }
            }
        }
    }

    /// Tick: look for answers other workers fetched; take over a claim that
    /// ended without an answer or outlived its deadline.
    fn poll_remote(&self, root_id: u32) {
        let Some(cache) = &self.cache else { return };
        let orphans = std::mem::take(&mut self.coordinator.borrow_mut().orphans);
        let (_, now_ms) = now().unwrap_or((0, 0));
        for (hash, token) in orphans {
            let result = self.dispatch(&mut self.coordinator.borrow_mut(), &hash, &token, root_id, now_ms);
            if let Err(rejection) = result {
                self.resolve(&hash, Err(&rejection), None);
            }
        }
        let (now, now_ms) = now().unwrap_or((0, 0));
        let remote: Vec<(TokenHash, u64)> = self
            .coordinator
            .borrow()
            .remote
            .iter()
            .map(|(h, (d, _))| (*h, *d))
            .collect();
        for (hash, deadline_ms) in remote {
            if let Some((answer, until)) = cache.get_until(&HostStore, &hash, now) {
                self.resolve(&hash, Ok(&answer), Some(until));
                continue;
            }
            match cache.flight(&HostStore, &hash, now_ms) {
                Flight::Failed => self.resolve(&hash, Err(&UNAVAILABLE), None),
                Flight::InProgress { .. } if now_ms <= deadline_ms => {}
                _ => self.take_over(cache, &hash, root_id, now_ms),
            }
        }
    }

    /// A request's stream ended. If it owned a callout others still wait
    /// for, Envoy has cancelled that callout: have the root context call again.
    fn on_stream_done(&self, context_id: u32) {
        let mut coordinator = self.coordinator.borrow_mut();
        for waiting in coordinator.waiters.values_mut() {
            waiting.retain(|w| w.context_id != context_id);
        }
        coordinator.waiters.retain(|_, waiting| !waiting.is_empty());
        let owned: Vec<u32> = coordinator
            .callouts
            .iter()
            .filter(|(_, c)| c.owner == context_id)
            .map(|(id, _)| *id)
            .collect();
        for id in owned {
            if let Some(callout) = coordinator.callouts.remove(&id) {
                if coordinator.waiters.contains_key(&callout.hash) {
                    log::debug!(
                        "erp-edge-validator: calling again for {}: its first request went away",
                        crate::cache::fingerprint(&callout.hash)
                    );
                    coordinator.orphans.push((callout.hash, callout.token));
                }
            }
        }
        drop(coordinator);
        self.retick();
    }

    /// Makes the callout another worker was meant to make.
    fn take_over(&self, cache: &ReferenceCache, hash: &TokenHash, root_id: u32, now_ms: u64) {
        let timeout_ms = self
            .engine
            .config()
            .introspection
            .as_ref()
            .map_or(1000, |i| i.timeout_ms);
        let deadline_ms = now_ms.saturating_add(timeout_ms).saturating_add(200);
        let result = match cache.claim(&HostStore, hash, now_ms, deadline_ms) {
            Claim::Theirs { deadline_ms } => {
                if let Some(entry) = self.coordinator.borrow_mut().remote.get_mut(hash) {
                    entry.0 = deadline_ms;
                }
                return;
            }
            Claim::Failed => Err(UNAVAILABLE),
            Claim::Mine => {
                let mut coordinator = self.coordinator.borrow_mut();
                match coordinator.remote.remove(hash) {
                    Some((_, token)) => self.dispatch(&mut coordinator, hash, &token, root_id, now_ms),
                    None => Err(UNAVAILABLE),
                }
            }
        };
        if let Err(rejection) = result {
            self.resolve(hash, Err(&rejection), None);
        }
    }
}

struct Root {
    context_id: u32,
    shared: Option<Rc<Shared>>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if let Some(shared) = &self.shared {
            shared.on_callout(token_id, body_size);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        // Format log lines only at the level Envoy writes for this filter.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                log::error!("erp-edge-validator: invalid configuration: field `configuration`: empty");
                return false;
            }
            Err(status) => {
                log::error!("erp-edge-validator: cannot read the configuration: {status:?}");
                return false;
            }
        };
        let config = match Config::from_json(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log::error!("erp-edge-validator: invalid configuration: {e}");
                return false;
            }
        };
        log::info!(
            "erp-edge-validator: configured: {} inline signing key(s) {:?}, remote keys {}, {} issuer(s), reference tokens {}",
            config.inline_keys.len(),
            config.inline_keys.kids(),
            config.remote_jwks.as_ref().map_or("off", |_| "on"),
            config.issuers.len(),
            if config.introspection.is_some() {
                "introspected"
            } else {
                "refused"
            },
        );
        if !config.inline_keys.skipped().is_empty() {
            log::warn!(
                "erp-edge-validator: skipped signing keys: {}",
                config.inline_keys.skipped_summary()
            );
        }
        let cache = config.introspection.as_ref().map(|i| {
            // One namespace per identity service, so two configurations in
            // one VM never answer for each other.
            ReferenceCache::new(
                &namespace(&i.cluster, &i.authority, &i.path),
                i.cache_max_entries,
                i.cache_max_ttl_seconds,
                i.negative_cache_ttl_seconds,
            )
        });
        let key_sync = config
            .remote_jwks
            .as_ref()
            .map(|r| KeySync::new(&namespace(&r.cluster, &r.authority, &r.path), r));
        let keys = config.inline_keys.clone();
        let memory = Remembered::new(
            config.jwt_cache_max_entries,
            config
                .introspection
                .as_ref()
                .map_or(0, |i| i.cache_max_entries as usize),
        );
        let shared = Rc::new(Shared {
            engine: Engine::new(config),
            metrics: Metrics::define(),
            cache,
            coordinator: RefCell::new(Coordinator::default()),
            keys: RefCell::new(keys),
            key_version: Cell::new(0),
            key_sync,
            memory: RefCell::new(memory),
            tick: Cell::new(Duration::ZERO),
        });
        if shared.key_sync.is_some() {
            // The first tick picks up published keys or fetches them.
            let _ = hostcalls::set_tick_period(NOW_TICK);
            shared.tick.set(NOW_TICK);
        }
        self.shared = Some(shared);
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            shared.tick_keys();
            shared.poll_remote(self.context_id);
            shared.retick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            context_id,
            shared: self.shared.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    context_id: u32,
    /// `None` only if Envoy created a stream without a successful configure.
    shared: Option<Rc<Shared>>,
}

impl Context for Http {
    fn on_http_call_response(&mut self, token_id: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if let Some(shared) = &self.shared {
            shared.on_callout(token_id, body_size);
        }
    }

    fn on_done(&mut self) -> bool {
        if let Some(shared) = &self.shared {
            shared.on_stream_done(self.context_id);
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            let response = Rejection::Unavailable("the filter is not configured").to_response("erp-domain-api");
            let headers: Vec<(&str, &str)> = response.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let _ = hostcalls::send_http_response(response.status, headers, Some(response.body.as_bytes()));
            return Action::Pause;
        };
        // Values may be any bytes on the wire; a non-UTF-8 value becomes one
        // that no credential check accepts, instead of a panic.
        let raw = match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            Ok(raw) => raw,
            Err(status) => {
                log::error!("erp-edge-validator: cannot read request headers: {status:?}");
                shared.reply(&Rejection::Unavailable("the request could not be read"));
                return Action::Pause;
            }
        };
        // Borrowed, not copied; a non-UTF-8 value reads as U+FFFD, which no
        // credential check accepts.
        let headers: Vec<(&str, &str)> = raw
            .iter()
            .map(|(name, value)| (name.as_str(), std::str::from_utf8(value).unwrap_or("\u{fffd}")))
            .collect();
        // Client-sent identity headers never reach the upstream.
        for name in shared.engine.config().identity_headers.names() {
            if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None) {
                    log::error!("erp-edge-validator: cannot remove header {name}: {status:?}");
                    shared.reply(&Rejection::Unavailable("the request could not be rewritten"));
                    return Action::Pause;
                }
            }
        }
        let pseudo = |name: &str| headers.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| *v);
        let request = RequestHead {
            method: pseudo(":method"),
            path: pseudo(":path"),
            headers: &headers,
        };
        let what = What(request.method, request.path);
        let Some((now, _)) = now() else {
            shared.reply(&Rejection::Unavailable("the clock is unavailable"));
            return Action::Pause;
        };
        let decision = shared
            .engine
            .decide(&request, &shared.keys.borrow(), &mut shared.memory.borrow_mut(), now);
        if let (Decision::Allow(allowed), Some(m)) = (&decision, &shared.metrics) {
            // A reference token allowed at once: this worker remembered the
            // shared cache's answer.
            if allowed.principal().is_some_and(|p| p.kind != PrincipalKind::Jwt) {
                Metrics::bump(m.cache_hits);
            }
        }
        let decision = match decision {
            Decision::Introspect { pending, token } => shared.introspect(self.context_id, pending, &token),
            Decision::AwaitKeys(pending) => shared.await_keys(self.context_id, pending, now),
            decision => Some(decision),
        };
        let Some(decision) = decision else {
            return Action::Pause;
        };
        if shared.apply(decision, &what) {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}
