//! The decision for one request: a final [`Verdict`] (allow with an
//! identity, deny with a rejection), or a [`Step`] that needs the outside
//! world first (the identity service's word on a reference token, fresh
//! signing keys for an unknown `kid`).
//!
//! Pure: the coordination in [`crate::worker`] gathers what a step needs and
//! finishes it here, with the same functions the first pass uses.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::request::{check_request, passes_as_preflight, RequestHead};
use crate::config::Config;
use crate::decision::credential::{self, Credential, TokenKind};
use crate::decision::verified_cache::{Remembered, VerifiedCache};
use crate::host::RsaHost;
use crate::jwt::jwks::KeySet;
use crate::jwt::{self, ClaimRules, JwtError, VerifyBudget};
use crate::policy::Access;
use crate::principal::{mapped_claims, Identity, Principal};
use crate::reference::introspection::Answer;
use crate::rejection::Rejection;
use crate::secret::{self, Secret, TokenHash};
use crate::stats::Stat;
use crate::token_problem::TokenProblem;

/// The final answer for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it, with these changes.
    Allow(Allowed),
    /// Refuse it with this rejection.
    Deny(Rejection),
}

/// Where the decision of a request stands after its first pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Decided.
    Done(Verdict),
    /// A well-formed reference token nobody on this worker remembers: ask
    /// the shared cache or the identity service, then
    /// [`Engine::finish_reference`].
    Introspect(PendingReference),
    /// A JWT signed by a key the filter does not know yet while keys come
    /// from the identity service: look for a newer key set (or fetch one),
    /// then [`Engine::finish_jwt`].
    AwaitKeys(PendingJwt),
}

/// The claims of a token already verified, as JSON (for `claims_to_headers`).
fn token_claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl From<Result<Allowed, Rejection>> for Verdict {
    fn from(result: Result<Allowed, Rejection>) -> Self {
        match result {
            Ok(allowed) => Self::Allow(allowed),
            Err(rejection) => Self::Deny(rejection),
        }
    }
}

/// A request whose JWT waits for fresh signing keys. Holds the token for
/// the length of the wait only; `Debug` does not show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingJwt {
    token: Secret,
    access: Access,
    credential_header: String,
    /// Refusals pass (`report_only`, for the whole filter or this rule).
    report_only: bool,
}

/// A request waiting for the identity service's word on its reference
/// token. The token is kept (redacted in `Debug`) in case the call must be
/// made again; the caches see only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReference {
    pub hash: TokenHash,
    token: Secret,
    access: Access,
    credential_header: String,
    report_only: bool,
}

impl PendingReference {
    /// The token, for the introspection callout.
    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// Short label for logs.
    pub fn fingerprint(&self) -> String {
        secret::fingerprint(&self.hash)
    }
}

/// An allowed request and what to add to or remove from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Who is calling and the identity headers to set; `None` on public
    /// routes. (The client's copies of those headers are always removed.)
    pub identity: Option<Arc<Identity>>,
    /// Credential header to remove (`strip_credential`).
    pub remove_header: Option<String>,
    /// In report-only mode: the refusal this request would have had.
    pub would_deny: Option<Rejection>,
}

impl Allowed {
    /// Identity headers to set.
    pub fn set_headers(&self) -> &[(String, String)] {
        self.identity.as_ref().map_or(&[], |i| &i.headers)
    }

    pub fn principal(&self) -> Option<&Principal> {
        self.identity.as_ref().map(|i| &i.principal)
    }

    /// The counter it goes under.
    pub fn stat(&self) -> Stat {
        if self.would_deny.is_some() {
            Stat::ReportOnlyPassed
        } else {
            Stat::Allowed
        }
    }
}

/// The prepared configuration; decides requests.
pub struct Engine {
    config: Config,
    /// The host's RSA verifier, when it offers one and the configuration
    /// lets it be used.
    rsa_host: Option<Box<dyn RsaHost>>,
    verifications: Verifications,
    /// The module's verifications (all but RS256) of the second.
    budget: VerifyBudget,
}

