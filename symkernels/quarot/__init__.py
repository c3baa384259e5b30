"""QuaRot-style 4-bit rotated matmuls: fused rotate+quantize, W4A4 GEMM with an fp32 epilogue, layers, and
whole-model rotation/quantization of the Hugging Face families of ``quarot.families``."""
from symkernels.quarot.families import FAMILIES
from symkernels.quarot.modules import QuaRotLinear, quantize_linears, quantize_model, rotate_model
from symkernels.quarot.learned import LearnedRotation, learn_rotation
from symkernels.quarot.ops import dequantize_int4, fake_quantize_int4, int4_matmul, quantize_int4
from symkernels.quarot.weights import dequantize_weight, gptq_hessian, quantize_weight_gptq, quantize_weight_rtn

__all__ = ["quantize_int4", "dequantize_int4", "fake_quantize_int4", "int4_matmul", "QuaRotLinear", "rotate_model",
           "quantize_model", "quantize_linears", "learn_rotation", "LearnedRotation", "FAMILIES",
           "quantize_weight_rtn", "quantize_weight_gptq", "gptq_hessian", "dequantize_weight"]
