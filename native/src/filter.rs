//! The native host's glue, the counterpart of the wasm filter's
//! `envoy/filter.rs`: it reads the request head and the clock, hands each
//! Envoy event to the core's [`Worker`], and carries out the effects the
//! worker returns with Envoy's callbacks. It decides nothing.
//!
//! One worker per filter configuration serves every Envoy worker thread,
//! behind a mutex, with the process's memory as its store. So everything
//! the wasm filter shares through Envoy's shared data, or keeps per worker,
//! is one thing here: the memory of verified tokens, the reference cache
//! (its bound, TTLs, negative answers, one callout for every waiting
//! request, the introspection budget) and the key set (one fetch, rotation,
//! cooldown).
//!
//! Threads: a request's hooks run on its Envoy worker thread. An effect for
//! another request (a callout answered elsewhere lets it go on) is put in
//! that request's inbox and its scheduler runs it on its own thread. The
//! worker's timer is a small thread of this module that asks Envoy to run
//! the configuration's scheduled hook on the main thread, where the ticks,
//! the key fetches and the callouts whose request went away are made.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use erp_edge_validator::hosting::{
    access_log, header_text, host_agrees, Allowed, CallId, CalloutResponse, Config, ContextId, Effect, Ending, Kind,
    MemoryStore, Now, Rejection, RequestHead, RsaHost, RsaVerifier, Stat, Worker, DEFAULT_REALM,
};

use crate::ffi::{
    self, ConfigScheduler, DataStatus, Filter, HeadersStatus, Level, Metric, MetricKind, StreamScheduler,
};
use crate::rsa::NativeRsa;

/// The id the worker knows the configuration's own context by (the wasm
/// filter's root context): ticks, key fetches, callouts made again.
const ROOT: ContextId = 0;

/// The process memory every configuration's worker keeps its shared
/// entries in (namespaced by identity service, as in Envoy's shared data).
fn store() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(MemoryStore::default)
}

/// Stream ids, unique in the process (0 is [`ROOT`]).
fn next_stream_id() -> ContextId {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    loop {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        if id != ROOT {
            return id;
        }
    }
}

/// The clock, read once per event; `None` if it cannot be read (the worker
/// then answers 503).
fn now() -> Option<Now> {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Some(Now {
        secs: elapsed.as_secs(),
        ms: u64::try_from(elapsed.as_millis()).ok()?,
    })
}

/// Once, when Envoy loads the module.
pub(crate) fn program_init() {
    crate::logger::install();
}

/// A filter configuration: its worker and everything its requests share.
pub(crate) struct ConfigState {
    shared: Arc<Shared>,
    ticker: Option<Ticker>,
}

struct Shared {
    worker: Mutex<Worker>,
    envoy: ffi::Config,
    /// By [`Stat`] index; `None` where Envoy refused the definition.
    metrics: Vec<Option<Metric>>,
    realm: String,
    access_log_fields: bool,
    /// Requests waiting for their decision, by stream id.
    waiting: Mutex<HashMap<ContextId, Slot>>,
    /// The configuration's own callouts, by Envoy's id.
    root_calls: Mutex<HashMap<u64, CallId>>,
    next_call: AtomicU32,
    tick: Arc<TickControl>,
    #[cfg(feature = "floor-probe")]
    probe: Option<Probe>,
}

/// What a `floor-probe` build does instead of deciding, by filter name:
/// the host calls a request needs, without the decision.
#[cfg(feature = "floor-probe")]
#[derive(Clone, Copy)]
enum Probe {
    /// `floor-continue`: nothing; the request goes on.
    Continue,
    /// `floor-read`: reads the request headers as the filter does.
    Read,
    /// `floor-headers`: reads them and adds the five identity headers
    /// the bench's cached JWT (dj1) gets.
    Headers,
}

#[cfg(feature = "floor-probe")]
impl Probe {
    fn named(name: &[u8]) -> Option<Self> {
        match name {
            b"floor-continue" => Some(Self::Continue),
            b"floor-read" => Some(Self::Read),
            b"floor-headers" => Some(Self::Headers),
            _ => None,
        }
    }

