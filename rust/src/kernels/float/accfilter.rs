//! One matmul for both calibration passes of a quantized-input Gemm: the exact integer
//! accumulators `acc = a @ (wq − z_w)` (kept for the output pass), and the float extremes
//! of `y = dequantize(a) @ w + b`, bit for bit those of [`matmul_extremes`], with the
//! integer accumulators as the filter instead of the float32 GEMM of
//! [`filtered`](super::filtered).
//!
//! 1. **Accumulators.** The integer GEMM of `kernels::integer::gemm` (any of its strategies)
//!    reads `a` as stored (int8/16/32) and writes `acc` as int32 (`Overflow` when
//!    `K·max|a|·max|wq − z_w|` does not fit).
//! 2. **Estimate.** Per column `j`, `t_j` is the least-squares fit of `w_{·j}` by
//!    `c_{·j} = wq_{·j} − z_w`, and `e_kj = w_kj − t_j c_kj` its residual. With
//!    `d_k = a_k − z` and `S_j = Σ_k c_kj`, `Σ_k d_k c_kj = acc_rj − z S_j =: m_rj` exactly, so
//!    `G_rj = fl(fl(fl(s t_j) m_rj) + b_j)` estimates `y_rj` within `δ_rj` (below), whose main
//!    term is `|s| ‖d_r‖₂ ‖e_j‖₂` (Cauchy–Schwarz on the residual). The constants of a
//!    layer that do not depend on `s` and `z` are kept for the next call on the same weights
//!    (every weight, integer and bias compared, floats by bits; a few layers, small ones).
//!    The estimates are computed in the product's epilogue, one row at a time while its
//!    accumulators are cache-hot: per row only `max_j G`, `min_j G` and `|s| ‖d_r‖₂` are kept.
//! 3. **Refine.** One `δ` per row (the largest column spread and absolute term: float
//!    rounding is monotone, so it bounds every value's) gives `L₁ = max(G − δ)` (≤ the true
//!    max) and `U₁ = min(G + δ)`. Only the rows whose interval reaches `L₁` or `U₁` are
//!    scanned value by value, with each column's own `δ`: the values with `G + δ ≥ L₁` or
//!    `G − δ ≤ U₁` (the survivors; any value that is an extreme is one) matter. Each
//!    survivor's float64 dot product `F` is summed (k order, no FMA) with a rigorous bound
//!    `δ²` (below) on `|F − y|`; a row with too many survivors keeps its stage-1 bounds.
//! 4. **Verify** as `filtered` does: the rows whose bounds can reach the global bounds run
//!    the exact row code of [`extremes`](super::extremes); the rest are ruled out.
//! 5. **Fall back** to the whole exact kernel when the guarantee is not clean: a non-finite
//!    scale, weight or bias, a non-integral zero point or one above 2^31, magnitudes above
//!    2^100, `K` above 2^17, `|z S_j|` above 2^50, or an exact extreme that is zero or not
//!    finite (so `finite` and the sign of a zero are the exact pass's).
//!
//! ## The bound of the estimate
//!
//! `u = 2^-53`, `η = 2^-1074` (a bound on the absolute error of an underflowing product),
//! `γ_K = Ku/(1 − Ku)`. The exact kernel loads `x̂_k = fl(s · fl(a_k − z))`; `a_k − z` is an
//! integer below 2^53 (integral `|z| ≤ 2^31`), so `x̂_k = s d_k (1 + θ_k) + η_k`, `|θ_k| ≤ u`,
//! `|η_k| ≤ η`. It sums `T = Σ fl(x̂_k w_k)` in order and returns `y = fl(T + b)`:
//!
//! * `|T − Σ x̂_k w_k| ≤ γ_K P + 2Kη` with `P = Σ |x̂_k w_k| ≤ (1+u)|s| D W + η W₁`
//!   (`D = ‖d‖₂`, `W = ‖w_j‖₂`, `W₁ = ‖w_j‖₁`), and `|y − (T + b)| ≤ u(|T| + |b|)`;
//! * `Σ x̂_k w_k = s Σ d_k w_k + ε`, `|ε| ≤ u|s| D W + η W₁`;
//! * `s Σ d_k w_k = s t m + s Σ d_k e_k`, and `|s Σ d_k e_k| ≤ |s| D E` (`E = ‖e_j‖₂`);
//! * `G` is `s t m + b` with three roundings: `|G − (s t m + b)| ≤ 3.01u |s| D C + 2u|b| +
//!   2η`, where `C = ‖t_j c_j‖₂ ≥ |t m| / D`.
//!
//! Summing (`Ku ≤ 2^-36`, so every product of two small factors fits in the 25 % slack):
//!
//! `δ = |s| D (E + R W + 4u C) + 3u|b| + ε_abs`, `R = 1.25 (K + 3) u`,
//! `ε_abs = 2^-960 (W₁ + 1)(K + 8)` (above every `η` term).
//!
//! The norms are computed in float64 (each a sum of at most 2^17 rounded squares, then a
//! square root: relative error below 2^-35) and used inflated by `(1 + 2^-30)`, plus 2^-490
//! for the squares that underflow; `e_kj` is computed as `fl(w − fl(t c))` and its norm
//! bound adds `2u (‖t c‖ + ‖ê‖)` (the rounding of `t c`, and of `c` to float64 when it
//! exceeds 2^53) and the same absolute term. The value of `δ` itself is
//! evaluated in float64 and inflated by `(1 + 2^-40)`, and `5u|G|` is added so that the
//! rounded `G ± δ` are still outer bounds.
//!
//! ## The bound of a refined value
//!
//! `F` sums the same products `fl(x̂_k w_k)` in the same order (it is usually `T` itself),
//! but the bound does not assume it: two sums of the same terms differ by at most
//! `2γ_K P + 4Kη`, so with `P̂` the float64 sum of `|x̂_k w_k|` (`P ≤ (1 + γ_K) P̂ + Kη`),
//! `|fl(F + b) − y| ≤ δ² = 1.25 (2K + 4) u (P̂ + |b|) + ε_abs`, again plus `5u|F|`.
//!
//! ## Counters
//!
//! [`counts`] (`_core.acc_extremes_filter_counts`) adds up, over the process, the rows
//! bounded, the rows run exactly, the whole exact passes, and the survivors refined.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ndarray::{ArrayView1, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::float::extremes::{bias_vec, matmul_extremes, Extremes, ROWS_PER_TASK};
use crate::kernels::float::matmul::{supported, Element, Isa};
use crate::kernels::integer::exact::{describe, max_abs, range};
use crate::kernels::integer::gemm::{matmul_map_into_as, Lhs, RowEpilogue};
use crate::kernels::quant::dequantize::{dequantize_value, QInt};

