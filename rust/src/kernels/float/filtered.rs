//! Filter-then-verify extremes: the results of [`extremes`](super::extremes), bit for bit,
//! with most of the exact sums skipped.
//!
//! The exact kernels run every sequential float64 (or float32) dot product of the result,
//! without FMA, because those are the reference bits. But only two values of the result are
//! wanted, and almost every value is far from both. So:
//!
//! 1. **Filter.** Every value is approximated by `G`, a float32 product (FMA when the CPU has
//!    it, any order) of the float32 roundings of the loaded inputs and of the weights, plus the
//!    bias in float64. Each task (the row chunk of the exact kernel) keeps only the per-column
//!    max and min of the float32 sums, so the pass costs a float32 GEMM and two compares per
//!    value. With a rigorous bound `δ_j` (below) on `|G_ij − y_ij|`, where `y_ij` is the exact
//!    kernel's value, a task gets `max(G − δ)` (a lower bound of its max), `max(G + δ)` (an
//!    upper bound), and the same for the min (`fl(g + b)` is monotone in `g`, so the column
//!    extremes of `g` give those of `G`).
//! 2. **Verify.** With `L = max over tasks of max(G − δ)` ≤ the true max, a task whose upper
//!    bound is below `L` cannot hold the max. The other tasks (usually one or two) run the
//!    exact kernel, and the max of their exact values is the true max: it is not above it, and
//!    the task holding the true max is among them. The min alike; the two task sets are run
//!    together.
//! 3. **Fall back** to the whole exact kernel when the guarantee is not clean: a non-finite
//!    input, weight or bias, magnitudes that could overflow float32 (|x| or a column L1 norm
//!    above 2^100, or `max|x| · max‖w_j‖₁ + max|b|` above 2^100), `K` above 2^17 (so that
//!    `K·u₃₂ ≤ 1/128`), or an exact extreme equal to zero (its sign follows positions, which
//!    only the full pass reproduces). So `finite`, and the sign of zero, are those of the exact
//!    pass; and the finite extremes are equal values, so equal bits.
//!
//! ## The bound
//!
//! Notation: `a_k` the loaded inputs of one output (type `T`), `w_k` its weights, `b` its bias,
//! `s = Σ a_k w_k` (real), `P = Σ |a_k||w_k|`; `u_T` the unit roundoff of `T` (2^-53 or 2^-24),
//! `η_T` half its smallest subnormal (the absolute error of a product that underflows; sums
//! of subnormals are exact); `u = 2^-24`, `η = 2^-150` for float32; `γ_n(u) = nu/(1 − nu)`.
//!
//! * Exact kernel, `t` the sequential sum, `y = fl(t + b)` (no bias: `+ -0.0`, exact):
//!   `|t − s| ≤ γ_K(u_T) P + 2Kη_T` and `|y − (t + b)| ≤ u_T (|t| + |b|)`.
//! * Approximation: `a'_k = fl₃₂(a_k)`, `w'_k = fl₃₂(w_k)` with `|a' − a| ≤ u|a| + η`;
//!   `s' = Σ a'w'` gives `|s' − s| ≤ (2u + u²) P + 1.01 η (Σ|a| + Σ|w|) + Kη²`. The float32 sum
//!   `g` (FMA or not, any order) has `|g − s'| ≤ γ_K(u) P' + 2Kη` with `P' ≤ 1.01 P + …`, and
//!   `G = fl₆₄(g + b)` adds `u₆₄ (|g| + |b|)`.
//!
//! With `K u ≤ 1/128`, `γ_K ≤ 1.01 K u`, and `P ≤ A ‖w_j‖₁` (`A` the largest `|a|` of the task,
//! `‖w_j‖₁` the column's L1 norm, `Σ|a| ≤ K A`), all of it is at most
//!
//! `δ_j = R (A ‖w_j‖₁ + |b_j|) + 4K(η_T + η) + 2η (‖w_j‖₁ + K A)`,
//! `R = 1.25 ((K + 2) u_T + (K + 4) u)`.
//!
//! The 25 % slack in `R` (≥ 0.5 u relative to the largest possible value) also covers the
//! float64 roundings in computing `δ_j`, `‖w_j‖₁` and `G ± δ_j` (each below a few `u₆₄`
//! relative, 2^29 times smaller).
//!
//! ## Counters
//!
//! A fallback is invisible in the result, only in the time, so every call adds to three
//! process-wide counters ([`counts`], `_core.extremes_filter_counts` in Python): the tasks the
//! filter bounded, the tasks it then ran exactly, and the calls answered by the whole exact
//! kernel (including the calls whose arguments the exact kernel rejects). Tests read them to
//! check that the filter does its work on typical data.

use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{ArrayView1, ArrayView2, ArrayView4};
use rayon::prelude::*;

use crate::error::Result;
use crate::kernels::float::conv::{im2col, ConvGeometry, ConvPlan};
use crate::kernels::float::extremes::{
    bias_vec, conv2d_extremes, conv_images_per_task, conv_task, matmul_extremes, Extremes,
    ROWS_PER_TASK,
};
use crate::kernels::float::matmul::{supported, Element, Isa};
use crate::kernels::simd::{self, Switch};

