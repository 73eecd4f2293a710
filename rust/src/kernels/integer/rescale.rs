//! The clear Gemm of SPEC §3.1 in one pass: the zero-point-corrected integer matmul, the
//! optional round_bit_pattern of the accumulator (§2.4), then the float64 rescale
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

use ndarray::ArrayView3;

use crate::error::{Error, Result};
use crate::kernels::integer::gemm::{matmul_map_into, matmul_shape};
use crate::kernels::integer::rounding::MAX_LSBS;

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
pub fn matmul_rescale_into(
    a: ArrayView3<'_, i64>,
    w: ArrayView3<'_, i64>,
    z_w: i64,
    rescale: &Rescale<'_>,
    out: &mut [MaybeUninit<f64>],
) -> Result<()> {
    let [_, _, n] = matmul_shape(a.dim(), w.dim())?;
    let lengths = [
        rescale.sub.len(),
        rescale.mul.len(),
        rescale.add.map_or(n, <[f64]>::len),
    ];
    if lengths.iter().any(|&len| len != n) {
        return Err(Error::Shape(format!(
            "matmul rescale: the per-column operands have lengths {lengths:?}, the output \
             has {n} columns"
        )));
    }
    if rescale.lsbs > MAX_LSBS {
        return Err(Error::InvalidArgument(format!(
            "round_bit_pattern: cannot remove {} bits from an int64 value; give at most \
             {MAX_LSBS}",
            rescale.lsbs
        )));
    }
    let (sub, mul, offset) = (rescale.sub, rescale.mul, rescale.offset);
    let overflow = AtomicBool::new(false);
    // Each step is one IEEE operation on float64, in the order of the numpy path.
    let scale = |x: f64, (&sub, &mul): (&f64, &f64)| ((x + offset) - sub) * mul;
    let lsbs = rescale.lsbs;
    match (lsbs > 0, rescale.add) {
        (false, None) => matmul_map_into(a, w, z_w, out, |acc, dst| {
            for ((d, &v), sm) in dst.iter_mut().zip(acc).zip(sub.iter().zip(mul)) {
                d.write(scale(v as f64, sm));
            }
        })?,
        (false, Some(add)) => matmul_map_into(a, w, z_w, out, |acc, dst| {
            for (((d, &v), sm), &b) in dst.iter_mut().zip(acc).zip(sub.iter().zip(mul)).zip(add) {
                d.write(scale(v as f64, sm) + b);
            }
        })?,
        (true, add) => {
            let half = 1i64 << (lsbs - 1);
            let mask = !((1i64 << lsbs) - 1);
            let limit = i64::MAX - half;
            matmul_map_into(a, w, z_w, out, |acc, dst| {
                let mut over = false;
                for (j, (d, &v)) in dst.iter_mut().zip(acc).enumerate() {
                    over |= v > limit;
                    let rounded = v.wrapping_add(half) & mask;
                    let x = scale(rounded as f64, (&sub[j], &mul[j]));
                    d.write(match add {
                        Some(add) => x + add[j],
                        None => x,
                    });
                }
                if over {
                    overflow.store(true, Ordering::Relaxed);
                }
            })?
        }
    }
    if overflow.load(Ordering::Relaxed) {
        return Err(Error::Overflow(format!(
            "round_bit_pattern: rounding an accumulator to a multiple of 2^{} leaves int64",
            rescale.lsbs
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::integer::gemm::matmul;
    use crate::kernels::integer::rounding::round_one;
    use ndarray::{Array, Array3};

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
}
