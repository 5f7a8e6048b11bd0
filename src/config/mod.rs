//! Plugin configuration: the JSON an operator puts in Envoy's `configuration`.
//!
//! Every field has its default written where it is declared, unknown fields
//! are refused, and [`Config::from_json`] names the field that is wrong. The
//! README's configuration reference is this list.

mod sections;

use serde::Deserialize;

use crate::config_error::ConfigError;
use crate::jwt::algorithm::Algorithm;
use crate::jwt::jwks::KeySet;
use crate::jwt::key_sync::RemoteJwksConfig;
use crate::policy::{Policy, RouteRule, UnmatchedRoutes};
use crate::principal::{ClaimToHeader, IdentityHeaders};
use crate::reference::introspection::IntrospectionConfig;
use crate::sealed::SealKey;
use crate::secret::Secret;

/// The configuration as written by the operator.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `realm` in every `WWW-Authenticate` challenge. Default `"erp-domain-api"`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Accepted `iss` values, compared exactly. Required, at least one.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted `aud` values, compared exactly; a token passes when any of its
    /// audiences is listed. Required, at least one.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Signature algorithms accepted, from RS256, RS384, RS512, PS256,
    /// PS384, PS512, ES256 (P-256), ES384 (P-384), ES512 (P-521), EdDSA and
    /// Ed25519 (both Ed25519).
    /// Default `["RS256"]` (ERP.net signs RS256).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Leeway for `exp` and `nbf`, in seconds. Default 60; at most 600.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    /// Require the JOSE header `typ` to be `at+jwt` (RFC 9068). Default true.
    #[serde(default = "default_true")]
    pub require_at_jwt_typ: bool,
    /// Verified JWTs remembered per worker (the token → the identity its
    /// verification produced, until `exp`), so a repeated token skips
    /// signature work (the native module keeps one memory for the process).
    /// Default 10000; 0 disables; at most 1000000.
    #[serde(default = "default_jwt_cache")]
    pub jwt_cache_max_entries: usize,
    /// Longest credential accepted, in bytes. Default 8192; 256 to 65536.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Signing keys inline, as a JWKS document (`{"keys": [...]}`).
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Signing keys fetched from the identity service. At least one of
    /// `jwks` and `remote_jwks` is required; both may be given.
    #[serde(default)]
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// How `enrt_` reference tokens are introspected. Absent: reference
    /// tokens are refused with 401.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
    /// Ordered route rules; the first match decides. Required, at least one.
    #[serde(default)]
    pub routes: Vec<RouteRule>,
    /// What happens to a request no rule matches: `"deny"` (default, 403) or
    /// `"authenticated"` (any valid credential, no scope needed).
    #[serde(default)]
    pub unmatched_routes: UnmatchedRoutes,
    /// Headers that carry an API key besides `Authorization`.
    /// Default `["x-api-key", "api-key"]`.
    #[serde(default = "default_api_key_headers")]
    pub api_key_headers: Vec<String>,
    /// Names of the identity headers sent upstream.
    #[serde(default)]
    pub identity_headers: IdentityHeaders,
    /// Remove the credential header before forwarding an allowed request.
    /// Default false: the Domain API checks the token again.
    #[serde(default)]
    pub strip_credential: bool,
    /// Pass every request the filter would refuse with 400, 401 or 403,
    /// logging and counting the refusal (rolling out the filter). Default
    /// false; route rules have their own `report_only`.
    #[serde(default)]
    pub report_only: bool,
    /// Claims (JWT) and answer fields (introspection) sent upstream as
    /// headers: `[{"claim": "a.b", "header": "x-…"}]`. Default none.
    #[serde(default)]
    pub claims_to_headers: Vec<ClaimToHeader>,
    /// Pass CORS preflights (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) without a credential, as
    /// `jwt_authn`'s `bypass_cors_preflight`. Default false.
    #[serde(default)]
    pub bypass_cors_preflight: bool,
    /// Expose each decision to Envoy's access log as filter state
    /// (`wasm.erp_edge_validator.client_id`, `.token_kind`, `.decision`,
    /// `.token_fingerprint`). Four host calls per request. Default false.
    #[serde(default)]
    pub access_log_fields: bool,
    /// Who checks RS256 signatures: `"auto"` (default) uses Envoy's own
    /// verifier when the host offers it and passes a self-test at start,
    /// else the module's; `"module"` always uses the module's.
    #[serde(default)]
    pub rsa_verifier: RsaVerifier,
    /// The secret that authenticates what the filter keeps in Envoy's
    /// shared data (`src/sealed.rs`). Default: the introspection client
    /// secret; with neither, nothing is trusted from shared data.
    #[serde(default)]
    pub shared_data_secret: Option<Secret>,
    /// Signatures each worker checks in the module per second with its
    /// slower verifiers (every algorithm but RS256); past it a JWT needing
    /// one gets 503. Default 200; 1 to 100000.
    #[serde(default = "default_module_verifications")]
    pub max_module_verifications_per_second: u32,
}

