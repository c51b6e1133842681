//! Test support shared by `tests/hub.rs`, `examples/fake_hub.rs` and `benches/download.rs`.

pub mod fake_hub;
