// CPU SIMD without per-ISA copies of each kernel.
//
// Kernels are written once over 64-byte GCC vector types (16 floats / 8 doubles). A hot entry point
// marked SYMKERNELS_SIMD_CLONES is compiled three times — AVX-512, AVX2 and baseline x86-64 — and the
// loader picks the best clone for the running CPU (GCC/Clang target_clones + ifunc). In the AVX2 clone a
// 64-byte vector is two ymm registers, in the baseline one four xmm registers: the same code, narrower.
// Helpers called from a clone must be inline so that they are compiled with the clone's target.
#pragma once

#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(SYMKERNELS_NO_SIMD_CLONES)
#define SYMKERNELS_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SYMKERNELS_SIMD_CLONES
#endif

#define SYMKERNELS_INLINE inline __attribute__((always_inline))

namespace symkernels::simd {

constexpr int kVectorBytes = 64;

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(kVectorBytes)));
  typedef int index __attribute__((vector_size(kVectorBytes)));
  static constexpr int width = 16;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(kVectorBytes)));
  typedef long long index __attribute__((vector_size(kVectorBytes)));
  static constexpr int width = 8;
};

// Unaligned load/store: memcpy compiles to one vmovups/vmovupd per register.
template <typename V, typename T>
SYMKERNELS_INLINE V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
SYMKERNELS_INLINE void store(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// The ISA the loader's ifunc resolver picks for SYMKERNELS_SIMD_CLONES on this CPU (same order).
inline const char* runtime_simd_level() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(SYMKERNELS_NO_SIMD_CLONES)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512";
  if (__builtin_cpu_supports("avx2")) return "avx2";
  return "sse2";
#else
  return "scalar";
#endif
}

}  // namespace symkernels::simd
