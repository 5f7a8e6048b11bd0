//! The filter's counters, by name: Envoy shows each as
//! `wasmcustom.erp_edge_validator.<name>` (in `/stats/prometheus`:
//! `wasmcustom_erp_edge_validator_<name>`). docs/stats-and-access-log.md is
//! this list.

use crate::rejection::Rejection;
use crate::token_problem::{JwtError, TokenProblem};

/// One counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stat {
    /// Requests let through (public routes included).
    Allowed,
    /// Refused with 400 `invalid_request`.
    Denied400,
    /// Refused with 401 (no credential, or `invalid_token`).
    Denied401,
    /// Refused with 403 `insufficient_scope`.
    Denied403,
    /// Answered 503: the identity service, the keys or the host failed.
    Unavailable503,
    /// Introspection callouts made.
    Introspections,
    /// Reference tokens answered from a cache (shared or this worker's).
    ReferenceCacheHits,
    /// Requests refused with 503 because the introspection budget of the
    /// second was spent.
    IntrospectionsOverBudget,
    /// Active answers too large for a shared-data slot, remembered by the
    /// worker that got them instead.
    IntrospectionAnswersTooLarge,
    /// Values in shared data whose authentication tag did not verify
    /// (written by something else than this configuration): read as absent.
    SharedDataRefused,
    /// JWTs answered 503 because the module's verifications of the second
    /// (`max_module_verifications_per_second`) were spent.
    ModuleVerificationsOverBudget,
    /// Good key sets fetched.
    JwksFetches,
    /// Key fetches that failed (the last good set is kept).
    JwksFetchFailures,
    /// RS256 signatures checked by Envoy (BoringSSL, `verify_signature`).
    Rs256HostVerifications,
    /// Signatures checked in the module (RS256 when the host does not offer
    /// a verifier or `rsa_verifier` is `module`; the other algorithms).
    Rs256ModuleVerifications,
    // Denials by reason (each refusal also counts in its status above).
    /// `exp` past, beyond the clock skew (or no `exp`).
    DeniedExpired,
    /// `nbf` ahead, beyond the clock skew.
    DeniedNotYetValid,
    /// The signature does not verify.
    DeniedBadSignature,
    /// No `kid`, or a `kid` not in the key set (after the refetch it allows).
    DeniedUnknownKid,
    /// `alg` not allowed, or not the key's algorithm.
    DeniedAlgorithm,
    /// `iss` missing or not accepted.
    DeniedIssuer,
    /// No accepted `aud`.
    DeniedAudience,
    /// `typ` is not `at+jwt`.
    DeniedTyp,
    /// Not a JWT or a well-formed reference token, bad characters, too
    /// large, malformed claims or scopes, `crit`, reference tokens where
    /// none are accepted.
    DeniedMalformed,
    /// No credential, or an `Authorization` scheme other than Bearer.
    DeniedNoCredential,
    /// More than one credential.
    DeniedTwoCredentials,
    /// A valid credential without the route's scopes.
    DeniedInsufficientScope,
    /// No route rule matches (`unmatched_routes: deny`).
    DeniedNoRoute,
    /// A reference token the identity service says is not active (revoked,
    /// expired, unknown, for another API or issuer).
    DeniedReferenceInactive,
    /// A method that is not upper-case, or a method or URL override header.
    DeniedInvalidRequest,
    /// JWTs found in this worker's memory of verified tokens.
    JwtCacheHits,
    /// JWTs verified (not found in that memory).
    JwtCacheMisses,
    /// Introspection answers: active.
    IntrospectionActive,
    /// Introspection answers: not active (or not for this API).
    IntrospectionInactive,
    /// Introspection callouts that failed (error status, garbage, refused
    /// connection), the timeout apart.
    IntrospectionErrors,
    /// Introspection callouts that timed out.
    IntrospectionTimeouts,
    /// Requests that would have been refused but passed (`report_only`).
    ReportOnlyPassed,
    /// Histogram: milliseconds from an introspection callout to its answer.
    IntrospectionLatencyMs,
    /// Gauge: seconds since the key set was last fetched good (the
    /// `remote_jwks` staleness to alert on before `max_stale_seconds`).
    KeySetAgeSeconds,
}

/// How Envoy keeps a stat (in the order of proxy-wasm's `MetricType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

