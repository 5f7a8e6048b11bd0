//! The reference-token cache, kept in Envoy's shared data so every worker
//! sees it, and the claims that let one introspection call answer them all.
//!
//! Shared data has no delete, no expiry and no eviction, so the keyspace is
//! bounded by design: the cache is direct-mapped onto `cache_max_entries`
//! slots chosen by the token's SHA-256; a new token evicts whatever held its
//! slot. The entry stores the full hash, so a slot never answers for another
//! token. Keys and values never hold the raw token.
//!
//! Each slot also has a claim key: the worker that wins the compare-and-swap
//! makes the callout; other workers wait for the cache entry (or the failure
//! mark) to appear, up to the claim's deadline.

use crate::host::SharedStore;
use crate::principal::Principal;
use crate::reference::introspection::Answer;
use crate::secret::TokenHash;

/// Largest principal cached; a bigger one is used but not cached.
const MAX_ENTRY_BYTES: usize = 4096;
const ENTRY_VERSION: u8 = 1;

/// State of the introspection call for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flight {
    /// Nobody is asking; whoever needs the answer should claim.
    None,
    /// Another worker is asking; its answer is due by this time (ms).
    InProgress { deadline_ms: u64 },
    /// The last call for this token failed recently: answer 503 now.
    Failed,
}

/// Result of trying to claim the callout for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// This worker makes the call.
    Mine,
    /// Another worker is making it; wait until `deadline_ms`.
    Theirs { deadline_ms: u64 },
    /// It just failed; answer 503.
    Failed,
}

const FLIGHT_PENDING: u8 = 0;
const FLIGHT_DONE: u8 = 1;
const FLIGHT_FAILED: u8 = 2;

/// The cache's rules: slot count and lifetimes.
#[derive(Debug, Clone)]
pub(crate) struct ReferenceCache {
    prefix: String,
    slots: u32,
    max_ttl: u64,
    negative_ttl: u64,
}

impl ReferenceCache {
    /// `prefix` names the keys (one namespace per filter configuration).
    pub(crate) fn new(prefix: &str, slots: u32, max_ttl_seconds: u64, negative_ttl_seconds: u64) -> Self {
        Self {
            prefix: prefix.to_owned(),
            slots: slots.max(1),
            max_ttl: max_ttl_seconds,
            negative_ttl: negative_ttl_seconds,
        }
    }

