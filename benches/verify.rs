//! `cargo bench`: native micro-benchmarks of the verifier and of whole
//! decisions, for spotting regressions (the throughput verdict is
//! `make bench`, through Envoy). A plain harness: each case runs for about
//! a second and prints the median of five timed batches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use erp_devstack::tokens::{self, SigningKey};
use erp_edge_validator::config::Config;
use erp_edge_validator::decision::verified_cache::Remembered;
use erp_edge_validator::decision::{Engine, RequestHead, Step, Verdict};
use erp_edge_validator::jwt;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use serde_json::json;

fn bench(name: &str, mut f: impl FnMut()) {
    // Calibrate a batch to ~200 ms.
    let mut n = 1u64;
    loop {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        if start.elapsed() > Duration::from_millis(200) {
            break;
        }
        n *= 2;
    }
    let mut per_iter: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    per_iter.sort_by(|a, b| a.total_cmp(b));
    let median = per_iter[2];
    let (value, unit) = if median > 10_000.0 {
        (median / 1000.0, "µs")
    } else {
        (median, "ns")
    };
    println!("{name:<58} {value:>10.2} {unit}/iter");
}

fn main() {
    let key = SigningKey::generate("bench", 2048).unwrap_or_else(|e| panic!("{e}"));
    let now = tokens::now();
    let config = Config::from_json(
        json!({
            "issuers": [tokens::ISSUER],
            "audiences": ["DomainAPI"],
            "jwks": tokens::jwks([&key]),
            "routes": [{"prefix": "/api/domain/", "all_of": ["read"]}],
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let engine = Engine::new(config);
    let keys = engine.config().inline_keys.clone();
    let token = tokens::sign(
        &tokens::header("bench"),
        &tokens::claims(now, &["DomainApi", "read"]),
        &key,
    );
    let (input, signature) = token.rsplit_once('.').unwrap_or_default();
    let signature = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap_or_default()
    };
    let digest: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(input.as_bytes()).into()
    };
    let prepared = keys
        .get("bench")
        .and_then(|k| k.fast.clone())
        .unwrap_or_else(|| panic!("no fast key"));
    let public = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&key.modulus()),
        rsa::BigUint::from(65537u32),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let rsa_verifier = VerifyingKey::<sha2::Sha256>::new(public);
    let rsa_signature = Signature::try_from(signature.as_slice()).unwrap_or_else(|e| panic!("{e}"));

    println!("native, one 2048-bit key, a {}-byte token", token.len());
    bench("sha-256 of the signing input", || {
        use sha2::Digest as _;
        black_box(sha2::Sha256::digest(black_box(input.as_bytes())));
    });
    bench("rs256: s^65537 mod n + PKCS#1 check (src/monty.rs)", || {
        assert!(prepared.verify_digest(black_box(&digest), black_box(&signature)));
    });
    bench("rs256: the rsa crate (baseline)", || {
        assert!(rsa_verifier.verify(black_box(input.as_bytes()), &rsa_signature).is_ok());
    });
    bench("jwt::verify (parse, signature, claims)", || {
        let rules = jwt::ClaimRules {
            issuers: &engine.config().issuers,
            audiences: &engine.config().audiences,
            algorithms: &engine.config().algorithms,
            clock_skew_seconds: 60,
            require_at_jwt_typ: true,
        };
        black_box(jwt::verify(black_box(&token), &keys, &rules, now).is_ok());
    });
    let auth = format!("Bearer {token}");
    let headers = [
        (":method", "GET"),
        (":path", "/api/domain/odata/Customers?$top=10"),
        ("authorization", auth.as_str()),
    ];
    let request = RequestHead {
        method: "GET",
        path: "/api/domain/odata/Customers?$top=10",
        headers: &headers,
        has_body: false,
    };
    let mut cache = Remembered::new(10_000, 0);
    bench("decide: cached token (hash, lookup, scopes)", || {
        assert!(matches!(
            engine.decide(&request, &keys, &mut cache, now),
            Step::Done(Verdict::Allow(_))
        ));
    });
    let mut no_cache = Remembered::new(0, 0);
    bench("decide: uncached token (full verification)", || {
        assert!(matches!(
            engine.decide(&request, &keys, &mut no_cache, now),
            Step::Done(Verdict::Allow(_))
        ));
    });
}
