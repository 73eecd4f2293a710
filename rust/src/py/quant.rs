//! Bindings of `kernels::quant`: extract arrays, release the GIL, map errors.
//!
//! The Python dispatch in `fhequant.quantization._kernels` decides the numpy dtypes of every
//! step (value-based promotion) and calls these with scalars already converted to them.

use std::mem::MaybeUninit;

use ndarray::ArrayViewMutD;
use numpy::{Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn};
use pyo3::prelude::*;

use crate::error::Error;
use crate::kernels::quant::dequantize::{dequantize_into, QInt};
use crate::kernels::quant::float::{Cast, Real};
use crate::kernels::quant::mse::clip_errors as mse_clip_errors_kernel;
use crate::kernels::quant::quantize::{quantize_into, Prec, QuantSpec};
use crate::kernels::quant::reduce::{
    copy_min_max as copy_min_max_kernel, min_max as min_max_kernel,
};
use crate::kernels::quant::table::{lookup, presence, Entry, Index};
use crate::kernels::quant::unique::rounded_unique as unique_kernel;
use crate::py::errors::{borrow_err, to_pyerr};

fn dtype_name(a: &Bound<'_, PyAny>) -> String {
    a.getattr("dtype")
        .and_then(|d| d.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| a.get_type().to_string())
}

fn wrong_dtype(py: Python<'_>, op: &str, want: &str, a: &Bound<'_, PyAny>) -> PyErr {
    let msg = format!(
        "{op}: expected a numpy array of {want}, got {}; convert it first",
        dtype_name(a)
    );
    to_pyerr(py, Error::DType(msg), None)
}

/// Borrow an array for reading; fails (instead of panicking) if Rust holds it mutably.
fn borrow<'py, T: Element>(a: &Bound<'py, PyArrayDyn<T>>) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    a.try_readonly().map_err(borrow_err)
}

/// A new, uninitialized C-order numpy array for a kernel to fill. numpy allocates it (with
/// transparent huge pages for big arrays), which costs far fewer page faults than a Rust
/// allocation or a calloc of the same size.
fn output<'py, O: Element>(py: Python<'py>, shape: &[usize]) -> Bound<'py, PyArrayDyn<O>> {
    // SAFETY: the array is only reached through `uninit_view` until a kernel has written
    // every element; on a kernel error the caller drops it without reading it.
    unsafe { PyArrayDyn::<O>::new(py, shape, false) }
}

/// The elements of a fresh array from [`output`] as `MaybeUninit`, so writing them never
/// forms a reference to uninitialized data.
fn uninit_view<'a, O: Element>(
    a: &'a Bound<'_, PyArrayDyn<O>>,
) -> ArrayViewMutD<'a, MaybeUninit<O>> {
    // SAFETY: `a` is a fresh C-contiguous array that no one else references yet, so a unique
    // mutable view of its data is sound for the lifetime of the borrow of `a`.
    unsafe {
        a.as_raw_array_mut()
            .cast::<MaybeUninit<O>>()
            .deref_into_view_mut()
    }
}

fn quantize_typed<'py, T: Real + Element, O: Cast + Element>(
    py: Python<'py>,
    values: &Bound<'py, PyArrayDyn<T>>,
    spec: &QuantSpec,
) -> PyResult<Bound<'py, PyAny>> {
    let guard = borrow(values)?;
    let view = guard.as_array();
    let out = output::<O>(py, view.shape());
    let dst = uninit_view(&out);
    py.detach(|| quantize_into::<T, O>(view, dst, spec))
        .map_err(|e| to_pyerr(py, e, None))?;
    Ok(out.into_any())
}

fn quantize_out<'py, T: Real + Element>(
    py: Python<'py>,
    values: &Bound<'py, PyArrayDyn<T>>,
    spec: &QuantSpec,
    out_dtype: &str,
) -> PyResult<Bound<'py, PyAny>> {
    match out_dtype {
        "int64" => quantize_typed::<T, i64>(py, values, spec),
        "int32" => quantize_typed::<T, i32>(py, values, spec),
        "int16" => quantize_typed::<T, i16>(py, values, spec),
        "int8" => quantize_typed::<T, i8>(py, values, spec),
        "float32" => quantize_typed::<T, f32>(py, values, spec),
        "float64" => quantize_typed::<T, f64>(py, values, spec),
        other => Err(to_pyerr(
            py,
            Error::DType(format!(
                "quantize: output dtype must be int64, int32, int16, int8, float32 or float64, \
                 got {other}"
            )),
            None,
        )),
    }
}

