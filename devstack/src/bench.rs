//! `make bench`: throughput through real Envoy, this filter against its
//! baselines, in one run.
//!
//! Every scenario is an Envoy (one worker) with a direct-response route, so
//! the upstream costs nothing; only the HTTP filter chain differs. The
//! scenarios are measured interleaved, round after round (each round
//! starting one scenario later), each time by a fresh Envoy, alone and
//! warmed up, with `wrk -t1 -c10`; with two or more CPUs Envoy is pinned to
//! the last one and wrk to the others. The verdict is a ratio to the
//! baselines, never one absolute number, by three estimators: the ratio of
//! the medians; paired, the median of each round's ratio between two
//! neighbours (compared scenarios run next to each other, so a slow stretch
//! of the machine moves both); and the ratio of each scenario's fastest
//! round.
//!
//! Besides the issue's baselines, (h1) and (h2) run `bench/probe-filter`:
//! a wasm filter that makes host calls and nothing else, to show what the
//! host calls alone cost. (h2) and its kin add the identity headers the
//! filter adds, names and values, as an echo upstream received them from
//! the filter at the start of the run: the same calls with the same
//! arguments.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::client;
use crate::echo::Echo;
use crate::envoy::{self, Envoy, EnvoyOptions};
use crate::idp::{Idp, ReferenceKind};
use crate::tokens::{self, Error};

/// What one scenario runs and sends.
struct Scenario {
    name: &'static str,
    what: &'static str,
    filters: String,
    /// Tokens sent round-robin (`Authorization: Bearer`), or none.
    tokens: Vec<String>,
    /// Header carrying the tokens.
    header: &'static str,
    /// Status every request must get.
    expect: u16,
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time of Envoy's worker thread per request, in microseconds
    /// (from the kernel's per-thread run time): what a request costs the
    /// worker, whatever else the machine was doing.
    cpu_us: f64,
}

const PATH: &str = "/api/domain/odata/Customers";

