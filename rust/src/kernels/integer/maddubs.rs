//! Exact u8 × i8 products with AVX2 `vpmaddubsw` (pairs of u8·i8 products summed into i16
//! lanes: 32 multiply-adds per instruction), for narrow operands on CPUs without AVX-512
//! VNNI.
//!
//! `vpmaddubsw` saturates its pair sums to i16, so it is exact only when no pair sum can
//! leave i16: 2·max(a)·max|b| <= 32767. Under that bound `steps` results are added in i16
//! (`vpaddw`, exact while steps·2·max(a)·max|b| <= 32767, see `steps`) before they are
//! widened to i32 with `vpmaddwd` against ones and added to the i32 accumulators; with
//! 6-bit operands 8 groups of 4 k share one widening, so a product costs about one
//! multiply-port instruction per 32 multiply-adds (the `madd` kernels need two).
//!
//! The layouts are those of `vnni` with 8 columns per panel (`PackedB8`: for each group of
//! 4 consecutive k, 8 lanes of 4 bytes, one i32 lane of output per column; the left operand
//! as u8 rows of K rounded up to 4, the row count rounded up to the tile height). The i32
//! additions wrap; the caller guarantees that every exact dot product lies within i32, so
//! the results are the exact integers. The portable scalar kernel emulates the instructions
//! (saturation and wrapping included) on the same layouts.

use crate::kernels::simd::{self, Switch};

use crate::kernels::integer::panels::Panels;

/// Rows of one microkernel tile.
pub const MR: usize = 6;
/// Columns of one packed panel (one 256-bit vector of i32).
pub const PANEL: usize = 8;
/// Panels a microkernel tile covers at most (R·V i16 accumulators, V panel registers and
/// the broadcast within the 16 AVX2 registers; the i32 accumulators live outside the
/// inner loop).
const MAX_PANELS: usize = 2;
/// The most groups of 4 k added in i16 before a widening (more gains nothing measurable).
pub const MAX_STEPS: usize = 64;

/// A (K, N) matrix of i8 (as bytes) packed for `vpmaddubsw`: panels of 8 columns, groups
/// of 4 k per lane.
pub type PackedB8 = Panels<u8, PANEL, 4>;

/// Whether the kernels may be used (a switch for benchmarks against the other strategies;
/// results are the same integers either way); they need AVX2.
pub static SWITCH: Switch = Switch::new(true, simd::avx2);

/// Whether the CPU has AVX2 and the strategy is enabled.
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

/// The groups of 4 k whose `vpmaddubsw` results can be added in i16 exactly, for left
/// values in [0, `a_max`] and right values of |b| <= `b_max`, at most `MAX_STEPS`; None if
/// a single pair sum can saturate (2·a_max·b_max > 32767).
pub fn steps(a_max: u128, b_max: u128) -> Option<usize> {
    let pair = a_max.saturating_mul(b_max).saturating_mul(2);
    let limit = i16::MAX as u128;
    match pair {
        0 => Some(MAX_STEPS),
        p if p <= limit => Some(((limit / p) as usize).min(MAX_STEPS)),
        _ => None,
    }
}

