//! The Envoy dynamic-module ABI (Envoy 1.40, ABI `v0.2.0`), as far as this
//! filter uses it, and the only `unsafe` code in the crate (with the one
//! call into CPU-specific code, [`ifma_pow_f4`], after checking the CPU).
//!
//! Two halves:
//! - the event hooks Envoy calls (`envoy_dynamic_module_on_*`, exported):
//!   each turns its raw pointers into the safe handles below, runs the
//!   filter (`crate::filter`) inside `catch_unwind`, and on a panic refuses
//!   the request (503) instead of letting the panic cross into Envoy;
//! - the callbacks this filter calls (`envoy_dynamic_module_callback_*`,
//!   imported from the Envoy binary), behind [`Filter`], [`Config`] and the
//!   scheduler handles.
//!
//! The signatures follow `source/extensions/dynamic_modules/abi/abi.h` of
//! the Envoy release the binary was built from: C enums as `u32`, `bool` as
//! Rust's `bool` (one byte, the same ABI), buffers as `{ptr, length}`
//! structs passed by value. `tests/native_module_abi.rs` checks every name
//! imported here against the binary's exports, and that Envoy logs the ABI
//! version as matched when it loads the module.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

use erp_edge_validator::hosting::header_text;

use crate::filter::{self, Answer, ConfigState, Stream};

/// `s^65537 mod n` by the AVX-512 IFMA code ([`crate::ifma`]), or `None`
/// on a CPU without it (the caller then asks AWS-LC).
#[cfg(target_arch = "x86_64")]
pub(crate) fn ifma_pow_f4(
    modulus: &crate::ifma::Modulus,
    s: &[u8; crate::ifma::BYTES],
) -> Option<[u8; crate::ifma::BYTES]> {
    if !cpu_has_ifma() {
        return None;
    }
    // SAFETY: `pow_f4` is compiled for exactly these two CPU features, and
    // this CPU was just found to have both; it takes references only and
    // reads no memory through pointers.
    Some(unsafe { crate::ifma::pow_f4(modulus, s) })
}

/// Whether this CPU runs the IFMA code (`avx512f` and `avx512ifma`).
pub(crate) fn cpu_has_ifma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512ifma");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// The ABI version this module was built for; Envoy logs whether it
/// matches its own.
pub const ABI_VERSION: &str = "v0.2.0";
const ABI_VERSION_C: &[u8] = b"v0.2.0\0";

// ---------------------------------------------------------------- types

/// Bytes Envoy lends (`envoy_dynamic_module_type_envoy_buffer`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

/// Bytes this module lends (`envoy_dynamic_module_type_module_buffer`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    const NULL: Self = Self {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// A header Envoy lends (`envoy_dynamic_module_type_envoy_http_header`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

/// A header this module lends (`envoy_dynamic_module_type_module_http_header`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl ModuleHeader {
    fn of(name: &str, value: &str) -> Self {
        Self {
            key_ptr: name.as_ptr(),
            key_length: name.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADERS: u32 = 0;
/// `..._http_callout_init_result_Success`, `..._http_callout_result_Success`,
/// `..._metrics_result_Success`.
const SUCCESS: u32 = 0;

/// What the request-headers hook tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersStatus {
    /// `Continue`: the request goes on.
    Continue = 0,
    /// `StopIteration`: a reply was sent.
    Stop = 1,
    /// `StopAllIterationAndBuffer`: the decision waits; body and trailers
    /// are held until the filter continues.
    Wait = 3,
}

/// What the request body and trailers hooks tell Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    /// `Continue`.
    Continue,
    /// Body: `StopIterationAndBuffer` (1); trailers: `StopIteration` (1).
    Hold,
}

impl DataStatus {
    fn code(self) -> u32 {
        match self {
            Self::Continue => 0,
            Self::Hold => 1,
        }
    }
}

/// The kinds of metric Envoy defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Envoy's log levels (`envoy_dynamic_module_type_log_level`).
#[derive(Debug, Clone, Copy)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

