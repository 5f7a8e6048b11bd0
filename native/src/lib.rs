//! erp-edge-validator as a native Envoy dynamic module: the same decision
//! core as the wasm filter (`erp_edge_validator::hosting`), run by Envoy
//! directly, without a wasm VM.
//!
//! - [`ffi`]: Envoy 1.40's dynamic-module ABI, the hooks Envoy calls and the
//!   callbacks this module calls; the only `unsafe` code, and where every
//!   panic is caught.
//! - `filter`: carries out the worker's effects, as the wasm filter's
//!   `envoy/filter.rs` does; decides nothing.
//! - `rsa`: RS256 signatures: RSA-2048 with AVX-512 IFMA where the CPU has
//!   it (`ifma`), otherwise and for other sizes with AWS-LC; each key
//!   prepared once.
//! - `logger`: the `log` crate's lines into Envoy's log.
//!
//! `docs/native.md` says when to choose it over the wasm filter.

#![deny(unsafe_code)]
#![warn(unreachable_pub)]

// The ABI: exported hooks (`no_mangle`), imported callbacks, raw pointers.
#[allow(unsafe_code)]
pub mod ffi;
mod filter;
#[cfg(target_arch = "x86_64")]
mod ifma;
mod logger;
pub mod rsa;
