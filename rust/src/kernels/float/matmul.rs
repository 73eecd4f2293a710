//! float32 / float64 matmul with a fixed summation order (SPEC decision 4).
//!
//! Each output is `((0 + a[i,0]·b[0,j]) + a[i,1]·b[1,j]) + …` in k order, every product and
//! every sum rounded to the element type (Rust never contracts `a * b + c` into an FMA). A row's
//! result depends only on that row, so it is the same whatever the batch it is computed in
//! and whatever the number of threads (rows are split among threads, never k).

use std::ops::{AddAssign, Mul};

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Rows handed to one rayon task.
const ROWS_PER_TASK: usize = 64;
/// Rows and columns held in registers by the inner kernel.
const TILE_ROWS: usize = 4;
const TILE_COLS: usize = 16;

/// The element types the kernel runs on.
pub trait Element: Copy + Default + Send + Sync + Mul<Output = Self> + AddAssign {}
impl Element for f32 {}
impl Element for f64 {}

/// `a (n, k) @ b (k, m)` in float32 with the sequential k-order sum of every dot product.
pub fn matmul_f32_sequential(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
) -> Result<Array2<f32>> {
    matmul_sequential(a, b)
}

/// `a (n, k) @ b (k, m)` in float64 with the sequential k-order sum of every dot product.
pub fn matmul_f64_sequential(
    a: ArrayView2<'_, f64>,
    b: ArrayView2<'_, f64>,
) -> Result<Array2<f64>> {
    matmul_sequential(a, b)
}

/// The generic kernel behind the float32 and float64 entry points.
pub fn matmul_sequential<T: Element>(
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
) -> Result<Array2<T>> {
    let (n, k) = a.dim();
    let (kb, m) = b.dim();
    if k != kb {
        return Err(Error::Shape(format!(
            "matmul: a has {k} columns but b has {kb} rows; the inner dimensions must match"
        )));
    }
    let b = b.as_standard_layout();
    let b = b
        .as_slice()
        .ok_or_else(|| Error::Shape("matmul: b is not contiguous".into()))?;
    let a = a.as_standard_layout();
    let a = a
        .as_slice()
        .ok_or_else(|| Error::Shape("matmul: a is not contiguous".into()))?;
    let mut out = vec![T::default(); n * m];
    if m == 0 || n == 0 {
        return Array2::from_shape_vec((n, m), out).map_err(|e| Error::Shape(e.to_string()));
    }
    out.par_chunks_mut(ROWS_PER_TASK * m)
        .zip(a.par_chunks(ROWS_PER_TASK * k))
        .for_each(|(out_rows, a_rows)| rows_dispatch(a_rows, b, out_rows, k, m));
    Array2::from_shape_vec((n, m), out).map_err(|e| Error::Shape(e.to_string()))
}

/// Run the row kernel with AVX2 when the CPU has it. Only the vector width changes: the
/// operations (separate multiply and add, k order) and so the results are the same.
fn rows_dispatch<T: Element>(a: &[T], b: &[T], out: &mut [T], k: usize, m: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { rows_kernel_avx2(a, b, out, k, m) };
            return;
        }
    }
    rows_kernel(a, b, out, k, m);
}

/// `rows_kernel` compiled with AVX2 enabled.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_kernel_avx2<T: Element>(a: &[T], b: &[T], out: &mut [T], k: usize, m: usize) {
    rows_kernel(a, b, out, k, m);
}

