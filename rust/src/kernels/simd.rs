//! Runtime choice of wider vector code.
//!
//! The crate is built for baseline x86-64; hot loops that only use exact integer operations
//! and single IEEE float operations (Rust never fuses a·b + c) are compiled a second time
//! with `#[target_feature]` and picked here at run time. Both versions perform the same
//! operations, so they give the same bits.

/// Whether the AVX-512 (F, DQ, VL, BW) versions of the hot loops may run on this CPU.
pub fn wide_vectors() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX2 integer kernels (`vpmaddwd`) may run on this CPU.
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX-512 VNNI kernels (F, BW, VNNI: `vpdpbusd`) may run on this CPU.
pub fn vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
