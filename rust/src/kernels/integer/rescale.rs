//! The clear Gemm of docs/contract.md §3.1 in one pass: the zero-point-corrected integer matmul,
//! the optional round_bit_pattern of the accumulator (§2.4), then the float64 rescale
//!
//! ```text
//! v = ((f64(acc) + offset) − sub[j]) · mul[j]  (+ add[j])
//! ```
//!
//! with the operations, operands and order of the numpy path in
//! `fhequant.quantized.ops.linear` (each a single IEEE operation, so every bit matches).
//! No int64 accumulator or float64 temporary is materialised.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use ndarray::{ArrayView3, ArrayView4};

use crate::error::{Error, Result};
use crate::kernels::integer::conv::{conv2d_map_into, conv2d_shape, Geometry};
use crate::kernels::integer::gemm::{matmul_map_into_as, matmul_shape, Lhs};
use crate::kernels::integer::rounding::{half_and_mask, MAX_LSBS};

/// The per-column float64 operands of the rescale (each of length N, the output columns).
#[derive(Debug, Clone, Copy)]
pub struct Rescale<'a> {
    /// Bits removed by round_bit_pattern (<= 0: no rounding).
    pub lsbs: i64,
    /// Added first (p·z_x·z_w, "final").
    pub offset: f64,
    /// Subtracted next (z_x·Σ_k w, "sum_w").
    pub sub: &'a [f64],
    /// Multiplied next (s_x·s_w).
    pub mul: &'a [f64],
    /// Added last (the float bias), if any.
    pub add: Option<&'a [f64]>,
}

/// `v[b, i, j]` of the module docs for a (Ba, M, K) and w (Bw, K, N), into `out` (C order,
/// (batch, M, N) as `matmul_shape` gives; on success every element is written).
///
/// Errors: `Error::Shape` for mismatched operands or operand lengths, `Error::Overflow` if
/// the accumulator could overflow int64 (as `matmul`) or if rounding leaves int64 (as
/// `round_bit_pattern`), `Error::InvalidArgument` for lsbs above `MAX_LSBS`.
pub fn matmul_rescale_into<A: Lhs>(
    a: ArrayView3<'_, A>,
    w: ArrayView3<'_, i64>,
    z_w: i64,
    rescale: &Rescale<'_>,
    out: &mut [MaybeUninit<f64>],
) -> Result<()> {
    let [_, _, n] = matmul_shape(a.dim(), w.dim())?;
    rescale.check(n, "matmul rescale: the per-column", "columns")?;
    let overflow = AtomicBool::new(false);
    matmul_map_into_as(
        a,
        w,
        z_w,
        out,
        |acc: &[i64], dst: &mut [MaybeUninit<f64>]| {
            let over = rescale_run(
                acc,
                dst,
                rescale.lsbs,
                rescale.offset,
                rescale.sub,
                rescale.mul,
                rescale.add,
            );
            if over {
                overflow.store(true, Ordering::Relaxed);
            }
        },
    )?;
    rounded_in_range(&overflow, rescale.lsbs)
}

/// The clear Conv of docs/contract.md §3.2 in one pass: `conv2d(x, w, z_w)` (zero-point corrected,
/// padded with `geom.pad_value`), rounded and rescaled as `matmul_rescale_into` with the
/// operands indexed by output channel (`sub`, `mul`, `add` of length O), into `out`
/// (C order, (N, O, OH, OW) as `conv2d_shape` gives; on success every element is written).
///
/// Errors: those of `conv2d` and of `matmul_rescale_into`.
pub fn conv_rescale_into(
    x: ArrayView4<'_, i64>,
    w: ArrayView4<'_, i64>,
    z_w: i64,
    group: usize,
    geom: &Geometry,
    rescale: &Rescale<'_>,
    out: &mut [MaybeUninit<f64>],
) -> Result<()> {
    let [_, o, oh, ow] = conv2d_shape(x.dim(), w.dim(), group, geom)?;
    rescale.check(o, "conv rescale: the per-channel", "channels")?;
    let overflow = AtomicBool::new(false);
    let (sub, mul, add) = (rescale.sub, rescale.mul, rescale.add);
    let plane = (oh * ow).max(1);
    conv2d_map_into(x, w, z_w, group, geom, out, |c, acc, dst| {
        // whole planes of channels c, c + 1, ... (each < o), so the lookups are in range
        for (i, (a, d)) in acc.chunks(plane).zip(dst.chunks_mut(plane)).enumerate() {
            let ch = c + i;
            let over = rescale_run(
                a,
                d,
                rescale.lsbs,
                rescale.offset,
                sub[ch],
                mul[ch],
                add.map(|v| v[ch]),
            );
            if over {
                overflow.store(true, Ordering::Relaxed);
            }
        }
    })?;
    rounded_in_range(&overflow, rescale.lsbs)
}

