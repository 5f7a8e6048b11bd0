//! Route rules: which scopes a request needs, decided by path and method.
//!
//! Rules are ordered; the first whose path and method match decides. Paths
//! are compared without the query string. Envoy normalises the path before
//! the filter sees it (`normalize_path`, `merge_slashes` in the shipped
//! configuration), so `/api/domain/../x` cannot sneak past a prefix rule.

use serde::Deserialize;

use crate::config_error::ConfigError;
use crate::principal::is_scope_token;
use crate::rejection::Rejection;

/// One rule as written in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Match paths starting with this (e.g. `/api/domain/`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Match exactly this path.
    #[serde(default)]
    pub exact: Option<String>,
    /// Methods matched (upper-case). Absent: every method.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// No credential needed (health checks, metadata). Identity headers sent
    /// by the client are still removed.
    #[serde(default)]
    pub public: bool,
    /// Scopes the token must all have.
    #[serde(default)]
    pub all_of: Vec<String>,
    /// Scopes of which the token must have at least one.
    #[serde(default)]
    pub any_of: Vec<String>,
    /// Match the path ignoring ASCII case, for upstreams that route
    /// case-insensitively (ASP.NET does): `/API/Domain/` then takes this
    /// rule too. Default false: paths compare exactly.
    #[serde(default)]
    pub case_insensitive: bool,
    /// Refusals of this rule's requests are logged and counted but the
    /// requests pass (rolling out a new rule). Default false.
    #[serde(default)]
    pub report_only: bool,
}

/// What happens to a request that matches no rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedRoutes {
    /// Refuse with 403 (the default: a forgotten rule fails closed).
    #[default]
    Deny,
    /// Any valid credential passes, no scope needed.
    Authenticated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    Prefix(String),
    Exact(String),
}

/// What a matched request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No credential needed.
    Public,
    /// A valid credential with these scopes.
    Scopes { all_of: Vec<String>, any_of: Vec<String> },
}

#[derive(Debug, Clone)]
struct Rule {
    path: PathMatch,
    case_insensitive: bool,
    methods: Option<Vec<String>>,
    access: Access,
    report_only: bool,
}

/// The compiled rule list.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    unmatched: Option<Access>,
}

/// HTTP methods a rule may name; ERP.net's OData API also uses `MERGE`.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "MERGE", "DELETE", "OPTIONS"];

