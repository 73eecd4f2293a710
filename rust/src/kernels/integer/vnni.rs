//! Exact u8 × i8 products with AVX-512 VNNI (`vpdpbusd`: four u8·i8 products summed into
//! each i32 lane, 64 multiply-adds per instruction).
//!
//! The weights are packed once into panels of 16 columns: for each group of 4 consecutive k,
//! 16 lanes of 4 bytes (`PackedB`); K and N tails are zero-padded. A block of rows of the
//! left operand is stored as u8 rows of K rounded up to 4, with the row count rounded up to
//! `MR` (zero rows), so the register-tiled microkernel never needs edge cases; only the
//! valid part of its i32 output is read back.
//!
//! The caller guarantees that every exact dot product fits i32 (K·255·128 does); i32
//! additions wrap, so the results are exact modulo 2^32 and hence exact. The portable
//! scalar kernel on the same layouts gives the same integers on any CPU.

use std::sync::atomic::{AtomicBool, Ordering};

/// Rows of one microkernel tile.
pub const MR: usize = 6;
/// Columns of one packed panel (one 512-bit vector of i32).
pub const PANEL: usize = 16;
/// Panels a microkernel tile covers at most.
const MAX_PANELS: usize = 4;

/// Whether the VNNI kernels may be used (a switch for benchmarks against the other
/// strategies; results are the same integers either way).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Allow or forbid the VNNI strategy; returns whether it is now in use (`available`).
pub fn set_enabled(on: bool) -> bool {
    ENABLED.store(on, Ordering::Relaxed);
    available()
}

/// Whether the CPU has AVX-512 F/BW/VNNI and the strategy is enabled.
pub fn available() -> bool {
    ENABLED.load(Ordering::Relaxed) && crate::kernels::simd::vnni()
}

/// K rounded up to a multiple of 4 (the bytes per i32 lane).
pub fn padded_k(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// Rows rounded up to a multiple of `MR`.
pub fn padded_rows(rows: usize) -> usize {
    rows.div_ceil(MR) * MR
}

/// A (K, N) matrix of i8 values packed for `vpdpbusd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedB {
    /// panels · groups · 16 lanes · 4 bytes, where byte q of lane l of group g of panel p is
    /// B[4g + q, 16p + l] (0 outside the matrix).
    data: Vec<i8>,
    groups: usize,
    panels: usize,
    n: usize,
}

impl PackedB {
    /// Pack a row-major (K, N) matrix whose values are converted with `to_i8` (the caller
    /// has checked that they fit i8; the conversion truncates).
    pub fn pack<T: Copy>(b: &[T], k: usize, n: usize, to_i8: impl Fn(T) -> i8) -> PackedB {
        let groups = padded_k(k) / 4;
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0i8; panels * groups * PANEL * 4];
        if b.len() >= k * n {
            for (kk, row) in b.chunks_exact(n.max(1)).take(k).enumerate() {
                let (g, q) = (kk / 4, kk % 4);
                for (j, &v) in row.iter().enumerate() {
                    let (p, lane) = (j / PANEL, j % PANEL);
                    data[((p * groups + g) * PANEL + lane) * 4 + q] = to_i8(v);
                }
            }
        }
        PackedB {
            data,
            groups,
            panels,
            n,
        }
    }

    /// Columns covered by the panels (N rounded up to 16).
    pub fn padded_n(&self) -> usize {
        self.panels * PANEL
    }

    fn panel(&self, p: usize) -> &[i8] {
        let len = self.groups * PANEL * 4;
        &self.data[p * len..(p + 1) * len]
    }
}

