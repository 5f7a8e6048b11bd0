//! The bodies of the fuzz targets (`fuzz/fuzz_targets/`), one function per
//! input the filter reads from outside: a request head, a JWT, a JWKS
//! document, an introspection answer, the configuration, the records in
//! Envoy's shared data, route matching, and RS256 signatures against the
//! `rsa` crate.
//!
//! Each function takes arbitrary bytes, runs the same code the filter runs,
//! and panics when an invariant breaks (an allowed request that carries no
//! credential an independent verifier accepts, a verifier that disagrees
//! with the `rsa` crate, a record read back differently than written). The
//! unit test at the end replays the committed seed corpora and every
//! minimised crash under `tests/fuzz/regressions/` through them, so a crash once
//! found stays fixed in `make test`.
//!
//! Built only for tests and with the `fuzzing` feature: never in the filter.
// A fuzz target reports a broken invariant by panicking.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::decision::verified_cache::Remembered;
use crate::decision::{Engine, RequestHead, Step, Verdict};
use crate::host::{MemoryStore, SharedStore};
use crate::jwt::algorithm::Algorithm;
use crate::jwt::jwks::KeySet;
use crate::jwt::key_sync::{KeySync, KeyWait};
use crate::jwt::rs256::PreparedKey;
use crate::jwt::{self, ClaimRules};
use crate::policy::{Access, Policy, RouteRule, UnmatchedRoutes};
use crate::reference::cache::ReferenceCache;
use crate::reference::introspection::{read_answer, Answer, AnswerRules};
use crate::secret::hash_token;

/// The fixed clock of every target (seconds); the seed tokens are valid at it.
pub const NOW: u64 = 1_800_000_000;
/// The issuer and audience of the seed tokens.
pub const ISSUER: &str = "https://idp.erp.test/id";
pub const AUDIENCE: &str = "DomainAPI";

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets, by the name of their corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("request_head", request_head),
    ("jwt", jwt),
    ("jwks", jwks),
    ("introspection", introspection),
    ("config", config),
    ("shared_state", shared_state),
    ("route", route),
    ("rs256", rs256),
];

/// An RSA key of `fuzz/keys.json`: public parts for the filter, private
/// parts to sign crafted encodings (RFC 8017 §5.2.1 with CRT).
pub struct FuzzKey {
    pub kid: String,
    pub public: RsaPublicKey,
    pub prepared: PreparedKey,
    /// CRT parameters: d mod (p-1), d mod (q-1), q⁻¹ mod p.
    dp: BigUint,
    dq: BigUint,
    q_inv: BigUint,
    p: BigUint,
    q: BigUint,
    jwk: Value,
}

fn uint(value: &Value, field: &str) -> BigUint {
    let text = value[field].as_str().expect("keys.json field");
    BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(text).expect("keys.json base64url"))
}

/// The three committed keys: 2048, 3072 and 4096 bits.
pub fn keys() -> &'static [FuzzKey] {
    static KEYS: OnceLock<Vec<FuzzKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let file: Value = serde_json::from_str(include_str!("../../fuzz/keys.json")).expect("keys.json");
        ["2048", "3072", "4096"]
            .iter()
            .map(|bits| {
                let k = &file[*bits];
                let (n, e) = (uint(k, "n"), uint(k, "e"));
                let public = RsaPublicKey::new(n.clone(), e.clone()).expect("a valid public key");
                let kid = k["kid"].as_str().expect("kid").to_owned();
                let (d, p, q) = (uint(k, "d"), uint(k, "p"), uint(k, "q"));
                let one = BigUint::from(1u8);
                FuzzKey {
                    prepared: PreparedKey::new(&n.to_bytes_be(), &e.to_bytes_be()).expect("an F4 key"),
                    jwk: json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": k["n"], "e": k["e"]}),
                    kid,
                    public,
                    dp: &d % (&p - &one),
                    dq: &d % (&q - &one),
                    // p is prime: q^(p-2) = q⁻¹ mod p.
                    q_inv: q.modpow(&(&p - BigUint::from(2u8)), &p),
                    p,
                    q,
                }
            })
            .collect()
    })
}

impl FuzzKey {
    /// `em^d mod n` by the Chinese remainder theorem, `k` bytes.
    pub fn raw_sign(&self, em: &[u8]) -> Vec<u8> {
        let m = BigUint::from_bytes_be(em);
        let s1 = m.modpow(&self.dp, &self.p);
        let s2 = m.modpow(&self.dq, &self.q);
        let h = (&self.q_inv * ((&s1 + &self.p) - (&s2 % &self.p))) % &self.p;
        let s = s2 + h * &self.q;
        let bytes = s.to_bytes_be();
        let k = self.public.size();
        [vec![0u8; k.saturating_sub(bytes.len())], bytes].concat()
    }

