//! The signing-keys half of the worker: a JWT whose `kid` is unknown looks
//! for a newer published key set first, then waits for a fetch (forcing
//! one if the cooldown allows); the root context fetches when due, and
//! every worker picks up a published set on its tick.

use super::*;
use crate::token_problem::TokenProblem;

pub(super) const KEYS_UNAVAILABLE: Rejection =
    Rejection::Unavailable("the signing keys could not be fetched; retry later");

/// A request paused for signing keys.
#[derive(Debug)]
pub(super) struct KeyWaiter {
    pub(super) stream: ContextId,
    pub(super) pending: PendingJwt,
    /// Fetches claimed when it arrived: only a later one can vouch that
    /// its `kid` does not exist.
    pub(super) seen_fetches: u64,
    pub(super) deadline_ms: u64,
}

/// The final answer for a `kid` no fetch will bring: 401, unless the keys
/// themselves are stale (then nobody can say, and it is 503).
pub(super) fn unknown_key_verdict(
    stream: ContextId,
    verdict: Verdict,
    sync: &KeySync,
    store: &dyn SharedStore,
    now: Now,
) -> Effect {
    if is_unknown_key(&verdict) && sync.is_stale(store, now.ms) {
        return Effect::Reply {
            stream,
            rejection: KEYS_UNAVAILABLE,
        };
    }
    conclude(stream, verdict)
}

pub(super) fn is_unknown_key(verdict: &Verdict) -> bool {
    matches!(
        verdict,
        Verdict::Deny(Rejection::InvalidToken(TokenProblem::Jwt(JwtError::UnknownKey)))
    )
}

impl Worker {
    /// A JWT names an unknown `kid`: use a newer published set if there is
    /// one; otherwise wait for a fetch in flight, or force one if the
    /// cooldown allows; otherwise decide now.
    pub(super) fn await_keys(
        &mut self,
        stream: ContextId,
        pending: PendingJwt,
        now: Now,
        store: &dyn SharedStore,
        out: &mut Vec<Effect>,
    ) {
        let Some(sync) = self.key_sync.clone() else {
            let verdict = self.engine.finish_jwt(&pending, &self.keys, &mut self.memory, now.secs);
            out.push(conclude(stream, verdict));
            return;
        };
        // Before the set (see `KeySync::fetches`).
        let fetches = sync.fetches(store);
        if self.refresh_keys(&sync, store, now) {
            let verdict = self.engine.finish_jwt(&pending, &self.keys, &mut self.memory, now.secs);
            if !is_unknown_key(&verdict) {
                out.push(conclude(stream, verdict));
                return;
            }
        }
        let waiting_already = self.force_key_fetch || self.fetching_keys || !self.key_waiters.is_empty();
        // A fetch another worker claimed since the snapshot may bring the
        // key: wait for it (it counts as one the request may trust).
        if !waiting_already && !fetches.in_flight(now.ms) && !sync.claimed_since(store, &fetches) {
            if !sync.may_force(store, now.ms) {
                log::debug!(
                    "erp-edge-validator: unknown kid within the cooldown (keys v{})",
                    self.key_version
                );
                let verdict = self.engine.finish_jwt(&pending, &self.keys, &mut self.memory, now.secs);
                out.push(unknown_key_verdict(stream, verdict, &sync, store, now));
                return;
            }
            self.force_key_fetch = true;
        }
        let timeout_ms = self.engine.config().remote_jwks.as_ref().map_or(0, |r| r.timeout_ms);
        self.key_waiters.push(KeyWaiter {
            stream,
            pending,
            seen_fetches: fetches.claimed,
            // Room for a fetch claimed on the next tick to time out and be
            // reported.
            deadline_ms: now
                .ms
                .saturating_add(timeout_ms)
                .saturating_add(CLAIM_SLACK_MS)
                .saturating_add(KEY_CHECK.as_millis() as u64),
        });
    }

    /// Picks up a newly published key set. True when the keys changed.
    pub(super) fn refresh_keys(&mut self, sync: &KeySync, store: &dyn SharedStore, now: Now) -> bool {
        if sync.is_stale(store, now.ms) {
            if self.key_version != 0 {
                log::error!("erp-edge-validator: no good key fetch for `remote_jwks.max_stale_seconds`: fetched keys are no longer trusted");
                self.use_keys(self.engine.config().inline_keys.clone());
                // Any set published once fetches succeed again is taken.
                self.key_version = 0;
            }
            return false;
        }
        let Some((version, digest, body)) = sync.newer_published(store, self.key_version) else {
            return false;
        };
        self.key_version = version;
        match KeySet::from_json(&body, &self.engine.config().algorithms) {
            // The digest is recomputed from the keys read, not trusted.
            Ok(remote) if remote.digest() != digest => {
                log::error!("erp-edge-validator: published key set v{version} does not match its digest: not used");
                false
            }
            Ok(remote) => {
                log::info!("erp-edge-validator: signing keys v{version}: {:?}", remote.kids());
                self.use_keys(self.engine.config().inline_keys.merged(&remote));
                true
            }
            Err(e) => {
                log::error!("erp-edge-validator: published key set v{version} unreadable: {e}");
                false
            }
        }
    }

