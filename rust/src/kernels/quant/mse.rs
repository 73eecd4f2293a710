//! Squared quantization error of candidate clipping ranges: the inner loop of the MSE
//! calibration search (`fhequant.quantization.histogram_stats`).

use ndarray::{ArrayView2, ArrayViewMut2, Axis, Zip};

use super::float::Real;
use crate::error::{Error, Result};

/// With pruning, every `COARSE`-th candidate is summed first (to find a tight bound early).
const COARSE: usize = 8;

/// The squared error of one row's values under one candidate quantizer, or `None` once a
/// lower bound of it exceeds `bound`.
///
/// Each term is numpy's element-wise `((clip(rint(v / s) + z, qlo, qhi) - z) * s - v)^2 * w`
/// (IEEE division, round half to even, no fused multiply-add); the terms are added in four
/// partial sums by `k mod 4`, then `(p0 + p1) + (p2 + p3)`: a fixed order. The terms are
/// never negative and rounding is monotone, so that combination taken part way is a lower
/// bound of the final sum.
#[inline]
fn row_error(v: &[f64], w: &[f64], s: f64, z: f64, qlo: f64, qhi: f64, bound: f64) -> Option<f64> {
    let term = |k: usize| {
        let q = (Real::rint(v[k] / s) + z).max(qlo).min(qhi);
        let e = (q - z) * s - v[k];
        e * e * w[k]
    };
    let mut p = [0.0f64; 4];
    let full = v.len() / 4 * 4;
    for base in (0..full).step_by(4) {
        for (j, acc) in p.iter_mut().enumerate() {
            *acc += term(base + j);
        }
        if base % 8 == 4 && (p[0] + p[1]) + (p[2] + p[3]) > bound {
            return None;
        }
    }
    for k in full..v.len() {
        p[k % 4] += term(k);
    }
    Some((p[0] + p[1]) + (p[2] + p[3]))
}

