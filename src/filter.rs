//! The only module that talks to Envoy: it gathers the request head and the
//! clock, asks the pure [`Engine`] for a decision, and turns the decision into
//! host calls. Every host call's result is checked; a failure denies.

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::config::Config;
use crate::decision::{Decision, Engine, RequestHead};
use crate::rejection::Rejection;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Verification needs no randomness; anything asking for it gets an error
/// instead of a `wasm-bindgen` import Envoy cannot provide.
fn no_randomness(_: &mut [u8]) -> Result<(), getrandom::Error> {
    Err(getrandom::Error::UNSUPPORTED)
}
getrandom::register_custom_getrandom!(no_randomness);

/// Counters, visible in Envoy's stats as `wasmcustom.erp_edge_validator.*`.
struct Metrics {
    allowed: u32,
    denied_400: u32,
    denied_401: u32,
    denied_403: u32,
    unavailable_503: u32,
}

impl Metrics {
    fn define() -> Option<Self> {
        let counter = |name: &str| {
            hostcalls::define_metric(MetricType::Counter, &format!("erp_edge_validator.{name}"))
                .ok()
        };
        Some(Self {
            allowed: counter("allowed")?,
            denied_400: counter("denied_400")?,
            denied_401: counter("denied_401")?,
            denied_403: counter("denied_403")?,
            unavailable_503: counter("unavailable_503")?,
        })
    }

    fn count(&self, status: Option<u32>) {
        let id = match status {
            None => self.allowed,
            Some(400) => self.denied_400,
            Some(401) => self.denied_401,
            Some(403) => self.denied_403,
            Some(_) => self.unavailable_503,
        };
        // A stats failure must not change a decision.
        let _ = hostcalls::increment_metric(id, 1);
    }
}

#[derive(Default)]
struct Root {
    engine: Option<Rc<Engine>>,
    metrics: Option<Rc<Metrics>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                log::error!(
                    "erp-edge-validator: invalid configuration: field `configuration`: empty"
                );
                return false;
            }
            Err(status) => {
                log::error!("erp-edge-validator: cannot read the configuration: {status:?}");
                return false;
            }
        };
        match Config::from_json(&bytes) {
            Ok(config) => {
                log::info!(
                    "erp-edge-validator: configured: {} signing key(s) {:?}, {} issuer(s)",
                    config.inline_keys.len(),
                    config.inline_keys.kids(),
                    config.issuers.len()
                );
                if !config.inline_keys.skipped().is_empty() {
                    log::warn!(
                        "erp-edge-validator: skipped signing keys: {}",
                        config.inline_keys.skipped_summary()
                    );
                }
                self.engine = Some(Rc::new(Engine::new(config)));
                self.metrics = Metrics::define().map(Rc::new);
                true
            }
            Err(e) => {
                log::error!("erp-edge-validator: invalid configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            engine: self.engine.clone(),
            metrics: self.metrics.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    /// `None` only if Envoy created a stream without a successful configure.
    engine: Option<Rc<Engine>>,
    metrics: Option<Rc<Metrics>>,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(engine) = self.engine.clone() else {
            return self.deny(
                &Rejection::Unavailable("the filter is not configured"),
                "erp-domain-api",
            );
        };
        let realm = &engine.config().realm;
        // Values may be any bytes on the wire; a non-UTF-8 value becomes one
        // that no credential check accepts, instead of a panic.
        let raw = match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            Ok(raw) => raw,
            Err(status) => {
                log::error!("erp-edge-validator: cannot read request headers: {status:?}");
                return self.deny(
                    &Rejection::Unavailable("the request could not be read"),
                    realm,
                );
            }
        };
        let owned: Vec<(String, String)> = raw
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        // Client-sent identity headers never reach the upstream.
        for name in engine.config().identity_headers.names() {
            if owned.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                if let Err(status) =
                    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None)
                {
                    log::error!("erp-edge-validator: cannot remove header {name}: {status:?}");
                    return self.deny(
                        &Rejection::Unavailable("the request could not be rewritten"),
                        realm,
                    );
                }
            }
        }
        let headers: Vec<(&str, &str)> = owned
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let pseudo = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("", |(_, v)| *v)
        };
        let request = RequestHead {
            method: pseudo(":method"),
            path: pseudo(":path"),
            headers: &headers,
        };
        let now = match hostcalls::get_current_time().map(|t| t.duration_since(UNIX_EPOCH)) {
            Ok(Ok(elapsed)) => elapsed.as_secs(),
            _ => return self.deny(&Rejection::Unavailable("the clock is unavailable"), realm),
        };
        match engine.decide(&request, now) {
            Decision::Allow(allowed) => {
                for (name, value) in &allowed.set_headers {
                    if let Err(status) =
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                    {
                        log::error!("erp-edge-validator: cannot set header {name}: {status:?}");
                        return self.deny(
                            &Rejection::Unavailable("the request could not be rewritten"),
                            realm,
                        );
                    }
                }
                if let Some(name) = &allowed.remove_header {
                    if let Err(status) =
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None)
                    {
                        log::error!("erp-edge-validator: cannot remove header {name}: {status:?}");
                        return self.deny(
                            &Rejection::Unavailable("the request could not be rewritten"),
                            realm,
                        );
                    }
                }
                log::debug!(
                    "erp-edge-validator: allowed {} {} client_id={:?}",
                    request.method,
                    request.path.split('?').next().unwrap_or_default(),
                    allowed
                        .principal
                        .as_ref()
                        .and_then(|p| p.client_id.as_deref())
                );
                if let Some(metrics) = &self.metrics {
                    metrics.count(None);
                }
                Action::Continue
            }
            Decision::Deny(rejection) => {
                log::info!(
                    "erp-edge-validator: denied {} {}: {rejection}",
                    request.method,
                    request.path.split('?').next().unwrap_or_default()
                );
                self.deny(&rejection, realm)
            }
        }
    }
}

impl Http {
    /// Replies with the rejection and stops the request.
    fn deny(&self, rejection: &Rejection, realm: &str) -> Action {
        if let Some(metrics) = &self.metrics {
            metrics.count(Some(rejection.status()));
        }
        let response = rejection.to_response(realm);
        let headers: Vec<(&str, &str)> = response
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        if let Err(status) =
            hostcalls::send_http_response(response.status, headers, Some(response.body.as_bytes()))
        {
            log::error!(
                "erp-edge-validator: cannot send the {} reply: {status:?}",
                response.status
            );
        }
        Action::Pause
    }
}
