//! The epilogue of the fused Gemm/Conv (`requant::run_body`) on AVX-512 (F, DQ, VL, BW),
//! sixteen outputs per step. It writes the same integers, extremes and flags as the scalar
//! code, but reaches two of its steps another way:
//!
//! * **The division by the output scale is made of fused multiply-adds.** The float64
//!   divider takes two cycles per value whatever the vector width, which made it the bound
//!   of the AVX2 epilogue. With `y = fl(1/b)` (one division per call),
//!
//!   ```text
//!   q0 = fl(x·y)
//!   q1 = fl(q0 + fl(x − b·q0)·y)      (fused: each line rounds once)
//!   q2 = fl(q1 + fl(x − b·q1)·y)
//!   ```
//!
//!   `q2` is `fl(x / b)` bit for bit. `q0` lies within 1.5 ulp of `x/b`; one correction
//!   step brings it within ½ ulp plus a relative error below 2^-51 of that distance, so `q1`
//!   is within one ulp; and Markstein's theorem (a quotient within one ulp, `y` within half
//!   an ulp of `1/b`, so the remainder `x − b·q1` is exact and one fused step rounds to
//!   `fl(x/b)`; see docs/calibration-throughput.md) gives `q2 = fl(x/b)`, provided nothing
//!   underflows or overflows. The epilogue makes sure of that: it runs only when the call's
//!   `|b|` lies in [2^-400, 2^400] ([`covers`]) and only on groups whose every `|x|` is
//!   below 2^500 (else the group goes to the AVX2 epilogue), so every quotient, product and
//!   remainder of an `|x|` from 2^-500 up is a normal number. A smaller `|x|` (zero
//!   included) has a quotient, exact or not, below 2^-96 in magnitude; added to the zero
//!   point, which [`covers`] requires to be an integer, it rounds to that integer (or, for
//!   a zero point of 0, to a value whose `rint` is ±0), so the integer is the same.
//! * **Clip, then round in the conversion.** The values are finite here, and the clip
//!   bounds are integers (`Requant::check`), so `clip(rint(v)) = rint(clip(v))`; the clip is
//!   `vmaxpd`/`vminpd` and the rounding is the conversion's own (`vcvtpd2dq` with
//!   round-to-nearest-even).
//!
//! Every other step is the single IEEE operation of the scalar code, in the same order
//! (int64 values convert with `vcvtqq2pd`, which rounds as `as f64` does). A
//! round_bit_pattern that would leave int64 sends its group to the AVX2 epilogue, which
//! reports it; so do the groups the fast division does not cover, and the tail.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use crate::kernels::integer::epilogue_avx2::{self, Accumulator};
use crate::kernels::integer::requant::{Narrow, Requant, Stats};
use crate::kernels::integer::rescale::{Operand, Rescale};
use crate::kernels::integer::rounding::half_and_mask;
use crate::kernels::simd::{self, Switch};

/// Whether the AVX-512 epilogue may be used (a switch for benchmarks and differential tests;
/// the integers are the same either way); it needs AVX-512 F/DQ/VL/BW.
pub static SWITCH: Switch = Switch::new(true, simd::wide_vectors);

/// Whether the CPU has AVX-512 and the epilogue is enabled.
#[inline]
pub fn available() -> bool {
    SWITCH.available()
}

/// 2^e for an exponent of the normal range.
pub(crate) const fn pow2(e: i64) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// The range of `|scale|` the fused division covers, [2^-400, 2^400] (see the module docs).
const SCALE_MIN: f64 = pow2(-400);
const SCALE_MAX: f64 = pow2(400);
/// `|x|` below 2^500 is covered.
const X_MAX: f64 = pow2(500);

/// Whether the output quantizer of a call lets this epilogue run: its zero point is an
/// integer (finite) and its scale lies within the range the fused division covers.
#[inline]
pub(crate) fn covers(requant: &Requant) -> bool {
    let s = requant.scale.abs();
    requant.zero_point.fract() == 0.0 && (SCALE_MIN..=SCALE_MAX).contains(&s)
}

/// The broadcast operands of one call.
struct Consts {
    offset: Option<__m512d>,
    scale: __m512d,
    recip: __m512d,
    zero_point: __m512d,
    lo: __m512d,
    hi: __m512d,
    x_max: __m512d,
    half: __m512i,
    mask: __m512i,
    /// The largest accumulator whose rounding stays within int64.
    limit: __m512i,
}

