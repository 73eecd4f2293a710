//! Bindings of `kernels::integer`: extract int64 arrays, release the GIL, map errors.
//!
//! The Python-facing API (argument checks, dtype casts, shape normalisation) lives in
//! `fhequant.kernels` (and its `reference` twins); these functions expect exactly the shapes documented there.

use std::mem::MaybeUninit;

use numpy::ndarray::Dimension;
use numpy::{
    IntoPyArray, PyArray, PyArray1, PyArray2, PyArray3, PyArray4, PyArrayDyn, PyArrayMethods,
    PyReadonlyArray, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3, PyReadonlyArray4,
    PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::kernels::integer::exact::Strategy;
use crate::kernels::integer::requant::{self, Narrow, Quantized, Requant};
use crate::kernels::integer::{bits, conv, direct, gemm, madd, maddubs, rescale, rounding, vnni};
use crate::py::errors::to_pyerr;

type Pair<'py, A> = (Bound<'py, A>, Bound<'py, A>);

/// A zeroed C-order int64 numpy array. numpy's allocator gives big arrays transparent huge
/// pages, so a kernel filling it takes far fewer page faults than a fresh Rust `Vec`.
fn zeros_out<'py, D: Dimension>(
    py: Python<'py>,
    dims: D,
) -> (Bound<'py, PyArray<i64, D>>, &'py mut [i64]) {
    // SAFETY: `new` allocates len() int64 values in C order, not yet visible to Python;
    // they are zeroed before any reference to them is formed.
    let array = unsafe { PyArray::<i64, D>::new(py, dims, false) };
    let len = array.len();
    unsafe { std::ptr::write_bytes(array.data(), 0, len) };
    // SAFETY: a fresh contiguous array that only this function's caller uses until it is
    // returned to Python (after the kernel has finished with the slice).
    let slice = unsafe { std::slice::from_raw_parts_mut(array.data(), len) };
    (array, slice)
}

/// A C-order numpy array left uninitialised, for a kernel that writes every element (before
/// the array reaches Python; on a kernel error it is dropped unread). Without a zeroing pass
/// the kernel's parallel writes take the page faults.
fn uninit_out<'py, T: numpy::Element, D: Dimension>(
    py: Python<'py>,
    dims: D,
) -> (Bound<'py, PyArray<T, D>>, &'py mut [MaybeUninit<T>]) {
    // SAFETY: `new` allocates len() values in C order, not yet visible to Python; they are
    // only reached as `MaybeUninit` until written.
    let array = unsafe { PyArray::<T, D>::new(py, dims, false) };
    let len = array.len();
    // SAFETY: a fresh contiguous array that only this function's caller uses until it is
    // returned to Python (after the kernel has written all of it).
    let slice = unsafe { std::slice::from_raw_parts_mut(array.data().cast(), len) };
    (array, slice)
}

/// A kernel input of any integer type the kernels read as stored (without widening).
enum IntView<'a, D: Dimension> {
    I8(numpy::ndarray::ArrayView<'a, i8, D>),
    I16(numpy::ndarray::ArrayView<'a, i16, D>),
    I32(numpy::ndarray::ArrayView<'a, i32, D>),
    I64(numpy::ndarray::ArrayView<'a, i64, D>),
}

/// A conv input (N, C, H, W).
type ConvX<'a> = IntView<'a, numpy::ndarray::Ix4>;

/// The readonly numpy array behind an `IntView` (held while the view is used).
enum IntArray<'py, D: Dimension> {
    I8(PyReadonlyArray<'py, i8, D>),
    I16(PyReadonlyArray<'py, i16, D>),
    I32(PyReadonlyArray<'py, i32, D>),
    I64(PyReadonlyArray<'py, i64, D>),
}

impl<'py, D: Dimension> IntArray<'py, D> {
    /// An int8, int16, int32 or int64 array of D's rank, else a TypeError naming `what`.
    fn extract(x: &Bound<'py, PyAny>, what: &str) -> PyResult<IntArray<'py, D>> {
        if let Ok(a) = x.extract::<PyReadonlyArray<'py, i64, D>>() {
            return Ok(IntArray::I64(a));
        }
        if let Ok(a) = x.extract::<PyReadonlyArray<'py, i8, D>>() {
            return Ok(IntArray::I8(a));
        }
        if let Ok(a) = x.extract::<PyReadonlyArray<'py, i16, D>>() {
            return Ok(IntArray::I16(a));
        }
        if let Ok(a) = x.extract::<PyReadonlyArray<'py, i32, D>>() {
            return Ok(IntArray::I32(a));
        }
        Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "{what} must be a {}-D numpy array of int8, int16, int32 or int64",
            D::NDIM.unwrap_or(0)
        )))
    }

    fn view(&self) -> IntView<'_, D> {
        match self {
            IntArray::I8(a) => IntView::I8(a.as_array()),
            IntArray::I16(a) => IntView::I16(a.as_array()),
            IntArray::I32(a) => IntView::I32(a.as_array()),
            IntArray::I64(a) => IntView::I64(a.as_array()),
        }
    }
}

