//! The fused Gemm/Conv of `rescale` followed by the output quantizer, in one pass: each
//! float64 result `v` of the rescale is quantized as it is produced,
//!
//! ```text
//! q = clip(rint(v / scale + zero_point), lo, hi)
//! ```
//!
//! every step in float64 (numpy's dtypes for float64 data and scalar operands, docs/contract.md
//! §0), and written as int8 or int16. The float64 result is never stored: the calibration walk
//! keeps only the integers (docs/calibration-throughput.md). The integers are those of
//! `matmul_rescale_into` / `conv_rescale_into` then `quant::quantize::quantize` with all
//! precisions float64, bit for bit; the kernel also gives their min and max.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use ndarray::{ArrayView3, ArrayView4};

use crate::error::{Error, Result};
use crate::kernels::integer::conv::{conv2d_map_into, conv2d_shape, ConvInput, Geometry};
use crate::kernels::integer::gemm::{matmul_map_into, matmul_shape};
use crate::kernels::integer::rescale::{rescale_run, Operand, Rescale};
use crate::kernels::quant::float::{clip, Real};

/// The output quantizer's float64 operands (clip bounds included).
#[derive(Debug, Clone, Copy)]
pub struct Requant {
    pub scale: f64,
    pub zero_point: f64,
    pub lo: f64,
    pub hi: f64,
}

/// The narrow integer types the kernel writes.
pub trait Narrow: Copy + Send + Sync + 'static {
    /// The smallest value of the type (bounds checks).
    const MIN: i64;
    /// The largest value of the type.
    const MAX: i64;
    /// An integer-valued float64 within [MIN, MAX] (exact).
    fn from_f64(v: f64) -> Self;
    /// An i32 within [MIN, MAX] (exact).
    fn from_i32(v: i32) -> Self;
}

impl Narrow for i8 {
    const MIN: i64 = i8::MIN as i64;
    const MAX: i64 = i8::MAX as i64;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as i8
    }
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v as i8
    }
}

impl Narrow for i16 {
    const MIN: i64 = i16::MIN as i64;
    const MAX: i64 = i16::MAX as i64;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as i16
    }
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v as i16
    }
}

/// The quantized result and what the caller needs to know about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantized {
    /// Smallest integer written (`i64::MAX` when nothing was written).
    pub min: i64,
    /// Largest integer written (`i64::MIN` when nothing was written).
    pub max: i64,
    /// Some rescaled value was NaN: the integers are to be discarded (the caller takes the
    /// unfused path, which reports it).
    pub nan: bool,
}

/// Results rescaled per run before quantizing (a stack buffer; runs are cut to this).
const RUN: usize = 64;

impl Requant {
    /// `Error::InvalidArgument` unless the clip bounds are integers within `O`.
    fn check<O: Narrow>(&self) -> Result<()> {
        let ok = |b: f64| b.fract() == 0.0 && b >= O::MIN as f64 && b <= O::MAX as f64;
        if !(ok(self.lo) && ok(self.hi) && self.lo <= self.hi) {
            return Err(Error::InvalidArgument(format!(
                "requantize: the clip bounds [{}, {}] must be integers within [{}, {}] of the \
                 output type",
                self.lo,
                self.hi,
                O::MIN,
                O::MAX
            )));
        }
        Ok(())
    }

    /// `q` of one rescaled value (see the module docs).
    #[inline(always)]
    fn one(&self, v: f64) -> f64 {
        clip((v / self.scale + self.zero_point).rint(), self.lo, self.hi)
    }
}

/// The shared state of one kernel call: the extremes and flags of every run.
struct Sink {
    min: AtomicI64,
    max: AtomicI64,
    nan: AtomicBool,
    overflow: AtomicBool,
}

impl Sink {
    fn new() -> Sink {
        Sink {
            min: AtomicI64::new(i64::MAX),
            max: AtomicI64::new(i64::MIN),
            nan: AtomicBool::new(false),
            overflow: AtomicBool::new(false),
        }
    }

