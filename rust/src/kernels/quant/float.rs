//! Scalar helpers with numpy semantics: round half to even, clip, float -> int casts.

/// The two IEEE float types the kernels compute in.
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + 'static
{
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    const ZERO: Self;
    const NEG_ZERO: Self;
    /// Widen exactly (f32 -> f64) or keep.
    fn to_f64(self) -> f64;
    /// Round to nearest even (f64 -> f32) or keep.
    fn from_f64(v: f64) -> Self;
    /// `np.rint`: round half to even, keeping the sign of zero.
    fn rint(self) -> Self;
    fn is_nan(self) -> bool;
    fn copysign(self, sign: Self) -> Self;
    /// IEEE minNum / maxNum (NaN-ignoring; either zero on ±0 ties): vectorizes well.
    fn min_num(self, o: Self) -> Self;
    fn max_num(self, o: Self) -> Self;
    fn is_finite(self) -> bool;
    fn is_pos_zero(self) -> bool;
    fn is_neg_zero(self) -> bool;
    /// An integer whose order is the IEEE total order, with -0.0 merged into +0.0.
    fn order_key(self) -> i64;
    /// The value as i32 by the magic-number conversion (integer add of its bits): exact, and
    /// the flag true, for an integer-valued value of magnitude below 2^22 (f32) or 2^51 (f64,
    /// the i32 result then [`i32::MIN`] outside i32); the flag is false otherwise (NaN
    /// included). It stays in the value's own lane width, so it vectorizes.
    fn magic_i32(self) -> (i32, bool);
}

