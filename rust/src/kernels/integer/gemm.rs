//! Integer matmul with the zero-point correction of docs/contract.md §3.1 (Jacob et al. 2018,
//! Eq. 7): acc = A @ B − z_w·Σ_k A[…, k] = A @ (B − z_w), and sum_w = z_x·Σ_k B[k, :].

use std::mem::MaybeUninit;

use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::integer::exact::{
    check_bound, describe, max_abs, range, range_of, Exact, Strategy,
};
use crate::kernels::integer::madd;
use crate::kernels::integer::maddubs;
use crate::kernels::integer::vnni::{self, PackedB};
use crate::kernels::simd;

/// Rows of A per task: fixed, so the split never depends on the number of threads.
pub(crate) const BLOCK_ROWS: usize = 64;

/// The integer element types of A the matmul reads as stored (each value widened to i64 as
/// it is read, never as a copy of A).
pub trait Lhs: Copy + Ord + Send + Sync + Into<i64> + 'static {
    /// (min, max) of the values as i64, (0, 0) when there are none (`exact::range_of`: a
    /// scan in the input's own type; widening each value to i64 first cost about a tenth of
    /// an int8 product call).
    fn range_of<D: ndarray::Dimension>(a: ndarray::ArrayView<'_, Self, D>) -> (i64, i64) {
        range_of(a)
    }
}

impl Lhs for i8 {}
impl Lhs for i16 {}
impl Lhs for i32 {}
impl Lhs for i64 {}

/// How `matmul` evaluates a product: the strategy and the shifts s (of A) and t (of
/// W − z_w) that centre the operands (see `matmul`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub strategy: Strategy,
    pub shift: [i64; 2],
}

/// Which SIMD integer strategies a product may use (besides the float and i64 ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// `Strategy::U8I8` (AVX-512 VNNI).
    pub vnni: bool,
    /// `Strategy::U8I8Avx2` (AVX2 `vpmaddubsw`, or its scalar twin).
    pub maddubs: bool,
    /// `Strategy::I16` (AVX2 `vpmaddwd`, or its scalar twin).
    pub i16: bool,
}

impl Allowed {
    /// The strategies enabled and supported by this CPU.
    pub fn available() -> Allowed {
        Allowed {
            vnni: vnni::available(),
            maddubs: maddubs::available(),
            i16: madd::available(),
        }
    }

    /// Only the float and i64 strategies.
    pub const NONE: Allowed = Allowed {
        vnni: false,
        maddubs: false,
        i16: false,
    };
}

/// Check that K·max|a|·max|c| fits int64 (else `Error::Overflow`) and choose the plan, for
/// `a` in [a.0, a.1], `c = w − z_w` in [c.0, c.1] and `k` terms per sum.
pub fn plan(k: usize, a: (i64, i64), c: (i128, i128)) -> Result<Plan> {
    plan_with(k, a, c, Allowed::available())
}

