//! Pure numeric kernels: no Python types, no GIL, deterministic for any thread count.

pub mod float;
pub mod integer;
pub mod quant;
pub mod simd;
#[cfg(test)]
pub(crate) mod test_rng;
