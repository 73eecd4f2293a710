//! Bit widths as concrete-python counts them, and the worst-case interval analysis of the
//! integer accumulators (Gemm, Conv, window sums).
//!
//! The accumulator Σ_k x_k·c_k with c_k = w_k − z_w is separable in x: over the box
//! x ∈ [x_lo, x_hi]^K its minimum takes, per term, c_k·x_lo when c_k >= 0 and c_k·x_hi
//! otherwise (the maximum the other way round), so the bounds below are exact (attained).

use ndarray::{Array1, Array2, ArrayView3, ArrayView4};

use crate::error::{Error, Result};
use crate::kernels::integer::conv::{Cell, Geometry};
use crate::kernels::integer::rounding::{round_one, MAX_LSBS};

/// Bits of one value, as `Integer.that_can_represent` in concrete-python 2.10 computes
/// them: 0 → 1; v < 0 → ceil(log2|v|) + 1; v > 0 → ceil(log2(v + 1)) (+1 if signed). The
/// logarithm is taken of the value rounded to f64, exactly as Python's `math.log2` does.
fn bits_of(value: i128, signed: bool) -> u32 {
    if value == 0 {
        return 1;
    }
    if value < 0 {
        ((value.unsigned_abs() as f64).log2().ceil() as u32) + 1
    } else {
        (((value + 1) as f64).log2().ceil() as u32) + u32::from(signed)
    }
}

/// (bit width, is_signed) of the smallest concrete-python integer type holding [lo, hi].
pub fn bit_width(lo: i128, hi: i128) -> (u32, bool) {
    let signed = lo < 0;
    (bits_of(lo, signed).max(bits_of(hi, signed)), signed)
}

fn check_range(x_lo: i64, x_hi: i64) -> Result<()> {
    if x_lo > x_hi {
        return Err(Error::InvalidArgument(format!(
            "the input range [{x_lo}, {x_hi}] is empty; give x_lo <= x_hi"
        )));
    }
    Ok(())
}

fn check_lsbs(lsbs: i64) -> Result<()> {
    if lsbs > MAX_LSBS {
        return Err(Error::InvalidArgument(format!(
            "cannot remove {lsbs} bits from an int64 accumulator; give at most {MAX_LSBS}"
        )));
    }
    Ok(())
}

/// Narrow an i128 bound to i64, rounding it first (round_bit_pattern is monotone).
fn finish(v: i128, lsbs: i64) -> Result<i64> {
    let r = round_one(v, lsbs);
    i64::try_from(r).map_err(|_| {
        Error::Overflow(format!(
            "the accumulator can reach {r}, outside int64; use fewer bits for the inputs or \
             the weights"
        ))
    })
}

/// Per output column: the exact [min, max] of Σ_k x_k·(W[k, n] − z_w) over x in
/// [x_lo, x_hi]^K, then rounded with `lsbs` bits. `w` is (batch, K, N); returns two
/// (batch, N) arrays.
pub fn gemm_bounds(
    w: ArrayView3<'_, i64>,
    z_w: i64,
    x_lo: i64,
    x_hi: i64,
    lsbs: i64,
) -> Result<(Array2<i64>, Array2<i64>)> {
    check_range(x_lo, x_hi)?;
    check_lsbs(lsbs)?;
    let (batch, _, n) = w.dim();
    let (xl, xh) = (i128::from(x_lo), i128::from(x_hi));
    let mut lo = Array2::<i64>::zeros((batch, n));
    let mut hi = Array2::<i64>::zeros((batch, n));
    for b in 0..batch {
        for col in 0..n {
            let (mut l, mut h) = (0i128, 0i128);
            for &wv in w.slice(ndarray::s![b, .., col]) {
                let c = i128::from(wv) - i128::from(z_w);
                let (a, e) = if c >= 0 {
                    (c * xl, c * xh)
                } else {
                    (c * xh, c * xl)
                };
                l += a;
                h += e;
            }
            lo[[b, col]] = finish(l, lsbs)?;
            hi[[b, col]] = finish(h, lsbs)?;
        }
    }
    Ok((lo, hi))
}

