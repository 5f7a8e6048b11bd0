//! The only module that talks to Envoy. It reads the request head and the
//! clock, hands each host event to the pure [`Worker`], and carries out the
//! effects the worker returns as host calls. It decides nothing: every
//! branch here is about running an effect or reporting a host failure,
//! which denies.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::config::{Config, RsaVerifier, DEFAULT_REALM};
use crate::decision::{Allowed, RequestHead};
use crate::host::{CalloutResponse, Now, RsaHost, SharedStore};
use crate::rejection::Rejection;
use crate::stats::{Kind, Stat};
use crate::worker::{ContextId, Effect, Worker};
use crate::{foreign, rs256};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> { Box::new(Root { context_id, shared: None }) });
}}

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

/// The host clock, or `None` when it cannot be read (the worker then answers 503; no fallback time).
fn now() -> Option<Now> {
    let elapsed = hostcalls::get_current_time().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(Now {
        secs: elapsed.as_secs(),
        ms: u64::try_from(elapsed.as_millis()).ok()?,
    })
}

/// Envoy's RSA verification (BoringSSL), through the `verify_signature` foreign function.
struct HostRsa;

impl RsaHost for HostRsa {
    fn verify_pkcs1_sha256(&self, spki_der: &[u8], message: &[u8], signature: &[u8]) -> Option<bool> {
        let arguments = foreign::rs256_arguments(spki_der, message, signature);
        let answer = hostcalls::call_foreign_function("verify_signature", Some(&arguments)).ok()??;
        foreign::read_result(&answer)
    }
}

/// The answer to the callout being delivered.
struct HostResponse {
    body_size: usize,
}

impl CalloutResponse for HostResponse {
    fn status(&self) -> Option<String> {
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status");
        status.ok().flatten().map(|s| String::from_utf8_lossy(&s).into_owned())
    }

    fn body(&self, max_bytes: usize) -> Option<Vec<u8>> {
        if self.body_size > max_bytes {
            return None;
        }
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, self.body_size);
        Some(body.ok().flatten().unwrap_or_default())
    }
}

/// The counters of [`Stat`], in its order (none if Envoy refused one).
struct Metrics(Vec<u32>);

impl Metrics {
    fn define() -> Self {
        let kind = |s: Stat| [MetricType::Counter, MetricType::Gauge, MetricType::Histogram][s.kind() as usize];
        let define = |s: Stat| hostcalls::define_metric(kind(s), &format!("erp_edge_validator.{}", s.name()));
        Self(
            Stat::ALL
                .into_iter()
                .map(|s| define(s).ok())
                .collect::<Option<_>>()
                .unwrap_or_default(),
        )
    }

    /// Counts one (a counter) or records `value`. A stats failure must not change a decision.
    fn count(&self, stat: Stat, value: u64) {
        if let Some(id) = self.0.get(stat as usize) {
            let _ = match stat.kind() {
                Kind::Counter => hostcalls::increment_metric(*id, 1),
                Kind::Gauge | Kind::Histogram => hostcalls::record_metric(*id, value),
            };
        }
    }
}

/// Everything a worker's contexts share.
struct Shared {
    worker: RefCell<Worker>,
    metrics: Metrics,
    /// `realm` of every challenge, kept here so a reply borrows nothing.
    realm: String,
}

impl Shared {
    /// Carries out `effects` for an event handled in context `from`, and
    /// the effects that follow from them (a dispatch's outcome). Returns
    /// what becomes of `current`, the request whose headers are being
    /// decided: `Continue` when allowed, `Pause` otherwise.
    fn execute(&self, effects: Vec<Effect>, from: ContextId, current: Option<ContextId>) -> Action {
        let mut queue = VecDeque::from(effects);
        let mut effective = from;
        let mut action = Action::Pause;
        while let Some(effect) = queue.pop_front() {
            let stream = match &effect {
                Effect::Allow { stream, .. } | Effect::Reply { stream, .. } => Some(*stream),
                _ => None,
            };
            let target = stream.unwrap_or(from);
            if target != effective {
                // A stream that has gone away has nothing left to answer.
                if hostcalls::set_effective_context(target).is_err() {
                    continue;
                }
                effective = target;
            }
            let is_current = stream.is_some() && stream == current;
            match effect {
                Effect::Allow { allowed, .. } => match rewrite(&allowed) {
                    Ok(()) => {
                        self.metrics.count(allowed.stat(), 1);
                        if is_current {
                            action = Action::Continue;
                        } else if let Err(status) = hostcalls::resume_http_request() {
                            log::warn!("erp-edge-validator: cannot resume a request: {status:?}");
                        }
                    }
                    Err(rejection) => self.reply(&rejection),
                },
                Effect::Reply { rejection, .. } => self.reply(&rejection),
                Effect::Dispatch { purpose, callout } => {
                    let headers: Vec<(&str, &str)> = callout.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                    let body = (!callout.body.is_empty()).then_some(callout.body.as_slice());
                    let timeout = Duration::from_millis(callout.timeout_ms);
                    let call = hostcalls::dispatch_http_call(&callout.cluster, headers, body, Vec::new(), timeout);
                    if let Err(status) = &call {
                        log::error!("erp-edge-validator: cannot call `{}`: {status:?}", callout.cluster);
                    }
                    let mut worker = self.worker.borrow_mut();
                    queue.extend(worker.dispatched(purpose, from, call.ok(), now(), &HostStore));
                }
                Effect::Tick(period) => {
                    if let Err(status) = hostcalls::set_tick_period(period) {
                        log::error!("erp-edge-validator: cannot set the tick period: {status:?}");
                    }
                }
                Effect::Count(stat) => self.metrics.count(stat, 1),
                Effect::Record(stat, value) => self.metrics.count(stat, value),
            }
        }
        action
    }

