//! The float extremes of one Gemm/MatMul reduced over a stream of stored-integer blocks,
//! each read through an optional lookup table first: the work of the statistics gathered one
//! op ahead (`fhequant.quantized.calibration.ahead`), which the bindings run on a thread of
//! its own, block after block, while the calibration walk computes the next block.
//!
//! A block is what the consumer's own statistics pass would hand to
//! `int_matmul_acc_extremes`: the stored integers of its input, or `table[q − lo]` of the
//! producer's integers `q` (the lookup of [`lookup`]). Its extremes come from
//! [`acc_extremes`], or from the float filter of [`matmul_extremes_by`] once the
//! integer estimate proved loose or the int32 product could overflow, as the Python pass
//! decides per op; both give the exact kernel's numbers bit for bit, so the choice only
//! changes the time. The blocks' extremes are merged as numpy's `minimum` and `maximum`
//! merge them (no NaN and no zero reaches the merge).
//!
//! A block whose own pass would materialise the float result instead (a NaN or an infinity
//! in it, a zero extreme) or that the kernels refuse stops the reduction: it records why,
//! and the caller runs the consumer's own pass, which reports or resolves it as before.

use std::mem::MaybeUninit;

use ndarray::{Array1, Array2, ArrayView2};

use crate::error::Error;
use crate::kernels::float::accfilter::{acc_extremes, AccCounts, AccInput};
use crate::kernels::float::extremes::Extremes;
use crate::kernels::float::filtered::matmul_extremes_by;
use crate::kernels::float::matmul::Isa;
use crate::kernels::quant::dequantize::dequantize_value;
use crate::kernels::quant::table::{lookup, Entry, Index};

/// The consumer's constant operands, as `int_matmul_acc_extremes` takes them.
pub struct Operands {
    /// (K, N) integer weights.
    pub wq: Array2<i64>,
    /// Their zero point.
    pub z_w: i64,
    /// (K, N) float64 weights of the float result.
    pub w: Array2<f64>,
    /// (N,) float64 bias.
    pub bias: Option<Array1<f64>>,
    /// The input's float64 (scale, zero point).
    pub quant: (f64, f64),
    /// Run every exact sum (no filter).
    pub exact: bool,
    /// Values refined per row above which the next blocks take the float filter.
    pub loose_survivors: f64,
}

/// The lookup table of the blocks (entries in the dtype the consumer reads).
pub enum Table {
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
}

