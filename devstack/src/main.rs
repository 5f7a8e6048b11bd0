//! `erp-devstack`: run the development stack, or one of its parts.
//!
//! ```text
//! erp-devstack run              identity emulator + echo upstream + Envoy with the filter
//! erp-devstack idp  [ADDR] [--ca-out FILE]
//!                               the identity service emulator alone (default 127.0.0.1:9080):
//!                               HTTPS with a fresh CA written to FILE, or plain HTTP
//!                               (a development setting) without --ca-out
//! erp-devstack echo [ADDR]      the echo upstream alone (default 127.0.0.1:9081)
//! erp-devstack render-compose   print envoy/envoy.compose.yaml, rendered from the template
//! erp-devstack bench            the benchmark behind `make bench` (see bench.rs)
//! ```
//!
//! `run` listens on fixed ports so the printed commands work as pasted:
//! Envoy on `$ENVOY_PORT` (10000), its admin on `$ENVOY_ADMIN_PORT` (9901),
//! the emulator on `$IDP_PORT` (9080), the echo upstream on `$ECHO_PORT` (9081).

use std::net::SocketAddr;
use std::process::ExitCode;

use erp_devstack::echo::Echo;
use erp_devstack::envoy::{self, Envoy, EnvoyOptions, IdentityTls, Placeholders};
use erp_devstack::idp::{self, Idp, ReferenceKind};
use erp_devstack::stack;
use erp_devstack::tls::{Authority, IDENTITY_NAME};
use erp_devstack::tokens::Error;