/// float32 unit roundoff.
const U32: f64 = 1.0 / 16_777_216.0;
/// Half the smallest float32 subnormal, 2^-150.
const ETA32: f64 = 7.006_492_321_624_085e-46;
/// The largest magnitude (inputs, column L1 norms, value bound) the filter takes, 2^100.
const LIMIT: f64 = 1.267_650_600_228_229_4e30;
/// The largest inner dimension the filter takes (`K u ≤ 1/128`).
const MAX_K: usize = 1 << 17;
/// Row padding of the float32 blocks (a multiple of every tile height).
const ROW_PAD: usize = 12;

/// What the filter did: tasks bounded, tasks run exactly, whole exact passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterCounts {
    /// Tasks (row chunks of the exact kernel) the filter bounded.
    pub tasks: u64,
    /// Tasks run by the exact kernel after the filter.
    pub verified: u64,
    /// Calls answered by the whole exact kernel.
    pub fallbacks: u64,
}

static TASKS: AtomicU64 = AtomicU64::new(0);
static VERIFIED: AtomicU64 = AtomicU64::new(0);
static FALLBACKS: AtomicU64 = AtomicU64::new(0);

fn record(c: FilterCounts) {
    TASKS.fetch_add(c.tasks, Ordering::Relaxed);
    VERIFIED.fetch_add(c.verified, Ordering::Relaxed);
    FALLBACKS.fetch_add(c.fallbacks, Ordering::Relaxed);
}

/// The process-wide [`FilterCounts`] of every call so far (since the last reset), set back to
/// zero when `reset`. Each counter is read (and reset) atomically, not the three together.
pub fn counts(reset: bool) -> FilterCounts {
    let read = |c: &AtomicU64| {
        if reset {
            c.swap(0, Ordering::Relaxed)
        } else {
            c.load(Ordering::Relaxed)
        }
    };
    FilterCounts {
        tasks: read(&TASKS),
        verified: read(&VERIFIED),
        fallbacks: read(&FALLBACKS),
    }
}

/// `|v| ≤ LIMIT` (false for NaN).
#[inline(always)]
fn within(v: f64) -> bool {
    v.abs() <= LIMIT
}

/// The rounding constants of an element type.
pub trait Rounding: Element {
    /// Unit roundoff.
    const U: f64;
    /// Half the smallest subnormal.
    const ETA: f64;
}

impl Rounding for f32 {
    const U: f64 = U32;
    const ETA: f64 = ETA32;
}

impl Rounding for f64 {
    const U: f64 = 1.110_223_024_625_156_5e-16;
    // 2^-1075 rounds to 0 in f64; 2^-1074 (the smallest subnormal) is a valid upper bound.
    const ETA: f64 = f64::from_bits(1);
}

/// How the float32 filter product runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// AVX-512 with FMA (16-lane panels; 8 columns or fewer as `Fma`).
    Avx512,
    /// AVX2 with FMA.
    Fma,
    /// AVX2, separate multiply and add.
    Avx2,
    /// Portable code.
    Portable,
}

impl Mode {
    fn new(isa: Isa) -> Mode {
        #[cfg(target_arch = "x86_64")]
        {
            if supported(isa) == Isa::Avx2 {
                if std::arch::is_x86_feature_detected!("fma") {
                    if WIDE.available() {
                        return Mode::Avx512;
                    }
                    return Mode::Fma;
                }
                return Mode::Avx2;
            }
        }
        let _ = isa;
        Mode::Portable
    }

    /// The panel width for `m` columns.
    fn nr(self, m: usize) -> usize {
        match self {
            Mode::Portable => 8,
            _ if m <= 8 => 8,
            Mode::Avx512 if m > 16 => 32,
            _ => 16,
        }
    }
}

/// Whether the filter's float32 products may use AVX-512 (`Mode::Avx512`, on by default where
/// the CPU has it; a switch for benchmarks and tests: the same products in the same order, so
/// the same extremes either way).
pub static WIDE: Switch = Switch::new(true, simd::wide_vectors);

/// One weight matrix `(k, m)` for the filter: float32 panels and float64 column L1 norms.
pub(crate) struct Approx {
    data: Vec<f32>,
    k: usize,
    m: usize,
    nr: usize,
    mode: Mode,
    l1: Vec<f64>,
    /// Every weight finite and every L1 norm within [`LIMIT`].
    fits: bool,
}

impl Approx {
    /// `w(kk, j)` gives the weights of the `(k, m)` matrix.
    fn new(k: usize, m: usize, mode: Mode, w: impl Fn(usize, usize) -> f64) -> Approx {
        let nr = mode.nr(m);
        let panels = m.div_ceil(nr);
        let mut data = vec![0.0f32; panels * k * nr];
        let mut l1 = vec![0.0f64; m];
        let mut fits = true;
        for kk in 0..k {
            for (j, norm) in l1.iter_mut().enumerate() {
                let v = w(kk, j);
                fits &= v.is_finite();
                *norm += v.abs();
                data[(j / nr) * k * nr + kk * nr + j % nr] = v as f32;
            }
        }
        fits &= l1.iter().all(|&v| v <= LIMIT);
        Approx {
            data,
            k,
            m,
            nr,
            mode,
            l1,
            fits,
        }
    }
}

/// What the filter knows of the values of one task.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// The bound holds (finite inputs within range).
    clean: bool,
    /// `max(G − δ)`: the max is at least this.
    hi_lower: f64,
    /// `max(G + δ)`: no value is above this.
    hi_upper: f64,
    /// `min(G + δ)`: the min is at most this.
    lo_upper: f64,
    /// `min(G − δ)`: no value is below this.
    lo_lower: f64,
}

