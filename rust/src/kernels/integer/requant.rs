//! The fused Gemm/Conv of `rescale` followed by the output quantizer, in one pass: each
//! float64 result `v` of the rescale is quantized as it is produced,
//!
//! ```text
//! q = clip(rint(v / scale + zero_point), lo, hi)
//! ```
//!
//! every step in float64 (numpy's dtypes for float64 data and scalar operands, docs/contract.md
//! §0), and written as int8 or int16. The float64 result is never stored: the calibration walk
//! keeps only the integers (docs/calibration-throughput.md). The integers are those of
//! `matmul_rescale_into` / `conv_rescale_into` then `quant::quantize::quantize` with all
//! precisions float64, bit for bit; the kernel also gives their min and max.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use ndarray::{ArrayView2, ArrayView3, ArrayView4};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::integer::conv::{conv2d_map_into, conv2d_shape, ConvInput, Geometry};
#[cfg(target_arch = "x86_64")]
use crate::kernels::integer::epilogue_screen::{Screen, Sixteen};
use crate::kernels::integer::gemm::{
    matmul_map_into_as, matmul_shape, Lhs, RowEpilogue, BLOCK_ROWS,
};
use crate::kernels::integer::rescale::{rescale_run, Operand, Rescale};
#[cfg(target_arch = "x86_64")]
use crate::kernels::integer::{epilogue_avx2, epilogue_avx512};
use crate::kernels::quant::float::{clip, Real};

/// No float32 screen off x86-64 (`epilogue_screen`): every row takes the float64 epilogue.
#[cfg(not(target_arch = "x86_64"))]
struct Screen;

/// The accumulator types of a screened row (any, off x86-64).
#[cfg(not(target_arch = "x86_64"))]
trait Sixteen {}
#[cfg(not(target_arch = "x86_64"))]
impl<T> Sixteen for T {}

/// The per-column operands of one run of the epilogue.
type Operands<'a> = (&'a [f64], &'a [f64], Option<&'a [f64]>);

#[cfg(not(target_arch = "x86_64"))]
impl Screen {
    fn new(_: &Rescale<'_>, _: &Requant, _: usize) -> Option<Screen> {
        None
    }
}

/// The output quantizer's float64 operands (clip bounds included).
#[derive(Debug, Clone, Copy)]
pub struct Requant {
    pub scale: f64,
    pub zero_point: f64,
    pub lo: f64,
    pub hi: f64,
}

/// The narrow integer types the kernel writes.
pub trait Narrow: Copy + Send + Sync + 'static {
    /// The smallest value of the type (bounds checks).
    const MIN: i64;
    /// The largest value of the type.
    const MAX: i64;
    /// An integer-valued float64 within [MIN, MAX] (exact).
    fn from_f64(v: f64) -> Self;
    /// An i32 within [MIN, MAX] (exact).
    fn from_i32(v: i32) -> Self;
    /// The value as i32 (exact).
    fn to_i32(self) -> i32;
}

impl Narrow for i8 {
    const MIN: i64 = i8::MIN as i64;
    const MAX: i64 = i8::MAX as i64;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as i8
    }
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v as i8
    }
    #[inline(always)]
    fn to_i32(self) -> i32 {
        i32::from(self)
    }
}

impl Narrow for i16 {
    const MIN: i64 = i16::MIN as i64;
    const MAX: i64 = i16::MAX as i64;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as i16
    }
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v as i16
    }
    #[inline(always)]
    fn to_i32(self) -> i32 {
        i32::from(self)
    }
}

/// The quantized result and what the caller needs to know about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantized {
    /// Smallest integer written (`i64::MAX` when nothing was written).
    pub min: i64,
    /// Largest integer written (`i64::MIN` when nothing was written).
    pub max: i64,
    /// Some rescaled value was NaN: the integers are to be discarded (the caller takes the
    /// unfused path, which reports it).
    pub nan: bool,
}

/// Results rescaled per run before quantizing (a stack buffer; runs are cut to this).
const RUN: usize = 64;