/// c[r, j] = Σ_k a[r, k]·b[k, j] for r < rows (a multiple of `R`) and j < `b.padded_n()`,
/// with `a` rows of `padded_k(K)` u8 (zero-padded), `b` i8 and `c` rows of `b.padded_n()`
/// i32, adding `steps` groups of 4 k in i16 per widening (`steps` must come from `steps`
/// for bounds that hold for the operands). Does nothing if a slice is too short or `steps`
/// is 0.
pub fn gemm<const R: usize>(rows: usize, a: &[u8], b: &PackedB8, steps: usize, c: &mut [i32]) {
    let (lda, ldc) = (b.padded_k(), b.padded_n());
    if R == 0
        || steps == 0
        || !rows.is_multiple_of(R)
        || a.len() < rows * lda
        || c.len() < rows * ldc
    {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::avx2() {
        // SAFETY: the CPU has AVX2 (checked above); the slice sizes were checked.
        unsafe { gemm_avx2::<R>(rows, a, b, steps, c) };
        return;
    }
    gemm_scalar(rows, a, b, steps, c);
}

/// The portable version of `gemm`: the same instructions emulated (pair sums saturated to
/// i16, i16 and i32 additions wrapping), so it gives the same integers for any operands.
pub fn gemm_scalar(rows: usize, a: &[u8], b: &PackedB8, steps: usize, c: &mut [i32]) {
    let (lda, ldc) = (b.padded_k(), b.padded_n());
    if steps == 0 || a.len() < rows * lda || c.len() < rows * ldc {
        return;
    }
    let pair = |x: &[u8], w: &[u8]| {
        let sum = i32::from(x[0]) * i32::from(w[0] as i8) + i32::from(x[1]) * i32::from(w[1] as i8);
        sum.clamp(i16::MIN.into(), i16::MAX.into()) as i16
    };
    for r in 0..rows {
        let arow = &a[r * lda..(r + 1) * lda];
        for p in 0..b.panels() {
            let panel = b.panel(p);
            for lane in 0..PANEL {
                let mut sum = 0i32;
                for (chunk, quads) in arow.chunks(4 * steps).enumerate() {
                    let mut halves = [0i16; 2];
                    for (i, x) in quads.chunks_exact(4).enumerate() {
                        let g = chunk * steps + i;
                        let w = &panel[(g * PANEL + lane) * 4..(g * PANEL + lane + 1) * 4];
                        halves[0] = halves[0].wrapping_add(pair(&x[..2], &w[..2]));
                        halves[1] = halves[1].wrapping_add(pair(&x[2..], &w[2..]));
                    }
                    // vpmaddwd against ones: the two halves summed into i32.
                    sum = sum.wrapping_add(i32::from(halves[0]) + i32::from(halves[1]));
                }
                c[r * ldc + p * PANEL + lane] = sum;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemm_avx2<const R: usize>(
    rows: usize,
    a: &[u8],
    b: &PackedB8,
    steps: usize,
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
                    1 => tile::<R, 1>(a, b, c, (r0, p0, ldc), steps),
                    _ => tile::<R, 2>(a, b, c, (r0, p0, ldc), steps),
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
    a: &[u8],
    b: &PackedB8,
    c: &mut [i32],
    (r0, p0, ldc): (usize, usize, usize),
    steps: usize,
) {
    use std::arch::x86_64::*;
    let groups = b.groups();
    let lda = groups * 4;
    let pstride = b.panel_len();
    let bp = b.data().as_ptr().wrapping_add(p0 * pstride);
    let ap = a.as_ptr().wrapping_add(r0 * lda);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); V]; R];
    let mut g0 = 0;
    while g0 < groups {
        let g1 = groups.min(g0 + steps);
        let mut part = [[_mm256_setzero_si256(); V]; R];
        for g in g0..g1 {
            let mut bv = [_mm256_setzero_si256(); V];
            for (v, dst) in bv.iter_mut().enumerate() {
                // SAFETY: group g of panel p0 + v lies inside `b.data`.
                *dst = unsafe { _mm256_loadu_si256(bp.add(v * pstride + g * PANEL * 4).cast()) };
            }
            for (r, row) in part.iter_mut().enumerate() {
                // SAFETY: bytes 4g..4g+4 of row r0 + r lie inside `a`.
                let quad = unsafe { ap.add(r * lda + g * 4).cast::<i32>().read_unaligned() };
                let av = _mm256_set1_epi32(quad);
                for (sum, &w) in row.iter_mut().zip(&bv) {
                    // u8 (first operand) times i8 (second), pairs summed into i16.
                    *sum = _mm256_add_epi16(*sum, _mm256_maddubs_epi16(av, w));
                }
            }
        }
        for (row, parts) in acc.iter_mut().zip(&part) {
            for (sum, &p) in row.iter_mut().zip(parts) {
                *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(p, ones));
            }
        }
        g0 = g1;
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

    type Kernel = fn(usize, &[u8], &PackedB8, usize, &mut [i32]);

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
    fn via(
        (m, k, n): (usize, usize, usize),
        a: &[i64],
        b: &[i64],
        steps: usize,
        kernel: Kernel,
    ) -> Vec<i64> {
        let packed = PackedB8::pack(b, k, n, |v| v as u8);
        // Rows rounded up to 24: a whole number of tiles of 4, 6 and 8.
        let (kp, rows, np) = (padded_k(k), m.div_ceil(24) * 24, packed.padded_n());
        let mut lhs = vec![0u8; rows * kp];
        for i in 0..m {
            for p in 0..k {
                lhs[i * kp + p] = a[i * k + p] as u8;
            }
        }
        let mut c = vec![-7i32; rows * np];
        kernel(rows, &lhs, &packed, steps, &mut c);
        (0..m * n)
            .map(|idx| i64::from(c[(idx / n) * np + idx % n]))
            .collect()
    }

    /// a in [0, a_max] and b in [−b_max, b_max], pseudo-random.
    fn operands(
        m: usize,
        k: usize,
        n: usize,
        seed: usize,
        a_max: i64,
        b_max: i64,
    ) -> [Vec<i64>; 2] {
        let v = |i: usize, mul: usize, span: i64| ((i * mul + seed) as i64).rem_euclid(span);
        [
            (0..m * k).map(|i| v(i, 37, a_max + 1)).collect(),
            (0..k * n)
                .map(|i| v(i, 11, 2 * b_max + 1) - b_max)
                .collect(),
        ]
    }

    const KERNELS: [Kernel; 4] = [gemm::<MR>, gemm::<4>, gemm::<8>, gemm_scalar];

    #[test]
    fn step_counts_follow_the_i16_bound() {
        // 6 bits: 2·63·32 = 4032, 8·4032 = 32256 <= 32767 < 9·4032.
        assert_eq!(steps(63, 32), Some(8));
        assert_eq!(steps(31, 16), Some(33));
        assert_eq!(steps(255, 64), Some(1)); // 32640
        assert_eq!(steps(255, 65), None); // 33150
        assert_eq!(steps(0, 128), Some(MAX_STEPS));
        assert_eq!(steps(1, 1), Some(MAX_STEPS));
        assert_eq!(steps(u128::MAX, 2), None);
    }

    #[test]
    fn kernels_are_exact_on_edge_tiles() {
        for kernel in KERNELS {
            for (m, k, n) in [
                (1, 1, 1),
                (5, 7, 17),
                (6, 4, 16),
                (13, 130, 70),
                (7, 3, 113),
                (2, 0, 5),
                (64, 128, 128),
                (9, 64, 24),
            ] {
                for (a_max, b_max) in [(63, 32), (31, 16), (255, 64), (1, 128), (127, 128)] {
                    let Some(st) = steps(a_max as u128, b_max as u128) else {
                        continue;
                    };
                    let [a, b] = operands(m, k, n, m + k + n, a_max, b_max.min(127));
                    for st in [1, st] {
                        let want = naive(m, k, n, &a, &b);
                        assert_eq!(via((m, k, n), &a, &b, st, kernel), want, "{m} {k} {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_operands_at_the_saturation_limit() {
        // Every pair sum at its extreme, `steps` of them in one i16: the largest sums that
        // stay exact; one more step wraps (the kernels follow the instructions).
        let (m, n) = (6, 9);
        for (a_max, b) in [
            (63i64, -32i64),
            (63, 31),
            (255, -64),
            (255, 64),
            (31, -16),
            (128, -127),
        ] {
            let st = steps(a_max as u128, b.unsigned_abs().into()).unwrap();
            let k = 4 * (st + 3);
            let a = vec![a_max; m * k];
            let w = vec![b; k * n];
            for kernel in KERNELS {
                assert_eq!(via((m, k, n), &a, &w, st, kernel), naive(m, k, n, &a, &w));
                if st < MAX_STEPS {
                    assert_ne!(
                        via((m, k, n), &a, &w, st + 1, kernel),
                        naive(m, k, n, &a, &w)
                    );
                }
            }
        }
        // Beyond the pair bound a single vpmaddubsw saturates.
        let (a, w) = (vec![255; 4], vec![-65; 4]);
        for kernel in KERNELS {
            assert_ne!(via((1, 4, 1), &a, &w, 1, kernel), naive(1, 4, 1, &a, &w));
        }
    }

    #[test]
    fn short_slices_are_ignored_and_sizes_round_up() {
        assert_eq!((padded_k(0), padded_k(5), padded_k(8)), (0, 8, 8));
        assert_eq!((padded_rows(0), padded_rows(1), padded_rows(7)), (0, 6, 12));
        let p = PackedB8::pack(&[1i64, 2], 2, 2, |v| v as u8);
        let mut c = vec![9i32; 6 * 8];
        gemm::<MR>(6, &[1u8; 3], &p, 1, &mut c);
        gemm::<MR>(5, &[1u8; 40], &p, 1, &mut c);
        gemm::<MR>(6, &[1u8; 40], &p, 0, &mut c);
        gemm::<0>(0, &[1u8; 40], &p, 1, &mut c);
        gemm_scalar(6, &[1u8; 3], &p, 1, &mut c);
        assert!(c.iter().all(|&v| v == 9));
    }
}
