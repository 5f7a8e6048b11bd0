//! Why a token is refused, as one type: every JWT check's failure
//! ([`JwtError`]) and every way a reference token or a verified token's
//! claims fall short ([`TokenProblem`]). The wire text, the stats, the access
//! log and `explain` are all derived from it by `match`, so a new reason
//! does not compile until each of them says what it means.

/// Why a JWT was not accepted: one variant per check, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three dot-separated parts.
    NotAJwt,
    /// A part is not base64url.
    NotBase64,
    /// The JOSE header is not the JSON object it must be.
    MalformedHeader,
    /// `alg` is not on the configured allow-list (`none` and HMAC never are).
    AlgorithmNotAllowed,
    /// The header has `crit` (RFC 7515 §4.1.11): nothing here understands it.
    CriticalHeader,
    /// `typ` is not `at+jwt` while RFC 9068 typing is required.
    NotAnAccessToken,
    /// No `kid` in the header.
    NoKid,
    /// The token names a `kid` that is not in the key set. Kept apart from
    /// other failures: it may mean the issuer rotated its keys.
    UnknownKey,
    /// No signing keys at all yet (remote keys not fetched): the token may
    /// be fine, so this is 503, not 401.
    NoKeys,
    /// The module's verifications of this second are spent (every algorithm
    /// but RS256: `max_module_verifications_per_second`): the token was not
    /// judged, so this is 503.
    VerificationBudgetSpent,
    /// `alg` is allowed but is not the one algorithm the key is bound to.
    KeyAlgorithmMismatch,
    /// The signature does not verify.
    BadSignature,
    /// The claims are not the JSON object they must be.
    MalformedClaims,
    /// No `exp` claim.
    NoExpiry,
    /// `exp` is past, beyond the clock skew.
    Expired,
    /// `nbf` is ahead, beyond the clock skew.
    NotYetValid,
    /// `iss` is missing or not listed.
    IssuerNotAccepted,
    /// No `aud` value is listed.
    AudienceNotAccepted,
    /// A claim holds characters a header cannot carry (refused, not cut).
    UnsafeClaim,
    /// A `scope` element is not an RFC 6749 scope-token.
    MalformedScope,
}

impl JwtError {
    /// What the client is told (fixed text; nothing from the token).
    pub fn description(self) -> &'static str {
        match self {
            Self::NotAJwt => "the token is not a JWT",
            Self::NotBase64 => "the token is not base64url",
            Self::MalformedHeader => "the token header is malformed",
            Self::AlgorithmNotAllowed => "the token's algorithm is not allowed",
            Self::CriticalHeader => "the token has critical header parameters",
            Self::NotAnAccessToken => "the token is not an access token (typ is not at+jwt)",
            Self::NoKid => "the token has no kid",
            Self::UnknownKey => "the token's signing key is not known",
            Self::NoKeys => "the signing keys are not available yet; retry later",
            Self::VerificationBudgetSpent => "too many signatures to verify right now; retry later",
            Self::KeyAlgorithmMismatch => "the token's algorithm does not match its key",
            Self::BadSignature => "the token's signature is invalid",
            Self::MalformedClaims => "the token's claims are malformed",
            Self::NoExpiry => "the token has no exp",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::IssuerNotAccepted => "the token's issuer is not accepted",
            Self::AudienceNotAccepted => "the token's audience is not accepted",
            Self::UnsafeClaim => "a claim holds characters a header cannot carry",
            Self::MalformedScope => "the token's scope is malformed",
        }
    }
}

/// Why a token is not valid: the reason a 401 `invalid_token` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// A JWT check failed.
    Jwt(JwtError),
    /// The credential is longer than `max_token_bytes`.
    TooLarge,
    /// An `enrt_` token where no introspection is configured.
    ReferenceNotAccepted,
    /// An `enrt_` token that is not of the form the identity service issues.
    MalformedReference,
    /// The identity service says the reference token is not active (or not
    /// for this API).
    Inactive,
    /// The identity service vouches for the token, but its scope holds an
    /// element that is not an RFC 6749 scope-token.
    MalformedAnswerScope,
    /// A claim bound for an identity header holds characters a header
    /// cannot carry (refused, not cut).
    UnsafeClaim,
    /// An element of a list claim mapped to a header (`claims_to_headers`)
    /// holds a space or a comma, or starts or ends with whitespace: joined
    /// by spaces, the upstream could not tell the elements apart.
    AmbiguousClaimList,
    /// Claims are mapped to headers, but the verified token's payload (or
    /// the identity service's answer) could not be read again for them.
    UnreadableClaims,
}

impl TokenProblem {
    /// What the client is told (fixed text; nothing from the token).
    pub fn description(self) -> &'static str {
        match self {
            Self::Jwt(error) => error.description(),
            Self::TooLarge => "token is too large",
            Self::ReferenceNotAccepted => "reference tokens are not accepted here",
            Self::MalformedReference => "the reference token is malformed",
            Self::Inactive => "the token is not active",
            Self::MalformedAnswerScope => "the token's scope is malformed",
            Self::UnsafeClaim => "a claim holds characters a header cannot carry",
            Self::AmbiguousClaimList => "a list claim holds an element a header cannot carry unambiguously",
            Self::UnreadableClaims => "the token's claims could not be read for its headers",
        }
    }
}