impl Requant {
    /// `Error::InvalidArgument` unless the clip bounds are integers within `O`.
    fn check<O: Narrow>(&self) -> Result<()> {
        let ok = |b: f64| b.fract() == 0.0 && b >= O::MIN as f64 && b <= O::MAX as f64;
        if !(ok(self.lo) && ok(self.hi) && self.lo <= self.hi) {
            return Err(Error::InvalidArgument(format!(
                "requantize: the clip bounds [{}, {}] must be integers within [{}, {}] of the \
                 output type",
                self.lo,
                self.hi,
                O::MIN,
                O::MAX
            )));
        }
        Ok(())
    }

    /// `q` of one rescaled value (see the module docs).
    #[inline(always)]
    fn one(&self, v: f64) -> f64 {
        clip((v / self.scale + self.zero_point).rint(), self.lo, self.hi)
    }
}

/// The shared state of one kernel call: the extremes and flags of every run (all its runs
/// take the output quantizer given to [`Sink::new`]).
struct Sink {
    min: AtomicI64,
    max: AtomicI64,
    nan: AtomicBool,
    overflow: AtomicBool,
    /// The AVX-512 epilogue runs: the CPU has it, it is enabled, and it covers the call's
    /// output quantizer.
    wide: bool,
}

impl Sink {
    fn new(requant: &Requant) -> Sink {
        #[cfg(target_arch = "x86_64")]
        let wide = epilogue_avx2::available()
            && epilogue_avx512::available()
            && epilogue_avx512::covers(requant);
        #[cfg(not(target_arch = "x86_64"))]
        let wide = {
            let _ = requant;
            false
        };
        Sink {
            wide,
            min: AtomicI64::new(i64::MAX),
            max: AtomicI64::new(i64::MIN),
            nan: AtomicBool::new(false),
            overflow: AtomicBool::new(false),
        }
    }

    /// Rescale and quantize one run of accumulators into `dst` (`acc.len()` values), with
    /// the widest instruction set the CPU has (the same IEEE operations either way).
    #[inline]
    fn run<S: Operand, O: Narrow>(
        &self,
        acc: &[i64],
        dst: &mut [MaybeUninit<O>],
        rescale: &Rescale<'_>,
        operands: (S, S, Option<S>),
        requant: &Requant,
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.run_vector(acc, dst, rescale, operands, requant) {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            let stats = unsafe { run_avx2(acc, dst, rescale, operands, requant) };
            return self.record(stats);
        }
        self.record(run_body(acc, dst, rescale, operands, requant))
    }

