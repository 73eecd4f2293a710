//! A screened single-precision epilogue for the fused Gemm (`requant::Rows`) on AVX-512:
//! sixteen int32 accumulators per step, each output integer found in float32 and kept only
//! where float32 is provably enough; every other group goes to the float64 epilogue.
//!
//! The output integer of accumulator `a` in column `j` is `clip(rint(c), lo, hi)`, where `c`
//! is the float64 chain of `requant::run_body` (seven IEEE operations). In exact arithmetic
//! the chain is affine, `r = a·A + B` with
//!
//! ```text
//! A = mul / scale,   B = ((offset − sub)·mul + add) / scale + zero_point
//! ```
//!
//! (per column). The screen computes `v = fl32(a·A32 + B32)` with one fused multiply-add
//! (`A32`, `B32` the float32 roundings of A, B computed in float64) and `m = rint(v)`, and
//! bounds both errors, `|c − r|` (float64, every intermediate within `2^-50·(|a·A| + S)`,
//! `S = ((|offset| + |sub|)·|mul| + |add|)/|scale| + |zero_point|`) and `|v − r|` (float32:
//! the roundings of A, B and the multiply-add), by
//!
//! ```text
//! tol = 2^-22·|v| + 2^-22·|B32| + 2^-48·S + 2^-20
//! ```
//!
//! (the last term covers subnormals, and the rounding of the check itself). Where
//! `|v − m| < 1/2 − tol`, `c`, `r` and `v` all lie strictly inside `(m − 1/2, m + 1/2)`, so
//! `rint(c) = m` (no tie can arise) and the chain's integer is `clip(m, lo, hi)`, which the
//! screen writes. docs/calibration-throughput.md gives the derivation.
//!
//! The screen runs only where the chain cannot overflow or give NaN and float32 holds
//! every value: no round_bit_pattern, every operand finite and below 2^60 in magnitude,
//! `|scale|` at least 2^-60, `|A|·2^24` and `S` below 2^100; and only on groups whose
//! accumulators all lie in [−2^24, 2^24] (exact in float32). A group that fails the check
//! (about one in two thousand on the benchmark MLP) or the range, and the tail of a row, take
//! the float64 epilogue, so the integers, extremes and flags are always that epilogue's.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use crate::kernels::integer::epilogue_avx512::{pow2, store16};
use crate::kernels::integer::requant::{Narrow, Requant};
use crate::kernels::integer::rescale::Rescale;
use crate::kernels::simd::{self, Switch};

/// Whether the screen may be used (a switch for benchmarks and differential tests; the
/// integers are the same either way); it needs AVX-512 F/DQ/VL/BW.
pub static SWITCH: Switch = Switch::new(true, simd::wide_vectors);

/// Largest magnitude of an operand (and smallest of a nonzero scale is its inverse).
const OPERAND_MAX: f64 = pow2(60);
/// Largest `|A|·2^24` and `S` (float32 holds every product and sum).
const TERM_MAX: f64 = pow2(100);
/// Accumulators within ±2^24 convert to float32 exactly.
const ACC_MAX: i32 = 1 << 24;

/// The per-column constants of one call (each of the row's length).
pub(crate) struct Screen {
    a: Vec<f32>,
    b: Vec<f32>,
    /// The constant part of `tol` per column (rounded up).
    k: Vec<f32>,
    lo: f32,
    hi: f32,
}

impl Screen {
    /// The screen of a call with `n` output columns, or None where it does not run (the CPU,
    /// the switch, rounding, or operands outside its range; see the module docs).
    pub(crate) fn new(rescale: &Rescale<'_>, requant: &Requant, n: usize) -> Option<Screen> {
        if !SWITCH.available() || rescale.lsbs > 0 || n < 16 {
            return None;
        }
        let fits = |v: f64| v.is_finite() && v.abs() <= OPERAND_MAX;
        let Requant {
            scale,
            zero_point,
            lo,
            hi,
        } = *requant;
        if !(fits(scale) && fits(zero_point) && fits(rescale.offset))
            || scale.abs() < 1.0 / OPERAND_MAX
        {
            return None;
        }
        let (sub, mul) = (rescale.sub.get(..n)?, rescale.mul.get(..n)?);
        let add = match rescale.add {
            Some(add) => Some(add.get(..n)?),
            None => None,
        };
        let mut screen = Screen {
            a: Vec::with_capacity(n),
            b: Vec::with_capacity(n),
            k: Vec::with_capacity(n),
            // integers within the output type (`Requant::check`): exact in float32
            lo: lo as f32,
            hi: hi as f32,
        };
        let offset = rescale.offset;
        for j in 0..n {
            let (s, m, d) = (sub[j], mul[j], add.map_or(0.0, |a| a[j]));
            if !(fits(s) && fits(m) && fits(d)) {
                return None;
            }
            let a = m / scale;
            let b = ((offset - s) * m + d) / scale + zero_point;
            let size =
                ((offset.abs() + s.abs()) * m.abs() + d.abs()) / scale.abs() + zero_point.abs();
            if !(a.abs() * f64::from(ACC_MAX) < TERM_MAX && size < TERM_MAX) {
                return None;
            }
            let b32 = b as f32;
            let k = pow2(-22) * f64::from(b32).abs() + pow2(-48) * size + pow2(-20);
            screen.a.push(a as f32);
            screen.b.push(b32);
            // rounded up: a float32 at least k
            screen.k.push(up(k));
        }
        Some(screen)
    }

