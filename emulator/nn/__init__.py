"""Quantized activations and backward errors for torch models, fixed point and BFP (docs/bfp.md)."""

from .qlayers import Quantizer, QuantSpec, quantize_model, remove_quantization

__all__ = ["QuantSpec", "Quantizer", "quantize_model", "remove_quantization"]
