//! The ports through which the pure core meets the host: shared data, the
//! clock reading, outgoing callouts and their answers. `filter` implements
//! them with Envoy's host calls; the tests with plain memory.

use std::fmt;

/// The host's shared key-value store (Envoy shared data), visible to every
/// worker: compare-and-swap versions, no delete, no expiry.
pub trait SharedStore {
    /// The value and its CAS version.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Stores `value` if `cas` still matches (`None`: unconditionally).
    /// False when the CAS did not match or the store refused.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// A header name or value as the core reads it: the text, or, when it is
/// not UTF-8, [`NOT_TEXT`], which no credential check accepts and no rule
/// matches. Both hosts read Envoy's headers this way.
pub fn header_text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or(NOT_TEXT)
}

/// Stands in for a header name or value that is not UTF-8.
pub const NOT_TEXT: &str = "\u{fffd}";

/// One reading of the host clock, taken once per event and passed down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Seconds since the epoch.
    pub secs: u64,
    /// Milliseconds since the epoch.
    pub ms: u64,
}

impl Now {
    pub fn from_ms(ms: u64) -> Self {
        Self { secs: ms / 1000, ms }
    }
}

/// An HTTP callout ready for the host. Its headers may carry a client
/// secret and its body a token: `Debug` shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct Callout {
    /// Envoy cluster to call.
    pub cluster: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

impl fmt::Debug for Callout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self
            .headers
            .iter()
            .find(|(n, _)| *n == ":path")
            .map(|(_, v)| v.as_str());
        f.debug_struct("Callout")
            .field("cluster", &self.cluster)
            .field("path", &path)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// RSA signature verification offered by the host (Envoy's BoringSSL, through
/// the `verify_signature` foreign function).
pub trait RsaHost: Send + Sync {
    /// Whether `signature` is an RSASSA-PKCS1-v1_5 SHA-256 signature of
    /// `message` under the key (SubjectPublicKeyInfo DER); `None` when the
    /// host could not be asked (the caller then verifies in the module).
    fn verify_pkcs1_sha256(&self, spki_der: &[u8], message: &[u8], signature: &[u8]) -> Option<bool>;
}

/// The answer to a callout, read lazily: a body over the limit is never
/// copied into the module.
pub trait CalloutResponse {
    /// `:status`, when the host has one (a failed call answers 503/504).
    fn status(&self) -> Option<String>;
    /// The body, or `None` when it is larger than `max_bytes`.
    fn body(&self, max_bytes: usize) -> Option<Vec<u8>>;
}

/// An in-memory [`SharedStore`] with Envoy's semantics (CAS versions, no
/// delete): a worker's own store where shared data cannot be trusted
/// (`sealed`), and the tests' shared data.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: std::sync::Mutex<std::collections::HashMap<String, (Vec<u8>, u32)>>,
}

impl MemoryStore {
    /// The map; a panic elsewhere while it was held cannot leave it half
    /// written (every change is one insert), so a poisoned lock is used as is.
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (Vec<u8>, u32)>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
impl MemoryStore {
    /// Number of keys ever written (shared data never shrinks).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// A copy, to run something against without touching this store.
    pub(crate) fn snapshot(&self) -> Self {
        Self {
            map: std::sync::Mutex::new(self.lock().clone()),
        }
    }

    /// Every key and value, for tests that look for leaks.
    pub(crate) fn entries(&self) -> Vec<(String, Vec<u8>)> {
        self.lock().iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect()
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.lock().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let mut map = self.lock();
        let current = map.get(key).map_or(0, |(_, c)| *c);
        if let Some(expected) = cas {
            if expected != 0 && expected != current {
                return false;
            }
        }
        map.insert(key.to_owned(), (value.to_vec(), current.wrapping_add(1).max(1)));
        true
    }
}

/// A complete answer held in memory (tests, tools).
#[cfg(test)]
pub(crate) struct Answered {
    pub status: Option<String>,
    pub body: Vec<u8>,
}

#[cfg(test)]
impl CalloutResponse for Answered {
    fn status(&self) -> Option<String> {
        self.status.clone()
    }

    fn body(&self, max_bytes: usize) -> Option<Vec<u8>> {
        (self.body.len() <= max_bytes).then(|| self.body.clone())
    }
}