/// `plan`, allowing only the SIMD integer strategies of `allowed`.
fn plan_with(k: usize, a: (i64, i64), c: (i128, i128), allowed: Allowed) -> Result<Plan> {
    check_bound(
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
    if allowed.vnni {
        if let Some(p) = plan_u8i8(k, a, c) {
            return Ok(p);
        }
    }
    if allowed.maddubs {
        if let Some(p) = plan_maddubs(k, a, c) {
            return Ok(p);
        }
    }
    let s = midpoint(a.0.into(), a.1.into());
    let t = midpoint(c.0, c.1);
    let bound = (k as u128)
        .saturating_mul(max_abs(i128::from(a.0) - s, i128::from(a.1) - s))
        .saturating_mul(max_abs(c.0 - t, c.1 - t));
    // The I16 strategy: both centred operands within i16 and every sum within i32.
    let lo_a = i128::from(a.0) - s;
    let hi_a = i128::from(a.1) - s;
    let i16_fits = madd::fits_i16(lo_a, hi_a) && madd::fits_i16(c.0 - t, c.1 - t);
    let strategy = if allowed.i16 && i16_fits && bound <= i32::MAX as u128 {
        Strategy::I16
    } else {
        Strategy::for_bound(bound)
    };
    Ok(Plan {
        strategy,
        // Both fit: s lies in [a.0, a.1]; t in [c.0, c.1] fits whenever it matters (a wrap
        // is harmless: all corrections are exact modulo 2^64).
        shift: [s as i64, t as i64],
    })
}

/// The u8 × i8 centring, if both operands fit: s = min A, so A − s in [0, 255] needs at
/// most 256 values; t = c.0 + ⌈span/2⌉, so c − t in [−128, 127] needs at most 256 values.
/// Returns the shifts, max(A − s) and max|c − t|.
fn centre_u8i8(a: (i64, i64), c: (i128, i128)) -> Option<([i64; 2], u128, u128)> {
    let a_span = i128::from(a.1) - i128::from(a.0);
    let c_span = c.1 - c.0;
    if a_span > 255 || c_span > 255 {
        return None;
    }
    let t = c.0 + (c_span + 1) / 2;
    // t may wrap in i64 only when A is all zeros (else `check_bound` bounds |c|), and the
    // corrections are exact modulo 2^64.
    Some(([a.0, t as i64], a_span as u128, max_abs(c.0 - t, c.1 - t)))
}

/// Whether the U8I8 plan keeps operands that already are u8 × i8 unshifted (`plan_u8i8`; a
/// switch for benchmarks and tests: the accumulators are the same either way).
pub static PLAIN_U8I8: simd::Switch = simd::Switch::new(true, simd::any_cpu);

/// The U8I8 plan if it applies: the operands centre into u8 × i8 (`centre_u8i8`) and the
/// worst |dot product| K·max(A − s)·max|c − t| fits i32. Operands that already are u8 × i8
/// keep s = t = 0 when their worst product fits too: the int32 products are then the
/// accumulators (no row or column term, `BlockU8::run`).
fn plan_u8i8(k: usize, a: (i64, i64), c: (i128, i128)) -> Option<Plan> {
    let (shift, a_max, c_max) = centre_u8i8(a, c)?;
    let fits = |bound: u128| bound <= i32::MAX as u128;
    if !fits((k as u128) * a_max * c_max) {
        return None;
    }
    let plain = PLAIN_U8I8.available() && a.0 >= 0 && a.1 <= 255 && c.0 >= -128 && c.1 <= 127;
    let shift = if plain && fits((k as u128) * (a.1 as u128) * max_abs(c.0, c.1)) {
        [0, 0]
    } else {
        shift
    };
    Some(Plan {
        strategy: Strategy::U8I8,
        shift,
    })
}

/// The U8I8Avx2 plan if it applies: as `plan_u8i8`, and no pair sum of `vpmaddubsw` can
/// leave i16 (2·max(A − s)·max|c − t| <= 32767, which also sets the i16 steps).
fn plan_maddubs(k: usize, a: (i64, i64), c: (i128, i128)) -> Option<Plan> {
    let (shift, a_max, c_max) = centre_u8i8(a, c)?;
    let steps = maddubs::steps(a_max, c_max)?;
    let bound = (k as u128) * a_max * c_max;
    (bound <= i32::MAX as u128).then_some(Plan {
        strategy: Strategy::U8I8Avx2 { steps },
        shift,
    })
}

/// acc[b] = a[b] @ (w[b] − z_w) for a (Ba, M, K) and w (Bw, K, N), where a batch of 1
/// broadcasts. Returns (max(Ba, Bw), M, N).
///
/// Returns `Error::Overflow` if K·max|a|·max|w − z_w| exceeds int64 (every partial sum is
/// then bounded too, so the result is always exact).
pub fn matmul(a: ArrayView3<'_, i64>, w: ArrayView3<'_, i64>, z_w: i64) -> Result<Array3<i64>> {
    let mut out = Array3::<i64>::uninit(matmul_shape(a.dim(), w.dim())?);
    let Some(slice) = out.as_slice_mut() else {
        return Err(Error::Shape("matmul: the output is not contiguous".into()));
    };
    matmul_into(a, w, z_w, slice)?;
    // SAFETY: matmul_into succeeded, so it wrote every element of `out`.
    Ok(unsafe { out.assume_init() })
}

/// The output shape (batch, M, N) of `matmul`, or the shape error.
pub fn matmul_shape(a: (usize, usize, usize), w: (usize, usize, usize)) -> Result<[usize; 3]> {
    let (ba, m, k) = a;
    let (bw, k2, n) = w;
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
    Ok([batch, m, n])
}

/// `matmul` writing into `out`, a C-order buffer of the size `matmul_shape` gives; on
/// success every element is written.
pub fn matmul_into<A: Lhs>(
    a: ArrayView3<'_, A>,
    w: ArrayView3<'_, i64>,
    z_w: i64,
    out: &mut [MaybeUninit<i64>],
) -> Result<()> {
    matmul_map_into_as(
        a,
        w,
        z_w,
        out,
        |acc: &[i64], dst: &mut [MaybeUninit<i64>]| {
            for (d, &v) in dst.iter_mut().zip(acc) {
                d.write(v);
            }
        },
    )
}

/// What a fused kernel does with each row of exact accumulators (the output row it writes).
/// Any `Fn(&[i64], &mut [MaybeUninit<O>])` is one; an epilogue that reads int32 rows as they
/// are says so with [`RowEpilogue::reads_i32`], and the U8I8 strategy then hands it its int32
/// products directly when they are the accumulators (no centring shift: `s = t = 0`).
pub trait RowEpilogue<O>: Sync {
    /// Write one output row from its accumulators.
    fn row(&self, acc: &[i64], dst: &mut [MaybeUninit<O>]);

    /// Whether [`RowEpilogue::row_i32`] may be called (false: rows always come as i64).
    fn reads_i32(&self) -> bool {
        false
    }

    /// Write one output row from its accumulators as int32 (only when `reads_i32`; the
    /// default widens them for [`RowEpilogue::row`]).
    fn row_i32(&self, acc: &[i32], dst: &mut [MaybeUninit<O>]) {
        let wide: Vec<i64> = acc.iter().map(|&v| i64::from(v)).collect();
        self.row(&wide, dst);
    }
}

impl<O, F: Fn(&[i64], &mut [MaybeUninit<O>]) + Sync> RowEpilogue<O> for F {
    #[inline(always)]
    fn row(&self, acc: &[i64], dst: &mut [MaybeUninit<O>]) {
        self(acc, dst)
    }
}

/// `matmul` passing each row of exact accumulators through `epilogue` (a [`RowEpilogue`]:
/// a closure `(acc_row, out_row)`, whose parameter types the caller writes out, or an
/// epilogue that may read int32 rows), which must write all of `out_row` (N values of
/// `out`, C order, the size `matmul_shape` gives; on success every element of `out` has been
/// through `epilogue`). A is any [`Lhs`] type (int8/16/32/64, read as stored). Rows run in
/// parallel blocks, so `epilogue` must not depend on the order of calls.
pub fn matmul_map_into_as<A, O, F>(
    a: ArrayView3<'_, A>,
    w: ArrayView3<'_, i64>,
    z_w: i64,
    out: &mut [MaybeUninit<O>],
    epilogue: F,
) -> Result<()>
where
    A: Lhs,
    O: Copy + Send,
    F: RowEpilogue<O>,
{
    map_into_with(a, w, z_w, out, epilogue, Allowed::available())
}

/// The plan `matmul` follows for these operands (after the same shape and overflow checks).
pub fn matmul_plan<A: Lhs>(a: ArrayView3<'_, A>, w: ArrayView3<'_, i64>, z_w: i64) -> Result<Plan> {
    operands_plan(a, w, z_w, Allowed::available())
}

/// `plan_with` for the operands of a matmul.
fn operands_plan<A: Lhs>(
    a: ArrayView3<'_, A>,
    w: ArrayView3<'_, i64>,
    z_w: i64,
    allowed: Allowed,
) -> Result<Plan> {
    matmul_shape(a.dim(), w.dim())?;
    let (wlo, whi) = range(w.iter());
    let c = (
        i128::from(wlo) - i128::from(z_w),
        i128::from(whi) - i128::from(z_w),
    );
    plan_with(w.dim().1, A::range_of(a), c, allowed)
}

/// [`matmul_map_into_as`], allowing only the SIMD integer strategies of `allowed`.
fn map_into_with<A: Lhs, O, F>(
    a: ArrayView3<'_, A>,
    w: ArrayView3<'_, i64>,
    z_w: i64,
    out: &mut [MaybeUninit<O>],
    epilogue: F,
    allowed: Allowed,
) -> Result<()>
where
    O: Copy + Send,
    F: RowEpilogue<O>,
{
    let [batch, m, n] = matmul_shape(a.dim(), w.dim())?;
    if out.len() != batch * m * n {
        return Err(Error::Shape(format!(
            "matmul: the output buffer holds {} values, the result needs {}",
            out.len(),
            batch * m * n
        )));
    }
    let (bw, k, _) = w.dim();
    let plan = operands_plan(a, w, z_w, allowed)?;
    if out.is_empty() {
        return Ok(());
    }
    // Centre both operands (on the middle of their ranges, or A on its minimum for U8I8):
    // A = A' + s, W − z_w = W' + t, so A(W − z_w) = A'W' + t·rowsum(A') + s·colsum(W') +
    // s·t·K. A'W' has the smallest bound, hence the fastest exact strategy; the rank-1 terms are exact in wrapping i64
    // because the final result fits int64 (checked by `plan`).
    let t = plan.shift[1];
    let wc: Vec<i64> = w
        .as_standard_layout()
        .iter()
        .map(|&v| v.wrapping_sub(z_w).wrapping_sub(t))
        .collect();
    let job = Job {
        a,
        wc: &wc,
        dims: [batch, bw, m, k, n],
        shift: plan.shift,
    };
    match plan.strategy {
        Strategy::F32 => job.run::<f32, O, F>(out, &epilogue),
        Strategy::F64 => job.run::<f64, O, F>(out, &epilogue),
        Strategy::I64 => job.run::<i64, O, F>(out, &epilogue),
        Strategy::U8I8 => job.run_u8i8(out, &epilogue),
        Strategy::U8I8Avx2 { steps } => job.run_maddubs(out, &epilogue, steps),
        Strategy::I16 => job.run_i16(out, &epilogue),
    }
    Ok(())
}

/// floor((lo + hi) / 2), which lies in [lo, hi].
fn midpoint(lo: i128, hi: i128) -> i128 {
    lo + (hi - lo) / 2
}

struct Job<'a, A> {
    a: ArrayView3<'a, A>,
    /// (Bw, K, N) row-major weights minus z_w minus t.
    wc: &'a [i64],
    /// batch, Bw, M, K, N
    dims: [usize; 5],
    /// s (subtracted from A) and t (subtracted from W − z_w)
    shift: [i64; 2],
}