impl Bounds {
    fn none() -> Bounds {
        Bounds {
            clean: true,
            hi_lower: f64::NEG_INFINITY,
            hi_upper: f64::NEG_INFINITY,
            lo_upper: f64::INFINITY,
            lo_lower: f64::INFINITY,
        }
    }

    fn unclean() -> Bounds {
        Bounds {
            clean: false,
            ..Bounds::none()
        }
    }

    fn merge(self, o: Bounds) -> Bounds {
        Bounds {
            clean: self.clean && o.clean,
            hi_lower: self.hi_lower.max(o.hi_lower),
            hi_upper: self.hi_upper.max(o.hi_upper),
            lo_upper: self.lo_upper.min(o.lo_upper),
            lo_lower: self.lo_lower.min(o.lo_lower),
        }
    }

    /// Whether this task may hold the max above `hi` or the min below `lo`.
    fn candidate(&self, hi: f64, lo: f64) -> bool {
        self.hi_upper >= hi || self.lo_lower <= lo
    }
}

/// The bounds of a task from the column extremes of its float32 sums `g` (`amax` the largest
/// `|a|` of the task, `bias` as float64, empty for none).
fn column_bounds<T: Rounding>(
    hi: &[f32],
    lo: &[f32],
    ap: &Approx,
    bias: &[f64],
    amax: f64,
) -> Bounds {
    let k = ap.k as f64;
    let r = 1.25 * ((k + 2.0) * T::U + (k + 4.0) * U32);
    let e = 4.0 * k * (T::ETA + ETA32);
    let mut out = Bounds::none();
    for j in 0..ap.m {
        let b = bias.get(j).copied().unwrap_or(0.0);
        let l1 = ap.l1[j];
        let scale = amax * l1 + b.abs();
        if !within(scale) {
            return Bounds::unclean();
        }
        let delta = r * scale + e + 2.0 * ETA32 * (l1 + k * amax);
        let (ghi, glo) = (f64::from(hi[j]) + b, f64::from(lo[j]) + b);
        out.hi_lower = out.hi_lower.max(ghi - delta);
        out.hi_upper = out.hi_upper.max(ghi + delta);
        out.lo_upper = out.lo_upper.min(glo + delta);
        out.lo_lower = out.lo_lower.min(glo - delta);
    }
    out
}

/// One `MR × NR` float32 tile of `a` (row-major, `k` columns, rows from `row`) times a panel.
#[inline(always)]
fn approx_tile<const MR: usize, const NR: usize, const FMA: bool>(
    a: &[f32],
    row: usize,
    k: usize,
    panel: &[f32],
) -> [[f32; NR]; MR] {
    let mut acc = [[0.0f32; NR]; MR];
    let rows: [&[f32]; MR] = std::array::from_fn(|r| &a[(row + r) * k..(row + r + 1) * k]);
    for (kk, bk) in panel.chunks_exact(NR).enumerate() {
        for r in 0..MR {
            let x = rows[r][kk];
            for j in 0..NR {
                acc[r][j] = if FMA {
                    x.mul_add(bk[j], acc[r][j])
                } else {
                    acc[r][j] + x * bk[j]
                };
            }
        }
    }
    acc
}

/// The per-column max and min of `a (rows, k) @ w` in float32 (`a` padded to [`ROW_PAD`]).
#[inline(always)]
fn column_extremes<const MR: usize, const NR: usize, const FMA: bool>(
    a: &[f32],
    rows: usize,
    ap: &Approx,
    hi: &mut [f32],
    lo: &mut [f32],
) {
    let k = ap.k;
    for (p, panel) in ap.data.chunks_exact(k * NR).enumerate() {
        let mut h = [f32::NEG_INFINITY; NR];
        let mut l = [f32::INFINITY; NR];
        for row in (0..rows).step_by(MR) {
            let acc = approx_tile::<MR, NR, FMA>(a, row, k, panel);
            let valid = MR.min(rows - row);
            for acc_r in acc.iter().take(valid) {
                for j in 0..NR {
                    h[j] = if acc_r[j] > h[j] { acc_r[j] } else { h[j] };
                    l[j] = if acc_r[j] < l[j] { acc_r[j] } else { l[j] };
                }
            }
        }
        let c0 = p * NR;
        let width = NR.min(ap.m - c0);
        hi[c0..c0 + width].copy_from_slice(&h[..width]);
        lo[c0..c0 + width].copy_from_slice(&l[..width]);
    }
}

