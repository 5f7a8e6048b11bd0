//! "Why was my request refused?": one request's decision told check by
//! check, for the people who write route rules and the operators who deploy
//! them. The browser inspector (`inspector/`) and the `erp-edge-validator
//! explain` command both call [`explain`].
//!
//! The verdict is the filter's own: the configuration is parsed and
//! validated by [`Config::from_json`], the request goes through
//! [`Engine::decide`] (then [`Engine::finish_jwt`] or
//! [`Engine::finish_reference`], as the worker would), and the answer is
//! [`Rejection::to_response`]. The list of checks around it is told by the
//! same functions: the route from [`crate::policy::Policy::matching`], the
//! credential from `credential::locate` and `classify`, the JWT from
//! [`jwt::verify_with`] (a JWT check failed where its [`JwtError`] says;
//! those before it passed), the scopes from `Access::check`. Only the
//! details shown beside the checks (what `exp` says, how long ago that was)
//! are read from the token without verification, for display.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::config_error::ConfigError;
use crate::decision::credential::{self, TokenKind};
use crate::decision::request::{check_request, passes_as_preflight};
use crate::decision::verified_cache::{Remembered, VerifiedCache};
use crate::decision::{Engine, RequestHead, Step, Verdict};
use crate::jwt::jwks::KeySet;
use crate::jwt::{self, ClaimRules, JwtError};
use crate::policy::Access;
use crate::reference::introspection::{read_answer, Answer, AnswerRules};
use crate::rejection::Rejection;

/// What to explain.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The filter configuration (JSON, the filter's own format).
    pub config: &'a [u8],
    /// The key set the filter would have fetched (`remote_jwks`), if any.
    pub jwks: Option<&'a [u8]>,
    /// Seconds since the epoch.
    pub now: u64,
    pub method: &'a str,
    /// Path with query, as the client sent it.
    pub path: &'a str,
    pub headers: &'a [(String, String)],
    /// The identity service's answer for an `enrt_` token, if pasted.
    pub introspection_answer: Option<&'a [u8]>,
}

/// One check and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The account of one decision.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    /// The status the client gets; `None` while an introspection answer is
    /// needed to decide.
    pub status: Option<u16>,
    pub allowed: bool,
    pub www_authenticate: Option<String>,
    /// The local reply's body (a refusal); `None` when the request passes.
    pub body: Option<String>,
    /// Other headers of the local reply (`retry-after`, ...).
    pub response_headers: BTreeMap<String, String>,
    /// Identity headers set on the request that goes upstream.
    pub upstream_headers: BTreeMap<String, String>,
    /// Headers removed before it goes upstream (client-sent identity
    /// headers, the credential with `strip_credential`).
    pub removed_headers: Vec<String>,
    /// The first matching route rule (index into `routes`) and the rule.
    pub route_index: Option<usize>,
    pub route: Option<Value>,
    /// The checks that ran, in order (those after a failed one did not).
    pub checks: Vec<Check>,
    /// What the filter would do next when it cannot decide alone.
    pub pending: Option<String>,
    /// One line: the outcome and its reason.
    pub summary: String,
}

