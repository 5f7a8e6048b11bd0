//! The world around the filter, for tests and `make run`: an ERP.net
//! identity service emulator, an echo upstream standing in for the Domain
//! API, and a harness that renders the Envoy configuration and runs Envoy.
//! Never compiled into the filter.

pub mod bench;
pub mod client;
pub mod deploy;
pub mod echo;
pub mod envoy;
pub mod idp;
pub mod pages;
pub mod ports;
pub mod server;
pub mod soak;
pub mod stack;
pub mod tls;
pub mod tokens;
pub mod verify_costs;
