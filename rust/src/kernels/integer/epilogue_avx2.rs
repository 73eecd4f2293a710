//! The epilogue of the fused Gemm/Conv (`requant::run_body`: round_bit_pattern, the float64
//! rescale, the output quantizer, the narrow store) written with AVX2 intrinsics, eight
//! outputs per step. Every step is the same single IEEE operation as in the scalar code, in
//! the same order (no FMA), so the integers, their extremes and the flags are the same bits:
//!
//! * i64 → f64 exactly by the magic number 1.5·2^52 (integer add of its bits, float
//!   subtract), valid for −2^51 ≤ v < 2^51: a group of eight with any value outside that
//!   range is handed to the scalar code (int32 accumulators without rounding are converted
//!   directly, `vcvtdq2pd`, always exact);
//! * round_bit_pattern as `(v + half) & mask` (a value for which this leaves int64 wraps
//!   out of the magic number's range, so the scalar code reports the overflow);
//! * `((f + offset) − sub) · mul (+ add)`, `/ scale + zero_point`;
//! * `vroundpd` to nearest even (the same as `Real::rint`: ties to even, sign of zero kept),
//!   then `clip` as two compare + blend steps (NaN passes both, the bound wins on ties);
//! * `vcvtpd2dq` (exact: the values are integers; NaN gives i32::MIN, which becomes 0 and
//!   sets the NaN flag), running i32 extremes, saturating packs (exact: the values lie
//!   within the output type).
//!
//! Lengths that are not a multiple of eight finish with the scalar code.

use crate::kernels::simd::{self, Switch};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use crate::kernels::integer::requant::{run_body, Narrow, Requant, Stats};
use crate::kernels::integer::rescale::{Operand, Rescale};
use crate::kernels::integer::rounding::half_and_mask;

/// Whether the vector epilogue may be used (a switch for benchmarks and differential tests;
/// the results are the same integers either way); it needs AVX2.
pub static SWITCH: Switch = Switch::new(true, simd::avx2);

/// Whether the CPU has AVX2 and the vector epilogue is enabled.
#[inline]
pub fn available() -> bool {
    SWITCH.available()
}

/// The integer accumulators the epilogue reads.
pub trait Accumulator: Copy + Send + Sync + 'static {
    /// Every value converts exactly with `vcvtdq2pd` (no range check needed).
    const SMALL: bool;
    /// The value as i64 (exact).
    fn widen(self) -> i64;
    /// Four values from `p` on as i64.
    ///
    /// # Safety
    /// The CPU has AVX2 and `p` points at four readable values.
    unsafe fn load_i64(p: *const Self) -> __m256i;
    /// Four values from `p` on as f64 (exactly, for `SMALL` types).
    ///
    /// # Safety
    /// As [`Accumulator::load_i64`].
    unsafe fn load_f64(p: *const Self) -> __m256d;
    /// Eight values from `p` on as i64.
    ///
    /// # Safety
    /// The CPU has AVX-512F and `p` points at eight readable values.
    unsafe fn load8_i64(p: *const Self) -> __m512i;
    /// Eight values from `p` on as f64, each rounded to nearest as `v as f64` is (exact for
    /// `SMALL` types).
    ///
    /// # Safety
    /// As [`Accumulator::load8_i64`].
    unsafe fn load8_f64(p: *const Self) -> __m512d;
}

