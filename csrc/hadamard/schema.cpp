// Op schemas of the Hadamard pillar (see csrc/symkernels.cpp for why schemas live per pillar).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(symkernels, m) {
  // y = x @ H_n.T * scale along the last dim (Sylvester H_n, n = 2^k, 2 <= n <= 32768).
  m.def("hadamard_transform(Tensor x, float scale) -> Tensor");
  // The same, written into a caller's contiguous buffer that does not overlap x (no allocation: at ≥ 8 MB a
  // fresh output costs as much as the transform, in page faults on CPU). Returns nothing rather than
  // `out` itself, so torch.compile can functionalize it (it refuses custom ops returning aliases).
  m.def("hadamard_transform.out(Tensor x, float scale, *, Tensor(a!) out) -> ()");
  // y = x @ (hk ⊗ H_P).T * scale along the last dim, n = K·P, hk a K×K matrix (a ±1 Hadamard matrix
  // in practice), H_P the Sylvester matrix of the power of two P = n / K. Element k·P + j ↔ (k, j).
  // Kernels: hadamard_transform_k_cpu.cpp, hadamard_transform_k_cuda.cpp.
  m.def("hadamard_transform_k(Tensor x, Tensor hk, float scale) -> Tensor");
  m.def("hadamard_transform_k.out(Tensor x, Tensor hk, float scale, *, Tensor(a!) out) -> ()");
}
