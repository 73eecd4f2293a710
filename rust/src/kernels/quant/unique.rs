//! Sorted unique values of numpy's 2-decimal round, `np.unique(np.round(x, 2))`.
//!
//! numpy computes `np.round(x, 2)` as `rint(x * 100) / 100` in the data dtype. Writing
//! `k = rint(x * 100)`, the map x -> k is monotone, so the k range follows from min/max of x;
//! when it is small, a bitmap over it replaces the sort (one read of the data, no hashing).
//! Otherwise the keys are sorted in parallel. Then y = k / 100, which is monotone too, so
//! equal y can only be neighbours.
//!
//! Signed zero: np.unique keeps the first element of each run of equal values after its
//! (SIMD, unstable) sort, so when both -0.0 and +0.0 occur its pick depends on positions in
//! the array. This kernel then returns -0.0 (the IEEE total order puts it first); with one
//! sign only, that sign.

use ndarray::{ArrayViewD, Zip};
use rayon::prelude::*;

use super::float::Real;
use super::CHUNK;

/// Largest k range served by the flag-map path (bytes).
const BITMAP_LIMIT: f64 = (1u64 << 22) as f64;

#[derive(Clone, Copy)]
struct Range<T> {
    min: T,
    max: T,
    nan: bool,
}

impl<T: Real> Range<T> {
    fn new() -> Self {
        Range {
            min: T::INFINITY,
            max: T::NEG_INFINITY,
            nan: false,
        }
    }
    #[inline(always)]
    fn push(mut self, v: T) -> Self {
        self.min = if v < self.min { v } else { self.min };
        self.max = if v > self.max { v } else { self.max };
        self.nan |= v.is_nan();
        self
    }
    fn merge(self, o: Self) -> Self {
        Range {
            min: if o.min < self.min { o.min } else { self.min },
            max: if o.max > self.max { o.max } else { self.max },
            nan: self.nan | o.nan,
        }
    }
    fn scan(xs: &[T]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { range_avx2(xs) };
        }
        Range::scan_generic(xs)
    }

    #[inline(always)]
    fn scan_generic(xs: &[T]) -> Self {
        let mut lanes = [Range::new(); 8];
        let mut it = xs.chunks_exact(8);
        for c in &mut it {
            for (lane, &v) in lanes.iter_mut().zip(c) {
                *lane = lane.push(v);
            }
        }
        let acc = it.remainder().iter().fold(Range::new(), |a, &v| a.push(v));
        lanes.into_iter().fold(acc, Range::merge)
    }
}

/// [`Range::scan_generic`] compiled for AVX2 (same results).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn range_avx2<T: Real>(xs: &[T]) -> Range<T> {
    Range::scan_generic(xs)
}

/// [`Seen::mark_slice_generic`] compiled for AVX2 (same results).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mark_avx2<T: Real>(seen: Seen, xs: &[T], kmin: f64) -> Seen {
    seen.mark_slice_generic(xs, kmin)
}

/// One flag byte per k offset (a plain store per element, unlike a bitmap's
/// read-modify-write), plus the signs of zero seen.
struct Seen {
    flags: Vec<u8>,
    pos_zero: bool,
    neg_zero: bool,
}

impl Seen {
    fn new(len: usize) -> Self {
        Seen {
            flags: vec![0; len],
            pos_zero: false,
            neg_zero: false,
        }
    }

    fn merge(mut self, o: Seen) -> Seen {
        for (a, b) in self.flags.iter_mut().zip(o.flags) {
            *a |= b;
        }
        self.pos_zero |= o.pos_zero;
        self.neg_zero |= o.neg_zero;
        self
    }

