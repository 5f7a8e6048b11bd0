//! How a request ended, as Envoy's access log can print it
//! (`access_log_fields`): who called, with what kind of token, what was
//! decided and why, and a short fingerprint of the token, never the token.
//!
//! The filter sets these as filter state (proxy-wasm properties); Envoy
//! keeps each under `wasm.` + its name, for `%FILTER_STATE(…:PLAIN)%`.

use std::borrow::Cow;

use crate::decision::credential::{self, REFERENCE_PREFIX};
use crate::decision::Allowed;
use crate::jwt::jws::Jws;
use crate::principal::Identity;
use crate::rejection::Rejection;
use crate::secret::{fingerprint, hash_token};
use crate::stats::Stat;

/// The property names, in the order of [`Fields::pairs`].
pub const NAMES: [&str; 4] = [
    "erp_edge_validator.client_id",
    "erp_edge_validator.token_kind",
    "erp_edge_validator.decision",
    "erp_edge_validator.token_fingerprint",
];

/// How a request ended.
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    Allowed(&'a Allowed),
    Refused(&'a Rejection),
}

/// The four values; empty when not known (no credential, a client without
/// `client_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields<'a> {
    pub client_id: Cow<'a, str>,
    /// `jwt`, `reference-user`, `reference-service` for a verified token;
    /// `jwt` or `reference` by shape for one that was not.
    pub token_kind: &'static str,
    /// `allowed`; `public` (no credential needed); a refusal's reason, as
    /// its stat is named (`denied_expired`, `denied_insufficient_scope`, …,
    /// `unavailable` for 503); `report_only:` and the reason for a refusal
    /// that passed in report-only mode.
    pub decision: Cow<'a, str>,
    pub token_fingerprint: Cow<'a, str>,
}

impl Fields<'_> {
    /// (name, value) in the order of [`NAMES`].
    pub fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            (NAMES[0], &self.client_id),
            (NAMES[1], self.token_kind),
            (NAMES[2], &self.decision),
            (NAMES[3], &self.token_fingerprint),
        ]
    }
}

/// An allowed request with its verified identity: everything is in the
/// identity (prepared once per token), no header needs reading. `None` for
/// any other ending: see [`of_request`].
pub fn of_identity(ending: Ending<'_>) -> Option<Fields<'_>> {
    let Ending::Allowed(allowed) = ending else {
        return None;
    };
    if allowed.would_deny.is_some() {
        return None;
    }
    let identity = allowed.identity.as_deref()?;
    Some(known(identity, "allowed".into()))
}

/// Any ending, from the request's located credential (`token`, if it has
/// one) and the identity this worker remembers for that token, if any (a
/// valid token refused for its scopes still names its client).
pub fn of_request<'a>(ending: Ending<'_>, token: Option<&str>, remembered: Option<&'a Identity>) -> Fields<'a> {
    let decision: Cow<'a, str> = match ending {
        Ending::Refused(rejection) => reason(rejection).into(),
        Ending::Allowed(Allowed {
            would_deny: Some(rejection),
            ..
        }) => format!("report_only:{}", reason(rejection)).into(),
        Ending::Allowed(Allowed { identity: Some(_), .. }) => "allowed".into(),
        Ending::Allowed(_) => "public".into(),
    };
    if let Some(identity) = remembered {
        return known(identity, decision);
    }
    let Some(token) = token else {
        return Fields {
            client_id: "".into(),
            token_kind: "",
            decision,
            token_fingerprint: "".into(),
        };
    };
    // Only a well-formed token is named and fingerprinted: a credential
    // that is not one may be a password sent as an API key, and even its
    // hash is not to be logged.
    let token_kind = if token.starts_with(REFERENCE_PREFIX) {
        Some("reference").filter(|_| credential::is_well_formed_reference(token))
    } else {
        Some("jwt").filter(|_| Jws::parse(token).is_ok())
    };
    Fields {
        client_id: "".into(),
        token_kind: token_kind.unwrap_or_default(),
        decision,
        token_fingerprint: token_kind.map_or("".into(), |_| fingerprint(&hash_token(token)).into()),
    }
}

fn known<'a>(identity: &'a Identity, decision: Cow<'a, str>) -> Fields<'a> {
    Fields {
        client_id: identity.principal.client_id.as_deref().unwrap_or_default().into(),
        token_kind: identity.principal.kind.as_str(),
        decision,
        token_fingerprint: identity.fingerprint.as_str().into(),
    }
}

