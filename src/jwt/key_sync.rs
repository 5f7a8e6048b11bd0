//! Signing keys from the identity service: when to fetch, who fetches, and
//! how a fetched JWKS is shared with every worker.
//!
//! Every worker's root context ticks; at most one of them fetches per period
//! (a compare-and-swap claim in shared data). A good set is published in
//! shared data with a version; each worker re-parses only when the version
//! changes, on its tick, never on the request path. A failed fetch keeps the
//! last good set and retries with backoff. A token with an unknown `kid` may
//! force an early fetch, at most once per cooldown.

use std::fmt;

use serde::Deserialize;

use crate::config_error::{check_fields, ConfigError};
use crate::endpoint::Endpoint;
use crate::host::{Callout, SharedStore};
use crate::jwt::algorithm::Algorithm;
use crate::jwt::jwks::{JwksError, KeySet};

/// `remote_jwks` in the plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// Envoy cluster of the identity service. Required.
    pub cluster: String,
    /// `:authority` of the fetch. Required.
    pub authority: String,
    /// Path of the JWKS. Default `/id/.well-known/openid-configuration/jwks`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Seconds between fetches of a good set. Default 600; 1 to 86400.
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    /// Fetch timeout in milliseconds. Default 2000; 100 to 30000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Least time between fetches forced by unknown `kid`s. Default 30; 0 to 3600.
    #[serde(default = "default_cooldown")]
    pub unknown_kid_cooldown_seconds: u64,
    /// Largest JWKS accepted, in bytes. Default 65536.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// How long fetched keys are trusted without a good fetch, in seconds:
    /// past it, JWTs signed by them get 503 rather than being checked
    /// against keys the identity service may have withdrawn. Default 86400;
    /// 60 to 604800.
    #[serde(default = "default_max_stale")]
    pub max_stale_seconds: u64,
}

fn default_path() -> String {
    "/id/.well-known/openid-configuration/jwks".into()
}
fn default_refresh() -> u64 {
    600
}
fn default_timeout_ms() -> u64 {
    2000
}
fn default_cooldown() -> u64 {
    30
}
fn default_max_bytes() -> usize {
    65_536
}
fn default_max_stale() -> u64 {
    86_400
}

/// First retry after a failed fetch; doubles up to the refresh period.
pub const FIRST_BACKOFF_MS: u64 = 1000;

/// How long past its timeout a claimed fetch (or callout) is still waited
/// for before another worker may take over: the host reports a timed-out
/// call a little after the timeout itself.
pub const CLAIM_SLACK_MS: u64 = 500;

impl RemoteJwksConfig {
    /// Where the fetch goes.
    pub fn endpoint(&self) -> Endpoint<'_> {
        Endpoint {
            cluster: &self.cluster,
            authority: &self.authority,
            path: &self.path,
            timeout_ms: self.timeout_ms,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.endpoint().validate("remote_jwks", (100, 30_000))?;
        check_fields(
            "remote_jwks",
            &[
                (
                    "refresh_seconds",
                    (1..=86_400).contains(&self.refresh_seconds),
                    "must be between 1 and 86400",
                ),
                (
                    "unknown_kid_cooldown_seconds",
                    self.unknown_kid_cooldown_seconds <= 3600,
                    "must be at most 3600",
                ),
                (
                    "max_bytes",
                    (1024..=1 << 20).contains(&self.max_bytes),
                    "must be between 1024 and 1048576",
                ),
                (
                    "max_stale_seconds",
                    (60..=604_800).contains(&self.max_stale_seconds),
                    "must be between 60 and 604800",
                ),
            ],
        )
    }

    /// The fetch request.
    pub fn callout(&self) -> Callout {
        self.endpoint()
            .callout("GET", vec![("accept", "application/json".into())], Vec::new())
    }