impl Rescale<'_> {
    /// `Error::Shape` unless `sub`, `mul` and `add` all have `len` values (`what` names
    /// them, `unit` the output's axis), `Error::InvalidArgument` for lsbs above `MAX_LSBS`.
    pub(crate) fn check(&self, len: usize, what: &str, unit: &str) -> Result<()> {
        let lengths = [
            self.sub.len(),
            self.mul.len(),
            self.add.map_or(len, <[f64]>::len),
        ];
        if lengths.iter().any(|&l| l != len) {
            return Err(Error::Shape(format!(
                "{what} operands have lengths {lengths:?}, the output has {len} {unit}"
            )));
        }
        check_lsbs(self.lsbs)
    }
}

fn check_lsbs(lsbs: i64) -> Result<()> {
    if lsbs > MAX_LSBS {
        return Err(Error::InvalidArgument(format!(
            "round_bit_pattern: cannot remove {lsbs} bits from an int64 value; give at most \
             {MAX_LSBS}"
        )));
    }
    Ok(())
}

fn rounded_in_range(overflow: &AtomicBool, lsbs: i64) -> Result<()> {
    if overflow.load(Ordering::Relaxed) {
        return Err(Error::Overflow(format!(
            "round_bit_pattern: rounding an accumulator to a multiple of 2^{lsbs} leaves int64"
        )));
    }
    Ok(())
}

/// One float64 operand of the rescale along a run of accumulators: a value per element
/// (`&[f64]`, a Gemm row: one per output column) or one value for the whole run (`f64`, a
/// conv plane: one output channel).
pub(crate) trait Operand: Copy {
    /// The value for element `j` of the run.
    fn at(self, j: usize) -> f64;
    /// The operand for a run of `n` elements (slices cut to `n`, so `at` needs no check).
    fn prefix(self, n: usize) -> Self;
    /// The operand of the run that starts at element `j` (slices lose their first `j`).
    fn skip(self, j: usize) -> Self;
    /// The values for elements `j..j + 4` in one vector.
    ///
    /// # Safety
    /// The CPU has AVX, and a slice holds at least `j + 4` values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load4(self, j: usize) -> std::arch::x86_64::__m256d;
    /// The values for elements `j..j + 8` in one vector.
    ///
    /// # Safety
    /// The CPU has AVX-512F, and a slice holds at least `j + 8` values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(self, j: usize) -> std::arch::x86_64::__m512d;
}