/// Options from the environment: `BENCH_ROUNDS` (9), `BENCH_SECONDS` (2),
/// `BENCH_POOL` (distinct valid tokens minted for j2, 20000), `BENCH_ONLY`
/// (a comma-separated subset of scenarios).
fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn run() -> Result<(), Error> {
    let rounds = setting("BENCH_ROUNDS", 9);
    let seconds = setting("BENCH_SECONDS", 2);
    let pool = setting("BENCH_POOL", 20_000);
    let root = envoy::repo_root();
    let out_dir = root.join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let filter_wasm = envoy::wasm_path();
    let noop_wasm = root.join("target/wasm32-unknown-unknown/release/noop_filter.wasm");
    let probe_wasm = root.join("target/wasm32-unknown-unknown/release/probe_filter.wasm");
    let warm_wasm = root.join("target/warm/wasm32-unknown-unknown/release/erp_edge_validator.wasm");
    let native_module = envoy::native_dir().join(format!("lib{}.so", envoy::NATIVE_MODULE));
    let native_probe_module = native_probe_dir().join(format!("lib{}.so", envoy::NATIVE_MODULE));
    for wasm in [
        &filter_wasm,
        &noop_wasm,
        &probe_wasm,
        &warm_wasm,
        &native_module,
        &native_probe_module,
    ] {
        if !wasm.exists() {
            return Err(format!("{} not found: run `make bench`", wasm.display()).into());
        }
    }
    let idp = Idp::start("127.0.0.1:0")?;
    eprintln!("minting {pool} distinct valid tokens for j2 ...");
    let key = idp.signing_key();
    let distinct = mint_parallel(&key, pool);
    let bad: Vec<String> = (0..pool).map(|_| bad_signature_token(&key.kid)).collect();
    let one = idp.access_token(&["DomainApi", "read"]);
    let pat = idp.issue_reference(ReferenceKind::Pat, &["read"], 86_400);
    let jwks = idp.jwks();
    let cached = filter_config(&jwks, 10_000, 30)?;
    // What the filter does for a cached credential, learned from the filter.
    let calls_for = |token: &str, header: &str| {
        identity_headers(&filter_wasm, &cached, idp.addr().port(), token, header).map(|h| host_calls(&h))
    };
    let jwt_calls = calls_for(&one, "authorization")?;
    let pat_calls = calls_for(&pat, "x-api-key")?;
    eprintln!("(h2) makes these calls, as the filter does for (j1):\n{jwt_calls}\n(h2r), as for (r1):\n{pat_calls}");
    // j2 sends its pool round-robin: with a cache of a quarter of the pool,
    // a token is always evicted before it comes again (no hits).
    let no_hits = (pool / 4).max(1);
    // Compared scenarios are neighbours, so that each round measures a
    // pair seconds apart (see `paired`).
    let scenarios = vec![
        Scenario {
            name: "a",
            what: "Envoy, no filter",
            filters: router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "dr1",
            what: "native module, one reference token repeated (cached)",
            filters: native_filter(&cached) + &router(),
            tokens: vec![pat.clone()],
            header: "x-api-key",
            expect: 200,
        },
        Scenario {
            name: "dj1",
            what: "native module, one valid JWT repeated (cached)",
            filters: native_filter(&cached) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "dn5",
            what: "native probe: reads the headers, adds (dj1)'s five identity headers, nothing else",
            filters: native_probe("floor-headers", &cached) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "dn1",
            what: "native probe: reads the request headers, nothing else",
            filters: native_probe("floor-read", &cached) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "dn0",
            what: "native probe: returns Continue (the dynamic-module floor)",
            filters: native_probe("floor-continue", &cached) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "a2",
            what: "Envoy + do-nothing wasm filter (the wasm floor)",
            filters: wasm_filter(&noop_wasm, &json!({})) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "h1",
            what: "wasm filter that only reads the Authorization header",
            filters: wasm_filter_raw(&probe_wasm, "get authorization") + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "n2",
            what: "native jwt_authn with jwt_cache_config",
            filters: jwt_authn(&jwks, true) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "n2h",
            what: "(n2) also setting four identity headers from claims (claim_to_headers)",
            filters: jwt_authn(&jwks, true).replace("forward: true", CLAIM_HEADERS) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "n1h",
            what: "(n1) also setting four identity headers from claims (claim_to_headers)",
            filters: jwt_authn(&jwks, false).replace("forward: true", CLAIM_HEADERS) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "n1",
            what: "native jwt_authn, no cache",
            filters: jwt_authn(&jwks, false) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "dj2",
            what: "native module, a different valid JWT every request",
            filters: native_filter(&filter_config(&jwks, no_hits, 30)?) + &router(),
            tokens: distinct.clone(),
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "dj3",
            what: "native module, distinct bad signatures under a valid kid",
            filters: native_filter(&filter_config(&jwks, no_hits, 30)?) + &router(),
            tokens: bad.clone(),
            header: "authorization",
            expect: 401,
        },
        Scenario {
            name: "j2",
            what: "this filter, a different valid JWT every request",
            filters: wasm_filter(&filter_wasm, &filter_config(&jwks, no_hits, 30)?) + &router(),
            tokens: distinct,
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "j3",
            what: "this filter, distinct bad signatures under a valid kid",
            filters: wasm_filter(&filter_wasm, &filter_config(&jwks, no_hits, 30)?) + &router(),
            tokens: bad,
            header: "authorization",
            expect: 401,
        },
        Scenario {
            name: "r2",
            what: "this filter, reference token, cache off: a callout every request",
            filters: wasm_filter(&filter_wasm, &filter_config(&jwks, 10_000, 0)?) + &router(),
            tokens: vec![pat.clone()],
            header: "x-api-key",
            expect: 200,
        },
        Scenario {
            name: "h2r",
            what: "(h2) with (r1)'s request and identity headers: the reference token in x-api-key",
            filters: wasm_filter_raw(&probe_wasm, &pat_calls) + &router(),
            tokens: vec![pat.clone()],
            header: "x-api-key",
            expect: 200,
        },
        Scenario {
            name: "r1",
            what: "this filter, one reference token repeated (cached)",
            filters: wasm_filter(&filter_wasm, &cached) + &router(),
            tokens: vec![pat],
            header: "x-api-key",
            expect: 200,
        },
        Scenario {
            name: "h2",
            what: "wasm filter making this filter's host calls for a cached JWT (read headers in place, clock, add (j1)'s identity headers, 2 counters)",
            filters: wasm_filter_raw(&probe_wasm, &jwt_calls) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "j1",
            what: "this filter, one valid JWT repeated",
            filters: wasm_filter(&filter_wasm, &cached) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "j1w",
            what: leak(format!(
                "(j1) doing its own work for each request {} times: {WARM_PASSES} extra passes, warm, with no host call (`warm-passes` build)",
                WARM_PASSES + 1.0
            )),
            filters: wasm_filter(&warm_wasm, &cached) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "j1l",
            what: "(j1) with access_log_fields (the shipped setting)",
            filters: wasm_filter(&filter_wasm, &with_access_log(cached.clone())) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "h2l",
            what: "(h2) and the four filter-state values `access_log_fields` sets",
            filters: wasm_filter_raw(&probe_wasm, &format!("{jwt_calls}\nprop 4")) + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
        Scenario {
            name: "h2n",
            what: "(h2) adding five made-up headers (`x-probe-a`: `some-value`) instead of the filter's",
            filters: wasm_filter_raw(&probe_wasm, "rawmap\ntime\nadd 5\nmetric\nmetric") + &router(),
            tokens: vec![one.clone()],
            header: "authorization",
            expect: 200,
        },
    ];
    let mut scenarios = scenarios;
    scenarios.extend(probes(&probe_wasm, &one)?);
    let extra = variants(&scenarios, &filter_wasm)?;
    scenarios.extend(extra);
    // BENCH_ONLY=a2,j1 measures a subset (for experiments; the verdict is
    // the full run).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let scenarios: Vec<Scenario> = scenarios
        .into_iter()
        .filter(|s| only.is_empty() || only.split(',').any(|o| o == s.name))
        .collect();
    let cpus = split_cpus();
    if cpus.is_none() {
        eprintln!("warning: one CPU or no taskset: Envoy and wrk share CPUs");
    }
    let options = EnvoyOptions {
        concurrency: 1,
        log_level: "warning".into(),
        filter_debug: false,
        native_dir: None,
    };
    let mut setups = Vec::new();
    for s in &scenarios {
        let yaml = bench_yaml(&s.filters, idp.addr().port(), None);
        let tokens_file = out_dir.join(format!("{}.tokens", s.name));
        fs::write(&tokens_file, s.tokens.join("\n"))?;
        setups.push((yaml, tokens_file));
    }
    let script = out_dir.join("tokens.lua");
    fs::write(&script, LUA)?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); scenarios.len()];
    for round in 1..=rounds {
        // Each round starts one scenario later, so none is always first
        // (or always right after the same neighbour).
        let count = scenarios.len();
        for i in (0..count).map(|k| (k + round - 1) % count) {
            let s = &scenarios[i];
            let (yaml, tokens_file) = &setups[i];
            // A fresh Envoy for every round, alone on its CPU: one process
            // of the same configuration can run several percent faster or
            // slower than the next for its whole life (where its code and
            // data landed), so the rounds average over processes, and no
            // idle Envoy's timers share the CPU.
            let options = EnvoyOptions {
                native_dir: s.filters.contains(PROBE_FILTER_NAME).then(native_probe_dir),
                ..options.clone()
            };
            let envoy = Envoy::start(yaml, &options)?;
            check(s, &envoy)?;
            pin(&envoy, cpus);
            let sample = wrk(cpus, &envoy, &script, tokens_file, s.header, seconds, s.expect == 200)?;
            drop(envoy);
            eprintln!(
                "round {round}/{rounds} {:>3}: {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  worker {:.1} µs/req",
                s.name, sample.rps, sample.p50_ms, sample.p99_ms, sample.cpu_us
            );
            samples[i].push(sample);
        }
    }
    let table = report(&scenarios, &samples, rounds, seconds);
    let path = out_dir.join("results.md");
    fs::write(&path, &table)?;
    println!("{table}");
    eprintln!("written to {}", path.display());
    Ok(())
}

