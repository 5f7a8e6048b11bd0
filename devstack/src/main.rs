//! `erp-devstack`: run the development stack, or one of its parts.
//!
//! ```text
//! erp-devstack run              identity emulator + echo upstream + Envoy with the filter
//! erp-devstack idp  [ADDR] [--ca-out FILE]
//!                               the identity service emulator alone (default
//!                               127.0.0.1:$IDP_PORT, 9080): HTTPS with a fresh CA written
//!                               to FILE, or plain HTTP (a development setting) without --ca-out
//! erp-devstack echo [ADDR]      the echo upstream alone (default 127.0.0.1:$ECHO_PORT, 9081)
//! erp-devstack render-compose   print the compose stack's Envoy configuration, rendered from
//!                               the template for the ports in the variables below
//!                               (envoy/envoy.compose.yaml is the render for the defaults)
//! erp-devstack bench            the benchmark behind `make bench` (see bench.rs)
//! ```
//!
//! `run` listens on fixed ports so the printed commands work as pasted:
//! Envoy on `$ENVOY_PORT` (10000), its admin on `$ENVOY_ADMIN_PORT` (9901),
//! the emulator on `$IDP_PORT` (9080), the echo upstream on `$ECHO_PORT` (9081).
//! A port that cannot be had is reported with its address and variable.

use std::net::SocketAddr;
use std::process::ExitCode;

use erp_devstack::echo::Echo;
use erp_devstack::envoy::{self, Envoy, EnvoyOptions, IdentityTls, Placeholders};
use erp_devstack::idp::{self, Idp, ReferenceKind};
use erp_devstack::ports::{self, ServicePort};
use erp_devstack::stack;
use erp_devstack::tls::{Authority, IDENTITY_NAME};
use erp_devstack::tokens::Error;

/// The address to listen on: the one given, or loopback at the service's
/// port; a failure to listen names the address (and the variable when the
/// port came from it).
fn listen<T>(
    service: ServicePort,
    given: Option<&String>,
    start: impl FnOnce(&str) -> Result<T, Error>,
) -> Result<T, Error> {
    match given {
        Some(addr) => start(addr).map_err(|e| format!("{} cannot listen on {addr}: {e}", service.service).into()),
        None => {
            let addr = service.loopback()?;
            start(&addr).map_err(|e| service.explain(&addr, e))
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(),
        Some("idp") => {
            let ca_out = args.iter().position(|a| a == "--ca-out");
            let addr = args.get(1).filter(|_| ca_out != Some(1));
            serve_idp(addr, ca_out.and_then(|i| args.get(i + 1)))
        }
        Some("echo") => serve_echo(args.get(1)),
        Some("render-compose") => envoy::compose_ports()
            .and_then(|ports| envoy::render_compose(&ports, None))
            .map(|yaml| print!("{yaml}")),
        Some("bench") => erp_devstack::bench::run(),
        Some("soak") => erp_devstack::soak::run(),
        Some("verify-costs") => erp_devstack::verify_costs::run().map(drop),
        Some("render-deploy") => erp_devstack::deploy::render().map(|files| {
            for file in files {
                println!("{}", file.display());
            }
        }),
        Some("inspect") => inspect(args.get(1).map_or("127.0.0.1:9090", String::as_str)),
        _ => Err(
            "usage: erp-devstack run | idp [ADDR] | echo [ADDR] | render-compose | bench | soak | verify-costs | inspect [ADDR] | render-deploy"
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
    exit_on_sigterm();
    loop {
        std::thread::park();
    }
}

/// As PID 1 in a container a signal without a handler does nothing, so
/// `podman stop` / `docker stop` would wait out their grace period: stop at
/// once on SIGTERM (nothing here needs flushing).
fn exit_on_sigterm() {
    extern "C" fn on_term(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) }
    }
    // SAFETY: installs a handler that only calls an async-signal-safe function.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
    }
}

fn serve_idp(addr: Option<&String>, ca_out: Option<&String>) -> Result<(), Error> {
    let _idp = match ca_out {
        Some(path) => {
            let authority = Authority::new("erp-devstack identity CA")?;
            let server = authority.server(IDENTITY_NAME)?;
            let idp = listen(ports::IDP, addr, |a| Idp::start_tls(a, server))?;
            // Written once the port is held: whoever waits for the file
            // (the compose stack) then finds the service listening.
            authority.write(std::path::Path::new(path))?;
            eprintln!("identity service emulator on https://{} (CA in {path})", idp.addr());
            idp
        }
        None => {
            let idp = listen(ports::IDP, addr, Idp::start)?;
            eprintln!(
                "identity service emulator on http://{} (plaintext: development only)",
                idp.addr()
            );
            idp
        }
    };
    park_forever()
}

fn serve_echo(addr: Option<&String>) -> Result<(), Error> {
    let echo = listen(ports::ECHO, addr, Echo::start)?;
    eprintln!("echo upstream on http://{}", echo.addr());
    park_forever()
}

fn run() -> Result<(), Error> {
    let host = envoy::Host::current()?;
    let wasm = envoy::wasm_path();
    let module = envoy::native_dir().join(format!("lib{}.so", envoy::NATIVE_MODULE));
    let built = match host {
        envoy::Host::Wasm => &wasm,
        envoy::Host::Native => &module,
    };
    if !built.exists() {
        return Err(format!("{} not found: run `make build` first", built.display()).into());
    }
    eprintln!("the filter runs as the {} host ({})", host.name(), built.display());
    let authority = Authority::new("erp-devstack identity CA")?;
    let ca_path = envoy::repo_root().join(".run/identity-ca.pem");
    authority.write(&ca_path)?;
    let server = authority.server(IDENTITY_NAME)?;
    let idp = listen(ports::IDP, None, |a| Idp::start_tls(a, server))?;
    let echo = listen(ports::ECHO, None, Echo::start)?;
    // Envoy binds these itself: say which variable moves a taken one
    // before Envoy fails on it with its own words.
    ports::ENVOY.check_free()?;
    ports::ENVOY_ADMIN.check_free()?;
    let config = stack::filter_config(None)?;
    let yaml = envoy::render(
        &Placeholders {
            bind_address: "127.0.0.1".into(),
            listen_port: ports::ENVOY.port()?,
            admin_address: "127.0.0.1".into(),
            admin_port: ports::ENVOY_ADMIN.port()?,
            upstream_host: "127.0.0.1".into(),
            upstream_port: echo.addr().port(),
            identity_host: "127.0.0.1".into(),
            identity_port: idp.addr().port(),
            identity_tls: Some(IdentityTls {
                ca_path: ca_path.display().to_string(),
                server_name: IDENTITY_NAME.into(),
            }),
            wasm_path: wasm.display().to_string(),
            host,
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