impl<A: Lhs> Job<'_, A> {
    /// s·colsum(W') + s·t·K per weight batch and column (wrapping: exact modulo 2^64).
    fn col_terms(&self) -> Vec<i64> {
        let [_, bw, _, k, n] = self.dims;
        let [s, t] = self.shift;
        let mut col_terms = vec![0i64; bw * n];
        for (b, sums) in col_terms.chunks_exact_mut(n.max(1)).enumerate() {
            for row in self.wc[b * k * n..(b + 1) * k * n].chunks_exact(n) {
                for (acc, &v) in sums.iter_mut().zip(row) {
                    *acc = acc.wrapping_add(v);
                }
            }
            let st = s.wrapping_mul(t).wrapping_mul(k as i64);
            for acc in sums.iter_mut() {
                *acc = s.wrapping_mul(*acc).wrapping_add(st);
            }
        }
        col_terms
    }

    /// Call `block(a_batch, w_batch, first_row, rows_out)` for every block of `BLOCK_ROWS`
    /// output rows of `out` (batch, M, N), in parallel; the split is fixed.
    fn for_blocks<O, G>(&self, out: &mut [MaybeUninit<O>], block: G)
    where
        O: Copy + Send,
        G: Fn(ArrayView2<'_, A>, usize, usize, &mut [MaybeUninit<O>]) + Sync,
    {
        let [_, bw, m, _, n] = self.dims;
        let ba = self.a.dim().0;
        out.par_chunks_mut(m * n).enumerate().for_each(|(bi, dst)| {
            let ab: ArrayView2<'_, A> = self
                .a
                .index_axis(ndarray::Axis(0), if ba == 1 { 0 } else { bi });
            let wsel = if bw == 1 { 0 } else { bi };
            dst.par_chunks_mut(BLOCK_ROWS * n)
                .enumerate()
                .for_each(|(ci, rows_out)| block(ab, wsel, ci * BLOCK_ROWS, rows_out));
        });
    }

    /// Write `epilogue(acc_row, out_row)` for every output row of `out` (batch, M, N).
    fn run<T, O, F>(&self, out: &mut [MaybeUninit<O>], epilogue: &F)
    where
        T: Exact,
        O: Copy + Send,
        F: RowEpilogue<O>,
    {
        let [_, _, _, k, n] = self.dims;
        let wt: Vec<T> = self.wc.iter().map(|&v| T::from_i64(v)).collect();
        let col_terms = self.col_terms();
        let wide = simd::wide_vectors();
        self.for_blocks(out, |ab, wsel, r0, rows_out| {
            let block = Block {
                a: ab,
                w: &wt[wsel * k * n..],
                cols: &col_terms[wsel * n..(wsel + 1) * n],
                k,
                shift: self.shift,
            };
            if wide {
                // SAFETY: `wide_vectors` checked that the CPU has these features.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    block.run_avx512(r0, rows_out, epilogue)
                };
            } else {
                block.run(r0, rows_out, epilogue);
            }
        });
    }

    /// `run` for the U8I8 strategy: W' packed once per weight batch, A rows as u8.
    fn run_u8i8<O, F>(&self, out: &mut [MaybeUninit<O>], epilogue: &F)
    where
        O: Copy + Send,
        F: RowEpilogue<O>,
    {
        let [_, bw, _, k, n] = self.dims;
        // W' lies in [−128, 127] under this strategy: its bytes are its two's complement.
        let packed: Vec<PackedB> = (0..bw)
            .map(|b| PackedB::pack(&self.wc[b * k * n..(b + 1) * k * n], k, n, |v| v as u8))
            .collect();
        let col_terms = self.col_terms();
        let wide = simd::wide_vectors();
        self.for_blocks(out, |ab, wsel, r0, rows_out| {
            let block = BlockU8 {
                a: ab,
                w: &packed[wsel],
                cols: &col_terms[wsel * n..(wsel + 1) * n],
                k,
                shift: self.shift,
            };
            if wide {
                // SAFETY: `wide_vectors` checked that the CPU has these features.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    block.run_avx512(r0, rows_out, epilogue)
                };
            } else {
                block.run(r0, rows_out, epilogue);
            }
        });
    }
}