/// Scenario names from the environment live as long as the run.
fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// `BENCH_PROBE="p1=map;p2=get authorization+time"`: scenarios running the
/// probe filter with those host calls per request (see bench/probe-filter).
fn probes(wasm: &Path, token: &str) -> Result<Vec<Scenario>, Error> {
    let spec = std::env::var("BENCH_PROBE").unwrap_or_default();
    let mut out = Vec::new();
    for item in spec.split(';').filter(|s| !s.is_empty()) {
        let (name, ops) = item.split_once('=').ok_or("BENCH_PROBE: name=ops;...")?;
        out.push(Scenario {
            name: leak(name.to_string()),
            what: leak(format!("probe: {ops}")),
            filters: wasm_filter_raw(wasm, &ops.replace('+', "\n")) + &router(),
            tokens: vec![token.to_string()],
            header: "authorization",
            expect: 200,
        });
    }
    Ok(out)
}

/// `BENCH_VARIANT="old=j2:/path/to/other.wasm"`: scenario (j2) again with
/// another build of the filter, to compare two builds in one run.
fn variants(scenarios: &[Scenario], filter_wasm: &Path) -> Result<Vec<Scenario>, Error> {
    let spec = std::env::var("BENCH_VARIANT").unwrap_or_default();
    let mut out = Vec::new();
    for item in spec.split(';').filter(|s| !s.is_empty()) {
        let parsed = item
            .split_once('=')
            .and_then(|(name, rest)| rest.split_once(':').map(|(base, wasm)| (name, base, wasm)));
        let Some((name, base, wasm)) = parsed else {
            return Err("BENCH_VARIANT: name=scenario:path.wasm;...".into());
        };
        let base = scenarios
            .iter()
            .find(|s| s.name == base)
            .ok_or_else(|| format!("BENCH_VARIANT: no scenario {base}"))?;
        out.push(Scenario {
            name: leak(name.to_string()),
            what: leak(format!("({}) with {wasm}", base.name)),
            filters: base.filters.replace(&filter_wasm.display().to_string(), wasm),
            tokens: base.tokens.clone(),
            header: base.header,
            expect: base.expect,
        });
    }
    Ok(out)
}