/// float64 unit roundoff.
const U: f64 = 1.110_223_024_625_156_5e-16;
/// The largest magnitude the filter takes (scale·norms, biases), 2^100.
const LIMIT: f64 = 1.267_650_600_228_229_4e30;
/// The largest inner dimension the filter takes.
const MAX_K: usize = 1 << 17;
/// Relative inflation of a computed norm.
const NORM_REL: f64 = 1.0 + 1.0 / 1_073_741_824.0;
/// Absolute inflation of a computed norm (the underflowing squares), 2^-490.
const NORM_ABS: f64 = 3.273_390_607_896_142e-148;
/// Relative inflation of a computed bound, 1 + 2^-40.
const BOUND_REL: f64 = 1.0 + 1.0 / 1_099_511_627_776.0;
/// 2^-960, the unit of the absolute term.
const ABS_UNIT: f64 = 1.024_329_847_022_646_7e-289;

/// What the filter did: rows bounded, rows run exactly, whole exact passes, survivors (the
/// first two fields keep their historical names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccCounts {
    pub tasks: u64,
    pub verified: u64,
    pub fallbacks: u64,
    pub refined: u64,
}

static TASKS: AtomicU64 = AtomicU64::new(0);
static VERIFIED: AtomicU64 = AtomicU64::new(0);
static FALLBACKS: AtomicU64 = AtomicU64::new(0);
static REFINED: AtomicU64 = AtomicU64::new(0);

fn record(c: AccCounts) {
    TASKS.fetch_add(c.tasks, Ordering::Relaxed);
    VERIFIED.fetch_add(c.verified, Ordering::Relaxed);
    FALLBACKS.fetch_add(c.fallbacks, Ordering::Relaxed);
    REFINED.fetch_add(c.refined, Ordering::Relaxed);
}

/// The process-wide [`AccCounts`] so far, set back to zero when `reset` (each counter
/// atomically, not the four together).
pub fn counts(reset: bool) -> AccCounts {
    let read = |c: &AtomicU64| {
        if reset {
            c.swap(0, Ordering::Relaxed)
        } else {
            c.load(Ordering::Relaxed)
        }
    };
    AccCounts {
        tasks: read(&TASKS),
        verified: read(&VERIFIED),
        fallbacks: read(&FALLBACKS),
        refined: read(&REFINED),
    }
}

/// The integer input of the kernel: stored integers, dequantized as the exact kernel does.
pub trait AccInput: Lhs + QInt {
    /// Every value the type holds lies in this `(min, max)`.
    const RANGE: (i64, i64);
}
macro_rules! acc_input {
    ($($t:ty),*) => {$(
        impl AccInput for $t {
            const RANGE: (i64, i64) = (<$t>::MIN as i64, <$t>::MAX as i64);
        }
    )*};
}
acc_input!(i8, i16, i32, i64);

/// `acc = a @ (wq − z_w)` as int32 into `acc` ((n, m) C order), and the extremes of
/// `dequantize(a, scale, zero_point) @ w + bias`, those of [`matmul_extremes`] bit for bit
/// (by the filter of the module docs unless `exact`), with what the filter did.
///
/// Errors: `Shape` when `a` (n, k), `wq` (k, m), `w` (k, m), the bias (m) or `acc` do not
/// fit; `Overflow` when an accumulator may not fit int32; then those of [`matmul_extremes`].
#[allow(clippy::too_many_arguments)]
pub fn acc_extremes<A: AccInput>(
    a: ArrayView2<'_, A>,
    wq: ArrayView2<'_, i64>,
    z_w: i64,
    w: ArrayView2<'_, f64>,
    bias: Option<ArrayView1<'_, f64>>,
    (scale, zero_point): (f64, f64),
    exact: bool,
    isa: Isa,
    acc: &mut [MaybeUninit<i32>],
) -> (Result<Extremes<f64>>, AccCounts) {
    let mut c = AccCounts::default();
    let a_std = a.as_standard_layout();
    let prep = if exact {
        None
    } else {
        prepare(a_std.view(), wq, z_w, w, bias, (scale, zero_point))
    };
    let stats = match int_acc(a_std.view(), wq, z_w, w.dim(), acc, prep.as_ref()) {
        Ok(stats) => stats,
        Err(e) => return (Err(e), c),
    };
    // SAFETY: int_acc succeeded, so it wrote every element of `acc`.
    let acc: &[i32] = unsafe { &*(acc as *const [MaybeUninit<i32>] as *const [i32]) };
    let load = move |v: A| dequantize_value(v, scale, zero_point);
    if !exact {
        let found = prep.and_then(|p| filter(a_std.view(), acc, &stats, &p, w, bias, isa, &mut c));
        if let Some(found) = found {
            return (Ok(found), c);
        }
        c.fallbacks += 1;
    }
    (matmul_extremes(a, load, w, bias, isa), c)
}

/// [`acc_extremes`] adding what it did to the process-wide [`counts`].
#[allow(clippy::too_many_arguments)]
pub fn acc_extremes_counted<A: AccInput>(
    a: ArrayView2<'_, A>,
    wq: ArrayView2<'_, i64>,
    z_w: i64,
    w: ArrayView2<'_, f64>,
    bias: Option<ArrayView1<'_, f64>>,
    quant: (f64, f64),
    exact: bool,
    isa: Isa,
    acc: &mut [MaybeUninit<i32>],
) -> Result<Extremes<f64>> {
    let (out, c) = acc_extremes(a, wq, z_w, w, bias, quant, exact, isa, acc);
    record(c);
    out
}

