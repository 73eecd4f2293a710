//! Exact i16 × i16 products with AVX2 `vpmaddwd` (two i16·i16 products summed into each
//! i32 lane: 16 multiply-adds per instruction), for CPUs without AVX-512 VNNI.
//!
//! The right operand is packed into panels of 8 columns (one 256-bit vector of i32): for
//! each pair of consecutive k, 8 lanes of 2 i16 (`PackedB16`); K and N tails are zero. The
//! left operand is stored as i16 rows of K rounded up to 2, with the row count rounded up to
//! the tile height (zero rows), so the register-tiled microkernel has no edge cases; only
//! the valid part of its i32 output is read back.
//!
//! `vpmaddwd` never saturates (its pair sum is exact modulo 2^32) and the i32 additions
//! wrap, so every result is exact modulo 2^32. The caller guarantees that every exact dot
//! product lies within i32 (K·max|a|·max|b| <= 2^31 − 1), so the results are the exact
//! integers. The portable scalar kernel on the same layouts gives the same integers on any
//! CPU.

use crate::kernels::simd::{self, Switch};

use crate::kernels::integer::panels::Panels;

/// Rows of one microkernel tile.
pub const MR: usize = 6;
/// Columns of one packed panel (one 256-bit vector of i32).
pub const PANEL: usize = 8;
/// Panels a microkernel tile of `r` rows covers at most: r·v accumulators, v panel registers
/// and the broadcast fit the 16 AVX2 registers (6 × 2 or 4 × 3).
const fn max_panels(r: usize) -> usize {
    if r <= 4 {
        3
    } else {
        2
    }
}

/// Whether the i16 kernels may be used (a switch for benchmarks against the other
/// strategies; results are the same integers either way); they need AVX2.
pub static SWITCH: Switch = Switch::new(true, simd::avx2);

/// Whether the Conv may use the i16 strategy: off by default, because on the benchmark CNN
/// (1→8 and 8→16 channels, 3×3) it measured slower than the f32 strategy (the Conv is bound
/// by gathering and writing, not by the product); a switch for benchmarks and tests.
pub static CONV_SWITCH: Switch = Switch::new(false, simd::avx2);

/// Whether the CPU has AVX2 and the strategy is enabled.
pub fn available() -> bool {
    SWITCH.available()
}

/// Whether the Conv uses the I16 strategy (its switch is on and the CPU has AVX2).
pub fn conv_available() -> bool {
    CONV_SWITCH.available()
}

/// K rounded up to a multiple of 2 (the i16 per i32 lane).
pub fn padded_k(k: usize) -> usize {
    k.div_ceil(2) * 2
}

/// Rows rounded up to a multiple of `MR`.
pub fn padded_rows(rows: usize) -> usize {
    rows.div_ceil(MR) * MR
}

/// Rows of one microkernel tile of a Conv (its row count, the output channels of a group,
/// is usually a multiple of 4 such as 8 or 16).
pub const CONV_MR: usize = 4;

/// Whether every value of [lo, hi] fits i16.
pub fn fits_i16(lo: i128, hi: i128) -> bool {
    lo >= i128::from(i16::MIN) && hi <= i128::from(i16::MAX)
}

/// A (K, N) matrix of i16 packed for `vpmaddwd`: panels of 8 columns, pairs of k per lane.
pub type PackedB16 = Panels<i16, PANEL, 2>;