// ------------------------------------------------------------ callbacks

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, header_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        header_type: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: *mut c_void,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: *mut c_void,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: *mut c_void, event_id: u64);
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: *mut c_void,
        id: usize,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter: *mut c_void,
        id: usize,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        value: u64,
    ) -> u32;

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: *mut c_void,
        name: ModuleBuffer,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: *mut c_void,
        name: ModuleBuffer,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: *mut c_void,
        id: usize,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        config: *mut c_void,
        id: usize,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: *mut c_void, event_id: u64);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
}

/// Every callback this module imports, for the test that checks them
/// against the Envoy binary's exports.
pub const IMPORTED: &[&str] = &[
    "envoy_dynamic_module_callback_log",
    "envoy_dynamic_module_callback_log_enabled",
    "envoy_dynamic_module_callback_http_get_headers_size",
    "envoy_dynamic_module_callback_http_get_headers",
    "envoy_dynamic_module_callback_http_set_header",
    "envoy_dynamic_module_callback_http_add_header",
    "envoy_dynamic_module_callback_http_send_response",
    "envoy_dynamic_module_callback_http_set_filter_state_bytes",
    "envoy_dynamic_module_callback_http_filter_continue_decoding",
    "envoy_dynamic_module_callback_http_filter_http_callout",
    "envoy_dynamic_module_callback_http_filter_scheduler_new",
    "envoy_dynamic_module_callback_http_filter_scheduler_commit",
    "envoy_dynamic_module_callback_http_filter_scheduler_delete",
    "envoy_dynamic_module_callback_http_filter_increment_counter",
    "envoy_dynamic_module_callback_http_filter_set_gauge",
    "envoy_dynamic_module_callback_http_filter_record_histogram_value",
    "envoy_dynamic_module_callback_http_filter_config_define_counter",
    "envoy_dynamic_module_callback_http_filter_config_define_gauge",
    "envoy_dynamic_module_callback_http_filter_config_define_histogram",
    "envoy_dynamic_module_callback_http_filter_config_increment_counter",
    "envoy_dynamic_module_callback_http_filter_config_set_gauge",
    "envoy_dynamic_module_callback_http_filter_config_record_histogram_value",
    "envoy_dynamic_module_callback_http_filter_config_http_callout",
    "envoy_dynamic_module_callback_http_filter_config_scheduler_new",
    "envoy_dynamic_module_callback_http_filter_config_scheduler_commit",
    "envoy_dynamic_module_callback_http_filter_config_scheduler_delete",
];

/// The callbacks that count or record on a metric: filter or
/// configuration, counter, gauge or histogram, all of one shape.
type MetricFn = unsafe extern "C" fn(*mut c_void, usize, *mut ModuleBuffer, usize, u64) -> u32;
/// The callbacks that define a metric.
type DefineFn = unsafe extern "C" fn(*mut c_void, ModuleBuffer, *mut ModuleBuffer, usize, *mut usize) -> u32;
/// The callbacks that start a callout, from a stream or a configuration.
type CalloutFn =
    unsafe extern "C" fn(*mut c_void, *mut u64, ModuleBuffer, *mut ModuleHeader, usize, ModuleBuffer, u64) -> u32;

/// A callout to start.
struct Call<'a> {
    cluster: &'a str,
    headers: &'a [(&'a str, &'a str)],
    body: &'a [u8],
    timeout_ms: u64,
}

impl Call<'_> {
    /// Starts it with `start` on `owner`; Envoy's id for it, or `None`
    /// when Envoy refused.
    ///
    /// SAFETY (callers): `owner` must be what `start` takes, live, on the
    /// thread where `start` may be called.
    unsafe fn start(&self, start: CalloutFn, owner: *mut c_void) -> Option<u64> {
        let mut raw: Vec<ModuleHeader> = self.headers.iter().map(|(n, v)| ModuleHeader::of(n, v)).collect();
        let mut id: u64 = 0;
        // `id` is a live out-parameter; the header array and both buffers
        // live for the call, and Envoy copies them.
        let result = start(
            owner,
            &mut id,
            ModuleBuffer::of(self.cluster.as_bytes()),
            raw.as_mut_ptr(),
            raw.len(),
            ModuleBuffer::of(self.body),
            self.timeout_ms,
        );
        (result == SUCCESS).then_some(id)
    }
}

