//! One request, pure: the checks every request passes ([`request`]), the
//! one credential it carries ([`credential`]), the [`Engine`] that decides
//! it, and the worker's memory of credentials already verified
//! ([`verified_cache`]), which the engine consults first.

pub mod credential;
mod engine;
pub mod request;
pub mod verified_cache;

pub use engine::{Allowed, Counts, Engine, PendingJwt, PendingReference, Step, Verdict};
pub use request::RequestHead;