fn default_module_verifications() -> u32 {
    200
}

/// `rsa_verifier`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum RsaVerifier {
    /// The host's when it offers one, else the module's.
    #[default]
    Auto,
    /// Always the module's.
    Module,
}

/// The `realm` when the configuration names none (and of the reply when
/// there is no configuration at all).
pub const DEFAULT_REALM: &str = "erp-domain-api";

fn default_realm() -> String {
    DEFAULT_REALM.into()
}
fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::Rs256]
}
fn default_clock_skew() -> u64 {
    60
}
fn default_true() -> bool {
    true
}
fn default_jwt_cache() -> usize {
    10_000
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_api_key_headers() -> Vec<String> {
    vec!["x-api-key".into(), "api-key".into()]
}

/// The validated configuration, prepared once and shared by every request.
#[derive(Debug)]
pub struct Config {
    pub realm: String,
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub clock_skew_seconds: u64,
    pub require_at_jwt_typ: bool,
    pub max_token_bytes: usize,
    pub jwt_cache_max_entries: usize,
    /// Keys from the inline `jwks` field.
    pub inline_keys: KeySet,
    pub remote_jwks: Option<RemoteJwksConfig>,
    pub introspection: Option<IntrospectionConfig>,
    pub policy: Policy,
    /// Lower-cased API-key header names.
    pub api_key_headers: Vec<String>,
    /// Lower-cased identity header names.
    pub identity_headers: IdentityHeaders,
    pub strip_credential: bool,
    pub bypass_cors_preflight: bool,
    pub access_log_fields: bool,
    pub claims_to_headers: Vec<ClaimToHeader>,
    pub report_only: bool,
    pub rsa_verifier: RsaVerifier,
    pub shared_data_secret: Option<Secret>,
    pub max_module_verifications_per_second: u32,
}

impl Config {
    /// The key that authenticates this configuration's shared data:
    /// from `shared_data_secret`, else the introspection client secret;
    /// `None` when neither is given (nothing is then trusted from shared
    /// data).
    pub(crate) fn seal_key(&self) -> Option<SealKey> {
        let secret = self
            .shared_data_secret
            .as_ref()
            .or(self.introspection.as_ref().map(|i| &i.client_secret))?;
        SealKey::derive(secret)
    }

    /// One line for the start-up log: what is configured, no secrets.
    pub fn summary(&self) -> String {
        let skipped = match self.inline_keys.skipped() {
            [] => String::new(),
            _ => format!("; skipped signing keys: {}", self.inline_keys.skipped_summary()),
        };
        let rules = self.policy.report_only_rules();
        let report_only = match (self.report_only, rules.is_empty()) {
            (true, _) => "; REPORT-ONLY: refusals are logged and counted, and the requests pass".to_owned(),
            (false, false) => format!("; REPORT-ONLY for rules {rules:?}: their refusals pass"),
            (false, true) => String::new(),
        };
        format!(
            "{} inline signing key(s) {:?}, remote keys {}, {} issuer(s), reference tokens {}{skipped}{report_only}",
            self.inline_keys.len(),
            self.inline_keys.kids(),
            if self.remote_jwks.is_some() { "on" } else { "off" },
            self.issuers.len(),
            if self.introspection.is_some() {
                "introspected"
            } else {
                "refused"
            },
        )
    }

    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut json = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut json).map_err(|e| serde_error(&e))?;
        raw.validate()
    }
}

