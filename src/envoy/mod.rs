//! The Envoy glue, and the only users of `proxy_wasm`: the root and HTTP
//! contexts that carry out the worker's effects ([`filter`], wasm32 only),
//! the core's ports as host calls (`ports`, wasm32 only), and the wire
//! formats they read and write, pure and tested natively: the header map
//! as the host hands it over (`header_map`) and the `verify_signature`
//! foreign function's messages (`foreign`).

// Pure, but used only by the wasm32 glue.
#[cfg_attr(not(all(target_arch = "wasm32", feature = "filter")), allow(dead_code))]
pub(crate) mod foreign;
#[cfg_attr(not(all(target_arch = "wasm32", feature = "filter")), allow(dead_code))]
pub(crate) mod header_map;

#[cfg(all(target_arch = "wasm32", feature = "filter"))]
mod filter;
#[cfg(all(target_arch = "wasm32", feature = "filter"))]
mod ports;