    fn run(self, filter: &mut Filter<'_>) -> HeadersStatus {
        if matches!(self, Self::Read | Self::Headers) {
            let read = filter.with_request_headers(|headers| headers.map(|h| std::hint::black_box(h.len())));
            if read.is_none() {
                return HeadersStatus::Stop;
            }
        }
        if matches!(self, Self::Headers) {
            for (name, value) in [
                ("x-erp-client-id", "my.trusted.app/first"),
                ("x-erp-scopes", "DomainApi read"),
                ("x-erp-client-db", "E1_DEV"),
                ("x-erp-system-user", "p.kostov@erp.bg"),
                ("x-erp-token-kind", "jwt"),
            ] {
                filter.add_request_header(name, value);
            }
        }
        HeadersStatus::Continue
    }
}

/// A waiting request: where to leave its effects, and how to wake it.
struct Slot {
    scheduler: Option<StreamScheduler>,
    inbox: Vec<Effect>,
}

/// A mutex whose holder panicked is used as it is: the core keeps no
/// half-made state across a call that could let a request through, and
/// refusing every later request would turn one bug into an outage.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads the configuration (on the main thread). `None` refuses it, and
/// Envoy does not start; the reason, naming the field, is in Envoy's log.
pub(crate) fn configure(envoy: ffi::Config, name: &[u8], bytes: &[u8]) -> Option<ConfigState> {
    #[cfg(not(feature = "floor-probe"))]
    let _ = name;
    let config = match Config::from_json(bytes) {
        Ok(config) => config,
        Err(e) => {
            log::error!("erp-edge-validator: invalid configuration: {e}");
            return None;
        }
    };
    let native = NativeRsa::default();
    let rsa = (config.rsa_verifier == RsaVerifier::Auto && host_agrees(&native)).then_some(native);
    let by = rsa.as_ref().map_or("in the module", NativeRsa::describe);
    log::info!(
        "erp-edge-validator: configured (native host): {}; RS256 verified {by}",
        config.summary()
    );
    let rsa = rsa.map(|r| Box::new(r) as Box<dyn RsaHost>);
    let mut worker = Worker::new(config, rsa).trusting_the_store();
    let effects = worker.start();
    let metrics = Stat::ALL
        .into_iter()
        .map(|stat| {
            let kind = match stat.kind() {
                Kind::Counter => MetricKind::Counter,
                Kind::Gauge => MetricKind::Gauge,
                Kind::Histogram => MetricKind::Histogram,
            };
            envoy.define(kind, stat.name())
        })
        .collect();
    let tick = Arc::new(TickControl::default());
    let shared = Arc::new(Shared {
        realm: worker.config().realm.clone(),
        access_log_fields: worker.config().access_log_fields,
        worker: Mutex::new(worker),
        envoy,
        metrics,
        waiting: Mutex::new(HashMap::new()),
        root_calls: Mutex::new(HashMap::new()),
        next_call: AtomicU32::new(1),
        tick: Arc::clone(&tick),
        #[cfg(feature = "floor-probe")]
        probe: Probe::named(name),
    });
    let ticker = match envoy.scheduler() {
        Some(scheduler) => Some(Ticker::start(tick, scheduler)?),
        None => {
            log::error!("erp-edge-validator: Envoy gave no scheduler: no timer, so no key refresh");
            return None;
        }
    };
    shared.execute(effects, &Origin::Root, None);
    Some(ConfigState { shared, ticker })
}

/// Envoy destroys the configuration (main thread): the timer stops first,
/// so nothing commits to a scheduler that is about to go.
pub(crate) fn unconfigure(mut state: ConfigState) {
    if let Some(ticker) = state.ticker.take() {
        ticker.stop();
    }
}

/// A fresh stream's state.
pub(crate) fn new_stream(config: &ConfigState) -> Stream {
    Stream {
        shared: Arc::clone(&config.shared),
        id: next_stream_id(),
        calls: RefCell::new(Vec::new()),
        waiting: Cell::new(false),
        answered: Cell::new(false),
    }
}

/// What a hook does when the filter panicked in it: the request is refused.
pub(crate) fn refuse_after_panic(filter: &Filter<'_>) {
    send_reply(filter, &Rejection::Unavailable("the filter failed"), DEFAULT_REALM);
}

impl ConfigState {
    /// The timer fired (main thread).
    pub(crate) fn tick(&self) {
        let shared = &self.shared;
        shared.tick.pending.store(false, Ordering::Release);
        let effects = locked(&shared.worker).tick(now(), store());
        shared.execute(effects, &Origin::Root, None);
    }