/// Whether `K·max|a|·max|wq − z_w|` fits int32 for an input within `(alo, ahi)`, with
/// the weights' `(clo, chi)`.
fn acc_fits(k: usize, (alo, ahi): (i64, i64), (clo, chi): (i128, i128)) -> bool {
    let (amax, cmax) = (max_abs(alo.into(), ahi.into()), max_abs(clo, chi));
    let bound = (k as u128)
        .checked_mul(amax)
        .and_then(|v| v.checked_mul(cmax));
    k == 0 || matches!(bound, Some(b) if b <= i32::MAX as u128)
}

/// The int32 accumulators into `acc`, after the shape and overflow checks, and with `prep`
/// the per-row estimates of [`RowStats`] computed while each row is cache-hot.
fn int_acc<A: AccInput>(
    a: ArrayView2<'_, A>,
    wq: ArrayView2<'_, i64>,
    z_w: i64,
    wdim: (usize, usize),
    acc: &mut [MaybeUninit<i32>],
    prep: Option<&Prep>,
) -> Result<RowStats> {
    let ((n, k), (kq, m)) = (a.dim(), wq.dim());
    if kq != k || wdim != (k, m) || acc.len() != n * m {
        return Err(Error::Shape(format!(
            "int_matmul_acc_extremes: a {:?}, wq {:?}, w {:?} and the accumulators ({} values) \
             do not fit; give a (n, k), wq and w (k, m)",
            a.dim(),
            wq.dim(),
            wdim,
            acc.len()
        )));
    }
    let (wlo, whi) = range(wq.iter());
    let c = (
        i128::from(wlo) - i128::from(z_w),
        i128::from(whi) - i128::from(z_w),
    );
    // the type's range first: it spares a pass over the input when it is enough
    if !acc_fits(k, A::RANGE, c) {
        let (alo, ahi) = A::range_of(a);
        if !acc_fits(k, (alo, ahi), c) {
            return Err(Error::Overflow(format!(
                "the int32 accumulator could overflow: a matmul of the input {} with the \
                 weights minus z_w {} over K={k} terms; use the int64 kernel (int_matmul) \
                 instead",
                describe(alo.into(), ahi.into()),
                describe(c.0, c.1)
            )));
        }
    }
    let stats = RowStats::new(if prep.is_some() { n } else { 0 });
    let rows = AccRows {
        prep,
        a_rows: a.as_slice(),
        base: acc.as_ptr() as usize,
        k,
        m,
        stats: &stats,
        avx2: has_avx2(),
        wide: crate::kernels::simd::wide_vectors(),
    };
    matmul_map_into_as(
        a.insert_axis(Axis(0)),
        wq.insert_axis(Axis(0)),
        z_w,
        acc,
        rows,
    )?;
    Ok(stats)
}

/// The epilogue of [`int_acc`] per row: the accumulators written as int32 (from int64 rows,
/// or from the int32 products as they are, `RowEpilogue::row_i32`), with the row's
/// estimates when there is a `prep`.
struct AccRows<'a, A> {
    prep: Option<&'a Prep>,
    a_rows: Option<&'a [A]>,
    /// the address of the first accumulator (a row's index from its own address)
    base: usize,
    k: usize,
    m: usize,
    stats: &'a RowStats,
    avx2: bool,
    /// AVX-512 for the row estimates (`row_estimates_avx512`)
    wide: bool,
}

impl<A: AccInput> AccRows<'_, A> {
    #[inline(always)]
    fn write<R: AccRow>(&self, row: &[R], dst: &mut [MaybeUninit<i32>]) {
        match (self.prep, self.a_rows) {
            (Some(p), Some(a_rows)) if self.m > 0 => {
                let r = (dst.as_ptr() as usize - self.base) / (self.m * size_of::<i32>());
                let a_row = &a_rows[r * self.k..(r + 1) * self.k];
                let isa = (self.avx2, self.wide);
                self.stats.set(r, row_work(p, row, dst, a_row, isa));
            }
            _ => {
                for (d, &v) in dst.iter_mut().zip(row) {
                    // the bound checked by `int_acc` keeps every accumulator within i32
                    d.write(v.low_i32());
                }
            }
        }
    }
}

impl<A: AccInput> RowEpilogue<i32> for AccRows<'_, A> {
    fn row(&self, acc: &[i64], dst: &mut [MaybeUninit<i32>]) {
        self.write(acc, dst);
    }

    fn reads_i32(&self) -> bool {
        true
    }

    fn row_i32(&self, acc: &[i32], dst: &mut [MaybeUninit<i32>]) {
        self.write(acc, dst);
    }
}

/// The accumulator rows the estimates read: int64 (within int32, as `int_acc` checks) or
/// int32.
trait AccRow: Copy {
    /// The value as int32 (exact for the accumulators `int_acc` gives).
    fn low_i32(self) -> i32;
    /// Four values from `p` on as int32.
    ///
    /// # Safety
    /// The CPU has AVX2 and `p` points at four readable values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load4(p: *const Self) -> std::arch::x86_64::__m128i;
}

impl AccRow for i64 {
    #[inline(always)]
    fn low_i32(self) -> i32 {
        self as i32
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load4(p: *const Self) -> std::arch::x86_64::__m128i {
        use std::arch::x86_64::*;
        // the low 32 bits of each i64 lane into the low half
        // SAFETY: the caller guarantees AVX2 and four readable values.
        unsafe {
            let idx = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
            let v = _mm256_loadu_si256(p.cast());
            _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(v, idx))
        }
    }
}

impl AccRow for i32 {
    #[inline(always)]
    fn low_i32(self) -> i32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load4(p: *const Self) -> std::arch::x86_64::__m128i {
        // SAFETY: the caller guarantees AVX2 and four readable values.
        unsafe { std::arch::x86_64::_mm_loadu_si128(p.cast()) }
    }
}

/// `|s| ‖a − z‖₂` of one row, bounded above.
/// The squares are summed in 8 lanes then the lanes in turn: a sum of non-negative rounded
/// terms in another order, so the bound of the module docs holds as it does for any order.
fn scaled_norm<A: AccInput>(row: &[A], s: f64, z: i64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            let d = (v.to_i64() - z) as f64;
            *l += d * d;
        }
    }
    let sq = tail.iter().fold(lanes.iter().sum::<f64>(), |acc, &v| {
        let d = (v.to_i64() - z) as f64;
        acc + d * d
    });
    s.abs() * norm(sq) * NORM_REL
}

