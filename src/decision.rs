//! The decision for one request: allow with an identity, deny with a
//! rejection, or (for reference tokens) ask the identity service first.
//!
//! Pure: the host glue gathers the request head, the keys and the clock, and
//! turns the [`Decision`] into Envoy actions.

use crate::config::Config;
use crate::credential::{self, Credential, TokenKind};
use crate::jwks::KeySet;
use crate::jwt::{self, ClaimRules, JwtError};
use crate::policy::Access;
use crate::principal::Principal;
use crate::rejection::Rejection;

/// The parts of a request the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
}

/// What to do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward it. `principal` is `None` on public routes.
    Allow(Allowed),
    /// Refuse it with this rejection.
    Deny(Rejection),
}

/// An allowed request and what to add to or remove from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub principal: Option<Principal>,
    /// Identity headers to set (the client's copies are always removed).
    pub set_headers: Vec<(String, String)>,
    /// Credential header to remove (`strip_credential`).
    pub remove_header: Option<String>,
}

/// The prepared configuration; decides requests.
#[derive(Debug)]
pub struct Engine {
    config: Config,
}

impl Engine {
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The keys a JWT is checked against.
    pub fn keys(&self) -> &KeySet {
        &self.config.inline_keys
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

    /// Decides a request. `now` is seconds since the epoch.
    pub fn decide(&self, request: &RequestHead<'_>, now: u64) -> Decision {
        match self.try_decide(request, now) {
            Ok(allowed) => Decision::Allow(allowed),
            Err(rejection) => Decision::Deny(rejection),
        }
    }

    fn try_decide(&self, request: &RequestHead<'_>, now: u64) -> Result<Allowed, Rejection> {
        let access = self.config.policy.access(request.method, request.path)?;
        if *access == Access::Public {
            return Ok(Allowed {
                principal: None,
                set_headers: Vec::new(),
                remove_header: None,
            });
        }
        let credential = credential::find(
            request.headers.iter().copied(),
            &self.config.api_key_headers,
            self.config.max_token_bytes,
        )?;
        let principal = match credential.kind {
            TokenKind::Jwt => self.verify_jwt(credential.token, now)?,
            TokenKind::Reference => {
                return Err(Rejection::InvalidToken(
                    "reference tokens are not accepted here",
                ));
            }
        };
        self.allow(access, principal, &credential)
    }

    fn verify_jwt(&self, token: &str, now: u64) -> Result<Principal, Rejection> {
        jwt::verify(token, self.keys(), &self.claim_rules(), now).map_err(|e: JwtError| e.into())
    }

    /// Checks the route's scopes and builds what the upstream receives.
    fn allow(
        &self,
        access: &Access,
        principal: Principal,
        credential: &Credential<'_>,
    ) -> Result<Allowed, Rejection> {
        access.check(&principal.scopes)?;
        let set_headers = principal
            .headers(&self.config.identity_headers)?
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect();
        Ok(Allowed {
            principal: Some(principal),
            set_headers,
            remove_header: self
                .config
                .strip_credential
                .then(|| credential.header.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, NOW};
    use serde_json::json;

    fn decide(method: &str, path: &str, headers: &[(&str, &str)]) -> Decision {
        testkit::engine().decide(
            &RequestHead {
                method,
                path,
                headers,
            },
            NOW,
        )
    }

    fn denied(d: Decision) -> Rejection {
        match d {
            Decision::Deny(r) => r,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn read_token_may_get_with_identity_headers() {
        let auth = format!("Bearer {}", testkit::token(&["DomainApi", "read"]));
        let Decision::Allow(allowed) = decide(
            "GET",
            "/api/domain/odata/Customers?$top=10",
            &[("authorization", &auth)],
        ) else {
            panic!("denied")
        };
        assert!(allowed
            .set_headers
            .contains(&("x-erp-client-id".into(), "my.trusted.app/first".into())));
        assert!(allowed
            .set_headers
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
    fn unmatched_route_is_refused_before_the_token_is_read() {
        assert_eq!(
            denied(decide("GET", "/admin", &[])),
            Rejection::RouteNotAllowed
        );
    }

    #[test]
    fn public_route_needs_no_credential() {
        assert!(matches!(
            decide("GET", "/healthz", &[]),
            Decision::Allow(Allowed {
                principal: None,
                ..
            })
        ));
    }

    #[test]
    fn missing_credential_is_refused() {
        assert_eq!(
            denied(decide("GET", "/api/domain/x", &[])),
            Rejection::MissingCredential
        );
    }

    #[test]
    fn reference_tokens_are_refused_without_introspection() {
        let pat = "enrt_445659C00F83CCA2D427BF113EFB355319346865C0B4FE5A3C76C16271B06AFF";
        assert!(matches!(
            denied(decide("GET", "/api/domain/x", &[("x-api-key", pat)])),
            Rejection::InvalidToken(_)
        ));
    }

    #[test]
    fn strip_credential_removes_the_header_it_came_in() {
        let engine = Engine::new(testkit::config_from(|d| {
            d["strip_credential"] = json!(true)
        }));
        let token = testkit::token(&["read"]);
        let headers = [("x-api-key", token.as_str())];
        let Decision::Allow(allowed) = engine.decide(
            &RequestHead {
                method: "GET",
                path: "/api/domain/x",
                headers: &headers,
            },
            NOW,
        ) else {
            panic!("denied")
        };
        assert_eq!(allowed.remove_header.as_deref(), Some("x-api-key"));
    }
}
