//! The stream's reduction against the exact kernel on the looked-up blocks, merged block by
//! block, and its refusals.

use super::*;
use crate::kernels::float::extremes::matmul_extremes;
use crate::kernels::test_rng::Rng;

fn operands(rng: &mut Rng, k: usize, m: usize, bias: bool, loose: f64) -> Operands {
    let wq = Array2::from_shape_fn((k, m), |_| rng.int(31));
    let w = wq.mapv(|v| v as f64 / 63.0 + rng.float(-1e-3, 1e-3));
    Operands {
        wq,
        z_w: 0,
        w,
        bias: bias.then(|| Array1::from_shape_fn(m, |_| rng.float(-1.0, 1.0))),
        quant: (0.037, 3.0),
        exact: false,
        loose_survivors: loose,
    }
}

/// The exact extremes of the blocks, merged in order (empty blocks skipped).
fn merged<A: AccInput>(ops: &Operands, blocks: &[Array2<A>]) -> Extremes<f64> {
    let (s, z) = ops.quant;
    let bias = ops.bias.as_ref().map(|b| b.view());
    let load = |v: A| dequantize_value(v, s, z);
    blocks
        .iter()
        .filter(|q| q.nrows() > 0)
        .map(|a| matmul_extremes(a.view(), load, ops.w.view(), bias, Isa::detect()).unwrap())
        .reduce(Extremes::merge)
        .unwrap()
}

/// [`merged`] of the blocks read through `table` (entry 0 maps `lo`) when given.
fn exact(ops: &Operands, table: Option<(i64, &[i8])>, blocks: &[Array2<i8>]) -> Extremes<f64> {
    match table {
        Some((lo, t)) => {
            let read: Vec<Array2<i8>> = blocks
                .iter()
                .map(|q| q.mapv(|v| t[(i64::from(v) - lo) as usize]))
                .collect();
            merged(ops, &read)
        }
        None => merged(ops, blocks),
    }
}

fn blocks(rng: &mut Rng, sizes: &[usize], k: usize, lo: i64, hi: i64) -> Vec<Array2<i8>> {
    sizes
        .iter()
        .map(|&n| {
            Array2::from_shape_fn((n, k), |_| {
                (lo + rng.int((hi - lo) / 2) + (hi - lo) / 2) as i8
            })
        })
        .collect()
}

#[test]
fn stream_matches_the_exact_kernel_with_and_without_a_table() {
    let mut rng = Rng(0x5eed_0001);
    let mut checked = 0;
    for case in 0..12 {
        let (k, m) = ([3, 16, 64, 128][case % 4], [1, 10, 33][case % 3]);
        let ops = operands(&mut rng, k, m, case % 2 == 0, [0.25, 0.0, 1e9][case % 3]);
        let data = blocks(&mut rng, &[37, 0, 200, 5], k, -20, 20);
        // a Relu-like table over [-20, 20] to int8
        let table = Table::I8((-20..=20).map(|v: i8| v.max(0)).collect());
        let entries: Vec<i8> = (-20..=20).map(|v: i8| v.max(0)).collect();
        for with_table in [false, true] {
            let mut r = Reduction::default();
            for q in &data {
                r.add(
                    &ops,
                    with_table.then_some((-20, &table)),
                    Block::I8(q.view()),
                );
            }
            let want = exact(&ops, with_table.then_some((-20, &entries[..])), &data);
            if want.min == 0.0 || want.max == 0.0 {
                continue;
            }
            assert_eq!(r.refused, None, "case {case}");
            let got = r.extremes.unwrap();
            assert_eq!(
                got.min.to_bits(),
                want.min.to_bits(),
                "case {case} table {with_table}"
            );
            assert_eq!(
                got.max.to_bits(),
                want.max.to_bits(),
                "case {case} table {with_table}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} cases had non-zero extremes");
}

#[test]
fn wider_tables_and_blocks_are_read_as_their_types() {
    let mut rng = Rng(0x5eed_0002);
    let ops = operands(&mut rng, 24, 7, true, 0.25);
    let data = blocks(&mut rng, &[50, 50], 24, -100, 100);
    let entries: Vec<i8> = (-100..=100).map(|v: i16| (v / 3) as i8).collect();
    let want = exact(&ops, Some((-100, &entries[..])), &data);
    let wide: Vec<Array2<i16>> = data.iter().map(|q| q.mapv(i16::from)).collect();
    for table in [
        Table::I16(entries.iter().map(|&v| i16::from(v)).collect()),
        Table::I32(entries.iter().map(|&v| i32::from(v)).collect()),
    ] {
        let mut r = Reduction::default();
        for q in &wide {
            r.add(&ops, Some((-100, &table)), Block::I16(q.view()));
        }
        let got = r.extremes.unwrap();
        assert_eq!(
            (got.min.to_bits(), got.max.to_bits()),
            (want.min.to_bits(), want.max.to_bits())
        );
    }
}

#[test]
fn a_value_outside_the_table_or_a_zero_extreme_stops_the_reduction() {
    let mut rng = Rng(0x5eed_0003);
    let ops = operands(&mut rng, 8, 4, false, 0.25);
    let table = Table::I8(vec![1; 5]);
    let mut r = Reduction::default();
    let q = Array2::from_elem((3, 8), 9i8);
    r.add(&ops, Some((0, &table)), Block::I8(q.view()));
    assert!(r.refused.is_some());
    // later blocks are ignored
    let fine = Array2::from_elem((3, 8), 1i8);
    r.add(&ops, Some((0, &table)), Block::I8(fine.view()));
    assert!(r.extremes.is_none());

    // every input at the zero point: every value is 0
    let mut r = Reduction::default();
    let zero = Array2::from_elem((4, 8), 3i8);
    r.add(&ops, None, Block::I8(zero.view()));
    assert!(r.refused.is_some() && r.extremes.is_none());
}

#[test]
fn an_overflowing_product_takes_the_float_filter() {
    let mut rng = Rng(0x5eed_0004);
    let k = 40;
    let mut ops = operands(&mut rng, k, 3, true, 0.25);
    ops.wq.fill(i64::from(i32::MAX) / 8);
    let data: Vec<Array2<i32>> = (0..2)
        .map(|_| Array2::from_shape_fn((6, k), |_| rng.int(1 << 20) as i32))
        .collect();
    let mut r = Reduction::default();
    for q in &data {
        r.add(&ops, None, Block::I32(q.view()));
    }
    assert_eq!(r.refused, None);
    let want = merged(&ops, &data);
    let got = r.extremes.unwrap();
    assert_eq!(
        (got.min.to_bits(), got.max.to_bits()),
        (want.min.to_bits(), want.max.to_bits())
    );
}
