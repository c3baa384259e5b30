// VNNI paths of the CPU W4A4 GEMM (int4_matmul_vnni.cpp), called by the dispatcher in int4_matmul_cpu.cpp.
// Raw pointers, validated and contiguous: the dispatcher owns the argument checks.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace symkernels::quarot {

// Which vpdpbusd: zmm (AVX512-VNNI + BW), ymm VEX (AVX-VNNI: Alder Lake, Sierra Forest, Zen 5 client...),
// or ymm EVEX (AVX512VL-VNNI: the same ymm kernel, 16 registers' worth of tile, re-encoded so that it runs
// — and is tested — on AVX-512 CPUs that lack AVX-VNNI).
enum class VnniKind : int { kZmm = 0, kYmmVex = 1, kYmmEvex = 2 };

// What the running CPU can execute (cpuid; the OS state for zmm/ymm via __builtin_cpu_supports).
bool vnni_kind_supported(VnniKind kind);

// out[m, n] = Out(float(Σ_k a[m,k]·w[n,k])·sa[m]·sw[n] + bias[n]) for packed INT4 a [M, kb], w [N, kb]
// (K = 2·kb codes, even index in the low nibble). bias may be null. Requires vnni_kind_supported(kind).
template <typename Out>
void int4_matmul_vnni(VnniKind kind, const uint8_t* a, const uint8_t* w, int64_t M, int64_t N, int64_t kb,
                      const float* sa, const float* sw, const float* bias, Out* out);

extern template void int4_matmul_vnni<float>(VnniKind, const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t,
                                             const float*, const float*, const float*, float*);
extern template void int4_matmul_vnni<c10::Half>(VnniKind, const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t,
                                                 const float*, const float*, const float*, c10::Half*);
extern template void int4_matmul_vnni<c10::BFloat16>(VnniKind, const uint8_t*, const uint8_t*, int64_t, int64_t,
                                                     int64_t, const float*, const float*, const float*,
                                                     c10::BFloat16*);

}  // namespace symkernels::quarot
