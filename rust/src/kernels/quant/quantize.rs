//! `q = cast(clip(rint(x / scale + zero_point), lo, hi))` with numpy 1.26 dtypes.
//!
//! numpy picks the precision of each step by value-based promotion (docs/contract.md §0): with
//! float32 data the division is float32 unless |scale| > float32 max, the add is float32 unless the
//! zero point needs more, and `np.clip` widens to float64 for bounds outside int16/uint16.
//! The caller (Python, with `np.result_type`) decides those precisions and passes the scalars
//! already converted to them; this kernel runs the steps in exactly that order.

use std::mem::MaybeUninit;

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Zip};
use rayon::prelude::*;

use super::float::{clip, Cast, Real};
use super::CHUNK;
use crate::error::{Error, Result};

/// Precision of one step of the formula.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prec {
    F32,
    F64,
}

/// The scalars of the formula, each already converted to the precision of its step.
#[derive(Clone, Copy, Debug)]
pub struct QuantSpec {
    pub scale: f64,
    pub zero_point: f64,
    /// Clip bounds (lo, hi); `None` for no clipping.
    pub clip: Option<(f64, f64)>,
    /// Precision of `x / scale`.
    pub div: Prec,
    /// Precision of `+ zero_point` and of `rint`.
    pub add: Prec,
    /// Precision of the clip (ignored without clipping).
    pub clip_prec: Prec,
}

/// Quantize `x` into a new C-order array of `O` (see [`quantize_into`]).
pub fn quantize<T: Real, O: Cast>(x: ArrayViewD<'_, T>, spec: &QuantSpec) -> Result<ArrayD<O>> {
    let mut out = ArrayD::<O>::uninit(x.raw_dim());
    quantize_into(x, out.view_mut(), spec)?;
    // SAFETY: quantize_into succeeded, so it wrote every element of `out`.
    Ok(unsafe { out.assume_init() })
}

/// Quantize `x` into `out`, which has the shape of `x`.
///
/// Fails with `InvalidArgument` if a step is asked to run in a lower precision than the one
/// before it (numpy never narrows), including any float32 step for float64 data, and with
/// `Shape` if `out` does not have the shape of `x`.
pub fn quantize_into<T: Real, O: Cast>(
    x: ArrayViewD<'_, T>,
    out: ArrayViewMutD<'_, MaybeUninit<O>>,
    spec: &QuantSpec,
) -> Result<()> {
    use Prec::{F32, F64};
    let input = if std::mem::size_of::<T>() == 4 {
        F32
    } else {
        F64
    };
    let clip_prec = if spec.clip.is_some() {
        spec.clip_prec
    } else {
        spec.add
    };
    let rank = |p: Prec| p as u8;
    if rank(spec.div) < rank(input)
        || rank(spec.add) < rank(spec.div)
        || rank(clip_prec) < rank(spec.add)
    {
        return Err(Error::InvalidArgument(format!(
            "quantize: precisions must not narrow along data -> div -> add -> clip, got \
             {input:?} -> {:?} -> {:?} -> {clip_prec:?}",
            spec.div, spec.add
        )));
    }
    match (spec.div, spec.add, clip_prec) {
        (F32, F32, F32) => run::<T, f32, f32, f32, O>(x, out, spec),
        (F32, F32, F64) => run::<T, f32, f32, f64, O>(x, out, spec),
        (F32, F64, _) => run::<T, f32, f64, f64, O>(x, out, spec),
        _ => run::<T, f64, f64, f64, O>(x, out, spec),
    }
}

/// Monomorphized driver: `A` division, `B` add/rint, `C` clip precision.
fn run<T: Real, A: Real, B: Real, C: Real, O: Cast>(
    x: ArrayViewD<'_, T>,
    out: ArrayViewMutD<'_, MaybeUninit<O>>,
    spec: &QuantSpec,
) -> Result<()> {
    let s = A::from_f64(spec.scale);
    let z = B::from_f64(spec.zero_point);
    match spec.clip {
        Some((lo, hi)) => {
            let (lo, hi) = (C::from_f64(lo), C::from_f64(hi));
            let value = move |v: T| clip(C::from_f64(step::<T, A, B>(v, s, z).to_f64()), lo, hi);
            map_into(
                x,
                out,
                move |v| O::cast_fast(value(v)),
                move |v| O::cast(value(v)),
            )
        }
        None => {
            let value = move |v: T| step::<T, A, B>(v, s, z);
            map_into(
                x,
                out,
                move |v| O::cast_fast(value(v)),
                move |v| O::cast(value(v)),
            )
        }
    }
}