    /// Run the widest vector epilogue the CPU has and the call allows (AVX-512 where
    /// `wide`, else AVX2); false when there is none and the caller runs a scalar one.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn run_vector<I: epilogue_avx2::Accumulator, S: Operand, O: Narrow>(
        &self,
        acc: &[I],
        dst: &mut [MaybeUninit<O>],
        rescale: &Rescale<'_>,
        operands: (S, S, Option<S>),
        requant: &Requant,
    ) -> bool {
        let stats = if self.wide {
            // SAFETY: `wide` holds only where the CPU has AVX-512 and the epilogue covers
            // the call's quantizer.
            unsafe { epilogue_avx512::run(acc, dst, rescale, operands, requant) }
        } else if epilogue_avx2::available() {
            // SAFETY: the CPU supports AVX2 (`available` checks it).
            unsafe { epilogue_avx2::run(acc, dst, rescale, operands, requant) }
        } else {
            return false;
        };
        self.record(stats);
        true
    }

    /// [`Sink::run`] on int32 accumulators: the vector epilogue reads them as they are,
    /// the scalar one widens them into `wide` first (the same integers either way).
    #[inline]
    fn run_i32<S: Operand, O: Narrow>(
        &self,
        acc: &[i32],
        wide: &mut Vec<i64>,
        dst: &mut [MaybeUninit<O>],
        rescale: &Rescale<'_>,
        operands: (S, S, Option<S>),
        requant: &Requant,
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.run_vector(acc, dst, rescale, operands, requant) {
            return;
        }
        wide.clear();
        wide.extend(acc.iter().map(|&v| i64::from(v)));
        self.run(wide, dst, rescale, operands, requant);
    }

    /// One whole output row (the call's operands as they are) through the float32 screen
    /// where the call has one, the columns it leaves (or the whole row, without one) going
    /// to `each(acc, dst, operands)`, the float64 epilogue: the same integers either way.
    #[inline]
    fn screened<I: Sixteen, O: Narrow>(
        &self,
        screen: Option<&Screen>,
        acc: &[I],
        dst: &mut [MaybeUninit<O>],
        rescale: &Rescale<'_>,
        mut each: impl FnMut(&[I], &mut [MaybeUninit<O>], Operands<'_>),
    ) {
        #[cfg(target_arch = "x86_64")]
        if let Some(screen) = screen {
            let (lo, hi) = screen.row(acc, dst, |from, to, dst| {
                let operands = (
                    &rescale.sub[from..],
                    &rescale.mul[from..],
                    rescale.add.map(|a| &a[from..]),
                );
                each(&acc[from..to], &mut dst[from..to], operands);
            });
            return self.merge(i64::from(lo), i64::from(hi));
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = screen;
        each(acc, dst, (rescale.sub, rescale.mul, rescale.add));
    }

    /// Take the stats of one run into the shared ones.
    #[inline]
    fn record(&self, stats: Stats) {
        if stats.nan {
            self.nan.store(true, Ordering::Relaxed);
        }
        if stats.over {
            self.overflow.store(true, Ordering::Relaxed);
        }
        self.merge(stats.lo, stats.hi);
    }

    /// Take the extremes `lo`, `hi` of some written integers into the shared ones.
    #[inline]
    fn merge(&self, lo: i64, hi: i64) {
        // read first: once the extremes are found the shared line is only read, never
        // written, so the threads do not take it from each other
        if lo <= hi && lo < self.min.load(Ordering::Relaxed) {
            self.min.fetch_min(lo, Ordering::Relaxed);
        }
        if lo <= hi && hi > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(hi, Ordering::Relaxed);
        }
    }

    fn finish(self, lsbs: i64) -> Result<Quantized> {
        if self.overflow.load(Ordering::Relaxed) {
            return Err(Error::Overflow(format!(
                "round_bit_pattern: rounding an accumulator to a multiple of 2^{lsbs} leaves \
                 int64"
            )));
        }
        Ok(Quantized {
            min: self.min.into_inner(),
            max: self.max.into_inner(),
            nan: self.nan.into_inner(),
        })
    }
}

/// What one run of the epilogue found: the extremes of the integers it wrote
/// (`i64::MAX`, `i64::MIN` when none), whether some value was NaN and whether some
/// round_bit_pattern left int64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stats {
    pub lo: i64,
    pub hi: i64,
    pub nan: bool,
    pub over: bool,
}

impl Stats {
    pub(crate) const EMPTY: Stats = Stats {
        lo: i64::MAX,
        hi: i64::MIN,
        nan: false,
        over: false,
    };

    /// The stats of two runs together.
    #[inline]
    pub(crate) fn join(self, o: Stats) -> Stats {
        Stats {
            lo: self.lo.min(o.lo),
            hi: self.hi.max(o.hi),
            nan: self.nan | o.nan,
            over: self.over | o.over,
        }
    }
}

/// [`run_body`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2<S: Operand, O: Narrow>(
    acc: &[i64],
    dst: &mut [MaybeUninit<O>],
    rescale: &Rescale<'_>,
    operands: (S, S, Option<S>),
    requant: &Requant,
) -> Stats {
    run_body(acc, dst, rescale, operands, requant)
}