/// Write rows r0..r0+rows of `a` minus s into `lhs` (row i at i·stride, converted by
/// `conv`) and return t·Σ_k (A − s) per row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn centre_rows<A: Lhs, T>(
    a: ArrayView2<'_, A>,
    r0: usize,
    rows: usize,
    k: usize,
    stride: usize,
    [s, t]: [i64; 2],
    lhs: &mut [T],
    conv: impl Fn(i64) -> T,
) -> Vec<i64> {
    let mut row_terms = Vec::with_capacity(rows);
    // Indexed (not zipped with chunks of `lhs`): with K = 0 every row still gets its term.
    for (i, r) in (r0..r0 + rows).enumerate() {
        let dst = &mut lhs[i * stride..i * stride + k];
        let row = a.row(r);
        let mut sum = 0i64;
        let mut put = |d: &mut T, v: i64| {
            let centred = v.wrapping_sub(s);
            sum = sum.wrapping_add(centred);
            *d = conv(centred);
        };
        match row.as_slice() {
            Some(src) => dst.iter_mut().zip(src).for_each(|(d, &v)| put(d, v.into())),
            None => dst
                .iter_mut()
                .zip(row.iter())
                .for_each(|(d, &v)| put(d, v.into())),
        }
        row_terms.push(t.wrapping_mul(sum));
    }
    row_terms
}

