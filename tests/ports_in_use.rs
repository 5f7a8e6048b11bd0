//! `make run` on a machine where one of its ports is taken stops with a
//! message that names the address and the variable that moves it, for each
//! of the four services it starts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use erp_devstack::envoy::repo_root;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `erp-devstack run` (what `make run` runs) with `taken` held and the
/// other ports free; returns its stderr once it exits.
fn run_with_taken(taken: &str) -> String {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let mut command = Command::new(repo_root().join("target/debug/erp-devstack"));
    command
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for var in ["IDP_PORT", "ECHO_PORT", "ENVOY_PORT", "ENVOY_ADMIN_PORT"] {
        let value = if var == taken { port } else { free_port() };
        command.env(var, value.to_string());
    }
    let mut child = command.spawn().expect("target/debug/erp-devstack (make build)");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`erp-devstack run` still runs with {taken} taken");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{taken}: {stderr}");
    assert!(stderr.contains(taken), "{taken}: {stderr}");
    drop(holder);
    stderr
}

#[test]
fn a_taken_identity_port_names_its_address_and_idp_port() {
    let message = run_with_taken("IDP_PORT");
    assert!(message.contains("identity service emulator"), "{message}");
}

#[test]
fn a_taken_echo_port_names_its_address_and_echo_port() {
    let message = run_with_taken("ECHO_PORT");
    assert!(message.contains("echo upstream"), "{message}");
}

#[test]
fn a_taken_envoy_port_names_its_address_and_envoy_port() {
    let message = run_with_taken("ENVOY_PORT");
    assert!(message.contains("Envoy's listener"), "{message}");
}

#[test]
fn a_taken_admin_port_names_its_address_and_envoy_admin_port() {
    let message = run_with_taken("ENVOY_ADMIN_PORT");
    assert!(message.contains("admin"), "{message}");
}
