//! The screened epilogue against the scalar float64 one (`requant::run_body`): the same
//! integers and extremes on random operands, on exact and near ties, on accumulators beyond
//! float32's exact range, and the calls it refuses.

use super::*;
use crate::kernels::integer::requant::{acc_rescale_quant_into, run_body, Stats};
use crate::kernels::test_rng::Rng;
use ndarray::Array2;

fn requant(scale: f64, zero_point: f64, lo: f64, hi: f64) -> Requant {
    Requant {
        scale,
        zero_point,
        lo,
        hi,
    }
}

/// A rescale without rounding or offset.
fn plain<'a>(sub: &'a [f64], mul: &'a [f64], add: Option<&'a [f64]>) -> Rescale<'a> {
    Rescale {
        lsbs: 0,
        offset: 0.0,
        sub,
        mul,
        add,
    }
}

/// The scalar epilogue's integers and extremes of `acc` (rows of `n` columns).
fn scalar(acc: &[i32], n: usize, r: &Rescale<'_>, q: &Requant) -> (Vec<i8>, Stats) {
    let wide: Vec<i64> = acc.iter().map(|&v| i64::from(v)).collect();
    let mut out = vec![MaybeUninit::<i8>::uninit(); acc.len()];
    let mut stats = Stats::EMPTY;
    for (a, d) in wide.chunks(n).zip(out.chunks_mut(n)) {
        stats = stats.join(run_body(a, d, r, (r.sub, r.mul, r.add), q));
    }
    // SAFETY: run_body wrote every element.
    let out = out.iter().map(|v| unsafe { v.assume_init() }).collect();
    (out, stats)
}

/// The fused kernel (screened where it applies) against the scalar epilogue; returns how
/// many of the rows' groups the screen itself wrote.
fn same(acc: &[i32], n: usize, r: &Rescale<'_>, q: &Requant) -> usize {
    let rows = acc.len() / n;
    let view = Array2::from_shape_vec((rows, n), acc.to_vec()).unwrap();
    let mut out = vec![MaybeUninit::<i8>::uninit(); acc.len()];
    let got = acc_rescale_quant_into(view.view(), r, q, &mut out).unwrap();
    // SAFETY: the kernel succeeded, so it wrote every element.
    let out: Vec<i8> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
    let (want, stats) = scalar(acc, n, r, q);
    assert_eq!(out, want, "integers, {q:?}");
    assert_eq!((got.min, got.max), (stats.lo, stats.hi), "extremes, {q:?}");
    assert!(!got.nan);
    let Some(screen) = Screen::new(r, q, n) else {
        return 0;
    };
    // the same rows as int64 (what the Gemm's centred products give), the columns the
    // screen leaves to the scalar epilogue
    let mut left = 0;
    let mut out = vec![MaybeUninit::<i8>::uninit(); acc.len()];
    for (row, dst) in acc.chunks(n).zip(out.chunks_mut(n)) {
        let wide: Vec<i64> = row.iter().map(|&v| i64::from(v)).collect();
        screen.row(&wide, dst, |from, to, dst| {
            left += (to - from).div_ceil(16);
            let operands = (&r.sub[from..], &r.mul[from..], r.add.map(|a| &a[from..]));
            run_body(&wide[from..to], &mut dst[from..to], r, operands, q);
        });
    }
    // SAFETY: the screen and run_body wrote every element.
    let out: Vec<i8> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
    assert_eq!(out, want, "int64 rows, {q:?}");
    rows * n.div_ceil(16) - left
}