/// The portable epilogue: `rescale_run` then [`quantize_run`] per run of [`RUN`] values
/// (the definition the vector epilogue is tested against, and its fallback).
#[inline(always)]
pub(crate) fn run_body<S: Operand, O: Narrow>(
    acc: &[i64],
    dst: &mut [MaybeUninit<O>],
    rescale: &Rescale<'_>,
    (sub, mul, add): (S, S, Option<S>),
    requant: &Requant,
) -> Stats {
    let mut buffer = [MaybeUninit::<f64>::uninit(); RUN];
    let mut values = [0.0f64; RUN];
    let mut stats = Stats::EMPTY;
    let n = acc.len().min(dst.len());
    for start in (0..n).step_by(RUN) {
        let len = RUN.min(n - start);
        let part = &mut buffer[..len];
        stats.over |= rescale_run(
            &acc[start..start + len],
            part,
            rescale.lsbs,
            rescale.offset,
            sub.skip(start),
            mul.skip(start),
            add.map(|a| a.skip(start)),
        );
        for (v, p) in values.iter_mut().zip(part.iter()) {
            // SAFETY: rescale_run wrote the `len` values of `part`.
            *v = unsafe { p.assume_init() };
        }
        let (l, h, bad) = quantize_run(&mut values[..len], &mut dst[start..start + len], requant);
        stats.lo = stats.lo.min(l);
        stats.hi = stats.hi.max(h);
        stats.nan |= bad;
    }
    stats
}

/// Quantize `values` into `dst` (see [`Requant::one`]); returns the min and max of the
/// integers and whether some value was NaN (its integer is then 0, to be discarded).
///
/// Written as separate element-wise loops and integer reductions so that they vectorize.
#[inline(always)]
fn quantize_run<O: Narrow>(
    values: &mut [f64],
    dst: &mut [MaybeUninit<O>],
    requant: &Requant,
) -> (i64, i64, bool) {
    let mut ints = [0i32; RUN];
    let ints = &mut ints[..values.len().min(RUN)];
    let mut nans = 0u32;
    for (v, i) in values.iter_mut().zip(ints.iter_mut()) {
        let q = requant.one(*v);
        let bad = q.is_nan();
        nans += u32::from(bad);
        let c = if bad { 0.0 } else { q };
        // SAFETY: c is 0 or a value clipped to [lo, hi], integers within O (checked by
        // `Requant::check`), so it is finite and fits i32.
        *i = unsafe { c.to_int_unchecked::<i32>() };
    }
    let (mut lo, mut hi) = (i32::MAX, i32::MIN);
    for &i in ints.iter() {
        lo = lo.min(i);
        hi = hi.max(i);
    }
    for (d, &i) in dst.iter_mut().zip(ints.iter()) {
        d.write(O::from_i32(i));
    }
    (i64::from(lo), i64::from(hi), nans > 0)
}

/// `matmul_rescale_into` then the output quantizer, into `out` (C order, (batch, M, N)).
///
/// Errors: those of `matmul_rescale_into`, and `InvalidArgument` for clip bounds that are not
/// integers within `O`.
pub fn matmul_rescale_quant_into<A: Lhs, O: Narrow>(
    a: ArrayView3<'_, A>,
    w: ArrayView3<'_, i64>,
    z_w: i64,
    rescale: &Rescale<'_>,
    requant: &Requant,
    out: &mut [MaybeUninit<O>],
) -> Result<Quantized> {
    let [_, _, n] = matmul_shape(a.dim(), w.dim())?;
    rescale.check(n, "matmul rescale: the per-column", "columns")?;
    requant.check::<O>()?;
    let sink = Sink::new(requant);
    let rows = Rows {
        sink: &sink,
        rescale,
        requant,
        screen: Screen::new(rescale, requant, n),
    };
    matmul_map_into_as(a, w, z_w, out, rows)?;
    sink.finish(rescale.lsbs)
}

/// The epilogue of [`matmul_rescale_quant_into`] per output row: int64 accumulators, or
/// the int32 ones as they are when the vector epilogue reads them.
struct Rows<'a> {
    sink: &'a Sink,
    rescale: &'a Rescale<'a>,
    requant: &'a Requant,
    screen: Option<Screen>,
}

