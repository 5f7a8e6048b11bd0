//! `erp-edge-validator explain` and real Envoy agree: the same requests
//! (every credential placement, each kind of invalid token, each scope
//! outcome, public and unmatched routes, reference tokens active, inactive
//! and malformed) get the same status and `WWW-Authenticate` from both.
//! `explain` is given the configuration Envoy runs, the key set the
//! emulator publishes and, for `enrt_` tokens, the answer the emulator's
//! introspection endpoint gives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use erp_devstack::client;
use erp_devstack::idp::{ReferenceKind, INTROSPECTION_CLIENT, INTROSPECTION_SECRET};
use erp_devstack::stack::{self, IdentityCertificate, Stack, StackOptions};
use erp_devstack::tokens::{self, SigningKey};
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
}

fn case(name: &'static str, method: &'static str, path: &'static str, headers: &[(&'static str, &str)]) -> Case {
    Case {
        name,
        method,
        path,
        headers: headers.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
    }
}

/// The emulator's answer for a token, as Envoy's callout gets it.
fn introspect(stack: &Stack, token: &str) -> Value {
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{INTROSPECTION_CLIENT}:{INTROSPECTION_SECRET}"));
    let body = format!("token={token}");
    client::request(
        stack.idp.addr(),
        "POST",
        "/id/connect/introspect",
        &[
            ("authorization", &format!("Basic {basic}")),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    )
    .unwrap()
    .json()
}

fn temp(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("erp-agree-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn explain_gives_the_status_and_challenge_envoy_gives() {
    let stack = Stack::start(StackOptions {
        identity_certificate: IdentityCertificate::Plaintext,
        ..StackOptions::default()
    })
    .unwrap();
    let idp = &stack.idp;
    let now = tokens::now();
    let sign = |patch: &dyn Fn(&mut Value, &mut Value)| {
        let key = idp.signing_key();
        let mut header = tokens::header(&key.kid);
        let mut claims = tokens::claims(now, &["DomainApi", "read"]);
        patch(&mut header, &mut claims);
        tokens::sign(&header, &claims, &key)
    };
    let read = idp.access_token(&["DomainApi", "read"]);
    let update = idp.access_token(&["DomainApi", "read", "update"]);
    let bearer = |t: &str| format!("Bearer {t}");
    let stranger = SigningKey::generate("stranger", 2048).unwrap();
    let pat = idp.issue_reference(ReferenceKind::Pat, &["read"], 3600);
    let sat = idp.issue_reference(ReferenceKind::Sat, &["read", "update"], 3600);
    let revoked = idp.issue_reference(ReferenceKind::Pat, &["read"], 3600);
    idp.revoke(&revoked);
    let table_pat = idp.issue_reference_for(ReferenceKind::Pat, &["read"], 3600, &["TableAPI"]);
    let unknown = format!("enrt_{}", tokens::random_hex(32));
    let c = "/api/domain/odata/Customers?$top=10";
    let cases = vec![
        case("jwt read GET", "GET", c, &[("authorization", &bearer(&read))]),
        case("jwt read HEAD", "HEAD", c, &[("authorization", &bearer(&read))]),
        case("jwt in x-api-key", "GET", c, &[("x-api-key", &read)]),
        case("jwt in api-key", "GET", c, &[("api-key", &read)]),
        case(
            "lower-case scheme",
            "GET",
            c,
            &[("authorization", &format!("bearer {read}"))],
        ),
        case("read may not POST", "POST", c, &[("authorization", &bearer(&read))]),
        case("read may not DELETE", "DELETE", c, &[("authorization", &bearer(&read))]),
        case("update may POST", "POST", c, &[("authorization", &bearer(&update))]),
        case("update may PUT", "PUT", c, &[("authorization", &bearer(&update))]),
        case("update may PATCH", "PATCH", c, &[("authorization", &bearer(&update))]),
        case("update may MERGE", "MERGE", c, &[("authorization", &bearer(&update))]),
        case("update may DELETE", "DELETE", c, &[("authorization", &bearer(&update))]),
        case(
            "expired",
            "GET",
            c,
            &[("authorization", &bearer(&sign(&|_, c| c["exp"] = json!(now - 3600))))],
        ),
        case(
            "not yet valid",
            "GET",
            c,
            &[("authorization", &bearer(&sign(&|_, c| c["nbf"] = json!(now + 3600))))],
        ),
        case(
            "no exp",
            "GET",
            c,
            &[(
                "authorization",
                &bearer(&sign(&|_, c| {
                    c.as_object_mut().unwrap().remove("exp");
                })),
            )],
        ),
        case(
            "other issuer",
            "GET",
            c,
            &[(
                "authorization",
                &bearer(&sign(&|_, c| c["iss"] = json!("https://evil.example/id"))),
            )],
        ),
        case(
            "other audience",
            "GET",
            c,
            &[("authorization", &bearer(&sign(&|_, c| c["aud"] = json!("TableAPI"))))],
        ),
        case(
            "typ JWT",
            "GET",
            c,
            &[("authorization", &bearer(&sign(&|h, _| h["typ"] = json!("JWT"))))],
        ),
        case(
            "no kid",
            "GET",
            c,
            &[(
                "authorization",
                &bearer(&sign(&|h, _| {
                    h.as_object_mut().unwrap().remove("kid");
                })),
            )],
        ),
        case(
            "crit header",
            "GET",
            c,
            &[("authorization", &bearer(&sign(&|h, _| h["crit"] = json!(["exp"]))))],
        ),
        case(
            "scope with a quote",
            "GET",
            c,
            &[(
                "authorization",
                &bearer(&sign(&|_, c| c["scope"] = json!(["read", "a\"b"]))),
            )],
        ),
        case(
            "bad signature",
            "GET",
            c,
            &[("authorization", &bearer(&tokens::flip_signature_byte(&read)))],
        ),
        case(
            "unknown kid",
            "GET",
            c,
            &[(
                "authorization",
                &bearer(&tokens::sign(
                    &tokens::header("stranger"),
                    &tokens::claims(now, &["read"]),
                    &stranger,
                )),
            )],
        ),
        case(
            "stranger's key, known kid",
            "GET",
            c,
            &[(
                "authorization",
                &bearer(&tokens::sign(
                    &tokens::header(&idp.signing_key().kid),
                    &tokens::claims(now, &["read"]),
                    &stranger,
                )),
            )],
        ),
        case(
            "alg none",
            "GET",
            c,
            &[(
                "authorization",
                &bearer(&tokens::unsigned(
                    &json!({"alg": "none", "typ": "at+jwt", "kid": idp.signing_key().kid}),
                    &tokens::claims(now, &["read"]),
                )),
            )],
        ),
        case(
            "HS256 with the public key",
            "GET",
            c,
            &[(
                "authorization",
                &bearer(
                    &tokens::sign_hs256(
                        &json!({"alg": "HS256", "typ": "at+jwt", "kid": idp.signing_key().kid}),
                        &tokens::claims(now, &["read"]),
                        idp.signing_key().public_pem().unwrap().as_bytes(),
                    )
                    .unwrap(),
                ),
            )],
        ),
        case("not a JWT", "GET", c, &[("authorization", "Bearer abc.def")]),
        case(
            "characters no token has",
            "GET",
            c,
            &[("authorization", "Bearer abc!def")],
        ),
        case("empty bearer", "GET", c, &[("authorization", "Bearer ")]),
        case("Basic scheme", "GET", c, &[("authorization", "Basic dXNlcjpwYXNz")]),
        case(
            "two credentials",
            "GET",
            c,
            &[("authorization", &bearer(&read)), ("x-api-key", &read)],
        ),
        case("two api keys", "GET", c, &[("x-api-key", &read), ("api-key", &read)]),
        case(
            "comma-joined",
            "GET",
            c,
            &[("authorization", &format!("{}, {}", bearer(&read), bearer(&read)))],
        ),
        case("too large", "GET", c, &[("authorization", &bearer(&"a".repeat(9000)))]),
        case("no credential", "GET", c, &[]),
        case(
            "method override",
            "GET",
            c,
            &[("authorization", &bearer(&read)), ("x-http-method-override", "DELETE")],
        ),
        case(
            "forged identity header",
            "GET",
            c,
            &[("authorization", &bearer(&read)), ("x-erp-client-id", "admin")],
        ),
        case("public health check", "GET", "/healthz", &[]),
        case(
            "health check with a bad token",
            "GET",
            "/healthz",
            &[("authorization", "Bearer junk")],
        ),
        case("health check by POST", "POST", "/healthz", &[]),
        case("unmatched path", "GET", "/other", &[("authorization", &bearer(&read))]),
        case(
            "another case",
            "GET",
            "/API/domain/x",
            &[("authorization", &bearer(&read))],
        ),
        case("pat GET", "GET", c, &[("authorization", &bearer(&pat))]),
        case("pat in x-api-key", "GET", c, &[("x-api-key", &pat)]),
        case("pat may not POST", "POST", c, &[("authorization", &bearer(&pat))]),
        case("sat POST", "POST", c, &[("api-key", &sat)]),
        case("revoked pat", "GET", c, &[("authorization", &bearer(&revoked))]),
        case(
            "pat for another API",
            "GET",
            c,
            &[("authorization", &bearer(&table_pat))],
        ),
        case("unknown enrt_", "GET", c, &[("authorization", &bearer(&unknown))]),
        case("malformed enrt_", "GET", c, &[("authorization", "Bearer enrt_1234")]),
    ];
    assert!(cases.len() >= 40);
    let config = temp("config.json", &stack::filter_config(None).unwrap().to_string());
    let jwks = temp("jwks.json", &idp.jwks().to_string());
    let mut disagreements = Vec::new();
    for case in &cases {
        let headers: Vec<(&str, &str)> = case.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let envoy = stack.request(case.method, case.path, &headers);
        assert_ne!(envoy.status, 0, "{}: {}", case.name, envoy.text());
        let mut command = Command::new(env!("CARGO_BIN_EXE_erp-edge-validator"));
        command
            .arg("explain")
            .arg("--config")
            .arg(&config)
            .arg("--jwks")
            .arg(&jwks)
            .arg("--now")
            .arg(tokens::now().to_string())
            .arg("--json");
        for (name, value) in &case.headers {
            command.arg("-H").arg(format!("{name}: {value}"));
        }
        let token = case.headers.iter().find_map(|(_, v)| {
            let t = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v);
            t.starts_with("enrt_").then(|| t.to_owned())
        });
        if let Some(token) = token.filter(|t| t.len() == 69) {
            command
                .arg("--introspection-answer")
                .arg(temp("answer.json", &introspect(&stack, &token).to_string()));
        }
        let output = command.arg(case.method).arg(case.path).output().unwrap();
        let explained: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("{}: {}", case.name, String::from_utf8_lossy(&output.stderr)));
        let expected_exit = if envoy.status == 200 { 0 } else { 1 };
        assert_eq!(output.status.code(), Some(expected_exit), "{}: exit status", case.name);
        let envoy_challenge = envoy.header("www-authenticate").map(str::to_owned);
        let ours = (
            explained["status"].as_u64(),
            explained["www_authenticate"].as_str().map(str::to_owned),
        );
        if ours != (Some(u64::from(envoy.status)), envoy_challenge.clone()) {
            disagreements.push(format!(
                "{}: Envoy {} {:?}, explain {:?} {:?}",
                case.name, envoy.status, envoy_challenge, ours.0, ours.1
            ));
        }
    }
    for file in [config, jwks] {
        let _ = std::fs::remove_file(file);
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} disagree:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
    // Both saw the statuses the cases are about, not one status for all.
    let statuses: std::collections::BTreeSet<u16> = cases
        .iter()
        .map(|case| {
            let headers: Vec<(&str, &str)> = case.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            stack.request(case.method, case.path, &headers).status
        })
        .collect();
    assert_eq!(statuses, [200, 400, 401, 403].into_iter().collect(), "{statuses:?}");
}