/// `$body` with `$a` bound to the typed view of the `IntView` `$view` (one instance per
/// integer type).
macro_rules! with_int_view {
    ($view:expr, $a:ident => $body:expr) => {
        match $view {
            IntView::I8($a) => $body,
            IntView::I16($a) => $body,
            IntView::I32($a) => $body,
            IntView::I64($a) => $body,
        }
    };
}

impl<D: Dimension> IntView<'_, D> {
    fn dim(&self) -> D::Pattern {
        with_int_view!(self, a => a.dim())
    }
}

/// acc = a @ (w − z_w) for a (Ba, M, K), w (Bw, K, N) (a batch of 1 broadcasts).
#[pyfunction]
#[pyo3(signature = (a, w, z_w, context=None))]
fn int_matmul<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    w: PyReadonlyArray3<'py, i64>,
    z_w: i64,
    context: Option<&str>,
) -> PyResult<Bound<'py, PyArray3<i64>>> {
    let aa = IntArray::<numpy::ndarray::Ix3>::extract(a, "the matmul input a")?;
    let (a, w) = (aa.view(), w.as_array());
    let dims = gemm::matmul_shape(a.dim(), w.dim()).map_err(|e| to_pyerr(py, e, context))?;
    let (array, out) = uninit_out(py, numpy::ndarray::Dim(dims));
    py.detach(|| with_int_view!(&a, a => gemm::matmul_into(*a, w, z_w, out)))
        .map_err(|e| to_pyerr(py, e, context))?;
    Ok(array)
}

/// The strategy ("f32", "f64", "i64", "u8i8", "u8i8_avx2" or "i16") and the shifts (s, t) that `int_matmul`
/// uses for these operands (after its shape and overflow checks).
#[pyfunction]
#[pyo3(signature = (a, w, z_w, context=None))]
fn int_matmul_plan<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    w: PyReadonlyArray3<'py, i64>,
    z_w: i64,
    context: Option<&str>,
) -> PyResult<(&'static str, i64, i64)> {
    let aa = IntArray::<numpy::ndarray::Ix3>::extract(a, "the matmul input a")?;
    let (a, w) = (aa.view(), w.as_array());
    let plan = py
        .detach(|| with_int_view!(&a, a => gemm::matmul_plan(*a, w, z_w)))
        .map_err(|e| to_pyerr(py, e, context))?;
    let name = match plan.strategy {
        Strategy::F32 => "f32",
        Strategy::F64 => "f64",
        Strategy::I64 => "i64",
        Strategy::U8I8 => "u8i8",
        Strategy::U8I8Avx2 { .. } => "u8i8_avx2",
        Strategy::I16 => "i16",
    };
    Ok((name, plan.shift[0], plan.shift[1]))
}

/// Allow (the default) or forbid the AVX-512 VNNI strategy when `enabled` is given (a switch
/// for benchmarks: results are the same integers); returns whether it is in use (allowed
/// and supported by the CPU).
#[pyfunction]
#[pyo3(signature = (enabled=None))]
fn int_vnni(enabled: Option<bool>) -> bool {
    vnni::SWITCH.toggle(enabled)
}

/// Allow (the default) or forbid the AVX2 i16 strategy (`vpmaddwd`) when `enabled` is given
/// (a switch for benchmarks: results are the same integers); returns whether it is in use
/// (allowed and supported by the CPU).
#[pyfunction]
#[pyo3(signature = (enabled=None))]
fn int_i16(enabled: Option<bool>) -> bool {
    madd::SWITCH.toggle(enabled)
}

/// Allow (the default) or forbid the AVX2 u8 × i8 strategy (`vpmaddubsw`, for operands
/// whose pair sums fit i16) when `enabled` is given (a switch for benchmarks: results are
/// the same integers); returns whether it is in use (allowed and supported by the CPU).
#[pyfunction]
#[pyo3(signature = (enabled=None))]
fn int_u8i8_avx2(enabled: Option<bool>) -> bool {
    maddubs::SWITCH.toggle(enabled)
}

