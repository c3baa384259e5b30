// CUDA kernel of hadamard_transform_k: one block per row (grid-strided), the row held in shared memory
// in the accumulation type. Stage 1: FWHT of every length-P segment (all K segments' butterflies of one
// stage in one sweep, since P is a multiple of 2h the global index formula is the per-segment one).
// Stage 2: the K×K mix, each thread producing outputs whose warp shares k, so the H_K load is a
// broadcast and the shared-memory reads are consecutive. One read and one write of the row in HBM.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/cuda_convert.cuh"
#include "hadamard/hadamard_transform_k_cuda.h"

namespace symkernels::hadamard {
namespace {

template <typename T, typename A>
__global__ void kron_hadamard_kernel(const T* __restrict__ x, const A* __restrict__ hk, T* __restrict__ out,
                                     int64_t rows, int k, int p, A scale) {
  extern __shared__ unsigned char smem_raw[];
  A* s = reinterpret_cast<A*>(smem_raw);
  const int n = k * p;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * n;
    T* yr = out + row * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = convert<A>(xr[i]);
    __syncthreads();
    for (int h = 1; h < p; h <<= 1) {
      for (int b = threadIdx.x; b < n / 2; b += blockDim.x) {
        const int i = (b / h) * 2 * h + (b % h);
        const A u = s[i], v = s[i + h];
        s[i] = u + v;
        s[i + h] = u - v;
      }
      __syncthreads();
    }
    for (int o = threadIdx.x; o < n; o += blockDim.x) {
      const int kk = o / p, j = o - kk * p;
      const A* hrow = hk + kk * k;
      A acc = 0;
      for (int k2 = 0; k2 < k; ++k2) acc += hrow[k2] * s[k2 * p + j];
      yr[o] = convert<T, A>(acc * scale);
    }
    __syncthreads();  // the next row overwrites s
  }
}

template <typename T, typename A>
cudaError_t launch(const void* x, const void* hk, void* out, int64_t rows, int64_t k, int64_t p, double scale,
                   cudaStream_t stream) {
  const int64_t n = k * p;
  const size_t smem = static_cast<size_t>(n) * sizeof(A);
  if (static_cast<int64_t>(smem) > kKronMaxSmemBytes) return cudaErrorInvalidValue;
  auto kernel = kron_hadamard_kernel<T, A>;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  // 256 threads: a few values per thread for typical rows (n ≈ 4k..28k), several blocks per SM.
  const int threads = 256;
  const int64_t blocks = rows < 65535 * 16 ? rows : 65535 * 16;
  kernel<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(
      static_cast<const T*>(x), static_cast<const A*>(hk), static_cast<T*>(out), rows, static_cast<int>(k),
      static_cast<int>(p), static_cast<A>(scale));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_hadamard_k(const void* x, const void* hk, void* out, int64_t rows, int64_t k, int64_t p,
                              double scale, int dtype, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  switch (dtype) {
    case 0: return launch<float, float>(x, hk, out, rows, k, p, scale, stream);
    case 1: return launch<__half, float>(x, hk, out, rows, k, p, scale, stream);
    case 2: return launch<__nv_bfloat16, float>(x, hk, out, rows, k, p, scale, stream);
    case 3: return launch<double, double>(x, hk, out, rows, k, p, scale, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace symkernels::hadamard
