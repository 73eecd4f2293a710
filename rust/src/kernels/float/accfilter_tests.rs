//! The integer-filtered extremes kernel against the exact one: the same extremes, bit for bit,
//! on random layers and on the edge cases of each stage.

use super::*;
use crate::kernels::float::matmul::matmul_f64_sequential;
use ndarray::{Array1, Array2};

/// A reproducible stream in [0, 1).
fn unit(i: usize, salt: usize) -> f64 {
    let h = (i.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40_503)) % 1_000_003;
    h as f64 / 1_000_003.0
}

/// Integers in [lo, hi].
fn ints(shape: (usize, usize), salt: usize, lo: i64, hi: i64) -> Array2<i64> {
    Array2::from_shape_fn(shape, |(i, j)| {
        lo + (unit(i * shape.1 + j, salt) * (hi - lo + 1) as f64) as i64
    })
}

/// Weights, their integers (quantized with `step`, clipped to 6 bits, or unrelated).
fn weights(k: usize, m: usize, salt: usize, style: usize) -> (Array2<f64>, Array2<i64>) {
    let w = Array2::from_shape_fn((k, m), |(i, j)| unit(i * m + j, salt) - 0.45);
    let step = 1.0 / 63.0 / [1.0, 3.0, 1.0][style % 3];
    let wq = if style % 3 == 2 {
        ints((k, m), salt + 1, -32, 31)
    } else {
        w.mapv(|v| (v / step).round().clamp(-32.0, 31.0) as i64)
    };
    (w, wq)
}

fn run(
    a: &Array2<i64>,
    wq: &Array2<i64>,
    z_w: i64,
    w: &Array2<f64>,
    bias: Option<&Array1<f64>>,
    (s, z): (f64, f64),
) -> (Extremes<f64>, AccCounts) {
    let a16 = a.mapv(|v| v as i16);
    let (n, m) = (a.nrows(), w.ncols());
    let mut acc = vec![MaybeUninit::uninit(); n * m];
    let bv = bias.map(|b| b.view());
    let isa = Isa::detect();
    let (got, c) = acc_extremes(
        a16.view(),
        wq.view(),
        z_w,
        w.view(),
        bv,
        (s, z),
        false,
        isa,
        &mut acc,
    );
    let load = |v: i16| dequantize_value(v, s, z);
    let want = matmul_extremes(a16.view(), load, w.view(), bv, isa).unwrap();
    let got = got.unwrap();
    assert_eq!(got.finite, want.finite, "{got:?} {want:?}");
    if want.finite {
        assert_eq!(got.min.to_bits(), want.min.to_bits(), "{got:?} {want:?}");
        assert_eq!(got.max.to_bits(), want.max.to_bits(), "{got:?} {want:?}");
    }
    // the accumulators are int_matmul's
    let want_acc = crate::kernels::integer::gemm::matmul(
        a.view().insert_axis(Axis(0)),
        wq.view().insert_axis(Axis(0)),
        z_w,
    )
    .unwrap();
    for (g, &v) in acc.iter().zip(want_acc.iter()) {
        // SAFETY: acc_extremes succeeded, so it wrote every accumulator.
        assert_eq!(i64::from(unsafe { g.assume_init() }), v);
    }
    (got, c)
}

/// Every estimate is within its bound of the exact kernel's value.
fn bound_holds(
    a: &Array2<i64>,
    wq: &Array2<i64>,
    z_w: i64,
    w: &Array2<f64>,
    b: &[f64],
    s: f64,
    z: i64,
) {
    let (n, m) = (a.nrows(), w.ncols());
    let cols = columns(wq.view(), z_w, w.view(), b, (s, z)).unwrap();
    let x = a.mapv(|v| dequantize_value(v, s, z as f64));
    let y = matmul_f64_sequential(x.view(), w.view()).unwrap();
    let acc = crate::kernels::integer::gemm::matmul(
        a.view().insert_axis(Axis(0)),
        wq.view().insert_axis(Axis(0)),
        z_w,
    )
    .unwrap();
    for r in 0..n {
        let row: Vec<i64> = a.row(r).to_vec();
        let dn = scaled_norm(&row, s, z);
        if let Ok(z32) = i32::try_from(z) {
            if row
                .iter()
                .all(|&v| i32::try_from(v).is_ok_and(|v| v.checked_sub(z32).is_some()))
            {
                assert_eq!(scaled_norm_narrow(&row, s, z32).to_bits(), dn.to_bits());
            }
        }
        for j in 0..m {
            let exact = y[[r, j]] + b.get(j).copied().unwrap_or(-0.0);
            let g = cols.alpha[j] * ((acc[[0, r, j]] - cols.zs[j]) as f64) + cols.bias[j];
            let d = (dn * cols.spread[j] + cols.abs[j]) * BOUND_REL + 5.0 * U * g.abs();
            assert!(
                g - d <= exact && exact <= g + d,
                "{r} {j}: {g} ± {d} vs {exact}"
            );
        }
    }
}