/// rint(values / scale + zero_point), clipped to [lo, hi] when both are given, cast to
/// `out_dtype`; the division, add and clip run in float64 when the matching flag is set.
#[pyfunction]
#[pyo3(signature = (values, scale, zero_point, lo, hi, div_f64, add_f64, clip_f64, out_dtype))]
#[allow(clippy::too_many_arguments)]
fn quantize<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    scale: f64,
    zero_point: f64,
    lo: Option<f64>,
    hi: Option<f64>,
    div_f64: bool,
    add_f64: bool,
    clip_f64: bool,
    out_dtype: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let prec = |wide: bool| if wide { Prec::F64 } else { Prec::F32 };
    let spec = QuantSpec {
        scale,
        zero_point,
        clip: lo.zip(hi),
        div: prec(div_f64),
        add: prec(add_f64),
        clip_prec: prec(clip_f64),
    };
    if let Ok(a) = values.cast::<PyArrayDyn<f32>>() {
        quantize_out(py, a, &spec, out_dtype)
    } else if let Ok(a) = values.cast::<PyArrayDyn<f64>>() {
        quantize_out(py, a, &spec, out_dtype)
    } else {
        Err(wrong_dtype(py, "quantize", "float32 or float64", values))
    }
}

fn dequantize_typed<'py, I: QInt + Element>(
    py: Python<'py>,
    q: &Bound<'py, PyArrayDyn<I>>,
    scale: f64,
    zero_point: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let guard = borrow(q)?;
    let view = guard.as_array();
    let out = output::<f64>(py, view.shape());
    let dst = uninit_view(&out);
    py.detach(|| dequantize_into(view, dst, scale, zero_point))
        .map_err(|e| to_pyerr(py, e, None))?;
    Ok(out.into_any())
}

/// scale * (float64(q) - zero_point) in float64 for an int8/16/32/64 array.
#[pyfunction]
fn dequantize<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    scale: f64,
    zero_point: f64,
) -> PyResult<Bound<'py, PyAny>> {
    if let Ok(a) = q.cast::<PyArrayDyn<i64>>() {
        dequantize_typed(py, a, scale, zero_point)
    } else if let Ok(a) = q.cast::<PyArrayDyn<i32>>() {
        dequantize_typed(py, a, scale, zero_point)
    } else if let Ok(a) = q.cast::<PyArrayDyn<i16>>() {
        dequantize_typed(py, a, scale, zero_point)
    } else if let Ok(a) = q.cast::<PyArrayDyn<i8>>() {
        dequantize_typed(py, a, scale, zero_point)
    } else {
        Err(wrong_dtype(
            py,
            "dequantize",
            "int8, int16, int32 or int64",
            q,
        ))
    }
}

fn min_max_typed<T: Real + Element>(
    py: Python<'_>,
    values: &Bound<'_, PyArrayDyn<T>>,
    name: &str,
) -> PyResult<(f64, f64, bool, bool)> {
    let guard = borrow(values)?;
    let view = guard.as_array();
    let mm = py
        .detach(|| min_max_kernel(view))
        .map_err(|e| to_pyerr(py, e, Some(name)))?;
    Ok((
        mm.min.to_f64(),
        mm.max.to_f64(),
        mm.min_zero_tie,
        mm.max_zero_tie,
    ))
}

/// (min, max, min_zero_tie, max_zero_tie) of a float32/float64 array, as Python floats.
///
/// A `*_zero_tie` flag means the extremum is zero and both signs of zero occur: the caller
/// must take that extremum from numpy. Raises NonFiniteError / EmptyTensorError, prefixed
/// with `name`.
#[pyfunction]
#[pyo3(signature = (values, name="values"))]
fn min_max(
    py: Python<'_>,
    values: &Bound<'_, PyAny>,
    name: &str,
) -> PyResult<(f64, f64, bool, bool)> {
    if let Ok(a) = values.cast::<PyArrayDyn<f32>>() {
        min_max_typed(py, a, name)
    } else if let Ok(a) = values.cast::<PyArrayDyn<f64>>() {
        min_max_typed(py, a, name)
    } else {
        Err(wrong_dtype(py, "min_max", "float32 or float64", values))
    }
}

type CopyMinMax<'py> = (Bound<'py, PyAny>, f64, f64, bool, bool);

fn copy_min_max_typed<'py, T: Real + Element>(
    py: Python<'py>,
    values: &Bound<'py, PyArrayDyn<T>>,
    name: &str,
) -> PyResult<Option<CopyMinMax<'py>>> {
    let guard = borrow(values)?;
    let view = guard.as_array();
    let fortran = if view.is_standard_layout() {
        false
    } else if view.t().is_standard_layout() {
        true
    } else {
        return Ok(None); // not contiguous: the caller copies with numpy
    };
    // SAFETY: the array is only reached through the view below until the kernel has written
    // every element; on a kernel error it is dropped without being read.
    let copy = unsafe { PyArrayDyn::<T>::new(py, view.shape(), fortran) };
    let mut dst = uninit_view(&copy);
    let Some(slots) = dst.as_slice_memory_order_mut() else {
        return Ok(None);
    };
    let mm = py
        .detach(|| copy_min_max_kernel(view, slots))
        .map_err(|e| to_pyerr(py, e, Some(name)))?;
    Ok(Some((
        copy.into_any(),
        mm.min.to_f64(),
        mm.max.to_f64(),
        mm.min_zero_tie,
        mm.max_zero_tie,
    )))
}

