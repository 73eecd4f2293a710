//! Integer 2-D convolution (NCHW × O·C/g·kH·kW, groups, strides, integer padding) with the
//! zero-point correction of docs/contract.md §3.2: conv(x_pad,
//! w) − z_w·conv(x_pad, 1) = conv(x_pad, w − z_w). Evaluated as im2col + an exact product (see
//! `exact`).

use ndarray::{Array2, Array4, ArrayView4, CowArray, Ix4};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::integer::direct::{self, Direct};
use crate::kernels::integer::exact::{
    check_bound, describe, max_abs, range, range_of, Exact, Strategy,
};
use crate::kernels::integer::gemm::Allowed;
use crate::kernels::integer::madd::{self, PackedB16};
use crate::kernels::integer::vnni::{self, PackedB};

/// Columns of one im2col block; a fixed number, so chunking never depends on threads.
const BLOCK_COLS: usize = 4096;

/// Columns of one im2col block of the I16 strategy: its packed block (2 bytes per value)
/// stays in the L2 cache while it is built and multiplied.
const I16_BLOCK_COLS: usize = 1024;

/// Output channels per microkernel tile of the U8I8 strategy.
const CONV_ROWS: usize = 4;

/// Up to this many output channels per group the direct conv (when its f32 sums are exact)
/// runs before the U8I8 strategy.
const DIRECT_BEFORE_U8I8_CHANNELS: usize = 32;

/// An integer element type the conv reads its input in: int8 to int64, never widened by the
/// direct conv (the other paths widen a narrow input to int64 first).
pub trait ConvInput: Copy + Ord + Send + Sync + Into<i64> + 'static {
    /// The value as i64 (exact).
    #[inline(always)]
    fn to_i64(self) -> i64 {
        self.into()
    }

    /// (min, max) of the values, (0, 0) when there are none (vectorised, on every core).
    fn range(x: ArrayView4<'_, Self>) -> (i64, i64) {
        range_of(x)
    }

    /// The values as int64 (borrowed when they already are).
    fn widen(x: ArrayView4<'_, Self>) -> CowArray<'_, i64, Ix4> {
        CowArray::from(x.mapv(Self::to_i64))
    }
}

impl ConvInput for i8 {}
impl ConvInput for i16 {}
impl ConvInput for i32 {}

impl ConvInput for i64 {
    fn widen(x: ArrayView4<'_, i64>) -> CowArray<'_, i64, Ix4> {
        CowArray::from(x)
    }
}

/// Whether the direct conv (`direct`) may replace the im2col F32 path, and how it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirectUse {
    Off,
    /// With the SIMD microkernel where the CPU has it.
    On,
    /// With the portable loop only (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Portable,
}

/// Window geometry of a conv or pool over a padded input.
///
/// The input is first padded with `pad_value` by `pads` = [h_begin, w_begin, h_end, w_end]
/// (ONNX order), then with 0 by `extra` = [h_end, w_end] (the ceil_mode extension of
/// AveragePool). Dilation is 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub pads: [usize; 4],
    pub extra: [usize; 2],
    pub pad_value: i64,
}

/// What a cell of the padded input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// An input element (row, column).
    Input(usize, usize),
    /// The pad value.
    Pad,
    /// A 0 of the ceil extension.
    Zero,
}

impl Geometry {
    pub fn new(
        kernel: [usize; 2],
        strides: [usize; 2],
        pads: [usize; 4],
        extra: [usize; 2],
        pad_value: i64,
    ) -> Geometry {
        Geometry {
            kernel,
            strides,
            pads,
            extra,
            pad_value,
        }
    }

    /// Check that the weights' kernel matches the geometry's.
    pub fn check_kernel(&self, kernel: [usize; 2]) -> Result<()> {
        if kernel != self.kernel {
            return Err(Error::Shape(format!(
                "the weights have a {}x{} kernel but kernel_shape is {:?}",
                kernel[0], kernel[1], self.kernel
            )));
        }
        Ok(())
    }

    /// Output (H, W) for an input of (H, W) = `in_hw`.
    pub fn output_hw(&self, in_hw: [usize; 2]) -> Result<[usize; 2]> {
        let mut out = [0; 2];
        for axis in 0..2 {
            let (k, s) = (self.kernel[axis], self.strides[axis]);
            if k == 0 || s == 0 {
                return Err(Error::InvalidArgument(format!(
                    "kernel_shape {:?} and strides {:?} must be positive",
                    self.kernel, self.strides
                )));
            }
            let padded = in_hw[axis] + self.pads[axis] + self.pads[axis + 2] + self.extra[axis];
            if padded < k {
                return Err(Error::Shape(format!(
                    "the padded input ({padded} along axis {}) is smaller than the kernel ({k})",
                    axis + 2
                )));
            }
            out[axis] = (padded - k) / s + 1;
        }
        Ok(out)
    }