// -------------------------------------------------------------- logging

/// Writes a line to Envoy's log (component `dynamic_modules`).
pub fn log(level: Level, message: &str) {
    // SAFETY: the buffer describes a live string for the duration of the
    // call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level as u32, ModuleBuffer::of(message.as_bytes())) }
}

/// Whether Envoy writes lines of this level.
pub fn log_enabled(level: Level) -> bool {
    // SAFETY: a plain value in, a plain value out.
    unsafe { envoy_dynamic_module_callback_log_enabled(level as u32) }
}

// ------------------------------------------------------------- handles

/// One request's filter in Envoy (`DynamicModuleHttpFilter`), valid for one
/// hook call on the stream's own worker thread: neither `Send` nor `Sync`,
/// and not storable (the hooks lend it).
pub struct Filter<'hook> {
    ptr: *mut c_void,
    _hook: PhantomData<&'hook mut ()>,
}

/// A metric as Envoy defined it.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub kind: MetricKind,
    pub id: usize,
}

impl Filter<'_> {
    /// The request headers as Envoy reports them: pointers into its map,
    /// valid until this hook returns or the map changes.
    fn raw_request_headers(&self) -> Option<Vec<EnvoyHeader>> {
        // SAFETY: `ptr` is the live filter of this hook call.
        let count = unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.ptr, REQUEST_HEADERS) };
        let empty = EnvoyHeader {
            key_ptr: std::ptr::null(),
            key_length: 0,
            value_ptr: std::ptr::null(),
            value_length: 0,
        };
        let mut raw = vec![empty; count];
        // SAFETY: `raw` has room for the `count` headers Envoy reported, and
        // Envoy writes no more than that.
        let ok = unsafe { envoy_dynamic_module_callback_http_get_headers(self.ptr, REQUEST_HEADERS, raw.as_mut_ptr()) };
        (ok || count == 0).then_some(raw)
    }

    /// Runs `read` on the request headers as Envoy holds them (no copy),
    /// read as text the way the core reads headers;
    /// `None` when Envoy cannot give them. The `&mut` borrow keeps every
    /// other call on this filter, which could change the map under the
    /// slices, out until `read` returns.
    pub fn with_request_headers<R>(&mut self, read: impl FnOnce(Option<&[(&str, &str)]>) -> R) -> R {
        let Some(raw) = self.raw_request_headers() else {
            return read(None);
        };
        // SAFETY: each pointer and length describes a name or value in the
        // request's header map, which lives until this hook returns and
        // does not change while `self` is borrowed mutably (no setter can
        // be called meanwhile); the slices do not outlive `read`.
        // Each name and value as the core reads it (`header_text`).
        let pairs: Vec<(&str, &str)> = raw
            .iter()
            .map(|h| unsafe {
                (
                    header_text(lent(h.key_ptr, h.key_length)),
                    header_text(lent(h.value_ptr, h.value_length)),
                )
            })
            .collect();
        read(Some(&pairs))
    }

    /// A copy of the request headers (for the access log of a refusal,
    /// where the map may already have changed); `None` when Envoy cannot
    /// give them.
    pub fn request_headers_copy(&self) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let raw = self.raw_request_headers()?;
        // SAFETY: as in `with_request_headers`; the bytes are copied before
        // this function returns, and nothing changes the map meanwhile.
        Some(
            raw.iter()
                .map(|h| unsafe {
                    (
                        lent(h.key_ptr, h.key_length).to_vec(),
                        lent(h.value_ptr, h.value_length).to_vec(),
                    )
                })
                .collect(),
        )
    }

    /// Removes every value of a request header. False when Envoy could not.
    pub fn remove_request_header(&self, name: &str) -> bool {
        // SAFETY: live filter; the name buffer lives for the call; a null
        // value removes the header.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                REQUEST_HEADERS,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::NULL,
            )
        }
    }

    /// Adds a request header value. False when Envoy could not.
    pub fn add_request_header(&self, name: &str, value: &str) -> bool {
        // SAFETY: live filter; both buffers live for the call; Envoy copies.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.ptr,
                REQUEST_HEADERS,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            )
        }
    }

    /// Answers the request locally.
    pub fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &str, details: &str) {
        let mut raw: Vec<ModuleHeader> = headers.iter().map(|(n, v)| ModuleHeader::of(n, v)).collect();
        // SAFETY: live filter; the header array and both buffers live for
        // the call; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                status,
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(details.as_bytes()),
            );
        }
    }

    /// Sets a filter-state value of this stream (for the access log).
    pub fn set_filter_state(&self, key: &str, value: &str) -> bool {
        // SAFETY: live filter; both buffers live for the call; Envoy copies.
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.ptr,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            )
        }
    }

    /// Lets a request that waited go on.
    pub fn continue_decoding(&self) {
        // SAFETY: live filter.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.ptr) }
    }

    /// Starts a callout tied to this stream; Envoy's id for it, or `None`
    /// when Envoy refused.
    pub fn callout(&self, cluster: &str, headers: &[(&str, &str)], body: &[u8], timeout_ms: u64) -> Option<u64> {
        let call = Call {
            cluster,
            headers,
            body,
            timeout_ms,
        };
        // SAFETY: the live filter of this hook call.
        unsafe { call.start(envoy_dynamic_module_callback_http_filter_http_callout, self.ptr) }
    }

    /// A scheduler that runs this stream's scheduled hook on its thread,
    /// from any thread.
    pub fn scheduler(&self) -> Option<StreamScheduler> {
        // SAFETY: live filter; the scheduler Envoy allocates is owned by
        // the returned handle, which deletes it once.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.ptr) };
        (!ptr.is_null()).then_some(StreamScheduler { ptr })
    }

    /// Counts or records a value on a metric defined by this filter's
    /// configuration. A stats failure must not change a decision: the
    /// result is ignored.
    pub fn metric(&self, metric: Metric, value: u64) {
        let record: MetricFn = match metric.kind {
            MetricKind::Counter => envoy_dynamic_module_callback_http_filter_increment_counter,
            MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_set_gauge,
            MetricKind::Histogram => envoy_dynamic_module_callback_http_filter_record_histogram_value,
        };
        // SAFETY: live filter; no labels (null, 0), as defined.
        let _ = unsafe { record(self.ptr, metric.id, std::ptr::null_mut(), 0, value) };
    }
}

