//! Bindings of `kernels::float`.

use numpy::{IntoPyArray, PyArray2, PyArray4, PyReadonlyArray2, PyReadonlyArray4};
use pyo3::prelude::*;

use crate::kernels::float::conv::{self, ConvGeometry};
use crate::kernels::float::matmul;
use crate::py::errors::to_pyerr;

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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(matmul_f32_sequential, m)?)?;
    m.add_function(wrap_pyfunction!(matmul_f64_sequential, m)?)?;
    m.add_function(wrap_pyfunction!(conv2d_f64_sequential, m)?)?;
    Ok(())
}
