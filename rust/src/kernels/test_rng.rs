//! Reproducible test data without a dependency: xorshift64*, shared by the kernels' tests.

/// xorshift64* (any nonzero seed).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-span, span] (span < 2^62).
    pub(crate) fn int(&mut self, span: i64) -> i64 {
        (self.next() % (2 * span as u64 + 1)) as i64 - span
    }

    /// Uniform in [lo, hi).
    pub(crate) fn float(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// A float with a random significand and sign and an exponent in [lo, hi].
    pub(crate) fn float_exp(&mut self, lo: i64, hi: i64) -> f64 {
        let e = lo + (self.next() % (hi - lo + 1) as u64) as i64;
        let bits = self.next();
        let significand = bits & ((1 << 52) - 1);
        let sign = bits & (1 << 63);
        f64::from_bits(sign | (((1023 + e) as u64) << 52) | significand)
    }
}
