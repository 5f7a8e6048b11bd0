//! RFC 7662 token introspection for `enrt_` reference tokens: building the
//! callout and reading the answer.
//!
//! Anything but a well-formed `200` answer with a boolean `active` means the
//! identity service could not vouch either way: the request gets 503 with
//! `Retry-After`, never a pass and never a 401 (the token may be fine).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;

use crate::config_error::{check_fields, ConfigError};
use crate::endpoint::Endpoint;
use crate::host::Callout;
use crate::principal::{mapped_claims, Audience, ClaimToHeader, Principal, PrincipalKind, ScopeClaim};
use crate::rejection::Rejection;
use crate::secret::Secret;
use crate::token_problem::TokenProblem;

/// Introspection settings (`introspection` in the plugin configuration).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// Envoy cluster of the identity service. Required.
    pub cluster: String,
    /// `:authority` of the callout. Required.
    pub authority: String,
    /// Path of the introspection endpoint. Default `/id/connect/introspect`.
    #[serde(default = "default_path")]
    pub path: String,
    /// HTTP Basic client id (the API resource name). Required.
    pub client_id: String,
    /// HTTP Basic client secret. Required; never logged, never in an error.
    pub client_secret: Secret,
    /// Callout timeout in milliseconds. Default 1000; 50 to 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest time an active answer is trusted, in seconds: the revocation
    /// delay. Never beyond the token's `exp`. Default 30; 0 (ask every
    /// time) to 300.
    #[serde(default = "default_max_ttl")]
    pub cache_max_ttl_seconds: u64,
    /// How long an inactive answer is remembered, in seconds. Default 5; 0 to 60.
    #[serde(default = "default_negative_ttl")]
    pub negative_cache_ttl_seconds: u64,
    /// Cache slots shared by all workers (the keyspace bound), and the most
    /// active answers each worker keeps its own copy of. Default 10000;
    /// 16 to 1000000.
    #[serde(default = "default_max_entries")]
    pub cache_max_entries: u32,
    /// Largest introspection answer read, in bytes. Default 16384.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Introspection calls per second, shared by every worker: a flood of
    /// made-up tokens costs at most this many calls; past it, a request
    /// whose token is not cached gets 503. Default 200; 1 to 100000.
    #[serde(default = "default_max_calls")]
    pub max_calls_per_second: u32,
}

fn default_path() -> String {
    "/id/connect/introspect".into()
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_max_ttl() -> u64 {
    30
}
fn default_negative_ttl() -> u64 {
    5
}
fn default_max_entries() -> u32 {
    10_000
}
fn default_max_response_bytes() -> usize {
    16_384
}
fn default_max_calls() -> u32 {
    200
}

impl IntrospectionConfig {
    /// Where the callout goes.
    pub fn endpoint(&self) -> Endpoint<'_> {
        Endpoint {
            cluster: &self.cluster,
            authority: &self.authority,
            path: &self.path,
            timeout_ms: self.timeout_ms,
        }
    }

    /// Checks ranges; names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.endpoint().validate("introspection", (50, 10_000))?;
        check_fields(
            "introspection",
            &[
                ("client_id", !self.client_id.is_empty(), "must not be empty"),
                ("client_secret", !self.client_secret.is_empty(), "must not be empty"),
                (
                    "cache_max_ttl_seconds",
                    self.cache_max_ttl_seconds <= 300,
                    "must be at most 300 (0: ask on every request)",
                ),
                (
                    "negative_cache_ttl_seconds",
                    self.negative_cache_ttl_seconds <= 60,
                    "must be at most 60",
                ),
                (
                    "cache_max_entries",
                    (16..=1_000_000).contains(&self.cache_max_entries),
                    "must be between 16 and 1000000",
                ),
                (
                    "max_response_bytes",
                    (256..=1 << 20).contains(&self.max_response_bytes),
                    "must be between 256 and 1048576",
                ),
                (
                    "max_calls_per_second",
                    (1..=100_000).contains(&self.max_calls_per_second),
                    "must be between 1 and 100000",
                ),
            ],
        )
    }

    /// The callout: a form POST with HTTP Basic client authentication.
    pub fn callout(&self, token: &Secret) -> Callout {
        let credentials = format!(
            "{}:{}",
            form_escape(&self.client_id),
            form_escape(self.client_secret.expose())
        );
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token.expose())
            .append_pair("token_type_hint", "access_token")
            .finish();
        self.endpoint().callout(
            "POST",
            vec![
                ("content-type", "application/x-www-form-urlencoded".into()),
                ("accept", "application/json".into()),
                ("authorization", format!("Basic {}", STANDARD.encode(credentials))),
            ],
            body.into_bytes(),
        )
    }
}