/// Allow (the default) or forbid the unshifted U8I8 plan when `enabled` is given: operands
/// that already are u8 × i8 keep no centring shift, so the int32 products go to the fused
/// epilogues as they are (`gemm::PLAIN_U8I8`; a switch for benchmarks and tests: results
/// are the same integers); returns whether it is on.
#[pyfunction]
#[pyo3(signature = (enabled=None))]
fn int_u8i8_plain(enabled: Option<bool>) -> bool {
    crate::kernels::integer::gemm::PLAIN_U8I8.toggle(enabled)
}

/// Allow or forbid (the default) the AVX2 i16 strategy in the integer Conv when `enabled` is
/// given (it measured slower than the f32 strategy on small-channel convs; results are the
/// same integers); returns whether the Conv uses it (allowed and supported by the CPU).
#[pyfunction]
#[pyo3(signature = (enabled=None))]
fn int_i16_conv(enabled: Option<bool>) -> bool {
    madd::CONV_SWITCH.toggle(enabled)
}

/// Allow or forbid the direct conv (`kernels::integer::direct`, on by default; the F32
/// strategy without an im2col matrix) if `enabled` is given; returns whether it is on.
/// Results are the same integers either way.
#[pyfunction]
#[pyo3(signature = (enabled=None))]
fn int_direct_conv(enabled: Option<bool>) -> bool {
    direct::SWITCH.toggle(enabled)
}

/// Allow (the default) or forbid the AVX2 epilogue of the fused rescale + quantize kernels
/// (`int_matmul_rescale_quant`, `int_conv2d_rescale_quant`, `int_acc_rescale_quant`) when
/// `enabled` is given (a switch for benchmarks and differential tests: results are the same
/// integers); returns whether it is in use (allowed and supported by the CPU).
#[pyfunction]
#[pyo3(signature = (enabled=None))]
fn int_vector_epilogue(enabled: Option<bool>) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::integer::epilogue_avx2;
        epilogue_avx2::SWITCH.toggle(enabled)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = enabled;
        false
    }
}

/// Allow (the default) or forbid the AVX-512 epilogue of the fused rescale + quantize kernels
/// (its division made of fused multiply-adds; it runs only with the AVX2 epilogue allowed)
/// when `enabled` is given (a switch for benchmarks and differential tests: results are the
/// same integers); returns whether it is allowed and supported by the CPU.
#[pyfunction]
#[pyo3(signature = (enabled=None))]
fn int_wide_epilogue(enabled: Option<bool>) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::integer::epilogue_avx512;
        epilogue_avx512::SWITCH.toggle(enabled)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = enabled;
        false
    }
}

/// Allow (the default) or forbid the float32 screen of the fused Gemm kernels'
/// epilogue (`int_matmul_rescale_quant`, `int_acc_rescale_quant` on int32 accumulators: each
/// integer found in float32 where that provably gives the float64 one, the float64 epilogue
/// elsewhere) when `enabled` is given (a switch for benchmarks and differential tests:
/// results are the same integers); returns whether it is allowed and supported by the CPU.
#[pyfunction]
#[pyo3(signature = (enabled=None))]
fn int_screen_epilogue(enabled: Option<bool>) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::integer::epilogue_screen;
        epilogue_screen::SWITCH.toggle(enabled)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = enabled;
        false
    }
}

/// Allow (the default) or forbid the byte-permute path of `int_lookup` on int8 values
/// (AVX-512 VBMI: 64 values a step, the AVX2 byte shuffles then) when `enabled` is given (a
/// switch for benchmarks and differential tests: the same values either way); returns
/// whether it is allowed and supported by the CPU.
#[pyfunction]
#[pyo3(signature = (enabled=None))]
fn int_lookup_permute(enabled: Option<bool>) -> bool {
    crate::kernels::quant::table::VBMI.toggle(enabled)
}

/// The `Rescale` operands of the fused kernels from their numpy arrays.
fn rescale_of<'a>(
    lsbs: i64,
    offset: f64,
    sub: &'a PyReadonlyArray1<'_, f64>,
    mul: &'a PyReadonlyArray1<'_, f64>,
    add: Option<&'a PyReadonlyArray1<'_, f64>>,
) -> PyResult<rescale::Rescale<'a>> {
    Ok(rescale::Rescale {
        lsbs,
        offset,
        sub: sub.as_slice()?,
        mul: mul.as_slice()?,
        add: add.map(|v| v.as_slice()).transpose()?,
    })
}