    /// Mark the k of every value of `xs`; all k lie in [kmin, kmin + flags.len()).
    fn mark<'a, T: Real>(mut self, xs: impl IntoIterator<Item = &'a T>, kmin: f64) -> Seen {
        let (mut pos, mut neg) = (false, false);
        for &v in xs {
            let k = round_k(v);
            // k is an integer in range; the difference is exact.
            let i = (k.to_f64() - kmin) as usize;
            if let Some(f) = self.flags.get_mut(i) {
                *f = 1;
            }
            pos |= k.is_pos_zero();
            neg |= k.is_neg_zero();
        }
        self.pos_zero |= pos;
        self.neg_zero |= neg;
        self
    }

    /// [`Seen::mark`] for a slice, 8 values at a time: the offsets are computed with
    /// vectorizable float and integer operations (the magic-number conversion; offsets are
    /// below 2^22) and only the flag stores are scalar.
    fn mark_slice<T: Real>(self, xs: &[T], kmin: f64) -> Seen {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { mark_avx2(self, xs, kmin) };
        }
        self.mark_slice_generic(xs, kmin)
    }

    #[inline(always)]
    fn mark_slice_generic<T: Real>(mut self, xs: &[T], kmin: f64) -> Seen {
        const L: usize = 8;
        const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
        let (mut zlo, mut zhi) = ([0.0f64; L], [0.0f64; L]);
        let mut idx = [0u64; L];
        let mut it = xs.chunks_exact(L);
        for c in &mut it {
            for i in 0..L {
                let k = round_k(c[i]).to_f64();
                idx[i] = ((k - kmin) + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits());
                let z = if k == 0.0 { 1.0f64.copysign(k) } else { 0.0 };
                zlo[i] = zlo[i].min(z);
                zhi[i] = zhi[i].max(z);
            }
            for &i in &idx {
                if let Some(f) = self.flags.get_mut(i as usize) {
                    *f = 1;
                }
            }
        }
        self.pos_zero |= zhi.iter().any(|&z| z > 0.0);
        self.neg_zero |= zlo.iter().any(|&z| z < 0.0);
        self.mark(it.remainder(), kmin)
    }
}

#[inline(always)]
fn round_k<T: Real>(v: T) -> T {
    (v * T::from_f64(100.0)).rint()
}

/// Sorted unique values of `rint(x * 100) / 100` (data dtype), or `None` if `x` holds a NaN
/// (the caller then defers to numpy, whose NaN handling in `np.unique` is its own).
pub fn rounded_unique<T: Real>(x: ArrayViewD<'_, T>) -> Option<Vec<T>> {
    if x.is_empty() {
        return Some(Vec::new());
    }
    let slice = x.as_slice_memory_order();
    let range = match slice {
        Some(xs) if xs.len() <= CHUNK => Range::scan(xs),
        Some(xs) => xs
            .par_chunks(CHUNK)
            .map(Range::scan)
            .reduce(Range::new, Range::merge),
        None => Zip::from(&x).par_fold(Range::new, |a, &v| a.push(v), Range::merge),
    };
    if range.nan {
        return None;
    }
    let (kmin, kmax) = (round_k(range.min).to_f64(), round_k(range.max).to_f64());
    let span = kmax - kmin; // exact: both are integers of one float format
    let small = span.is_finite() && span < BITMAP_LIMIT && span <= 4.0 * x.len() as f64;
    let mut keys: Vec<T> = if small {
        from_bitmap(&x, slice, kmin, span as usize + 1)
    } else {
        from_sort(&x, slice)
    };
    // y = k / 100 is monotone: drop equal neighbours (bitwise equal, or the zero pair).
    for k in keys.iter_mut() {
        *k = *k / T::from_f64(100.0);
    }
    keys.dedup_by(|b, a| a == b);
    Some(keys)
}

/// Unique k (ascending, zero signed as documented) through a flag map over
/// [kmin, kmin + bits).
fn from_bitmap<T: Real>(
    x: &ArrayViewD<'_, T>,
    slice: Option<&[T]>,
    kmin: f64,
    bits: usize,
) -> Vec<T> {
    let seen = match slice {
        Some(xs) if xs.len() <= CHUNK => Seen::new(bits).mark_slice(xs, kmin),
        Some(xs) => xs
            .par_chunks(CHUNK)
            .fold(|| Seen::new(bits), |s, c| s.mark_slice(c, kmin))
            .reduce(|| Seen::new(bits), Seen::merge),
        None => Seen::new(bits).mark(x.iter(), kmin),
    };
    let zero = if seen.neg_zero { T::NEG_ZERO } else { T::ZERO };
    let mut out = Vec::new();
    for (i, _) in seen.flags.iter().enumerate().filter(|(_, &f)| f != 0) {
        let k = T::from_f64(kmin + i as f64);
        out.push(if k == T::ZERO { zero } else { k });
    }
    out
}