/// RFC 6749 §2.3.1: client id and secret are form-encoded before Basic.
fn form_escape(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// What the identity service said about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Active(Principal),
    /// Not active, expired, or active for another API (`aud`) or issuer.
    Inactive,
    /// Active, but not an answer the filter can pass on (a scope element
    /// that is not a scope-token): 401 with this reason, never cached.
    Refused(TokenProblem),
}

/// What an active answer must match: the filter's own audiences and
/// issuers. An identity service answers `active` per API resource, but one
/// that does not, or a cache another API filled, must not pass a token made
/// for another API.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnswerRules<'a> {
    pub audiences: &'a [String],
    pub issuers: &'a [String],
    /// Answer fields passed upstream as headers (`claims_to_headers`).
    pub claims_to_headers: &'a [ClaimToHeader],
}

#[derive(Deserialize)]
struct Response {
    active: bool,
    #[serde(default)]
    scope: Option<ScopeClaim>,
    #[serde(default)]
    exp: Option<u64>,
    client_id: Option<String>,
    sub: Option<String>,
    client_system_user: Option<String>,
    client_db: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    iss: Option<String>,
}

/// The identity service could not answer; the request gets 503.
pub(crate) const UNAVAILABLE: Rejection = Rejection::Unavailable("the identity service is unavailable; retry later");
/// The introspection budget of this second is spent; the request gets 503.
pub(crate) const OVER_BUDGET: Rejection =
    Rejection::Unavailable("too many unknown reference tokens right now; retry later");