/// The conv geometry (no dilation, no extra padding) and output shape of a 2-D conv.
fn conv_geometry(
    x: (usize, usize, usize, usize),
    w: (usize, usize, usize, usize),
    group: usize,
    strides: [usize; 2],
    pads: [usize; 4],
    pad_value: i64,
) -> crate::error::Result<(conv::Geometry, [usize; 4])> {
    let geom = conv::Geometry::new([w.2, w.3], strides, pads, [0, 0], pad_value);
    let dims = conv::conv2d_shape(x, w, group, &geom)?;
    Ok((geom, dims))
}

/// ((f64(round(a @ (w − z_w))) + offset) − sub) · mul (+ add), per output column, as
/// (batch, M, N) float64 (docs/contract.md §3.1; `kernels::integer::rescale`).
#[pyfunction]
#[pyo3(signature = (a, w, z_w, lsbs, offset, sub, mul, add=None, context=None))]
#[allow(clippy::too_many_arguments)]
fn int_matmul_rescale<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    w: PyReadonlyArray3<'py, i64>,
    z_w: i64,
    lsbs: i64,
    offset: f64,
    sub: PyReadonlyArray1<'py, f64>,
    mul: PyReadonlyArray1<'py, f64>,
    add: Option<PyReadonlyArray1<'py, f64>>,
    context: Option<&str>,
) -> PyResult<Bound<'py, PyArray3<f64>>> {
    let aa = IntArray::<numpy::ndarray::Ix3>::extract(a, "the matmul input a")?;
    let (a, w) = (aa.view(), w.as_array());
    let dims = gemm::matmul_shape(a.dim(), w.dim()).map_err(|e| to_pyerr(py, e, context))?;
    let rescale = rescale_of(lsbs, offset, &sub, &mul, add.as_ref())?;
    let (array, out) = uninit_out(py, numpy::ndarray::Dim(dims));
    py.detach(|| with_int_view!(&a, a => rescale::matmul_rescale_into(*a, w, z_w, &rescale, out)))
        .map_err(|e| to_pyerr(py, e, context))?;
    Ok(array)
}

/// The output quantizer of the `*_rescale_quant` kernels.
fn requant_of(scale: f64, zero_point: f64, lo: f64, hi: f64) -> Requant {
    Requant {
        scale,
        zero_point,
        lo,
        hi,
    }
}

/// The result of a `*_rescale_quant` kernel as (integers, min, max, nan).
type QuantOut<'py> = (Bound<'py, PyAny>, i64, i64, bool);

/// Run `kernel` into a fresh int8 or int16 array of `dims` (`dtype` names it).
fn narrow_out<'py, D: Dimension>(
    py: Python<'py>,
    dims: D,
    dtype: &str,
    context: Option<&str>,
    kernel: impl Fn(&mut dyn NarrowSlots) -> crate::error::Result<Quantized> + Send + Sync,
) -> PyResult<QuantOut<'py>> {
    let done = |array: Bound<'py, PyAny>, q: crate::error::Result<Quantized>| {
        let q = q.map_err(|e| to_pyerr(py, e, context))?;
        Ok((array, q.min, q.max, q.nan))
    };
    match dtype {
        "int8" => {
            let (array, out) = uninit_out::<i8, D>(py, dims);
            let q = py.detach(|| kernel(&mut Slots(out)));
            done(array.into_any(), q)
        }
        "int16" => {
            let (array, out) = uninit_out::<i16, D>(py, dims);
            let q = py.detach(|| kernel(&mut Slots(out)));
            done(array.into_any(), q)
        }
        other => Err(to_pyerr(
            py,
            crate::error::Error::DType(format!(
                "requantize: the output dtype must be 'int8' or 'int16', got {other:?}"
            )),
            context,
        )),
    }
}

/// An output buffer of one narrow integer type, for the kernels generic over it.
trait NarrowSlots: Send {
    fn matmul(
        &mut self,
        a: &IntView<'_, numpy::ndarray::Ix3>,
        w: numpy::ndarray::ArrayView3<'_, i64>,
        z_w: i64,
        rescale: &rescale::Rescale<'_>,
        requant: &Requant,
    ) -> crate::error::Result<Quantized>;
    fn acc(
        &mut self,
        acc: numpy::ndarray::ArrayView2<'_, i32>,
        rescale: &rescale::Rescale<'_>,
        requant: &Requant,
    ) -> crate::error::Result<Quantized>;
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        x: &ConvX<'_>,
        w: numpy::ndarray::ArrayView4<'_, i64>,
        z_w: i64,
        group: usize,
        geom: &conv::Geometry,
        rescale: &rescale::Rescale<'_>,
        requant: &Requant,
    ) -> crate::error::Result<Quantized>;
}

