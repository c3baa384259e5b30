"""Fast Walsh–Hadamard transforms (the rotation QuaRot applies before 4-bit quantization)."""
from symkernels.hadamard.hadamard_k import (hadamard_k_matrix, hadamard_matrix_any, random_hadamard,
                                            randomized_hadamard_transform)
from symkernels.hadamard.ops import hadamard_transform
from symkernels.hadamard.reference import hadamard_matrix

__all__ = ["hadamard_transform", "hadamard_matrix", "hadamard_k_matrix", "hadamard_matrix_any", "random_hadamard",
           "randomized_hadamard_transform"]
