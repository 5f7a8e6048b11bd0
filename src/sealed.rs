//! Envoy's shared data, authenticated.
//!
//! Shared data is keyed by the VM's `vm_id` alone, and Istio sets none: every
//! Wasm plugin on a proxy reads and writes the same namespace. What this
//! filter keeps there (the signing keys, cached introspection answers, the
//! state of fetches and calls) must come from this filter. So every value is
//! stored with an HMAC-SHA256 tag over its key's name and its bytes, under a
//! key derived from a secret only this configuration holds
//! (`shared_data_secret`, or else the introspection client secret), and
//! under key names that carry the key's identifier, so configurations with
//! different secrets never read each other's values. A value whose tag does
//! not verify reads as absent (its CAS version kept, so the filter's next
//! write replaces it) and is counted.
//!
//! With neither secret (signing keys from `remote_jwks` without
//! introspection), nothing is trusted from shared data: each worker keeps
//! its own store and fetches its own keys (a `MemoryStore` of its own).

use std::cell::Cell;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::host::SharedStore;
use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

const TAG_BYTES: usize = 32;

/// The key values are authenticated with, derived from a secret.
#[derive(Clone)]
pub(crate) struct SealKey {
    mac: HmacSha256,
    /// A short public identifier of the key, in every key name.
    id: String,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({})", self.id)
    }
}

impl SealKey {
    /// Derives the key from `secret` (HMAC-SHA256 with a fixed label), and
    /// its identifier from the key (never from the secret directly).
    pub(crate) fn derive(secret: &Secret) -> Option<Self> {
        let mut derive = HmacSha256::new_from_slice(secret.expose().as_bytes()).ok()?;
        derive.update(b"erp-edge-validator shared data v1");
        let key = derive.finalize().into_bytes();
        let mac = HmacSha256::new_from_slice(&key).ok()?;
        let mut id = mac.clone();
        id.update(b"key id");
        let id = id.finalize().into_bytes()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(Self { mac, id })
    }

    fn tag(&self, name: &str, value: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(&(name.len() as u64).to_be_bytes());
        mac.update(name.as_bytes());
        mac.update(value);
        mac
    }
}

/// A [`SharedStore`] whose values are tagged and checked with a
/// [`SealKey`]; counts the values it refused.
pub(crate) struct Sealed<'a> {
    inner: &'a dyn SharedStore,
    key: &'a SealKey,
    refused: Cell<u32>,
}

impl<'a> Sealed<'a> {
    pub(crate) fn new(inner: &'a dyn SharedStore, key: &'a SealKey) -> Self {
        Self {
            inner,
            key,
            refused: Cell::new(0),
        }
    }

    /// Values read whose tag did not verify.
    pub(crate) fn refused(&self) -> u32 {
        self.refused.get()
    }

    fn name(&self, key: &str) -> String {
        format!("{key}.{}", self.key.id)
    }
}

impl SharedStore for Sealed<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let name = self.name(key);
        let (value, cas) = self.inner.get(&name);
        let Some(mut value) = value else {
            return (None, cas);
        };
        let Some(body_len) = value.len().checked_sub(TAG_BYTES) else {
            self.refused.set(self.refused.get().saturating_add(1));
            return (None, cas);
        };
        let verified = self
            .key
            .tag(&name, &value[..body_len])
            .verify_slice(&value[body_len..])
            .is_ok();
        if !verified {
            self.refused.set(self.refused.get().saturating_add(1));
            return (None, cas);
        }
        value.truncate(body_len);
        (Some(value), cas)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let name = self.name(key);
        let tag = self.key.tag(&name, value).finalize().into_bytes();
        let mut sealed = Vec::with_capacity(value.len() + TAG_BYTES);
        sealed.extend_from_slice(value);
        sealed.extend_from_slice(&tag);
        self.inner.set(&name, &sealed, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemoryStore;

    fn key(secret: &str) -> SealKey {
        SealKey::derive(&Secret::new(secret)).unwrap()
    }

    #[test]
    fn a_value_reads_back_and_its_bytes_in_the_host_carry_a_tag() {
        let host = MemoryStore::default();
        let k = key("s3cret");
        let sealed = Sealed::new(&host, &k);
        assert!(sealed.set("erp.jwks", b"{\"keys\":[]}", None));
        assert_eq!(sealed.get("erp.jwks").0.as_deref(), Some(&b"{\"keys\":[]}"[..]));
        let entries = host.entries();
        assert_eq!(entries.len(), 1);
        assert_ne!(entries[0].0, "erp.jwks", "the key name carries the key's id");
        assert_eq!(entries[0].1.len(), 11 + TAG_BYTES);
        assert_eq!(sealed.refused(), 0);
    }

    #[test]
    fn a_value_written_by_anyone_else_reads_as_absent_and_is_counted() {
        let host = MemoryStore::default();
        let k = key("s3cret");
        let sealed = Sealed::new(&host, &k);
        let name = sealed.name("erp.jwks");
        // Unsealed, under the plain name and under ours.
        host.set("erp.jwks", b"forged", None);
        host.set(&name, b"forged, and long enough to hold a 32-byte tag....", None);
        assert_eq!(sealed.get("erp.jwks").0, None);
        assert_eq!(sealed.refused(), 1);
        // Sealed under another secret.
        let other = key("another");
        let mut value = b"forged".to_vec();
        value.extend_from_slice(&other.tag(&name, b"forged").finalize().into_bytes());
        host.set(&name, &value, None);
        assert_eq!(sealed.get("erp.jwks").0, None);
        assert_eq!(sealed.refused(), 2);
        // Its CAS version stays, so the filter's own write replaces it.
        let (_, cas) = sealed.get("erp.jwks");
        assert!(sealed.set("erp.jwks", b"real", cas));
        assert_eq!(sealed.get("erp.jwks").0.as_deref(), Some(&b"real"[..]));
    }

    #[test]
    fn a_value_moved_to_another_key_does_not_verify() {
        let host = MemoryStore::default();
        let k = key("s3cret");
        let sealed = Sealed::new(&host, &k);
        sealed.set("erp.ref.1", b"{\"active\":true}", None);
        let from = sealed.name("erp.ref.1");
        let to = sealed.name("erp.ref.2");
        let (value, _) = host.get(&from);
        host.set(&to, &value.unwrap(), None);
        assert_eq!(sealed.get("erp.ref.2").0, None, "the key name is bound into the tag");
        assert_eq!(sealed.refused(), 1);
    }

    #[test]
    fn different_secrets_use_different_names_and_the_debug_form_shows_no_key() {
        let (a, b) = (key("one"), key("two"));
        let host = MemoryStore::default();
        assert_ne!(Sealed::new(&host, &a).name("x"), Sealed::new(&host, &b).name("x"));
        assert!(!format!("{a:?}").contains("one"));
    }

    #[test]
    fn the_memory_store_has_envoys_semantics() {
        let store = MemoryStore::default();
        assert!(store.set("k", b"v", None));
        let (value, cas) = store.get("k");
        assert_eq!(value.as_deref(), Some(&b"v"[..]));
        assert!(!store.set("k", b"w", cas.map(|c| c + 1)), "a stale CAS fails");
        assert!(store.set("k", b"w", cas));
    }
}
