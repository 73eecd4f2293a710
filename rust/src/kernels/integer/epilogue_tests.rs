//! The vector epilogues (AVX2, and AVX-512 where the CPU has it and the quantizer is
//! covered) against the scalar `run_body` (the definition): the same integers, extremes, NaN
//! and overflow flags, on random runs and on the edge cases of every step.

use super::*;
use crate::kernels::integer::epilogue_avx512;
use crate::kernels::quant::float::{clip, Real};
use crate::kernels::test_rng::Rng;

fn avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Run both epilogues on `acc` and compare everything they give.
fn same<I: Accumulator, S: Operand, O: Narrow>(
    acc: &[I],
    rescale: &Rescale<'_>,
    operands: (S, S, Option<S>),
    q: &Requant,
) -> Stats {
    let wide: Vec<i64> = acc.iter().map(|v| v.widen()).collect();
    let mut want = vec![MaybeUninit::<O>::uninit(); acc.len()];
    let want_stats = run_body(&wide, &mut want, rescale, operands, q);
    let mut got = vec![MaybeUninit::<O>::uninit(); acc.len()];
    // SAFETY: the callers check AVX2; lsbs <= MAX_LSBS in every case.
    let got_stats = unsafe { run(acc, &mut got, rescale, operands, q) };
    // SAFETY: both epilogues write every element of their run.
    let ints = |v: &[MaybeUninit<O>]| -> Vec<i32> {
        v.iter()
            .map(|x| unsafe { x.assume_init() }.to_i32())
            .collect()
    };
    assert_eq!(ints(&got), ints(&want), "{wide:?} {rescale:?} {q:?}");
    assert_eq!(got_stats, want_stats, "{wide:?} {rescale:?} {q:?}");
    if crate::kernels::simd::wide_vectors() && epilogue_avx512::covers(q) {
        let mut got = vec![MaybeUninit::<O>::uninit(); acc.len()];
        // SAFETY: AVX-512 checked just above, and the epilogue covers `q`.
        let got_stats = unsafe { epilogue_avx512::run(acc, &mut got, rescale, operands, q) };
        assert_eq!(
            ints(&got),
            ints(&want),
            "AVX-512 {wide:?} {rescale:?} {q:?}"
        );
        assert_eq!(got_stats, want_stats, "AVX-512 {wide:?} {rescale:?} {q:?}");
    }
    want_stats
}

/// `same` with slice operands and with the scalar operands of their first values, for
/// i8 and i16 outputs.
fn same_all<I: Accumulator>(acc: &[I], r: &Rescale<'_>, q: &Requant) {
    same::<I, &[f64], i16>(acc, r, (r.sub, r.mul, r.add), q);
    let (s, m, a) = (r.sub[0], r.mul[0], r.add.map(|a| a[0]));
    same::<I, f64, i16>(acc, r, (s, m, a), q);
    if q.lo >= -128.0 && q.hi <= 127.0 {
        same::<I, &[f64], i8>(acc, r, (r.sub, r.mul, r.add), q);
        same::<I, f64, i8>(acc, r, (s, m, a), q);
    }
}

fn requant(scale: f64, zero_point: f64, lo: f64, hi: f64) -> Requant {
    Requant {
        scale,
        zero_point,
        lo,
        hi,
    }
}