/// The epilogue of `requant::run_body` on `acc` into `dst` (`min(acc.len(), dst.len())`
/// values), sixteen at a time; the same integers, extremes and flags.
///
/// # Safety
/// The CPU has AVX-512 F/DQ/VL/BW (and so AVX2); `rescale.lsbs` is at most `MAX_LSBS`;
/// [`covers`] holds for `requant`.
#[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
pub(crate) unsafe fn run<I: Accumulator, S: Operand, O: Narrow>(
    acc: &[I],
    dst: &mut [MaybeUninit<O>],
    rescale: &Rescale<'_>,
    (sub, mul, add): (S, S, Option<S>),
    requant: &Requant,
) -> Stats {
    let n = acc.len().min(dst.len());
    // slices cut to n (this panics if one is shorter), so `load8` below stays inside them
    let (sub, mul, add) = (sub.prefix(n), mul.prefix(n), add.map(|a| a.prefix(n)));
    let round = rescale.lsbs > 0;
    let (half, mask) = half_and_mask(rescale.lsbs);
    let k = Consts {
        // f + 0.0 is f: the converted accumulators are never −0
        offset: (rescale.offset != 0.0).then(|| _mm512_set1_pd(rescale.offset)),
        scale: _mm512_set1_pd(requant.scale),
        recip: _mm512_set1_pd(1.0 / requant.scale),
        zero_point: _mm512_set1_pd(requant.zero_point),
        lo: _mm512_set1_pd(requant.lo),
        hi: _mm512_set1_pd(requant.hi),
        x_max: _mm512_set1_pd(X_MAX),
        half: _mm512_set1_epi64(half),
        mask: _mm512_set1_epi64(mask),
        limit: _mm512_set1_epi64(i64::MAX - half),
    };
    let mut stats = Stats::EMPTY;
    let mut j = 0;
    loop {
        // SAFETY: AVX-512 (this function's features); slice operands hold n values.
        let (stop, part) = unsafe { groups(acc, dst, j, n, round, (sub, mul, add), &k) };
        stats = stats.join(part);
        j = stop;
        if j + 16 > n {
            break;
        }
        // a group the fast path does not take: the AVX2 epilogue (then on from the next)
        let to = j + 16;
        // SAFETY: AVX2 (implied by this function's features); lsbs as the caller checked.
        let part = unsafe { avx2(acc, dst, j, to, rescale, (sub, mul, add), requant) };
        stats = stats.join(part);
        j = to;
    }
    if j < n {
        // SAFETY: as above.
        let part = unsafe { avx2(acc, dst, j, n, rescale, (sub, mul, add), requant) };
        stats = stats.join(part);
    }
    stats
}

/// The AVX2 epilogue on elements `j..to`.
///
/// # Safety
/// As [`epilogue_avx2::run`]; `to` is at most the length of `acc`, `dst` and the operands.
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn avx2<I: Accumulator, S: Operand, O: Narrow>(
    acc: &[I],
    dst: &mut [MaybeUninit<O>],
    j: usize,
    to: usize,
    rescale: &Rescale<'_>,
    (sub, mul, add): (S, S, Option<S>),
    requant: &Requant,
) -> Stats {
    let operands = (sub.skip(j), mul.skip(j), add.map(|a| a.skip(j)));
    // SAFETY: the caller's guarantees.
    unsafe { epilogue_avx2::run(&acc[j..to], &mut dst[j..to], rescale, operands, requant) }
}

