//! The bodies of the fuzz targets (`fuzz/fuzz_targets/`), one function per
//! input the filter reads from outside: a request head, a JWT, a JWKS
//! document, an introspection answer, the configuration, the records in
//! Envoy's shared data, route matching, and RS256 signatures against the
//! `rsa` crate.
//!
//! Each function takes arbitrary bytes, runs the same code the filter runs,
//! and panics when an invariant breaks (an allowed request that carries no
//! credential an independent verifier accepts, a verifier that disagrees
//! with the `rsa` crate, a record read back differently than written). The
//! unit test at the end replays the committed seed corpora and every
//! minimised crash under `tests/fuzz/regressions/` through them, so a crash once
//! found stays fixed in `make test`.
//!
//! Built only for tests and with the `fuzzing` feature: never in the filter.
// A fuzz target reports a broken invariant by panicking.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::decision::verified_cache::Remembered;
use crate::decision::{Engine, RequestHead, Step, Verdict};
use crate::host::{MemoryStore, SharedStore};
use crate::jwt::algorithm::Algorithm;
use crate::jwt::jwks::KeySet;
use crate::jwt::key_sync::{KeySync, KeyWait};
use crate::jwt::rs256::PreparedKey;
use crate::jwt::{self, ClaimRules, JwtError};
use crate::policy::{Access, Policy, RouteRule, UnmatchedRoutes};
use crate::reference::cache::ReferenceCache;
use crate::reference::introspection::{read_answer, Answer, AnswerRules};
use crate::rejection::Rejection;
use crate::secret::hash_token;

/// The fixed clock of every target (seconds); the seed tokens are valid at it.
pub const NOW: u64 = 1_800_000_000;
/// The issuer and audience of the seed tokens.
pub const ISSUER: &str = "https://idp.erp.test/id";
pub const AUDIENCE: &str = "DomainAPI";

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets, by the name of their corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("request_head", request_head),
    ("jwt", jwt),
    ("jwks", jwks),
    ("introspection", introspection),
    ("config", config),
    ("shared_state", shared_state),
    ("route", route),
    ("rs256", rs256),
];

mod keys;
mod oracles;
mod targets;

pub use keys::{curve_keys, keys, pkcs1_sha256, CurveKeys, FuzzKey};
pub use targets::{config, config_json, introspection, jwks, jwt, request_head, route, rs256, shared_state};
// The three parts share their helpers.
#[allow(unused_imports)]
use {keys::*, oracles::*, targets::*};

#[cfg(test)]
mod replay;
