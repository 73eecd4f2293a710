//! Tests of `gemm` (a separate file to keep `gemm.rs` short).

use super::*;
use ndarray::Array;

fn naive(a: &Array3<i64>, w: &Array3<i64>, z_w: i64) -> Array3<i64> {
    let (ba, m, k) = a.dim();
    let (bw, _, n) = w.dim();
    let batch = ba.max(bw);
    Array3::from_shape_fn((batch, m, n), |(b, i, j)| {
        let (x, y) = (if ba == 1 { 0 } else { b }, if bw == 1 { 0 } else { b });
        let prod: i64 = (0..k).map(|p| a[[x, i, p]] * w[[y, p, j]]).sum();
        let corr: i64 = (0..k).map(|p| a[[x, i, p]]).sum();
        prod - z_w * corr
    })
}

/// `matmul` with the U8I8 strategy allowed or not (its scalar kernel on other CPUs).
fn with(a: &Array3<i64>, w: &Array3<i64>, z_w: i64, allowed: Allowed) -> Array3<i64> {
    with_as(a.view(), w, z_w, allowed)
}

const VNNI: Allowed = Allowed {
    vnni: true,
    maddubs: false,
    i16: false,
};
const I16: Allowed = Allowed {
    vnni: false,
    maddubs: false,
    i16: true,
};

#[test]
fn u8i8_plan_limits() {
    let p = |k, a, c| plan_with(k, a, c, VNNI).unwrap();
    assert_eq!(p(9, (0, 255), (-128, 127)).strategy, Strategy::U8I8);
    assert_eq!(p(9, (0, 255), (-128, 127)).shift, [0, 0]);
    assert_eq!(p(9, (-300, -45), (-5, 250)).shift, [-300, 123]);
    // operands that are u8 × i8 as they are keep no shift (int32 products = accumulators)
    assert_eq!(p(9, (7, 7), (3, 3)).shift, [0, 0]);
    assert_eq!(p(64, (0, 63), (-31, 29)).shift, [0, 0]);
    assert_eq!(p(64, (3, 60), (-31, 31)).shift, [0, 0]);
    // ... unless only the centred product fits int32: 255·100·100000 > 2^31 − 1
    assert_eq!(p(100_000, (200, 255), (-100, 100)).shift, [200, 0]);
    assert_eq!(p(9, (-3, 60), (-31, 31)).shift, [-3, 0]);
    assert_ne!(p(9, (0, 256), (-128, 127)).strategy, Strategy::U8I8);
    assert_ne!(p(9, (0, 255), (-128, 128)).strategy, Strategy::U8I8);
    // K·255·128 <= 2^31 − 1 exactly up to K = 65793.
    assert_eq!(p(65793, (0, 255), (0, 255)).strategy, Strategy::U8I8);
    assert_ne!(p(65794, (0, 255), (0, 255)).strategy, Strategy::U8I8);
    assert_ne!(
        plan_with(9, (0, 255), (-128, 127), Allowed::NONE)
            .unwrap()
            .strategy,
        Strategy::U8I8
    );
}

#[test]
fn u8i8_is_exact_with_shifts_and_batches() {
    for (ashape, wshape, alo, aspan, wlo, wspan, z_w) in [
        ((1, 130, 70), (1, 70, 9), 0, 256, -128, 256, 0),
        ((2, 67, 33), (2, 33, 50), -300, 256, -5, 256, -7),
        ((3, 5, 4), (1, 4, 17), 1000, 3, 40, 1, 40),
        ((1, 64, 128), (1, 128, 128), 0, 64, -127, 255, 0),
        ((1, 3, 0), (1, 0, 5), 0, 1, 0, 1, 0),
    ] {
        let a = data(ashape, 1, alo, aspan);
        let w = data(wshape, 2, wlo, wspan);
        let (lo, hi) = range(a.iter());
        let (wl, wh) = range(w.iter());
        let c = ((wl - z_w).into(), (wh - z_w).into());
        let p = plan_with(wshape.1, (lo, hi), c, VNNI).unwrap();
        assert_eq!(p.strategy, Strategy::U8I8);
        assert_eq!(with(&a, &w, z_w, VNNI), naive(&a, &w, z_w));
        assert_eq!(matmul(a.view(), w.view(), z_w).unwrap(), naive(&a, &w, z_w));
    }
}

