//! The float32-filtered extremes kernels against the exact ones: the same extremes, bit for
//! bit, on random layers and on the edge cases of the filter.

use super::*;
use crate::kernels::quant::dequantize::dequantize_value;
use ndarray::{Array1, Array2, Array4};

/// A reproducible stream of values of very different magnitudes and both signs.
fn awkward(i: usize, salt: usize, mags: &[f64]) -> f64 {
    let h = (i.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40_503)) % 1_000_003;
    (h as f64 / 1_000_003.0 - 0.45) * mags[h % mags.len()]
}

fn same<T: Element + std::fmt::Debug>(a: Extremes<T>, b: Extremes<T>) {
    let bits = |v: T| -> u64 { Into::<f64>::into(v).to_bits() };
    assert_eq!(a.finite, b.finite, "{a:?} {b:?}");
    if a.finite {
        assert_eq!(
            (bits(a.min), bits(a.max)),
            (bits(b.min), bits(b.max)),
            "{a:?} {b:?}"
        );
    }
}

fn check_matmul(a: &Array2<f64>, b: &Array2<f64>, bias: Option<&Array1<f64>>) {
    for isa in Isa::available() {
        let bv = bias.map(|v| v.view());
        let want = matmul_extremes(a.view(), |v| v, b.view(), bv, isa).unwrap();
        let got = matmul_extremes_filtered(a.view(), |v| v, b.view(), bv, isa).unwrap();
        same(want, got);
        let (a32, b32) = (a.mapv(|v| v as f32), b.mapv(|v| v as f32));
        let bias32 = bias.map(|v| v.mapv(|x| x as f32));
        let bv = bias32.as_ref().map(|v| v.view());
        let want = matmul_extremes(a32.view(), |v| v, b32.view(), bv, isa).unwrap();
        let got = matmul_extremes_filtered(a32.view(), |v| v, b32.view(), bv, isa).unwrap();
        same(want, got);
    }
}

#[test]
fn filtered_matmul_is_the_exact_one() {
    let mags: &[&[f64]] = &[&[1.0], &[1e-7, 1.0, 3.3e3, 1e8], &[1e-30, 1e20], &[1e-300]];
    for (salt, &(n, k, m)) in [
        (1usize, 1usize, 1usize),
        (5, 3, 7),
        (70, 17, 9),
        (300, 40, 16),
        (1000, 64, 10),
        (777, 128, 33),
    ]
    .iter()
    .enumerate()
    {
        for ms in mags {
            let a = Array2::from_shape_fn((n, k), |(i, j)| awkward(i * k + j, salt, ms));
            let b = Array2::from_shape_fn((k, m), |(i, j)| awkward(i * m + j, salt + 9, ms));
            let bias = Array1::from_shape_fn(m, |j| awkward(j, salt + 3, ms));
            check_matmul(&a, &b, None);
            check_matmul(&a, &b, Some(&bias));
        }
    }
}

#[test]
fn ties_and_near_ties_between_rows() {
    // many equal maxima, and rows one ulp apart, in different tasks
    let (n, k, m) = (2000, 8, 5);
    let mut a = Array2::from_shape_fn((n, k), |(i, j)| awkward(i * k + j, 4, &[1.0]));
    for i in (0..n).step_by(97) {
        a.row_mut(i).fill(3.0);
    }
    a[[1500, 0]] = f64::from_bits(3.0f64.to_bits() + 1);
    a[[300, 1]] = f64::from_bits(3.0f64.to_bits() - 1);
    let b = Array2::from_shape_fn((k, m), |(i, j)| if (i + j) % 3 == 0 { 1.0 } else { 0.5 });
    check_matmul(&a, &b, None);
    check_matmul(&a, &b, Some(&Array1::from_elem(m, 1e-9)));
    // negative values only, and zeros
    check_matmul(&(-a.mapv(f64::abs)), &b, None);
    check_matmul(&Array2::zeros((n, k)), &b, None);
    let mut z = Array2::zeros((n, k));
    z[[5, 2]] = -0.0;
    z[[1999, 1]] = 1e-310;
    check_matmul(&z, &b, Some(&Array1::from_elem(m, -0.0)));
}

