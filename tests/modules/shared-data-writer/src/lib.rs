//! Another plugin in the filter's VM id, as an attacker would write one: its
//! configuration is `{"writes": [[KEY, BASE64 VALUE, REPEAT], ...],
//! "every_ms": N}`; it writes each value into Envoy's shared data when
//! configured, and those with REPEAT `true` again every N ms; it passes
//! every request on.

#[cfg(target_arch = "wasm32")]
mod writer {
    use std::time::Duration;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType};

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Writer { writes: Vec::new() }) });
    }}

    struct Writer {
        writes: Vec<(String, Vec<u8>, bool)>,
    }

    impl Writer {
        fn write(&self, first: bool) {
            for (key, value, repeat) in &self.writes {
                if first || *repeat {
                    let _ = hostcalls::set_shared_data(key, Some(value), None);
                }
            }
        }
    }

    impl Context for Writer {}

    impl RootContext for Writer {
        fn on_configure(&mut self, _: usize) -> bool {
            let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
                .ok()
                .flatten()
                .unwrap_or_default();
            let Ok(config) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                return false;
            };
            for pair in config["writes"].as_array().into_iter().flatten() {
                let (Some(key), Some(value)) = (pair[0].as_str(), pair[1].as_str()) else {
                    return false;
                };
                let Ok(value) = STANDARD.decode(value) else {
                    return false;
                };
                self.writes
                    .push((key.to_owned(), value, pair[2].as_bool().unwrap_or(false)));
            }
            self.write(true);
            let every = config["every_ms"].as_u64().unwrap_or(50);
            let _ = hostcalls::set_tick_period(Duration::from_millis(every));
            true
        }

        fn on_tick(&mut self) {
            self.write(false);
        }

        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Pass))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Pass;
    impl Context for Pass {}
    impl HttpContext for Pass {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            Action::Continue
        }
    }
}
