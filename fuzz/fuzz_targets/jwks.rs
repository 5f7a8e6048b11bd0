#![no_main]
// Body and invariants: erp_edge_validator::fuzzing::jwks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| erp_edge_validator::fuzzing::jwks(data));