    /// A compact JWS over `header.claims`, RS256.
    pub fn sign_jwt(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let em = pkcs1_sha256(self.public.size(), &Sha256::digest(input.as_bytes()));
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(self.raw_sign(&em)))
    }
}

/// DER of the SHA-256 `DigestInfo` prefix (RFC 8017 §9.2 note 1).
const DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
];

/// EMSA-PKCS1-v1_5 of a SHA-256 digest in `k` bytes.
pub fn pkcs1_sha256(k: usize, digest: &[u8]) -> Vec<u8> {
    let mut em = vec![0x00, 0x01];
    em.extend(std::iter::repeat_n(0xff, k - 3 - DIGEST_INFO.len() - digest.len()));
    em.push(0x00);
    em.extend_from_slice(&DIGEST_INFO);
    em.extend_from_slice(digest);
    em
}

/// The `rsa` crate's verdict: the reference every accepted signature must meet.
fn rsa_crate_accepts(public: &RsaPublicKey, message: &[u8], signature: &[u8]) -> bool {
    let scheme = Pkcs1v15Sign {
        hash_len: Some(32),
        prefix: DIGEST_INFO.into(),
    };
    public.verify(scheme, &Sha256::digest(message), signature).is_ok()
}

/// `kid`s of the curve keys of the request and JWT targets.
pub const P256_KID: &str = "fuzz-p256";
pub const ED25519_KID: &str = "fuzz-ed25519";

/// A P-256 (ES256) and an Ed25519 (EdDSA) key from fixed bytes: the same
/// on every run, so committed seeds stay valid.
pub struct CurveKeys {
    pub p256: p256::ecdsa::SigningKey,
    pub ed25519: ed25519_dalek::SigningKey,
}

pub fn curve_keys() -> &'static CurveKeys {
    static KEYS: OnceLock<CurveKeys> = OnceLock::new();
    KEYS.get_or_init(|| CurveKeys {
        p256: p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).expect("a valid P-256 scalar"),
        ed25519: ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]),
    })
}

fn curve_jwks() -> [Value; 2] {
    let keys = curve_keys();
    let point = keys.p256.verifying_key().to_encoded_point(false);
    let coordinate = |c: Option<&p256::FieldBytes>| URL_SAFE_NO_PAD.encode(c.map(|c| c.to_vec()).unwrap_or_default());
    [
        json!({"kty": "EC", "crv": "P-256", "kid": P256_KID, "alg": "ES256",
               "x": coordinate(point.x()), "y": coordinate(point.y())}),
        json!({"kty": "OKP", "crv": "Ed25519", "kid": ED25519_KID, "alg": "EdDSA",
               "x": URL_SAFE_NO_PAD.encode(keys.ed25519.verifying_key().as_bytes())}),
    ]
}

/// The configuration of the request and JWT targets: the shipped shape,
/// the committed RSA keys and the curve keys inline, introspection on.
pub fn config_json() -> Value {
    let mut jwks: Vec<Value> = keys().iter().map(|k| k.jwk.clone()).collect();
    jwks.extend(curve_jwks());
    json!({
        "issuers": [ISSUER],
        "audiences": [AUDIENCE],
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "jwks": {"keys": jwks},
        "introspection": {
            "cluster": "identity", "authority": "idp.erp.test", "path": "/id/connect/introspect",
            "client_id": "erp-edge-validator", "client_secret": "fuzz-secret"
        },
        "routes": [
            {"exact": "/healthz", "methods": ["GET", "HEAD"], "public": true},
            {"prefix": "/api/domain/", "methods": ["GET", "HEAD"], "all_of": ["read"]},
            {"prefix": "/api/domain/", "methods": ["POST", "PUT", "PATCH", "MERGE", "DELETE"], "all_of": ["update"]},
            {"prefix": "/api/Reports/", "case_insensitive": true, "any_of": ["reports", "admin"]}
        ],
        "unmatched_routes": "deny"
    })
}

thread_local! {
    /// One engine per thread (it counts verifications in cells).
    static ENGINE: Engine = Engine::new(Config::from_json(config_json().to_string().as_bytes()).expect("config"));
}

/// Runs `f` with this thread's engine.
fn with_engine<R>(f: impl FnOnce(&Engine) -> R) -> R {
    ENGINE.with(f)
}

fn rules(config: &Config) -> ClaimRules<'_> {
    ClaimRules {
        issuers: &config.issuers,
        audiences: &config.audiences,
        algorithms: &config.algorithms,
        clock_skew_seconds: config.clock_skew_seconds,
        require_at_jwt_typ: config.require_at_jwt_typ,
    }
}

