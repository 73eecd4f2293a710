//! Bindings of `kernels::float`.

use ndarray::{ArrayView1, ArrayView2, ArrayView4};
use numpy::{
    Element as NpElement, IntoPyArray, PyArray2, PyArray4, PyArrayMethods, PyReadonlyArray1,
    PyReadonlyArray2, PyReadonlyArray4,
};
use pyo3::prelude::*;

use crate::error::Error;
use crate::kernels::float::accfilter::{self, acc_extremes_counted, AccInput};
use crate::kernels::float::conv::{self, ConvGeometry};
use crate::kernels::float::extremes::{conv2d_extremes, Extremes};
use crate::kernels::float::filtered::{self, conv2d_extremes_filtered, matmul_extremes_by};
use crate::kernels::float::matmul::{self, Isa};
use crate::kernels::quant::dequantize::{dequantize_value, QInt};
use crate::py::errors::{borrow_err, to_pyerr};

/// float32 a (n, k) @ b (k, m), each dot product summed sequentially in k order (no FMA).
#[pyfunction]
#[pyo3(signature = (a, b, context=None))]
fn matmul_f32_sequential<'py>(
    py: Python<'py>,
    a: PyReadonlyArray2<'py, f32>,
    b: PyReadonlyArray2<'py, f32>,
    context: Option<&str>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (a, b) = (a.as_array(), b.as_array());
    let out = py.detach(|| matmul::matmul_f32_sequential(a, b));
    Ok(out.map_err(|e| to_pyerr(py, e, context))?.into_pyarray(py))
}

/// float64 a (n, k) @ b (k, m), each dot product summed sequentially in k order (no FMA).
#[pyfunction]
#[pyo3(signature = (a, b, context=None))]
fn matmul_f64_sequential<'py>(
    py: Python<'py>,
    a: PyReadonlyArray2<'py, f64>,
    b: PyReadonlyArray2<'py, f64>,
    context: Option<&str>,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let (a, b) = (a.as_array(), b.as_array());
    let out = py.detach(|| matmul::matmul_f64_sequential(a, b));
    Ok(out.map_err(|e| to_pyerr(py, e, context))?.into_pyarray(py))
}

/// float64 x (N, C, H, W) conv w (O, C/group, KH, KW), no bias, each output summed
/// sequentially over its window in (c, kh, kw) order; with padding x is read through float32.
#[pyfunction]
#[pyo3(signature = (x, w, strides, dilations, begins, ends, group, context=None))]
#[allow(clippy::too_many_arguments)]
fn conv2d_f64_sequential<'py>(
    py: Python<'py>,
    x: PyReadonlyArray4<'py, f64>,
    w: PyReadonlyArray4<'py, f64>,
    strides: [usize; 2],
    dilations: [usize; 2],
    begins: [usize; 2],
    ends: [usize; 2],
    group: usize,
    context: Option<&str>,
) -> PyResult<Bound<'py, PyArray4<f64>>> {
    let (x, w) = (x.as_array(), w.as_array());
    let geometry = ConvGeometry {
        strides,
        dilations,
        begins,
        ends,
        group,
    };
    let out = py.detach(|| conv::conv2d_f64_sequential(x, w, &geometry));
    Ok(out.map_err(|e| to_pyerr(py, e, context))?.into_pyarray(py))
}

/// `(min, max, finite)` of an extremes kernel, as Python floats.
fn extremes_tuple<T: Into<f64>>(e: Extremes<T>) -> (f64, f64, bool) {
    (e.min.into(), e.max.into(), e.finite)
}

/// float32 `a (n, k) @ b (k, m) + bias (m,)` reduced to `(min, max, finite)` without
/// materialising it: the values of `matmul_f32_sequential(a, b) + bias` (see
/// `kernels::float::extremes` for the meaning of a zero extreme and of `finite`).
#[pyfunction]
#[pyo3(signature = (a, b, bias=None, context=None, exact=false))]
fn matmul_extremes_f32<'py>(
    py: Python<'py>,
    a: PyReadonlyArray2<'py, f32>,
    b: PyReadonlyArray2<'py, f32>,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    context: Option<&str>,
    exact: bool,
) -> PyResult<(f64, f64, bool)> {
    let (a, b) = (a.as_array(), b.as_array());
    let bias = bias.as_ref().map(|v| v.as_array());
    let isa = Isa::detect();
    let out = py.detach(|| matmul_extremes_by(exact, a, |v: f32| v, b, bias, isa));
    Ok(extremes_tuple(out.map_err(|e| to_pyerr(py, e, context))?))
}