struct Slots<'a, O>(&'a mut [MaybeUninit<O>]);

impl<O: Narrow> NarrowSlots for Slots<'_, O> {
    fn matmul(
        &mut self,
        a: &IntView<'_, numpy::ndarray::Ix3>,
        w: numpy::ndarray::ArrayView3<'_, i64>,
        z_w: i64,
        rescale: &rescale::Rescale<'_>,
        requant: &Requant,
    ) -> crate::error::Result<Quantized> {
        let out = &mut *self.0;
        with_int_view!(a, a => requant::matmul_rescale_quant_into(*a, w, z_w, rescale, requant, out))
    }
    fn acc(
        &mut self,
        acc: numpy::ndarray::ArrayView2<'_, i32>,
        rescale: &rescale::Rescale<'_>,
        requant: &Requant,
    ) -> crate::error::Result<Quantized> {
        requant::acc_rescale_quant_into(acc, rescale, requant, self.0)
    }
    fn conv(
        &mut self,
        x: &ConvX<'_>,
        w: numpy::ndarray::ArrayView4<'_, i64>,
        z_w: i64,
        group: usize,
        geom: &conv::Geometry,
        rescale: &rescale::Rescale<'_>,
        requant: &Requant,
    ) -> crate::error::Result<Quantized> {
        let out = &mut *self.0;
        match x {
            ConvX::I8(x) => {
                requant::conv_rescale_quant_into(*x, w, z_w, group, geom, rescale, requant, out)
            }
            ConvX::I16(x) => {
                requant::conv_rescale_quant_into(*x, w, z_w, group, geom, rescale, requant, out)
            }
            ConvX::I32(x) => {
                requant::conv_rescale_quant_into(*x, w, z_w, group, geom, rescale, requant, out)
            }
            ConvX::I64(x) => {
                requant::conv_rescale_quant_into(*x, w, z_w, group, geom, rescale, requant, out)
            }
        }
    }
}

/// `int_matmul_rescale` quantized by the output quantizer clip(rint(v / scale + zero_point),
/// lo, hi) in float64, as `dtype` ("int8" or "int16"); returns (integers, min, max, nan)
/// (`kernels::integer::requant`).
#[pyfunction]
#[pyo3(signature = (a, w, z_w, lsbs, offset, sub, mul, add, scale, zero_point, lo, hi, dtype, context=None))]
#[allow(clippy::too_many_arguments)]
fn int_matmul_rescale_quant<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    w: PyReadonlyArray3<'py, i64>,
    z_w: i64,
    lsbs: i64,
    offset: f64,
    sub: PyReadonlyArray1<'py, f64>,
    mul: PyReadonlyArray1<'py, f64>,
    add: Option<PyReadonlyArray1<'py, f64>>,
    scale: f64,
    zero_point: f64,
    lo: f64,
    hi: f64,
    dtype: &str,
    context: Option<&str>,
) -> PyResult<QuantOut<'py>> {
    let aa = IntArray::<numpy::ndarray::Ix3>::extract(a, "the matmul input a")?;
    let (a, w) = (aa.view(), w.as_array());
    let dims = gemm::matmul_shape(a.dim(), w.dim()).map_err(|e| to_pyerr(py, e, context))?;
    let rescale = rescale_of(lsbs, offset, &sub, &mul, add.as_ref())?;
    let requant = requant_of(scale, zero_point, lo, hi);
    narrow_out(py, numpy::ndarray::Dim(dims), dtype, context, |out| {
        out.matmul(&a, w, z_w, &rescale, &requant)
    })
}

