//! What no request may be, whatever its route and credential, and the
//! parts of a request the decision reads.

use crate::principal::same_header_name;
use crate::rejection::Rejection;

/// The parts of a request the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
}

/// Headers that make some frameworks serve another method or path than the
/// one the route rules decided on: refused, never passed on.
const OVERRIDE_HEADERS: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

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
pub(crate) fn is_cors_preflight(request: &RequestHead<'_>) -> bool {
    let has = |name: &str| {
        request
            .headers
            .iter()
            .any(|(n, v)| same_header_name(n, name) && !v.is_empty())
    };
    request.method == "OPTIONS" && has("origin") && has("access-control-request-method")
}
