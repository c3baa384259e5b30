// CUDA Gaunt tensor product, sparse-direct (raw pointers, no torch headers: nvcc-checkable alone).
//
// One thread owns one row. A block of R rows (R = 32·warps) first copies its rows of x1 and x2 into
// shared memory *transposed* ([coefficient][row]): the global loads are coalesced (consecutive threads
// read consecutive elements of the contiguous [R, n] tile) and the later reads sa[i1*R + t] by thread t
// hit consecutive banks. Then every thread walks the same table entry at the same time (a warp-wide
// broadcast load), doing acc += c·a[i1]·b[i2] in fp32 (fp64 for fp64 inputs); the table is sorted by
// output index, so acc lives in a register for a run and is flushed into the shared output tile, which
// is finally written back coalesced. Half/bfloat16 inputs are widened on load and rounded once on store.
//
// Non-finite inputs poison the whole output row (as the dense reference does): see gaunt_tensor_product_cpu.cpp.
#include "common/cuda_convert.cuh"
#include "gaunt/gaunt_tensor_product_cuda.h"

namespace symkernels::gaunt {
namespace {

template <typename In>
__global__ void gaunt_sparse_kernel(const In* __restrict__ x1, const In* __restrict__ x2, In* __restrict__ out,
                                    const PathEntry* __restrict__ paths,
                                    const typename AccumulatorOf<In>::type* __restrict__ coeffs, int64_t nnz,
                                    int64_t rows, int n1, int n2, int no) {
  using Acc = typename AccumulatorOf<In>::type;
  extern __shared__ unsigned char smem_raw[];
  Acc* smem = reinterpret_cast<Acc*>(smem_raw);
  const int block_rows = blockDim.x;
  Acc* sa = smem;                         // [n1][block_rows]
  Acc* sb = sa + int64_t(n1) * block_rows;  // [n2][block_rows]
  Acc* sc = sb + int64_t(n2) * block_rows;  // [no][block_rows]
  const int64_t row0 = int64_t(blockIdx.x) * block_rows;
  const int64_t count = rows - row0 < block_rows ? rows - row0 : block_rows;
  const int t = threadIdx.x;

  // Coalesced, transposed staging. Rows past the end read as 0 and are never stored.
  for (int64_t e = t; e < int64_t(block_rows) * n1; e += block_rows) {
    const int64_t r = e / n1, i = e % n1;
    sa[i * block_rows + r] = r < count ? convert<Acc>(x1[(row0 + r) * n1 + i]) : Acc(0);
  }
  for (int64_t e = t; e < int64_t(block_rows) * n2; e += block_rows) {
    const int64_t r = e / n2, i = e % n2;
    sb[i * block_rows + r] = r < count ? convert<Acc>(x2[(row0 + r) * n2 + i]) : Acc(0);
  }
  __syncthreads();

  Acc poison = 0;  // 0, or NaN when any input of this row is NaN/inf
  for (int i = 0; i < n1; ++i) poison += sa[i * block_rows + t] * Acc(0);
  for (int i = 0; i < n2; ++i) poison += sb[i * block_rows + t] * Acc(0);
  for (int k = 0; k < no; ++k) sc[k * block_rows + t] = poison;

  if (nnz > 0) {
    int current = paths[0].i3;
    Acc acc = 0;
    for (int64_t n = 0; n < nnz; ++n) {
      const PathEntry p = paths[n];  // the same address in every thread: one broadcast transaction
      if (p.i3 != current) {
        sc[current * block_rows + t] += acc;
        acc = 0;
        current = p.i3;
      }
      acc += coeffs[n] * sa[p.i1 * block_rows + t] * sb[p.i2 * block_rows + t];
    }
    sc[current * block_rows + t] += acc;
  }
  __syncthreads();

  for (int64_t e = t; e < count * no; e += block_rows) {
    const int64_t r = e / no, k = e % no;
    out[(row0 + r) * no + k] = convert<In, Acc>(sc[k * block_rows + r]);
  }
}

// Shared memory one block needs for `block_rows` rows.
template <typename In>
int64_t smem_bytes(int block_rows, int n1, int n2, int no) {
  return int64_t(block_rows) * (n1 + n2 + no) * int64_t(sizeof(typename AccumulatorOf<In>::type));
}

}  // namespace

// Launcher: returns a cudaError_t (cudaErrorInvalidValue when even one warp's tile does not fit in the
// opt-in shared memory of the device, i.e. for degrees beyond ~16 in fp32).
template <typename In>
cudaError_t launch_gaunt_sparse(const In* x1, const In* x2, In* out, const PathEntry* paths,
                                const typename AccumulatorOf<In>::type* coeffs, int64_t nnz, int64_t rows, int n1,
                                int n2, int no, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  int device = 0, max_smem = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  // Prefer 128 rows per block (4 warps) while the tile stays within 64 KiB, so that several blocks share
  // an SM; fall back to fewer rows for large degrees.
  int block_rows = 128;
  while (block_rows > 32 && smem_bytes<In>(block_rows, n1, n2, no) > (64 << 10)) block_rows /= 2;
  const int64_t smem = smem_bytes<In>(block_rows, n1, n2, no);
  if (smem > max_smem) return cudaErrorInvalidValue;
  if (smem > (48 << 10)) {
    const cudaError_t err = cudaFuncSetAttribute(gaunt_sparse_kernel<In>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  const int64_t blocks = (rows + block_rows - 1) / block_rows;
  gaunt_sparse_kernel<In><<<static_cast<unsigned>(blocks), block_rows, smem, stream>>>(x1, x2, out, paths, coeffs,
                                                                                         nnz, rows, n1, n2, no);
  return cudaGetLastError();
}

template cudaError_t launch_gaunt_sparse<float>(const float*, const float*, float*, const PathEntry*, const float*,
                                                int64_t, int64_t, int, int, int, cudaStream_t);
template cudaError_t launch_gaunt_sparse<double>(const double*, const double*, double*, const PathEntry*,
                                                 const double*, int64_t, int64_t, int, int, int, cudaStream_t);
template cudaError_t launch_gaunt_sparse<__half>(const __half*, const __half*, __half*, const PathEntry*,
                                                 const float*, int64_t, int64_t, int, int, int, cudaStream_t);
template cudaError_t launch_gaunt_sparse<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*,
                                                        const PathEntry*, const float*, int64_t, int64_t, int, int,
                                                        int, cudaStream_t);

}  // namespace symkernels::gaunt
