//! float32 / float64 matmul with a fixed summation order (docs/contract.md decision 4).
//!
//! Each output is `((0 + a[i,0]·b[0,j]) + a[i,1]·b[1,j]) + …` in k order, every product and
//! every sum rounded to the element type (Rust never contracts `a * b + c` into an FMA). A row's
//! result depends only on that row, so it is the same whatever the batch it is computed in
//! and whatever the number of threads (rows are split among threads, never k).
//!
//! Speed comes from doing many of these sums side by side, never from reordering one: `b` is
//! packed into panels of `NR` columns (zero-padded), and a tile of `MR` rows × `NR` columns of
//! accumulators stays in registers while k runs. The tile sizes and the instruction set
//! (AVX2 or the portable build) are picked at run time; each only changes how many
//! independent sums run at once, so every bit of the result is the same on every path.
//! (An AVX-512 build of the same loops was not faster on the machines measured: LLVM spills
//! the larger tiles, and Zen 4 runs 512-bit arithmetic at the 256-bit rate.)

use std::ops::{Add, AddAssign, Mul};

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::float::extremes::{self, Extremes};

/// Rows handed to one rayon task.
const ROWS_PER_TASK: usize = 64;

/// The instruction sets the kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Baseline x86-64 (SSE2) or any other target.
    Portable,
    /// x86-64 with AVX2.
    Avx2,
}

impl Isa {
    /// The widest instruction set this CPU runs.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// This set and the narrower ones the CPU also runs (for tests).
    pub fn available() -> Vec<Isa> {
        let best = Isa::detect();
        [Isa::Portable, Isa::Avx2]
            .into_iter()
            .filter(|&isa| isa as u8 <= best as u8)
            .collect()
    }
}

/// The element types the kernel runs on, with their tile sizes per instruction set.
pub trait Element:
    Copy
    + Default
    + Send
    + Sync
    + PartialOrd
    + Into<f64>
    + Mul<Output = Self>
    + Add<Output = Self>
    + AddAssign
{
    /// `+∞`.
    const INFINITY: Self;
    /// `-∞`.
    const NEG_INFINITY: Self;
    /// `0.0`.
    const ZERO: Self;
    /// `-0.0`, the exact additive identity (`x + -0.0` is `x` for every `x`, `-0.0` included).
    const NEG_ZERO: Self;
    /// `b (k, m)` (row-major) packed for the tiles of `isa`.
    fn pack(b: &[Self], k: usize, m: usize, isa: Isa) -> PackedB<Self>;
    /// `out (rows, m) = a (rows, k) @ b` (row-major slices), on the calling thread.
    fn rows_times(a: &[Self], b: &PackedB<Self>, out: &mut [Self]);
    /// The extremes of `load(a) (rows, k) @ b + bias` (bias of length m, or empty for none)
    /// without writing the product, on the calling thread: see [`extremes`].
    fn rows_extremes<S: Copy, F: Fn(S) -> Self>(
        a: &[S],
        load: &F,
        b: &PackedB<Self>,
        bias: &[Self],
    ) -> Extremes<Self>;
}

/// The right operand of a product, packed into zero-padded panels of columns.
pub struct PackedB<T> {
    pub(crate) isa: Isa,
    pub(crate) data: Vec<T>,
    k: usize,
    m: usize,
}

impl<T> PackedB<T> {
    /// The inner dimension.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The number of columns.
    pub fn m(&self) -> usize {
        self.m
    }
}

macro_rules! element {
    ($t:ident, avx2: ($mr2:literal, $nr2:literal), portable: ($mr:literal, $nr:literal)) => {
        impl Element for $t {
            const INFINITY: $t = $t::INFINITY;
            const NEG_INFINITY: $t = $t::NEG_INFINITY;
            const ZERO: $t = 0.0;
            const NEG_ZERO: $t = -0.0;

            fn pack(b: &[$t], k: usize, m: usize, isa: Isa) -> PackedB<$t> {
                let data = match isa {
                    Isa::Avx2 => pack_b::<$t, $nr2>(b, k, m),
                    Isa::Portable => pack_b::<$t, $nr>(b, k, m),
                };
                PackedB { isa, data, k, m }
            }

            fn rows_times(a: &[$t], b: &PackedB<$t>, out: &mut [$t]) {
                if b.k == 0 || b.m == 0 {
                    out.fill(0.0);
                    return;
                }
                match b.isa {
                    Isa::Avx2 => task_dispatch::<$t, $mr2, $nr2>(a, b, out),
                    Isa::Portable => task_dispatch::<$t, $mr, $nr>(a, b, out),
                }
            }

            fn rows_extremes<S: Copy, F: Fn(S) -> $t>(
                a: &[S],
                load: &F,
                b: &PackedB<$t>,
                bias: &[$t],
            ) -> Extremes<$t> {
                match b.isa {
                    Isa::Avx2 => extremes::task_dispatch::<S, F, $t, $mr2, $nr2>(a, load, b, bias),
                    Isa::Portable => {
                        extremes::task_dispatch::<S, F, $t, $mr, $nr>(a, load, b, bias)
                    }
                }
            }
        }
    };
}

