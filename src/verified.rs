//! What a worker remembers between requests, in plain memory (no
//! serialisation, no host call: a hit costs a hash and a map lookup).
//!
//! - Verified JWTs: SHA-256 of a token's signing input (plus its signature,
//!   compared on every hit) → the identity its verification produced, so a
//!   repeated token skips signature work. The digest is the one the RS256
//!   check needs anyway: one hash per request. Entries live until the
//!   token's `exp` plus the clock skew the verifier allows; when the signing
//!   keys change, the entries of keys that changed or disappeared are
//!   dropped, so a retired key stops working at the next key refresh, cached
//!   or not, while tokens of unchanged keys stay remembered.
//! - Reference tokens: SHA-256 of the token → the identity of an active
//!   answer from the shared cache (or the callout that filled it), until
//!   that shared entry's own expiry, so a worker reads and parses a token's
//!   answer once instead of on every request. Revocation is seen exactly as
//!   late as before: never later than `cache_max_ttl_seconds`.
//!
//! Each map is bounded (emptied when full). Scopes are still checked against
//! the route on every request.

use std::collections::HashMap;
use std::rc::Rc;

use crate::jwks::KeyMaterial;
use crate::principal::Identity;
use crate::secret::TokenHash;

/// Identities by token hash, each with a check string (a JWT's signature)
/// and an expiry.
#[derive(Debug, Default)]
pub struct VerifiedCache {
    entries: HashMap<TokenHash, Entry>,
    capacity: usize,
}

#[derive(Debug)]
struct Entry {
    check: Box<str>,
    /// The material of the key that verified a JWT (`None`: a reference token).
    key: Option<KeyMaterial>,
    identity: Rc<Identity>,
    /// Last second (since the epoch) the entry may be used.
    until: u64,
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
            entries: HashMap::with_capacity(capacity.min(1024)),
            capacity,
        }
    }

    /// The identity remembered for `hash` with the same `check` (a JWT's
    /// signature; empty for reference tokens), if `now` is not past its
    /// expiry.
    pub fn get(&self, hash: &TokenHash, check: &str, now: u64) -> Option<&Rc<Identity>> {
        self.entries
            .get(hash)
            .filter(|e| &*e.check == check && now <= e.until)
            .map(|e| &e.identity)
    }

    /// Remembers an identity until second `until`. A full cache is emptied
    /// first: bounded memory without bookkeeping on the hot path.
    pub fn insert(
        &mut self,
        hash: TokenHash,
        check: &str,
        key: Option<KeyMaterial>,
        identity: Rc<Identity>,
        until: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
        let entry = Entry {
            check: check.into(),
            key,
            identity,
            until,
        };
        self.entries.insert(hash, entry);
    }

    /// Forgets the tokens verified by keys that are gone (the signing keys
    /// changed): `keep` says which key material is still trusted.
    pub fn retain_keys(&mut self, keep: impl Fn(&KeyMaterial) -> bool) {
        self.entries.retain(|_, e| e.key.as_ref().is_none_or(&keep));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::{Principal, PrincipalKind};
    use crate::secret::hash_token;

    fn principal(exp: u64) -> Rc<Identity> {
        let principal = Principal {
            kind: PrincipalKind::Jwt,
            client_id: None,
            subject: None,
            client_db: None,
            system_user: None,
            scopes: vec!["read".into()],
            expires_at: exp,
        };
        Rc::new(Identity {
            principal,
            headers: Vec::new(),
        })
    }

    #[test]
    fn entries_live_until_their_expiry() {
        let mut c = VerifiedCache::new(10);
        let h = hash_token("a.b.c");
        c.insert(h, "sig", None, principal(100), 160);
        assert!(c.get(&h, "sig", 160).is_some());
        assert!(c.get(&h, "sig", 161).is_none());
    }

    #[test]
    fn the_same_payload_with_another_signature_is_not_a_hit() {
        let mut c = VerifiedCache::new(10);
        let h = hash_token("a.b");
        c.insert(h, "good", None, principal(100), 100);
        assert!(c.get(&h, "forged", 0).is_none());
        assert!(c.get(&h, "", 0).is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let mut c = VerifiedCache::new(100);
        for i in 0..10_000 {
            c.insert(hash_token(&i.to_string()), "s", None, principal(100), 100);
            assert!(c.len() <= 100);
        }
    }

    #[test]
    fn zero_capacity_disables_it() {
        let mut c = VerifiedCache::new(0);
        c.insert(hash_token("a"), "s", None, principal(100), 100);
        assert!(c.is_empty());
    }

    #[test]
    fn only_entries_of_keys_that_are_gone_are_forgotten() {
        let mut c = VerifiedCache::new(10);
        let (kept, gone) = ([1u8; 32], [2u8; 32]);
        c.insert(hash_token("a"), "s", Some(kept), principal(100), 100);
        c.insert(hash_token("b"), "s", Some(gone), principal(100), 100);
        c.insert(hash_token("enrt_c"), "", None, principal(100), 100);
        c.retain_keys(|m| *m == kept);
        assert!(c.get(&hash_token("a"), "s", 0).is_some());
        assert!(c.get(&hash_token("b"), "s", 0).is_none());
        assert!(
            c.get(&hash_token("enrt_c"), "", 0).is_some(),
            "reference answers do not depend on keys"
        );
    }
}