/// The float32 vectors [`column_extremes_x86`] runs on (AVX2's 8 lanes, AVX-512's 16): the
/// same operations per lane, so the same values whatever the width.
#[cfg(target_arch = "x86_64")]
trait Lanes {
    type V: Copy;
    const N: usize;
    /// # Safety
    /// The CPU supports the vectors' instructions (for every method).
    unsafe fn splat(x: f32) -> Self::V;
    /// # Safety
    /// As `splat`; `N` values readable at `p`.
    unsafe fn load(p: *const f32) -> Self::V;
    /// # Safety
    /// As `splat`; `N` values writable at `p`.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `acc + x·b`, fused when `FMA` (the CPU then supports FMA), else multiply then add.
    ///
    /// # Safety
    /// As `splat`.
    unsafe fn mul_add<const FMA: bool>(x: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    /// # Safety
    /// As `splat`.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// # Safety
    /// As `splat`.
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
}

/// A [`Lanes`] type from its vector type, width and intrinsics.
#[cfg(target_arch = "x86_64")]
macro_rules! lanes {
    ($(#[$doc:meta])* $name:ident, $v:ident, $n:expr,
     $set1:ident, $loadu:ident, $storeu:ident, $fmadd:ident, $add:ident, $mul:ident,
     $max:ident, $min:ident) => {
        $(#[$doc])*
        struct $name;

        impl Lanes for $name {
            type V = std::arch::x86_64::$v;
            const N: usize = $n;
            #[inline(always)]
            unsafe fn splat(x: f32) -> Self::V {
                std::arch::x86_64::$set1(x)
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self::V {
                std::arch::x86_64::$loadu(p)
            }
            #[inline(always)]
            unsafe fn store(p: *mut f32, v: Self::V) {
                std::arch::x86_64::$storeu(p, v)
            }
            #[inline(always)]
            unsafe fn mul_add<const FMA: bool>(x: Self::V, b: Self::V, acc: Self::V) -> Self::V {
                use std::arch::x86_64::*;
                if FMA {
                    $fmadd(x, b, acc)
                } else {
                    $add(acc, $mul(x, b))
                }
            }
            #[inline(always)]
            unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
                std::arch::x86_64::$max(a, b)
            }
            #[inline(always)]
            unsafe fn min(a: Self::V, b: Self::V) -> Self::V {
                std::arch::x86_64::$min(a, b)
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
lanes!(
    /// AVX2: 8 lanes.
    Ymm, __m256, 8, _mm256_set1_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_fmadd_ps,
    _mm256_add_ps, _mm256_mul_ps, _mm256_max_ps, _mm256_min_ps
);
#[cfg(target_arch = "x86_64")]
lanes!(
    /// AVX-512: 16 lanes.
    Zmm, __m512, 16, _mm512_set1_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_fmadd_ps,
    _mm512_add_ps, _mm512_mul_ps, _mm512_max_ps, _mm512_min_ps
);

/// [`column_extremes`] with vector intrinsics: `MR` rows × `NV` vectors of `L::N` columns.
/// Without `gather`, `a` is row-major (`k` columns); with `gather = (roff, koff)`, element
/// `(r, kk)` is `a[roff[r] + koff[kk]]` (an implicit im2col over a padded image).
///
/// # Safety
/// The CPU must support `L`'s vectors, and FMA when `FMA`; `ap.nr == L::N * NV <= 32`; every
/// element read (rows up to `rows` rounded up to a multiple of `MR`) lies in `a`, and `roff`
/// has that many entries, `koff` `k`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn column_extremes_x86<L: Lanes, const MR: usize, const NV: usize, const FMA: bool>(
    a: &[f32],
    gather: Option<(&[usize], &[usize])>,
    rows: usize,
    ap: &Approx,
    hi: &mut [f32],
    lo: &mut [f32],
) {
    let k = ap.k;
    let nr = L::N * NV;
    match gather {
        None => debug_assert!(a.len() >= rows.div_ceil(MR) * MR * k),
        Some((roff, koff)) => debug_assert!(
            roff.len() >= rows.div_ceil(MR) * MR
                && koff.len() == k
                && roff[..rows.div_ceil(MR) * MR].iter().max().unwrap_or(&0)
                    + koff.iter().max().unwrap_or(&0)
                    < a.len()
        ),
    }
    debug_assert!(ap.nr == nr && nr <= 32);
    for (p, panel) in ap.data.chunks_exact(k * nr).enumerate() {
        let mut h = [L::splat(f32::NEG_INFINITY); NV];
        let mut l = [L::splat(f32::INFINITY); NV];
        for row in (0..rows).step_by(MR) {
            let mut acc = [[L::splat(0.0); NV]; MR];
            let base = if gather.is_none() {
                a.as_ptr().add(row * k)
            } else {
                a.as_ptr()
            };
            let pb = panel.as_ptr();
            for kk in 0..k {
                let mut bv = [L::splat(0.0); NV];
                for (v, b) in bv.iter_mut().enumerate() {
                    *b = L::load(pb.add(kk * nr + L::N * v));
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let x = match gather {
                        None => *base.add(r * k + kk),
                        Some((roff, koff)) => *a
                            .as_ptr()
                            .add(*roff.get_unchecked(row + r) + *koff.get_unchecked(kk)),
                    };
                    let x = L::splat(x);
                    for v in 0..NV {
                        acc_r[v] = L::mul_add::<FMA>(x, bv[v], acc_r[v]);
                    }
                }
            }
            let valid = MR.min(rows - row);
            for acc_r in acc.iter().take(valid) {
                for v in 0..NV {
                    h[v] = L::max(h[v], acc_r[v]);
                    l[v] = L::min(l[v], acc_r[v]);
                }
            }
        }
        let c0 = p * nr;
        let width = nr.min(ap.m - c0);
        let (mut hs, mut ls) = ([0.0f32; 32], [0.0f32; 32]);
        for v in 0..NV {
            L::store(hs.as_mut_ptr().add(L::N * v), h[v]);
            L::store(ls.as_mut_ptr().add(L::N * v), l[v]);
        }
        hi[c0..c0 + width].copy_from_slice(&hs[..width]);
        lo[c0..c0 + width].copy_from_slice(&ls[..width]);
    }
}

/// [`column_extremes_x86`] compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn column_extremes_fma(
    a: &[f32],
    gather: Option<(&[usize], &[usize])>,
    rows: usize,
    ap: &Approx,
    hi: &mut [f32],
    lo: &mut [f32],
) {
    if ap.nr == 8 {
        column_extremes_x86::<Ymm, 12, 1, true>(a, gather, rows, ap, hi, lo)
    } else {
        column_extremes_x86::<Ymm, 6, 2, true>(a, gather, rows, ap, hi, lo)
    }
}

/// The column extremes on AVX-512 (`Mode::Avx512`): 8-column panels by the AVX2 kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA and AVX-512 (F, DQ, VL, BW); layouts as for
/// [`column_extremes_x86`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512dq,avx512vl,avx512bw")]
unsafe fn column_extremes_avx512(
    a: &[f32],
    gather: Option<(&[usize], &[usize])>,
    rows: usize,
    ap: &Approx,
    hi: &mut [f32],
    lo: &mut [f32],
) {
    match ap.nr {
        8 => column_extremes_x86::<Ymm, 12, 1, true>(a, gather, rows, ap, hi, lo),
        16 => column_extremes_x86::<Zmm, 12, 1, true>(a, gather, rows, ap, hi, lo),
        _ => column_extremes_x86::<Zmm, 12, 2, true>(a, gather, rows, ap, hi, lo),
    }
}

/// [`column_extremes_x86`] compiled with AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn column_extremes_avx2(
    a: &[f32],
    gather: Option<(&[usize], &[usize])>,
    rows: usize,
    ap: &Approx,
    hi: &mut [f32],
    lo: &mut [f32],
) {
    if ap.nr == 8 {
        column_extremes_x86::<Ymm, 12, 1, false>(a, gather, rows, ap, hi, lo)
    } else {
        column_extremes_x86::<Ymm, 6, 2, false>(a, gather, rows, ap, hi, lo)
    }
}

/// The column extremes of the float32 block `a` on the mode of `ap` (`gather` only on AVX2
/// modes: see [`column_extremes_x86`], whose bounds the caller guarantees).
fn block_columns(
    a: &[f32],
    gather: Option<(&[usize], &[usize])>,
    rows: usize,
    ap: &Approx,
) -> (Vec<f32>, Vec<f32>) {
    let mut hi = vec![f32::NEG_INFINITY; ap.m];
    let mut lo = vec![f32::INFINITY; ap.m];
    match ap.mode {
        // SAFETY: the mode was picked from what the CPU supports (Mode::new); the layouts are
        // those the callers build (row-major padded to ROW_PAD, or in-bounds offsets).
        #[cfg(target_arch = "x86_64")]
        Mode::Avx512 => unsafe { column_extremes_avx512(a, gather, rows, ap, &mut hi, &mut lo) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Mode::Fma => unsafe { column_extremes_fma(a, gather, rows, ap, &mut hi, &mut lo) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Mode::Avx2 => unsafe { column_extremes_avx2(a, gather, rows, ap, &mut hi, &mut lo) },
        _ => {
            debug_assert!(gather.is_none());
            column_extremes::<4, 8, false>(a, rows, ap, &mut hi, &mut lo)
        }
    }
    (hi, lo)
}

/// `out[i] = load(src[i])` rounded to float32, with the largest `|load(src[i])|`, or None when
/// one is not finite or above [`LIMIT`]: [`to_f32_lines`] with one line.
#[inline]
fn to_f32<S: Copy, F: Fn(S) -> f64>(src: &[S], load: &F, out: &mut [f32]) -> Option<f64> {
    let n = src.len();
    to_f32_lines(src, load, out, Lines::flat(n))
}

/// Where [`to_f32_lines`] writes the lines of `src`: line `i` of `len` values goes to
/// `out[at + (i / lines_per_plane)·plane_step + (i % lines_per_plane)·step ..][..len]`.
#[derive(Clone, Copy)]
struct Lines {
    len: usize,
    step: usize,
    lines_per_plane: usize,
    plane_step: usize,
    at: usize,
}

impl Lines {
    /// `n` values as one line at the start of `out`.
    fn flat(n: usize) -> Self {
        Lines {
            len: n,
            step: n,
            lines_per_plane: 1,
            plane_step: n,
            at: 0,
        }
    }
}

/// `load(src)` rounded to float32 into the lines of `out` (`lines`), with the largest
/// `|load(v)|`, or None when one is not finite or above [`LIMIT`]: [`to_f32_lanes`] compiled
/// with AVX2 when the CPU has it (the same IEEE operations either way; the callers run on
/// rayon threads, outside any AVX2-compiled function, so the generic code alone would stay on
/// SSE2).
#[inline]
fn to_f32_lines<S: Copy, F: Fn(S) -> f64>(
    src: &[S],
    load: &F,
    out: &mut [f32],
    lines: Lines,
) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { to_f32_avx2(src, load, out, lines) };
    }
    to_f32_lanes(src, load, out, lines)
}

/// [`to_f32_lanes`] compiled with AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn to_f32_avx2<S: Copy, F: Fn(S) -> f64>(
    src: &[S],
    load: &F,
    out: &mut [f32],
    lines: Lines,
) -> Option<f64> {
    to_f32_lanes(src, load, out, lines)
}

/// The body of [`to_f32_lines`]: eight independent lanes, so that it vectorises.
#[inline(always)]
fn to_f32_lanes<S: Copy, F: Fn(S) -> f64>(
    src: &[S],
    load: &F,
    out: &mut [f32],
    lines: Lines,
) -> Option<f64> {
    const L: usize = 8;
    let mut amax = [0.0f64; L];
    let mut bad = [false; L];
    let mut lane = |i: usize, v: f64, d: &mut f32| {
        let m = v.abs();
        amax[i] = if m > amax[i] { m } else { amax[i] };
        // NaN fails every comparison, ±∞ is above LIMIT
        bad[i] |= !within(m);
        *d = v as f32;
    };
    let per_plane = lines.len * lines.lines_per_plane;
    if per_plane > 0 {
        for (p, plane) in src.chunks_exact(per_plane).enumerate() {
            let first = lines.at + p * lines.plane_step;
            for (r, line) in plane.chunks_exact(lines.len).enumerate() {
                let at = first + r * lines.step;
                let dst = &mut out[at..at + lines.len];
                let (head, tail) = line.split_at(line.len() / L * L);
                for (xs, ds) in head.chunks_exact(L).zip(dst.chunks_exact_mut(L)) {
                    for i in 0..L {
                        lane(i, load(xs[i]), &mut ds[i]);
                    }
                }
                for (&x, d) in tail.iter().zip(&mut dst[head.len()..]) {
                    lane(0, load(x), d);
                }
            }
        }
    }
    let amax = amax.iter().fold(0.0f64, |a, &b| if b > a { b } else { a });
    (!bad.iter().any(|&b| b)).then_some(amax)
}

/// The filter's bounds of one matmul task.
fn matmul_bounds<S: Copy, T: Rounding, F: Fn(S) -> T>(
    rows_a: &[S],
    load: &F,
    ap: &Approx,
    bias: &[f64],
) -> Bounds {
    let k = ap.k;
    let rows = rows_a.len() / k;
    let mut a32 = vec![0.0f32; rows.div_ceil(ROW_PAD) * ROW_PAD * k];
    let Some(amax) = to_f32(rows_a, &|v| load(v).into(), &mut a32) else {
        return Bounds::unclean();
    };
    let (hi, lo) = block_columns(&a32, None, rows, ap);
    column_bounds::<T>(&hi, &lo, ap, bias, amax)
}

/// The tasks that may hold an extreme, from the bounds of every task, or None when the
/// filter does not apply.
fn candidates(bounds: &[Bounds]) -> Option<Vec<usize>> {
    let all = bounds.iter().fold(Bounds::none(), |a, &b| a.merge(b));
    if !all.clean {
        return None;
    }
    Some(
        (0..bounds.len())
            .filter(|&t| bounds[t].candidate(all.hi_lower, all.lo_upper))
            .collect(),
    )
}

/// The filtered result, or None when the full exact pass must decide (non-finite values or a
/// zero extreme).
fn verified<T: Element>(found: Extremes<T>) -> Option<Extremes<T>> {
    let clean = found.finite && found.min <= found.max;
    (clean && found.min != T::ZERO && found.max != T::ZERO).then_some(found)
}

/// [`matmul_extremes`] by filter-then-verify (see the module docs): the same result, bit for
/// bit, with the same errors.
pub fn matmul_extremes_filtered<S: Copy + Sync, T: Rounding, F: Fn(S) -> T + Sync>(
    a: ArrayView2<'_, S>,
    load: F,
    b: ArrayView2<'_, T>,
    bias: Option<ArrayView1<'_, T>>,
    isa: Isa,
) -> Result<Extremes<T>> {
    let (out, c) = matmul_extremes_counted(a, load, b, bias, isa);
    record(c);
    out
}

/// [`matmul_extremes`] when `exact`, else [`matmul_extremes_filtered`] (the same result).
pub fn matmul_extremes_by<S: Copy + Sync, T: Rounding, F: Fn(S) -> T + Sync>(
    exact: bool,
    a: ArrayView2<'_, S>,
    load: F,
    b: ArrayView2<'_, T>,
    bias: Option<ArrayView1<'_, T>>,
    isa: Isa,
) -> Result<Extremes<T>> {
    if exact {
        matmul_extremes(a, load, b, bias, isa)
    } else {
        matmul_extremes_filtered(a, load, b, bias, isa)
    }
}

/// [`matmul_extremes_filtered`] with what this call did.
fn matmul_extremes_counted<S: Copy + Sync, T: Rounding, F: Fn(S) -> T + Sync>(
    a: ArrayView2<'_, S>,
    load: F,
    b: ArrayView2<'_, T>,
    bias: Option<ArrayView1<'_, T>>,
    isa: Isa,
) -> (Result<Extremes<T>>, FilterCounts) {
    let mut c = FilterCounts::default();
    match matmul_filter(a, &load, b, bias, isa, &mut c) {
        Some(found) => (Ok(found), c),
        None => {
            c.fallbacks += 1;
            (matmul_extremes(a, &load, b, bias, isa), c)
        }
    }
}

/// The filtered matmul extremes, or None when the whole exact pass must run.
fn matmul_filter<S: Copy + Sync, T: Rounding, F: Fn(S) -> T + Sync>(
    a: ArrayView2<'_, S>,
    load: &F,
    b: ArrayView2<'_, T>,
    bias: Option<ArrayView1<'_, T>>,
    isa: Isa,
    c: &mut FilterCounts,
) -> Option<Extremes<T>> {
    let (n, k) = a.dim();
    let (kb, m) = b.dim();
    if k != kb || n == 0 || m == 0 || k == 0 || k > MAX_K {
        return None;
    }
    let bias_t = bias_vec(bias, m, "", "").ok()?;
    let bias64: Vec<f64> = bias_t.iter().map(|&v| v.into()).collect();
    if bias64.iter().any(|&v| !within(v)) {
        return None;
    }
    let mode = Mode::new(isa);
    let ap = Approx::new(k, m, mode, |kk, j| b[[kk, j]].into());
    if !ap.fits {
        return None;
    }
    let (a_std, b_std) = (a.as_standard_layout(), b.as_standard_layout());
    let (a_rows, b_std) = (a_std.as_slice()?, b_std.as_slice()?);
    let bounds: Vec<Bounds> = a_rows
        .par_chunks(ROWS_PER_TASK * k)
        .map(|rows| matmul_bounds::<S, T, F>(rows, load, &ap, &bias64))
        .collect();
    c.tasks += bounds.len() as u64;
    let tasks = candidates(&bounds)?;
    c.verified += tasks.len() as u64;
    let packed = T::pack(b_std, k, m, supported(isa));
    let found = tasks
        .par_iter()
        .map(|&t| {
            let rows = &a_rows[t * ROWS_PER_TASK * k..((t + 1) * ROWS_PER_TASK * k).min(n * k)];
            T::rows_extremes(rows, load, &packed, &bias_t)
        })
        .reduce(Extremes::none, Extremes::merge);
    verified(found)
}

/// The most float32 values a thread keeps in its [`ConvScratch`] between tasks (8 MiB).
const KEPT_CONV_VALUES: usize = 1 << 21;

/// The buffers of one thread's conv tasks, kept between tasks and calls: the float32 images
/// (zero-padded for the direct path, whose zero border stays valid while the layout does),
/// the output rows' offsets into them, or the im2col rows.
#[derive(Default)]
struct ConvScratch {
    images: Vec<f32>,
    /// `(count, c, h, w, hp, wp, top, left)` of the padded images whose border is zero
    layout: Option<[usize; 8]>,
    roff: Vec<usize>,
    cols: Vec<f32>,
}

thread_local! {
    static CONV_SCRATCH: std::cell::RefCell<ConvScratch> =
        std::cell::RefCell::new(ConvScratch::default());
}

/// The filter's bounds of one conv task (`per_task` images from `first` on).
#[allow(clippy::too_many_arguments)]
fn conv_bounds<S: Copy, F: Fn(S) -> f64>(
    x: &[S],
    load: &F,
    plan: &ConvPlan,
    g: &ConvGeometry,
    approx: &[Approx],
    bias: &[f64],
    first: usize,
    per_task: usize,
) -> Bounds {
    CONV_SCRATCH.with(|kept| {
        let mut borrowed = kept.try_borrow_mut();
        let mut own = ConvScratch::default();
        // a task nested in another on this thread gets buffers of its own
        let buffers = match borrowed {
            Ok(ref mut kept) => &mut **kept,
            Err(_) => &mut own,
        };
        conv_bounds_in(x, load, plan, g, approx, bias, first, per_task, buffers)
    })
}

/// [`conv_bounds`] with the thread's buffers.
#[allow(clippy::too_many_arguments)]
fn conv_bounds_in<S: Copy, F: Fn(S) -> f64>(
    x: &[S],
    load: &F,
    plan: &ConvPlan,
    g: &ConvGeometry,
    approx: &[Approx],
    bias: &[f64],
    first: usize,
    per_task: usize,
    buffers: &mut ConvScratch,
) -> Bounds {
    let s = &plan.shape;
    let (plane, kdim, image) = (s.oh * s.ow, s.kdim(), s.c * s.h * s.w);
    let count = per_task.min(x.len() / image - first);
    let rows = count * plane;
    // the values of the exact task, read through float32 when padded
    let src = &x[first * image..(first + count) * image];
    let convert = |from: &[S], to: &mut [f32], lines: Lines| {
        if s.round {
            to_f32_lines(from, &|v| f64::from(load(v) as f32), to, lines)
        } else {
            to_f32_lines(from, load, to, lines)
        }
    };
    let direct = approx.first().is_some_and(|ap| ap.mode != Mode::Portable);
    let (top, left) = (g.begins[0], g.begins[1]);
    let (hp, wp) = (s.h + top + g.ends[0], s.w + left + g.ends[1]);
    let amax = if direct {
        // the images zero-padded, each output row an offset into them, each window element
        // an offset from it (an im2col the kernel reads in place)
        let layout = [count, s.c, s.h, s.w, hp, wp, top, left];
        if buffers.layout != Some(layout) {
            buffers.images.clear();
            buffers.images.resize(count * s.c * hp * wp, 0.0);
            buffers.layout = Some(layout);
        }
        // every line converted straight into its place in the padded images
        let lines = Lines {
            len: s.w,
            step: wp,
            lines_per_plane: s.h,
            plane_step: hp * wp,
            at: top * wp + left,
        };
        let found = convert(src, &mut buffers.images, lines);
        buffers.roff.clear();
        buffers.roff.resize(rows.div_ceil(ROW_PAD) * ROW_PAD, 0);
        for (p, r) in buffers.roff.iter_mut().take(rows).enumerate() {
            let (img, pos) = (p / plane, p % plane);
            let (oy, ox) = (pos / s.ow, pos % s.ow);
            *r = img * s.c * hp * wp + oy * g.strides[0] * wp + ox * g.strides[1];
        }
        found
    } else {
        buffers.layout = None;
        buffers.images.clear();
        buffers.images.resize(count * image, 0.0);
        buffers.cols.clear();
        buffers
            .cols
            .resize(rows.div_ceil(ROW_PAD) * ROW_PAD * kdim, 0.0);
        let n = src.len();
        convert(src, &mut buffers.images, Lines::flat(n))
    };
    let Some(amax) = amax else {
        return Bounds::unclean();
    };
    let mut out = Bounds::none();
    for (gi, ap) in approx.iter().enumerate() {
        let (hi, lo) = if direct {
            let mut koff = Vec::with_capacity(kdim);
            for c in 0..s.cg {
                for ky in 0..s.kh {
                    for kx in 0..s.kw {
                        koff.push(
                            (gi * s.cg + c) * hp * wp
                                + ky * g.dilations[0] * wp
                                + kx * g.dilations[1],
                        );
                    }
                }
            }
            block_columns(&buffers.images, Some((&buffers.roff, &koff)), rows, ap)
        } else {
            im2col(
                &buffers.images,
                &|v| v,
                gi,
                s,
                g,
                &mut buffers.cols[..rows * kdim],
            );
            block_columns(&buffers.cols, None, rows, ap)
        };
        let group_bias = if bias.is_empty() {
            bias
        } else {
            &bias[gi * s.og..(gi + 1) * s.og]
        };
        out = out.merge(column_bounds::<f64>(&hi, &lo, ap, group_bias, amax));
    }
    if buffers.images.capacity() + buffers.cols.capacity() > KEPT_CONV_VALUES {
        *buffers = ConvScratch::default(); // a large conv's buffers are not kept
    }
    out
}

/// [`conv2d_extremes`] by filter-then-verify (see the module docs): the same result, bit for
/// bit, with the same errors.
pub fn conv2d_extremes_filtered<S: Copy + Sync, F: Fn(S) -> f64 + Sync>(
    x: ArrayView4<'_, S>,
    load: F,
    w: ArrayView4<'_, f64>,
    bias: Option<ArrayView1<'_, f64>>,
    geometry: &ConvGeometry,
    isa: Isa,
) -> Result<Extremes<f64>> {
    let (out, c) = conv2d_extremes_counted(x, load, w, bias, geometry, isa);
    record(c);
    out
}

/// [`conv2d_extremes_filtered`] with what this call did.
fn conv2d_extremes_counted<S: Copy + Sync, F: Fn(S) -> f64 + Sync>(
    x: ArrayView4<'_, S>,
    load: F,
    w: ArrayView4<'_, f64>,
    bias: Option<ArrayView1<'_, f64>>,
    geometry: &ConvGeometry,
    isa: Isa,
) -> (Result<Extremes<f64>>, FilterCounts) {
    let mut c = FilterCounts::default();
    match conv2d_filter(x, &load, w, bias, geometry, isa, &mut c) {
        Some(found) => (Ok(found), c),
        None => {
            c.fallbacks += 1;
            (conv2d_extremes(x, &load, w, bias, geometry, isa), c)
        }
    }
}

/// The filtered conv extremes, or None when the whole exact pass must run.
fn conv2d_filter<S: Copy + Sync, F: Fn(S) -> f64 + Sync>(
    x: ArrayView4<'_, S>,
    load: &F,
    w: ArrayView4<'_, f64>,
    bias: Option<ArrayView1<'_, f64>>,
    g: &ConvGeometry,
    isa: Isa,
    c: &mut FilterCounts,
) -> Option<Extremes<f64>> {
    let plan = ConvPlan::new(x.dim(), w, g, isa).ok()?;
    let s = &plan.shape;
    let n = x.dim().0;
    let plane = s.oh * s.ow;
    let kdim = s.kdim();
    if n == 0 || s.o == 0 || plane == 0 || kdim == 0 || kdim > MAX_K {
        return None;
    }
    let bias_v = bias_vec(bias, s.o, "", "").ok()?;
    if bias_v.iter().any(|&v| !within(v)) {
        return None;
    }
    let mode = Mode::new(isa);
    let w_std = w.as_standard_layout();
    let w_flat = w_std.as_slice()?;
    let approx: Vec<Approx> = (0..g.group)
        .map(|gi| {
            Approx::new(kdim, s.og, mode, |kk, oo| {
                w_flat[(gi * s.og + oo) * kdim + kk]
            })
        })
        .collect();
    if approx.iter().any(|ap| !ap.fits) {
        return None;
    }
    let x_std = x.as_standard_layout();
    let x_flat = x_std.as_slice()?;
    let per_task = conv_images_per_task(plane);
    let tasks = n.div_ceil(per_task);
    let bounds: Vec<Bounds> = (0..tasks)
        .into_par_iter()
        .map(|t| {
            conv_bounds(
                x_flat,
                load,
                &plan,
                g,
                &approx,
                &bias_v,
                t * per_task,
                per_task,
            )
        })
        .collect();
    c.tasks += bounds.len() as u64;
    let candidates = candidates(&bounds)?;
    c.verified += candidates.len() as u64;
    let found = candidates
        .par_iter()
        .map(|&t| conv_task(x_flat, load, &plan, &bias_v, g, t * per_task, per_task))
        .reduce(Extremes::none, Extremes::merge);
    verified(found)
}

#[cfg(test)]
#[path = "filtered_tests.rs"]
mod tests;
