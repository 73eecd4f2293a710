//! Exact u8 × i8 products with AVX-512 VNNI (`vpdpbusd`: four u8·i8 products summed into
//! each i32 lane, 64 multiply-adds per instruction).
//!
//! The right operand is packed into panels of 16 columns: for each group of 4 consecutive k,
//! 16 lanes of 4 bytes (`PackedB`); K and N tails are zero-padded. The left operand is stored
//! as byte rows of K rounded up to 4, with the row count rounded up to the tile height
//! (zero rows), so the register-tiled microkernel never needs edge cases; only the valid
//! part of its i32 output is read back. One operand holds u8 and the other i8: in a Gemm
//! the left one is u8 (the input), in a Conv the left one is i8 (the weights).
//!
//! The caller guarantees that every exact dot product fits i32 (K·255·128 does); i32
//! additions wrap, so the results are exact modulo 2^32 and hence exact. The portable
//! scalar kernel on the same layouts gives the same integers on any CPU.

use crate::kernels::simd::{self, Switch};

use crate::kernels::integer::panels::Panels;

/// Rows of one microkernel tile of a Gemm (`gemm::<MR, true>`).
pub const MR: usize = 6;
/// Columns of one packed panel (one 512-bit vector of i32).
pub const PANEL: usize = 16;
/// Panels a microkernel tile covers at most.
const MAX_PANELS: usize = 4;

/// Whether the VNNI kernels may be used (a switch for benchmarks against the other
/// strategies; results are the same integers either way); they need AVX-512 F/BW/VNNI.
pub static SWITCH: Switch = Switch::new(true, simd::vnni);

/// Whether the CPU has AVX-512 F/BW/VNNI and the strategy is enabled.
pub fn available() -> bool {
    SWITCH.available()
}

