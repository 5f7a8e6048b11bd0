//! The checks of the sections that need more than a field's own type:
//! the credential headers, the identity headers, and the claims mapped to
//! headers, each against the names the others already use.

use crate::config_error::ConfigError;
use crate::principal::{reserved_header, ClaimToHeader, IdentityHeaders};

pub(super) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// `api_key_headers`, lower-cased: header names other than `authorization`.
pub(super) fn api_key_headers(headers: &[String]) -> Result<Vec<String>, ConfigError> {
    let api_key_headers: Vec<String> = headers.iter().map(|h| h.to_ascii_lowercase()).collect();
    for (i, h) in api_key_headers.iter().enumerate() {
        if !is_header_name(h) || h == "authorization" {
            return Err(ConfigError::new(
                format!("api_key_headers[{i}]"),
                "must be a header name other than authorization",
            ));
        }
    }
    Ok(api_key_headers)
}

/// `identity_headers`, lower-cased: valid names, each once, none a
/// credential header.
pub(super) fn identity_headers(
    mut identity_headers: IdentityHeaders,
    api_key_headers: &[String],
) -> Result<IdentityHeaders, ConfigError> {
    for name in [
        &mut identity_headers.client_id,
        &mut identity_headers.subject,
        &mut identity_headers.scopes,
        &mut identity_headers.client_db,
        &mut identity_headers.system_user,
        &mut identity_headers.token_kind,
    ] {
        *name = name.to_ascii_lowercase();
    }
    let names = identity_headers.names();
    for (i, name) in names.iter().enumerate() {
        if !is_header_name(name) || name.starts_with(':') {
            return Err(ConfigError::new(
                "identity_headers",
                format!("`{name}` is not a valid header name"),
            ));
        }
        if names[..i].contains(name) {
            return Err(ConfigError::new("identity_headers", format!("`{name}` is used twice")));
        }
        if let Some(why) = reserved_header(name) {
            return Err(ConfigError::new(
                "identity_headers",
                format!("`{name}` is {why}: the filter never sets it"),
            ));
        }
        if *name == "authorization" || api_key_headers.iter().any(|h| h == name) {
            return Err(ConfigError::new(
                "identity_headers",
                format!("`{name}` is a credential header"),
            ));
        }
    }
    Ok(identity_headers)
}

/// `claims_to_headers`: at most 32, each a claim path onto a header no
/// credential, identity header or other entry uses.
pub(super) fn check_claims_to_headers(
    claims_to_headers: &[ClaimToHeader],
    identity_names: &[&str],
    api_key_headers: &[String],
) -> Result<(), ConfigError> {
    if claims_to_headers.len() > 32 {
        return Err(ConfigError::new("claims_to_headers", "at most 32 entries"));
    }
    for (i, m) in claims_to_headers.iter().enumerate() {
        let field = |name: &str| format!("claims_to_headers[{i}].{name}");
        if m.claim.is_empty() || m.claim.split('.').any(str::is_empty) {
            return Err(ConfigError::new(
                field("claim"),
                "must be a claim name or a dot path like `a.b`",
            ));
        }
        if let Some(why) = reserved_header(&m.header) {
            return Err(ConfigError::new(
                field("header"),
                format!("`{}` is {why}: the filter never sets it", m.header),
            ));
        }
        let taken = identity_names.contains(&m.header.as_str())
            || m.header == "authorization"
            || api_key_headers.contains(&m.header)
            || claims_to_headers[..i].iter().any(|other| other.header == m.header);
        if !is_header_name(&m.header) || taken {
            return Err(ConfigError::new(
                field("header"),
                format!(
                    "`{}` must be a lower-case header name not used by a credential, an identity header or another entry",
                    m.header
                ),
            ));
        }
    }
    Ok(())
}
pub(super) fn is_visible(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

pub(super) fn non_empty_strings(field: &str, values: &[String]) -> Result<(), ConfigError> {
    if values.is_empty() {
        return Err(ConfigError::new(field, "must list at least one value"));
    }
    if let Some(i) = values.iter().position(|v| v.is_empty()) {
        return Err(ConfigError::new(format!("{field}[{i}]"), "must not be empty"));
    }
    Ok(())
}
