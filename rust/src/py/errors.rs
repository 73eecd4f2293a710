//! Mapping of `crate::error::Error` to the exception classes of `fhequant.errors`.
//!
//! The hierarchy is defined once, in Python; here we look the class up by name so that
//! `except fhequant.errors.NonFiniteError` catches what the kernels raise.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::error::Error;

/// Name of the `fhequant.errors` class for a variant.
fn class_name(err: &Error) -> &'static str {
    match err {
        Error::NonFinite { .. } => "NonFiniteError",
        Error::Empty => "EmptyTensorError",
        Error::Shape(_) => "ShapeError",
        Error::InvalidArgument(_) => "QuantizationError",
        Error::DType(_) => "DTypeError",
        Error::Overflow(_) => "OverflowRiskError",
    }
}

/// Convert a kernel error to a Python exception; `context` (a tensor or op name) is
/// prefixed to the message when given.
pub fn to_pyerr(py: Python<'_>, err: Error, context: Option<&str>) -> PyErr {
    let msg = match context {
        Some(ctx) if !ctx.is_empty() => format!("{ctx}: {err}"),
        _ => err.to_string(),
    };
    let class = py
        .import("fhequant.errors")
        .and_then(|module| module.getattr(class_name(&err)))
        .and_then(|obj| obj.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(cls) => PyErr::from_type(cls, msg),
        // The package is half-installed; still raise something of the right base type.
        Err(_) => match err {
            Error::DType(_) => PyTypeError::new_err(msg),
            _ => PyValueError::new_err(msg),
        },
    }
}

/// The error of an array that Rust holds mutably while a kernel asks to read it.
pub fn borrow_err(e: numpy::BorrowError) -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(format!("array borrow: {e}"))
}

/// Raise the Python exception a kernel error of `variant` maps to. Exists so the test
/// suite can check the mapping without provoking every error through a kernel.
#[pyfunction]
#[pyo3(signature = (variant, context=None))]
pub fn _raise_kernel_error(py: Python<'_>, variant: &str, context: Option<&str>) -> PyResult<()> {
    let err = match variant {
        "NonFinite" => Error::NonFinite {
            flat_index: 3,
            value: f64::NAN,
        },
        "Empty" => Error::Empty,
        "Shape" => Error::Shape("shapes (2, 3) and (4, 5) do not fit".into()),
        "InvalidArgument" => Error::InvalidArgument("n_bits must be in 1..=32".into()),
        "DType" => Error::DType("expected float32 or float64, got int8".into()),
        "Overflow" => Error::Overflow("the accumulator may need 70 bits".into()),
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown kernel error variant '{other}'; expected one of NonFinite, Empty, \
                 Shape, InvalidArgument, DType, Overflow"
            )))
        }
    };
    Err(to_pyerr(py, err, context))
}
