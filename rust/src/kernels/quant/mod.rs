//! Quantization kernels: quant/dequant rounding and clipping, calibration reductions.
//!
//! Every kernel reproduces numpy 1.26 bit for bit (see `python/fhequant/kernels/reference/
//! quant.py`, whose `*_reference` functions are the specification). Work is split into
//! fixed chunks of [`CHUNK`] elements; element-wise results and exact reductions never depend
//! on how rayon schedules those chunks.

pub mod dequantize;
pub mod float;
pub mod mse;
pub mod quantize;
pub mod reduce;
pub mod table;
pub mod unique;

/// Elements per parallel work item; arrays no longer than this run on the calling thread.
pub const CHUNK: usize = 1 << 15;
