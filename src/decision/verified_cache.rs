//! What a worker remembers between requests, in plain memory (no
//! serialisation, no host call, no cryptographic hash: a hit costs a short
//! hash of the token's last bytes, a map lookup and one full comparison).
//!
//! - Verified JWTs: the token → the identity its verification produced, so a
//!   repeated token skips all signature work. Entries live until the token's
//!   `exp` plus the clock skew the verifier allows; when the signing keys
//!   change, the entries of keys that changed or disappeared are dropped, so
//!   a retired key stops working at the next key refresh, cached or not,
//!   while tokens of unchanged keys stay remembered.
//! - Reference tokens: the token → the identity of an active answer from
//!   the shared cache (or the callout that filled it), until that shared
//!   entry's own expiry, so a worker reads and parses a token's answer once
//!   instead of on every request. Revocation is seen exactly as late as
//!   before: never later than `cache_max_ttl_seconds`.
//!
//! A token is found by a hash of its last 32 bytes (a JWT's signature, an
//! `enrt_` token's random digits: what differs between tokens) and its
//! length, then compared in full: a made-up token that shares a stored
//! token's tail is a miss, never a hit. Only verified tokens are stored, so
//! a client cannot fill a bucket with collisions. Each map is bounded: when
//! full it starts again empty, and the full one's entries are freed a few
//! at a time by the inserts that follow (freeing ten thousand at once held
//! a request for milliseconds: the fresh-token p99 went from 0.35 to 3 ms).
//! Scopes are still checked against the route on every request.

use std::collections::{hash_map, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hasher};
use std::sync::Arc;

use crate::jwt::jwks::KeyMaterial;
use crate::principal::Identity;

/// Identities by token, each with an expiry. `Debug` shows sizes only:
/// the tokens are secrets.
#[derive(Default)]
pub struct VerifiedCache {
    /// Entries by the hash of their token's tail; a bucket holds the rare
    /// tokens that share it.
    buckets: HashMap<u64, Vec<Entry>, BuildHasherDefault<Passthrough>>,
    /// The last full map's buckets, never looked up, freed
    /// [`RETIRED_PER_INSERT`] at a time.
    retiring: Option<hash_map::IntoIter<u64, Vec<Entry>>>,
    len: usize,
    capacity: usize,
}

/// Buckets of a full map freed by each insert: more than one, so a map is
/// gone before the next one fills (a map is full after `capacity` inserts).
const RETIRED_PER_INSERT: usize = 2;

struct Entry {
    token: Box<str>,
    /// The material of the key that verified a JWT (`None`: a reference token).
    key: Option<KeyMaterial>,
    identity: Arc<Identity>,
    /// Last second (since the epoch) the entry may be used.
    until: u64,
}

impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// The map's keys are hashes already.
#[derive(Debug, Default)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// SipHash of the token's length and last 32 bytes.
fn tail_hash(token: &str) -> u64 {
    let bytes = token.as_bytes();
    let tail = &bytes[bytes.len().saturating_sub(32)..];
    let mut h = BuildHasherDefault::<DefaultHasher>::default().build_hasher();
    h.write_usize(bytes.len());
    h.write(tail);
    h.finish()
}

/// Whether two byte strings are equal, eight bytes at a time. Measured in
/// Envoy's V8, the byte-at-a-time `memcmp` a wasm build links was the
/// largest single cost of a cached 800-byte JWT's lookup. (Not constant
/// time, like `==`: both are tokens this worker verified or is verifying.)
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_rest, b_rest) = (a_words.remainder(), b_words.remainder());
    let word = |c: &[u8]| c.try_into().map_or(0, u64::from_ne_bytes);
    a_words.zip(b_words).all(|(x, y)| word(x) == word(y)) && a_rest == b_rest
}

/// Both of a worker's maps.
#[derive(Debug, Default)]
pub struct Remembered {
    /// Verified JWTs (`jwt_cache_max_entries`).
    pub jwts: VerifiedCache,
    /// Reference tokens' active answers (`introspection.cache_max_entries`).
    pub references: VerifiedCache,
}

impl Remembered {
    pub fn new(jwts: usize, references: usize) -> Self {
        Self {
            jwts: VerifiedCache::new(jwts),
            references: VerifiedCache::new(references),
        }
    }
}

impl VerifiedCache {
    /// A cache of at most `capacity` tokens; 0 disables it.
    pub fn new(capacity: usize) -> Self {
        Self {
            buckets: Self::empty_map(capacity),
            retiring: None,
            len: 0,
            capacity,
        }
    }

    fn empty_map(capacity: usize) -> HashMap<u64, Vec<Entry>, BuildHasherDefault<Passthrough>> {
        HashMap::with_capacity_and_hasher(capacity.min(1024), BuildHasherDefault::default())
    }

    /// The identity remembered for exactly this token, if `now` is not past
    /// its expiry.
    pub fn get(&self, token: &str, now: u64) -> Option<&Arc<Identity>> {
        if self.len == 0 {
            return None;
        }
        self.buckets
            .get(&tail_hash(token))?
            .iter()
            .find(|e| same_bytes(e.token.as_bytes(), token.as_bytes()) && now <= e.until)
            .map(|e| &e.identity)
    }

