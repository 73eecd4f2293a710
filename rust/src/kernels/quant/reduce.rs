//! One-pass (min, max) with the NaN/Inf check of calibration, alone or fused with a copy.

use std::mem::MaybeUninit;

use ndarray::{ArrayViewD, Zip};
use rayon::prelude::*;

use super::float::Real;
use super::CHUNK;
use crate::error::{Error, Result};

/// Result of [`min_max`].
///
/// numpy's SIMD min/max returns +0.0 or -0.0 depending on where each sits in the array when
/// both are present, so the sign cannot be derived from the values alone: the `*_zero_tie`
/// flags say that the extremum is zero and both signs occur, and the caller must then ask
/// numpy for that extremum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MinMax<T> {
    pub min: T,
    pub max: T,
    pub min_zero_tie: bool,
    pub max_zero_tie: bool,
}

#[derive(Clone, Copy)]
struct Acc<T> {
    min: T,
    max: T,
    bad: bool,
    pos_zero: bool,
    neg_zero: bool,
}

impl<T: Real> Acc<T> {
    fn new() -> Self {
        Acc {
            min: T::INFINITY,
            max: T::NEG_INFINITY,
            bad: false,
            pos_zero: false,
            neg_zero: false,
        }
    }

    #[inline(always)]
    fn push(mut self, v: T) -> Self {
        self.min = if v < self.min { v } else { self.min };
        self.max = if v > self.max { v } else { self.max };
        self.bad |= !v.is_finite();
        self.pos_zero |= v.is_pos_zero();
        self.neg_zero |= v.is_neg_zero();
        self
    }

    fn merge(self, o: Self) -> Self {
        Acc {
            min: if o.min < self.min { o.min } else { self.min },
            max: if o.max > self.max { o.max } else { self.max },
            bad: self.bad | o.bad,
            pos_zero: self.pos_zero | o.pos_zero,
            neg_zero: self.neg_zero | o.neg_zero,
        }
    }

    /// [`Acc::scan_generic`] with the widest instruction set the CPU has (exact either way).
    fn scan(xs: &[T]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(acc) = avx2::scan(xs) {
            return acc;
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { scan_avx2(xs) };
        }
        Acc::scan_generic(xs)
    }

    /// Scan a slice with 8 independent lanes of plain float accumulators so the loop
    /// vectorizes: min, max, a sum of `v - v` (0 for finite v, NaN otherwise) and, for
    /// zeros, the min/max of copysign(1, v) (-1 means a -0.0 was seen, +1 a +0.0).
    #[inline(always)]
    fn scan_generic(xs: &[T]) -> Self {
        const L: usize = 8;
        let mut mn = [T::INFINITY; L];
        let mut mx = [T::NEG_INFINITY; L];
        let mut nf = [T::ZERO; L];
        let mut zlo = [T::ZERO; L];
        let mut zhi = [T::ZERO; L];
        let one = T::from_f64(1.0);
        let mut it = xs.chunks_exact(L);
        for c in &mut it {
            for i in 0..L {
                let v = c[i];
                // NaN-ignoring min/max: NaN is caught by `nf`, ±0 ties by the zero lanes.
                mn[i] = mn[i].min_num(v);
                mx[i] = mx[i].max_num(v);
                #[allow(clippy::eq_op)] // v - v is 0 for finite v, NaN for NaN and ±inf
                let d = v - v;
                nf[i] = nf[i] + d;
                let z = if v == T::ZERO {
                    one.copysign(v)
                } else {
                    T::ZERO
                };
                zlo[i] = zlo[i].min_num(z);
                zhi[i] = zhi[i].max_num(z);
            }
        }
        let mut acc = it.remainder().iter().fold(Acc::new(), |a, &v| a.push(v));
        for i in 0..L {
            acc = acc.merge(Acc {
                min: mn[i],
                max: mx[i],
                bad: nf[i] != T::ZERO,
                pos_zero: zhi[i] > T::ZERO,
                neg_zero: zlo[i] < T::ZERO,
            });
        }
        acc
    }
}

