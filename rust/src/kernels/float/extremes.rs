//! The min and max of a float matmul or conv result plus a bias, without writing the result.
//!
//! Calibration only needs the extremes of a Gemm/MatMul/Conv output (docs/contract.md §4.2), so
//! these kernels run the very tiles of [`matmul`](super::matmul) and [`conv`](super::conv) (the
//! same sequential k-order sums, bit for bit) and fold every value into running minima and maxima
//! kept next to the accumulators, instead of storing it. The input can be read through a
//! `load` function, e.g. the float64 dequantization of stored integers (the exact value of
//! `kernels::quant::dequantize`), so the float input is never materialised either.
//!
//! What numpy's `(a @ b + bias).min()` / `.max()` would give, and how it is reproduced:
//! * the bias is added in the result type, per column (Gemm/MatMul) or per output channel
//!   (Conv), as numpy's `y + c` does; without a bias `-0.0` is added (the exact identity);
//! * NaN never wins a comparison here; instead [`Extremes::finite`] says whether every value
//!   was finite (the sum of every `v · 0` is a zero, or NaN as soon as one `v` is NaN or ±∞),
//!   and a caller must not trust `min` / `max` when it is false;
//! * equal non-zero floats have equal bits, so with finite values the extremes are exactly
//!   numpy's, whatever the order. Only `-0.0` and `+0.0` tie: when `min` or `max` is a zero its
//!   sign is the first one met, and a caller must resolve it otherwise.
//!
//! Rows are split among threads in fixed chunks and the merge of two partial results is exact
//! (finite case), so nothing depends on the batch or on the number of threads.

use ndarray::{ArrayView1, ArrayView2, ArrayView4};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::float::conv::{im2col, ConvGeometry, ConvPlan};
use crate::kernels::float::matmul::{supported, tile, Element, Isa, PackedB};

/// Matmul rows handed to one rayon task.
pub(crate) const ROWS_PER_TASK: usize = 64;

/// Conv output positions handed to one rayon task (at least one image).
const CONV_ROWS_PER_TASK: usize = 256;

/// The extremes of a float result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Extremes<T> {
    /// The smallest value (`+∞` when there was none; the sign of a zero is not resolved).
    pub min: T,
    /// The largest value (`-∞` when there was none; the sign of a zero is not resolved).
    pub max: T,
    /// Every value was finite; `min` and `max` are meaningless otherwise.
    pub finite: bool,
}

impl<T: Element> Extremes<T> {
    /// No value yet.
    pub fn none() -> Self {
        Extremes {
            min: T::INFINITY,
            max: T::NEG_INFINITY,
            finite: true,
        }
    }

    /// Both sets of values.
    pub fn merge(self, other: Self) -> Self {
        Extremes {
            min: if other.min < self.min {
                other.min
            } else {
                self.min
            },
            max: if other.max > self.max {
                other.max
            } else {
                self.max
            },
            finite: self.finite && other.finite,
        }
    }

    /// One more value.
    fn push(self, v: T) -> Self {
        self.merge(Extremes {
            min: v,
            max: v,
            finite: v * T::ZERO == T::ZERO,
        })
    }
}

/// Running extremes, one lane per column of a tile (kept in registers by the compiler).
struct Lanes<T, const NR: usize> {
    lo: [T; NR],
    hi: [T; NR],
    /// The sum of `v · 0`: a zero while every value is finite, NaN after a NaN or ±∞.
    check: [T; NR],
}

impl<T: Element, const NR: usize> Lanes<T, NR> {
    fn new() -> Self {
        Lanes {
            lo: [T::INFINITY; NR],
            hi: [T::NEG_INFINITY; NR],
            check: [T::ZERO; NR],
        }
    }

    #[inline(always)]
    fn fold(&mut self, j: usize, v: T) {
        self.lo[j] = if v < self.lo[j] { v } else { self.lo[j] };
        self.hi[j] = if v > self.hi[j] { v } else { self.hi[j] };
        self.check[j] += v * T::ZERO;
    }