/// K rounded up to a multiple of 4 (the bytes per i32 lane).
pub fn padded_k(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// Rows rounded up to a multiple of `MR`.
pub fn padded_rows(rows: usize) -> usize {
    rows.div_ceil(MR) * MR
}

/// A (K, N) matrix of bytes (u8, or i8 as their two's complement) packed for `vpdpbusd`:
/// panels of 16 columns, groups of 4 k per lane.
pub type PackedB = Panels<u8, PANEL, 4>;

/// c[r, j] = Σ_k a[r, k]·b[k, j] for r < rows (a multiple of `R`) and j < `b.padded_n()`,
/// with `a` rows of `padded_k(K)` bytes (zero-padded) and `c` rows of `b.padded_n()` i32.
/// The bytes of `a` are u8 and those of `b` i8 if `A_U8`, else the other way round.
/// Does nothing if a slice is too short (the callers size them with the helpers above).
pub fn gemm<const R: usize, const A_U8: bool>(rows: usize, a: &[u8], b: &PackedB, c: &mut [i32]) {
    let (lda, ldc) = (b.padded_k(), b.padded_n());
    if R == 0 || !rows.is_multiple_of(R) || a.len() < rows * lda || c.len() < rows * ldc {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::vnni() {
        // SAFETY: the CPU has the features (checked above); the slice sizes were checked.
        unsafe { gemm_vnni::<R, A_U8>(rows, a, b, c) };
        return;
    }
    gemm_scalar::<A_U8>(rows, a, b, c);
}

/// The portable version of `gemm` (the same sums, in i32 with wrapping adds).
pub fn gemm_scalar<const A_U8: bool>(rows: usize, a: &[u8], b: &PackedB, c: &mut [i32]) {
    let (lda, ldc) = (b.padded_k(), b.padded_n());
    let value = |v: u8, unsigned: bool| {
        if unsigned {
            i32::from(v)
        } else {
            i32::from(v as i8)
        }
    };
    for r in 0..rows {
        let arow = &a[r * lda..(r + 1) * lda];
        for p in 0..b.panels() {
            let panel = b.panel(p);
            for lane in 0..PANEL {
                let mut sum = 0i32;
                for (g, quad) in arow.chunks_exact(4).enumerate() {
                    let w = &panel[(g * PANEL + lane) * 4..(g * PANEL + lane + 1) * 4];
                    for (&x, &y) in quad.iter().zip(w) {
                        sum = sum.wrapping_add(value(x, A_U8) * value(y, !A_U8));
                    }
                }
                c[r * ldc + p * PANEL + lane] = sum;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemm_vnni<const R: usize, const A_U8: bool>(
    rows: usize,
    a: &[u8],
    b: &PackedB,
    c: &mut [i32],
) {
    let ldc = b.padded_n();
    let mut p0 = 0;
    while p0 < b.panels() {
        let v = (b.panels() - p0).min(MAX_PANELS);
        for r0 in (0..rows).step_by(R) {
            // SAFETY: rows r0..r0+R of `a` and `c` and panels p0..p0+v exist (sizes checked
            // by `gemm`).
            unsafe {
                match v {
                    1 => tile::<R, 1, A_U8>(a, b, c, r0, p0, ldc),
                    2 => tile::<R, 2, A_U8>(a, b, c, r0, p0, ldc),
                    3 => tile::<R, 3, A_U8>(a, b, c, r0, p0, ldc),
                    _ => tile::<R, 4, A_U8>(a, b, c, r0, p0, ldc),
                }
            }
        }
        p0 += v;
    }
}

/// One R × 16·V tile: rows r0.. against panels p0.., all of K, stored into `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const R: usize, const V: usize, const A_U8: bool>(
    a: &[u8],
    b: &PackedB,
    c: &mut [i32],
    r0: usize,
    p0: usize,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    let groups = b.groups();
    let lda = groups * 4;
    let pstride = groups * PANEL * 4;
    let bp = b.data().as_ptr().wrapping_add(p0 * pstride);
    let ap = a.as_ptr().wrapping_add(r0 * lda);
    let mut acc = [[_mm512_setzero_si512(); V]; R];
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
                // vpdpbusd multiplies the unsigned bytes of its first source by the signed
                // bytes of its second.
                *sum = if A_U8 {
                    _mm512_dpbusd_epi32(*sum, av, w)
                } else {
                    _mm512_dpbusd_epi32(*sum, w, av)
                };
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

    /// The product through the packed layouts with `kernel` (tiles of `r` rows), cut back
    /// to (m, n).
    fn via(
        (m, k, n): (usize, usize, usize),
        a: &[i64],
        b: &[i64],
        kernel: Kernel,
        r: usize,
    ) -> Vec<i64> {
        let packed = PackedB::pack(b, k, n, |v| v as u8);
        let (kp, rows, np) = (padded_k(k), m.div_ceil(r) * r, packed.padded_n());
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

    /// u8 and i8 operands of (m, k) and (k, n), the unsigned one first if `a_u8`.
    fn operands(m: usize, k: usize, n: usize, seed: usize, a_u8: bool) -> (Vec<i64>, Vec<i64>) {
        let u = |i: usize| ((i * 37 + seed) % 256) as i64;
        let s = |i: usize| ((i * 11 + seed * 3) % 256) as i64 - 128;
        if a_u8 {
            ((0..m * k).map(u).collect(), (0..k * n).map(s).collect())
        } else {
            ((0..m * k).map(s).collect(), (0..k * n).map(u).collect())
        }
    }

    #[test]
    fn packing_places_groups_of_four_k_per_lane() {
        // K = 5 (one full group and a padded one), N = 17 (one full panel and a padded one).
        let b: Vec<i64> = (0..5 * 17).map(|i| i % 100 - 50).collect();
        let p = PackedB::pack(&b, 5, 17, |v| v as u8);
        assert_eq!((p.groups(), p.panels(), p.padded_n()), (2, 2, 32));
        assert_eq!(p.data().len(), 2 * 2 * 16 * 4);
        let at = |panel: usize, g: usize, lane: usize, q: usize| {
            p.data()[((panel * 2 + g) * 16 + lane) * 4 + q]
        };
        assert_eq!(at(0, 0, 3, 2), b[2 * 17 + 3] as u8);
        assert_eq!(at(0, 1, 5, 0), b[4 * 17 + 5] as u8);
        assert_eq!(at(1, 0, 0, 1), b[17 + 16] as u8);
        assert_eq!(at(0, 1, 5, 1), 0); // k = 5 is padding
        assert_eq!(at(1, 1, 1, 0), 0); // column 17 is padding
        let empty = PackedB::pack(&[] as &[i64], 0, 0, |v| v as u8);
        assert_eq!(
            (empty.groups(), empty.panels(), empty.data().len()),
            (0, 0, 0)
        );
        let mut z = PackedB::zeros(2, 3);
        z.put_row(5, &[1u8, 2, 3], |v| v); // beyond K: ignored
        z.put_row(1, &[1u8, 2, 3, 4], |v| v); // beyond N: cut
        assert_eq!(z.data().iter().map(|&v| usize::from(v)).sum::<usize>(), 6);
        // A group at once gives the same bytes as its rows one by one.
        let rows: Vec<Vec<i64>> = (0..4)
            .map(|r| (0..37).map(|j| r * 50 + j).collect())
            .collect();
        let (mut by_row, mut by_group) = (PackedB::zeros(7, 37), PackedB::zeros(7, 37));
        for (r, row) in rows.iter().enumerate() {
            by_row.put_row(4 + r, row, |v| v as u8);
        }
        by_group.put_group(1, [&rows[0], &rows[1], &rows[2], &rows[3]], |v| v as u8);
        by_group.put_group(2, [&rows[0], &rows[1], &rows[2], &rows[3]], |v| v as u8);
        assert_eq!(by_row, by_group);
    }

    #[test]
    fn kernels_are_exact_on_edge_tiles() {
        // M below and not a multiple of the tile height, K not a multiple of 4, N not a
        // multiple of 16 or of the 64-column tile, a K = 0 product, both signedness orders.
        let cases: [(Kernel, usize, bool); 6] = [
            (gemm::<MR, true>, MR, true),
            (gemm_scalar::<true>, MR, true),
            (gemm::<4, false>, 4, false),
            (gemm_scalar::<false>, 4, false),
            (gemm::<4, true>, 4, true),
            (gemm::<MR, false>, MR, false),
        ];
        for (kernel, r, a_u8) in cases {
            for (m, k, n) in [
                (1, 1, 1),
                (5, 7, 17),
                (6, 4, 16),
                (13, 130, 70),
                (7, 3, 113),
                (2, 0, 5),
                (64, 128, 128),
            ] {
                let (a, b) = operands(m, k, n, m + k + n, a_u8);
                assert_eq!(via((m, k, n), &a, &b, kernel, r), naive(m, k, n, &a, &b));
            }
            // The extreme u8 × i8 products.
            let (m, k, n) = (3, 9, 20);
            let (u, s) = (vec![255; 27 * 20], vec![-128; 27 * 20]);
            let (a, b) = if a_u8 { (&u, &s) } else { (&s, &u) };
            assert_eq!(
                via((m, k, n), &a[..m * k], &b[..k * n], kernel, r),
                vec![-255 * 128 * 9; m * n]
            );
        }
    }

    #[test]
    fn short_slices_are_ignored_and_sizes_round_up() {
        assert_eq!((padded_k(0), padded_k(5), padded_k(8)), (0, 8, 8));
        assert_eq!((padded_rows(0), padded_rows(1), padded_rows(7)), (0, 6, 12));
        let p = PackedB::pack(&[1i64, 2], 2, 2, |v| v as u8);
        let mut c = vec![9i32; 6 * 16];
        gemm::<MR, true>(6, &[1u8; 3], &p, &mut c);
        gemm::<MR, true>(5, &[1u8; 40], &p, &mut c);
        gemm::<0, true>(0, &[1u8; 40], &p, &mut c);
        assert!(c.iter().all(|&v| v == 9));
    }
}
