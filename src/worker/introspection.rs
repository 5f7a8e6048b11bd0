//! The introspection half of the worker: requests that wait for a
//! reference token's answer share one callout; across workers a claim in
//! shared data lets one worker call while the others poll the shared
//! cache; a claim that outlives its deadline is taken over; a failure is
//! shared for a short while.

use super::*;

/// A request paused for a reference token's answer.
#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) stream: ContextId,
    pub(super) pending: PendingReference,
}

/// A callout in flight and the context the host delivers its answer to.
#[derive(Debug)]
pub(super) struct Call {
    pub(super) purpose: Purpose,
    pub(super) owner: ContextId,
    /// When it was made (ms), when the clock could be read.
    pub(super) sent_ms: Option<u64>,
}

/// Another worker's introspection this worker waits for: the claim's
/// deadline, and the token, kept only to take over if it never answers.
#[derive(Debug)]
pub(super) struct RemoteWait {
    pub(super) deadline_ms: u64,
    pub(super) token: Secret,
}

impl Worker {
    pub(super) fn introspect(
        &mut self,
        stream: ContextId,
        pending: PendingReference,
        now: Now,
        store: &dyn SharedStore,
        out: &mut Vec<Effect>,
    ) {
        let (Some(cache), Some(config)) = (&self.cache, &self.engine.config().introspection) else {
            out.push(Effect::Reply {
                stream,
                rejection: UNAVAILABLE,
            });
            return;
        };
        if let Some((answer, until)) = cache.get_until(store, &pending.hash, now.secs) {
            out.push(Effect::Count(Stat::ReferenceCacheHits));
            let verdict = self
                .engine
                .finish_reference(&pending, Ok(&answer), &mut self.memory.references, Some(until));
            out.push(conclude(stream, verdict));
            return;
        }
        let hash = pending.hash;
        if let Some(waiting) = self.waiters.get_mut(&hash) {
            waiting.push(Waiter { stream, pending });
            return;
        }
        let deadline_ms = now.ms.saturating_add(config.timeout_ms).saturating_add(CLAIM_SLACK_MS);
        match cache.claim(store, &hash, now.ms, deadline_ms) {
            Claim::Failed => {
                out.push(Effect::Reply {
                    stream,
                    rejection: UNAVAILABLE,
                });
                return;
            }
            Claim::Theirs { deadline_ms } => {
                log::debug!("erp-edge-validator: {} waits for another worker", pending.fingerprint());
                let token = pending.token().clone();
                self.remote.insert(hash, RemoteWait { deadline_ms, token });
            }
            Claim::Mine => {
                let token = pending.token().clone();
                self.waiters.insert(hash, vec![Waiter { stream, pending }]);
                return self.call_identity(hash, &token, now, store, out);
            }
        }
        self.waiters.insert(hash, vec![Waiter { stream, pending }]);
    }

    /// Makes the introspection call for a claimed token if this second's
    /// budget allows; otherwise releases the claim and answers its waiters
    /// 503 without calling.
    pub(super) fn call_identity(
        &mut self,
        hash: TokenHash,
        token: &Secret,
        now: Now,
        store: &dyn SharedStore,
        out: &mut Vec<Effect>,
    ) {
        let engine = Arc::clone(&self.engine);
        let (Some(cache), Some(config)) = (&self.cache, &engine.config().introspection) else {
            return self.resolve(&hash, Err(&UNAVAILABLE), None, out);
        };
        let known = cache.is_known(store, &hash);
        if cache.spend(store, now.secs, config.max_calls_per_second, known) {
            out.push(Effect::Dispatch {
                purpose: Purpose::Introspect(hash),
                callout: config.callout(token),
            });
            return;
        }
        cache.finish(store, &hash, None);
        let refused = self.waiters.get(&hash).map_or(0, Vec::len);
        out.extend((0..refused).map(|_| Effect::Count(Stat::IntrospectionsOverBudget)));
        log::debug!(
            "erp-edge-validator: introspection budget spent; {} not asked",
            fingerprint(&hash)
        );
        self.resolve(&hash, Err(&OVER_BUDGET), None, out);
    }