    /// Checks a fetched JWKS: status 200, size, a JWKS with a usable key.
    pub fn read(
        &self,
        status: Option<&str>,
        body: Option<&[u8]>,
        algorithms: &[Algorithm],
    ) -> Result<KeySet, FetchError> {
        if status != Some("200") {
            return Err(FetchError::Status(status.map(str::to_owned)));
        }
        let body = body
            .filter(|b| b.len() <= self.max_bytes)
            .ok_or(FetchError::TooLarge(self.max_bytes))?;
        let keys = KeySet::from_json(body, algorithms).map_err(FetchError::Document)?;
        if keys.is_empty() {
            return Err(FetchError::NoUsableKey(keys.skipped_summary()));
        }
        Ok(keys)
    }
}

/// Why a fetched key set was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Not `200` (a failed call answers 503/504).
    Status(Option<String>),
    /// The body is over this many bytes.
    TooLarge(usize),
    Document(JwksError),
    /// A JWKS, but every key was skipped (the summary says why).
    NoUsableKey(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(s) => write!(f, "status {}", s.as_deref().unwrap_or("none")),
            Self::TooLarge(limit) => write!(f, "the body is over the {limit}-byte limit"),
            Self::Document(e) => e.fmt(f),
            Self::NoUsableKey(summary) => write!(f, "no usable key ({summary})"),
        }
    }
}

/// The shared fetch state, one record for all workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchState {
    /// A fetch is in flight until this time (ms); 0 when none.
    pub in_flight_until_ms: u64,
    /// No periodic fetch before this time (ms).
    pub next_fetch_ms: u64,
    /// Failed fetches in a row (for backoff); 0 after a good one.
    pub failures: u32,
    /// When an unknown `kid` last forced a fetch (ms).
    pub last_forced_ms: u64,
    /// Fetches claimed so far: the number of the one in flight (or the last).
    pub claimed: u64,
    /// The number of the last completed fetch: a request that arrived when
    /// fewer had been claimed may trust its result.
    pub completed: u64,
    /// When the last good set was fetched (ms); 0: never.
    pub last_good_ms: u64,
}

impl FetchState {
    const BYTES: usize = 52;

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::BYTES);
        v.extend_from_slice(&self.in_flight_until_ms.to_be_bytes());
        v.extend_from_slice(&self.next_fetch_ms.to_be_bytes());
        v.extend_from_slice(&self.failures.to_be_bytes());
        v.extend_from_slice(&self.last_forced_ms.to_be_bytes());
        v.extend_from_slice(&self.claimed.to_be_bytes());
        v.extend_from_slice(&self.completed.to_be_bytes());
        v.extend_from_slice(&self.last_good_ms.to_be_bytes());
        v
    }

    /// Whether a fetch is in flight at `now_ms`.
    pub fn in_flight(&self, now_ms: u64) -> bool {
        self.in_flight_until_ms > now_ms
    }

    /// Where the fetches stand for a request that arrived when `seen`
    /// fetches had been claimed.
    pub fn wait_state(&self, seen: u64, now_ms: u64) -> KeyWait {
        if self.in_flight(now_ms) {
            KeyWait::InFlight
        } else if self.completed > seen {
            KeyWait::Fetched { ok: self.failures == 0 }
        } else {
            KeyWait::Idle
        }
    }

    fn decode(v: &[u8]) -> Option<Self> {
        if v.len() != Self::BYTES {
            return None;
        }
        let u64_at = |i: usize| v.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        Some(Self {
            in_flight_until_ms: u64_at(0)?,
            next_fetch_ms: u64_at(8)?,
            failures: u32::from_be_bytes(v.get(16..20)?.try_into().ok()?),
            last_forced_ms: u64_at(20)?,
            claimed: u64_at(28)?,
            completed: u64_at(36)?,
            last_good_ms: u64_at(44)?,
        })
    }
}

/// What a request waiting for keys may conclude now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWait {
    /// A fetch is in flight: keep waiting.
    InFlight,
    /// A fetch claimed after the request arrived has completed: decide
    /// with the published set. `ok` is false when that fetch failed.
    Fetched { ok: bool },
    /// Nothing in flight and nothing fetched since the request arrived.
    Idle,
}

/// Why a worker fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The refresh period passed (or there are no keys yet).
    Periodic,
    /// A token named a `kid` not in the set.
    UnknownKid,
}

