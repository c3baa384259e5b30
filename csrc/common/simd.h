// CPU SIMD: each kernel written once, compiled per ISA.
//
// Kernels are written over GCC vector types (64-byte Vec: 16 floats / 8 doubles, or register-width ones). An
// entry point defined with SYMKERNELS_ISA_ENTRY_POINTS is compiled three times, for AVX-512, AVX2 and baseline
// x86-64, and calls the one the running CPU supports (chosen at its first call). In the AVX2 code a 64-byte
// vector is two ymm registers, in the baseline four xmm: the same source, narrower. A kernel that needs the
// width itself (gaunt's in-register transposes) reads kRegisterBytes. Helpers called from an entry point must
// be inline, so that they are compiled with its target.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SYMKERNELS_X86_ENTRY_POINTS 1
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

// One register's worth of T (Bytes = 64, 32 or 16: zmm, ymm, xmm), for kernels that size their register
// blocks to the entry point (kRegisterBytes): an array of 64-byte Vec in the AVX2 code is two ymm per element,
// and GCC 12 keeps such arrays on the stack, moving them through general registers 8 bytes at a time.
template <typename T, int Bytes>
struct RegVec {
  typedef T type __attribute__((vector_size(Bytes)));
  // Integer lanes of T's size: `index` is the mask vector of __builtin_shuffle over `type`.
  typedef std::conditional_t<sizeof(T) == 8, int64_t, std::conditional_t<sizeof(T) == 4, int32_t, int16_t>> lane;
  typedef lane index __attribute__((vector_size(Bytes)));
  static constexpr int width = Bytes / int(sizeof(T));
};
// The RegVec width for code sized to its entry point: the register (kRegisterBytes), or the 64-byte Vec where
// the build has no per-ISA entry points (kRegisterBytes 0).
constexpr int register_vector_bytes(int register_bytes) { return register_bytes > 0 ? register_bytes : kVectorBytes; }

// Unaligned load/store, one vmovups/vmovupd per register in every entry point. Not memcpy: in the AVX2 and
// baseline entry points a 64-byte vector has no machine mode, and GCC 12 copies it by pieces through the stack
// (ymm → stack → four xmm stores per vector; the FWHT's AVX2 code ran 1.6–2× slower for it). A load
// through an unaligned, may_alias type folds into the arithmetic's memory operands; a store written lane
// by lane is merged back into whole-register stores by the SLP vectorizer (-O3).
template <typename V>
using Unaligned [[gnu::aligned(1), gnu::may_alias]] = V;
template <typename V, typename T>
SYMKERNELS_INLINE V load(const T* p) {
  return *reinterpret_cast<const Unaligned<V>*>(p);
}
template <typename T, typename V>
SYMKERNELS_INLINE void store(T* p, V v) {
  using E [[gnu::may_alias]] = std::remove_reference_t<decltype(v[0])>;
  E* q = reinterpret_cast<E*>(p);
#pragma GCC unroll 64
  for (int i = 0; i < int(sizeof(V) / sizeof(E)); ++i) q[i] = v[i];
}

// ---- fp16 / bf16 <-> fp32, 16 lanes at a time (added for the Hadamard kernels) ----------------------
// Bit for bit what c10::Half and c10::BFloat16 do element by element in this build (c10's software
// algorithms: the library is compiled for baseline x86-64, without F16C), including c10's NaN
// handling (fp32 → fp16: the sign and 0x7E00; fp32 → bf16: 0x7FC0), written over whole vectors so
// that they vectorize in every entry point (a static_cast per element does not: ~10× slower than the FWHT).
typedef unsigned int U32x16 __attribute__((vector_size(64)));
typedef unsigned short U16x16 __attribute__((vector_size(32)));

