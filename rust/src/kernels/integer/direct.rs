//! A direct integer convolution for the F32 strategy (every partial sum within 2^24, so f32
//! products and sums are exact integers in any order): no im2col matrix.
//!
//! Each image's channels are copied once, shifted, into padded f32 planes whose borders
//! hold the pad value and the ceil-extension 0 (both shifted likewise). The output of one
//! image is then a small product evaluated straight from those planes: vectors of 8 output
//! channels times the broadcast input cell of each tap, for a block of output positions at
//! once (AVX2 + FMA; a portable loop with the same sums elsewhere). The accumulators of one
//! image stay in the cache, are turned into the exact integers (plus the shift's per-channel
//! correction) and handed plane by plane to the caller's sink, as the im2col paths do.
//!
//! The input is read in its own integer type (int8 .. int64), so narrow inputs are never
//! widened.

use crate::kernels::simd::{self, Switch};

use rayon::prelude::*;

use crate::kernels::integer::conv::{ConvInput, Geometry};

/// Whether the direct conv may be used (a switch for benchmarks and differential tests;
/// results are the same integers either way; portable code, with an AVX2 path inside).
pub static SWITCH: Switch = Switch::new(true, simd::any_cpu);

/// Whether the direct conv is enabled.
pub fn enabled() -> bool {
    SWITCH.available()
}

/// Output channels per vector.
const LANES: usize = 8;
/// Positions per microkernel block for one vector of channels, and for two.
const POS_1: usize = 8;
const POS_2: usize = 4;
/// Images per parallel task: a fixed number of output columns, as the im2col paths.
const TASK_COLS: usize = 4096;

/// Whether the CPU runs the AVX2 + FMA microkernel.
fn fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The operands of one direct conv (see the module docs).
pub(crate) struct Direct<'a, X> {
    /// The input in C order, (N, C, H, W).
    pub x: &'a [X],
    /// (O, C/g·kh·kw) row-major weights minus z_w.
    pub w: &'a [i64],
    /// Subtracted from every cell of the padded input.
    pub shift: i64,
    /// n, c, h, w, o, cg, oh, ow
    pub dims: [usize; 8],
    pub group: usize,
    pub geom: &'a Geometry,
    /// Use the portable loop even where the SIMD kernel runs (tests).
    pub portable: bool,
}

/// The per-call tables shared by every task.
struct Plan {
    /// Padded plane height and width.
    hp: usize,
    wp: usize,
    /// A padded plane with the shifted pad / extension cells and 0 inside.
    template: Vec<f32>,
    /// Per k (c_local, i, j): the offset of its cell in a group's planes.
    koff: Vec<usize>,
    /// Per output position (padded to a multiple of `POS_1` with position 0): the offset of
    /// its window's top-left cell in a plane.
    posoff: Vec<usize>,
    /// Per group: k-major weights, `opad` channels per k (zero past og).
    weights: Vec<f32>,
    opad: usize,
    /// s·Σ_k c per output channel (wrapping; exact since the result fits int64).
    corr: Vec<i64>,
}