    /// A callout of the configuration answered (main thread).
    pub(crate) fn answered(&self, envoy_id: u64, answer: &Answer<'_>) {
        let shared = &self.shared;
        let Some(call) = locked(&shared.root_calls).remove(&envoy_id) else {
            return;
        };
        let effects = locked(&shared.worker).answered(call, answer, now(), store());
        shared.execute(effects, &Origin::Root, None);
    }
}

/// One request.
pub(crate) struct Stream {
    shared: Arc<Shared>,
    id: ContextId,
    /// This stream's callouts in flight: Envoy's id and the worker's.
    calls: RefCell<Vec<(u64, CallId)>>,
    /// The decision waits (for an introspection answer or keys).
    waiting: Cell<bool>,
    /// The request was let through or answered: nothing more is done to it.
    answered: Cell<bool>,
}

impl Stream {
    pub(crate) fn request_headers(&self, filter: &mut Filter<'_>, end_of_stream: bool) -> HeadersStatus {
        let shared = &self.shared;
        #[cfg(feature = "floor-probe")]
        if let Some(probe) = shared.probe {
            return probe.run(filter);
        }
        let decided = filter.with_request_headers(|raw| {
            let headers = raw.ok_or(Rejection::Unavailable("the request could not be read"))?;
            let head = RequestHead::of(headers, !end_of_stream);
            let clock = now();
            let mut worker = locked(&shared.worker);
            #[cfg(feature = "chaos-panic")]
            chaos_panic(headers);
            let copies = worker.config().identity_headers.client_copies(headers);
            let effects = worker.request(self.id, &head, clock, store());
            let concerns_me =
                |e: &Effect| matches!(e, Effect::Allow { stream, .. } | Effect::Reply { stream, .. } if *stream == self.id);
            if !effects.iter().any(concerns_me) {
                // Registered while the worker is locked: whatever lets this
                // request go on is decided after, and finds its inbox.
                self.waiting.set(true);
                locked(&shared.waiting).insert(
                    self.id,
                    Slot {
                        scheduler: None,
                        inbox: Vec::new(),
                    },
                );
            }
            Ok((copies, effects))
        });
        let (copies, effects) = match decided {
            Ok(decided) => decided,
            Err(rejection) => {
                log::error!("erp-edge-validator: cannot read request headers");
                shared.reply(filter, self, &rejection);
                return HeadersStatus::Stop;
            }
        };
        // Client-sent identity headers never reach the upstream.
        for name in &copies {
            if !filter.remove_request_header(name) {
                log::error!("erp-edge-validator: cannot remove header {name}");
                shared.reply(
                    filter,
                    self,
                    &Rejection::Unavailable("the request could not be rewritten"),
                );
                return HeadersStatus::Stop;
            }
        }
        if self.waiting.get() {
            let Some(scheduler) = filter.scheduler() else {
                // Nothing could wake this request when its decision comes:
                // refuse it now rather than leave it waiting.
                log::error!("erp-edge-validator: Envoy gave no scheduler for a waiting request");
                shared.reply(filter, self, &Rejection::Unavailable("the request could not wait"));
                // Whatever the worker asked for this request is refused too,
                // so no one else waits on a callout never made.
                shared.execute(effects, &Origin::Detached, None);
                return HeadersStatus::Stop;
            };
            if let Some(slot) = locked(&shared.waiting).get_mut(&self.id) {
                if !slot.inbox.is_empty() {
                    scheduler.commit();
                }
                slot.scheduler = Some(scheduler);
            }
        }
        match shared.execute(effects, &Origin::Stream(filter, self), Some(self.id)) {
            Outcome::Allowed => HeadersStatus::Continue,
            Outcome::Replied => HeadersStatus::Stop,
            Outcome::Waiting if self.answered.get() => HeadersStatus::Stop,
            Outcome::Waiting => HeadersStatus::Wait,
        }
    }

    /// Body and trailers wait while the decision does: a filter that lets
    /// data continue while its headers are stopped passes the request on.
    pub(crate) fn hold_while_waiting(&self) -> DataStatus {
        if self.waiting.get() && !self.answered.get() {
            DataStatus::Hold
        } else {
            DataStatus::Continue
        }
    }

    /// Effects left for this request by another thread.
    pub(crate) fn scheduled(&self, filter: &Filter<'_>) {
        let effects = match locked(&self.shared.waiting).get_mut(&self.id) {
            Some(slot) => std::mem::take(&mut slot.inbox),
            None => return,
        };
        self.shared.execute(effects, &Origin::Stream(filter, self), None);
    }