    fn extremes(&self) -> Extremes<T> {
        let mut out = Extremes::none();
        for j in 0..NR {
            out = out.merge(Extremes {
                min: self.lo[j],
                max: self.hi[j],
                finite: self.check[j] == T::ZERO,
            });
        }
        out
    }
}

/// The tile sizes of `b` pick the instantiation (called by [`Element::rows_extremes`]).
pub(crate) fn task_dispatch<
    S: Copy,
    F: Fn(S) -> T,
    T: Element,
    const MR: usize,
    const NR: usize,
>(
    a: &[S],
    load: &F,
    b: &PackedB<T>,
    bias: &[T],
) -> Extremes<T> {
    let (packed, k, m) = (&b.data[..], b.k(), b.m());
    if k == 0 || m == 0 {
        // the rows of `a` cannot be counted without k: the public kernels handle k == 0
        return Extremes::none();
    }
    #[cfg(target_arch = "x86_64")]
    {
        if b.isa == Isa::Avx2 {
            // SAFETY: a PackedB is only built for an instruction set the CPU supports.
            return unsafe { task_avx2::<S, F, T, MR, NR>(a, load, packed, k, m, bias) };
        }
    }
    task::<S, F, T, MR, NR>(a, load, packed, k, m, bias)
}

/// The extremes of `0 + bias[j]` over the `m` columns (`+0.0` without a bias): the result
/// of a product whose inner dimension is empty (numpy's matmul gives `+0.0`).
pub(crate) fn empty_sum_extremes<T: Element>(m: usize, bias: &[T]) -> Extremes<T> {
    (0..m).fold(Extremes::none(), |out, j| {
        out.push(T::ZERO + bias.get(j).copied().unwrap_or(T::NEG_ZERO))
    })
}

/// `task` compiled with AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn task_avx2<S: Copy, F: Fn(S) -> T, T: Element, const MR: usize, const NR: usize>(
    a: &[S],
    load: &F,
    packed: &[T],
    k: usize,
    m: usize,
    bias: &[T],
) -> Extremes<T> {
    task::<S, F, T, MR, NR>(a, load, packed, k, m, bias)
}

/// The rows of one task, packed tile by tile through `load` as in the matmul; every panel of
/// `b` meets every tile, and the bias-added accumulators are folded into the lanes.
#[inline(always)]
fn task<S: Copy, F: Fn(S) -> T, T: Element, const MR: usize, const NR: usize>(
    a: &[S],
    load: &F,
    packed: &[T],
    k: usize,
    m: usize,
    bias: &[T],
) -> Extremes<T> {
    let rows = a.len() / k;
    let tiles = rows.div_ceil(MR);
    let mut a_packed = vec![T::default(); tiles * MR * k];
    for (t, dst) in a_packed.chunks_exact_mut(MR * k).enumerate() {
        for r in 0..MR.min(rows - t * MR) {
            let row = &a[(t * MR + r) * k..(t * MR + r + 1) * k];
            for (kk, &v) in row.iter().enumerate() {
                dst[kk * MR + r] = load(v);
            }
        }
    }
    let mut lanes = Lanes::<T, NR>::new();
    for (p, panel) in packed.chunks_exact(k * NR).enumerate() {
        let c0 = p * NR;
        let width = NR.min(m - c0);
        let mut add = [T::NEG_ZERO; NR];
        if !bias.is_empty() {
            add[..width].copy_from_slice(&bias[c0..c0 + width]);
        }
        for (t, a_tile) in a_packed.chunks_exact(MR * k).enumerate() {
            let acc = tile::<T, MR, NR>(a_tile, panel);
            let valid = MR.min(rows - t * MR);
            if valid == MR && width == NR {
                for acc_r in &acc {
                    for j in 0..NR {
                        lanes.fold(j, acc_r[j] + add[j]);
                    }
                }
            } else {
                for acc_r in acc.iter().take(valid) {
                    for j in 0..width {
                        lanes.fold(j, acc_r[j] + add[j]);
                    }
                }
            }
        }
    }
    lanes.extremes()
}

