//! `AccExtremesStream`: the reduction of `kernels::float::acc_stream` on a thread of its own.
//!
//! `push` hands a block over and returns at once (it waits, without the GIL, only when
//! `pending` blocks are already queued); the thread reduces the blocks in order and never
//! takes the GIL, so it does not compete with the calibration walk for it. Each pushed
//! array is kept alive here until the thread is done with it; the caller must not write it
//! before `finish`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use ndarray::ArrayView2;
use numpy::{
    Element as NpElement, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::error::Error;
use crate::kernels::float::acc_stream::{Block, Operands, Reduction, Table};
use crate::py::errors::{borrow_err, to_pyerr};

/// The integer type of a pushed block.
#[derive(Clone, Copy)]
enum Kind {
    I8,
    I16,
    I32,
}

/// A block's integers, by address: the array stays alive in `AccExtremesStream::held`
/// until the thread has taken it.
struct Raw {
    kind: Kind,
    ptr: usize,
    rows: usize,
    cols: usize,
}

impl Raw {
    fn of<T: NpElement>(a: &Bound<'_, PyArray2<T>>, kind: Kind) -> PyResult<Self> {
        let guard = a.try_readonly().map_err(borrow_err)?;
        let view = guard.as_array();
        let (rows, cols) = view.dim();
        if !view.is_standard_layout() {
            return Err(to_pyerr(
                a.py(),
                Error::InvalidArgument(
                    "AccExtremesStream.push: the block must be C-contiguous".into(),
                ),
                None,
            ));
        }
        Ok(Raw {
            kind,
            ptr: view.as_ptr() as usize,
            rows,
            cols,
        })
    }

    /// The block as the kernels read it.
    ///
    /// # Safety
    /// The array must still be alive and unwritten.
    unsafe fn block(&self) -> Option<Block<'_>> {
        let n = self.rows * self.cols;
        let dim = (self.rows, self.cols);
        // SAFETY: `ptr` addresses n C-ordered values of the kind's type (checked in `of`),
        // alive and unwritten by the caller's contract.
        unsafe {
            Some(match self.kind {
                Kind::I8 => Block::I8(view(self.ptr as *const i8, n, dim)?),
                Kind::I16 => Block::I16(view(self.ptr as *const i16, n, dim)?),
                Kind::I32 => Block::I32(view(self.ptr as *const i32, n, dim)?),
            })
        }
    }
}

unsafe fn view<'a, T>(ptr: *const T, n: usize, dim: (usize, usize)) -> Option<ArrayView2<'a, T>> {
    // SAFETY: the caller guarantees n valid values at ptr (or n == 0).
    let values = if n == 0 {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(ptr, n) }
    };
    ArrayView2::from_shape(dim, values).ok()
}

/// The float extremes of a Gemm/MatMul over stored-integer blocks pushed one by one, read
/// through an optional table (`table[q - lo]`), reduced on a thread that does not hold the
/// GIL (see `kernels::float::acc_stream`).
#[pyclass(module = "fhequant._core")]
pub struct AccExtremesStream {
    sender: Option<SyncSender<Raw>>,
    worker: Option<JoinHandle<Reduction>>,
    done: Arc<AtomicU64>,
    held: VecDeque<(u64, Py<PyAny>)>,
    pushed: u64,
    result: Option<Reduction>,
}

fn table_of(table: &Bound<'_, PyAny>) -> PyResult<Table> {
    fn entries<T: NpElement + Copy>(t: &Bound<'_, PyArray1<T>>) -> PyResult<Vec<T>> {
        let guard = t.try_readonly().map_err(borrow_err)?;
        Ok(guard.as_array().iter().copied().collect())
    }
    if let Ok(t) = table.cast::<PyArray1<i8>>() {
        Ok(Table::I8(entries(t)?))
    } else if let Ok(t) = table.cast::<PyArray1<i16>>() {
        Ok(Table::I16(entries(t)?))
    } else if let Ok(t) = table.cast::<PyArray1<i32>>() {
        Ok(Table::I32(entries(t)?))
    } else {
        Err(to_pyerr(
            table.py(),
            Error::DType(
                "AccExtremesStream: the table must be a 1-D int8, int16 or int32 array".into(),
            ),
            None,
        ))
    }
}

