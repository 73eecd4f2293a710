//! Float kernels whose results do not depend on how the rows are batched.

pub mod acc_stream;
pub mod accfilter;
pub mod conv;
pub mod extremes;
pub mod filtered;
pub mod matmul;
