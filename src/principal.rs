//! Who a verified credential speaks for, and the identity headers that tell
//! the upstream.

use serde::{Deserialize, Serialize};

use crate::rejection::Rejection;
use crate::token_problem::TokenProblem;

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
    /// The `claims_to_headers` header names (set from that field, not here):
    /// stripped from clients like the others.
    #[serde(skip)]
    pub mapped: Vec<String>,
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
            mapped: Vec::new(),
        }
    }
}

/// Whether a header name is `target` (lower-case, with dashes) to a
/// framework that ignores case and reads `_` as `-`.
pub(crate) fn same_header_name(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name
            .bytes()
            .zip(target.bytes())
            .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

/// Headers that make some frameworks serve another method or path than the
/// one the route rules decided on: refused on a request, never set.
pub(crate) const OVERRIDE_HEADERS: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// Why the filter must never set a header of this name, if it must not:
/// hop-by-hop and framing headers, `host`, Envoy's and the proxies'
/// own (`x-envoy-*`, `x-forwarded-*`, `forwarded`, `x-request-id`), the
/// override headers and `authorization`, also in their `_` spellings.
pub(crate) fn reserved_header(name: &str) -> Option<&'static str> {
    const HOP_BY_HOP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ];
    let lower = name.to_ascii_lowercase().replace('_', "-");
    let is = |list: &[&str]| list.iter().any(|h| *h == lower);
    if is(&HOP_BY_HOP) {
        Some("a hop-by-hop or framing header")
    } else if lower == "host" {
        Some("the request's host")
    } else if lower.starts_with("x-envoy-") || lower.starts_with("x-forwarded-") || is(&["forwarded", "x-request-id"]) {
        Some("a header Envoy or the proxies in front of it set")
    } else if is(&OVERRIDE_HEADERS) {
        Some("a method or URL override header")
    } else if lower == "authorization" {
        Some("a credential header")
    } else {
        None
    }
}

impl IdentityHeaders {
    /// The headers a client sent that look like identity headers, as the
    /// request names them, to be removed before anything else happens: every
    /// name that, with `_` read as `-` (some frameworks do), starts with
    /// `x-erp-` or is a configured identity-header name.
    pub fn client_copies(&self, headers: &[(&str, &str)]) -> Vec<String> {
        let looks_like = |name: &str| {
            name.get(..6).is_some_and(|head| same_header_name(head, "x-erp-"))
                || self.names().into_iter().any(|target| same_header_name(name, target))
                || self.mapped.iter().any(|target| same_header_name(name, target))
        };
        let mut copies: Vec<String> = headers
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| looks_like(n))
            .map(str::to_owned)
            .collect();
        copies.dedup();
        copies
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
    /// Headers from `claims_to_headers`: (header, value), in its order.
    #[serde(default)]
    pub claims: Vec<(String, String)>,
}

/// One `claims_to_headers` entry: a claim (JWT) or answer field
/// (introspection), by a dot path into nested objects, and the request
/// header that carries it upstream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    pub claim: String,
    pub header: String,
}

/// The values of `mappings` in a token's claims or an introspection answer:
/// strings as they are, numbers and booleans as JSON writes them, arrays of
/// those joined by spaces. Absent, null, object or mixed values give no
/// header. A list element with a space or a comma, or with whitespace at
/// either end, refuses the token: once joined, the elements could not be
/// told apart (as scope elements).
pub(crate) fn mapped_claims(
    root: &serde_json::Value,
    mappings: &[ClaimToHeader],
) -> Result<Vec<(String, String)>, TokenProblem> {
    use serde_json::Value;
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let ambiguous = |s: &String| s.contains([' ', ',']) || s.trim() != s;
    let mut out = Vec::new();
    for m in mappings {
        let Some(value) = m.claim.split('.').try_fold(root, |v, key| v.get(key)) else {
            continue;
        };
        let text = match value {
            Value::Array(items) => match items.iter().map(scalar).collect::<Option<Vec<_>>>() {
                Some(elements) if elements.iter().any(ambiguous) => return Err(TokenProblem::AmbiguousClaimList),
                Some(elements) => elements.join(" "),
                None => continue,
            },
            other => match scalar(other) {
                Some(text) => text,
                None => continue,
            },
        };
        out.push((m.header.clone(), text));
    }
    Ok(out)
}