/// A filter configuration in Envoy (`DynamicModuleHttpFilterConfig`). It
/// outlives every filter created from it and the module's own
/// configuration state (Envoy calls the destroy hook last).
#[derive(Debug, Clone, Copy)]
pub struct Config {
    ptr: *mut c_void,
}

// SAFETY: the pointer is only handed back to Envoy. The callbacks called
// with it from worker threads (metric increments) are thread-safe in Envoy
// (atomic stats); the others (callouts, the scheduler) are called only from
// the main thread's hooks, where Envoy calls them itself.
unsafe impl Send for Config {}
// SAFETY: as for `Send`: shared use only calls thread-safe callbacks.
unsafe impl Sync for Config {}

impl Config {
    /// Defines a metric (during configuration, on the main thread).
    pub fn define(&self, kind: MetricKind, name: &str) -> Option<Metric> {
        let define: DefineFn = match kind {
            MetricKind::Counter => envoy_dynamic_module_callback_http_filter_config_define_counter,
            MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge,
            MetricKind::Histogram => envoy_dynamic_module_callback_http_filter_config_define_histogram,
        };
        let mut id: usize = 0;
        // SAFETY: live configuration; the name lives for the call and
        // Envoy copies it; no labels; `id` is a live out-parameter.
        let result = unsafe {
            define(
                self.ptr,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == SUCCESS).then_some(Metric { kind, id })
    }

    /// Counts or records on a metric outside any stream (ignored on failure).
    pub fn metric(&self, metric: Metric, value: u64) {
        let record: MetricFn = match metric.kind {
            MetricKind::Counter => envoy_dynamic_module_callback_http_filter_config_increment_counter,
            MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_config_set_gauge,
            MetricKind::Histogram => envoy_dynamic_module_callback_http_filter_config_record_histogram_value,
        };
        // SAFETY: live configuration; no labels (null, 0), as defined.
        let _ = unsafe { record(self.ptr, metric.id, std::ptr::null_mut(), 0, value) };
    }

    /// Starts a callout owned by the configuration (main thread only);
    /// Envoy's id for it, or `None` when Envoy refused.
    pub fn callout(&self, cluster: &str, headers: &[(&str, &str)], body: &[u8], timeout_ms: u64) -> Option<u64> {
        let call = Call {
            cluster,
            headers,
            body,
            timeout_ms,
        };
        // SAFETY: the live configuration, on the main thread.
        unsafe { call.start(envoy_dynamic_module_callback_http_filter_config_http_callout, self.ptr) }
    }

    /// A scheduler that runs the configuration's scheduled hook on the
    /// main thread, from any thread (created on the main thread).
    pub fn scheduler(&self) -> Option<ConfigScheduler> {
        // SAFETY: live configuration, main thread; the returned handle owns
        // the scheduler and deletes it once.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.ptr) };
        (!ptr.is_null()).then_some(ConfigScheduler { ptr })
    }
}

/// Runs a stream's scheduled hook on its worker thread; committed from any
/// thread, deleted when dropped.
#[derive(Debug)]
pub struct StreamScheduler {
    ptr: *mut c_void,
}

// SAFETY: Envoy's scheduler may be committed from any thread (the ABI says
// so); deleting it happens once, from whichever thread drops the handle,
// never while another thread commits (the owner holds it in a mutex).
unsafe impl Send for StreamScheduler {}

impl StreamScheduler {
    pub fn commit(&self) {
        // SAFETY: a live scheduler (deleted only on drop).
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.ptr, 0) }
    }
}

