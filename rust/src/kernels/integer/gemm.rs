//! Integer matmul with the zero-point correction of SPEC §3.1 (Jacob et al. 2018, Eq. 7):
//! acc = A @ B − z_w·Σ_k A[…, k] = A @ (B − z_w), and sum_w = z_x·Σ_k B[k, :].

use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::integer::exact::{check_bound, describe, max_abs, range, Exact, Strategy};

/// Rows of A per task: fixed, so the split never depends on the number of threads.
const BLOCK_ROWS: usize = 64;

/// The worst-case |accumulator| of `matmul` and the strategy it selects, or the overflow
/// error. `a` holds values in [a_lo, a_hi], `b − z_w` in [c_lo, c_hi], `k` terms per sum.
pub fn plan(k: usize, a: (i64, i64), c: (i128, i128)) -> Result<(u128, Strategy)> {
    let bound = check_bound(
        k,
        max_abs(a.0.into(), a.1.into()),
        max_abs(c.0, c.1),
        || {
            format!(
                "a matmul of the input {} with the weights minus z_w {} over K={k} terms",
                describe(a.0.into(), a.1.into()),
                describe(c.0, c.1)
            )
        },
    )?;
    Ok((bound, Strategy::for_bound(bound)))
}

/// acc[b] = a[b] @ (w[b] − z_w) for a (Ba, M, K) and w (Bw, K, N), where a batch of 1
/// broadcasts. Returns (max(Ba, Bw), M, N).
///
/// Returns `Error::Overflow` if K·max|a|·max|w − z_w| exceeds int64 (every partial sum is
/// then bounded too, so the result is always exact).
pub fn matmul(a: ArrayView3<'_, i64>, w: ArrayView3<'_, i64>, z_w: i64) -> Result<Array3<i64>> {
    let (ba, m, k) = a.dim();
    let (bw, k2, n) = w.dim();
    if k != k2 {
        return Err(Error::Shape(format!(
            "matmul: the input's last axis ({k}) differs from the weights' inner axis ({k2})"
        )));
    }
    let batch = match (ba, bw) {
        (x, y) if x == y || y == 1 => x,
        (1, y) => y,
        _ => {
            return Err(Error::Shape(format!(
                "matmul: batch sizes {ba} and {bw} do not broadcast"
            )))
        }
    };
    let (wlo, whi) = range(w.iter());
    let c = (
        i128::from(wlo) - i128::from(z_w),
        i128::from(whi) - i128::from(z_w),
    );
    let (_, strategy) = plan(k, range(a.iter()), c)?;
    if batch * m * n == 0 {
        return Ok(Array3::zeros((batch, m, n)));
    }
    let wc: Vec<i64> = w
        .as_standard_layout()
        .iter()
        .map(|&v| v.wrapping_sub(z_w))
        .collect();
    let out = match strategy {
        Strategy::F32 => run::<f32>(a, &wc, [batch, bw, m, k, n]),
        Strategy::F64 => run::<f64>(a, &wc, [batch, bw, m, k, n]),
        Strategy::I64 => run::<i64>(a, &wc, [batch, bw, m, k, n]),
    };
    Array3::from_shape_vec((batch, m, n), out).map_err(|e| Error::Shape(e.to_string()))
}

fn run<T: Exact>(a: ArrayView3<'_, i64>, wc: &[i64], dims: [usize; 5]) -> Vec<i64> {
    let [batch, bw, m, k, n] = dims;
    let ba = a.dim().0;
    let wt: Vec<T> = wc.iter().map(|&v| T::from_i64(v)).collect();
    let mut out = vec![0i64; batch * m * n];
    out.par_chunks_mut(m * n).enumerate().for_each(|(bi, dst)| {
        let ab: ArrayView2<'_, i64> = a.index_axis(ndarray::Axis(0), if ba == 1 { 0 } else { bi });
        let wb = &wt[if bw == 1 { 0 } else { bi * k * n }..];
        dst.par_chunks_mut(BLOCK_ROWS * n)
            .enumerate()
            .for_each(|(ci, rows_out)| {
                let r0 = ci * BLOCK_ROWS;
                let rows = rows_out.len() / n;
                let mut lhs = Vec::with_capacity(rows * k);
                for r in r0..r0 + rows {
                    lhs.extend(ab.row(r).iter().map(|&v| T::from_i64(v)));
                }
                let mut tmp = vec![T::default(); rows * n];
                T::gemm(rows, k, n, &lhs, wb, &mut tmp);
                for (d, s) in rows_out.iter_mut().zip(tmp) {
                    *d = s.to_i64();
                }
            });
    });
    out
}

