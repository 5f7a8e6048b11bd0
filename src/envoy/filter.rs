//! The only module that talks to Envoy. It reads the request head and the
//! clock, hands each host event to the pure [`Worker`], and carries out the
//! effects the worker returns as host calls. It decides nothing: every
//! branch here is about running an effect or reporting a host failure,
//! which denies.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::config::{Config, RsaVerifier, DEFAULT_REALM};
use crate::decision::{Allowed, RequestHead};
use crate::envoy::header_map;
use crate::envoy::ports::{now, request_header_bytes, set_property, HostResponse, HostRsa, HostStore, Metrics};
use crate::host::RsaHost;
use crate::jwt::rs256;
use crate::rejection::Rejection;
use crate::stats::Stat;
use crate::worker::access_log::{self, Ending};
use crate::worker::{ContextId, Effect, Worker};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> { Box::new(Root { context_id, shared: None }) });
}}

/// Everything a worker's contexts share.
struct Shared {
    worker: RefCell<Worker>,
    metrics: Metrics,
    /// `realm` of every challenge, kept here so a reply borrows nothing.
    realm: String,
    access_log_fields: bool,
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
                        self.record(Ending::Allowed(&allowed));
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

    /// The client-sent copies of identity headers in `headers`: never
    /// passed on.
    fn client_copies(&self, headers: &[(&str, &str)]) -> Vec<String> {
        self.worker.borrow().config().identity_headers.client_copies(headers)
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

    /// Sets the access-log fields of the effective context's request
    /// (`access_log_fields`).
    fn record(&self, ending: Ending<'_>) {
        if !self.access_log_fields {
            return;
        }
        if let Some(fields) = access_log::of_identity(ending) {
            return fields
                .pairs()
                .into_iter()
                .for_each(|(name, value)| set_property(name, value));
        }
        let raw = request_header_bytes().unwrap_or_default();
        let headers = header_map::pairs(&raw).unwrap_or_default();
        let worker = self.worker.borrow();
        let fields = worker.log_fields(ending, &headers, now());
        fields
            .pairs()
            .into_iter()
            .for_each(|(name, value)| set_property(name, value));
    }

    /// Sends the rejection's reply on the effective context.
    fn reply(&self, rejection: &Rejection) {
        self.record(Ending::Refused(rejection));
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
            access_log_fields: worker.config().access_log_fields,
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
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            send_reply(&Rejection::Unavailable("the filter is not configured"), DEFAULT_REALM);
            return Action::Pause;
        };
        let raw = request_header_bytes();
        let Some(headers) = raw.as_deref().and_then(header_map::pairs) else {
            log::error!("erp-edge-validator: cannot read request headers");
            shared.reply(&Rejection::Unavailable("the request could not be read"));
            return Action::Pause;
        };
        // Client-sent identity headers never reach the upstream.
        let copies = shared.client_copies(&headers);
        for name in &copies {
            if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None) {
                log::error!("erp-edge-validator: cannot remove header {name}: {status:?}");
                shared.reply(&Rejection::Unavailable("the request could not be rewritten"));
                return Action::Pause;
            }
        }
        let head = RequestHead::of(&headers, !end_of_stream);
        let id = self.context_id;
        let clock = now();
        #[cfg(feature = "warm-passes")]
        warm_passes(&shared, raw.as_deref(), id, clock);
        shared.run(id, Some(id), |w| w.request(id, &head, clock, &HostStore))
    }

    /// A body arriving while the decision waits must wait as well: an
    /// Envoy filter that lets data continue while its headers are stopped
    /// passes the request on with it.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.hold_while_waiting()
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.hold_while_waiting()
    }
}

impl Http {
    /// Pause (Envoy buffers) while the worker decides this request;
    /// continue once it has.
    fn hold_while_waiting(&self) -> Action {
        match &self.shared {
            Some(shared) if shared.worker.borrow().is_waiting(self.context_id) => Action::Pause,
            Some(_) => Action::Continue,
            // Never configured: the headers were refused already.
            None => Action::Pause,
        }
    }
}

/// How many times a `warm-passes` build repeats a request's work.
#[cfg(feature = "warm-passes")]
const WARM_PASSES: usize = 32;

/// A bench build's extra work (`warm-passes`, never in the shipped
/// filter): the filter's own work for the request, from reading the header
/// map to the worker's effects, [`WARM_PASSES`] more times, with no host
/// call and its effects dropped. The extra passes find the code and data in
/// the CPU's caches, so `make bench` can tell what that work costs warm
/// from what the first pass costs. Meant for requests decided at once (the
/// bench sends one cached JWT): a dropped effect of any other leaves the
/// worker waiting for a call never made.
#[cfg(feature = "warm-passes")]
fn warm_passes(shared: &Shared, raw: Option<&[u8]>, stream: ContextId, clock: Option<crate::host::Now>) {
    for _ in 0..WARM_PASSES {
        let Some(headers) = std::hint::black_box(raw).and_then(header_map::pairs) else {
            return;
        };
        let copies = shared.client_copies(&headers);
        let effects = shared
            .worker
            .borrow_mut()
            .request(stream, &RequestHead::of(&headers, false), clock, &HostStore);
        std::hint::black_box((copies, effects));
    }
}