#[test]
fn u8i8_blocks_reuse_their_scratch_across_shapes() {
    // each thread keeps its buffers from one block to the next: a call after a wider, taller
    // one must not read what the earlier one left (padding columns and rows)
    for round in 0..4 {
        for (m, k, n) in [
            (300, 8, 20),
            (131, 7, 20),
            (70, 130, 33),
            (5, 1, 3),
            (200, 61, 16),
        ] {
            let a = data((1, m, k), round, 0, 256);
            let w = data((1, k, n), round + 1, -128, 256);
            assert_eq!(with(&a, &w, 3, VNNI), naive(&a, &w, 3), "{m}x{k}x{n}");
        }
    }
}

fn data(shape: (usize, usize, usize), seed: i64, lo: i64, span: i64) -> Array3<i64> {
    let len = shape.0 * shape.1 * shape.2;
    let v: Vec<i64> = (0..len as i64)
        .map(|i| lo + (i * 7919 + seed * 104729).rem_euclid(span))
        .collect();
    Array::from_shape_vec(shape, v).unwrap()
}

#[test]
fn i16_plan_limits() {
    let p = |k, a, c| plan_with(k, a, c, I16).unwrap();
    assert_eq!(p(9, (0, 255), (-128, 127)).strategy, Strategy::I16);
    assert_eq!(p(9, (0, 255), (-128, 127)).shift, [127, -1]);
    // A − s within i16: a span of 65535 centres into [−32767, 32768]: too wide by one.
    assert_eq!(p(1, (0, 65534), (-1, 1)).strategy, Strategy::I16);
    assert_ne!(p(1, (0, 65535), (-1, 1)).strategy, Strategy::I16);
    assert_eq!(p(1, (-1, 1), (0, 65534)).strategy, Strategy::I16);
    assert_ne!(p(1, (-1, 1), (0, 65535)).strategy, Strategy::I16);
    // K·128·128 <= 2^31 − 1 exactly up to K = 131071.
    assert_eq!(p(131_071, (0, 256), (0, 256)).strategy, Strategy::I16);
    assert_ne!(p(131_072, (0, 256), (0, 256)).strategy, Strategy::I16);
    // VNNI first when both are allowed.
    let both = Allowed {
        vnni: true,
        maddubs: false,
        i16: true,
    };
    let plan = plan_with(9, (0, 255), (-128, 127), both).unwrap();
    assert_eq!(plan.strategy, Strategy::U8I8);
    let plan = plan_with(9, (0, 256), (-128, 127), both).unwrap();
    assert_eq!(plan.strategy, Strategy::I16);
}

#[test]
fn i16_is_exact_with_shifts_batches_and_tails() {
    for (ashape, wshape, alo, aspan, wlo, wspan, z_w) in [
        ((1, 130, 70), (1, 70, 9), 0, 256, -128, 256, 0),
        ((2, 67, 33), (2, 33, 50), -300, 4000, -5, 3000, -7),
        ((3, 5, 4), (1, 4, 17), 1000, 3, 40, 1, 40),
        ((1, 64, 128), (1, 128, 128), 0, 64, -127, 255, 0),
        ((1, 9, 3), (1, 3, 10), -40000, 65535, 7, 2, 0),
        ((1, 3, 0), (1, 0, 5), 0, 1, 0, 1, 0),
    ] {
        let a = data(ashape, 1, alo, aspan);
        let w = data(wshape, 2, wlo, wspan);
        let (lo, hi) = range(a.iter());
        let (wl, wh) = range(w.iter());
        let c = ((wl - z_w).into(), (wh - z_w).into());
        let p = plan_with(wshape.1, (lo, hi), c, I16).unwrap();
        assert_eq!(p.strategy, Strategy::I16, "{ashape:?} {wshape:?}");
        assert_eq!(with(&a, &w, z_w, I16), naive(&a, &w, z_w));
        assert_eq!(with(&a, &w, z_w, Allowed::NONE), naive(&a, &w, z_w));
    }
}

