"""symkernels: custom C++/CUDA and Triton kernels as PyTorch ops, each checked against a reference.

    >>> import symkernels, torch
    >>> y = symkernels.hadamard_transform(torch.randn(8, 1024), scale=1024 ** -0.5)
    >>> symkernels.backends()["reference"].available
    True
"""
from symkernels._backend import BACKENDS, backends, build_info
from symkernels.gaunt import gaunt_tensor_product
from symkernels.hadamard import hadamard_transform, random_hadamard, randomized_hadamard_transform
from symkernels.jvp import ForwardGradientAdam, ForwardGradientSGD, forward_gradient, linear_dual
from symkernels.quarot import dequantize_int4, fake_quantize_int4, int4_matmul, quantize_int4
from symkernels import jacobi  # noqa: E402  (symkernels.jacobi.solve, .rnn, .MADE, ...)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "backends", "build_info", "__version__",
    # hadamard + quarot
    "hadamard_transform", "random_hadamard", "randomized_hadamard_transform",
    "quantize_int4", "dequantize_int4", "fake_quantize_int4", "int4_matmul",
    # gaunt
    "gaunt_tensor_product",
    # jvp
    "linear_dual", "forward_gradient", "ForwardGradientSGD", "ForwardGradientAdam",
    # jacobi (a namespace: symkernels.jacobi.solve / rnn / MADE / made_sample ...)
    "jacobi",
]
