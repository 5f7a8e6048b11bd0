//! Who a verified credential speaks for, and the identity headers that tell
//! the upstream.

use serde::{Deserialize, Serialize};

use crate::rejection::Rejection;

/// Names of the headers the filter sets on allowed requests. Copies sent by
/// the client are removed from every request, allowed or not.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeaders {
    /// `client_id` of the token. Default `x-erp-client-id`.
    pub client_id: String,
    /// `sub` (the user) when the token has one. Default `x-erp-subject`.
    pub subject: String,
    /// Granted scopes, space-separated. Default `x-erp-scopes`.
    pub scopes: String,
    /// `client_db` (the ERP.net database). Default `x-erp-client-db`.
    pub client_db: String,
    /// `client_system_user`. Default `x-erp-system-user`.
    pub system_user: String,
    /// `jwt`, `reference-user` or `reference-service`. Default `x-erp-token-kind`.
    pub token_kind: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            client_id: "x-erp-client-id".into(),
            subject: "x-erp-subject".into(),
            scopes: "x-erp-scopes".into(),
            client_db: "x-erp-client-db".into(),
            system_user: "x-erp-system-user".into(),
            token_kind: "x-erp-token-kind".into(),
        }
    }
}

impl IdentityHeaders {
    /// The identity headers a client sent itself, by configured name, to be
    /// removed before anything else happens.
    pub fn client_copies(&self, headers: &[(&str, &str)]) -> Vec<String> {
        self.names()
            .into_iter()
            .filter(|name| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)))
            .map(str::to_owned)
            .collect()
    }

    /// All names, in a fixed order.
    pub fn names(&self) -> [&str; 6] {
        [
            &self.client_id,
            &self.subject,
            &self.scopes,
            &self.client_db,
            &self.system_user,
            &self.token_kind,
        ]
    }
}

/// How the caller authenticated, as the upstream sees it in `x-erp-token-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrincipalKind {
    /// A JWT access token verified inline.
    Jwt,
    /// A reference token acting as a user (PAT): the answer had a `sub`.
    ReferenceUser,
    /// A reference token acting as a trusted app's system user (SAT).
    ReferenceService,
}

impl PrincipalKind {
    /// A PAT or SAT, checked by introspection.
    pub fn is_reference(self) -> bool {
        self != Self::Jwt
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::ReferenceUser => "reference-user",
            Self::ReferenceService => "reference-service",
        }
    }
}

/// A verified identity and the scopes it was granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub kind: PrincipalKind,
    pub client_id: Option<String>,
    pub subject: Option<String>,
    pub client_db: Option<String>,
    pub system_user: Option<String>,
    pub scopes: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
}

/// Scope claim: ERP.net sends a JSON array, RFC 9068 and RFC 7662 a
/// space-delimited string. Both are accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ScopeClaim {
    List(Vec<String>),
    Text(String),
}

impl ScopeClaim {
    pub fn into_scopes(self) -> Vec<String> {
        match self {
            Self::List(list) => list.into_iter().filter(|s| !s.is_empty()).collect(),
            Self::Text(text) => text.split_ascii_whitespace().map(str::to_owned).collect(),
        }
    }
}

impl Principal {
    /// The identity headers for the upstream. Every configured name appears
    /// once; absent claims produce no header (their client copies are removed
    /// anyway). A claim that cannot be a header value refuses the request
    /// rather than being cut or passed on.
    pub fn headers<'h>(&self, names: &'h IdentityHeaders) -> Result<Vec<(&'h str, String)>, Rejection> {
        let scopes = self.scopes.join(" ");
        let values = [
            (&names.client_id, self.client_id.as_deref()),
            (&names.subject, self.subject.as_deref()),
            (&names.scopes, Some(scopes.as_str())),
            (&names.client_db, self.client_db.as_deref()),
            (&names.system_user, self.system_user.as_deref()),
            (&names.token_kind, Some(self.kind.as_str())),
        ];
        let mut out = Vec::with_capacity(values.len());
        for (name, value) in values {
            let Some(value) = value else { continue };
            if !value.chars().all(|c| c == ' ' || c == '\t' || !c.is_control()) {
                return Err(Rejection::InvalidToken(
                    "a claim holds characters a header cannot carry",
                ));
            }
            out.push((name.as_str(), value.to_owned()));
        }
        Ok(out)
    }
}

/// A principal with its identity headers, built once: a verified token
/// that comes again reuses both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    pub headers: Vec<(String, String)>,
}

impl Identity {
    pub fn new(principal: Principal, names: &IdentityHeaders) -> Result<Self, Rejection> {
        let headers = principal
            .headers(names)?
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect();
        Ok(Self { principal, headers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            kind: PrincipalKind::Jwt,
            client_id: Some("my.trusted.app/first".into()),
            subject: None,
            client_db: Some("E1_DEV".into()),
            system_user: Some("p.kostov@erp.bg".into()),
            scopes: vec!["DomainApi".into(), "read".into()],
            expires_at: 1,
        }
    }

    #[test]
    fn headers_carry_the_claims() {
        let names = IdentityHeaders::default();
        let headers = principal().headers(&names).unwrap();
        assert_eq!(
            headers,
            [
                ("x-erp-client-id", "my.trusted.app/first".to_string()),
                ("x-erp-scopes", "DomainApi read".to_string()),
                ("x-erp-client-db", "E1_DEV".to_string()),
                ("x-erp-system-user", "p.kostov@erp.bg".to_string()),
                ("x-erp-token-kind", "jwt".to_string()),
            ]
        );
    }

    #[test]
    fn a_claim_with_a_newline_is_refused() {
        let mut p = principal();
        p.client_id = Some("a\r\nx-erp-subject: admin".into());
        assert!(p.headers(&IdentityHeaders::default()).is_err());
    }

    #[test]
    fn scope_may_be_array_or_string() {
        let list: ScopeClaim = serde_json::from_str(r#"["read","update"]"#).unwrap();
        let text: ScopeClaim = serde_json::from_str(r#""read  update""#).unwrap();
        assert_eq!(list.into_scopes(), ["read", "update"]);
        assert_eq!(text.into_scopes(), ["read", "update"]);
    }
}
