//! The host's side of the ports the core defines, as proxy-wasm calls:
//! shared data, the clock, Envoy's RSA verifier, a callout's answer, stats
//! and filter state. Used only by [`crate::envoy::filter`].

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};

use crate::envoy::foreign;
use crate::host::{CalloutResponse, Now, RsaHost, SharedStore};
use crate::stats::{Kind, Stat};

/// Envoy's shared data, visible to every worker.
pub(super) struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}

/// The host clock, or `None` when it cannot be read (the worker then answers 503; no fallback time).
pub(super) fn now() -> Option<Now> {
    let elapsed = hostcalls::get_current_time().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(Now {
        secs: elapsed.as_secs(),
        ms: u64::try_from(elapsed.as_millis()).ok()?,
    })
}

/// Envoy's RSA verification (BoringSSL), through the `verify_signature` foreign function.
pub(super) struct HostRsa;

impl RsaHost for HostRsa {
    fn verify_pkcs1_sha256(&self, spki_der: &[u8], message: &[u8], signature: &[u8]) -> Option<bool> {
        let arguments = foreign::rs256_arguments(spki_der, message, signature);
        let answer = hostcalls::call_foreign_function("verify_signature", Some(&arguments)).ok()??;
        foreign::read_result(&answer)
    }
}

/// The answer to the callout being delivered.
pub(super) struct HostResponse {
    pub body_size: usize,
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
pub(super) struct Metrics(Vec<u32>);

impl Metrics {
    pub(super) fn define() -> Self {
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
    pub(super) fn count(&self, stat: Stat, value: u64) {
        if let Some(id) = self.0.get(stat as usize) {
            let _ = match stat.kind() {
                Kind::Counter => hostcalls::increment_metric(*id, 1),
                Kind::Gauge | Kind::Histogram => hostcalls::record_metric(*id, value),
            };
        }
    }
}

#[link(wasm_import_module = "env")]
#[allow(unsafe_code)]
extern "C" {
    // The SDK declares these imports too, but its wrappers panic (trap the
    // VM) on any status but Ok, and its map reader copies every header.
    #[allow(clashing_extern_declarations)]
    fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> u32;
    #[allow(clashing_extern_declarations)]
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
}

/// The request's headers as the host serializes them (read with
/// [`crate::envoy::header_map::pairs`]), or `None` when the host cannot give them.
#[allow(unsafe_code)]
pub(super) fn request_header_bytes() -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a length to the two live
    // out-parameters, and nothing else.
    let status = unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size) };
    if status != 0 {
        return None;
    }
    if data.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: the host filled a buffer of `size` bytes it obtained from
    // this module's `proxy_on_memory_allocate` (the SDK's: a boxed byte
    // slice of exactly `size`, the layout of a `Vec<u8>` with that
    // capacity), and hands its ownership over, as the SDK's own reader
    // assumes.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Sets a property of the current stream (Envoy: filter state
/// `wasm.<name>`, for the access log). Whether it took is ignored: a log
/// field must not change a decision.
#[allow(unsafe_code)]
pub(super) fn set_property(name: &str, value: &str) {
    // SAFETY: both pointers and lengths describe live, readable slices for
    // the duration of the call; the host only reads them.
    unsafe {
        proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len());
    }
}
