//! Rendering the Envoy configuration from the one template, and running a
//! real Envoy with the built filter: free ports, readiness, logs, and a
//! process that dies with its owner.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client;
use crate::tokens::Error;

/// The repository root (the parent of `devstack/`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The built filter: `$ERP_EDGE_WASM`, or the release build in `target/`.
pub fn wasm_path() -> PathBuf {
    std::env::var_os("ERP_EDGE_WASM").map_or_else(
        || repo_root().join("target/wasm32-unknown-unknown/release/erp_edge_validator.wasm"),
        PathBuf::from,
    )
}

/// Which host runs the filter in Envoy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Host {
    /// The proxy-wasm filter (`.wasm`, in Envoy's V8): the default.
    #[default]
    Wasm,
    /// The native dynamic module (`native/`, a shared library).
    Native,
}

impl Host {
    /// `$ERP_EDGE_HOST` (`wasm` or `native`), wasm when unset: the
    /// through-Envoy suites run against whichever it names.
    pub fn current() -> Result<Self, Error> {
        match std::env::var("ERP_EDGE_HOST").as_deref() {
            Err(_) | Ok("") | Ok("wasm") => Ok(Self::Wasm),
            Ok("native") => Ok(Self::Native),
            Ok(other) => Err(format!("ERP_EDGE_HOST={other}: expected `wasm` or `native`").into()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Wasm => "wasm",
            Self::Native => "native",
        }
    }

    /// Where Envoy puts the filter's own stats.
    pub fn stat_prefix(self) -> &'static str {
        match self {
            Self::Wasm => "wasmcustom.erp_edge_validator.",
            Self::Native => "erp_edge_validator.",
        }
    }
}

/// The folder holding the native module (`liberp_edge_validator_native.so`):
/// `$ERP_EDGE_NATIVE_DIR`, or the `native` profile's build in `target/`.
pub fn native_dir() -> PathBuf {
    std::env::var_os("ERP_EDGE_NATIVE_DIR").map_or_else(|| repo_root().join("target/native"), PathBuf::from)
}

/// The native module's name (`dynamic_module_config.name`): Envoy loads
/// `lib<name>.so` from `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
pub const NATIVE_MODULE: &str = "erp_edge_validator_native";

/// The Envoy binary: `$ENVOY_BIN`, or the project venv's.
pub fn envoy_bin() -> PathBuf {
    std::env::var_os("ENVOY_BIN").map_or_else(|| repo_root().join(".venv/bin/envoy"), PathBuf::from)
}

/// The filter configuration shipped in `envoy/filter-config.json`.
pub fn shipped_filter_config() -> Result<Value, Error> {
    let path = repo_root().join("envoy/filter-config.json");
    Ok(serde_json::from_slice(
        &fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?,
    )?)
}

