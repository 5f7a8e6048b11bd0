//! Makes, per request, the host calls its configuration lists (one per
//! line): `map`, `rawmap`, `get NAME`, `add N`, `header NAME VALUE`, `time`, `metric`, `prop N`. Measured against the
//! do-nothing filter, this is what each host call costs a request.

#[cfg(target_arch = "wasm32")]
mod probe {
    use std::rc::Rc;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType, MapType, MetricType};

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { ops: Rc::new(Vec::new()), metric: 0 }) });
    }}

    enum Op {
        /// Reads the request headers with the SDK (a copy of each).
        Map,
        /// Reads them as the host serializes them, without copying.
        RawMap,
        Get(String),
        Add(usize),
        /// Adds this header, as the filter adds an identity header.
        Header(String, String),
        Time,
        Metric,
        /// Reads the whole map and writes it back with N more headers.
        Replace(usize),
        /// Sets N properties (filter state), as `access_log_fields` does.
        Prop(usize),
    }

    struct Root {
        ops: Rc<Vec<Op>>,
        metric: u32,
    }
    impl Context for Root {}
    impl RootContext for Root {
        fn on_configure(&mut self, size: usize) -> bool {
            let Ok(Some(config)) = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size) else {
                return true;
            };
            let text = String::from_utf8_lossy(&config).into_owned();
            let mut ops = Vec::new();
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let (op, arg) = line.split_once(' ').unwrap_or((line, ""));
                ops.push(match op {
                    "map" => Op::Map,
                    "rawmap" => Op::RawMap,
                    "get" => Op::Get(arg.to_string()),
                    "add" => Op::Add(arg.parse().unwrap_or(1)),
                    "header" => {
                        let (name, value) = arg.split_once(' ').unwrap_or((arg, ""));
                        Op::Header(name.to_string(), value.to_string())
                    }
                    "time" => Op::Time,
                    "metric" => Op::Metric,
                    "replace" => Op::Replace(arg.parse().unwrap_or(1)),
                    "prop" => Op::Prop(arg.parse().unwrap_or(1)),
                    _ => return false,
                });
            }
            self.ops = Rc::new(ops);
            self.metric = hostcalls::define_metric(MetricType::Counter, "probe").unwrap_or(0);
            true
        }
        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Probe {
                ops: self.ops.clone(),
                metric: self.metric,
            }))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    const NAMES: [&str; 5] = ["x-probe-a", "x-probe-b", "x-probe-c", "x-probe-d", "x-probe-e"];
    const PROPERTIES: [&str; 4] = [
        "probe.client_id",
        "probe.token_kind",
        "probe.decision",
        "probe.token_fingerprint",
    ];

    #[link(wasm_import_module = "env")]
    extern "C" {
        #[allow(clashing_extern_declarations)]
        fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    }

    /// The serialized request headers' length; the buffer is freed.
    fn raw_map_len() -> usize {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size = 0usize;
        // SAFETY: as the SDK's reader: the host hands over a buffer of
        // `size` bytes from this module's allocator.
        unsafe {
            if proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size) != 0
                || data.is_null()
            {
                return 0;
            }
            Vec::from_raw_parts(data, size, size).len()
        }
    }

    struct Probe {
        ops: Rc<Vec<Op>>,
        metric: u32,
    }
    impl Context for Probe {}
    impl HttpContext for Probe {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            let mut sink = 0usize;
            for op in self.ops.iter() {
                match op {
                    Op::Map => sink += hostcalls::get_map_bytes(MapType::HttpRequestHeaders).map_or(0, |m| m.len()),
                    Op::RawMap => sink += raw_map_len(),
                    Op::Get(name) => {
                        sink += hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
                            .ok()
                            .flatten()
                            .map_or(0, |v| v.len())
                    }
                    Op::Add(n) => {
                        for name in NAMES.iter().cycle().take(*n) {
                            let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, "some-value");
                        }
                    }
                    Op::Header(name, value) => {
                        let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value);
                    }
                    Op::Time => sink += hostcalls::get_current_time().map_or(0, |_| 1),
                    Op::Replace(n) => {
                        if let Ok(map) = hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
                            let mut pairs: Vec<(&str, &[u8])> =
                                map.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
                            for name in NAMES.iter().cycle().take(*n) {
                                pairs.push((name, b"some-value"));
                            }
                            let _ = hostcalls::set_map_bytes(MapType::HttpRequestHeaders, pairs);
                        }
                    }
                    Op::Metric => {
                        let _ = hostcalls::increment_metric(self.metric, 1);
                    }
                    Op::Prop(n) => {
                        for name in PROPERTIES.iter().cycle().take(*n) {
                            let _ = hostcalls::set_property(vec![name], Some(b"some-value-123"));
                        }
                    }
                }
            }
            if sink == usize::MAX {
                return Action::Pause;
            }
            Action::Continue
        }
    }
}