impl<O: Narrow> RowEpilogue<O> for Rows<'_> {
    #[inline]
    fn row(&self, acc: &[i64], dst: &mut [MaybeUninit<O>]) {
        let (sink, rescale, requant) = (self.sink, self.rescale, self.requant);
        sink.screened(self.screen.as_ref(), acc, dst, rescale, |a, d, operands| {
            sink.run(a, d, rescale, operands, requant)
        });
    }

    fn reads_i32(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            epilogue_avx2::available()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    #[inline]
    fn row_i32(&self, acc: &[i32], dst: &mut [MaybeUninit<O>]) {
        let mut wide = Vec::new(); // used only without the vector epilogue
        let (sink, rescale, requant) = (self.sink, self.rescale, self.requant);
        sink.screened(self.screen.as_ref(), acc, dst, rescale, |a, d, operands| {
            sink.run_i32(a, &mut wide, d, rescale, operands, requant)
        });
    }
}

/// The epilogue of [`matmul_rescale_quant_into`] applied to accumulators computed earlier:
/// `acc` (M, N) holds the exact values of `a @ (w − z_w)` (as int32, e.g. kept by
/// `kernels::float::accfilter`), and `out` (C order, (M, N)) receives the very integers the
/// fused kernel writes for that product, with the same min, max and NaN flag (the same
/// [`Sink`] epilogue runs on the same integers; the vector one reads the int32 rows as they
/// are, the scalar one widens each row first).
///
/// Errors: `Shape` when `out` or the per-column operands do not fit, and those of the fused
/// kernel's epilogue (clip bounds, round_bit_pattern overflow).
pub fn acc_rescale_quant_into<O: Narrow>(
    acc: ArrayView2<'_, i32>,
    rescale: &Rescale<'_>,
    requant: &Requant,
    out: &mut [MaybeUninit<O>],
) -> Result<Quantized> {
    let (m, n) = acc.dim();
    if out.len() != m * n {
        return Err(Error::Shape(format!(
            "acc rescale: the output buffer holds {} values, the result needs {}",
            out.len(),
            m * n
        )));
    }
    rescale.check(n, "acc rescale: the per-column", "columns")?;
    requant.check::<O>()?;
    let sink = Sink::new(requant);
    let screen = Screen::new(rescale, requant, n);
    if n > 0 {
        let acc = acc.as_standard_layout();
        let Some(flat) = acc.as_slice() else {
            return Err(Error::Shape("acc rescale: acc is not contiguous".into()));
        };
        out.par_chunks_mut(BLOCK_ROWS * n)
            .zip(flat.par_chunks(BLOCK_ROWS * n))
            .for_each(|(dst, src)| {
                let mut wide = Vec::new();
                for (d_row, s_row) in dst.chunks_exact_mut(n).zip(src.chunks_exact(n)) {
                    sink.screened(screen.as_ref(), s_row, d_row, rescale, |a, d, operands| {
                        sink.run_i32(a, &mut wide, d, rescale, operands, requant)
                    });
                }
            });
    }
    sink.finish(rescale.lsbs)
}

