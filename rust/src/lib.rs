//! fhequant's native core.
//!
//! `kernels` holds pure functions over slices and `ndarray` views that know nothing of
//! Python and return `Result<_, Error>`; they are tested with `cargo test`. `py` holds the
//! thin `#[pyfunction]` wrappers: convert arrays, release the GIL around the work, map
//! errors to the classes of `fhequant.errors`.

pub mod error;
pub mod kernels;
mod py;

use pyo3::prelude::*;

/// The compiled module `fhequant._core`.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py::register(m)
}