/// [`scaled_norm`] when every `a − z` and `a` fit int32 (`z` given as int32): the same
/// values summed in the same order, with conversions from int32 that vectorise.
#[inline(always)]
fn scaled_norm_narrow<A: AccInput>(row: &[A], s: f64, z: i32) -> f64 {
    let d = |v: A| {
        let v: i64 = v.into();
        // exact: the caller checked that `v` and `v − z` fit int32
        f64::from((v as i32).wrapping_sub(z))
    };
    let mut lanes = [0.0f64; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            let d = d(v);
            *l += d * d;
        }
    }
    let sq = tail.iter().fold(lanes.iter().sum::<f64>(), |acc, &v| {
        let d = d(v);
        acc + d * d
    });
    s.abs() * norm(sq) * NORM_REL
}

/// Per-column constants of the estimate that do not depend on the input's quantization.
struct Base {
    /// `t_j` and `S_j` (exact).
    t: Vec<f64>,
    sums: Vec<i128>,
    /// Bounds of `E + R W + 4u C` and of the absolute term, per column.
    spread: Vec<f64>,
    abs: Vec<f64>,
    /// `W + C + E` (bounds), the magnitude checked against [`LIMIT`] with the scale.
    mag: Vec<f64>,
    /// The bias (0 for none) and `w` transposed (m, k) for the refinement.
    bias: Vec<f64>,
    wt: Vec<f64>,
}

/// Per-column constants of the estimate.
struct Columns {
    /// `fl(s t_j)`.
    alpha: Vec<f64>,
    /// `z S_j` (exact).
    zs: Vec<i64>,
    base: Arc<Base>,
}

impl std::ops::Deref for Columns {
    type Target = Base;
    fn deref(&self) -> &Base {
        &self.base
    }
}

/// A norm bound from a computed sum of squares.
fn norm(sum_sq: f64) -> f64 {
    sum_sq.sqrt() * NORM_REL + NORM_ABS
}

/// The layer a [`Base`] was computed from: every value, compared exactly (floats by bits).
#[derive(PartialEq, Eq)]
struct Key {
    k: usize,
    m: usize,
    z_w: i64,
    wq: Vec<i64>,
    w: Vec<u64>,
    bias: Vec<u64>,
}

impl Key {
    /// Whether this is the layer of these values (compared in place).
    fn matches(
        &self,
        wq: ArrayView2<'_, i64>,
        z_w: i64,
        w: ArrayView2<'_, f64>,
        b: &[f64],
    ) -> bool {
        (self.k, self.m) == w.dim()
            && wq.dim() == w.dim()
            && self.z_w == z_w
            && self.bias.len() == b.len()
            && self.bias.iter().zip(b).all(|(&x, y)| x == y.to_bits())
            && self.wq.iter().zip(wq.iter()).all(|(x, y)| x == y)
            && self.w.iter().zip(w.iter()).all(|(&x, y)| x == y.to_bits())
    }

    fn of(wq: ArrayView2<'_, i64>, z_w: i64, w: ArrayView2<'_, f64>, bias: &[f64]) -> Key {
        let (k, m) = w.dim();
        Key {
            k,
            m,
            z_w,
            wq: wq.iter().copied().collect(),
            w: w.iter().map(|v| v.to_bits()).collect(),
            bias: bias.iter().map(|v| v.to_bits()).collect(),
        }
    }
}

/// Layers whose constants are kept (a calibration calls once per block with the same
/// weights), most recent first, and the largest `k·m` kept.
const CACHED_LAYERS: usize = 8;
const CACHED_SIZE: usize = 1 << 20;

type Cache = Mutex<Vec<(Arc<Key>, Option<Arc<Base>>)>>;
static CACHE: Cache = Mutex::new(Vec::new());

/// [`base`] of this layer, from the cache when the same values were seen before.
fn cached_base(
    wq: ArrayView2<'_, i64>,
    z_w: i64,
    w: ArrayView2<'_, f64>,
    bias: &[f64],
) -> Option<Arc<Base>> {
    let (k, m) = w.dim();
    if k * m > CACHED_SIZE {
        return base(wq, z_w, w, bias).map(Arc::new);
    }
    let hit = {
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let at = cache
            .iter()
            .position(|(kk, _)| kk.matches(wq, z_w, w, bias));
        at.map(|i| {
            let entry = cache.remove(i);
            let found = entry.1.clone();
            cache.insert(0, entry);
            found
        })
    };
    if let Some(found) = hit {
        return found;
    }
    let found = base(wq, z_w, w, bias).map(Arc::new);
    let key = Key::of(wq, z_w, w, bias);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache.insert(0, (Arc::new(key), found.clone()));
    cache.truncate(CACHED_LAYERS);
    found
}

fn columns(
    wq: ArrayView2<'_, i64>,
    z_w: i64,
    w: ArrayView2<'_, f64>,
    bias: &[f64],
    (s, z): (f64, i64),
) -> Option<Columns> {
    let base = cached_base(wq, z_w, w, bias)?;
    let m = base.t.len();
    let (mut alpha, mut zs) = (vec![0.0; m], vec![0; m]);
    for j in 0..m {
        alpha[j] = s * base.t[j];
        let v = i128::from(z).checked_mul(base.sums[j])?;
        zs[j] = i64::try_from(v)
            .ok()
            .filter(|v| v.unsigned_abs() <= 1 << 50)?;
        let scale = s.abs() * base.mag[j] + base.bias[j].abs();
        if scale.is_nan() || scale > LIMIT {
            return None;
        }
    }
    Some(Columns { alpha, zs, base })
}