/// `conv_rescale_into` then the output quantizer, into `out` (C order, (N, O, OH, OW)); the
/// input may be any integer type of `ConvInput` (the same integers as its int64 copy).
///
/// Errors: those of `conv_rescale_into`, and `InvalidArgument` for clip bounds that are not
/// integers within `O`.
#[allow(clippy::too_many_arguments)]
pub fn conv_rescale_quant_into<X: ConvInput, O: Narrow>(
    x: ArrayView4<'_, X>,
    w: ArrayView4<'_, i64>,
    z_w: i64,
    group: usize,
    geom: &Geometry,
    rescale: &Rescale<'_>,
    requant: &Requant,
    out: &mut [MaybeUninit<O>],
) -> Result<Quantized> {
    let [_, o, oh, ow] = conv2d_shape(x.dim(), w.dim(), group, geom)?;
    rescale.check(o, "conv rescale: the per-channel", "channels")?;
    requant.check::<O>()?;
    let sink = Sink::new(requant);
    let plane = (oh * ow).max(1);
    // The tables pay against the AVX2 and scalar epilogues; the AVX-512 one, called once per
    // run of planes, took 0.75-0.80x their time on the benchmark CNN's first Conv.
    let tables = if sink.wide {
        None
    } else {
        ChannelTables::<O>::build(x, w, z_w, geom, rescale, requant, out.len())
    };
    let spread = if tables.is_none() {
        Spread::new(rescale, o, plane)
    } else {
        None
    };
    let (sub, mul, add) = (rescale.sub, rescale.mul, rescale.add);
    conv2d_map_into(x, w, z_w, group, geom, out, |c, acc, dst| {
        if let Some(spread) = &spread {
            // a run of several planes is one epilogue call with per-element operands
            let r = c * plane..c * plane + acc.len();
            let add = spread.add.as_deref().map(|a| &a[r.clone()]);
            let operands = (&spread.sub[r.clone()], &spread.mul[r], add);
            return sink.run(acc, dst, rescale, operands, requant);
        }
        // `c` is the first channel of the run of whole planes (c + i < o), so the
        // per-channel lookups are in range
        for (i, (a, d)) in acc.chunks(plane).zip(dst.chunks_mut(plane)).enumerate() {
            let ch = c + i;
            if !tables.as_ref().is_some_and(|t| t.write(ch, a, d, &sink)) {
                let operands = (sub[ch], mul[ch], add.map(|v| v[ch]));
                sink.run(a, d, rescale, operands, requant);
            }
        }
    })?;
    sink.finish(rescale.lsbs)
}

/// Per-channel operands at most this many elements long once spread over their planes.
const SPREAD_ELEMENTS: usize = 1 << 16;

/// The conv's per-channel rescale operands, each value repeated over its channel's plane, so
/// that the accumulators of whole planes of consecutive channels (what the direct conv hands
/// over for one image) take one epilogue call instead of one per plane: small planes (16 or
/// 64 outputs on the benchmark CNN) made the per-call work of the epilogue and its shared
/// extremes a large part of the time. The same value reaches every element either way.
struct Spread {
    sub: Vec<f64>,
    mul: Vec<f64>,
    add: Option<Vec<f64>>,
}

impl Spread {
    /// None when the spread operands would be longer than [`SPREAD_ELEMENTS`].
    fn new(rescale: &Rescale<'_>, channels: usize, plane: usize) -> Option<Spread> {
        if channels.checked_mul(plane)? > SPREAD_ELEMENTS {
            return None;
        }
        let spread = |v: &[f64]| -> Vec<f64> {
            v[..channels]
                .iter()
                .flat_map(|&x| std::iter::repeat_n(x, plane))
                .collect()
        };
        Some(Spread {
            sub: spread(rescale.sub),
            mul: spread(rescale.mul),
            add: rescale.add.map(spread),
        })
    }
}

/// Total table entries at most (memory), and at most this fraction of the outputs (the
/// tables must cost less than the outputs they replace).
const TABLE_ENTRIES: i128 = 1 << 22;
const TABLE_SHARE: i128 = 8;

/// Per output channel, the quantized integer of every accumulator the conv can give: the
/// rescale + quantizer is a function of the integer accumulator alone (per channel), so
/// when the accumulators' range is much smaller than the output, a lookup replaces the
/// float64 steps of each output. Built with the same `Sink::run` on the range, so every
/// entry is the integer the direct evaluation writes.
struct ChannelTables<O> {
    /// Per channel: the smallest accumulator and the offset of its table in `values`.
    starts: Vec<(i64, usize, usize)>,
    values: Vec<O>,
}