impl<X: ConvInput> Direct<'_, X> {
    fn plan(&self) -> Plan {
        let [_, _, h, wd, o, cg, oh, ow] = self.dims;
        let g = self.geom;
        let (kh, kw) = (g.kernel[0], g.kernel[1]);
        let hp = h + g.pads[0] + g.pads[2] + g.extra[0];
        let wp = wd + g.pads[1] + g.pads[3] + g.extra[1];
        // Zone of a padded coordinate along an axis: 0 input, 1 pad, 2 extension.
        let zone = |axis: usize, idx: usize, size: usize| -> u8 {
            let begin = g.pads[axis];
            if idx < begin {
                1
            } else if idx - begin < size {
                0
            } else if idx - begin < size + g.pads[axis + 2] {
                1
            } else {
                2
            }
        };
        let pad = g.pad_value.wrapping_sub(self.shift) as f32;
        let zero = self.shift.wrapping_neg() as f32;
        let mut template = vec![0f32; hp * wp];
        for r in 0..hp {
            for col in 0..wp {
                template[r * wp + col] = match zone(0, r, h).max(zone(1, col, wd)) {
                    0 => 0.0,
                    1 => pad,
                    _ => zero,
                };
            }
        }
        let koff = (0..cg * kh * kw)
            .map(|k| {
                let (c, tap) = (k / (kh * kw), k % (kh * kw));
                c * hp * wp + (tap / kw) * wp + tap % kw
            })
            .collect();
        let l = oh * ow;
        let mut posoff: Vec<usize> = (0..l)
            .map(|p| (p / ow) * g.strides[0] * wp + (p % ow) * g.strides[1])
            .collect();
        posoff.resize(l.div_ceil(POS_1) * POS_1, 0);
        let og = o / self.group;
        let ckk = cg * kh * kw;
        let opad = og.div_ceil(LANES) * LANES;
        let mut weights = vec![0f32; self.group * ckk * opad];
        for (oc, row) in self.w.chunks_exact(ckk.max(1)).take(o).enumerate() {
            let (grp, oo) = (oc / og, oc % og);
            for (k, &v) in row.iter().enumerate() {
                // exact: |v| <= the bound of the F32 strategy
                weights[(grp * ckk + k) * opad + oo] = v as f32;
            }
        }
        let corr = self
            .w
            .chunks_exact(ckk.max(1))
            .map(|row| {
                let sum = row.iter().fold(0i64, |a, &v| a.wrapping_add(v));
                self.shift.wrapping_mul(sum)
            })
            .collect();
        Plan {
            hp,
            wp,
            template,
            koff,
            posoff,
            weights,
            opad,
            corr,
        }
    }

    /// Hand the planes of `out` (N, O, OH, OW) to `sink(channel, acc, dst)`, those of one
    /// image and group in one call (see `conv2d_map_into`).
    pub fn run<O: Send, F>(&self, out: &mut [O], sink: &F)
    where
        F: Fn(usize, &[i64], &mut [O]) + Sync,
    {
        let [_, c, h, wd, o, cg, oh, ow] = self.dims;
        let l = oh * ow;
        if out.is_empty() || l == 0 || o == 0 {
            return;
        }
        let plan = self.plan();
        let og = o / self.group;
        let ckk = plan.koff.len();
        let plane = plan.hp * plan.wp;
        let (top, left) = (self.geom.pads[0], self.geom.pads[1]);
        let simd = fma() && !self.portable;
        let imgs = (TASK_COLS / l).max(1);
        out.par_chunks_mut(imgs * o * l)
            .enumerate()
            .for_each(|(chunk, dst)| {
                let first = chunk * imgs;
                let count = dst.len() / (o * l);
                let shift = self.shift as i32;
                // cg padded planes, their borders set once
                let mut planes: Vec<f32> = Vec::with_capacity(cg * plane);
                for _ in 0..cg {
                    planes.extend_from_slice(&plan.template);
                }
                let lp = plan.posoff.len();
                let mut acc = vec![0i32; lp * plan.opad];
                // the corrected accumulators of one group, channel by channel (og planes)
                let mut ints = vec![0i64; og * l];
                for img in 0..count {
                    for g in 0..self.group {
                        for (cl, pl) in planes.chunks_exact_mut(plane).enumerate() {
                            let src = ((first + img) * c + g * cg + cl) * h * wd;
                            let src = &self.x[src..src + h * wd];
                            for (r, row) in src.chunks_exact(wd.max(1)).enumerate() {
                                let at = (top + r) * plan.wp + left;
                                for (d, &v) in pl[at..at + wd].iter_mut().zip(row) {
                                    // |x − s| <= 2^24 under the F32 strategy: exact in i32
                                    // and f32; x − s modulo 2^32 is the same whether the
                                    // operands are truncated before or after, so the
                                    // subtraction runs in i32 (four times the lanes of i64)
                                    *d = (v.to_i64() as i32).wrapping_sub(shift) as f32;
                                }
                            }
                        }
                        let wg = &plan.weights[g * ckk * plan.opad..(g + 1) * ckk * plan.opad];
                        product(&planes, wg, &plan, &mut acc, simd);
                        // acc holds a row of opad channels per position: read each row once
                        // (a strided walk per channel cost a third of the first benchmark
                        // Conv's time)
                        let corr = &plan.corr[g * og..(g + 1) * og];
                        to_planes(&acc, plan.opad, l, corr, &mut ints);
                        // the group's og planes are consecutive in the output: one call
                        let d = (img * o + g * og) * l;
                        sink(g * og, &ints, &mut dst[d..d + og * l]);
                    }
                }
            });
    }
}