/// rint(x / s + z) with the division in `A` and the add and rint in `B`.
#[inline(always)]
fn step<T: Real, A: Real, B: Real>(v: T, s: A, z: B) -> B {
    let t = A::from_f64(v.to_f64()) / s;
    (B::from_f64(t.to_f64()) + z).rint()
}

/// Apply `exact` element-wise from `x` into `out` (same shape), in parallel over fixed
/// chunks. `fast` is tried first on each contiguous run; if it reports any element it cannot
/// handle, the run is redone with `exact`.
///
/// `out` may be uninitialized memory (a fresh numpy array): every element is written.
pub(crate) fn map_into<T, O, F, G>(
    x: ArrayViewD<'_, T>,
    mut out: ArrayViewMutD<'_, MaybeUninit<O>>,
    fast: F,
    exact: G,
) -> Result<()>
where
    T: Copy + Send + Sync,
    O: Copy + Send + Sync,
    F: Fn(T) -> (O, bool) + Send + Sync,
    G: Fn(T) -> O + Send + Sync,
{
    if x.shape() != out.shape() {
        return Err(Error::Shape(format!(
            "output shape {:?} differs from input shape {:?}",
            out.shape(),
            x.shape()
        )));
    }
    let run = |dst: &mut [MaybeUninit<O>], src: &[T]| fill_best(dst, src, &fast, &exact);
    match (x.as_slice(), out.as_slice_mut()) {
        (Some(src), Some(dst)) if src.len() <= CHUNK => run(dst, src),
        (Some(src), Some(dst)) => dst
            .par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| run(d, s)),
        _ => Zip::from(&mut out).and(&x).par_for_each(|d, &v| {
            d.write(exact(v));
        }),
    }
    Ok(())
}

#[inline(always)]
fn fill<T: Copy, O, F: Fn(T) -> (O, bool), G: Fn(T) -> O>(
    dst: &mut [MaybeUninit<O>],
    src: &[T],
    fast: &F,
    exact: &G,
) {
    let mut ok = true;
    for (d, &v) in dst.iter_mut().zip(src) {
        let (o, good) = fast(v);
        d.write(o);
        ok &= good;
    }
    if !ok {
        for (d, &v) in dst.iter_mut().zip(src) {
            d.write(exact(v));
        }
    }
}

/// [`fill`] compiled for AVX2 (4 doubles per instruction instead of SSE2's 2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_avx2<T: Copy, O, F: Fn(T) -> (O, bool), G: Fn(T) -> O>(
    dst: &mut [MaybeUninit<O>],
    src: &[T],
    fast: &F,
    exact: &G,
) {
    fill(dst, src, fast, exact)
}

/// [`fill`] compiled for AVX-512 (8 doubles or 16 floats per instruction).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
unsafe fn fill_avx512<T: Copy, O, F: Fn(T) -> (O, bool), G: Fn(T) -> O>(
    dst: &mut [MaybeUninit<O>],
    src: &[T],
    fast: &F,
    exact: &G,
) {
    fill(dst, src, fast, exact)
}