/// `out[r, c]` = Σ_k `weights[r, k]` · `((clip(rint(values[r, k] / scale[r, c]) + zp[r, c],
/// qlo, qhi) - zp[r, c]) · scale[r, c] - values[r, k])²`: the weighted squared error of
/// quantizing row `r` of `values` with candidate `c`'s scale and zero point (`weights` must
/// not be negative). A candidate whose scale is not a positive finite number gets +inf.
///
/// With `prune`, the search only needs each row's first least error: every `COARSE`-th
/// candidate is summed first, then the others, and a candidate whose partial sum already
/// exceeds the least complete error found so far in its row is not finished and gets +inf
/// (it can be neither the least nor equal to it); the other entries, hence the first
/// minimum, are the same as without.
///
/// Rows run in parallel; each sum has the fixed order of [`row_error`], so the result does
/// not depend on the threads.
#[allow(clippy::too_many_arguments)]
pub fn clip_errors(
    values: ArrayView2<f64>,
    weights: ArrayView2<f64>,
    scale: ArrayView2<f64>,
    zp: ArrayView2<f64>,
    qlo: f64,
    qhi: f64,
    prune: bool,
    mut out: ArrayViewMut2<f64>,
) -> Result<()> {
    if weights.dim() != values.dim() {
        return Err(Error::Shape(format!(
            "mse_clip_errors: weights {:?} differ from values {:?}",
            weights.shape(),
            values.shape()
        )));
    }
    if scale.dim() != zp.dim() || out.dim() != scale.dim() || scale.nrows() != values.nrows() {
        return Err(Error::Shape(format!(
            "mse_clip_errors: scale {:?}, zero points {:?} and output {:?} must be (rows of \
             values {}, candidates)",
            scale.shape(),
            zp.shape(),
            out.shape(),
            values.nrows()
        )));
    }
    let values = values.as_standard_layout();
    let weights = weights.as_standard_layout();
    Zip::from(out.axis_iter_mut(Axis(0)))
        .and(values.axis_iter(Axis(0)))
        .and(weights.axis_iter(Axis(0)))
        .and(scale.axis_iter(Axis(0)))
        .and(zp.axis_iter(Axis(0)))
        .par_for_each(|mut o, v, w, s, z| {
            let (v, w) = (v.as_slice().unwrap_or(&[]), w.as_slice().unwrap_or(&[]));
            let mut best = f64::INFINITY;
            o.fill(f64::INFINITY);
            // pruning: every COARSE-th candidate first, so that the bound is tight early; the
            // order changes which candidates are cut short, never the first least error
            let stride = if prune { COARSE } else { 1 };
            let n = o.len();
            let order = (0..n)
                .step_by(stride)
                .chain((0..n).filter(|c| c % stride != 0));
            for c in order {
                let (sc, zc) = (s[c], z[c]);
                if !(sc > 0.0 && sc.is_finite()) {
                    continue;
                }
                let bound = if prune { best } else { f64::INFINITY };
                if let Some(err) = row_error(v, w, sc, zc, qlo, qhi, bound) {
                    o[c] = err;
                    best = best.min(err);
                }
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};

    #[test]
    fn errors_of_a_symmetric_grid() {
        let values = array![[-1.0, 0.25, 0.5, 1.0, 0.9]];
        let weights = array![[1.0, 2.0, 1.0, 1.0, 3.0]];
        let scale = array![[0.5, 1.0]];
        let zp = array![[0.0, 0.0]];
        let mut out = Array2::<f64>::zeros((1, 2));
        clip_errors(
            values.view(),
            weights.view(),
            scale.view(),
            zp.view(),
            -1.0,
            1.0,
            false,
            out.view_mut(),
        )
        .unwrap();
        // s = 0.5: q = [-1 (clipped from -2), 0 (0.5 ties to even), 1, 1 (clipped), 1 (clipped)]
        let want0 = 0.25 * 0.25 * 2.0 + 0.0 + 0.5 * 0.5 + 0.4 * 0.4 * 3.0 + 0.5f64.powi(2);
        assert!((out[[0, 0]] - want0).abs() < 1e-12, "{}", out[[0, 0]]);
        // s = 1: q = [-1, 0, 0 (0.5 ties to even), 1, 1]
        let want1 = 0.0 + 0.25 * 0.25 * 2.0 + 0.25 + 0.0 + 0.1 * 0.1 * 3.0;
        assert!((out[[0, 1]] - want1).abs() < 1e-12, "{}", out[[0, 1]]);
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let values = Array2::<f64>::zeros((2, 3));
        let weights = Array2::<f64>::zeros((2, 4));
        let scale = Array2::<f64>::ones((2, 5));
        let mut out = Array2::<f64>::zeros((2, 5));
        let got = clip_errors(
            values.view(),
            weights.view(),
            scale.view(),
            scale.view(),
            0.0,
            1.0,
            false,
            out.view_mut(),
        );
        assert!(matches!(got, Err(Error::Shape(_))));
    }

    #[test]
    fn pruning_keeps_the_first_least_error() {
        let n = 301;
        let values = Array2::from_shape_fn((3, n), |(r, k)| {
            let x = (k as f64 * 0.37 + r as f64).sin() * (1.0 + (k % 17) as f64);
            x * x * x
        });
        let weights = Array2::from_shape_fn((3, n), |(_, k)| (1 + k % 3) as f64);
        let scale = Array2::from_shape_fn((3, 40), |(r, c)| {
            if c == 5 {
                f64::NAN
            } else {
                (r as f64 + 1.0) * 8.0 / (c as f64 + 1.0)
            }
        });
        let zp = Array2::<f64>::zeros((3, 40));
        let run = |prune: bool| {
            let mut out = Array2::<f64>::zeros((3, 40));
            clip_errors(
                values.view(),
                weights.view(),
                scale.view(),
                zp.view(),
                -7.0,
                7.0,
                prune,
                out.view_mut(),
            )
            .unwrap();
            out
        };
        let (full, pruned) = (run(false), run(true));
        let mut some_pruned = false;
        for r in 0..3 {
            assert!(full[[r, 5]].is_infinite() && pruned[[r, 5]].is_infinite());
            let first_min = |row: ndarray::ArrayView1<f64>| {
                let least = row.iter().cloned().fold(f64::INFINITY, f64::min);
                row.iter().position(|&e| e == least).unwrap()
            };
            let i = first_min(full.row(r));
            assert_eq!(i, first_min(pruned.row(r)));
            assert_eq!(full[[r, i]].to_bits(), pruned[[r, i]].to_bits());
            for c in 0..40 {
                if pruned[[r, c]].is_finite() {
                    assert_eq!(full[[r, c]].to_bits(), pruned[[r, c]].to_bits());
                } else if c != 5 {
                    some_pruned = true;
                    assert!(full[[r, c]] > full[[r, i]]);
                }
            }
        }
        assert!(some_pruned);
    }
}