/// Whether `token` is a JWT whose signature the `rsa` crate accepts under
/// one of the committed keys, and whose claims hold at [`NOW`] when read
/// by plain JSON (the independent account of what may pass).
fn independently_valid_jwt(token: &str) -> bool {
    let Some((input, signature)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let claims: Option<Value> = input
        .split_once('.')
        .and_then(|(_, claims)| URL_SAFE_NO_PAD.decode(claims).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let Some(claims) = claims else {
        return false;
    };
    let skew = with_engine(|e| e.config().clock_skew_seconds);
    let time_ok = claims["exp"].as_u64().is_some_and(|exp| exp + skew > NOW)
        && claims["nbf"].as_u64().is_none_or(|nbf| nbf <= NOW + skew)
        && claims["iss"] == ISSUER;
    let header: Value = input
        .split_once('.')
        .and_then(|(header, _)| URL_SAFE_NO_PAD.decode(header).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let signed_by = |alg: &str, kid: &str| header["alg"] == alg && header["kid"] == kid;
    let curves = curve_keys();
    let signature_ok = if signed_by("ES256", P256_KID) {
        use p256::ecdsa::signature::Verifier;
        p256::ecdsa::Signature::from_slice(&signature)
            .is_ok_and(|s| curves.p256.verifying_key().verify(input.as_bytes(), &s).is_ok())
    } else if signed_by("EdDSA", ED25519_KID) {
        // The strict check: stricter than what the filter must meet.
        ed25519_dalek::Signature::from_slice(&signature).is_ok_and(|s| {
            curves
                .ed25519
                .verifying_key()
                .verify_strict(input.as_bytes(), &s)
                .is_ok()
        })
    } else {
        keys()
            .iter()
            .any(|k| rsa_crate_accepts(&k.public, input.as_bytes(), &signature))
    };
    time_ok && signature_ok
}

/// Splits input into a request head: the first line is `METHOD PATH`, the
/// others `name: value` (names lower-cased as Envoy gives them).
fn head(data: &[u8]) -> (String, String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default();
    let (method, path) = first.split_once(' ').unwrap_or((first, "/"));
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            (name.to_ascii_lowercase(), value.trim_start().to_owned())
        })
        .collect();
    (method.to_owned(), path.to_owned(), headers)
}

/// A whole request head through the first pass of the decision: credential
/// extraction from the raw header map, header checks, route rules, JWT
/// verification. An allowed request on a protected route must carry a
/// token an independent verifier accepts; a reference token is sent to
/// introspection only when well-formed.
pub fn request_head(data: &[u8]) {
    let (method, path, headers) = head(data);
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    with_engine(|engine| decide_and_check(engine, &method, &path, &pairs));
}

fn decide_and_check(engine: &Engine, method: &str, path: &str, pairs: &[(&str, &str)]) {
    let request = RequestHead {
        method,
        path,
        headers: pairs,
    };
    let mut memory = Remembered::new(4, 4);
    let step = engine.decide(&request, &engine.config().inline_keys, &mut memory, NOW);
    match &step {
        Step::Done(Verdict::Allow(allowed)) => {
            if allowed.principal().is_some() {
                let tokens: Vec<&str> = pairs.iter().flat_map(|(_, v)| v.split([' ', '\t'])).collect();
                assert!(
                    tokens.iter().any(|t| independently_valid_jwt(t)),
                    "allowed without a valid credential: {step:?}"
                );
            } else {
                let access = engine.config().policy.access(method, path);
                assert!(
                    matches!(access, Ok(Access::Public)),
                    "allowed without identity on {path}"
                );
            }
        }
        Step::Introspect(pending) => {
            let token = pending.token().expose();
            assert!(
                crate::decision::credential::is_well_formed_reference(token),
                "introspecting a malformed token"
            );
        }
        Step::AwaitKeys(_) => panic!("inline keys never wait for a fetch"),
        Step::Done(Verdict::Deny(_)) => {}
    }
    // The decision is a function of the request: the same input, the same answer.
    let again = engine.decide(&request, &engine.config().inline_keys, &mut Remembered::new(4, 4), NOW);
    assert_eq!(step, again, "the decision changed between two passes");
    // Memory changes no decision: with every token of the request that
    // verifies already remembered (each sent alone first), a request is
    // decided from memory exactly as it was without.
    let mut warm = Remembered::new(8, 8);
    let pieces = pairs
        .iter()
        .flat_map(|(_, v)| v.split([' ', '\t', ',']))
        .filter(|t| !t.is_empty());
    for piece in pieces.take(8) {
        let alone = format!("Bearer {piece}");
        let head = RequestHead {
            method: "GET",
            path: "/api/domain/x",
            headers: &[("authorization", &alone)],
        };
        engine.decide(&head, &engine.config().inline_keys, &mut warm, NOW);
    }
    let warmed = engine.decide(&request, &engine.config().inline_keys, &mut warm, NOW);
    assert_eq!(step, warmed, "a remembered token changed the decision");
    // What the memory is looked up by: where it could be a remembered
    // token, it is the credential `locate` finds.
    let api_keys = &engine.config().api_key_headers;
    if let Some(found) = crate::decision::credential::candidate(pairs.iter().copied(), api_keys) {
        let max = engine.config().max_token_bytes;
        if !found.token.is_empty() && found.token.len() <= max && crate::decision::credential::classify(found).is_ok() {
            assert_eq!(
                crate::decision::credential::locate(pairs.iter().copied(), api_keys, max),
                Ok(found)
            );
        }
    }
}

/// A token alone: header and claims parsing and full verification against
/// the committed keys at [`NOW`]. Whatever passes must pass the `rsa`
/// crate and the claim checks read independently; the token is read as
/// jwt-compact reads it.
pub fn jwt(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    if let Err(difference) = crate::jwt::jws::against_jwt_compact::same_reading(&token) {
        panic!("read otherwise than jwt-compact reads it: {difference}");
    }
    let (result, skew) = with_engine(|engine| {
        let config = engine.config();
        (
            jwt::verify_with(&token, &config.inline_keys, &rules(config), NOW, None),
            config.clock_skew_seconds,
        )
    });
    if let Ok(verified) = &result {
        assert!(
            independently_valid_jwt(&token),
            "verified a token the rsa crate refuses"
        );
        assert!(verified.principal.expires_at + skew > NOW);
        assert!(!verified.by_host);
    }
}

/// A JWKS document with every algorithm allowed: never a panic; a key that
/// loads is found by its `kid`, and the set's digest is a function of it.
pub fn jwks(data: &[u8]) {
    let all = Algorithm::ALL;
    if let Ok(set) = KeySet::from_json(data, &all) {
        for kid in set.kids() {
            assert!(set.get(kid).is_some(), "a listed kid is not found");
        }
        let again = KeySet::from_json(data, &all).expect("parsed once, parses again");
        assert_eq!(set.digest(), again.digest());
        let _ = set.skipped_summary();
    }
}

/// An introspection answer: the first byte picks the status. Only a 200
/// with `"active": true`, a future `exp` and our audience is active.
pub fn introspection(data: &[u8]) {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let status = ["200", "500", "401", ""][usize::from(*selector % 4)];
    let answer = with_engine(|engine| {
        let config = engine.config();
        let rules = AnswerRules {
            audiences: &config.audiences,
            issuers: &config.issuers,
            claims_to_headers: &config.claims_to_headers,
        };
        read_answer((!status.is_empty()).then_some(status), body, NOW, rules)
    });
    if let Ok(Answer::Active(principal)) = &answer {
        assert_eq!(status, "200");
        // Read independently, ignoring what the filter ignores (serde skips
        // unknown fields without checking UTF-8 or number range).
        #[derive(serde::Deserialize)]
        struct Minimal {
            active: bool,
            #[serde(default)]
            aud: Option<Value>,
        }
        let json: Minimal = serde_json::from_slice(body).expect("an active answer is JSON");
        assert!(json.active, "active without `active: true`");
        assert!(principal.expires_at > NOW, "an expired answer is active");
        if let Some(aud) = json.aud.as_ref().filter(|a| !a.is_null()) {
            let ours = |a: &Value| a.as_str() == Some(AUDIENCE);
            assert!(
                ours(aud) || aud.as_array().is_some_and(|a| a.iter().any(ours)),
                "another API's answer"
            );
        }
    }
}

/// The plugin configuration: parsing and validation never panic, an error
/// names a field, and the start-up summary never shows the client secret.
pub fn config(data: &[u8]) {
    match Config::from_json(data) {
        Ok(config) => {
            let _ = config.summary();
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // The same document with a recognisable secret: neither the start-up
    // summary nor the Debug form (nor an error) may show it.
    const MARKER: &str = "fuzz-secret-7f1c9e";
    let Ok(mut value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match value.get_mut("introspection").and_then(|i| i.get_mut("client_secret")) {
        Some(secret @ Value::String(_)) => *secret = Value::String(MARKER.into()),
        _ => return,
    }
    match Config::from_json(value.to_string().as_bytes()) {
        Ok(config) => {
            assert!(!config.summary().contains(MARKER), "the summary shows the secret");
            assert!(!format!("{config:?}").contains(MARKER), "Debug shows the secret");
        }
        Err(e) => assert!(!e.to_string().contains(MARKER), "an error shows the secret"),
    }
}

/// Records in Envoy's shared data, which another filter configuration or an
/// older build may have written: the first byte picks the record, the rest
/// is stored as is and read through the same functions the filter uses.
pub fn shared_state(data: &[u8]) {
    let Some((selector, value)) = data.split_first() else {
        return;
    };
    let store = MemoryStore::default();
    let hash = hash_token("enrt_fuzz");
    let cache = ReferenceCache::new("fuzz", 16, 30, 5);
    let config = Config::from_json(
        json!({
            "issuers": [ISSUER], "audiences": [AUDIENCE],
            "remote_jwks": {"cluster": "identity", "authority": "idp.erp.test", "path": "/jwks"},
            "routes": [{"prefix": "/", "all_of": ["read"]}]
        })
        .to_string()
        .as_bytes(),
    )
    .expect("config");
    let remote = config.remote_jwks.as_ref().expect("remote_jwks");
    let sync = KeySync::new("fuzz", remote);
    let now_ms = NOW * 1000;
    match selector % 4 {
        0 => {
            store.set(&cache.entry_key(&hash), value, None);
            if let Some((answer, until)) = cache.get_until(&store, &hash, NOW) {
                assert!(until >= NOW, "a stale entry was read as fresh");
                // Whatever is read back, written again, reads back the same.
                let copy = MemoryStore::default();
                if cache.put(&copy, &hash, &answer, NOW).is_some() {
                    assert_eq!(cache.get_until(&copy, &hash, NOW).map(|(a, _)| a), Some(answer));
                }
            }
        }
        1 => {
            store.set(&cache.entry_key(&hash).replace(".ref.", ".flight."), value, None);
            let _ = cache.flight(&store, &hash, now_ms);
            let _ = cache.claim(&store, &hash, now_ms, now_ms + 1000);
            cache.finish(&store, &hash, Some(now_ms + 250));
            let _ = cache.spend(&store, NOW, 10);
        }
        2 => {
            store.set("fuzz.jwks.state", value, None);
            let fetches = sync.fetches(&store);
            let _ = sync.may_force(&store, now_ms);
            let _ = sync.is_stale(&store, now_ms);
            // In flight wins over anything fetched: a waiter never decides
            // while a fetch it could use is running.
            if fetches.in_flight(now_ms) {
                assert_eq!(fetches.wait_state(fetches.claimed, now_ms), KeyWait::InFlight);
            }
        }
        _ => {
            store.set("fuzz.jwks", value, None);
            if let Some((_, bytes)) = sync.newer_than(&store, 0) {
                let _ = KeySet::from_json(&bytes, &config.algorithms);
            }
        }
    }
}

/// Route matching on arbitrary method and path bytes, against a model of
/// the documented rules: the first rule whose path (exact, prefix, ASCII
/// case folded when the rule says so, query and fragment ignored) and
/// method match decides; nothing matched is refused.
pub fn route(data: &[u8]) {
    let (method, path, _) = head(data);
    let rules = [
        ("/healthz", true, false, Some(&["GET", "HEAD"][..])),
        ("/api/domain/", false, false, Some(&["GET", "HEAD"][..])),
        (
            "/api/domain/",
            false,
            false,
            Some(&["POST", "PUT", "PATCH", "MERGE", "DELETE"][..]),
        ),
        ("/api/Reports/", false, true, None),
        ("/", false, false, Some(&["OPTIONS"][..])),
    ];
    let policy = policy(&rules);
    let got = policy.access(&method, &path).ok().cloned();
    let bare = path.split(['?', '#']).next().unwrap_or_default();
    let expected = rules
        .iter()
        .position(|(p, exact, folded, methods)| {
            let path_ok = match (exact, folded) {
                (true, false) => bare == *p,
                (true, true) => bare.eq_ignore_ascii_case(p),
                (false, false) => bare.starts_with(p),
                (false, true) => bare.len() >= p.len() && bare.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes()),
            };
            path_ok && methods.is_none_or(|m| m.contains(&method.as_str()))
        })
        .map(|i| i.to_string());
    let got_rule = got.map(|access| match access {
        Access::Public => "0".to_owned(),
        Access::Scopes { all_of, .. } => all_of.first().cloned().unwrap_or_default(),
    });
    assert_eq!(got_rule, expected, "{method} {path}");
}

/// A policy from `(path, exact, case_insensitive, methods)`; rule `i`
/// requires scope `i` (rule 0 is public) so a match names its rule.
fn policy(rules: &[(&str, bool, bool, Option<&[&str]>)]) -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(i, (path, exact, folded, methods))| {
                serde_json::from_value::<RouteRule>(json!({
                    (if *exact { "exact" } else { "prefix" }): path,
                    "case_insensitive": folded,
                    "methods": methods,
                    "public": i == 0,
                    "all_of": if i == 0 { vec![] } else { vec![i.to_string()] },
                }))
                .expect("rule")
            })
            .collect();
        Policy::new(compiled, UnmatchedRoutes::Deny).expect("policy")
    })
}