    /// A callout this stream made answered.
    pub(crate) fn answered(&self, filter: &Filter<'_>, envoy_id: u64, answer: &Answer<'_>) {
        let call = {
            let mut calls = self.calls.borrow_mut();
            let Some(at) = calls.iter().position(|(id, _)| *id == envoy_id) else {
                return;
            };
            calls.swap_remove(at).1
        };
        let shared = &self.shared;
        let effects = locked(&shared.worker).answered(call, answer, now(), store());
        shared.execute(effects, &Origin::Stream(filter, self), None);
    }

    /// The stream is gone. Its callouts went with it; the worker makes any
    /// that others still wait for again, from the main thread.
    pub(crate) fn done(self) {
        let shared = &self.shared;
        if !self.waiting.get() && self.calls.borrow().is_empty() {
            // Nearly every stream: nothing to forget.
            return;
        }
        let (effects, slot) = {
            let mut worker = locked(&shared.worker);
            let effects = worker.stream_done(self.id, store());
            let slot = locked(&shared.waiting).remove(&self.id);
            (effects, slot)
        };
        drop(slot);
        shared.execute(effects, &Origin::Detached, None);
    }
}

/// A test build's way to panic inside a hook on purpose (`x-chaos-panic`),
/// with the worker locked, so the tests can show that the panic is caught,
/// the request refused and the filter still serves. Never in the shipped
/// module: only the `chaos-panic` feature compiles it.
#[cfg(feature = "chaos-panic")]
#[allow(clippy::panic)]
fn chaos_panic(headers: &[(&str, &str)]) {
    if headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("x-chaos-panic"))
    {
        panic!("x-chaos-panic");
    }
}

/// Where effects are carried out from.
enum Origin<'a, 'hook> {
    /// A hook of this stream, on its thread.
    Stream(&'a Filter<'hook>, &'a Stream),
    /// The configuration's hooks, on the main thread.
    Root,
    /// A stream's destroy hook: no filter to call, and no callout to make.
    Detached,
}

impl Origin<'_, '_> {
    fn id(&self) -> ContextId {
        match self {
            Self::Stream(_, stream) => stream.id,
            Self::Root | Self::Detached => ROOT,
        }
    }
}

/// What became of the request whose headers are being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    Replied,
    Waiting,
}