impl Stat {
    pub const ALL: [Stat; 39] = [
        Self::Allowed,
        Self::Denied400,
        Self::Denied401,
        Self::Denied403,
        Self::Unavailable503,
        Self::Introspections,
        Self::ReferenceCacheHits,
        Self::IntrospectionsOverBudget,
        Self::IntrospectionAnswersTooLarge,
        Self::SharedDataRefused,
        Self::ModuleVerificationsOverBudget,
        Self::JwksFetches,
        Self::JwksFetchFailures,
        Self::Rs256HostVerifications,
        Self::Rs256ModuleVerifications,
        Self::DeniedExpired,
        Self::DeniedNotYetValid,
        Self::DeniedBadSignature,
        Self::DeniedUnknownKid,
        Self::DeniedAlgorithm,
        Self::DeniedIssuer,
        Self::DeniedAudience,
        Self::DeniedTyp,
        Self::DeniedMalformed,
        Self::DeniedNoCredential,
        Self::DeniedTwoCredentials,
        Self::DeniedInsufficientScope,
        Self::DeniedNoRoute,
        Self::DeniedReferenceInactive,
        Self::DeniedInvalidRequest,
        Self::JwtCacheHits,
        Self::JwtCacheMisses,
        Self::IntrospectionActive,
        Self::IntrospectionInactive,
        Self::IntrospectionErrors,
        Self::IntrospectionTimeouts,
        Self::ReportOnlyPassed,
        Self::IntrospectionLatencyMs,
        Self::KeySetAgeSeconds,
    ];

    pub fn kind(self) -> Kind {
        match self {
            Self::IntrospectionLatencyMs => Kind::Histogram,
            Self::KeySetAgeSeconds => Kind::Gauge,
            _ => Kind::Counter,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied400 => "denied_400",
            Self::Denied401 => "denied_401",
            Self::Denied403 => "denied_403",
            Self::Unavailable503 => "unavailable_503",
            Self::Introspections => "introspections",
            Self::ReferenceCacheHits => "reference_cache_hits",
            Self::IntrospectionsOverBudget => "introspections_over_budget",
            Self::IntrospectionAnswersTooLarge => "introspection_answers_too_large",
            Self::SharedDataRefused => "shared_data_refused",
            Self::ModuleVerificationsOverBudget => "module_verifications_over_budget",
            Self::JwksFetches => "jwks_fetches",
            Self::JwksFetchFailures => "jwks_fetch_failures",
            Self::Rs256HostVerifications => "signatures_verified_by_host",
            Self::Rs256ModuleVerifications => "signatures_verified_in_module",
            Self::DeniedExpired => "denied_expired",
            Self::DeniedNotYetValid => "denied_not_yet_valid",
            Self::DeniedBadSignature => "denied_bad_signature",
            Self::DeniedUnknownKid => "denied_unknown_kid",
            Self::DeniedAlgorithm => "denied_algorithm",
            Self::DeniedIssuer => "denied_issuer",
            Self::DeniedAudience => "denied_audience",
            Self::DeniedTyp => "denied_typ",
            Self::DeniedMalformed => "denied_malformed",
            Self::DeniedNoCredential => "denied_no_credential",
            Self::DeniedTwoCredentials => "denied_two_credentials",
            Self::DeniedInsufficientScope => "denied_insufficient_scope",
            Self::DeniedNoRoute => "denied_no_route",
            Self::DeniedReferenceInactive => "denied_reference_inactive",
            Self::DeniedInvalidRequest => "denied_invalid_request",
            Self::JwtCacheHits => "jwt_cache_hits",
            Self::JwtCacheMisses => "jwt_cache_misses",
            Self::IntrospectionActive => "introspection_active",
            Self::IntrospectionInactive => "introspection_inactive",
            Self::IntrospectionErrors => "introspection_errors",
            Self::IntrospectionTimeouts => "introspection_timeouts",
            Self::ReportOnlyPassed => "report_only_passed",
            Self::IntrospectionLatencyMs => "introspection_latency_ms",
            Self::KeySetAgeSeconds => "key_set_age_seconds",
        }
    }

    /// The counter of a decision carried out: `None` allowed, else the
    /// reply's status (anything unforeseen counts as 503).
    pub fn of_decision(status: Option<u32>) -> Self {
        match status {
            None => Self::Allowed,
            Some(400) => Self::Denied400,
            Some(401) => Self::Denied401,
            Some(403) => Self::Denied403,
            Some(_) => Self::Unavailable503,
        }
    }

    /// The counters a refusal adds to: its status, and its reason (503s
    /// have none: the request was not judged).
    pub fn of_rejection(rejection: &Rejection) -> [Option<Self>; 2] {
        [Some(Self::of_decision(Some(rejection.status()))), reason(rejection)]
    }
}

/// The reason a refusal counts under, by its variant and, for
/// `invalid_token`, its [`TokenProblem`] (503s have none: the request was
/// not judged). Exhaustive: a new reason does not compile until it is
/// counted somewhere.
fn reason(rejection: &Rejection) -> Option<Stat> {
    Some(match rejection {
        Rejection::MissingCredential | Rejection::UnsupportedScheme => Stat::DeniedNoCredential,
        Rejection::MultipleCredentials => Stat::DeniedTwoCredentials,
        Rejection::MalformedCredential(_) => Stat::DeniedMalformed,
        Rejection::InvalidRequest(_) => Stat::DeniedInvalidRequest,
        Rejection::InsufficientScope { .. } => Stat::DeniedInsufficientScope,
        Rejection::RouteNotAllowed => Stat::DeniedNoRoute,
        Rejection::Unavailable(_) => return None,
        Rejection::InvalidToken(problem) => return token_reason(*problem),
    })
}