fn mint_parallel(key: &tokens::SigningKey, n: usize) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let key = key.clone();
            let count = n / threads + usize::from(t < n % threads);
            std::thread::spawn(move || {
                (0..count)
                    .map(|_| {
                        tokens::sign(
                            &tokens::header(&key.kid),
                            &tokens::claims(tokens::now(), &["DomainApi", "read"]),
                            &key,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
}

/// A well-formed token under a valid `kid` whose signature is random bytes.
fn bad_signature_token(kid: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let claims = tokens::claims(tokens::now(), &["read"]);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(tokens::header(kid).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = URL_SAFE_NO_PAD.encode(tokens::random_hex(128).as_bytes().get(..256).unwrap_or_default());
    format!("{input}.{signature}")
}

/// The configuration with `access_log_fields` on.
fn with_access_log(mut config: Value) -> Value {
    config["access_log_fields"] = json!(true);
    config
}

/// The shipped configuration with the keys inline; `jwt_cache` verified
/// tokens remembered; reference answers trusted `reference_ttl` seconds;
/// without `access_log_fields` (the host calls of the decision itself;
/// (j1l) measures them with it).
fn filter_config(jwks: &Value, jwt_cache: usize, reference_ttl: u64) -> Result<Value, Error> {
    let mut config = envoy::shipped_filter_config()?;
    envoy::merge(
        &mut config,
        &json!({
            "jwks": jwks,
            "remote_jwks": null,
            "jwt_cache_max_entries": jwt_cache,
            "access_log_fields": false,
            // (r2) measures a callout per request, not the flood budget.
            "introspection": {"cache_max_ttl_seconds": reference_ttl, "max_calls_per_second": 100_000},
        }),
    );
    Ok(config)
}

fn router() -> String {
    "          - name: envoy.filters.http.router\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }\n".into()
}

/// The bench build of the native module (its `floor-probe` feature).
fn native_probe_dir() -> PathBuf {
    envoy::repo_root().join("target/native-probe/native")
}

/// Filter names of the probe build's modes start with this.
const PROBE_FILTER_NAME: &str = "filter_name: floor-";

/// The probe build of the native module in mode `mode` (see `Probe` in
/// native/src/filter.rs): the host calls of a request without its
/// decision. The configuration is read (and must be valid) as usual.
fn native_probe(mode: &str, config: &Value) -> String {
    native_filter(config).replace("filter_name: erp_edge_validator", &format!("filter_name: {mode}"))
}

/// The native module (`native/`) with this configuration, loaded from
/// [`envoy::native_dir`].
fn native_filter(config: &Value) -> String {
    let literal = serde_json::to_string(&config.to_string()).unwrap_or_default();
    format!(
        r#"          - name: native
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config:
                name: {}
                metrics_namespace: erp_edge_validator
              filter_name: erp_edge_validator
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: {literal}
"#,
        envoy::NATIVE_MODULE
    )
}

fn wasm_filter(wasm: &Path, config: &Value) -> String {
    wasm_filter_raw(wasm, &config.to_string())
}

fn wasm_filter_raw(wasm: &Path, config: &str) -> String {
    let literal = serde_json::to_string(config).unwrap_or_default();
    format!(
        r#"          - name: wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: bench
                root_id: bench
                failure_policy: FAIL_CLOSED
                vm_config:
                  vm_id: bench
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: "{}" }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {literal}
"#,
        wasm.display()
    )
}

/// `jwt_authn` setting the identity headers this filter sets from the same
/// claims (all but `x-erp-token-kind`, which no claim holds).
const CLAIM_HEADERS: &str = "forward: true
                  claim_to_headers:
                  - { header_name: x-erp-client-id, claim_name: client_id }
                  - { header_name: x-erp-scopes, claim_name: scope }
                  - { header_name: x-erp-client-db, claim_name: client_db }
                  - { header_name: x-erp-system-user, claim_name: client_system_user }";

fn jwt_authn(jwks: &Value, cache: bool) -> String {
    let jwks_literal = serde_json::to_string(&jwks.to_string()).unwrap_or_default();
    let cache_config = if cache {
        "\n                  jwt_cache_config: { jwt_cache_size: 1000 }"
    } else {
        ""
    };
    format!(
        r#"          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                erp:
                  issuer: "{}"
                  audiences: ["DomainAPI"]
                  local_jwks: {{ inline_string: {jwks_literal} }}
                  forward: true{cache_config}
              rules:
              - match: {{ prefix: "/" }}
                requires: {{ provider_name: erp }}
"#,
        tokens::ISSUER
    )
}

/// The identity headers the filter adds for `token` sent in `header`, as
/// an echo upstream receives them (in the order the filter adds them).
fn identity_headers(
    filter_wasm: &Path,
    config: &Value,
    identity_port: u16,
    token: &str,
    header: &str,
) -> Result<Vec<(String, String)>, Error> {
    let echo = Echo::start("127.0.0.1:0")?;
    let options = EnvoyOptions {
        filter_debug: false,
        ..EnvoyOptions::default()
    };
    let yaml = bench_yaml(
        &(wasm_filter(filter_wasm, config) + &router()),
        identity_port,
        Some(echo.addr().port()),
    );
    let envoy = Envoy::start(&yaml, &options)?;
    let value = if header == "authorization" {
        format!("Bearer {token}")
    } else {
        token.to_string()
    };
    let r = client::request(envoy.listener, "GET", PATH, &[(header, &value)], b"")?;
    let added: Vec<(String, String)> = echo
        .take()
        .into_iter()
        .last()
        .map(|seen| {
            seen.headers
                .into_iter()
                .filter(|(n, _)| n.starts_with("x-erp-"))
                .collect()
        })
        .unwrap_or_default();
    if r.status != 200 || added.is_empty() {
        return Err(format!(
            "the filter added no identity headers for the {header} token: {} {}",
            r.status,
            r.text()
        )
        .into());
    }
    Ok(added)
}

/// The probe's operations for the host calls the filter makes on a cached
/// credential: read the headers in place, read the clock, add `headers`,
/// count twice.
fn host_calls(headers: &[(String, String)]) -> String {
    let adds: String = headers.iter().map(|(n, v)| format!("header {n} {v}\n")).collect();
    format!("rawmap\ntime\n{adds}metric\nmetric")
}

/// Envoy for one scenario: the route answers directly, or, with
/// `upstream`, forwards to 127.0.0.1 on that port.
fn bench_yaml(filters: &str, identity_port: u16, upstream: Option<u16>) -> String {
    let (route, upstream_cluster) = match upstream {
        None => (r#"direct_response: { status: 200, body: { inline_string: "ok" } }"#.to_string(), String::new()),
        Some(port) => (
            "route: { cluster: upstream }".to_string(),
            format!(
                "  - name: upstream\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: upstream\n      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}]\n"
            ),
        ),
    };
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: bench
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                {route}
          http_filters:
{filters}  clusters:
  - name: identity
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: identity
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {identity_port} }} }} }} }}] }}]
{upstream_cluster}"#
    )
}

