//! Integer kernels: Gemm/Conv with zero-point correction, pool window sums,
//! round_bit_pattern, accumulator bit-width analysis.