impl<O: Narrow> ChannelTables<O> {
    /// The tables, or None when they would not pay (or some entry is NaN or its rounding
    /// leaves int64: the direct evaluation then reports it as before).
    #[allow(clippy::too_many_arguments)]
    fn build<X: ConvInput>(
        x: ArrayView4<'_, X>,
        w: ArrayView4<'_, i64>,
        z_w: i64,
        geom: &Geometry,
        rescale: &Rescale<'_>,
        requant: &Requant,
        outputs: usize,
    ) -> Option<ChannelTables<O>> {
        let o = w.dim().0;
        if o == 0 || outputs == 0 {
            return None;
        }
        // the accumulators' range per channel from the padded input's range: a quick
        // estimate first (bounded by the whole weight range), then the exact per-channel one
        let (mut xlo, mut xhi) = X::range(x);
        let (padded, extended) = geom.pads_with();
        if padded {
            xlo = xlo.min(geom.pad_value);
            xhi = xhi.max(geom.pad_value);
        }
        if extended {
            xlo = xlo.min(0);
            xhi = xhi.max(0);
        }
        let (xlo, xhi) = (i128::from(xlo), i128::from(xhi));
        let mut ranges = Vec::with_capacity(o);
        let mut total: i128 = 0;
        let w = w.as_standard_layout();
        let per = w.len() / o;
        for row in w.as_slice()?.chunks_exact(per.max(1)) {
            let (mut lo, mut hi) = (0i128, 0i128);
            for &v in row {
                let c = i128::from(v) - i128::from(z_w);
                lo += (xlo * c).min(xhi * c);
                hi += (xlo * c).max(xhi * c);
            }
            total += hi - lo + 1;
            if total > TABLE_ENTRIES || total * TABLE_SHARE > outputs as i128 {
                return None;
            }
            // within int64: the conv's own bound check passed (or the conv fails anyway)
            ranges.push((i64::try_from(lo).ok()?, i64::try_from(hi).ok()?));
        }
        let tsink = Sink::new(requant);
        let mut values = Vec::with_capacity(total as usize);
        let mut starts = Vec::with_capacity(o);
        let mut ramp = Vec::new();
        let mut slots = Vec::new();
        for (c, &(lo, hi)) in ranges.iter().enumerate() {
            ramp.clear();
            ramp.extend(lo..=hi);
            slots.clear();
            slots.resize(ramp.len(), MaybeUninit::<O>::uninit());
            let (sub, mul, add) = (rescale.sub, rescale.mul, rescale.add);
            tsink.run(
                &ramp,
                &mut slots,
                rescale,
                (*sub.get(c)?, *mul.get(c)?, add.map(|a| a[c])),
                requant,
            );
            starts.push((lo, values.len(), ramp.len()));
            // SAFETY: `Sink::run` wrote every slot of the ramp.
            values.extend(slots.iter().map(|s| unsafe { s.assume_init() }));
        }
        let built = tsink.finish(rescale.lsbs).ok()?;
        if built.nan {
            return None;
        }
        Some(ChannelTables { starts, values })
    }

    /// Write the integers of channel `c`'s accumulators `acc` into `dst` and take their
    /// extremes into `sink`; false (nothing written) if an accumulator lies outside the
    /// table (never, by the bound; the caller then evaluates directly).
    #[inline]
    fn write(&self, c: usize, acc: &[i64], dst: &mut [MaybeUninit<O>], sink: &Sink) -> bool {
        let Some(&(lo, at, len)) = self.starts.get(c) else {
            return false;
        };
        let table = &self.values[at..at + len];
        if acc
            .iter()
            .any(|&v| (v.wrapping_sub(lo) as u64) >= len as u64)
        {
            return false;
        }
        let (mut min, mut max) = (i32::MAX, i32::MIN);
        for (d, &v) in dst.iter_mut().zip(acc) {
            let q = table[v.wrapping_sub(lo) as usize];
            let i = q.to_i32();
            min = min.min(i);
            max = max.max(i);
            d.write(q);
        }
        sink.merge(i64::from(min), i64::from(max));
        true
    }
}

#[cfg(test)]
#[path = "requant_tests.rs"]
mod tests;