    /// Hands an event, handled in context `from`, to the worker and
    /// carries out what it returns.
    fn run(
        &self,
        from: ContextId,
        current: Option<ContextId>,
        event: impl FnOnce(&mut Worker) -> Vec<Effect>,
    ) -> Action {
        let effects = event(&mut self.worker.borrow_mut());
        self.execute(effects, from, current)
    }

    /// A callout answered on context `from`.
    fn answered(&self, call: u32, body_size: usize, from: ContextId) {
        let response = HostResponse { body_size };
        self.run(from, None, |w| w.answered(call, &response, now(), &HostStore));
    }

    /// Sends the rejection's reply on the effective context.
    fn reply(&self, rejection: &Rejection) {
        Stat::of_rejection(rejection)
            .into_iter()
            .flatten()
            .for_each(|s| self.metrics.count(s, 1));
        send_reply(rejection, &self.realm);
    }
}

fn send_reply(rejection: &Rejection, realm: &str) {
    let response = rejection.to_response(realm);
    let headers: Vec<(&str, &str)> = response.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    if let Err(status) = hostcalls::send_http_response(response.status, headers, Some(response.body.as_bytes())) {
        log::error!("erp-edge-validator: cannot send a reply: {status:?}");
    }
}

/// Adds the identity headers and removes the credential if asked. The client's copies were
/// removed when the request arrived, so adding is setting (without Envoy's lookup-and-replace).
fn rewrite(allowed: &Allowed) -> Result<(), Rejection> {
    const CANNOT: Rejection = Rejection::Unavailable("the request could not be rewritten");
    for (name, value) in allowed.set_headers() {
        hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value).map_err(|_| CANNOT)?;
    }
    if let Some(name) = &allowed.remove_header {
        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None).map_err(|_| CANNOT)?;
    }
    Ok(())
}

struct Root {
    context_id: ContextId,
    shared: Option<Rc<Shared>>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, call: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if let Some(shared) = &self.shared {
            shared.answered(call, body_size, self.context_id);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        // Format log lines only at the level Envoy writes for this filter.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        // An unreadable configuration reads as empty, which is refused.
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX);
        let config = match Config::from_json(&bytes.ok().flatten().unwrap_or_default()) {
            Ok(config) => config,
            Err(e) => {
                log::error!("erp-edge-validator: invalid configuration: {e}");
                return false;
            }
        };
        // The host's RSA verifier, if it offers one that passes the self-test.
        let rsa = (config.rsa_verifier == RsaVerifier::Auto && rs256::host_agrees(&HostRsa)).then_some(HostRsa);
        let by = ["in the module", "by Envoy (BoringSSL)"][usize::from(rsa.is_some())];
        log::info!(
            "erp-edge-validator: configured: {}; RS256 verified {by}",
            config.summary()
        );
        let rsa = rsa.map(|host| Box::new(host) as Box<dyn RsaHost>);
        let mut worker = Worker::new(config, rsa);
        let effects = worker.start();
        let shared = Rc::new(Shared {
            realm: worker.config().realm.clone(),
            worker: RefCell::new(worker),
            metrics: Metrics::define(),
        });
        shared.execute(effects, self.context_id, None);
        self.shared = Some(shared);
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            shared.run(self.context_id, None, |w| w.tick(now(), &HostStore));
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
    context_id: ContextId,
    /// `None` only if Envoy created a stream without a successful configure.
    shared: Option<Rc<Shared>>,
}

impl Context for Http {
    fn on_http_call_response(&mut self, call: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if let Some(shared) = &self.shared {
            shared.answered(call, body_size, self.context_id);
        }
    }

    fn on_done(&mut self) -> bool {
        if let Some(shared) = &self.shared {
            shared.run(self.context_id, None, |w| w.stream_done(self.context_id, &HostStore));
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            send_reply(&Rejection::Unavailable("the filter is not configured"), DEFAULT_REALM);
            return Action::Pause;
        };
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
        let copies: Vec<String> = shared.worker.borrow().config().identity_headers.client_copies(&headers);
        for name in &copies {
            if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None) {
                log::error!("erp-edge-validator: cannot remove header {name}: {status:?}");
                shared.reply(&Rejection::Unavailable("the request could not be rewritten"));
                return Action::Pause;
            }
        }
        let pseudo = |name: &str| headers.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| *v);
        let head = RequestHead {
            method: pseudo(":method"),
            path: pseudo(":path"),
            headers: &headers,
        };
        let id = self.context_id;
        shared.run(id, Some(id), |w| w.request(id, &head, now(), &HostStore))
    }
}