#[test]
fn non_finite_and_huge_values_take_the_exact_path() {
    let (n, k, m) = (300, 6, 4);
    let b = Array2::from_shape_fn((k, m), |(i, j)| awkward(i * m + j, 7, &[1.0]));
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, f64::MAX] {
        let mut a = Array2::from_shape_fn((n, k), |(i, j)| awkward(i * k + j, 8, &[1.0]));
        a[[n - 1, 2]] = bad;
        check_matmul(&a, &b, None);
        let a = Array2::from_shape_fn((n, k), |(i, j)| awkward(i * k + j, 8, &[1.0]));
        let mut bias = Array1::zeros(m);
        bias[1] = bad;
        check_matmul(&a, &b, Some(&bias));
        let mut b2 = b.clone();
        b2[[0, 3]] = bad;
        check_matmul(&a, &b2, None);
    }
}

#[test]
fn dequantized_inputs_with_extreme_scales() {
    let q = Array2::from_shape_fn((500, 19), |(i, j)| ((i * 7 + j * 13) % 255) as i16 - 127);
    let b = Array2::from_shape_fn((19, 12), |(i, j)| awkward(i * 12 + j, 4, &[1.0, 1e-3]));
    for (scale, zp) in [
        (0.037_123, 3.0),
        (1e-30, -128.0),
        (1e25, 0.5),
        (1e-310, 7.0),
    ] {
        let load = |v: i16| dequantize_value(v, scale, zp);
        for isa in Isa::available() {
            let want = matmul_extremes(q.view(), load, b.view(), None, isa).unwrap();
            let got = matmul_extremes_filtered(q.view(), load, b.view(), None, isa).unwrap();
            same(want, got);
        }
    }
}

#[test]
fn filtered_conv_is_the_exact_one() {
    let cases = [
        (
            (9, 1, 8, 8),
            (8, 1, 3, 3),
            [1, 1],
            [1, 1],
            [1, 1],
            [1, 1],
            1,
        ),
        (
            (5, 8, 8, 8),
            (16, 8, 3, 3),
            [2, 2],
            [1, 1],
            [1, 1],
            [1, 1],
            1,
        ),
        (
            (6, 4, 7, 5),
            (6, 2, 2, 3),
            [1, 2],
            [2, 1],
            [0, 2],
            [1, 0],
            2,
        ),
        (
            (40, 3, 1, 9),
            (4, 3, 1, 4),
            [1, 3],
            [1, 1],
            [0, 0],
            [0, 0],
            1,
        ),
        (
            (3, 6, 6, 6),
            (6, 1, 3, 3),
            [1, 1],
            [2, 2],
            [2, 2],
            [2, 2],
            6,
        ),
    ];
    for (salt, (xs, ws, strides, dilations, begins, ends, group)) in cases.into_iter().enumerate() {
        let g = ConvGeometry {
            strides,
            dilations,
            begins,
            ends,
            group,
        };
        let mut i = 0;
        let x = Array4::from_shape_simple_fn(xs, || {
            i += 1;
            awkward(i, salt, &[1.0, 1e-3, 50.0])
        });
        let w = Array4::from_shape_simple_fn(ws, || {
            i += 1;
            awkward(i, salt + 1, &[1.0, 0.1])
        });
        let bias = Array1::from_shape_fn(ws.0, |j| awkward(j, salt + 2, &[1.0]));
        let q = x.mapv(|v| (v * 100.0).round().clamp(-128.0, 127.0) as i8);
        for isa in Isa::available() {
            for b in [None, Some(bias.view())] {
                let want = conv2d_extremes(x.view(), |v| v, w.view(), b, &g, isa).unwrap();
                let got = conv2d_extremes_filtered(x.view(), |v| v, w.view(), b, &g, isa).unwrap();
                same(want, got);
                let load = |v: i8| dequantize_value(v, 0.0123, -3.0);
                let want = conv2d_extremes(q.view(), load, w.view(), b, &g, isa).unwrap();
                let got = conv2d_extremes_filtered(q.view(), load, w.view(), b, &g, isa);
                same(want, got.unwrap());
            }
        }
        let mut bad = x.clone();
        bad[[0, 0, 0, 0]] = f64::NAN;
        let want = conv2d_extremes(bad.view(), |v| v, w.view(), None, &g, Isa::detect());
        let got = conv2d_extremes_filtered(bad.view(), |v| v, w.view(), None, &g, Isa::detect());
        same(want.unwrap(), got.unwrap());
    }
}