#[test]
fn random_rows_match_the_scalar_epilogue() {
    if !SWITCH.available() {
        return;
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut screened = 0;
    for n in [16, 17, 31, 32, 48, 70, 128] {
        for span in [60, 4000, 1 << 20, (1 << 24) + 50] {
            let acc: Vec<i32> = (0..n * 40).map(|_| rng.int(span) as i32).collect();
            let sub: Vec<f64> = (0..n).map(|_| rng.float(-500.0, 500.0).round()).collect();
            let mul: Vec<f64> = (0..n)
                .map(|_| rng.float(-3.0, 3.0) * 60.0 / span as f64)
                .collect();
            let add: Vec<f64> = (0..n).map(|_| rng.float(-2.0, 2.0)).collect();
            for with_add in [false, true] {
                let r = Rescale {
                    lsbs: 0,
                    offset: rng.float(-2000.0, 2000.0).round(),
                    sub: &sub,
                    mul: &mul,
                    add: with_add.then_some(&add[..]),
                };
                let scale = rng.float(0.05, 3.0);
                screened += same(&acc, n, &r, &requant(scale, 3.0, -100.0, 120.0));
                screened += same(&acc, n, &r, &requant(scale, 0.0, -31.0, 31.0));
                screened += same(&acc, n, &r, &requant(scale, 0.0, 0.0, 63.0));
            }
        }
    }
    // the screen wrote most groups (it is not a test of the fallback alone)
    assert!(screened > 5000, "{screened}");
}

#[test]
fn exact_and_near_ties_fall_back() {
    if !SWITCH.available() {
        return;
    }
    // acc · 0.5 (+ a nudge of a few float64 ulps): exact .5 ties, and values a hair from
    // them on either side, both signs, beyond the bounds on both sides
    let n = 32;
    let acc: Vec<i32> = (-400..400).collect();
    let zero = vec![0.0; n];
    for nudge in [0.0, 1e-15, -1e-15, 3e-9, -3e-9] {
        let mul = vec![0.5 + nudge; n];
        let r = plain(&zero, &mul, None);
        same(&acc, n, &r, &requant(1.0, 0.0, -100.0, 100.0));
        same(&acc, n, &r, &requant(1.0, 0.0, -128.0, 127.0));
        same(&acc, n, &r, &requant(0.5, 7.0, -128.0, 127.0));
    }
}

#[test]
fn accumulators_beyond_float32_fall_back() {
    if !SWITCH.available() {
        return;
    }
    let n = 16;
    let mut acc: Vec<i32> = vec![1 << 24, -(1 << 24), (1 << 24) + 1, i32::MIN, i32::MAX];
    acc.extend((0..n * 8 - acc.len()).map(|i| (i as i32 - 60) * ((1 << 24) / 64 + 3)));
    let sub = vec![0.0; n];
    let mul = vec![100.0 / f64::from(1 << 24); n];
    let r = plain(&sub, &mul, None);
    let q = requant(1.0, 0.0, -128.0, 127.0);
    same(&acc, n, &r, &q);
    // the odd accumulators are beyond float32's integers: their group is not screened
    let screen = Screen::new(&r, &q, n).unwrap();
    let mut dst = vec![MaybeUninit::<i8>::uninit(); n];
    let mut left = vec![];
    screen.row(&acc[..n], &mut dst, |from, to, _| left.push((from, to)));
    assert_eq!(left, vec![(0, 16)]);
    let wide: Vec<i64> = [1i64 << 40]
        .into_iter()
        .chain((1..n as i64).map(|i| i * 3))
        .collect();
    left.clear();
    screen.row(&wide, &mut dst, |from, to, _| left.push((from, to)));
    assert_eq!(left, vec![(0, 16)]);
}

#[test]
fn calls_outside_its_range_are_refused() {
    let n = 16;
    let ones = vec![1.0; n];
    let zero = vec![0.0; n];
    let base = plain(&zero, &ones, None);
    let q = requant(1.0, 0.0, -128.0, 127.0);
    assert_eq!(Screen::new(&base, &q, n).is_some(), SWITCH.available());
    // rounding, a short row, a non-finite or huge operand, a tiny scale
    let rounded = Rescale { lsbs: 2, ..base };
    assert!(Screen::new(&rounded, &q, n).is_none());
    assert!(Screen::new(&base, &q, 15).is_none());
    let nan = vec![f64::NAN; n];
    assert!(Screen::new(&Rescale { mul: &nan, ..base }, &q, n).is_none());
    let huge = vec![1e30; n];
    assert!(Screen::new(&Rescale { sub: &huge, ..base }, &q, n).is_none());
    assert!(Screen::new(&base, &requant(1e-30, 0.0, -128.0, 127.0), n).is_none());
    assert!(Screen::new(
        &Rescale {
            offset: f64::INFINITY,
            ..base
        },
        &q,
        n
    )
    .is_none());
    // operands shorter than the row
    assert!(Screen::new(&base, &q, n + 1).is_none());
}

#[test]
fn up_rounds_toward_plus_infinity() {
    for v in [1e-7, 0.3, 2f64.powi(-20), 1.0 + 1e-12] {
        let f = up(v);
        assert!(f64::from(f) >= v);
        assert!(f64::from(f32::from_bits(f.to_bits() - 1)) < v);
    }
}

#[test]
fn the_tolerance_rejects_what_float32_rounds_wrong() {
    if !SWITCH.available() {
        return;
    }
    // a large bias against a large product (|v| + |B| near 20000): float32 alone rounds over a
    // hundred (157) of these 400k values the other way; the screen must send every one of them on
    let n = 16;
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mul: Vec<f64> = (0..n).map(|_| rng.float(0.01, 0.02)).collect();
    let add: Vec<f64> = (0..n).map(|_| rng.float(19000.0, 21000.0)).collect();
    let zero = vec![0.0; n];
    let r = plain(&zero, &mul, Some(&add));
    let q = requant(1.0, 0.0, -128.0, 127.0);
    let starts: Vec<i32> = (0..n)
        .map(|j| ((-129.0 - add[j]) / mul[j]) as i32)
        .collect();
    let rows = 25_000;
    let acc: Vec<i32> = (0..rows)
        .flat_map(|i| starts.iter().map(move |&s| s + i))
        .collect();
    let screen = Screen::new(&r, &q, n).unwrap();
    let (want, _) = scalar(&acc, n, &r, &q);
    let naive = acc
        .iter()
        .zip(&want)
        .enumerate()
        .filter(|&(i, (&a, &w))| {
            let j = i % n;
            let v = (a as f32).mul_add(screen.a[j], screen.b[j]);
            v.round_ties_even().clamp(-128.0, 127.0) as i8 != w
        })
        .count();
    assert!(naive > 50, "{naive}");
    let screened = same(&acc, n, &r, &q);
    assert!(screened > rows as usize / 2, "{screened}");
}