    fn slot(&self, hash: &TokenHash) -> u32 {
        u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) % self.slots
    }

    /// The shared-data key of a token's cache slot.
    pub(crate) fn entry_key(&self, hash: &TokenHash) -> String {
        format!("{}.ref.{}", self.prefix, self.slot(hash))
    }

    fn flight_key(&self, hash: &TokenHash) -> String {
        format!("{}.flight.{}", self.prefix, self.slot(hash))
    }

    /// The cached answer for a token, if fresh.
    #[cfg(test)]
    pub(crate) fn get(&self, store: &dyn SharedStore, hash: &TokenHash, now: u64) -> Option<Answer> {
        self.get_until(store, hash, now).map(|(answer, _)| answer)
    }

    /// The cached answer and the last second it may be used: never later
    /// than `now + cache_max_ttl_seconds` (an inactive answer: the negative
    /// TTL), whatever expiry the entry claims.
    pub(crate) fn get_until(&self, store: &dyn SharedStore, hash: &TokenHash, now: u64) -> Option<(Answer, u64)> {
        let (value, _) = store.get(&self.entry_key(hash));
        let (answer, until) = decode_entry(&value?, hash, now)?;
        let ttl = match answer {
            Answer::Inactive => self.negative_ttl,
            _ => self.max_ttl,
        };
        let until = until.min(last_usable_second(now.saturating_add(ttl)));
        (until >= now).then_some((answer, until))
    }

    /// Remembers an answer: active until `min(exp, now + max_ttl)`, inactive
    /// for the negative TTL. Returns the expiry used, if cached.
    pub(crate) fn put(&self, store: &dyn SharedStore, hash: &TokenHash, answer: &Answer, now: u64) -> Option<u64> {
        let (expires_at, payload) = match answer {
            Answer::Active(principal) => (
                principal.expires_at.min(now.saturating_add(self.max_ttl)),
                serde_json::to_vec(principal).ok()?,
            ),
            Answer::Inactive if self.negative_ttl > 0 => {
                // A flood of random tokens must not push out the answers
                // real clients depend on: an inactive answer never takes
                // the slot of another token's live active answer.
                if let (Some(held), _) = store.get(&self.entry_key(hash)) {
                    if holds_live_active(&held, hash, now) {
                        return None;
                    }
                }
                (now.saturating_add(self.negative_ttl), Vec::new())
            }
            Answer::Inactive | Answer::Refused(_) => return None,
        };
        if expires_at <= now || payload.len() > MAX_ENTRY_BYTES {
            return None;
        }
        let mut value = Vec::with_capacity(42 + payload.len());
        value.push(ENTRY_VERSION);
        value.extend_from_slice(hash);
        value.extend_from_slice(&expires_at.to_be_bytes());
        value.push(u8::from(matches!(answer, Answer::Active(_))));
        value.extend_from_slice(&payload);
        store.set(&self.entry_key(hash), &value, None).then_some(expires_at)
    }

    /// For an active answer too large for a shared slot (which [`put`]
    /// refused): the second it may be remembered until, by the worker that
    /// got it, as a shared one would be. Otherwise `None`.
    ///
    /// [`put`]: Self::put
    pub(crate) fn too_large_to_share(&self, answer: &Answer, now: u64) -> Option<u64> {
        let Answer::Active(principal) = answer else {
            return None;
        };
        let expires_at = principal.expires_at.min(now.saturating_add(self.max_ttl));
        let size = serde_json::to_vec(principal).ok()?.len();
        (expires_at > now && size > MAX_ENTRY_BYTES).then_some(expires_at)
    }

    /// Where the introspection call for this token stands.
    pub(crate) fn flight(&self, store: &dyn SharedStore, hash: &TokenHash, now_ms: u64) -> Flight {
        let (value, _) = store.get(&self.flight_key(hash));
        match value.as_deref().and_then(|v| decode_flight(v, hash)) {
            Some((FLIGHT_PENDING, deadline_ms)) if deadline_ms > now_ms => Flight::InProgress { deadline_ms },
            Some((FLIGHT_FAILED, until_ms)) if until_ms > now_ms => Flight::Failed,
            _ => Flight::None,
        }
    }

    /// Claims the call for a token until `deadline_ms`, unless another
    /// worker holds a live claim. A lost compare-and-swap race means a
    /// duplicate call at worst, never a request left waiting.
    pub(crate) fn claim(&self, store: &dyn SharedStore, hash: &TokenHash, now_ms: u64, deadline_ms: u64) -> Claim {
        let key = self.flight_key(hash);
        let (value, cas) = store.get(&key);
        match value.as_deref().and_then(|v| decode_flight(v, hash)) {
            Some((FLIGHT_PENDING, d)) if d > now_ms => return Claim::Theirs { deadline_ms: d },
            Some((FLIGHT_FAILED, until)) if until > now_ms => return Claim::Failed,
            _ => {}
        }
        if !store.set(&key, &encode_flight(hash, FLIGHT_PENDING, deadline_ms), cas) {
            if let (Some(v), _) = store.get(&key) {
                if let Some((FLIGHT_PENDING, d)) = decode_flight(&v, hash) {
                    if d > now_ms {
                        return Claim::Theirs { deadline_ms: d };
                    }
                }
            }
        }
        Claim::Mine
    }

    /// The shared-data key of a slot's mark: the hash of the last token the
    /// identity service vouched for in that slot. It outlives the answer.
    fn known_key(&self, hash: &TokenHash) -> String {
        format!("{}.known.{}", self.prefix, self.slot(hash))
    }

    /// Marks a token the identity service said is active: from now on its
    /// calls may draw on the reserved share of the budget.
    pub(crate) fn mark_known(&self, store: &dyn SharedStore, hash: &TokenHash) {
        if store.get(&self.known_key(hash)).0.as_deref() != Some(&hash[..]) {
            store.set(&self.known_key(hash), hash, None);
        }
    }

    /// Whether the token was active when last asked about (and no other
    /// active token has taken its slot's mark since).
    pub(crate) fn is_known(&self, store: &dyn SharedStore, hash: &TokenHash) -> bool {
        store.get(&self.known_key(hash)).0.as_deref() == Some(&hash[..])
    }

    /// Takes one introspection call from the budget shared by every worker:
    /// at most `per_second` calls in any one second of the clock. Tokens
    /// not `known` to have been active may use only the part of it that is
    /// not reserved (half, rounded up), so a flood of made-up tokens cannot
    /// keep the holders of real ones from having their answers renewed.
    /// False when the share is spent (or the store keeps refusing the
    /// update).
    pub(crate) fn spend(&self, store: &dyn SharedStore, now: u64, per_second: u32, known: bool) -> bool {
        let limit = if known { per_second } else { per_second - per_second / 2 };
        let key = format!("{}.budget", self.prefix);
        for _ in 0..8 {
            let (value, cas) = store.get(&key);
            let (second, used) = value
                .as_deref()
                .and_then(|v| Some((v.get(..8)?.try_into().ok()?, v.get(8..12)?.try_into().ok()?)))
                .map_or((0, 0), |(s, u)| (u64::from_be_bytes(s), u32::from_be_bytes(u)));
            let used = if second == now { used } else { 0 };
            if used >= limit {
                return false;
            }
            let mut next = now.to_be_bytes().to_vec();
            next.extend_from_slice(&(used + 1).to_be_bytes());
            if store.set(&key, &next, Some(cas.unwrap_or(0))) {
                return true;
            }
        }
        false
    }

    /// Ends a claim. A failure is remembered until `failed_until_ms`, so
    /// waiting workers answer 503 at once instead of calling again.
    pub(crate) fn finish(&self, store: &dyn SharedStore, hash: &TokenHash, failed_until_ms: Option<u64>) {
        let value = match failed_until_ms {
            Some(until) => encode_flight(hash, FLIGHT_FAILED, until),
            None => encode_flight(hash, FLIGHT_DONE, 0),
        };
        store.set(&self.flight_key(hash), &value, None);
    }
}

