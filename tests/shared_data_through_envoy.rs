//! Another plugin in the filter's VM id (`vm_id` as the template sets it,
//! and none at all, as Istio leaves it) writes a key set of its own and a
//! cached answer that vouches for a made-up reference token into Envoy's
//! shared data, under the names the filter used before its values were
//! authenticated and under the names it uses now. The filter must not take
//! either: the attacker's JWT and its reference token get 401, and the
//! refused values are counted (`shared_data_refused`).
//!
//! The names and encodings are computed here independently of the filter's
//! code, from what a reader of the filter's source could know: everything
//! but the secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use erp_devstack::envoy::repo_root;
use erp_devstack::stack::{Stack, StackOptions};
use erp_devstack::tokens::{self, SigningKey};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn hex6(bytes: &[u8]) -> String {
    bytes[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// `erp_edge_validator.<first 12 hex digits of SHA-256(cluster|authority|path|extra)>`.
fn namespace(cluster: &str, authority: &str, path: &str, extra: &str) -> String {
    format!(
        "erp_edge_validator.{}",
        hex6(&Sha256::digest(format!("{cluster}|{authority}|{path}|{extra}")))
    )
}

/// The suffix authenticated names carry, from the configuration's secret
/// (which the attacker does not have; the test does, to aim at the names).
fn key_id(secret: &str) -> String {
    let mut derive = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    derive.update(b"erp-edge-validator shared data v1");
    let key = derive.finalize().into_bytes();
    let mut id = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    id.update(b"key id");
    hex6(&id.finalize().into_bytes())
}

/// The writes of the hostile plugin: under each name, the filter's
/// encoding, and under the authenticated names also a tag that is not one.
/// The names of before are written again and again (the filter that read
/// them took what it found); the authenticated names once, at start (a
/// writer that overwrites them without end denies service, which shared
/// data cannot prevent, but forges nothing).
fn forged_writes(config: &Value, attacker: &SigningKey, reference: &str, now: u64) -> Vec<(String, Vec<u8>, bool)> {
    let remote = &config["remote_jwks"];
    let jwks = namespace(
        remote["cluster"].as_str().unwrap(),
        remote["authority"].as_str().unwrap(),
        remote["path"].as_str().unwrap(),
        "",
    ) + ".jwks";
    let mut set = (1u64 << 40).to_be_bytes().to_vec();
    set.extend_from_slice(&[0; 32]);
    set.extend_from_slice(json!({"keys": [attacker.jwk()]}).to_string().as_bytes());

    let i = &config["introspection"];
    let decides = format!(
        "{}|{:?}|{:?}|{}|{}|{}|[]",
        i["client_id"].as_str().unwrap(),
        [config["audiences"][0].as_str().unwrap()],
        [config["issuers"][0].as_str().unwrap()],
        i["cache_max_ttl_seconds"],
        i["negative_cache_ttl_seconds"],
        i["cache_max_entries"],
    );
    let hash = Sha256::digest(reference.as_bytes());
    let slot =
        u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) % i["cache_max_entries"].as_u64().unwrap() as u32;
    let entry = namespace(
        i["cluster"].as_str().unwrap(),
        i["authority"].as_str().unwrap(),
        i["path"].as_str().unwrap(),
        &decides,
    ) + &format!(".ref.{slot}");
    let principal = json!({
        "kind": "reference-user", "client_id": "attacker", "subject": "admin",
        "client_db": null, "system_user": null, "scopes": ["read", "update"],
        "expires_at": now + 3600, "claims": [],
    });
    let mut answer = vec![1u8];
    answer.extend_from_slice(&hash);
    answer.extend_from_slice(&(now + 3600).to_be_bytes());
    answer.push(1);
    answer.extend_from_slice(principal.to_string().as_bytes());

    let id = key_id(i["client_secret"].as_str().unwrap());
    let untagged = |v: &[u8]| {
        let mut v = v.to_vec();
        v.extend_from_slice(&Sha256::digest(b"not the tag"));
        v
    };
    vec![
        (jwks.clone(), set.clone(), true),
        (format!("{jwks}.{id}"), untagged(&set), false),
        (entry.clone(), answer.clone(), true),
        (format!("{entry}.{id}"), untagged(&answer), false),
    ]
}

#[test]
fn a_key_set_and_an_answer_planted_by_another_plugin_in_the_vm_are_refused_and_counted() {
    let writer = repo_root().join("target/wasm32-unknown-unknown/release/shared_data_writer.wasm");
    assert!(writer.exists(), "{} (make build)", writer.display());
    let attacker = SigningKey::generate("planted-key", 2048).unwrap();
    let reference = format!("enrt_{}", tokens::random_hex(32));
    let now = tokens::now();
    let config = erp_devstack::stack::filter_config(None).unwrap();
    let writes: Vec<Value> = forged_writes(&config, &attacker, &reference, now)
        .into_iter()
        .map(|(k, v, repeat)| json!([k, STANDARD.encode(v), repeat]))
        .collect();
    for vm_id in [Some(""), None] {
        let stack = Stack::start(StackOptions {
            vm_id: vm_id.map(str::to_owned),
            neighbour_plugin: Some((writer.clone(), json!({"writes": writes, "every_ms": 50}))),
            ..StackOptions::default()
        })
        .unwrap_or_else(|e| {
            let e = e.to_string();
            panic!("vm_id {vm_id:?}: {}", &e[e.len().saturating_sub(3000)..])
        });
        // Every worker has ticked over the planted values.
        std::thread::sleep(Duration::from_millis(600));
        let forged = tokens::sign(
            &tokens::header("planted-key"),
            &tokens::claims(now, &["read"]),
            &attacker,
        );
        assert_eq!(forged.split('.').count(), 3);
        let r = stack.get(CUSTOMERS, &[("authorization", &bearer(&forged))]);
        assert_rejected(&r, 401, "invalid_token");
        let r = stack.get(CUSTOMERS, &[("x-api-key", &reference)]);
        assert_rejected(&r, 401, "invalid_token");
        assert_eq!(
            stack.echo.count(),
            0,
            "vm_id {vm_id:?}: a planted credential reached the upstream"
        );
        let refused = stack.envoy.filter_stat("shared_data_refused").unwrap_or(0);
        assert!(refused > 0, "vm_id {vm_id:?}: nothing was counted");
        // The real credentials still work.
        let jwt = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
        assert_eq!(
            stack.get(CUSTOMERS, &[("authorization", &jwt)]).status,
            200,
            "vm_id {vm_id:?}"
        );
        let pat = stack
            .idp
            .issue_reference(erp_devstack::idp::ReferenceKind::Pat, &["read"], 600);
        assert_eq!(
            stack.get(CUSTOMERS, &[("x-api-key", &pat)]).status,
            200,
            "vm_id {vm_id:?}"
        );
    }
}