/// Before timing: the scenario answers what it should.
/// Every scenario answers as expected, and its code has run (warm-up)
/// before it is measured.
fn check(s: &Scenario, envoy: &Envoy) -> Result<(), Error> {
    for token in s.tokens.iter().take(3).cycle().take(60) {
        let value = if s.header == "authorization" {
            format!("Bearer {token}")
        } else {
            token.clone()
        };
        let r = client::request(envoy.listener, "GET", PATH, &[(s.header, &value)], b"")?;
        if r.status != s.expect {
            return Err(format!(
                "scenario {}: expected {}, got {} {}",
                s.name,
                s.expect,
                r.status,
                r.text()
            )
            .into());
        }
    }
    Ok(())
}

const LUA: &str = r#"-- Sends the tokens of a file round-robin in one header.
local tokens, n, i = {}, 0, 0
local header = os.getenv("BENCH_HEADER") or "authorization"
for line in io.lines(os.getenv("BENCH_TOKENS")) do n = n + 1; tokens[n] = line end
request = function()
  i = i % n + 1
  local value = tokens[i]
  if header == "authorization" then value = "Bearer " .. value end
  return wrk.format("GET", wrk.path, { [header] = value })
end
"#;

/// With two or more CPUs (and `taskset`), Envoy runs on the last CPU and wrk
/// on the others, so the load generator does not take turns with the worker
/// it measures. `None`: no pinning.
fn split_cpus() -> Option<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, |p| p.get());
    let taskset = Command::new("taskset").arg("--version").output();
    (cpus >= 2 && taskset.is_ok_and(|o| o.status.success())).then_some(cpus)
}

