//! One-pass (min, max) with the NaN/Inf check of calibration.

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
}
