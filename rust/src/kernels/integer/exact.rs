//! Exact small matrix products in f32, f64 or i64, chosen from a proven accumulator bound.
//!
//! If every |partial sum| of a dot product is at most 2^24 (2^53), all products and partial
//! sums are integers that f32 (f64) represents exactly, in any summation order, so the fast
//! blocked float kernels of `matrixmultiply` give the exact integer result. Otherwise plain
//! i64 arithmetic is used (the caller has proven that it cannot overflow). On CPUs with
//! AVX-512 VNNI, operands that centre into u8 × i8 with sums within i32 use the `vnni`
//! kernels instead (`Strategy::U8I8`, chosen by the Gemm and Conv from the operand ranges);
//! on CPUs with AVX2, operands that centre into u8 × i8 with pair sums within i16 use the
//! `maddubs` kernels (`Strategy::U8I8Avx2`), and operands that centre into i16 with sums
//! within i32 the `madd` kernels (`Strategy::I16`).

use crate::error::{Error, Result};
use crate::kernels::integer::bits::bit_width;

/// How an exact integer product is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Every partial sum fits 2^24: f32 `sgemm`.
    F32,
    /// Every partial sum fits 2^53: f64 `dgemm`.
    F64,
    /// Plain i64 multiply-accumulate.
    I64,
    /// A − s in [0, 255] (u8), W' in [−128, 127] (i8), every dot product within i32:
    /// AVX-512 VNNI `vpdpbusd` (see `vnni`). Chosen by `gemm::plan` and the conv from the
    /// operand ranges, never by `for_bound`.
    U8I8,
    /// A − s in [0, 255] (u8), W' in [−128, 127] (i8), no pair of products leaving i16
    /// (2·max(A − s)·max|W'| <= 32767) and every dot product within i32: AVX2 `vpmaddubsw`,
    /// `steps` groups of 4 k added in i16 per widening to i32 (see `maddubs`). Chosen by
    /// `gemm::plan` from the operand ranges when VNNI is not in use, never by `for_bound`.
    U8I8Avx2 { steps: usize },
    /// A − s and W' within i16, every dot product within i32: AVX2 `vpmaddwd` (see `madd`).
    /// Chosen by `gemm::plan` and the conv from the operand ranges when VNNI is not in use,
    /// never by `for_bound`.
    I16,
}

impl Strategy {
    /// The fastest exact float or i64 strategy for a worst-case |partial sum| of `bound`.
    pub fn for_bound(bound: u128) -> Strategy {
        if bound <= 1 << 24 {
            Strategy::F32
        } else if bound <= 1 << 53 {
            Strategy::F64
        } else {
            Strategy::I64
        }
    }
}