#[test]
fn every_strategy_matches_the_definition() {
    let w = data((1, 70, 9), 2, -128, 256);
    for (scale, want) in [
        (1, Strategy::F32),
        (1 << 12, Strategy::F64),
        (1 << 35, Strategy::I64),
    ] {
        let a = data((2, 130, 70), 1, 0, 256).mapv(|v| v * scale);
        let p = plan_with(70, range(a.iter()), (-128 - 5, 127 - 5), Allowed::NONE).unwrap();
        assert_eq!(p.strategy, want);
        assert_eq!(matmul(a.view(), w.view(), 5).unwrap(), naive(&a, &w, 5));
        assert_eq!(with(&a, &w, 5, Allowed::NONE), naive(&a, &w, 5));
        assert_eq!(with(&a, &w, 5, I16), naive(&a, &w, 5));
    }
}

#[test]
fn centring_picks_f32_for_8_bit_operands() {
    // Uncentred, 512·255·133 > 2^24; centred, 512·128·128 <= 2^24.
    let p = plan_with(512, (0, 255), (-133, 122), Allowed::NONE).unwrap();
    assert_eq!(p.strategy, Strategy::F32);
    assert_eq!(p.shift, [127, -6]);
    let a = data((1, 3, 512), 6, 0, 256);
    let w = data((1, 512, 4), 7, -128, 256);
    assert_eq!(matmul(a.view(), w.view(), 5).unwrap(), naive(&a, &w, 5));
}

#[test]
fn batches_broadcast_and_views_work() {
    let a = data((1, 5, 4), 3, -9, 19);
    let w = data((3, 4, 6), 4, -9, 19);
    assert_eq!(matmul(a.view(), w.view(), -2).unwrap(), naive(&a, &w, -2));
    let at = data((3, 4, 5), 5, -9, 19);
    let av = at.view().permuted_axes([0, 2, 1]);
    assert_eq!(
        matmul(av, w.view(), 0).unwrap(),
        naive(&av.to_owned(), &w, 0)
    );
}

#[test]
fn k_zero_writes_zeros_with_every_strategy() {
    let (a, w) = (
        Array3::<i64>::zeros((2, 70, 0)),
        Array3::<i64>::zeros((1, 0, 3)),
    );
    let want = Array3::<i64>::zeros((2, 70, 3));
    for allowed in [Allowed::NONE, VNNI, I16] {
        assert_eq!(with(&a, &w, 4, allowed), want);
    }
}

#[test]
fn errors() {
    let a = Array3::<i64>::from_elem((1, 2, 3), 1 << 40);
    let w = Array3::<i64>::from_elem((1, 3, 2), 1 << 30);
    let err = matmul(a.view(), w.view(), 0).unwrap_err();
    assert!(
        matches!(&err, Error::Overflow(msg) if msg.contains("uint41") && msg.contains("uint31"))
    );
    let w2 = Array3::<i64>::zeros((1, 4, 2));
    assert!(matches!(
        matmul(a.view(), w2.view(), 0),
        Err(Error::Shape(_))
    ));
    let w3 = Array3::<i64>::zeros((2, 3, 2));
    let a3 = Array3::<i64>::zeros((3, 2, 3));
    assert!(matches!(
        matmul(a3.view(), w3.view(), 0),
        Err(Error::Shape(_))
    ));
    assert_eq!(
        weight_sums(w.view(), -3).unwrap()[[0, 1]],
        -3 * 3 * (1 << 30)
    );
}

const MADDUBS: Allowed = Allowed {
    vnni: false,
    maddubs: true,
    i16: true,
};

fn maddubs_steps(p: Plan) -> Option<usize> {
    match p.strategy {
        Strategy::U8I8Avx2 { steps } => Some(steps),
        _ => None,
    }
}

