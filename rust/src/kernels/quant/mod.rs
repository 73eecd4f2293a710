//! Quantization kernels: quant/dequant rounding and clipping, calibration reductions.