/// The constants of [`Base`], or None when a weight, a bias or a norm is not finite.
fn base(wq: ArrayView2<'_, i64>, z_w: i64, w: ArrayView2<'_, f64>, bias: &[f64]) -> Option<Base> {
    let (k, m) = w.dim();
    let kf = k as f64;
    let r = 1.25 * (kf + 3.0) * U;
    let mut cols = Base {
        t: vec![0.0; m],
        sums: vec![0; m],
        spread: vec![0.0; m],
        abs: vec![0.0; m],
        mag: vec![0.0; m],
        bias: vec![0.0; m],
        wt: vec![0.0; m * k],
    };
    // both matrices transposed to (m, k), read in their row-major order
    let mut cq = vec![0.0f64; m * k];
    for (kk, (wrow, qrow)) in w.outer_iter().zip(wq.outer_iter()).enumerate() {
        for (j, (&v, &q)) in wrow.iter().zip(qrow.iter()).enumerate() {
            let c = i128::from(q) - i128::from(z_w);
            cols.wt[j * k + kk] = v;
            cq[j * k + kk] = c as f64;
            cols.sums[j] += c;
        }
    }
    if !cols.wt.iter().all(|v| v.is_finite()) {
        return None;
    }
    for j in 0..m {
        let (wj, cj) = (&cols.wt[j * k..(j + 1) * k], &cq[j * k..(j + 1) * k]);
        let (mut wc, mut cc, mut ww, mut w1) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for (&v, &cf) in wj.iter().zip(cj) {
            wc += v * cf;
            cc += cf * cf;
            ww += v * v;
            w1 += v.abs();
        }
        let t = if cc > 0.0 { wc / cc } else { 0.0 };
        let (mut ee, mut tc) = (0.0f64, 0.0f64);
        for (&v, &cf) in wj.iter().zip(cj) {
            let p = t * cf;
            let e = v - p;
            ee += e * e;
            tc += p * p;
        }
        let (e2, c2, w2) = (norm(ee), norm(tc), norm(ww));
        let e2 = e2 + 2.0 * U * (c2 + e2) + NORM_ABS;
        let b = bias.get(j).copied().unwrap_or(0.0);
        if !b.is_finite() || !w1.is_finite() {
            return None;
        }
        cols.t[j] = t;
        cols.spread[j] = e2 + r * w2 + 4.0 * U * c2;
        cols.abs[j] = 3.0 * U * b.abs() + ABS_UNIT * (w1 + 1.0) * (kf + 8.0);
        cols.mag[j] = w2 + c2 + e2;
        cols.bias[j] = b;
    }
    Some(cols)
}

/// `Σ (a − z)²` of an int8 row, exact, when `len·(128 + |z|)² < 2^31` (AVX2 when `avx2`).
#[inline(always)]
fn sum_sq_i8(row: &[i8], z: i16, avx2: bool) -> i64 {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the caller checked that the CPU has AVX2.
        return unsafe { sum_sq_i8_avx2(row, z) };
    }
    let _ = avx2;
    row.iter()
        .map(|&v| {
            let d = i64::from(v) - i64::from(z);
            d * d
        })
        .sum()
}

/// [`sum_sq_i8`] in AVX2 (pairs of squares in int32 lanes: the caller's bound keeps every
/// lane within int32).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_sq_i8_avx2(row: &[i8], z: i16) -> i64 {
    use std::arch::x86_64::*;
    let main = row.len() / 16 * 16;
    let zv = _mm256_set1_epi16(z);
    let mut acc = _mm256_setzero_si256();
    let mut j = 0;
    while j < main {
        // SAFETY: j + 16 <= main <= row.len().
        let v = unsafe { _mm_loadu_si128(row.as_ptr().add(j).cast()) };
        let d = _mm256_sub_epi16(_mm256_cvtepi8_epi16(v), zv);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(d, d));
        j += 16;
    }
    let mut lanes = [0i32; 8];
    // SAFETY: 8 i32.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc) };
    let tail: i64 = row[main..]
        .iter()
        .map(|&v| {
            let d = i64::from(v) - i64::from(z);
            d * d
        })
        .sum();
    lanes.iter().map(|&v| i64::from(v)).sum::<i64>() + tail
}

/// What the filter needs before the product: the per-column constants and the input's
/// quantization.
struct Prep {
    cols: Columns,
    /// `z S_j` as float64 (exact).
    zsf: Vec<f64>,
    s: f64,
    z: i64,
    zf: f64,
    /// The zero point as int32 when every `a` and `a − z` fit int32.
    narrow: Option<i32>,
    /// The zero point as int16 when the input is int8 and every row's `Σ (a − z)²` fits
    /// int32 (then summed exactly in integers).
    int8_z: Option<i16>,
    /// `max_j` of the spread and of the absolute term: one `δ` per row bounds each of its
    /// values' (floating-point rounding is monotone, so every step keeps the order).
    spread: f64,
    abs: f64,
}

impl Prep {
    /// [`scaled_norm`] of one row.
    #[inline(always)]
    fn norm_of<A: AccInput>(&self, row: &[A], avx2: bool) -> f64 {
        if let Some(z) = self.int8_z {
            // SAFETY: `int8_z` is only set for an int8 input (A is i8).
            let row = unsafe { std::slice::from_raw_parts(row.as_ptr().cast::<i8>(), row.len()) };
            let sq = sum_sq_i8(row, z, avx2);
            // the exact sum: within the bound of a rounded one
            return self.s.abs() * norm(sq as f64) * NORM_REL;
        }
        match self.narrow {
            Some(z32) => scaled_norm_narrow(row, self.s, z32),
            None => scaled_norm(row, self.s, self.z),
        }
    }

    /// The bound `δ` (inflated, with the `5u|G|` term) of the estimate `g` of column `j` in
    /// a row whose scaled norm bound is `d`.
    #[inline(always)]
    fn delta(&self, j: usize, d: f64, g: f64) -> f64 {
        (d * self.cols.spread[j] + self.cols.abs[j]) * BOUND_REL + 5.0 * U * g.abs()
    }
}