/// Per output channel: the exact [min, max] over all output positions of the corrected conv
/// Σ x_pad·(W − z_w), for an input (H, W) = `in_hw` with every value in [x_lo, x_hi],
/// padding cells fixed at `geom.pad_value` and ceil-extension cells at 0; then rounded.
/// `w` is (O, C/group, kh, kw). Window sums are the case O = 1, C/group = 1, W = 1, z_w = 0.
pub fn conv_bounds(
    w: ArrayView4<'_, i64>,
    z_w: i64,
    x_lo: i64,
    x_hi: i64,
    in_hw: [usize; 2],
    geom: &Geometry,
    lsbs: i64,
) -> Result<(Array1<i64>, Array1<i64>)> {
    check_range(x_lo, x_hi)?;
    check_lsbs(lsbs)?;
    let (o, cg, kh, kw) = w.dim();
    geom.check_kernel([kh, kw])?;
    let [oh, ow] = geom.output_hw(in_hw)?;
    let (xl, xh) = (i128::from(x_lo), i128::from(x_hi));
    let pad = i128::from(geom.pad_value);
    let mut lo = Array1::<i64>::zeros(o);
    let mut hi = Array1::<i64>::zeros(o);
    for oc in 0..o {
        // Per kernel cell: sums of the positive and of the negative coefficients.
        let mut pos = vec![0i128; kh * kw];
        let mut neg = vec![0i128; kh * kw];
        for c in 0..cg {
            for i in 0..kh {
                for j in 0..kw {
                    let v = i128::from(w[[oc, c, i, j]]) - i128::from(z_w);
                    if v >= 0 {
                        pos[i * kw + j] += v;
                    } else {
                        neg[i * kw + j] += v;
                    }
                }
            }
        }
        let (mut best_lo, mut best_hi) = (i128::MAX, i128::MIN);
        for y in 0..oh {
            for x in 0..ow {
                let (mut l, mut h) = (0i128, 0i128);
                for i in 0..kh {
                    for j in 0..kw {
                        let (p, q) = (pos[i * kw + j], neg[i * kw + j]);
                        match geom.cell(in_hw, y, x, i, j) {
                            Cell::Input(..) => {
                                l += p * xl + q * xh;
                                h += p * xh + q * xl;
                            }
                            Cell::Pad => {
                                l += (p + q) * pad;
                                h += (p + q) * pad;
                            }
                            Cell::Zero => {}
                        }
                    }
                }
                best_lo = best_lo.min(l);
                best_hi = best_hi.max(h);
            }
        }
        lo[oc] = finish(best_lo, lsbs)?;
        hi[oc] = finish(best_hi, lsbs)?;
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, Array4};

    #[test]
    fn bit_widths_match_concrete_python() {
        assert_eq!(bit_width(0, 0), (1, false));
        assert_eq!(bit_width(0, 1), (1, false));
        assert_eq!(bit_width(0, 255), (8, false));
        assert_eq!(bit_width(0, 256), (9, false));
        assert_eq!(bit_width(-128, 127), (8, true));
        assert_eq!(bit_width(-129, 127), (9, true));
        assert_eq!(bit_width(-1, 128), (9, true));
        assert_eq!(bit_width(-1, 0), (1, true));
        // Python's float log2 loses the +1 at 2^53 (concrete-python counts 53 bits).
        assert_eq!(bit_width(0, 1 << 53), (53, false));
    }

    #[test]
    fn gemm_bounds_are_attained() {
        let w = Array3::from_shape_vec((1, 3, 2), vec![2i64, -1, 0, 3, -4, 5]).unwrap();
        let (lo, hi) = gemm_bounds(w.view(), 1, -2, 3, 0).unwrap();
        // column 0: c = [1, -1, -5]; min = 1*-2 + -1*3 + -5*3 = -20; max = 3 + 2 + 10 = 15
        assert_eq!((lo[[0, 0]], hi[[0, 0]]), (-20, 15));
        // column 1: c = [-2, 2, 4]; min = -6 - 4 - 8 = -18; max = 4 + 6 + 12 = 22
        assert_eq!((lo[[0, 1]], hi[[0, 1]]), (-18, 22));
        let (lo, hi) = gemm_bounds(w.view(), 1, -2, 3, 2).unwrap();
        assert_eq!((lo[[0, 0]], hi[[0, 0]]), (-20, 16));
        assert_eq!((lo[[0, 1]], hi[[0, 1]]), (-16, 24));
        assert!(gemm_bounds(w.view(), 0, 3, 2, 0).is_err());
    }

    #[test]
    fn window_sum_bounds_count_padding() {
        // 2x2 input, kernel 2x2, pad 1 on every side with value 5, range [0, 10].
        let ones = Array4::<i64>::ones((1, 1, 2, 2));
        let geom = Geometry::new([2, 2], [1, 1], [1, 1, 1, 1], [0, 0], 5);
        let (lo, hi) = conv_bounds(ones.view(), 0, 0, 10, [2, 2], &geom, 0).unwrap();
        // corner windows: 1 input + 3 pads -> [15, 25]; centre: 4 inputs -> [0, 40]
        assert_eq!((lo[0], hi[0]), (0, 40));
        let geom = Geometry::new([2, 2], [2, 2], [1, 1, 1, 1], [0, 0], 5);
        let (lo, hi) = conv_bounds(ones.view(), 0, 0, 10, [2, 2], &geom, 0).unwrap();
        assert_eq!((lo[0], hi[0]), (15, 25));
    }
}