/// Allow (the default) or forbid the AVX-512 products of the extremes kernels' float32
/// filter when `enabled` is given (`filtered::WIDE`; a switch for benchmarks: the same
/// extremes either way); returns whether it is in use (allowed and supported by the CPU).
#[pyfunction]
#[pyo3(signature = (enabled=None))]
fn extremes_filter_wide(enabled: Option<bool>) -> bool {
    crate::kernels::float::filtered::WIDE.toggle(enabled)
}

/// What the filter of the extremes kernels (`exact=False`) did in this process:
/// `(tasks bounded, tasks run exactly, calls answered by the whole exact kernel)`, set back
/// to zero when `reset` (see `kernels::float::filtered`).
#[pyfunction]
#[pyo3(signature = (reset=false))]
fn extremes_filter_counts(reset: bool) -> (u64, u64, u64) {
    let c = filtered::counts(reset);
    (c.tasks, c.verified, c.fallbacks)
}

/// How the input of a float64 extremes kernel becomes float64.
#[derive(Clone, Copy)]
enum Input {
    /// float32 or float64 values, widened exactly.
    Float,
    /// int8/16/32 values dequantized as `_core.dequantize(q, scale, zero_point)`.
    Dequantize(f64, f64),
}

fn input_kind(
    py: Python<'_>,
    what: &str,
    a: &Bound<'_, PyAny>,
    scale: Option<f64>,
    zero_point: Option<f64>,
    context: Option<&str>,
) -> PyResult<Input> {
    let dtype = a
        .getattr("dtype")
        .and_then(|d| d.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| a.get_type().to_string());
    let integer = matches!(dtype.as_str(), "int8" | "int16" | "int32");
    let float = matches!(dtype.as_str(), "float32" | "float64");
    let err = |msg: String| to_pyerr(py, Error::InvalidArgument(msg), context);
    match (integer, float, scale, zero_point) {
        (true, _, Some(s), Some(z)) => Ok(Input::Dequantize(s, z)),
        (true, _, _, _) => Err(err(format!(
            "{what}: an {dtype} input needs both scale and zero_point to be dequantized"
        ))),
        (_, true, None, None) => Ok(Input::Float),
        (_, true, _, _) => Err(err(format!(
            "{what}: scale and zero_point only apply to integer inputs, got {dtype}"
        ))),
        _ => Err(to_pyerr(
            py,
            Error::DType(format!(
                "{what}: expected a numpy array of float32, float64, int8, int16 or int32, \
                 got {dtype}; convert it first"
            )),
            context,
        )),
    }
}

fn matmul_f64_typed<S: NpElement + Copy + Sync, F: Fn(S) -> f64 + Send + Sync>(
    py: Python<'_>,
    a: &Bound<'_, PyArray2<S>>,
    load: F,
    b: ArrayView2<'_, f64>,
    bias: Option<ArrayView1<'_, f64>>,
    exact: bool,
) -> Result<Extremes<f64>, PyErr> {
    let guard = a.try_readonly().map_err(borrow_err)?;
    let a = guard.as_array();
    let isa = Isa::detect();
    Ok(py.detach(|| matmul_extremes_by(exact, a, load, b, bias, isa)))
        .and_then(|r| r.map_err(|e| to_pyerr(py, e, None)))
}