    /// Remembers an identity until second `until`. A full cache starts
    /// again empty first: bounded memory without bookkeeping on the hot
    /// path; the full map is freed over the next inserts.
    pub fn insert(&mut self, token: &str, key: Option<KeyMaterial>, identity: Arc<Identity>, until: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.len >= self.capacity {
            let full = std::mem::replace(&mut self.buckets, Self::empty_map(self.capacity));
            // Whatever the map before it left is freed now (nothing is,
            // with two buckets freed by each of `capacity` inserts).
            self.retiring = Some(full.into_iter());
            self.len = 0;
        }
        if let Some(retiring) = &mut self.retiring {
            retiring.by_ref().take(RETIRED_PER_INSERT).for_each(drop);
            if retiring.len() == 0 {
                self.retiring = None;
            }
        }
        let bucket = self.buckets.entry(tail_hash(token)).or_default();
        bucket.retain(|e| &*e.token != token);
        let before = bucket.len();
        bucket.push(Entry {
            token: token.into(),
            key,
            identity,
            until,
        });
        self.len = self.len + bucket.len() - before;
    }

    /// Forgets the tokens verified by keys that are gone (the signing keys
    /// changed): `keep` says which key material is still trusted.
    pub fn retain_keys(&mut self, keep: impl Fn(&KeyMaterial) -> bool) {
        for bucket in self.buckets.values_mut() {
            bucket.retain(|e| e.key.as_ref().is_none_or(&keep));
        }
        self.buckets.retain(|_, bucket| !bucket.is_empty());
        self.len = self.buckets.values().map(Vec::len).sum();
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::{Principal, PrincipalKind};

    fn principal(exp: u64) -> Arc<Identity> {
        let principal = Principal {
            kind: PrincipalKind::Jwt,
            client_id: None,
            subject: None,
            client_db: None,
            system_user: None,
            scopes: vec!["read".into()],
            expires_at: exp,
            claims: Vec::new(),
        };
        Arc::new(Identity {
            principal,
            headers: Vec::new(),
            fingerprint: String::new(),
        })
    }

    #[test]
    fn tokens_compare_byte_for_byte() {
        let token = "a".repeat(45) + "bcdefgh";
        for i in 0..token.len() {
            let mut other = token.clone().into_bytes();
            other[i] ^= 1;
            assert!(!same_bytes(token.as_bytes(), &other), "byte {i}");
        }
        assert!(same_bytes(token.as_bytes(), token.clone().as_bytes()));
        assert!(!same_bytes(token.as_bytes(), &token.as_bytes()[1..]));
        assert!(!same_bytes(b"", b"x"));
        assert!(same_bytes(b"", b""));
    }

    #[test]
    fn entries_live_until_their_expiry() {
        let mut c = VerifiedCache::new(10);
        c.insert("a.b.c", None, principal(100), 160);
        assert!(c.get("a.b.c", 160).is_some());
        assert!(c.get("a.b.c", 161).is_none());
    }

    #[test]
    fn only_the_exact_token_is_a_hit() {
        let mut c = VerifiedCache::new(10);
        let token = format!("header.payload.{}", "s".repeat(342));
        c.insert(&token, None, principal(100), 100);
        assert!(c.get(&token, 0).is_some());
        let same_tail = format!("other.claims.{}", "s".repeat(342));
        assert!(c.get(&same_tail, 0).is_none(), "same tail, another token");
        let same_length = format!("HEADER.payload.{}", "s".repeat(342));
        assert!(c.get(&same_length, 0).is_none(), "same tail and length, another token");
        c.insert(&same_length, None, principal(200), 100);
        assert_eq!(c.len(), 2, "both live in one bucket");
        assert_eq!(c.get(&token, 0).map(|i| i.principal.expires_at), Some(100));
        assert_eq!(c.get(&same_length, 0).map(|i| i.principal.expires_at), Some(200));
        assert!(c.get("", 0).is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let mut c = VerifiedCache::new(100);
        for i in 0..10_000 {
            c.insert(&format!("token-{i}"), None, principal(100), 100);
            assert!(c.len() <= 100);
        }
    }

    #[test]
    fn a_full_cache_starts_again_and_frees_the_old_entries_a_few_at_a_time() {
        let old = principal(100);
        let mut c = VerifiedCache::new(10);
        for i in 0..10 {
            c.insert(&format!("token-{i:040}"), None, Arc::clone(&old), 100);
        }
        assert_eq!(Arc::strong_count(&old), 11);
        c.insert("the eleventh token, which does not fit", None, principal(100), 100);
        assert_eq!(c.len(), 1);
        assert!(
            c.get(&format!("token-{:040}", 3), 50).is_none(),
            "the old entries are gone"
        );
        assert_eq!(
            Arc::strong_count(&old),
            11 - RETIRED_PER_INSERT,
            "only two freed by this insert"
        );
        for i in 0..4 {
            c.insert(&format!("later-{i:040}"), None, principal(100), 100);
        }
        assert_eq!(Arc::strong_count(&old), 1, "all freed after five inserts");
        assert!(c.retiring.is_none());
        assert_eq!(c.len(), 5);
    }

    #[test]
    fn zero_capacity_disables_it() {
        let mut c = VerifiedCache::new(0);
        c.insert("a", None, principal(100), 100);
        assert!(c.is_empty());
    }

    #[test]
    fn only_entries_of_keys_that_are_gone_are_forgotten() {
        let mut c = VerifiedCache::new(10);
        let (kept, gone) = ([1u8; 32], [2u8; 32]);
        c.insert("a", Some(kept), principal(100), 100);
        c.insert("b", Some(gone), principal(100), 100);
        c.insert("enrt_c", None, principal(100), 100);
        c.retain_keys(|m| *m == kept);
        assert!(c.get("a", 0).is_some());
        assert!(c.get("b", 0).is_none());
        assert!(c.get("enrt_c", 0).is_some(), "reference answers do not depend on keys");
        assert_eq!(c.len(), 2);
    }
}