/// Hand each output row to `epilogue` as i64: the product row (at i·stride in `products`,
/// widened by `widen`) plus its row term and the per-column terms.
#[inline(always)]
fn correct_rows<V: Copy, O, F>(
    rows_out: &mut [MaybeUninit<O>],
    products: &[V],
    stride: usize,
    row_terms: &[i64],
    cols: &[i64],
    widen: impl Fn(V) -> i64,
    epilogue: &F,
) where
    F: RowEpilogue<O>,
{
    let n = cols.len();
    let mut acc = vec![0i64; n];
    for ((d_row, t_row), &rt) in rows_out
        .chunks_exact_mut(n)
        .zip(products.chunks_exact(stride))
        .zip(row_terms)
    {
        for ((a, &v), &ct) in acc.iter_mut().zip(t_row).zip(cols) {
            *a = widen(v).wrapping_add(rt).wrapping_add(ct);
        }
        epilogue.row(&acc, d_row);
    }
}

/// A thread's buffers for the U8I8 blocks, kept from one block to the next so that a task
/// neither allocates nor clears them: the rows of A as u8 and the int32 products.
#[derive(Default)]
struct Scratch {
    rows: Vec<u8>,
    products: Vec<i32>,
}

impl Scratch {
    /// `padded` rows of `kp` bytes whose bytes past the first `k` of the first `rows` rows
    /// (what `centre_rows` does not write) are zero.
    fn lhs(&mut self, rows: usize, padded: usize, k: usize, kp: usize) -> &mut [u8] {
        if self.rows.len() < padded * kp {
            self.rows.resize(padded * kp, 0);
        }
        let lhs = &mut self.rows[..padded * kp];
        if kp > k {
            for row in lhs[..rows * kp].chunks_exact_mut(kp) {
                row[k..].fill(0);
            }
        }
        lhs[rows * kp..].fill(0);
        lhs
    }
}