/// The epilogue of `int_matmul_rescale_quant` on accumulators computed earlier: `acc`
/// (M, N) int32 holds `a @ (w − z_w)` (e.g. from `int_matmul_acc_extremes`); returns
/// (integers (M, N) of `dtype`, min, max, nan), the values `int_matmul_rescale_quant(a[None],
/// w[None], z_w, ...)` gives (there of shape (1, M, N)).
#[pyfunction]
#[pyo3(signature = (acc, lsbs, offset, sub, mul, add, scale, zero_point, lo, hi, dtype, context=None))]
#[allow(clippy::too_many_arguments)]
fn int_acc_rescale_quant<'py>(
    py: Python<'py>,
    acc: PyReadonlyArray2<'py, i32>,
    lsbs: i64,
    offset: f64,
    sub: PyReadonlyArray1<'py, f64>,
    mul: PyReadonlyArray1<'py, f64>,
    add: Option<PyReadonlyArray1<'py, f64>>,
    scale: f64,
    zero_point: f64,
    lo: f64,
    hi: f64,
    dtype: &str,
    context: Option<&str>,
) -> PyResult<QuantOut<'py>> {
    let acc = acc.as_array();
    let rescale = rescale_of(lsbs, offset, &sub, &mul, add.as_ref())?;
    let requant = requant_of(scale, zero_point, lo, hi);
    narrow_out(py, numpy::ndarray::Dim(acc.dim()), dtype, context, |out| {
        out.acc(acc, &rescale, &requant)
    })
}

/// `int_conv2d_rescale` quantized as `int_matmul_rescale_quant` does; returns (integers,
/// min, max, nan). The input may be int8, int16, int32 or int64 (read as it is, never
/// widened to a copy).
#[pyfunction]
#[pyo3(signature = (x, w, z_w, group, strides, pads, pad_value, lsbs, offset, sub, mul, add, scale, zero_point, lo, hi, dtype, context=None))]
#[allow(clippy::too_many_arguments)]
fn int_conv2d_rescale_quant<'py>(
    py: Python<'py>,
    x: Bound<'py, PyAny>,
    w: PyReadonlyArray4<'py, i64>,
    z_w: i64,
    group: usize,
    strides: [usize; 2],
    pads: [usize; 4],
    pad_value: i64,
    lsbs: i64,
    offset: f64,
    sub: PyReadonlyArray1<'py, f64>,
    mul: PyReadonlyArray1<'py, f64>,
    add: Option<PyReadonlyArray1<'py, f64>>,
    scale: f64,
    zero_point: f64,
    lo: f64,
    hi: f64,
    dtype: &str,
    context: Option<&str>,
) -> PyResult<QuantOut<'py>> {
    let xa = IntArray::<numpy::ndarray::Ix4>::extract(&x, "the conv input")?;
    let (x, w) = (xa.view(), w.as_array());
    let (geom, dims) = conv_geometry(x.dim(), w.dim(), group, strides, pads, pad_value)
        .map_err(|e| to_pyerr(py, e, context))?;
    let rescale = rescale_of(lsbs, offset, &sub, &mul, add.as_ref())?;
    let requant = requant_of(scale, zero_point, lo, hi);
    narrow_out(py, numpy::ndarray::Dim(dims), dtype, context, |out| {
        out.conv(&x, w, z_w, group, &geom, &rescale, &requant)
    })
}

/// z_x·Σ_k w[b, k, :] for w (B, K, N), as (B, N).
#[pyfunction]
#[pyo3(signature = (w, z_x, context=None))]
fn int_matmul_weight_sums<'py>(
    py: Python<'py>,
    w: PyReadonlyArray3<'py, i64>,
    z_x: i64,
    context: Option<&str>,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let w = w.as_array();
    let out = py.detach(|| gemm::weight_sums(w, z_x));
    Ok(out.map_err(|e| to_pyerr(py, e, context))?.into_pyarray(py))
}

/// conv(x_pad, w − z_w) for x (N, C, H, W), w (O, C/group, kh, kw).
#[pyfunction]
#[pyo3(signature = (x, w, z_w, group, strides, pads, pad_value, context=None))]
#[allow(clippy::too_many_arguments)]
fn int_conv2d<'py>(
    py: Python<'py>,
    x: PyReadonlyArray4<'py, i64>,
    w: PyReadonlyArray4<'py, i64>,
    z_w: i64,
    group: usize,
    strides: [usize; 2],
    pads: [usize; 4],
    pad_value: i64,
    context: Option<&str>,
) -> PyResult<Bound<'py, PyArray4<i64>>> {
    let (x, w) = (x.as_array(), w.as_array());
    let (geom, dims) = conv_geometry(x.dim(), w.dim(), group, strides, pads, pad_value)
        .map_err(|e| to_pyerr(py, e, context))?;
    let (array, out) = zeros_out(py, numpy::ndarray::Dim(dims));
    py.detach(|| conv::conv2d_into(x, w, z_w, group, &geom, out))
        .map_err(|e| to_pyerr(py, e, context))?;
    Ok(array)
}

