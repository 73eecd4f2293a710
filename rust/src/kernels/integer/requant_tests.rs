//! The fused rescale and quantize kernels against the rescale followed by the quantizer:
//! the same integers, extremes and flags.

use super::*;
use crate::kernels::integer::rescale::{conv_rescale_into, matmul_rescale_into};
use ndarray::{Array, Array3, Array4};

fn data3(shape: (usize, usize, usize), seed: i64, lo: i64, span: i64) -> Array3<i64> {
    let len = shape.0 * shape.1 * shape.2;
    let v: Vec<i64> = (0..len as i64)
        .map(|i| lo + (i * 7919 + seed * 104729).rem_euclid(span))
        .collect();
    Array::from_shape_vec(shape, v).unwrap()
}

fn quantize_ref(v: f64, r: &Requant) -> i64 {
    let t = v / r.scale;
    let q = (t + r.zero_point).round_ties_even();
    q.max(r.lo).min(r.hi) as i64
}

#[test]
fn matmul_matches_rescale_then_quantize() {
    let sub = [3.0, -7.5, 0.1, 12.0, -0.3];
    let mul = [0.013, 0.5, 1e-3, 7.25, 0.333];
    let add = [0.1, -0.2, 0.3, -0.4, 0.05];
    let w = data3((1, 37, 5), 2, -31, 63);
    // A with negative values (a centring shift), and u8 values against i8 weights minus z_w
    // (no shift: the int32 products go to the epilogue as they are, `RowEpilogue::row_i32`)
    for ((alo, aspan, z_w), lsbs) in [(-40, 90, 4), (0, 64, 0), (3, 60, -2)]
        .into_iter()
        .flat_map(|c| [(c, 0), (c, 3)])
    {
        let a = data3((2, 150, 37), 1, alo, aspan);
        let r = Rescale {
            lsbs,
            offset: -17.0,
            sub: &sub,
            mul: &mul,
            add: Some(&add),
        };
        let mut floats = vec![MaybeUninit::uninit(); 2 * 150 * 5];
        matmul_rescale_into(a.view(), w.view(), z_w, &r, &mut floats).unwrap();
        for q in [
            Requant {
                scale: 0.37,
                zero_point: -3.0,
                lo: -31.0,
                hi: 31.0,
            },
            Requant {
                scale: 2.5,
                zero_point: 0.0,
                lo: 0.0,
                hi: 127.0,
            },
        ] {
            let mut out = vec![MaybeUninit::<i8>::uninit(); floats.len()];
            let got = matmul_rescale_quant_into(a.view(), w.view(), z_w, &r, &q, &mut out).unwrap();
            // SAFETY: both kernels succeeded, so they wrote every element.
            let want: Vec<i64> = floats
                .iter()
                .map(|v| quantize_ref(unsafe { v.assume_init() }, &q))
                .collect();
            let ints: Vec<i64> = out
                .iter()
                .map(|v| i64::from(unsafe { v.assume_init() }))
                .collect();
            assert_eq!(ints, want);
            assert_eq!(got.min, *want.iter().min().unwrap());
            assert_eq!(got.max, *want.iter().max().unwrap());
            assert!(!got.nan);
        }
    }
}

#[test]
fn conv_matches_rescale_then_quantize() {
    let x = Array4::from_shape_vec(
        (3, 2, 7, 6),
        (0..3 * 2 * 7 * 6).map(|i| (i * 31 % 23) - 11).collect(),
    )
    .unwrap();
    let w = Array4::from_shape_vec(
        (4, 2, 3, 3),
        (0..4 * 2 * 9).map(|i| (i * 17 % 13) - 6).collect(),
    )
    .unwrap();
    let geom = Geometry::new([3, 3], [2, 1], [1, 1, 1, 0], [0, 0], -2);
    let dims = conv2d_shape(x.dim(), w.dim(), 1, &geom).unwrap();
    let len: usize = dims.iter().product();
    let (sub, mul) = ([1.0, -2.0, 0.5, 3.0], [0.01, 0.2, 0.03, 0.004]);
    let r = Rescale {
        lsbs: 0,
        offset: 5.0,
        sub: &sub,
        mul: &mul,
        add: None,
    };
    let q = Requant {
        scale: 0.05,
        zero_point: 4.0,
        lo: -300.0,
        hi: 300.0,
    };
    let mut floats = vec![MaybeUninit::uninit(); len];
    conv_rescale_into(x.view(), w.view(), 1, 1, &geom, &r, &mut floats).unwrap();
    let mut out = vec![MaybeUninit::<i16>::uninit(); len];
    let got =
        conv_rescale_quant_into::<i64, i16>(x.view(), w.view(), 1, 1, &geom, &r, &q, &mut out)
            .unwrap();
    // SAFETY: both kernels succeeded, so they wrote every element.
    let want: Vec<i64> = floats
        .iter()
        .map(|v| quantize_ref(unsafe { v.assume_init() }, &q))
        .collect();
    let ints: Vec<i64> = out
        .iter()
        .map(|v| i64::from(unsafe { v.assume_init() }))
        .collect();
    assert_eq!(ints, want);
    assert_eq!(got.min, *want.iter().min().unwrap());
    assert_eq!(got.max, *want.iter().max().unwrap());
}

