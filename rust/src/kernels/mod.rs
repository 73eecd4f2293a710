//! Pure numeric kernels: no Python types, no GIL, deterministic for any thread count.

pub mod integer;
pub mod quant;
