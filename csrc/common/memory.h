// Host memory hints shared by the CPU kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace symkernels {

// A fresh CPU output of 32 MiB or more is an mmap of its own (glibc's largest mmap threshold), which the
// kernel's first writes fault in 4 KiB at a time: 8192 faults per 32 MiB, ~14 ms of a ~180 ms int4_matmul
// at M = 2048, K = N = 4096 on 1 thread, and more than the whole transform for a 64 MiB FWHT (Zen 4 VM;
// torch's own ops pay the same for their outputs). Transparent huge pages cut that ~3× where the system
// leaves them to madvise (the common default). The hint changes nothing else, and failing is harmless.
// (PyTorch's THP_MEM_ALLOC_ENABLE=1 does this for every allocation; smaller outputs come from, and return
// to, glibc's heap, where the pages are already mapped.)
inline void advise_huge_pages(const at::Tensor& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (out.nbytes() < (size_t{32} << 20)) return;
  const auto begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + out.nbytes()) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

}  // namespace symkernels
