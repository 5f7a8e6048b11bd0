//! Does nothing, as cheaply as a proxy-wasm filter can: the throughput of
//! Envoy with this filter is the floor every wasm filter stands on.

#[cfg(target_arch = "wasm32")]
mod noop {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}

    struct Root;
    impl Context for Root {}
    impl RootContext for Root {
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
