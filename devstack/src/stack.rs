//! The whole stack on loopback: identity emulator, echo upstream and Envoy
//! with the filter, each on a free port, all stopped when dropped.

use std::net::SocketAddr;

use serde_json::Value;

use crate::client::{self, Response};
use crate::echo::Echo;
use crate::envoy::{self, Envoy, EnvoyOptions, Placeholders};
use crate::idp::Idp;
use crate::tokens::Error;

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
}

/// A running stack.
pub struct Stack {
    pub envoy: Envoy,
    pub echo: Echo,
    pub idp: Idp,
}

impl Stack {
    pub fn start(options: StackOptions) -> Result<Self, Error> {
        let idp = Idp::start("127.0.0.1:0")?;
        let echo = Echo::start("127.0.0.1:0")?;
        let filter_config = filter_config(&idp, options.filter_config.as_ref())?;
        let identity = options.identity_override.unwrap_or_else(|| idp.addr());
        let yaml = envoy::render(
            &Placeholders {
                bind_address: "127.0.0.1".into(),
                listen_port: options.listen_port.unwrap_or(0),
                admin_port: options.admin_port.unwrap_or(0),
                upstream_host: echo.addr().ip().to_string(),
                upstream_port: echo.addr().port(),
                identity_host: identity.ip().to_string(),
                identity_port: identity.port(),
                wasm_path: envoy::wasm_path().display().to_string(),
            },
            &filter_config,
        )?;
        let envoy = Envoy::start(&yaml, &options.envoy)?;
        Ok(Self { envoy, echo, idp })
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
}

/// The shipped filter configuration, patched, with the emulator's keys
/// inline when the configuration names none.
pub fn filter_config(idp: &Idp, patch: Option<&Value>) -> Result<Value, Error> {
    let mut config = envoy::shipped_filter_config()?;
    if let Some(patch) = patch {
        envoy::merge(&mut config, patch);
    }
    if let Some(object) = config.as_object_mut() {
        if !object.contains_key("jwks") {
            object.insert("jwks".into(), idp.jwks());
        }
    }
    Ok(config)
}
