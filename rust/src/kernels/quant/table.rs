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
use crate::kernels::simd;

/// Integer element types that index a table.
pub trait Index: QInt {}
impl<T: QInt> Index for T {}

fn out_of_range(v: i64, lo: i64, size: usize) -> Error {
    Error::InvalidArgument(format!(
        "table index: the value {v} lies outside the table's range [{lo}, {}]",
        lo as i128 + size as i128 - 1
    ))
}

/// Check that every value of `chunk` lies in `[lo, lo + size)` (one vectorizable min/max
/// pass), so the indexing that follows never fails.
#[inline(always)]
fn check_chunk<I: Index>(chunk: &[I], lo: i64, size: usize) -> Result<()> {
    let (mut min, mut max) = (i64::MAX, i64::MIN);
    for &v in chunk {
        let v = v.to_i64();
        min = min.min(v);
        max = max.max(v);
    }
    if chunk.is_empty() {
        return Ok(());
    }
    let hi = lo as i128 + size as i128 - 1;
    if i128::from(min) < i128::from(lo) {
        return Err(out_of_range(min, lo, size));
    }
    if i128::from(max) > hi {
        return Err(out_of_range(max, lo, size));
    }
    Ok(())
}

/// Mark in `seen` (entry `v - lo`) every integer `v` of `q`.
///
/// Errors: `InvalidArgument` if some value lies outside `[lo, lo + seen.len())`.
pub fn presence<I: Index>(q: &[I], lo: i64, seen: &mut [bool]) -> Result<()> {
    let size = seen.len();
    let wide = simd::wide_vectors();
    let parts: Vec<Result<Vec<bool>>> = q
        .par_chunks(CHUNK)
        .map(|chunk| {
            let mut mark = vec![false; size];
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: `wide_vectors` checked that the CPU has these features.
                unsafe { presence_chunk_avx512(chunk, lo, &mut mark) }?;
                return Ok(mark);
            }
            presence_chunk(chunk, lo, &mut mark)?;
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

#[inline(always)]
fn presence_chunk<I: Index>(chunk: &[I], lo: i64, mark: &mut [bool]) -> Result<()> {
    check_chunk(chunk, lo, mark.len())?;
    for &v in chunk {
        // in range: checked above
        mark[(v.to_i64() - lo) as usize] = true;
    }
    Ok(())
}

/// [`presence_chunk`] compiled for AVX-512 (the same operations).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
unsafe fn presence_chunk_avx512<I: Index>(chunk: &[I], lo: i64, mark: &mut [bool]) -> Result<()> {
    presence_chunk(chunk, lo, mark)
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
    let wide = simd::wide_vectors();
    out.par_chunks_mut(CHUNK)
        .zip(q.par_chunks(CHUNK))
        .try_for_each(|(dst, src)| {
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: `wide_vectors` checked that the CPU has these features.
                return unsafe { lookup_chunk_avx512(src, lo, table, dst) };
            }
            lookup_chunk(src, lo, table, dst)
        })
}

#[inline(always)]
fn lookup_chunk<I: Index, O: Copy>(
    src: &[I],
    lo: i64,
    table: &[O],
    dst: &mut [MaybeUninit<O>],
) -> Result<()> {
    check_chunk(src, lo, table.len())?;
    for (d, &v) in dst.iter_mut().zip(src) {
        // in range: checked above
        d.write(table[(v.to_i64() - lo) as usize]);
    }
    Ok(())
}

/// [`lookup_chunk`] compiled for AVX-512 (the same operations).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl,avx512bw")]
unsafe fn lookup_chunk_avx512<I: Index, O: Copy>(
    src: &[I],
    lo: i64,
    table: &[O],
    dst: &mut [MaybeUninit<O>],
) -> Result<()> {
    lookup_chunk(src, lo, table, dst)
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