#[test]
fn maddubs_plan_limits() {
    let p = |k, a, c| plan_with(k, a, c, MADDUBS).unwrap();
    // 6 bits: 2·63·31 = 3906, 8 pair sums per i16.
    assert_eq!(maddubs_steps(p(64, (0, 63), (-31, 31))), Some(8));
    assert_eq!(p(64, (0, 63), (-31, 31)).shift, [0, 0]);
    assert_eq!(p(64, (-28, 28), (-31, 26)).shift, [-28, -2]);
    // 5 bits: 2·31·15 = 930, 35 pair sums per i16.
    assert_eq!(maddubs_steps(p(64, (0, 31), (-15, 15))), Some(35));
    // The pair bound 2·max(A − s)·max|c − t| <= 32767 at its edge, from either operand.
    assert_eq!(maddubs_steps(p(9, (0, 255), (-64, 64))), Some(1)); // 32640
    assert_eq!(maddubs_steps(p(9, (0, 255), (-64, 65))), None); // 33150
    assert_eq!(maddubs_steps(p(9, (0, 127), (-128, 127))), Some(1)); // 32512
    assert_eq!(maddubs_steps(p(9, (0, 128), (-128, 127))), None); // 32768
    assert_eq!(maddubs_steps(p(9, (-1000, -745), (10, 138))), Some(1));
    assert_eq!(maddubs_steps(p(9, (-1000, -744), (10, 138))), None); // A − s beyond u8
    assert_eq!(p(9, (0, 128), (-128, 127)).strategy, Strategy::I16);
    // K·63·31 <= 2^31 − 1 exactly up to K = 1099582.
    assert_eq!(maddubs_steps(p(1_099_582, (0, 63), (-31, 31))), Some(8));
    assert_eq!(p(1_099_583, (0, 63), (-31, 31)).strategy, Strategy::I16);
    // Constant operands: nothing can saturate.
    assert_eq!(
        maddubs_steps(p(9, (5, 5), (-3, 7))),
        Some(maddubs::MAX_STEPS)
    );
    // VNNI first; neither when not allowed.
    let all = Allowed {
        vnni: true,
        maddubs: true,
        i16: true,
    };
    let plan = plan_with(9, (0, 63), (-31, 31), all).unwrap();
    assert_eq!(plan.strategy, Strategy::U8I8);
    for allowed in [I16, Allowed::NONE] {
        let plan = plan_with(9, (0, 63), (-31, 31), allowed).unwrap();
        assert_eq!(maddubs_steps(plan), None);
    }
}

#[test]
fn maddubs_is_exact_with_shifts_batches_and_tails() {
    // (a shape, w shape, a lo, a span, w lo, w span, z_w): spans of values lo..lo + span.
    for (ashape, wshape, alo, aspan, wlo, wspan, z_w) in [
        ((1, 130, 70), (1, 70, 9), 0, 64, -31, 63, 0),
        ((2, 67, 33), (2, 33, 50), -300, 32, -5, 31, -7),
        ((3, 5, 4), (1, 4, 17), 1000, 3, 40, 1, 40),
        ((1, 64, 128), (1, 128, 128), 0, 64, -31, 63, 0),
        ((1, 13, 131), (1, 131, 10), 7, 256, -64, 129, 0),
        ((2, 7, 5), (1, 5, 23), -50, 128, 100, 256, 228),
        ((1, 3, 0), (1, 0, 5), 0, 1, 0, 1, 0),
    ] {
        let a = data(ashape, 1, alo, aspan);
        let w = data(wshape, 2, wlo, wspan);
        let (lo, hi) = range(a.iter());
        let (wl, wh) = range(w.iter());
        let c = ((wl - z_w).into(), (wh - z_w).into());
        let p = plan_with(wshape.1, (lo, hi), c, MADDUBS).unwrap();
        assert!(maddubs_steps(p).is_some(), "{ashape:?} {wshape:?} {p:?}");
        assert_eq!(with(&a, &w, z_w, MADDUBS), naive(&a, &w, z_w));
        assert_eq!(with(&a, &w, z_w, I16), naive(&a, &w, z_w));
    }
}

#[test]
fn maddubs_is_exact_at_the_extremes_of_its_bounds() {
    // Row 0 of A at its minimum and the others at its maximum; column 0 of W' at one end
    // of its range and the others at the other: every i16 partial sum reaches
    // steps·2·max(A − s)·max|c − t|, the most the plan allows.
    for (alo, a_max, c_lo, c_hi, k) in [
        (0, 63, -31, 31, 128),
        (-20, 63, -32, 31, 70),
        (3, 255, -64, 64, 37),
        (0, 127, -128, 127, 64),
        (-9, 31, -15, 15, 300),
    ] {
        for flip in [false, true] {
            let (m, n) = (9, 11);
            let a =
                Array3::from_shape_fn((1, m, k), |(_, i, _)| alo + if i == 0 { 0 } else { a_max });
            let (first, rest) = if flip { (c_hi, c_lo) } else { (c_lo, c_hi) };
            let w = Array3::from_shape_fn((1, k, n), |(_, _, j)| if j == 0 { first } else { rest });
            let p = plan_with(k, (alo, alo + a_max), (c_lo.into(), c_hi.into()), MADDUBS).unwrap();
            assert!(maddubs_steps(p).is_some(), "{alo} {a_max} {c_lo} {c_hi}");
            assert_eq!(with(&a, &w, 0, MADDUBS), naive(&a, &w, 0));
        }
    }
}