    /// Classify one padded coordinate along `axis` of an input of size `size`.
    fn axis_cell(&self, axis: usize, idx: usize, size: usize) -> Option<Option<usize>> {
        let begin = self.pads[axis];
        if idx < begin {
            return Some(None);
        }
        let i = idx - begin;
        if i < size {
            Some(Some(i))
        } else if i < size + self.pads[axis + 2] {
            Some(None)
        } else {
            None
        }
    }

    /// The cell read by kernel tap (i, j) of output position (y, x).
    pub fn cell(&self, in_hw: [usize; 2], y: usize, x: usize, i: usize, j: usize) -> Cell {
        let row = self.axis_cell(0, y * self.strides[0] + i, in_hw[0]);
        let col = self.axis_cell(1, x * self.strides[1] + j, in_hw[1]);
        match (row, col) {
            (None, _) | (_, None) => Cell::Zero,
            (Some(Some(r)), Some(Some(c))) => Cell::Input(r, c),
            _ => Cell::Pad,
        }
    }

    /// Whether any cell can be padding (pad value) or extension (0).
    pub(crate) fn pads_with(&self) -> (bool, bool) {
        (
            self.pads.iter().any(|&p| p > 0),
            self.extra.iter().any(|&p| p > 0),
        )
    }
}

/// The output shape (N, O, OH, OW) of `conv2d`, or the shape error.
pub fn conv2d_shape(
    x: (usize, usize, usize, usize),
    w: (usize, usize, usize, usize),
    group: usize,
    geom: &Geometry,
) -> Result<[usize; 4]> {
    let (n, c, h, wd) = x;
    let (o, cg, kh, kw) = w;
    geom.check_kernel([kh, kw])?;
    if group == 0 || c != cg * group || o % group != 0 {
        return Err(Error::Shape(format!(
            "conv with group={group}: the input has {c} channels and the weights {o}x{cg}; \
             need channels = group x weight dim 1 and output channels divisible by group"
        )));
    }
    let [oh, ow] = geom.output_hw([h, wd])?;
    Ok([n, o, oh, ow])
}

/// Check that a caller's output buffer has the size of `dims`.
fn check_out<O>(out: &[O], dims: &[usize]) -> Result<()> {
    let len: usize = dims.iter().product();
    if out.len() != len {
        return Err(Error::Shape(format!(
            "the output buffer holds {} values, the result {dims:?} needs {len}",
            out.len()
        )));
    }
    Ok(())
}

/// acc = conv(x_pad, w − z_w) for x (N, C, H, W) and w (O, C/group, kh, kw); (N, O, OH, OW).
///
/// Returns `Error::Overflow` if C/group·kh·kw · max|x_pad| · max|w − z_w| exceeds int64.
pub fn conv2d(
    x: ArrayView4<'_, i64>,
    w: ArrayView4<'_, i64>,
    z_w: i64,
    group: usize,
    geom: &Geometry,
) -> Result<Array4<i64>> {
    let dims = conv2d_shape(x.dim(), w.dim(), group, geom)?;
    let mut out = Array4::<i64>::zeros(dims);
    conv2d_into(
        x,
        w,
        z_w,
        group,
        geom,
        out.as_slice_mut().unwrap_or_default(),
    )?;
    Ok(out)
}

/// `conv2d` writing into `out`, a C-order buffer of the size `conv2d_shape` gives.
pub fn conv2d_into(
    x: ArrayView4<'_, i64>,
    w: ArrayView4<'_, i64>,
    z_w: i64,
    group: usize,
    geom: &Geometry,
    out: &mut [i64],
) -> Result<()> {
    conv2d_map_into(x, w, z_w, group, geom, out, |_, acc, dst| {
        dst.copy_from_slice(acc);
    })
}