/// Names the field by its path (`introspection.timeout_ms`, `routes[1]`,
/// an unknown field's own name); the whole document when the JSON itself is
/// broken.
fn serde_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let path = e.path().to_string();
    let field = if path == "." || path == "?" {
        "configuration".to_owned()
    } else {
        path
    };
    ConfigError::new(field, e.inner().to_string())
}

impl RawConfig {
    /// The configuration, section by section; the first wrong field is
    /// named.
    pub fn validate(self) -> Result<Config, ConfigError> {
        self.check_token_rules()?;
        let inline_keys = self.signing_keys()?;
        if let Some(introspection) = &self.introspection {
            introspection.validate()?;
        }
        let policy = Policy::new(self.routes, self.unmatched_routes)?;
        let api_key_headers = sections::api_key_headers(&self.api_key_headers)?;
        let mut identity_headers = sections::identity_headers(self.identity_headers, &api_key_headers)?;
        let claims_to_headers = self.claims_to_headers;
        sections::check_claims_to_headers(&claims_to_headers, &identity_headers.names(), &api_key_headers)?;
        identity_headers.mapped = claims_to_headers.iter().map(|m| m.header.clone()).collect();
        Ok(Config {
            realm: self.realm,
            issuers: self.issuers,
            audiences: self.audiences,
            algorithms: self.algorithms,
            clock_skew_seconds: self.clock_skew_seconds,
            require_at_jwt_typ: self.require_at_jwt_typ,
            max_token_bytes: self.max_token_bytes,
            jwt_cache_max_entries: self.jwt_cache_max_entries,
            inline_keys,
            remote_jwks: self.remote_jwks,
            introspection: self.introspection,
            policy,
            api_key_headers,
            identity_headers,
            strip_credential: self.strip_credential,
            bypass_cors_preflight: self.bypass_cors_preflight,
            access_log_fields: self.access_log_fields,
            claims_to_headers,
            report_only: self.report_only,
            rsa_verifier: self.rsa_verifier,
            shared_data_secret: self.shared_data_secret,
            max_module_verifications_per_second: self.max_module_verifications_per_second,
        })
    }

