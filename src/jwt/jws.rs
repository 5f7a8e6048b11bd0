//! A JWS in compact serialization (RFC 7515 §7.1), split and decoded for
//! the verifier.
//!
//! It reads a token exactly as jwt-compact's `UntrustedToken` does: three
//! parts, each strict unpadded base64url, the header a JSON object with a
//! string `alg`, well-formed `x5t`/`x5t#S256` thumbprints and a `cty` of
//! `JSON` if any; the claims a JSON object whose `exp`, `nbf` and `iat` are
//! timestamps. A differential test and the `jwt` fuzz target hold the two
//! readings to the same answers.
//!
//! It exists for speed on a fresh token: jwt-compact decodes with base64ct
//! (constant-time, several times slower than the `base64` crate, and the
//! parts of a JWT are not secret from its bearer) and reads the header and
//! claims through `#[serde(flatten)]`, which buffers every field in an
//! intermediate tree before reading it again. Here each part is decoded
//! once and read in one serde pass.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_compact::Thumbprint;
use serde::de::{self, IgnoredAny};
use serde::Deserialize;

use crate::principal::{Audience, ScopeClaim};

/// Why a token is not a JWS at all (before any key or claim is looked at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// Not three dot-separated parts.
    NotThreeParts,
    /// A part is not strict unpadded base64url.
    NotBase64,
    /// The header is not a JSON object of the expected shape.
    MalformedHeader,
}

/// The JOSE header fields the verifier reads, and those jwt-compact
/// validates the shape of (kept so that a token it refuses is refused here).
#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
    /// Present (any value but `null`) means critical extensions.
    pub crit: Option<IgnoredAny>,
    cty: Option<String>,
    #[serde(rename = "jku")]
    _jku: Option<String>,
    #[serde(rename = "x5u")]
    _x5u: Option<String>,
    #[serde(rename = "x5t")]
    _x5t: Option<Thumbprint<20>>,
    #[serde(rename = "x5t#S256")]
    _x5t_s256: Option<Thumbprint<32>>,
}

/// A token split and decoded; nothing in it is trusted yet. No `Debug`:
/// it holds most of a bearer token.
pub struct Jws<'a> {
    /// `header.claims`, the bytes the signature covers.
    pub signing_input: &'a str,
    pub header: Header,
    pub signature: Vec<u8>,
    claims: Vec<u8>,
}

impl<'a> Jws<'a> {
    pub fn parse(token: &'a str) -> Result<Self, FormError> {
        let mut parts = token.splitn(4, '.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(FormError::NotThreeParts);
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| FormError::NotBase64);
        let header_json = decode(header)?;
        let claims = decode(claims)?;
        let signature = decode(signature)?;
        let header: Header = object(&header_json).ok_or(FormError::MalformedHeader)?;
        if header
            .cty
            .as_deref()
            .is_some_and(|cty| !cty.eq_ignore_ascii_case("json"))
        {
            return Err(FormError::MalformedHeader);
        }
        let signing_input = token.rsplit_once('.').map_or(token, |(input, _)| input);
        Ok(Self {
            signing_input,
            header,
            signature,
            claims,
        })
    }

    /// The claims, read only after the signature was checked.
    pub fn claims(&self) -> Option<AccessTokenClaims> {
        object(&self.claims)
    }
}

/// `T` from `json` when it is a JSON object in UTF-8. serde's derived
/// structs also accept an array of the fields in order, and skip the
/// fields they do not name without checking their UTF-8 or reading their
/// numbers; jwt-compact's flattened ones, which buffer every field, and so
/// this reader, do none of that: a number no `f64` holds (`1E999`), in any
/// field, refuses the document too.
fn object<'de, T: Deserialize<'de>>(json: &'de [u8]) -> Option<T> {
    let json = std::str::from_utf8(json).ok()?;
    if !json.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        return None;
    }
    serde_json::from_str::<EveryValueRead>(json).ok()?;
    serde_json::from_str(json).ok()
}