/// The extremes of `load(a) (n, k) @ b (k, m) + bias` (bias of length m, added to every row),
/// each dot product summed in k order as [`matmul_sequential`](super::matmul::matmul_sequential).
///
/// Errors: `Shape` when the dimensions do not fit, `Empty` when the result has no value.
pub fn matmul_extremes<S: Copy + Sync, T: Element, F: Fn(S) -> T + Sync>(
    a: ArrayView2<'_, S>,
    load: F,
    b: ArrayView2<'_, T>,
    bias: Option<ArrayView1<'_, T>>,
    isa: Isa,
) -> Result<Extremes<T>> {
    let (n, k) = a.dim();
    let (kb, m) = b.dim();
    if k != kb {
        return Err(Error::Shape(format!(
            "matmul extremes: a has {k} columns but b has {kb} rows; the inner dimensions \
             must match"
        )));
    }
    let bias = bias_vec(bias, m, "matmul extremes: the bias", "columns of b")?;
    if n == 0 || m == 0 {
        return Err(Error::Empty);
    }
    if k == 0 {
        return Ok(empty_sum_extremes(m, &bias));
    }
    let isa = supported(isa);
    let b = b.as_standard_layout();
    let b = b
        .as_slice()
        .ok_or_else(|| Error::Shape("matmul extremes: b is not contiguous".into()))?;
    let a = a.as_standard_layout();
    let a = a
        .as_slice()
        .ok_or_else(|| Error::Shape("matmul extremes: a is not contiguous".into()))?;
    let packed = T::pack(b, k, m, isa);
    Ok(a.par_chunks(ROWS_PER_TASK * k)
        .map(|rows| T::rows_extremes(rows, &load, &packed, &bias))
        .reduce(Extremes::none, Extremes::merge))
}

/// The bias as a vector of `len` values (empty for none).
pub(crate) fn bias_vec<T: Copy>(
    bias: Option<ArrayView1<'_, T>>,
    len: usize,
    what: &str,
    of: &str,
) -> Result<Vec<T>> {
    match bias {
        None => Ok(Vec::new()),
        Some(v) if v.len() == len => Ok(v.to_vec()),
        Some(v) => Err(Error::Shape(format!(
            "{what} has {} values but there are {len} {of}; give one value each",
            v.len()
        ))),
    }
}

/// The extremes of `conv(load(x) (N, C, H, W), w (O, C/group, KH, KW)) + bias` (bias of
/// length O, per output channel), each output summed as
/// [`conv2d_sequential`](super::conv::conv2d_sequential) does (with padding, `load(x)` is read
/// through float32).
///
/// Errors: those of the conv (`Shape`, `InvalidArgument`), `Empty` when the result has no
/// value.
pub fn conv2d_extremes<S: Copy + Sync, F: Fn(S) -> f64 + Sync>(
    x: ArrayView4<'_, S>,
    load: F,
    w: ArrayView4<'_, f64>,
    bias: Option<ArrayView1<'_, f64>>,
    geometry: &ConvGeometry,
    isa: Isa,
) -> Result<Extremes<f64>> {
    let g = geometry;
    let plan = ConvPlan::new(x.dim(), w, g, isa)?;
    let s = &plan.shape;
    let bias = bias_vec(bias, s.o, "conv extremes: the bias", "output channels")?;
    let n = x.dim().0;
    let plane = s.oh * s.ow;
    if n == 0 || s.o == 0 || plane == 0 {
        return Err(Error::Empty);
    }
    if s.kdim() == 0 {
        return Ok(empty_sum_extremes(s.o, &bias));
    }
    let x = x.as_standard_layout();
    let x = x
        .as_slice()
        .ok_or_else(|| Error::Shape("conv extremes: x is not contiguous".into()))?;
    let images_per_task = conv_images_per_task(plane);
    let tasks = n.div_ceil(images_per_task);
    Ok((0..tasks)
        .into_par_iter()
        .map(|t| {
            conv_task(
                x,
                &load,
                &plan,
                &bias,
                g,
                t * images_per_task,
                images_per_task,
            )
        })
        .reduce(Extremes::none, Extremes::merge))
}

