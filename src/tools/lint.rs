//! "Is this configuration what I meant?": warnings about a configuration
//! the filter accepts but that probably does not do what its author wants.
//! Each names the rule or field. Errors (a configuration the filter
//! refuses) come from the filter's own validation, [`Config::from_json`].

use serde::Serialize;

use crate::config::{Config, RawConfig};
use crate::config_error::ConfigError;
use crate::policy::{RouteRule, UnmatchedRoutes};

/// One warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The field or rule, as `routes[2]` or `introspection.cache_max_ttl_seconds`.
    pub field: String,
    pub message: String,
}

/// Revocation of a cached reference token is seen this late at worst;
/// longer than this deserves a word.
const LONG_CACHE_TTL_SECONDS: u64 = 120;
/// Clock skew beyond this lets expired tokens pass for a long while.
const LARGE_SKEW_SECONDS: u64 = 300;

/// The warnings for a configuration, or the error the filter would stop at.
pub fn lint(config: &[u8]) -> Result<Vec<Warning>, ConfigError> {
    Config::from_json(config)?;
    let raw: RawConfig =
        serde_json::from_slice(config).map_err(|e| ConfigError::new("configuration", e.to_string()))?;
    let mut warnings = Vec::new();
    let mut warn = |field: String, message: String| warnings.push(Warning { field, message });
    let rules: Vec<Shape> = raw.routes.iter().map(Shape::of).collect();
    for (j, later) in rules.iter().enumerate() {
        if let Some(i) = rules[..j].iter().position(|earlier| earlier.covers(later)) {
            warn(
                format!("routes[{j}]"),
                format!("never matches: rule {i} comes first and takes every request it would"),
            );
            continue;
        }
        if !later.exact && !later.path.ends_with('/') {
            warn(
                format!("routes[{j}].prefix"),
                format!(
                    "`{}` also matches `{}x…`; end the prefix with `/` unless that is meant",
                    later.path, later.path
                ),
            );
        }
    }
    for (i, a) in rules.iter().enumerate() {
        for (j, b) in rules.iter().enumerate().skip(i + 1) {
            if a.public != b.public && a.overlaps(b) && !a.covers(b) {
                let (public, protected) = if a.public { (i, j) } else { (j, i) };
                warn(
                    format!("routes[{public}]"),
                    format!(
                        "public rule {public} overlaps protected rule {protected}: some requests under one path \
                         need a credential and some do not, by rule order"
                    ),
                );
            }
        }
    }
    // Paths an upstream that routes case-insensitively, or that ignores a
    // trailing slash, serves as the stricter rule's: here they fall to a
    // later, weaker rule.
    // Every method a rule names, and one none does.
    let mut methods: Vec<&str> = rules
        .iter()
        .flat_map(|r| r.methods.iter().flatten())
        .map(String::as_str)
        .collect();
    methods.push("");
    let first = |method: &str, path: &str| rules.iter().position(|r| r.matches(path) && r.takes(method));
    for (i, strict) in rules.iter().enumerate() {
        let escape = methods
            .iter()
            .filter(|m| first(m, &strict.path) == Some(i))
            .find_map(|m| {
                strict.variants().into_iter().find_map(|variant| {
                    let taker = first(m, &variant)?;
                    (taker != i && rules[taker].weaker_than(strict)).then_some((variant, taker))
                })
            });
        if let Some((variant, j)) = escape {
            warn(
                format!("routes[{i}]"),
                format!(
                    "`{variant}` falls to the weaker rule {j}, but an upstream that routes case-insensitively \
                     or ignores a trailing slash serves it as `{}`: use `case_insensitive`, or a prefix rule",
                    strict.path
                ),
            );
        }
    }
    // OData: one POST to `…/$batch` carries requests to any entity set.
    let names_entity_sets = rules.iter().any(|r| r.names_entity_set());
    let has_batch_rule = rules.iter().any(|r| r.path.contains("$batch"));
    if names_entity_sets && !has_batch_rule {
        warn(
            "routes".into(),
            "rules name OData entity sets, but a `$batch` request carries requests to any of them under one \
             POST to `…/$batch`, and `$expand` reaches other entity sets: add a rule for `…/$batch` that \
             requires the union of their scopes (docs/configuration.md, OData)"
                .into(),
        );
    }
    if raw.unmatched_routes == UnmatchedRoutes::Authenticated {
        warn(
            "unmatched_routes".into(),
            "\"authenticated\": a request no rule names passes with any valid credential and no scope; \
             \"deny\" fails closed when a rule is forgotten"
                .into(),
        );
    }
    if !raw.require_at_jwt_typ {
        warn(
            "require_at_jwt_typ".into(),
            "false: ID tokens and other JWTs from the same issuer are accepted as access tokens (RFC 9068 §4)".into(),
        );
    }
    if raw.clock_skew_seconds > LARGE_SKEW_SECONDS {
        warn(
            "clock_skew_seconds".into(),
            format!(
                "{} s: a token passes that long after it expired",
                raw.clock_skew_seconds
            ),
        );
    }
    if let Some(introspection) = &raw.introspection {
        if introspection.cache_max_ttl_seconds > LONG_CACHE_TTL_SECONDS {
            warn(
                "introspection.cache_max_ttl_seconds".into(),
                format!(
                    "{} s: a revoked reference token keeps working that long",
                    introspection.cache_max_ttl_seconds
                ),
            );
        }
    }
    Ok(warnings)
}