/// A JSON document read through without keeping anything, so that every
/// number is parsed as a buffering reader parses it (no allocation).
struct EveryValueRead;

impl<'de> Deserialize<'de> for EveryValueRead {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> de::Visitor<'de> for Visit {
            type Value = EveryValueRead;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<EveryValueRead, E> {
                Ok(EveryValueRead)
            }
            fn visit_i64<E>(self, _: i64) -> Result<EveryValueRead, E> {
                Ok(EveryValueRead)
            }
            fn visit_u64<E>(self, _: u64) -> Result<EveryValueRead, E> {
                Ok(EveryValueRead)
            }
            fn visit_f64<E>(self, _: f64) -> Result<EveryValueRead, E> {
                Ok(EveryValueRead)
            }
            fn visit_str<E>(self, _: &str) -> Result<EveryValueRead, E> {
                Ok(EveryValueRead)
            }
            fn visit_unit<E>(self) -> Result<EveryValueRead, E> {
                Ok(EveryValueRead)
            }
            fn visit_none<E>(self) -> Result<EveryValueRead, E> {
                Ok(EveryValueRead)
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<EveryValueRead, D::Error> {
                EveryValueRead::deserialize(d)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<EveryValueRead, A::Error> {
                while seq.next_element::<EveryValueRead>()?.is_some() {}
                Ok(EveryValueRead)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<EveryValueRead, A::Error> {
                while map.next_entry::<IgnoredAny, EveryValueRead>()?.is_some() {}
                Ok(EveryValueRead)
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

/// The claims of an access token the filter reads (RFC 9068 and ERP.net's).
#[derive(Debug, Deserialize)]
pub struct AccessTokenClaims {
    #[serde(default, deserialize_with = "timestamp")]
    pub exp: Option<i64>,
    #[serde(default, deserialize_with = "timestamp")]
    pub nbf: Option<i64>,
    #[serde(default, deserialize_with = "timestamp", rename = "iat")]
    _iat: Option<i64>,
    pub iss: Option<String>,
    pub aud: Option<Audience>,
    pub scope: Option<ScopeClaim>,
    pub client_id: Option<String>,
    pub sub: Option<String>,
    pub client_db: Option<String>,
    pub client_system_user: Option<String>,
}

/// A NumericDate as jwt-compact reads one: an integer, or a number cut to
/// one, within the range of a calendar date (chrono's).
fn timestamp<'de, D: de::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    struct Seconds;
    impl de::Visitor<'_> for Seconds {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a NumericDate")
        }
        fn visit_i64<E: de::Error>(self, value: i64) -> Result<i64, E> {
            chrono::DateTime::from_timestamp(value, 0)
                .map(|_| value)
                .ok_or_else(|| E::custom("timestamp out of range"))
        }
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<i64, E> {
            self.visit_i64(i64::try_from(value).map_err(E::custom)?)
        }
        #[allow(clippy::cast_possible_truncation)] // saturates; out of range is refused
        fn visit_f64<E: de::Error>(self, value: f64) -> Result<i64, E> {
            self.visit_i64(value as i64)
        }
    }
    deserializer.deserialize_i64(Seconds).map(Some)
}

/// The same token read by jwt-compact, for the differential test and the
/// `jwt` fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod against_jwt_compact {
    use super::*;
    use jwt_compact::UntrustedToken;

    /// jwt-compact's header type with the one extra field the filter reads.
    #[derive(Debug, Clone, Deserialize)]
    struct Crit {
        crit: Option<serde_json::Value>,
    }

    #[derive(Debug, Deserialize)]
    struct CompactClaims {
        iss: Option<String>,
        aud: Option<Audience>,
        scope: Option<ScopeClaim>,
        client_id: Option<String>,
        sub: Option<String>,
        client_db: Option<String>,
        client_system_user: Option<String>,
    }

    /// What a reading of `token` amounts to, to compare the two readers.
    fn ours(token: &str) -> String {
        match Jws::parse(token) {
            Err(e) => format!("{e:?}"),
            Ok(jws) => {
                let h = &jws.header;
                let claims = match jws.claims() {
                    None => "bad claims".to_owned(),
                    Some(c) => format!(
                        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                        c.exp,
                        c.nbf,
                        c.iss,
                        c.aud.map(|a| a.any_in(&["DomainAPI".into()])),
                        c.scope.map(|s| s.into_scopes()),
                        c.client_id,
                        c.sub,
                        c.client_db,
                        c.client_system_user
                    ),
                };
                format!(
                    "{} {:?} {:?} {} {} {:?} | {claims}",
                    h.alg,
                    h.kid,
                    h.typ,
                    h.crit.is_some(),
                    jws.signing_input,
                    jws.signature
                )
            }
        }
    }

    fn theirs(token: &str) -> String {
        use jwt_compact::ParseError;
        match UntrustedToken::<Crit>::try_from(token) {
            Err(ParseError::InvalidTokenStructure) => "NotThreeParts".into(),
            Err(ParseError::InvalidBase64Encoding) => "NotBase64".into(),
            Err(_) => "MalformedHeader".into(),
            Ok(t) => {
                let h = t.header();
                let claims = match t.deserialize_claims_unchecked::<CompactClaims>() {
                    Err(_) => "bad claims".to_owned(),
                    Ok(c) => format!(
                        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                        c.expiration.map(|t| t.timestamp()),
                        c.not_before.map(|t| t.timestamp()),
                        c.custom.iss,
                        c.custom.aud.map(|a| a.any_in(&["DomainAPI".into()])),
                        c.custom.scope.map(|s| s.into_scopes()),
                        c.custom.client_id,
                        c.custom.sub,
                        c.custom.client_db,
                        c.custom.client_system_user
                    ),
                };
                let signing_input = token.rsplit_once('.').map_or("", |(i, _)| i);
                format!(
                    "{} {:?} {:?} {} {} {:?} | {claims}",
                    t.algorithm(),
                    h.key_id,
                    h.token_type,
                    h.other_fields.crit.is_some(),
                    signing_input,
                    t.signature_bytes()
                )
            }
        }
    }

    /// Both readers' answers for `token`, which must agree.
    pub(crate) fn same_reading(token: &str) -> Result<(), String> {
        let (a, b) = (ours(token), theirs(token));
        if a == b {
            Ok(())
        } else {
            Err(format!("{token}\n ours:   {a}\n theirs: {b}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::against_jwt_compact::same_reading;
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn token(header: &str, claims: &str, signature: &str) -> String {
        format!("{}.{}.{signature}", b64(header.as_bytes()), b64(claims.as_bytes()))
    }

    const GOOD_HEADER: &str = r#"{"alg":"RS256","kid":"k1","typ":"at+jwt"}"#;
    const GOOD_CLAIMS: &str = r#"{"iss":"https://idp/id","aud":["DomainAPI"],"exp":1800000000,"nbf":1700000000,"iat":1700000000,"scope":"read update","client_id":"c","sub":"s","client_db":"E1","client_system_user":"u"}"#;

    #[test]
    fn a_well_formed_token_is_read_as_jwt_compact_reads_it() {
        let t = token(GOOD_HEADER, GOOD_CLAIMS, "AQID");
        same_reading(&t).unwrap();
        let jws = Jws::parse(&t).unwrap();
        assert_eq!(jws.header.alg, "RS256");
        assert_eq!(jws.header.kid.as_deref(), Some("k1"));
        assert_eq!(jws.signature, [1, 2, 3]);
        assert_eq!(jws.signing_input, t.rsplit_once('.').unwrap().0);
        let claims = jws.claims().unwrap();
        assert_eq!((claims.exp, claims.nbf), (Some(1_800_000_000), Some(1_700_000_000)));
    }

    #[test]
    fn headers_are_read_as_jwt_compact_reads_them() {
        let headers = [
            GOOD_HEADER.to_owned(),
            r#"{"alg":"RS256"}"#.into(),
            r#"{"kid":"k1"}"#.into(),
            r#"{"alg":null}"#.into(),
            r#"{"alg":5}"#.into(),
            r#"{"alg":"RS\u0032\u0035\u0036","kid":"k\"1"}"#.into(),
            r#"["RS256","k1","at+jwt"]"#.into(),
            r#"["RS256"]"#.into(),
            // Every field in order: what serde's derived structs would take.
            r#"["RS256","k1","at+jwt",null,null,null,null,null,null]"#.into(),
            r#" {"alg":"RS256"} "#.into(),
            r#"{"alg":"RS256"} x"#.into(),
            r#"{"alg":"RS256","alg":"RS256"}"#.into(),
            r#"{"alg":"RS256","kid":"a","kid":"b"}"#.into(),
            r#"{"alg":"RS256","typ":"x","typ":"y"}"#.into(),
            r#"{"alg":"RS256","crit":["exp"],"crit":null}"#.into(),
            r#"{"alg":"RS256","crit":null}"#.into(),
            r#"{"alg":"RS256","crit":[]}"#.into(),
            r#"{"alg":"RS256","crit":0}"#.into(),
            r#"{"alg":"RS256","kid":5}"#.into(),
            r#"{"alg":"RS256","kid":null}"#.into(),
            r#"{"alg":"RS256","typ":["at+jwt"]}"#.into(),
            r#"{"alg":"RS256","cty":"JSON"}"#.into(),
            r#"{"alg":"RS256","cty":"json"}"#.into(),
            r#"{"alg":"RS256","cty":"cbor"}"#.into(),
            r#"{"alg":"RS256","cty":"jwt"}"#.into(),
            r#"{"alg":"RS256","cty":7}"#.into(),
            r#"{"alg":"RS256","jku":"https://x"}"#.into(),
            r#"{"alg":"RS256","jku":1}"#.into(),
            r#"{"alg":"RS256","x5u":{}}"#.into(),
            r#"{"alg":"RS256","jwk":{"kty":"RSA"}}"#.into(),
            r#"{"alg":"RS256","x5t":"AAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#.into(),
            r#"{"alg":"RS256","x5t":"AAAA"}"#.into(),
            r#"{"alg":"RS256","x5t":5}"#.into(),
            r#"{"alg":"RS256","x5t#S256":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#.into(),
            r#"{"alg":"RS256","x5t#S256":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#.into(),
            r#"{"alg":"RS256","x5t#S256":"!!"}"#.into(),
            r#"{"alg":"RS256","":1,"other":{"a":[1,2,{"b":null}]}}"#.into(),
            r#"{"alg":"RS256","kid":"\ud800"}"#.into(),
            r#"{"alg":"RS256","kid":1e999}"#.into(),
            "{}".into(),
            "null".into(),
            "\"RS256\"".into(),
            "".into(),
            "\u{feff}{\"alg\":\"RS256\"}".into(),
        ];
        for header in &headers {
            same_reading(&token(header, GOOD_CLAIMS, "AQID")).unwrap();
        }
    }

    #[test]
    fn claims_are_read_as_jwt_compact_reads_them() {
        let base = serde_json::from_str::<serde_json::Value>(GOOD_CLAIMS).unwrap();
        let mut variants: Vec<String> = vec![
            "[]".into(),
            "[1800000000]".into(),
            r#"[1800000000,1700000000,1700000000,"https://idp/id","DomainAPI",null,"c",null,null,null]"#.into(),
            "null".into(),
            "{}".into(),
            " \n{}\t".into(),
            "{} {}".into(),
            r#"{"exp":1,"exp":2}"#.into(),
            r#"{"iss":"a","iss":"b"}"#.into(),
            r#"{"aud":"x","aud":["y"]}"#.into(),
        ];
        let values = [
            json!(null),
            json!(0),
            json!(-1),
            json!(1.9),
            json!(-1.5),
            json!(1e300),
            json!(-1e300),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(8_210_298_412_799_i64),
            json!(8_210_298_412_800_i64),
            json!(-8_334_632_851_200_i64),
            json!(-8_334_632_851_201_i64),
            json!("1800000000"),
            json!(true),
            json!([1]),
            json!({}),
            json!("DomainAPI"),
            json!(["DomainAPI", "x"]),
            json!(["DomainAPI", 1]),
            json!([]),
            json!("read  update"),
            json!(["read", "up date"]),
        ];
        for field in [
            "exp",
            "nbf",
            "iat",
            "iss",
            "aud",
            "scope",
            "client_id",
            "sub",
            "client_db",
            "client_system_user",
        ] {
            for value in &values {
                let mut claims = base.clone();
                claims[field] = value.clone();
                variants.push(claims.to_string());
            }
            let mut without = base.clone();
            without.as_object_mut().unwrap().remove(field);
            variants.push(without.to_string());
        }
        for claims in &variants {
            same_reading(&token(GOOD_HEADER, claims, "AQID")).unwrap();
        }
    }

    #[test]
    fn the_form_is_read_as_jwt_compact_reads_it() {
        let good = token(GOOD_HEADER, GOOD_CLAIMS, "AQID");
        let (h, rest) = good.split_once('.').unwrap();
        let (c, _) = rest.split_once('.').unwrap();
        let standard = |s: &str| STANDARD.encode(s);
        let padded = |s: &str| URL_SAFE.encode(s);
        let cases = [
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            format!("{h}.{c}"),
            format!("{h}.{c}."),
            format!("{h}.{c}.AQID."),
            format!("{h}.{c}.AQID.AQID"),
            format!("{h}..AQID"),
            format!(".{c}.AQID"),
            format!("{h}.{c}.AQI"),
            format!("{h}.{c}.AQJ"),
            format!("{h}.{c}.AQ"),
            format!("{h}.{c}.AR"),
            format!("{h}.{c}.A"),
            format!("{h}.{c}.AQ=="),
            format!("{h}.{c}.AQID="),
            format!("{h}.{c}.+/+/"),
            format!("{h}.{c}.-_-_"),
            format!("{h}.{c}.AQ ID"),
            format!("{h}.{c}.AQ\nID"),
            format!("{h}.{c}.AQ%3D"),
            format!("{h}={c}.AQID"),
            format!("{}.{c}.AQID", padded(GOOD_HEADER)),
            format!("{}.{c}.AQID", standard(r#"{"alg":"RS256","kid":"k?>"}"#)),
            format!("{}.{c}.AQID", b64(r#"{"alg":"RS256","kid":"k?>"}"#.as_bytes())),
            format!("{h}.{}.AQID", padded(GOOD_CLAIMS)),
            format!("{h}.{c}x.AQID"),
            format!("{h}.{c}xx.AQID"),
            format!("{}.{c}.AQID", b64(b"{\"alg\":\"RS256\",\"kid\":\"\xff\"}")),
            format!("{h}.{}.AQID", b64(b"{\"iss\":\"\xff\"}")),
            // Invalid UTF-8 in a field neither reader names.
            format!("{}.{c}.AQID", b64(b"{\"alg\":\"RS256\",\"tip\":\"\xb6\"}")),
            format!("{}.{c}.AQID", b64(b"{\"alg\":\"RS256\",\"\xb6\":1}")),
            format!("{h}.{}.AQID", b64(b"{\"exp\":1,\"other\":[\"\xff\"]}")),
            format!("{}.{c}.AQID", b64(b"{\"alg\":\"RS256\",\"kid\":\"a\0b\"}")),
            format!("{h}.{c}.{}", b64(&[0xff; 512])),
        ];
        for t in &cases {
            same_reading(t).unwrap();
        }
    }
}