/// Rows of `out` (each m wide) from rows of `a` (each k wide); tiles of 4 rows × 16 columns
/// stay in registers, and every output is still summed in k order.
#[inline(always)]
fn rows_kernel<T: Element>(a: &[T], b: &[T], out: &mut [T], k: usize, m: usize) {
    let rows = out.len() / m;
    let mut r0 = 0;
    while r0 < rows {
        let tr = TILE_ROWS.min(rows - r0);
        let mut c0 = 0;
        while c0 < m {
            let tc = TILE_COLS.min(m - c0);
            if tr == TILE_ROWS && tc == TILE_COLS {
                let mut acc = [[T::default(); TILE_COLS]; TILE_ROWS];
                for kk in 0..k {
                    let bk = &b[kk * m + c0..kk * m + c0 + TILE_COLS];
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let x = a[(r0 + r) * k + kk];
                        for (o, &bv) in acc_r.iter_mut().zip(bk) {
                            let p = x * bv;
                            *o += p;
                        }
                    }
                }
                for (r, acc_r) in acc.iter().enumerate() {
                    let start = (r0 + r) * m + c0;
                    out[start..start + TILE_COLS].copy_from_slice(acc_r);
                }
            } else {
                for r in 0..tr {
                    let row = &a[(r0 + r) * k..(r0 + r + 1) * k];
                    let dst = &mut out[(r0 + r) * m + c0..(r0 + r) * m + c0 + tc];
                    for (kk, &x) in row.iter().enumerate() {
                        let bk = &b[kk * m + c0..kk * m + c0 + tc];
                        for (o, &bv) in dst.iter_mut().zip(bk) {
                            let p = x * bv;
                            *o += p;
                        }
                    }
                }
            }
            c0 += tc;
        }
        r0 += tr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn reference(a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        let (n, k) = a.dim();
        let m = b.dim().1;
        let mut out = Array2::<f32>::zeros((n, m));
        for i in 0..n {
            for j in 0..m {
                let mut s = 0.0f32;
                for kk in 0..k {
                    s += a[[i, kk]] * b[[kk, j]];
                }
                out[[i, j]] = s;
            }
        }
        out
    }

    #[test]
    fn small_product() {
        let a = array![[1.0f32, 2.0], [3.0, 4.0], [0.5, -1.0]];
        let b = array![[1.0f32, 0.0, 2.0], [0.0, 1.0, -1.0]];
        let out = matmul_f32_sequential(a.view(), b.view()).unwrap();
        assert_eq!(
            out,
            array![[1.0f32, 2.0, 0.0], [3.0, 4.0, 2.0], [0.5, -1.0, 2.0]]
        );
    }

    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let (n, k, m) = (200usize, 37usize, 13usize);
        let a = Array2::from_shape_fn((n, k), |(i, j)| ((i * 31 + j * 17) % 97) as f32 / 7.3 - 6.0);
        let b = Array2::from_shape_fn((k, m), |(i, j)| ((i * 13 + j * 7) % 53) as f32 / 3.1 - 8.0);
        let whole = matmul_f32_sequential(a.view(), b.view()).unwrap();
        assert_eq!(whole, reference(&a, &b));
        for rows in [1usize, 7, 64, 65] {
            let mut start = 0;
            while start < n {
                let end = (start + rows).min(n);
                let part =
                    matmul_f32_sequential(a.slice(ndarray::s![start..end, ..]), b.view()).unwrap();
                assert_eq!(part, whole.slice(ndarray::s![start..end, ..]));
                start = end;
            }
        }
    }

    #[test]
    fn float64_sums_in_k_order() {
        // 1e16 + 1 + 1 - 1e16 in k order is 0 in float64 (each +1 is lost), not 2.
        let a = ndarray::array![[1e16f64, 1.0, 1.0, -1e16]];
        let b = ndarray::array![[1.0f64], [1.0], [1.0], [1.0]];
        let out = matmul_f64_sequential(a.view(), b.view()).unwrap();
        assert_eq!(out[[0, 0]], 0.0);
    }

    #[test]
    fn mismatched_inner_dimension_is_an_error() {
        let a = Array2::<f32>::zeros((2, 3));
        let b = Array2::<f32>::zeros((4, 1));
        assert!(matches!(
            matmul_f32_sequential(a.view(), b.view()),
            Err(Error::Shape(_))
        ));
    }
}