impl Accumulator for i64 {
    const SMALL: bool = false;
    #[inline(always)]
    fn widen(self) -> i64 {
        self
    }
    #[inline(always)]
    unsafe fn load_i64(p: *const Self) -> __m256i {
        // SAFETY: the caller guarantees AVX2 and four readable values.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[inline(always)]
    unsafe fn load_f64(p: *const Self) -> __m256d {
        // SAFETY: as `load_i64` (not used on the fast path: i64 is not SMALL).
        unsafe {
            _mm256_set_pd(
                *p.add(3) as f64,
                *p.add(2) as f64,
                *p.add(1) as f64,
                *p as f64,
            )
        }
    }
    #[inline(always)]
    unsafe fn load8_i64(p: *const Self) -> __m512i {
        // SAFETY: the caller guarantees AVX-512F and eight readable values.
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
    #[inline(always)]
    unsafe fn load8_f64(p: *const Self) -> __m512d {
        // SAFETY: as `load8_i64`; `vcvtqq2pd` rounds as `as f64` does.
        unsafe { _mm512_cvtepi64_pd(_mm512_loadu_si512(p.cast())) }
    }
}

impl Accumulator for i32 {
    const SMALL: bool = true;
    #[inline(always)]
    fn widen(self) -> i64 {
        i64::from(self)
    }
    #[inline(always)]
    unsafe fn load_i64(p: *const Self) -> __m256i {
        // SAFETY: the caller guarantees AVX2 and four readable values.
        unsafe { _mm256_cvtepi32_epi64(_mm_loadu_si128(p.cast())) }
    }
    #[inline(always)]
    unsafe fn load_f64(p: *const Self) -> __m256d {
        // SAFETY: the caller guarantees AVX2 and four readable values.
        unsafe { _mm256_cvtepi32_pd(_mm_loadu_si128(p.cast())) }
    }
    #[inline(always)]
    unsafe fn load8_i64(p: *const Self) -> __m512i {
        // SAFETY: the caller guarantees AVX-512F and eight readable values.
        unsafe { _mm512_cvtepi32_epi64(_mm256_loadu_si256(p.cast())) }
    }
    #[inline(always)]
    unsafe fn load8_f64(p: *const Self) -> __m512d {
        // SAFETY: as `load8_i64`.
        unsafe { _mm512_cvtepi32_pd(_mm256_loadu_si256(p.cast())) }
    }
}

/// 1.5·2^52: its bits plus an integer in [−2^51, 2^51) are that integer plus 1.5·2^52.
const MAGIC: f64 = 6_755_399_441_055_744.0;

/// The broadcast operands of one call.
struct Consts {
    offset: __m256d,
    scale: __m256d,
    zero_point: __m256d,
    lo: __m256d,
    hi: __m256d,
    magic: __m256d,
    magic_bits: __m256i,
    /// 2^51: v + 2^51 lies in [0, 2^52) exactly for the values the magic number converts.
    bias: __m256i,
    half: __m256i,
    mask: __m256i,
}

/// The epilogue of `requant::run_body` on `acc` into `dst` (`min(acc.len(), dst.len())`
/// values), eight at a time; the same integers, extremes and flags.
///
/// # Safety
/// The CPU has AVX2. `rescale.lsbs` is at most `MAX_LSBS` (as `Rescale::check` ensures).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn run<I: Accumulator, S: Operand, O: Narrow>(
    acc: &[I],
    dst: &mut [MaybeUninit<O>],
    rescale: &Rescale<'_>,
    (sub, mul, add): (S, S, Option<S>),
    requant: &Requant,
) -> Stats {
    let n = acc.len().min(dst.len());
    // slices cut to n (this panics if one is shorter), so `load4` below stays inside them
    let (sub, mul, add) = (sub.prefix(n), mul.prefix(n), add.map(|a| a.prefix(n)));
    let round = rescale.lsbs > 0;
    let (half, mask) = half_and_mask(rescale.lsbs);
    let k = Consts {
        offset: _mm256_set1_pd(rescale.offset),
        scale: _mm256_set1_pd(requant.scale),
        zero_point: _mm256_set1_pd(requant.zero_point),
        lo: _mm256_set1_pd(requant.lo),
        hi: _mm256_set1_pd(requant.hi),
        magic: _mm256_set1_pd(MAGIC),
        magic_bits: _mm256_set1_epi64x(MAGIC.to_bits() as i64),
        bias: _mm256_set1_epi64x(1 << 51),
        half: _mm256_set1_epi64x(half),
        mask: _mm256_set1_epi64x(mask),
    };
    let mut stats = Stats::EMPTY;
    let mut j = 0;
    loop {
        // the groups of eight the vector code takes, up to the first it cannot convert
        // SAFETY: AVX2 (this function's feature); slice operands hold n values.
        let (stop, part) = unsafe { groups(acc, dst, j, n, round, (sub, mul, add), &k) };
        stats = stats.join(part);
        j = stop;
        if j + 8 > n {
            break;
        }
        // a value out of the magic number's range at j: this group the scalar way
        let part = scalar(
            &acc[j..j + 8],
            &mut dst[j..j + 8],
            rescale,
            (sub.skip(j), mul.skip(j), add.map(|a| a.skip(j))),
            requant,
        );
        stats = stats.join(part);
        j += 8;
    }
    if j < n {
        let part = scalar(
            &acc[j..n],
            &mut dst[j..n],
            rescale,
            (sub.skip(j), mul.skip(j), add.map(|a| a.skip(j))),
            requant,
        );
        stats = stats.join(part);
    }
    stats
}

/// The groups of eight values from `j` on, while a whole group lies in `0..n` and converts
/// exactly; returns where it stopped and the stats of what it wrote (no calls in the loop,
/// so the running extremes and constants stay in registers).
///
/// # Safety
/// The CPU has AVX2; `n <= acc.len(), dst.len()` and slice operands hold `n` values.
#[inline]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn groups<I: Accumulator, S: Operand, O: Narrow>(
    acc: &[I],
    dst: &mut [MaybeUninit<O>],
    mut j: usize,
    n: usize,
    round: bool,
    operands: (S, S, Option<S>),
    k: &Consts,
) -> (usize, Stats) {
    let mut vmin = _mm256_set1_epi32(i32::MAX);
    let mut vmax = _mm256_set1_epi32(i32::MIN);
    let mut nan = _mm256_setzero_si256();
    let indefinite = _mm256_set1_epi32(i32::MIN);
    let start = j;
    while j + 8 <= n {
        // SAFETY: j + 8 <= n <= acc.len().
        let p = unsafe { acc.as_ptr().add(j) };
        let (f0, f1) = if I::SMALL && !round {
            // SAFETY: AVX2, eight readable values at p.
            unsafe { (I::load_f64(p), I::load_f64(p.add(4))) }
        } else {
            // SAFETY: as above.
            let (mut v0, mut v1) = unsafe { (I::load_i64(p), I::load_i64(p.add(4))) };
            if round {
                // v > i64::MAX − half wraps to below i64::MIN + half <= −2^63 + 2^61: out
                // of the magic number's range, so the scalar code takes the group and
                // reports the overflow
                v0 = _mm256_and_si256(_mm256_add_epi64(v0, k.half), k.mask);
                v1 = _mm256_and_si256(_mm256_add_epi64(v1, k.half), k.mask);
            }
            let t0 = _mm256_srli_epi64::<52>(_mm256_add_epi64(v0, k.bias));
            let t1 = _mm256_srli_epi64::<52>(_mm256_add_epi64(v1, k.bias));
            let t = _mm256_or_si256(t0, t1);
            if _mm256_testz_si256(t, t) == 0 {
                break;
            }
            (exact_f64(v0, k), exact_f64(v1, k))
        };
        // SAFETY: AVX2; the slices hold n >= j + 8 values.
        let i0 = unsafe { quantize4(f0, j, operands, k) };
        // SAFETY: as above.
        let i1 = unsafe { quantize4(f1, j + 4, operands, k) };
        // NaN lanes (i32::MIN) become 0, as in the scalar code
        let raw = _mm256_set_m128i(i1, i0);
        let bad = _mm256_cmpeq_epi32(raw, indefinite);
        nan = _mm256_or_si256(nan, bad);
        let both = _mm256_andnot_si256(bad, raw);
        vmin = _mm256_min_epi32(vmin, both);
        vmax = _mm256_max_epi32(vmax, both);
        let (i0, i1) = (
            _mm256_castsi256_si128(both),
            _mm256_extracti128_si256::<1>(both),
        );
        // SAFETY: j + 8 <= n <= dst.len().
        unsafe { store8(dst.as_mut_ptr().add(j), i0, i1) };
        j += 8;
    }
    if j == start {
        return (j, Stats::EMPTY);
    }
    // the extremes across the lanes
    let lo = _mm_min_epi32(
        _mm256_castsi256_si128(vmin),
        _mm256_extracti128_si256::<1>(vmin),
    );
    let lo = _mm_min_epi32(lo, _mm_shuffle_epi32::<0b01_00_11_10>(lo));
    let lo = _mm_min_epi32(lo, _mm_shuffle_epi32::<0b10_11_00_01>(lo));
    let hi = _mm_max_epi32(
        _mm256_castsi256_si128(vmax),
        _mm256_extracti128_si256::<1>(vmax),
    );
    let hi = _mm_max_epi32(hi, _mm_shuffle_epi32::<0b01_00_11_10>(hi));
    let hi = _mm_max_epi32(hi, _mm_shuffle_epi32::<0b10_11_00_01>(hi));
    let stats = Stats {
        lo: i64::from(_mm_cvtsi128_si32(lo)),
        hi: i64::from(_mm_cvtsi128_si32(hi)),
        nan: _mm256_testz_si256(nan, nan) == 0,
        over: false,
    };
    (j, stats)
}