    /// The realm, and what a JWT is held to: issuers, audiences,
    /// algorithms, clock skew, size, the verified-token memory.
    fn check_token_rules(&self) -> Result<(), ConfigError> {
        if !(1..=100_000).contains(&self.max_module_verifications_per_second) {
            return Err(ConfigError::new(
                "max_module_verifications_per_second",
                "must be between 1 and 100000",
            ));
        }
        let heavy = self
            .algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::Es384 | Algorithm::Es512));
        if heavy && self.max_module_verifications_per_second < 8 {
            return Err(ConfigError::new(
                "max_module_verifications_per_second",
                "must be at least 8 with ES384 or ES512, each of which counts 8",
            ));
        }
        if self.shared_data_secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
            return Err(ConfigError::new("shared_data_secret", "must be at least 16 bytes"));
        }
        if self.realm.is_empty() || self.realm.contains(['"', '\\']) || !sections::is_visible(&self.realm) {
            return Err(ConfigError::new(
                "realm",
                "must be non-empty printable ASCII without quotes or backslashes",
            ));
        }
        sections::non_empty_strings("issuers", &self.issuers)?;
        sections::non_empty_strings("audiences", &self.audiences)?;
        if self.algorithms.is_empty() {
            return Err(ConfigError::new("algorithms", "must list at least one algorithm"));
        }
        if self.clock_skew_seconds > 600 {
            return Err(ConfigError::new("clock_skew_seconds", "must be at most 600"));
        }
        if self.jwt_cache_max_entries > 1_000_000 {
            return Err(ConfigError::new("jwt_cache_max_entries", "must be at most 1000000"));
        }
        if !(256..=65536).contains(&self.max_token_bytes) {
            return Err(ConfigError::new("max_token_bytes", "must be between 256 and 65536"));
        }
        Ok(())
    }

    /// The inline key set (empty without `jwks`), and that some keys come
    /// from somewhere: inline, or `remote_jwks`.
    fn signing_keys(&self) -> Result<KeySet, ConfigError> {
        let inline_keys = match &self.jwks {
            None => KeySet::default(),
            Some(doc) => {
                let keys = KeySet::from_value(doc, &self.algorithms)
                    .map_err(|problem| ConfigError::new("jwks", problem.to_string()))?;
                if keys.is_empty() {
                    return Err(ConfigError::new(
                        "jwks",
                        format!("no usable signing key ({})", keys.skipped_summary()),
                    ));
                }
                keys
            }
        };
        match &self.remote_jwks {
            Some(remote) => remote.validate()?,
            None if inline_keys.is_empty() => {
                return Err(ConfigError::new(
                    "jwks",
                    "no signing keys: give the issuer's JWKS inline or `remote_jwks`",
                ));
            }
            None => {}
        }
        Ok(inline_keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing as testkit;
    use serde_json::json;

    fn config_with(patch: impl FnOnce(&mut serde_json::Value)) -> Result<Config, ConfigError> {
        let mut doc = testkit::config_json();
        patch(&mut doc);
        Config::from_json(doc.to_string().as_bytes())
    }

    #[test]
    fn documented_defaults_apply() {
        let config = config_with(|_| {}).unwrap();
        assert_eq!(config.algorithms, [Algorithm::Rs256]);
        assert_eq!(config.clock_skew_seconds, 60);
        assert!(config.require_at_jwt_typ);
        assert_eq!(config.max_token_bytes, 8192);
        assert_eq!(config.api_key_headers, ["x-api-key", "api-key"]);
        assert_eq!(config.identity_headers.client_id, "x-erp-client-id");
        assert!(!config.strip_credential);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = config_with(|d| d["issuer"] = "x".into()).unwrap_err();
        assert_eq!(err.field, "issuer");
        assert!(err.problem.contains("unknown field"), "{err}");
    }

    #[test]
    fn wrong_type_is_named_by_path() {
        let err = config_with(|d| d["routes"][1]["methods"] = serde_json::json!("GET")).unwrap_err();
        assert_eq!(err.field, "routes[1].methods");
        let err = Config::from_json(b"{not json").unwrap_err();
        assert_eq!(err.field, "configuration");
    }

    #[test]
    fn empty_issuer_list_is_refused() {
        let err = config_with(|d| d["issuers"] = serde_json::json!([])).unwrap_err();
        assert_eq!(err.field, "issuers");
    }

    #[test]
    fn empty_audience_list_is_refused() {
        let err = config_with(|d| d["audiences"] = serde_json::json!([])).unwrap_err();
        assert_eq!(err.field, "audiences");
    }

    #[test]
    fn none_and_hmac_algorithms_can_never_be_enabled() {
        for alg in ["none", "HS256", "HS512", "Ed448", "ES256K"] {
            let err = config_with(|d| d["algorithms"] = serde_json::json!(["RS256", alg])).unwrap_err();
            assert_eq!(err.field, "algorithms[1]", "{alg}");
        }
    }

    #[test]
    fn bad_jwks_is_refused() {
        let err = config_with(|d| d["jwks"] = serde_json::json!({"keys": "nope"})).unwrap_err();
        assert_eq!(err.field, "jwks");
        let err = config_with(|d| d["jwks"] = serde_json::json!({"keys": [{"kty": "EC"}]})).unwrap_err();
        assert_eq!(err.field, "jwks");
        assert!(err.problem.contains("no usable signing key"), "{err}");
    }

    #[test]
    fn missing_keys_are_refused() {
        let err = config_with(|d| {
            d.as_object_mut().unwrap().remove("jwks");
        })
        .unwrap_err();
        assert_eq!(err.field, "jwks");
    }

    #[test]
    fn headers_the_filter_must_never_set_are_refused_in_both_sections() {
        let dangerous = [
            "connection",
            "Keep-Alive",
            "te",
            "transfer-encoding",
            "transfer_encoding",
            "content-length",
            "upgrade",
            "host",
            "x-envoy-original-path",
            "x_envoy_upstream_rq_timeout_ms",
            "x-forwarded-for",
            "x_forwarded_proto",
            "forwarded",
            "x-request-id",
            "x_request_id",
            "x-http-method-override",
            "x_original_url",
            "authorization",
        ];
        for name in dangerous {
            let err = config_with(|d| d["identity_headers"] = serde_json::json!({"subject": name})).unwrap_err();
            assert_eq!(err.field, "identity_headers", "{name}");
            let err = config_with(|d| {
                d["claims_to_headers"] = serde_json::json!([{"claim": "sub", "header": name.to_ascii_lowercase()}])
            })
            .unwrap_err();
            assert_eq!(err.field, "claims_to_headers[0].header", "{name}: {err}");
            assert!(
                err.problem.contains("never sets it") || name == "authorization",
                "{name}: {err}"
            );
        }
        // Ordinary names still pass.
        config_with(|d| d["claims_to_headers"] = serde_json::json!([{"claim": "sub", "header": "x-user"}])).unwrap();
        config_with(|d| d["identity_headers"] = serde_json::json!({"subject": "x-subject"})).unwrap();
    }

    #[test]
    fn identity_header_may_not_shadow_a_credential_header() {
        let err = config_with(|d| d["identity_headers"] = serde_json::json!({"subject": "X-Api-Key"})).unwrap_err();
        assert_eq!(err.field, "identity_headers");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_named_but_never_repeated() {
        for value in [
            json!(987_654_321),
            json!(["s3cr3t-in-a-list"]),
            json!({"v": "s3cr3t-in-a-map"}),
            json!(true),
        ] {
            let err = config_with(|d| {
                d["introspection"] = testkit::introspection_json();
                d["introspection"]["client_secret"] = value.clone();
            })
            .unwrap_err();
            assert_eq!(err.field, "introspection.client_secret");
            let shown = err.to_string();
            assert!(!shown.contains("987654321") && !shown.contains("s3cr3t"), "{shown}");
        }
        let err = config_with(|d| {
            d["introspection"] = testkit::introspection_json();
            d["introspection"]["client_secret"] = json!("");
        })
        .unwrap_err();
        assert_eq!(err.field, "introspection.client_secret");
    }

    #[test]
    fn introspection_fields_are_named() {
        let err = config_with(|d| {
            d["introspection"] = serde_json::json!({"cluster": "identity", "authority": "idp", "client_id": "x", "client_secret": "y", "timeout": 5})
        })
        .unwrap_err();
        assert_eq!(err.field, "introspection.timeout");
        let err = config_with(|d| {
            d["introspection"] =
                serde_json::json!({"cluster": "", "authority": "idp", "client_id": "x", "client_secret": "y"})
        })
        .unwrap_err();
        assert_eq!(err.field, "introspection.cluster");
    }

    #[test]
    fn skew_and_size_are_bounded() {
        assert_eq!(
            config_with(|d| d["clock_skew_seconds"] = 3600.into())
                .unwrap_err()
                .field,
            "clock_skew_seconds"
        );
        assert_eq!(
            config_with(|d| d["max_token_bytes"] = 10.into()).unwrap_err().field,
            "max_token_bytes"
        );
    }

    #[test]
    fn realm_must_be_safe_to_quote() {
        assert_eq!(config_with(|d| d["realm"] = "a\"b".into()).unwrap_err().field, "realm");
    }
}

/// The README's configuration reference is the configuration: every field
/// it lists exists with the default it states, and every field exists in it.
#[cfg(test)]
mod docs_tests {
    use std::collections::BTreeSet;

    use serde::de::DeserializeOwned;
    use serde_json::{json, Value};

    use super::RawConfig;
    use crate::jwt::key_sync::RemoteJwksConfig;
    use crate::policy::RouteRule;
    use crate::reference::introspection::IntrospectionConfig;
    use crate::testing as testkit;

    /// The configuration reference, and the README (its identity headers).
    const REFERENCE: &str = include_str!("../../docs/configuration.md");
    const README: &str = include_str!("../../README.md");

    /// The rows of the first table under `heading` in `doc`: cells,
    /// backticks kept.
    fn table(doc: &str, heading: &str) -> Vec<Vec<String>> {
        let section = doc.split(heading).nth(1).expect("heading in the document");
        section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_owned()).collect())
            .collect()
    }

    /// `` `a.b`, `c` `` names `a.b` and `a.c`; `` `x` or `y` `` names both.
    fn names(cell: &str) -> Vec<String> {
        let quoted: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        let parent = quoted.first().and_then(|q| q.rsplit_once('.')).map(|(p, _)| p);
        quoted
            .iter()
            .enumerate()
            .map(|(i, q)| match parent {
                Some(p) if i > 0 && !q.contains('.') => format!("{p}.{q}"),
                _ => (*q).to_owned(),
            })
            .collect()
    }

    /// The fields a struct accepts, from serde's own unknown-field message.
    fn fields<T: DeserializeOwned + std::fmt::Debug>() -> BTreeSet<String> {
        let err = serde_json::from_value::<T>(json!({"__probe": 1})).expect_err("the probe is refused");
        let message = err.to_string();
        let list = message.split("expected one of").nth(1).expect("serde lists the fields");
        list.split('`').skip(1).step_by(2).map(str::to_owned).collect()
    }

    fn documented() -> Vec<(String, String)> {
        table(REFERENCE, "# Configuration reference")
            .into_iter()
            .flat_map(|row| {
                let default = row.get(1).cloned().unwrap_or_default();
                names(&row[0]).into_iter().map(move |n| (n, default.clone()))
            })
            .collect()
    }

    #[test]
    fn every_field_in_the_code_is_documented_and_the_other_way_round() {
        let mut code: BTreeSet<String> = fields::<RawConfig>();
        for (section, nested) in [
            ("remote_jwks", fields::<RemoteJwksConfig>()),
            ("introspection", fields::<IntrospectionConfig>()),
        ] {
            code.extend(nested.into_iter().map(|f| format!("{section}.{f}")));
        }
        let readme: BTreeSet<String> = documented().into_iter().map(|(n, _)| n).collect();
        assert_eq!(readme, code, "README configuration table vs configuration structs");
        let rules: BTreeSet<String> = table(REFERENCE, "A route rule:")
            .iter()
            .flat_map(|row| names(&row[0]))
            .collect();
        assert_eq!(rules, fields::<RouteRule>(), "README route-rule table vs RouteRule");
    }

    #[test]
    fn every_documented_default_is_the_default() {
        let mut doc = testkit::config_json();
        doc["remote_jwks"] = json!({"cluster": "c", "authority": "a"});
        doc["introspection"] = testkit::introspection_json();
        let raw: RawConfig = serde_json::from_value(doc).expect("a minimal configuration");
        let mut actual = serde_json::to_value(&raw).expect("serialisable");
        // Sections that are absent by default are shown with their own defaults.
        actual["jwks"] = Value::Null;
        let mut checked = 0;
        for (name, default) in documented() {
            if ["required", "absent", "see table above"].contains(&default.as_str()) {
                continue;
            }
            let literal = default.trim_matches('`');
            let expected: Value = serde_json::from_str(literal).unwrap_or_else(|_| panic!("{name}: {default}"));
            let value = name.split('.').fold(&actual, |v, part| &v[part]);
            assert_eq!(value, &expected, "README default of `{name}`");
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} defaults checked");
    }

    #[test]
    fn the_identity_header_table_lists_the_default_names() {
        let listed: Vec<String> = table(README, "Identity headers set on allowed requests")
            .iter()
            .flat_map(|r| names(&r[0]))
            .collect();
        let defaults = crate::principal::IdentityHeaders::default();
        assert_eq!(listed, defaults.names().map(str::to_owned));
    }
}
