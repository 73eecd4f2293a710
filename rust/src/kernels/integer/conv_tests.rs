//! The integer convolution and pooling kernels against their definitions (a plain loop
//! over the taps; every strategy and input type), and their overflow and shape errors.

use super::*;
use ndarray::Array;

/// Direct definition: pad, then slide.
fn naive(x: &Array4<i64>, w: &Array4<i64>, z_w: i64, group: usize, g: &Geometry) -> Array4<i64> {
    let (n, c, h, wd) = x.dim();
    let (o, cg, kh, kw) = w.dim();
    let [oh, ow] = g.output_hw([h, wd]).unwrap();
    let og = o / group;
    Array4::from_shape_fn((n, o, oh, ow), |(b, oc, y, xx)| {
        let grp = oc / og;
        let mut acc = 0;
        for ci in 0..cg {
            for i in 0..kh {
                for j in 0..kw {
                    let v = match g.cell([h, wd], y, xx, i, j) {
                        Cell::Input(r, s) => x[[b, grp * cg + ci, r, s]],
                        Cell::Pad => g.pad_value,
                        Cell::Zero => 0,
                    };
                    acc += v * (w[[oc, ci, i, j]] - z_w);
                }
            }
        }
        let _ = c;
        acc
    })
}

fn data(shape: (usize, usize, usize, usize), seed: i64, lo: i64, span: i64) -> Array4<i64> {
    let len = shape.0 * shape.1 * shape.2 * shape.3;
    let v: Vec<i64> = (0..len as i64)
        .map(|i| lo + (i * 7919 + seed * 104729).rem_euclid(span))
        .collect();
    Array::from_shape_vec(shape, v).unwrap()
}

#[test]
fn conv_matches_the_definition() {
    let x = data((3, 4, 7, 6), 1, -3, 17);
    let w = data((6, 2, 3, 2), 2, -8, 15);
    let g = Geometry::new([3, 2], [2, 1], [1, 0, 2, 1], [0, 1], 4);
    let got = conv2d(x.view(), w.view(), 3, 2, &g).unwrap();
    assert_eq!(got, naive(&x, &w, 3, 2, &g));
    // Large values take the i64 path.
    let xb = x.mapv(|v| v << 30);
    let got = conv2d(xb.view(), w.view(), 0, 2, &g).unwrap();
    assert_eq!(got, naive(&xb, &w, 0, 2, &g));
    // Non-contiguous input.
    let xt = data((3, 4, 6, 7), 3, 0, 9);
    let xv = xt.view().permuted_axes([0, 1, 3, 2]);
    let got = conv2d(xv, w.view(), 0, 2, &g).unwrap();
    assert_eq!(got, naive(&xv.to_owned(), &w, 0, 2, &g));
}

/// `conv2d` with the U8I8 strategy allowed or not (its scalar kernel on other CPUs).
fn with(
    x: &Array4<i64>,
    w: &Array4<i64>,
    z_w: i64,
    group: usize,
    g: &Geometry,
    allowed: Allowed,
) -> Array4<i64> {
    let dims = conv2d_shape(x.dim(), w.dim(), group, g).unwrap();
    let mut out = Array4::<i64>::from_elem(dims, 99);
    let dst = out.as_slice_mut().unwrap();
    map_into_with(
        x.view(),
        w.view(),
        z_w,
        group,
        g,
        dst,
        |_, acc, d| d.copy_from_slice(acc),
        allowed,
        DirectUse::Off,
    )
    .unwrap();
    out
}

/// `conv2d` through the direct conv (`use_`), from the input narrowed to `X`.
fn direct_with<X: ConvInput + TryFrom<i64>>(
    x: &Array4<i64>,
    w: &Array4<i64>,
    z_w: i64,
    group: usize,
    g: &Geometry,
    use_: DirectUse,
) -> Array4<i64>
where
    <X as TryFrom<i64>>::Error: std::fmt::Debug,
{
    direct_allowing::<X>(x, w, z_w, group, g, use_, Allowed::NONE)
}