#[test]
fn typical_data_is_filtered_without_fallback() {
    // an MLP-like layer: most tasks are ruled out, none falls back
    let (n, k, m) = (4096, 64, 128);
    let a = Array2::from_shape_fn((n, k), |(i, j)| awkward(i * k + j, 21, &[1.0]));
    let b = Array2::from_shape_fn((k, m), |(i, j)| awkward(i * m + j, 22, &[0.1]));
    let bias = Array1::from_shape_fn(m, |j| awkward(j, 23, &[0.1]));
    let tasks = n.div_ceil(ROWS_PER_TASK) as u64;
    assert!(tasks >= 8, "{tasks}");
    for isa in Isa::available() {
        let (got, c) = matmul_extremes_counted(a.view(), |v| v, b.view(), None, isa);
        same(
            matmul_extremes(a.view(), |v| v, b.view(), None, isa).unwrap(),
            got.unwrap(),
        );
        assert_eq!((c.tasks, c.fallbacks), (tasks, 0), "{c:?}");
        assert!(c.verified >= 1 && c.verified * 4 <= tasks, "{c:?}");
        let (a32, b32) = (a.mapv(|v| v as f32), b.mapv(|v| v as f32));
        let bias32 = bias.mapv(|v| v as f32);
        let (_, c) =
            matmul_extremes_counted(a32.view(), |v| v, b32.view(), Some(bias32.view()), isa);
        assert_eq!((c.tasks, c.fallbacks), (tasks, 0), "{c:?}");
        assert!(c.verified >= 1 && c.verified * 4 <= tasks, "{c:?}");
    }
}

#[test]
fn unclean_data_falls_back_and_is_counted() {
    let (n, k, m) = (600, 8, 6);
    let b = Array2::from_shape_fn((k, m), |(i, j)| awkward(i * m + j, 24, &[1.0]));
    let mut a = Array2::from_shape_fn((n, k), |(i, j)| awkward(i * k + j, 25, &[1.0]));
    a[[n / 2, 3]] = f64::NAN;
    let (_, c) = matmul_extremes_counted(a.view(), |v| v, b.view(), None, Isa::detect());
    assert_eq!(c.fallbacks, 1, "{c:?}");
    // an extreme exactly zero: non-negative inputs and weights, one row of zeros
    let b = b.mapv(f64::abs);
    let mut a = a.mapv(|v| if v.is_nan() { 1.0 } else { v.abs() + 0.5 });
    a.row_mut(7).fill(0.0);
    let (got, c) = matmul_extremes_counted(a.view(), |v| v, b.view(), None, Isa::detect());
    assert_eq!(got.unwrap().min, 0.0);
    assert_eq!(c.fallbacks, 1, "{c:?}");
    // the public entry adds to the process-wide counters (other tests run alongside,
    // so only a lower bound holds)
    let before = counts(false);
    matmul_extremes_filtered(a.view(), |v| v, b.view(), None, Isa::detect()).unwrap();
    let after = counts(false);
    assert!(after.fallbacks > before.fallbacks, "{before:?} {after:?}");
    assert!(after.tasks > before.tasks, "{before:?} {after:?}");
}