thread_local! {
    static U8_SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

/// One batch of a U8I8 `Job`: rows of A (as u8) against the packed weights.
struct BlockU8<'a, A> {
    a: ArrayView2<'a, A>,
    w: &'a PackedB,
    /// s·colsum(W') + s·t·K per column.
    cols: &'a [i64],
    k: usize,
    shift: [i64; 2],
}

impl<A: Lhs> BlockU8<'_, A> {
    /// Rows r0.. of the output into `rows_out` (a whole number of rows of N values).
    #[inline(always)]
    fn run<O, F>(&self, r0: usize, rows_out: &mut [MaybeUninit<O>], epilogue: &F)
    where
        F: RowEpilogue<O>,
    {
        // taken out of the thread's slot (a nested block on this thread finds it empty) and
        // put back; the work stays in this function, compiled with the caller's features
        let mut scratch = U8_SCRATCH.take();
        self.run_in(r0, rows_out, epilogue, &mut scratch);
        U8_SCRATCH.set(scratch);
    }

    /// `run` with the thread's scratch buffers.
    #[inline(always)]
    fn run_in<O, F>(
        &self,
        r0: usize,
        rows_out: &mut [MaybeUninit<O>],
        epilogue: &F,
        scratch: &mut Scratch,
    ) where
        F: RowEpilogue<O>,
    {
        let (k, n) = (self.k, self.cols.len());
        let [s, t] = self.shift;
        let rows = rows_out.len() / n;
        let (kp, np) = (vnni::padded_k(k), self.w.padded_n());
        let padded = vnni::padded_rows(rows);
        let lhs = scratch.lhs(rows, padded, k, kp);
        // A − s lies in [0, 255] under this strategy, so the truncation is exact.
        let row_terms = centre_rows(self.a, r0, rows, k, kp, [s, t], lhs, |c| c as u8);
        // every product of the padded rows is written by the kernel
        if scratch.products.len() < padded * np {
            scratch.products.resize(padded * np, 0);
        }
        let tmp = &mut scratch.products[..padded * np];
        vnni::gemm::<{ vnni::MR }, true>(padded, &scratch.rows[..padded * kp], self.w, tmp);
        let tmp = &scratch.products[..padded * np];
        if s == 0 && t == 0 && epilogue.reads_i32() {
            // no row or column term: the int32 products are the accumulators
            for (d_row, p_row) in rows_out.chunks_exact_mut(n).zip(tmp.chunks_exact(np)) {
                epilogue.row_i32(&p_row[..n], d_row);
            }
            return;
        }
        correct_rows(
            rows_out,
            tmp,
            np,
            &row_terms,
            self.cols,
            i64::from,
            epilogue,
        );
    }

    /// `run` compiled for AVX-512 (the same operations, so the same results).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
    unsafe fn run_avx512<O, F>(&self, r0: usize, rows_out: &mut [MaybeUninit<O>], epilogue: &F)
    where
        F: RowEpilogue<O>,
    {
        self.run(r0, rows_out, epilogue)
    }
}