#[test]
fn maddubs_matches_the_definition_on_random_shapes() {
    // A seeded sweep of shapes (M, K, N tails of the 6-row tiles, 4-k groups and 8-column
    // panels) and ranges, each compared with the definition and the I16 strategy.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |bound: i64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) % bound as u64) as i64
    };
    let mut planned = 0;
    for _ in 0..40 {
        let (m, k, n) = (1 + next(70), next(150), 1 + next(40));
        let a_span = 1 + next(256);
        // Up to one value more than the widest weight range whose pair sums fit i16.
        let c_max = (32767 / (2 * (a_span - 1)).max(1)).min(128);
        let c_span = (2 * c_max + 2).min(257) - next((2 * c_max).min(64));
        let (alo, wlo, z_w) = (next(600) - 300, next(300) - 150, next(20) - 10);
        let (ba, bw) = if next(2) == 0 {
            (1, 1 + next(2))
        } else {
            (2, 1)
        };
        let shape = |b: i64, r: i64, c: i64| (b as usize, r as usize, c as usize);
        let a = data(shape(ba, m, k), next(1000), alo, a_span);
        let w = data(shape(bw, k, n), next(1000), wlo, c_span.max(1));
        let want = naive(&a, &w, z_w);
        assert_eq!(
            with(&a, &w, z_w, MADDUBS),
            want,
            "{m} {k} {n} {a_span} {c_span}"
        );
        assert_eq!(with(&a, &w, z_w, Allowed::NONE), want);
        let p = operands_plan(a.view(), w.view(), z_w, MADDUBS).unwrap();
        planned += usize::from(maddubs_steps(p).is_some());
    }
    assert!(planned >= 20, "{planned}");
}

/// `with` for an A of any `Lhs` type.
fn with_as<A: Lhs>(
    a: ArrayView3<'_, A>,
    w: &Array3<i64>,
    z_w: i64,
    allowed: Allowed,
) -> Array3<i64> {
    let dims = matmul_shape(a.dim(), w.dim()).unwrap();
    // A sentinel, so that a value left unwritten shows.
    let mut out = Array3::<i64>::from_elem(dims, 99);
    let dst = out.as_slice_mut().unwrap();
    // SAFETY: MaybeUninit<i64> has the layout of i64 and every value is initialised.
    let dst: &mut [MaybeUninit<i64>] = unsafe { std::mem::transmute(dst) };
    map_into_with(
        a,
        w.view(),
        z_w,
        dst,
        |acc: &[i64], row: &mut [MaybeUninit<i64>]| {
            for (d, &v) in row.iter_mut().zip(acc) {
                d.write(v);
            }
        },
        allowed,
    )
    .unwrap();
    out
}

/// `a` converted to the narrow type T (every value fits).
fn narrowed<T: Lhs + TryFrom<i64>>(a: &Array3<i64>) -> Array3<T> {
    a.mapv(|v| T::try_from(v).ok().unwrap())
}

