"""Model compression: weight quantization, (later) head pruning and token merging."""

from vitjax.compress.quantize import (dequantize_params, quantize_params,
                                      quantized_size_bytes)

__all__ = ["dequantize_params", "quantize_params", "quantized_size_bytes"]
