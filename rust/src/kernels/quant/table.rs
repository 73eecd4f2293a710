//! Integer-indexed tables: which integers a tensor holds, and a lookup of one value per
//! integer.
//!
//! An element-wise function of a quantized tensor depends only on each element's integer
//! (its float is `dequantize(q)`), so calibration evaluates such a function once per integer
//! of the tensor's range and then maps every element through the table. `presence` gives the
//! integers that occur (the statistics of the function are those of its present entries),
//! `lookup` maps the elements.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::dequantize::QInt;
use super::CHUNK;
use crate::error::{Error, Result};

/// Integer element types that index a table.
pub trait Index: QInt {
    /// The value as i64 (exact).
    fn to_i64(self) -> i64;
}

macro_rules! impl_index {
    ($($t:ty),*) => {$(
        impl Index for $t {
            #[inline(always)]
            fn to_i64(self) -> i64 {
                self as i64
            }
        }
    )*};
}
impl_index!(i8, i16, i32, i64);

fn out_of_range(v: i64, lo: i64, size: usize) -> Error {
    Error::InvalidArgument(format!(
        "table index: the value {v} lies outside the table's range [{lo}, {}]",
        lo as i128 + size as i128 - 1
    ))
}

/// Mark in `seen` (entry `v - lo`) every integer `v` of `q`.
///
/// Errors: `InvalidArgument` if some value lies outside `[lo, lo + seen.len())`.
pub fn presence<I: Index>(q: &[I], lo: i64, seen: &mut [bool]) -> Result<()> {
    let size = seen.len();
    let parts: Vec<Result<Vec<bool>>> = q
        .par_chunks(CHUNK)
        .map(|chunk| {
            let mut mark = vec![false; size];
            for &v in chunk {
                let i = v.to_i64().wrapping_sub(lo) as u64;
                match mark.get_mut(i as usize) {
                    Some(m) if i < size as u64 => *m = true,
                    _ => return Err(out_of_range(v.to_i64(), lo, size)),
                }
            }
            Ok(mark)
        })
        .collect();
    for part in parts {
        for (s, m) in seen.iter_mut().zip(part?) {
            *s |= m;
        }
    }
    Ok(())
}

/// `out[i] = table[q[i] - lo]`.
///
/// Errors: `Shape` if `out` and `q` differ in length; `InvalidArgument` if some value lies
/// outside `[lo, lo + table.len())` (then `out` is only partly written).
pub fn lookup<I: Index, O: Copy + Send + Sync>(
    q: &[I],
    lo: i64,
    table: &[O],
    out: &mut [MaybeUninit<O>],
) -> Result<()> {
    if q.len() != out.len() {
        return Err(Error::Shape(format!(
            "table lookup: {} values for an output of {}",
            q.len(),
            out.len()
        )));
    }
    let size = table.len();
    out.par_chunks_mut(CHUNK)
        .zip(q.par_chunks(CHUNK))
        .try_for_each(|(dst, src)| {
            for (d, &v) in dst.iter_mut().zip(src) {
                let i = v.to_i64().wrapping_sub(lo) as u64;
                match table.get(i as usize) {
                    Some(&t) if i < size as u64 => {
                        d.write(t);
                    }
                    _ => return Err(out_of_range(v.to_i64(), lo, size)),
                }
            }
            Ok(())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_marks_each_value_across_chunks() {
        let q: Vec<i16> = (0..3 * CHUNK as i64 + 5)
            .map(|i| ((i * 7) % 11 - 3) as i16)
            .filter(|&v| v != 4)
            .collect();
        let mut seen = vec![false; 12];
        presence(&q, -3, &mut seen).unwrap();
        let want: Vec<bool> = (-3..9).map(|v| v != 4 && v < 8).collect();
        assert_eq!(seen, want);
        let mut small = vec![false; 5];
        assert!(matches!(
            presence(&q, -3, &mut small),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            presence(&[i64::MIN], 1, &mut small),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn lookup_maps_and_checks() {
        let q: Vec<i8> = (0..CHUNK + 9).map(|i| (i % 5) as i8 - 2).collect();
        let table = [10i64, 20, 30, 40, 50];
        let mut out = vec![MaybeUninit::<i64>::uninit(); q.len()];
        lookup(&q, -2, &table, &mut out).unwrap();
        for (o, &v) in out.iter().zip(&q) {
            // SAFETY: lookup succeeded, so every element was written.
            assert_eq!(unsafe { o.assume_init() }, table[(v + 2) as usize]);
        }
        assert!(matches!(
            lookup(&q, -1, &table, &mut out),
            Err(Error::InvalidArgument(_))
        ));
        let mut short = vec![MaybeUninit::<i64>::uninit(); 3];
        assert!(matches!(
            lookup(&q, -2, &table, &mut short),
            Err(Error::Shape(_))
        ));
    }
}