/// ((f64(round(conv(x_pad, w − z_w))) + offset) − sub) · mul (+ add), per output channel,
/// as (N, O, OH, OW) float64 (docs/contract.md §3.2; `kernels::integer::rescale`).
#[pyfunction]
#[pyo3(signature = (x, w, z_w, group, strides, pads, pad_value, lsbs, offset, sub, mul, add=None, context=None))]
#[allow(clippy::too_many_arguments)]
fn int_conv2d_rescale<'py>(
    py: Python<'py>,
    x: PyReadonlyArray4<'py, i64>,
    w: PyReadonlyArray4<'py, i64>,
    z_w: i64,
    group: usize,
    strides: [usize; 2],
    pads: [usize; 4],
    pad_value: i64,
    lsbs: i64,
    offset: f64,
    sub: PyReadonlyArray1<'py, f64>,
    mul: PyReadonlyArray1<'py, f64>,
    add: Option<PyReadonlyArray1<'py, f64>>,
    context: Option<&str>,
) -> PyResult<Bound<'py, PyArray4<f64>>> {
    let (x, w) = (x.as_array(), w.as_array());
    let (geom, dims) = conv_geometry(x.dim(), w.dim(), group, strides, pads, pad_value)
        .map_err(|e| to_pyerr(py, e, context))?;
    let rescale = rescale_of(lsbs, offset, &sub, &mul, add.as_ref())?;
    let (array, out) = uninit_out(py, numpy::ndarray::Dim(dims));
    py.detach(|| rescale::conv_rescale_into(x, w, z_w, group, &geom, &rescale, out))
        .map_err(|e| to_pyerr(py, e, context))?;
    Ok(array)
}

/// z_x·Σ_{c,kh,kw} w per output channel, as (O, 1).
#[pyfunction]
#[pyo3(signature = (w, z_x, context=None))]
fn int_conv_weight_sums<'py>(
    py: Python<'py>,
    w: PyReadonlyArray4<'py, i64>,
    z_x: i64,
    context: Option<&str>,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let w = w.as_array();
    let out = py.detach(|| conv::weight_sums(w, z_x));
    Ok(out.map_err(|e| to_pyerr(py, e, context))?.into_pyarray(py))
}

/// Per-channel window sums of x (N, C, H, W) padded with pad_value, then 0 by `extra`.
#[pyfunction]
#[pyo3(signature = (x, kernel, strides, pads, extra, pad_value, context=None))]
#[allow(clippy::too_many_arguments)]
fn int_window_sum<'py>(
    py: Python<'py>,
    x: PyReadonlyArray4<'py, i64>,
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
    extra: [usize; 2],
    pad_value: i64,
    context: Option<&str>,
) -> PyResult<Bound<'py, PyArray4<i64>>> {
    let x = x.as_array();
    let geom = conv::Geometry::new(kernel, strides, pads, extra, pad_value);
    let dims = conv::window_shape(x.dim(), &geom).map_err(|e| to_pyerr(py, e, context))?;
    let (array, out) = zeros_out(py, numpy::ndarray::Dim(dims));
    py.detach(|| conv::window_sum_into(x, &geom, out))
        .map_err(|e| to_pyerr(py, e, context))?;
    Ok(array)
}

/// Per-channel window maxima of x (N, C, H, W) padded with pad_value.
#[pyfunction]
#[pyo3(signature = (x, kernel, strides, pads, pad_value, context=None))]
fn int_window_max<'py>(
    py: Python<'py>,
    x: PyReadonlyArray4<'py, i64>,
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
    pad_value: i64,
    context: Option<&str>,
) -> PyResult<Bound<'py, PyArray4<i64>>> {
    let x = x.as_array();
    let geom = conv::Geometry::new(kernel, strides, pads, [0, 0], pad_value);
    let dims = conv::window_shape(x.dim(), &geom).map_err(|e| to_pyerr(py, e, context))?;
    let (array, out) = zeros_out(py, numpy::ndarray::Dim(dims));
    py.detach(|| conv::window_max_into(x, &geom, out))
        .map_err(|e| to_pyerr(py, e, context))?;
    Ok(array)
}

/// floor((x + 2^(k−1)) / 2^k)·2^k elementwise for k > 0; a copy for k <= 0.
#[pyfunction]
#[pyo3(signature = (x, lsbs, context=None))]
fn int_round_bit_pattern<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, i64>,
    lsbs: i64,
    context: Option<&str>,
) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
    let x = x.as_array();
    let out = py.detach(|| rounding::round_bit_pattern(x, lsbs));
    Ok(out.map_err(|e| to_pyerr(py, e, context))?.into_pyarray(py))
}