/// A claim that is one string or an array of strings, read in one pass.
/// (serde's `untagged` buffers the value and formats an error for each
/// variant that does not match first: in a profile of a fresh JWT, more
/// than all the rest of reading its claims.)
enum StringOrList {
    One(String),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = StringOrList;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<StringOrList, E> {
                Ok(StringOrList::One(value.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, value: String) -> Result<StringOrList, E> {
                Ok(StringOrList::One(value))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StringOrList, A::Error> {
                let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
                while let Some(item) = seq.next_element::<String>()? {
                    list.push(item);
                }
                Ok(StringOrList::List(list))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

/// `aud`: one audience or several (RFC 7519 §4.1.3).
#[derive(Debug, Deserialize)]
#[serde(from = "StringOrList")]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl From<StringOrList> for Audience {
    fn from(value: StringOrList) -> Self {
        match value {
            StringOrList::One(one) => Self::One(one),
            StringOrList::List(many) => Self::Many(many),
        }
    }
}

impl Audience {
    /// Whether any of these audiences is accepted (exact comparison).
    pub fn any_in(&self, accepted: &[String]) -> bool {
        match self {
            Self::One(a) => accepted.contains(a),
            Self::Many(list) => list.iter().any(|a| accepted.contains(a)),
        }
    }
}

/// Scope claim: ERP.net sends a JSON array, RFC 9068 and RFC 7662 a
/// space-delimited string. Both are accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "StringOrList")]
pub enum ScopeClaim {
    List(Vec<String>),
    Text(String),
}

impl From<StringOrList> for ScopeClaim {
    fn from(value: StringOrList) -> Self {
        match value {
            StringOrList::One(text) => Self::Text(text),
            StringOrList::List(list) => Self::List(list),
        }
    }
}

/// RFC 6749 §3.3 scope-token characters: printable ASCII but space, `"`
/// and `\`.
pub(crate) fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// A scope claim with an element that is not an RFC 6749 scope-token
/// (`["read", "update delete"]`): refused, because an upstream that splits
/// the scopes header would see scopes that were never granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedScope;

impl ScopeClaim {
    pub fn into_scopes(self) -> Result<Vec<String>, MalformedScope> {
        let scopes: Vec<String> = match self {
            Self::List(list) => list,
            // RFC 6749: scope-tokens separated by single spaces; runs of
            // spaces are tolerated, other whitespace is not.
            Self::Text(text) => text.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        };
        if scopes.iter().all(|s| is_scope_token(s)) {
            Ok(scopes)
        } else {
            Err(MalformedScope)
        }
    }
}

impl Principal {
    /// The identity headers for the upstream. Every configured name appears
    /// once; absent claims produce no header (their client copies are removed
    /// anyway). A claim that cannot be a header value refuses the request
    /// rather than being cut or passed on.
    pub fn headers(&self, names: &IdentityHeaders) -> Result<Vec<(String, String)>, Rejection> {
        let scopes = self.scopes.join(" ");
        let values = [
            (&names.client_id, self.client_id.as_deref()),
            (&names.subject, self.subject.as_deref()),
            (&names.scopes, Some(scopes.as_str())),
            (&names.client_db, self.client_db.as_deref()),
            (&names.system_user, self.system_user.as_deref()),
            (&names.token_kind, Some(self.kind.as_str())),
        ];
        let mapped = self.claims.iter().map(|(n, v)| (n, Some(v.as_str())));
        let mut out = Vec::with_capacity(values.len() + self.claims.len());
        for (name, value) in values.into_iter().chain(mapped) {
            let Some(value) = value else { continue };
            if !value.chars().all(|c| c == ' ' || c == '\t' || !c.is_control()) {
                return Err(Rejection::InvalidToken(TokenProblem::UnsafeClaim));
            }
            out.push((name.clone(), value.to_owned()));
        }
        Ok(out)
    }
}

/// A principal with its identity headers and its token's fingerprint,
/// built once: a verified token that comes again reuses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    pub headers: Vec<(String, String)>,
    /// [`crate::secret::fingerprint`] of the token, for the access log.
    pub fingerprint: String,
}

impl Identity {
    pub fn new(principal: Principal, names: &IdentityHeaders, fingerprint: String) -> Result<Self, Rejection> {
        let headers = principal.headers(names)?;
        Ok(Self {
            principal,
            headers,
            fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn principal() -> Principal {
        Principal {
            kind: PrincipalKind::Jwt,
            client_id: Some("my.trusted.app/first".into()),
            subject: None,
            client_db: Some("E1_DEV".into()),
            system_user: Some("p.kostov@erp.bg".into()),
            scopes: vec!["DomainApi".into(), "read".into()],
            expires_at: 1,
            claims: Vec::new(),
        }
    }

    #[test]
    fn audience_and_scope_are_a_string_or_an_array_of_strings_only() {
        let aud = |v: serde_json::Value| {
            let text = v.to_string();
            serde_json::from_str::<Audience>(&text)
                .ok()
                .map(|a| a.any_in(&["A".into()]))
        };
        assert_eq!(aud(json!("A")), Some(true));
        assert_eq!(aud(json!("B")), Some(false));
        assert_eq!(aud(json!(["B", "A"])), Some(true));
        assert_eq!(aud(json!([])), Some(false));
        let scope = |v: serde_json::Value| {
            let text = v.to_string();
            serde_json::from_str::<ScopeClaim>(&text).ok().map(|s| s.into_scopes())
        };
        assert_eq!(
            scope(json!("read  update")),
            Some(Ok(vec!["read".into(), "update".into()]))
        );
        assert_eq!(
            scope(json!(["read", "update"])),
            Some(Ok(vec!["read".into(), "update".into()]))
        );
        assert_eq!(scope(json!(["read update"])), Some(Err(MalformedScope)));
        for bad in [
            json!(null),
            json!(1),
            json!(true),
            json!({"A": 1}),
            json!(["A", 1]),
            json!([["A"]]),
            json!([null]),
        ] {
            assert_eq!(aud(bad.clone()), None, "{bad}");
            assert!(scope(bad.clone()).is_none(), "{bad}");
        }
    }

    #[test]
    fn headers_carry_the_claims() {
        let names = IdentityHeaders::default();
        let headers = principal().headers(&names).unwrap();
        let headers: Vec<(&str, String)> = headers.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
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
    fn mapped_claims_follow_paths_join_arrays_and_skip_what_is_not_a_value() {
        let claims = json!({
            "client_system_user_type": "Internal",
            "org": {"unit": {"id": 42}, "active": true},
            "aud": ["DomainAPI", "TableAPI"],
            "mixed": ["a", {"b": 1}],
            "nothing": null,
            "object": {"x": 1},
        });
        let map = |claim: &str, header: &str| ClaimToHeader {
            claim: claim.into(),
            header: header.into(),
        };
        let mappings = [
            map("client_system_user_type", "x-user-type"),
            map("org.unit.id", "x-unit"),
            map("org.active", "x-active"),
            map("aud", "x-audiences"),
            map("mixed", "x-mixed"),
            map("nothing", "x-nothing"),
            map("object", "x-object"),
            map("absent.path", "x-absent"),
        ];
        assert_eq!(
            mapped_claims(&claims, &mappings).unwrap(),
            [
                ("x-user-type".to_string(), "Internal".to_string()),
                ("x-unit".into(), "42".into()),
                ("x-active".into(), "true".into()),
                ("x-audiences".into(), "DomainAPI TableAPI".into()),
            ]
        );
    }

    #[test]
    fn a_list_element_that_would_blur_into_its_neighbours_refuses_the_token() {
        let mappings = [ClaimToHeader {
            claim: "groups".into(),
            header: "x-groups".into(),
        }];
        for groups in [
            json!(["admins", "a b"]),
            json!(["admins,users"]),
            json!([" admins"]),
            json!(["admins\t"]),
        ] {
            assert_eq!(
                mapped_claims(&json!({ "groups": groups }), &mappings),
                Err(TokenProblem::AmbiguousClaimList),
                "{groups}"
            );
        }
        let fine = mapped_claims(&json!({"groups": ["admins", "users"]}), &mappings).unwrap();
        assert_eq!(fine, [("x-groups".to_string(), "admins users".to_string())]);
        // A single string is not a list: its spaces are its own.
        let one = mapped_claims(&json!({"groups": "admins and users"}), &mappings).unwrap();
        assert_eq!(one[0].1, "admins and users");
    }

    #[test]
    fn mapped_claims_go_upstream_after_the_identity_headers_and_unsafe_ones_refuse() {
        let names = IdentityHeaders::default();
        let mut p = principal();
        p.claims = vec![("x-user-type".into(), "Internal".into())];
        let headers = p.headers(&names).unwrap();
        assert_eq!(
            headers.last(),
            Some(&("x-user-type".to_string(), "Internal".to_string()))
        );
        p.claims = vec![("x-user-type".into(), "evil\r\nx-erp-client-id: admin".into())];
        assert!(p.headers(&names).is_err());
        // Their client copies are removed like the identity headers'.
        let names = IdentityHeaders {
            mapped: vec!["x-user-type".into()],
            ..IdentityHeaders::default()
        };
        assert_eq!(
            names.client_copies(&[("X_User_Type", "forged"), ("x-other", "kept")]),
            ["X_User_Type"]
        );
    }

    #[test]
    fn client_copies_of_identity_headers_are_found_in_every_spelling() {
        let names = IdentityHeaders {
            client_id: "x-caller-id".into(),
            ..IdentityHeaders::default()
        };
        let headers = [
            ("x-erp-client-id", "a"),
            ("x_erp_subject", "b"),
            ("X-ERP-Anything", "c"),
            ("x_erp_client_id", "d"),
            ("x-caller-id", "e"),
            ("x_caller_id", "f"),
            ("x-erpx", "g"),
            ("x-caller-identity", "h"),
            ("authorization", "i"),
        ];
        assert_eq!(
            names.client_copies(&headers),
            [
                "x-erp-client-id",
                "x_erp_subject",
                "X-ERP-Anything",
                "x_erp_client_id",
                "x-caller-id",
                "x_caller_id"
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
        assert_eq!(list.into_scopes(), Ok(vec!["read".to_owned(), "update".to_owned()]));
        assert_eq!(text.into_scopes(), Ok(vec!["read".to_owned(), "update".to_owned()]));
    }

    #[test]
    fn scope_elements_must_be_scope_tokens() {
        for bad in [
            json!(["read", "update delete"]),
            json!(["read", ""]),
            json!(["read\"x"]),
            json!(["read\ndelete"]),
            json!("read\tupdate"),
            json!("read \u{e9}"),
        ] {
            let claim: ScopeClaim = serde_json::from_value(bad.clone()).unwrap();
            assert_eq!(claim.into_scopes(), Err(MalformedScope), "{bad}");
        }
    }
}
