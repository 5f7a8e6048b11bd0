//! The verified-token cache for JWTs: SHA-256 of a token's signing input
//! (plus its signature, compared on every hit) → the identity its
//! verification produced, so a repeated token skips signature work. The
//! digest is the one the RS256 check needs anyway: one hash per request.
//!
//! One per worker (plain memory, no serialisation: a hit costs a hash and a
//! map lookup). Entries live until the token's `exp` (plus the clock skew
//! the verifier allows), the map is bounded (it is emptied when full), and
//! the owner clears it whenever the signing keys change, so a retired key
//! stops working at the next key refresh, cached or not. Scopes are still
//! checked against the route on every request.

use std::collections::HashMap;
use std::rc::Rc;

use crate::cache::TokenHash;
use crate::principal::Identity;

#[derive(Debug, Default)]
pub struct VerifiedCache {
    entries: HashMap<TokenHash, (Box<str>, Rc<Identity>)>,
    capacity: usize,
}

impl VerifiedCache {
    /// A cache of at most `capacity` tokens; 0 disables it.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::with_capacity(capacity.min(1024)),
            capacity,
        }
    }

    /// The identity of a token verified before (same signing-input digest
    /// and the same signature), if still within `exp + skew`.
    pub fn get(&self, digest: &TokenHash, signature: &str, now: u64, skew: u64) -> Option<&Rc<Identity>> {
        self.entries
            .get(digest)
            .filter(|(s, i)| &**s == signature && now <= i.principal.expires_at.saturating_add(skew))
            .map(|(_, i)| i)
    }

    /// Remembers a verified token. A full cache is emptied first: bounded
    /// memory without bookkeeping on the hot path.
    pub fn insert(&mut self, digest: TokenHash, signature: &str, identity: Rc<Identity>) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
        self.entries.insert(digest, (signature.into(), identity));
    }

    /// Forgets everything (the signing keys changed).
    pub fn clear(&mut self) {
        self.entries.clear();
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
    use crate::cache::hash_token;
    use crate::principal::{Principal, PrincipalKind};

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
    fn entries_live_until_exp_plus_skew() {
        let mut c = VerifiedCache::new(10);
        let h = hash_token("a.b.c");
        c.insert(h, "sig", principal(100));
        assert!(c.get(&h, "sig", 160, 60).is_some());
        assert!(c.get(&h, "sig", 161, 60).is_none());
    }

    #[test]
    fn the_same_payload_with_another_signature_is_not_a_hit() {
        let mut c = VerifiedCache::new(10);
        let h = hash_token("a.b");
        c.insert(h, "good", principal(100));
        assert!(c.get(&h, "forged", 0, 60).is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let mut c = VerifiedCache::new(100);
        for i in 0..10_000 {
            c.insert(hash_token(&i.to_string()), "s", principal(100));
            assert!(c.len() <= 100);
        }
    }

    #[test]
    fn zero_capacity_disables_it() {
        let mut c = VerifiedCache::new(0);
        c.insert(hash_token("a"), "s", principal(100));
        assert!(c.is_empty());
    }
}
