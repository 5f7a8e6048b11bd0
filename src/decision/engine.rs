//! The decision for one request: a final [`Verdict`] (allow with an
//! identity, deny with a rejection), or a [`Step`] that needs the outside
//! world first (the identity service's word on a reference token, fresh
//! signing keys for an unknown `kid`).
//!
//! Pure: the coordination in [`crate::worker`] gathers what a step needs and
//! finishes it here, with the same functions the first pass uses.

use std::cell::Cell;
use std::rc::Rc;

use crate::config::Config;
use crate::credential::{self, Credential, TokenKind};
use crate::host::RsaHost;
use crate::introspection::Answer;
use crate::jwks::KeySet;
use crate::jwt::{self, ClaimRules, JwtError};
use crate::policy::Access;
use crate::principal::{mapped_claims, same_header_name, Identity, Principal};
use crate::rejection::Rejection;
use crate::secret::{self, Secret, TokenHash};
use crate::stats::Stat;
use crate::verified::{Remembered, VerifiedCache};

/// The parts of a request the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
}

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

/// Headers that make some frameworks serve another method or path than the
/// one the route rules decided on: refused, never passed on.
const OVERRIDE_HEADERS: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// What no request may be, whatever its route and credential.
pub(crate) fn check_request(request: &RequestHead<'_>) -> Result<(), Rejection> {
    // RFC 9110 §9.1: methods are case-sensitive and the standard ones are
    // upper-case. `post` (HTTP/2 allows it) would match no rule written for
    // POST while an upstream may still treat it as one.
    let canonical = !request.method.is_empty()
        && request
            .method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !canonical {
        return Err(Rejection::InvalidRequest(
            "the method is not in canonical upper-case form",
        ));
    }
    let overrides = |name: &str| OVERRIDE_HEADERS.iter().any(|h| same_header_name(name, h));
    if request.headers.iter().any(|(name, _)| overrides(name)) {
        return Err(Rejection::InvalidRequest(
            "method and URL override headers are not accepted",
        ));
    }
    Ok(())
}