/// float64 `a (n, k) @ b (k, m) + bias (m,)` reduced to `(min, max, finite)` without
/// materialising it: the values of `matmul_f64_sequential(float64(a), b) + bias`. `a` is
/// float32/float64, or int8/16/32 dequantized on the fly with `scale` and `zero_point` (the
/// float64 values of `dequantize`).
#[pyfunction]
#[pyo3(signature = (a, b, bias=None, scale=None, zero_point=None, context=None, exact=false))]
#[allow(clippy::too_many_arguments)]
fn matmul_extremes_f64<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: PyReadonlyArray2<'py, f64>,
    bias: Option<PyReadonlyArray1<'py, f64>>,
    scale: Option<f64>,
    zero_point: Option<f64>,
    context: Option<&str>,
    exact: bool,
) -> PyResult<(f64, f64, bool)> {
    let what = "matmul_extremes_f64";
    let kind = input_kind(py, what, a, scale, zero_point, context)?;
    let b = b.as_array();
    let bias = bias.as_ref().map(|v| v.as_array());
    let out = match kind {
        Input::Float => {
            if let Ok(a) = a.cast::<PyArray2<f64>>() {
                matmul_f64_typed(py, a, |v: f64| v, b, bias, exact)
            } else if let Ok(a) = a.cast::<PyArray2<f32>>() {
                matmul_f64_typed(py, a, |v: f32| f64::from(v), b, bias, exact)
            } else {
                Err(wrong_ndim(py, what, a, 2, context))
            }
        }
        Input::Dequantize(s, z) => {
            if let Ok(a) = a.cast::<PyArray2<i8>>() {
                matmul_f64_typed(py, a, dequantizer::<i8>(s, z), b, bias, exact)
            } else if let Ok(a) = a.cast::<PyArray2<i16>>() {
                matmul_f64_typed(py, a, dequantizer::<i16>(s, z), b, bias, exact)
            } else if let Ok(a) = a.cast::<PyArray2<i32>>() {
                matmul_f64_typed(py, a, dequantizer::<i32>(s, z), b, bias, exact)
            } else {
                Err(wrong_ndim(py, what, a, 2, context))
            }
        }
    };
    Ok(extremes_tuple(
        out.map_err(|e| with_context(py, e, context))?,
    ))
}

fn dequantizer<I: QInt>(scale: f64, zero_point: f64) -> impl Fn(I) -> f64 + Send + Sync {
    move |v: I| dequantize_value(v, scale, zero_point)
}

fn wrong_ndim(
    py: Python<'_>,
    what: &str,
    a: &Bound<'_, PyAny>,
    want: usize,
    context: Option<&str>,
) -> PyErr {
    let ndim = a.getattr("ndim").map(|n| n.to_string()).unwrap_or_default();
    to_pyerr(
        py,
        Error::Shape(format!(
            "{what}: the input has {ndim} dimensions, the kernel takes {want}; reshape it first"
        )),
        context,
    )
}

/// Prefix `context` to an error raised without one.
fn with_context(py: Python<'_>, e: PyErr, context: Option<&str>) -> PyErr {
    match context {
        Some(ctx) if !ctx.is_empty() => {
            let msg = format!("{ctx}: {}", e.value(py));
            PyErr::from_type(e.get_type(py), msg)
        }
        _ => e,
    }
}

fn conv_f64_typed<S: NpElement + Copy + Sync, F: Fn(S) -> f64 + Send + Sync>(
    py: Python<'_>,
    x: &Bound<'_, PyArray4<S>>,
    load: F,
    w: ArrayView4<'_, f64>,
    bias: Option<ArrayView1<'_, f64>>,
    geometry: &ConvGeometry,
    exact: bool,
) -> Result<Extremes<f64>, PyErr> {
    let guard = x.try_readonly().map_err(borrow_err)?;
    let x = guard.as_array();
    let isa = Isa::detect();
    Ok(py.detach(|| {
        if exact {
            conv2d_extremes(x, load, w, bias, geometry, isa)
        } else {
            conv2d_extremes_filtered(x, load, w, bias, geometry, isa)
        }
    }))
    .and_then(|r| r.map_err(|e| to_pyerr(py, e, None)))
}

