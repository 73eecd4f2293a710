//! float64 2-D convolution with a fixed summation order (docs/contract.md decision 4), for
//! calibration.
//!
//! Every output is the sequential sum `((0 + x·w) + x·w) + …` over its window in
//! (channel, kernel row, kernel column) order, each product and each sum rounded to float64:
//! the numbers of an im2col matrix (columns in that order) times the reshaped weights through
//! [`matmul`](super::matmul). With any padding, the input is read through float32 (the
//! float32 padding buffer of the float Conv, docs/contract.md §0) and the padded positions are
//! zeros that take part in the sums like any other value. The work is split by images, so the
//! result does not depend on the batch or on the number of threads.

use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::float::matmul::{supported, Element, Isa, PackedB};

/// Output rows (image positions) handed to one rayon task, at least one image.
pub(crate) const ROWS_PER_TASK: usize = 64;

/// The geometry of a convolution: per spatial axis (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// Zeros added before each axis.
    pub begins: [usize; 2],
    /// Zeros added after each axis.
    pub ends: [usize; 2],
    pub group: usize,
}

/// `x (N, C, H, W) ⋆ w (O, C/group, KH, KW)` in float64, no bias: (N, O, OH, OW).
pub fn conv2d_f64_sequential(
    x: ArrayView4<'_, f64>,
    w: ArrayView4<'_, f64>,
    geometry: &ConvGeometry,
) -> Result<Array4<f64>> {
    conv2d_sequential(x, w, geometry, Isa::detect())
}

/// [`conv2d_f64_sequential`] on a given instruction set (for tests).
pub fn conv2d_sequential(
    x: ArrayView4<'_, f64>,
    w: ArrayView4<'_, f64>,
    geometry: &ConvGeometry,
    isa: Isa,
) -> Result<Array4<f64>> {
    let g = geometry;
    let plan = ConvPlan::new(x.dim(), w, g, isa)?;
    let s = &plan.shape;
    let n = x.dim().0;
    let x = x.as_standard_layout();
    let x = x
        .as_slice()
        .ok_or_else(|| Error::Shape("conv: x is not contiguous".into()))?;
    let plane = s.oh * s.ow;
    let mut out = vec![0.0f64; n * s.o * plane];
    if !out.is_empty() && s.kdim() > 0 {
        let (c, h, wd, o) = (s.c, s.h, s.w, s.o);
        let images_per_task = (ROWS_PER_TASK / plane).max(1);
        out.par_chunks_mut(images_per_task * o * plane)
            .enumerate()
            .for_each(|(t, out_images)| {
                let first = t * images_per_task;
                let count = out_images.len() / (o * plane);
                let x_images = &x[first * c * h * wd..(first + count) * c * h * wd];
                images(x_images, count, &plan.panels, out_images, s, g);
            });
    }
    Array4::from_shape_vec((n, s.o, s.oh, s.ow), out).map_err(|e| Error::Shape(e.to_string()))
}

/// A checked geometry with the weights packed per group, shared by the conv kernels.
pub(crate) struct ConvPlan {
    pub(crate) shape: Shape,
    /// Per group, the weights as a (kdim, og) matrix, packed.
    pub(crate) panels: Vec<PackedB<f64>>,
}

impl ConvPlan {
    /// Check `x (N, C, H, W)`, `w (O, C/group, KH, KW)` and the geometry, and pack `w`.
    pub(crate) fn new(
        xdim: (usize, usize, usize, usize),
        w: ArrayView4<'_, f64>,
        g: &ConvGeometry,
        isa: Isa,
    ) -> Result<ConvPlan> {
        let (_, c, h, wd) = xdim;
        let (o, cg, kh, kw) = w.dim();
        if g.group == 0 || c % g.group != 0 || o % g.group != 0 || cg * g.group != c {
            return Err(Error::Shape(format!(
                "conv: input channels {c}, weight shape {:?} and group {} do not fit; the \
                 weights need C/group input channels and O divisible by group",
                w.dim(),
                g.group
            )));
        }
        if g.strides.contains(&0) || g.dilations.contains(&0) {
            return Err(Error::InvalidArgument(
                "conv: strides and dilations must be >= 1".into(),
            ));
        }
        let padded = [h + g.begins[0] + g.ends[0], wd + g.begins[1] + g.ends[1]];
        let span = [
            (kh.max(1) - 1) * g.dilations[0] + 1,
            (kw.max(1) - 1) * g.dilations[1] + 1,
        ];
        if kh == 0 || kw == 0 || span[0] > padded[0] || span[1] > padded[1] {
            return Err(Error::Shape(format!(
                "conv: kernel ({kh}, {kw}) with dilations {:?} does not fit the padded input {:?}",
                g.dilations, padded
            )));
        }
        let shape = Shape {
            c,
            h,
            w: wd,
            cg,
            kh,
            kw,
            oh: (padded[0] - span[0]) / g.strides[0] + 1,
            ow: (padded[1] - span[1]) / g.strides[1] + 1,
            o,
            og: o / g.group,
            round: g.begins.iter().chain(&g.ends).any(|&p| p > 0),
        };
        let (kdim, og) = (shape.kdim(), shape.og);
        let isa = supported(isa);
        let w = w.as_standard_layout();
        let w = w
            .as_slice()
            .ok_or_else(|| Error::Shape("conv: w is not contiguous".into()))?;
        let panels = if kdim == 0 {
            Vec::new()
        } else {
            (0..g.group)
                .map(|gi| {
                    let mut b = vec![0.0f64; kdim * og];
                    for oo in 0..og {
                        let filt = &w[(gi * og + oo) * kdim..(gi * og + oo + 1) * kdim];
                        for (kk, &v) in filt.iter().enumerate() {
                            b[kk * og + oo] = v;
                        }
                    }
                    f64::pack(&b, kdim, og, isa)
                })
                .collect()
        };
        Ok(ConvPlan { shape, panels })
    }
}

