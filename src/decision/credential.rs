//! Finding the one credential of a request and telling JWTs from `enrt_`
//! reference tokens.
//!
//! ERP.net accepts `Authorization: Bearer <token>` or an API-key header, and
//! only one of them per request. Envoy joins repeated inline headers such as
//! `Authorization` with a comma, and no token contains a comma, so a comma in a
//! credential value counts as a second credential.

use crate::rejection::Rejection;
use crate::token_problem::TokenProblem;

/// Prefix of ERP.net reference access tokens (PAT and SAT).
pub const REFERENCE_PREFIX: &str = "enrt_";
/// Hex digits after the prefix.
pub const REFERENCE_HEX_DIGITS: usize = 64;

/// What kind of token the credential is. Decided by shape only: nothing here
/// is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A JWT access token: three base64url parts.
    Jwt,
    /// An `enrt_` reference access token, checked by introspection.
    Reference,
}

/// The request's credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential<'a> {
    /// Lower-cased name of the header it came in.
    pub header: &'a str,
    pub token: &'a str,
    pub kind: TokenKind,
}

/// The one credential of a request, not yet looked at byte by byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located<'a> {
    /// Lower-cased name of the header it came in.
    pub header: &'a str,
    pub token: &'a str,
}

/// Finds the single credential among the request headers: its header, the
/// Bearer scheme, emptiness and size (not its characters: see [`classify`]).
///
/// `headers` are (name, value) pairs as Envoy gives them (names lower-case,
/// compared case-insensitively anyway). `api_key_headers` are lower-case.
pub fn locate<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    api_key_headers: &'a [String],
    max_token_bytes: usize,
) -> Result<Located<'a>, Rejection> {
    let (header, value) = sole(headers, api_key_headers)?;
    if value.contains(',') {
        return Err(Rejection::MultipleCredentials);
    }
    let token = token_of(header, value)?;
    if token.is_empty() {
        return Err(Rejection::MalformedCredential("empty credential"));
    }
    if token.len() > max_token_bytes {
        return Err(Rejection::InvalidToken(TokenProblem::TooLarge));
    }
    Ok(Located { header, token })
}

/// The token [`locate`] would find, read without looking at its bytes or
/// its size: to look it up among tokens verified before. For a token found
/// there, `locate` finds exactly this: a verified token is non-empty,
/// within the size limit and of token characters only (so no comma), and
/// what else `locate` checks lies outside the token (the scheme, the
/// whitespace around it: no comma either). Anything not found there goes
/// through `locate`.
pub fn candidate<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    api_key_headers: &'a [String],
) -> Option<Located<'a>> {
    let (header, value) = sole(headers, api_key_headers).ok()?;
    let token = token_of(header, value).ok()?;
    Some(Located { header, token })
}

/// The one header carrying a credential (its lower-case name, its value).
fn sole<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    api_key_headers: &'a [String],
) -> Result<(&'a str, &'a str), Rejection> {
    let mut found: Option<(&'a str, &'a str)> = None;
    for (name, value) in headers {
        let header = if name.eq_ignore_ascii_case("authorization") {
            "authorization"
        } else if let Some(h) = api_key_headers.iter().find(|h| name.eq_ignore_ascii_case(h)) {
            h.as_str()
        } else {
            continue;
        };
        if found.is_some() {
            return Err(Rejection::MultipleCredentials);
        }
        found = Some((header, value));
    }
    found.ok_or(Rejection::MissingCredential)
}

/// The token in a credential header's value.
fn token_of<'a>(header: &str, value: &'a str) -> Result<&'a str, Rejection> {
    if header == "authorization" {
        bearer_token(value)
    } else {
        Ok(value.trim_matches([' ', '\t']))
    }
}

/// Checks the located token's characters and tells its kind.
pub fn classify(located: Located<'_>) -> Result<Credential<'_>, Rejection> {
    let Located { header, token } = located;
    if !is_b64token(token) {
        return Err(Rejection::MalformedCredential(
            "credential has characters a token cannot have",
        ));
    }
    let kind = if token.starts_with(REFERENCE_PREFIX) {
        TokenKind::Reference
    } else {
        TokenKind::Jwt
    };
    Ok(Credential { header, token, kind })
}

/// Finds the single credential among the request headers and checks its
/// characters: [`locate`] then [`classify`].
#[cfg(test)]
pub fn find<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    api_key_headers: &'a [String],
    max_token_bytes: usize,
) -> Result<Credential<'a>, Rejection> {
    classify(locate(headers, api_key_headers, max_token_bytes)?)
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 7235).
fn bearer_token(value: &str) -> Result<&str, Rejection> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::UnsupportedScheme);
    }
    Ok(rest.trim_start_matches([' ', '\t']))
}

