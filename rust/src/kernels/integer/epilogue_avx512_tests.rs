//! The fused division against IEEE division, and which calls the AVX-512 epilogue covers.
//! (Its integers against the scalar epilogue's, the groups it hands to the AVX2 one
//! included: `epilogue_tests`, whose every comparison also runs this epilogue where it
//! applies.)

use super::*;
use crate::kernels::test_rng::Rng;

fn wide() -> bool {
    simd::wide_vectors()
}

fn consts(scale: f64) -> Consts {
    // SAFETY: the callers check AVX-512.
    unsafe {
        Consts {
            offset: None,
            scale: _mm512_set1_pd(scale),
            recip: _mm512_set1_pd(1.0 / scale),
            zero_point: _mm512_setzero_pd(),
            lo: _mm512_set1_pd(-128.0),
            hi: _mm512_set1_pd(127.0),
            x_max: _mm512_set1_pd(X_MAX),
            half: _mm512_setzero_si512(),
            mask: _mm512_set1_epi64(-1),
            limit: _mm512_set1_epi64(i64::MAX),
        }
    }
}

/// `divide` on eight numerators against `x / scale`, bit for bit.
fn check_division(xs: &[f64; 8], scale: f64) {
    let mut got = [0.0f64; 8];
    // SAFETY: the callers check AVX-512; eight f64 in and out.
    unsafe {
        let q = divide(_mm512_loadu_pd(xs.as_ptr()), &consts(scale));
        _mm512_storeu_pd(got.as_mut_ptr(), q);
    }
    for (&x, &q) in xs.iter().zip(&got) {
        assert_eq!(q.to_bits(), (x / scale).to_bits(), "{x:e} / {scale:e}");
    }
}

#[test]
fn fused_division_is_the_division() {
    if !wide() {
        return;
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // random numerators over the covered range, random scales over theirs and over the
    // scales quantizers have
    for round in 0..40_000 {
        let scale = if round % 2 == 0 {
            rng.float_exp(-400, 399)
        } else {
            rng.float_exp(-20, 6)
        };
        let mut xs = [0.0; 8];
        for x in xs.iter_mut() {
            *x = rng.float_exp(-500, 499);
        }
        check_division(&xs, scale);
        for x in xs.iter_mut() {
            *x = rng.float_exp(-40, 40);
        }
        check_division(&xs, scale);
    }
    // the hard divisors (significands of all ones, one above a power of two, powers of two)
    // and exact quotients, quotients next to a halfway point, integers
    let ones = f64::from_bits((1023u64 << 52) | ((1 << 52) - 1));
    let above = f64::from_bits((1023u64 << 52) | 1);
    for scale in [
        ones,
        -ones,
        above,
        1.0,
        0.5,
        3.0,
        0.1,
        1.0 / 3.0,
        1e-5,
        12345.678,
    ] {
        for base in 0..2000 {
            let k = base as f64 - 1000.0;
            let xs = [
                k * scale,
                (k + 0.5) * scale,
                (k + 0.5) * scale * (1.0 + f64::EPSILON),
                (k - 0.5) * scale * (1.0 - f64::EPSILON),
                k,
                k + 0.5,
                k * ones,
                k * 1e-3,
            ];
            check_division(&xs, scale);
        }
    }
}

fn requant(scale: f64, zero_point: f64) -> Requant {
    Requant {
        scale,
        zero_point,
        lo: -30000.0,
        hi: 30000.0,
    }
}

#[test]
fn what_is_covered() {
    assert!(covers(&requant(0.05, 3.0)));
    assert!(covers(&requant(-7.0, -0.0)));
    assert!(covers(&requant(SCALE_MIN, 0.0)) && covers(&requant(SCALE_MAX, 0.0)));
    assert!(!covers(&requant(SCALE_MIN / 2.0, 0.0)));
    assert!(!covers(&requant(SCALE_MAX * 2.0, 0.0)));
    assert!(!covers(&requant(0.05, 0.5)));
    for bad in [f64::NAN, f64::INFINITY, 0.0] {
        assert!(!covers(&requant(bad, 0.0)), "{bad}");
    }
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(!covers(&requant(0.05, bad)), "{bad}");
    }
}
