//! The whole stack on loopback: identity emulator, echo upstream and Envoy
//! with the filter, each on a free port, all stopped when dropped.

use std::net::SocketAddr;

use serde_json::Value;

use crate::client::{self, Response};
use crate::echo::Echo;
use crate::envoy::{self, Envoy, EnvoyOptions, ExtraListener, IdentityTls, Placeholders};
use crate::idp::{Fault, Idp};
use crate::tls::{Authority, CaFile, IDENTITY_NAME};
use crate::tokens::{CurveKey, Error};

/// How to start a stack.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Merge patch (RFC 7386) over `envoy/filter-config.json`.
    pub filter_config: Option<Value>,
    /// Point the `identity` cluster here instead of at the emulator
    /// (e.g. a port where nothing listens).
    pub identity_override: Option<SocketAddr>,
    pub envoy: EnvoyOptions,
    /// Fixed ports for `make run`; free ones when `None`.
    pub listen_port: Option<u16>,
    pub admin_port: Option<u16>,
    /// Make the emulator's JWKS endpoint misbehave from the start (and do
    /// not wait for Envoy to have keys).
    pub jwks_fault_at_start: Option<Fault>,
    /// Give the filter the emulator's keys inline instead of `remote_jwks`
    /// (for tests where the identity service is unreachable).
    pub inline_jwks: bool,
    /// Which certificate the identity service presents.
    pub identity_certificate: IdentityCertificate,
    /// A second listener, `domain_api_b`, whose filter has the shipped
    /// configuration with this merge patch (same VM, same shared data).
    pub second_filter_config: Option<Value>,
    /// ES256 and EdDSA keys the emulator publishes from the start.
    pub curve_keys: Vec<CurveKey>,
    /// The filter's `vm_id` (`Some("")`: none, as Istio sets it); the
    /// template's when `None`.
    pub vm_id: Option<String>,
    /// Another Wasm plugin in the same `vm_id`, before the filter in the
    /// chain: its module and its configuration.
    pub neighbour_plugin: Option<(std::path::PathBuf, Value)>,
    /// The host that runs the filter; `$ERP_EDGE_HOST`'s when `None`.
    pub host: Option<envoy::Host>,
}

/// The identity service's certificate, as Envoy sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IdentityCertificate {
    /// For `idp.erp.test`, from the CA Envoy trusts.
    #[default]
    Trusted,
    /// For `idp.erp.test`, from another CA.
    OtherAuthority,
    /// From the trusted CA, for another name.
    OtherName,
    /// No TLS at all: the development setting.
    Plaintext,
}

/// A running stack.
pub struct Stack {
    pub envoy: Envoy,
    pub echo: Echo,
    pub idp: Idp,
    /// The CA file Envoy trusts, removed with the stack.
    pub ca: Option<CaFile>,
}

impl Stack {
    pub fn start(options: StackOptions) -> Result<Self, Error> {
        let authority = Authority::new("erp-devstack identity CA")?;
        let certificate = options.identity_certificate;
        let idp = match certificate {
            IdentityCertificate::Plaintext => Idp::start("127.0.0.1:0")?,
            IdentityCertificate::Trusted => Idp::start_tls("127.0.0.1:0", authority.server(IDENTITY_NAME)?)?,
            IdentityCertificate::OtherName => Idp::start_tls("127.0.0.1:0", authority.server("other.erp.test")?)?,
            IdentityCertificate::OtherAuthority => {
                let rogue = Authority::new("some other CA")?;
                Idp::start_tls("127.0.0.1:0", rogue.server(IDENTITY_NAME)?)?
            }
        };
        let ca = match certificate {
            IdentityCertificate::Plaintext => None,
            _ => Some(CaFile::write(&authority)?),
        };
        for key in &options.curve_keys {
            idp.publish_curve_key(key);
        }
        let echo = Echo::start("127.0.0.1:0")?;
        let mut filter_config = filter_config(options.filter_config.as_ref())?;
        if options.inline_jwks {
            envoy::merge(
                &mut filter_config,
                &serde_json::json!({"jwks": idp.jwks(), "remote_jwks": null}),
            );
        }
        let identity = options.identity_override.unwrap_or_else(|| idp.addr());
        let yaml = envoy::render(
            &Placeholders {
                bind_address: "127.0.0.1".into(),
                listen_port: options.listen_port.unwrap_or(0),
                admin_address: "127.0.0.1".into(),
                admin_port: options.admin_port.unwrap_or(0),
                upstream_host: echo.addr().ip().to_string(),
                upstream_port: echo.addr().port(),
                identity_host: identity.ip().to_string(),
                identity_port: identity.port(),
                identity_tls: ca.as_ref().map(|ca| IdentityTls {
                    ca_path: ca.path.display().to_string(),
                    server_name: IDENTITY_NAME.into(),
                }),
                wasm_path: envoy::wasm_path().display().to_string(),
                host: match options.host {
                    Some(host) => host,
                    None => envoy::Host::current()?,
                },
                extra_listeners: match &options.second_filter_config {
                    None => Vec::new(),
                    Some(patch) => vec![ExtraListener {
                        name: "domain_api_b".into(),
                        port: 0,
                        filter_config: filter_config_patched(&filter_config, patch),
                    }],
                },
            },
            &filter_config,
        )?;
        let yaml = with_vm_id_and_neighbour(yaml, options.vm_id.as_deref(), options.neighbour_plugin.as_ref())?;
        if let Some(fault) = &options.jwks_fault_at_start {
            idp.set_jwks_fault(fault.clone());
        }
        let envoy = Envoy::start(&yaml, &options.envoy)?;
        let stack = Self { envoy, echo, idp, ca };
        let remote_only = filter_config.get("remote_jwks").is_some() && filter_config.get("jwks").is_none();
        let reachable = matches!(
            certificate,
            IdentityCertificate::Trusted | IdentityCertificate::Plaintext
        );
        if remote_only && reachable && options.jwks_fault_at_start.is_none() {
            stack.wait_for_keys()?;
        }
        Ok(stack)
    }