/// One block of (rows, K) C-contiguous stored integers.
#[derive(Clone, Copy)]
pub enum Block<'a> {
    I8(ArrayView2<'a, i8>),
    I16(ArrayView2<'a, i16>),
    I32(ArrayView2<'a, i32>),
}

/// The running extremes of the stream.
#[derive(Default)]
pub struct Reduction {
    /// The extremes so far (None before the first value).
    pub extremes: Option<Extremes<f64>>,
    /// Why the reduction stopped, if it did.
    pub refused: Option<String>,
    /// What the integer filter did over the stream.
    pub counts: AccCounts,
    /// The next blocks take the float filter.
    float_filter: bool,
    acc: Vec<i32>,
    looked8: Vec<i8>,
    looked16: Vec<i16>,
    looked32: Vec<i32>,
}

impl Reduction {
    /// Take one block (read through `table`, whose entry 0 maps the integer `lo`, when
    /// given); once a block was refused the others are ignored.
    pub fn add(&mut self, ops: &Operands, table: Option<(i64, &Table)>, block: Block<'_>) {
        if self.refused.is_some() {
            return;
        }
        if let Err(why) = self.take(ops, table, block) {
            self.refuse(why);
        }
    }

    /// Stop the reduction for `why` (the first reason is kept).
    pub fn refuse(&mut self, why: String) {
        self.refused.get_or_insert(why);
    }

    fn take(
        &mut self,
        ops: &Operands,
        table: Option<(i64, &Table)>,
        block: Block<'_>,
    ) -> Result<(), String> {
        let Some((lo, table)) = table else {
            return match block {
                Block::I8(a) => self.reduce(ops, a),
                Block::I16(a) => self.reduce(ops, a),
                Block::I32(a) => self.reduce(ops, a),
            };
        };
        match table {
            Table::I8(t) => self.through(ops, block, lo, t, |r| &mut r.looked8),
            Table::I16(t) => self.through(ops, block, lo, t, |r| &mut r.looked16),
            Table::I32(t) => self.through(ops, block, lo, t, |r| &mut r.looked32),
        }
    }

    /// [`Self::reduce`] of the block read through `table`, looked up into the buffer
    /// `buffer` picks (kept for the next block).
    fn through<O: AccInput + Entry>(
        &mut self,
        ops: &Operands,
        block: Block<'_>,
        lo: i64,
        table: &[O],
        buffer: fn(&mut Self) -> &mut Vec<O>,
    ) -> Result<(), String> {
        let mut buf = std::mem::take(buffer(self));
        let out = looked_up(block, lo, table, &mut buf).and_then(|a| self.reduce(ops, a));
        *buffer(self) = buf;
        out
    }

    /// The extremes of one block of the consumer's input, merged into the running ones.
    fn reduce<A: AccInput>(&mut self, ops: &Operands, a: ArrayView2<'_, A>) -> Result<(), String> {
        let (n, _) = a.dim();
        if n == 0 {
            return Ok(()); // the consumer's pass finds no value in it either
        }
        let isa = Isa::detect();
        let found = match self.integer_filter(ops, a, isa) {
            Some(found) => found,
            None => self.float_extremes(ops, a, isa),
        }
        .map_err(|e| e.to_string())?;
        if !found.finite || found.min == 0.0 || found.max == 0.0 {
            return Err("the block's result needs the materialised pass".into());
        }
        self.extremes = Some(match self.extremes {
            Some(seen) => seen.merge(found),
            None => found,
        });
        Ok(())
    }

    /// The extremes from the integer product (None: the float filter serves the block, as
    /// when the product could overflow int32, and then every later block).
    fn integer_filter<A: AccInput>(
        &mut self,
        ops: &Operands,
        a: ArrayView2<'_, A>,
        isa: Isa,
    ) -> Option<Result<Extremes<f64>, Error>> {
        if self.float_filter {
            return None;
        }
        let n = a.dim().0;
        let len = n * ops.wq.dim().1;
        self.acc.clear();
        self.acc.reserve(len);
        let slots: &mut [MaybeUninit<i32>] = &mut self.acc.spare_capacity_mut()[..len];
        let bias = ops.bias.as_ref().map(|b| b.view());
        let (wq, w) = (ops.wq.view(), ops.w.view());
        let (found, c) = acc_extremes(a, wq, ops.z_w, w, bias, ops.quant, ops.exact, isa, slots);
        self.counts.tasks += c.tasks;
        self.counts.verified += c.verified;
        self.counts.fallbacks += c.fallbacks;
        self.counts.refined += c.refined;
        if matches!(found, Err(Error::Overflow(_))) {
            self.float_filter = true;
            return None;
        }
        if c.fallbacks > 0 || c.refined as f64 > n as f64 * ops.loose_survivors {
            self.float_filter = true;
        }
        Some(found)
    }

    /// The extremes from the float kernels (filtered unless `exact`).
    fn float_extremes<A: AccInput>(
        &self,
        ops: &Operands,
        a: ArrayView2<'_, A>,
        isa: Isa,
    ) -> Result<Extremes<f64>, Error> {
        let (scale, zero_point) = ops.quant;
        let load = move |v: A| dequantize_value(v, scale, zero_point);
        let bias = ops.bias.as_ref().map(|b| b.view());
        matmul_extremes_by(ops.exact, a, load, ops.w.view(), bias, isa)
    }
}

/// `table[q − lo]` of a block, as a block of the table's dtype in `buf`.
fn looked_up<'b, O: Entry>(
    block: Block<'_>,
    lo: i64,
    table: &[O],
    buf: &'b mut Vec<O>,
) -> Result<ArrayView2<'b, O>, String> {
    fn run<I: Index, O: Entry>(
        q: ArrayView2<'_, I>,
        lo: i64,
        table: &[O],
        buf: &mut Vec<O>,
    ) -> Result<(usize, usize), String> {
        let src = q.as_slice().ok_or("the block is not C-contiguous")?;
        buf.clear();
        buf.reserve(src.len());
        lookup(src, lo, table, &mut buf.spare_capacity_mut()[..src.len()])
            .map_err(|e| e.to_string())?;
        // SAFETY: lookup succeeded, so it wrote all src.len() values.
        unsafe { buf.set_len(src.len()) };
        Ok(q.dim())
    }
    let dim = match block {
        Block::I8(q) => run(q, lo, table, buf)?,
        Block::I16(q) => run(q, lo, table, buf)?,
        Block::I32(q) => run(q, lo, table, buf)?,
    };
    ArrayView2::from_shape(dim, buf.as_slice()).map_err(|e| e.to_string())
}

#[cfg(test)]
#[path = "acc_stream_tests.rs"]
mod tests;