element!(f32, avx2: (6, 16), portable: (4, 8));
element!(f64, avx2: (6, 8), portable: (4, 4));

/// The instruction set to run on: `isa` when the CPU runs it, else the portable code.
pub fn supported(isa: Isa) -> Isa {
    if Isa::available().contains(&isa) {
        isa
    } else {
        Isa::Portable
    }
}

/// `a (n, k) @ b (k, m)` in float32 with the sequential k-order sum of every dot product.
pub fn matmul_f32_sequential(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
) -> Result<Array2<f32>> {
    matmul_sequential(a, b, Isa::detect())
}

/// `a (n, k) @ b (k, m)` in float64 with the sequential k-order sum of every dot product.
pub fn matmul_f64_sequential(
    a: ArrayView2<'_, f64>,
    b: ArrayView2<'_, f64>,
) -> Result<Array2<f64>> {
    matmul_sequential(a, b, Isa::detect())
}

/// The generic kernel behind the float32 and float64 entry points, on a given instruction
/// set (one the CPU runs: see [`Isa::available`]; a wider one falls back to the portable code).
pub fn matmul_sequential<T: Element>(
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    isa: Isa,
) -> Result<Array2<T>> {
    let (n, k) = a.dim();
    let (kb, m) = b.dim();
    if k != kb {
        return Err(Error::Shape(format!(
            "matmul: a has {k} columns but b has {kb} rows; the inner dimensions must match"
        )));
    }
    let isa = supported(isa);
    let b = b.as_standard_layout();
    let b = b
        .as_slice()
        .ok_or_else(|| Error::Shape("matmul: b is not contiguous".into()))?;
    let a = a.as_standard_layout();
    let a = a
        .as_slice()
        .ok_or_else(|| Error::Shape("matmul: a is not contiguous".into()))?;
    let mut out = vec![T::default(); n * m];
    // k == 0: every sum is empty, so 0
    if m > 0 && n > 0 && k > 0 {
        let packed = T::pack(b, k, m, isa);
        out.par_chunks_mut(ROWS_PER_TASK * m)
            .zip(a.par_chunks(ROWS_PER_TASK * k))
            .for_each(|(out_rows, a_rows)| T::rows_times(a_rows, &packed, out_rows));
    }
    Array2::from_shape_vec((n, m), out).map_err(|e| Error::Shape(e.to_string()))
}

/// Pack `b (k, m)` into `ceil(m / NR)` panels of `k × NR` (panel-major, then k, then the
/// column), the columns past `m` zero.
fn pack_b<T: Element, const NR: usize>(b: &[T], k: usize, m: usize) -> Vec<T> {
    if k == 0 {
        return Vec::new();
    }
    let panels = m.div_ceil(NR);
    let mut packed = vec![T::default(); panels * k * NR];
    for (p, panel) in packed.chunks_exact_mut(k * NR).enumerate() {
        let c0 = p * NR;
        let width = NR.min(m - c0);
        for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
            dst[..width].copy_from_slice(&b[kk * m + c0..kk * m + c0 + width]);
        }
    }
    packed
}

fn task_dispatch<T: Element, const MR: usize, const NR: usize>(
    a: &[T],
    b: &PackedB<T>,
    out: &mut [T],
) {
    let (packed, k, m) = (&b.data[..], b.k, b.m);
    #[cfg(target_arch = "x86_64")]
    {
        if b.isa == Isa::Avx2 {
            // SAFETY: a PackedB is only built for an instruction set the CPU supports.
            unsafe { task_avx2::<T, MR, NR>(a, packed, out, k, m) };
            return;
        }
    }
    task::<T, MR, NR>(a, packed, out, k, m);
}

/// `task` compiled with AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn task_avx2<T: Element, const MR: usize, const NR: usize>(
    a: &[T],
    packed: &[T],
    out: &mut [T],
    k: usize,
    m: usize,
) {
    task::<T, MR, NR>(a, packed, out, k, m);
}

/// The rows of one task. They are first packed tile by tile (`MR` rows interleaved along k,
/// the missing rows of the last tile zero), then every panel of `b` meets every tile.
#[inline(always)]
fn task<T: Element, const MR: usize, const NR: usize>(
    a: &[T],
    packed: &[T],
    out: &mut [T],
    k: usize,
    m: usize,
) {
    let rows = out.len() / m;
    let tiles = rows.div_ceil(MR);
    let mut a_packed = vec![T::default(); tiles * MR * k];
    for (t, dst) in a_packed.chunks_exact_mut(MR * k).enumerate() {
        for r in 0..MR.min(rows - t * MR) {
            let row = &a[(t * MR + r) * k..(t * MR + r + 1) * k];
            for (kk, &v) in row.iter().enumerate() {
                dst[kk * MR + r] = v;
            }
        }
    }
    for (p, panel) in packed.chunks_exact(k * NR).enumerate() {
        let c0 = p * NR;
        let width = NR.min(m - c0);
        for (t, a_tile) in a_packed.chunks_exact(MR * k).enumerate() {
            let acc = tile::<T, MR, NR>(a_tile, panel);
            for (r, acc_r) in acc.iter().enumerate().take(rows - t * MR) {
                let start = (t * MR + r) * m + c0;
                out[start..start + width].copy_from_slice(&acc_r[..width]);
            }
        }
    }
}