/// float64 `conv(x, w) + bias (O,)` (per output channel) reduced to `(min, max, finite)`
/// without materialising it: the values of `conv2d_f64_sequential(float64(x), w, ...) +
/// bias`. `x (N, C, H, W)` is float32/float64, or int8/16/32 dequantized on the fly with
/// `scale` and `zero_point`.
#[pyfunction]
#[pyo3(signature = (x, w, strides, dilations, begins, ends, group, bias=None, scale=None,
                    zero_point=None, context=None, exact=false))]
#[allow(clippy::too_many_arguments)]
fn conv2d_extremes_f64<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    w: PyReadonlyArray4<'py, f64>,
    strides: [usize; 2],
    dilations: [usize; 2],
    begins: [usize; 2],
    ends: [usize; 2],
    group: usize,
    bias: Option<PyReadonlyArray1<'py, f64>>,
    scale: Option<f64>,
    zero_point: Option<f64>,
    context: Option<&str>,
    exact: bool,
) -> PyResult<(f64, f64, bool)> {
    let what = "conv2d_extremes_f64";
    let kind = input_kind(py, what, x, scale, zero_point, context)?;
    let geometry = ConvGeometry {
        strides,
        dilations,
        begins,
        ends,
        group,
    };
    let g = &geometry;
    let w = w.as_array();
    let bias = bias.as_ref().map(|v| v.as_array());
    let out = match kind {
        Input::Float => {
            if let Ok(x) = x.cast::<PyArray4<f64>>() {
                conv_f64_typed(py, x, |v: f64| v, w, bias, g, exact)
            } else if let Ok(x) = x.cast::<PyArray4<f32>>() {
                conv_f64_typed(py, x, |v: f32| f64::from(v), w, bias, g, exact)
            } else {
                Err(wrong_ndim(py, what, x, 4, context))
            }
        }
        Input::Dequantize(s, z) => {
            if let Ok(x) = x.cast::<PyArray4<i8>>() {
                conv_f64_typed(py, x, dequantizer::<i8>(s, z), w, bias, g, exact)
            } else if let Ok(x) = x.cast::<PyArray4<i16>>() {
                conv_f64_typed(py, x, dequantizer::<i16>(s, z), w, bias, g, exact)
            } else if let Ok(x) = x.cast::<PyArray4<i32>>() {
                conv_f64_typed(py, x, dequantizer::<i32>(s, z), w, bias, g, exact)
            } else {
                Err(wrong_ndim(py, what, x, 4, context))
            }
        }
    };
    Ok(extremes_tuple(
        out.map_err(|e| with_context(py, e, context))?,
    ))
}

/// The kept accumulators of `int_matmul_acc_extremes`.
type MaybeAcc<'py> = Option<Bound<'py, PyArray2<i32>>>;

/// One typed call of [`int_matmul_acc_extremes`].
#[allow(clippy::too_many_arguments)]
fn acc_typed<'py, S: NpElement + AccInput>(
    py: Python<'py>,
    a: &Bound<'py, PyArray2<S>>,
    wq: ArrayView2<'_, i64>,
    z_w: i64,
    w: ArrayView2<'_, f64>,
    bias: Option<ArrayView1<'_, f64>>,
    quant: (f64, f64),
    keep: bool,
    exact: bool,
) -> PyResult<(MaybeAcc<'py>, Extremes<f64>)> {
    let guard = a.try_readonly().map_err(borrow_err)?;
    let a = guard.as_array();
    let (n, m) = (a.dim().0, wq.dim().1);
    let out = py.detach(|| {
        // not zeroed: the kernel writes every accumulator when it succeeds
        let mut acc: Vec<i32> = Vec::with_capacity(n * m);
        let slots = &mut acc.spare_capacity_mut()[..n * m];
        let found = acc_extremes_counted(a, wq, z_w, w, bias, quant, exact, Isa::detect(), slots);
        found.map(|e| {
            // SAFETY: acc_extremes succeeded, so it wrote all n·m accumulators.
            unsafe { acc.set_len(n * m) };
            (acc, e)
        })
    });
    let (acc, e) = out.map_err(|e| to_pyerr(py, e, None))?;
    let acc = if keep {
        let arr = numpy::ndarray::Array2::from_shape_vec((n, m), acc)
            .map_err(|e| to_pyerr(py, Error::Shape(e.to_string()), None))?;
        Some(arr.into_pyarray(py))
    } else {
        None
    };
    Ok((acc, e))
}