fn port(var: &str, default: u16) -> Result<u16, Error> {
    match std::env::var(var) {
        Ok(v) => Ok(v.parse().map_err(|_| format!("{var}={v} is not a port"))?),
        Err(_) => Ok(default),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(),
        Some("idp") => serve_idp(
            args.get(1).map_or("127.0.0.1:9080", String::as_str),
            args.iter().position(|a| a == "--ca-out").and_then(|i| args.get(i + 1)),
        ),
        Some("echo") => serve_echo(args.get(1).map_or("127.0.0.1:9081", String::as_str)),
        Some("render-compose") => envoy::render_compose().map(|yaml| print!("{yaml}")),
        Some("bench") => erp_devstack::bench::run(),
        Some("soak") => erp_devstack::soak::run(),
        Some("render-deploy") => erp_devstack::deploy::render().map(|files| {
            for file in files {
                println!("{}", file.display());
            }
        }),
        Some("inspect") => inspect(args.get(1).map_or("127.0.0.1:9090", String::as_str)),
        _ => Err(
            "usage: erp-devstack run | idp [ADDR] | echo [ADDR] | render-compose | bench | soak | inspect [ADDR] | render-deploy"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("erp-devstack: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `make inspect`: the inspector page on loopback, its form filled with
/// the shipped configuration, the emulator's key set and a fresh token.
fn inspect(addr: &str) -> Result<(), Error> {
    let dir = erp_devstack::pages::inspector_dir();
    if !dir.join("inspector_bg.wasm").exists() {
        return Err(format!("{} has no page: run `make inspector`", dir.display()).into());
    }
    let idp = Idp::start("127.0.0.1:0")?;
    let pages = erp_devstack::pages::Pages::start(addr, dir, Some(erp_devstack::pages::prefill(&idp)?))?;
    println!("inspector: http://{}/  (Ctrl-C stops it)", pages.addr());
    println!("the form holds the shipped configuration, the emulator's key set and a token with `read`;");
    println!("everything runs in the page: nothing you paste is sent anywhere.");
    park_forever()
}

fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

fn serve_idp(addr: &str, ca_out: Option<&String>) -> Result<(), Error> {
    let _idp = match ca_out {
        Some(path) => {
            let authority = Authority::new("erp-devstack identity CA")?;
            authority.write(std::path::Path::new(path))?;
            let idp = Idp::start_tls(addr, authority.server(IDENTITY_NAME)?)?;
            eprintln!("identity service emulator on https://{} (CA in {path})", idp.addr());
            idp
        }
        None => {
            let idp = Idp::start(addr)?;
            eprintln!(
                "identity service emulator on http://{} (plaintext: development only)",
                idp.addr()
            );
            idp
        }
    };
    park_forever()
}

fn serve_echo(addr: &str) -> Result<(), Error> {
    let echo = Echo::start(addr)?;
    eprintln!("echo upstream on http://{}", echo.addr());
    park_forever()
}

fn run() -> Result<(), Error> {
    let wasm = envoy::wasm_path();
    if !wasm.exists() {
        return Err(format!("{} not found: run `make build` first", wasm.display()).into());
    }
    let authority = Authority::new("erp-devstack identity CA")?;
    let ca_path = envoy::repo_root().join(".run/identity-ca.pem");
    authority.write(&ca_path)?;
    let idp = Idp::start_tls(
        &format!("127.0.0.1:{}", port("IDP_PORT", 9080)?),
        authority.server(IDENTITY_NAME)?,
    )?;
    let echo = Echo::start(&format!("127.0.0.1:{}", port("ECHO_PORT", 9081)?))?;
    let config = stack::filter_config(None)?;
    let yaml = envoy::render(
        &Placeholders {
            bind_address: "127.0.0.1".into(),
            listen_port: port("ENVOY_PORT", 10000)?,
            admin_address: "127.0.0.1".into(),
            admin_port: port("ENVOY_ADMIN_PORT", 9901)?,
            upstream_host: "127.0.0.1".into(),
            upstream_port: echo.addr().port(),
            identity_host: "127.0.0.1".into(),
            identity_port: idp.addr().port(),
            identity_tls: Some(IdentityTls {
                ca_path: ca_path.display().to_string(),
                server_name: IDENTITY_NAME.into(),
            }),
            wasm_path: wasm.display().to_string(),
            extra_listeners: Vec::new(),
        },
        &config,
    )?;
    let envoy = Envoy::start(&yaml, &EnvoyOptions::default())?;
    wait_for_keys(&idp, &envoy)?;
    print_examples(&idp, &envoy.listener, &envoy.admin, &ca_path);
    // Ctrl-C reaches Envoy and this process alike; Envoy also dies with us.
    park_forever()
}

/// Waits until the filter has fetched the emulator's keys, so the printed
/// commands work the moment they appear.
fn wait_for_keys(idp: &Idp, envoy: &Envoy) -> Result<(), Error> {
    let auth = format!("Bearer {}", idp.access_token(&["read"]));
    for _ in 0..300 {
        let r = erp_devstack::client::request(
            envoy.listener,
            "GET",
            "/api/domain/probe",
            &[("authorization", &auth)],
            b"",
        )?;
        if r.status == 200 {
            std::thread::sleep(std::time::Duration::from_millis(300));
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(format!("the filter did not get signing keys:\n{}", envoy.log()).into())
}

fn print_examples(idp: &Idp, listener: &SocketAddr, admin: &SocketAddr, ca: &std::path::Path) {
    let read = idp.access_token(&["DomainApi", "read"]);
    let pat = idp.issue_reference(ReferenceKind::Pat, &["read"], 86_400);
    let base = format!("http://{listener}/api/domain/odata/Customers");
    println!();
    println!("erp-edge-validator is running:");
    println!("  Envoy with the filter   http://{listener}   (admin http://{admin})");
    println!(
        "  identity emulator       https://{}/id   (CA: {})",
        idp.addr(),
        ca.display()
    );
    println!("  echo upstream           stands in for the Domain API");
    println!();
    println!("Try it (tokens are fresh and valid for an hour):");
    println!();
    println!("# 200: a JWT with `read` may GET; the echo shows the identity headers it received");
    println!("curl -s -H 'Authorization: Bearer {read}' '{base}?$top=10'");
    println!();
    println!("# 403 insufficient_scope: the same token may not POST (needs `update`)");
    println!("curl -si -X POST -H 'Authorization: Bearer {read}' '{base}'");
    println!();
    println!("# 401: no credential");
    println!("curl -si '{base}'");
    println!();
    println!("# a personal access token (PAT) in X-Api-Key");
    println!("curl -si -H 'X-Api-Key: {pat}' '{base}?$top=10'");
    println!();
    println!("# a new token from the emulator (client_credentials, as in ERP.net's docs)");
    println!(
        "curl -s --cacert {} -d grant_type=client_credentials -d client_id={} -d client_secret={} -d scope='read update' https://{}/id/connect/token",
        ca.display(),
        idp::CLIENT_ID,
        idp::CLIENT_SECRET,
        idp.addr()
    );
    println!();
    println!("Press Ctrl-C to stop everything.");
}