/// (bit width, is_signed) of the smallest concrete-python integer type holding [lo, hi].
#[pyfunction]
fn int_bit_width(lo: i128, hi: i128) -> (u32, bool) {
    bits::bit_width(lo, hi)
}

/// Exact per-column [min, max] of the corrected Gemm accumulator over the input box.
#[pyfunction]
#[pyo3(signature = (w, z_w, x_lo, x_hi, lsbs, context=None))]
fn int_gemm_bounds<'py>(
    py: Python<'py>,
    w: PyReadonlyArray3<'py, i64>,
    z_w: i64,
    x_lo: i64,
    x_hi: i64,
    lsbs: i64,
    context: Option<&str>,
) -> PyResult<Pair<'py, PyArray2<i64>>> {
    let w = w.as_array();
    let out = py.detach(|| bits::gemm_bounds(w, z_w, x_lo, x_hi, lsbs));
    let (lo, hi) = out.map_err(|e| to_pyerr(py, e, context))?;
    Ok((lo.into_pyarray(py), hi.into_pyarray(py)))
}

/// Exact per-channel [min, max] of the corrected Conv accumulator over the input box.
#[pyfunction]
#[pyo3(signature = (w, z_w, x_lo, x_hi, in_hw, strides, pads, extra, pad_value, lsbs, context=None))]
#[allow(clippy::too_many_arguments)]
fn int_conv_bounds<'py>(
    py: Python<'py>,
    w: PyReadonlyArray4<'py, i64>,
    z_w: i64,
    x_lo: i64,
    x_hi: i64,
    in_hw: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
    extra: [usize; 2],
    pad_value: i64,
    lsbs: i64,
    context: Option<&str>,
) -> PyResult<Pair<'py, PyArray1<i64>>> {
    let w = w.as_array();
    let (_, _, kh, kw) = w.dim();
    let geom = conv::Geometry::new([kh, kw], strides, pads, extra, pad_value);
    let out = py.detach(|| bits::conv_bounds(w, z_w, x_lo, x_hi, in_hw, &geom, lsbs));
    let (lo, hi) = out.map_err(|e| to_pyerr(py, e, context))?;
    Ok((lo.into_pyarray(py), hi.into_pyarray(py)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(int_matmul, m)?)?;
    m.add_function(wrap_pyfunction!(int_matmul_rescale, m)?)?;
    m.add_function(wrap_pyfunction!(int_matmul_plan, m)?)?;
    m.add_function(wrap_pyfunction!(int_vnni, m)?)?;
    m.add_function(wrap_pyfunction!(int_i16, m)?)?;
    m.add_function(wrap_pyfunction!(int_u8i8_avx2, m)?)?;
    m.add_function(wrap_pyfunction!(int_u8i8_plain, m)?)?;
    m.add_function(wrap_pyfunction!(int_i16_conv, m)?)?;
    m.add_function(wrap_pyfunction!(int_direct_conv, m)?)?;
    m.add_function(wrap_pyfunction!(int_vector_epilogue, m)?)?;
    m.add_function(wrap_pyfunction!(int_wide_epilogue, m)?)?;
    m.add_function(wrap_pyfunction!(int_screen_epilogue, m)?)?;
    m.add_function(wrap_pyfunction!(int_lookup_permute, m)?)?;
    m.add_function(wrap_pyfunction!(int_conv2d_rescale, m)?)?;
    m.add_function(wrap_pyfunction!(int_matmul_rescale_quant, m)?)?;
    m.add_function(wrap_pyfunction!(int_conv2d_rescale_quant, m)?)?;
    m.add_function(wrap_pyfunction!(int_acc_rescale_quant, m)?)?;
    m.add_function(wrap_pyfunction!(int_matmul_weight_sums, m)?)?;
    m.add_function(wrap_pyfunction!(int_conv2d, m)?)?;
    m.add_function(wrap_pyfunction!(int_conv_weight_sums, m)?)?;
    m.add_function(wrap_pyfunction!(int_window_sum, m)?)?;
    m.add_function(wrap_pyfunction!(int_window_max, m)?)?;
    m.add_function(wrap_pyfunction!(int_round_bit_pattern, m)?)?;
    m.add_function(wrap_pyfunction!(int_bit_width, m)?)?;
    m.add_function(wrap_pyfunction!(int_gemm_bounds, m)?)?;
    m.add_function(wrap_pyfunction!(int_conv_bounds, m)?)?;
    Ok(())
}
