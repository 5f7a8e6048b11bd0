//! `cargo bench -p erp-edge-validator-native`: what the native host's core
//! work costs, without Envoy: a cached JWT, a fresh JWT with AWS-LC and with
//! the core's own RS256 verifier (written for wasm), and one AWS-LC
//! verification that parses its key every time. docs/native.md quotes it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use erp_devstack::tokens::{self, SigningKey};
use erp_edge_validator::hosting::*;
use std::time::Instant;

fn main() {
    let key = SigningKey::generate("k1", 2048).unwrap();
    let mut config = erp_devstack::envoy::shipped_filter_config().unwrap();
    erp_devstack::envoy::merge(
        &mut config,
        &serde_json::json!({"jwks": tokens::jwks([&key]), "remote_jwks": null, "access_log_fields": false}),
    );
    let config = Config::from_json(config.to_string().as_bytes()).unwrap();
    let mut worker = Worker::new(
        config,
        Some(Box::new(erp_edge_validator_native::rsa::NativeRsa::default())),
    )
    .trusting_the_store();
    let store = MemoryStore::default();
    let now_s = tokens::now();
    let claims = tokens::claims(now_s, &["DomainApi", "read"]);
    let token = tokens::sign(&tokens::header("k1"), &claims, &key);
    let auth = format!("Bearer {token}");
    let headers: Vec<(&str, &str)> = vec![
        (":method", "GET"),
        (":path", "/api/domain/odata/Customers"),
        (":authority", "x"),
        ("user-agent", "wrk"),
        ("authorization", &auth),
    ];
    let head = RequestHead {
        method: "GET",
        path: "/api/domain/odata/Customers",
        headers: &headers,
        has_body: false,
    };
    let now = Now::from_ms(now_s * 1000);
    for _ in 0..1000 {
        let _ = worker.request(1, &head, Some(now), &store);
    }
    let n = 200_000;
    let t = Instant::now();
    for i in 0..n {
        let e = worker.request(i, &head, Some(now), &store);
        std::hint::black_box(e);
    }
    println!("cached jwt: {:.3} µs/req", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    let fresh: Vec<String> = (0..2000)
        .map(|i| {
            let mut c = claims.clone();
            c["jti"] = serde_json::json!(format!("j{i}"));
            format!("Bearer {}", tokens::sign(&tokens::header("k1"), &c, &key))
        })
        .collect();
    let t = Instant::now();
    for (i, a) in fresh.iter().enumerate() {
        let headers: Vec<(&str, &str)> = vec![
            (":method", "GET"),
            (":path", "/api/domain/odata/Customers"),
            ("authorization", a),
        ];
        let head = RequestHead {
            method: "GET",
            path: "/api/domain/odata/Customers",
            headers: &headers,
            has_body: false,
        };
        let e = worker.request(i as u32, &head, Some(now), &store);
        std::hint::black_box(e);
    }
    println!(
        "fresh jwt: {:.3} µs/req",
        t.elapsed().as_secs_f64() * 1e6 / fresh.len() as f64
    );
    let config2 = {
        let mut c = erp_devstack::envoy::shipped_filter_config().unwrap();
        erp_devstack::envoy::merge(
            &mut c,
            &serde_json::json!({"jwks": tokens::jwks([&key]), "remote_jwks": null, "access_log_fields": false}),
        );
        Config::from_json(c.to_string().as_bytes()).unwrap()
    };
    let mut own = Worker::new(config2, None).trusting_the_store();
    let t = Instant::now();
    for (i, a) in fresh.iter().enumerate() {
        let headers: Vec<(&str, &str)> = vec![
            (":method", "GET"),
            (":path", "/api/domain/odata/Customers"),
            ("authorization", a),
        ];
        let head = RequestHead {
            method: "GET",
            path: "/api/domain/odata/Customers",
            headers: &headers,
            has_body: false,
        };
        let e = own.request(i as u32, &head, Some(now), &store);
        std::hint::black_box(e);
    }
    println!(
        "fresh jwt, own verifier: {:.3} µs/req",
        t.elapsed().as_secs_f64() * 1e6 / fresh.len() as f64
    );
    let sig = key.sign_as("RS256", b"abc").unwrap();
    let spki = {
        let set = erp_edge_validator::jwt::jwks::KeySet::from_value(
            &serde_json::json!({"keys":[key.jwk()]}),
            &[erp_edge_validator::jwt::algorithm::Algorithm::Rs256],
        )
        .unwrap();
        set.get("k1").unwrap().spki.clone().unwrap()
    };
    let t = Instant::now();
    for _ in 0..2000 {
        std::hint::black_box(
            erp_edge_validator_native::rsa::NativeRsa::default().verify_pkcs1_sha256(&spki, b"abc", &sig),
        );
    }
    println!(
        "AWS-LC verify, key parsed each time: {:.3} µs",
        t.elapsed().as_secs_f64() * 1e6 / 2000.0
    );
}
