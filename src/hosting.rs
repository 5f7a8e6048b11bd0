//! What a host of the core needs, in one place: the worker and the effects
//! it returns, the ports it is given (shared store, clock reading, callout
//! answers, RSA), and the wire forms of its answers (the RFC 6750 reply,
//! the stats, the access-log fields).
//!
//! The wasm filter (`envoy/filter.rs`) reaches these from inside the crate;
//! the native Envoy dynamic module (`native/`) reaches them here. Both hosts
//! carry out the same effects and decide nothing themselves.

pub use crate::config::{Config, RsaVerifier, DEFAULT_REALM};
pub use crate::decision::{Allowed, RequestHead};
pub use crate::host::{header_text, CalloutResponse, MemoryStore, Now, RsaHost, SharedStore, NOT_TEXT};
pub use crate::jwt::rs256::{host_agrees, is_pkcs1_sha256};
pub use crate::rejection::{Rejection, WireResponse};
pub use crate::stats::{Kind, Stat};
pub use crate::worker::access_log::{self, Ending, Fields};
pub use crate::worker::{CallId, ContextId, Effect, Purpose, Worker};