impl Policy {
    /// Validates and compiles the rules.
    pub fn new(rules: Vec<RouteRule>, unmatched: UnmatchedRoutes) -> Result<Self, ConfigError> {
        if rules.is_empty() {
            return Err(ConfigError::new("routes", "must list at least one rule"));
        }
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| compile(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        let unmatched = match unmatched {
            UnmatchedRoutes::Deny => None,
            UnmatchedRoutes::Authenticated => Some(Access::Scopes {
                all_of: Vec::new(),
                any_of: Vec::new(),
            }),
        };
        Ok(Self { rules, unmatched })
    }

    /// What the request needs. `path` may carry a query string.
    pub fn access(&self, method: &str, path: &str) -> Result<&Access, Rejection> {
        self.matching(method, path)
            .and_then(|i| self.rules.get(i))
            .map(|r| &r.access)
            .or(self.unmatched.as_ref())
            .ok_or(Rejection::RouteNotAllowed)
    }

    /// Whether the request's rule is in report-only mode.
    pub fn report_only(&self, method: &str, path: &str) -> bool {
        // Matching again costs every request; most policies have no such rule.
        if !self.rules.iter().any(|r| r.report_only) {
            return false;
        }
        self.matching(method, path)
            .and_then(|i| self.rules.get(i))
            .is_some_and(|r| r.report_only)
    }

    /// The indices of the rules in report-only mode.
    pub fn report_only_rules(&self) -> Vec<usize> {
        (0..self.rules.len()).filter(|i| self.rules[*i].report_only).collect()
    }

    /// The index of the first rule the request matches, if any.
    pub fn matching(&self, method: &str, path: &str) -> Option<usize> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        self.rules.iter().position(|r| {
            let path_ok = match (&r.path, r.case_insensitive) {
                (PathMatch::Prefix(p), false) => path.starts_with(p.as_str()),
                (PathMatch::Exact(p), false) => path == p,
                (PathMatch::Prefix(p), true) => path
                    .as_bytes()
                    .get(..p.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
                (PathMatch::Exact(p), true) => path.eq_ignore_ascii_case(p),
            };
            path_ok && r.methods.as_ref().is_none_or(|m| m.iter().any(|m| m == method))
        })
    }
}

impl Access {
    /// Checks granted scopes against what the route needs.
    pub fn check<S: AsRef<str>>(&self, granted: &[S]) -> Result<(), Rejection> {
        let Access::Scopes { all_of, any_of } = self else {
            return Ok(());
        };
        let has = |s: &String| granted.iter().any(|g| g.as_ref() == s);
        let missing: Vec<&str> = all_of.iter().filter(|s| !has(s)).map(String::as_str).collect();
        if !missing.is_empty() {
            return Err(Rejection::InsufficientScope {
                required: missing.join(" "),
            });
        }
        if !any_of.is_empty() && !any_of.iter().any(has) {
            return Err(Rejection::InsufficientScope {
                required: any_of.join(" "),
            });
        }
        Ok(())
    }
}

fn compile(i: usize, r: RouteRule) -> Result<Rule, ConfigError> {
    let field = |name: &str| format!("routes[{i}].{name}");
    let path = match (r.prefix, r.exact) {
        (Some(p), None) => PathMatch::Prefix(p),
        (None, Some(p)) => PathMatch::Exact(p),
        _ => {
            return Err(ConfigError::new(
                format!("routes[{i}]"),
                "give exactly one of `prefix` or `exact`",
            ))
        }
    };
    let (PathMatch::Prefix(p) | PathMatch::Exact(p)) = &path;
    if !p.starts_with('/') || p.contains(['?', '#']) {
        let name = if matches!(path, PathMatch::Prefix(_)) {
            "prefix"
        } else {
            "exact"
        };
        return Err(ConfigError::new(field(name), "must start with `/` and hold no query"));
    }
    let methods = match r.methods {
        None => None,
        Some(m) if m.is_empty() => {
            return Err(ConfigError::new(
                field("methods"),
                "omit it to match every method; an empty list matches none",
            ));
        }
        Some(m) => {
            let upper: Vec<String> = m.iter().map(|m| m.to_ascii_uppercase()).collect();
            if let Some(bad) = upper.iter().find(|m| !METHODS.contains(&m.as_str())) {
                return Err(ConfigError::new(
                    field("methods"),
                    format!("unknown method `{bad}`; choose from {}", METHODS.join(", ")),
                ));
            }
            Some(upper)
        }
    };
    for (name, scopes) in [("all_of", &r.all_of), ("any_of", &r.any_of)] {
        if let Some(bad) = scopes.iter().find(|s| !is_scope_token(s)) {
            return Err(ConfigError::new(field(name), format!("`{bad}` is not a scope token")));
        }
    }
    let access = if r.public {
        if !r.all_of.is_empty() || !r.any_of.is_empty() {
            return Err(ConfigError::new(
                field("public"),
                "a public route cannot require scopes",
            ));
        }
        Access::Public
    } else {
        Access::Scopes {
            all_of: r.all_of,
            any_of: r.any_of,
        }
    };
    Ok(Rule {
        path,
        case_insensitive: r.case_insensitive,
        methods,
        access,
        report_only: r.report_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(rules: serde_json::Value) -> Result<Policy, ConfigError> {
        Policy::new(serde_json::from_value(rules).unwrap(), UnmatchedRoutes::Deny)
    }

    fn domain_api() -> Policy {
        policy(json!([
            {"exact": "/healthz", "public": true},
            {"prefix": "/api/domain/", "methods": ["GET", "HEAD"], "all_of": ["read"]},
            {"prefix": "/api/domain/", "methods": ["POST", "PUT", "PATCH", "MERGE", "DELETE"], "all_of": ["update"]},
        ]))
        .unwrap()
    }

    #[test]
    fn get_needs_read_and_post_needs_update() {
        let p = domain_api();
        let get = p.access("GET", "/api/domain/odata/Customers?$top=10").unwrap();
        assert_eq!(get.check(&["read"]), Ok(()));
        assert_eq!(
            get.check(&["update"]),
            Err(Rejection::InsufficientScope {
                required: "read".into()
            })
        );
        let post = p.access("POST", "/api/domain/odata/Customers").unwrap();
        assert_eq!(
            post.check(&["read"]),
            Err(Rejection::InsufficientScope {
                required: "update".into()
            })
        );
        assert_eq!(post.check(&["read", "update"]), Ok(()));
    }

    #[test]
    fn first_match_wins() {
        let p = policy(json!([
            {"prefix": "/api/domain/odata/Secret", "all_of": ["sec"]},
            {"prefix": "/api/domain/", "all_of": ["read"]},
        ]))
        .unwrap();
        assert!(p
            .access("GET", "/api/domain/odata/Secrets")
            .unwrap()
            .check(&["read"])
            .is_err());
        assert!(p
            .access("GET", "/api/domain/odata/Other")
            .unwrap()
            .check(&["read"])
            .is_ok());
    }

    #[test]
    fn unmatched_requests_are_denied_by_default() {
        let p = domain_api();
        assert_eq!(p.access("GET", "/admin").unwrap_err(), Rejection::RouteNotAllowed);
        assert_eq!(
            p.access("OPTIONS", "/api/domain/x").unwrap_err(),
            Rejection::RouteNotAllowed
        );
        assert_eq!(p.access("GET", "/healthz/x").unwrap_err(), Rejection::RouteNotAllowed);
    }

    #[test]
    fn unmatched_requests_may_need_only_authentication() {
        let p = Policy::new(
            serde_json::from_value(json!([{"exact": "/x", "public": true}])).unwrap(),
            UnmatchedRoutes::Authenticated,
        )
        .unwrap();
        assert_eq!(p.access("GET", "/other").unwrap().check::<&str>(&[]), Ok(()));
        assert_ne!(p.access("GET", "/other").unwrap(), &Access::Public);
    }

    #[test]
    fn public_routes_need_nothing() {
        assert_eq!(domain_api().access("GET", "/healthz?x=1").unwrap(), &Access::Public);
    }

    #[test]
    fn any_of_needs_one() {
        let p = policy(json!([{"prefix": "/", "any_of": ["read", "update"]}])).unwrap();
        let a = p.access("GET", "/").unwrap();
        assert!(a.check(&["update"]).is_ok());
        assert_eq!(
            a.check(&["sec"]),
            Err(Rejection::InsufficientScope {
                required: "read update".into()
            })
        );
    }

    #[test]
    fn bad_rules_name_the_field() {
        let cases = [
            (json!([]), "routes"),
            (json!([{"all_of": ["read"]}]), "routes[0]"),
            (json!([{"prefix": "/", "exact": "/"}]), "routes[0]"),
            (json!([{"prefix": "/"}, {"prefix": "x"}]), "routes[1].prefix"),
            (json!([{"prefix": "/", "methods": ["FETCH"]}]), "routes[0].methods"),
            (json!([{"prefix": "/", "methods": []}]), "routes[0].methods"),
            (json!([{"prefix": "/", "all_of": ["a b"]}]), "routes[0].all_of"),
            (
                json!([{"prefix": "/", "public": true, "all_of": ["read"]}]),
                "routes[0].public",
            ),
        ];
        for (rules, field) in cases {
            assert_eq!(policy(rules.clone()).unwrap_err().field, field, "{rules}");
        }
    }

    #[test]
    fn methods_are_case_insensitive_in_config() {
        let p = policy(json!([{"prefix": "/", "methods": ["get"], "all_of": []}])).unwrap();
        assert!(p.access("GET", "/").is_ok());
        assert!(p.access("POST", "/").is_err());
    }

    #[test]
    fn paths_compare_exactly_unless_the_rule_says_otherwise() {
        let p = domain_api();
        assert_eq!(
            p.access("GET", "/API/Domain/odata/x").unwrap_err(),
            Rejection::RouteNotAllowed
        );
        let p = policy(json!([
            {"prefix": "/api/domain/", "methods": ["GET"], "all_of": ["read"], "case_insensitive": true},
            {"exact": "/Health", "public": true, "case_insensitive": true},
        ]))
        .unwrap();
        assert!(p.access("GET", "/API/Domain/odata/x").unwrap().check(&["read"]).is_ok());
        assert!(p
            .access("GET", "/API/Domain/odata/x")
            .unwrap()
            .check(&["update"])
            .is_err());
        assert_eq!(p.access("GET", "/HEALTH").unwrap(), &Access::Public);
        assert_eq!(p.access("GET", "/api/dom").unwrap_err(), Rejection::RouteNotAllowed);
        assert_eq!(
            p.access("GET", "/ap\u{e9}").unwrap_err(),
            Rejection::RouteNotAllowed,
            "no panic on a char boundary"
        );
    }
}