/// A refusal's reason as its stat is named; `unavailable` for 503.
fn reason(rejection: &Rejection) -> &'static str {
    Stat::of_rejection(rejection)[1].map_or("unavailable", Stat::name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::verified_cache::Remembered;
    use crate::decision::{RequestHead, Step, Verdict};
    use crate::testing::{self as testkit, NOW};

    /// The first pass over a request with these headers, and its fields as
    /// the filter would set them (`access_log_fields` on).
    fn decide(headers: &[(&str, &str)], method: &str) -> (Verdict, Fields<'static>) {
        let engine = crate::decision::Engine::new(testkit::config_from(|c| c["access_log_fields"] = true.into()));
        let mut memory = Remembered::new(100, 100);
        let head = RequestHead {
            method,
            path: "/api/domain/odata/Customers",
            headers,
            has_body: false,
        };
        let Step::Done(verdict) = engine.decide(&head, &engine.config().inline_keys, &mut memory, NOW) else {
            panic!("not decided at once");
        };
        let ending = match &verdict {
            Verdict::Allow(a) => Ending::Allowed(a),
            Verdict::Deny(r) => Ending::Refused(r),
        };
        let config = engine.config();
        let located = crate::decision::credential::locate(headers.iter().copied(), &config.api_key_headers, 65536);
        let token = located.ok().map(|l| l.token);
        let remembered = token.and_then(|t| memory.jwts.get(t, NOW)).map(|i| (**i).clone());
        let fields = match of_identity(ending) {
            Some(f) => owned(f),
            None => owned(of_request(ending, token, remembered.as_ref())),
        };
        (verdict, fields)
    }

    fn owned(f: Fields<'_>) -> Fields<'static> {
        Fields {
            client_id: f.client_id.into_owned().into(),
            token_kind: f.token_kind,
            decision: f.decision.into_owned().into(),
            token_fingerprint: f.token_fingerprint.into_owned().into(),
        }
    }

    #[test]
    fn an_allowed_token_names_its_client_kind_and_fingerprint_from_its_identity() {
        let token = testkit::token(&["read"]);
        let (verdict, fields) = decide(&[("authorization", &format!("Bearer {token}"))], "GET");
        assert!(matches!(verdict, Verdict::Allow(_)));
        assert_eq!(fields.client_id, "my.trusted.app/first");
        assert_eq!(fields.token_kind, "jwt");
        assert_eq!(fields.decision, "allowed");
        assert_eq!(fields.token_fingerprint, fingerprint(&hash_token(&token)));
        assert_eq!(fields.token_fingerprint.len(), 12);
        for (_, value) in fields.pairs() {
            assert!(!token.contains(value) || value.is_empty() || value == "jwt", "{value}");
        }
    }

    #[test]
    fn a_valid_token_refused_for_its_scopes_still_names_its_client() {
        let token = testkit::token(&["read"]);
        let (verdict, fields) = decide(&[("authorization", &format!("Bearer {token}"))], "DELETE");
        assert!(matches!(verdict, Verdict::Deny(Rejection::InsufficientScope { .. })));
        assert_eq!(fields.client_id, "my.trusted.app/first");
        assert_eq!(fields.decision, "denied_insufficient_scope");
        assert_eq!(fields.token_fingerprint, fingerprint(&hash_token(&token)));
    }

    #[test]
    fn refusals_name_their_reason_and_fingerprint_the_token_by_shape() {
        let expired = testkit::token_with(|_, c| c["exp"] = serde_json::json!(NOW - 3600));
        let forged = testkit::flip_signature_byte(&testkit::token(&["read"]));
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Headers, &str, &str); 6] = [
            (
                &[("authorization", &format!("Bearer {expired}"))],
                "denied_expired",
                "jwt",
            ),
            (
                &[("authorization", &format!("Bearer {forged}"))],
                "denied_bad_signature",
                "jwt",
            ),
            (&[], "denied_no_credential", ""),
            // Not a token at all (a password sent as an API key): neither
            // named nor fingerprinted.
            (&[("x-api-key", "hunter2-correct-horse")], "denied_malformed", ""),
            (&[("x-api-key", "enrt_1234")], "denied_malformed", ""),
            (
                &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
                "denied_two_credentials",
                "",
            ),
        ];
        for (headers, decision, kind) in cases {
            let (verdict, fields) = decide(headers, "GET");
            assert!(matches!(verdict, Verdict::Deny(_)), "{decision}");
            assert_eq!(fields.decision, decision);
            assert_eq!(fields.token_kind, kind, "{decision}");
            assert_eq!(fields.client_id, "", "{decision}");
            assert_eq!(fields.token_fingerprint.is_empty(), kind.is_empty(), "{decision}");
        }
    }

    #[test]
    fn without_access_log_fields_no_token_is_hashed_for_a_fingerprint() {
        let engine = testkit::engine();
        let mut memory = Remembered::new(100, 100);
        let auth = format!("Bearer {}", testkit::token(&["read"]));
        let head = RequestHead {
            method: "GET",
            path: "/api/domain/odata/Customers",
            headers: &[("authorization", &auth)],
            has_body: false,
        };
        let Step::Done(Verdict::Allow(allowed)) = engine.decide(&head, &engine.config().inline_keys, &mut memory, NOW)
        else {
            panic!("not allowed");
        };
        assert_eq!(allowed.identity.unwrap().fingerprint, "");
    }

    #[test]
    fn reference_tokens_and_report_only_and_public_routes() {
        let pat = testkit::EXAMPLE_PAT;
        let fields = of_request(
            Ending::Refused(&Rejection::Unavailable("the identity service is unavailable")),
            Some(pat),
            None,
        );
        assert_eq!((fields.token_kind, &*fields.decision), ("reference", "unavailable"));
        assert_eq!(fields.token_fingerprint, fingerprint(&hash_token(pat)));

        let would = Allowed {
            identity: None,
            remove_header: None,
            would_deny: Some(Rejection::MissingCredential),
        };
        let fields = of_request(Ending::Allowed(&would), None, None);
        assert_eq!(fields.decision, "report_only:denied_no_credential");
        assert!(of_identity(Ending::Allowed(&would)).is_none());

        let public = Allowed {
            identity: None,
            remove_header: None,
            would_deny: None,
        };
        assert_eq!(of_request(Ending::Allowed(&public), None, None).decision, "public");
        assert!(of_identity(Ending::Allowed(&public)).is_none());
    }
}