/// `v as f64` for four values in [−2^51, 2^51) (exact).
#[inline]
#[target_feature(enable = "avx2")]
fn exact_f64(v: __m256i, k: &Consts) -> __m256d {
    _mm256_sub_pd(
        _mm256_castsi256_pd(_mm256_add_epi64(v, k.magic_bits)),
        k.magic,
    )
}

/// The rescale and the quantizer of four values `f` (elements `j..j + 4` of the run): the
/// integers, with `i32::MIN` (`vcvtpd2dq`'s "integer indefinite") for NaN, a value no
/// integer within the output type takes.
///
/// # Safety
/// The CPU has AVX2; slice operands hold at least `j + 4` values.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn quantize4<S: Operand>(
    f: __m256d,
    j: usize,
    (sub, mul, add): (S, S, Option<S>),
    k: &Consts,
) -> __m128i {
    // SAFETY: the caller's guarantees are those of `load4`.
    let (s, m) = unsafe { (sub.load4(j), mul.load4(j)) };
    let mut x = _mm256_mul_pd(_mm256_sub_pd(_mm256_add_pd(f, k.offset), s), m);
    if let Some(add) = add {
        // SAFETY: as above.
        x = _mm256_add_pd(x, unsafe { add.load4(j) });
    }
    let x = _mm256_add_pd(_mm256_div_pd(x, k.scale), k.zero_point);
    // NaN or an integer within the output type: the conversion is exact
    _mm256_cvtpd_epi32(round_clip(x, k))
}

