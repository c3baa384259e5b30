// CUDA fast Walsh–Hadamard transform: one thread block per row, one read and one write of the data.
//
// A row of n = 2^LOG_N values is split over THREADS threads, ELEMS = n / THREADS contiguous values
// each, held in registers in the accumulation type (fp32; fp64 for fp64 I/O). With index
// i = warp·(32·ELEMS) + lane·ELEMS + e the stages run in three tiers:
//   1. strides 1 .. ELEMS/2          — within a thread's registers (bits of e);
//   2. strides ELEMS .. 16·ELEMS     — across lanes with __shfl_xor_sync (bits of lane);
//   3. strides ≥ 32·ELEMS            — across warps (bits of warp): the block writes the row to shared
//      memory once and each thread reads back, for ELEMS / WARPS columns, the WARPS values that
//      differ only in the warp bits; those stages are again in-register, and the results go straight
//      to global memory. ELEMS ≥ WARPS (see Traits) so every thread gets at least one full column.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/cuda_convert.cuh"
#include "hadamard/hadamard_transform_cuda.h"

namespace symkernels::hadamard {
namespace {

template <typename T>
using AccOf = typename AccumulatorOf<T>::type;

constexpr int ceil_log2_sqrt(int log_n) { return (log_n + 1) / 2; }

template <int LOG_N>
struct Traits {
  static constexpr int kN = 1 << LOG_N;
  // 8 values per thread (16 bytes of fp16) up to n = 256 (one warp); beyond, ELEMS = 2^ceil(log2(sqrt n/32))·…
  // chosen so that ELEMS ≥ WARPS (tier 3 needs one full column per thread) and THREADS ≤ 1024.
  static constexpr int kLogElems = LOG_N <= 3 ? LOG_N
                                 : LOG_N <= 8 ? 3
                                 : (ceil_log2_sqrt(LOG_N - 5) > 3 ? ceil_log2_sqrt(LOG_N - 5) : 3);
  static constexpr int kElems = 1 << kLogElems;
  static constexpr int kThreads = kN / kElems;
  static constexpr int kLogLanes = (LOG_N - kLogElems) < 5 ? (LOG_N - kLogElems) : 5;
  static constexpr int kLanes = 1 << kLogLanes;
  static constexpr int kLogWarps = LOG_N - kLogElems - kLogLanes;
  static constexpr int kWarps = 1 << kLogWarps;
  static_assert(kThreads <= 1024, "a block has at most 1024 threads");
  static_assert(kLogWarps == 0 || kElems >= kWarps, "tier 3 needs ELEMS >= WARPS");
  static_assert(kElems * kLanes * kWarps == kN, "the three tiers must cover the row");
};

// One shared-memory slot is skipped after every 32 values: thread t writes its ELEMS values at t·ELEMS,
// which without padding puts all 32 lanes of a warp on the same bank when ELEMS = 32.
__device__ __forceinline__ int padded(int i) { return i + i / 32; }
constexpr int padded_size(int n) { return n + n / 32; }

// A thread's ELEMS contiguous values move as 16-byte vectors when they fill whole vectors (the
// launcher guarantees 16-byte aligned rows), so each warp reads and writes full 128-byte lines.
template <typename T, int COUNT, typename Acc>
__device__ __forceinline__ void load_values(const T* p, Acc (&v)[COUNT], Acc scale) {
  if constexpr ((COUNT * sizeof(T)) % 16 == 0) {
    alignas(16) T tmp[COUNT];
#pragma unroll
    for (int k = 0; k < int(COUNT * sizeof(T) / 16); ++k) reinterpret_cast<uint4*>(tmp)[k] = reinterpret_cast<const uint4*>(p)[k];
#pragma unroll
    for (int e = 0; e < COUNT; ++e) v[e] = convert<AccOf<T>>(tmp[e]) * scale;
  } else {
#pragma unroll
    for (int e = 0; e < COUNT; ++e) v[e] = convert<AccOf<T>>(p[e]) * scale;
  }
}

template <typename T, int COUNT, typename Acc>
__device__ __forceinline__ void store_values(T* p, const Acc (&v)[COUNT]) {
  if constexpr ((COUNT * sizeof(T)) % 16 == 0) {
    alignas(16) T tmp[COUNT];
#pragma unroll
    for (int e = 0; e < COUNT; ++e) tmp[e] = convert<T>(v[e]);
#pragma unroll
    for (int k = 0; k < int(COUNT * sizeof(T) / 16); ++k) reinterpret_cast<uint4*>(p)[k] = reinterpret_cast<const uint4*>(tmp)[k];
  } else {
#pragma unroll
    for (int e = 0; e < COUNT; ++e) p[e] = convert<T>(v[e]);
  }
}

// Butterflies over the bits of a register array: v[e], v[e ^ h] -> (a + b, a - b).
template <int COUNT, typename Acc>
__device__ __forceinline__ void register_stages(Acc (&v)[COUNT]) {
#pragma unroll
  for (int h = 1; h < COUNT; h *= 2) {
#pragma unroll
    for (int e = 0; e < COUNT; ++e) {
      if ((e & h) == 0) {
        const Acc a = v[e], b = v[e + h];
        v[e] = a + b;
        v[e + h] = a - b;
      }
    }
  }
}

template <typename T, int LOG_N>
__global__ void __launch_bounds__(Traits<LOG_N>::kThreads)
fwht_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t rows, double scale) {
  using Tr = Traits<LOG_N>;
  using Acc = AccOf<T>;
  constexpr int kElems = Tr::kElems;
  extern __shared__ unsigned char shared_raw[];
  Acc* shared = reinterpret_cast<Acc*>(shared_raw);

  const int tid = threadIdx.x;
  const int lane = tid % Tr::kLanes;
  const unsigned lane_mask = Tr::kLanes == 32 ? 0xffffffffu : ((1u << Tr::kLanes) - 1u);

  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* src = in + row * Tr::kN;
    T* dst = out + row * Tr::kN;
    Acc v[kElems];
    load_values<T, kElems>(src + tid * kElems, v, static_cast<Acc>(scale));

    register_stages<kElems>(v);  // tier 1

#pragma unroll
    for (int bit = 0; bit < Tr::kLogLanes; ++bit) {  // tier 2
      const int mask = 1 << bit;
      const bool upper = lane & mask;
#pragma unroll
      for (int e = 0; e < kElems; ++e) {
        const Acc other = __shfl_xor_sync(lane_mask, v[e], mask);
        v[e] = upper ? other - v[e] : v[e] + other;
      }
    }

    if constexpr (Tr::kLogWarps == 0) {
      store_values<T, kElems>(dst + tid * kElems, v);
    } else {  // tier 3
      constexpr int kColumnStride = Tr::kN / Tr::kWarps;  // distance between values differing in warp bits
      constexpr int kColumnsPerThread = kElems / Tr::kWarps;
#pragma unroll
      for (int e = 0; e < kElems; ++e) shared[padded(tid * kElems + e)] = v[e];
      __syncthreads();
#pragma unroll
      for (int c = 0; c < kColumnsPerThread; ++c) {
        const int column = tid * kColumnsPerThread + c;
        Acc w[Tr::kWarps];
#pragma unroll
        for (int j = 0; j < Tr::kWarps; ++j) w[j] = shared[padded(j * kColumnStride + column)];
        register_stages<Tr::kWarps>(w);
#pragma unroll
        for (int j = 0; j < Tr::kWarps; ++j) dst[j * kColumnStride + column] = convert<T>(w[j]);
      }
      __syncthreads();  // the next row reuses the shared buffer
    }
  }
}

