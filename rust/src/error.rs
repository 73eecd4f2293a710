//! The one error type of the native core.
//!
//! Every variant maps to a named class of `fhequant.errors` (see `py::errors`); kernels
//! return it instead of panicking, so no panic ever has to cross into Python.

use std::fmt;

/// Errors raised by the kernels.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A NaN or infinite value where finite data is required (calibration data).
    /// `flat_index` is the position in C order of the first offending element.
    NonFinite { flat_index: usize, value: f64 },
    /// A reduction over an empty tensor.
    Empty,
    /// Operand shapes that do not fit together.
    Shape(String),
    /// An argument outside the range the kernel accepts (bad n_bits, bad axis, ...).
    InvalidArgument(String),
    /// An array of a dtype the kernel does not take.
    DType(String),
    /// An integer computation whose worst case does not fit its accumulator.
    Overflow(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NonFinite { flat_index, value } => write!(
                f,
                "found a non-finite value ({value}) at flat index {flat_index}; \
                 remove NaN/Inf from the data before calibrating"
            ),
            Error::Empty => write!(f, "the tensor is empty; give at least one value"),
            Error::Shape(msg)
            | Error::InvalidArgument(msg)
            | Error::DType(msg)
            | Error::Overflow(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

/// Result alias used by all kernels.
pub type Result<T> = std::result::Result<T, Error>;