impl Shared {
    /// Carries out `effects` and those that follow from them (a dispatch's
    /// outcome). Returns what became of `current`.
    fn execute(&self, effects: Vec<Effect>, origin: &Origin<'_, '_>, current: Option<ContextId>) -> Outcome {
        let mut queue = VecDeque::from(effects);
        let mut outcome = Outcome::Waiting;
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Allow { stream, allowed } => match origin {
                    Origin::Stream(filter, own) if own.id == stream => {
                        if own.answered.replace(true) {
                            continue;
                        }
                        match rewrite(filter, &allowed) {
                            Ok(()) => {
                                self.record(filter, Ending::Allowed(&allowed));
                                self.count(origin, allowed.stat(), 1);
                                if current == Some(stream) {
                                    outcome = Outcome::Allowed;
                                } else {
                                    filter.continue_decoding();
                                }
                            }
                            Err(rejection) => {
                                self.send(filter, &rejection);
                                if current == Some(stream) {
                                    outcome = Outcome::Replied;
                                }
                            }
                        }
                    }
                    _ => self.deliver(stream, Effect::Allow { stream, allowed }),
                },
                Effect::Reply { stream, rejection } => match origin {
                    Origin::Stream(filter, own) if own.id == stream => {
                        if own.answered.replace(true) {
                            continue;
                        }
                        self.send(filter, &rejection);
                        if current == Some(stream) {
                            outcome = Outcome::Replied;
                        }
                    }
                    _ => self.deliver(stream, Effect::Reply { stream, rejection }),
                },
                Effect::Dispatch { purpose, callout } => {
                    let headers: Vec<(&str, &str)> = callout.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                    let (cluster, body, timeout) = (&callout.cluster, callout.body.as_slice(), callout.timeout_ms);
                    let call = match origin {
                        Origin::Stream(filter, own) => {
                            filter.callout(cluster, &headers, body, timeout).map(|envoy_id| {
                                let call = self.next_call.fetch_add(1, Ordering::Relaxed);
                                own.calls.borrow_mut().push((envoy_id, call));
                                call
                            })
                        }
                        Origin::Root => self.envoy.callout(cluster, &headers, body, timeout).map(|envoy_id| {
                            let call = self.next_call.fetch_add(1, Ordering::Relaxed);
                            locked(&self.root_calls).insert(envoy_id, call);
                            call
                        }),
                        Origin::Detached => None,
                    };
                    if call.is_none() {
                        log::error!("erp-edge-validator: cannot call `{cluster}`");
                    }
                    let more = locked(&self.worker).dispatched(purpose, origin.id(), call, now(), store());
                    queue.extend(more);
                }
                Effect::Tick(period) => self.tick.set(period),
                Effect::Count(stat) => self.count(origin, stat, 1),
                Effect::Record(stat, value) => self.count(origin, stat, value),
            }
        }
        outcome
    }

    /// Leaves an effect for a waiting request and wakes it on its thread.
    /// A request that is gone has nothing left to answer.
    fn deliver(&self, stream: ContextId, effect: Effect) {
        let mut waiting = locked(&self.waiting);
        if let Some(slot) = waiting.get_mut(&stream) {
            slot.inbox.push(effect);
            if let Some(scheduler) = &slot.scheduler {
                scheduler.commit();
            }
        }
    }

    /// Counts one (a counter) or records `value` (a gauge or histogram),
    /// on the stream when there is one. A stats failure changes nothing.
    fn count(&self, origin: &Origin<'_, '_>, stat: Stat, value: u64) {
        let Some(Some(metric)) = self.metrics.get(stat as usize) else {
            return;
        };
        let value = if metric.kind == MetricKind::Counter { 1 } else { value };
        match origin {
            Origin::Stream(filter, _) => filter.metric(*metric, value),
            Origin::Root | Origin::Detached => self.envoy.metric(*metric, value),
        }
    }

    /// Refuses the request on `filter` (a failure before any decision).
    fn reply(&self, filter: &Filter<'_>, stream: &Stream, rejection: &Rejection) {
        if !stream.answered.replace(true) {
            self.send(filter, rejection);
        }
    }

    /// The rejection's access-log fields, stats and RFC 6750 reply.
    fn send(&self, filter: &Filter<'_>, rejection: &Rejection) {
        self.record(filter, Ending::Refused(rejection));
        for stat in Stat::of_rejection(rejection).into_iter().flatten() {
            if let Some(Some(metric)) = self.metrics.get(stat as usize) {
                filter.metric(*metric, 1);
            }
        }
        send_reply(filter, rejection, &self.realm);
    }

    /// Sets the access-log fields of the request on `filter`
    /// (`access_log_fields`), under the same filter-state keys as the wasm
    /// filter's, so one access-log format serves both hosts.
    fn record(&self, filter: &Filter<'_>, ending: Ending<'_>) {
        if !self.access_log_fields {
            return;
        }
        let set = |fields: access_log::Fields<'_>| {
            for (name, value) in fields.pairs() {
                filter.set_filter_state(&format!("wasm.{name}"), value);
            }
        };
        if let Some(fields) = access_log::of_identity(ending) {
            return set(fields);
        }
        let raw = filter.request_headers_copy().unwrap_or_default();
        let headers: Vec<(&str, &str)> = raw.iter().map(|(n, v)| (header_text(n), header_text(v))).collect();
        let worker = locked(&self.worker);
        set(worker.log_fields(ending, &headers, now()));
    }
}

fn send_reply(filter: &Filter<'_>, rejection: &Rejection, realm: &str) {
    let response = rejection.to_response(realm);
    let headers: Vec<(&str, &str)> = response.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    filter.send_response(response.status, &headers, &response.body, "erp_edge_validator_refused");
}

/// Adds the identity headers and removes the credential if asked. The
/// client's copies were removed when the request arrived.
fn rewrite(filter: &Filter<'_>, allowed: &Allowed) -> Result<(), Rejection> {
    const CANNOT: Rejection = Rejection::Unavailable("the request could not be rewritten");
    for (name, value) in allowed.set_headers() {
        if !filter.add_request_header(name, value) {
            return Err(CANNOT);
        }
    }
    if let Some(name) = &allowed.remove_header {
        if !filter.remove_request_header(name) {
            return Err(CANNOT);
        }
    }
    Ok(())
}