    pub(super) fn introspected(
        &mut self,
        hash: &TokenHash,
        response: &dyn CalloutResponse,
        now: Option<Now>,
        store: &dyn SharedStore,
        out: &mut Vec<Effect>,
    ) {
        let (Some(cache), Some(config)) = (&self.cache, &self.engine.config().introspection) else {
            return self.resolve(hash, Err(&UNAVAILABLE), None, out);
        };
        let Some(now) = now else {
            // Without a clock no expiry can be computed: nothing is cached,
            // and the next request calls again.
            cache.finish(store, hash, None);
            return self.resolve(hash, Err(&NO_CLOCK), None, out);
        };
        let status = response.status();
        let answer = match response.body(config.max_response_bytes) {
            None => Err(UNAVAILABLE),
            Some(body) => {
                let rules = AnswerRules {
                    audiences: &self.engine.config().audiences,
                    issuers: &self.engine.config().issuers,
                    claims_to_headers: &self.engine.config().claims_to_headers,
                };
                crate::reference::introspection::read_answer(status.as_deref(), &body, now.secs, rules)
            }
        };
        let mut until = None;
        out.push(Effect::Count(match (&answer, status.as_deref()) {
            (Ok(Answer::Active(_)), _) => Stat::IntrospectionActive,
            (Ok(_), _) => Stat::IntrospectionInactive,
            // Envoy answers a callout that ran out of time with its own 504.
            (Err(_), Some("504")) => Stat::IntrospectionTimeouts,
            (Err(_), _) => Stat::IntrospectionErrors,
        }));
        match &answer {
            Ok(a) => {
                if matches!(a, Answer::Active(_)) {
                    cache.mark_known(store, hash);
                }
                let mut expiry = cache.put(store, hash, a, now.secs);
                if expiry.is_none() {
                    // Too large for the shared cache: this worker remembers
                    // it as long, rather than call again for every request.
                    expiry = cache.too_large_to_share(a, now.secs);
                    if expiry.is_some() {
                        out.push(Effect::Count(Stat::IntrospectionAnswersTooLarge));
                    }
                }
                until = expiry.map(last_usable_second);
                cache.finish(store, hash, None);
                log::debug!(
                    "erp-edge-validator: {} is {} (cached until {expiry:?})",
                    fingerprint(hash),
                    if matches!(a, Answer::Active(_)) {
                        "active"
                    } else {
                        "inactive"
                    }
                );
            }
            Err(_) => {
                log::warn!(
                    "erp-edge-validator: introspection of {} failed (status {})",
                    fingerprint(hash),
                    status.as_deref().unwrap_or("none")
                );
                cache.finish(store, hash, Some(now.ms.saturating_add(FAILURE_SHARED_MS)));
            }
        }
        self.resolve(hash, answer.as_ref(), until, out);
    }

    /// Decides every request waiting for a token; an answer the shared
    /// cache keeps until second `until` is remembered.
    pub(super) fn resolve(
        &mut self,
        hash: &TokenHash,
        answer: Result<&Answer, &Rejection>,
        until: Option<u64>,
        out: &mut Vec<Effect>,
    ) {
        self.remote.remove(hash);
        self.orphans.retain(|(h, _)| h != hash);
        for waiter in self.waiters.remove(hash).unwrap_or_default() {
            let verdict = self
                .engine
                .finish_reference(&waiter.pending, answer, &mut self.memory.references, until);
            if let Verdict::Deny(r) = &verdict {
                log::debug!("erp-edge-validator: denied {}: {r}", waiter.pending.fingerprint());
            }
            out.push(conclude(waiter.stream, verdict));
        }
    }

    /// Looks for answers other workers fetched; takes over a claim that
    /// ended without an answer or outlived its deadline; calls again for
    /// orphaned requests.
    pub(super) fn poll_remote(&mut self, now: Now, store: &dyn SharedStore, out: &mut Vec<Effect>) {
        let engine = Arc::clone(&self.engine);
        let (Some(cache), Some(config)) = (self.cache.clone(), engine.config().introspection.as_ref()) else {
            return;
        };
        let deadline_ms = now.ms.saturating_add(config.timeout_ms).saturating_add(CLAIM_SLACK_MS);
        for (hash, token) in std::mem::take(&mut self.orphans) {
            if self.waiters.contains_key(&hash) {
                self.call_identity(hash, &token, now, store, out);
            }
        }
        let remote: Vec<(TokenHash, u64)> = self.remote.iter().map(|(h, r)| (*h, r.deadline_ms)).collect();
        for (hash, their_deadline) in remote {
            if let Some((answer, until)) = cache.get_until(store, &hash, now.secs) {
                out.push(Effect::Count(Stat::ReferenceCacheHits));
                self.resolve(&hash, Ok(&answer), Some(until), out);
                continue;
            }
            match cache.flight(store, &hash, now.ms) {
                Flight::Failed => self.resolve(&hash, Err(&UNAVAILABLE), None, out),
                Flight::InProgress { .. } if now.ms <= their_deadline => {}
                // Their claim ended without an answer, or outlived its deadline.
                _ => match cache.claim(store, &hash, now.ms, deadline_ms) {
                    Claim::Theirs { deadline_ms } => {
                        if let Some(wait) = self.remote.get_mut(&hash) {
                            wait.deadline_ms = deadline_ms;
                        }
                    }
                    Claim::Failed => self.resolve(&hash, Err(&UNAVAILABLE), None, out),
                    Claim::Mine => {
                        if let Some(wait) = self.remote.remove(&hash) {
                            log::debug!("erp-edge-validator: taking over the call for {}", fingerprint(&hash));
                            self.call_identity(hash, &wait.token, now, store, out);
                        }
                    }
                },
            }
        }
    }
}
