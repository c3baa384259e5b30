// Measured int8 dot-product peak (see int8_dot_peak.h). Each thread runs kChains independent accumulator
// chains of vpdpbusd (or its AVX2 sequence) on register-resident operands: no loads, no stores, nothing but
// the instructions whose rate is wanted. 16 chains cover latency × issue rate of every core known (Ice Lake
// and Sapphire Rapids: latency 5, 1–2 zmm per cycle; Zen 4/5: latency 4–5, 1–2 zmm per cycle).
#include "quarot/int8_dot_peak.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <ctime>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SK_VNNI_PEAK_X86 1
#endif

namespace symkernels::quarot {
namespace {

constexpr int kChains = 16;
constexpr int64_t kItersPerCall = 1 << 14;  // kChains · 16K instructions per call: ≈ 0.1–0.3 ms

#if SK_VNNI_PEAK_X86
// Returns a value that depends on every chain, so none can be dropped.
__attribute__((target("avx512f,avx512bw,avx512vnni"), noinline)) int64_t chains_zmm(int64_t iters, int seed) {
  __m512i acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_epi32(i + seed);
  __m512i u = _mm512_set1_epi8(static_cast<char>(seed | 1)), s = _mm512_set1_epi8(3);
  for (int64_t it = 0; it < iters; ++it) {
    // the empty asm makes the operands opaque to the optimizer (no hoisting or strength reduction)
    asm volatile("" : "+v"(u), "+v"(s));
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], u, s);
  }
  __m512i total = acc[0];
  for (int i = 1; i < kChains; ++i) total = _mm512_add_epi32(total, acc[i]);
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, total);
  int64_t r = 0;
  for (int l = 0; l < 16; ++l) r += lanes[l];
  return r;
}

// One body, two encodings of vpdpbusd ymm: VEX (AVX-VNNI, Alder Lake / Zen 5 client) and EVEX (AVX512VL).
#define SK_CHAINS_YMM(NAME, TARGET, DP)                                                       \
  __attribute__((target(TARGET), noinline)) int64_t NAME(int64_t iters, int seed) {     \
    __m256i acc[kChains];                                                               \
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_epi32(i + seed);             \
    __m256i u = _mm256_set1_epi8(static_cast<char>(seed | 1)), s = _mm256_set1_epi8(3); \
    for (int64_t it = 0; it < iters; ++it) {                                            \
      asm volatile("" : "+x"(u), "+x"(s));                                              \
      for (int i = 0; i < kChains; ++i)                                                 \
        acc[i] = DP(acc[i], u, s);                                                  \
    }                                                                                   \
    __m256i total = acc[0];                                                             \
    for (int i = 1; i < kChains; ++i) total = _mm256_add_epi32(total, acc[i]);          \
    alignas(32) int32_t lanes[8];                                                       \
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), total);                       \
    int64_t r = 0;                                                                      \
    for (int l = 0; l < 8; ++l) r += lanes[l];                                          \
    return r;                                                                           \
  }
SK_CHAINS_YMM(chains_ymm_vex, "avx2,avxvnni", _mm256_dpbusd_avx_epi32)
SK_CHAINS_YMM(chains_ymm_evex, "avx2,avx512f,avx512vl,avx512vnni", _mm256_dpbusd_epi32)
// Without VNNI: 64 multiply-adds per step, as int4_matmul's AVX2 kernel does them (see int8_dot_peak.h).
inline __attribute__((target("avx2"), always_inline)) __m256i dpbusd_pair_avx2(__m256i acc, __m256i u, __m256i s) {
  const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(u, s), _mm256_maddubs_epi16(s, u));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
SK_CHAINS_YMM(chains_ymm_avx2, "avx2", dpbusd_pair_avx2)
#undef SK_CHAINS_YMM
#endif

}  // namespace

Int8DotPeak measure_int8_dot_peak(const std::string& isa, int threads, double seconds, int repeats) {
  Int8DotPeak result;
  result.threads = std::max(1, threads);
#if SK_VNNI_PEAK_X86
  __builtin_cpu_init();
  const bool zmm = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
  const bool evex_ymm = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
  const bool vex_ymm = __builtin_cpu_supports("avxvnni");
  const bool avx2 = __builtin_cpu_supports("avx2");
  int64_t (*body)(int64_t, int) = nullptr;
  int macs_per_step = 0;  // multiply-adds of one chain step
  if ((isa == "auto" || isa == "avx512") && zmm) {
    body = chains_zmm, macs_per_step = 64, result.isa = "avx512_vnni";
  } else if ((isa == "auto" || isa == "avx2") && vex_ymm) {
    body = chains_ymm_vex, macs_per_step = 32, result.isa = "avx_vnni";
  } else if ((isa == "auto" || isa == "avx2") && evex_ymm) {
    body = chains_ymm_evex, macs_per_step = 32, result.isa = "avx512vl_vnni";
  } else if ((isa == "auto" || isa == "avx2") && avx2) {
    body = chains_ymm_avx2, macs_per_step = 64, result.isa = "avx2";
  } else {
    result.isa = "none: this CPU has no " + (isa == "auto" ? std::string("AVX2") : isa + " int8 dot product");
    return result;
  }
  // Calls per thread for about seconds/repeats each: calibrated on one call (≥ 1).
  const auto t0 = std::chrono::steady_clock::now();
  volatile int64_t sink = body(kItersPerCall, 1);
  const double one = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t calls = std::max<int64_t>(1, static_cast<int64_t>(seconds / std::max(1, repeats) / std::max(one, 1e-6)));
  const double ops_per_thread = 2.0 * macs_per_step * kChains * static_cast<double>(kItersPerCall) * calls;
  for (int r = 0; r < std::max(1, repeats); ++r) {
    // Plain threads, started together: the count asked for, whatever the ATen pool holds.
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    std::vector<int64_t> out(result.threads);
    std::vector<double> cpu(result.threads);
    for (int t = 0; t < result.threads; ++t) {
      pool.emplace_back([&, t] {
        ready.fetch_add(1);
        while (!go.load(std::memory_order_acquire)) {
        }
        timespec c0{}, c1{};
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
        int64_t acc = 0;
        for (int64_t c = 0; c < calls; ++c) acc += body(kItersPerCall, t + 2);
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
        out[t] = acc;
        cpu[t] = (c1.tv_sec - c0.tv_sec) + 1e-9 * (c1.tv_nsec - c0.tv_nsec);
      });
    }
    while (ready.load() < result.threads) {
    }
    const auto start = std::chrono::steady_clock::now();
    go.store(true, std::memory_order_release);
    for (auto& th : pool) th.join();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (int64_t v : out) sink = sink + v;
    result.ops_per_s = std::max(result.ops_per_s, ops_per_thread * result.threads / elapsed);
    const double slowest = *std::max_element(cpu.begin(), cpu.end());
    if (slowest > 0) result.ops_per_cpu_s = std::max(result.ops_per_cpu_s, ops_per_thread * result.threads / slowest);
  }
  (void)sink;
#else
  result.isa = "none: not an x86-64 GCC/Clang build";
#endif
  return result;
}

}  // namespace symkernels::quarot