    /// Write the integers of one output row, `acc` → `dst` (both of the call's `n`
    /// columns), sixteen at a time where the screen holds; the columns `from..to` it leaves
    /// go to `rest(from, to, dst)` (the float64 epilogue). Returns the extremes of the
    /// integers the screen wrote (`i32::MAX`, `i32::MIN` when none).
    #[inline]
    pub(crate) fn row<I: Sixteen, O: Narrow>(
        &self,
        acc: &[I],
        dst: &mut [MaybeUninit<O>],
        mut rest: impl FnMut(usize, usize, &mut [MaybeUninit<O>]),
    ) -> (i32, i32) {
        let n = acc.len().min(dst.len()).min(self.a.len());
        let (mut lo, mut hi) = (i32::MAX, i32::MIN);
        let mut j = 0;
        loop {
            // SAFETY: `new` returned a screen, so the CPU has AVX-512 F/DQ/VL/BW; n is
            // within every slice.
            let (stop, l, h) = unsafe { self.groups(acc, dst, j, n) };
            lo = lo.min(l);
            hi = hi.max(h);
            if stop + 16 > n {
                if stop < n {
                    rest(stop, n, dst);
                }
                return (lo, hi);
            }
            rest(stop, stop + 16, dst);
            j = stop + 16;
        }
    }

    /// The groups of sixteen columns from `j` on while a whole group lies in `0..n` and the
    /// screen holds for it; returns where it stopped and the extremes it wrote.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/DQ/VL/BW; `n` is at most the length of `acc`, `dst` and the
    /// screen's columns.
    #[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
    unsafe fn groups<I: Sixteen, O: Narrow>(
        &self,
        acc: &[I],
        dst: &mut [MaybeUninit<O>],
        mut j: usize,
        n: usize,
    ) -> (usize, i32, i32) {
        let k1 = _mm512_set1_ps(pow2(-22) as f32);
        let half = _mm512_set1_ps(0.5);
        let (lo, hi) = (_mm512_set1_ps(self.lo), _mm512_set1_ps(self.hi));
        let mut vmin = _mm512_set1_epi32(i32::MAX);
        let mut vmax = _mm512_set1_epi32(i32::MIN);
        while j + 16 <= n {
            // SAFETY: j + 16 <= n, within every slice.
            let ((x, inside), a, b, k) = unsafe {
                (
                    I::load16(acc.as_ptr().add(j)),
                    _mm512_loadu_ps(self.a.as_ptr().add(j)),
                    _mm512_loadu_ps(self.b.as_ptr().add(j)),
                    _mm512_loadu_ps(self.k.as_ptr().add(j)),
                )
            };
            let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(x), a, b);
            let m = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            let room = _mm512_sub_ps(half, _mm512_abs_ps(_mm512_sub_ps(v, m)));
            let tol = _mm512_fmadd_ps(_mm512_abs_ps(v), k1, k);
            // false for NaN (an infinite v): such lanes fail
            let clear = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(tol, room);
            if inside & clear != 0xffff {
                break;
            }
            let ints = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(m, lo), hi));
            vmin = _mm512_min_epi32(vmin, ints);
            vmax = _mm512_max_epi32(vmax, ints);
            // SAFETY: j + 16 <= n <= dst.len().
            unsafe { store16(dst.as_mut_ptr().add(j), ints) };
            j += 16;
        }
        (
            j,
            _mm512_reduce_min_epi32(vmin),
            _mm512_reduce_max_epi32(vmax),
        )
    }
}

/// The accumulator types the screen reads, sixteen at a time.
pub(crate) trait Sixteen: Copy {
    /// Sixteen accumulators from `p` as int32 (wrapped where they do not fit), and the
    /// mask of those within ±2^24 (exact as int32 and as float32).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/DQ/VL/BW; sixteen readable values at `p`.
    unsafe fn load16(p: *const Self) -> (__m512i, __mmask16);
}

impl Sixteen for i32 {
    #[inline(always)]
    unsafe fn load16(p: *const i32) -> (__m512i, __mmask16) {
        // SAFETY: the caller's guarantees.
        unsafe {
            let x = _mm512_loadu_si512(p.cast());
            // x + 2^24 within [0, 2^25] as unsigned: |x| <= 2^24
            let shifted = _mm512_add_epi32(x, _mm512_set1_epi32(ACC_MAX));
            let inside = _mm512_cmple_epu32_mask(shifted, _mm512_set1_epi32(2 * ACC_MAX));
            (x, inside)
        }
    }
}

impl Sixteen for i64 {
    #[inline(always)]
    unsafe fn load16(p: *const i64) -> (__m512i, __mmask16) {
        // SAFETY: the caller's guarantees.
        unsafe {
            let (x0, x1) = (
                _mm512_loadu_si512(p.cast()),
                _mm512_loadu_si512(p.add(8).cast()),
            );
            let (shift, span) = (
                _mm512_set1_epi64(ACC_MAX.into()),
                _mm512_set1_epi64(2 * i64::from(ACC_MAX)),
            );
            let in0 = _mm512_cmple_epu64_mask(_mm512_add_epi64(x0, shift), span);
            let in1 = _mm512_cmple_epu64_mask(_mm512_add_epi64(x1, shift), span);
            let (n0, n1) = (_mm512_cvtepi64_epi32(x0), _mm512_cvtepi64_epi32(x1));
            let x = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(n0), n1);
            (x, __mmask16::from(in0) | (__mmask16::from(in1) << 8))
        }
    }
}

/// The smallest float32 at least `v` (a positive finite float64).
fn up(v: f64) -> f32 {
    let f = v as f32;
    if f64::from(f) >= v {
        f
    } else {
        f32::from_bits(f.to_bits() + 1)
    }
}

#[cfg(test)]
#[path = "epilogue_screen_tests.rs"]
mod tests;