/// [`fill`] with the widest instruction set the CPU has (same results either way: no FMA,
/// IEEE operations only).
fn fill_best<T: Copy, O, F: Fn(T) -> (O, bool), G: Fn(T) -> O>(
    dst: &mut [MaybeUninit<O>],
    src: &[T],
    fast: &F,
    exact: &G,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::wide_vectors() {
        // SAFETY: `wide_vectors` checked that the CPU has AVX2 and AVX-512 F/DQ/VL/BW.
        return unsafe { fill_avx512(dst, src, fast, exact) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { fill_avx2(dst, src, fast, exact) };
    }
    fill(dst, src, fast, exact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, Array2, IxDyn};

    fn spec(scale: f64, zp: f64, clip: Option<(f64, f64)>, p: [Prec; 3]) -> QuantSpec {
        QuantSpec {
            scale,
            zero_point: zp,
            clip,
            div: p[0],
            add: p[1],
            clip_prec: p[2],
        }
    }
    const D: [Prec; 3] = [Prec::F64; 3];
    const S: [Prec; 3] = [Prec::F32; 3];

    #[test]
    fn ties_round_half_to_even_then_clip() {
        let x = arr1(&[0.5f64, 1.5, 2.5, -0.5, -1.5, 100.0, -100.0]).into_dyn();
        let q: ArrayD<i64> = quantize(x.view(), &spec(1.0, 0.0, Some((-3.0, 4.0)), D)).unwrap();
        assert_eq!(q.as_slice().unwrap(), &[0, 2, 2, 0, -2, 4, -3]);
        let q: ArrayD<i64> = quantize(x.view(), &spec(1.0, 0.5, None, D)).unwrap();
        assert_eq!(q.as_slice().unwrap(), &[1, 2, 3, 0, -1, 100, -100]);
    }

    #[test]
    fn float32_steps_differ_from_float64() {
        // 0.1f32 / 0.1 rounded to f32 is exactly 1; in f64 it is not.
        let x = arr1(&[0.1f32 * 3.0]).into_dyn();
        let s = 0.1f64 as f32 as f64;
        let q32: ArrayD<f64> = quantize(x.view(), &spec(s, 0.0, None, S)).unwrap();
        let want = ((0.1f32 * 3.0) / 0.1f32).round_ties_even() as f64;
        assert_eq!(q32[[0]], want);
        // Zero point added in f64 after an f32 division.
        let big = 16_777_217.0; // not representable in f32
        let q: ArrayD<f64> = quantize(
            x.view(),
            &spec(s, big, None, [Prec::F32, Prec::F64, Prec::F64]),
        )
        .unwrap();
        let t = ((0.1f32 * 3.0) / 0.1f32) as f64;
        assert_eq!(q[[0]], (t + big).round_ties_even());
    }

    #[test]
    fn negative_zero_survives_unclipped_float_output_and_clip_gives_bound() {
        let x = arr1(&[-0.2f64]).into_dyn();
        let q: ArrayD<f64> = quantize(x.view(), &spec(1.0, 0.0, None, D)).unwrap();
        assert!(q[[0]] == 0.0 && q[[0]].is_sign_negative());
        let q: ArrayD<f64> = quantize(x.view(), &spec(1.0, 0.0, Some((0.0, 5.0)), D)).unwrap();
        assert!(q[[0]] == 0.0 && q[[0]].is_sign_positive());
    }

    #[test]
    fn nan_inf_and_huge_cast_like_numpy() {
        let x = arr1(&[f64::NAN, f64::INFINITY, -1e300, 1.0]).into_dyn();
        let q: ArrayD<i64> = quantize(x.view(), &spec(1.0, 0.0, None, D)).unwrap();
        assert_eq!(q.as_slice().unwrap(), &[i64::MIN, i64::MIN, i64::MIN, 1]);
        let q: ArrayD<i32> = quantize(x.view(), &spec(1.0, 0.0, Some((-8.0, 7.0)), D)).unwrap();
        assert_eq!(q.as_slice().unwrap(), &[i32::MIN, 7, -8, 1]);
        // scale 0 -> x/0 = ±inf or NaN.
        let q: ArrayD<i64> = quantize(x.view(), &spec(0.0, 0.0, None, D)).unwrap();
        assert_eq!(q[[3]], i64::MIN);
    }

    #[test]
    fn strided_and_chunked_inputs_match_elementwise() {
        let n = 3 * CHUNK + 17;
        let data: Vec<f64> = (0..n).map(|i| (i as f64) * 0.37 - 5000.25).collect();
        let a = Array2::from_shape_vec((n / 7, 7), data[..(n / 7) * 7].to_vec()).unwrap();
        let sp = spec(0.5, 3.0, Some((-128.0, 127.0)), D);
        let one = |v: f64| ((v / 0.5 + 3.0).round_ties_even()).clamp(-128.0, 127.0) as i64;
        for view in [
            a.view().into_dyn(),
            a.t().into_dyn(),
            a.slice(ndarray::s![..;-2, 1..;3]).into_dyn(),
        ] {
            let q: ArrayD<i64> = quantize(view.clone(), &sp).unwrap();
            assert_eq!(q.shape(), view.shape());
            for (g, &v) in q.iter().zip(view.iter()) {
                assert_eq!(*g, one(v));
            }
        }
        let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 4]));
        let q: ArrayD<i64> = quantize(empty.view(), &spec(1.0, 0.0, None, S)).unwrap();
        assert_eq!(q.shape(), &[0, 4]);
    }

    #[test]
    fn narrowing_precisions_are_rejected() {
        let x = arr1(&[1.0f64]).into_dyn();
        let r: Result<ArrayD<i64>> = quantize(x.view(), &spec(1.0, 0.0, None, S));
        assert!(matches!(r, Err(Error::InvalidArgument(_))));
        let y = arr1(&[1.0f32]).into_dyn();
        let r: Result<ArrayD<i64>> = quantize(
            y.view(),
            &spec(1.0, 0.0, None, [Prec::F64, Prec::F32, Prec::F32]),
        );
        assert!(matches!(r, Err(Error::InvalidArgument(_))));
    }
}