/// A callout's answer as Envoy lends it to the hook.
pub(crate) struct Answer<'a> {
    /// Envoy got a whole response (`Success`); otherwise the call failed
    /// (reset, or the body was over Envoy's limit).
    pub(crate) completed: bool,
    pub(crate) status: Option<&'a [u8]>,
    pub(crate) chunks: Vec<&'a [u8]>,
}

impl CalloutResponse for Answer<'_> {
    fn status(&self) -> Option<String> {
        if !self.completed {
            return None;
        }
        self.status.map(|s| String::from_utf8_lossy(s).into_owned())
    }

    fn body(&self, max_bytes: usize) -> Option<Vec<u8>> {
        let size: usize = self.chunks.iter().map(|c| c.len()).sum();
        (size <= max_bytes).then(|| self.chunks.concat())
    }
}

/// The worker's timer: a thread of this module that, at the period the
/// worker last asked for, has Envoy run the configuration's scheduled hook
/// on the main thread (one at a time).
#[derive(Default)]
struct TickControl {
    state: Mutex<TickState>,
    wake: Condvar,
    /// A tick was committed and has not run yet.
    pending: AtomicBool,
}

#[derive(Default)]
struct TickState {
    period: Duration,
    stop: bool,
}

impl TickControl {
    fn set(&self, period: Duration) {
        let mut state = locked(&self.state);
        if state.period != period {
            state.period = period;
            self.wake.notify_all();
        }
    }
}

struct Ticker {
    control: Arc<TickControl>,
    thread: JoinHandle<()>,
    /// Dropped (deleted in Envoy) on the main thread, after the thread.
    _scheduler: Arc<ConfigScheduler>,
}

impl Ticker {
    fn start(control: Arc<TickControl>, scheduler: ConfigScheduler) -> Option<Self> {
        let scheduler = Arc::new(scheduler);
        let (thread_control, thread_scheduler) = (Arc::clone(&control), Arc::clone(&scheduler));
        let thread = std::thread::Builder::new()
            .name("erp-edge-tick".into())
            .spawn(move || run_ticker(&thread_control, &thread_scheduler));
        match thread {
            Ok(thread) => Some(Self {
                control,
                thread,
                _scheduler: scheduler,
            }),
            Err(e) => {
                log::error!("erp-edge-validator: cannot start the timer thread: {e}");
                None
            }
        }
    }

    fn stop(self) {
        locked(&self.control.state).stop = true;
        self.control.wake.notify_all();
        if self.thread.join().is_err() {
            log::error!("erp-edge-validator: the timer thread panicked");
        }
    }
}

fn run_ticker(control: &TickControl, scheduler: &ConfigScheduler) {
    let mut state = locked(&control.state);
    while !state.stop {
        if state.period.is_zero() {
            state = control.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        let period = state.period;
        let (next, waited) = control
            .wake
            .wait_timeout(state, period)
            .unwrap_or_else(PoisonError::into_inner);
        state = next;
        if !state.stop && waited.timed_out() && !control.pending.swap(true, Ordering::AcqRel) {
            scheduler.commit();
        }
    }
}

/// A line in Envoy's log at the level of `record` (for the logger).
pub(crate) fn envoy_level(level: log::Level) -> Level {
    match level {
        log::Level::Error => Level::Error,
        log::Level::Warn => Level::Warn,
        log::Level::Info => Level::Info,
        log::Level::Debug => Level::Debug,
        log::Level::Trace => Level::Trace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callout_answer_is_read_as_the_core_expects() {
        let whole = Answer {
            completed: true,
            status: Some(b"200"),
            chunks: vec![b"{\"active\":", b"true}"],
        };
        assert_eq!(whole.status().as_deref(), Some("200"));
        assert_eq!(whole.body(15).as_deref(), Some(&b"{\"active\":true}"[..]));
        // Over the core's limit: never copied.
        assert_eq!(whole.body(14), None);
        // A reset call has no status, whatever headers came before.
        let reset = Answer {
            completed: false,
            status: Some(b"200"),
            chunks: Vec::new(),
        };
        assert_eq!(reset.status(), None);
    }

    #[test]
    fn stream_ids_never_name_the_configuration() {
        let ids: Vec<ContextId> = (0..1000).map(|_| next_stream_id()).collect();
        assert!(ids.iter().all(|id| *id != ROOT));
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }
}
