//! The filter's counters, by name: Envoy shows each as
//! `wasmcustom.erp_edge_validator.<name>`. The README's stats reference is
//! this list.

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
    /// Good key sets fetched.
    JwksFetches,
    /// Key fetches that failed (the last good set is kept).
    JwksFetchFailures,
    /// RS256 signatures checked by Envoy (BoringSSL, `verify_signature`).
    Rs256HostVerifications,
    /// Signatures checked in the module (RS256 when the host does not offer
    /// a verifier or `rsa_verifier` is `module`; the other algorithms).
    Rs256ModuleVerifications,
}

impl Stat {
    pub const ALL: [Stat; 12] = [
        Self::Allowed,
        Self::Denied400,
        Self::Denied401,
        Self::Denied403,
        Self::Unavailable503,
        Self::Introspections,
        Self::ReferenceCacheHits,
        Self::IntrospectionsOverBudget,
        Self::JwksFetches,
        Self::JwksFetchFailures,
        Self::Rs256HostVerifications,
        Self::Rs256ModuleVerifications,
    ];

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
            Self::JwksFetches => "jwks_fetches",
            Self::JwksFetchFailures => "jwks_fetch_failures",
            Self::Rs256HostVerifications => "signatures_verified_by_host",
            Self::Rs256ModuleVerifications => "signatures_verified_in_module",
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_listed_once_in_order() {
        for (i, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(*stat as usize, i, "{}", stat.name());
        }
    }
}
