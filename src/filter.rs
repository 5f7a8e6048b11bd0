//! The only module that talks to Envoy: it gathers the request head and the
//! clock, asks the pure [`Engine`] for a decision, and turns the decision into
//! host calls. Every host call's result is checked; a failure denies.
//!
//! Reference tokens: each worker keeps the requests waiting for a token's
//! introspection in a [`Coordinator`]; one callout answers all of them (they
//! are resumed through `set_effective_context`). Across workers, a claim in
//! shared data lets one worker call while the others poll the shared cache
//! on a short tick.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::cache::{Claim, Flight, ReferenceCache, SharedStore, TokenHash};
use crate::config::Config;
use crate::decision::{Decision, Engine, PendingReference, RequestHead};
use crate::introspection::{self, Answer, UNAVAILABLE};
use crate::rejection::Rejection;

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

/// Counters, visible in Envoy's stats as `wasmcustom.erp_edge_validator.*`.
struct Metrics {
    allowed: u32,
    denied_400: u32,
    denied_401: u32,
    denied_403: u32,
    unavailable_503: u32,
    introspections: u32,
    cache_hits: u32,
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
    fn apply(&self, decision: Decision, what: &str) -> bool {
        match decision {
            Decision::Allow(allowed) => {
                for (name, value) in &allowed.set_headers {
                    if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)) {
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
                    allowed.principal.as_ref().and_then(|p| p.client_id.as_deref())
                );
                self.count(None);
                true
            }
            Decision::Deny(rejection) => {
                log::info!("erp-edge-validator: denied {what}: {rejection}");
                self.reply(&rejection)
            }
            Decision::Introspect { pending, .. } => {
                log::error!("erp-edge-validator: {} left undecided", pending.fingerprint());
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
        if let Some(answer) = cache.get(&HostStore, &pending.hash, now) {
            if let Some(m) = &self.metrics {
                Metrics::bump(m.cache_hits);
            }
            return Some(self.engine.finish_reference(&pending, Ok(&answer)));
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
                let _ = hostcalls::set_tick_period(REMOTE_POLL);
            }
            Claim::Mine => {
                if let Err(rejection) = self.dispatch(&mut coordinator, &hash, token, context_id, now_ms) {
                    return Some(Decision::Deny(rejection));
                }
            }
        }
        coordinator.waiters.insert(hash, vec![Waiter { context_id, pending }]);
        None
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
        let Some(Callout { hash, .. }) = self.coordinator.borrow_mut().callouts.remove(&callout_id) else {
            return;
        };
        let (Some(cache), Some(config)) = (&self.cache, &self.engine.config().introspection) else {
            return;
        };
        let (now, now_ms) = now().unwrap_or((0, 0));
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .map(|s| String::from_utf8_lossy(&s).into_owned());
        let answer = if body_size > config.max_response_bytes {
            Err(UNAVAILABLE)
        } else {
            let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default();
            introspection::read_answer(status.as_deref(), &body, now)
        };
        match &answer {
            Ok(a) => {
                let expiry = cache.put(&HostStore, &hash, a, now);
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
        self.resolve(&hash, answer.as_ref());
    }

    /// Decides and resumes (or answers) every request waiting for a token.
    fn resolve(&self, hash: &TokenHash, answer: Result<&Answer, &Rejection>) {
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
            let decision = self.engine.finish_reference(&waiter.pending, answer);
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
                self.resolve(&hash, Err(&rejection));
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
            if let Some(answer) = cache.get(&HostStore, &hash, now) {
                self.resolve(&hash, Ok(&answer));
                continue;
            }
            match cache.flight(&HostStore, &hash, now_ms) {
                Flight::Failed => self.resolve(&hash, Err(&UNAVAILABLE)),
                Flight::InProgress { .. } if now_ms <= deadline_ms => {}
                _ => self.take_over(cache, &hash, root_id, now_ms),
            }
        }
        let coordinator = self.coordinator.borrow();
        let period = match (coordinator.remote.is_empty(), coordinator.orphans.is_empty()) {
            (true, true) => Duration::ZERO,
            (_, false) => Duration::from_millis(1),
            (false, true) => REMOTE_POLL,
        };
        let _ = hostcalls::set_tick_period(period);
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
        if !coordinator.orphans.is_empty() {
            let _ = hostcalls::set_tick_period(Duration::from_millis(1));
        }
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
            self.resolve(hash, Err(&rejection));
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
            "erp-edge-validator: configured: {} signing key(s) {:?}, {} issuer(s), reference tokens {}",
            config.inline_keys.len(),
            config.inline_keys.kids(),
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
            let id = crate::cache::fingerprint(&crate::cache::hash_token(&format!(
                "{}|{}|{}",
                i.cluster, i.authority, i.path
            )));
            ReferenceCache::new(
                &format!("erp_edge_validator.{id}"),
                i.cache_max_entries,
                i.cache_max_ttl_seconds,
                i.negative_cache_ttl_seconds,
            )
        });
        self.shared = Some(Rc::new(Shared {
            engine: Engine::new(config),
            metrics: Metrics::define(),
            cache,
            coordinator: RefCell::new(Coordinator::default()),
        }));
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            shared.poll_remote(self.context_id);
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
        let owned: Vec<(String, String)> = raw
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        // Client-sent identity headers never reach the upstream.
        for name in shared.engine.config().identity_headers.names() {
            if owned.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None) {
                    log::error!("erp-edge-validator: cannot remove header {name}: {status:?}");
                    shared.reply(&Rejection::Unavailable("the request could not be rewritten"));
                    return Action::Pause;
                }
            }
        }
        let headers: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let pseudo = |name: &str| headers.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| *v);
        let request = RequestHead {
            method: pseudo(":method"),
            path: pseudo(":path"),
            headers: &headers,
        };
        let what = format!(
            "{} {}",
            request.method,
            request.path.split('?').next().unwrap_or_default()
        );
        let Some((now, _)) = now() else {
            shared.reply(&Rejection::Unavailable("the clock is unavailable"));
            return Action::Pause;
        };
        let decision = match shared.engine.decide(&request, now) {
            Decision::Introspect { pending, token } => match shared.introspect(self.context_id, pending, &token) {
                Some(decision) => decision,
                None => return Action::Pause,
            },
            decision => decision,
        };
        if shared.apply(decision, &what) {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}