template <typename T, int LOG_N>
cudaError_t launch_typed(const void* in, void* out, int64_t rows, double scale, cudaStream_t stream) {
  using Tr = Traits<LOG_N>;
  using Acc = AccOf<T>;
  const int shared_bytes = Tr::kLogWarps == 0 ? 0 : padded_size(Tr::kN) * static_cast<int>(sizeof(Acc));
  auto kernel = fwht_kernel<T, LOG_N>;
  if (shared_bytes > 48 * 1024) {
    // Beyond the default 48 KiB a kernel must opt in (up to 227 KiB on Hopper, 163 KiB on A100).
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes);
    if (err != cudaSuccess) return err;
  }
  // One block per row, capped so a huge batch loops inside the grid instead of exceeding gridDim limits.
  const int64_t max_blocks = int64_t{1} << 20;
  const unsigned blocks = static_cast<unsigned>(rows < max_blocks ? rows : max_blocks);
  kernel<<<blocks, Tr::kThreads, shared_bytes, stream>>>(static_cast<const T*>(in), static_cast<T*>(out), rows, scale);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_for_size(const void* in, void* out, int64_t rows, int log_n, double scale, cudaStream_t stream) {
  switch (log_n) {
    case 1: return launch_typed<T, 1>(in, out, rows, scale, stream);
    case 2: return launch_typed<T, 2>(in, out, rows, scale, stream);
    case 3: return launch_typed<T, 3>(in, out, rows, scale, stream);
    case 4: return launch_typed<T, 4>(in, out, rows, scale, stream);
    case 5: return launch_typed<T, 5>(in, out, rows, scale, stream);
    case 6: return launch_typed<T, 6>(in, out, rows, scale, stream);
    case 7: return launch_typed<T, 7>(in, out, rows, scale, stream);
    case 8: return launch_typed<T, 8>(in, out, rows, scale, stream);
    case 9: return launch_typed<T, 9>(in, out, rows, scale, stream);
    case 10: return launch_typed<T, 10>(in, out, rows, scale, stream);
    case 11: return launch_typed<T, 11>(in, out, rows, scale, stream);
    case 12: return launch_typed<T, 12>(in, out, rows, scale, stream);
    case 13: return launch_typed<T, 13>(in, out, rows, scale, stream);
    case 14: return launch_typed<T, 14>(in, out, rows, scale, stream);
    case 15: return launch_typed<T, 15>(in, out, rows, scale, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

int64_t fwht_shared_memory_bytes(int log_n, DType dtype) {
  const int64_t acc_bytes = dtype == DType::kFloat64 ? 8 : 4;
  return log_n <= 8 ? 0 : padded_size(1 << log_n) * acc_bytes;  // tier 3 exists from n = 512 on
}

cudaError_t launch_fwht(const void* in, void* out, int64_t rows, int log_n, double scale, DType dtype,
                        cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return launch_for_size<float>(in, out, rows, log_n, scale, stream);
    case DType::kFloat16: return launch_for_size<__half>(in, out, rows, log_n, scale, stream);
    case DType::kBFloat16: return launch_for_size<__nv_bfloat16>(in, out, rows, log_n, scale, stream);
    case DType::kFloat64: return launch_for_size<double>(in, out, rows, log_n, scale, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace symkernels::hadamard
