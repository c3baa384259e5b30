"""Fast Walsh–Hadamard transforms (the rotation QuaRot applies before 4-bit quantization).

The door of the pillar: the public ops, the matrices, and what other pillars need to know about sizes
(``supported_size``, ``factor``/``decompose``, ``hk_for``: the K×K factor the kernels apply for a size n).
``matrices`` builds every H_n, ``reference`` holds the pure-PyTorch truths, ``ops`` the ops, ``triton`` the
Triton kernels (whose @triton.jit device functions the QuaRot kernels call).
"""
from symkernels.hadamard import reference
from symkernels.hadamard.matrices import (ORDERS, ORDERS_SUMMARY, decompose, factor, hadamard_k_matrix, hadamard_matrix,
                                          hadamard_matrix_any, hk_for, nearest_supported, random_hadamard, random_signs,
                                          supported_size)
from symkernels.hadamard.ops import hadamard_transform, hadamard_transform_k, randomized_hadamard_transform

__all__ = ["hadamard_transform", "hadamard_transform_k", "randomized_hadamard_transform", "hadamard_matrix",
           "hadamard_k_matrix", "hadamard_matrix_any", "random_hadamard", "random_signs", "ORDERS", "ORDERS_SUMMARY",
           "supported_size", "factor", "decompose", "nearest_supported", "hk_for", "reference"]