impl Drop for StreamScheduler {
    fn drop(&mut self) {
        // SAFETY: created by `scheduler_new`, deleted exactly once here.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.ptr) }
    }
}

/// Runs the configuration's scheduled hook on the main thread; committed
/// from any thread (the ticker), deleted when dropped.
#[derive(Debug)]
pub struct ConfigScheduler {
    ptr: *mut c_void,
}

// SAFETY: as for `StreamScheduler`: commit is thread-safe; the ticker thread
// that commits is joined before the handle is dropped.
unsafe impl Send for ConfigScheduler {}
// SAFETY: shared use only commits, which is thread-safe.
unsafe impl Sync for ConfigScheduler {}

impl ConfigScheduler {
    pub fn commit(&self) {
        // SAFETY: a live scheduler (deleted only on drop).
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.ptr, 0) }
    }
}

impl Drop for ConfigScheduler {
    fn drop(&mut self) {
        // SAFETY: created by `scheduler_new`, deleted exactly once here.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.ptr) }
    }
}

// ----------------------------------------------------------- event hooks

/// Runs `body`, catching a panic so it never unwinds into Envoy: the
/// caller then gets `failed` (which fails closed).
fn guarded<R>(what: &str, failed: R, body: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => {
            // The panic message went to stderr through the panic hook;
            // Envoy's log gets which hook failed.
            let _ = catch_unwind(|| log(Level::Error, &format!("erp-edge-validator: {what} panicked; refused")));
            failed
        }
    }
}

/// The configuration state behind a module pointer Envoy hands back.
///
/// SAFETY (callers): `ptr` must be a pointer returned by the config-new
/// hook and not yet passed to the config-destroy hook.
unsafe fn config_state<'a>(ptr: *const c_void) -> &'a ConfigState {
    &*(ptr as *const ConfigState)
}