/// `clip(rint(x), lo, hi)` (`Real::rint`, `quant::float::clip`) of four values.
#[inline]
#[target_feature(enable = "avx2")]
fn round_clip(x: __m256d, k: &Consts) -> __m256d {
    // to nearest, ties to even, the sign of zero kept, NaN and ±inf as they are
    let r = _mm256_round_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    // `lo` when r <= lo (false for NaN), then `hi` when y >= hi (false for NaN)
    let y = _mm256_blendv_pd(r, k.lo, _mm256_cmp_pd::<_CMP_LE_OQ>(r, k.lo));
    _mm256_blendv_pd(y, k.hi, _mm256_cmp_pd::<_CMP_GE_OQ>(y, k.hi))
}

/// Write the eight i32 of `i0`, `i1` (within `O`) at `dst` as `O`.
///
/// # Safety
/// The CPU has AVX2; `dst` points at eight writable values.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store8<O: Narrow>(dst: *mut MaybeUninit<O>, i0: __m128i, i1: __m128i) {
    let words = _mm_packs_epi32(i0, i1);
    if size_of::<O>() == 1 && O::MIN == i64::from(i8::MIN) {
        // SAFETY: eight one-byte values at dst (8 bytes).
        unsafe { _mm_storel_epi64(dst.cast(), _mm_packs_epi16(words, words)) };
    } else if size_of::<O>() == 2 && O::MIN == i64::from(i16::MIN) {
        // SAFETY: eight two-byte values at dst (16 bytes).
        unsafe { _mm_storeu_si128(dst.cast(), words) };
    } else {
        let mut ints = [0i32; 8];
        // SAFETY: ints holds eight i32 (16 bytes each half); eight values at dst.
        unsafe {
            _mm_storeu_si128(ints.as_mut_ptr().cast(), i0);
            _mm_storeu_si128(ints.as_mut_ptr().add(4).cast(), i1);
            for (at, &i) in ints.iter().enumerate() {
                (*dst.add(at)).write(O::from_i32(i));
            }
        }
    }
}

/// `run_body` on at most eight accumulators (widened to i64 on the stack; out of line:
/// the tail of a run, or a group the vector code cannot convert).
#[inline(never)]
fn scalar<I: Accumulator, S: Operand, O: Narrow>(
    acc: &[I],
    dst: &mut [MaybeUninit<O>],
    rescale: &Rescale<'_>,
    operands: (S, S, Option<S>),
    requant: &Requant,
) -> Stats {
    let mut wide = [0i64; 8];
    let wide = &mut wide[..acc.len().min(8)];
    for (w, &v) in wide.iter_mut().zip(acc) {
        *w = v.widen();
    }
    run_body(wide, dst, rescale, operands, requant)
}

#[cfg(test)]
#[path = "epilogue_tests.rs"]
mod tests;
