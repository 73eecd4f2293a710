"""Quantizers: options, statistics, parameters, the uniform quantizer and QuantizedArray."""