/// JSON merge patch (RFC 7386): objects merge, `null` deletes, anything
/// else replaces.
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    base.remove(key);
                } else {
                    merge(base.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

/// Where everything listens and where the filter is.
#[derive(Debug, Clone)]
pub struct Placeholders {
    pub bind_address: String,
    pub listen_port: u16,
    /// Loopback everywhere (the compose stack's containers use the host's
    /// network).
    pub admin_address: String,
    pub admin_port: u16,
    pub upstream_host: String,
    pub upstream_port: u16,
    pub identity_host: String,
    pub identity_port: u16,
    /// TLS to the identity service; `None` only as a development setting.
    pub identity_tls: Option<IdentityTls>,
    pub wasm_path: String,
    /// The wasm filter, or the native module in its place.
    pub host: Host,
    /// More listeners like the first, each with its own filter configuration
    /// (the same VM, so the same shared data).
    pub extra_listeners: Vec<ExtraListener>,
}

/// How Envoy checks the identity service's certificate.
#[derive(Debug, Clone)]
pub struct IdentityTls {
    /// PEM file of the CA that must have signed it.
    pub ca_path: String,
    /// SNI, and the DNS name the certificate must carry.
    pub server_name: String,
}

/// A second listener with another filter configuration.
#[derive(Debug, Clone)]
pub struct ExtraListener {
    pub name: String,
    pub port: u16,
    pub filter_config: Value,
}

const LISTENER_BEGIN: &str = "  # listener: begin";

/// The wasm filter's `typed_config` in the template, from its type to its
/// configuration's value.
const WASM_FILTER_BEGIN: &str =
    "              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n";
const WASM_FILTER_END: &str = "                  value: {{filter_config}}\n";

/// The native module in the wasm filter's place: the same filter name, the
/// same configuration JSON. Its stats are `erp_edge_validator.*`.
fn native_filter() -> String {
    format!(
        "              \"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config:
                name: {NATIVE_MODULE}
                metrics_namespace: erp_edge_validator
              filter_name: erp_edge_validator
              filter_config:
                \"@type\": type.googleapis.com/google.protobuf.StringValue
                value: {{{{filter_config}}}}
"
    )
}

/// The template with the filter of `host`.
fn with_host(template: &str, host: Host) -> Result<String, Error> {
    match host {
        Host::Wasm => Ok(template.to_owned()),
        Host::Native => {
            let begin = template
                .find(WASM_FILTER_BEGIN)
                .ok_or("template: the wasm filter is not where the native host expects it")?;
            let end = template[begin..]
                .find(WASM_FILTER_END)
                .ok_or("template: the wasm filter's configuration is not where the native host expects it")?
                + begin
                + WASM_FILTER_END.len();
            Ok(format!("{}{}{}", &template[..begin], native_filter(), &template[end..]))
        }
    }
}
const LISTENER_END: &str = "  # listener: end\n";

/// The identity cluster's `transport_socket`, or the marked plaintext setting.
fn identity_transport_socket(tls: Option<&IdentityTls>) -> String {
    match tls {
        None => "    # DEVELOPMENT ONLY: plaintext to the identity service (no transport_socket).\n    # Whoever sits on this path can forge keys and introspection answers.".into(),
        Some(tls) => format!(
            "    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: \"{name}\"
        common_tls_context:
          validation_context:
            trusted_ca: {{ filename: \"{ca}\" }}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{ exact: \"{name}\" }}",
            name = tls.server_name,
            ca = tls.ca_path
        ),
    }
}

/// Copies of the first listener for `extra`, placed after it.
fn with_extra_listeners(template: &str, extra: &[ExtraListener]) -> Result<String, Error> {
    if extra.is_empty() {
        return Ok(template.to_owned());
    }
    let begin = template
        .find(LISTENER_BEGIN)
        .ok_or("template: no listener begin marker")?;
    let end = template.find(LISTENER_END).ok_or("template: no listener end marker")? + LISTENER_END.len();
    let block = &template[begin..end];
    let mut copies = String::new();
    for listener in extra {
        let literal = serde_json::to_string(&listener.filter_config.to_string())?;
        copies.push_str(
            &block
                .replace("- name: domain_api", &format!("- name: {}", listener.name))
                .replace("stat_prefix: domain_api", &format!("stat_prefix: {}", listener.name))
                .replace("{{listen_port}}", &listener.port.to_string())
                .replace("{{plugin_name}}", &format!("erp_edge_validator_{}", listener.name))
                .replace("{{filter_config}}", &literal),
        );
    }
    Ok(format!("{}{copies}{}", &template[..end], &template[end..]))
}

/// Fills `envoy/envoy.template.yaml`.
pub fn render(placeholders: &Placeholders, filter_config: &Value) -> Result<String, Error> {
    let path = repo_root().join("envoy/envoy.template.yaml");
    let template = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let p = placeholders;
    let template = with_host(&template, p.host)?;
    let template = with_extra_listeners(&template, &p.extra_listeners)?;
    // A JSON string is a valid YAML double-quoted scalar.
    let config_literal = serde_json::to_string(&filter_config.to_string())?;
    let rendered = template
        .replace("{{bind_address}}", &p.bind_address)
        .replace("{{listen_port}}", &p.listen_port.to_string())
        .replace("{{admin_address}}", &p.admin_address)
        .replace("{{admin_port}}", &p.admin_port.to_string())
        .replace("{{plugin_name}}", "erp_edge_validator")
        .replace(
            "{{identity_transport_socket}}",
            &identity_transport_socket(p.identity_tls.as_ref()),
        )
        .replace("{{upstream_host}}", &p.upstream_host)
        .replace("{{upstream_port}}", &p.upstream_port.to_string())
        .replace("{{identity_host}}", &p.identity_host)
        .replace("{{identity_port}}", &p.identity_port.to_string())
        .replace("{{wasm_path}}", &p.wasm_path)
        .replace("{{filter_config}}", &config_literal);
    if let Some(at) = rendered.find("{{") {
        let rest = &rendered[at..];
        let name = rest.split("}}").next().unwrap_or(rest);
        return Err(format!("template placeholder {name}}} has no value").into());
    }
    Ok(rendered)
}

/// Where the compose stack listens, all on the host's loopback (its
/// containers use host networking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComposePorts {
    pub envoy: u16,
    pub envoy_admin: u16,
    pub idp: u16,
    pub echo: u16,
}

/// The ports from `ENVOY_PORT`, `ENVOY_ADMIN_PORT`, `IDP_PORT` and
/// `ECHO_PORT`, or their defaults (those of `make run`).
pub fn compose_ports() -> Result<ComposePorts, Error> {
    Ok(ComposePorts {
        envoy: crate::ports::ENVOY.port()?,
        envoy_admin: crate::ports::ENVOY_ADMIN.port()?,
        idp: crate::ports::IDP.port()?,
        echo: crate::ports::ECHO.port()?,
    })
}

/// The compose stack's Envoy configuration: the same template, everything
/// on loopback (admin included), the identity CA where the compose file
/// mounts it; `patch` (RFC 7386) over the shipped filter configuration.
/// `envoy/envoy.compose.yaml` is this for the default ports and no patch.
pub fn render_compose(ports: &ComposePorts, patch: Option<&Value>) -> Result<String, Error> {
    let mut config = shipped_filter_config()?;
    if let Some(patch) = patch {
        merge(&mut config, patch);
    }
    render(
        &Placeholders {
            bind_address: "127.0.0.1".into(),
            listen_port: ports.envoy,
            admin_address: "127.0.0.1".into(),
            admin_port: ports.envoy_admin,
            upstream_host: "127.0.0.1".into(),
            upstream_port: ports.echo,
            identity_host: "127.0.0.1".into(),
            identity_port: ports.idp,
            identity_tls: Some(IdentityTls {
                ca_path: "/etc/erp-edge/identity-ca.pem".into(),
                server_name: crate::tls::IDENTITY_NAME.into(),
            }),
            wasm_path: "/etc/envoy/erp_edge_validator.wasm".into(),
            host: Host::Wasm,
            extra_listeners: Vec::new(),
        },
        &config,
    )
}

/// How to run Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// Envoy's log level.
    pub log_level: String,
    /// Log the filter (`wasm` component) at `debug` whatever `log_level`
    /// says (the tests do, to prove no token is ever logged).
    pub filter_debug: bool,
    /// Where the native module is loaded from; [`native_dir`] when `None`.
    pub native_dir: Option<PathBuf>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            log_level: "info".into(),
            filter_debug: true,
            native_dir: None,
        }
    }
}

