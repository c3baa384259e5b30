// AMX-INT8 path of the CPU W4A4 GEMM (int4_matmul_amx.cpp), called by the dispatcher in
// int4_matmul_cpu.cpp. Raw pointers, validated and contiguous: the dispatcher owns the argument checks.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace symkernels::quarot {

// True when this CPU has AMX-TILE + AMX-INT8 (+ AVX-512BW/VL for the unpack) and the kernel granted
// this process the XTILEDATA state (Linux arch_prctl, asked once per process).
bool amx_int8_usable();

// out[m, n] = Out(float(Σ_k a[m,k]·w[n,k])·sa[m]·sw[n] + bias[n]) for packed INT4 a [M, kb], w [N, kb]
// (K = 2·kb codes, even index in the low nibble). bias may be null. Requires amx_int8_usable().
template <typename Out>
void int4_matmul_amx(const uint8_t* a, const uint8_t* w, int64_t M, int64_t N, int64_t kb, const float* sa,
                     const float* sw, const float* bias, Out* out);

extern template void int4_matmul_amx<float>(const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t,
                                            const float*, const float*, const float*, float*);
extern template void int4_matmul_amx<c10::Half>(const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t,
                                                const float*, const float*, const float*, c10::Half*);
extern template void int4_matmul_amx<c10::BFloat16>(const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t,
                                                    const float*, const float*, const float*, c10::BFloat16*);

}  // namespace symkernels::quarot