template <typename To, typename From>
SYMKERNELS_INLINE To bit_cast_vector(From v) {
  static_assert(sizeof(To) == sizeof(From));
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

SYMKERNELS_INLINE Vec<float>::type fp16_to_fp32(U16x16 h) {
  using F = Vec<float>::type;
  const U32x16 w = __builtin_convertvector(h, U32x16) << 16;
  const U32x16 sign = w & 0x80000000u;
  const U32x16 two_w = w + w;
  // Normal and inf/NaN inputs: exponent rebiased by 0xE0, then scaled by 2^-112 (exact).
  const F normalized = bit_cast_vector<F>((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  // Subnormal inputs and zero: the mantissa under an exponent worth 2^-24 per unit, less 0.5.
  const F denormalized = bit_cast_vector<F>((two_w >> 17) | (126u << 23)) - 0.5f;
  const U32x16 magnitude = two_w < (1u << 27) ? bit_cast_vector<U32x16>(denormalized)
                                              : bit_cast_vector<U32x16>(normalized);
  return bit_cast_vector<F>(sign | magnitude);
}

SYMKERNELS_INLINE U16x16 fp32_to_fp16(Vec<float>::type f) {
  using F = Vec<float>::type;
  const U32x16 w = bit_cast_vector<U32x16>(f);
  // Both multiplies are by powers of two: exact unless they overflow to inf, so an FMA contraction of
  // the add below gives the same bits.
  F base = (bit_cast_vector<F>(w & 0x7FFFFFFFu) * 0x1.0p+112f) * 0x1.0p-110f;
  const U32x16 shl1_w = w + w;
  const U32x16 sign = w & 0x80000000u;
  U32x16 bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? U32x16{} + 0x71000000u : bias;
  base = bit_cast_vector<F>((bias >> 1) + 0x07800000u) + base;
  const U32x16 bits = bit_cast_vector<U32x16>(base);
  const U32x16 nonsign = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
  const U32x16 half = (sign >> 16) | (shl1_w > 0xFF000000u ? U32x16{} + 0x7E00u : nonsign);
  return __builtin_convertvector(half, U16x16);
}

SYMKERNELS_INLINE Vec<float>::type bf16_to_fp32(U16x16 h) {
  return bit_cast_vector<Vec<float>::type>(__builtin_convertvector(h, U32x16) << 16);
}

SYMKERNELS_INLINE U16x16 fp32_to_bf16(Vec<float>::type f) {
  const U32x16 u = bit_cast_vector<U32x16>(f);
  const U32x16 rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;  // round to nearest even
  return __builtin_convertvector(f != f ? U32x16{} + 0x7FC0u : rounded, U16x16);
}
// The same fp16 conversions with the AVX-512F instructions (vcvtph2ps, vcvtps2ph round-to-nearest-even):
// identical results except that a NaN keeps its payload (quieted) instead of becoming 0x7E00, as in
// PyTorch's own vectorized casts. Inline assembly, so that they compile inside any function: call them
// only from code that runs on AVX-512F CPUs (the AVX-512 entry point).
SYMKERNELS_INLINE Vec<float>::type fp16_to_fp32_avx512(U16x16 h) {
  Vec<float>::type f;
  asm("vcvtph2ps %1, %0" : "=v"(f) : "v"(h));
  return f;
}
SYMKERNELS_INLINE U16x16 fp32_to_fp16_avx512(Vec<float>::type f) {
  U16x16 h;
  asm("vcvtps2ph $0, %1, %0" : "=v"(h) : "v"(f));
  return h;
}
// ---- end of the fp16 / bf16 block ---------------------------------------------------------------------

// ---- per-ISA entry points ------------------------------------------------------------------------------
// SYMKERNELS_ISA_ENTRY_POINTS(name, (params), (args), body) defines name_avx512, name_avx2 and name_baseline,
// each running `body` (with constexpr int kRegisterBytes = 64, 32, 16) under its own target, and name(params),
// which calls the one this CPU runs. One function per ISA rather than target_clones: a clone cannot see which
// ISA it is compiled for, so a width-specific kernel had to carry every width in every clone (the gaunt file
// took minutes to compile), and GCC's target_clones("avx512f", "avx2") enable no FMA.
//
// These targets include FMA (every AVX-512F CPU has it; the AVX2 entry point is picked only where the CPU
// reports FMA too), and GCC contracts a * b + c into one rounding. A kernel whose results must be bit-identical
// to a reference computed without FMA (the seeded tangents) uses
// SYMKERNELS_ISA_ENTRY_POINTS_NO_FMA.
#if SYMKERNELS_X86_ENTRY_POINTS
// SYMKERNELS_MAX_SIMD=avx2 or =sse2 caps the choice (any other value: no cap; read by each entry point at its
// first call), so that one machine can test the narrower entry points too.
inline int entry_point_register_bytes() {
  const char* cap_env = std::getenv("SYMKERNELS_MAX_SIMD");
  const std::string cap = cap_env ? cap_env : "";
  const int max_bytes = cap == "sse2" ? 16 : cap == "avx2" ? 32 : 64;
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  if (max_bytes >= 64 && __builtin_cpu_supports("avx512f") && fma) return 64;
  if (max_bytes >= 32 && __builtin_cpu_supports("avx2") && fma) return 32;
  return 16;  // SSE2, part of x86-64
}
// The dispatcher assigns to a typed pointer, which also picks among overloads (one entry point per dtype).
#define SYMKERNELS_ENTRY_POINTS_FOR_TARGETS(avx512_target, avx2_target, name, params, args, ...)    \
  __attribute__((target(avx512_target))) void name##_avx512 params {                               \
    [[maybe_unused]] constexpr int kRegisterBytes = 64;                                            \
    __VA_ARGS__;                                                                                   \
  }                                                                                                \
  __attribute__((target(avx2_target))) void name##_avx2 params {                                   \
    [[maybe_unused]] constexpr int kRegisterBytes = 32;                                            \
    __VA_ARGS__;                                                                                   \
  }                                                                                                \
  void name##_baseline params {                                                                    \
    [[maybe_unused]] constexpr int kRegisterBytes = 16;                                            \
    __VA_ARGS__;                                                                                   \
  }                                                                                                \
  void name params {                                                                               \
    static void (*const entry) params = [] {                                                       \
      void (*chosen) params = name##_baseline;                                                     \
      const int bytes = ::symkernels::simd::entry_point_register_bytes();                          \
      if (bytes == 64) chosen = name##_avx512;                                                     \
      if (bytes == 32) chosen = name##_avx2;                                                       \
      return chosen;                                                                               \
    }();                                                                                           \
    entry args;                                                                                    \
  }