/// Whether a slot's value is another token's active answer, still fresh.
fn holds_live_active(value: &[u8], hash: &TokenHash, now: u64) -> bool {
    value.len() >= 42
        && value[0] == ENTRY_VERSION
        && value[1..33] != hash[..]
        && value[41] == 1
        && value[33..41].try_into().is_ok_and(|b| u64::from_be_bytes(b) > now)
}

/// Entries record the first second they are stale (what [`ReferenceCache::put`]
/// returns); the last second an answer may be used is the one before.
pub(crate) fn last_usable_second(expires_at: u64) -> u64 {
    expires_at.saturating_sub(1)
}

fn decode_entry(value: &[u8], hash: &TokenHash, now: u64) -> Option<(Answer, u64)> {
    if value.len() < 42 || value[0] != ENTRY_VERSION || value[1..33] != hash[..] {
        return None;
    }
    let expires_at = u64::from_be_bytes(value[33..41].try_into().ok()?);
    if expires_at <= now {
        return None;
    }
    let answer = match value[41] {
        0 => Answer::Inactive,
        1 => Answer::Active(serde_json::from_slice::<Principal>(&value[42..]).ok()?),
        _ => return None,
    };
    Some((answer, last_usable_second(expires_at)))
}

fn encode_flight(hash: &TokenHash, state: u8, time_ms: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(41);
    value.extend_from_slice(hash);
    value.push(state);
    value.extend_from_slice(&time_ms.to_be_bytes());
    value
}