/// The images of one conv task (at least one image).
pub(crate) fn conv_images_per_task(plane: usize) -> usize {
    (CONV_ROWS_PER_TASK / plane).max(1)
}

/// The input values of up to `per_task` images from `first` on, as the conv sums read them:
/// `load(x)`, through float32 when the conv is padded.
fn conv_task_values<S: Copy, F: Fn(S) -> f64>(
    x: &[S],
    load: &F,
    plan: &ConvPlan,
    first: usize,
    per_task: usize,
) -> (Vec<f64>, usize) {
    let s = &plan.shape;
    let image = s.c * s.h * s.w;
    let count = per_task.min(x.len() / image - first);
    let values = x[first * image..(first + count) * image]
        .iter()
        .map(|&v| {
            let v = load(v);
            if s.round {
                v as f32 as f64
            } else {
                v
            }
        })
        .collect();
    (values, count)
}

/// The exact extremes of the images of one conv task (see [`conv2d_extremes`]).
pub(crate) fn conv_task<S: Copy, F: Fn(S) -> f64>(
    x: &[S],
    load: &F,
    plan: &ConvPlan,
    bias: &[f64],
    g: &ConvGeometry,
    first: usize,
    per_task: usize,
) -> Extremes<f64> {
    let s = &plan.shape;
    // the task's images are loaded (and read through float32 when padded) once, into `values`
    let (values, count) = conv_task_values(x, load, plan, first, per_task);
    let mut cols = vec![0.0f64; count * s.oh * s.ow * s.kdim()];
    let mut out = Extremes::none();
    for (gi, packed) in plan.panels.iter().enumerate() {
        im2col(&values, &|v| v, gi, s, g, &mut cols);
        let group_bias = if bias.is_empty() {
            bias
        } else {
            &bias[gi * s.og..(gi + 1) * s.og]
        };
        out = out.merge(f64::rows_extremes(&cols, &|v| v, packed, group_bias));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::float::conv::conv2d_sequential;
    use crate::kernels::float::matmul::matmul_sequential;
    use crate::kernels::quant::dequantize::dequantize_value;
    use ndarray::{Array1, Array2, Array4};

    /// Values of very different magnitudes, so that the summation order shows in the bits.
    fn awkward(i: usize, j: usize, salt: usize) -> f64 {
        let h = (i * 2_654_435_761 + j * 40_503 + salt * 97) % 1_000_003;
        let mag = [1e-7, 1.0, 3.3e3, 1e8][h % 4];
        (h as f64 / 1_000_003.0 - 0.4) * mag
    }

    /// min / max of a materialised result (NaN-free), as plain folds.
    fn fold<T: Element>(values: impl Iterator<Item = T>) -> (T, T) {
        values.fold((T::INFINITY, T::NEG_INFINITY), |(lo, hi), v| {
            (if v < lo { v } else { lo }, if v > hi { v } else { hi })
        })
    }

    fn with_bias<T: Element>(y: &Array2<T>, bias: Option<&Array1<T>>) -> Vec<T> {
        y.indexed_iter()
            .map(|((_, j), &v)| match bias {
                Some(b) => v + b[j],
                None => v,
            })
            .collect()
    }

    #[test]
    fn matmul_extremes_are_those_of_the_materialised_result() {
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
            let bias = Array1::from_shape_fn(m, |j| awkward(j, 0, 3));
            let (a32, b32, bias32) = (
                a.mapv(|v| v as f32),
                b.mapv(|v| v as f32),
                bias.mapv(|v| v as f32),
            );
            for isa in Isa::available() {
                for with in [false, true] {
                    let y = matmul_sequential(a.view(), b.view(), isa).unwrap();
                    let want = fold(with_bias(&y, with.then_some(&bias)).into_iter());
                    let got =
                        matmul_extremes(a.view(), |v| v, b.view(), with.then(|| bias.view()), isa)
                            .unwrap();
                    assert!(got.finite);
                    assert_eq!((got.min, got.max), want, "f64 {isa:?} {n} {k} {m} {with}");
                    let y = matmul_sequential(a32.view(), b32.view(), isa).unwrap();
                    let want = fold(with_bias(&y, with.then_some(&bias32)).into_iter());
                    let got = matmul_extremes(
                        a32.view(),
                        |v| v,
                        b32.view(),
                        with.then(|| bias32.view()),
                        isa,
                    )
                    .unwrap();
                    assert_eq!((got.min, got.max), want, "f32 {isa:?} {n} {k} {m} {with}");
                }
            }
        }
    }

    #[test]
    fn dequantized_inputs_are_the_values_of_dequantize() {
        let q = Array2::from_shape_fn((37, 11), |(i, j)| ((i * 7 + j * 13) % 255) as i16 - 127);
        let b = Array2::from_shape_fn((11, 6), |(i, j)| awkward(i, j, 4));
        let (scale, zp) = (0.037_123, 3.0);
        let a = q.mapv(|v| dequantize_value(v, scale, zp));
        let y = matmul_sequential(a.view(), b.view(), Isa::detect()).unwrap();
        let want = fold(y.iter().copied());
        let got = matmul_extremes(
            q.view(),
            |v| dequantize_value(v, scale, zp),
            b.view(),
            None,
            Isa::detect(),
        )
        .unwrap();
        assert_eq!((got.min, got.max), want);
    }

    #[test]
    fn thread_count_does_not_change_the_extremes() {
        let a = Array2::from_shape_fn((1000, 21), |(i, j)| awkward(i, j, 5));
        let b = Array2::from_shape_fn((21, 19), |(i, j)| awkward(i, j, 6));
        let run = || matmul_extremes(a.view(), |v| v, b.view(), None, Isa::detect()).unwrap();
        let many = run();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(run);
        assert_eq!(one, many);
    }

    #[test]
    fn non_finite_values_clear_the_finite_flag() {
        let b = Array2::from_shape_fn((3, 5), |(i, j)| awkward(i, j, 7));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut a = Array2::from_shape_fn((9, 3), |(i, j)| awkward(i, j, 8));
            a[[8, 2]] = bad;
            for isa in Isa::available() {
                let got = matmul_extremes(a.view(), |v| v, b.view(), None, isa).unwrap();
                assert!(!got.finite, "{bad} {isa:?}");
            }
        }
        let a = Array2::from_shape_fn((9, 3), |(i, j)| awkward(i, j, 8));
        let mut bias = Array1::zeros(5);
        bias[4] = f64::NAN;
        let got = matmul_extremes(a.view(), |v| v, b.view(), Some(bias.view()), Isa::detect());
        assert!(!got.unwrap().finite);
        // overflow of a finite sum
        let big = Array2::from_elem((2, 2), 1e300);
        let got = matmul_extremes(big.view(), |v| v, big.view(), None, Isa::detect()).unwrap();
        assert!(!got.finite);
    }

    #[test]
    fn empty_inner_dimension_gives_the_bias() {
        let a = Array2::<f64>::zeros((4, 0));
        let b = Array2::<f64>::zeros((0, 3));
        let bias = Array1::from(vec![2.0, -1.5, 0.25]);
        let got = matmul_extremes(a.view(), |v| v, b.view(), Some(bias.view()), Isa::detect());
        let got = got.unwrap();
        assert_eq!((got.min, got.max, got.finite), (-1.5, 2.0, true));
    }

    #[test]
    fn bad_shapes_are_errors() {
        let a = Array2::<f64>::zeros((4, 2));
        let b = Array2::<f64>::zeros((3, 3));
        let r = matmul_extremes(a.view(), |v| v, b.view(), None, Isa::detect());
        assert!(matches!(r, Err(Error::Shape(_))));
        let b = Array2::<f64>::zeros((2, 3));
        let bias = Array1::<f64>::zeros(2);
        let r = matmul_extremes(a.view(), |v| v, b.view(), Some(bias.view()), Isa::detect());
        assert!(matches!(r, Err(Error::Shape(_))));
        let a = Array2::<f64>::zeros((0, 2));
        let r = matmul_extremes(a.view(), |v| v, b.view(), None, Isa::detect());
        assert!(matches!(r, Err(Error::Empty)));
    }

    fn tensor(shape: (usize, usize, usize, usize), salt: usize) -> Array4<f64> {
        let mut i = 0;
        Array4::from_shape_simple_fn(shape, || {
            i += 1;
            awkward(i, 0, salt)
        })
    }

    #[test]
    fn conv_extremes_are_those_of_the_materialised_result() {
        let cases = [
            (
                (3, 1, 8, 8),
                (8, 1, 3, 3),
                [1, 1],
                [1, 1],
                [1, 1],
                [1, 1],
                1,
            ),
            (
                (5, 8, 8, 8),
                (16, 8, 3, 3),
                [2, 2],
                [1, 1],
                [1, 1],
                [1, 1],
                1,
            ),
            (
                (2, 4, 7, 5),
                (6, 2, 2, 3),
                [1, 2],
                [2, 1],
                [0, 2],
                [1, 0],
                2,
            ),
            (
                (7, 3, 1, 9),
                (4, 3, 1, 4),
                [1, 3],
                [1, 1],
                [0, 0],
                [0, 0],
                1,
            ),
        ];
        for (xs, ws, strides, dilations, begins, ends, group) in cases {
            let g = ConvGeometry {
                strides,
                dilations,
                begins,
                ends,
                group,
            };
            let q = Array4::from_shape_fn(xs, |(a, b, c, d)| {
                ((a * 31 + b * 7 + c * 5 + d) % 200) as i8
            });
            let (scale, zp) = (0.1234567, 17.0);
            let x = q.mapv(|v| dequantize_value(v, scale, zp));
            let w = tensor(ws, 2);
            let bias = Array1::from_shape_fn(ws.0, |j| awkward(j, 1, 3));
            for isa in Isa::available() {
                let y = conv2d_sequential(x.view(), w.view(), &g, isa).unwrap();
                for with in [false, true] {
                    let want = fold(y.indexed_iter().map(
                        |((_, o, _, _), &v)| {
                            if with {
                                v + bias[o]
                            } else {
                                v
                            }
                        },
                    ));
                    let b = with.then(|| bias.view());
                    let got = conv2d_extremes(x.view(), |v| v, w.view(), b, &g, isa).unwrap();
                    assert!(got.finite);
                    assert_eq!((got.min, got.max), want, "{isa:?} {xs:?} {with}");
                    let load = |v: i8| dequantize_value(v, scale, zp);
                    let got = conv2d_extremes(q.view(), load, w.view(), b, &g, isa).unwrap();
                    assert_eq!(
                        (got.min, got.max),
                        want,
                        "dequantized {isa:?} {xs:?} {with}"
                    );
                }
            }
        }
    }

    #[test]
    fn conv_errors_are_reported() {
        let g = ConvGeometry {
            strides: [1, 1],
            dilations: [1, 1],
            begins: [0, 0],
            ends: [0, 0],
            group: 1,
        };
        let x = Array4::<f64>::zeros((2, 3, 5, 5));
        let w = Array4::<f64>::zeros((4, 2, 3, 3));
        let r = conv2d_extremes(x.view(), |v| v, w.view(), None, &g, Isa::detect());
        assert!(matches!(r, Err(Error::Shape(_))));
        let w = Array4::<f64>::zeros((4, 3, 3, 3));
        let bias = Array1::<f64>::zeros(3);
        let r = conv2d_extremes(
            x.view(),
            |v| v,
            w.view(),
            Some(bias.view()),
            &g,
            Isa::detect(),
        );
        assert!(matches!(r, Err(Error::Shape(_))));
        let x = Array4::<f64>::zeros((0, 3, 5, 5));
        let r = conv2d_extremes(x.view(), |v| v, w.view(), None, &g, Isa::detect());
        assert!(matches!(r, Err(Error::Empty)));
    }
}