/// The stream state behind a module pointer Envoy hands back.
///
/// SAFETY (callers): `ptr` must be a pointer returned by the filter-new hook
/// and not yet passed to the filter-destroy hook.
unsafe fn stream<'a>(ptr: *const c_void) -> &'a Stream {
    &*(ptr as *const Stream)
}

/// `len` bytes Envoy lends at `ptr` (none when null).
///
/// SAFETY (callers): `ptr` and `len` must describe memory Envoy keeps valid
/// and unchanged for the returned lifetime.
unsafe fn lent<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

/// The bytes of a buffer Envoy lends for the current hook.
///
/// SAFETY (callers): the buffer must come from Envoy for this hook call.
unsafe fn envoy_bytes<'a>(buffer: EnvoyBuffer) -> &'a [u8] {
    lent(buffer.ptr, buffer.length)
}

fn filter<'hook>(ptr: *mut c_void) -> Filter<'hook> {
    Filter {
        ptr,
        _hook: PhantomData,
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    guarded("program init", std::ptr::null(), || {
        filter::program_init();
        ABI_VERSION_C.as_ptr()
    })
}

/// # Safety
///
/// Envoy passes its configuration object and two buffers valid for
/// the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config: *mut c_void,
    name: EnvoyBuffer,
    bytes: EnvoyBuffer,
) -> *const c_void {
    guarded("configuration", std::ptr::null(), || {
        // SAFETY: both buffers are Envoy's, for this call.
        let (name, bytes) = unsafe { (envoy_bytes(name), envoy_bytes(bytes)) };
        match filter::configure(Config { ptr: config }, name, bytes) {
            Some(state) => Box::into_raw(Box::new(state)) as *const c_void,
            None => std::ptr::null(),
        }
    })
}

/// # Safety
///
/// `ptr` is a configuration this module returned; Envoy destroys
/// it once, after every filter made from it.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(ptr: *const c_void) {
    guarded("configuration destroy", (), || {
        if !ptr.is_null() {
            // SAFETY: made by `Box::into_raw` in the config-new hook, freed once.
            let state = unsafe { Box::from_raw(ptr as *mut ConfigState) };
            filter::unconfigure(*state);
        }
    })
}

/// Per-route configuration is not supported: refused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    std::ptr::null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_ptr: *const c_void) {}

/// # Safety
///
/// `config` is a configuration this module returned; `envoy` is the
/// new stream's filter.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _envoy: *mut c_void,
) -> *const c_void {
    guarded("filter new", std::ptr::null(), || {
        // SAFETY: a live configuration of this module.
        let state = unsafe { config_state(config) };
        Box::into_raw(Box::new(filter::new_stream(state))) as *const c_void
    })
}

/// # Safety
///
/// Envoy's filter and this module's stream, for this call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: *mut c_void,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    let mut envoy_filter = filter(envoy);
    let status = guarded("request headers", None, || {
        // SAFETY: a live stream of this module.
        let stream = unsafe { stream(module) };
        Some(stream.request_headers(&mut envoy_filter, end_of_stream))
    });
    match status {
        Some(status) => status as u32,
        None => {
            // Fail closed: whatever happened, this request does not pass.
            let _ = catch_unwind(AssertUnwindSafe(|| filter::refuse_after_panic(&envoy_filter)));
            HeadersStatus::Stop as u32
        }
    }
}

/// # Safety
///
/// Envoy's filter and this module's stream, for this call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _envoy: *mut c_void,
    module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    guarded("request body", DataStatus::Hold, || {
        // SAFETY: a live stream of this module.
        unsafe { stream(module) }.hold_while_waiting()
    })
    .code()
}

