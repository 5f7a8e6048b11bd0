//! Shared helpers for the integration tests: start a stack, send requests,
//! assert RFC 6750 answers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use erp_devstack::client::Response;
use erp_devstack::stack::{Stack, StackOptions};
use serde_json::Value;

pub const CUSTOMERS: &str = "/api/domain/odata/Customers?$top=10";

pub use erp_devstack::envoy::Host;

/// The host these suites run against (`ERP_EDGE_HOST`).
pub fn host() -> Host {
    Host::current().expect("ERP_EDGE_HOST")
}

/// A stack with the shipped configuration.
pub fn stack() -> Stack {
    Stack::start(StackOptions::default()).expect("stack starts")
}

/// A stack with a merge patch over the shipped filter configuration.
pub fn stack_with(patch: Value) -> Stack {
    Stack::start(StackOptions {
        filter_config: Some(patch),
        ..StackOptions::default()
    })
    .expect("stack starts")
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Asserts an RFC 6750 rejection: status, `error=` in the challenge and in
/// the JSON body.
pub fn assert_rejected(r: &Response, status: u16, error: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer realm=\""), "challenge: {challenge}");
    assert!(
        challenge.contains(&format!("error=\"{error}\"")),
        "challenge: {challenge}"
    );
    assert_eq!(r.json()["error"], error, "body: {}", r.text());
}

/// The headers the upstream saw on its last request, as an object.
pub fn upstream_headers(r: &Response) -> Value {
    assert_eq!(r.status, 200, "body: {}", r.text());
    r.json()["headers"].clone()
}

/// Fails if the token, or anything shaped like a token, appears in Envoy's
/// log (the filter logs at debug level in every test).
pub fn assert_not_leaked(stack: &Stack, secret: &str) {
    let log = stack.envoy.log();
    assert!(!log.contains(secret), "a token appears in Envoy's log");
    assert!(!log.contains("enrt_"), "a reference token appears in Envoy's log");
    assert!(!log.contains("eyJ"), "a JWT appears in Envoy's log");
}

/// The files in a gzipped tar layer (an OCI image's): (path without a
/// leading `./`, bytes), directories left out.
pub fn layer_files_of(gz: &[u8]) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let mut files = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_dir() {
            continue;
        }
        let path = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        files.push((path, bytes));
    }
    files
}