/// `direct_with` with the SIMD integer strategies of `allowed` also allowed.
fn direct_allowing<X: ConvInput + TryFrom<i64>>(
    x: &Array4<i64>,
    w: &Array4<i64>,
    z_w: i64,
    group: usize,
    g: &Geometry,
    use_: DirectUse,
    allowed: Allowed,
) -> Array4<i64>
where
    <X as TryFrom<i64>>::Error: std::fmt::Debug,
{
    let xn = x.mapv(|v| X::try_from(v).unwrap());
    let dims = conv2d_shape(x.dim(), w.dim(), group, g).unwrap();
    let mut out = Array4::<i64>::from_elem(dims, 99);
    let dst = out.as_slice_mut().unwrap();
    map_into_with(
        xn.view(),
        w.view(),
        z_w,
        group,
        g,
        dst,
        |_, acc, d| d.copy_from_slice(acc),
        allowed,
        use_,
    )
    .unwrap();
    out
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
fn i16_matches_the_definition_with_wide_operands() {
    // Operands too wide for u8 × i8 but within i16 after centring; odd K, groups, pads
    // with a pad value and the ceil extension, strides, batches across im2col blocks.
    let cases = [
        (
            (3, 4, 7, 6),
            (6, 2, 3, 2),
            [2, 1],
            [1, 0, 2, 1],
            [0, 1],
            60,
            -2000,
            2,
        ),
        (
            (70, 1, 8, 8),
            (8, 1, 3, 3),
            [1, 1],
            [1, 1, 1, 1],
            [0, 0],
            17,
            0,
            1,
        ),
        (
            (9, 8, 8, 8),
            (16, 8, 3, 3),
            [2, 2],
            [1, 1, 1, 1],
            [0, 0],
            -300,
            -555,
            1,
        ),
        (
            (2, 3, 5, 4),
            (3, 1, 2, 2),
            [1, 1],
            [0; 4],
            [0, 0],
            1000,
            1000,
            3,
        ),
        (
            (1, 5, 9, 9),
            (7, 5, 1, 3),
            [3, 2],
            [0, 2, 1, 0],
            [1, 0],
            5,
            30_000,
            1,
        ),
    ];
    for (xs, ws, strides, pads, extra, pad_value, xlo, group) in cases {
        let g = Geometry::new([ws.2, ws.3], strides, pads, extra, pad_value);
        let x = data(xs, 1, xlo, 3000);
        let w = data(ws, 2, -600, 1200);
        let want = naive(&x, &w, 4, group, &g);
        for allowed in [I16, Allowed::NONE] {
            assert_eq!(with(&x, &w, 4, group, &g, allowed), want, "{xs:?} {ws:?}");
        }
    }
}

#[test]
fn direct_matches_the_definition_for_every_input_type() {
    // (x shape, w shape, strides, pads, extra, pad value, group): one input channel,
    // groups, depthwise, strides, pads with a pad value and the ceil extension, more than
    // 16 output channels (two channel blocks), a 1x1 kernel, odd sizes.
    let cases = [
        (
            (3, 1, 8, 8),
            (8, 1, 3, 3),
            [1, 1],
            [1, 1, 1, 1],
            [0, 0],
            -1,
            1,
        ),
        (
            (5, 8, 8, 8),
            (16, 8, 3, 3),
            [2, 2],
            [1, 1, 1, 1],
            [0, 0],
            0,
            1,
        ),
        (
            (3, 4, 7, 6),
            (6, 2, 3, 2),
            [2, 1],
            [1, 0, 2, 1],
            [0, 1],
            60,
            2,
        ),
        ((2, 3, 5, 4), (3, 1, 2, 2), [1, 1], [0; 4], [0, 0], 100, 3),
        (
            (1, 5, 9, 9),
            (7, 5, 1, 3),
            [3, 2],
            [0, 2, 1, 0],
            [1, 0],
            5,
            1,
        ),
        (
            (2, 2, 6, 5),
            (37, 2, 3, 3),
            [1, 2],
            [2, 1, 0, 2],
            [1, 1],
            -7,
            1,
        ),
        ((4, 6, 3, 3), (12, 2, 1, 1), [1, 1], [0; 4], [0, 0], 0, 3),
        ((1, 1, 1, 1), (1, 1, 1, 1), [1, 1], [0; 4], [0, 0], 0, 1),
    ];
    for (xs, ws, strides, pads, extra, pad_value, group) in cases {
        let g = Geometry::new([ws.2, ws.3], strides, pads, extra, pad_value);
        for (xlo, span) in [(-16, 32), (0, 30), (-128, 256)] {
            let x = data(xs, 1, xlo, span);
            let w = data(ws, 2, -20, 37);
            let want = naive(&x, &w, 3, group, &g);
            for use_ in [DirectUse::On, DirectUse::Portable] {
                let what = format!("{xs:?} {ws:?} {use_:?} {xlo}");
                assert_eq!(
                    direct_with::<i8>(&x, &w, 3, group, &g, use_),
                    want,
                    "{what}"
                );
                assert_eq!(
                    direct_with::<i16>(&x, &w, 3, group, &g, use_),
                    want,
                    "{what}"
                );
                assert_eq!(
                    direct_with::<i32>(&x, &w, 3, group, &g, use_),
                    want,
                    "{what}"
                );
                assert_eq!(
                    direct_with::<i64>(&x, &w, 3, group, &g, use_),
                    want,
                    "{what}"
                );
            }
            assert_eq!(
                direct_with::<i8>(&x, &w, 3, group, &g, DirectUse::Off),
                want
            );
        }
    }
    // Past the F32 bound the direct conv does not apply: the other paths give the same.
    let g = Geometry::new([3, 3], [1, 1], [1; 4], [0, 0], 0);
    let x = data((2, 3, 5, 5), 1, -30_000, 60_000);
    let w = data((4, 3, 3, 3), 2, -3000, 6000);
    let want = naive(&x, &w, 0, 1, &g);
    assert_eq!(direct_with::<i32>(&x, &w, 0, 1, &g, DirectUse::On), want);
}

#[test]
fn direct_or_u8i8_by_channels_matches_the_definition() {
    // With U8I8 allowed too, the direct conv takes up to DIRECT_BEFORE_U8I8_CHANNELS output
    // channels per group and U8I8 the wider ones: both give the definition.
    let g = Geometry::new([3, 3], [1, 1], [1; 4], [0, 0], 5);
    for (o, group) in [(8, 1), (32, 1), (33, 1), (48, 1), (64, 2), (66, 2)] {
        let x = data((3, 4, 6, 5), 1, 0, 31);
        let w = data((o, 4 / group, 3, 3), 2, -15, 31);
        let want = naive(&x, &w, 2, group, &g);
        for use_ in [DirectUse::On, DirectUse::Off] {
            assert_eq!(
                direct_allowing::<i8>(&x, &w, 2, group, &g, use_, VNNI),
                want,
                "{o} channels, group {group}, {use_:?}"
            );
        }
    }
}

#[test]
fn u8i8_limits() {
    assert_eq!(u8i8_shift(9, (-3, 252), (-128, 127)), Some(-3));
    assert_eq!(u8i8_shift(9, (-3, 253), (-128, 127)), None);
    assert_eq!(u8i8_shift(9, (0, 255), (-129, 0)), None);
    assert_eq!(u8i8_shift(9, (0, 255), (0, 128)), None);
    // K·255·128 <= 2^31 − 1 exactly up to K = 65793.
    assert_eq!(u8i8_shift(65793, (0, 255), (-128, 0)), Some(0));
    assert_eq!(u8i8_shift(65794, (0, 255), (-128, 0)), None);
}

#[test]
fn u8i8_matches_the_definition() {
    // Strides, groups, padding with a pad value and the ceil extension (0), so x_pad
    // spans the input, the pad value and 0; images across im2col blocks of 4096 columns.
    let cases = [
        (
            (3, 4, 7, 6),
            (6, 2, 3, 2),
            [2, 1],
            [1, 0, 2, 1],
            [0, 1],
            60,
            -100,
            2,
        ),
        (
            (70, 1, 8, 8),
            (8, 1, 3, 3),
            [1, 1],
            [1, 1, 1, 1],
            [0, 0],
            17,
            0,
            1,
        ),
        (
            (9, 8, 8, 8),
            (16, 8, 3, 3),
            [2, 2],
            [1, 1, 1, 1],
            [0, 0],
            -300,
            -555,
            1,
        ),
        (
            (2, 3, 5, 4),
            (3, 1, 2, 2),
            [1, 1],
            [0; 4],
            [0, 0],
            1000,
            1000,
            3,
        ),
    ];
    for (xs, ws, strides, pads, extra, pad_value, xlo, group) in cases {
        let g = Geometry::new([ws.2, ws.3], strides, pads, extra, pad_value);
        let span = if extra[1] > 0 { 255 - xlo.max(0) } else { 256 };
        let x = data(xs, 1, xlo, span.min(256));
        let w = data(ws, 2, -128 + 4, 256);
        let (lo, hi) = range(x.iter());
        let (lo, hi) = (lo.min(pad_value), hi.max(pad_value));
        let zero = if extra[1] > 0 { 0 } else { lo };
        let x_pad = (lo.min(zero), hi.max(zero));
        let ckk = ws.1 * ws.2 * ws.3;
        assert!(u8i8_shift(ckk, x_pad, (-128, 127)).is_some());
        let want = naive(&x, &w, 4, group, &g);
        for allowed in [VNNI, I16, Allowed::NONE] {
            assert_eq!(with(&x, &w, 4, group, &g, allowed), want);
        }
    }
}

#[test]
fn pools_match_the_definition() {
    let x = data((2, 3, 5, 5), 4, 0, 30);
    let g = Geometry::new([2, 3], [2, 2], [1, 1, 0, 1], [1, 0], 7);
    let ones = Array4::<i64>::ones((3, 1, 2, 3));
    assert_eq!(
        window_sum(x.view(), &g).unwrap(),
        naive(&x, &ones, 0, 3, &g)
    );
    let m = window_max(x.view(), &g).unwrap();
    assert_eq!(m.dim(), (2, 3, 3, 3));
    assert_eq!(m[[0, 0, 0, 0]], 7.max(x[[0, 0, 0, 0]]).max(x[[0, 0, 0, 1]]));
}

#[test]
fn overflow_and_shape_errors() {
    let x = Array4::<i64>::from_elem((1, 1, 2, 2), 1 << 40);
    let w = Array4::<i64>::from_elem((1, 1, 2, 2), 1 << 30);
    let g = Geometry::new([2, 2], [1, 1], [0; 4], [0; 2], 0);
    assert!(matches!(
        conv2d(x.view(), w.view(), 0, 1, &g),
        Err(Error::Overflow(_))
    ));
    assert!(matches!(
        conv2d(x.view(), w.view(), 0, 2, &g),
        Err(Error::Shape(_))
    ));
    let g3 = Geometry::new([3, 3], [1, 1], [0; 4], [0; 2], 0);
    assert!(matches!(window_max(x.view(), &g3), Err(Error::Shape(_))));
    let sums = weight_sums(w.view(), 2).unwrap();
    assert_eq!(sums[[0, 0]], 2 * 4 * (1 << 30));
}