/// The filter's constants, or None when the filter cannot run (then the exact pass does).
fn prepare<A: AccInput>(
    a: ArrayView2<'_, A>,
    wq: ArrayView2<'_, i64>,
    z_w: i64,
    w: ArrayView2<'_, f64>,
    bias: Option<ArrayView1<'_, f64>>,
    (s, zf): (f64, f64),
) -> Option<Prep> {
    let ((n, k), m) = (a.dim(), w.dim().1);
    if n == 0 || m == 0 || k == 0 || k > MAX_K || !s.is_finite() || wq.dim() != (k, m) {
        return None;
    }
    if zf.fract() != 0.0 || zf.abs() > 2_147_483_648.0 {
        return None;
    }
    let z = zf as i64;
    let bias_v = bias_vec(bias, m, "", "").ok()?;
    let cols = columns(wq, z_w, w, &bias_v, (s, z))?;
    let fits = |v: i64| i32::try_from(v).is_ok();
    let narrow_in = |(lo, hi): (i64, i64)| {
        [lo, hi]
            .iter()
            .all(|&v| fits(v) && v.checked_sub(z).is_some_and(fits))
    };
    // the type's range first (no pass over the input), else the values'
    let narrow = i32::try_from(z)
        .ok()
        .filter(|_| narrow_in(A::RANGE) || narrow_in(A::range_of(a)));
    let zsf = cols.zs.iter().map(|&v| v as f64).collect();
    let dmax = 128 + z.unsigned_abs();
    let int8_z = i16::try_from(z).ok().filter(|_| {
        A::RANGE == (-128, 127)
            && std::mem::size_of::<A>() == 1
            && dmax < 1 << 15
            && (k as u128) * u128::from(dmax * dmax) < 1 << 31
    });
    let spread = cols.spread.iter().fold(0.0f64, |x, &y| x.max(y));
    let abs = cols.abs.iter().fold(0.0f64, |x, &y| x.max(y));
    Some(Prep {
        cols,
        zsf,
        s,
        z,
        zf,
        narrow,
        int8_z,
        spread,
        abs,
    })
}

/// Per row, the largest and smallest estimate and the scaled norm bound `|s| ‖a_r − z‖₂`,
/// written (as float64 bits) by the product's epilogue, one row per call from any thread.
struct RowStats {
    v: Vec<AtomicU64>,
}

