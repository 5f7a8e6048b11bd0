//! erp-edge-validator: an Envoy proxy-wasm filter that authenticates requests
//! to ERP.net's Domain API at the edge.
//!
//! Everything but [`filter`] is pure Rust with no host calls, so the decision
//! core builds and tests natively (and, later, in a browser). The module
//! map follows a request: [`credential`] finds the token, [`policy`] says
//! what the route needs, [`jwt`] and [`jwks`] verify, [`decision`] ties them
//! together, [`introspection`] and [`cache`] handle `enrt_` reference tokens,
//! and [`rejection`] says no on the wire.

pub mod cache;
pub mod config;
pub mod credential;
pub mod decision;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod key_refresh;
pub mod monty;
pub mod policy;
pub mod principal;
pub mod rejection;
pub mod rs256;
pub mod verified;

#[cfg(target_arch = "wasm32")]
mod filter;

#[cfg(test)]
mod testkit;
