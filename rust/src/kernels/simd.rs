//! Runtime choice of wider vector code.
//!
//! The crate is built for baseline x86-64; hot loops that only use exact integer operations
//! and single IEEE float operations (Rust never fuses a·b + c) are compiled a second time
//! with `#[target_feature]` and picked here at run time. Both versions perform the same
//! operations, so they give the same bits.
//!
//! A [`Switch`] lets benchmarks and differential tests turn one such path off at run time
//! (the results are the same either way).

use std::sync::atomic::{AtomicBool, Ordering};

/// The run-time switch of one code path and the CPU support it needs.
pub struct Switch {
    on: AtomicBool,
    cpu: fn() -> bool,
}

impl Switch {
    /// A switch, on or off to begin with, for a path that runs where `cpu()` holds.
    pub const fn new(on: bool, cpu: fn() -> bool) -> Self {
        Switch {
            on: AtomicBool::new(on),
            cpu,
        }
    }

    /// Whether the path is allowed and the CPU runs it.
    pub fn available(&self) -> bool {
        self.on.load(Ordering::Relaxed) && (self.cpu)()
    }

    /// Allow or forbid the path; returns whether it is now in use.
    pub fn set(&self, on: bool) -> bool {
        self.on.store(on, Ordering::Relaxed);
        self.available()
    }

    /// `set(on)` when `enabled` is `Some(on)`, else `available()` (the contract of the
    /// Python switches, `_core.int_i16(enabled=None)` and the like).
    pub fn toggle(&self, enabled: Option<bool>) -> bool {
        match enabled {
            Some(on) => self.set(on),
            None => self.available(),
        }
    }
}

/// Any CPU (for a switch of portable code).
pub fn any_cpu() -> bool {
    true
}

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

/// Whether the byte permutes of the int8 table lookups (`vpermb`, `vpermi2b`: AVX-512 F/BW
/// and VBMI) may run on this CPU.
pub fn byte_permutes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vbmi")
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