fn pin(envoy: &Envoy, cpus: Option<usize>) {
    let (Some(cpus), Some(pid)) = (cpus, envoy.pid()) else {
        return;
    };
    let pinned = Command::new("taskset")
        .args(["-a", "-p", "-c", &(cpus - 1).to_string(), &pid.to_string()])
        .output();
    if !pinned.is_ok_and(|o| o.status.success()) {
        eprintln!("warning: taskset failed; Envoy and wrk share CPUs");
    }
}

fn wrk(
    cpus: Option<usize>,
    envoy: &Envoy,
    script: &Path,
    tokens: &PathBuf,
    header: &str,
    seconds: usize,
    expect_ok: bool,
) -> Result<Sample, Error> {
    let mut command = match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &format!("0-{}", cpus - 2), "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    let worker = envoy.pid().and_then(worker_thread);
    let cpu_before = worker.as_deref().and_then(run_time_ns);
    let output = command
        .args(["-t1", "-c10", &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(script)
        .arg(format!("http://{}{PATH}", envoy.listener))
        .env("BENCH_TOKENS", tokens)
        .env("BENCH_HEADER", header)
        .output()
        .map_err(|e| format!("wrk: {e} (install it: apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx") == expect_ok {
        return Err(format!("unexpected non-2xx answers:\n{text}").into());
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let percentile = |p: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(|v| duration_ms(v.trim())))
            .unwrap_or(f64::NAN)
    };
    let cpu_after = worker.as_deref().and_then(run_time_ns);
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().to_owned()))
        .and_then(|n| n.parse::<f64>().ok());
    let cpu_us = match (cpu_before, cpu_after, requests) {
        (Some(before), Some(after), Some(n)) if n > 0.0 => (after.saturating_sub(before)) as f64 / 1000.0 / n,
        _ => f64::NAN,
    };
    Ok(Sample {
        rps,
        p50_ms: percentile("50%"),
        p99_ms: percentile("99%"),
        cpu_us,
    })
}