/// Reads an introspection answer. `status` is the callout's `:status`,
/// `body` its body (already bounded by the caller). Any malformed or
/// unexpected answer is [`UNAVAILABLE`].
pub(crate) fn read_answer(
    status: Option<&str>,
    body: &[u8],
    now: u64,
    rules: AnswerRules<'_>,
) -> Result<Answer, Rejection> {
    if status != Some("200") {
        return Err(UNAVAILABLE);
    }
    let response: Response = serde_json::from_slice(body).map_err(|_| UNAVAILABLE)?;
    if !response.active {
        return Ok(Answer::Inactive);
    }
    if response.exp.is_some_and(|exp| exp <= now) {
        return Ok(Answer::Inactive);
    }
    // When the answer says which API and issuer it is for, they must be ours.
    if response.aud.as_ref().is_some_and(|aud| !aud.any_in(rules.audiences)) {
        return Ok(Answer::Inactive);
    }
    if response.iss.as_ref().is_some_and(|iss| !rules.issuers.contains(iss)) {
        return Ok(Answer::Inactive);
    }
    let scopes = match response.scope.map(ScopeClaim::into_scopes) {
        None => Vec::new(),
        Some(Ok(scopes)) => scopes,
        Some(Err(_)) => return Ok(Answer::Refused(TokenProblem::MalformedAnswerScope)),
    };
    let kind = if response.sub.is_some() {
        PrincipalKind::ReferenceUser
    } else {
        PrincipalKind::ReferenceService
    };
    // Read again as a whole only when fields are mapped.
    let claims = match rules.claims_to_headers {
        [] => Vec::new(),
        mappings => match serde_json::from_slice(body) {
            Err(_) => return Ok(Answer::Refused(TokenProblem::UnreadableClaims)),
            Ok(answer) => match mapped_claims(&answer, mappings) {
                Ok(claims) => claims,
                Err(problem) => return Ok(Answer::Refused(problem)),
            },
        },
    };
    Ok(Answer::Active(Principal {
        kind,
        client_id: response.client_id,
        subject: response.sub,
        client_db: response.client_db,
        system_user: response.client_system_user,
        scopes,
        expires_at: response.exp.unwrap_or(u64::MAX),
        claims,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;
    const RULES: AnswerRules<'static> = AnswerRules {
        audiences: &[],
        issuers: &[],
        claims_to_headers: &[],
    };

    fn ours() -> (Vec<String>, Vec<String>) {
        (vec!["DomainAPI".into()], vec!["https://idp.erp.test/id".into()])
    }

    fn config() -> IntrospectionConfig {
        serde_json::from_value(serde_json::json!({
            "cluster": "identity",
            "authority": "idp.erp.test",
            "client_id": "erp-edge validator",
            "client_secret": "s3cr:et&",
        }))
        .unwrap()
    }

    #[test]
    fn mapped_answer_fields_become_claims() {
        let mappings = [ClaimToHeader {
            claim: "client_system_user_type".into(),
            header: "x-erp-user-type".into(),
        }];
        let rules = AnswerRules {
            claims_to_headers: &mappings,
            ..RULES
        };
        let body = br#"{"active": true, "scope": "read", "client_id": "app", "client_system_user_type": "Internal"}"#;
        let Ok(Answer::Active(p)) = read_answer(Some("200"), body, NOW, rules) else {
            panic!("active")
        };
        assert_eq!(p.claims, [("x-erp-user-type".to_string(), "Internal".to_string())]);
        let Ok(Answer::Active(p)) = read_answer(Some("200"), body, NOW, RULES) else {
            panic!("active")
        };
        assert!(p.claims.is_empty(), "nothing mapped, nothing read");
    }

    #[test]
    fn an_answer_that_cannot_be_read_for_its_mapped_fields_is_refused() {
        let mappings = [ClaimToHeader {
            claim: "groups".into(),
            header: "x-groups".into(),
        }];
        let rules = AnswerRules {
            claims_to_headers: &mappings,
            ..RULES
        };
        // Invalid UTF-8 in a field nobody names: the typed reading skips
        // it, the whole reading for the mapped fields cannot.
        let mut body = br#"{"active": true, "scope": "read", "client_id": "app", "note": ""#.to_vec();
        body.extend_from_slice(b"\xff\xfe\"}");
        let typed = read_answer(Some("200"), &body, NOW, RULES);
        assert!(matches!(typed, Ok(Answer::Active(_))), "{typed:?}");
        assert_eq!(
            read_answer(Some("200"), &body, NOW, rules),
            Ok(Answer::Refused(TokenProblem::UnreadableClaims))
        );
        let ambiguous = br#"{"active": true, "scope": "read", "client_id": "app", "groups": ["a", "b c"]}"#;
        assert_eq!(
            read_answer(Some("200"), ambiguous, NOW, rules),
            Ok(Answer::Refused(TokenProblem::AmbiguousClaimList))
        );
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = config();
        assert_eq!(c.path, "/id/connect/introspect");
        assert_eq!(c.timeout_ms, 1000);
        assert_eq!(c.cache_max_ttl_seconds, 30);
        assert_eq!(c.negative_cache_ttl_seconds, 5);
        assert_eq!(c.cache_max_entries, 10_000);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn callout_is_a_form_post_with_basic_auth() {
        let callout = config().callout(&Secret::new("enrt_AB+/="));
        let header = |name: &str| callout.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        assert_eq!(header(":method").as_deref(), Some("POST"));
        assert_eq!(header(":path").as_deref(), Some("/id/connect/introspect"));
        assert_eq!(header(":authority").as_deref(), Some("idp.erp.test"));
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        let basic = header("authorization").unwrap();
        let decoded = STANDARD.decode(basic.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(decoded, b"erp-edge+validator:s3cr%3Aet%26");
        assert_eq!(
            String::from_utf8(callout.body).unwrap(),
            "token=enrt_AB%2B%2F%3D&token_type_hint=access_token"
        );
    }

    #[test]
    fn ranges_are_checked_by_field() {
        let mut c = config();
        c.cache_max_ttl_seconds = 3600;
        assert_eq!(c.validate().unwrap_err().field, "introspection.cache_max_ttl_seconds");
        let mut c = config();
        c.timeout_ms = 0;
        assert_eq!(c.validate().unwrap_err().field, "introspection.timeout_ms");
    }

    #[test]
    fn active_answer_gives_a_principal() {
        let body =
            br#"{"active":true,"scope":"read update","exp":1700000100,"client_id":"app","sub":"u1","client_db":"E1"}"#;
        let Answer::Active(p) = read_answer(Some("200"), body, NOW, RULES).unwrap() else {
            panic!()
        };
        assert_eq!(p.kind, PrincipalKind::ReferenceUser);
        assert_eq!(p.scopes, ["read", "update"]);
        assert_eq!(p.expires_at, 1_700_000_100);
        assert_eq!(p.subject.as_deref(), Some("u1"));
    }

    #[test]
    fn service_token_has_no_subject_and_scope_may_be_an_array() {
        let body = br#"{"active":true,"scope":["read"],"client_system_user":"svc@erp"}"#;
        let Answer::Active(p) = read_answer(Some("200"), body, NOW, RULES).unwrap() else {
            panic!()
        };
        assert_eq!(p.kind, PrincipalKind::ReferenceService);
        assert_eq!(p.scopes, ["read"]);
        assert_eq!(p.system_user.as_deref(), Some("svc@erp"));
    }

    #[test]
    fn inactive_and_already_expired_answers_are_inactive() {
        assert_eq!(
            read_answer(Some("200"), br#"{"active":false}"#, NOW, RULES),
            Ok(Answer::Inactive)
        );
        assert_eq!(
            read_answer(Some("200"), br#"{"active":true,"exp":1699999999}"#, NOW, RULES),
            Ok(Answer::Inactive)
        );
    }

    #[test]
    fn anything_else_is_unavailable_not_unauthorized() {
        let cases: [(Option<&str>, &[u8]); 7] = [
            (Some("500"), br#"{"active":false}"#),
            (Some("401"), br#"{"error":"invalid_client"}"#),
            (Some("503"), b""),
            (None, b""),
            (Some("200"), b"<html>"),
            (Some("200"), br#"{"scope":"read"}"#),
            (Some("200"), br#"{"active":"yes"}"#),
        ];
        for (status, body) in cases {
            assert_eq!(read_answer(status, body, NOW, RULES), Err(UNAVAILABLE), "{status:?}");
        }
    }

    #[test]
    fn an_answer_for_another_api_or_issuer_is_inactive() {
        let (audiences, issuers) = ours();
        let rules = AnswerRules {
            audiences: &audiences,
            issuers: &issuers,
            claims_to_headers: &[],
        };
        let read = |body: &str| read_answer(Some("200"), body.as_bytes(), NOW, rules);
        assert!(matches!(
            read(r#"{"active":true,"aud":"DomainAPI"}"#),
            Ok(Answer::Active(_))
        ));
        assert!(matches!(
            read(r#"{"active":true,"aud":["TableAPI","DomainAPI"],"iss":"https://idp.erp.test/id"}"#),
            Ok(Answer::Active(_))
        ));
        assert!(
            matches!(read(r#"{"active":true}"#), Ok(Answer::Active(_))),
            "no aud: the caller's own resource"
        );
        assert_eq!(read(r#"{"active":true,"aud":"TableAPI"}"#), Ok(Answer::Inactive));
        assert_eq!(
            read(r#"{"active":true,"aud":["TableAPI","OLAP"]}"#),
            Ok(Answer::Inactive)
        );
        assert_eq!(
            read(r#"{"active":true,"aud":"domainapi"}"#),
            Ok(Answer::Inactive),
            "exact"
        );
        assert_eq!(
            read(r#"{"active":true,"aud":"DomainAPI","iss":"https://evil.example/id"}"#),
            Ok(Answer::Inactive)
        );
    }

    #[test]
    fn an_answer_whose_scope_elements_are_not_scope_tokens_is_refused() {
        for body in [
            r#"{"active":true,"scope":["read","update delete"]}"#,
            r#"{"active":true,"scope":"read\tupdate"}"#,
            r#"{"active":true,"scope":["read",""]}"#,
        ] {
            assert_eq!(
                read_answer(Some("200"), body.as_bytes(), NOW, RULES),
                Ok(Answer::Refused(TokenProblem::MalformedAnswerScope)),
                "{body}"
            );
        }
    }
}