#[test]
fn narrow_inputs_give_the_int64_results_with_every_strategy() {
    // Ranges that plan each strategy (U8I8, U8I8Avx2, I16, F32, F64) for some `allowed`,
    // the input read as int8, int16 and int32 (where it fits) and as int64: the same
    // integers, the same plan.
    let w = data((1, 70, 9), 2, -31, 63);
    let everyone = [Allowed::NONE, VNNI, I16, MADDUBS];
    for (lo, span) in [
        (-32, 64),
        (0, 64),
        (-128, 256),
        (-3000, 6000),
        (-30000, 60000),
    ] {
        let a = data((2, 130, 70), 1, lo, span);
        let want = naive(&a, &w, 5);
        for allowed in everyone {
            let plan = operands_plan(a.view(), w.view(), 5, allowed).unwrap();
            assert_eq!(with_as(a.view(), &w, 5, allowed), want, "{lo} {span}");
            if lo >= -128 && lo + span <= 128 {
                let a8 = narrowed::<i8>(&a);
                assert_eq!(
                    operands_plan(a8.view(), w.view(), 5, allowed).unwrap(),
                    plan
                );
                assert_eq!(with_as(a8.view(), &w, 5, allowed), want, "i8 {lo} {span}");
                // A non-contiguous view reads the same values.
                let at = a8.permuted_axes([0, 2, 1]).as_standard_layout().to_owned();
                let view = at.view().permuted_axes([0, 2, 1]);
                assert_eq!(with_as(view, &w, 5, allowed), want, "i8 view {lo} {span}");
            }
            let a16 = narrowed::<i16>(&a);
            assert_eq!(
                operands_plan(a16.view(), w.view(), 5, allowed).unwrap(),
                plan
            );
            assert_eq!(with_as(a16.view(), &w, 5, allowed), want, "i16 {lo} {span}");
            let a32 = narrowed::<i32>(&a);
            assert_eq!(with_as(a32.view(), &w, 5, allowed), want, "i32 {lo} {span}");
        }
    }
    // The public entry points take narrow inputs too.
    let a = data((1, 40, 70), 3, -32, 64);
    let a8 = narrowed::<i8>(&a);
    assert_eq!(
        matmul_plan(a8.view(), w.view(), 5).unwrap(),
        matmul_plan(a.view(), w.view(), 5).unwrap()
    );
    let mut out = vec![MaybeUninit::<i64>::uninit(); 40 * 9];
    matmul_into(a8.view(), w.view(), 5, &mut out).unwrap();
    // SAFETY: matmul_into succeeded, so it wrote every element.
    let got: Vec<i64> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
    assert_eq!(got, naive(&a, &w, 5).into_raw_vec_and_offset().0);
}

#[test]
fn narrow_inputs_give_the_int64_fused_results() {
    use crate::kernels::integer::requant::{matmul_rescale_quant_into, Requant};
    use crate::kernels::integer::rescale::{matmul_rescale_into, Rescale};
    let sub = [3.0, -7.5, 0.1, 12.0, -0.3];
    let mul = [0.013, 0.5, 1e-3, 7.25, 0.333];
    let r = Rescale {
        lsbs: 2,
        offset: -17.0,
        sub: &sub,
        mul: &mul,
        add: None,
    };
    let q = Requant {
        scale: 0.37,
        zero_point: -3.0,
        lo: -31.0,
        hi: 31.0,
    };
    let a = data((2, 150, 37), 1, -32, 64);
    let w = data((1, 37, 5), 2, -31, 63);
    let len = 2 * 150 * 5;
    let fused = |a: &dyn Fn(
        &mut [MaybeUninit<i8>],
    ) -> crate::error::Result<
        crate::kernels::integer::requant::Quantized,
    >| {
        let mut out = vec![MaybeUninit::<i8>::uninit(); len];
        let got = a(&mut out).unwrap();
        // SAFETY: the kernel succeeded, so it wrote every element.
        let ints: Vec<i8> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
        (ints, got.min, got.max, got.nan)
    };
    let floats = |a: &dyn Fn(&mut [MaybeUninit<f64>]) -> crate::error::Result<()>| {
        let mut out = vec![MaybeUninit::<f64>::uninit(); len];
        a(&mut out).unwrap();
        // SAFETY: the kernel succeeded, so it wrote every element.
        out.iter()
            .map(|v| unsafe { v.assume_init() }.to_bits())
            .collect::<Vec<u64>>()
    };
    let (a8, a16, a32) = (narrowed::<i8>(&a), narrowed::<i16>(&a), narrowed::<i32>(&a));
    let want = fused(&|o| matmul_rescale_quant_into(a.view(), w.view(), 4, &r, &q, o));
    assert_eq!(
        fused(&|o| matmul_rescale_quant_into(a8.view(), w.view(), 4, &r, &q, o)),
        want
    );
    assert_eq!(
        fused(&|o| matmul_rescale_quant_into(a16.view(), w.view(), 4, &r, &q, o)),
        want
    );
    assert_eq!(
        fused(&|o| matmul_rescale_quant_into(a32.view(), w.view(), 4, &r, &q, o)),
        want
    );
    let want = floats(&|o| matmul_rescale_into(a.view(), w.view(), 4, &r, o));
    assert_eq!(
        floats(&|o| matmul_rescale_into(a8.view(), w.view(), 4, &r, o)),
        want
    );
    assert_eq!(
        floats(&|o| matmul_rescale_into(a16.view(), w.view(), 4, &r, o)),
        want
    );
}