#[test]
fn the_bound_holds_on_adversarial_cases() {
    for (salt, &(n, k, m)) in [(1, 1, 1), (3, 2, 5), (20, 17, 9), (9, 64, 33), (5, 130, 3)]
        .iter()
        .enumerate()
    {
        for style in 0..3 {
            let (w, wq) = weights(k, m, salt, style);
            let bias: Vec<f64> = (0..m).map(|j| unit(j, salt + 7) * 1e3).collect();
            for (lo, hi, z) in [(-32, 31, 0), (0, 63, 5), (-2000, 2000, -1000), (0, 0, 3)] {
                let a = ints((n, k), salt + 3, lo, hi);
                for s in [0.05, 1e-310, 1e-200, 3e20] {
                    bound_holds(&a, &wq, 0, &w, &bias, s, z);
                    bound_holds(&a, &wq, -3, &w, &[], s, z);
                }
            }
        }
    }
}

#[test]
fn the_constants_follow_the_weights() {
    let (w, wq) = weights(9, 4, 3, 0);
    let first = columns(wq.view(), 0, w.view(), &[], (0.5, 1)).unwrap();
    // (a hit is not asserted: tests running alongside may evict the layer)
    let again = columns(wq.view(), 0, w.view(), &[], (0.5, 1)).unwrap();
    assert_eq!((&again.t, &again.spread), (&first.t, &first.spread));
    // one weight, one integer, the zero point or the bias changed: new constants
    let mut w2 = w.clone();
    w2[[2, 1]] = f64::from_bits(w2[[2, 1]].to_bits() + 1);
    let mut wq2 = wq.clone();
    wq2[[0, 3]] += 1;
    for (wq_, z_w, w_, b) in [
        (&wq, 0, &w2, &[][..]),
        (&wq2, 0, &w, &[][..]),
        (&wq, 1, &w, &[][..]),
        (&wq, 0, &w, &[0.0, 0.0, 0.0, -0.0][..]),
    ] {
        let other = columns(wq_.view(), z_w, w_.view(), b, (0.5, 1)).unwrap();
        assert!(!Arc::ptr_eq(&first.base, &other.base));
        let fresh = base(wq_.view(), z_w, w_.view(), b).unwrap();
        assert_eq!(other.t, fresh.t);
        assert_eq!(other.sums, fresh.sums);
    }
    // the scale and zero point are applied per call
    let twice = columns(wq.view(), 0, w.view(), &[], (1.0, 2)).unwrap();
    for j in 0..4 {
        assert_eq!(twice.alpha[j], 2.0 * first.alpha[j]);
        assert_eq!(twice.zs[j], 2 * first.zs[j]);
    }
}

#[test]
fn filtered_extremes_are_the_exact_ones() {
    for (salt, &(n, k, m)) in [
        (1, 1, 1),
        (70, 3, 5),
        (300, 17, 9),
        (777, 64, 33),
        (130, 130, 3),
    ]
    .iter()
    .enumerate()
    {
        for style in 0..3 {
            let (w, wq) = weights(k, m, salt, style);
            let bias = Array1::from_shape_fn(m, |j| unit(j, salt + 7) - 0.5);
            let a = ints((n, k), salt + 3, 0, 63);
            run(&a, &wq, 0, &w, None, (0.05, 0.0));
            run(&a, &wq, 2, &w, Some(&bias), (0.05, 3.0));
            run(&a, &wq, 0, &w, Some(&bias), (1e-310, 0.0));
            // a non-integral zero point falls back
            let (_, c) = run(&a, &wq, 0, &w, None, (0.05, 0.5));
            assert_eq!(c.fallbacks, 1);
        }
    }
}

#[test]
fn unclean_cases_fall_back_to_the_exact_bits() {
    let (n, k, m) = (300, 8, 6);
    let (w, wq) = weights(k, m, 4, 0);
    let a = ints((n, k), 5, 0, 63);
    for bad in [f64::NAN, f64::INFINITY, 1e300] {
        let mut w2 = w.clone();
        w2[[3, 2]] = bad;
        let (_, c) = run(&a, &wq, 0, &w2, None, (0.05, 0.0));
        assert_eq!(c.fallbacks, 1, "{bad}");
        let mut bias = Array1::zeros(m);
        bias[1] = bad;
        run(&a, &wq, 0, &w, Some(&bias), (0.05, 0.0));
    }
    // an extreme exactly zero: non-negative terms and a row of zero-point values
    let mut a0 = a.clone();
    a0.row_mut(70).fill(0);
    let (got, c) = run(&a0, &wq, 0, &w.mapv(f64::abs), None, (0.05, 0.0));
    assert_eq!((got.min, c.fallbacks), (0.0, 1));
    // a typical layer is filtered: few tasks verified, no fallback
    let (w, wq) = weights(64, 128, 8, 0);
    let a = ints((4096, 64), 9, 0, 63);
    let (_, c) = run(&a, &wq, 0, &w, None, (0.05, 0.0));
    assert_eq!((c.tasks, c.fallbacks), (4096, 0), "{c:?}");
    assert!(c.verified >= 1 && c.verified <= 64, "{c:?}");
}

