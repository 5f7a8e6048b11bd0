//! One function per input the filter reads from outside, each running the
//! filter's own code on arbitrary bytes and asserting the oracles.

use super::*;

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
pub(super) fn with_engine<R>(f: impl FnOnce(&Engine) -> R) -> R {
    ENGINE.with(f)
}

pub(super) fn rules(config: &Config) -> ClaimRules<'_> {
    ClaimRules {
        issuers: &config.issuers,
        audiences: &config.audiences,
        algorithms: &config.algorithms,
        clock_skew_seconds: config.clock_skew_seconds,
        require_at_jwt_typ: config.require_at_jwt_typ,
    }
}

/// Splits input into a request head: the first line is `METHOD PATH`, the
/// others `name: value` (names lower-cased as Envoy gives them).
pub(super) fn head(data: &[u8]) -> (String, String, Vec<(String, String)>) {
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
            jwt::verify_with(&token, &config.inline_keys, &rules(config), NOW, None, None),
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
            let known = cache.is_known(&store, &hash);
            let _ = cache.spend(&store, NOW, 10, known);
            cache.mark_known(&store, &hash);
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
            if let Some((_, _, bytes)) = sync.newer_published(&store, 0) {
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

/// A valid signature per committed key over [`SIGNED`], made once.
pub(super) fn valid_signatures() -> &'static [Vec<u8>] {
    static SIGNATURES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SIGNATURES.get_or_init(|| {
        keys()
            .iter()
            .map(|k| k.raw_sign(&pkcs1_sha256(k.public.size(), &Sha256::digest(SIGNED))))
            .collect()
    })
}

/// The message the precomputed valid signatures sign.
pub(super) const SIGNED: &[u8] = b"eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJmdXp6In0";

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