impl RowStats {
    fn new(n: usize) -> RowStats {
        RowStats {
            v: (0..3 * n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn set(&self, r: usize, (hi, lo, d): (f64, f64, f64)) {
        self.v[3 * r].store(hi.to_bits(), Ordering::Relaxed);
        self.v[3 * r + 1].store(lo.to_bits(), Ordering::Relaxed);
        self.v[3 * r + 2].store(d.to_bits(), Ordering::Relaxed);
    }

    fn get(&self, r: usize) -> (f64, f64, f64) {
        let at = |i: usize| f64::from_bits(self.v[i].load(Ordering::Relaxed));
        (at(3 * r), at(3 * r + 1), at(3 * r + 2))
    }
}

/// Whether the CPU runs AVX2.
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The epilogue's work on one row: the accumulators written as int32, the row's largest
/// and smallest estimate and its scaled norm bound (compiled for AVX2 when `avx2`: the
/// same operations in the same order, so the same results).
#[inline(always)]
fn row_work<A: AccInput, R: AccRow>(
    p: &Prep,
    row: &[R],
    dst: &mut [MaybeUninit<i32>],
    a_row: &[A],
    (avx2, wide): (bool, bool),
) -> (f64, f64, f64) {
    #[inline(always)]
    fn body<A: AccInput, R: AccRow>(
        p: &Prep,
        row: &[R],
        dst: &mut [MaybeUninit<i32>],
        a_row: &[A],
    ) -> (f64, f64, f64) {
        let (hi, lo) = row_estimates(row, dst, &p.cols.alpha, &p.zsf, &p.cols.bias);
        (hi, lo, p.norm_of(a_row, false))
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn body_avx2<A: AccInput, R: AccRow>(
            p: &Prep,
            row: &[R],
            dst: &mut [MaybeUninit<i32>],
            a_row: &[A],
        ) -> (f64, f64, f64) {
            let (hi, lo) = row_estimates_avx2(row, dst, &p.cols.alpha, &p.zsf, &p.cols.bias);
            (hi, lo, p.norm_of(a_row, true))
        }
        #[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
        unsafe fn body_avx512<A: AccInput, R: AccRow>(
            p: &Prep,
            row: &[R],
            dst: &mut [MaybeUninit<i32>],
            a_row: &[A],
        ) -> (f64, f64, f64) {
            // SAFETY: AVX-512 (this function's features); the slices as `row_estimates_avx2`.
            let (hi, lo) =
                unsafe { row_estimates_avx512(row, dst, &p.cols.alpha, &p.zsf, &p.cols.bias) };
            (hi, lo, p.norm_of(a_row, true))
        }
        if wide {
            // SAFETY: the caller checked that the CPU has AVX2 and AVX-512 F/DQ/VL/BW.
            return unsafe { body_avx512(p, row, dst, a_row) };
        }
        if avx2 {
            // SAFETY: the caller checked that the CPU has AVX2.
            return unsafe { body_avx2(p, row, dst, a_row) };
        }
    }
    let _ = (avx2, wide);
    body(p, row, dst, a_row)
}

/// Writes one row of accumulators as int32 into `dst` and returns the largest and smallest
/// estimate `G_j = fl(fl(α_j · fl(acc_j − zS_j)) + b_j)` of the row (4 lanes, so that it
/// vectorises; the maximum and minimum do not depend on the order).
#[inline(always)]
fn row_estimates<R: AccRow>(
    row: &[R],
    dst: &mut [MaybeUninit<i32>],
    alpha: &[f64],
    zsf: &[f64],
    bias: &[f64],
) -> (f64, f64) {
    const L: usize = 4;
    let mut hi = [f64::NEG_INFINITY; L];
    let mut lo = [f64::INFINITY; L];
    let main = row.len() / L * L;
    let lanes = row[..main]
        .chunks_exact(L)
        .zip(dst[..main].chunks_exact_mut(L))
        .zip(alpha.chunks_exact(L).zip(zsf.chunks_exact(L)))
        .zip(bias.chunks_exact(L));
    for (((v, d), (al, zs)), b) in lanes {
        for l in 0..L {
            // the overflow check keeps every accumulator within i32
            let x = v[l].low_i32();
            d[l].write(x);
            let g = al[l] * (f64::from(x) - zs[l]) + b[l];
            hi[l] = if g > hi[l] { g } else { hi[l] };
            lo[l] = if g < lo[l] { g } else { lo[l] };
        }
    }
    let hi = hi.iter().fold(f64::NEG_INFINITY, |x, &y| x.max(y));
    let lo = lo.iter().fold(f64::INFINITY, |x, &y| x.min(y));
    estimates_from(main, row, dst, alpha, zsf, bias, (hi, lo))
}

/// The columns `from..` of [`row_estimates`] one by one (the tail the vector loops leave),
/// taken into the extremes `(hi, lo)` found so far.
#[inline(always)]
fn estimates_from<R: AccRow>(
    from: usize,
    row: &[R],
    dst: &mut [MaybeUninit<i32>],
    alpha: &[f64],
    zsf: &[f64],
    bias: &[f64],
    (mut hi, mut lo): (f64, f64),
) -> (f64, f64) {
    for j in from..row.len() {
        let x = row[j].low_i32();
        dst[j].write(x);
        let g = alpha[j] * (f64::from(x) - zsf[j]) + bias[j];
        hi = hi.max(g);
        lo = lo.min(g);
    }
    (hi, lo)
}

/// [`row_estimates`] in AVX2 intrinsics (the same values: each `G_j` by the same three
/// operations; the maximum and minimum of values that are never NaN).
///
/// # Safety
/// The CPU must have AVX2; `dst`, `alpha`, `zsf` and `bias` as long as `row`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_estimates_avx2<R: AccRow>(
    row: &[R],
    dst: &mut [MaybeUninit<i32>],
    alpha: &[f64],
    zsf: &[f64],
    bias: &[f64],
) -> (f64, f64) {
    use std::arch::x86_64::*;
    let m = row.len();
    assert!(dst.len() == m && alpha.len() == m && zsf.len() == m && bias.len() == m);
    let main = m / 8 * 8;
    let mut hi = [_mm256_set1_pd(f64::NEG_INFINITY); 2];
    let mut lo = [_mm256_set1_pd(f64::INFINITY); 2];
    let (rp, dp) = (row.as_ptr(), dst.as_mut_ptr());
    let (ap, zp, bp) = (alpha.as_ptr(), zsf.as_ptr(), bias.as_ptr());
    let mut j = 0;
    while j < main {
        for h in 0..2 {
            let at = j + 4 * h;
            // SAFETY: at + 4 <= main <= m, the length of every slice.
            unsafe {
                // the accumulators fit int32
                let x = R::load4(rp.add(at));
                _mm_storeu_si128(dp.add(at).cast(), x);
                let d = _mm256_sub_pd(_mm256_cvtepi32_pd(x), _mm256_loadu_pd(zp.add(at)));
                let g = _mm256_add_pd(
                    _mm256_mul_pd(_mm256_loadu_pd(ap.add(at)), d),
                    _mm256_loadu_pd(bp.add(at)),
                );
                hi[h] = _mm256_max_pd(hi[h], g);
                lo[h] = _mm256_min_pd(lo[h], g);
            }
        }
        j += 8;
    }
    let (mut hs, mut ls) = ([0.0f64; 4], [0.0f64; 4]);
    // SAFETY: 4 f64 each.
    unsafe {
        _mm256_storeu_pd(hs.as_mut_ptr(), _mm256_max_pd(hi[0], hi[1]));
        _mm256_storeu_pd(ls.as_mut_ptr(), _mm256_min_pd(lo[0], lo[1]));
    }
    let found = (
        hs.iter().fold(f64::NEG_INFINITY, |x, &y| x.max(y)),
        ls.iter().fold(f64::INFINITY, |x, &y| x.min(y)),
    );
    estimates_from(main, row, dst, alpha, zsf, bias, found)
}

/// [`row_estimates_avx2`] eight lanes wide (AVX-512): the same three operations per `G_j`,
/// the same maximum and minimum.
///
/// # Safety
/// The CPU must have AVX2 and AVX-512 F/DQ/VL/BW; `dst`, `alpha`, `zsf` and `bias` as long as
/// `row`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
unsafe fn row_estimates_avx512<R: AccRow>(
    row: &[R],
    dst: &mut [MaybeUninit<i32>],
    alpha: &[f64],
    zsf: &[f64],
    bias: &[f64],
) -> (f64, f64) {
    use std::arch::x86_64::*;
    let m = row.len();
    assert!(dst.len() == m && alpha.len() == m && zsf.len() == m && bias.len() == m);
    let main = m / 8 * 8;
    let mut hi = _mm512_set1_pd(f64::NEG_INFINITY);
    let mut lo = _mm512_set1_pd(f64::INFINITY);
    let (rp, dp) = (row.as_ptr(), dst.as_mut_ptr());
    let (ap, zp, bp) = (alpha.as_ptr(), zsf.as_ptr(), bias.as_ptr());
    let mut j = 0;
    while j < main {
        // SAFETY: j + 8 <= main <= m, the length of every slice.
        unsafe {
            // the accumulators fit int32
            let x = _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(R::load4(rp.add(j))),
                R::load4(rp.add(j + 4)),
            );
            _mm256_storeu_si256(dp.add(j).cast(), x);
            let d = _mm512_sub_pd(_mm512_cvtepi32_pd(x), _mm512_loadu_pd(zp.add(j)));
            let g = _mm512_add_pd(
                _mm512_mul_pd(_mm512_loadu_pd(ap.add(j)), d),
                _mm512_loadu_pd(bp.add(j)),
            );
            hi = _mm512_max_pd(hi, g);
            lo = _mm512_min_pd(lo, g);
        }
        j += 8;
    }
    let found = (_mm512_reduce_max_pd(hi), _mm512_reduce_min_pd(lo));
    estimates_from(main, row, dst, alpha, zsf, bias, found)
}

/// What is known of the values of one row.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    hi_lower: f64,
    hi_upper: f64,
    lo_upper: f64,
    lo_lower: f64,
}

impl Bounds {
    const NONE: Bounds = Bounds {
        hi_lower: f64::NEG_INFINITY,
        hi_upper: f64::NEG_INFINITY,
        lo_upper: f64::INFINITY,
        lo_lower: f64::INFINITY,
    };