/// `(copy, min, max, min_zero_tie, max_zero_tie)`: a copy of a contiguous float32/float64
/// array in its own memory order (C or Fortran) with the result of `min_max`, in one read
/// of the data; None when the array is not contiguous. Raises like `min_max`.
#[pyfunction]
#[pyo3(signature = (values, name="values"))]
fn copy_min_max<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<Option<CopyMinMax<'py>>> {
    if let Ok(a) = values.cast::<PyArrayDyn<f32>>() {
        copy_min_max_typed(py, a, name)
    } else if let Ok(a) = values.cast::<PyArrayDyn<f64>>() {
        copy_min_max_typed(py, a, name)
    } else {
        Err(wrong_dtype(
            py,
            "copy_min_max",
            "float32 or float64",
            values,
        ))
    }
}

fn unique_typed<'py, T: Real + Element>(
    py: Python<'py>,
    values: &Bound<'py, PyArrayDyn<T>>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let guard = borrow(values)?;
    let view = guard.as_array();
    let out = py.detach(|| unique_kernel(view));
    Ok(out.map(|v| numpy::PyArray1::from_vec(py, v).into_any()))
}

/// Sorted unique values of rint(values * 100) / 100 in the data dtype, or None when the
/// data holds a NaN (numpy's own NaN handling then applies).
#[pyfunction]
fn rounded_unique<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if let Ok(a) = values.cast::<PyArrayDyn<f32>>() {
        unique_typed(py, a)
    } else if let Ok(a) = values.cast::<PyArrayDyn<f64>>() {
        unique_typed(py, a)
    } else {
        Err(wrong_dtype(
            py,
            "rounded_unique",
            "float32 or float64",
            values,
        ))
    }
}

fn contiguous<'a, I: Element>(
    py: Python<'_>,
    op: &str,
    guard: &'a PyReadonlyArrayDyn<'_, I>,
) -> PyResult<&'a [I]> {
    let c_order = guard.as_array().is_standard_layout();
    guard.as_slice().ok().filter(|_| c_order).ok_or_else(|| {
        let msg = format!("{op}: the integers must be a C-contiguous array");
        to_pyerr(py, Error::InvalidArgument(msg), None)
    })
}

fn presence_typed<'py, I: Index + Element>(
    py: Python<'py>,
    q: &Bound<'py, PyArrayDyn<I>>,
    lo: i64,
    size: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let guard = borrow(q)?;
    let src = contiguous(py, "int_presence", &guard)?;
    let mut seen = vec![false; size];
    py.detach(|| presence(src, lo, &mut seen))
        .map_err(|e| to_pyerr(py, e, None))?;
    Ok(numpy::PyArray1::from_vec(py, seen).into_any())
}

/// A bool array of `size` entries: entry i says whether the integer `lo + i` occurs in `q`
/// (C-contiguous int8/16/32/64). Raises QuantizationError for a value outside that range.
#[pyfunction]
fn int_presence<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    lo: i64,
    size: usize,
) -> PyResult<Bound<'py, PyAny>> {
    if let Ok(a) = q.cast::<PyArrayDyn<i8>>() {
        presence_typed(py, a, lo, size)
    } else if let Ok(a) = q.cast::<PyArrayDyn<i16>>() {
        presence_typed(py, a, lo, size)
    } else if let Ok(a) = q.cast::<PyArrayDyn<i32>>() {
        presence_typed(py, a, lo, size)
    } else if let Ok(a) = q.cast::<PyArrayDyn<i64>>() {
        presence_typed(py, a, lo, size)
    } else {
        Err(wrong_dtype(
            py,
            "int_presence",
            "int8, int16, int32 or int64",
            q,
        ))
    }
}

