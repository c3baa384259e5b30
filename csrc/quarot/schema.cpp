// Op schemas of the QuaRot pillar (kernels: quantize_int4_cpu.cpp, int4_matmul_cpu.cpp, int4_matmul_cuda.cpp).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(symkernels, m) {
  // Per-row symmetric INT4: (packed uint8 [..., n/2], scale fp32 [..., 1]). With hk given, the row is
  // first rotated by (hk ⊗ H_P)ᵀ · rot_scale (hk = [[1]] for a power-of-two n) in the same kernel.
  m.def("quantize_int4(Tensor x, float clip_ratio, Tensor? hk, float rot_scale) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_FRAGMENT(symkernels, m) {
  // W4A4 GEMM: y[m, n] = fp32(Σ_k a[m, k]·w[n, k]) · a_scale[m] · w_scale[n] (+ bias[n]), int32 exact
  // accumulation; a_packed uint8 [M, K/2], w_packed uint8 [N, K/2] (quantize_int4 layout), scales fp32 [M], [N].
  m.def("int4_matmul(Tensor a_packed, Tensor a_scale, Tensor w_packed, Tensor w_scale, Tensor? bias, "
        "ScalarType out_dtype) -> Tensor");
}

TORCH_LIBRARY_FRAGMENT(symkernels, m) {
  // Which CPU kernel int4_matmul runs now for an m-row product: "amx", "avx512" (VNNI), "avx2" or
  // "scalar", after the SYMKERNELS_INT4_ISA override and its fallback. Lets tests prove a forced path ran.
  m.def("int4_matmul_cpu_isa(int m) -> str");
}