/// acc[p, ch] = Σ_k planes[posoff[p] + koff[k]] · w[k, ch] for every padded position and
/// every channel of `opad` (integers of at most 2^24 in magnitude, computed exactly in f32
/// and stored as i32).
fn product(planes: &[f32], w: &[f32], plan: &Plan, acc: &mut [i32], simd: bool) {
    let opad = plan.opad;
    let ckk = plan.koff.len();
    // Every cell read lies inside `planes`: the windows of valid positions do (the output
    // size was derived from the padded size), and padding positions repeat position 0.
    let max_cell =
        plan.posoff.iter().max().copied().unwrap_or(0) + plan.koff.last().copied().unwrap_or(0);
    if ckk == 0 || max_cell >= planes.len() || w.len() < ckk * opad {
        acc.fill(0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd {
        let mut ch = 0;
        while ch < opad {
            let v = ((opad - ch) / LANES).min(2);
            // SAFETY: the CPU has AVX2 and FMA (`fma()`); every cell read is inside
            // `planes` (checked above), weights k < ckk, channels ch..ch + 8v < opad are
            // inside `w`, and positions < posoff.len() times opad inside `acc`.
            unsafe {
                if v == 2 {
                    for p0 in (0..plan.posoff.len()).step_by(POS_2) {
                        block_fma::<POS_2, 2>(planes, w, plan, acc, p0, ch);
                    }
                } else {
                    for p0 in (0..plan.posoff.len()).step_by(POS_1) {
                        block_fma::<POS_1, 1>(planes, w, plan, acc, p0, ch);
                    }
                }
            }
            ch += v * LANES;
        }
        return;
    }
    let _ = simd;
    let mut row = vec![0f32; opad];
    for (p, &po) in plan.posoff.iter().enumerate() {
        row.fill(0.0);
        for (k, &ko) in plan.koff.iter().enumerate() {
            let x = planes[po + ko];
            for (a, &wv) in row.iter_mut().zip(&w[k * opad..(k + 1) * opad]) {
                *a += x * wv;
            }
        }
        for (d, &a) in acc[p * opad..(p + 1) * opad].iter_mut().zip(&row) {
            *d = a as i32;
        }
    }
}

/// One block: positions p0..p0+P against channels ch..ch+8V.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_fma<const P: usize, const V: usize>(
    planes: &[f32],
    w: &[f32],
    plan: &Plan,
    acc: &mut [i32],
    p0: usize,
    ch: usize,
) {
    use std::arch::x86_64::*;
    let opad = plan.opad;
    let base = planes.as_ptr();
    let mut cells = [base; P];
    for (p, cell) in cells.iter_mut().enumerate() {
        *cell = base.wrapping_add(plan.posoff[p0 + p]);
    }
    let wp = w.as_ptr().wrapping_add(ch);
    let mut sums = [[_mm256_setzero_ps(); V]; P];
    for (k, &ko) in plan.koff.iter().enumerate() {
        let mut wv = [_mm256_setzero_ps(); V];
        for (v, dst) in wv.iter_mut().enumerate() {
            // SAFETY: channels ch + 8v .. + 8 of weight row k lie inside `w` (the caller).
            *dst = unsafe { _mm256_loadu_ps(wp.add(k * opad + v * LANES)) };
        }
        for (p, row) in sums.iter_mut().enumerate() {
            // SAFETY: posoff + koff is inside `planes` (the caller checked the largest).
            let x = unsafe { _mm256_broadcast_ss(&*cells[p].add(ko)) };
            for (s, &wvv) in row.iter_mut().zip(&wv) {
                *s = _mm256_fmadd_ps(x, wvv, *s);
            }
        }
    }
    let ap = acc.as_mut_ptr();
    for (p, row) in sums.iter().enumerate() {
        for (v, &s) in row.iter().enumerate() {
            // exact: an integer of at most 2^24 in magnitude
            let ints = _mm256_cvttps_epi32(s);
            // SAFETY: position p0 + p < posoff.len(), channels < opad: inside `acc`.
            unsafe { _mm256_storeu_si256(ap.add((p0 + p) * opad + ch + v * LANES).cast(), ints) };
        }
    }
}

/// `ints[c·l + p] = acc[p·opad + c] + corr[c]` (wrapping) for the `l` positions and the
/// `corr.len()` channels: the accumulators, one row of channels per position, turned into
/// one plane per channel. Tiles of 8 positions × 8 channels are transposed in AVX2
/// registers when the CPU has it (the scalar walk cost a quarter of the first benchmark
/// Conv's time); the rest, and other CPUs, take the scalar walk.
fn to_planes(acc: &[i32], opad: usize, l: usize, corr: &[i64], ints: &mut [i64]) {
    let og = corr.len();
    assert!(og <= opad && acc.len() >= l * opad && ints.len() >= og * l);
    let (mut tiled_p, mut tiled_c) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        (tiled_p, tiled_c) = (l / 8 * 8, og / 8 * 8);
        // SAFETY: the CPU has AVX2; the tiles read rows p < l of acc at channels < og <= opad
        // and write planes c < og at positions < l (the lengths are asserted above).
        unsafe { planes_avx2(acc, opad, l, tiled_p, corr, tiled_c, ints) };
    }
    // the channels past the tiles at the tiled positions, then every channel at the rest
    let mut one = |p: usize, c: usize| {
        ints[c * l + p] = i64::from(acc[p * opad + c]).wrapping_add(corr[c]);
    };
    for p in 0..tiled_p {
        for c in tiled_c..og {
            one(p, c);
        }
    }
    for p in tiled_p..l {
        for c in 0..og {
            one(p, c);
        }
    }
}