fn token_reason(problem: TokenProblem) -> Option<Stat> {
    Some(match problem {
        TokenProblem::Jwt(error) => match error {
            JwtError::Expired | JwtError::NoExpiry => Stat::DeniedExpired,
            JwtError::NotYetValid => Stat::DeniedNotYetValid,
            JwtError::BadSignature => Stat::DeniedBadSignature,
            JwtError::UnknownKey | JwtError::NoKid => Stat::DeniedUnknownKid,
            JwtError::AlgorithmNotAllowed | JwtError::KeyAlgorithmMismatch => Stat::DeniedAlgorithm,
            JwtError::IssuerNotAccepted => Stat::DeniedIssuer,
            JwtError::AudienceNotAccepted => Stat::DeniedAudience,
            JwtError::NotAnAccessToken => Stat::DeniedTyp,
            // No keys yet, or no verification left this second: 503
            // (`Rejection::from`), never judged.
            JwtError::NoKeys | JwtError::VerificationBudgetSpent => return None,
            JwtError::NotAJwt
            | JwtError::NotBase64
            | JwtError::MalformedHeader
            | JwtError::CriticalHeader
            | JwtError::MalformedClaims
            | JwtError::UnsafeClaim
            | JwtError::MalformedScope => Stat::DeniedMalformed,
        },
        TokenProblem::Inactive => Stat::DeniedReferenceInactive,
        TokenProblem::TooLarge
        | TokenProblem::ReferenceNotAccepted
        | TokenProblem::MalformedReference
        | TokenProblem::MalformedAnswerScope
        | TokenProblem::UnsafeClaim
        | TokenProblem::AmbiguousClaimList
        | TokenProblem::UnreadableClaims => Stat::DeniedMalformed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_listed_once_in_order() {
        for (i, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(*stat as usize, i, "{}", stat.name());
        }
        let names: std::collections::HashSet<&str> = Stat::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), Stat::ALL.len());
    }

    #[test]
    fn each_jwt_failure_counts_under_its_reason() {
        let cases = [
            (JwtError::Expired, Stat::DeniedExpired),
            (JwtError::NoExpiry, Stat::DeniedExpired),
            (JwtError::NotYetValid, Stat::DeniedNotYetValid),
            (JwtError::BadSignature, Stat::DeniedBadSignature),
            (JwtError::UnknownKey, Stat::DeniedUnknownKid),
            (JwtError::NoKid, Stat::DeniedUnknownKid),
            (JwtError::AlgorithmNotAllowed, Stat::DeniedAlgorithm),
            (JwtError::KeyAlgorithmMismatch, Stat::DeniedAlgorithm),
            (JwtError::IssuerNotAccepted, Stat::DeniedIssuer),
            (JwtError::AudienceNotAccepted, Stat::DeniedAudience),
            (JwtError::NotAnAccessToken, Stat::DeniedTyp),
            (JwtError::NotAJwt, Stat::DeniedMalformed),
            (JwtError::MalformedClaims, Stat::DeniedMalformed),
            (JwtError::CriticalHeader, Stat::DeniedMalformed),
        ];
        for (error, stat) in cases {
            let rejection = Rejection::from(error);
            assert_eq!(
                Stat::of_rejection(&rejection),
                [Some(Stat::Denied401), Some(stat)],
                "{error:?}"
            );
        }
        // No keys yet is 503, and 503s have no reason.
        assert_eq!(
            Stat::of_rejection(&Rejection::from(JwtError::NoKeys)),
            [Some(Stat::Unavailable503), None]
        );
    }

    #[test]
    fn other_refusals_count_under_theirs() {
        let cases = [
            (Rejection::MissingCredential, Stat::DeniedNoCredential),
            (Rejection::UnsupportedScheme, Stat::DeniedNoCredential),
            (Rejection::MultipleCredentials, Stat::DeniedTwoCredentials),
            (Rejection::MalformedCredential("x"), Stat::DeniedMalformed),
            (Rejection::InvalidRequest("x"), Stat::DeniedInvalidRequest),
            (
                Rejection::InsufficientScope {
                    required: "update".into(),
                },
                Stat::DeniedInsufficientScope,
            ),
            (Rejection::RouteNotAllowed, Stat::DeniedNoRoute),
            (
                Rejection::InvalidToken(TokenProblem::Inactive),
                Stat::DeniedReferenceInactive,
            ),
        ];
        for (rejection, stat) in cases {
            assert_eq!(Stat::of_rejection(&rejection)[1], Some(stat), "{rejection:?}");
        }
    }
}