#define SYMKERNELS_ISA_ENTRY_POINTS(...) \
  SYMKERNELS_ENTRY_POINTS_FOR_TARGETS("avx512f,fma", "avx2,fma", __VA_ARGS__)
#define SYMKERNELS_ISA_ENTRY_POINTS_NO_FMA(...) SYMKERNELS_ENTRY_POINTS_FOR_TARGETS("avx512f", "avx2", __VA_ARGS__)
#else
// Elsewhere one portable entry point (kRegisterBytes 0: no register-width blocks).
inline int entry_point_register_bytes() { return 0; }
#define SYMKERNELS_ISA_ENTRY_POINTS(name, params, args, ...) \
  void name params {                                           \
    [[maybe_unused]] constexpr int kRegisterBytes = 0;         \
    __VA_ARGS__;                                               \
  }
#define SYMKERNELS_ISA_ENTRY_POINTS_NO_FMA SYMKERNELS_ISA_ENTRY_POINTS
#endif

// The ISA of the entry points this CPU runs (see above), for reports and for tuning choices made outside them.
inline const char* runtime_simd_level() {
  switch (entry_point_register_bytes()) {
    case 64: return "avx512";
    case 32: return "avx2";
    case 16: return "sse2";
    default: return "scalar";
  }
}

}  // namespace symkernels::simd