/// (min, max) of the values, (0, 0) when there are none.
pub fn range<'a>(values: impl IntoIterator<Item = &'a i64>) -> (i64, i64) {
    let mut it = values.into_iter();
    let Some(&first) = it.next() else {
        return (0, 0);
    };
    it.fold((first, first), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Values per task of `range_slice`: fixed, so the split never depends on the thread count.
const RANGE_CHUNK: usize = 1 << 15;

/// `range` of a slice of any integer type, in parallel chunks (min and max do not depend on
/// the split). Each chunk is scanned in its own type (so int8 and int16 inputs compare 32 and
/// 16 lanes per AVX2 instruction, and nothing is widened before the chunk's ends), in code
/// compiled for the widest vectors the CPU has.
pub fn range_slice<T: Copy + Ord + Send + Sync + Into<i64>>(values: &[T]) -> (i64, i64) {
    use rayon::prelude::*;
    let wide = crate::kernels::simd::wide_vectors();
    let avx2 = crate::kernels::simd::avx2();
    values
        .par_chunks(RANGE_CHUNK)
        .map(|chunk| {
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: `wide_vectors` checked that the CPU has these features.
                return unsafe { chunk_range_avx512(chunk) };
            } else if avx2 {
                // SAFETY: `avx2` checked that the CPU has the feature.
                return unsafe { chunk_range_avx2(chunk) };
            }
            chunk_range(chunk)
        })
        .reduce_with(|(a, b), (c, d)| (a.min(c), b.max(d)))
        .map_or((0, 0), |(lo, hi)| (lo.into(), hi.into()))
}

/// `range` of a contiguous view, else of its elements in order.
pub fn range_of<T: Copy + Ord + Send + Sync + Into<i64>, D: ndarray::Dimension>(
    values: ndarray::ArrayView<'_, T, D>,
) -> (i64, i64) {
    match values.as_slice() {
        Some(slice) => range_slice(slice),
        None => {
            let mut it = values.iter();
            let Some(&first) = it.next() else {
                return (0, 0);
            };
            let (lo, hi) = it.fold((first, first), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            (lo.into(), hi.into())
        }
    }
}

/// (min, max) of a chunk of `par_chunks` (never empty).
#[inline(always)]
fn chunk_range<T: Copy + Ord>(chunk: &[T]) -> (T, T) {
    let first = chunk[0];
    let (mut lo, mut hi) = (first, first);
    for &v in chunk {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    (lo, hi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
unsafe fn chunk_range_avx512<T: Copy + Ord>(chunk: &[T]) -> (T, T) {
    chunk_range(chunk)
}

/// `chunk_range` compiled for AVX2 (which compares i64 lanes, and i8/i16/i32 ones 32, 16
/// and 8 at a time; SSE2 compares no i64 lanes and no signed bytes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn chunk_range_avx2<T: Copy + Ord>(chunk: &[T]) -> (T, T) {
    chunk_range(chunk)
}

/// Largest |v| over a range, as u128.
pub fn max_abs(lo: i128, hi: i128) -> u128 {
    lo.unsigned_abs().max(hi.unsigned_abs())
}

/// Describe a range with its concrete-python integer type, e.g. "[-128, 127] (int8)".
pub fn describe(lo: i128, hi: i128) -> String {
    let (bits, signed) = bit_width(lo, hi);
    let kind = if signed { "int" } else { "uint" };
    format!("[{lo}, {hi}] ({kind}{bits})")
}

/// The worst-case |accumulator| of `terms` products of |x| <= `max_x` and |w| <= `max_w`,
/// or `Error::Overflow` (with `what` describing the operands) if it does not fit int64.
pub fn check_bound(
    terms: usize,
    max_x: u128,
    max_w: u128,
    what: impl Fn() -> String,
) -> Result<u128> {
    let bound = (terms as u128)
        .checked_mul(max_x)
        .and_then(|v| v.checked_mul(max_w));
    match bound {
        Some(b) if b <= i64::MAX as u128 => Ok(b),
        _ => {
            let log2 = ((terms as f64) * (max_x as f64) * (max_w as f64)).log2();
            Err(Error::Overflow(format!(
                "the int64 accumulator could overflow: {} gives a worst case of about 2^{:.1}, \
                 more than int64 holds; use fewer bits for the inputs or the weights",
                what(),
                log2
            )))
        }
    }
}

/// An element type in which integer products can be evaluated exactly under a bound.
pub trait Exact: Copy + Send + Sync + Default + 'static {
    /// Convert an integer (exact under the strategy's bound).
    fn from_i64(v: i64) -> Self;
    /// Convert an integer-valued result back.
    fn to_i64(self) -> i64;
    /// c (m×n) = a (m×k) · b (k×n), all row-major and contiguous; c need not be initialised.
    fn gemm(m: usize, k: usize, n: usize, a: &[Self], b: &[Self], c: &mut [Self]);
}

/// Row-major checks shared by the float kernels; they never fail for the callers' sizes.
fn sizes_ok(m: usize, k: usize, n: usize, a: usize, b: usize, c: usize) -> bool {
    a >= m * k && b >= k * n && c >= m * n
}

/// `Exact` for a float type whose `matrixmultiply` routine is `$gemm` (sgemm / dgemm).
macro_rules! impl_exact_float {
    ($t:ty, $gemm:path, $to_i64:path) => {
        impl Exact for $t {
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn to_i64(self) -> i64 {
                $to_i64(self)
            }
            fn gemm(m: usize, k: usize, n: usize, a: &[$t], b: &[$t], c: &mut [$t]) {
                if m == 0 || n == 0 || !sizes_ok(m, k, n, a.len(), b.len(), c.len()) {
                    return;
                }
                if k == 0 {
                    c[..m * n].fill(0.0);
                    return;
                }
                // SAFETY: the slices hold at least m×k, k×n and m×n row-major elements
                // (checked above) and `c` is borrowed mutably, so it aliases neither input.
                unsafe {
                    $gemm(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        k as isize,
                        1,
                        b.as_ptr(),
                        n as isize,
                        1,
                        0.0,
                        c.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
            }
        }
    };
}

/// 1.5·2^52: adding it to an integer-valued f64 of magnitude below 2^51 leaves the integer
/// in the low mantissa bits.
const MAGIC: f64 = 6_755_399_441_055_744.0;

/// An integer-valued f32 (|v| <= 2^24 under the f32 strategy, always below 2^51) as i64,
/// with two float64 operations and an integer subtraction (which vectorise, unlike the
/// saturating `as i64`).
fn f32_to_i64(v: f32) -> i64 {
    ((f64::from(v) + MAGIC).to_bits() as i64).wrapping_sub(MAGIC.to_bits() as i64)
}

fn f64_to_i64(v: f64) -> i64 {
    v as i64
}

impl_exact_float!(f32, matrixmultiply::sgemm, f32_to_i64);
impl_exact_float!(f64, matrixmultiply::dgemm, f64_to_i64);

impl Exact for i64 {
    fn from_i64(v: i64) -> Self {
        v
    }
    fn to_i64(self) -> i64 {
        self
    }
    fn gemm(m: usize, k: usize, n: usize, a: &[i64], b: &[i64], c: &mut [i64]) {
        if !sizes_ok(m, k, n, a.len(), b.len(), c.len()) {
            return;
        }
        // Wrapping ops: the caller's bound guarantees they never wrap; they only keep a
        // debug build from panicking.
        for (i, crow) in c.chunks_exact_mut(n.max(1)).take(m).enumerate() {
            crow.fill(0);
            for (p, &av) in a[i * k..(i + 1) * k].iter().enumerate() {
                if av == 0 {
                    continue;
                }
                for (cv, &bv) in crow.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                    *cv = cv.wrapping_add(av.wrapping_mul(bv));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: &[i64], b: &[i64]) -> Vec<i64> {
        let mut c = vec![0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn via<T: Exact>(m: usize, k: usize, n: usize, a: &[i64], b: &[i64]) -> Vec<i64> {
        let a: Vec<T> = a.iter().map(|&v| T::from_i64(v)).collect();
        let b: Vec<T> = b.iter().map(|&v| T::from_i64(v)).collect();
        let mut c = vec![T::default(); m * n];
        T::gemm(m, k, n, &a, &b, &mut c);
        c.into_iter().map(T::to_i64).collect()
    }

    #[test]
    fn strategies_are_exact_at_their_limits() {
        let (m, k, n) = (7, 33, 5);
        let a: Vec<i64> = (0..m * k).map(|i| ((i * 37) % 255) as i64 - 127).collect();
        let b: Vec<i64> = (0..k * n).map(|i| ((i * 11) % 255) as i64 - 128).collect();
        let want = naive(m, k, n, &a, &b);
        assert_eq!(via::<f32>(m, k, n, &a, &b), want);
        assert_eq!(via::<f64>(m, k, n, &a, &b), want);
        assert_eq!(via::<i64>(m, k, n, &a, &b), want);
        // Large operands: only f64 / i64 are exact.
        let big: Vec<i64> = a.iter().map(|v| v * 1_000_003).collect();
        let want = naive(m, k, n, &big, &b);
        assert_eq!(via::<f64>(m, k, n, &big, &b), want);
        assert_eq!(via::<i64>(m, k, n, &big, &b), want);
    }

    #[test]
    fn f32_results_convert_exactly() {
        for v in [0i64, 1, -1, 7, -(1 << 24), 1 << 24, 123_456, -9_999_999] {
            assert_eq!(f32_to_i64(v as f32), v);
        }
        assert_eq!(f32_to_i64(-0.0), 0);
    }

    #[test]
    fn slice_ranges_match_the_sequential_fold() {
        let v: Vec<i64> = (0..100_003i64)
            .map(|i| (i * 7919) % 10_007 - 5_000)
            .collect();
        assert_eq!(range_slice(&v), range(v.iter()));
        assert_eq!(range_slice(&v[5..6]), (v[5], v[5]));
        assert_eq!(range_slice::<i64>(&[]), (0, 0));
        let a = ndarray::Array2::from_shape_vec((3, 4), v[..12].to_vec()).unwrap();
        assert_eq!(range_of(a.t()), range(a.iter()));
        assert_eq!(range_of(a.view()), range(a.iter()));
    }

    #[test]
    fn strategy_thresholds() {
        assert_eq!(Strategy::for_bound(1 << 24), Strategy::F32);
        assert_eq!(Strategy::for_bound((1 << 24) + 1), Strategy::F64);
        assert_eq!(Strategy::for_bound(1 << 53), Strategy::F64);
        assert_eq!(Strategy::for_bound((1 << 53) + 1), Strategy::I64);
    }

    #[test]
    fn bound_check_reports_overflow() {
        assert_eq!(check_bound(4, 10, 3, String::new), Ok(120));
        let err = check_bound(1 << 20, 1 << 30, 1 << 30, || "x".into());
        assert!(matches!(err, Err(Error::Overflow(msg)) if msg.contains("2^80")));
    }
}
