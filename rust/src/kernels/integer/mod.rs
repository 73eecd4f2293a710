//! Integer kernels: Gemm/Conv with zero-point correction, pool window sums and maxima,
//! round_bit_pattern, accumulator bit-width analysis.
//!
//! Every kernel takes int64 views of any layout and returns owned C-order arrays. Before a
//! product is computed its worst-case accumulator is bounded from the operand ranges; if
//! int64 could overflow the kernel returns `Error::Overflow` instead of a wrong answer. The
//! same bound picks an *exact* evaluation strategy (see [`exact::Strategy`]), so every
//! result is the exact integer whatever the strategy, the chunking or the thread count.

pub mod bits;
pub mod conv;
pub mod direct;
#[cfg(target_arch = "x86_64")]
pub mod epilogue_avx2;
#[cfg(target_arch = "x86_64")]
pub mod epilogue_avx512;
#[cfg(target_arch = "x86_64")]
pub mod epilogue_screen;
pub mod exact;
pub mod gemm;
pub mod madd;
pub mod maddubs;
pub mod panels;
pub mod requant;
pub mod rescale;
pub mod rounding;
pub mod vnni;