/// Keys in shared data: the published set and the fetch state.
#[derive(Debug, Clone)]
pub struct KeySync {
    set_key: String,
    state_key: String,
    refresh_ms: u64,
    timeout_ms: u64,
    cooldown_ms: u64,
    max_stale_ms: u64,
}

impl KeySync {
    pub fn new(prefix: &str, config: &RemoteJwksConfig) -> Self {
        Self {
            set_key: format!("{prefix}.jwks"),
            state_key: format!("{prefix}.jwks.state"),
            refresh_ms: config.refresh_seconds.saturating_mul(1000),
            timeout_ms: config.timeout_ms,
            cooldown_ms: config.unknown_kid_cooldown_seconds.saturating_mul(1000),
            max_stale_ms: config.max_stale_seconds.saturating_mul(1000),
        }
    }

    fn state(&self, store: &dyn SharedStore) -> (FetchState, Option<u32>) {
        let (value, cas) = store.get(&self.state_key);
        (value.as_deref().and_then(FetchState::decode).unwrap_or_default(), cas)
    }

    /// The fetch state now. A worker deciding from it reads it **before**
    /// the published set: [`KeySync::finish`] publishes a set before it
    /// records the fetch as completed, so whatever this state says has
    /// completed is in the set read after it. Read the other way round,
    /// another worker's fetch can complete in between, and a request sees
    /// the old set with no fetch in flight (a 401 for a key just fetched).
    pub fn fetches(&self, store: &dyn SharedStore) -> FetchState {
        self.state(store).0
    }

    /// Whether a fetch has been claimed since `snapshot` was read: one a
    /// request that saw the snapshot may still wait for.
    pub fn claimed_since(&self, store: &dyn SharedStore, snapshot: &FetchState) -> bool {
        self.fetches(store).claimed != snapshot.claimed
    }

    /// Whether an unknown `kid` may force a fetch now (the cooldown passed).
    pub fn may_force(&self, store: &dyn SharedStore, now_ms: u64) -> bool {
        let state = self.state(store).0;
        state.last_forced_ms == 0 || now_ms >= state.last_forced_ms.saturating_add(self.cooldown_ms)
    }

    /// Claims the fetch if it is due (or forced and out of cooldown). True:
    /// this worker fetches now.
    pub fn try_claim(&self, store: &dyn SharedStore, reason: Reason, now_ms: u64) -> bool {
        let (mut state, cas) = self.state(store);
        if state.in_flight_until_ms > now_ms {
            return false;
        }
        match reason {
            Reason::Periodic if now_ms < state.next_fetch_ms => return false,
            Reason::UnknownKid
                if !(state.last_forced_ms == 0 || now_ms >= state.last_forced_ms.saturating_add(self.cooldown_ms)) =>
            {
                return false
            }
            Reason::UnknownKid => state.last_forced_ms = now_ms.max(1),
            Reason::Periodic => {}
        }
        state.in_flight_until_ms = now_ms.saturating_add(self.timeout_ms).saturating_add(CLAIM_SLACK_MS);
        state.claimed = state.claimed.wrapping_add(1);
        store.set(&self.state_key, &state.encode(), Some(cas.unwrap_or(0)))
    }

