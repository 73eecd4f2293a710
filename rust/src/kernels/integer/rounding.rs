//! round_bit_pattern: zero the k least significant bits, rounding half up (docs/contract.md §2.4).

use ndarray::{ArrayD, ArrayViewD, Zip};

use crate::error::{Error, Result};

/// Largest number of bits that can be removed from an int64.
pub const MAX_LSBS: i64 = 62;

/// floor((x + 2^(k−1)) / 2^k) · 2^k for one value in i128 (k in 1..=MAX_LSBS), else x.
pub fn round_one(x: i128, lsbs: i64) -> i128 {
    if lsbs <= 0 {
        return x;
    }
    let half = 1i128 << (lsbs - 1);
    (x + half) & !((1i128 << lsbs) - 1)
}

/// `(half, mask)` of rounding an int64 to a multiple of 2^lsbs (lsbs in 1..=MAX_LSBS):
/// `(v + half) & mask`, exact for `v <= i64::MAX - half`; `(0, -1)` (no change) for
/// lsbs <= 0.
pub fn half_and_mask(lsbs: i64) -> (i64, i64) {
    if lsbs <= 0 {
        return (0, -1);
    }
    (1i64 << (lsbs - 1), !((1i64 << lsbs) - 1))
}

fn check_lsbs(lsbs: i64) -> Result<()> {
    if lsbs > MAX_LSBS {
        return Err(Error::InvalidArgument(format!(
            "round_bit_pattern: cannot remove {lsbs} bits from an int64 value; \
             give at most {MAX_LSBS}"
        )));
    }
    Ok(())
}

/// Apply round_bit_pattern with `lsbs` bits to every element (identity for lsbs <= 0).
///
/// Ties go up and the result is a multiple of 2^lsbs. Returns `Error::Overflow` if a value
/// is so close to i64::MAX that rounding up leaves int64.
pub fn round_bit_pattern(x: ArrayViewD<'_, i64>, lsbs: i64) -> Result<ArrayD<i64>> {
    check_lsbs(lsbs)?;
    if lsbs <= 0 {
        return Ok(x.to_owned());
    }
    let (half, mask) = half_and_mask(lsbs);
    let max = x.iter().copied().max().unwrap_or(0);
    if max.checked_add(half).is_none() {
        return Err(Error::Overflow(format!(
            "round_bit_pattern: rounding {max} to a multiple of 2^{lsbs} leaves int64"
        )));
    }
    let mut out = ArrayD::<i64>::zeros(x.raw_dim());
    Zip::from(&mut out)
        .and(&x)
        .par_for_each(|o, &v| *o = (v + half) & mask);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    #[test]
    fn ties_go_up_and_magnitude_is_kept() {
        let x = arr1(&[-6i64, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6]).into_dyn();
        let got = round_bit_pattern(x.view(), 2).unwrap();
        // floor((x + 2) / 4) * 4
        let want: Vec<i64> = x.iter().map(|&v| (v + 2).div_euclid(4) * 4).collect();
        assert_eq!(got.iter().copied().collect::<Vec<_>>(), want);
        assert_eq!(round_one(-2, 2), 0);
        assert_eq!(round_one(2, 2), 4);
        assert_eq!(round_one(-6, 2), -4);
    }

    #[test]
    fn identity_and_errors() {
        let x = arr1(&[7i64, -9]).into_dyn();
        assert_eq!(round_bit_pattern(x.view(), 0).unwrap(), x);
        assert_eq!(round_bit_pattern(x.view(), -3).unwrap(), x);
        assert!(matches!(
            round_bit_pattern(x.view(), 63),
            Err(Error::InvalidArgument(_))
        ));
        let big = arr1(&[i64::MAX - 1]).into_dyn();
        assert!(matches!(
            round_bit_pattern(big.view(), 4),
            Err(Error::Overflow(_))
        ));
    }
}