/// Explains what the filter does with one request. `Err` is a configuration
/// (or key set, or answer) the filter would refuse, naming the field.
pub fn explain(inputs: &Inputs<'_>) -> Result<Trace, ConfigError> {
    let config = Config::from_json(inputs.config)?;
    let config_value: Value = serde_json::from_slice(inputs.config).unwrap_or(Value::Null);
    let mut keys = config.inline_keys.clone();
    if let Some(jwks) = inputs.jwks {
        let fetched = KeySet::from_json(jwks, &config.algorithms)
            .map_err(|e| ConfigError::new("jwks (the key set given)", e.to_string()))?;
        keys = keys.merged(&fetched);
    }
    let pairs: Vec<(&str, &str)> = inputs.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let head = RequestHead {
        method: inputs.method,
        path: inputs.path,
        headers: &pairs,
        has_body: false,
    };
    let mut checks = Vec::new();
    let route_index = narrate_route(&config, &config_value, &head, &mut checks);
    let realm = config.realm.clone();
    let rules = AnswerRules {
        audiences: &config.audiences,
        issuers: &config.issuers,
        claims_to_headers: &config.claims_to_headers,
    };
    // Only the engine decides; the checks above and below narrate.
    let engine = Engine::new(Config::from_json(inputs.config)?);
    let mut memory = Remembered::new(16, 16);
    let step = engine.decide(&head, &keys, &mut memory, inputs.now);
    let mut pending = None;
    let mut answer_check = None;
    let verdict = match step {
        Step::Done(verdict) => Some(verdict),
        Step::AwaitKeys(waiting) => {
            checks.push(Check {
                name: "key set".into(),
                ok: false,
                detail: "the token's kid is not in the key set: the filter fetches the key set once (within the \
                         unknown-kid cooldown) and decides with what it gets; here, with the key set given"
                    .into(),
            });
            Some(engine.finish_jwt(&waiting, &keys, &mut memory, inputs.now))
        }
        Step::Introspect(waiting) => match inputs.introspection_answer {
            None => {
                pending = Some(format!(
                    "introspection: the filter would ask the identity service ({}) whether the token is active, \
                     then decide; paste its answer to complete the trace",
                    config
                        .introspection
                        .as_ref()
                        .map_or_else(String::new, |i| format!("cluster `{}`, POST {}", i.cluster, i.path))
                ));
                None
            }
            Some(body) => {
                let answer = read_answer(Some("200"), body, inputs.now, rules);
                answer_check = Some(narrate_answer(&answer));
                let mut references = VerifiedCache::new(0);
                Some(engine.finish_reference(&waiting, answer.as_ref(), &mut references, None))
            }
        },
    };
    narrate_credential(&config, &keys, &head, inputs.now, &mut checks);
    checks.extend(answer_check);
    match &verdict {
        Some(Verdict::Deny(Rejection::InsufficientScope { required })) => {
            checks.push(fail(
                "scopes",
                format!("the route needs [{required}], which the token does not grant"),
            ));
        }
        Some(Verdict::Allow(allowed)) => {
            if let Some(p) = allowed.principal() {
                checks.push(pass(
                    "scopes",
                    format!("granted [{}] meets the route's rule", p.scopes.join(" ")),
                ));
            }
        }
        _ => {}
    }
    let mut trace = Trace {
        status: None,
        allowed: false,
        www_authenticate: None,
        body: None,
        response_headers: BTreeMap::new(),
        upstream_headers: BTreeMap::new(),
        removed_headers: config.identity_headers.client_copies(&pairs),
        route_index,
        route: route_index.and_then(|i| config_value["routes"].get(i).cloned()),
        checks,
        pending: pending.clone(),
        summary: String::new(),
    };
    match verdict {
        None => {
            trace.summary = "undecided: waiting for the identity service's answer".into();
        }
        Some(Verdict::Allow(allowed)) => {
            trace.status = Some(200);
            trace.allowed = true;
            for (name, value) in allowed.set_headers() {
                trace.upstream_headers.insert(name.clone(), value.clone());
            }
            if let Some(header) = &allowed.remove_header {
                trace.removed_headers.push(header.clone());
            }
            if let Some(rejection) = &allowed.would_deny {
                trace.checks.push(fail(
                    "report-only",
                    format!("would refuse: {rejection}; the request passes"),
                ));
                trace.summary = format!("passed in report-only mode; would refuse: {rejection}");
                return Ok(trace);
            }
            trace.summary = match allowed.principal() {
                Some(p) => format!(
                    "allowed: {} for client {}",
                    p.kind.as_str(),
                    p.client_id.as_deref().unwrap_or("(none)")
                ),
                None => "allowed: no credential needed (a public route or a CORS preflight)".into(),
            };
        }
        Some(Verdict::Deny(rejection)) => {
            deny(&mut trace, &rejection, &realm);
        }
    }
    Ok(trace)
}

fn deny(trace: &mut Trace, rejection: &Rejection, realm: &str) {
    let response = rejection.to_response(realm);
    trace.status = u16::try_from(response.status).ok();
    trace.body = Some(response.body);
    for (name, value) in response.headers {
        if name == "www-authenticate" {
            trace.www_authenticate = Some(value);
        } else {
            trace.response_headers.insert(name.to_owned(), value);
        }
    }
    trace.upstream_headers.clear();
    trace.summary = format!("refused: {rejection}");
}

