// Op schemas of the Hadamard pillar (see csrc/symkernels.cpp for why schemas live per pillar).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(symkernels, m) {
  // y = x @ H_n.T * scale along the last dim (Sylvester H_n, n = 2^k, 2 <= n <= 32768).
  m.def("hadamard_transform(Tensor x, float scale) -> Tensor");
}
