//! Every way the filter says no, and how each looks on the wire (RFC 6750 §3).
//!
//! This is the one place that maps a reason to a status code, a
//! `WWW-Authenticate` challenge and a JSON body. Descriptions are fixed
//! strings: nothing from the request, and never the token, is echoed.

use std::fmt;

use crate::token_problem::{JwtError, TokenProblem};

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No credential at all: 401 with a bare challenge and no error code.
    MissingCredential,
    /// `Authorization` with a scheme other than Bearer: 401, bare challenge.
    UnsupportedScheme,
    /// More than one credential (two headers, a repeated header, two values):
    /// 400 `invalid_request`.
    MultipleCredentials,
    /// A credential that is not a token at all (empty, spaces, bad
    /// characters): 400 `invalid_request`.
    MalformedCredential(&'static str),
    /// A request the filter will not pass on whatever its credential: a
    /// method not in canonical (upper-case) form, a method or URL override
    /// header. 400 `invalid_request`.
    InvalidRequest(&'static str),
    /// The token is not valid: bad signature, expired, wrong issuer or
    /// audience, unknown key, revoked, ... 401 `invalid_token`.
    InvalidToken(TokenProblem),
    /// The token is valid but lacks the scopes this route needs: 403
    /// `insufficient_scope`, naming them.
    InsufficientScope {
        /// Space-separated scopes the route needs (for `any_of`, the choices).
        required: String,
    },
    /// No route rule matches and unmatched routes are denied: 403.
    RouteNotAllowed,
    /// The filter cannot decide now (identity service or signing keys
    /// unavailable): 503 with `Retry-After`. The token may well be good.
    Unavailable(&'static str),
}

impl From<JwtError> for Rejection {
    /// A failed JWT check is 401 `invalid_token`, but for keys not fetched
    /// yet: the token may be fine, so that is 503.
    fn from(error: JwtError) -> Self {
        match error {
            JwtError::NoKeys | JwtError::VerificationBudgetSpent => Self::Unavailable(error.description()),
            _ => Self::InvalidToken(TokenProblem::Jwt(error)),
        }
    }
}

impl From<TokenProblem> for Rejection {
    fn from(problem: TokenProblem) -> Self {
        match problem {
            TokenProblem::Jwt(error) => error.into(),
            problem => Self::InvalidToken(problem),
        }
    }
}

/// A local reply, ready for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireResponse {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Seconds a client is told to wait on 503.
pub(crate) const RETRY_AFTER_SECONDS: u32 = 5;

impl Rejection {
    /// The RFC 6750 error code, if the challenge carries one.
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            Self::MissingCredential | Self::UnsupportedScheme | Self::Unavailable(_) => None,
            Self::MultipleCredentials | Self::MalformedCredential(_) | Self::InvalidRequest(_) => {
                Some("invalid_request")
            }
            Self::InvalidToken(_) => Some("invalid_token"),
            Self::InsufficientScope { .. } | Self::RouteNotAllowed => Some("insufficient_scope"),
        }
    }

    pub fn status(&self) -> u32 {
        match self {
            Self::MissingCredential | Self::UnsupportedScheme | Self::InvalidToken(_) => 401,
            Self::MultipleCredentials | Self::MalformedCredential(_) | Self::InvalidRequest(_) => 400,
            Self::InsufficientScope { .. } | Self::RouteNotAllowed => 403,
            Self::Unavailable(_) => 503,
        }
    }

    /// Human-readable reason; safe to send and to log.
    pub fn description(&self) -> &'static str {
        match self {
            Self::MissingCredential => "no credential: send Authorization: Bearer <token> or an API key header",
            Self::UnsupportedScheme => "the Authorization scheme is not Bearer",
            Self::MultipleCredentials => {
                "more than one credential: use exactly one of Authorization or an API key header"
            }
            Self::MalformedCredential(d) | Self::InvalidRequest(d) | Self::Unavailable(d) => d,
            Self::InvalidToken(problem) => problem.description(),
            Self::InsufficientScope { .. } => "the token does not grant the scope this request needs",
            Self::RouteNotAllowed => "no access rule allows this request",
        }
    }

    /// The reply for this rejection.
    pub fn to_response(&self, realm: &str) -> WireResponse {
        let mut headers = Vec::with_capacity(3);
        let code = self.error_code();
        if !matches!(self, Self::Unavailable(_)) {
            let mut challenge = format!("Bearer realm=\"{realm}\"");
            if let Some(code) = code {
                challenge.push_str(&format!(
                    ", error=\"{code}\", error_description=\"{}\"",
                    self.description()
                ));
            }
            if let Self::InsufficientScope { required } = self {
                challenge.push_str(&format!(", scope=\"{required}\""));
            }
            headers.push(("www-authenticate", challenge));
        } else {
            headers.push(("retry-after", RETRY_AFTER_SECONDS.to_string()));
        }
        headers.push(("content-type", "application/json".into()));
        headers.push(("cache-control", "no-store".into()));
        let body = serde_json::json!({
            "error": code.unwrap_or(match self {
                Self::Unavailable(_) => "temporarily_unavailable",
                _ => "unauthorized",
            }),
            "error_description": self.description(),
        })
        .to_string();
        WireResponse {
            status: self.status(),
            headers,
            body,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InsufficientScope { required } => {
                write!(f, "{} {} (needs {required})", self.status(), self.description())
            }
            _ => write!(f, "{} {}", self.status(), self.description()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a WireResponse, name: &str) -> Option<&'a str> {
        r.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn missing_credential_is_401_with_a_bare_challenge() {
        let r = Rejection::MissingCredential.to_response("api");
        assert_eq!(r.status, 401);
        assert_eq!(header(&r, "www-authenticate"), Some("Bearer realm=\"api\""));
    }

    #[test]
    fn invalid_request_is_400() {
        let r = Rejection::MultipleCredentials.to_response("api");
        assert_eq!(r.status, 400);
        assert!(header(&r, "www-authenticate")
            .unwrap()
            .contains("error=\"invalid_request\""));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "invalid_request");
    }

    #[test]
    fn invalid_token_is_401() {
        let r = Rejection::from(JwtError::Expired).to_response("api");
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"the token has expired\"")
        );
    }

    #[test]
    fn insufficient_scope_is_403_and_names_the_scope() {
        let r = Rejection::InsufficientScope {
            required: "update".into(),
        }
        .to_response("api");
        assert_eq!(r.status, 403);
        let challenge = header(&r, "www-authenticate").unwrap();
        assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
        assert!(challenge.ends_with("scope=\"update\""), "{challenge}");
    }

    #[test]
    fn unavailable_is_503_with_retry_after_and_no_challenge() {
        let r = Rejection::Unavailable("identity service unavailable").to_response("api");
        assert_eq!(r.status, 503);
        assert_eq!(header(&r, "retry-after"), Some("5"));
        assert_eq!(header(&r, "www-authenticate"), None);
    }
}