/// [`Acc::scan_generic`] compiled for AVX2 (same results: IEEE operations only).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_avx2<T: Real>(xs: &[T]) -> Acc<T> {
    Acc::scan_generic(xs)
}

/// Explicit AVX2 scans of float32 and float64 slices: LLVM does not vectorize the lane
/// accumulators of [`Acc::scan_generic`] fully, and the scan is then compute-bound (about
/// 1 ns per element) instead of memory-bound.
///
/// Each lane keeps `min_pd(v, min)` / `max_pd(v, max)` (a NaN `v` leaves the extremum as
/// it is; NaN is caught by the sum of `v - v`, as in [`Acc::scan_generic`]) and bit tests
/// for +0.0 and -0.0; the lanes are merged at the end. Comparisons are exact, so the result
/// equals the generic scan's (the sign of a zero extremum is left to the tie flags).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::any::TypeId;
    use std::arch::x86_64::*;

    use std::mem::MaybeUninit;

    use super::{Acc, Real};

    /// What the vector lanes found; `done` elements were scanned (a multiple of the unroll).
    struct Lanes {
        min: f64,
        max: f64,
        bad: bool,
        pos_zero: bool,
        neg_zero: bool,
        done: usize,
    }

    /// The scan of `xs` with AVX2, or None when the CPU lacks it (or `T` is neither f32
    /// nor f64).
    pub(super) fn scan<T: Real>(xs: &[T]) -> Option<Acc<T>> {
        if !std::is_x86_feature_detected!("avx2") {
            return None;
        }
        // SAFETY: the CPU supports AVX2 (checked above); no copy, so no destination.
        let lanes = unsafe { lanes::<T, false>(xs, std::ptr::null_mut()) }?;
        Some(xs[lanes.done..].iter().fold(lanes.acc, |a, &v| a.push(v)))
    }

    /// [`scan`] while copying `xs` into `dst` (same length) with non-temporal stores, in
    /// one loop: the scan hides under the memory traffic of the copy, and the copy neither
    /// reads the destination first nor evicts the cache. None as for [`scan`].
    pub(super) fn copy_scan<T: Real>(xs: &[T], dst: &mut [MaybeUninit<T>]) -> Option<Acc<T>> {
        if !std::is_x86_feature_detected!("avx2") || xs.len() != dst.len() {
            return None;
        }
        // Scalar head until the destination is 32-byte aligned (the streaming stores need it).
        let head = dst.as_ptr().align_offset(32).min(xs.len());
        let mut acc = Acc::new();
        for (slot, &v) in dst[..head].iter_mut().zip(&xs[..head]) {
            *slot = MaybeUninit::new(v);
            acc = acc.push(v);
        }
        let (body, out) = (&xs[head..], &mut dst[head..]);
        // SAFETY: AVX2 is present (checked above); `out` holds body.len() elements and starts
        // 32-byte aligned, as `lanes` requires of a destination.
        let lanes = unsafe { lanes::<T, true>(body, out.as_mut_ptr().cast::<T>()) }?;
        for (slot, &v) in out[lanes.done..].iter_mut().zip(&body[lanes.done..]) {
            *slot = MaybeUninit::new(v);
        }
        let tail = body[lanes.done..].iter().fold(lanes.acc, |a, &v| a.push(v));
        Some(acc.merge(tail))
    }

    /// What the vector loop found, and how many leading elements it covered.
    struct Scanned<T> {
        acc: Acc<T>,
        done: usize,
    }

    /// The AVX2 loop for `T` = f32 or f64 (None for any other `T`); with `COPY`, the first
    /// `done` elements are also streamed to `dst`.
    ///
    /// # Safety
    /// The CPU supports AVX2; with `COPY`, `dst` is 32-byte aligned and valid for writes of
    /// `xs.len()` elements of `T`.
    unsafe fn lanes<T: Real, const COPY: bool>(xs: &[T], dst: *mut T) -> Option<Scanned<T>> {
        let found = if TypeId::of::<T>() == TypeId::of::<f64>() {
            // SAFETY: T is f64 (checked just above): the same memory read as f64.
            let xs = unsafe { std::slice::from_raw_parts(xs.as_ptr().cast::<f64>(), xs.len()) };
            // SAFETY: forwarded from the caller.
            unsafe { lanes_f64::<COPY>(xs, dst.cast::<f64>()) }
        } else if TypeId::of::<T>() == TypeId::of::<f32>() {
            // SAFETY: T is f32 (checked just above).
            let xs = unsafe { std::slice::from_raw_parts(xs.as_ptr().cast::<f32>(), xs.len()) };
            // SAFETY: forwarded from the caller.
            unsafe { lanes_f32::<COPY>(xs, dst.cast::<f32>()) }
        } else {
            return None;
        };
        // The lane extrema are values of `xs` (or ±inf), so narrowing them back is exact.
        Some(Scanned {
            acc: Acc {
                min: T::from_f64(found.min),
                max: T::from_f64(found.max),
                bad: found.bad,
                pos_zero: found.pos_zero,
                neg_zero: found.neg_zero,
            },
            done: found.done,
        })
    }

    /// Scalar merge of the lanes of a min and a max vector (stored as f64).
    fn fold_lanes(mins: &[f64], maxs: &[f64]) -> (f64, f64) {
        let min = mins
            .iter()
            .fold(f64::INFINITY, |m, &v| if v < m { v } else { m });
        let max = maxs
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        (min, max)
    }

    /// Four independent vectors per step, so no dependency chain limits the loop.
    const U: usize = 4;

    /// One AVX2 scan loop per float type: `$t` with `$v` lanes per vector and the matching
    /// intrinsics (`$ps` / `$pd` families), the integer compare of its width and the bit
    /// pattern of `-0.0` as that integer.
    macro_rules! avx2_lanes {
        (
            $name:ident, $t:ty, $v:expr, $set1:ident, $zero:ident, $load:ident, $stream:ident,
            $min:ident, $max:ident, $add:ident, $sub:ident, $cast:ident, $cmpeq:ident,
            $set1_int:ident, $sign:expr, $store:ident, $cmp:ident, $movemask:ident
        ) => {
            /// # Safety
            /// As for [`lanes`].
            #[target_feature(enable = "avx2")]
            unsafe fn $name<const COPY: bool>(xs: &[$t], dst: *mut $t) -> Lanes {
                const V: usize = $v;
                let done = xs.len() / (V * U) * (V * U);
                let mut mn = [$set1(<$t>::INFINITY); U];
                let mut mx = [$set1(<$t>::NEG_INFINITY); U];
                let mut nf = [$zero(); U];
                let mut pz = [_mm256_setzero_si256(); U];
                let mut nz = [_mm256_setzero_si256(); U];
                let zero = _mm256_setzero_si256();
                let sign = $set1_int($sign);
                for step in xs[..done].chunks_exact(V * U) {
                    for k in 0..U {
                        // SAFETY: `step` holds V * U elements, so k * V + V - 1 is in bounds.
                        let v = unsafe { $load(step.as_ptr().add(k * V)) };
                        if COPY {
                            let at = step.as_ptr().offset_from(xs.as_ptr()) as usize + k * V;
                            // SAFETY: `at` + V <= done <= xs.len(), and `dst` + at is 32-byte
                            // aligned (`dst` is, and `at` is a multiple of V elements, 32 bytes).
                            unsafe { $stream(dst.add(at), v) };
                        }
                        mn[k] = $min(v, mn[k]);
                        mx[k] = $max(v, mx[k]);
                        nf[k] = $add(nf[k], $sub(v, v));
                        let bits = $cast(v);
                        pz[k] = _mm256_or_si256(pz[k], $cmpeq(bits, zero));
                        nz[k] = _mm256_or_si256(nz[k], $cmpeq(bits, sign));
                    }
                }
                if COPY {
                    _mm_sfence(); // order the streaming stores before the caller's next writes
                }
                let mut mins = [<$t>::INFINITY; V * U];
                let mut maxs = [<$t>::NEG_INFINITY; V * U];
                let (mut bad, mut pos_zero, mut neg_zero) = (false, false, false);
                for k in 0..U {
                    // SAFETY: each store writes V elements at k * V of a V * U array.
                    unsafe {
                        $store(mins.as_mut_ptr().add(k * V), mn[k]);
                        $store(maxs.as_mut_ptr().add(k * V), mx[k]);
                    }
                    let nonzero = $cmp::<_CMP_NEQ_UQ>(nf[k], $zero());
                    bad |= $movemask(nonzero) != 0;
                    pos_zero |= _mm256_testz_si256(pz[k], pz[k]) == 0;
                    neg_zero |= _mm256_testz_si256(nz[k], nz[k]) == 0;
                }
                let widen = |v: &[$t]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
                let (min, max) = fold_lanes(&widen(&mins), &widen(&maxs));
                Lanes {
                    min,
                    max,
                    bad,
                    pos_zero,
                    neg_zero,
                    done,
                }
            }
        };
    }

    avx2_lanes!(
        lanes_f64,
        f64,
        4,
        _mm256_set1_pd,
        _mm256_setzero_pd,
        _mm256_loadu_pd,
        _mm256_stream_pd,
        _mm256_min_pd,
        _mm256_max_pd,
        _mm256_add_pd,
        _mm256_sub_pd,
        _mm256_castpd_si256,
        _mm256_cmpeq_epi64,
        _mm256_set1_epi64x,
        i64::MIN,
        _mm256_storeu_pd,
        _mm256_cmp_pd,
        _mm256_movemask_pd
    );
    avx2_lanes!(
        lanes_f32,
        f32,
        8,
        _mm256_set1_ps,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_stream_ps,
        _mm256_min_ps,
        _mm256_max_ps,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_castps_si256,
        _mm256_cmpeq_epi32,
        _mm256_set1_epi32,
        i32::MIN,
        _mm256_storeu_ps,
        _mm256_cmp_ps,
        _mm256_movemask_ps
    );
}