    /// Records a fetch's outcome. A good set (its raw JWKS and the
    /// [`KeySet::digest`] of its usable keys) is published with a new
    /// version only when its keys differ from the published ones, so an
    /// unchanged set costs the workers nothing; a failure keeps the old set
    /// and backs off.
    pub fn finish(&self, store: &dyn SharedStore, now_ms: u64, fetched: Option<(&[u8], [u8; 32])>) {
        let (mut state, _) = self.state(store);
        state.in_flight_until_ms = 0;
        state.completed = state.claimed;
        match fetched {
            Some((jwks, digest)) => {
                let published = store.get(&self.set_key).0;
                let (version, same) = published
                    .as_deref()
                    .and_then(|v| Some((v.get(..8)?.try_into().ok()?, v.get(8..40)?)))
                    .map_or((0, false), |(version, old)| {
                        (u64::from_be_bytes(version), old == digest)
                    });
                if !same {
                    let mut value = version.saturating_add(1).to_be_bytes().to_vec();
                    value.extend_from_slice(&digest);
                    value.extend_from_slice(jwks);
                    store.set(&self.set_key, &value, None);
                }
                state.failures = 0;
                state.last_good_ms = now_ms;
                state.next_fetch_ms = now_ms.saturating_add(self.refresh_ms);
            }
            None => {
                state.failures = state.failures.saturating_add(1);
                let backoff = FIRST_BACKOFF_MS.saturating_mul(1u64 << (state.failures - 1).min(16));
                state.next_fetch_ms = now_ms.saturating_add(backoff.min(self.refresh_ms.max(FIRST_BACKOFF_MS)));
            }
        }
        store.set(&self.state_key, &state.encode(), None);
    }

    /// The published set if its version differs from `known`: its version,
    /// the digest it was published with, and the JWKS document. Whoever
    /// reads it checks the digest against the keys it parses.
    pub fn newer_published(&self, store: &dyn SharedStore, known: u64) -> Option<(u64, [u8; 32], Vec<u8>)> {
        let value = store.get(&self.set_key).0?;
        let version = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
        let digest: [u8; 32] = value.get(8..40)?.try_into().ok()?;
        (version != known).then(|| (version, digest, value.get(40..).unwrap_or_default().to_vec()))
    }

    /// When the last good set was fetched (ms), if ever.
    pub fn last_good_ms(&self, store: &dyn SharedStore) -> Option<u64> {
        Some(self.state(store).0.last_good_ms).filter(|ms| *ms != 0)
    }