/// What a rule matches, for comparing rules.
struct Shape {
    path: String,
    exact: bool,
    folded: bool,
    methods: Option<Vec<String>>,
    public: bool,
    all_of: Vec<String>,
    any_of: Vec<String>,
}

impl Shape {
    fn of(rule: &RouteRule) -> Self {
        let (path, exact) = match (&rule.prefix, &rule.exact) {
            (Some(p), _) => (p.clone(), false),
            (_, Some(p)) => (p.clone(), true),
            _ => (String::new(), false),
        };
        Self {
            path,
            exact,
            folded: rule.case_insensitive,
            methods: rule
                .methods
                .as_ref()
                .map(|m| m.iter().map(|m| m.to_ascii_uppercase()).collect()),
            public: rule.public,
            all_of: rule.all_of.clone(),
            any_of: rule.any_of.clone(),
        }
    }

    /// Whether a request with this path (no query) takes this rule, as
    /// `Policy::matching` compares paths.
    fn matches(&self, path: &str) -> bool {
        match (self.exact, self.folded) {
            (true, true) => self.path.eq_ignore_ascii_case(path),
            (true, false) => self.path == path,
            (false, _) => self.path_starts(path),
        }
    }

    /// Whether the rule takes this method (`""`: a method no rule names).
    fn takes(&self, method: &str) -> bool {
        self.methods.as_ref().is_none_or(|m| m.iter().any(|x| x == method))
    }

    /// Spellings an upstream may serve as this rule's path: with its
    /// letters in the other case, with a trailing slash added or dropped.
    fn variants(&self) -> Vec<String> {
        let mut variants = Vec::new();
        if !self.folded && self.path.bytes().any(|b| b.is_ascii_alphabetic()) {
            variants.push(self.path.to_ascii_uppercase());
            // The last segment's case changed: what a prefix rule for the
            // parent still takes.
            if let Some((parent, last)) = self.path.trim_end_matches('/').rsplit_once('/') {
                if last.bytes().any(|b| b.is_ascii_alphabetic()) {
                    let tail = if self.path.ends_with('/') { "/" } else { "" };
                    variants.push(format!("{parent}/{}{tail}", last.to_ascii_uppercase()));
                }
            }
        }
        if self.exact {
            match self.path.strip_suffix('/') {
                Some(bare) if !bare.is_empty() => variants.push(bare.to_owned()),
                Some(_) => {}
                None => variants.push(format!("{}/", self.path)),
            }
        }
        variants.retain(|v| *v != self.path);
        variants
    }

    /// Whether this rule lets through what `other` would refuse: public
    /// where `other` is not, or without a scope `other` demands.
    fn weaker_than(&self, other: &Self) -> bool {
        if other.public {
            return false;
        }
        self.public
            || !other.all_of.iter().all(|s| self.all_of.contains(s))
            || (!other.any_of.is_empty()
                && self.any_of.is_empty()
                && self.all_of.iter().all(|s| !other.any_of.contains(s)))
    }

    /// Whether the path names an OData entity set (a segment after `odata/`
    /// that is not `$metadata` or `$batch`).
    fn names_entity_set(&self) -> bool {
        let lower = self.path.to_ascii_lowercase();
        lower.split_once("/odata/").is_some_and(|(_, rest)| {
            let set = rest.split('/').next().unwrap_or_default();
            !set.is_empty() && !set.starts_with('$')
        })
    }

    fn methods_cover(&self, other: &Self) -> bool {
        match (&self.methods, &other.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs.iter().all(|m| mine.contains(m)),
        }
    }

    fn methods_meet(&self, other: &Self) -> bool {
        match (&self.methods, &other.methods) {
            (Some(mine), Some(theirs)) => theirs.iter().any(|m| mine.contains(m)),
            _ => true,
        }
    }