/// `conv2d` handing the finished output planes to `sink(channel, acc, dst)`, with `acc` the
/// accumulators of one or more whole OH·OW planes of one image, of consecutive channels from
/// `channel` on, and `dst` the matching part of `out` (C order, (N, O, OH, OW)); `sink` must
/// write all of `dst`. Planes go to the sink in any order, each once, and their values do
/// not depend on the thread count.
pub fn conv2d_map_into<X: ConvInput, O: Send, F>(
    x: ArrayView4<'_, X>,
    w: ArrayView4<'_, i64>,
    z_w: i64,
    group: usize,
    geom: &Geometry,
    out: &mut [O],
    sink: F,
) -> Result<()>
where
    F: Fn(usize, &[i64], &mut [O]) + Sync,
{
    let allowed = Allowed {
        vnni: vnni::available(),
        // Not planned by the conv (see `map_into_with`).
        maddubs: false,
        i16: madd::conv_available(),
    };
    let direct = if direct::enabled() {
        DirectUse::On
    } else {
        DirectUse::Off
    };
    map_into_with(x, w, z_w, group, geom, out, sink, allowed, direct)
}

/// The shift s = min x_pad of the U8I8 strategy if it applies to a conv over `ckk` taps of
/// x_pad in [x.0, x.1] and weights minus z_w in [c.0, c.1]: x_pad − s within [0, 255],
/// c within [−128, 127] (the weights are not shifted) and every sum within i32.
fn u8i8_shift(ckk: usize, x: (i64, i64), c: (i128, i128)) -> Option<i64> {
    let span = i128::from(x.1) - i128::from(x.0);
    if span > 255 || c.0 < -128 || c.1 > 127 {
        return None;
    }
    let bound = (ckk as u128) * (span as u128) * max_abs(c.0, c.1);
    (bound <= i32::MAX as u128).then_some(x.0)
}

/// `conv2d_map_into`, allowing only the SIMD integer strategies of `allowed` and the direct
/// conv as `direct` says.
#[allow(clippy::too_many_arguments)]
fn map_into_with<X: ConvInput, O: Send, F>(
    x: ArrayView4<'_, X>,
    w: ArrayView4<'_, i64>,
    z_w: i64,
    group: usize,
    geom: &Geometry,
    out: &mut [O],
    sink: F,
    allowed: Allowed,
    direct: DirectUse,
) -> Result<()>
where
    F: Fn(usize, &[i64], &mut [O]) + Sync,
{
    let [n, o, oh, ow] = conv2d_shape(x.dim(), w.dim(), group, geom)?;
    check_out(out, &[n, o, oh, ow])?;
    let (_, c, h, wd) = x.dim();
    let (_, cg, kh, kw) = w.dim();
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
    let (wlo, whi) = range(w.iter());
    let (clo, chi) = (
        i128::from(wlo) - i128::from(z_w),
        i128::from(whi) - i128::from(z_w),
    );
    let ckk = cg * kh * kw;
    check_bound(
        ckk,
        max_abs(xlo.into(), xhi.into()),
        max_abs(clo, chi),
        || {
            format!(
                "conv of the padded input {} with the weights minus z_w={z_w} {} over {ckk} terms",
                describe(xlo.into(), xhi.into()),
                describe(clo, chi)
            )
        },
    )?;
    // Centre the padded input on the middle of its range: conv(x_pad, c) =
    // conv(x_pad − s, c) + s·Σ_taps c. The centred product has the smaller bound (faster
    // exact strategy); the per-channel term is exact in wrapping i64 since the result fits.
    let middle = xlo + ((i128::from(xhi) - i128::from(xlo)) / 2) as i64;
    let centred = |s: i64| {
        (ckk as u128)
            .saturating_mul(max_abs(
                i128::from(xlo) - i128::from(s),
                i128::from(xhi) - i128::from(s),
            ))
            .saturating_mul(max_abs(clo, chi))
    };
    // The direct conv goes before U8I8 for few output channels per group: measured on AVX-512
    // VNNI, it took 0.5-0.9x the U8I8 time up to 32 channels and 1.0-1.3x from 48 (its
    // register tiles cover 8 or 16 channels; U8I8's im2col pays off over more of them).
    let direct_first = direct != DirectUse::Off
        && o / group.max(1) <= DIRECT_BEFORE_U8I8_CHANNELS
        && Strategy::for_bound(centred(middle)) == Strategy::F32;
    let u8i8 = if allowed.vnni && !direct_first {
        u8i8_shift(ckk, (xlo, xhi), (clo, chi))
    } else {
        None
    };
    let s = u8i8.unwrap_or(middle);
    let bound = centred(s);
    // The I16 strategy: x_pad − s and the weights minus z_w within i16, every sum within i32.
    let i16_fits = madd::fits_i16(
        i128::from(xlo) - i128::from(s),
        i128::from(xhi) - i128::from(s),
    ) && madd::fits_i16(clo, chi);
    let strategy = match u8i8 {
        Some(_) => Strategy::U8I8,
        None if direct_first => Strategy::F32,
        None if allowed.i16 && i16_fits && bound <= i32::MAX as u128 => Strategy::I16,
        None => Strategy::for_bound(bound),
    };
    let wc: Vec<i64> = w
        .as_standard_layout()
        .iter()
        .map(|&v| v.wrapping_sub(z_w))
        .collect();
    let dims = [n, c, h, wd, o, cg, oh, ow];
    if strategy == Strategy::F32 && direct != DirectUse::Off {
        let xs = x.as_standard_layout();
        let job = Direct {
            x: xs.as_slice().unwrap_or(&[]),
            w: &wc,
            shift: s,
            dims,
            group,
            geom,
            portable: direct == DirectUse::Portable,
        };
        job.run(out, &sink);
        return Ok(());
    }
    let wide = X::widen(x);
    let view = wide.view();
    let job = Job {
        shift: s,
        x: view.as_standard_layout(),
        w: wc,
        dims,
        group,
        geom,
    };
    match strategy {
        Strategy::F32 => job.run::<f32, O, F>(out, &sink),
        Strategy::F64 => job.run::<f64, O, F>(out, &sink),
        Strategy::I64 => job.run::<i64, O, F>(out, &sink),
        Strategy::U8I8 => job.run_u8i8(out, &sink),
        // The conv never plans U8I8Avx2 (its operands would fit the I16 strategy too).
        Strategy::I16 | Strategy::U8I8Avx2 { .. } => job.run_i16(out, &sink),
    }
    Ok(())
}

