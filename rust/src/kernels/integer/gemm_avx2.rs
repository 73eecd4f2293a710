//! The runners of the AVX2 strategies of `gemm` (I16 with `madd`, U8I8Avx2 with
//! `maddubs`): the weights packed once per batch, each block of rows centred into the
//! kernel's left operand, multiplied, then corrected (see `Job` in `gemm.rs`).

use std::mem::MaybeUninit;

use ndarray::ArrayView2;

use super::{centre_rows, correct_rows, Job, Lhs, RowEpilogue};
use crate::kernels::integer::madd::{self, PackedB16};
use crate::kernels::integer::maddubs::{self, PackedB8};
use crate::kernels::simd;

impl<A: Lhs> Job<'_, A> {
    /// `run` for the I16 strategy: W' packed once per weight batch, A − s rows as i16.
    pub(super) fn run_i16<O, F>(&self, out: &mut [MaybeUninit<O>], epilogue: &F)
    where
        O: Copy + Send,
        F: RowEpilogue<O>,
    {
        let [_, bw, _, k, n] = self.dims;
        // W' lies in i16 under this strategy, so the truncation is exact.
        let packed: Vec<PackedB16> = (0..bw)
            .map(|b| PackedB16::pack(&self.wc[b * k * n..(b + 1) * k * n], k, n, |v| v as i16))
            .collect();
        // A − s lies in i16 under this strategy, so the truncation is exact.
        let dims = packed
            .first()
            .map_or((0, 0), |p| (p.padded_k(), p.padded_n()));
        let tile = (madd::MR, dims);
        self.run_panels(
            out,
            epilogue,
            tile,
            |c| c as i16,
            |wsel, rows, lhs, tmp| madd::gemm::<{ madd::MR }>(rows, lhs, &packed[wsel], tmp),
        );
    }

    /// `run` for the U8I8Avx2 strategy: W' packed once per weight batch as i8, A − s rows
    /// as u8, `steps` groups of 4 k added in i16 per widening.
    pub(super) fn run_maddubs<O, F>(&self, out: &mut [MaybeUninit<O>], epilogue: &F, steps: usize)
    where
        O: Copy + Send,
        F: RowEpilogue<O>,
    {
        let [_, bw, _, k, n] = self.dims;
        // W' lies in [−128, 127] under this strategy: its bytes are its two's complement.
        let packed: Vec<PackedB8> = (0..bw)
            .map(|b| PackedB8::pack(&self.wc[b * k * n..(b + 1) * k * n], k, n, |v| v as u8))
            .collect();
        // A − s lies in [0, 255] under this strategy, so the truncation is exact.
        let dims = packed
            .first()
            .map_or((0, 0), |p| (p.padded_k(), p.padded_n()));
        let tile = (maddubs::MR, dims);
        self.run_panels(
            out,
            epilogue,
            tile,
            |c| c as u8,
            |wsel, rows, lhs, tmp| {
                maddubs::gemm::<{ maddubs::MR }>(rows, lhs, &packed[wsel], steps, tmp)
            },
        );
    }

    /// `run` for a kernel on packed panels with tiles of `mr` rows and packed (K, N) =
    /// `dims`: each block's A − s rows converted by `lhs` into rows of the packed K (the row
    /// count rounded up to `mr`), multiplied by `gemm(w_batch, rows, lhs, tmp)` into i32
    /// rows of the packed N, then corrected. The blocks run compiled for AVX2 where the CPU
    /// has it, so that the centring and the corrections vectorise (the same operations, so
    /// the same results).
    fn run_panels<O, F, L, C, G>(
        &self,
        out: &mut [MaybeUninit<O>],
        epilogue: &F,
        (mr, dims): (usize, (usize, usize)),
        lhs: C,
        gemm: G,
    ) where
        O: Copy + Send,
        F: RowEpilogue<O>,
        L: Copy + Default,
        C: Fn(i64) -> L + Copy + Sync,
        G: Fn(usize, usize, &[L], &mut [i32]) + Sync,
    {
        let n = self.dims[4];
        let col_terms = self.col_terms();
        let avx2 = simd::avx2();
        self.for_blocks(out, |ab, wsel, r0, rows_out| {
            let block = PanelBlock {
                a: ab,
                wsel,
                cols: &col_terms[wsel * n..(wsel + 1) * n],
                k: self.dims[3],
                shift: self.shift,
                mr,
                dims,
                lhs,
                gemm: &gemm,
            };
            if avx2 {
                // SAFETY: `avx2` checked that the CPU has the feature.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    block.run_avx2(r0, rows_out, epilogue)
                };
            } else {
                block.run(r0, rows_out, epilogue);
            }
        });
    }
}

/// One batch of a panel-kernel `Job` (see `Job::run_panels`).
struct PanelBlock<'a, A, C, G> {
    a: ArrayView2<'a, A>,
    /// The weight batch.
    wsel: usize,
    /// s·colsum(W') + s·t·K per column.
    cols: &'a [i64],
    k: usize,
    shift: [i64; 2],
    /// Rows of the kernel's tile.
    mr: usize,
    /// The packed (K, N).
    dims: (usize, usize),
    /// A − s converted into the kernel's left operand (a closure, so that it inlines).
    lhs: C,
    gemm: &'a G,
}

impl<A, L, C, G> PanelBlock<'_, A, C, G>
where
    A: Lhs,
    L: Copy + Default,
    C: Fn(i64) -> L + Copy,
    G: Fn(usize, usize, &[L], &mut [i32]),
{
    /// Rows r0.. of the output into `rows_out` (a whole number of rows of N values).
    #[inline(always)]
    fn run<O, F>(&self, r0: usize, rows_out: &mut [MaybeUninit<O>], epilogue: &F)
    where
        F: RowEpilogue<O>,
    {
        let (k, n) = (self.k, self.cols.len());
        let rows = rows_out.len() / n;
        let (kp, np) = self.dims;
        let padded = rows.div_ceil(self.mr) * self.mr;
        let mut lhs = vec![L::default(); padded * kp];
        let row_terms = centre_rows(self.a, r0, rows, k, kp, self.shift, &mut lhs, self.lhs);
        let mut tmp = vec![0i32; padded * np];
        (self.gemm)(self.wsel, padded, &lhs, &mut tmp);
        correct_rows(
            rows_out,
            &tmp,
            np,
            &row_terms,
            self.cols,
            i64::from,
            epilogue,
        );
    }

    /// `run` compiled for AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2<O, F>(&self, r0: usize, rows_out: &mut [MaybeUninit<O>], epilogue: &F)
    where
        F: RowEpilogue<O>,
    {
        self.run(r0, rows_out, epilogue)
    }
}
