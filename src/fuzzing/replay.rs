//! The committed seed corpora and every minimised crash replayed through
//! the targets, so a crash once found stays fixed in `make test`.

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
        with_engine(|e| jwt::verify_with(t, &e.config().inline_keys, &rules(e.config()), NOW, None, None).is_ok())
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
        keys()[2].sign_jwt(
            &header(&keys()[2].kid),
            &json!({"iss": ISSUER, "aud": [AUDIENCE, "x"], "exp": NOW + 60, "client_id": "c", "scope": ["reports"]}),
        ),
        k.sign_jwt(&header("unknown"), &claims("read")),
        k.sign_jwt(&json!({"alg": "RS256", "kid": k.kid}), &claims("read")),
        k.sign_jwt(
            &header(&k.kid),
            &json!({"iss": ISSUER, "aud": AUDIENCE, "exp": NOW - 3600, "client_id": "c"}),
        ),
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode("{}")
        ),
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
        let verify =
            |token: &str| with_engine(|e| jwt::verify(token, &e.config().inline_keys, &rules(e.config()), NOW).is_ok());
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