/// Per-axis lookup of the input index each (tap, output index) reads.
///
/// `rows[i·OH + y]` is the input row read by kernel row i at output row y, or `PAD` / `ZERO`;
/// `cols` likewise for columns. A cell is 0 if either axis says `ZERO`, else the pad value if
/// either says `PAD`, else the input element.
struct Taps {
    rows: Vec<isize>,
    cols: Vec<isize>,
    out: [usize; 2],
}

const PAD: isize = -1;
const ZERO: isize = -2;

impl Taps {
    fn new(geom: &Geometry, in_hw: [usize; 2], out: [usize; 2]) -> Taps {
        let table = |axis: usize| -> Vec<isize> {
            let (k, n) = (geom.kernel[axis], out[axis]);
            (0..k * n)
                .map(|t| {
                    let idx = (t % n) * geom.strides[axis] + t / n;
                    match geom.axis_cell(axis, idx, in_hw[axis]) {
                        Some(Some(i)) => i as isize,
                        Some(None) => PAD,
                        None => ZERO,
                    }
                })
                .collect()
        };
        Taps {
            rows: table(0),
            cols: table(1),
            out,
        }
    }

    /// Per tap (i, j) (row-major over the kernel), the OH·OW cells it reads, in output order:
    /// the index of the input element in its plane, or `PAD` / `ZERO` (as `fill_row`).
    fn gather(&self, kernel: [usize; 2], wd: usize) -> Vec<isize> {
        let [oh, ow] = self.out;
        let mut table = Vec::with_capacity(kernel[0] * kernel[1] * oh * ow);
        for i in 0..kernel[0] {
            for j in 0..kernel[1] {
                for y in 0..oh {
                    let r = self.rows[i * oh + y];
                    for &c in &self.cols[j * ow..(j + 1) * ow] {
                        table.push(if r == ZERO || c == ZERO {
                            ZERO
                        } else if r == PAD || c == PAD {
                            PAD
                        } else {
                            r * wd as isize + c
                        });
                    }
                }
            }
        }
        table
    }

    /// Write the OW values that tap (i, j) reads for output row y of one input plane.
    #[inline]
    fn fill_row<T: Exact>(
        &self,
        plane: &[i64],
        wd: usize,
        (i, j, y): (usize, usize, usize),
        fill: &Fill<T>,
        dst: &mut [T],
    ) {
        let [oh, ow] = self.out;
        let cols = &self.cols[j * ow..(j + 1) * ow];
        let r = self.rows[i * oh + y];
        if r == ZERO {
            dst.fill(fill.zero);
        } else if r == PAD {
            for (d, &c) in dst.iter_mut().zip(cols) {
                *d = if c == ZERO { fill.zero } else { fill.pad };
            }
        } else {
            let row = &plane[r as usize * wd..(r as usize + 1) * wd];
            for (d, &c) in dst.iter_mut().zip(cols) {
                *d = if c >= 0 {
                    T::from_i64(row[c as usize].wrapping_sub(fill.shift))
                } else if c == PAD {
                    fill.pad
                } else {
                    fill.zero
                };
            }
        }
    }
}