/// The sizes one task needs.
pub(crate) struct Shape {
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) cg: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) o: usize,
    pub(crate) og: usize,
    /// Read the input through float32 (there is padding).
    pub(crate) round: bool,
}

impl Shape {
    /// The length of a window (the inner dimension of the im2col product).
    pub(crate) fn kdim(&self) -> usize {
        self.cg * self.kh * self.kw
    }
}

/// Convolve `count` consecutive images: per group, their im2col rows times the weights.
fn images(
    x: &[f64],
    count: usize,
    panels: &[PackedB<f64>],
    out: &mut [f64],
    s: &Shape,
    g: &ConvGeometry,
) {
    let plane = s.oh * s.ow;
    let rows = count * plane;
    let mut cols = vec![0.0f64; rows * s.kdim()];
    let mut prod = vec![0.0f64; rows * s.og];
    for (gi, packed) in panels.iter().enumerate() {
        if s.round {
            im2col(x, &|v| v as f32 as f64, gi, s, g, &mut cols);
        } else {
            im2col(x, &|v| v, gi, s, g, &mut cols);
        }
        f64::rows_times(&cols, packed, &mut prod);
        for (row, values) in prod.chunks_exact(s.og).enumerate() {
            let (img, pos) = (row / plane, row % plane);
            for (oo, &v) in values.iter().enumerate() {
                out[(img * s.o + gi * s.og + oo) * plane + pos] = v;
            }
        }
    }
}