    /// Rescale and quantize one run of accumulators into `dst` (`acc.len()` values), with
    /// the widest instruction set the CPU has (the same IEEE operations either way).
    #[inline]
    fn run<S: Operand, O: Narrow>(
        &self,
        acc: &[i64],
        dst: &mut [MaybeUninit<O>],
        rescale: &Rescale<'_>,
        operands: (S, S, Option<S>),
        requant: &Requant,
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { self.run_avx2(acc, dst, rescale, operands, requant) };
        }
        self.run_body(acc, dst, rescale, operands, requant)
    }

    /// [`Sink::run_body`] compiled for AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2<S: Operand, O: Narrow>(
        &self,
        acc: &[i64],
        dst: &mut [MaybeUninit<O>],
        rescale: &Rescale<'_>,
        operands: (S, S, Option<S>),
        requant: &Requant,
    ) {
        self.run_body(acc, dst, rescale, operands, requant)
    }

    #[inline(always)]
    fn run_body<S: Operand, O: Narrow>(
        &self,
        acc: &[i64],
        dst: &mut [MaybeUninit<O>],
        rescale: &Rescale<'_>,
        (sub, mul, add): (S, S, Option<S>),
        requant: &Requant,
    ) {
        let mut buffer = [MaybeUninit::<f64>::uninit(); RUN];
        let mut values = [0.0f64; RUN];
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        let (mut nan, mut over) = (false, false);
        let n = acc.len().min(dst.len());
        for start in (0..n).step_by(RUN) {
            let len = RUN.min(n - start);
            let part = &mut buffer[..len];
            over |= rescale_run(
                &acc[start..start + len],
                part,
                rescale.lsbs,
                rescale.offset,
                sub.skip(start),
                mul.skip(start),
                add.map(|a| a.skip(start)),
            );
            for (v, p) in values.iter_mut().zip(part.iter()) {
                // SAFETY: rescale_run wrote the `len` values of `part`.
                *v = unsafe { p.assume_init() };
            }
            let (l, h, bad) =
                quantize_run(&mut values[..len], &mut dst[start..start + len], requant);
            lo = lo.min(l);
            hi = hi.max(h);
            nan |= bad;
        }
        if nan {
            self.nan.store(true, Ordering::Relaxed);
        }
        if over {
            self.overflow.store(true, Ordering::Relaxed);
        }
        // read first: once the extremes are found the shared line is only read, never
        // written, so the threads do not take it from each other
        if lo <= hi && lo < self.min.load(Ordering::Relaxed) {
            self.min.fetch_min(lo, Ordering::Relaxed);
        }
        if lo <= hi && hi > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(hi, Ordering::Relaxed);
        }
    }

    fn finish(self, lsbs: i64) -> Result<Quantized> {
        if self.overflow.load(Ordering::Relaxed) {
            return Err(Error::Overflow(format!(
                "round_bit_pattern: rounding an accumulator to a multiple of 2^{lsbs} leaves \
                 int64"
            )));
        }
        Ok(Quantized {
            min: self.min.into_inner(),
            max: self.max.into_inner(),
            nan: self.nan.into_inner(),
        })
    }
}

/// Quantize `values` into `dst` (see [`Requant::one`]); returns the min and max of the
/// integers and whether some value was NaN (its integer is then 0, to be discarded).
///
/// Written as separate element-wise loops and integer reductions so that they vectorize.
#[inline(always)]
fn quantize_run<O: Narrow>(
    values: &mut [f64],
    dst: &mut [MaybeUninit<O>],
    requant: &Requant,
) -> (i64, i64, bool) {
    let mut ints = [0i32; RUN];
    let ints = &mut ints[..values.len().min(RUN)];
    let mut nans = 0u32;
    for (v, i) in values.iter_mut().zip(ints.iter_mut()) {
        let q = requant.one(*v);
        let bad = q.is_nan();
        nans += u32::from(bad);
        let c = if bad { 0.0 } else { q };
        // SAFETY: c is 0 or a value clipped to [lo, hi], integers within O (checked by
        // `Requant::check`), so it is finite and fits i32.
        *i = unsafe { c.to_int_unchecked::<i32>() };
    }
    let (mut lo, mut hi) = (i32::MAX, i32::MIN);
    for &i in ints.iter() {
        lo = lo.min(i);
        hi = hi.max(i);
    }
    for (d, &i) in dst.iter_mut().zip(ints.iter()) {
        d.write(O::from_i32(i));
    }
    (i64::from(lo), i64::from(hi), nans > 0)
}