/// `/proc/PID/task/TID` of Envoy's (only) worker thread, `wrk:worker_0`.
fn worker_thread(pid: u32) -> Option<PathBuf> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .flatten()
        .map(|t| t.path())
        .find(|t| fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "wrk:worker_0"))
}

/// Nanoseconds the thread has run on a CPU (`schedstat`'s first field).
fn run_time_ns(task: &Path) -> Option<u64> {
    let text = fs::read_to_string(task.join("schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn duration_ms(text: &str) -> f64 {
    let (number, factor) = if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().map_or(f64::NAN, |n| n * factor)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median over the rounds of `x`'s measure divided by `y`'s in the
/// same round. Compared scenarios run next to each other in a round, so a
/// slow stretch of the machine, which moves both, cancels out; the ratio
/// of the medians compares measurements up to a round apart.
fn paired(scenarios: &[Scenario], samples: &[Vec<Sample>], x: &str, y: &str, measure: fn(&Sample) -> f64) -> f64 {
    let of = |name: &str| scenarios.iter().position(|s| s.name == name).map(|i| &samples[i]);
    let (Some(xs), Some(ys)) = (of(x), of(y)) else {
        return f64::NAN;
    };
    median(
        &mut xs
            .iter()
            .zip(ys)
            .map(|(a, b)| measure(a) / measure(b))
            .collect::<Vec<_>>(),
    )
}

/// The extra passes of the `warm-passes` build (`WARM_PASSES` in the
/// filter's src/filter.rs).
const WARM_PASSES: f64 = 32.0;

/// x's speed as a fraction of y's, by scenario name.
type Ratio<'a> = dyn Fn(&str, &str) -> f64 + 'a;

fn report(scenarios: &[Scenario], samples: &[Vec<Sample>], rounds: usize, seconds: usize) -> String {
    let medians: Vec<Sample> = samples
        .iter()
        .map(|s| Sample {
            rps: median(&mut s.iter().map(|x| x.rps).collect::<Vec<_>>()),
            p50_ms: median(&mut s.iter().map(|x| x.p50_ms).collect::<Vec<_>>()),
            p99_ms: median(&mut s.iter().map(|x| x.p99_ms).collect::<Vec<_>>()),
            cpu_us: median(&mut s.iter().map(|x| x.cpu_us).collect::<Vec<_>>()),
        })
        .collect();
    let of = |name: &str| scenarios.iter().position(|s| s.name == name).map(|i| medians[i]);
    let rps_of = |name: &str| of(name).map_or(f64::NAN, |m| m.rps);
    let cpu_of = |name: &str| of(name).map_or(f64::NAN, |m| m.cpu_us);
    let (a, a2, n1) = (rps_of("a"), rps_of("a2"), rps_of("n1"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Envoy 1.40, one worker, direct-response route, `wrk -t1 -c10 -d{seconds}s`, median of {rounds} interleaved rounds.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | what | req/s | p50 ms | p99 ms | worker µs/req | ÷ (a) | ÷ (a2) | ÷ (n1) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (s, m) in scenarios.iter().zip(&medians) {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2} |",
            s.name,
            s.what,
            m.rps,
            m.p50_ms,
            m.p99_ms,
            m.cpu_us,
            m.rps / a,
            m.rps / a2,
            m.rps / n1
        );
    }
    // By throughput, and by the worker's CPU per request (inverted, so that
    // both read as "x runs at this fraction of y's speed").
    let best = |name: &str, measure: fn(&Sample) -> f64| {
        let i = scenarios.iter().position(|s| s.name == name);
        i.map_or(f64::NAN, |i| samples[i].iter().map(measure).fold(f64::NAN, f64::max))
    };
    let estimators: [(&str, &Ratio); 5] = [
        ("medians", &|x, y| rps_of(x) / rps_of(y)),
        ("paired", &|x, y| paired(scenarios, samples, x, y, |s| s.rps)),
        ("best rounds", &|x, y| best(x, |s| s.rps) / best(y, |s| s.rps)),
        ("CPU, medians", &|x, y| cpu_of(y) / cpu_of(x)),
        ("CPU, paired", &|x, y| {
            paired(scenarios, samples, x, y, |s| 1.0 / s.cpu_us)
        }),
    ];
    let checks = [
        (
            "dj1",
            "n2",
            "≥ 1.0",
            "native module: a cached JWT against jwt_authn's cache",
        ),
        ("dj1", "a", "≥ 0.88", "native module: a cached JWT against plain Envoy"),
        (
            "dj1",
            "n2h",
            "",
            "the same, jwt_authn's cache also setting headers from claims",
        ),
        ("dn0", "n2", "", "the dynamic-module floor against jwt_authn's cache"),
        (
            "dn5",
            "n2",
            "",
            "the host calls (dj1) needs, without deciding, against the same",
        ),
        ("dj1", "dn5", "", "a cached JWT against its host calls"),
        ("dn0", "a", "", "the dynamic-module floor against plain Envoy"),
        (
            "dr1",
            "a",
            "≥ 0.88",
            "native module: a cached reference token against plain Envoy",
        ),
        ("dj2", "n1", "≥ 1.5", "native module: a fresh JWT against jwt_authn's"),
        ("dj3", "dj2", "", "native module: bad signatures against good"),
        ("dj1", "j1", "", "a cached JWT, native module against wasm filter"),
        ("j2", "n1", "≥ 0.9", "a fresh token against Envoy's own jwt_authn"),
        ("j2", "n1h", "", "the same, jwt_authn also setting headers from claims"),
        ("j3", "j2", "≥ 0.9", "bad signatures against good"),
        ("j1", "h2", "≥ 0.95", "a cached JWT against its host calls"),
        ("r1", "h2", "≥ 0.95", "a cached reference token against the same"),
        ("r1", "h2r", "", "the same, both sending (r1)'s shorter request"),
        ("j1l", "h2l", "", "the same with access_log_fields"),
        ("j1l", "j1", "", "what the four access-log values cost"),
        ("j1", "a2", "", "a cached JWT against the do-nothing filter"),
        (
            "h2",
            "h2n",
            "",
            "the filter's identity headers against five made-up ones",
        ),
        (
            "j1",
            "h2n",
            "",
            "a cached JWT against (h2n), the baseline of earlier runs",
        ),
        ("h1", "a2", "", "reading one header"),
    ];
    let _ = writeln!(
        out,
        "\nChecks: x runs at this fraction of y's speed. Medians: of req/s (or of the worker's CPU per \
         request); paired: the median of the rounds' ratios of neighbours; best rounds: each \
         scenario's fastest round.\n"
    );
    let names: Vec<&str> = estimators.iter().map(|(name, _)| *name).collect();
    let _ = writeln!(out, "| check | goal | {} |", names.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---:|".repeat(names.len()));
    for (x, y, goal, what) in checks {
        let values: Vec<String> = estimators.iter().map(|(_, f)| format!("{:.2}", f(x, y))).collect();
        let _ = writeln!(out, "| ({x})/({y}): {what} | {goal} | {} |", values.join(" | "));
    }
    // In µs, not as a ratio: the filter's own work for a cached JWT the
    // first time in a request, and again once its code and data are cached.
    let first = cpu_of("j1") - cpu_of("h2");
    let warm = (cpu_of("j1w") - cpu_of("j1")) / WARM_PASSES;
    let _ = writeln!(
        out,
        "\nThe cached JWT's own work, by the worker's CPU (medians): {first:.1} µs per request beyond (h2)'s \
         host calls; {warm:.1} µs for each further pass of the same work, warm ((j1w) − (j1), ÷ {WARM_PASSES})."
    );
    out
}
