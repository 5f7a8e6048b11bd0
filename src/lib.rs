//! erp-edge-validator: an Envoy proxy-wasm filter that authenticates requests
//! to ERP.net's Domain API at the edge.
//!
//! A request's path through the crate, folder by folder:
//!
//! 1. [`envoy`]: Envoy hands the request head to the HTTP context
//!    (`envoy/filter.rs`), which reads the clock once and passes both to
//!    the worker. The only code that calls the host (`proxy_wasm`).
//! 2. [`worker`]: one worker's state machine, events in and effects out:
//!    introspection callouts shared by waiting requests
//!    (`worker/introspection.rs`), signing keys fetched and picked up
//!    (`worker/keys.rs`), and the access-log fields of how a request ended.
//! 3. [`decision`]: one request, pure: the checks every request passes,
//!    the one credential, the [`decision::Engine`] that decides, and the
//!    memory of credentials already verified.
//! 4. [`jwt`] verifies JWT access tokens (JWS form, JWKS, algorithms, RS256
//!    and its Montgomery arithmetic, the remote key set); [`reference`]
//!    asks about `enrt_` reference tokens (introspection, the shared cache).
//! 5. `rejection` says no on the wire (RFC 6750), one place for every
//!    reason, each a type (`token_problem`: why a token is refused);
//!    `stats` counts by the same types.
//!
//! Below them, leaves every folder may use: [`config`] (assembled from each
//! section's own type), `policy` (route rules → required scopes),
//! `config_error` (the error that names a field), `endpoint` (the identity
//! service's callout fields), `principal` (who a credential speaks for, the
//! identity headers), `host` (the ports the core needs: shared data, clock,
//! callouts, RSA), `secret` (redacted secrets, token hashes).
//!
//! Beside them, never in the filter: [`tools`] (explain and lint, feature
//! `tools`, for the inspector), [`fuzzing`] (the fuzz targets' bodies,
//! feature `fuzzing`) and `testing` (the unit tests' fixtures).
//!
//! Everything outside `envoy/filter.rs` and `envoy/ports.rs` is pure Rust
//! and builds and tests natively.

#![deny(unsafe_code)]
#![warn(unreachable_pub)]

pub mod config;
mod config_error;
pub mod decision;
mod endpoint;
mod envoy;
/// Fuzz-target bodies (`fuzz/`), replayed by the unit tests; never in the filter.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod host;
pub mod hosting;
pub mod jwt;
mod policy;
mod principal;
mod reference;
mod rejection;
mod sealed;
mod secret;
mod stats;
/// The unit tests' fixtures.
#[cfg(test)]
mod testing;
mod token_problem;
#[cfg(any(test, feature = "tools"))]
pub mod tools;
pub mod worker;

/// Verification needs no randomness; anything asking for it (the `rsa`
/// crate's getrandom dependency) gets an error instead of a `wasm-bindgen`
/// import Envoy cannot provide.
#[cfg(target_arch = "wasm32")]
fn no_randomness(_: &mut [u8]) -> Result<(), getrandom::Error> {
    Err(getrandom::Error::UNSUPPORTED)
}
#[cfg(target_arch = "wasm32")]
getrandom::register_custom_getrandom!(no_randomness);