    /// Checks requests against `keys` from now on. Tokens verified by a key
    /// that changed or disappeared are forgotten, so a retired key stops
    /// working for remembered tokens too; the others stay remembered.
    pub(super) fn use_keys(&mut self, keys: KeySet) {
        self.memory.jwts.retain_keys(|material| keys.has_material(material));
        self.keys = keys;
    }

    /// Picks up a published set, fetches when due (or forced), and decides
    /// the requests that waited for keys.
    pub(super) fn tick_keys(&mut self, now: Now, store: &dyn SharedStore, out: &mut Vec<Effect>) {
        let Some(sync) = self.key_sync.clone() else { return };
        // Before the set (see `KeySync::fetches`): what it says has
        // completed is in the keys the waiters are decided with.
        let fetches = sync.fetches(store);
        self.refresh_keys(&sync, store, now);
        if let Some(good_ms) = sync.last_good_ms(store) {
            out.push(Effect::Record(
                Stat::KeySetAgeSeconds,
                now.ms.saturating_sub(good_ms) / 1000,
            ));
        }
        let forced = std::mem::take(&mut self.force_key_fetch);
        if !self.fetching_keys
            && ((forced && sync.try_claim(store, Reason::UnknownKid, now.ms))
                || sync.try_claim(store, Reason::Periodic, now.ms))
        {
            if let Some(remote) = &self.engine.config().remote_jwks {
                self.fetching_keys = true;
                out.push(Effect::Dispatch {
                    purpose: Purpose::Keys,
                    callout: remote.callout(),
                });
            }
        }
        let mut still_waiting = Vec::new();
        for waiter in std::mem::take(&mut self.key_waiters) {
            let verdict = self
                .engine
                .finish_jwt(&waiter.pending, &self.keys, &mut self.memory, now.secs);
            if !is_unknown_key(&verdict) {
                out.push(conclude(waiter.stream, verdict));
                continue;
            }
            let unavailable = Effect::Reply {
                stream: waiter.stream,
                rejection: KEYS_UNAVAILABLE,
            };
            let state = fetches.wait_state(waiter.seen_fetches, now.ms);
            log::debug!(
                "erp-edge-validator: a request waiting for keys (v{}): {state:?}, seen {} fetches",
                self.key_version,
                waiter.seen_fetches
            );
            match state {
                KeyWait::Fetched { ok: true } => out.push(conclude(waiter.stream, verdict)),
                // The identity service could not say whether the key exists.
                KeyWait::Fetched { ok: false } => out.push(unavailable),
                _ if now.ms >= waiter.deadline_ms => out.push(unavailable),
                KeyWait::InFlight => still_waiting.push(waiter),
                KeyWait::Idle if forced || self.fetching_keys => still_waiting.push(waiter),
                // Claimed since the snapshot: the next tick decides.
                KeyWait::Idle if sync.claimed_since(store, &fetches) => still_waiting.push(waiter),
                KeyWait::Idle if sync.may_force(store, now.ms) => {
                    self.force_key_fetch = true;
                    still_waiting.push(waiter);
                }
                KeyWait::Idle => out.push(unknown_key_verdict(waiter.stream, verdict, &sync, store, now)),
            }
        }
        self.key_waiters = still_waiting;
    }

    /// The JWKS fetch answered: publish a good set, keep the old one otherwise.
    pub(super) fn keys_fetched(
        &mut self,
        response: &dyn CalloutResponse,
        now: Option<Now>,
        store: &dyn SharedStore,
        out: &mut Vec<Effect>,
    ) {
        self.fetching_keys = false;
        let (Some(sync), Some(config)) = (&self.key_sync, &self.engine.config().remote_jwks) else {
            return;
        };
        let Some(now) = now else {
            // The claim runs out by itself; the next tick with a clock retries.
            return;
        };
        let status = response.status();
        let body = response.body(config.max_bytes);
        match config.read(status.as_deref(), body.as_deref(), &self.engine.config().algorithms) {
            Ok(keys) => {
                if !keys.skipped().is_empty() {
                    log::warn!("erp-edge-validator: skipped signing keys: {}", keys.skipped_summary());
                }
                out.push(Effect::Count(Stat::JwksFetches));
                sync.finish(store, now.ms, body.as_deref().map(|b| (b, keys.digest())));
            }
            Err(e) => {
                log::warn!("erp-edge-validator: signing key fetch failed, keeping the last good set: {e}");
                out.push(Effect::Count(Stat::JwksFetchFailures));
                sync.finish(store, now.ms, None);
            }
        }
        // Pick the new set up and decide the waiters on the next tick, now.
        self.tick = NOW_TICK;
        out.push(Effect::Tick(NOW_TICK));
    }
}