fn lookup_typed<'py, I: Index + Element, O: Element + Entry>(
    py: Python<'py>,
    q: &Bound<'py, PyArrayDyn<I>>,
    lo: i64,
    table: &Bound<'py, PyArrayDyn<O>>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let guard = borrow(q)?;
    let src = contiguous(py, "int_lookup", &guard)?;
    let shape = guard.as_array().shape().to_vec();
    let tguard = borrow(table)?;
    let entries = tguard.as_array().iter().copied().collect::<Vec<O>>();
    let layout_err = |what: &str| {
        let msg = format!("int_lookup: {what}");
        to_pyerr(py, Error::InvalidArgument(msg), None)
    };
    if let Some(given) = out {
        let arr = given
            .cast::<PyArrayDyn<O>>()
            .map_err(|_| wrong_dtype(py, "int_lookup out", "the table's dtype", given))?;
        let mut rw = arr.try_readwrite().map_err(borrow_err)?;
        let mut view = rw.as_array_mut();
        if view.shape() != shape.as_slice() || !view.is_standard_layout() {
            return Err(layout_err("out must be a C-contiguous array of q's shape"));
        }
        let dst = view
            .as_slice_mut()
            .ok_or_else(|| layout_err("out must be C-contiguous"))?;
        // SAFETY: MaybeUninit<O> has the layout of O; the kernel only writes initialized
        // values into these (already initialized) elements.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<MaybeUninit<O>>(), dst.len())
        };
        py.detach(|| lookup(src, lo, &entries, dst))
            .map_err(|e| to_pyerr(py, e, None))?;
        return Ok(given.clone());
    }
    let fresh = output::<O>(py, &shape);
    let mut view = uninit_view(&fresh);
    let dst = view
        .as_slice_mut()
        .ok_or_else(|| layout_err("output layout"))?;
    py.detach(|| lookup(src, lo, &entries, dst))
        .map_err(|e| to_pyerr(py, e, None))?;
    Ok(fresh.into_any())
}

fn lookup_into<'py, O: Element + Entry>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    lo: i64,
    table: &Bound<'py, PyArrayDyn<O>>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Ok(a) = q.cast::<PyArrayDyn<i8>>() {
        lookup_typed(py, a, lo, table, out)
    } else if let Ok(a) = q.cast::<PyArrayDyn<i16>>() {
        lookup_typed(py, a, lo, table, out)
    } else if let Ok(a) = q.cast::<PyArrayDyn<i32>>() {
        lookup_typed(py, a, lo, table, out)
    } else if let Ok(a) = q.cast::<PyArrayDyn<i64>>() {
        lookup_typed(py, a, lo, table, out)
    } else {
        Err(wrong_dtype(
            py,
            "int_lookup",
            "int8, int16, int32 or int64",
            q,
        ))
    }
}

/// `table[q - lo]` for C-contiguous int8/16/32/64 `q` and a 1-D int8/16/32/64 table, in the
/// table's dtype and q's shape; written into `out` (C-contiguous, q's shape, the table's
/// dtype) when given, and returned. Raises QuantizationError for a value outside the table.
#[pyfunction]
#[pyo3(signature = (q, lo, table, out=None))]
fn int_lookup<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    lo: i64,
    table: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Ok(t) = table.cast::<PyArrayDyn<i8>>() {
        lookup_into(py, q, lo, t, out)
    } else if let Ok(t) = table.cast::<PyArrayDyn<i16>>() {
        lookup_into(py, q, lo, t, out)
    } else if let Ok(t) = table.cast::<PyArrayDyn<i32>>() {
        lookup_into(py, q, lo, t, out)
    } else if let Ok(t) = table.cast::<PyArrayDyn<i64>>() {
        lookup_into(py, q, lo, t, out)
    } else {
        Err(wrong_dtype(
            py,
            "int_lookup",
            "an int8, int16, int32 or int64 table",
            table,
        ))
    }
}

/// The weighted squared error (rows, candidates) of quantizing each row of `values` with
/// each candidate scale and zero point of its row (float64, 2-D; with `prune`, candidates
/// that cannot be a row's first least error may be +inf; see
/// `kernels::quant::mse::clip_errors`).
#[pyfunction]
#[pyo3(signature = (values, weights, scale, zero_point, qlo, qhi, prune=false))]
#[allow(clippy::too_many_arguments)]
fn mse_clip_errors<'py>(
    py: Python<'py>,
    values: numpy::PyReadonlyArray2<'py, f64>,
    weights: numpy::PyReadonlyArray2<'py, f64>,
    scale: numpy::PyReadonlyArray2<'py, f64>,
    zero_point: numpy::PyReadonlyArray2<'py, f64>,
    qlo: f64,
    qhi: f64,
    prune: bool,
) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
    let (v, w) = (values.as_array(), weights.as_array());
    let (s, z) = (scale.as_array(), zero_point.as_array());
    let mut out = ndarray::Array2::<f64>::zeros(s.dim());
    py.detach(|| mse_clip_errors_kernel(v, w, s, z, qlo, qhi, prune, out.view_mut()))
        .map_err(|e| to_pyerr(py, e, None))?;
    Ok(numpy::IntoPyArray::into_pyarray(out, py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(mse_clip_errors, m)?)?;
    m.add_function(wrap_pyfunction!(int_presence, m)?)?;
    m.add_function(wrap_pyfunction!(int_lookup, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(min_max, m)?)?;
    m.add_function(wrap_pyfunction!(copy_min_max, m)?)?;
    m.add_function(wrap_pyfunction!(rounded_unique, m)?)?;
    Ok(())
}
