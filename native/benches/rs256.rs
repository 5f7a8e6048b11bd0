//! `cargo bench -p erp-edge-validator-native`: what the native host's core
//! work costs, without Envoy: a cached JWT, a fresh JWT with the shipped
//! verifier (IFMA for RSA-2048 where the CPU has it), with AWS-LC alone and
//! with the core's own RS256 verifier (written for wasm); then one
//! verification each way, AWS-LC also parsing its key every time.
//! docs/native.md quotes it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use erp_devstack::tokens::{self, SigningKey};
use erp_edge_validator::hosting::{Config, MemoryStore, Now, RequestHead, RsaHost, Worker};
use erp_edge_validator::jwt::algorithm::Algorithm;
use erp_edge_validator::jwt::jwks::KeySet;
use erp_edge_validator_native::rsa::NativeRsa;

const PATH: &str = "/api/domain/odata/Customers";

fn worker(key: &SigningKey, rsa: Option<Box<dyn RsaHost>>) -> Worker {
    let mut config = erp_devstack::envoy::shipped_filter_config().unwrap();
    let patch = serde_json::json!({"jwks": tokens::jwks([key]), "remote_jwks": null, "access_log_fields": false});
    erp_devstack::envoy::merge(&mut config, &patch);
    Worker::new(Config::from_json(config.to_string().as_bytes()).unwrap(), rsa).trusting_the_store()
}

/// µs per request of `worker` deciding each `Authorization` value once.
fn per_request(worker: &mut Worker, authorizations: &[String], now: Now) -> f64 {
    let store = MemoryStore::default();
    let start = Instant::now();
    for (i, authorization) in authorizations.iter().enumerate() {
        let headers = [
            (":method", "GET"),
            (":path", PATH),
            ("authorization", authorization.as_str()),
        ];
        let head = RequestHead::of(&headers, false);
        std::hint::black_box(worker.request(i as u32, &head, Some(now), &store));
    }
    start.elapsed().as_secs_f64() * 1e6 / authorizations.len() as f64
}

fn main() {
    let key = SigningKey::generate("k1", 2048).unwrap();
    let now_s = tokens::now();
    let now = Now::from_ms(now_s * 1000);
    let claims = tokens::claims(now_s, &["DomainApi", "read"]);
    let mut native = worker(&key, Some(Box::new(NativeRsa::default())));
    let mut aws_lc = worker(&key, Some(Box::new(NativeRsa::aws_lc_only())));

    let one = format!("Bearer {}", tokens::sign(&tokens::header("k1"), &claims, &key));
    per_request(&mut native, &vec![one.clone(); 1000], now);
    let cached = per_request(&mut native, &vec![one; 200_000], now);
    println!("a cached JWT: {cached:.3} µs a request");

    let fresh: Vec<String> = (0..2000)
        .map(|i| {
            let mut c = claims.clone();
            c["jti"] = serde_json::json!(format!("j{i}"));
            format!("Bearer {}", tokens::sign(&tokens::header("k1"), &c, &key))
        })
        .collect();
    println!(
        "a fresh JWT, shipped verifier: {:.3} µs a request",
        per_request(&mut native, &fresh, now)
    );
    println!(
        "a fresh JWT, AWS-LC: {:.3} µs a request",
        per_request(&mut aws_lc, &fresh, now)
    );
    let mut own = worker(&key, None);
    println!(
        "a fresh JWT, the core's own verifier: {:.3} µs a request",
        per_request(&mut own, &fresh, now)
    );

    let signature = key.sign_as("RS256", b"abc").unwrap();
    let set = KeySet::from_value(&serde_json::json!({"keys": [key.jwk()]}), &[Algorithm::Rs256]).unwrap();
    let spki = set.get("k1").unwrap().spki.clone().unwrap();
    let timed = |what: &str, rsa: &NativeRsa| {
        rsa.verify_pkcs1_sha256(&spki, b"abc", &signature);
        let start = Instant::now();
        for _ in 0..20_000 {
            std::hint::black_box(rsa.verify_pkcs1_sha256(&spki, b"abc", std::hint::black_box(&signature)));
        }
        println!(
            "one verification, {what}: {:.3} µs",
            start.elapsed().as_secs_f64() * 1e6 / 20_000.0
        );
    };
    timed("shipped verifier", &NativeRsa::default());
    timed("AWS-LC", &NativeRsa::aws_lc_only());
    let every_time = |what: &str, rsa: fn() -> NativeRsa| {
        let start = Instant::now();
        for _ in 0..2000 {
            std::hint::black_box(rsa().verify_pkcs1_sha256(&spki, b"abc", &signature));
        }
        println!(
            "one verification, {what}, key prepared every time: {:.3} µs",
            start.elapsed().as_secs_f64() * 1e6 / 2000.0
        );
    };
    every_time("shipped verifier", NativeRsa::default);
    every_time("AWS-LC", NativeRsa::aws_lc_only);
}