    /// Whether the last good fetch is older than `max_stale_seconds`: keys
    /// that old are no longer trusted (the identity service may have
    /// withdrawn them).
    pub fn is_stale(&self, store: &dyn SharedStore, now_ms: u64) -> bool {
        let state = self.state(store).0;
        state.last_good_ms == 0 || now_ms >= state.last_good_ms.saturating_add(self.max_stale_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemoryStore;
    use crate::testing as testkit;

    fn config() -> RemoteJwksConfig {
        serde_json::from_value(serde_json::json!({
            "cluster": "identity", "authority": "idp", "refresh_seconds": 10, "unknown_kid_cooldown_seconds": 30
        }))
        .unwrap()
    }

    fn sync() -> KeySync {
        KeySync::new("t", &config())
    }

    #[test]
    fn defaults_are_documented_values() {
        let c: RemoteJwksConfig =
            serde_json::from_value(serde_json::json!({"cluster": "identity", "authority": "idp"})).unwrap();
        assert_eq!(c.path, "/id/.well-known/openid-configuration/jwks");
        assert_eq!(c.refresh_seconds, 600);
        assert_eq!(c.timeout_ms, 2000);
        assert_eq!(c.unknown_kid_cooldown_seconds, 30);
        assert_eq!(c.max_bytes, 65_536);
        assert_eq!(c.max_stale_seconds, 86_400);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn one_worker_fetches_per_period() {
        let store = MemoryStore::default();
        let s = sync();
        assert!(s.try_claim(&store, Reason::Periodic, 1_000));
        assert!(!s.try_claim(&store, Reason::Periodic, 1_001), "in flight");
        s.finish(&store, 1_200, Some((b"{\"keys\":[]}", [1; 32])));
        assert!(!s.try_claim(&store, Reason::Periodic, 5_000), "not due");
        assert!(s.try_claim(&store, Reason::Periodic, 11_200), "due after the period");
    }

    #[test]
    fn published_set_has_a_version_workers_compare() {
        let store = MemoryStore::default();
        let s = sync();
        assert_eq!(s.newer_published(&store, 0), None);
        s.try_claim(&store, Reason::Periodic, 0);
        s.finish(&store, 10, Some((b"jwks-1", [1; 32])));
        let (v1, _, body) = s.newer_published(&store, 0).unwrap();
        assert_eq!((v1, body.as_slice()), (1, &b"jwks-1"[..]));
        assert_eq!(s.newer_published(&store, v1), None, "unchanged: nothing to re-parse");
        s.finish(&store, 20, Some((b"jwks-2", [2; 32])));
        assert_eq!(s.newer_published(&store, v1).unwrap().0, 2);
        s.finish(&store, 30, Some((b"jwks-2, reordered", [2; 32])));
        assert_eq!(s.newer_published(&store, 2), None, "the same keys: no new version");
    }

    #[test]
    fn keys_go_stale_without_a_good_fetch() {
        let store = MemoryStore::default();
        let c: RemoteJwksConfig = serde_json::from_value(serde_json::json!({
            "cluster": "identity", "authority": "idp", "max_stale_seconds": 60
        }))
        .unwrap();
        let s = KeySync::new("t", &c);
        assert!(s.is_stale(&store, 0), "never fetched");
        s.finish(&store, 1_000, Some((b"good", [1; 32])));
        assert!(!s.is_stale(&store, 60_999));
        s.finish(&store, 30_000, None);
        assert!(!s.is_stale(&store, 60_999), "a failure keeps the last good time");
        assert!(s.is_stale(&store, 61_000));
        s.finish(&store, 61_000, Some((b"good", [1; 32])));
        assert!(!s.is_stale(&store, 61_001), "fresh again, even unchanged");
    }

    #[test]
    fn failure_keeps_the_set_and_backs_off() {
        let store = MemoryStore::default();
        let s = sync();
        s.finish(&store, 0, Some((b"good", [1; 32])));
        s.try_claim(&store, Reason::Periodic, 10_000);
        s.finish(&store, 10_000, None);
        assert_eq!(s.newer_published(&store, 0).unwrap().2, b"good");
        assert!(!s.try_claim(&store, Reason::Periodic, 10_999));
        assert!(s.try_claim(&store, Reason::Periodic, 11_000), "first retry after 1 s");
        s.finish(&store, 11_000, None);
        assert!(!s.try_claim(&store, Reason::Periodic, 12_999));
        assert!(s.try_claim(&store, Reason::Periodic, 13_000), "then 2 s");
    }

    #[test]
    fn unknown_kid_forces_a_fetch_once_per_cooldown() {
        let store = MemoryStore::default();
        let s = sync();
        s.finish(&store, 0, Some((b"good", [1; 32])));
        assert!(s.may_force(&store, 1_000));
        assert!(s.try_claim(&store, Reason::UnknownKid, 1_000));
        s.finish(&store, 1_100, Some((b"good", [1; 32])));
        for t in [1_200, 10_000, 30_999] {
            assert!(!s.may_force(&store, t));
            assert!(!s.try_claim(&store, Reason::UnknownKid, t), "{t}");
        }
        assert!(s.try_claim(&store, Reason::UnknownKid, 31_000));
    }

    #[test]
    fn a_fetched_set_is_checked_before_it_is_published() {
        let c = config();
        let algs = vec![Algorithm::Rs256];
        let good = testkit::jwks().to_string();
        let read = |status, body: &[u8]| c.read(Some(status), Some(body), &algs);
        assert_eq!(read("200", good.as_bytes()).unwrap().len(), 1);
        assert_eq!(
            read("503", good.as_bytes()).unwrap_err(),
            FetchError::Status(Some("503".into()))
        );
        assert_eq!(
            read("200", b"<html>").unwrap_err(),
            FetchError::Document(JwksError::NotJson)
        );
        assert!(matches!(
            read("200", br#"{"keys":[]}"#).unwrap_err(),
            FetchError::NoUsableKey(_)
        ));
        let padded = format!("{{\"keys\":[],\"x\":\"{}\"}}", "a".repeat(70_000));
        assert_eq!(
            read("200", padded.as_bytes()).unwrap_err(),
            FetchError::TooLarge(65_536)
        );
        assert_eq!(
            c.read(Some("200"), None, &algs).unwrap_err(),
            FetchError::TooLarge(65_536)
        );
    }
}
