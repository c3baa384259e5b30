// Op schema of the Kronecker (non-power-of-two) Hadamard transform; kernels in hadamard_k_cpu.cpp
// (CPU) and hadamard_k_cuda.cpp (CUDA). Kept out of schema.cpp so the power-of-two op's file is untouched.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(symkernels, m) {
  // y = x @ (hk ⊗ H_P).T * scale along the last dim, n = K·P, hk a K×K matrix (a ±1 Hadamard matrix
  // in practice), H_P the Sylvester matrix of the power of two P = n / K. Element k·P + j ↔ (k, j).
  m.def("hadamard_transform_k(Tensor x, Tensor hk, float scale) -> Tensor");
}