/// The request's form and its route rule.
fn narrate_route(config: &Config, raw: &Value, head: &RequestHead<'_>, checks: &mut Vec<Check>) -> Option<usize> {
    match check_request(head) {
        Ok(()) => checks.push(pass("request", "canonical method, no method or URL override header")),
        Err(rejection) => {
            checks.push(fail("request", rejection.description()));
            return None;
        }
    }
    if passes_as_preflight(config, head) {
        checks.push(pass(
            "CORS preflight",
            "OPTIONS with Origin and Access-Control-Request-Method, no body, for a method and path a rule allows: passes without a credential (bypass_cors_preflight)",
        ));
        return None;
    }
    let index = config.policy.matching(head.method, head.path);
    let detail = match (index, config.policy.access(head.method, head.path)) {
        (Some(i), Ok(access)) => format!("rule {i} {}: {}", rule_text(&raw["routes"][i]), needs(access)),
        (None, Ok(access)) => format!(
            "no rule matches; unmatched_routes is \"authenticated\": {}",
            needs(access)
        ),
        (_, Err(_)) => "no rule matches and unmatched_routes is \"deny\": 403".into(),
    };
    let ok = config.policy.access(head.method, head.path).is_ok();
    checks.push(Check {
        name: "route".into(),
        ok,
        detail,
    });
    index
}

fn rule_text(rule: &Value) -> String {
    let path = match (rule["prefix"].as_str(), rule["exact"].as_str()) {
        (Some(p), _) => format!("prefix {p}"),
        (_, Some(p)) => format!("exact {p}"),
        _ => "?".into(),
    };
    let methods = rule["methods"]
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
        .unwrap_or_else(|| "any method".into());
    let folded = if rule["case_insensitive"] == true {
        " (any case)"
    } else {
        ""
    };
    format!("({path}{folded}, {methods})")
}

fn needs(access: &Access) -> String {
    match access {
        Access::Public => "public, no credential needed".into(),
        Access::Scopes { all_of, any_of } => match (all_of.is_empty(), any_of.is_empty()) {
            (true, true) => "any valid credential".into(),
            (false, true) => format!("needs all of [{}]", all_of.join(" ")),
            (true, false) => format!("needs one of [{}]", any_of.join(" ")),
            (false, false) => format!("needs all of [{}] and one of [{}]", all_of.join(" "), any_of.join(" ")),
        },
    }
}

fn pass(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok: true,
        detail: detail.into(),
    }
}

fn fail(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok: false,
        detail: detail.into(),
    }
}

/// The credential, and for a JWT each check `jwt::verify_with` makes.
fn narrate_credential(config: &Config, keys: &KeySet, head: &RequestHead<'_>, now: u64, checks: &mut Vec<Check>) {
    let public =
        matches!(config.policy.access(head.method, head.path), Ok(Access::Public)) || passes_as_preflight(config, head);
    if public || check_request(head).is_err() || config.policy.access(head.method, head.path).is_err() {
        return;
    }
    let located = match credential::locate(
        head.headers.iter().copied(),
        &config.api_key_headers,
        config.max_token_bytes,
    ) {
        Ok(located) => located,
        Err(rejection) => {
            checks.push(fail("credential", rejection.description()));
            return;
        }
    };
    let credential = match credential::classify(located) {
        Ok(credential) => credential,
        Err(rejection) => {
            checks.push(fail("credential", rejection.description()));
            return;
        }
    };
    let kind = match credential.kind {
        TokenKind::Jwt => "a JWT",
        TokenKind::Reference => "an enrt_ reference token",
    };
    checks.push(pass(
        "credential",
        format!("{kind} in the `{}` header", credential.header),
    ));
    match credential.kind {
        TokenKind::Jwt => narrate_jwt(config, keys, credential.token, now, checks),
        TokenKind::Reference => {
            if credential::is_well_formed_reference(credential.token) {
                checks.push(pass("reference token form", "enrt_ and 64 hex digits"));
            } else {
                checks.push(fail(
                    "reference token form",
                    "not enrt_ and 64 hex digits: refused without asking",
                ));
            }
        }
    }
}