#[test]
fn conv_channel_tables_match_rescale_then_quantize() {
    // Many outputs from a narrow accumulator range: the per-channel tables apply.
    let x = Array4::from_shape_vec(
        (64, 2, 8, 8),
        (0..64 * 2 * 64).map(|i| (i * 31 % 7) - 3).collect(),
    )
    .unwrap();
    let w =
        Array4::from_shape_vec((3, 2, 3, 3), (0..54).map(|i| (i * 17 % 5) - 1).collect()).unwrap();
    let geom = Geometry::new([3, 3], [1, 1], [1, 1, 1, 1], [0, 0], 2);
    let dims = conv2d_shape(x.dim(), w.dim(), 1, &geom).unwrap();
    let len: usize = dims.iter().product();
    let (sub, mul, add) = ([1.0, -2.0, 0.5], [0.31, 0.2, 0.07], [0.3, -1.0, 0.0]);
    let q = Requant {
        scale: 0.5,
        zero_point: 3.0,
        lo: -8.0,
        hi: 9.0,
    };
    for lsbs in [0, 2] {
        let r = Rescale {
            lsbs,
            offset: 5.0,
            sub: &sub,
            mul: &mul,
            add: Some(&add),
        };
        let tables = ChannelTables::<i8>::build(x.view(), w.view(), 1, &geom, &r, &q, len);
        assert!(tables.is_some());
        let mut floats = vec![MaybeUninit::uninit(); len];
        conv_rescale_into(x.view(), w.view(), 1, 1, &geom, &r, &mut floats).unwrap();
        let mut out = vec![MaybeUninit::<i8>::uninit(); len];
        let got =
            conv_rescale_quant_into::<i64, i8>(x.view(), w.view(), 1, 1, &geom, &r, &q, &mut out)
                .unwrap();
        // SAFETY: both kernels succeeded, so they wrote every element.
        let want: Vec<i64> = floats
            .iter()
            .map(|v| quantize_ref(unsafe { v.assume_init() }, &q))
            .collect();
        let ints: Vec<i64> = out
            .iter()
            .map(|v| i64::from(unsafe { v.assume_init() }))
            .collect();
        assert_eq!(ints, want);
        assert_eq!(got.min, *want.iter().min().unwrap());
        assert_eq!(got.max, *want.iter().max().unwrap());
        assert!(!got.nan);
    }
    // A NaN entry (inf·0 at the accumulator 0) turns the tables off.
    let inf = [f64::INFINITY, 1.0, 1.0];
    let zeros = [0.0; 3];
    let r = Rescale {
        lsbs: 0,
        offset: 0.0,
        sub: &zeros,
        mul: &inf,
        add: None,
    };
    assert!(ChannelTables::<i8>::build(x.view(), w.view(), 1, &geom, &r, &q, len).is_none());
}

#[test]
fn bad_bounds_and_nan() {
    let a = data3((1, 3, 4), 1, -5, 11);
    let w = data3((1, 4, 2), 2, -5, 11);
    let ok = [1.0, 1.0];
    let r = Rescale {
        lsbs: 0,
        offset: 0.0,
        sub: &ok,
        mul: &ok,
        add: None,
    };
    let mut out = vec![MaybeUninit::<i8>::uninit(); 6];
    let wide = Requant {
        scale: 1.0,
        zero_point: 0.0,
        lo: -200.0,
        hi: 10.0,
    };
    assert!(matches!(
        matmul_rescale_quant_into(a.view(), w.view(), 0, &r, &wide, &mut out),
        Err(Error::InvalidArgument(_))
    ));
    let nan = [f64::NAN, 1.0];
    let r = Rescale { mul: &nan, ..r };
    let q = Requant {
        scale: 1.0,
        zero_point: 0.0,
        lo: -100.0,
        hi: 100.0,
    };
    let got = matmul_rescale_quant_into(a.view(), w.view(), 0, &r, &q, &mut out).unwrap();
    assert!(got.nan);
}
