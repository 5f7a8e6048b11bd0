//! erp-edge-validator: an Envoy proxy-wasm filter that authenticates requests
//! to ERP.net's Domain API at the edge.
//!
//! Everything but `filter` and `envoy_host` (the modules that import
//! `proxy_wasm`, built only for wasm32) is pure Rust with no host calls, so
//! the whole core builds and tests natively. The module map follows a
//! request:
//!
//! - `filter`: the host adapter. Reads the request head and the clock, hands
//!   events to the worker, carries out the effects it returns; `envoy_host`
//!   implements the core's ports (shared data, clock, RSA, stats, filter
//!   state) as host calls.
//! - `worker`: one worker's coordination as a state machine (events in,
//!   effects out): callouts shared by waiting requests, claims across
//!   workers, key fetches, ticks.
//! - [`decision`]: one request's decision: a final `Verdict`, or a `Step`
//!   that needs an introspection answer or fresh keys.
//! - `credential` finds the token; `policy` says what the route needs;
//!   [`jwt`], `jwks`, `rs256` and `monty` verify JWTs; `introspection`
//!   and `cache` handle `enrt_` reference tokens; `key_refresh` fetches and
//!   shares signing keys; [`verified`] is a worker's memory of verified
//!   credentials; `principal` is who a credential speaks for and the
//!   identity headers; `rejection` says no on the wire; `stats` names the
//!   counters; [`access_log`] is how a request ended, for Envoy's access log.
//! - Leaves: [`config`] and `config_error` (the configuration and how it
//!   names a wrong field), `algorithm`, `endpoint` (the identity-service
//!   endpoint fields both callouts use), `host` (the ports: shared data,
//!   clock reading, callouts), `secret` (redacted secrets, token hashes).
//!
//! The public modules are what benchmarks and tools outside the crate use.

pub mod access_log;
mod algorithm;
mod cache;
pub mod config;
mod config_error;
mod credential;
pub mod decision;
mod endpoint;
pub mod explain;
// The wire format of a host call the Envoy glue (wasm32 only) makes.
#[cfg_attr(not(all(target_arch = "wasm32", feature = "filter")), allow(dead_code))]
mod foreign;
// How the Envoy glue reads the request's headers, in place.
#[cfg_attr(not(all(target_arch = "wasm32", feature = "filter")), allow(dead_code))]
mod header_map;
mod host;
mod introspection;
mod jwks;
mod jws;
pub mod jwt;
mod key_refresh;
pub mod lint;
mod monty;
mod policy;
mod principal;
mod rejection;
mod rs256;
mod secret;
mod stats;
pub mod verified;
pub mod worker;

#[cfg(all(target_arch = "wasm32", feature = "filter"))]
mod envoy_host;
#[cfg(all(target_arch = "wasm32", feature = "filter"))]
mod filter;

/// Fuzz-target bodies (`fuzz/`), replayed by the unit tests; never in the filter.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;

/// Verification needs no randomness; anything asking for it (the `rsa`
/// crate's getrandom dependency) gets an error instead of a `wasm-bindgen`
/// import Envoy cannot provide.
#[cfg(target_arch = "wasm32")]
fn no_randomness(_: &mut [u8]) -> Result<(), getrandom::Error> {
    Err(getrandom::Error::UNSUPPORTED)
}
#[cfg(target_arch = "wasm32")]
getrandom::register_custom_getrandom!(no_randomness);

#[cfg(test)]
mod testkit;

#[cfg(test)]
mod curve_tests;
