"""symkernels: custom C++/CUDA and Triton kernels as PyTorch ops, each checked against a reference.

    >>> import symkernels, torch
    >>> y = symkernels.hadamard_transform(torch.randn(8, 1024), scale=1024 ** -0.5)
    >>> symkernels.backends()["reference"].available
    True
"""
from symkernels._backend import BACKENDS, backends, build_info
from symkernels.hadamard import hadamard_transform
from symkernels import jacobi  # noqa: E402  (symkernels.jacobi.solve, .rnn, .MADE, ...)

__version__ = "0.1.0"

__all__ = ["BACKENDS", "backends", "build_info", "hadamard_transform", "jacobi", "__version__"]