/// c[r, j] = Σ_k a[r, k]·b[k, j] for r < rows (a multiple of `MR`) and j < `b.padded_n()`,
/// with `a` rows of `padded_k(K)` u8 (zero-padded) and `c` rows of `b.padded_n()` i32.
/// Does nothing if a slice is too short (the callers size them with the helpers above).
pub fn gemm(rows: usize, a: &[u8], b: &PackedB, c: &mut [i32]) {
    let (lda, ldc) = (b.groups * 4, b.padded_n());
    if !rows.is_multiple_of(MR) || a.len() < rows * lda || c.len() < rows * ldc {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::vnni() {
        // SAFETY: the CPU has the features (checked above); the slice sizes were checked.
        unsafe { gemm_vnni(rows, a, b, c) };
        return;
    }
    gemm_scalar(rows, a, b, c);
}

/// The portable version of `gemm` (the same sums, in i32 with wrapping adds).
pub fn gemm_scalar(rows: usize, a: &[u8], b: &PackedB, c: &mut [i32]) {
    let (lda, ldc) = (b.groups * 4, b.padded_n());
    for r in 0..rows {
        let arow = &a[r * lda..(r + 1) * lda];
        for p in 0..b.panels {
            let panel = b.panel(p);
            for lane in 0..PANEL {
                let mut sum = 0i32;
                for (g, quad) in arow.chunks_exact(4).enumerate() {
                    let w = &panel[(g * PANEL + lane) * 4..(g * PANEL + lane + 1) * 4];
                    for (&x, &y) in quad.iter().zip(w) {
                        sum = sum.wrapping_add(i32::from(x) * i32::from(y));
                    }
                }
                c[r * ldc + p * PANEL + lane] = sum;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemm_vnni(rows: usize, a: &[u8], b: &PackedB, c: &mut [i32]) {
    let ldc = b.padded_n();
    let mut p0 = 0;
    while p0 < b.panels {
        let v = (b.panels - p0).min(MAX_PANELS);
        for r0 in (0..rows).step_by(MR) {
            // SAFETY: rows r0..r0+MR of `a` and `c` and panels p0..p0+v exist (sizes checked
            // by `gemm`).
            unsafe {
                match v {
                    1 => tile::<1>(a, b, c, r0, p0, ldc),
                    2 => tile::<2>(a, b, c, r0, p0, ldc),
                    3 => tile::<3>(a, b, c, r0, p0, ldc),
                    _ => tile::<4>(a, b, c, r0, p0, ldc),
                }
            }
        }
        p0 += v;
    }
}

/// One MR × 16·V tile: rows r0.. against panels p0.., all of K, stored into `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const V: usize>(
    a: &[u8],
    b: &PackedB,
    c: &mut [i32],
    r0: usize,
    p0: usize,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    let groups = b.groups;
    let lda = groups * 4;
    let pstride = groups * PANEL * 4;
    let bp = b.data.as_ptr().wrapping_add(p0 * pstride);
    let ap = a.as_ptr().wrapping_add(r0 * lda);
    let mut acc = [[_mm512_setzero_si512(); V]; MR];
    for g in 0..groups {
        let mut bv = [_mm512_setzero_si512(); V];
        for (v, dst) in bv.iter_mut().enumerate() {
            // SAFETY: group g of panel p0 + v lies inside `b.data`.
            *dst = unsafe { _mm512_loadu_si512(bp.add(v * pstride + g * PANEL * 4).cast()) };
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: bytes 4g..4g+4 of row r0 + r lie inside `a`.
            let quad = unsafe { ap.add(r * lda + g * 4).cast::<i32>().read_unaligned() };
            let av = _mm512_set1_epi32(quad);
            for (sum, &w) in row.iter_mut().zip(&bv) {
                *sum = _mm512_dpbusd_epi32(*sum, av, w);
            }
        }
    }
    let cp = c.as_mut_ptr();
    for (r, row) in acc.iter().enumerate() {
        for (v, &sum) in row.iter().enumerate() {
            // SAFETY: columns 16(p0 + v).. of row r0 + r lie inside `c`.
            unsafe { _mm512_storeu_si512(cp.add((r0 + r) * ldc + (p0 + v) * PANEL).cast(), sum) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Kernel = fn(usize, &[u8], &PackedB, &mut [i32]);

    fn naive(m: usize, k: usize, n: usize, a: &[i64], b: &[i64]) -> Vec<i64> {
        let mut c = vec![0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    /// The product through the packed layouts, with `kernel`, cut back to (m, n).
    fn via(m: usize, k: usize, n: usize, a: &[i64], b: &[i64], kernel: Kernel) -> Vec<i64> {
        let packed = PackedB::pack(b, k, n, |v| v as i8);
        let (kp, rows, np) = (padded_k(k), padded_rows(m), packed.padded_n());
        let mut lhs = vec![0u8; rows * kp];
        for i in 0..m {
            for p in 0..k {
                lhs[i * kp + p] = a[i * k + p] as u8;
            }
        }
        let mut c = vec![-7i32; rows * np];
        kernel(rows, &lhs, &packed, &mut c);
        (0..m * n)
            .map(|idx| i64::from(c[(idx / n) * np + idx % n]))
            .collect()
    }

    fn operands(m: usize, k: usize, n: usize, seed: usize) -> (Vec<i64>, Vec<i64>) {
        let a = (0..m * k).map(|i| ((i * 37 + seed) % 256) as i64).collect();
        let b = (0..k * n)
            .map(|i| ((i * 11 + seed * 3) % 256) as i64 - 128)
            .collect();
        (a, b)
    }

    #[test]
    fn packing_places_groups_of_four_k_per_lane() {
        // K = 5 (one full group and a padded one), N = 17 (one full panel and a padded one).
        let b: Vec<i64> = (0..5 * 17).map(|i| i % 100).collect();
        let p = PackedB::pack(&b, 5, 17, |v| v as i8);
        assert_eq!((p.groups, p.panels, p.padded_n()), (2, 2, 32));
        assert_eq!(p.data.len(), 2 * 2 * 16 * 4);
        let at = |panel: usize, g: usize, lane: usize, q: usize| {
            p.data[((panel * 2 + g) * 16 + lane) * 4 + q]
        };
        assert_eq!(at(0, 0, 3, 2), b[2 * 17 + 3] as i8);
        assert_eq!(at(0, 1, 5, 0), b[4 * 17 + 5] as i8);
        assert_eq!(at(1, 0, 0, 1), b[17 + 16] as i8);
        assert_eq!(at(0, 1, 5, 1), 0); // k = 5 is padding
        assert_eq!(at(1, 1, 1, 0), 0); // column 17 is padding
        let empty = PackedB::pack(&[] as &[i64], 0, 0, |v| v as i8);
        assert_eq!((empty.groups, empty.panels, empty.data.len()), (0, 0, 0));
    }

    #[test]
    fn kernels_are_exact_on_edge_tiles() {
        // M < MR and not a multiple of it, K not a multiple of 4, N not a multiple of 16 or
        // of the 64-column tile, a K = 0 product, and the extreme u8 × i8 values.
        let kernels: [Kernel; 2] = [gemm, gemm_scalar];
        for kernel in kernels {
            for (m, k, n) in [
                (1, 1, 1),
                (5, 7, 17),
                (6, 4, 16),
                (13, 130, 70),
                (7, 3, 113),
                (2, 0, 5),
                (64, 128, 128),
            ] {
                let (a, b) = operands(m, k, n, m + k + n);
                assert_eq!(via(m, k, n, &a, &b, kernel), naive(m, k, n, &a, &b));
            }
            let (m, k, n) = (3, 9, 20);
            let (a, b) = (vec![255; m * k], vec![-128; k * n]);
            assert_eq!(via(m, k, n, &a, &b, kernel), vec![-255 * 128 * 9; m * n]);
        }
    }

    #[test]
    fn short_slices_are_ignored_and_sizes_round_up() {
        assert_eq!((padded_k(0), padded_k(5), padded_k(8)), (0, 8, 8));
        assert_eq!((padded_rows(0), padded_rows(1), padded_rows(7)), (0, 6, 12));
        let p = PackedB::pack(&[1i64, 2], 2, 2, |v| v as i8);
        let mut c = vec![9i32; 6 * 16];
        gemm(6, &[1u8; 3], &p, &mut c);
        gemm(5, &[1u8; 40], &p, &mut c);
        assert!(c.iter().all(|&v| v == 9));
    }
}
