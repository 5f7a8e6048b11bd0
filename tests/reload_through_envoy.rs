//! The VM crashes and Envoy brings it back (`failure_policy: FAIL_RELOAD`,
//! as shipped). The filter has no way to crash on its own, so this uses a
//! test build (`--features chaos-trap`, in `target/chaos/`) that aborts on a
//! request carrying `x-chaos-trap`. The crashing request must not reach the
//! upstream; afterwards a new VM answers as before: keys, cached answers,
//! refusals, all within a second or two, and nothing unauthenticated passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use erp_devstack::envoy::{self, EnvoyOptions};
use erp_devstack::idp::ReferenceKind;
use erp_devstack::stack::{Stack, StackOptions};
use erp_devstack::tokens;

fn chaos_wasm() -> PathBuf {
    envoy::repo_root().join("target/chaos/wasm32-unknown-unknown/release/erp_edge_validator.wasm")
}

#[test]
fn a_crashed_vm_is_reloaded_and_answers_as_before() {
    // This test binary runs this one Envoy test; the variable names the
    // module the stack loads.
    std::env::set_var("ERP_EDGE_WASM", chaos_wasm());
    let stack = Stack::start(StackOptions {
        envoy: EnvoyOptions {
            concurrency: 2,
            ..EnvoyOptions::default()
        },
        ..StackOptions::default()
    })
    .unwrap();
    let jwt = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
    let pat = bearer(&stack.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600));
    assert_eq!(stack.get(CUSTOMERS, &[("authorization", &jwt)]).status, 200);
    assert_eq!(stack.get(CUSTOMERS, &[("authorization", &pat)]).status, 200);
    let created = || {
        stack
            .envoy
            .stat("wasm.envoy.wasm.runtime.v8.created")
            .expect("the VM counter")
    };
    let before = created();
    stack.echo.clear();
    for round in 0..3 {
        // A valid credential, so only the crash can stop it.
        let crash = stack.get(
            CUSTOMERS,
            &[("authorization", &jwt), ("x-chaos-trap", "1"), ("x-case", "crash")],
        );
        assert_ne!(crash.status, 200, "round {round}: the crashing request passed");
        assert_eq!(
            stack.echo.count(),
            0,
            "round {round}: the crashing request reached the upstream"
        );
        // Until a new VM serves on the crashed worker, its requests are
        // refused 503 (fail closed); every other answer is the right one.
        // Within a few seconds every answer is right again.
        let bad = bearer(&tokens::flip_signature_byte(&stack.idp.access_token(&["read"])));
        let cases: [(&str, Option<&str>, u16); 4] = [
            ("good", Some(&jwt), 200),
            ("good", Some(&pat), 200),
            ("bad", Some(&bad), 401),
            ("none", None, 401),
        ];
        let crashed = Instant::now();
        let mut right_in_a_row = 0;
        while right_in_a_row < 16 {
            assert!(
                crashed.elapsed() < Duration::from_secs(10),
                "round {round}: not recovered in 10 s"
            );
            let (case, credential, expected) = cases[right_in_a_row % 4];
            let mut headers = vec![("x-case", case)];
            if let Some(credential) = credential {
                headers.push(("authorization", credential));
            }
            let status = stack.get(CUSTOMERS, &headers).status;
            if status == expected {
                right_in_a_row += 1;
            } else {
                assert_eq!(status, 503, "round {round}: case {case} got {status}");
                right_in_a_row = 0;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        println!("round {round}: every answer right again after {:?}", crashed.elapsed());
        // What reached the upstream this round carried a good credential.
        for request in stack.echo.take() {
            assert_eq!(request.header("x-case"), Some("good"), "round {round}: {request:?}");
        }
    }
    assert!(
        created() >= before + 3,
        "the VM was not recreated: {before} -> {}",
        created()
    );
    assert_not_leaked(&stack, &jwt);
}