/// Unique k (ascending, zero signed as documented) by a parallel sort of order keys.
fn from_sort<T: Real>(x: &ArrayViewD<'_, T>, slice: Option<&[T]>) -> Vec<T> {
    let mut ks: Vec<T> = match slice {
        Some(xs) => xs.par_iter().map(|&v| round_k(v)).collect(),
        None => x.iter().map(|&v| round_k(v)).collect(),
    };
    let neg_zero = ks.par_iter().any(|k| k.is_neg_zero());
    ks.par_sort_unstable_by_key(|k| k.order_key());
    ks.dedup_by_key(|k| k.order_key());
    let zero = if neg_zero { T::NEG_ZERO } else { T::ZERO };
    for k in ks.iter_mut() {
        if *k == T::ZERO {
            *k = zero;
        }
    }
    ks
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, Array2};

    /// Straightforward model: round each value, sort by total order, dedup.
    fn model<T: Real>(xs: &[T]) -> Vec<T> {
        let mut ys: Vec<T> = xs
            .iter()
            .map(|&v| round_k(v) / T::from_f64(100.0))
            .collect();
        let neg = ys.iter().any(|y| y.is_neg_zero());
        ys.sort_by_key(|y| y.order_key());
        ys.dedup_by_key(|y| y.order_key());
        for y in ys.iter_mut() {
            if *y == T::ZERO {
                *y = if neg { T::NEG_ZERO } else { T::ZERO };
            }
        }
        ys
    }

    fn bits<T: Real>(v: &[T]) -> Vec<i64> {
        v.iter()
            .map(|y| {
                if y.is_neg_zero() {
                    i64::MIN
                } else {
                    y.order_key()
                }
            })
            .collect()
    }

    #[test]
    fn two_decimal_round_is_binary_not_decimal() {
        let x = arr1(&[0.125f64, 0.135, 0.125, -0.004, 0.004]).into_dyn();
        let u = rounded_unique(x.view()).unwrap();
        assert_eq!(u.len(), 3);
        assert_eq!(u[0].to_bits(), (-0.0f64).to_bits());
        assert_eq!(u[1], 0.12);
        assert_eq!(u[2], 0.14);
        let only_pos = rounded_unique(arr1(&[0.001f32, 0.5]).into_dyn().view()).unwrap();
        assert!(only_pos[0].is_pos_zero());
    }

    #[test]
    fn bitmap_and_sort_paths_agree_with_model() {
        let n = 3 * CHUNK + 11;
        let narrow: Vec<f64> = (0..n)
            .map(|i| ((i * 7919) % 2001) as f64 * 0.0137 - 13.0)
            .collect();
        let wide: Vec<f64> = (0..n)
            .map(|i| ((i * 104_729) % 1_000_003) as f64 * 0.731 - 3e5)
            .collect();
        for xs in [&narrow, &wide] {
            let a = arr1(xs).into_dyn();
            assert_eq!(bits(&rounded_unique(a.view()).unwrap()), bits(&model(xs)));
            let x32: Vec<f32> = xs.iter().map(|&v| v as f32).collect();
            let a32 = arr1(&x32).into_dyn();
            assert_eq!(
                bits(&rounded_unique(a32.view()).unwrap()),
                bits(&model(&x32))
            );
        }
    }

    #[test]
    fn huge_values_overflow_to_inf_and_nan_defers() {
        let xs = [3e38f32, -3e38, 1.0, f32::INFINITY];
        let u = rounded_unique(arr1(&xs).into_dyn().view()).unwrap();
        assert_eq!(u, vec![f32::NEG_INFINITY, 1.0, f32::INFINITY]);
        assert!(rounded_unique(arr1(&[1.0f64, f64::NAN]).into_dyn().view()).is_none());
        let e = Array2::<f64>::zeros((0, 3));
        assert!(rounded_unique(e.view().into_dyn()).unwrap().is_empty());
    }

    #[test]
    fn strided_views() {
        let a = Array2::from_shape_fn((500, 9), |(i, j)| (i as f32) * 0.0031 - (j as f32) * 0.77);
        let v = a.slice(ndarray::s![..;-3, 2..]).into_dyn();
        let flat: Vec<f32> = v.iter().cloned().collect();
        assert_eq!(bits(&rounded_unique(v).unwrap()), bits(&model(&flat)));
    }
}