/// The 8 × 8 tiles of [`to_planes`] (positions < `tp`, channels < `tc`, both multiples of 8).
///
/// # Safety
/// The CPU must support AVX2, and `acc`, `ints` must hold what [`to_planes`] asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn planes_avx2(
    acc: &[i32],
    opad: usize,
    l: usize,
    tp: usize,
    corr: &[i64],
    tc: usize,
    ints: &mut [i64],
) {
    use std::arch::x86_64::*;
    let (src, dst) = (acc.as_ptr(), ints.as_mut_ptr());
    for p0 in (0..tp).step_by(8) {
        for c0 in (0..tc).step_by(8) {
            // row i: the 8 channels c0.. of position p0 + i
            let r: [__m256i; 8] =
                std::array::from_fn(|i| _mm256_loadu_si256(src.add((p0 + i) * opad + c0).cast()));
            let t: [__m256i; 8] = std::array::from_fn(|i| {
                let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
                if i % 2 == 0 {
                    _mm256_unpacklo_epi32(a, b)
                } else {
                    _mm256_unpackhi_epi32(a, b)
                }
            });
            // u[k] (k < 4 from rows 0-3, k >= 4 from rows 4-7): channel k % 4 in the low
            // half, k % 4 + 4 in the high half, four positions each
            let u: [__m256i; 8] = std::array::from_fn(|k| {
                let base = if k < 4 { 0 } else { 4 };
                let (lo, hi) = (t[base + (k % 4) / 2], t[base + 2 + (k % 4) / 2]);
                if k % 2 == 0 {
                    _mm256_unpacklo_epi64(lo, hi)
                } else {
                    _mm256_unpackhi_epi64(lo, hi)
                }
            });
            for j in 0..8 {
                let (a, b) = (u[j % 4], u[j % 4 + 4]);
                // channel c0 + j at positions p0 .. p0 + 8
                let col = if j < 4 {
                    _mm256_permute2x128_si256::<0x20>(a, b)
                } else {
                    _mm256_permute2x128_si256::<0x31>(a, b)
                };
                let add = _mm256_set1_epi64x(corr[c0 + j]);
                let lo = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(col)), add);
                let hi = _mm256_add_epi64(
                    _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(col)),
                    add,
                );
                let out = dst.add((c0 + j) * l + p0);
                _mm256_storeu_si256(out.cast(), lo);
                _mm256_storeu_si256(out.add(4).cast(), hi);
            }
        }
    }
}

#[cfg(test)]
mod plane_tests {
    use super::to_planes;

    #[test]
    fn to_planes_matches_the_scalar_walk() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for l in [0usize, 1, 7, 8, 9, 16, 23, 64] {
            for og in [1usize, 3, 8, 9, 16, 17] {
                for extra in [0usize, 5] {
                    let opad = og + extra;
                    let acc: Vec<i32> = (0..l * opad).map(|_| next() as i32).collect();
                    let corr: Vec<i64> = (0..og).map(|_| next() as i64).collect();
                    let mut got = vec![0i64; og * l];
                    to_planes(&acc, opad, l, &corr, &mut got);
                    for p in 0..l {
                        for c in 0..og {
                            let want = i64::from(acc[p * opad + c]).wrapping_add(corr[c]);
                            assert_eq!(got[c * l + p], want, "l {l} og {og} opad {opad}");
                        }
                    }
                }
            }
        }
    }
}