#[test]
fn random_runs_match_the_scalar_epilogue() {
    if !avx2() {
        return;
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let lengths: Vec<usize> = (0..=20).chain([31, 64, 67, 128, 133]).collect();
    let spans = [100, 1 << 20, 1 << 40, 1 << 52, 1 << 61];
    for &len in &lengths {
        for &span in &spans {
            for lsbs in [0, 1, 5, 30] {
                let acc: Vec<i64> = (0..len).map(|_| rng.int(span)).collect();
                let wide = len.max(1);
                let sub: Vec<f64> = (0..wide).map(|_| rng.float(-50.0, 50.0)).collect();
                let mul: Vec<f64> = (0..wide)
                    .map(|_| rng.float(-3.0, 3.0) * 100.0 / span as f64)
                    .collect();
                let add: Vec<f64> = (0..wide).map(|_| rng.float(-2.0, 2.0)).collect();
                for with_add in [false, true] {
                    let r = Rescale {
                        lsbs,
                        offset: rng.float(-20.0, 20.0),
                        sub: &sub,
                        mul: &mul,
                        add: with_add.then_some(&add[..]),
                    };
                    let scale = rng.float(0.05, 3.0);
                    same_all(&acc, &r, &requant(scale, 3.0, -100.0, 120.0));
                    same_all(&acc, &r, &requant(scale, 0.0, -31.0, 31.0));
                    same_all(&acc, &r, &requant(scale / 200.0, -7.0, -30000.0, 32767.0));
                    let small: Vec<i32> = acc.iter().map(|&v| v as i32).collect();
                    same_all(&small, &r, &requant(scale, 1.0, -128.0, 127.0));
                }
            }
        }
    }
}

#[test]
fn ties_zeros_and_clip_bounds() {
    if !avx2() {
        return;
    }
    // odd accumulators times 0.5: every value an exact .5 tie, both signs, and beyond
    // the bounds on both sides
    let acc: Vec<i64> = (-41..=41).collect();
    let half = vec![0.5; acc.len()];
    let zero = vec![0.0; acc.len()];
    let neg = vec![-0.0; acc.len()];
    let r = Rescale {
        lsbs: 0,
        offset: 0.0,
        sub: &zero,
        mul: &half,
        add: None,
    };
    for q in [
        requant(1.0, 0.0, -8.0, 9.0),
        requant(1.0, 0.0, 0.0, 127.0),
        requant(1.0, 0.0, -128.0, 0.0),
        requant(1.0, -0.0, -3.0, 3.0),
        requant(0.1, 0.5, -127.0, 127.0),
        requant(4.0, 0.0, -1.0, 1.0),
    ] {
        same_all(&acc, &r, &q);
        let small: Vec<i32> = acc.iter().map(|&v| v as i32).collect();
        same_all(&small, &r, &q);
        // -0.0 added last: zeros keep or lose their sign before rounding
        let r = Rescale {
            add: Some(&neg),
            ..r
        };
        same_all(&acc, &r, &q);
    }
    // tiny values: rint gives ±0 before the clip picks a zero bound
    let tiny = vec![1e-300; acc.len()];
    let r = Rescale { mul: &tiny, ..r };
    let stats =
        same::<i64, &[f64], i8>(&acc, &r, (r.sub, r.mul, None), &requant(1.0, 0.0, 0.0, 5.0));
    assert_eq!((stats.lo, stats.hi), (0, 0));
}

#[test]
fn nan_results() {
    if !avx2() {
        return;
    }
    let acc: Vec<i64> = (0..19).map(|i| i * 3 - 20).collect();
    let ones = vec![1.0; acc.len()];
    let zeros = vec![0.0; acc.len()];
    let mut nan_mul = ones.clone();
    nan_mul[9] = f64::NAN;
    nan_mul[2] = f64::NAN;
    let inf = vec![f64::INFINITY; acc.len()];
    let q = requant(1.0, 0.0, -100.0, 100.0);
    // a NaN operand in the vector part and in the tail
    let r = Rescale {
        lsbs: 0,
        offset: 0.0,
        sub: &zeros,
        mul: &nan_mul,
        add: None,
    };
    assert!(same::<i64, &[f64], i8>(&acc, &r, (r.sub, r.mul, None), &q).nan);
    // inf − inf
    let r = Rescale {
        offset: f64::INFINITY,
        sub: &inf,
        mul: &ones,
        ..r
    };
    same_all(&acc, &r, &q);
    assert!(same::<i64, f64, i16>(&acc, &r, (f64::INFINITY, 1.0, None), &q).nan);
    // 0 · inf at the accumulator 1 only (offset −1)
    let r = Rescale {
        offset: -1.0,
        sub: &zeros,
        mul: &inf,
        add: Some(&ones),
        ..r
    };
    let acc: Vec<i64> = (0..16).map(|i| i % 3).collect();
    same_all(&acc, &r, &q);
    // a NaN scale: every value NaN, integers 0
    let stats = same::<i64, &[f64], i8>(
        &acc,
        &r,
        (r.sub, r.mul, None),
        &requant(f64::NAN, 0.0, -1.0, 1.0),
    );
    assert!(stats.nan);
    assert_eq!((stats.lo, stats.hi), (0, 0));
}

#[test]
fn magic_range_and_fallback() {
    if !avx2() {
        return;
    }
    const E: i64 = 1 << 51;
    let edges = [
        E - 1,
        E,
        -E,
        -E - 1,
        E + 1,
        1 << 53,
        -(1 << 60),
        i64::MAX,
        i64::MIN,
    ];
    let ones = vec![1.0; 24];
    let zeros = vec![0.0; 24];
    let scales = vec![1.0 / E as f64; 24];
    for lsbs in [0, 2, 40] {
        let r = Rescale {
            lsbs,
            offset: 0.0,
            sub: &zeros,
            mul: &scales,
            add: Some(&ones),
        };
        for &edge in &edges {
            for at in [0, 5, 7, 8, 15, 17] {
                let mut acc: Vec<i64> = (0..24).map(|i| (i - 12) * 1000).collect();
                acc[at] = edge;
                let q = requant(0.01, 0.0, -30000.0, 30000.0);
                let stats = same::<i64, &[f64], i16>(&acc, &r, (r.sub, r.mul, r.add), &q);
                let limit = if lsbs > 0 {
                    i64::MAX - (1 << (lsbs - 1))
                } else {
                    i64::MAX
                };
                assert_eq!(stats.over, edge > limit, "{edge} {lsbs}");
                same::<i64, f64, i8>(
                    &acc,
                    &r,
                    (0.0, 1.0 / E as f64, None),
                    &requant(0.5, 0.0, -128.0, 127.0),
                );
            }
        }
    }
    // int32 accumulators with a rounding that takes them past 2^51 (lsbs 60)
    let acc: Vec<i32> = (0..20).map(|i| (i - 10) * 100_000_000).collect();
    let r = Rescale {
        lsbs: 60,
        offset: 0.0,
        sub: &zeros,
        mul: &ones,
        add: None,
    };
    same_all(&acc, &r, &requant(1e15, 0.0, -100.0, 100.0));
    let acc: Vec<i32> = vec![i32::MAX, i32::MIN, 0, 1, -1, 7, -7, 3, 5, 9, i32::MAX - 3];
    let r = Rescale { lsbs: 3, ..r };
    same_all(&acc, &r, &requant(1e7, 0.0, -300.0, 300.0));
}

#[test]
fn vector_round_is_rint_and_vector_clip_is_clip() {
    if !avx2() {
        return;
    }
    let mut xs = vec![
        0.0,
        -0.0,
        0.5,
        -0.5,
        1.5,
        -1.5,
        2.5,
        -2.5,
        0.49999999999999994,
        -0.49999999999999994,
        4_503_599_627_370_495.5,
        -4_503_599_627_370_495.5,
        4_503_599_627_370_496.0,
        9e15,
        1e300,
        -1e300,
        f64::MIN_POSITIVE,
        -f64::MIN_POSITIVE,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -127.5,
        127.5,
        128.5,
        -128.5,
    ];
    let mut x = -300.0;
    while x < 300.0 {
        xs.push(x);
        x += 0.125;
    }
    while xs.len() % 4 != 0 {
        xs.push(0.25);
    }
    for bounds in [
        (-128.0, 127.0),
        (0.0, 5.0),
        (-5.0, -0.0),
        (-0.0, 0.0),
        (2.0, 2.0),
    ] {
        let (lo, hi) = bounds;
        // SAFETY: AVX2 checked above.
        let k = unsafe {
            Consts {
                lo: _mm256_set1_pd(lo),
                hi: _mm256_set1_pd(hi),
                ..consts_for_tests()
            }
        };
        for group in xs.chunks_exact(4) {
            let mut out = [0.0f64; 4];
            let mut rounded = [0.0f64; 4];
            // SAFETY: AVX2 checked above; the arrays hold four f64.
            unsafe {
                let v = _mm256_loadu_pd(group.as_ptr());
                // unbounded clip: the rounding alone
                let r = round_clip(v, &consts_for_tests());
                _mm256_storeu_pd(rounded.as_mut_ptr(), r);
                _mm256_storeu_pd(out.as_mut_ptr(), round_clip(v, &k));
            }
            for ((&x, &r), &c) in group.iter().zip(&rounded).zip(&out) {
                let want = Real::rint(x);
                assert!(
                    r.to_bits() == want.to_bits() || (r.is_nan() && want.is_nan()),
                    "{x}"
                );
                let want = clip(want, lo, hi);
                assert!(
                    c.to_bits() == want.to_bits() || (c.is_nan() && want.is_nan()),
                    "{x}"
                );
            }
        }
    }
}

#[test]
fn groups_the_avx512_epilogue_does_not_cover_go_to_the_avx2_one() {
    if !(avx2() && crate::kernels::simd::wide_vectors()) {
        return;
    }
    // a value of 2^500 or more, an infinite and a NaN one in the second group of three;
    // tiny values (below 2^-500) everywhere in the first
    let acc: Vec<i32> = (0..53).map(|i| i * 37 - 900).collect();
    let zeros = vec![0.0; acc.len()];
    for (at, big) in [(20, 2f64.powi(520)), (31, f64::INFINITY), (16, f64::NAN)] {
        let mut mul = vec![0.01; acc.len()];
        mul[at] = big;
        for m in mul.iter_mut().take(16) {
            *m = 2f64.powi(-520);
        }
        let r = Rescale {
            lsbs: 0,
            offset: 0.5,
            sub: &zeros,
            mul: &mul,
            add: None,
        };
        for zero_point in [0.0, 5.0, -3.0] {
            let q = requant(0.01, zero_point, -30000.0, 30000.0);
            assert!(epilogue_avx512::covers(&q));
            let stats = same::<i32, &[f64], i16>(&acc, &r, (r.sub, r.mul, r.add), &q);
            assert_eq!(stats.nan, big.is_nan());
        }
    }
    // rounded int64 accumulators, one of which leaves int64 when rounded
    let mut acc: Vec<i64> = (0..40).map(|i| (i - 20) << 40).collect();
    acc[22] = i64::MAX - 3;
    let ones = vec![2f64.powi(-40); acc.len()];
    let r = Rescale {
        lsbs: 4,
        offset: 0.0,
        sub: &zeros[..40],
        mul: &ones,
        add: Some(&ones),
    };
    let q = requant(0.5, 1.0, -30000.0, 30000.0);
    assert!(same::<i64, &[f64], i16>(&acc, &r, (r.sub, r.mul, r.add), &q).over);
    acc[22] = 0;
    assert!(!same::<i64, &[f64], i16>(&acc, &r, (r.sub, r.mul, r.add), &q).over);
}

fn consts_for_tests() -> Consts {
    // SAFETY: the callers check AVX2.
    unsafe {
        Consts {
            offset: _mm256_setzero_pd(),
            scale: _mm256_set1_pd(1.0),
            zero_point: _mm256_setzero_pd(),
            lo: _mm256_set1_pd(f64::NEG_INFINITY),
            hi: _mm256_set1_pd(f64::INFINITY),
            magic: _mm256_set1_pd(MAGIC),
            magic_bits: _mm256_set1_epi64x(MAGIC.to_bits() as i64),
            bias: _mm256_set1_epi64x(1 << 51),
            half: _mm256_setzero_si256(),
            mask: _mm256_set1_epi64x(-1),
        }
    }
}

#[test]
fn magic_conversion_is_exact() {
    if !avx2() {
        return;
    }
    const E: i64 = 1 << 51;
    let k = consts_for_tests();
    let vals = [
        0,
        1,
        -1,
        E - 1,
        -E,
        12345678901234,
        -98765432109876,
        1 << 50,
    ];
    for group in vals.chunks_exact(4) {
        let mut out = [0.0f64; 4];
        // SAFETY: AVX2 checked above; four i64 in, four f64 out.
        unsafe {
            let v = _mm256_loadu_si256(group.as_ptr().cast());
            _mm256_storeu_pd(out.as_mut_ptr(), exact_f64(v, &k));
        }
        for (&v, &f) in group.iter().zip(&out) {
            assert_eq!(f.to_bits(), (v as f64).to_bits(), "{v}");
        }
    }
}