/// The values written for pad and ceil-extension cells, and the shift subtracted from
/// every input element (pad and zero already include it).
struct Fill<T> {
    pad: T,
    zero: T,
    shift: i64,
}

struct Job<'g> {
    /// Subtracted from every cell of the padded input (see `conv2d`).
    shift: i64,
    /// The input in C order (borrowed when it already is).
    x: CowArray<'g, i64, Ix4>,
    /// (O, C/g·kh·kw) row-major weights minus z_w (exact: the bound check passed).
    w: Vec<i64>,
    /// n, c, h, w, o, cg, oh, ow
    dims: [usize; 8],
    group: usize,
    geom: &'g Geometry,
}

impl Job<'_> {
    /// Hand every plane of `out` (N, O, OH, OW) to `sink` (see `conv2d_map_into`).
    fn run<T: Exact, O: Send, F>(&self, out: &mut [O], sink: &F)
    where
        F: Fn(usize, &[i64], &mut [O]) + Sync,
    {
        let [_, c, h, wd, o, cg, oh, ow] = self.dims;
        let (kh, kw) = (self.geom.kernel[0], self.geom.kernel[1]);
        let l = oh * ow;
        let ckk = cg * kh * kw;
        let og = o / self.group;
        if out.is_empty() {
            return;
        }
        let wt: Vec<T> = self.w.iter().map(|&v| T::from_i64(v)).collect();
        let imgs = (BLOCK_COLS / l).max(1);
        let xs = self.x.as_slice().unwrap_or(&[]);
        let plane = h * wd;
        let taps = Taps::new(self.geom, [h, wd], [oh, ow]);
        let fill = Fill {
            pad: T::from_i64(self.geom.pad_value.wrapping_sub(self.shift)),
            zero: T::from_i64(self.shift.wrapping_neg()),
            shift: self.shift,
        };
        // s·Σ_taps c per output channel.
        let corr: Vec<i64> = self
            .w
            .chunks_exact(ckk.max(1))
            .map(|row| {
                let sum = row.iter().fold(0i64, |a, &v| a.wrapping_add(v));
                self.shift.wrapping_mul(sum)
            })
            .collect();
        let gather = taps.gather([kh, kw], wd);
        out.par_chunks_mut(imgs * o * l)
            .enumerate()
            .for_each(|(chunk, dst)| {
                let first = chunk * imgs;
                let count = dst.len() / (o * l);
                let cols_n = count * l;
                let mut cols = vec![T::default(); ckk * cols_n];
                let mut tmp = vec![T::default(); og * cols_n];
                let mut acc = vec![0i64; l];
                for g in 0..self.group {
                    for (r, row) in cols.chunks_exact_mut(cols_n).enumerate() {
                        let (ch, tap) = (g * cg + r / (kh * kw), r % (kh * kw));
                        let cells = &gather[tap * l..(tap + 1) * l];
                        for (img, seg) in row.chunks_exact_mut(l).enumerate() {
                            let base = ((first + img) * c + ch) * plane;
                            let src = &xs[base..base + plane];
                            for (d, &cell) in seg.iter_mut().zip(cells) {
                                *d = if cell >= 0 {
                                    T::from_i64(src[cell as usize].wrapping_sub(fill.shift))
                                } else if cell == PAD {
                                    fill.pad
                                } else {
                                    fill.zero
                                };
                            }
                        }
                    }
                    T::gemm(og, ckk, cols_n, &wt[g * og * ckk..], &cols, &mut tmp);
                    for img in 0..count {
                        for oo in 0..og {
                            let d = (img * o + g * og + oo) * l;
                            let s = oo * cols_n + img * l;
                            let ct = corr.get(g * og + oo).copied().unwrap_or(0);
                            for (av, &sv) in acc.iter_mut().zip(&tmp[s..s + l]) {
                                *av = sv.to_i64().wrapping_add(ct);
                            }
                            sink(g * og + oo, &acc, &mut dst[d..d + l]);
                        }
                    }
                }
            });
    }

    /// `run` for the U8I8 strategy: the weights as i8 rows (tiles of `CONV_ROWS`), the
    /// im2col blocks as u8 packed for `vpdpbusd` (x_pad − s lies in [0, 255]).
    fn run_u8i8<O: Send, F>(&self, out: &mut [O], sink: &F)
    where
        F: Fn(usize, &[i64], &mut [O]) + Sync,
    {
        let [_, c, h, wd, o, cg, oh, ow] = self.dims;
        let (kh, kw) = (self.geom.kernel[0], self.geom.kernel[1]);
        let l = oh * ow;
        let ckk = cg * kh * kw;
        let og = o / self.group;
        if out.is_empty() {
            return;
        }
        let (kp, rows) = (vnni::padded_k(ckk), og.div_ceil(CONV_ROWS) * CONV_ROWS);
        // Per group, `rows` rows of K rounded up to 4 (zero-padded) of the weights' bytes
        // (c lies in [−128, 127] under this strategy: the bytes are its two's complement).
        let mut wbytes = vec![0u8; self.group * rows * kp];
        for (oc, wrow) in self.w.chunks_exact(ckk.max(1)).take(o).enumerate() {
            let (g, oo) = (oc / og.max(1), oc % og.max(1));
            let dst = &mut wbytes[(g * rows + oo) * kp..(g * rows + oo) * kp + ckk];
            for (d, &v) in dst.iter_mut().zip(wrow) {
                *d = v as u8;
            }
        }
        let imgs = (BLOCK_COLS / l).max(1);
        let xs = self.x.as_slice().unwrap_or(&[]);
        let plane = h * wd;
        let taps = Taps::new(self.geom, [h, wd], [oh, ow]);
        let fill = Fill {
            pad: self.geom.pad_value.wrapping_sub(self.shift),
            zero: self.shift.wrapping_neg(),
            shift: self.shift,
        };
        let corr: Vec<i64> = self
            .w
            .chunks_exact(ckk.max(1))
            .map(|row| {
                let sum = row.iter().fold(0i64, |a, &v| a.wrapping_add(v));
                self.shift.wrapping_mul(sum)
            })
            .collect();
        out.par_chunks_mut(imgs * o * l)
            .enumerate()
            .for_each(|(chunk, dst)| {
                let first = chunk * imgs;
                let count = dst.len() / (o * l);
                let cols_n = count * l;
                let mut cols = PackedB::zeros(ckk, cols_n);
                let np = cols.padded_n();
                // The 4 im2col rows of one k group (rows past K stay 0).
                let mut quad = vec![0i64; 4 * cols_n];
                let mut tmp = vec![0i32; rows * np];
                let mut acc = vec![0i64; l];
                for g in 0..self.group {
                    for k0 in (0..ckk).step_by(4) {
                        let rows_k = (ckk - k0).min(4);
                        quad[rows_k * cols_n..].fill(0);
                        for (r, row) in (k0..k0 + rows_k).zip(quad.chunks_exact_mut(cols_n)) {
                            let (ch, tap) = (g * cg + r / (kh * kw), r % (kh * kw));
                            let (i, j) = (tap / kw, tap % kw);
                            for (img, seg) in row.chunks_exact_mut(l).enumerate() {
                                let base = ((first + img) * c + ch) * plane;
                                let src = &xs[base..base + plane];
                                for (y, d) in seg.chunks_exact_mut(ow).enumerate() {
                                    taps.fill_row(src, wd, (i, j, y), &fill, d);
                                }
                            }
                        }
                        let (q01, q23) = quad.split_at(2 * cols_n);
                        let ((q0, q1), (q2, q3)) = (q01.split_at(cols_n), q23.split_at(cols_n));
                        cols.put_group(k0 / 4, [q0, q1, q2, q3], |v| v as u8);
                    }
                    let wg = &wbytes[g * rows * kp..(g + 1) * rows * kp];
                    vnni::gemm::<CONV_ROWS, false>(rows, wg, &cols, &mut tmp);
                    for img in 0..count {
                        for oo in 0..og {
                            let d = (img * o + g * og + oo) * l;
                            let s = oo * np + img * l;
                            let ct = corr.get(g * og + oo).copied().unwrap_or(0);
                            for (av, &sv) in acc.iter_mut().zip(&tmp[s..s + l]) {
                                *av = i64::from(sv).wrapping_add(ct);
                            }
                            sink(g * og + oo, &acc, &mut dst[d..d + l]);
                        }
                    }
                }
            });
    }
}