#[pymethods]
impl AccExtremesStream {
    /// Start the thread. `table` (with `lo`, the integer its entry 0 maps) or None; the
    /// other operands as `int_matmul_acc_extremes` takes them; `loose_survivors` the values
    /// refined per row above which the next blocks take the float filter; at most
    /// `pending` blocks wait for the thread.
    #[new]
    #[pyo3(signature = (table, lo, wq, z_w, w, bias, scale, zero_point, exact, loose_survivors, pending))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        table: Option<&Bound<'_, PyAny>>,
        lo: i64,
        wq: PyReadonlyArray2<'_, i64>,
        z_w: i64,
        w: PyReadonlyArray2<'_, f64>,
        bias: Option<PyReadonlyArray1<'_, f64>>,
        scale: f64,
        zero_point: f64,
        exact: bool,
        loose_survivors: f64,
        pending: usize,
    ) -> PyResult<Self> {
        let table = table.map(table_of).transpose()?;
        let ops = Operands {
            wq: wq.as_array().to_owned(),
            z_w,
            w: w.as_array().to_owned(),
            bias: bias.map(|b| b.as_array().to_owned()),
            quant: (scale, zero_point),
            exact,
            loose_survivors,
        };
        if ops.wq.dim() != ops.w.dim()
            || ops.bias.as_ref().is_some_and(|b| b.len() != ops.w.dim().1)
        {
            return Err(to_pyerr(
                py,
                Error::Shape(format!(
                    "AccExtremesStream: wq {:?}, w {:?} and the bias do not fit; give wq and w \
                     (k, m) and a bias of m values",
                    ops.wq.dim(),
                    ops.w.dim()
                )),
                None,
            ));
        }
        // rayon's workers are spawned by the thread that first uses the pool and inherit its
        // name: start them here, not from the stream's thread
        let _ = rayon::current_num_threads();
        let (sender, receiver) = sync_channel::<Raw>(pending.max(1));
        let done = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&done);
        let worker = std::thread::Builder::new()
            .name("fhequant-ahead".into())
            .spawn(move || {
                let mut reduction = Reduction::default();
                for raw in receiver {
                    // SAFETY: the stream keeps the array alive until `done` counts it.
                    match unsafe { raw.block() } {
                        Some(block) => reduction.add(&ops, table.as_ref().map(|t| (lo, t)), block),
                        None => reduction.refuse("a block's shape does not fit its values".into()),
                    }
                    counter.fetch_add(1, Ordering::Release);
                }
                reduction
            })
            .map_err(|e| PyRuntimeError::new_err(format!("AccExtremesStream: no thread: {e}")))?;
        Ok(AccExtremesStream {
            sender: Some(sender),
            worker: Some(worker),
            done,
            held: VecDeque::new(),
            pushed: 0,
            result: None,
        })
    }

    /// Queue the next block: a C-contiguous (rows, k) int8/int16/int32 array, not written
    /// until `finish`.
    fn push(&mut self, py: Python<'_>, block: &Bound<'_, PyAny>) -> PyResult<()> {
        let raw = if let Ok(a) = block.cast::<PyArray2<i8>>() {
            Raw::of(a, Kind::I8)?
        } else if let Ok(a) = block.cast::<PyArray2<i16>>() {
            Raw::of(a, Kind::I16)?
        } else if let Ok(a) = block.cast::<PyArray2<i32>>() {
            Raw::of(a, Kind::I32)?
        } else {
            return Err(to_pyerr(
                py,
                Error::DType(
                    "AccExtremesStream.push: the block must be a 2-D int8, int16 or int32 array"
                        .into(),
                ),
                None,
            ));
        };
        let Some(sender) = self.sender.as_ref() else {
            return Err(PyRuntimeError::new_err(
                "AccExtremesStream.push after finish",
            ));
        };
        let taken = self.done.load(Ordering::Acquire);
        while self.held.front().is_some_and(|(i, _)| *i < taken) {
            self.held.pop_front();
        }
        self.held.push_back((self.pushed, block.clone().unbind()));
        self.pushed += 1;
        py.detach(|| sender.send(raw))
            .map_err(|_| PyRuntimeError::new_err("AccExtremesStream: the thread stopped"))
    }

    /// Wait for the thread and return `(extremes, refused, counts)`: `(min, max)` of every
    /// value (None when no block held one or the reduction stopped), why it stopped (or
    /// None), and what the integer filter did (rows bounded, rows run exactly, whole exact
    /// passes, values refined).
    #[allow(clippy::type_complexity)]
    fn finish(
        &mut self,
        py: Python<'_>,
    ) -> PyResult<(Option<(f64, f64)>, Option<String>, (u64, u64, u64, u64))> {
        let r = self.stop(py);
        let extremes = match (&r.refused, r.extremes) {
            (None, Some(e)) => Some((e.min, e.max)),
            _ => None,
        };
        let c = r.counts;
        Ok((
            extremes,
            r.refused.clone(),
            (c.tasks, c.verified, c.fallbacks, c.refined),
        ))
    }
}

impl AccExtremesStream {
    /// Close the queue, join the thread and keep its reduction (once).
    fn stop(&mut self, py: Python<'_>) -> &Reduction {
        self.sender = None;
        if let Some(worker) = self.worker.take() {
            let joined = py.detach(|| worker.join());
            self.held.clear();
            self.result = Some(joined.unwrap_or_else(|_| {
                let mut failed = Reduction::default();
                failed.refuse("the reduction's thread failed".into());
                failed
            }));
        }
        // the worker is taken only here, so the result is set
        self.result.get_or_insert_with(Reduction::default)
    }
}

impl Drop for AccExtremesStream {
    fn drop(&mut self) {
        // the thread reads the held arrays: it must be done before they are released
        self.sender = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<AccExtremesStream>()
}