/// The im2col rows of group `gi` of the images `x` (`cols.len() / kdim` output positions):
/// each input value is `load(x)`; padded positions are `D::default()` (`+0.0`).
#[inline(always)]
pub(crate) fn im2col<S: Copy, D: Copy + Default, F: Fn(S) -> D>(
    x: &[S],
    load: &F,
    gi: usize,
    s: &Shape,
    g: &ConvGeometry,
    cols: &mut [D],
) {
    let plane = s.oh * s.ow;
    let (dy, dx) = (g.dilations[0], g.dilations[1]);
    for (row, dst) in cols.chunks_exact_mut(s.kdim()).enumerate() {
        let (img, pos) = (row / plane, row % plane);
        let (y0, x0) = (pos / s.ow * g.strides[0], pos % s.ow * g.strides[1]);
        let image = &x[img * s.c * s.h * s.w..(img + 1) * s.c * s.h * s.w];
        let channels =
            image[gi * s.cg * s.h * s.w..(gi + 1) * s.cg * s.h * s.w].chunks_exact(s.h * s.w);
        for (src, dst) in channels.zip(dst.chunks_exact_mut(s.kh * s.kw)) {
            for (i, seg) in dst.chunks_exact_mut(s.kw).enumerate() {
                let yy = (y0 + i * dy).wrapping_sub(g.begins[0]);
                if yy >= s.h {
                    seg.fill(D::default());
                    continue;
                }
                let line = &src[yy * s.w..(yy + 1) * s.w];
                let first = x0.wrapping_sub(g.begins[1]);
                let last = (x0 + (s.kw - 1) * dx).wrapping_sub(g.begins[1]);
                if dx == 1 && first < s.w && last < s.w {
                    // the whole kernel row is inside the image
                    for (d, &v) in seg.iter_mut().zip(&line[first..=last]) {
                        *d = load(v);
                    }
                } else {
                    for (j, d) in seg.iter_mut().enumerate() {
                        let xx = (x0 + j * dx).wrapping_sub(g.begins[1]);
                        *d = if xx < s.w {
                            load(line[xx])
                        } else {
                            D::default()
                        };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    /// Direct convolution over an explicitly padded copy, summed in (c, i, j) order.
    fn reference(x: &Array4<f64>, w: &Array4<f64>, g: &ConvGeometry) -> Array4<f64> {
        let (n, c, h, wd) = x.dim();
        let (o, cg, kh, kw) = w.dim();
        let round = g.begins.iter().chain(&g.ends).any(|&p| p > 0);
        let ph = h + g.begins[0] + g.ends[0];
        let pw = wd + g.begins[1] + g.ends[1];
        let padded = Array4::from_shape_fn((n, c, ph, pw), |(a, b, i, j)| {
            let (i, j) = (i.wrapping_sub(g.begins[0]), j.wrapping_sub(g.begins[1]));
            if i < h && j < wd {
                let v = x[[a, b, i, j]];
                if round {
                    v as f32 as f64
                } else {
                    v
                }
            } else {
                0.0
            }
        });
        let oh = (ph - (kh - 1) * g.dilations[0] - 1) / g.strides[0] + 1;
        let ow = (pw - (kw - 1) * g.dilations[1] - 1) / g.strides[1] + 1;
        let og = o / g.group;
        Array4::from_shape_fn((n, o, oh, ow), |(a, oo, y, xx)| {
            let gi = oo / og;
            let mut s = 0.0f64;
            for ci in 0..cg {
                for i in 0..kh {
                    for j in 0..kw {
                        let v = padded[[
                            a,
                            gi * cg + ci,
                            y * g.strides[0] + i * g.dilations[0],
                            xx * g.strides[1] + j * g.dilations[1],
                        ]];
                        s += v * w[[oo, ci, i, j]];
                    }
                }
            }
            s
        })
    }

    fn awkward(i: usize, salt: usize) -> f64 {
        let h = (i * 2_654_435_761 + salt * 40_503) % 1_000_003;
        let mag = [1e-7, 1.0, 3.3e3, 1.000_000_1][h % 4];
        (h as f64 / 1_000_003.0 - 0.4) * mag
    }

    fn tensor(shape: (usize, usize, usize, usize), salt: usize) -> Array4<f64> {
        let mut i = 0;
        Array4::from_shape_simple_fn(shape, || {
            i += 1;
            awkward(i, salt)
        })
    }

    #[test]
    fn matches_the_direct_sum_on_every_instruction_set() {
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
            (
                (1, 2, 4, 4),
                (2, 1, 4, 4),
                [1, 1],
                [1, 1],
                [0, 0],
                [0, 0],
                2,
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
            let x = tensor(xs, 1);
            let w = tensor(ws, 2);
            let want = reference(&x, &w, &g);
            for isa in Isa::available() {
                let got = conv2d_sequential(x.view(), w.view(), &g, isa).unwrap();
                assert_eq!(got, want, "{isa:?} {xs:?} {ws:?}");
            }
        }
    }

    #[test]
    fn images_do_not_depend_on_the_batch_or_threads() {
        let g = ConvGeometry {
            strides: [2, 1],
            dilations: [1, 1],
            begins: [1, 0],
            ends: [1, 1],
            group: 1,
        };
        let x = tensor((37, 3, 6, 5), 3);
        let w = tensor((5, 3, 3, 2), 4);
        let whole = conv2d_f64_sequential(x.view(), w.view(), &g).unwrap();
        for i in [0usize, 17, 36] {
            let part =
                conv2d_f64_sequential(x.slice(ndarray::s![i..i + 1, .., .., ..]), w.view(), &g)
                    .unwrap();
            assert_eq!(part, whole.slice(ndarray::s![i..i + 1, .., .., ..]));
        }
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| conv2d_f64_sequential(x.view(), w.view(), &g).unwrap());
        assert_eq!(one, whole);
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let x = Array4::<f64>::zeros((1, 4, 5, 5));
        let geometry = |group: usize, strides: [usize; 2]| ConvGeometry {
            strides,
            dilations: [1, 1],
            begins: [0, 0],
            ends: [0, 0],
            group,
        };
        let w = Array4::<f64>::zeros((2, 3, 3, 3));
        assert!(matches!(
            conv2d_f64_sequential(x.view(), w.view(), &geometry(1, [1, 1])),
            Err(Error::Shape(_))
        ));
        let w = Array4::<f64>::zeros((2, 4, 3, 3));
        assert!(matches!(
            conv2d_f64_sequential(x.view(), w.view(), &geometry(0, [1, 1])),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            conv2d_f64_sequential(x.view(), w.view(), &geometry(1, [0, 1])),
            Err(Error::InvalidArgument(_))
        ));
        let w = Array4::<f64>::zeros((2, 4, 6, 3));
        assert!(matches!(
            conv2d_f64_sequential(x.view(), w.view(), &geometry(1, [1, 1])),
            Err(Error::Shape(_))
        ));
    }
}