/// A valid signature per committed key over [`SIGNED`], made once.
fn valid_signatures() -> &'static [Vec<u8>] {
    static SIGNATURES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SIGNATURES.get_or_init(|| {
        keys()
            .iter()
            .map(|k| k.raw_sign(&pkcs1_sha256(k.public.size(), &Sha256::digest(SIGNED))))
            .collect()
    })
}

/// The message the precomputed valid signatures sign.
pub const SIGNED: &[u8] = b"eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJmdXp6In0";

/// RS256 against the `rsa` crate; both verifiers must agree on every input.
/// The first byte picks the key: the three committed ones, or a modulus
/// taken from the input. The second picks how the signature is made:
/// - even: raw input bytes (of length `k`, one more, one less), then the
///   message;
/// - odd: the valid signature of [`SIGNED`] with up to four byte edits
///   from the input, over [`SIGNED`] or, when the input says so, the rest
///   of the input (so acceptance is reached and every edit must refuse).
///
/// Wrong encodings under correct RSA operations (block type, padding,
/// separator, DigestInfo) need the private key per input, far too slow to
/// fuzz: `rs256::tests` covers them against the `rsa` crate.
pub fn rs256(data: &[u8]) {
    let [selector, mode, rest @ ..] = data else {
        return;
    };
    if *selector % 4 == 3 {
        // Any modulus: both sides must agree whenever both take the key.
        let Some((&len, rest)) = rest.split_first() else {
            return;
        };
        let k = 256 + usize::from(len % 3) * 128;
        if rest.len() < 2 * k {
            return;
        }
        let (modulus, rest) = rest.split_at(k);
        let (signature, message) = rest.split_at(k);
        let e = BigUint::from(65_537u32);
        let (Some(ours), Ok(theirs)) = (
            PreparedKey::new(modulus, &e.to_bytes_be()),
            RsaPublicKey::new(BigUint::from_bytes_be(modulus), e),
        ) else {
            return;
        };
        assert_eq!(
            ours.verify(message, signature),
            rsa_crate_accepts(&theirs, message, signature),
            "disagreement under a fuzzed modulus"
        );
        return;
    }
    let index = usize::from(*selector % 4);
    let key = &keys()[index];
    let k = key.public.size();
    let (signature, message) = if mode % 2 == 0 {
        let cut = (k + usize::from(mode / 2 % 3)).saturating_sub(1).min(rest.len());
        let (signature, message) = rest.split_at(cut);
        (signature.to_vec(), message)
    } else {
        let edits = usize::from(mode / 2 % 5);
        let Some((edits, tail)) = rest.split_at_checked(edits * 3) else {
            return;
        };
        let mut signature = valid_signatures()[index].clone();
        for edit in edits.chunks_exact(3) {
            let at = usize::from(u16::from_be_bytes([edit[0], edit[1]])) % k;
            signature[at] = edit[2];
        }
        let message = if mode & 0x80 == 0 { SIGNED } else { tail };
        (signature, message)
    };
    let ours = key.prepared.verify(message, &signature);
    let theirs = rsa_crate_accepts(&key.public, message, &signature);
    assert_eq!(ours, theirs, "disagreement with the rsa crate ({} bits)", k * 8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// A valid token signed by the curve key of `alg` (`ES256` or `EdDSA`),
    /// and its signature.
    fn curve_token(alg: &str) -> (String, Vec<u8>) {
        use p256::ecdsa::signature::Signer;
        let claims = json!({"aud": AUDIENCE, "client_id": "fuzz-app", "exp": NOW + 3600, "iss": ISSUER,
                            "nbf": NOW - 10, "scope": "read update", "sub": "user-1"});
        let kid = if alg == "ES256" { P256_KID } else { ED25519_KID };
        let encode = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!(
            "{}.{}",
            encode(&json!({"alg": alg, "kid": kid, "typ": "at+jwt"})),
            encode(&claims)
        );
        let keys = curve_keys();
        let signature = if alg == "ES256" {
            let s: p256::ecdsa::Signature = keys.p256.sign(input.as_bytes());
            s.to_bytes().to_vec()
        } else {
            keys.ed25519.sign(input.as_bytes()).to_bytes().to_vec()
        };
        (format!("{input}.{}", URL_SAFE_NO_PAD.encode(&signature)), signature)
    }

    /// Curve tokens pass the JWT target's invariant; their forgeries are
    /// refused.
    #[test]
    fn curve_tokens_meet_the_jwt_targets_invariant() {
        let verify = |t: &str| {
            with_engine(|e| jwt::verify_with(t, &e.config().inline_keys, &rules(e.config()), NOW, None).is_ok())
        };
        for alg in ["ES256", "EdDSA"] {
            let (token, signature) = curve_token(alg);
            assert!(independently_valid_jwt(&token), "{alg}");
            assert!(verify(&token), "{alg}");
            jwt(token.as_bytes());
            let mut forged = signature.clone();
            forged[5] ^= 1;
            let input = token.rsplit_once('.').map(|(i, _)| i).unwrap_or_default();
            let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&forged));
            assert!(!independently_valid_jwt(&forged), "{alg}");
            assert!(!verify(&forged), "{alg}");
        }
    }

    /// Every committed seed and every minimised crash, through its target.
    #[test]
    fn corpora_and_regressions_replay_without_a_broken_invariant() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            let seeds = files(&root.join("corpus").join(name));
            assert!(!seeds.is_empty(), "no seed corpus for {name}");
            for file in seeds.iter().chain(&files(&root.join("regressions").join(name))) {
                let data = std::fs::read(file).unwrap();
                target(&data);
                replayed += 1;
            }
        }
        assert!(replayed >= TARGETS.len());
    }

    /// Writes the seed corpora (`cargo test --lib -- --ignored write_seed_corpora`).
    #[test]
    #[ignore]
    fn write_seed_corpora() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
        let claims = |scope: &str| json!({"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 3600, "nbf": NOW - 10, "client_id": "fuzz-app", "sub": "user-1", "scope": scope});
        let header = |kid: &str| json!({"alg": "RS256", "typ": "at+jwt", "kid": kid});
        let k = &keys()[0];
        let valid = k.sign_jwt(&header(&k.kid), &claims("read update"));
        let tokens = [
            valid.clone(),
            keys()[1].sign_jwt(&header(&keys()[1].kid), &claims("read")),
            keys()[2].sign_jwt(&header(&keys()[2].kid), &json!({"iss": ISSUER, "aud": [AUDIENCE, "x"], "exp": NOW + 60, "client_id": "c", "scope": ["reports"]})),
            k.sign_jwt(&header("unknown"), &claims("read")),
            k.sign_jwt(&json!({"alg": "RS256", "kid": k.kid}), &claims("read")),
            k.sign_jwt(&header(&k.kid), &json!({"iss": ISSUER, "aud": AUDIENCE, "exp": NOW - 3600, "client_id": "c"})),
            format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode("{}")),
        ];
        let pat = format!("enrt_{}", "0123456789abcdef".repeat(4));
        let write = |target: &str, name: &str, data: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), data).unwrap();
        };
        for (i, token) in tokens.iter().enumerate() {
            write("jwt", &format!("token-{i}"), token.as_bytes());
        }
        let (es256, eddsa) = (curve_token("ES256").0, curve_token("EdDSA").0);
        write("jwt", "curve-es256", es256.as_bytes());
        write("jwt", "curve-eddsa", eddsa.as_bytes());
        write(
            "request_head",
            "curve-es256",
            format!("GET /api/domain/items\nauthorization: Bearer {es256}").as_bytes(),
        );
        write(
            "request_head",
            "curve-eddsa",
            format!("POST /api/domain/items\nauthorization: Bearer {eddsa}").as_bytes(),
        );
        let heads = [
            format!("GET /api/domain/items\nauthorization: Bearer {valid}"),
            format!("POST /api/domain/items\nx-api-key: {valid}"),
            format!("GET /API/reports/1?q=1\nauthorization: bearer {}", tokens[2]),
            format!("GET /api/domain/x\nauthorization: Bearer {pat}"),
            format!("GET /api/domain/x\napi-key: {pat}\nauthorization: Bearer {valid}"),
            format!("GET /api/domain/x\nauthorization: Bearer {valid}, Bearer {valid}"),
            format!("GET /api/domain/x\nauthorization: Bearer {valid}\nx-http-method-override: DELETE"),
            format!("GET /api/domain/x\nauthorization: Bearer {valid}\nx-erp-client-id: forged"),
            "GET /healthz\nx-erp-user: forged".to_owned(),
            "get /api/domain/x\nauthorization: Basic dXNlcjpwYXNz".to_owned(),
        ];
        for (i, h) in heads.iter().enumerate() {
            write("request_head", &format!("head-{i}"), h.as_bytes());
        }
        let jwks = config_json()["jwks"].to_string();
        write("jwks", "committed", jwks.as_bytes());
        write(
            "jwks",
            "mixed",
            json!({"keys": [
                keys()[0].jwk, {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "AA", "y": "AA"},
                {"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"},
                {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": keys()[1].jwk["n"], "e": "AQAB"},
                {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"}
            ]})
            .to_string()
            .as_bytes(),
        );
        write("jwks", "empty", b"{\"keys\": []}");
        let answers = [
            json!({"active": true, "scope": "read update", "exp": NOW + 600, "client_id": "app", "sub": "u", "aud": AUDIENCE, "iss": ISSUER}),
            json!({"active": true, "scope": ["read"], "exp": NOW + 600, "client_id": "svc", "client_system_user": "s", "client_db": "db", "aud": [AUDIENCE, "Other"]}),
            json!({"active": true, "scope": "read", "exp": NOW - 1, "client_id": "app"}),
            json!({"active": true, "scope": "read", "client_id": "app", "aud": "Other"}),
            json!({"active": false}),
        ];
        for (i, a) in answers.iter().enumerate() {
            write(
                "introspection",
                &format!("answer-{i}"),
                &[&[0u8][..], a.to_string().as_bytes()].concat(),
            );
        }
        write("introspection", "status-500", b"\x01{\"active\": true}");
        write("config", "shipped", include_bytes!("../../envoy/filter-config.json"));
        write("config", "inline", config_json().to_string().as_bytes());
        write("config", "broken", br#"{"issuers": ["x"], "audiences": [], "routes": [{"prefix": "/", "methods": ["get"]}], "introspection": {"client_secret": ""}}"#);
        // Real records, as the filter writes them.
        let store = MemoryStore::default();
        let hash = hash_token("enrt_fuzz");
        let cache = ReferenceCache::new("fuzz", 16, 30, 5);
        let principal = match read_answer(
            Some("200"),
            answers[0].to_string().as_bytes(),
            NOW,
            AnswerRules {
                audiences: &[AUDIENCE.into()],
                issuers: &[ISSUER.into()],
                claims_to_headers: &[],
            },
        ) {
            Ok(Answer::Active(p)) => p,
            other => panic!("{other:?}"),
        };
        cache.put(&store, &hash, &Answer::Active(principal), NOW).unwrap();
        let entry = store.get(&cache.entry_key(&hash)).0.unwrap();
        write("shared_state", "reference-entry", &[&[0u8][..], &entry].concat());
        let _ = cache.claim(&store, &hash, NOW * 1000, NOW * 1000 + 1000);
        let flight = store
            .get(&cache.entry_key(&hash).replace(".ref.", ".flight."))
            .0
            .unwrap();
        write("shared_state", "flight", &[&[1u8][..], &flight].concat());
        let mut state = vec![2u8];
        for v in [0u64, NOW * 1000 + 600_000] {
            state.extend_from_slice(&v.to_be_bytes());
        }
        state.extend_from_slice(&0u32.to_be_bytes());
        for v in [0u64, 3, 3, NOW * 1000] {
            state.extend_from_slice(&v.to_be_bytes());
        }
        write("shared_state", "fetch-state", &state);
        let mut published = vec![3u8];
        published.extend_from_slice(&7u64.to_be_bytes());
        published.extend_from_slice(&[0u8; 32]);
        published.extend_from_slice(jwks.as_bytes());
        write("shared_state", "published-set", &published);
        for (i, r) in [
            "GET /api/domain/x",
            "DELETE /api/domain/x?y",
            "HEAD /healthz",
            "PATCH /API/REPORTS/1#f",
            "OPTIONS /",
            "TRACE /api/domain/",
        ]
        .iter()
        .enumerate()
        {
            write("route", &format!("route-{i}"), r.as_bytes());
        }
        let message = valid.rsplit_once('.').unwrap().0.as_bytes();
        let signature = URL_SAFE_NO_PAD.decode(valid.rsplit_once('.').unwrap().1).unwrap();
        write("rs256", "valid-raw", &[&[0u8, 0][..], &signature, message].concat());
        write("rs256", "valid-2048", &[0u8, 1]);
        write("rs256", "valid-3072", &[1u8, 1]);
        write("rs256", "edited-4096", &[2u8, 5, 1, 0, 0xfe, 0, 200, 0]);
        write("rs256", "other-message", &[&[0u8, 0x81][..], message].concat());
        let n = URL_SAFE_NO_PAD.decode(keys()[0].jwk["n"].as_str().unwrap()).unwrap();
        write(
            "rs256",
            "own-modulus",
            &[&[3u8, 0, 0][..], &n, &signature, message].concat(),
        );
    }

    #[test]
    fn a_seed_token_verifies_and_a_flipped_one_does_not() {
        for key in keys() {
            let token = key.sign_jwt(
                &json!({"alg": "RS256", "typ": "at+jwt", "kid": key.kid}),
                &json!({"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 3600, "client_id": "fuzz", "scope": "read"}),
            );
            assert!(independently_valid_jwt(&token));
            let verify = |token: &str| {
                with_engine(|e| jwt::verify(token, &e.config().inline_keys, &rules(e.config()), NOW).is_ok())
            };
            assert!(verify(&token));
            let mut bytes = token.into_bytes();
            let last = bytes.len() - 2;
            bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
            let flipped = String::from_utf8(bytes).unwrap();
            assert!(!independently_valid_jwt(&flipped));
            assert!(!verify(&flipped));
        }
    }

    #[test]
    fn the_edit_mode_starts_from_signatures_both_sides_accept() {
        for (key, signature) in keys().iter().zip(valid_signatures()) {
            assert!(key.prepared.verify(SIGNED, signature));
            assert!(rsa_crate_accepts(&key.public, SIGNED, signature));
            let mut edited = signature.clone();
            edited[7] ^= 1;
            assert!(!key.prepared.verify(SIGNED, &edited));
        }
        for selector in 0..3 {
            rs256(&[selector, 1]);
            rs256(&[selector, 3, 0, 9, 0]);
        }
    }

    #[test]
    fn the_route_model_catches_a_wrong_rule() {
        route(b"GET /api/domain/x");
        route(b"get /api/domain/x");
        route(b"DELETE /API/reports/1?x");
        route(b"OPTIONS /anything");
    }
}