#[test]
fn narrow_ranges_are_the_widened_ones() {
    fn check<T: Lhs + TryFrom<i64>>(values: &[i64]) {
        let typed: Vec<T> = values
            .iter()
            .map(|&v| T::try_from(v).ok().expect("fits"))
            .collect();
        let want = values
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let view = ndarray::ArrayView1::from(&typed[..]);
        let got = T::range_of(view);
        let want = if values.is_empty() { (0, 0) } else { want };
        assert_eq!(got, want);
        assert_eq!(crate::kernels::integer::exact::range_slice(&typed), want);
    }
    // lengths around the vector widths and the parallel chunk, the extremes of each type
    // at the start, the middle and the end
    for n in [0usize, 1, 7, 31, 32, 33, 100, (1 << 15) + 5, 70_000] {
        for (lo, hi) in [(-128i64, 127i64), (-32768, 32767), (i64::from(i32::MIN), 0)] {
            let mut v: Vec<i64> = (0..n as i64).map(|i| (i * 37 + 11) % 50 - 20).collect();
            if n > 2 {
                v[n / 2] = lo;
                v[n - 1] = hi;
            } else if n > 0 {
                v[0] = hi;
            }
            if hi <= 127 && lo >= -128 {
                check::<i8>(&v);
            }
            if hi <= 32767 && lo >= -32768 {
                check::<i16>(&v);
            }
            check::<i32>(&v);
            check::<i64>(&v);
        }
    }
}

/// Records which rows came as int32 and writes the accumulators as they are.
struct Recorder<'a> {
    reads: bool,
    i32_rows: &'a std::sync::atomic::AtomicUsize,
}

impl RowEpilogue<i64> for Recorder<'_> {
    fn row(&self, acc: &[i64], dst: &mut [MaybeUninit<i64>]) {
        for (d, &v) in dst.iter_mut().zip(acc) {
            d.write(v);
        }
    }
    fn reads_i32(&self) -> bool {
        self.reads
    }
    fn row_i32(&self, acc: &[i32], dst: &mut [MaybeUninit<i64>]) {
        self.i32_rows
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (d, &v) in dst.iter_mut().zip(acc) {
            d.write(i64::from(v));
        }
    }
}

#[test]
fn int32_rows_are_the_accumulators_without_shift() {
    // (A, W, z_w, whether the plan keeps s = t = 0)
    for (ashape, wshape, alo, aspan, wlo, wspan, z_w, plain) in [
        ((1, 130, 64), (1, 64, 128), 0, 64, -31, 63, 0, true),
        ((2, 67, 33), (2, 33, 10), 5, 50, -100, 200, -7, true),
        ((1, 70, 9), (1, 9, 17), -3, 40, -31, 63, 0, false),
        ((1, 64, 20), (1, 20, 5), 0, 256, 0, 255, 0, false),
    ] {
        let a = data(ashape, 3, alo, aspan);
        let w = data(wshape, 4, wlo, wspan);
        for reads in [true, false] {
            let i32_rows = std::sync::atomic::AtomicUsize::new(0);
            let rec = Recorder {
                reads,
                i32_rows: &i32_rows,
            };
            let dims = matmul_shape(a.dim(), w.dim()).unwrap();
            let mut out = Array3::<i64>::from_elem(dims, 99);
            let dst = out.as_slice_mut().unwrap();
            // SAFETY: MaybeUninit<i64> has the layout of i64 and every value is initialised.
            let dst: &mut [MaybeUninit<i64>] = unsafe { std::mem::transmute(dst) };
            map_into_with(a.view(), w.view(), z_w, dst, rec, VNNI).unwrap();
            assert_eq!(out, naive(&a, &w, z_w));
            let rows = i32_rows.into_inner();
            let vnni_runs = vnni::available();
            let want = if reads && plain && vnni_runs {
                dims[0] * dims[1]
            } else {
                0
            };
            assert_eq!(rows, want, "{ashape:?} {wshape:?} reads={reads}");
        }
    }
}
