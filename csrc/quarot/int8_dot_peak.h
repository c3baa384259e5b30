// The int8 dot-product instruction peak of this CPU, measured: a ceiling for the W4A4/W8A8 GEMM rows of
// the benchmarks (symkernels/bench/harness.py Ceilings), exposed from the _C module. No torch headers.
// With VNNI the instruction is vpdpbusd; without (AVX2 only, e.g. Zen 2/3, Haswell..Skylake client) it is
// the sequence int4_matmul's AVX2 kernel runs: two vpmaddubsw, a vpaddw, a vpmaddwd and a vpaddd per 64
// multiply-adds (the int16 pair sums cannot saturate for 4-bit codes, so this is the int4 GEMM's ceiling).
#pragma once

#include <string>

namespace symkernels::quarot {

struct Int8DotPeak {
  double ops_per_s = 0.0;  // 2 · multiply-adds per second of wall time, all threads together (0 when unsupported)
  // The same work over the slowest thread's CPU time: the rate of the cores themselves, which time slices
  // lost to other processes on a shared machine do not lower (≥ ops_per_s up to timer resolution).
  double ops_per_cpu_s = 0.0;
  int threads = 0;
  std::string isa;  // "avx512_vnni" (zmm), "avx_vnni" (VEX ymm), "avx512vl_vnni" (EVEX ymm), "avx2", or "none: …"
};

// Best of `repeats` timings of `threads` threads each running a tight loop of 16 independent dot-product
// chains (more than latency × throughput on any core, so the chains never wait on each other) for about
// `seconds` in all. isa: "auto" (widest available), "avx512" (zmm VNNI), "avx2" (ymm: VEX AVX-VNNI where the
// CPU has it, else the EVEX AVX512VL encoding of the same instruction, else the AVX2 sequence).
Int8DotPeak measure_int8_dot_peak(const std::string& isa, int threads, double seconds, int repeats);

}  // namespace symkernels::quarot
