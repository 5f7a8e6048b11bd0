//! What no request may be, whatever its route and credential, and the
//! parts of a request the decision reads.

use crate::config::Config;
use crate::principal::{same_header_name, OVERRIDE_HEADERS};
use crate::rejection::Rejection;

/// The parts of a request the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    /// Whether a body (or trailers) follows the headers. Envoy's codecs
    /// keep `transfer-encoding` from the filters, so this is the host's
    /// word (the headers were not the end of the stream).
    pub has_body: bool,
}

impl<'a> RequestHead<'a> {
    /// The request as a host hands it over: its headers, pseudo-headers
    /// (`:method`, `:path`) among them, and whether a body follows. A
    /// missing pseudo-header reads as empty, which no rule matches.
    pub fn of(headers: &'a [(&'a str, &'a str)], has_body: bool) -> Self {
        let pseudo = |name: &str| headers.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| *v);
        Self {
            method: pseudo(":method"),
            path: pseudo(":path"),
            headers,
            has_body,
        }
    }
}

/// What no request may be, whatever its route and credential.
pub(crate) fn check_request(request: &RequestHead<'_>) -> Result<(), Rejection> {
    // RFC 9110 §9.1: methods are case-sensitive and the standard ones are
    // upper-case. `post` (HTTP/2 allows it) would match no rule written for
    // POST while an upstream may still treat it as one.
    let canonical = !request.method.is_empty()
        && request
            .method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !canonical {
        return Err(Rejection::InvalidRequest(
            "the method is not in canonical upper-case form",
        ));
    }
    let overrides = |name: &str| OVERRIDE_HEADERS.iter().any(|h| same_header_name(name, h));
    if request.headers.iter().any(|(name, _)| overrides(name)) {
        return Err(Rejection::InvalidRequest(
            "method and URL override headers are not accepted",
        ));
    }
    Ok(())
}

/// A CORS preflight (Fetch standard §3.2.2): `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. Browsers send it without credentials.
fn is_cors_preflight(request: &RequestHead<'_>) -> bool {
    let has = |name: &str| {
        request
            .headers
            .iter()
            .any(|(n, v)| same_header_name(n, name) && !v.is_empty())
    };
    request.method == "OPTIONS" && has("origin") && has("access-control-request-method")
}

/// Whether the request passes as a CORS preflight without a credential
/// (`bypass_cors_preflight`): a preflight with no body (no
/// `transfer-encoding`, `content-length` absent or 0), for a method and
/// path some rule would let through (a preflight never opens a path the
/// rules deny outright).
pub(crate) fn passes_as_preflight(config: &Config, request: &RequestHead<'_>) -> bool {
    if !config.bypass_cors_preflight || !is_cors_preflight(request) {
        return false;
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|(n, _)| same_header_name(n, name))
            .map(|(_, v)| *v)
    };
    let no_body = !request.has_body
        && header("transfer-encoding").is_none()
        && header("content-length").is_none_or(|v| v.trim() == "0");
    let requested = header("access-control-request-method").unwrap_or_default();
    no_body && config.policy.access(requested, request.path).is_ok()
}