/// The exact int32 accumulators `a @ (wq − z_w)` (those of `int_matmul`, kept when `keep`)
/// and the `(min, max, finite)` of `dequantize(a, scale, zero_point) @ w + bias`, bit for bit
/// those of `matmul_extremes_f64(a, w, bias, scale, zero_point, exact=True)`, with the
/// accumulators as the filter (see `kernels::float::accfilter`).
#[pyfunction]
#[pyo3(signature = (a, wq, z_w, w, bias, scale, zero_point, keep, exact=false, context=None))]
#[allow(clippy::too_many_arguments)]
fn int_matmul_acc_extremes<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    wq: PyReadonlyArray2<'py, i64>,
    z_w: i64,
    w: PyReadonlyArray2<'py, f64>,
    bias: Option<PyReadonlyArray1<'py, f64>>,
    scale: f64,
    zero_point: f64,
    keep: bool,
    exact: bool,
    context: Option<&str>,
) -> PyResult<(MaybeAcc<'py>, f64, f64, bool)> {
    let what = "int_matmul_acc_extremes";
    let (wq, w) = (wq.as_array(), w.as_array());
    let bias = bias.as_ref().map(|v| v.as_array());
    let q = (scale, zero_point);
    let out = if let Ok(a) = a.cast::<PyArray2<i8>>() {
        acc_typed(py, a, wq, z_w, w, bias, q, keep, exact)
    } else if let Ok(a) = a.cast::<PyArray2<i16>>() {
        acc_typed(py, a, wq, z_w, w, bias, q, keep, exact)
    } else if let Ok(a) = a.cast::<PyArray2<i32>>() {
        acc_typed(py, a, wq, z_w, w, bias, q, keep, exact)
    } else {
        let dtype = a
            .getattr("dtype")
            .and_then(|d| d.str().map(|s| s.to_string()))
            .unwrap_or_else(|_| a.get_type().to_string());
        if matches!(dtype.as_str(), "int8" | "int16" | "int32") {
            Err(wrong_ndim(py, what, a, 2, context))
        } else {
            Err(to_pyerr(
                py,
                Error::DType(format!(
                    "{what}: expected a numpy array of int8, int16 or int32, got {dtype}; \
                     quantize it first"
                )),
                context,
            ))
        }
    };
    let (acc, e) = out.map_err(|e| with_context(py, e, context))?;
    Ok((acc, e.min, e.max, e.finite))
}

/// What the filter of `int_matmul_acc_extremes` did in this process: `(rows bounded, rows
/// run exactly, calls answered by the whole exact kernel, values refined)`, set back to zero
/// when `reset` (see `kernels::float::accfilter`).
#[pyfunction]
#[pyo3(signature = (reset=false))]
fn acc_extremes_filter_counts(reset: bool) -> (u64, u64, u64, u64) {
    let c = accfilter::counts(reset);
    (c.tasks, c.verified, c.fallbacks, c.refined)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(int_matmul_acc_extremes, m)?)?;
    m.add_function(wrap_pyfunction!(acc_extremes_filter_counts, m)?)?;
    m.add_function(wrap_pyfunction!(matmul_f32_sequential, m)?)?;
    m.add_function(wrap_pyfunction!(matmul_f64_sequential, m)?)?;
    m.add_function(wrap_pyfunction!(conv2d_f64_sequential, m)?)?;
    m.add_function(wrap_pyfunction!(matmul_extremes_f32, m)?)?;
    m.add_function(wrap_pyfunction!(matmul_extremes_f64, m)?)?;
    m.add_function(wrap_pyfunction!(conv2d_extremes_f64, m)?)?;
    m.add_function(wrap_pyfunction!(extremes_filter_counts, m)?)?;
    m.add_function(wrap_pyfunction!(extremes_filter_wide, m)?)?;
    Ok(())
}