/// sum_w[b, :] = z_x·Σ_k w[b, k, :] for w (B, K, N); returns (B, N), overflow-checked.
pub fn weight_sums(w: ArrayView3<'_, i64>, z_x: i64) -> Result<Array2<i64>> {
    let (b, k, n) = w.dim();
    let (lo, hi) = range(w.iter());
    check_bound(
        k,
        max_abs(lo.into(), hi.into()),
        z_x.unsigned_abs().into(),
        || {
            format!(
                "z_x={z_x} times the weight sums of {} over K={k} terms",
                describe(lo.into(), hi.into())
            )
        },
    )?;
    Ok(Array2::from_shape_fn((b, n), |(bi, j)| {
        z_x * w.slice(ndarray::s![bi, .., j]).sum()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    fn naive(a: &Array3<i64>, w: &Array3<i64>, z_w: i64) -> Array3<i64> {
        let (ba, m, k) = a.dim();
        let (bw, _, n) = w.dim();
        let batch = ba.max(bw);
        Array3::from_shape_fn((batch, m, n), |(b, i, j)| {
            let (x, y) = (if ba == 1 { 0 } else { b }, if bw == 1 { 0 } else { b });
            let prod: i64 = (0..k).map(|p| a[[x, i, p]] * w[[y, p, j]]).sum();
            let corr: i64 = (0..k).map(|p| a[[x, i, p]]).sum();
            prod - z_w * corr
        })
    }

    fn data(shape: (usize, usize, usize), seed: i64, lo: i64, span: i64) -> Array3<i64> {
        let len = shape.0 * shape.1 * shape.2;
        let v: Vec<i64> = (0..len as i64)
            .map(|i| lo + (i * 7919 + seed * 104729).rem_euclid(span))
            .collect();
        Array::from_shape_vec(shape, v).unwrap()
    }

    #[test]
    fn every_strategy_matches_the_definition() {
        let w = data((1, 70, 9), 2, -128, 256);
        for (scale, want) in [
            (1, Strategy::F32),
            (1 << 12, Strategy::F64),
            (1 << 35, Strategy::I64),
        ] {
            let a = data((2, 130, 70), 1, 0, 256).mapv(|v| v * scale);
            let (_, s) = plan(70, range(a.iter()), (-128 - 5, 127 - 5)).unwrap();
            assert_eq!(s, want);
            assert_eq!(matmul(a.view(), w.view(), 5).unwrap(), naive(&a, &w, 5));
        }
    }

    #[test]
    fn batches_broadcast_and_views_work() {
        let a = data((1, 5, 4), 3, -9, 19);
        let w = data((3, 4, 6), 4, -9, 19);
        assert_eq!(matmul(a.view(), w.view(), -2).unwrap(), naive(&a, &w, -2));
        let at = data((3, 4, 5), 5, -9, 19);
        let av = at.view().permuted_axes([0, 2, 1]);
        assert_eq!(
            matmul(av, w.view(), 0).unwrap(),
            naive(&av.to_owned(), &w, 0)
        );
    }

    #[test]
    fn errors() {
        let a = Array3::<i64>::from_elem((1, 2, 3), 1 << 40);
        let w = Array3::<i64>::from_elem((1, 3, 2), 1 << 30);
        let err = matmul(a.view(), w.view(), 0).unwrap_err();
        assert!(
            matches!(&err, Error::Overflow(msg) if msg.contains("uint41") && msg.contains("uint31"))
        );
        let w2 = Array3::<i64>::zeros((1, 4, 2));
        assert!(matches!(
            matmul(a.view(), w2.view(), 0),
            Err(Error::Shape(_))
        ));
        let w3 = Array3::<i64>::zeros((2, 3, 2));
        let a3 = Array3::<i64>::zeros((3, 2, 3));
        assert!(matches!(
            matmul(a3.view(), w3.view(), 0),
            Err(Error::Shape(_))
        ));
        assert_eq!(
            weight_sums(w.view(), -3).unwrap()[[0, 1]],
            -3 * 3 * (1 << 30)
        );
    }
}