impl Job<'_> {
    /// `run` for the I16 strategy: the weights as i16 rows (tiles of `madd::CONV_MR`), the
    /// im2col blocks gathered straight into the packed i16 layout (no im2col matrix).
    fn run_i16<O: Send, F>(&self, out: &mut [O], sink: &F)
    where
        F: Fn(usize, &[i64], &mut [O]) + Sync,
    {
        let [_, c, h, wd, o, cg, oh, ow] = self.dims;
        let (kh, kw) = (self.geom.kernel[0], self.geom.kernel[1]);
        let l = oh * ow;
        let ckk = cg * kh * kw;
        let og = o / self.group;
        if out.is_empty() {
            return;
        }
        let (kp, rows) = (
            madd::padded_k(ckk),
            og.div_ceil(madd::CONV_MR) * madd::CONV_MR,
        );
        // Per group, `rows` rows of K rounded up to 2 (zero-padded) of the weights minus z_w
        // (within i16 under this strategy, so the truncation is exact).
        let mut wrows = vec![0i16; self.group * rows * kp];
        for (oc, wrow) in self.w.chunks_exact(ckk.max(1)).take(o).enumerate() {
            let (g, oo) = (oc / og.max(1), oc % og.max(1));
            let dst = &mut wrows[(g * rows + oo) * kp..(g * rows + oo) * kp + ckk];
            for (d, &v) in dst.iter_mut().zip(wrow) {
                *d = v as i16;
            }
        }
        let imgs = (I16_BLOCK_COLS / l).max(1);
        let xs = self.x.as_slice().unwrap_or(&[]);
        let plane = h * wd;
        let taps = Taps::new(self.geom, [h, wd], [oh, ow]);
        let gather = taps.gather([kh, kw], wd);
        // x_pad − s lies in i16 under this strategy: pad and ceil cells shifted likewise.
        let pad = self.geom.pad_value.wrapping_sub(self.shift) as i16;
        let zero = self.shift.wrapping_neg() as i16;
        let shift = self.shift;
        let corr: Vec<i64> = self
            .w
            .chunks_exact(ckk.max(1))
            .map(|row| {
                let sum = row.iter().fold(0i64, |a, &v| a.wrapping_add(v));
                shift.wrapping_mul(sum)
            })
            .collect();
        // Per k row: the offset of its channel within a group's image and of its tap in
        // `gather`.
        let k_rows: Vec<(usize, usize)> = (0..ckk)
            .map(|r| ((r / (kh * kw)) * plane, (r % (kh * kw)) * l))
            .collect();
        out.par_chunks_mut(imgs * o * l)
            .enumerate()
            .for_each(|(chunk, dst)| {
                let first = chunk * imgs;
                let count = dst.len() / (o * l);
                let cols_n = count * l;
                let mut cols = PackedB16::zeros(ckk, cols_n);
                let np = cols.padded_n();
                let mut tmp = vec![0i32; rows * np];
                let mut acc = vec![0i64; l];
                let panel_len = kp * madd::PANEL;
                for g in 0..self.group {
                    let data = cols.data_mut();
                    for (r, &(ch_off, tap_off)) in k_rows.iter().enumerate() {
                        // Column j of k row r sits at panel j/8, pair r/2, lane j%8, slot r%2.
                        let base = (r / 2) * 2 * madd::PANEL + r % 2;
                        let cells = &gather[tap_off..tap_off + l];
                        let mut j = 0;
                        for img in 0..count {
                            let start = ((first + img) * c + g * cg) * plane + ch_off;
                            let src = &xs[start..start + plane];
                            for &at in cells {
                                let v = if at >= 0 {
                                    src[at as usize].wrapping_sub(shift) as i16
                                } else if at == PAD {
                                    pad
                                } else {
                                    zero
                                };
                                let slot =
                                    (j / madd::PANEL) * panel_len + base + 2 * (j % madd::PANEL);
                                data[slot] = v;
                                j += 1;
                            }
                        }
                    }
                    let wg = &wrows[g * rows * kp..(g + 1) * rows * kp];
                    madd::gemm::<{ madd::CONV_MR }>(rows, wg, &cols, &mut tmp);
                    for img in 0..count {
                        for oo in 0..og {
                            let d = (img * o + g * og + oo) * l;
                            let s = oo * np + img * l;
                            let ct = corr.get(g * og + oo).copied().unwrap_or(0);
                            for (av, &sv) in acc.iter_mut().zip(&tmp[s..s + l]) {
                                *av = i64::from(sv).wrapping_add(ct);
                            }
                            sink(g * og + oo, &acc, &mut dst[d..d + l]);
                        }
                    }
                }
            });
    }
}