    /// Waits until a JWT passes (the workers have the fetched keys), then
    /// forgets the probe requests.
    pub fn wait_for_keys(&self) -> Result<(), Error> {
        let token = self.idp.access_token(&["DomainApi", "read", "update"]);
        let auth = format!("Bearer {token}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let mut passed = 0;
        while std::time::Instant::now() < deadline {
            if self.get("/api/domain/probe", &[("authorization", &auth)]).status == 200 {
                passed += 1;
                // Every worker picks the set up within one key-check tick.
                if passed == 1 {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                } else {
                    self.echo.clear();
                    return Ok(());
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(format!("the filter never got signing keys:\n{}", self.envoy.log()).into())
    }

    /// Sends a request through Envoy.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        self.try_request(method, path, headers, b"")
            .unwrap_or_else(|e| Response {
                status: 0,
                headers: Vec::new(),
                body: format!("request failed: {e}").into_bytes(),
            })
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, Error> {
        client::request(self.envoy.listener, method, path, headers, body)
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, headers)
    }

    /// A GET through the second listener (`second_filter_config`).
    pub fn get_second(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let fail = |e: String| Response {
            status: 0,
            headers: Vec::new(),
            body: e.into_bytes(),
        };
        match self.envoy.listener_named("domain_api_b") {
            None => fail("no second listener".into()),
            Some(addr) => client::request(addr, "GET", path, headers, b"").unwrap_or_else(|e| fail(e.to_string())),
        }
    }
}

/// The rendered configuration with the filter's `vm_id` changed and another
/// plugin, in the same `vm_id`, placed before it.
fn with_vm_id_and_neighbour(
    yaml: String,
    vm_id: Option<&str>,
    neighbour: Option<&(std::path::PathBuf, Value)>,
) -> Result<String, Error> {
    const VM_ID: &str = "vm_id: erp_edge_validator\n";
    const FILTER: &str = "          - name: erp.edge_validator\n";
    if vm_id.is_none() && neighbour.is_none() {
        return Ok(yaml);
    }
    if !yaml.contains(VM_ID) || !yaml.contains(FILTER) {
        return Err(
            "template: the filter's vm_id or name is not where the stack expects it \
                    (a vm_id and a neighbour plugin are for the wasm host only)"
                .into(),
        );
    }
    let id = vm_id.unwrap_or("erp_edge_validator");
    let mut yaml = yaml.replace(VM_ID, &format!("vm_id: {}\n", serde_json::to_string(id)?));
    if let Some((wasm, config)) = neighbour {
        let literal = serde_json::to_string(&config.to_string())?;
        let filter = format!(
            "          - name: test.neighbour
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: neighbour
                root_id: neighbour
                failure_policy: FAIL_CLOSED
                vm_config:
                  vm_id: {}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: \"{}\" }} }}
                configuration:
                  \"@type\": type.googleapis.com/google.protobuf.StringValue
                  value: {literal}
",
            serde_json::to_string(id)?,
            wasm.display()
        );
        yaml = yaml.replacen(FILTER, &format!("{filter}{FILTER}"), 1);
    }
    Ok(yaml)
}

fn filter_config_patched(base: &Value, patch: &Value) -> Value {
    let mut config = base.clone();
    envoy::merge(&mut config, patch);
    config
}

/// The shipped filter configuration with a merge patch applied.
pub fn filter_config(patch: Option<&Value>) -> Result<Value, Error> {
    let mut config = envoy::shipped_filter_config()?;
    if let Some(patch) = patch {
        envoy::merge(&mut config, patch);
    }
    Ok(config)
}