/// `matmul_rescale_into` then the output quantizer, into `out` (C order, (batch, M, N)).
///
/// Errors: those of `matmul_rescale_into`, and `InvalidArgument` for clip bounds that are not
/// integers within `O`.
pub fn matmul_rescale_quant_into<O: Narrow>(
    a: ArrayView3<'_, i64>,
    w: ArrayView3<'_, i64>,
    z_w: i64,
    rescale: &Rescale<'_>,
    requant: &Requant,
    out: &mut [MaybeUninit<O>],
) -> Result<Quantized> {
    let [_, _, n] = matmul_shape(a.dim(), w.dim())?;
    rescale.check(n, "matmul rescale: the per-column", "columns")?;
    requant.check::<O>()?;
    let sink = Sink::new();
    matmul_map_into(a, w, z_w, out, |acc, dst| {
        sink.run(
            acc,
            dst,
            rescale,
            (rescale.sub, rescale.mul, rescale.add),
            requant,
        );
    })?;
    sink.finish(rescale.lsbs)
}

/// `conv_rescale_into` then the output quantizer, into `out` (C order, (N, O, OH, OW)); the
/// input may be any integer type of `ConvInput` (the same integers as its int64 copy).
///
/// Errors: those of `conv_rescale_into`, and `InvalidArgument` for clip bounds that are not
/// integers within `O`.
#[allow(clippy::too_many_arguments)]
pub fn conv_rescale_quant_into<X: ConvInput, O: Narrow>(
    x: ArrayView4<'_, X>,
    w: ArrayView4<'_, i64>,
    z_w: i64,
    group: usize,
    geom: &Geometry,
    rescale: &Rescale<'_>,
    requant: &Requant,
    out: &mut [MaybeUninit<O>],
) -> Result<Quantized> {
    let [_, o, _, _] = conv2d_shape(x.dim(), w.dim(), group, geom)?;
    rescale.check(o, "conv rescale: the per-channel", "channels")?;
    requant.check::<O>()?;
    let sink = Sink::new();
    let (sub, mul, add) = (rescale.sub, rescale.mul, rescale.add);
    conv2d_map_into(x, w, z_w, group, geom, out, |c, acc, dst| {
        // c < o (a channel of the output), so the lookups are in range
        sink.run(
            acc,
            dst,
            rescale,
            (sub[c], mul[c], add.map(|a| a[c])),
            requant,
        );
    })?;
    sink.finish(rescale.lsbs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::integer::rescale::{conv_rescale_into, matmul_rescale_into};
    use ndarray::{Array, Array3, Array4};

    fn data3(shape: (usize, usize, usize), seed: i64, lo: i64, span: i64) -> Array3<i64> {
        let len = shape.0 * shape.1 * shape.2;
        let v: Vec<i64> = (0..len as i64)
            .map(|i| lo + (i * 7919 + seed * 104729).rem_euclid(span))
            .collect();
        Array::from_shape_vec(shape, v).unwrap()
    }

    fn quantize_ref(v: f64, r: &Requant) -> i64 {
        let t = v / r.scale;
        let q = (t + r.zero_point).round_ties_even();
        q.max(r.lo).min(r.hi) as i64
    }

    #[test]
    fn matmul_matches_rescale_then_quantize() {
        let sub = [3.0, -7.5, 0.1, 12.0, -0.3];
        let mul = [0.013, 0.5, 1e-3, 7.25, 0.333];
        let add = [0.1, -0.2, 0.3, -0.4, 0.05];
        let a = data3((2, 150, 37), 1, -40, 90);
        let w = data3((1, 37, 5), 2, -31, 63);
        for lsbs in [0, 3] {
            let r = Rescale {
                lsbs,
                offset: -17.0,
                sub: &sub,
                mul: &mul,
                add: Some(&add),
            };
            let mut floats = vec![MaybeUninit::uninit(); 2 * 150 * 5];
            matmul_rescale_into(a.view(), w.view(), 4, &r, &mut floats).unwrap();
            for q in [
                Requant {
                    scale: 0.37,
                    zero_point: -3.0,
                    lo: -31.0,
                    hi: 31.0,
                },
                Requant {
                    scale: 2.5,
                    zero_point: 0.0,
                    lo: 0.0,
                    hi: 127.0,
                },
            ] {
                let mut out = vec![MaybeUninit::<i8>::uninit(); floats.len()];
                let got =
                    matmul_rescale_quant_into(a.view(), w.view(), 4, &r, &q, &mut out).unwrap();
                // SAFETY: both kernels succeeded, so they wrote every element.
                let want: Vec<i64> = floats
                    .iter()
                    .map(|v| quantize_ref(unsafe { v.assume_init() }, &q))
                    .collect();
                let ints: Vec<i64> = out
                    .iter()
                    .map(|v| i64::from(unsafe { v.assume_init() }))
                    .collect();
                assert_eq!(ints, want);
                assert_eq!(got.min, *want.iter().min().unwrap());
                assert_eq!(got.max, *want.iter().max().unwrap());
                assert!(!got.nan);
            }
        }
    }

    #[test]
    fn conv_matches_rescale_then_quantize() {
        let x = Array4::from_shape_vec(
            (3, 2, 7, 6),
            (0..3 * 2 * 7 * 6).map(|i| (i * 31 % 23) - 11).collect(),
        )
        .unwrap();
        let w = Array4::from_shape_vec(
            (4, 2, 3, 3),
            (0..4 * 2 * 9).map(|i| (i * 17 % 13) - 6).collect(),
        )
        .unwrap();
        let geom = Geometry::new([3, 3], [2, 1], [1, 1, 1, 0], [0, 0], -2);
        let dims = conv2d_shape(x.dim(), w.dim(), 1, &geom).unwrap();
        let len: usize = dims.iter().product();
        let (sub, mul) = ([1.0, -2.0, 0.5, 3.0], [0.01, 0.2, 0.03, 0.004]);
        let r = Rescale {
            lsbs: 0,
            offset: 5.0,
            sub: &sub,
            mul: &mul,
            add: None,
        };
        let q = Requant {
            scale: 0.05,
            zero_point: 4.0,
            lo: -300.0,
            hi: 300.0,
        };
        let mut floats = vec![MaybeUninit::uninit(); len];
        conv_rescale_into(x.view(), w.view(), 1, 1, &geom, &r, &mut floats).unwrap();
        let mut out = vec![MaybeUninit::<i16>::uninit(); len];
        let got =
            conv_rescale_quant_into::<i64, i16>(x.view(), w.view(), 1, 1, &geom, &r, &q, &mut out)
                .unwrap();
        // SAFETY: both kernels succeeded, so they wrote every element.
        let want: Vec<i64> = floats
            .iter()
            .map(|v| quantize_ref(unsafe { v.assume_init() }, &q))
            .collect();
        let ints: Vec<i64> = out
            .iter()
            .map(|v| i64::from(unsafe { v.assume_init() }))
            .collect();
        assert_eq!(ints, want);
        assert_eq!(got.min, *want.iter().min().unwrap());
        assert_eq!(got.max, *want.iter().max().unwrap());
    }

    #[test]
    fn bad_bounds_and_nan() {
        let a = data3((1, 3, 4), 1, -5, 11);
        let w = data3((1, 4, 2), 2, -5, 11);
        let ok = [1.0, 1.0];
        let r = Rescale {
            lsbs: 0,
            offset: 0.0,
            sub: &ok,
            mul: &ok,
            add: None,
        };
        let mut out = vec![MaybeUninit::<i8>::uninit(); 6];
        let wide = Requant {
            scale: 1.0,
            zero_point: 0.0,
            lo: -200.0,
            hi: 10.0,
        };
        assert!(matches!(
            matmul_rescale_quant_into(a.view(), w.view(), 0, &r, &wide, &mut out),
            Err(Error::InvalidArgument(_))
        ));
        let nan = [f64::NAN, 1.0];
        let r = Rescale { mul: &nan, ..r };
        let q = Requant {
            scale: 1.0,
            zero_point: 0.0,
            lo: -100.0,
            hi: 100.0,
        };
        let got = matmul_rescale_quant_into(a.view(), w.view(), 0, &r, &q, &mut out).unwrap();
        assert!(got.nan);
    }
}
