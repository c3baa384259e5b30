"""QuaRot-style 4-bit rotated matmuls: fused rotate+quantize, W4A4 GEMM with an fp32 epilogue."""
from symkernels.quarot.ops import dequantize_int4, fake_quantize_int4, int4_matmul, quantize_int4

__all__ = ["quantize_int4", "dequantize_int4", "fake_quantize_int4", "int4_matmul"]
