#![no_main]
// Body and invariants: erp_edge_validator::fuzzing::introspection.
libfuzzer_sys::fuzz_target!(|data: &[u8]| erp_edge_validator::fuzzing::introspection(data));