    /// Whether `p` (of `other`) starts with this rule's path, as this rule
    /// compares.
    fn path_starts(&self, p: &str) -> bool {
        if self.folded {
            p.len() >= self.path.len() && p.as_bytes()[..self.path.len()].eq_ignore_ascii_case(self.path.as_bytes())
        } else {
            p.starts_with(&self.path)
        }
    }

    /// Every request `other` matches, this rule matches too.
    fn covers(&self, other: &Self) -> bool {
        // A case-sensitive rule covers a folded one only where case cannot
        // matter.
        let case_ok = self.folded || !other.folded || !other.path.bytes().any(|b| b.is_ascii_alphabetic());
        let path_ok = match (self.exact, other.exact) {
            (false, _) => self.path_starts(&other.path),
            (true, true) => {
                if self.folded {
                    self.path.eq_ignore_ascii_case(&other.path)
                } else {
                    self.path == other.path
                }
            }
            (true, false) => false,
        };
        case_ok && path_ok && self.methods_cover(other)
    }

    /// Some request matches both.
    fn overlaps(&self, other: &Self) -> bool {
        let folded = self.folded || other.folded;
        let starts = |long: &str, short: &str| {
            if folded {
                long.len() >= short.len() && long.as_bytes()[..short.len()].eq_ignore_ascii_case(short.as_bytes())
            } else {
                long.starts_with(short)
            }
        };
        let path_ok = match (self.exact, other.exact) {
            (true, true) => starts(&self.path, &other.path) && self.path.len() == other.path.len(),
            (false, true) => starts(&other.path, &self.path),
            (true, false) => starts(&self.path, &other.path),
            (false, false) => starts(&self.path, &other.path) || starts(&other.path, &self.path),
        };
        path_ok && self.methods_meet(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn config(patch: Value) -> Vec<u8> {
        let mut base = crate::testing::config_json();
        base["routes"] = json!([{"prefix": "/api/domain/", "all_of": ["read"]}]);
        if let (Some(base), Some(patch)) = (base.as_object_mut(), patch.as_object()) {
            for (k, v) in patch {
                base.insert(k.clone(), v.clone());
            }
        }
        base.to_string().into_bytes()
    }

    fn fields(patch: Value) -> Vec<String> {
        lint(&config(patch)).unwrap().into_iter().map(|w| w.field).collect()
    }

    #[test]
    fn the_shipped_configuration_has_no_warning() {
        let shipped = include_bytes!("../../envoy/filter-config.json");
        assert_eq!(lint(shipped).unwrap(), vec![]);
    }

    #[test]
    fn a_rule_behind_a_wider_one_never_matches() {
        let routes = json!([
            {"prefix": "/api/", "all_of": ["read"]},
            {"prefix": "/api/domain/", "methods": ["POST"], "all_of": ["update"]},
            {"exact": "/api/domain/x", "all_of": ["admin"]}
        ]);
        assert_eq!(fields(json!({"routes": routes})), ["routes[1]", "routes[2]"]);
        // Narrower methods first: the later rule still matches other methods.
        let routes = json!([
            {"prefix": "/api/", "methods": ["GET"], "all_of": ["read"]},
            {"prefix": "/api/domain/", "all_of": ["update"]}
        ]);
        assert_eq!(fields(json!({"routes": routes})), Vec::<String>::new());
        // A case-sensitive rule does not take every request of a folded one.
        let routes = json!([
            {"prefix": "/api/", "all_of": ["read"]},
            {"prefix": "/API/x/", "case_insensitive": true, "all_of": ["read"]}
        ]);
        assert_eq!(fields(json!({"routes": routes})), Vec::<String>::new());
        let routes = json!([
            {"prefix": "/API/", "case_insensitive": true, "all_of": ["read"]},
            {"prefix": "/api/x/", "all_of": ["read"]}
        ]);
        assert_eq!(fields(json!({"routes": routes})), ["routes[1]"]);
    }

    #[test]
    fn a_stricter_rule_whose_case_or_slash_variant_falls_to_a_weaker_one_is_named() {
        // `/api/domain/Admin` and `/api/domain/admin/` take the read rule.
        let routes = json!([
            {"exact": "/api/domain/admin", "all_of": ["admin"]},
            {"prefix": "/api/domain/", "all_of": ["read"]}
        ]);
        assert_eq!(fields(json!({"routes": routes})), ["routes[0]"]);
        let message = lint(&config(json!({"routes": routes}))).unwrap()[0].message.clone();
        assert!(message.contains("weaker rule 1"), "{message}");
        // A prefix rule, case-insensitive: no variant escapes it.
        let safe = json!([
            {"prefix": "/api/domain/admin/", "case_insensitive": true, "all_of": ["admin"]},
            {"exact": "/api/domain/admin", "case_insensitive": true, "all_of": ["admin"]},
            {"prefix": "/api/domain/", "all_of": ["read"]}
        ]);
        assert_eq!(fields(json!({"routes": safe})), Vec::<String>::new());
        // The later rule is as strict: nothing is weakened.
        let as_strict = json!([
            {"exact": "/api/domain/admin", "all_of": ["admin"]},
            {"prefix": "/api/domain/", "all_of": ["admin", "read"]}
        ]);
        assert_eq!(fields(json!({"routes": as_strict})), Vec::<String>::new());
        // Different methods never meet.
        let methods = json!([
            {"exact": "/api/domain/admin", "methods": ["DELETE"], "all_of": ["admin"]},
            {"prefix": "/api/domain/", "methods": ["GET"], "all_of": ["read"]}
        ]);
        assert_eq!(fields(json!({"routes": methods})), Vec::<String>::new());
    }

    #[test]
    fn entity_set_rules_without_a_batch_rule_are_named() {
        let sets = json!([
            {"prefix": "/api/domain/odata/Customers", "methods": ["GET"], "all_of": ["customers"]},
            {"prefix": "/api/domain/odata/", "methods": ["GET"], "all_of": ["read"]}
        ]);
        // (`/api/domain/odata/CUSTOMERS` also falls to the read rule.)
        assert_eq!(
            fields(json!({"routes": sets})),
            ["routes[0].prefix", "routes[0]", "routes"]
        );
        let with_batch = json!([
            {"exact": "/api/domain/odata/$batch", "methods": ["POST"], "all_of": ["customers", "read"]},
            {"prefix": "/api/domain/odata/Customers", "methods": ["GET"], "all_of": ["customers"]},
            {"prefix": "/api/domain/odata/", "methods": ["GET"], "all_of": ["read"]}
        ]);
        assert_eq!(fields(json!({"routes": with_batch})), ["routes[1].prefix", "routes[1]"]);
    }

    #[test]
    fn a_prefix_without_its_slash_is_named() {
        let routes = json!([{"prefix": "/api/domain", "all_of": ["read"]}, {"prefix": "/", "all_of": ["read"]}]);
        assert_eq!(fields(json!({"routes": routes})), ["routes[0].prefix"]);
    }

    #[test]
    fn public_rules_overlapping_protected_ones_are_named() {
        let routes = json!([
            {"prefix": "/api/domain/", "all_of": ["read"]},
            {"prefix": "/api/", "public": true}
        ]);
        // (And `/api/DOMAIN/…`, which an upstream routing case-insensitively
        // serves as rule 0's, is public by rule 1.)
        assert_eq!(fields(json!({"routes": routes})), ["routes[1]", "routes[0]"]);
        let apart = json!([
            {"exact": "/healthz", "public": true},
            {"prefix": "/api/", "all_of": ["read"]}
        ]);
        assert_eq!(fields(json!({"routes": apart})), Vec::<String>::new());
        // Different methods on the same path do not overlap.
        let methods = json!([
            {"prefix": "/api/", "methods": ["OPTIONS"], "public": true},
            {"prefix": "/api/", "methods": ["GET"], "all_of": ["read"]}
        ]);
        assert_eq!(fields(json!({"routes": methods})), Vec::<String>::new());
    }

    #[test]
    fn risky_settings_are_named() {
        assert_eq!(
            fields(json!({"unmatched_routes": "authenticated"})),
            ["unmatched_routes"]
        );
        assert_eq!(fields(json!({"require_at_jwt_typ": false})), ["require_at_jwt_typ"]);
        assert_eq!(fields(json!({"clock_skew_seconds": 600})), ["clock_skew_seconds"]);
        assert!(fields(json!({"clock_skew_seconds": 300})).is_empty());
        let introspection = json!({"introspection": {
            "cluster": "identity", "authority": "idp", "path": "/introspect",
            "client_id": "c", "client_secret": "s", "cache_max_ttl_seconds": 300
        }});
        assert_eq!(fields(introspection), ["introspection.cache_max_ttl_seconds"]);
    }

    #[test]
    fn a_configuration_the_filter_refuses_is_an_error_naming_the_field() {
        let e = lint(&config(json!({"clock_skew_seconds": 100_000}))).unwrap_err();
        assert!(e.to_string().contains("clock_skew_seconds"), "{e}");
    }
}