/// c[r, j] = Σ_k a[r, k]·b[k, j] for r < rows (a multiple of `R`) and j < `b.padded_n()`,
/// with `a` rows of `padded_k(K)` i16 (zero-padded) and `c` rows of `b.padded_n()` i32.
/// Does nothing if a slice is too short (the callers size them with the helpers above).
pub fn gemm<const R: usize>(rows: usize, a: &[i16], b: &PackedB16, c: &mut [i32]) {
    let (lda, ldc) = (b.padded_k(), b.padded_n());
    if R == 0 || !rows.is_multiple_of(R) || a.len() < rows * lda || c.len() < rows * ldc {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::avx2() {
        // SAFETY: the CPU has AVX2 (checked above); the slice sizes were checked.
        unsafe { gemm_avx2::<R>(rows, a, b, c) };
        return;
    }
    gemm_scalar(rows, a, b, c);
}

/// The portable version of `gemm` (the same sums, in i32 with wrapping arithmetic).
pub fn gemm_scalar(rows: usize, a: &[i16], b: &PackedB16, c: &mut [i32]) {
    let (lda, ldc) = (b.padded_k(), b.padded_n());
    if a.len() < rows * lda || c.len() < rows * ldc {
        return;
    }
    for r in 0..rows {
        let arow = &a[r * lda..(r + 1) * lda];
        for p in 0..b.panels() {
            let panel = b.panel(p);
            for lane in 0..PANEL {
                let mut sum = 0i32;
                for (g, pair) in arow.chunks_exact(2).enumerate() {
                    let w = &panel[(g * PANEL + lane) * 2..(g * PANEL + lane) * 2 + 2];
                    // As vpmaddwd: the two products summed modulo 2^32, then added.
                    let two = (i32::from(pair[0]) * i32::from(w[0]))
                        .wrapping_add(i32::from(pair[1]) * i32::from(w[1]));
                    sum = sum.wrapping_add(two);
                }
                c[r * ldc + p * PANEL + lane] = sum;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemm_avx2<const R: usize>(rows: usize, a: &[i16], b: &PackedB16, c: &mut [i32]) {
    let ldc = b.padded_n();
    let mut p0 = 0;
    while p0 < b.panels() {
        let v = (b.panels() - p0).min(max_panels(R));
        for r0 in (0..rows).step_by(R) {
            // SAFETY: rows r0..r0+R of `a` and `c` and panels p0..p0+v exist (sizes checked
            // by `gemm`).
            unsafe {
                match v {
                    1 => tile::<R, 1>(a, b, c, r0, p0, ldc),
                    2 => tile::<R, 2>(a, b, c, r0, p0, ldc),
                    _ => tile::<R, 3>(a, b, c, r0, p0, ldc),
                }
            }
        }
        p0 += v;
    }
}

/// One R × 8·V tile: rows r0.. against panels p0.., all of K, stored into `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tile<const R: usize, const V: usize>(
    a: &[i16],
    b: &PackedB16,
    c: &mut [i32],
    r0: usize,
    p0: usize,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    let pairs = b.groups();
    let lda = pairs * 2;
    let pstride = pairs * PANEL * 2;
    let bp = b.data().as_ptr().wrapping_add(p0 * pstride);
    let ap = a.as_ptr().wrapping_add(r0 * lda);
    let mut acc = [[_mm256_setzero_si256(); V]; R];
    for g in 0..pairs {
        let mut bv = [_mm256_setzero_si256(); V];
        for (v, dst) in bv.iter_mut().enumerate() {
            // SAFETY: pair g of panel p0 + v lies inside `b.data`.
            *dst = unsafe { _mm256_loadu_si256(bp.add(v * pstride + g * PANEL * 2).cast()) };
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: values 2g..2g+2 of row r0 + r lie inside `a`.
            let pair = unsafe { ap.add(r * lda + g * 2).cast::<i32>().read_unaligned() };
            let av = _mm256_set1_epi32(pair);
            for (sum, &w) in row.iter_mut().zip(&bv) {
                *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(av, w));
            }
        }
    }
    let cp = c.as_mut_ptr();
    for (r, row) in acc.iter().enumerate() {
        for (v, &sum) in row.iter().enumerate() {
            // SAFETY: columns 8(p0 + v).. of row r0 + r lie inside `c`.
            unsafe { _mm256_storeu_si256(cp.add((r0 + r) * ldc + (p0 + v) * PANEL).cast(), sum) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Kernel = fn(usize, &[i16], &PackedB16, &mut [i32]);

    fn naive(m: usize, k: usize, n: usize, a: &[i64], b: &[i64]) -> Vec<i64> {
        let mut c = vec![0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    /// The product through the packed layouts with `kernel`, cut back to (m, n).
    fn via((m, k, n): (usize, usize, usize), a: &[i64], b: &[i64], kernel: Kernel) -> Vec<i64> {
        let packed = PackedB16::pack(b, k, n, |v| v as i16);
        // Rows rounded up to 24: a whole number of tiles of 4, 6 and 8.
        let (kp, rows, np) = (padded_k(k), m.div_ceil(24) * 24, packed.padded_n());
        let mut lhs = vec![0i16; rows * kp];
        for i in 0..m {
            for p in 0..k {
                lhs[i * kp + p] = a[i * k + p] as i16;
            }
        }
        let mut c = vec![-7i32; rows * np];
        kernel(rows, &lhs, &packed, &mut c);
        (0..m * n)
            .map(|idx| i64::from(c[(idx / n) * np + idx % n]))
            .collect()
    }

    fn operands(m: usize, k: usize, n: usize, seed: usize, amp: i64) -> (Vec<i64>, Vec<i64>) {
        let v = |i: usize, mul: usize| ((i * mul + seed) as i64 % (2 * amp + 1)) - amp;
        (
            (0..m * k).map(|i| v(i, 37)).collect(),
            (0..k * n).map(|i| v(i, 11)).collect(),
        )
    }

    #[test]
    fn packing_places_pairs_of_k_per_lane() {
        // K = 3 (one full pair and a padded one), N = 9 (one full panel and a padded one).
        let b: Vec<i64> = (0..3 * 9).map(|i| i * 100 - 1000).collect();
        let p = PackedB16::pack(&b, 3, 9, |v| v as i16);
        assert_eq!((p.groups(), p.panels(), p.padded_n()), (2, 2, 16));
        assert_eq!(p.data().len(), 2 * 2 * 8 * 2);
        let at = |panel: usize, g: usize, lane: usize, q: usize| {
            p.data()[((panel * 2 + g) * 8 + lane) * 2 + q]
        };
        assert_eq!(at(0, 0, 3, 1), b[9 + 3] as i16);
        assert_eq!(at(0, 1, 5, 0), b[2 * 9 + 5] as i16);
        assert_eq!(at(1, 0, 0, 1), b[9 + 8] as i16);
        assert_eq!(at(0, 1, 5, 1), 0); // k = 3 is padding
        assert_eq!(at(1, 1, 1, 0), 0); // column 9 is padding
        assert_eq!(p.data()[p.slot(2, 8)], b[2 * 9 + 8] as i16);
        let empty = PackedB16::pack(&[] as &[i64], 0, 0, |v| v as i16);
        assert_eq!(
            (empty.groups(), empty.panels(), empty.data().len()),
            (0, 0, 0)
        );
        let mut z = PackedB16::zeros(2, 3);
        z.put_row(5, &[1i16, 2, 3], |v| v); // beyond K: ignored
        z.put_row(1, &[1i16, 2, 3, 4], |v| v); // beyond N: cut
        assert_eq!(z.data().iter().map(|&v| i64::from(v)).sum::<i64>(), 6);
    }

    #[test]
    fn simd_and_scalar_kernels_are_exact_on_edge_tiles() {
        let kernels: [Kernel; 4] = [gemm::<MR>, gemm::<4>, gemm::<8>, gemm_scalar];
        for kernel in kernels {
            for (m, k, n) in [
                (1, 1, 1),
                (5, 7, 17),
                (4, 2, 8),
                (13, 129, 70),
                (7, 3, 113),
                (2, 0, 5),
                (64, 128, 128),
                (9, 64, 24),
            ] {
                for amp in [1, 127, 255, 4000] {
                    let (a, b) = operands(m, k, n, m + k + n, amp);
                    assert_eq!(via((m, k, n), &a, &b, kernel), naive(m, k, n, &a, &b));
                }
            }
        }
    }

    #[test]
    fn extreme_operands_at_the_i32_limit() {
        // 2·32767·32768 = 2^31 − 65536: the largest |sum| of two full-range terms fits.
        let (m, k, n) = (5, 2, 11);
        let a = vec![32767i64; m * k];
        let b = vec![-32768i64; k * n];
        let want = vec![-2 * 32767 * 32768; m * n];
        // K·255·(2^15 − 1)... many terms of moderate size reaching just under 2^31.
        let (k2, amp_a, amp_b) = (8224, 255, 1024); // 8224·255·1024 = 2_147_450_880
        let a2: Vec<i64> = (0..3 * k2)
            .map(|i| if i % 3 == 0 { -amp_a } else { amp_a })
            .collect();
        let b2: Vec<i64> = (0..k2 * 9)
            .map(|i| if (i / 9) % 3 == 0 { -amp_b } else { amp_b })
            .collect();
        let want2 = naive(3, k2, 9, &a2, &b2);
        assert!(want2.iter().all(|&v| v.abs() <= i64::from(i32::MAX)));
        assert!(want2.iter().any(|&v| v > 2_000_000_000));
        for kernel in [gemm::<MR> as Kernel, gemm_scalar] {
            assert_eq!(via((m, k, n), &a, &b, kernel), want);
            assert_eq!(via((3, k2, 9), &a2, &b2, kernel), want2);
        }
    }

    #[test]
    fn short_slices_are_ignored_and_sizes_round_up() {
        assert_eq!((padded_k(0), padded_k(5), padded_k(8)), (0, 6, 8));
        assert_eq!((padded_rows(0), padded_rows(1), padded_rows(7)), (0, 6, 12));
        assert!(fits_i16(-32768, 32767) && !fits_i16(-32769, 0) && !fits_i16(0, 32768));
        let p = PackedB16::pack(&[1i64, 2], 2, 2, |v| v as i16);
        let mut c = vec![9i32; 6 * 8];
        gemm::<MR>(6, &[1i16; 3], &p, &mut c);
        gemm::<MR>(5, &[1i16; 40], &p, &mut c);
        gemm::<0>(0, &[1i16; 40], &p, &mut c);
        gemm_scalar(6, &[1i16; 3], &p, &mut c);
        assert!(c.iter().all(|&v| v == 9));
    }
}