    fn merge(self, o: Bounds) -> Bounds {
        Bounds {
            hi_lower: self.hi_lower.max(o.hi_lower),
            hi_upper: self.hi_upper.max(o.hi_upper),
            lo_upper: self.lo_upper.min(o.lo_upper),
            lo_lower: self.lo_lower.min(o.lo_lower),
        }
    }

    /// A value `v` within `d` of the true one.
    #[inline(always)]
    fn push(&mut self, v: f64, d: f64) {
        let d = d * BOUND_REL + 5.0 * U * v.abs();
        self.hi_lower = self.hi_lower.max(v - d);
        self.hi_upper = self.hi_upper.max(v + d);
        self.lo_upper = self.lo_upper.min(v + d);
        self.lo_lower = self.lo_lower.min(v - d);
    }

    /// The bounds of a row from its largest and smallest estimate and `dd`, a `δ` (as
    /// [`Prep::delta`] gives) at least that of each of its values.
    fn of_row(hi: f64, lo: f64, dd: f64) -> Bounds {
        Bounds {
            hi_lower: hi - dd,
            hi_upper: hi + dd,
            lo_upper: lo + dd,
            lo_lower: lo - dd,
        }
    }

    fn candidate(&self, hi: f64, lo: f64) -> bool {
        self.hi_upper >= hi || self.lo_lower <= lo
    }
}

/// Survivors per row above which the row is run exactly rather than refined (a
/// refinement costs about 2K operations, the row m·K).
fn refine_cap(m: usize) -> usize {
    m.div_ceil(4)
}

/// The filtered extremes from the rows' estimates, or None when the whole exact pass must
/// run.
#[allow(clippy::too_many_arguments)]
fn filter<A: AccInput>(
    a: ArrayView2<'_, A>,
    acc: &[i32],
    stats: &RowStats,
    p: &Prep,
    w: ArrayView2<'_, f64>,
    bias: Option<ArrayView1<'_, f64>>,
    isa: Isa,
    c: &mut AccCounts,
) -> Option<Extremes<f64>> {
    let ((n, k), m) = (a.dim(), w.dim().1);
    let a_rows = a.as_slice()?;
    let cols = &p.cols;
    // stage 1: per row, bounds from its largest and smallest estimate and one δ
    let mut row_bounds = Vec::with_capacity(n);
    let mut all = Bounds::NONE;
    for r in 0..n {
        let (hi, lo, d) = stats.get(r);
        // a NaN or too large norm, or an estimate out of range: the whole exact pass
        if !(hi.is_finite() && lo.is_finite() && d <= LIMIT) {
            return None;
        }
        let dd = (d * p.spread + p.abs) * BOUND_REL + 5.0 * U * hi.abs().max(lo.abs());
        let b = Bounds::of_row(hi, lo, dd);
        all = all.merge(b);
        row_bounds.push(b);
    }
    if !(all.hi_lower.is_finite() && all.lo_upper.is_finite()) {
        return None;
    }
    let (l1, u1) = (all.hi_lower, all.lo_upper);
    let candidates: Vec<usize> = (0..n)
        .filter(|&r| row_bounds[r].candidate(l1, u1))
        .collect();
    // the estimate rules (almost) nothing out: the exact pass is cheaper
    if n > ROWS_PER_TASK && 2 * candidates.len() > n {
        return None;
    }
    c.tasks += n as u64;
    let cap = refine_cap(m);
    // stage 2: per candidate row, its survivors (values with G + δ >= l1 or G − δ <= u1:
    // any extreme is one) refined, or the row's bounds when they are too many
    let stage2: Vec<(usize, Bounds, u64)> = candidates
        .par_iter()
        .map(|&r| {
            let d = stats.get(r).2;
            let row = &acc[r * m..(r + 1) * m];
            let survivors: Vec<usize> = (0..m)
                .filter(|&j| {
                    let g = cols.alpha[j] * (f64::from(row[j]) - p.zsf[j]) + cols.bias[j];
                    let dj = p.delta(j, d, g);
                    g + dj >= l1 || g - dj <= u1
                })
                .take(cap + 1)
                .collect();
            if survivors.len() > cap {
                return (r, row_bounds[r], 0);
            }
            let x: Vec<f64> = a_rows[r * k..(r + 1) * k]
                .iter()
                .map(|&q| dequantize_value(q, p.s, p.zf))
                .collect();
            let mut b = Bounds::NONE;
            for &j in &survivors {
                let wj = &cols.wt[j * k..(j + 1) * k];
                let (mut f, mut pa) = (0.0f64, 0.0f64);
                for (&xv, &wv) in x.iter().zip(wj) {
                    let prod = xv * wv;
                    f += prod;
                    pa += prod.abs();
                }
                let bj = cols.bias[j];
                let d2 = 1.25 * (2.0 * k as f64 + 4.0) * U * (pa + bj.abs()) + cols.abs[j];
                b.push(f + bj, d2);
            }
            (r, b, survivors.len() as u64)
        })
        .collect();
    c.refined += stage2.iter().map(|&(_, _, n)| n).sum::<u64>();
    let refined = stage2.iter().fold(Bounds::NONE, |x, &(_, y, _)| x.merge(y));
    let (l2, u2) = (l1.max(refined.hi_lower), u1.min(refined.lo_upper));
    // stage 3: the rows that may still hold an extreme, run exactly
    let chosen: Vec<usize> = stage2
        .iter()
        .filter(|(_, b, _)| b.candidate(l2, u2))
        .map(|&(r, _, _)| r)
        .collect();
    c.verified += chosen.len() as u64;
    let w_std = w.as_standard_layout();
    let packed = f64::pack(w_std.as_slice()?, k, m, supported(isa));
    let load = |v: A| dequantize_value(v, p.s, p.zf);
    let bias_t = bias_vec(bias, m, "", "").ok()?;
    let found = chosen
        .par_iter()
        .map(|&r| f64::rows_extremes(&a_rows[r * k..(r + 1) * k], &load, &packed, &bias_t))
        .reduce(Extremes::none, Extremes::merge);
    let clean = found.finite && found.min <= found.max;
    (clean && found.min != 0.0 && found.max != 0.0).then_some(found)
}

#[cfg(test)]
#[path = "accfilter_tests.rs"]
mod tests;