macro_rules! impl_real {
    ($t:ty, $bits:ty, $sbits:ty, $magic:expr) => {
        impl Real for $t {
            const INFINITY: Self = <$t>::INFINITY;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const ZERO: Self = 0.0;
            const NEG_ZERO: Self = -0.0;
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn rint(self) -> Self {
                // Adding and removing 2^(mantissa bits) rounds to an integer with the current
                // (nearest-even) rounding mode; it vectorizes on plain SSE2, unlike a libm call.
                // Magnitudes at or above the magic number are already integers (or inf/NaN).
                let magic: $t = $magic;
                let a = self.abs();
                if a < magic {
                    ((a + magic) - magic).copysign(self)
                } else {
                    self
                }
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn min_num(self, o: Self) -> Self {
                <$t>::min(self, o)
            }
            #[inline(always)]
            fn max_num(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            #[inline(always)]
            fn copysign(self, sign: Self) -> Self {
                <$t>::copysign(self, sign)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn is_pos_zero(self) -> bool {
                self.to_bits() == 0
            }
            #[inline(always)]
            fn is_neg_zero(self) -> bool {
                self.to_bits() == (-0.0 as $t).to_bits()
            }
            #[inline(always)]
            fn order_key(self) -> i64 {
                let v = if self == 0.0 { 0.0 } else { self };
                let b = v.to_bits() as $sbits;
                let mask = ((b >> (<$bits>::BITS - 1)) as $bits >> 1) as $sbits;
                (b ^ mask) as i64
            }
            #[inline(always)]
            fn magic_i32(self) -> (i32, bool) {
                <$t as MagicI32>::magic(self)
            }
        }
    };
}

impl_real!(f32, u32, i32, 8_388_608.0);
impl_real!(f64, u64, i64, 4_503_599_627_370_496.0);

/// `np.clip(x, lo, hi)` for one float: `min(max(x, lo), hi)` where max/min keep `x` when it
/// is NaN and otherwise pick the bound on ties (so clip(-0.0, 0, hi) is +0.0, as in numpy).
#[inline(always)]
#[allow(clippy::neg_cmp_op_on_partial_ord)] // deliberate: NaN must take the `x` branch
pub fn clip<T: Real>(x: T, lo: T, hi: T) -> T {
    // `!(x <= lo)` is `x > lo || x is NaN`, written so that it compiles to compare + blend.
    let y = if !(x <= lo) { x } else { lo };
    if !(y >= hi) {
        y
    } else {
        hi
    }
}

/// Output element types of `quantize`, with numpy's `astype` semantics on x86-64.
pub trait Cast: Copy + Send + Sync + 'static {
    /// The exact conversion.
    fn cast<R: Real>(v: R) -> Self;
    /// A conversion that vectorizes, valid for *integer-valued* `v` when the flag is true;
    /// when it is false the caller must use [`Cast::cast`] instead.
    #[inline(always)]
    fn cast_fast<R: Real>(v: R) -> (Self, bool) {
        (Self::cast(v), true)
    }
}

/// [`Real::magic_i32`] per type.
trait MagicI32 {
    fn magic(self) -> (i32, bool);
}

impl MagicI32 for f32 {
    #[inline(always)]
    fn magic(self) -> (i32, bool) {
        // 1.5 * 2^23: an integer of magnitude < 2^22 lands in the low mantissa bits
        const M: f32 = 12_582_912.0;
        let q = ((self + M).to_bits() as i32).wrapping_sub(M.to_bits() as i32);
        (q, self.abs() < 4_194_304.0)
    }
}

impl MagicI32 for f64 {
    #[inline(always)]
    fn magic(self) -> (i32, bool) {
        let (q, ok) = magic_i64(self);
        let fits = q >= i32::MIN as i64 && q <= i32::MAX as i64;
        (if fits { q as i32 } else { i32::MIN }, ok)
    }
}

/// 1.5 * 2^52: adding it to an integer of magnitude < 2^51 puts the integer in the low
/// mantissa bits, so the int conversion is a subtraction of bit patterns (SSE2-friendly).
const INT_MAGIC: f64 = 6_755_399_441_055_744.0;
const INT_MAGIC_LIMIT: f64 = 2_251_799_813_685_248.0; // 2^51

#[inline(always)]
fn magic_i64(x: f64) -> (i64, bool) {
    let q = ((x + INT_MAGIC).to_bits() as i64).wrapping_sub(INT_MAGIC.to_bits() as i64);
    (q, x.abs() < INT_MAGIC_LIMIT)
}

impl Cast for f64 {
    #[inline(always)]
    fn cast<R: Real>(v: R) -> Self {
        v.to_f64()
    }
}

impl Cast for f32 {
    #[inline(always)]
    fn cast<R: Real>(v: R) -> Self {
        v.to_f64() as f32
    }
}

impl Cast for i64 {
    /// Truncation; NaN, ±inf and out-of-range values give i64::MIN (cvttsd2si's
    /// "integer indefinite"), where Rust's `as` would saturate.
    #[inline(always)]
    fn cast<R: Real>(v: R) -> Self {
        let x = v.to_f64();
        if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&x) {
            x as i64
        } else {
            i64::MIN
        }
    }
    #[inline(always)]
    fn cast_fast<R: Real>(v: R) -> (Self, bool) {
        magic_i64(v.to_f64())
    }
}

impl Cast for i32 {
    /// Truncation; NaN, ±inf and values whose truncation leaves i32 give i32::MIN.
    #[inline(always)]
    fn cast<R: Real>(v: R) -> Self {
        let x = v.to_f64();
        if x > -2_147_483_649.0 && x < 2_147_483_648.0 {
            x as i32
        } else {
            i32::MIN
        }
    }
    #[inline(always)]
    fn cast_fast<R: Real>(v: R) -> (Self, bool) {
        let (q, ok) = magic_i64(v.to_f64());
        let fits = q >= i32::MIN as i64 && q <= i32::MAX as i64;
        (if fits { q as i32 } else { i32::MIN }, ok)
    }
}

/// Truncation to a narrow integer; NaN, ±inf and values whose truncation leaves the type give
/// its MIN (like [`i32`]'s `Cast`). The narrow outputs serve quantizers whose clip bounds lie
/// strictly above MIN, so MIN in a result marks such a value.
macro_rules! impl_cast_narrow {
    ($($t:ty),*) => {$(
        impl Cast for $t {
            #[inline(always)]
            fn cast<R: Real>(v: R) -> Self {
                let x = v.to_f64();
                if x > <$t>::MIN as f64 - 1.0 && x < <$t>::MAX as f64 + 1.0 {
                    x as $t
                } else {
                    <$t>::MIN
                }
            }
            #[inline(always)]
            fn cast_fast<R: Real>(v: R) -> (Self, bool) {
                // in the input's own width (f32 stays in 32-bit lanes)
                let (q, ok) = v.magic_i32();
                let fits = q >= <$t>::MIN as i32 && q <= <$t>::MAX as i32;
                (if fits { q as $t } else { <$t>::MIN }, ok)
            }
        }
    )*};
}
impl_cast_narrow!(i8, i16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_casts_truncate_and_mark_the_rest_with_min() {
        for (v, want) in [(3.0, 3i8), (-127.9, -127), (127.5, 127), (128.0, i8::MIN)] {
            assert_eq!(i8::cast(v), want, "{v}");
        }
        assert_eq!(i8::cast(f64::NAN), i8::MIN);
        assert_eq!(i16::cast(-32_768.5), i16::MIN);
        assert_eq!(i16::cast(32_767.0), i16::MAX);
        assert_eq!(i16::cast(f64::INFINITY), i16::MIN);
        assert_eq!(i8::cast_fast(-5.0), (-5, true));
        assert_eq!(i8::cast_fast(300.0), (i8::MIN, true));
        assert!(!i16::cast_fast(f64::NAN).1);
    }

    #[test]
    fn magic_i32_is_exact_where_it_says_so() {
        let limit = 4_194_304i32; // 2^22
        for v in
            (-limit + 1..limit)
                .step_by(997)
                .chain([0, 1, -1, limit - 1, -limit + 1, 127, -128])
        {
            assert_eq!((v as f32).magic_i32(), (v, true), "{v}");
            assert_eq!((v as f64).magic_i32(), (v, true), "{v}");
            assert_eq!(i8::cast_fast(v as f32), i8::cast_fast(v as f64), "{v}");
            assert_eq!(i16::cast_fast(v as f32), i16::cast_fast(v as f64), "{v}");
        }
        assert_eq!((-0.0f32).magic_i32(), (0, true));
        for bad in [
            4_194_304.0f32,
            -4_194_304.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert!(!bad.magic_i32().1, "{bad}");
        }
        assert_eq!(3e9f64.magic_i32(), (i32::MIN, true));
        assert!(!f64::NAN.magic_i32().1);
        // a narrow cast marks what leaves its type with MIN, from either width
        assert_eq!(i8::cast_fast(200.0f32), (i8::MIN, true));
        assert_eq!(i16::cast_fast(-40_000.0f32), (i16::MIN, true));
    }

    #[test]
    fn rint_ties_to_even_and_keeps_sign() {
        let cases = [
            (0.5f64, 0.0f64),
            (1.5, 2.0),
            (2.5, 2.0),
            (-0.5, -0.0),
            (-1.5, -2.0),
            (-2.5, -2.0),
            (0.49999999999999994, 0.0),
            (4_503_599_627_370_495.5, 4_503_599_627_370_496.0),
            (1e300, 1e300),
            (-0.3, -0.0),
        ];
        for (x, want) in cases {
            let x: f64 = x;
            let got: f64 = Real::rint(x);
            assert_eq!(got.to_bits(), f64::round_ties_even(x).to_bits(), "{x}");
            assert_eq!(got.to_bits(), want.to_bits(), "{x}");
        }
        assert!(Real::rint(f64::NAN).is_nan());
        assert_eq!(Real::rint(f64::INFINITY), f64::INFINITY);
        for x in [0.5f32, 1.5, 2.5, -2.5, 8_388_607.5, -0.2, 3e38] {
            assert_eq!(
                Real::rint(x).to_bits(),
                x.round_ties_even().to_bits(),
                "{x}"
            );
        }
    }

    #[test]
    fn rint_matches_std_on_a_sweep() {
        let mut x = -1000.0f64;
        while x < 1000.0 {
            assert_eq!(Real::rint(x).to_bits(), x.round_ties_even().to_bits());
            let y = x as f32;
            assert_eq!(Real::rint(y).to_bits(), y.round_ties_even().to_bits());
            x += 0.125;
        }
    }

    #[test]
    fn int_casts_follow_x86() {
        assert_eq!(<i64 as Cast>::cast(f64::NAN), i64::MIN);
        assert_eq!(<i64 as Cast>::cast(f64::INFINITY), i64::MIN);
        assert_eq!(<i64 as Cast>::cast(f64::NEG_INFINITY), i64::MIN);
        assert_eq!(<i64 as Cast>::cast(1e20f64), i64::MIN);
        assert_eq!(
            <i64 as Cast>::cast(9_223_372_036_854_775_808.0f64),
            i64::MIN
        );
        assert_eq!(
            <i64 as Cast>::cast(9_223_372_036_854_774_784.0f64),
            9_223_372_036_854_774_784
        );
        assert_eq!(
            <i64 as Cast>::cast(-9_223_372_036_854_775_808.0f64),
            i64::MIN
        );
        assert_eq!(<i64 as Cast>::cast(3e9f32), 3_000_000_000);
        assert_eq!(<i64 as Cast>::cast(-7.0f64), -7);
        assert_eq!(<i32 as Cast>::cast(3e9f64), i32::MIN);
        assert_eq!(<i32 as Cast>::cast(2_147_483_647.0f64), i32::MAX);
        assert_eq!(<i32 as Cast>::cast(-2_147_483_648.0f64), i32::MIN);
        assert_eq!(<i32 as Cast>::cast(f32::NAN), i32::MIN);
        assert_eq!(<f32 as Cast>::cast(1e300f64), f32::INFINITY);
        assert_eq!(<f32 as Cast>::cast(16_777_217.0f64), 16_777_216.0);
    }

    #[test]
    fn fast_casts_agree_with_exact_casts_where_valid() {
        let mut xs: Vec<f64> = (-3000..3000).map(|i| i as f64).collect();
        xs.extend([
            -0.0,
            2_147_483_647.0,
            2_147_483_648.0,
            -2_147_483_648.0,
            -2_147_483_649.0,
            2_251_799_813_685_247.0,
            -2_251_799_813_685_247.0,
        ]);
        for x in xs {
            let (q, ok) = <i64 as Cast>::cast_fast(x);
            assert!(ok);
            assert_eq!(q, <i64 as Cast>::cast(x), "{x}");
            let (q, ok) = <i32 as Cast>::cast_fast(x);
            assert!(ok);
            assert_eq!(q, <i32 as Cast>::cast(x), "{x}");
        }
        for x in [f64::NAN, f64::INFINITY, -1e300, 2_251_799_813_685_248.0] {
            assert!(!<i64 as Cast>::cast_fast(x).1);
            assert!(!<i32 as Cast>::cast_fast(x).1);
        }
    }

    #[test]
    fn clip_picks_bound_on_ties_and_keeps_nan() {
        assert!(clip(-0.0f64, 0.0, 5.0).is_pos_zero());
        assert!(clip(0.0f64, -5.0, -0.0).is_neg_zero());
        assert!(clip(f64::NAN, 0.0, 1.0).is_nan());
        assert_eq!(clip(7.0f64, 0.0, 5.0), 5.0);
        assert_eq!(clip(-7.0f64, 0.0, 5.0), 0.0);
        assert_eq!(clip(f64::INFINITY, 0.0, 5.0), 5.0);
        // lo > hi: hi wins, as in numpy.
        assert_eq!(clip(3.0f64, 4.0, 2.0), 2.0);
    }

    #[test]
    fn order_key_is_total_order_with_merged_zero() {
        let xs = [
            f64::NEG_INFINITY,
            -1e300,
            -1.0,
            -1e-300,
            0.0,
            1e-300,
            1.0,
            f64::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(w[0].order_key() < w[1].order_key());
        }
        assert_eq!((-0.0f64).order_key(), 0.0f64.order_key());
        assert_eq!((-0.0f32).order_key(), 0.0f32.order_key());
        assert!((-1.0f32).order_key() < 0.5f32.order_key());
    }
}