/// The JWT checks in the order `jwt::verify_with` runs them, with the
/// errors that mean each one failed.
const JWT_CHECKS: [(&str, &[JwtError]); 12] = [
    (
        "JWT form",
        &[JwtError::NotAJwt, JwtError::NotBase64, JwtError::MalformedHeader],
    ),
    ("algorithm allowed", &[JwtError::AlgorithmNotAllowed]),
    ("no crit header", &[JwtError::CriticalHeader]),
    ("typ", &[JwtError::NotAnAccessToken]),
    (
        "kid → key",
        &[
            JwtError::NoKid,
            JwtError::UnknownKey,
            JwtError::NoKeys,
            JwtError::KeyAlgorithmMismatch,
        ],
    ),
    ("signature", &[JwtError::BadSignature]),
    ("claims", &[JwtError::MalformedClaims]),
    ("exp", &[JwtError::NoExpiry, JwtError::Expired]),
    ("nbf", &[JwtError::NotYetValid]),
    ("iss", &[JwtError::IssuerNotAccepted]),
    ("aud", &[JwtError::AudienceNotAccepted]),
    ("scope claim", &[JwtError::MalformedScope]),
];

fn narrate_jwt(config: &Config, keys: &KeySet, token: &str, now: u64, checks: &mut Vec<Check>) {
    let rules = ClaimRules {
        issuers: &config.issuers,
        audiences: &config.audiences,
        algorithms: &config.algorithms,
        clock_skew_seconds: config.clock_skew_seconds,
        require_at_jwt_typ: config.require_at_jwt_typ,
    };
    let result = jwt::verify_with(token, keys, &rules, now, None, None);
    let failed_at = result
        .as_ref()
        .err()
        .and_then(|e| JWT_CHECKS.iter().position(|(_, errors)| errors.contains(e)));
    let (header, claims) = untrusted_parts(token);
    for (i, (name, _)) in JWT_CHECKS.iter().enumerate() {
        if !config.require_at_jwt_typ && *name == "typ" {
            continue;
        }
        let check = match failed_at {
            Some(at) if i > at => break,
            Some(at) if i == at => {
                let error = result.as_ref().err().copied().unwrap_or(JwtError::NotAJwt);
                let extra = jwt_detail(name, &header, &claims, config, keys, now);
                fail(name, join(error.description(), &extra))
            }
            _ => pass(name, jwt_detail(name, &header, &claims, config, keys, now)),
        };
        checks.push(check);
    }
    if let Ok(verified) = &result {
        checks.push(pass(
            "granted scopes",
            format!("[{}]", verified.principal.scopes.join(" ")),
        ));
    }
}

fn join(first: &str, second: &str) -> String {
    if second.is_empty() {
        first.to_owned()
    } else {
        format!("{first}: {second}")
    }
}

/// The header and claims as JSON, read without verification (display only).
fn untrusted_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut decode = || {
        parts
            .next()
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    let header = decode();
    (header, decode())
}