/// The output shape (N, C, OH, OW) of the window kernels.
pub fn window_shape(x: (usize, usize, usize, usize), geom: &Geometry) -> Result<[usize; 4]> {
    let (n, c, h, wd) = x;
    let [oh, ow] = geom.output_hw([h, wd])?;
    Ok([n, c, oh, ow])
}

/// Reduce every kh×kw window of x_pad per channel with `combine`, starting from `init`,
/// into `out` (C order, the size `window_shape` gives).
fn window_reduce(
    x: ArrayView4<'_, i64>,
    geom: &Geometry,
    init: i64,
    combine: impl Fn(i64, i64) -> i64 + Sync,
    out: &mut [i64],
) -> Result<()> {
    let dims = window_shape(x.dim(), geom)?;
    check_out(out, &dims)?;
    let [_, _, oh, ow] = dims;
    let (_, _, h, wd) = x.dim();
    let x = x.as_standard_layout();
    let xs = x.as_slice().unwrap_or(&[]);
    let (kh, kw) = (geom.kernel[0], geom.kernel[1]);
    let taps = Taps::new(geom, [h, wd], [oh, ow]);
    let fill = Fill {
        pad: geom.pad_value,
        zero: 0,
        shift: 0,
    };
    if !out.is_empty() {
        let plane = h * wd;
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(p, dst)| {
                dst.fill(init);
                let src = &xs[p * plane..(p + 1) * plane];
                let mut vals = vec![0i64; ow];
                for (y, acc) in dst.chunks_exact_mut(ow).enumerate() {
                    for i in 0..kh {
                        for j in 0..kw {
                            taps.fill_row(src, wd, (i, j, y), &fill, &mut vals);
                            for (a, &v) in acc.iter_mut().zip(&vals) {
                                *a = combine(*a, v);
                            }
                        }
                    }
                }
            });
    }
    Ok(())
}

