//! `scale * (q - float64(zero_point))` in float64, for integer `q`.

use std::mem::MaybeUninit;

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD};

use super::quantize::map_into;
use crate::error::Result;

/// Integer element types accepted by [`dequantize`].
pub trait QInt: Copy + Send + Sync + 'static {
    /// numpy's int -> float64 conversion (round to nearest even for |q| > 2^53).
    fn to_f64(self) -> f64;
    /// The value as i64 (exact).
    fn to_i64(self) -> i64;
}

macro_rules! impl_qint {
    ($($t:ty),*) => {$(
        impl QInt for $t {
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn to_i64(self) -> i64 {
                self as i64
            }
        }
    )*};
}
impl_qint!(i8, i16, i32, i64);

/// One dequantized value: `scale * (f64(q) - zero_point)`, the exact float64 of
/// [`dequantize`] (shared by the fused kernels that dequantize on the fly).
#[inline(always)]
pub fn dequantize_value<I: QInt>(q: I, scale: f64, zero_point: f64) -> f64 {
    scale * (q.to_f64() - zero_point)
}

/// Dequantize into a new C-order float64 array: `scale * (f64(q) - zero_point)`.
pub fn dequantize<I: QInt>(q: ArrayViewD<'_, I>, scale: f64, zero_point: f64) -> ArrayD<f64> {
    let mut out = ArrayD::<f64>::uninit(q.raw_dim());
    match dequantize_into(q, out.view_mut(), scale, zero_point) {
        // SAFETY: dequantize_into succeeded, so it wrote every element of `out`.
        Ok(()) => unsafe { out.assume_init() },
        // Unreachable (same shape by construction); never expose uninitialized memory.
        Err(_) => ArrayD::zeros(out.raw_dim()),
    }
}

/// Dequantize into `out` (the shape of `q`); `Shape` error otherwise.
pub fn dequantize_into<I: QInt>(
    q: ArrayViewD<'_, I>,
    out: ArrayViewMutD<'_, MaybeUninit<f64>>,
    scale: f64,
    zero_point: f64,
) -> Result<()> {
    let f = move |v: I| dequantize_value(v, scale, zero_point);
    map_into(q, out, move |v| (f(v), true), f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, Array2};

    #[test]
    fn formula_order_and_rounding() {
        let q = arr1(&[0i64, 3, -4, i64::MAX]).into_dyn();
        let d = dequantize(q.view(), 0.1, 2.0);
        assert_eq!(d[[0]], 0.1 * (0.0 - 2.0));
        assert_eq!(d[[1]], 0.1 * (3.0 - 2.0));
        assert_eq!(d[[2]], 0.1 * (-4.0 - 2.0));
        assert_eq!(d[[3]], 0.1 * (9_223_372_036_854_775_808.0 - 2.0));
        let inf = dequantize(arr1(&[0i8]).into_dyn().view(), f64::INFINITY, 0.0);
        assert!(inf[[0]].is_nan());
    }

    #[test]
    fn strided_views() {
        let a = Array2::from_shape_fn((40_000, 3), |(i, j)| (i as i32) - 3 * (j as i32));
        let v = a.slice(ndarray::s![..;-3, ..]).into_dyn();
        let d = dequantize(v.clone(), 0.5, -1.0);
        for (g, &x) in d.iter().zip(v.iter()) {
            assert_eq!(*g, 0.5 * (x as f64 + 1.0));
        }
    }
}
