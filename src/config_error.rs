//! The one error a configuration can have: which field, and what is wrong.
//! A leaf module, so every section's validation can name its fields without
//! reaching back into the configuration as a whole.

use std::fmt;

/// A configuration problem, naming the field. The problem never repeats the
/// value of a secret field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `routes[2].methods`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Checks `(field, ok, problem)` rows in order; the first failing row names
/// its field under `section` (e.g. `introspection.timeout_ms`).
pub(crate) fn check_fields(section: &str, rows: &[(&str, bool, &str)]) -> Result<(), ConfigError> {
    match rows.iter().find(|(_, ok, _)| !ok) {
        Some((name, _, problem)) => Err(ConfigError::new(format!("{section}.{name}"), *problem)),
        None => Ok(()),
    }
}
