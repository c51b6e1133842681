//! Fuzz target: the check `server_json` of `tests/support/untrusted.rs`, shared with its proptest
//! twin in `tests/untrusted.rs`.

#![no_main]

#[path = "../../tests/support/alloc_meter.rs"]
mod alloc_meter;
#[path = "../../tests/support/untrusted.rs"]
mod untrusted;

#[global_allocator]
static METER: alloc_meter::Meter = alloc_meter::Meter;

libfuzzer_sys::fuzz_target!(|data: &[u8]| untrusted::server_json(data));