impl Operand for &[f64] {
    #[inline(always)]
    fn at(self, j: usize) -> f64 {
        self[j]
    }
    #[inline(always)]
    fn prefix(self, n: usize) -> Self {
        &self[..n]
    }
    #[inline(always)]
    fn skip(self, j: usize) -> Self {
        &self[j..]
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load4(self, j: usize) -> std::arch::x86_64::__m256d {
        // SAFETY: the caller guarantees AVX and `j + 4 <= self.len()`.
        unsafe { std::arch::x86_64::_mm256_loadu_pd(self.as_ptr().add(j)) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(self, j: usize) -> std::arch::x86_64::__m512d {
        // SAFETY: the caller guarantees AVX-512F and `j + 8 <= self.len()`.
        unsafe { std::arch::x86_64::_mm512_loadu_pd(self.as_ptr().add(j)) }
    }
}

impl Operand for f64 {
    #[inline(always)]
    fn at(self, _: usize) -> f64 {
        self
    }
    #[inline(always)]
    fn prefix(self, _: usize) -> Self {
        self
    }
    #[inline(always)]
    fn skip(self, _: usize) -> Self {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load4(self, _: usize) -> std::arch::x86_64::__m256d {
        // SAFETY: the caller guarantees AVX.
        unsafe { std::arch::x86_64::_mm256_set1_pd(self) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(self, _: usize) -> std::arch::x86_64::__m512d {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { std::arch::x86_64::_mm512_set1_pd(self) }
    }
}

/// `dst[j] = ((f64(round(acc[j])) + offset) − sub[j]) · mul[j] (+ add[j])`, each step one
/// IEEE operation in the order of the numpy path (`round` removes `lsbs` bits, none for
/// lsbs <= 0); true if a rounding left int64 (the written values are then to be
/// discarded). Slice operands must hold at least `acc.len()` values.
#[inline(always)]
pub(crate) fn rescale_run<S: Operand>(
    acc: &[i64],
    dst: &mut [MaybeUninit<f64>],
    lsbs: i64,
    offset: f64,
    sub: S,
    mul: S,
    add: Option<S>,
) -> bool {
    #[inline(always)]
    fn run<S: Operand, R: Fn(i64) -> (i64, bool)>(
        acc: &[i64],
        dst: &mut [MaybeUninit<f64>],
        round: R,
        offset: f64,
        (sub, mul, add): (S, S, Option<S>),
    ) -> bool {
        let mut over = false;
        let n = acc.len().min(dst.len());
        let (acc, dst) = (&acc[..n], &mut dst[..n]);
        let (sub, mul, add) = (sub.prefix(n), mul.prefix(n), add.map(|a| a.prefix(n)));
        let scale = |j: usize, v: i64| ((v as f64 + offset) - sub.at(j)) * mul.at(j);
        match add {
            None => {
                // every slice has length n: indexing by j < n needs no bounds checks
                for j in 0..n {
                    let (r, o) = round(acc[j]);
                    over |= o;
                    dst[j].write(scale(j, r));
                }
            }
            Some(add) => {
                for j in 0..n {
                    let (r, o) = round(acc[j]);
                    over |= o;
                    dst[j].write(scale(j, r) + add.at(j));
                }
            }
        }
        over
    }
    if lsbs > 0 {
        let (half, mask) = half_and_mask(lsbs);
        let limit = i64::MAX - half;
        let round = |v: i64| (v.wrapping_add(half) & mask, v > limit);
        run(acc, dst, round, offset, (sub, mul, add))
    } else {
        run(acc, dst, |v| (v, false), offset, (sub, mul, add))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::integer::conv::conv2d;
    use crate::kernels::integer::gemm::matmul;
    use crate::kernels::integer::rounding::round_one;
    use ndarray::{Array, Array3, Array4};

    fn data(shape: (usize, usize, usize), seed: i64, lo: i64, span: i64) -> Array3<i64> {
        let len = shape.0 * shape.1 * shape.2;
        let v: Vec<i64> = (0..len as i64)
            .map(|i| lo + (i * 7919 + seed * 104729).rem_euclid(span))
            .collect();
        Array::from_shape_vec(shape, v).unwrap()
    }

    /// The unfused definition: matmul, rounding, then the four float64 steps.
    fn reference(a: &Array3<i64>, w: &Array3<i64>, z_w: i64, r: &Rescale<'_>) -> Vec<f64> {
        let acc = matmul(a.view(), w.view(), z_w).unwrap();
        let n = w.dim().2;
        acc.iter()
            .enumerate()
            .map(|(i, &v)| {
                let j = i % n;
                let rounded = round_one(v.into(), r.lsbs) as i64;
                let mut x = rounded as f64;
                x += r.offset;
                x -= r.sub[j];
                x *= r.mul[j];
                if let Some(add) = r.add {
                    x += add[j];
                }
                x
            })
            .collect()
    }

    fn run(a: &Array3<i64>, w: &Array3<i64>, z_w: i64, r: &Rescale<'_>) -> Result<Vec<f64>> {
        let [b, m, n] = matmul_shape(a.dim(), w.dim())?;
        let mut out = vec![MaybeUninit::uninit(); b * m * n];
        matmul_rescale_into(a.view(), w.view(), z_w, r, &mut out)?;
        // SAFETY: matmul_rescale_into succeeded, so it wrote every element.
        Ok(out
            .into_iter()
            .map(|v| unsafe { v.assume_init() })
            .collect())
    }

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn matches_the_unfused_steps_bit_for_bit() {
        let sub = [3.0, -7.5, 0.1, 12.0, -0.3];
        let mul = [0.013, 0.5, 1e-3, 7.25, 0.333];
        let add = [0.1, -0.2, 0.3, -0.4, 0.05];
        for (lsbs, big) in [(0, 1), (3, 1), (0, 1 << 20), (5, 1 << 20), (0, 1 << 36)] {
            let a = data((2, 150, 37), 1, -40, 90).mapv(|v| v * big);
            let w = data((1, 37, 5), 2, -31, 63);
            for with_add in [false, true] {
                let r = Rescale {
                    lsbs,
                    offset: -17.0,
                    sub: &sub,
                    mul: &mul,
                    add: with_add.then_some(&add[..]),
                };
                let want = reference(&a, &w, 4, &r);
                assert_eq!(bits(&run(&a, &w, 4, &r).unwrap()), bits(&want));
            }
        }
    }

    #[test]
    fn errors() {
        let a = data((1, 3, 4), 1, -5, 11);
        let w = data((1, 4, 2), 2, -5, 11);
        let ok = [1.0, 1.0];
        let short = [1.0];
        let mut r = Rescale {
            lsbs: 0,
            offset: 0.0,
            sub: &ok,
            mul: &short,
            add: None,
        };
        assert!(matches!(run(&a, &w, 0, &r), Err(Error::Shape(_))));
        r.mul = &ok;
        r.add = Some(&short);
        assert!(matches!(run(&a, &w, 0, &r), Err(Error::Shape(_))));
        r.add = None;
        r.lsbs = 63;
        assert!(matches!(run(&a, &w, 0, &r), Err(Error::InvalidArgument(_))));
        // An accumulator near i64::MAX: rounding up leaves int64.
        let a = Array3::<i64>::from_elem((1, 1, 1), i64::MAX - 1);
        let w = Array3::<i64>::from_elem((1, 1, 2), 1);
        r.lsbs = 4;
        assert!(matches!(run(&a, &w, 0, &r), Err(Error::Overflow(_))));
        let big = Array3::<i64>::from_elem((1, 2, 3), 1 << 40);
        assert!(matches!(run(&big, &big, 0, &r), Err(Error::Shape(_))));
        let w = Array3::<i64>::from_elem((1, 3, 2), 1 << 40);
        assert!(matches!(run(&big, &w, 0, &r), Err(Error::Overflow(_))));
    }

    fn run_conv(
        x: &Array4<i64>,
        w: &Array4<i64>,
        group: usize,
        geom: &Geometry,
        r: &Rescale<'_>,
    ) -> Result<Vec<f64>> {
        let dims = conv2d_shape(x.dim(), w.dim(), group, geom)?;
        let mut out = vec![MaybeUninit::uninit(); dims.iter().product()];
        conv_rescale_into(x.view(), w.view(), 3, group, geom, r, &mut out)?;
        // SAFETY: conv_rescale_into succeeded, so it wrote every element.
        Ok(out
            .into_iter()
            .map(|v| unsafe { v.assume_init() })
            .collect())
    }

    #[test]
    fn conv_matches_the_unfused_steps_bit_for_bit() {
        let sub = [3.0, -7.5, 0.1, 12.0];
        let mul = [0.013, 0.5, 1e-3, 7.25];
        let add = [0.1, -0.2, 0.3, -0.4];
        let data4 = |shape: (usize, usize, usize, usize), seed: i64, lo: i64, span: i64| {
            data((shape.0, shape.1, shape.2 * shape.3), seed, lo, span)
                .into_shape_with_order(shape)
                .unwrap()
        };
        for (lsbs, big, group) in [(0, 1, 1), (3, 1, 2), (0, 1 << 20, 1), (5, 1 << 20, 2)] {
            let x = data4((3, 4, 7, 6), 1, -40, 90).mapv(|v| v * big);
            let w = data4((4, 4 / group, 3, 2), 2, -31, 63);
            let geom = Geometry::new([3, 2], [2, 1], [1, 0, 1, 1], [0, 0], 5);
            let acc = conv2d(x.view(), w.view(), 3, group, &geom).unwrap();
            for with_add in [false, true] {
                let r = Rescale {
                    lsbs,
                    offset: -17.0,
                    sub: &sub,
                    mul: &mul,
                    add: with_add.then_some(&add[..]),
                };
                let want: Vec<f64> = acc
                    .indexed_iter()
                    .map(|((_, c, _, _), &v)| {
                        let mut x = round_one(v.into(), lsbs) as i64 as f64;
                        x += r.offset;
                        x -= sub[c];
                        x *= mul[c];
                        if with_add {
                            x += add[c];
                        }
                        x
                    })
                    .collect();
                assert_eq!(
                    bits(&run_conv(&x, &w, group, &geom, &r).unwrap()),
                    bits(&want)
                );
            }
        }
        // operand lengths must match the output channels
        let x = data4((1, 2, 3, 3), 1, -4, 9);
        let w = data4((4, 2, 2, 2), 2, -4, 9);
        let geom = Geometry::new([2, 2], [1, 1], [0, 0, 0, 0], [0, 0], 0);
        let r = Rescale {
            lsbs: 0,
            offset: 0.0,
            sub: &sub[..3],
            mul: &mul,
            add: None,
        };
        assert!(matches!(
            run_conv(&x, &w, 1, &geom, &r),
            Err(Error::Shape(_))
        ));
        let r = Rescale {
            sub: &sub,
            lsbs: 63,
            ..r
        };
        assert!(matches!(
            run_conv(&x, &w, 1, &geom, &r),
            Err(Error::InvalidArgument(_))
        ));
    }
}