/// The claims of a token already verified, as JSON (for `claims_to_headers`).
fn token_claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A CORS preflight (Fetch standard §3.2.2): `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. Browsers send it without credentials.
pub(crate) fn is_cors_preflight(request: &RequestHead<'_>) -> bool {
    let has = |name: &str| {
        request
            .headers
            .iter()
            .any(|(n, v)| same_header_name(n, name) && !v.is_empty())
    };
    request.method == "OPTIONS" && has("origin") && has("access-control-request-method")
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
    pub identity: Option<Rc<Identity>>,
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
}

/// What the engine counted since the last [`Engine::take_counts`].
#[derive(Debug, Default)]
struct Verifications {
    host: Cell<u32>,
    module: Cell<u32>,
    jwt_hits: Cell<u32>,
    jwt_misses: Cell<u32>,
}

/// Signatures verified (by the host, in the module), and JWTs found in or
/// missing from a worker's memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub by_host: u32,
    pub in_module: u32,
    pub jwt_hits: u32,
    pub jwt_misses: u32,
}

fn bump(cell: &Cell<u32>) {
    cell.set(cell.get().saturating_add(1));
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
            by_host: v.host.take(),
            in_module: v.module.take(),
            jwt_hits: v.jwt_hits.take(),
            jwt_misses: v.jwt_misses.take(),
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
            Ok(Answer::Inactive) => return Verdict::Deny(Rejection::InvalidToken(crate::stats::INACTIVE)),
            Ok(Answer::Refused(reason)) => return Verdict::Deny(Rejection::InvalidToken(reason)),
            Err(rejection) => return Verdict::Deny(rejection.clone()),
        };
        let identity = self.identity(principal, || pending.hash).inspect(|identity| {
            if let Some(until) = until {
                references.insert(pending.token.expose(), None, Rc::clone(identity), until);
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
        let remembered = memory.jwts.get(token, now).map(|identity| Ok(Rc::clone(identity)));
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
        check_request(request)?;
        if self.config.bypass_cors_preflight && is_cors_preflight(request) {
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
                    .allow(access, Rc::clone(identity), found.header)
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
                Err(JwtError::UnknownKey) if self.config.remote_jwks.is_some() => Ok(Step::AwaitKeys(PendingJwt {
                    token: Secret::new(credential.token),
                    access: access.clone(),
                    credential_header: credential.header.to_owned(),
                    report_only: self.report_only(request),
                })),
                Err(e) => Err(e.into()),
            },
            TokenKind::Reference => self.reference(access, &credential, self.report_only(request)),
        }
    }

    /// A reference token this worker does not remember (the first pass
    /// looked): refused if malformed, else to be introspected.
    fn reference(&self, access: &Access, credential: &Credential<'_>, report_only: bool) -> Result<Step, Rejection> {
        if self.config.introspection.is_none() {
            return Err(Rejection::InvalidToken("reference tokens are not accepted here"));
        }
        if !credential::is_well_formed_reference(credential.token) {
            return Err(Rejection::InvalidToken("the reference token is malformed"));
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
    ) -> Result<Rc<Identity>, JwtError> {
        let host = self.rsa_host.as_deref();
        bump(&self.verifications.jwt_misses);
        let checked = jwt::verify_with(token, keys, &self.claim_rules(), now, host)?;
        let counter = if checked.by_host {
            &self.verifications.host
        } else {
            &self.verifications.module
        };
        bump(counter);
        let mut principal = checked.principal;
        if !self.config.claims_to_headers.is_empty() {
            principal.claims = token_claims(token)
                .map(|claims| mapped_claims(&claims, &self.config.claims_to_headers))
                .unwrap_or_default();
        }
        let identity = match self.identity(principal, || secret::hash_token(token)) {
            Ok(identity) => identity,
            Err(_) => return Err(JwtError::UnsafeClaim),
        };
        let until = identity
            .principal
            .expires_at
            .saturating_add(self.config.clock_skew_seconds);
        verified.insert(token, Some(checked.key), Rc::clone(&identity), until);
        Ok(identity)
    }

    /// Checks the route's scopes and builds what the upstream receives.
    fn allow(&self, access: &Access, identity: Rc<Identity>, credential_header: &str) -> Result<Allowed, Rejection> {
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
    fn identity(&self, principal: Principal, hash: impl FnOnce() -> TokenHash) -> Result<Rc<Identity>, Rejection> {
        let fingerprint = if self.config.access_log_fields {
            secret::fingerprint(&hash())
        } else {
            String::new()
        };
        Identity::new(principal, &self.config.identity_headers, fingerprint).map(Rc::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, NOW};
    use serde_json::json;

    #[test]
    fn report_only_passes_refusals_of_its_rules_without_identity_and_keeps_503() {
        let read = format!("Bearer {}", testkit::token(&["read"]));
        let run = |patch: serde_json::Value, method: &str, headers: &[(&str, &str)]| {
            let engine = Engine::new(testkit::config_from(|c| {
                if let (Some(c), Some(p)) = (c.as_object_mut(), patch.as_object()) {
                    c.extend(p.clone());
                }
            }));
            let head = RequestHead {
                method,
                path: "/api/domain/x",
                headers,
            };
            engine.decide(&head, &engine.config().inline_keys, &mut Remembered::new(10, 10), NOW)
        };
        let passed = |step: &Step| match step {
            Step::Done(Verdict::Allow(a)) => a.would_deny.clone().filter(|_| a.identity.is_none()),
            _ => None,
        };
        // The POST rule in report-only: a read-only token's POST passes.
        let rules = json!({"routes": [
            {"prefix": "/api/domain/", "methods": ["GET"], "all_of": ["read"]},
            {"prefix": "/api/domain/", "methods": ["POST"], "all_of": ["update"], "report_only": true}
        ]});
        let step = run(rules.clone(), "POST", &[("authorization", &read)]);
        assert!(
            matches!(passed(&step), Some(Rejection::InsufficientScope { .. })),
            "{step:?}"
        );
        assert_eq!(
            passed(&run(rules.clone(), "POST", &[])),
            Some(Rejection::MissingCredential)
        );
        // The GET rule is not: its refusals stand, its passes are plain.
        assert_eq!(
            run(rules.clone(), "GET", &[]),
            Step::Done(Verdict::Deny(Rejection::MissingCredential))
        );
        let step = run(rules, "GET", &[("authorization", &read)]);
        assert!(matches!(&step, Step::Done(Verdict::Allow(a)) if a.would_deny.is_none() && a.identity.is_some()));
        // Globally: every refusal passes, but not a 503 (no keys: not judged).
        let global = json!({"report_only": true});
        assert!(passed(&run(global.clone(), "DELETE", &[("authorization", &read)])).is_some());
        let no_keys =
            json!({"report_only": true, "jwks": null, "remote_jwks": {"cluster": "identity", "authority": "idp"}});
        let step = run(no_keys, "GET", &[("authorization", &read)]);
        assert!(
            matches!(step, Step::Done(Verdict::Deny(Rejection::Unavailable(_)))),
            "{step:?}"
        );
    }

    #[test]
    fn claims_to_headers_carry_jwt_claims_upstream() {
        let engine = Engine::new(testkit::config_from(|c| {
            c["claims_to_headers"] = json!([
                {"claim": "client_system_user_type", "header": "x-erp-user-type"},
                {"claim": "aud", "header": "x-audiences"},
                {"claim": "absent", "header": "x-absent"}
            ])
        }));
        let auth = format!("Bearer {}", testkit::token(&["read"]));
        let head = RequestHead {
            method: "GET",
            path: "/api/domain/x",
            headers: &[("authorization", &auth)],
        };
        let mut memory = Remembered::new(10, 10);
        for pass in 0..2 {
            // The second time from the worker's memory, with the same headers.
            let step = engine.decide(&head, &engine.config().inline_keys, &mut memory, NOW);
            let Step::Done(Verdict::Allow(allowed)) = step else {
                panic!("{step:?}")
            };
            let headers = allowed.set_headers();
            assert!(
                headers.contains(&("x-erp-user-type".into(), "Internal".into())),
                "pass {pass}: {headers:?}"
            );
            assert!(headers
                .iter()
                .any(|(n, v)| n == "x-audiences" && v.contains("DomainAPI")));
            assert!(!headers.iter().any(|(n, _)| n == "x-absent"));
        }
    }

    #[test]
    fn claims_to_headers_names_are_checked() {
        let bad = |mapping: serde_json::Value| {
            let mut doc = testkit::config_json();
            doc["claims_to_headers"] = json!([mapping]);
            Config::from_json(doc.to_string().as_bytes()).unwrap_err().to_string()
        };
        assert!(bad(json!({"claim": "a", "header": "x-erp-client-id"})).contains("claims_to_headers[0].header"));
        assert!(bad(json!({"claim": "a", "header": "authorization"})).contains("claims_to_headers[0].header"));
        assert!(bad(json!({"claim": "a", "header": "X-Upper"})).contains("claims_to_headers[0].header"));
        assert!(bad(json!({"claim": "a..b", "header": "x-a"})).contains("claims_to_headers[0].claim"));
        assert!(bad(json!({"claim": "a", "header": "x-a", "other": 1})).contains("claims_to_headers"));
    }

    #[test]
    fn cors_preflights_pass_without_a_credential_only_when_configured() {
        let preflight: &[(&str, &str)] = &[
            ("origin", "https://app.erp.test"),
            ("access-control-request-method", "POST"),
        ];
        let run = |bypass: bool, method: &str, headers: &[(&str, &str)]| {
            let engine = Engine::new(testkit::config_from(|c| c["bypass_cors_preflight"] = json!(bypass)));
            engine.decide(
                &RequestHead {
                    method,
                    path: "/api/domain/x",
                    headers,
                },
                &engine.config().inline_keys,
                &mut Remembered::new(10, 10),
                NOW,
            )
        };
        let passed = |step: &Step| matches!(step, Step::Done(Verdict::Allow(a)) if a.identity.is_none());
        assert!(passed(&run(true, "OPTIONS", preflight)));
        // Off (the default): decided like any request; no rule names OPTIONS.
        assert_eq!(
            run(false, "OPTIONS", preflight),
            Step::Done(Verdict::Deny(Rejection::RouteNotAllowed))
        );
        // Not a preflight: another method, or a header missing or empty.
        assert!(!passed(&run(true, "GET", preflight)));
        assert!(!passed(&run(true, "OPTIONS", &preflight[..1])));
        assert!(!passed(&run(
            true,
            "OPTIONS",
            &[("origin", "x"), ("access-control-request-method", "")]
        )));
        // Not a way around the request checks.
        let smuggled = [preflight[0], preflight[1], ("x-http-method-override", "DELETE")];
        assert!(matches!(
            run(true, "OPTIONS", &smuggled),
            Step::Done(Verdict::Deny(Rejection::InvalidRequest(_)))
        ));
    }

    fn decide(method: &str, path: &str, headers: &[(&str, &str)]) -> Step {
        let engine = testkit::engine();
        engine.decide(
            &RequestHead { method, path, headers },
            &engine.config().inline_keys,
            &mut Remembered::new(10, 10),
            NOW,
        )
    }

    fn denied(d: Step) -> Rejection {
        match d {
            Step::Done(Verdict::Deny(r)) => r,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn read_token_may_get_with_identity_headers() {
        let auth = format!("Bearer {}", testkit::token(&["DomainApi", "read"]));
        let Step::Done(Verdict::Allow(allowed)) = decide(
            "GET",
            "/api/domain/odata/Customers?$top=10",
            &[("authorization", &auth)],
        ) else {
            panic!("denied")
        };
        assert!(allowed
            .set_headers()
            .contains(&("x-erp-client-id".into(), "my.trusted.app/first".into())));
        assert!(allowed
            .set_headers()
            .contains(&("x-erp-token-kind".into(), "jwt".into())));
        assert_eq!(allowed.remove_header, None);
    }

    #[test]
    fn read_token_may_not_post() {
        let auth = format!("Bearer {}", testkit::token(&["read"]));
        assert_eq!(
            denied(decide(
                "POST",
                "/api/domain/odata/Customers",
                &[("authorization", &auth)]
            )),
            Rejection::InsufficientScope {
                required: "update".into()
            }
        );
    }

    #[test]
    fn a_method_not_in_upper_case_is_an_invalid_request() {
        let auth = format!("Bearer {}", testkit::token(&["read", "update"]));
        for method in ["post", "Post", "get", "", "GET "] {
            assert!(
                matches!(
                    denied(decide(method, "/api/domain/x", &[("authorization", &auth)])),
                    Rejection::InvalidRequest(_)
                ),
                "{method:?}"
            );
        }
        assert!(matches!(
            decide("PROPFIND", "/api/domain/x", &[("authorization", &auth)]),
            Step::Done(Verdict::Deny(Rejection::RouteNotAllowed))
        ));
    }

    #[test]
    fn method_and_url_override_headers_are_refused_even_on_public_routes() {
        let auth = format!("Bearer {}", testkit::token(&["read", "update"]));
        for name in [
            "x-http-method-override",
            "X-HTTP-Method",
            "x-method-override",
            "x_http_method_override",
            "x-original-url",
            "x-rewrite-url",
        ] {
            let r = denied(decide(
                "POST",
                "/api/domain/x",
                &[("authorization", &auth), (name, "DELETE")],
            ));
            assert_eq!(r.status(), 400, "{name}");
            assert_eq!(
                denied(decide("GET", "/healthz", &[(name, "/admin")])).status(),
                400,
                "{name}"
            );
        }
    }

    #[test]
    fn unmatched_route_is_refused_before_the_token_is_read() {
        assert_eq!(denied(decide("GET", "/admin", &[])), Rejection::RouteNotAllowed);
    }

    #[test]
    fn public_route_needs_no_credential() {
        assert!(matches!(
            decide("GET", "/healthz", &[]),
            Step::Done(Verdict::Allow(Allowed { identity: None, .. }))
        ));
    }

    #[test]
    fn missing_credential_is_refused() {
        assert_eq!(
            denied(decide("GET", "/api/domain/x", &[])),
            Rejection::MissingCredential
        );
    }

    const PAT: &str = testkit::EXAMPLE_PAT;

    #[test]
    fn reference_tokens_are_refused_when_introspection_is_not_configured() {
        assert!(matches!(
            denied(decide("GET", "/api/domain/x", &[("x-api-key", PAT)])),
            Rejection::InvalidToken(_)
        ));
    }

    fn introspecting() -> Engine {
        Engine::new(testkit::config_from(|d| {
            d["introspection"] = testkit::introspection_json()
        }))
    }

    fn pending(engine: &Engine, method: &str, header: (&str, &str)) -> PendingReference {
        match engine.decide(
            &RequestHead {
                method,
                path: "/api/domain/x",
                headers: &[header],
            },
            &engine.config().inline_keys,
            &mut Remembered::new(10, 10),
            NOW,
        ) {
            Step::Introspect(pending) => {
                assert_eq!(pending.token().expose(), PAT);
                pending
            }
            other => panic!("expected introspection, got {other:?}"),
        }
    }

    #[test]
    fn reference_token_in_any_credential_header_is_introspected() {
        let engine = introspecting();
        let bearer = format!("Bearer {PAT}");
        for header in [("authorization", bearer.as_str()), ("x-api-key", PAT), ("api-key", PAT)] {
            let p = pending(&engine, "GET", header);
            assert_eq!(p.hash, secret::hash_token(PAT));
        }
    }

    #[test]
    fn malformed_reference_token_is_refused_without_a_call() {
        let engine = introspecting();
        for token in [
            "enrt_XYZ",
            "enrt_",
            concat!(
                "enrt_",
                "445659C00F83CCA2D427BF113EFB355319346865C0B4FE5A3C76C16271B06AFF",
                "AA"
            ),
        ] {
            let d = engine.decide(
                &RequestHead {
                    method: "GET",
                    path: "/api/domain/x",
                    headers: &[("x-api-key", token)],
                },
                &engine.config().inline_keys,
                &mut Remembered::new(10, 10),
                NOW,
            );
            assert_eq!(
                d,
                Step::Done(Verdict::Deny(Rejection::InvalidToken(
                    "the reference token is malformed"
                ))),
                "{token}"
            );
        }
    }

    /// An introspection answer for client `app` with scope `read`: a user's
    /// token with a subject, a service's without.
    fn reference_principal(subject: Option<&str>, expires_at: u64) -> crate::principal::Principal {
        use crate::principal::{Principal, PrincipalKind};
        Principal {
            kind: if subject.is_some() {
                PrincipalKind::ReferenceUser
            } else {
                PrincipalKind::ReferenceService
            },
            client_id: Some("app".into()),
            subject: subject.map(Into::into),
            client_db: None,
            system_user: None,
            scopes: vec!["read".into()],
            expires_at,
            claims: Vec::new(),
        }
    }

    #[test]
    fn reference_answer_is_checked_against_the_route() {
        let engine = introspecting();
        let answer = Answer::Active(reference_principal(Some("u1"), NOW + 100));
        let get = pending(&engine, "GET", ("x-api-key", PAT));
        let mut references = VerifiedCache::new(10);
        let Verdict::Allow(allowed) = engine.finish_reference(&get, Ok(&answer), &mut references, None) else {
            panic!()
        };
        assert!(allowed
            .set_headers()
            .contains(&("x-erp-token-kind".into(), "reference-user".into())));
        assert!(allowed.set_headers().contains(&("x-erp-subject".into(), "u1".into())));
        let post = pending(&engine, "POST", ("x-api-key", PAT));
        assert_eq!(
            engine.finish_reference(&post, Ok(&answer), &mut references, None),
            Verdict::Deny(Rejection::InsufficientScope {
                required: "update".into()
            })
        );
        assert_eq!(
            engine.finish_reference(&get, Ok(&Answer::Inactive), &mut references, Some(NOW + 10)),
            Verdict::Deny(Rejection::InvalidToken("the token is not active"))
        );
        let down = crate::introspection::UNAVAILABLE;
        assert_eq!(
            engine.finish_reference(&get, Err(&down), &mut references, Some(NOW + 10)),
            Verdict::Deny(down.clone())
        );
        assert!(
            references.is_empty(),
            "only active answers the cache keeps are remembered"
        );
    }

    #[test]
    fn a_remembered_reference_answer_skips_the_shared_cache_until_its_expiry() {
        let engine = introspecting();
        let principal = reference_principal(None, NOW + 1000);
        let mut memory = Remembered::new(10, 10);
        let get = pending(&engine, "GET", ("x-api-key", PAT));
        let until = NOW + 30;
        assert!(matches!(
            engine.finish_reference(
                &get,
                Ok(&Answer::Active(principal)),
                &mut memory.references,
                Some(until)
            ),
            Verdict::Allow(_)
        ));
        let request = |method| RequestHead {
            method,
            path: "/api/domain/x",
            headers: &[("x-api-key", PAT)],
        };
        let keys = &engine.config().inline_keys;
        let Step::Done(Verdict::Allow(allowed)) = engine.decide(&request("GET"), keys, &mut memory, until) else {
            panic!("not remembered")
        };
        assert_eq!(allowed.principal().and_then(|p| p.client_id.as_deref()), Some("app"));
        assert!(
            matches!(
                engine.decide(&request("POST"), keys, &mut memory, NOW),
                Step::Done(Verdict::Deny(Rejection::InsufficientScope { .. }))
            ),
            "scopes are checked on every request"
        );
        assert!(
            matches!(
                engine.decide(&request("GET"), keys, &mut memory, until + 1),
                Step::Introspect(_)
            ),
            "past the shared entry's expiry, ask again"
        );
    }

    #[test]
    fn a_repeated_jwt_is_verified_once() {
        let engine = testkit::engine();
        let mut verified = Remembered::new(10, 10);
        let auth = format!("Bearer {}", testkit::token(&["read"]));
        let headers = [("authorization", auth.as_str())];
        let request = RequestHead {
            method: "GET",
            path: "/api/domain/x",
            headers: &headers,
        };
        assert!(matches!(
            engine.decide(&request, &engine.config().inline_keys, &mut verified, NOW),
            Step::Done(Verdict::Allow(_))
        ));
        assert_eq!(verified.jwts.len(), 1);
        // With no keys at all, only the cache can allow it.
        assert!(matches!(
            engine.decide(&request, &KeySet::default(), &mut verified, NOW),
            Step::Done(Verdict::Allow(_))
        ));
        let post = RequestHead {
            method: "POST",
            ..request
        };
        assert!(
            matches!(
                engine.decide(&post, &engine.config().inline_keys, &mut verified, NOW),
                Step::Done(Verdict::Deny(Rejection::InsufficientScope { .. }))
            ),
            "scopes are checked on every request"
        );
        let later = NOW + 3600 + 61;
        assert!(matches!(
            engine.decide(&request, &engine.config().inline_keys, &mut verified, later),
            Step::Done(Verdict::Deny(Rejection::InvalidToken("the token has expired")))
        ));
    }

    #[test]
    fn debug_of_the_configuration_and_pending_steps_shows_no_secret() {
        let engine = introspecting();
        let secret = erp_devstack::idp::INTROSPECTION_SECRET;
        let introspect = engine.decide(
            &RequestHead {
                method: "GET",
                path: "/api/domain/x",
                headers: &[("x-api-key", PAT)],
            },
            &engine.config().inline_keys,
            &mut Remembered::new(10, 10),
            NOW,
        );
        let remote = Engine::new(testkit::config_from(|d| {
            d["remote_jwks"] = json!({"cluster": "identity", "authority": "idp"});
        }));
        let jwt = testkit::token_with(|h, _| h["kid"] = json!("rotated"));
        let auth = format!("Bearer {jwt}");
        let await_keys = remote.decide(
            &RequestHead {
                method: "GET",
                path: "/api/domain/x",
                headers: &[("authorization", &auth)],
            },
            &remote.config().inline_keys,
            &mut Remembered::new(10, 10),
            NOW,
        );
        assert!(matches!(introspect, Step::Introspect(_)) && matches!(await_keys, Step::AwaitKeys(_)));
        let shown = format!(
            "{:?} {introspect:?} {await_keys:?} {:#?}",
            engine.config(),
            engine.config()
        );
        assert!(!shown.contains(secret), "the client secret is shown");
        assert!(!shown.contains(&PAT[5..]), "the reference token is shown");
        assert!(!shown.contains(&jwt[..20]), "the JWT is shown");
        assert!(shown.contains("Secret("), "redacted, not dropped");
    }

    #[test]
    fn strip_credential_removes_the_header_it_came_in() {
        let engine = Engine::new(testkit::config_from(|d| d["strip_credential"] = json!(true)));
        let token = testkit::token(&["read"]);
        let headers = [("x-api-key", token.as_str())];
        let Step::Done(Verdict::Allow(allowed)) = engine.decide(
            &RequestHead {
                method: "GET",
                path: "/api/domain/x",
                headers: &headers,
            },
            &engine.config().inline_keys,
            &mut Remembered::new(10, 10),
            NOW,
        ) else {
            panic!("denied")
        };
        assert_eq!(allowed.remove_header.as_deref(), Some("x-api-key"));
    }
}

#[cfg(test)]
mod remote_key_tests {
    use super::*;
    use crate::testkit::{self, NOW};
    use serde_json::json;

    fn remote_engine() -> Engine {
        Engine::new(testkit::config_from(|d| {
            d["remote_jwks"] = json!({"cluster": "identity", "authority": "idp"});
        }))
    }

    fn request(token: &str) -> (String, Vec<(&'static str, String)>) {
        ("GET".into(), vec![("authorization", format!("Bearer {token}"))])
    }

    fn decide(engine: &Engine, token: &str, keys: &KeySet) -> Step {
        let (method, headers) = request(token);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        engine.decide(
            &RequestHead {
                method: &method,
                path: "/api/domain/x",
                headers: &headers,
            },
            keys,
            &mut Remembered::new(10, 10),
            NOW,
        )
    }

    #[test]
    fn unknown_kid_waits_for_keys_when_they_come_from_the_identity_service() {
        let engine = remote_engine();
        let token = testkit::token_with(|h, _| h["kid"] = json!("rotated"));
        let Step::AwaitKeys(pending) = decide(&engine, &token, &engine.config().inline_keys) else {
            panic!()
        };
        assert_eq!(
            engine.finish_jwt(
                &pending,
                &engine.config().inline_keys,
                &mut Remembered::new(10, 10),
                NOW
            ),
            Verdict::Deny(Rejection::InvalidToken("the token's signing key is not known"))
        );
    }

    #[test]
    fn unknown_kid_is_final_with_inline_keys_only() {
        let engine = testkit::engine();
        let token = testkit::token_with(|h, _| h["kid"] = json!("rotated"));
        assert!(matches!(
            decide(&engine, &token, &engine.config().inline_keys),
            Step::Done(Verdict::Deny(Rejection::InvalidToken(_)))
        ));
    }

    #[test]
    fn no_keys_yet_is_unavailable_not_invalid() {
        let engine = remote_engine();
        let token = testkit::token(&["read"]);
        let d = decide(&engine, &token, &KeySet::default());
        assert!(
            matches!(d, Step::Done(Verdict::Deny(Rejection::Unavailable(_)))),
            "{d:?}"
        );
    }
}