/// RFC 6750 §2.1 `b64token` characters (the trailing `=` included), byte
/// by byte: the rule [`is_b64token`] is tested against.
#[cfg(test)]
fn is_b64token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// Whether every byte of `token` is an RFC 6750 §2.1 `b64token` character
/// (the trailing `=` included), written without branches so the compiler checks
/// a block of bytes at a time. A fresh JWT's whole token passes through it,
/// and byte by byte it cost about a microsecond (measured natively).
fn is_b64token(token: &str) -> bool {
    fn allowed(b: u8) -> bool {
        let alpha = (b | 0x20).wrapping_sub(b'a') < 26;
        let digit = b.wrapping_sub(b'0') < 10;
        // `-` `.` `/` are consecutive (0x2d..=0x2f).
        let punct = (b.wrapping_sub(b'-') < 3) | (b == b'+') | (b == b'=') | (b == b'_') | (b == b'~');
        alpha | digit | punct
    }
    let all = |block: &[u8]| block.iter().fold(true, |ok, &b| ok & allowed(b));
    let mut blocks = token.as_bytes().chunks_exact(64);
    blocks.all(&all) && all(blocks.remainder())
}

/// Whether a reference token is well-formed: the prefix then exactly 64 hex
/// digits (either case). Anything else is refused without asking anyone.
pub fn is_well_formed_reference(token: &str) -> bool {
    token
        .strip_prefix(REFERENCE_PREFIX)
        .is_some_and(|hex| hex.len() == REFERENCE_HEX_DIGITS && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        vec!["x-api-key".into(), "api-key".into()]
    }

    fn find_in(headers: &[(&'static str, &'static str)]) -> Result<Credential<'static>, Rejection> {
        let keys: &'static [String] = Box::leak(keys().into_boxed_slice());
        find(headers.iter().copied(), keys, 8192)
    }

    const PAT: &str = crate::testing::EXAMPLE_PAT;

    #[test]
    fn the_block_check_agrees_with_the_byte_rule_everywhere_in_a_token() {
        let base = "eyJhbGciOiJSUzI1NiJ9".repeat(7);
        for c in (0..=255u8).map(char::from).chain(['\u{2028}', '\u{ff0b}']) {
            for at in [0, 1, 63, 64, 65, 127, 128, base.len() - 1] {
                let mut token = base.clone();
                token.replace_range(at..=at, c.encode_utf8(&mut [0; 4]));
                assert_eq!(
                    is_b64token(&token),
                    token.bytes().all(is_b64token_byte),
                    "{c:?} at {at}"
                );
            }
        }
        assert!(is_b64token(&base) && is_b64token(""));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc.def.ghi", "bearer abc.def.ghi", "BEARER   abc.def.ghi "] {
            let c = find_in(&[(":path", "/"), ("authorization", value)]).unwrap();
            assert_eq!(
                (c.header, c.token, c.kind),
                ("authorization", "abc.def.ghi", TokenKind::Jwt)
            );
        }
    }

    #[test]
    fn api_key_headers_are_case_insensitive() {
        for name in ["x-api-key", "X-API-KEY", "Api-Key"] {
            let c = find_in(&[(name, PAT)]).unwrap();
            assert_eq!(c.token, PAT);
            assert_eq!(c.kind, TokenKind::Reference);
        }
    }

    #[test]
    fn no_credential_is_missing() {
        assert_eq!(find_in(&[("accept", "*/*")]), Err(Rejection::MissingCredential));
    }

    #[test]
    fn two_credentials_are_an_invalid_request() {
        let cases: &[&[(&str, &str)]] = &[
            &[("authorization", "Bearer a.b.c"), ("x-api-key", PAT)],
            &[("authorization", "Bearer a.b.c"), ("authorization", "Bearer a.b.c")],
            &[("authorization", "Bearer a.b.c,Bearer d.e.f")],
            &[("x-api-key", PAT), ("api-key", PAT)],
            &[("x-api-key", "a, b")],
        ];
        for headers in cases {
            assert_eq!(find_in(headers), Err(Rejection::MultipleCredentials), "{headers:?}");
        }
    }

    #[test]
    fn other_schemes_are_not_bearer() {
        assert_eq!(
            find_in(&[("authorization", "Basic dXNlcjpwYXNz")]),
            Err(Rejection::UnsupportedScheme)
        );
    }

    #[test]
    fn empty_or_spaced_tokens_are_malformed() {
        assert!(matches!(
            find_in(&[("authorization", "Bearer")]),
            Err(Rejection::MalformedCredential(_))
        ));
        assert!(matches!(
            find_in(&[("authorization", "Bearer a b")]),
            Err(Rejection::MalformedCredential(_))
        ));
        assert!(matches!(
            find_in(&[("x-api-key", "")]),
            Err(Rejection::MalformedCredential(_))
        ));
        assert!(matches!(
            find_in(&[("x-api-key", "a\"b")]),
            Err(Rejection::MalformedCredential(_))
        ));
    }

    #[test]
    fn oversized_token_is_an_invalid_token() {
        let big: &'static str = Box::leak(format!("Bearer {}", "a".repeat(9000)).into_boxed_str());
        assert_eq!(
            find_in(&[("authorization", big)]),
            Err(Rejection::InvalidToken(TokenProblem::TooLarge))
        );
    }

    /// Every value, in every credential header arrangement, whose candidate
    /// could be a remembered token (non-empty, token characters, within the
    /// limit): `locate` finds the same token in the same header.
    #[test]
    fn a_candidate_that_could_be_remembered_is_what_locate_finds() {
        let keys = keys();
        let tokens = ["abc.def.ghi", PAT, "a,b", "", "a b", "x".repeat(9000).leak()];
        let fronts = [
            "",
            " ",
            "\t",
            "Bearer ",
            "bearer \t ",
            "Bearer",
            "Basic ",
            ",",
            "Bearer ,",
            " Bearer  ",
        ];
        let backs = ["", " ", "\t ", ",", ", Bearer x", " ,"];
        let mut checked = 0;
        for token in tokens {
            for front in fronts {
                for back in backs {
                    let value = format!("{front}{token}{back}");
                    for headers in [
                        vec![("authorization", value.as_str())],
                        vec![("x-api-key", value.as_str())],
                        vec![(":path", "/"), ("Authorization", value.as_str())],
                        vec![("authorization", value.as_str()), ("x-api-key", PAT)],
                        vec![("api-key", value.as_str()), ("api-key", value.as_str())],
                    ] {
                        let Some(found) = candidate(headers.iter().copied(), &keys) else {
                            continue;
                        };
                        let rememberable =
                            !found.token.is_empty() && found.token.len() <= 8192 && is_b64token(found.token);
                        if rememberable {
                            assert_eq!(locate(headers.iter().copied(), &keys, 8192), Ok(found), "{headers:?}");
                            checked += 1;
                        }
                    }
                }
            }
        }
        // Not vacuous: bare and Bearer values in either header kind.
        assert!(checked >= 20, "{checked}");
        // And candidates that locate refuses exist, which only a miss sees.
        let comma = [("authorization", "Bearer a.b.c, Bearer d")];
        assert!(candidate(comma.iter().copied(), &keys).is_some());
        assert_eq!(
            locate(comma.iter().copied(), &keys, 8192),
            Err(Rejection::MultipleCredentials)
        );
    }

    #[test]
    fn reference_format_is_prefix_and_64_hex_digits() {
        assert!(is_well_formed_reference(PAT));
        assert!(is_well_formed_reference(
            &PAT.to_ascii_lowercase().replace("ENRT_", "enrt_")
        ));
        assert!(!is_well_formed_reference("enrt_XYZ"));
        assert!(!is_well_formed_reference(&format!("{PAT}0")));
        assert!(!is_well_formed_reference(&PAT.replace('C', "G")));
        assert!(!is_well_formed_reference(
            "ENRT_445659C00F83CCA2D427BF113EFB355319346865C0B4FE5A3C76C16271B06AFF"
        ));
    }
}