/// The groups of sixteen values from `j` on, while a whole group lies in `0..n` and the
/// fast path covers it; returns where it stopped and the stats of what it wrote.
///
/// # Safety
/// The CPU has AVX-512 F/DQ/VL/BW; `n <= acc.len(), dst.len()` and slice operands hold `n`
/// values.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
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
    let mut vmin = _mm512_set1_epi32(i32::MAX);
    let mut vmax = _mm512_set1_epi32(i32::MIN);
    let start = j;
    while j + 16 <= n {
        // SAFETY: j + 16 <= n <= acc.len().
        let p = unsafe { acc.as_ptr().add(j) };
        let (f0, f1) = if !round {
            // SAFETY: AVX-512, sixteen readable values at p.
            unsafe { (I::load8_f64(p), I::load8_f64(p.add(8))) }
        } else {
            // SAFETY: as above.
            let (v0, v1) = unsafe { (I::load8_i64(p), I::load8_i64(p.add(8))) };
            let over = _mm512_cmpgt_epi64_mask(v0, k.limit) | _mm512_cmpgt_epi64_mask(v1, k.limit);
            if over != 0 {
                break;
            }
            let v0 = _mm512_and_si512(_mm512_add_epi64(v0, k.half), k.mask);
            let v1 = _mm512_and_si512(_mm512_add_epi64(v1, k.half), k.mask);
            (_mm512_cvtepi64_pd(v0), _mm512_cvtepi64_pd(v1))
        };
        // SAFETY: AVX-512; the slices hold n >= j + 16 values.
        let (x0, x1) = unsafe {
            (
                rescale8(f0, j, operands, k),
                rescale8(f1, j + 8, operands, k),
            )
        };
        // |x| < 2^500 (false for NaN and ±inf) in every lane, or the group is not covered
        let small = |x: __m512d| _mm512_cmp_pd_mask::<_CMP_LT_OQ>(_mm512_abs_pd(x), k.x_max);
        if small(x0) & small(x1) != 0xff {
            break;
        }
        let (i0, i1) = (quantize8(x0, k), quantize8(x1, k));
        let ints = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(i0), i1);
        vmin = _mm512_min_epi32(vmin, ints);
        vmax = _mm512_max_epi32(vmax, ints);
        // SAFETY: j + 16 <= n <= dst.len().
        unsafe { store16(dst.as_mut_ptr().add(j), ints) };
        j += 16;
    }
    if j == start {
        return (j, Stats::EMPTY);
    }
    let stats = Stats {
        lo: i64::from(_mm512_reduce_min_epi32(vmin)),
        hi: i64::from(_mm512_reduce_max_epi32(vmax)),
        nan: false,
        over: false,
    };
    (j, stats)
}

/// `((f + offset) − sub) · mul (+ add)` for elements `j..j + 8` of the run.
///
/// # Safety
/// The CPU has AVX-512F; slice operands hold at least `j + 8` values.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
unsafe fn rescale8<S: Operand>(
    f: __m512d,
    j: usize,
    (sub, mul, add): (S, S, Option<S>),
    k: &Consts,
) -> __m512d {
    let f = match k.offset {
        Some(offset) => _mm512_add_pd(f, offset),
        None => f,
    };
    // SAFETY: the caller's guarantees are those of `load8`.
    let (s, m) = unsafe { (sub.load8(j), mul.load8(j)) };
    let x = _mm512_mul_pd(_mm512_sub_pd(f, s), m);
    match add {
        // SAFETY: as above.
        Some(add) => _mm512_add_pd(x, unsafe { add.load8(j) }),
        None => x,
    }
}

/// `clip(rint(x / scale + zero_point), lo, hi)` of eight covered values, as i32.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
fn quantize8(x: __m512d, k: &Consts) -> __m256i {
    let v = _mm512_add_pd(divide(x, k), k.zero_point);
    // finite values and integer bounds: clipping first and rounding after is the same
    let c = _mm512_min_pd(_mm512_max_pd(v, k.lo), k.hi);
    _mm512_cvt_roundpd_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(c)
}

/// `fl(x / scale)` for covered values, by fused multiply-adds (see the module docs).
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
fn divide(x: __m512d, k: &Consts) -> __m512d {
    let q0 = _mm512_mul_pd(x, k.recip);
    let q1 = _mm512_fmadd_pd(_mm512_fnmadd_pd(k.scale, q0, x), k.recip, q0);
    _mm512_fmadd_pd(_mm512_fnmadd_pd(k.scale, q1, x), k.recip, q1)
}

/// Write the sixteen i32 of `v` (within `O`) at `dst` as `O`.
///
/// # Safety
/// The CPU has AVX-512 F/BW; `dst` points at sixteen writable values.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
pub(crate) unsafe fn store16<O: Narrow>(dst: *mut MaybeUninit<O>, v: __m512i) {
    if size_of::<O>() == 1 && O::MIN == i64::from(i8::MIN) {
        // SAFETY: sixteen one-byte values at dst; the saturation never acts (within O).
        unsafe { _mm_storeu_si128(dst.cast(), _mm512_cvtsepi32_epi8(v)) };
    } else if size_of::<O>() == 2 && O::MIN == i64::from(i16::MIN) {
        // SAFETY: sixteen two-byte values at dst.
        unsafe { _mm256_storeu_si256(dst.cast(), _mm512_cvtsepi32_epi16(v)) };
    } else {
        let mut ints = [0i32; 16];
        // SAFETY: ints holds sixteen i32; sixteen values at dst.
        unsafe {
            _mm512_storeu_si512(ints.as_mut_ptr().cast(), v);
            for (at, &i) in ints.iter().enumerate() {
                (*dst.add(at)).write(O::from_i32(i));
            }
        }
    }
}

#[cfg(test)]
#[path = "epilogue_avx512_tests.rs"]
mod tests;