/// "3 min 12 s" for a number of seconds.
pub fn span(seconds: u64) -> String {
    match seconds {
        0..=59 => format!("{seconds} s"),
        60..=3599 => format!("{} min {} s", seconds / 60, seconds % 60),
        3600..=86_399 => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{} d {} h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

fn relative(at: u64, now: u64) -> String {
    if at <= now {
        format!("{at} ({} ago)", span(now - at))
    } else {
        format!("{at} (in {})", span(at - now))
    }
}

fn jwt_detail(name: &str, header: &Value, claims: &Value, config: &Config, keys: &KeySet, now: u64) -> String {
    let show = |v: &Value| {
        if v.is_null() {
            "absent".to_owned()
        } else {
            v.to_string()
        }
    };
    let skew = config.clock_skew_seconds;
    match name {
        "algorithm allowed" => format!(
            "alg {} (allowed: {})",
            show(&header["alg"]),
            config
                .algorithms
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "typ" if config.require_at_jwt_typ => format!("typ {} (must be at+jwt)", show(&header["typ"])),
        "typ" => format!("typ {} (not required)", show(&header["typ"])),
        "kid → key" => format!("kid {} (keys: {})", show(&header["kid"]), keys.kids().join(", ")),
        "exp" => match claims["exp"].as_u64() {
            Some(exp) if exp.saturating_add(skew) < now => {
                format!("exp {}, beyond the {skew} s clock skew", relative(exp, now))
            }
            Some(exp) => format!("exp {}", relative(exp, now)),
            None => "no exp".into(),
        },
        "nbf" => match claims["nbf"].as_u64() {
            Some(nbf) => format!("nbf {} (clock skew {skew} s)", relative(nbf, now)),
            None => "no nbf".into(),
        },
        "iss" => format!("iss {} (accepted: {})", show(&claims["iss"]), config.issuers.join(", ")),
        "aud" => format!(
            "aud {} (accepted: {})",
            show(&claims["aud"]),
            config.audiences.join(", ")
        ),
        _ => String::new(),
    }
}

fn narrate_answer(answer: &Result<Answer, Rejection>) -> Check {
    match answer {
        Ok(Answer::Active(p)) => pass(
            "introspection answer",
            format!(
                "active, client {}, scopes [{}]",
                p.client_id.as_deref().unwrap_or("(none)"),
                p.scopes.join(" ")
            ),
        ),
        Ok(Answer::Inactive) => fail(
            "introspection answer",
            "not active (or expired, or for another API or issuer)",
        ),
        Ok(Answer::Refused(problem)) => fail("introspection answer", problem.description()),
        Err(rejection) => fail("introspection answer", rejection.description()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self as testkit, NOW};
    use serde_json::json;

    fn run(config: &Value, method: &str, path: &str, headers: &[(&str, &str)], answer: Option<&Value>) -> Trace {
        let headers: Vec<(String, String)> = headers.iter().map(|(n, v)| ((*n).into(), (*v).into())).collect();
        let config = config.to_string();
        let answer = answer.map(Value::to_string);
        explain(&Inputs {
            config: config.as_bytes(),
            jwks: None,
            now: NOW,
            method,
            path,
            headers: &headers,
            introspection_answer: answer.as_deref().map(str::as_bytes),
        })
        .unwrap()
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn failed(trace: &Trace) -> Vec<&str> {
        trace.checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn an_allowed_request_names_its_rule_and_the_identity_headers() {
        let auth = bearer(&testkit::token(&["read"]));
        let t = run(
            &testkit::config_json(),
            "GET",
            "/api/domain/x?$top=1",
            &[("authorization", &auth)],
            None,
        );
        assert_eq!(t.status, Some(200));
        assert!(t.allowed);
        assert_eq!(t.route_index, Some(1));
        assert_eq!(t.route.as_ref().unwrap()["prefix"], "/api/domain/");
        assert_eq!(t.upstream_headers["x-erp-client-id"], "my.trusted.app/first");
        assert!(failed(&t).is_empty(), "{:?}", t.checks);
        let names: Vec<&str> = t.checks.iter().map(|c| c.name.as_str()).collect();
        for expected in [
            "request",
            "route",
            "credential",
            "algorithm allowed",
            "signature",
            "exp",
            "iss",
            "aud",
            "scopes",
        ] {
            assert!(names.contains(&expected), "{expected} missing from {names:?}");
        }
        assert!(t.www_authenticate.is_none() && t.body.is_none());
    }

    #[test]
    fn a_missing_scope_is_a_403_that_names_it() {
        let auth = bearer(&testkit::token(&["read"]));
        let t = run(
            &testkit::config_json(),
            "POST",
            "/api/domain/x",
            &[("authorization", &auth)],
            None,
        );
        assert_eq!(t.status, Some(403));
        assert_eq!(t.route_index, Some(2));
        assert!(t.www_authenticate.as_deref().unwrap().contains("scope=\"update\""));
        assert_eq!(failed(&t), ["scopes"]);
        assert!(t.upstream_headers.is_empty());
    }

    #[test]
    fn an_expired_token_says_how_long_ago_and_stops_at_exp() {
        let token = testkit::token_with(|_, c| c["exp"] = json!(NOW - 3 * 60 - 12 - 60));
        let t = run(
            &testkit::config_json(),
            "GET",
            "/api/domain/x",
            &[("authorization", &bearer(&token))],
            None,
        );
        assert_eq!(t.status, Some(401));
        assert_eq!(failed(&t), ["exp"]);
        let exp = t.checks.iter().find(|c| c.name == "exp").unwrap();
        assert!(exp.detail.contains("4 min 12 s ago"), "{}", exp.detail);
        // Checks after the failing one did not run.
        assert!(!t.checks.iter().any(|c| c.name == "iss"));
    }

    #[test]
    fn each_jwt_failure_is_placed_at_its_check() {
        let cases = [
            (testkit::flip_signature_byte(&testkit::token(&["read"])), "signature"),
            (testkit::unsigned_token(), "algorithm allowed"),
            (testkit::token_with(|h, _| h["typ"] = json!("JWT")), "typ"),
            (testkit::token_with(|h, _| h["kid"] = json!("nobody")), "kid → key"),
            (
                testkit::token_with(|_, c| c["iss"] = json!("https://evil.example")),
                "iss",
            ),
            (testkit::token_with(|_, c| c["aud"] = json!("Other")), "aud"),
            (testkit::token_with(|_, c| c["nbf"] = json!(NOW + 3600)), "nbf"),
            ("not-a-jwt".to_owned(), "JWT form"),
        ];
        for (token, check) in cases {
            let t = run(
                &testkit::config_json(),
                "GET",
                "/api/domain/x",
                &[("authorization", &bearer(&token))],
                None,
            );
            assert_eq!(t.status, Some(401), "{check}");
            assert_eq!(failed(&t), [check], "{:?}", t.checks);
        }
    }

    #[test]
    fn credential_problems_and_unmatched_routes() {
        let config = testkit::config_json();
        let t = run(&config, "GET", "/api/domain/x", &[], None);
        assert_eq!((t.status, failed(&t)), (Some(401), vec!["credential"]));
        let auth = bearer(&testkit::token(&["read"]));
        let t = run(
            &config,
            "GET",
            "/api/domain/x",
            &[("authorization", &auth), ("x-api-key", "k")],
            None,
        );
        assert_eq!(t.status, Some(400));
        let t = run(&config, "GET", "/elsewhere", &[("authorization", &auth)], None);
        assert_eq!((t.status, t.route_index, failed(&t)), (Some(403), None, vec!["route"]));
        let t = run(&config, "GET", "/healthz", &[("x-erp-client-id", "forged")], None);
        assert_eq!(t.status, Some(200));
        assert_eq!(t.removed_headers, ["x-erp-client-id"]);
        let t = run(&config, "get", "/api/domain/x", &[("authorization", &auth)], None);
        assert_eq!((t.status, failed(&t)), (Some(400), vec!["request"]));
    }

    #[test]
    fn a_reference_token_waits_for_an_answer_which_completes_the_trace() {
        let mut config = testkit::config_json();
        config["introspection"] = testkit::introspection_json();
        let auth = bearer(testkit::EXAMPLE_PAT);
        let t = run(&config, "GET", "/api/domain/x", &[("authorization", &auth)], None);
        assert_eq!(t.status, None);
        assert!(t.pending.as_deref().unwrap().contains("introspection"));
        let active = json!({"active": true, "scope": "read", "exp": NOW + 60, "client_id": "c", "sub": "u"});
        let t = run(
            &config,
            "GET",
            "/api/domain/x",
            &[("authorization", &auth)],
            Some(&active),
        );
        assert_eq!(t.status, Some(200));
        assert_eq!(t.upstream_headers["x-erp-token-kind"], "reference-user");
        let t = run(
            &config,
            "GET",
            "/api/domain/x",
            &[("authorization", &auth)],
            Some(&json!({"active": false})),
        );
        assert_eq!((t.status, failed(&t)), (Some(401), vec!["introspection answer"]));
    }

    #[test]
    fn a_bad_configuration_is_an_error_naming_the_field() {
        let mut config = testkit::config_json();
        config["clock_skew_seconds"] = json!(100_000);
        let text = config.to_string();
        let e = explain(&Inputs {
            config: text.as_bytes(),
            jwks: None,
            now: NOW,
            method: "GET",
            path: "/",
            headers: &[],
            introspection_answer: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("clock_skew_seconds"));
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(5), "5 s");
        assert_eq!(span(252), "4 min 12 s");
        assert_eq!(span(7260), "2 h 1 min");
        assert_eq!(span(90_000), "1 d 1 h");
    }
}
