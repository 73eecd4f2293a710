//! Python bindings: thin wrappers only.

mod acc_stream;
mod block_cache;
pub mod errors;
mod float;
mod integer;
mod quant;

use pyo3::prelude::*;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(errors::_raise_kernel_error, m)?)?;
    quant::register(m)?;
    block_cache::register(m)?;
    integer::register(m)?;
    float::register(m)?;
    acc_stream::register(m)?;
    Ok(())
}