/// # Safety
///
/// Envoy's filter and this module's stream, for this call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _envoy: *mut c_void,
    module: *const c_void,
) -> u32 {
    guarded("request trailers", DataStatus::Hold, || {
        // SAFETY: a live stream of this module.
        unsafe { stream(module) }.hold_while_waiting()
    })
    .code()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _envoy: *mut c_void,
    _module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _envoy: *mut c_void,
    _module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _envoy: *mut c_void,
    _module: *const c_void,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(_envoy: *mut c_void, _module: *const c_void) {}

/// # Safety
///
/// a stream this module returned; Envoy destroys it once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: *const c_void) {
    guarded("filter destroy", (), || {
        if !module.is_null() {
            // SAFETY: made by `Box::into_raw` in the filter-new hook, freed once.
            let stream = unsafe { Box::from_raw(module as *mut Stream) };
            stream.done();
        }
    })
}

/// The parts of a callout's answer Envoy lends for the hook.
///
/// SAFETY (callers): the arrays come from Envoy for this hook call (either
/// may be null when empty).
unsafe fn answer<'a>(
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> Answer<'a> {
    let headers: &[EnvoyHeader] = if headers.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(headers, headers_size)
    };
    let chunks: &[EnvoyBuffer] = if chunks.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(chunks, chunks_size)
    };
    let status = headers
        .iter()
        .find(|h| lent(h.key_ptr, h.key_length) == b":status")
        .map(|h| lent(h.value_ptr, h.value_length));
    Answer {
        completed: result == SUCCESS,
        status,
        chunks: chunks.iter().map(|c| envoy_bytes(*c)).collect(),
    }
}

/// # Safety
///
/// Envoy's filter, this module's stream, and the answer's arrays,
/// for this call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy: *mut c_void,
    module: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    let envoy_filter = filter(envoy);
    guarded("callout answer", (), || {
        // SAFETY: a live stream; the arrays are Envoy's for this call.
        let (stream, answer) = unsafe {
            (
                stream(module),
                answer(result, headers, headers_size, chunks, chunks_size),
            )
        };
        stream.answered(&envoy_filter, callout_id, &answer);
    })
}

/// # Safety
///
/// Envoy's filter and this module's stream, for this call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    envoy: *mut c_void,
    module: *const c_void,
    _event_id: u64,
) {
    let envoy_filter = filter(envoy);
    let done = guarded("scheduled event", false, || {
        // SAFETY: a live stream of this module.
        unsafe { stream(module) }.scheduled(&envoy_filter);
        true
    });
    if !done {
        let _ = catch_unwind(AssertUnwindSafe(|| filter::refuse_after_panic(&envoy_filter)));
    }
}

/// # Safety
///
/// this module's configuration, on the main thread.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _envoy: *mut c_void,
    module: *const c_void,
    _event_id: u64,
) {
    guarded("tick", (), || {
        // SAFETY: a live configuration of this module.
        unsafe { config_state(module) }.tick();
    })
}

/// # Safety
///
/// this module's configuration and the answer's arrays, for this
/// call, on the main thread.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _envoy: *mut c_void,
    module: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    guarded("callout answer", (), || {
        // SAFETY: a live configuration; the arrays are Envoy's for this call.
        let (state, answer) = unsafe {
            (
                config_state(module),
                answer(result, headers, headers_size, chunks, chunks_size),
            )
        };
        state.answered(callout_id, &answer);
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _envoy: *mut c_void,
    _module: *const c_void,
    _status: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    0
}

// The hooks of features this filter does not use (streamed callouts,
// watermarks): Envoy looks them up, they do nothing.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream: u64,
    _headers: *const EnvoyHeader,
    _size: usize,
    _end: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream: u64,
    _data: *const EnvoyBuffer,
    _count: usize,
    _end: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream: u64,
    _trailers: *const EnvoyHeader,
    _size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream: u64,
    _headers: *const EnvoyHeader,
    _size: usize,
    _end: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream: u64,
    _data: *const EnvoyBuffer,
    _count: usize,
    _end: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream: u64,
    _trailers: *const EnvoyHeader,
    _size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _envoy: *mut c_void,
    _module: *const c_void,
    _stream: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: *mut c_void,
    _module: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: *mut c_void,
    _module: *const c_void,
) {
}
