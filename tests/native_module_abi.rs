//! The native dynamic module against the Envoy binary it is built for
//! (whatever `ERP_EDGE_HOST` says, these run the native module): every
//! callback it imports is one the binary exports, every hook it exports is
//! one the binary knows, Envoy logs its ABI version as matched, and a panic
//! inside the module is caught and refused, not a crash.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use erp_devstack::envoy::{envoy_bin, native_dir, repo_root, EnvoyOptions, NATIVE_MODULE};
use erp_devstack::stack::{Stack, StackOptions};
use erp_edge_validator_native::ffi::{ABI_VERSION, IMPORTED};

fn module(dir: &Path) -> PathBuf {
    dir.join(format!("lib{NATIVE_MODULE}.so"))
}

/// The dynamic symbols of an ELF file, defined or undefined (`nm -D`).
fn dynamic_symbols(path: &Path, defined: bool) -> BTreeSet<String> {
    let which = if defined { "--defined-only" } else { "--undefined-only" };
    let out = Command::new("nm")
        .args(["-D", which])
        .arg(path)
        .output()
        .expect("nm (binutils)");
    assert!(
        out.status.success(),
        "nm {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|s| s.split('@').next().unwrap_or(s).to_owned())
        .collect()
}

/// The Envoy binary itself (the venv's `envoy` may be a launcher script).
fn envoy_elf() -> PathBuf {
    let venv = repo_root().join(".venv/lib");
    let found = std::fs::read_dir(&venv).ok().and_then(|pythons| {
        pythons
            .flatten()
            .map(|p| p.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(envoy_bin)
}

#[test]
fn every_callback_the_module_imports_is_exported_by_the_pinned_envoy() {
    let module = module(&native_dir());
    let imported: BTreeSet<String> = dynamic_symbols(&module, false)
        .into_iter()
        .filter(|s| s.starts_with("envoy_"))
        .collect();
    let declared: BTreeSet<String> = IMPORTED.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(imported, declared, "the module's imports and ffi::IMPORTED differ");
    let envoy = dynamic_symbols(&envoy_elf(), true);
    let missing: Vec<&String> = imported.iter().filter(|s| !envoy.contains(*s)).collect();
    assert!(missing.is_empty(), "the Envoy binary does not export {missing:?}");
    println!(
        "{} callbacks imported, all exported by {}",
        imported.len(),
        envoy_elf().display()
    );
}

#[test]
fn every_hook_the_module_exports_is_one_envoy_knows() {
    let hooks: Vec<String> = dynamic_symbols(&module(&native_dir()), true)
        .into_iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_on_"))
        .collect();
    assert!(hooks.len() >= 25, "{hooks:?}");
    // Envoy looks its hooks up by name: each name is in the binary.
    let binary = std::fs::read(envoy_elf()).unwrap();
    for hook in &hooks {
        assert!(
            binary.windows(hook.len()).any(|w| w == hook.as_bytes()),
            "Envoy never looks up {hook}"
        );
    }
}

#[test]
fn envoy_loads_the_module_and_logs_its_abi_version_as_matched() {
    let stack = Stack::start(StackOptions {
        host: Some(Host::Native),
        envoy: EnvoyOptions {
            log_level: "debug".into(),
            ..EnvoyOptions::default()
        },
        ..StackOptions::default()
    })
    .unwrap();
    let auth = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
    assert_eq!(stack.get(CUSTOMERS, &[("authorization", &auth)]).status, 200);
    let log = stack.envoy.log();
    assert!(
        log.contains(&format!("Dynamic module ABI version {ABI_VERSION} matched")),
        "no ABI match line in Envoy's log"
    );
    for mismatch in ["is deprecated", "ABI version mismatch"] {
        assert!(!log.contains(mismatch), "Envoy logged `{mismatch}` for the module");
    }
    assert!(log.contains("configured (native host)"));
}

#[test]
fn a_panic_inside_the_module_refuses_that_request_and_the_filter_keeps_serving() {
    let chaos = repo_root().join("target/native-chaos/debug");
    assert!(module(&chaos).exists(), "run `make build` first");
    let stack = Stack::start(StackOptions {
        host: Some(Host::Native),
        envoy: EnvoyOptions {
            native_dir: Some(chaos),
            concurrency: 2,
            ..EnvoyOptions::default()
        },
        ..StackOptions::default()
    })
    .unwrap();
    let auth = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
    for round in 0..3 {
        let r = stack.get(CUSTOMERS, &[("authorization", &auth), ("x-chaos-panic", "1")]);
        assert_eq!(r.status, 503, "round {round}: {}", r.text());
        // The worker was locked when it panicked: it still decides.
        assert_eq!(
            stack.get(CUSTOMERS, &[("authorization", &auth)]).status,
            200,
            "round {round}"
        );
        assert_eq!(stack.get(CUSTOMERS, &[]).status, 401, "round {round}");
    }
    assert_eq!(stack.echo.count(), 3, "only the allowed requests reached the upstream");
    assert!(stack.envoy.pid().is_some());
    assert!(stack.envoy.log().contains("request headers panicked; refused"));
}
