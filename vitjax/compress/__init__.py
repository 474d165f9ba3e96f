"""Model compression: int8 weight quantization (+ fake-quant for QAT),
attention-head pruning (prune.py) and token merging (tome.py)."""

from vitjax.compress.quantize import (dequantize_params, fake_quantize, quantize_params,
                                      quantized_size_bytes)

__all__ = ["dequantize_params", "fake_quantize", "quantize_params", "quantized_size_bytes"]