/// (min, max) over all elements of a float tensor.
///
/// Errors: `Empty` for no elements; `NonFinite` with the C-order flat index of the first NaN
/// or ±inf. Comparisons are exact, so the result does not depend on the chunking.
pub fn min_max<T: Real>(x: ArrayViewD<'_, T>) -> Result<MinMax<T>> {
    if x.is_empty() {
        return Err(Error::Empty);
    }
    let acc = match x.as_slice_memory_order() {
        Some(xs) if xs.len() <= CHUNK => Acc::scan(xs),
        Some(xs) => xs
            .par_chunks(CHUNK)
            .map(Acc::scan)
            .reduce(Acc::new, Acc::merge),
        None => Zip::from(&x).par_fold(Acc::new, |a, &v| a.push(v), Acc::merge),
    };
    finish(acc, &x)
}

/// The result of a scan of `x`: the error of its first non-finite element in C order, or
/// its extrema with their signed-zero ties.
fn finish<T: Real>(acc: Acc<T>, x: &ArrayViewD<'_, T>) -> Result<MinMax<T>> {
    if acc.bad {
        // Rare path: find the first offender in C (logical) order.
        let (flat_index, value) = x
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite())
            .map(|(i, v)| (i, v.to_f64()))
            .unwrap_or((0, f64::NAN));
        return Err(Error::NonFinite { flat_index, value });
    }
    let tie = acc.pos_zero && acc.neg_zero;
    Ok(MinMax {
        min: acc.min,
        max: acc.max,
        min_zero_tie: tie && acc.min == T::ZERO,
        max_zero_tie: tie && acc.max == T::ZERO,
    })
}