/// One `MR × NR` tile: `acc[r][j] = Σ_kk a[kk, r] · panel[kk, j]`, summed in k order.
#[inline(always)]
pub(crate) fn tile<T: Element, const MR: usize, const NR: usize>(
    a: &[T],
    panel: &[T],
) -> [[T; NR]; MR] {
    let mut acc = [[T::default(); NR]; MR];
    for (xs, bk) in a.chunks_exact(MR).zip(panel.chunks_exact(NR)) {
        for (acc_r, &x) in acc.iter_mut().zip(xs) {
            for (o, &bv) in acc_r.iter_mut().zip(bk) {
                let p = x * bv;
                *o += p;
            }
        }
    }
    acc
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

    fn reference64(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
        let (n, k) = a.dim();
        let m = b.dim().1;
        Array2::from_shape_fn((n, m), |(i, j)| {
            let mut s = 0.0f64;
            for kk in 0..k {
                s += a[[i, kk]] * b[[kk, j]];
            }
            s
        })
    }

    /// Values of very different magnitudes, so that the summation order shows in the bits.
    fn awkward(i: usize, j: usize, salt: usize) -> f64 {
        let h = (i * 2_654_435_761 + j * 40_503 + salt * 97) % 1_000_003;
        let mag = [1e-7, 1.0, 3.3e3, 1e8][h % 4];
        (h as f64 / 1_000_003.0 - 0.4) * mag
    }

    #[test]
    fn every_instruction_set_and_tile_edge_sums_in_k_order() {
        for &(n, k, m) in &[
            (1usize, 1usize, 1usize),
            (5, 3, 7),
            (7, 17, 9),
            (13, 40, 16),
            (67, 33, 33),
            (130, 64, 70),
        ] {
            let a = Array2::from_shape_fn((n, k), |(i, j)| awkward(i, j, 1));
            let b = Array2::from_shape_fn((k, m), |(i, j)| awkward(i, j, 2));
            let want64 = reference64(&a, &b);
            let a32 = a.mapv(|v| v as f32);
            let b32 = b.mapv(|v| v as f32);
            let want32 = reference(&a32, &b32);
            for isa in Isa::available() {
                let got = matmul_sequential(a.view(), b.view(), isa).unwrap();
                assert_eq!(got, want64, "f64 {isa:?} n={n} k={k} m={m}");
                let got = matmul_sequential(a32.view(), b32.view(), isa).unwrap();
                assert_eq!(got, want32, "f32 {isa:?} n={n} k={k} m={m}");
            }
        }
    }

    #[test]
    fn thread_count_does_not_change_the_bits() {
        let a = Array2::from_shape_fn((300, 21), |(i, j)| awkward(i, j, 5));
        let b = Array2::from_shape_fn((21, 19), |(i, j)| awkward(i, j, 6));
        let many = matmul_f64_sequential(a.view(), b.view()).unwrap();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| matmul_f64_sequential(a.view(), b.view()).unwrap());
        assert_eq!(one, many);
    }

    #[test]
    fn non_finite_values_and_signed_zeros_follow_ieee() {
        let a = array![
            [f64::INFINITY, 1.0],
            [f64::NAN, 0.0],
            [-0.0, -0.0],
            [1e308, 1e308]
        ];
        let b = array![[1.0, 0.0, -1.0], [2.0, 1.0, -0.0]];
        let want = reference64(&a, &b);
        for isa in Isa::available() {
            let got = matmul_sequential(a.view(), b.view(), isa).unwrap();
            for (g, w) in got.iter().zip(want.iter()) {
                assert_eq!(g.to_bits(), w.to_bits(), "{isa:?}");
            }
        }
    }

    #[test]
    fn empty_dimensions_give_zeros() {
        let a = Array2::<f64>::zeros((3, 0));
        let b = Array2::<f64>::zeros((0, 4));
        assert_eq!(
            matmul_f64_sequential(a.view(), b.view()).unwrap(),
            Array2::<f64>::zeros((3, 4))
        );
        let a = Array2::<f32>::zeros((0, 2));
        let b = Array2::<f32>::zeros((2, 5));
        assert_eq!(
            matmul_f32_sequential(a.view(), b.view()).unwrap().dim(),
            (0, 5)
        );
    }

    #[test]
    fn transposed_views_are_read_in_logical_order() {
        let a = Array2::from_shape_fn((9, 6), |(i, j)| awkward(i, j, 3));
        let b = Array2::from_shape_fn((5, 6), |(i, j)| awkward(i, j, 4));
        let got = matmul_f64_sequential(a.view(), b.t()).unwrap();
        assert_eq!(got, reference64(&a, &b.t().to_owned()));
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