#[test]
fn row_estimates_agree() {
    if !has_avx2() {
        return;
    }
    for m in [1usize, 3, 8, 13, 128, 131] {
        let row: Vec<i64> = (0..m)
            .map(|j| (unit(j, m) * 4e6) as i64 - 2_000_000)
            .collect();
        let alpha: Vec<f64> = (0..m).map(|j| unit(j, 7) - 0.5).collect();
        let zsf: Vec<f64> = (0..m).map(|j| (unit(j, 8) * 1e3).round()).collect();
        let bias: Vec<f64> = (0..m).map(|j| unit(j, 9) * 3.0).collect();
        let (mut d1, mut d2) = (
            vec![MaybeUninit::uninit(); m],
            vec![MaybeUninit::uninit(); m],
        );
        let want = row_estimates(&row, &mut d1, &alpha, &zsf, &bias);
        // SAFETY: the CPU has AVX2 and the slices have the same length.
        let got = unsafe { row_estimates_avx2(&row, &mut d2, &alpha, &zsf, &bias) };
        assert_eq!(got, want);
        // the same row as int32 (the products the U8I8 strategy hands over as they are)
        let row32: Vec<i32> = row.iter().map(|&v| v as i32).collect();
        let mut d3 = vec![MaybeUninit::uninit(); m];
        assert_eq!(row_estimates(&row32, &mut d3, &alpha, &zsf, &bias), want);
        // SAFETY: as above.
        let got32 = unsafe { row_estimates_avx2(&row32, &mut d3, &alpha, &zsf, &bias) };
        assert_eq!(got32, want);
        for (a, &v) in d3.iter().zip(&row) {
            // SAFETY: written just above.
            assert_eq!(unsafe { a.assume_init() }, v as i32);
        }
        for ((a, b), &v) in d1.iter().zip(&d2).zip(&row) {
            // SAFETY: both wrote every value.
            let (a, b) = unsafe { (a.assume_init(), b.assume_init()) };
            assert_eq!((a, b), (v as i32, v as i32));
        }
        if crate::kernels::simd::wide_vectors() {
            // the AVX-512 estimates, on int64 and int32 rows
            let mut d4 = vec![MaybeUninit::uninit(); m];
            // SAFETY: the CPU has AVX-512 and the slices have the same length.
            let got = unsafe { row_estimates_avx512(&row, &mut d4, &alpha, &zsf, &bias) };
            assert_eq!(got, want);
            let mut d5 = vec![MaybeUninit::uninit(); m];
            // SAFETY: as above.
            let got = unsafe { row_estimates_avx512(&row32, &mut d5, &alpha, &zsf, &bias) };
            assert_eq!(got, want);
            for ((a, b), &v) in d4.iter().zip(&d5).zip(&row) {
                // SAFETY: both wrote every value.
                let (a, b) = unsafe { (a.assume_init(), b.assume_init()) };
                assert_eq!((a, b), (v as i32, v as i32));
            }
        }
    }
}

#[test]
fn int8_sums_of_squares_are_exact() {
    for len in [0usize, 1, 15, 16, 17, 128, 1000] {
        let row: Vec<i8> = (0..len)
            .map(|j| ((unit(j, len) * 256.0) as i64 - 128) as i8)
            .collect();
        for z in [0i16, -128, 127, 300, -3000] {
            let want: i64 = row
                .iter()
                .map(|&v| (i64::from(v) - i64::from(z)).pow(2))
                .sum();
            assert_eq!(sum_sq_i8(&row, z, false), want);
            assert_eq!(sum_sq_i8(&row, z, has_avx2()), want);
        }
    }
}

#[test]
fn errors() {
    let a = Array2::<i32>::from_elem((3, 4), 1 << 20);
    let wq = Array2::<i64>::from_elem((4, 2), 1 << 11);
    let w = Array2::<f64>::ones((4, 2));
    let mut acc = vec![MaybeUninit::uninit(); 6];
    let isa = Isa::detect();
    let (r, _) = acc_extremes(
        a.view(),
        wq.view(),
        0,
        w.view(),
        None,
        (1.0, 0.0),
        false,
        isa,
        &mut acc,
    );
    assert!(matches!(r, Err(Error::Overflow(_))));
    let (r, _) = acc_extremes(
        a.view(),
        wq.view(),
        0,
        w.t(),
        None,
        (1.0, 0.0),
        false,
        isa,
        &mut acc,
    );
    assert!(matches!(r, Err(Error::Shape(_))));
    let e = Array2::<i32>::zeros((0, 4));
    let (r, _) = acc_extremes(
        e.view(),
        wq.view(),
        0,
        w.view(),
        None,
        (1.0, 0.0),
        false,
        isa,
        &mut [],
    );
    assert!(matches!(r, Err(Error::Empty)));
}