/// Elements copied and then scanned at a time by [`copy_min_max`]: 16 KiB of float64, so the
/// scan reads the block back from the L1 cache instead of memory.
const BLOCK: usize = 2048;

/// Copy `src` into `dst` (same length) and scan it, block by block.
fn copy_scan<T: Real>(src: &[T], dst: &mut [MaybeUninit<T>]) -> Acc<T> {
    #[cfg(target_arch = "x86_64")]
    if let Some(acc) = avx2::copy_scan(src, dst) {
        return acc;
    }
    src.chunks(BLOCK)
        .zip(dst.chunks_mut(BLOCK))
        .fold(Acc::new(), |acc, (s, d)| {
            let n = s.len().min(d.len());
            // SAFETY: `s` and `d` hold at least `n` elements each, MaybeUninit<T> has the
            // layout of T, and a fresh output never overlaps its source.
            unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), d.as_mut_ptr().cast::<T>(), n) };
            acc.merge(Acc::scan(s))
        })
}

/// [`min_max`] of `x` while copying its elements into `out`, in one read of the data.
///
/// `x` must be contiguous in memory (C or Fortran order); `out` receives its elements in that
/// memory order, so an output array of the same shape and order is an exact copy. On an
/// error the caller must discard `out`: it may be partly written.
///
/// Errors: those of [`min_max`], and `InvalidArgument` when `x` is not contiguous or `out`
/// has another length.
pub fn copy_min_max<T: Real>(
    x: ArrayViewD<'_, T>,
    out: &mut [MaybeUninit<T>],
) -> Result<MinMax<T>> {
    let Some(xs) = x.as_slice_memory_order() else {
        return Err(Error::InvalidArgument(
            "copy_min_max: the values must be contiguous in memory (C or Fortran order)".into(),
        ));
    };
    if xs.len() != out.len() {
        return Err(Error::InvalidArgument(format!(
            "copy_min_max: the output has {} elements, the values {}",
            out.len(),
            xs.len()
        )));
    }
    if xs.is_empty() {
        return Err(Error::Empty);
    }
    let acc = if xs.len() <= CHUNK {
        copy_scan(xs, out)
    } else {
        xs.par_chunks(CHUNK)
            .zip(out.par_chunks_mut(CHUNK))
            .map(|(s, d)| copy_scan(s, d))
            .reduce(Acc::new, Acc::merge)
    };
    finish(acc, &x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, Array2, ArrayD, IxDyn};

    #[test]
    fn basic_and_chunk_boundaries() {
        for n in [1, 7, 8, 9, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5] {
            let v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 - 333.5).collect();
            let a = arr1(&v).into_dyn();
            let mm = min_max(a.view()).unwrap();
            let want_min = v.iter().cloned().fold(f32::INFINITY, f32::min);
            let want_max = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!((mm.min, mm.max), (want_min, want_max), "n={n}");
        }
    }

    #[test]
    fn first_non_finite_in_c_order() {
        let mut a = Array2::<f64>::zeros((CHUNK / 4, 8));
        a[[100, 3]] = f64::INFINITY;
        a[[5, 7]] = f64::NAN;
        // In C order (5, 7) comes first; in memory order of the transpose it does not.
        let t = a.t().to_owned();
        let err = min_max(a.view().into_dyn()).unwrap_err();
        match err {
            Error::NonFinite { flat_index, value } => {
                assert_eq!(flat_index, 5 * 8 + 7);
                assert!(value.is_nan());
            }
            other => panic!("unexpected {other:?}"),
        }
        match min_max(t.t().into_dyn()).unwrap_err() {
            Error::NonFinite { flat_index, .. } => assert_eq!(flat_index, 5 * 8 + 7),
            other => panic!("unexpected {other:?}"),
        }
        match min_max(arr1(&[1.0f32, f32::NEG_INFINITY]).into_dyn().view()).unwrap_err() {
            Error::NonFinite { flat_index, value } => {
                assert_eq!((flat_index, value), (1, f64::NEG_INFINITY))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn empty_and_strided() {
        let e = ArrayD::<f64>::zeros(IxDyn(&[3, 0]));
        assert_eq!(min_max(e.view()).unwrap_err(), Error::Empty);
        let a = Array2::from_shape_fn((301, 5), |(i, j)| (i as f64) - (j as f64) * 1000.0);
        let v = a.slice(ndarray::s![..;-2, 1..;2]).into_dyn();
        let mm = min_max(v).unwrap();
        assert_eq!((mm.min, mm.max), (-3000.0, -700.0));
    }

    #[test]
    fn signed_zero_ties_are_flagged() {
        let mm = min_max(arr1(&[0.0f64, -0.0, 1.0]).into_dyn().view()).unwrap();
        assert!(mm.min_zero_tie && !mm.max_zero_tie);
        let mm = min_max(arr1(&[-0.0f64, -0.0, 1.0]).into_dyn().view()).unwrap();
        assert!(!mm.min_zero_tie && mm.min.is_neg_zero());
        let mm = min_max(arr1(&[-0.0f32, 0.0]).into_dyn().view()).unwrap();
        assert!(mm.min_zero_tie && mm.max_zero_tie);
    }

    fn copied<T: Real>(x: ArrayViewD<'_, T>) -> (Vec<T>, Result<MinMax<T>>) {
        let mut out = vec![MaybeUninit::new(T::ZERO); x.len()];
        let got = copy_min_max(x, &mut out);
        // SAFETY: every slot was initialized above.
        let out = out
            .into_iter()
            .map(|v| unsafe { v.assume_init() })
            .collect();
        (out, got)
    }

    #[test]
    fn copy_min_max_copies_and_matches_min_max() {
        for n in [1, 7, BLOCK - 1, BLOCK + 3, CHUNK, CHUNK + 1, 3 * CHUNK + 5] {
            let v: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1000) as f64 - 333.5).collect();
            let a = arr1(&v).into_dyn();
            let (out, got) = copied(a.view());
            assert_eq!(out, v, "n={n}");
            assert_eq!(got.unwrap(), min_max(a.view()).unwrap(), "n={n}");
        }
        // Fortran order: the copy is in memory order, the error index in C order.
        let mut a = Array2::<f32>::zeros((CHUNK / 4, 8));
        a[[100, 3]] = f32::INFINITY;
        a[[5, 7]] = f32::NAN;
        let f = a.t().as_standard_layout().into_owned();
        assert!(!f.t().is_standard_layout());
        let (out, got) = copied(f.t().into_dyn());
        assert_eq!(out.len(), a.len());
        assert_eq!(out[3 * (CHUNK / 4) + 100], f32::INFINITY);
        match got.unwrap_err() {
            Error::NonFinite { flat_index, .. } => assert_eq!(flat_index, 5 * 8 + 7),
            other => panic!("unexpected {other:?}"),
        }
        let (_, got) = copied(arr1(&[-0.0f64, 0.0, 2.0]).into_dyn().view());
        let mm = got.unwrap();
        assert!(mm.min_zero_tie && !mm.max_zero_tie);
    }

    #[test]
    fn copy_min_max_refuses_what_it_cannot_copy() {
        let e = ArrayD::<f64>::zeros(IxDyn(&[0, 4]));
        assert_eq!(copy_min_max(e.view(), &mut []).unwrap_err(), Error::Empty);
        let a = Array2::<f64>::zeros((6, 5));
        let mut out = vec![MaybeUninit::new(0.0); 15];
        let strided = a.slice(ndarray::s![..;2, ..]).into_dyn();
        assert!(matches!(
            copy_min_max(strided, &mut out),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            copy_min_max(a.view().into_dyn(), &mut out),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn copy_min_max_any_destination_alignment() {
        // The streaming copy starts at a 32-byte boundary: every misalignment of the
        // destination must still give an exact copy and the same extrema.
        for n in [5usize, 31, 32, 33, 100, 1000] {
            let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 - 50.25).collect();
            let a = arr1(&v).into_dyn();
            for shift in 0..8 {
                let mut buf = vec![MaybeUninit::new(0.0f32); n + 8];
                let got = copy_min_max(a.view(), &mut buf[shift..shift + n]).unwrap();
                // SAFETY: every slot was initialized when `buf` was built.
                let out: Vec<f32> = buf[shift..shift + n]
                    .iter()
                    .map(|x| unsafe { x.assume_init() })
                    .collect();
                assert_eq!(out, v, "n={n} shift={shift}");
                assert_eq!(got, min_max(a.view()).unwrap(), "n={n} shift={shift}");
            }
        }
    }
}