/// One batch of a `Job`: rows of A against the converted weights.
struct Block<'a, A, T> {
    a: ArrayView2<'a, A>,
    /// (K, N) row-major W' in T.
    w: &'a [T],
    /// s·colsum(W') + s·t·K per column.
    cols: &'a [i64],
    k: usize,
    shift: [i64; 2],
}

impl<A: Lhs, T: Exact> Block<'_, A, T> {
    /// Rows r0.. of the output into `rows_out` (a whole number of rows of N values).
    #[inline(always)]
    fn run<O, F>(&self, r0: usize, rows_out: &mut [MaybeUninit<O>], epilogue: &F)
    where
        F: RowEpilogue<O>,
    {
        let (k, n) = (self.k, self.cols.len());
        let [s, t] = self.shift;
        let rows = rows_out.len() / n;
        let mut lhs = vec![T::default(); rows * k];
        let row_terms = centre_rows(self.a, r0, rows, k, k, [s, t], &mut lhs, T::from_i64);
        let mut tmp = vec![T::default(); rows * n];
        T::gemm(rows, k, n, &lhs, self.w, &mut tmp);
        correct_rows(
            rows_out,
            &tmp,
            n,
            &row_terms,
            self.cols,
            T::to_i64,
            epilogue,
        );
    }

    /// `run` compiled for AVX-512 (the same operations, so the same results).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
    unsafe fn run_avx512<O, F>(&self, r0: usize, rows_out: &mut [MaybeUninit<O>], epilogue: &F)
    where
        F: RowEpilogue<O>,
    {
        self.run(r0, rows_out, epilogue)
    }
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

/// The AVX2 strategies' runners (I16, U8I8Avx2), in their own file to keep this one short.
#[path = "gemm_avx2.rs"]
mod avx2;

#[cfg(test)]
#[path = "gemm_tests.rs"]
mod tests;