/// What the engine counted since the last [`Engine::take_counts`].
#[derive(Debug, Default)]
struct Verifications {
    host: AtomicU32,
    module: AtomicU32,
    jwt_hits: AtomicU32,
    jwt_misses: AtomicU32,
    over_budget: AtomicU32,
}

/// Signatures verified (by the host, in the module), and JWTs found in or
/// missing from a worker's memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub by_host: u32,
    pub in_module: u32,
    pub jwt_hits: u32,
    pub jwt_misses: u32,
    pub over_budget: u32,
}

fn bump(count: &AtomicU32) {
    count.fetch_add(1, Ordering::Relaxed);
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .field("rsa_host", &self.rsa_host.is_some())
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(config: Config) -> Self {
        Self {
            budget: VerifyBudget::new(config.max_module_verifications_per_second),
            config,
            rsa_host: None,
            verifications: Verifications::default(),
        }
    }

    /// The same engine, with RS256 signatures checked by the host.
    pub fn with_rsa_host(mut self, host: Box<dyn RsaHost>) -> Self {
        self.rsa_host = Some(host);
        self
    }

    /// What was counted since the last call.
    pub fn take_counts(&self) -> Counts {
        let v = &self.verifications;
        Counts {
            by_host: v.host.swap(0, Ordering::Relaxed),
            in_module: v.module.swap(0, Ordering::Relaxed),
            jwt_hits: v.jwt_hits.swap(0, Ordering::Relaxed),
            jwt_misses: v.jwt_misses.swap(0, Ordering::Relaxed),
            over_budget: v.over_budget.swap(0, Ordering::Relaxed),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn claim_rules(&self) -> ClaimRules<'_> {
        ClaimRules {
            issuers: &self.config.issuers,
            audiences: &self.config.audiences,
            algorithms: &self.config.algorithms,
            clock_skew_seconds: self.config.clock_skew_seconds,
            require_at_jwt_typ: self.config.require_at_jwt_typ,
        }
    }

    /// The first pass over a request, against the current signing `keys`
    /// and what this worker remembers. `now` is seconds since the epoch.
    pub fn decide(&self, request: &RequestHead<'_>, keys: &KeySet, memory: &mut Remembered, now: u64) -> Step {
        // The request-wide checks: only the whole filter's report-only mode
        // softens them. A rule's report-only mode is about its own route,
        // and an override header would make the upstream serve another.
        if let Err(rejection) = check_request(request) {
            return Step::Done(self.settle(Verdict::Deny(rejection), self.config.report_only));
        }
        match self.first_pass(request, keys, memory, now) {
            Ok(Step::Done(verdict)) => Step::Done(self.settle(verdict, self.report_only(request))),
            Ok(step) => step,
            Err(rejection) => Step::Done(self.settle(Verdict::Deny(rejection), self.report_only(request))),
        }
    }

    /// Whether refusals of this request pass: the whole filter, or its
    /// rule, is in report-only mode.
    fn report_only(&self, request: &RequestHead<'_>) -> bool {
        self.config.report_only || self.config.policy.report_only(request.method, request.path)
    }

    /// In report-only mode a refusal (400, 401, 403) becomes a pass without
    /// identity headers, logged and counted as such. 503 still refuses: the
    /// filter could not judge, and report-only is about its judgements.
    fn settle(&self, verdict: Verdict, report_only: bool) -> Verdict {
        match verdict {
            Verdict::Deny(rejection) if report_only && rejection.status() != 503 => {
                log::info!("erp-edge-validator: report-only: would refuse: {rejection}");
                Verdict::Allow(Allowed {
                    identity: None,
                    remove_header: None,
                    would_deny: Some(rejection),
                })
            }
            verdict => verdict,
        }
    }

    /// Finishes a reference-token request once the identity service (or the
    /// shared cache) has answered; `Err` is why it could not.
    ///
    /// An active answer the shared cache keeps until second `until` is
    /// remembered in `references` as long.
    pub fn finish_reference(
        &self,
        pending: &PendingReference,
        answer: Result<&Answer, &Rejection>,
        references: &mut VerifiedCache,
        until: Option<u64>,
    ) -> Verdict {
        let verdict = self.finish_reference_inner(pending, answer, references, until);
        self.settle(verdict, pending.report_only)
    }

    fn finish_reference_inner(
        &self,
        pending: &PendingReference,
        answer: Result<&Answer, &Rejection>,
        references: &mut VerifiedCache,
        until: Option<u64>,
    ) -> Verdict {
        let principal = match answer {
            Ok(Answer::Active(principal)) => principal.clone(),
            Ok(Answer::Inactive) => return Verdict::Deny(Rejection::InvalidToken(TokenProblem::Inactive)),
            Ok(Answer::Refused(problem)) => return Verdict::Deny(Rejection::InvalidToken(*problem)),
            Err(rejection) => return Verdict::Deny(rejection.clone()),
        };
        let identity = self.identity(principal, || pending.hash).inspect(|identity| {
            if let Some(until) = until {
                references.insert(pending.token.expose(), None, Arc::clone(identity), until);
            }
        });
        identity
            .and_then(|identity| self.allow(&pending.access, identity, &pending.credential_header))
            .into()
    }

    /// Finishes a JWT request after the wait for keys: the same verification
    /// as the first pass, and an unknown `kid` now is final.
    pub fn finish_jwt(&self, pending: &PendingJwt, keys: &KeySet, memory: &mut Remembered, now: u64) -> Verdict {
        let token = pending.token.expose();
        // Another request may have verified the same token meanwhile.
        let remembered = memory.jwts.get(token, now).map(|identity| Ok(Arc::clone(identity)));
        let verdict = remembered
            .unwrap_or_else(|| self.verify_jwt(token, keys, &mut memory.jwts, now))
            .map_err(Rejection::from)
            .and_then(|identity| self.allow(&pending.access, identity, &pending.credential_header))
            .into();
        self.settle(verdict, pending.report_only)
    }

    fn first_pass(
        &self,
        request: &RequestHead<'_>,
        keys: &KeySet,
        memory: &mut Remembered,
        now: u64,
    ) -> Result<Step, Rejection> {
        if passes_as_preflight(&self.config, request) {
            return Ok(Step::Done(Verdict::Allow(Allowed {
                identity: None,
                remove_header: None,
                would_deny: None,
            })));
        }
        let access = self.config.policy.access(request.method, request.path)?;
        if *access == Access::Public {
            return Ok(Step::Done(Verdict::Allow(Allowed {
                identity: None,
                remove_header: None,
                would_deny: None,
            })));
        }
        // A token this worker verified (or had vouched for) before is
        // exactly that token: its bytes were checked then. The common case
        // costs a short hash and one comparison.
        let headers = || request.headers.iter().copied();
        if let Some(found) = credential::candidate(headers(), &self.config.api_key_headers) {
            let jwt = memory.jwts.get(found.token, now);
            if jwt.is_some() {
                bump(&self.verifications.jwt_hits);
            }
            if let Some(identity) = jwt.or_else(|| memory.references.get(found.token, now)) {
                return self
                    .allow(access, Arc::clone(identity), found.header)
                    .map(|allowed| Step::Done(Verdict::Allow(allowed)));
            }
        }
        let located = credential::locate(headers(), &self.config.api_key_headers, self.config.max_token_bytes)?;
        let credential = credential::classify(located)?;
        match credential.kind {
            TokenKind::Jwt => match self.verify_jwt(credential.token, keys, &mut memory.jwts, now) {
                Ok(identity) => self
                    .allow(access, identity, credential.header)
                    .map(|allowed| Step::Done(Verdict::Allow(allowed))),
                Err(TokenProblem::Jwt(JwtError::UnknownKey)) if self.config.remote_jwks.is_some() => {
                    Ok(Step::AwaitKeys(PendingJwt {
                        token: Secret::new(credential.token),
                        access: access.clone(),
                        credential_header: credential.header.to_owned(),
                        report_only: self.report_only(request),
                    }))
                }
                Err(e) => Err(e.into()),
            },
            TokenKind::Reference => self.reference(access, &credential, self.report_only(request)),
        }
    }

    /// A reference token this worker does not remember (the first pass
    /// looked): refused if malformed, else to be introspected.
    fn reference(&self, access: &Access, credential: &Credential<'_>, report_only: bool) -> Result<Step, Rejection> {
        if self.config.introspection.is_none() {
            return Err(Rejection::InvalidToken(TokenProblem::ReferenceNotAccepted));
        }
        if !credential::is_well_formed_reference(credential.token) {
            return Err(Rejection::InvalidToken(TokenProblem::MalformedReference));
        }
        Ok(Step::Introspect(PendingReference {
            // Only now, on a miss: the shared cache knows tokens by SHA-256.
            hash: secret::hash_token(credential.token),
            token: Secret::new(credential.token),
            access: access.clone(),
            credential_header: credential.header.to_owned(),
            report_only,
        }))
    }

    /// Verifies a JWT the worker does not remember and remembers it: the one
    /// verification path, for first passes and for requests that waited for
    /// keys (both look in `verified` first).
    fn verify_jwt(
        &self,
        token: &str,
        keys: &KeySet,
        verified: &mut VerifiedCache,
        now: u64,
    ) -> Result<Arc<Identity>, TokenProblem> {
        let host = self.rsa_host.as_deref();
        bump(&self.verifications.jwt_misses);
        let checked = jwt::verify_with(token, keys, &self.claim_rules(), now, host, Some(&self.budget))
            .inspect_err(|e| {
                if *e == JwtError::VerificationBudgetSpent {
                    bump(&self.verifications.over_budget);
                }
            })
            .map_err(TokenProblem::Jwt)?;
        let counter = if checked.by_host {
            &self.verifications.host
        } else {
            &self.verifications.module
        };
        bump(counter);
        let mut principal = checked.principal;
        if !self.config.claims_to_headers.is_empty() {
            let claims = token_claims(token).ok_or(TokenProblem::UnreadableClaims)?;
            principal.claims = mapped_claims(&claims, &self.config.claims_to_headers)?;
        }
        let identity = match self.identity(principal, || secret::hash_token(token)) {
            Ok(identity) => identity,
            Err(_) => return Err(TokenProblem::Jwt(JwtError::UnsafeClaim)),
        };
        let until = identity
            .principal
            .expires_at
            .saturating_add(self.config.clock_skew_seconds);
        verified.insert(token, Some(checked.key), Arc::clone(&identity), until);
        Ok(identity)
    }

    /// Checks the route's scopes and builds what the upstream receives.
    fn allow(&self, access: &Access, identity: Arc<Identity>, credential_header: &str) -> Result<Allowed, Rejection> {
        access.check(&identity.principal.scopes)?;
        Ok(Allowed {
            identity: Some(identity),
            remove_header: self.config.strip_credential.then(|| credential_header.to_owned()),
            would_deny: None,
        })
    }

    /// The identity of a principal from a fresh verification or answer for
    /// the token `hash` gives. The fingerprint is for the access log: the
    /// hash is asked for only when something prints it (for a JWT it is a
    /// SHA-256 over the whole token).
    fn identity(&self, principal: Principal, hash: impl FnOnce() -> TokenHash) -> Result<Arc<Identity>, Rejection> {
        let fingerprint = if self.config.access_log_fields {
            secret::fingerprint(&hash())
        } else {
            String::new()
        };
        Identity::new(principal, &self.config.identity_headers, fingerprint).map(Arc::new)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