/// Window sums Σ x_pad over each kh×kw window, per channel (AveragePool, docs/contract.md §3.6).
///
/// Returns `Error::Overflow` if kh·kw·max|x_pad| exceeds int64.
pub fn window_sum(x: ArrayView4<'_, i64>, geom: &Geometry) -> Result<Array4<i64>> {
    let mut out = Array4::<i64>::zeros(window_shape(x.dim(), geom)?);
    window_sum_into(x, geom, out.as_slice_mut().unwrap_or_default())?;
    Ok(out)
}

/// `window_sum` writing into `out` (C order, the size `window_shape` gives).
pub fn window_sum_into(x: ArrayView4<'_, i64>, geom: &Geometry, out: &mut [i64]) -> Result<()> {
    let (mut lo, mut hi) = range_of(x);
    let (padded, extended) = geom.pads_with();
    if padded {
        lo = lo.min(geom.pad_value);
        hi = hi.max(geom.pad_value);
    }
    if extended {
        lo = lo.min(0);
        hi = hi.max(0);
    }
    let taps = geom.kernel[0] * geom.kernel[1];
    check_bound(taps, max_abs(lo.into(), hi.into()), 1, || {
        format!(
            "a window sum of the padded input {}",
            describe(lo.into(), hi.into())
        )
    })?;
    window_reduce(x, geom, 0, |a, v| a.wrapping_add(v), out)
}

/// Integer max over each kh×kw window of x_pad, per channel (MaxPool, docs/contract.md §3.6).
pub fn window_max(x: ArrayView4<'_, i64>, geom: &Geometry) -> Result<Array4<i64>> {
    let mut out = Array4::<i64>::zeros(window_shape(x.dim(), geom)?);
    window_max_into(x, geom, out.as_slice_mut().unwrap_or_default())?;
    Ok(out)
}

/// `window_max` writing into `out` (C order, the size `window_shape` gives).
pub fn window_max_into(x: ArrayView4<'_, i64>, geom: &Geometry, out: &mut [i64]) -> Result<()> {
    window_reduce(x, geom, i64::MIN, i64::max, out)
}

/// sum_w = z_x · Σ_{c,kh,kw} w per output channel, shape (O, 1); overflow-checked.
pub fn weight_sums(w: ArrayView4<'_, i64>, z_x: i64) -> Result<Array2<i64>> {
    let (o, cg, kh, kw) = w.dim();
    let (lo, hi) = range(w.iter());
    check_bound(
        cg * kh * kw,
        max_abs(lo.into(), hi.into()),
        z_x.unsigned_abs().into(),
        || {
            format!(
                "z_x={z_x} times the weight sums of {}",
                describe(lo.into(), hi.into())
            )
        },
    )?;
    Ok(Array2::from_shape_fn((o, 1), |(oc, _)| {
        z_x * w.slice(ndarray::s![oc, .., .., ..]).sum()
    }))
}

#[cfg(test)]
#[path = "conv_tests.rs"]
mod tests;