#[test]
fn typical_conv_is_filtered_without_fallback() {
    let g = ConvGeometry {
        strides: [1, 1],
        dilations: [1, 1],
        begins: [1, 1],
        ends: [1, 1],
        group: 1,
    };
    let mut i = 0;
    let x = Array4::from_shape_simple_fn((64, 3, 16, 16), || {
        i += 1;
        awkward(i, 31, &[1.0])
    });
    let w = Array4::from_shape_simple_fn((8, 3, 3, 3), || {
        i += 1;
        awkward(i, 32, &[0.3])
    });
    let (got, c) = conv2d_extremes_counted(x.view(), |v| v, w.view(), None, &g, Isa::detect());
    let want = conv2d_extremes(x.view(), |v| v, w.view(), None, &g, Isa::detect());
    same(want.unwrap(), got.unwrap());
    assert_eq!(c.fallbacks, 0, "{c:?}");
    assert!(
        c.tasks >= 4 && c.verified >= 1 && c.verified * 2 <= c.tasks,
        "{c:?}"
    );
    let mut bad = x.clone();
    bad[[3, 1, 2, 2]] = f64::INFINITY;
    let (_, c) = conv2d_extremes_counted(bad.view(), |v| v, w.view(), None, &g, Isa::detect());
    assert_eq!(c.fallbacks, 1, "{c:?}");
}

#[test]
fn errors_are_those_of_the_exact_kernels() {
    let a = Array2::<f64>::zeros((4, 2));
    let b = Array2::<f64>::zeros((3, 3));
    let r = matmul_extremes_filtered(a.view(), |v| v, b.view(), None, Isa::detect());
    assert!(matches!(r, Err(crate::error::Error::Shape(_))));
    let a = Array2::<f64>::zeros((0, 3));
    let r = matmul_extremes_filtered(a.view(), |v| v, b.view(), None, Isa::detect());
    assert!(matches!(r, Err(crate::error::Error::Empty)));
}

/// The AVX-512 panels (16 and 32 columns) give the float32 column extremes of the AVX2 FMA
/// panels bit for bit (the same fused multiply-adds in the same order per lane), with and
/// without the in-place im2col offsets.
#[test]
fn wide_panels_are_the_avx2_ones() {
    if !simd::wide_vectors() || !std::arch::is_x86_feature_detected!("fma") {
        return;
    }
    for (salt, &(rows, k, m)) in [
        (12usize, 5usize, 9usize),
        (36, 17, 16),
        (48, 64, 33),
        (24, 3, 70),
    ]
    .iter()
    .enumerate()
    {
        let w = |kk: usize, j: usize| awkward(kk * m + j, salt + 1, &[1e-3, 1.0, 40.0]);
        let a: Vec<f32> = (0..rows * k)
            .map(|i| awkward(i, salt + 2, &[0.5, 3.0]) as f32)
            .collect();
        let wide = Approx::new(k, m, Mode::Avx512, w);
        let narrow = Approx::new(k, m, Mode::Fma, w);
        assert!(wide.nr >= narrow.nr);
        let (hw, lw) = block_columns(&a, None, rows - 5, &wide);
        let (hn, ln) = block_columns(&a, None, rows - 5, &narrow);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            (bits(&hw), bits(&lw)),
            (bits(&hn), bits(&ln)),
            "{rows} {k} {m}"
        );
        // the same rows read through offsets (row r at r·k, element kk at kk)
        let roff: Vec<usize> = (0..rows).map(|r| r * k).collect();
        let koff: Vec<usize> = (0..k).collect();
        let (hg, lg) = block_columns(&a, Some((&roff, &koff)), rows - 5, &wide);
        assert_eq!((bits(&hg), bits(&lg)), (bits(&hn), bits(&ln)));
    }
}
