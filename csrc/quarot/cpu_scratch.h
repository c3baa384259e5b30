// Per-thread scratch buffers of the CPU int4_matmul paths (AMX and VNNI), grown and kept between calls.
//
// Why not malloc per call: an allocation of >= 128 KiB is an mmap, and its munmap makes the kernel shoot
// down the TLB of every core running this process (an IPI to the other OpenMP threads' CPUs); on a loaded
// VM that waits until those vCPUs are scheduled again. Measured on a 2-vCPU Sapphire Rapids VM, AMX path,
// M = 16, K = N = 4096, 2 threads: 28-32 ms per call with per-call buffers, 1.3-1.5 ms with malloc kept
// off mmap. Buffers above kKeepScratchBytes are not kept (a product that large amortizes the munmap, and a
// prefill-sized buffer should not stay resident).
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>

namespace symkernels::quarot {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using ScratchBuffer = std::unique_ptr<int8_t, FreeDeleter>;

// 64-byte aligned (tile rows and zmm stores never split a cache line).
inline ScratchBuffer aligned_buffer(int64_t bytes) {
  const size_t size = static_cast<size_t>((std::max<int64_t>(bytes, 64) + 63) / 64 * 64);
  auto* p = static_cast<int8_t*>(std::aligned_alloc(64, size));
  TORCH_CHECK(p != nullptr, "int4_matmul: out of memory allocating a ", size, "-byte scratch buffer");
  return ScratchBuffer(p);
}

// The calling thread is also one of the parallel_for workers, so a buffer it holds for the whole call
// (kCaller) and one each worker holds for its part (kWorker) need separate slots.
enum class ScratchSlot : int { kCaller = 0, kWorker = 1 };
constexpr int64_t kKeepScratchBytes = int64_t{16} << 20;

// `bytes` of 64-byte-aligned scratch: this thread's kept buffer for `slot`, or, above kKeepScratchBytes,
// a buffer that `owner` frees at the end of the call.
inline int8_t* scratch(ScratchSlot slot, int64_t bytes, ScratchBuffer& owner) {
  if (bytes > kKeepScratchBytes) {
    owner = aligned_buffer(bytes);
    return owner.get();
  }
  struct Kept {
    ScratchBuffer buf;
    int64_t size = 0;
  };
  thread_local Kept kept[2];
  Kept& k = kept[static_cast<int>(slot)];
  if (k.size < bytes) {
    k.buf.reset();  // free before allocating: peak memory of one buffer, not two
    k.size = 0;
    k.buf = aligned_buffer(bytes);
    k.size = bytes;
  }
  return k.buf.get();
}

}  // namespace symkernels::quarot