fn decode_flight(value: &[u8], hash: &TokenHash) -> Option<(u8, u64)> {
    if value.len() != 41 || value[..32] != hash[..] {
        return None;
    }
    Some((value[32], u64::from_be_bytes(value[33..41].try_into().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemoryStore;
    use crate::principal::PrincipalKind;
    use crate::secret::hash_token;

    const NOW: u64 = 1_700_000_000;

    fn principal(exp: u64) -> Principal {
        Principal {
            kind: PrincipalKind::ReferenceUser,
            client_id: Some("app".into()),
            subject: Some("u1".into()),
            client_db: None,
            system_user: None,
            scopes: vec!["read".into()],
            expires_at: exp,
            claims: Vec::new(),
        }
    }

    fn cache() -> ReferenceCache {
        ReferenceCache::new("t", 1000, 30, 5)
    }

    #[test]
    fn an_entry_claiming_a_later_expiry_is_used_no_longer_than_the_ttl() {
        let store = MemoryStore::default();
        let h = hash_token("enrt_a");
        // Written by a cache of the same name with a TTL of an hour.
        let long = ReferenceCache::new("t", 1000, 3600, 3600);
        long.put(&store, &h, &Answer::Active(principal(NOW + 86_400)), NOW);
        long.put(&store, &hash_token("enrt_b"), &Answer::Inactive, NOW);
        let (_, until) = cache().get_until(&store, &h, NOW).unwrap();
        assert_eq!(until, NOW + 29, "clamped to now + cache_max_ttl_seconds");
        let (_, until) = cache().get_until(&store, &hash_token("enrt_b"), NOW).unwrap();
        assert_eq!(until, NOW + 4, "clamped to now + the negative TTL");
    }

    #[test]
    fn active_answer_lives_max_ttl_but_never_past_exp() {
        let store = MemoryStore::default();
        let h = hash_token("enrt_a");
        let answer = Answer::Active(principal(NOW + 3600));
        assert_eq!(cache().put(&store, &h, &answer, NOW), Some(NOW + 30));
        assert_eq!(cache().get(&store, &h, NOW + 29), Some(answer));
        assert_eq!(cache().get(&store, &h, NOW + 30), None);

        let soon = Answer::Active(principal(NOW + 10));
        assert_eq!(cache().put(&store, &h, &soon, NOW), Some(NOW + 10));
        assert_eq!(cache().get(&store, &h, NOW + 10), None);
    }

    #[test]
    fn inactive_answer_lives_the_negative_ttl() {
        let store = MemoryStore::default();
        let h = hash_token("enrt_b");
        assert_eq!(cache().put(&store, &h, &Answer::Inactive, NOW), Some(NOW + 5));
        assert_eq!(cache().get(&store, &h, NOW + 4), Some(Answer::Inactive));
        assert_eq!(cache().get(&store, &h, NOW + 5), None);
        let no_negative = ReferenceCache::new("t", 10, 30, 0);
        assert_eq!(no_negative.put(&store, &h, &Answer::Inactive, NOW), None);
    }

    #[test]
    fn a_slot_never_answers_for_another_token() {
        let store = MemoryStore::default();
        let tiny = ReferenceCache::new("t", 1, 30, 5);
        let a = hash_token("enrt_a");
        let b = hash_token("enrt_b");
        tiny.put(&store, &a, &Answer::Active(principal(NOW + 100)), NOW);
        assert_eq!(tiny.get(&store, &b, NOW), None);
        tiny.put(&store, &b, &Answer::Active(principal(NOW + 100)), NOW);
        assert_eq!(tiny.get(&store, &a, NOW), None, "evicted by another active answer");
        assert!(matches!(tiny.get(&store, &b, NOW), Some(Answer::Active(_))));
    }

    #[test]
    fn inactive_answers_never_evict_live_active_ones() {
        let store = MemoryStore::default();
        let tiny = ReferenceCache::new("t", 1, 30, 5);
        let good = hash_token("enrt_good");
        tiny.put(&store, &good, &Answer::Active(principal(NOW + 100)), NOW);
        for i in 0..1000 {
            let junk = hash_token(&format!("enrt_junk{i}"));
            assert_eq!(tiny.put(&store, &junk, &Answer::Inactive, NOW), None);
        }
        assert!(matches!(tiny.get(&store, &good, NOW), Some(Answer::Active(_))));
        let junk = hash_token("enrt_junk");
        assert_eq!(
            tiny.put(&store, &junk, &Answer::Inactive, NOW + 30),
            Some(NOW + 35),
            "once the active answer has expired, the slot is free"
        );
        assert_eq!(
            tiny.put(
                &store,
                &good,
                &Answer::Refused(crate::token_problem::TokenProblem::MalformedAnswerScope),
                NOW
            ),
            None,
            "refusals are not cached"
        );
    }

    #[test]
    fn the_introspection_budget_is_shared_and_per_second() {
        let store = MemoryStore::default();
        let c = cache();
        let spent: usize = (0..50).filter(|_| c.spend(&store, NOW, 20, true)).count();
        assert_eq!(spent, 20);
        assert!(!c.spend(&store, NOW, 20, true));
        assert!(c.spend(&store, NOW + 1, 20, true), "a new second, a new budget");
        let other_worker = cache();
        let more: usize = (0..50)
            .filter(|_| other_worker.spend(&store, NOW + 1, 20, true))
            .count();
        assert_eq!(more, 19, "workers share one budget");
    }

    #[test]
    fn unknown_tokens_use_half_the_budget_and_known_ones_the_rest() {
        let store = MemoryStore::default();
        let c = cache();
        let unknown: usize = (0..50).filter(|_| c.spend(&store, NOW, 20, false)).count();
        assert_eq!(unknown, 10, "half, for tokens never seen active");
        let known: usize = (0..50).filter(|_| c.spend(&store, NOW, 20, true)).count();
        assert_eq!(known, 10, "the reserve, for tokens seen active");
        assert!(
            !c.spend(&store, NOW, 1, true) && c.spend(&store, NOW + 1, 1, false),
            "a budget of 1 is not split"
        );
        let h = hash_token("enrt_known");
        assert!(!c.is_known(&store, &h));
        c.mark_known(&store, &h);
        assert!(c.is_known(&store, &h));
        c.mark_known(&store, &hash_token("enrt_other_in_another_slot"));
        assert!(c.is_known(&store, &h) || c.slot(&h) == c.slot(&hash_token("enrt_other_in_another_slot")));
    }

    #[test]
    fn keyspace_stays_bounded_for_100000_distinct_tokens() {
        let store = MemoryStore::default();
        let cache = cache();
        for i in 0..100_000u32 {
            let h = hash_token(&format!("enrt_{i:064X}"));
            if let Claim::Mine = cache.claim(&store, &h, u64::from(i), u64::from(i) + 1000) {
                cache.put(&store, &h, &Answer::Active(principal(NOW + 100)), NOW);
                cache.finish(&store, &h, None);
            }
            assert!(store.len() <= 2 * 1000, "{} keys after {i} tokens", store.len());
        }
        let entries = store.entries().iter().filter(|(k, _)| k.starts_with("t.ref.")).count();
        assert!(entries <= 1000, "{entries}");
        assert!(entries > 990, "the slots are used: {entries}");
    }

    #[test]
    fn the_raw_token_is_never_stored() {
        let store = MemoryStore::default();
        let token = crate::testing::EXAMPLE_PAT;
        let h = hash_token(token);
        cache().put(&store, &h, &Answer::Active(principal(NOW + 100)), NOW);
        cache().claim(&store, &h, 0, 10);
        for (k, v) in store.entries() {
            assert!(!k.contains("enrt_") && !String::from_utf8_lossy(&v).contains("445659C0"));
        }
    }

    #[test]
    fn one_worker_claims_and_the_others_wait_for_its_answer() {
        let store = MemoryStore::default();
        let c = cache();
        let h = hash_token("enrt_c");
        assert_eq!(c.claim(&store, &h, 1000, 2000), Claim::Mine);
        assert_eq!(c.claim(&store, &h, 1500, 2500), Claim::Theirs { deadline_ms: 2000 });
        assert_eq!(c.flight(&store, &h, 1500), Flight::InProgress { deadline_ms: 2000 });
        assert_eq!(
            c.claim(&store, &h, 2001, 3001),
            Claim::Mine,
            "an expired claim can be taken over"
        );
        c.finish(&store, &h, None);
        assert_eq!(c.flight(&store, &h, 2100), Flight::None);
        assert_eq!(c.claim(&store, &h, 2100, 3100), Claim::Mine);
    }

    #[test]
    fn a_failed_call_is_shared_briefly() {
        let store = MemoryStore::default();
        let c = cache();
        let h = hash_token("enrt_d");
        c.claim(&store, &h, 0, 1000);
        c.finish(&store, &h, Some(500));
        assert_eq!(c.flight(&store, &h, 100), Flight::Failed);
        assert_eq!(c.claim(&store, &h, 100, 1100), Claim::Failed);
        assert_eq!(c.claim(&store, &h, 600, 1600), Claim::Mine);
    }

    #[test]
    fn a_claim_race_lost_to_another_token_still_calls() {
        let store = MemoryStore::default();
        let c = ReferenceCache::new("t", 1, 30, 5);
        let a = hash_token("enrt_a");
        let b = hash_token("enrt_b");
        assert_eq!(c.claim(&store, &a, 0, 1000), Claim::Mine);
        assert_eq!(
            c.claim(&store, &b, 10, 1010),
            Claim::Mine,
            "b shares a's slot but not its call"
        );
    }
}