/// A running Envoy. Dropping it stops the process.
pub struct Envoy {
    child: Option<Child>,
    dir: PathBuf,
    pub admin: SocketAddr,
    pub listener: SocketAddr,
}

static STARTED: AtomicU32 = AtomicU32::new(0);

impl Envoy {
    /// The process id, while Envoy runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts Envoy with this configuration and waits until it serves.
    /// When Envoy refuses the configuration, the error holds its log.
    pub fn start(yaml: &str, options: &EnvoyOptions) -> Result<Self, Error> {
        let bin = envoy_bin();
        if !bin.exists() {
            return Err(format!("{} not found: run `make venv` (or set ENVOY_BIN)", bin.display()).into());
        }
        let n = STARTED.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("erp-edge-envoy-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("envoy.yaml"), yaml)?;
        let log = fs::File::create(dir.join("envoy.log"))?;
        let mut command = Command::new(&bin);
        command
            .arg("-c")
            .arg(dir.join("envoy.yaml"))
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .arg("--log-level")
            .arg(&options.log_level)
            .args(if options.filter_debug {
                &["--component-log-level", "wasm:debug,dynamic_modules:debug"][..]
            } else {
                &[][..]
            })
            // Access-log lines within 0.1 s, not Envoy's default 10 s.
            .arg("--file-flush-interval-msec")
            .arg("100")
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(dir.join("admin.txt"))
            // Where a configuration with the native module finds it.
            .env(
                "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
                options.native_dir.clone().unwrap_or_else(native_dir),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Envoy dies with the thread that started it, even if a test aborts.
        // SAFETY: prctl is async-signal-safe and touches no Rust state.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn()?;
        let mut envoy = Envoy {
            child: Some(child),
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        envoy.wait_ready()?;
        Ok(envoy)
    }

    fn wait_ready(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Err(format!("Envoy exited ({status}) during start:\n{}", self.log()).into());
                }
            }
            if let Some(admin) = fs::read_to_string(self.dir.join("admin.txt"))
                .ok()
                .and_then(|a| a.trim().parse().ok())
            {
                self.admin = admin;
                if let Ok(r) = client::request(admin, "GET", "/ready", &[], b"") {
                    if r.status == 200 {
                        self.listener = self.find_listener()?;
                        return Ok(());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("Envoy did not become ready in 60 s:\n{}", self.log()).into())
    }

    fn find_listener(&self) -> Result<SocketAddr, Error> {
        // The template's listener, or the only one (the benchmark's).
        let listeners = client::request(self.admin, "GET", "/listeners?format=json", &[], b"")?.json();
        let first = listeners["listener_statuses"][0]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.listener_named("domain_api")
            .or_else(|| self.listener_named(&first))
            .ok_or_else(|| "no listener".into())
    }

    /// The address of the listener with this name.
    pub fn listener_named(&self, name: &str) -> Option<SocketAddr> {
        let listeners = client::request(self.admin, "GET", "/listeners?format=json", &[], b"")
            .ok()?
            .json();
        let listener = listeners["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)?;
        let address = &listener["local_address"]["socket_address"];
        format!("{}:{}", address["address"].as_str()?, address["port_value"].as_u64()?)
            .parse()
            .ok()
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// One of the filter's own counters or gauges (`allowed`, ...), where
    /// the current [`Host`] puts it.
    pub fn filter_stat(&self, name: &str) -> Option<u64> {
        let prefix = Host::current().ok()?.stat_prefix();
        self.stat(&format!("{prefix}{name}"))
    }

    /// A counter or gauge from the admin `/stats` page.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let stats = client::request(self.admin, "GET", &format!("/stats?filter=^{name}$"), &[], b"").ok()?;
        stats
            .text()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok()))
    }

    /// Stops Envoy and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of the Envoy log ({}):", self.dir.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
