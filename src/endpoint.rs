//! The identity-service endpoint a callout goes to: the fields both
//! `introspection` and `remote_jwks` declare, checked and used one way.

use crate::config_error::{check_fields, ConfigError};
use crate::host::Callout;
use crate::secret::{fingerprint, hash_token};

/// Where a callout goes, borrowed from a configuration section.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    /// Envoy cluster of the identity service.
    pub cluster: &'a str,
    /// `:authority` of the callout.
    pub authority: &'a str,
    /// `:path` of the callout.
    pub path: &'a str,
    /// Callout timeout in milliseconds.
    pub timeout_ms: u64,
}

impl Endpoint<'_> {
    /// Checks the endpoint fields of `section`; `timeout_ms` must lie in
    /// `timeouts` (inclusive).
    pub fn validate(&self, section: &str, timeouts: (u64, u64)) -> Result<(), ConfigError> {
        let timeout_problem = format!("must be between {} and {}", timeouts.0, timeouts.1);
        check_fields(
            section,
            &[
                ("cluster", !self.cluster.is_empty(), "must name an Envoy cluster"),
                ("authority", !self.authority.is_empty(), "must not be empty"),
                ("path", self.path.starts_with('/'), "must start with `/`"),
                (
                    "timeout_ms",
                    (timeouts.0..=timeouts.1).contains(&self.timeout_ms),
                    &timeout_problem,
                ),
            ],
        )
    }

    /// A callout to this endpoint with these extra headers and body.
    pub fn callout(&self, method: &str, extra: Vec<(&'static str, String)>, body: Vec<u8>) -> Callout {
        let mut headers = vec![
            (":method", method.to_owned()),
            (":path", self.path.to_owned()),
            (":authority", self.authority.to_owned()),
        ];
        headers.extend(extra);
        Callout {
            cluster: self.cluster.to_owned(),
            headers,
            body,
            timeout_ms: self.timeout_ms,
        }
    }

    /// The shared-data key prefix for this endpoint and whatever else
    /// decides its answers (`extra`), so two configurations in one VM read
    /// each other's entries only when they would get the same answers.
    pub fn namespace(&self, extra: &str) -> String {
        let id = fingerprint(&hash_token(&format!(
            "{}|{}|{}|{extra}",
            self.cluster, self.authority, self.path
        )));
        format!("erp_edge_validator.{id}")
    }
}
